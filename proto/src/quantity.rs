//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1G`, `2e3`), shared by admission and
//! the scheduler. Values are integers in thousandths of a unit, so `100m` CPU is 100 and
//! `1Ki` of memory is 1,024,000.

/// A Kubernetes quantity (`100m`, `1.5`, `64Mi`, `1G`, `2e3`) in thousandths of a unit.
pub fn parse_quantity(q: &str) -> Option<i128> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+')).unwrap_or(q.len());
    if split == 0 {
        return None;
    }
    let (num, suffix) = q.split_at(split);
    let (mantissa, exp10, pow2): (&str, i32, u32) = match suffix {
        "" => (num, 0, 0),
        "m" => (num, -3, 0),
        "k" => (num, 3, 0),
        "M" => (num, 6, 0),
        "G" => (num, 9, 0),
        "T" => (num, 12, 0),
        "P" => (num, 15, 0),
        "E" => (num, 18, 0),
        "Ki" => (num, 0, 10),
        "Mi" => (num, 0, 20),
        "Gi" => (num, 0, 30),
        "Ti" => (num, 0, 40),
        "Pi" => (num, 0, 50),
        "Ei" => (num, 0, 60),
        s if s.starts_with('e') || s.starts_with('E') => (num, s[1..].parse().ok()?, 0),
        _ => return None,
    };
    // Exact decimal arithmetic in thousandths.
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let neg = int.starts_with('-');
    let digits = format!("{}{}", int.trim_start_matches(['-', '+']), frac);
    let mut value: i128 = if digits.is_empty() { 0 } else { digits.parse().ok()? };
    let mut scale = exp10.checked_add(3)?.checked_sub(i32::try_from(frac.len()).ok()?)?;
    while scale > 0 {
        value = value.checked_mul(10)?;
        scale -= 1;
    }
    // Rounding up, as Kubernetes does; once the value is 0 or 1 more steps leave it there, so
    // `1e-2000000000` takes a few steps rather than two billion (found by fuzzing).
    while scale < 0 && value > 1 {
        value = (value + 9) / 10;
        scale += 1;
    }
    value = value.checked_mul(1i128 << pow2)?;
    Some(if neg { -value } else { value })
}

pub fn format_quantity(milli: i128, resource: &str) -> String {
    if resource.ends_with("cpu") {
        if milli % 1000 == 0 {
            (milli / 1000).to_string()
        } else {
            format!("{milli}m")
        }
    } else if milli % 1000 == 0 {
        let v = milli / 1000;
        for (s, p) in [("Gi", 30), ("Mi", 20), ("Ki", 10)] {
            if v != 0 && v % (1i128 << p) == 0 {
                return format!("{}{s}", v >> p);
            }
        }
        v.to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regressions found by `scripts/fuzz quantity`: a huge negative exponent took one step
    /// per power of ten (seconds of CPU per quantity), and a huge positive one overflowed.
    #[test]
    fn extreme_exponents_end_at_once() {
        assert_eq!(parse_quantity("1e-2147483648"), Some(1), "rounded up, as Kubernetes does");
        assert_eq!(parse_quantity("5e-2147483000"), Some(1));
        assert_eq!(parse_quantity("0e-2000000000"), Some(0));
        assert_eq!(parse_quantity("1e2147483647"), None, "the scale would overflow");
        assert_eq!(parse_quantity("1500e-3"), Some(1500));
        assert_eq!(parse_quantity("1.5"), Some(1500));
    }
}
