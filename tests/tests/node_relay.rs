//! Masters reach node servers (logs, metrics) over mutual TLS: the node's serving certificate
//! is checked against the cluster CA, the master presents its own client certificate, and no
//! user's token ever travels to a node — so a Node whose status points the relay at a
//! listener someone else owns collects nothing. Node servers answer the masters only.

use skiff_proto::api::pod_logs_client::PodLogsClient;
use skiff_proto::api::PodLogRequest;
use skiff_tests::{runtime, wait_for, Cluster};
use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Calls the node server's log stream with `tls` (None: plaintext); the first response or error.
fn node_logs(addr: &str, tls: Option<ClientTlsConfig>) -> Result<(), String> {
    runtime().block_on(async {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint =
            Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap().connect_timeout(Duration::from_secs(3));
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        let req = PodLogRequest { namespace: "default".into(), name: "talker".into(), ..Default::default() };
        let mut stream = PodLogsClient::new(channel).get(req).await.map_err(|e| format!("{e:?}"))?.into_inner();
        stream.message().await.map(|_| ()).map_err(|e| format!("{e:?}"))
    })
}

#[test]
fn masters_relay_to_nodes_over_mutual_tls_and_send_no_token() {
    let c = Cluster::with_nodes(1, 1, &[]);
    let admin = c.admin_token();
    let pki = c.dir.path().join("pki");

    // phase: logs flow through the masters as before, now over mutual TLS
    c.apply_yaml(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  containers:\n  - {name: c, image: \"busybox:test\", command: [sh, -c, \"while true; do echo tick; sleep 1; done\"]}\n",
    );
    wait_for(Duration::from_secs(60), "talker's logs through the masters", || {
        String::from_utf8_lossy(&c.ctl(&["logs", "talker"]).stdout).contains("tick").then_some(())
    });

    // phase: the node server itself answers nobody but the masters
    let node = c.get_json("nodes", "node-1").expect("node-1");
    let ip = node["status"]["addresses"][0]["address"].as_str().unwrap().to_string();
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64().unwrap();
    let addr = format!("{ip}:{port}");
    let ca = Certificate::from_pem(std::fs::read(pki.join("ca.crt")).unwrap());
    let trusting = || ClientTlsConfig::new().ca_certificate(ca.clone());
    let root =
        Identity::from_pem(std::fs::read(pki.join("root.crt")).unwrap(), std::fs::read(pki.join("root.key")).unwrap());
    for (what, tls, phrase) in [
        ("plaintext", None, ""),
        ("TLS without a client certificate", Some(trusting()), ""),
        ("the cluster CA's root certificate", Some(trusting().identity(root)), "only the masters"),
    ] {
        let err = node_logs(&addr, tls).expect_err(what);
        assert!(err.contains(phrase), "{what}: {err}");
        assert!(!err.contains("tick"), "{what} read logs: {err}");
    }

    // phase: a Node whose status names a listener the test owns: the master's relay arrives
    // there as a TLS handshake it cannot complete, carrying no token
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_port = trap.local_addr().unwrap().port();
    let received = std::thread::spawn(move || {
        let mut got = Vec::new();
        trap.set_nonblocking(false).unwrap();
        if let Ok((mut conn, _)) = trap.accept() {
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 4096];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
        }
        got
    });
    c.apply_yaml(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: rogue}}\nstatus:\n  addresses: [{{type: InternalIP, address: 127.0.0.1}}]\n  daemonEndpoints: {{kubeletEndpoint: {{Port: {trap_port}}}}}\n"
    ));
    let rogue = c.get_json("nodes", "rogue").expect("the rogue node");
    if rogue["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"].as_u64() != Some(u64::from(trap_port)) {
        // Status is not taken on create: set it as a node daemon would.
        let mut with_status = rogue.clone();
        with_status["status"] = serde_json::json!({"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": trap_port}}});
        let (ok, _, err) =
            skiff_tests::grpcurl_call(&admin, &c.masters[0].api, "skiff.api.Nodes/UpdateStatus", &with_status);
        assert!(ok, "rogue status: {err}");
    }
    c.apply_yaml("apiVersion: v1\nkind: Pod\nmetadata: {name: bait}\nspec:\n  nodeName: rogue\n  containers: [{name: c, image: \"busybox:test\"}]\n");
    let out = c.ctl(&["logs", "bait"]);
    assert!(!out.status.success(), "logs from a node whose endpoint is not a node");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("node rogue"), "the error names the node: {stderr}");
    let got = received.join().unwrap();
    assert!(!got.is_empty(), "the relay never reached the listener, so this proves nothing");
    assert_eq!(
        got[0],
        0x16,
        "the relay opened with a TLS handshake record, not plaintext: {:?}",
        &got[..got.len().min(16)]
    );
    assert!(!got.windows(admin.len()).any(|w| w == admin.as_bytes()), "the admin token arrived at the listener");
    assert!(!got.windows(6).any(|w| w == b"Bearer"), "an authorization header arrived at the listener");
}
