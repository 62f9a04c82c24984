//! The part of kubectl's JSONPath templates (`-o jsonpath=…`) that people type: literal text,
//! `{.a.b}`, indexes (`[0]`, `[-1]`), wildcards (`[*]`), filters (`[?(@.type=="Ready")]`),
//! string literals (`{"\n"}`) and `{range …}…{end}`. Several results print space-separated.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Field(String),
    Index(i64),
    All,
    /// `[?(@.path=="value")]` (or `!=`).
    Filter {
        path: String,
        value: String,
        equal: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Text(String),
    Path(String),
    Range(String),
    End,
}

fn tokens(template: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '{' {
            text.push(c);
            continue;
        }
        if !text.is_empty() {
            out.push(Token::Text(std::mem::take(&mut text)));
        }
        let mut inner = String::new();
        let mut quoted = false;
        loop {
            match chars.next() {
                None => return Err(format!("unclosed action in {template:?}")),
                Some('"') => {
                    quoted = !quoted;
                    inner.push('"');
                }
                Some('\\') if quoted => {
                    inner.push('\\');
                    if let Some(n) = chars.next() {
                        inner.push(n);
                    }
                }
                Some('}') if !quoted => break,
                Some(x) => inner.push(x),
            }
        }
        let inner = inner.trim();
        if let Some(lit) = inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            out.push(Token::Text(lit.replace("\\n", "\n").replace("\\t", "\t").replace("\\\"", "\"")));
        } else if let Some(p) = inner.strip_prefix("range ") {
            out.push(Token::Range(p.trim().to_string()));
        } else if inner == "end" {
            out.push(Token::End);
        } else {
            out.push(Token::Path(inner.to_string()));
        }
    }
    if !text.is_empty() {
        out.push(Token::Text(text));
    }
    Ok(out)
}

