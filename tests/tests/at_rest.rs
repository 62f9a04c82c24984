//! Secrets are encrypted at rest: what reaches the raft log and RocksDB is AES-GCM under the
//! cluster's own key (Kubernetes' EncryptionConfiguration, written by `skiff up`), so a
//! Secret's value is in no file under the masters' data directories — while a ConfigMap's
//! value, as a control, is. Rotating in a new key keeps old Secrets readable.

use base64::Engine;
use skiff_tests::Cluster;
use std::path::Path;

/// Whether any file under `dir` contains `needle`.
fn found_under(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files += 1;
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    hits.push(path.display().to_string());
                }
            }
        }
    }
    assert!(files > 0, "no files read under {}", dir.display());
    hits
}

#[test]
fn secret_values_are_in_no_file_of_the_store_and_keys_rotate() {
    let mut c = Cluster::up(3, &[]);
    let secret_value = "s3cr3t-value-8b1f0c2e";
    let control_value = "plain-config-4d7a91c3";
    c.ctl_ok(&["create", "secret", "generic", "db", &format!("--from-literal=password={secret_value}")]);
    c.ctl_ok(&["create", "configmap", "settings", &format!("--from-literal=mode={control_value}")]);
    let b64 = base64::engine::general_purpose::STANDARD.encode(secret_value);
    assert_eq!(c.ctl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]), b64, "the API reads it back");

    // phase: the stored value is sealed, under the first key
    let e1 = c.masters[0].etcd.clone();
    let stored = c.etcdctl_ok(&e1, &["get", "/registry/secrets/default/db", "--print-value-only"]);
    assert!(stored.starts_with("k8s:enc:aesgcm:v1:key1:"), "stored as {stored:?}");
    assert!(!stored.contains(&b64) && !stored.contains(secret_value));

    // phase: no file under any master's data directory holds the value (the ConfigMap shows
    // the search reads what the store wrote)
    for m in &c.masters {
        let control = found_under(&m.data_dir, control_value.as_bytes());
        assert!(!control.is_empty(), "{}: the control value is in no file: the search sees nothing", m.name);
        for needle in [secret_value, b64.as_str()] {
            let hits = found_under(&m.data_dir, needle.as_bytes());
            assert!(hits.is_empty(), "{}: the Secret's value {needle:?} is in {hits:?}", m.name);
        }
    }

    // phase: rotate — a new first key writes, the old one still reads
    let config = c.dir.path().join("encryption.yaml");
    let old = std::fs::read_to_string(&config).unwrap();
    let fresh = base64::engine::general_purpose::STANDARD.encode([42u8; 32]);
    let rotated = old.replace(
        "          keys:\n",
        &format!("          keys:\n            - name: key2\n              secret: {fresh}\n"),
    );
    assert_ne!(rotated, old, "the generated configuration has the expected shape");
    std::fs::write(&config, rotated).unwrap();
    for id in [1, 2, 3] {
        c.kill(id);
    }
    c.restart_stopped();
    assert_eq!(c.ctl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]), b64, "read with the old key");
    c.ctl_ok(&["label", "secret", "db", "rotated=yes"]);
    let stored = c.etcdctl_ok(&c.masters[1].etcd, &["get", "/registry/secrets/default/db", "--print-value-only"]);
    assert!(stored.starts_with("k8s:enc:aesgcm:v1:key2:"), "rewritten under the new key: {stored:?}");
    assert_eq!(c.ctl_ok(&["get", "secret", "db", "-o", "jsonpath={.data.password}"]), b64);
}
