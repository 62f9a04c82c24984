//! Adding machines to a cluster (issue 17): bootstrap tokens as kubeadm keeps them.

use skiff_tests::{join_flags, skiff_bin, wait_for, wait_for_showing, Cluster};
use std::process::{Command, Output};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// `skiff ARGS` with the cluster's client config, but authenticating with bearer `token`.
fn as_token(c: &Cluster, token: &str, args: &[&str]) -> Output {
    let path = c.dir.path().join(format!("as-{}.json", &token[..6.min(token.len())]));
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.dir.path().join("client.json")).unwrap()).unwrap();
    config["users"] = serde_json::json!([{"name": "joiner", "token": token}]);
    config["contexts"][0]["user"] = serde_json::json!("joiner");
    std::fs::write(&path, config.to_string()).unwrap();
    Command::new(skiff_bin()).env("SKIFF_CONFIG", &path).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// kubeadm's documented way to compute a CA pin, with openssl: sha256 of the DER public key.
fn openssl_ca_hash(ca: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("openssl x509 -pubkey -noout -in {} | openssl pkey -pubin -outform der | sha256sum", ca.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl: {}", stderr(&out));
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap())
}

#[test]
fn bootstrap_tokens_authenticate_joining_machines_until_they_expire_or_are_deleted() {
    let c = Cluster::up(1, &[]);

    // phase: a token is made, listed, and names a bootstrapper who may do nothing else
    let token = c
        .ctl_ok(&[
            "token",
            "create",
            "--ttl",
            "1h",
            "--description",
            "for edge nodes",
            "--groups",
            "system:bootstrappers:edge",
        ])
        .trim()
        .to_string();
    let (id, secret) = token.split_once('.').unwrap_or_else(|| panic!("token {token:?} is not id.secret"));
    assert_eq!((id.len(), secret.len()), (6, 16), "{token}");
    let listed = c.ctl_ok(&["token", "list"]);
    for want in [token.as_str(), "authentication,signing", "for edge nodes", "system:bootstrappers:edge"] {
        assert!(listed.contains(want), "token list lacks {want:?}:\n{listed}");
    }
    let out = as_token(&c, &token, &["get", "pods"]);
    assert!(
        !out.status.success() && stderr(&out).contains(&format!("User \"system:bootstrap:{id}\" cannot list")),
        "a bootstrapper is authenticated and may not list pods: {}",
        stderr(&out)
    );
    let out = as_token(&c, &format!("{id}.0000000000000000"), &["get", "pods"]);
    assert!(stderr(&out).contains(&format!("wrong secret for bootstrap token {id}")), "{}", stderr(&out));

    // phase: the join command pins the cluster CA by the hash openssl computes
    let join = c.ctl_ok(&["token", "create", "--print-join-command"]);
    let ca = c.ca().expect("skiff up serves TLS");
    let hash = openssl_ca_hash(&ca);
    assert!(join.starts_with("skiff join --server https://127.0.0.1:"), "{join}");
    assert!(join.trim_end().ends_with(&format!("--ca-cert-hash {hash}")), "{join} (openssl: {hash})");

    // phase: a token stops working when it expires, and when it is deleted
    let short = c.ctl_ok(&["token", "create", "--ttl", "2s"]).trim().to_string();
    let short_id = short.split_once('.').expect("id.secret").0.to_string();
    // Refused from its expiry on; its Secret is then deleted by the token cleaner
    // (Kubernetes' tokencleaner), and a token without a Secret is refused too.
    let refused = wait_for(T, "the 2 s token to expire", || {
        let out = as_token(&c, &short, &["get", "pods"]);
        let why = stderr(&out);
        (why.contains("expired at") || why.contains(&format!("no bootstrap token {short_id}"))).then_some(why)
    });
    assert!(refused.contains("Unauthorized"), "{refused}");
    let secret = format!("bootstrap-token-{short_id}");
    wait_for(T, "the expired token's Secret to be deleted", || {
        let out = c.ctl(&["get", "secrets", &secret, "-n", "kube-system"]);
        let gone = !out.status.success() && stderr(&out).contains("not found");
        (gone && !c.ctl_ok(&["token", "list"]).contains(&short_id)).then_some(())
    });
    assert!(c.ctl_ok(&["token", "list"]).contains(id), "the token that has not expired stays");
    assert!(c.ctl_ok(&["token", "delete", &token]).contains(&format!("bootstrap token \"{id}\" deleted")));
    let out = as_token(&c, &token, &["get", "pods"]);
    assert!(stderr(&out).contains(&format!("no bootstrap token {id}")), "{}", stderr(&out));

    // phase: bad requests say what is wrong and make nothing
    let before = c.ctl_ok(&["token", "list"]).lines().count();
    let bad = c.ctl(&["token", "create", "--groups", "system:masters"]);
    assert!(stderr(&bad).contains("\"system:masters\" is not under system:bootstrappers:"), "{}", stderr(&bad));
    let bad = c.ctl(&["token", "create", "--ttl", "soon"]);
    assert!(stderr(&bad).contains("--ttl"), "{}", stderr(&bad));
    assert_eq!(c.ctl_ok(&["token", "list"]).lines().count(), before, "a refused create made a token");

    // phase: a control-plane token seals the masters' keys where only it may read them; a
    // wrong certificate key or a node's token joins nothing
    let config = c.dir.path().join("master-1/config.json");
    let line = c.ctl_ok(&[
        "token",
        "create",
        "--print-join-command",
        "--control-plane",
        "--master-config",
        config.to_str().unwrap(),
    ]);
    let (server, cp_token, hash) = join_flags(&line);
    let words: Vec<&str> = line.split_whitespace().collect();
    let key = words[words.iter().position(|w| *w == "--certificate-key").expect(&line) + 1].to_string();
    let cp_id = cp_token.split_once('.').unwrap().0.to_string();
    let keys = format!("skiff-certs-{cp_id}");
    let node_token = c.ctl_ok(&["token", "create"]).trim().to_string();
    let out = as_token(&c, &node_token, &["get", "secret", &keys, "-n", "kube-system"]);
    assert!(stderr(&out).contains("cannot get"), "another token reads the keys: {}", stderr(&out));
    let out = as_token(&c, &cp_token, &["get", "secret", &keys, "-n", "kube-system", "-o", "json"]);
    assert!(out.status.success(), "its own token reads them: {}", stderr(&out));
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    use base64::Engine;
    let sealed = base64::engine::general_purpose::STANDARD.decode(stored["data"]["bundle"].as_str().unwrap()).unwrap();
    assert!(sealed.len() > 1000 && !String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"), "the keys are sealed");
    let members = || c.etcdctl_ok(&c.endpoints(), &["member", "list"]).lines().count();
    assert_eq!(members(), 1);
    let join_master = |token: &str, key: &str| {
        Command::new(skiff_bin())
            .args(["join", "--control-plane", "--server", &server, "--token", token, "--ca-cert-hash", &hash])
            .args(["--certificate-key", key, "--advertise-address", "127.0.0.1", "--timeout", "20s", "--dir"])
            .arg(c.dir.path().join(format!("refused-{}", key.len())))
            .output()
            .unwrap()
    };
    let out = join_master(&cp_token, &"0f".repeat(32));
    assert!(stderr(&out).contains("--certificate-key does not open it"), "{}", stderr(&out));
    let out = join_master(&node_token, &key);
    assert!(stderr(&out).contains("reading the control plane's keys"), "{}", stderr(&out));
    let out = join_master(&cp_token, "abc");
    assert!(stderr(&out).contains("--certificate-key: expected 64 hex digits"), "{}", stderr(&out));
    assert_eq!(members(), 1, "a refused master was added to the store");
    // Deleting the token deletes the keys sealed for it.
    c.ctl_ok(&["token", "delete", &cp_token]);
    let out = c.ctl(&["get", "secret", &keys, "-n", "kube-system"]);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    let bad = c.ctl(&["token", "create", "--control-plane"]);
    assert!(stderr(&bad).contains("--master-config"), "{}", stderr(&bad));
}

/// A joined node daemon: killed, and its containers and bridge removed, when dropped.
struct Joined {
    child: std::process::Child,
    name: String,
    bridge: String,
    root: std::path::PathBuf,
}

impl Drop for Joined {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let root = self.root.to_string_lossy().to_string();
        let _ = Command::new(skiff_bin())
            .args(["node", "--reset", "--name", &self.name, "--bridge", &self.bridge, "--root-dir", &root])
            .output();
    }
}