fn segments(path: &str) -> Result<Vec<Segment>, String> {
    let p = path.strip_prefix('$').unwrap_or(path);
    let p = p.strip_prefix('@').unwrap_or(p);
    let mut out = Vec::new();
    let chars: Vec<char> = p.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let start = i + 1;
                i = start;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                let name: String = chars[start..i].iter().collect();
                if !name.is_empty() {
                    out.push(Segment::Field(name));
                }
            }
            '[' => {
                let start = i + 1;
                let mut depth = 0;
                let mut quoted = false;
                i = start;
                while i < chars.len() {
                    match chars[i] {
                        '"' => quoted = !quoted,
                        '(' if !quoted => depth += 1,
                        ')' if !quoted => depth -= 1,
                        ']' if !quoted && depth == 0 => break,
                        _ => {}
                    }
                    i += 1;
                }
                if i >= chars.len() {
                    return Err(format!("unterminated [ in {path:?}"));
                }
                let inside: String = chars[start..i].iter().collect();
                i += 1;
                out.push(bracket(&inside).ok_or_else(|| format!("cannot parse [{inside}] in {path:?}"))?);
            }
            _ => {
                // A leading bare name (`items[0]`).
                let start = i;
                while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                    i += 1;
                }
                out.push(Segment::Field(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

fn bracket(inside: &str) -> Option<Segment> {
    let inside = inside.trim();
    if inside == "*" {
        return Some(Segment::All);
    }
    if let Ok(n) = inside.parse::<i64>() {
        return Some(Segment::Index(n));
    }
    let f = inside.strip_prefix("?(")?.strip_suffix(')')?;
    let (op, equal) = if f.contains("!=") { ("!=", false) } else { ("==", true) };
    let (l, r) = f.split_once(op)?;
    let value = r.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
    Some(Segment::Filter { path: l.trim().to_string(), value, equal })
}

fn apply(values: Vec<Value>, seg: &Segment) -> Result<Vec<Value>, String> {
    let mut out = Vec::new();
    for v in values {
        match seg {
            Segment::Field(name) => {
                if let Some(x) = v.get(name) {
                    out.push(x.clone());
                }
            }
            Segment::Index(n) => {
                let a = v.as_array().ok_or_else(|| "array index on a non-array".to_string())?;
                let i = if *n < 0 { a.len() as i64 + n } else { *n };
                match usize::try_from(i).ok().and_then(|i| a.get(i)) {
                    Some(x) => out.push(x.clone()),
                    None => return Err(format!("array index out of bounds: index {n}, length {}", a.len())),
                }
            }
            Segment::All => match v {
                Value::Array(a) => out.extend(a),
                Value::Object(m) => out.extend(m.into_iter().map(|(_, x)| x)),
                _ => {}
            },
            Segment::Filter { path, value, equal } => {
                let items = match v {
                    Value::Array(a) => a,
                    other => vec![other],
                };
                for item in items {
                    let got = eval(path, &item)?;
                    let matches = got.iter().any(|g| scalar(g) == *value);
                    if matches == *equal {
                        out.push(item);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The values a path (`.status.conditions[?(@.type=="Ready")].status`) finds under `root`;
/// none where a field is missing.
pub fn eval(path: &str, root: &Value) -> Result<Vec<Value>, String> {
    let mut cur = vec![root.clone()];
    for seg in segments(path)? {
        cur = apply(cur, &seg)?;
    }
    Ok(cur)
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn render(tokens: &[Token], root: &Value, out: &mut String) -> Result<(), String> {
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Text(t) => out.push_str(t),
            Token::Path(p) => {
                let vals = eval(p, root)?;
                out.push_str(&vals.iter().map(scalar).collect::<Vec<_>>().join(" "));
            }
            Token::Range(p) => {
                // The body runs to the matching {end}.
                let mut depth = 0;
                let mut j = i + 1;
                while j < tokens.len() {
                    match tokens[j] {
                        Token::Range(_) => depth += 1,
                        Token::End if depth == 0 => break,
                        Token::End => depth -= 1,
                        _ => {}
                    }
                    j += 1;
                }
                if j == tokens.len() {
                    return Err("{range} without {end}".into());
                }
                for v in eval(p, root)? {
                    render(&tokens[i + 1..j], &v, out)?;
                }
                i = j;
            }
            Token::End => return Err("{end} without {range}".into()),
        }
        i += 1;
    }
    Ok(())
}

/// Renders `template` against `root`; the error names what could not be parsed or found.
pub fn render_template(template: &str, root: &Value) -> Result<String, String> {
    let mut out = String::new();
    render(&tokens(template)?, root, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn list() -> Value {
        json!({"kind": "List", "items": [
            {"metadata": {"name": "a", "labels": {"app": "web"}}, "status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}},
            {"metadata": {"name": "b"}, "status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        ]})
    }

    #[test]
    fn paths_indexes_and_wildcards_print_as_kubectl_does() {
        assert_eq!(render_template("{.items[0].metadata.name}", &list()).unwrap(), "a");
        assert_eq!(render_template("{.items[-1].metadata.name}", &list()).unwrap(), "b");
        assert_eq!(render_template("{.items[*].metadata.name}", &list()).unwrap(), "a b");
        assert_eq!(render_template("name={.items[0].metadata.name}!", &list()).unwrap(), "name=a!");
        assert_eq!(render_template("{.items[0].metadata.labels}", &list()).unwrap(), r#"{"app":"web"}"#);
        assert_eq!(render_template("{.kind}", &list()).unwrap(), "List");
    }

    #[test]
    fn filters_and_ranges_with_literals() {
        let t = r#"{range .items[*]}{.metadata.name}{"\t"}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#;
        assert_eq!(render_template(t, &list()).unwrap(), "a\tTrue\nb\tFalse\n");
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(render_template("{.items[0", &list()).unwrap_err().contains("unclosed"));
        assert!(render_template("{.items[7].metadata}", &list()).unwrap_err().contains("out of bounds"));
        assert!(render_template("{range .items[*]}{.x}", &list()).unwrap_err().contains("without {end}"));
    }
}
