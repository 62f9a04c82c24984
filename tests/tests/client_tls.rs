//! Off loopback the etcd listener requires TLS client certificates: without them the master
//! refuses to start; with them, etcdctl must present a certificate signed by the client CA.

use skiff_tests::{skiff_bin, wait_for};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").current_dir(dir).args(args).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn make_certs(dir: &Path) {
    let key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &key,
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=skiff-test-ca"],
        ]
        .concat(),
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        openssl(
            dir,
            &[
                &["req"][..],
                &key,
                &["-keyout", &format!("{who}.key"), "-out", &format!("{who}.csr"), "-subj", &format!("/CN={who}")],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.crt"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

fn master_cmd(dir: &Path, client_addr: &str, peer: u16, client_port: u16) -> Command {
    let mut cmd = Command::new(skiff_bin());
    cmd.args(["master", "--id", "1"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--peer-addr", &format!("127.0.0.1:{peer}"), "--client-addr", client_addr])
        .args(["--initial-cluster", &format!("1=127.0.0.1:{peer}/127.0.0.1:{client_port}")])
        .stdin(Stdio::null());
    cmd
}

#[test]
fn off_loopback_the_etcd_api_requires_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let (peer, port) = (free_port(), free_port());
    let all_interfaces = format!("0.0.0.0:{port}");

    // phase: without TLS material the master refuses to listen off loopback
    let out = master_cmd(dir.path(), &all_interfaces, peer, port).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not on loopback") && err.contains("--client-cert"), "{err}");

    // phase: with mutual TLS it serves, and only to clients with a certificate
    let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
    std::fs::write(dir.path().join("tokens.csv"), "admin-token,admin,admin,\"system:masters\"\n").unwrap();
    let mut child = master_cmd(dir.path(), &all_interfaces, peer, port)
        .args(["--client-cert", &p("server.crt"), "--client-key", &p("server.key"), "--client-ca", &p("ca.crt")])
        .args(["--token-file", &p("tokens.csv")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoint = format!("--endpoints=https://127.0.0.1:{port}");
    let etcdctl = |extra: &[&str], args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([&endpoint, "--dial-timeout=2s", "--command-timeout=5s"])
            .args(extra)
            .args(args)
            .output()
            .unwrap()
    };
    let certs = [
        format!("--cacert={}", p("ca.crt")),
        format!("--cert={}", p("client.crt")),
        format!("--key={}", p("client.key")),
    ];
    let certs: Vec<&str> = certs.iter().map(String::as_str).collect();
    wait_for(Duration::from_secs(20), "a TLS put to succeed", || {
        etcdctl(&certs, &["put", "secure", "yes"]).status.success().then_some(())
    });
    let got = etcdctl(&certs, &["get", "secure"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "secure\nyes\n");
    let no_client_cert = etcdctl(&certs[..1], &["get", "secure"]);
    assert!(!no_client_cert.status.success(), "a client without a certificate must be refused");
    let plaintext = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints=http://127.0.0.1:{port}"),
            "--dial-timeout=2s",
            "--command-timeout=5s",
            "get",
            "secure",
        ])
        .output()
        .unwrap();
    assert!(!plaintext.status.success(), "plaintext must be refused off loopback");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn skiff_up_serves_both_apis_over_tls_by_default_with_its_generated_ca() {
    let c = skiff_tests::Cluster::up(3, &[]);
    let text = std::fs::read_to_string(c.dir.path().join("cluster.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let ca = v["ca"].as_str().expect("cluster.json names the CA").to_string();
    let token = c.admin_token();
    let addr = c.masters[0].api.clone();
    let grpcurl = |tls: &[&str], method: &str, body: &str| {
        Command::new("grpcurl")
            .args(tls)
            .args(["-max-time", "10", "-H", &format!("authorization: Bearer {token}"), "-d", body, &addr, method])
            .output()
            .unwrap()
    };
    // phase: the API over TLS, verified against the generated CA
    wait_for(Duration::from_secs(30), "the API to answer over TLS", || {
        let out = grpcurl(&["-cacert", &ca], "skiff.api.Namespaces/Get", r#"{"name":"default"}"#);
        out.status.success().then_some(())
    });
    let plain = grpcurl(&["-plaintext"], "skiff.api.Namespaces/Get", r#"{"name":"default"}"#);
    assert!(!plain.status.success(), "plaintext must not reach a TLS listener");
    let unverified = grpcurl(&[], "skiff.api.Namespaces/Get", r#"{"name":"default"}"#);
    assert!(!unverified.status.success(), "a client that does not trust the CA must fail the handshake");
    // phase: the etcd API on the same listener, where a client certificate signed by the
    // cluster CA authenticates its common name as a store user (etcd's --client-cert-auth)
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([&format!("--endpoints=https://{addr}"), &format!("--cacert={ca}"), "--command-timeout=5s"])
            .args(args)
            .output()
            .unwrap()
    };
    let pki = Path::new(&ca).parent().unwrap().to_path_buf();
    let (root_crt, root_key) = (pki.join("root.crt"), pki.join("root.key"));
    let root_cert = [format!("--cert={}", root_crt.display()), format!("--key={}", root_key.display())];
    let root_cert: Vec<&str> = root_cert.iter().map(String::as_str).collect();
    let put = etcdctl(&[&root_cert[..], &["put", "tls-key", "v"]].concat());
    assert!(put.status.success(), "put with the root client certificate: {}", String::from_utf8_lossy(&put.stderr));
    assert_eq!(
        String::from_utf8_lossy(&etcdctl(&[&root_cert[..], &["get", "tls-key"]].concat()).stdout),
        "tls-key\nv\n"
    );
    let password = format!("--user=root:{}", c.root_password());
    assert_eq!(String::from_utf8_lossy(&etcdctl(&[&password, "get", "tls-key"]).stdout), "tls-key\nv\n");
    let anonymous = etcdctl(&["get", "tls-key"]);
    assert!(!anonymous.status.success(), "TLS alone is no credential");
    assert!(String::from_utf8_lossy(&anonymous.stderr).contains("user name is empty"), "{anonymous:?}");
    assert_eq!(std::fs::metadata(&root_key).unwrap().permissions().mode() & 0o777, 0o600, "root.key");

    // phase: on the Skiff API a client certificate authenticates too (CN the user, O its
    // groups): the admin certificate without any token, from grpcurl and from the skiff CLI
    let cert_args = |name: &str| {
        [
            format!("-cert={}", pki.join(format!("{name}.crt")).display()),
            format!("-key={}", pki.join(format!("{name}.key")).display()),
        ]
    };
    let by_cert = |name: &str, method: &str| {
        Command::new("grpcurl")
            .args(["-cacert", &ca, "-max-time", "10"])
            .args(cert_args(name))
            .args(["-d", r#"{"name":"default"}"#, &addr, method])
            .output()
            .unwrap()
    };
    let admin_by_cert = by_cert("admin", "skiff.api.Namespaces/Get");
    assert!(admin_by_cert.status.success(), "admin by certificate: {}", String::from_utf8_lossy(&admin_by_cert.stderr));
    let root_on_api = by_cert("root", "skiff.api.Namespaces/Get");
    assert!(!root_on_api.status.success(), "root has no RBAC binding on the Skiff API");
    assert!(
        String::from_utf8_lossy(&root_on_api.stderr).contains(r#"User "root" cannot get"#),
        "the certificate's CN is the user: {}",
        String::from_utf8_lossy(&root_on_api.stderr)
    );
    let cert_config = c.dir.path().join("client-cert.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(c.dir.path().join("client.json")).unwrap()).unwrap();
    config["users"] = serde_json::json!([{"name": "admin", "clientCertificate": pki.join("admin.crt"), "clientKey": pki.join("admin.key")}]);
    std::fs::write(&cert_config, config.to_string()).unwrap();
    let out =
        Command::new(skiff_bin()).env("SKIFF_CONFIG", &cert_config).args(["get", "ns", "default"]).output().unwrap();
    assert!(out.status.success(), "skiff with a client certificate: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("default"));

    // phase: a client certificate from another CA does not get through the handshake
    let other_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut other_ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    other_ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = other_ca.self_signed(&other_ca_key).unwrap();
    let mut forged = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    forged.distinguished_name.push(rcgen::DnType::CommonName, "root");
    forged.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged_key = rcgen::KeyPair::generate().unwrap();
    let forged = forged.signed_by(&forged_key, &other_ca, &other_ca_key).unwrap();
    std::fs::write(c.dir.path().join("forged.crt"), forged.pem()).unwrap();
    std::fs::write(c.dir.path().join("forged.key"), forged_key.serialize_pem()).unwrap();
    let forged_args = [
        format!("--cert={}", c.dir.path().join("forged.crt").display()),
        format!("--key={}", c.dir.path().join("forged.key").display()),
    ];
    let out = etcdctl(&[forged_args[0].as_str(), forged_args[1].as_str(), "put", "tls-key", "forged"]);
    assert!(!out.status.success(), "a root certificate from another CA must be refused");
    assert_eq!(
        String::from_utf8_lossy(&etcdctl(&[&password, "get", "tls-key"]).stdout),
        "tls-key\nv\n",
        "the refused put changed nothing"
    );
}
