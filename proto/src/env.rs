//! Container environment variable names, checked alike by the API (validation) and the node
//! (which skips `envFrom` keys that are not valid names, as the kubelet does).

/// Whether `name` may be an environment variable's name (Kubernetes' `IsEnvVarName`):
/// letters, digits, `_`, `-` and `.`, not starting with a digit.
pub fn is_env_var_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_var_names() {
        for ok in ["A", "greeting", "DB_HOST", "a.b-c", "_x"] {
            assert!(super::is_env_var_name(ok), "{ok}");
        }
        for bad in ["", "1X", "a b", "a=b", "é"] {
            assert!(!super::is_env_var_name(bad), "{bad}");
        }
    }
}