#[test]
fn a_machine_joins_with_a_token_gets_its_certificates_and_runs_pods() {
    skiff_tests::require_root();
    // 10.246/16: no other test's nodes on this machine use it.
    let c = Cluster::up(1, &["--cluster-cidr", "10.246.0.0/16"]);
    let (server, token, hash) = join_flags(&c.ctl_ok(&["token", "create", "--print-join-command"]));
    let root = c.dir.path().join("joined");
    std::fs::create_dir_all(&root).unwrap();
    let image = skiff_tests::test_image();
    c.ctl_ok(&[
        "image",
        "import",
        image.to_str().unwrap(),
        "--tag",
        "busybox:test",
        "--root-dir",
        root.to_str().unwrap(),
    ]);

    // phase: a wrong CA pin and a bad token are refused before anything is made
    let join = |hash: &str, token: &str, name: &str| {
        Command::new(skiff_bin())
            .args(["join", "--server", &server, "--token", token, "--ca-cert-hash", hash, "--timeout", "20s"])
            .args(["--name", name, "--root-dir", c.dir.path().join(name).to_str().unwrap()])
            .output()
            .unwrap()
    };
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = join(&wrong, &token, "pinned-wrong");
    assert!(!out.status.success() && stderr(&out).contains(&format!("not --ca-cert-hash {wrong}")), "{}", stderr(&out));
    let out = join(&hash, "abcdef.0123456789abcdef", "bad-token");
    assert!(!out.status.success() && stderr(&out).contains("no bootstrap token abcdef"), "{}", stderr(&out));
    for refused in ["pinned-wrong", "bad-token"] {
        assert!(c.get_json("nodes", refused).is_none(), "{refused} registered");
    }

    // phase: the machine joins; its client and serving certificates come from the masters
    let bridge = format!("skj{}", std::process::id() % 100_000);
    let log = std::fs::File::create(c.dir.path().join("joined.log")).unwrap();
    let child = Command::new(skiff_bin())
        .args(["join", "--server", &server, "--token", &token, "--ca-cert-hash", &hash])
        .args(["--name", "joined", "--node-ip", "127.0.0.77", "--bridge", &bridge, "--cluster-cidr", "10.246.0.0/16"])
        .args(["--root-dir", root.to_str().unwrap(), "--ingress-http-port", "0", "--ingress-https-port", "0"])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let _joined = Joined { child, name: "joined".into(), bridge, root: root.clone() };
    let joined_log = || std::fs::read_to_string(c.dir.path().join("joined.log")).unwrap_or_default();
    let seen = || format!("node: {:?}\nlog:\n{}", c.get_json("nodes", "joined"), joined_log());
    let range = wait_for_showing(Duration::from_secs(90), "node joined Ready with a pod range", seen, || {
        let node = c.get_json("nodes", "joined")?;
        let ready =
            node["status"]["conditions"].as_array()?.iter().any(|k| k["type"] == "Ready" && k["status"] == "True");
        let range = node["spec"]["podCIDR"].as_str().unwrap_or_default().to_string();
        (ready && !range.is_empty()).then_some(range)
    });
    assert_eq!(range, "10.246.0.0/24", "log:\n{}", joined_log());
    let csrs = c.ctl_ok(&["get", "csr", "-o", "json"]);
    let csrs: serde_json::Value = serde_json::from_str(&csrs).unwrap();
    let mut signers: Vec<(String, String)> = csrs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (r["spec"]["signerName"].as_str().unwrap().to_string(), r["spec"]["username"].as_str().unwrap().to_string())
        })
        .collect();
    signers.sort();
    let id = &token[..6];
    assert_eq!(
        signers,
        [
            ("kubernetes.io/kube-apiserver-client-kubelet".to_string(), format!("system:bootstrap:{id}")),
            ("kubernetes.io/kubelet-serving".to_string(), "system:node:joined".to_string()),
        ],
        "the client certificate was asked for with the token, the serving one as the node"
    );
    for key in ["client.key", "serving.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(root.join("pki").join(key)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }

    // phase: pods run there, and the masters read their logs through its serving certificate
    c.apply_yaml(
        r#"
apiVersion: v1
kind: Pod
metadata: {name: on-joined}
spec:
  nodeSelector: {kubernetes.io/hostname: joined}
  terminationGracePeriodSeconds: 0
  containers: [{name: app, image: "busybox:test", command: [sh, -c, "echo hello from the joined node; sleep 3600"]}]
"#,
    );
    let ip = wait_for(Duration::from_secs(60), "pod on-joined Running", || {
        let pod = c.get_json("pods", "on-joined")?;
        (pod["status"]["phase"] == "Running").then(|| pod["status"]["podIP"].as_str().unwrap_or_default().to_string())
    });
    assert!(ip.starts_with("10.246.0."), "pod address {ip} outside the joined node's range");
    wait_for(T, "the pod's log through the masters", || {
        let out = c.ctl(&["logs", "on-joined"]);
        String::from_utf8_lossy(&out.stdout).contains("hello from the joined node").then_some(())
    });
    c.ctl_ok(&["delete", "pod", "on-joined"]);

    // phase: the joined machine's certificate speaks for its own node only: registering
    // another node with it, or reading a Secret its pods do not use, is refused
    let as_joined = |args: &[&str]| {
        Command::new(skiff_bin()).env("SKIFF_CONFIG", root.join("client.json")).args(args).output().unwrap()
    };
    let impostor = c.dir.path().join("impostor.yaml");
    std::fs::write(&impostor, "apiVersion: v1\nkind: Node\nmetadata: {name: impostor}\n").unwrap();
    let out = as_joined(&["apply", "-f", impostor.to_str().unwrap()]);
    assert!(
        !out.status.success() && stderr(&out).contains("User \"system:node:joined\" cannot create resource \"nodes\""),
        "a node registered another with its certificate: {}",
        stderr(&out)
    );
    assert!(c.get_json("nodes", "impostor").is_none(), "impostor registered");
    let out = as_joined(&["get", "secret", "anything", "-n", "kube-system"]);
    assert!(stderr(&out).contains("Forbidden"), "{}", stderr(&out));
    // kubectl with the kubeconfig the join wrote beside client.json: the same identity
    let kubectl = |args: &[&str]| {
        Command::new("kubectl").arg("--kubeconfig").arg(root.join("kubeconfig")).args(args).output().unwrap()
    };
    let out = kubectl(&["get", "node", "joined", "-o", "name"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "node/joined\n", "{}", stderr(&out));
    let out = kubectl(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "system:node:joined", "{}", stderr(&out));
}

#[test]
fn an_administrator_approves_a_users_certificate_request_and_the_certificate_logs_in() {
    let c = Cluster::up(1, &[]);
    let dir = c.dir.path();
    let req = |name: &str| {
        let out = Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-keyout", dir.join(format!("{name}.key")).to_str().unwrap()])
            .args(["-subj", &format!("/CN={name}/O=dev"), "-out", dir.join(format!("{name}.csr")).to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl req: {}", stderr(&out));
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(format!("{name}.csr"))).unwrap())
    };
    let manifest = |name: &str, request: &str| {
        format!(
            "apiVersion: certificates.k8s.io/v1\nkind: CertificateSigningRequest\nmetadata: {{name: {name}}}\nspec:\n  request: {request}\n  signerName: kubernetes.io/kube-apiserver-client\n  usages: [client auth]\n  username: someone-else\n"
        )
    };

    // phase: a user's request waits for an administrator, who is recorded as the requester
    c.apply_yaml(&manifest("jane", &req("jane")));
    let csr = c.get_json("csr", "jane").unwrap();
    assert_eq!(csr["spec"]["username"], "admin", "the API records the caller, not what the body says");
    assert!(csr["status"]["certificate"].is_null(), "nothing issued without approval: {csr}");
    assert!(c
        .ctl_ok(&["certificate", "approve", "jane"])
        .contains("certificatesigningrequest.certificates.k8s.io/jane approved"));
    let cert = wait_for(T, "jane's certificate", || {
        let issued = c.get_json("csr", "jane")?["status"]["certificate"].as_str()?.to_string();
        use base64::Engine;
        Some(base64::engine::general_purpose::STANDARD.decode(issued).unwrap())
    });
    std::fs::write(dir.join("jane.crt"), &cert).unwrap();
    let ca = c.ca().unwrap();
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", ca.to_str().unwrap(), dir.join("jane.crt").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(verify.status.success(), "openssl verify: {}{}", String::from_utf8_lossy(&verify.stdout), stderr(&verify));

    // phase: the issued certificate logs in as jane in group dev
    let path = dir.join("as-jane.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("client.json")).unwrap()).unwrap();
    config["users"] = serde_json::json!([{"name": "jane", "clientCertificate": dir.join("jane.crt"), "clientKey": dir.join("jane.key")}]);
    config["contexts"][0]["user"] = serde_json::json!("jane");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new(skiff_bin()).env("SKIFF_CONFIG", &path).args(["get", "pods"]).output().unwrap();
    assert!(stderr(&out).contains("User \"jane\" cannot list"), "{}", stderr(&out));

    // phase: a denied request gets nothing; a bad one is refused by field
    c.apply_yaml(&manifest("mallory", &req("mallory")));
    assert!(c.ctl_ok(&["certificate", "deny", "mallory"]).contains("mallory denied"));
    let again = c.ctl(&["certificate", "approve", "mallory"]);
    assert!(stderr(&again).contains("already denied"), "{}", stderr(&again));
    let csr = c.get_json("csr", "mallory").unwrap();
    assert_eq!(csr["status"]["conditions"][0]["type"], "Denied");
    assert!(csr["status"]["certificate"].is_null());
    use base64::Engine;
    let junk = base64::engine::general_purpose::STANDARD.encode("not a request");
    let file = dir.join("bad-csr.yaml");
    std::fs::write(&file, manifest("bad", &junk)).unwrap();
    let out = c.ctl(&["apply", "-f", file.to_str().unwrap()]);
    assert!(!out.status.success() && stderr(&out).contains("spec.request"), "{}", stderr(&out));
    assert!(c.get_json("csr", "bad").is_none());
}
