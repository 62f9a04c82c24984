//! The built-in ingress controller on a real node: nginx-style regex paths with
//! `rewrite-target: /$2` to two services, a host rule over HTTPS with a certificate from a TLS
//! Secret (plain HTTP redirected), a rule to a missing service (503 and an event), and a
//! change picked up without a restart.

use serde_json::Value;
use skiff_tests::{http_request as get, parse_http, wait_for, Cluster};
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

const T: Duration = Duration::from_secs(90);

/// A port nothing on `ip` listens on now.
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap().port()
}

/// An HTTPS request with SNI `host`, trusting only `ca_der`.
fn get_tls(addr: &str, host: &str, path: &str, ca_der: &[u8]) -> Result<(u16, String, String), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls::pki_types::CertificateDer::from(ca_der.to_vec())).map_err(|e| e.to_string())?;
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("{addr}: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} as {host}: {e}"))?;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        parse_http(&out)
    })
}

fn backend(name: &str) -> String {
    format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 0
      containers:
      - name: httpd
        image: busybox:test
        command: [sh, -c, 'mkdir -p /www && echo {name} > /www/greeting && exec httpd -f -p 8080 -h /www']
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: web, port: 80, targetPort: http}}]
"#
    )
}

const INGRESSES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: rewrite
  annotations:
    nginx.ingress.kubernetes.io/use-regex: "true"
    nginx.ingress.kubernetes.io/rewrite-target: /$2
spec:
  rules:
  - http:
      paths:
      - {path: /hello-world-one(/|$)(.*), pathType: ImplementationSpecific, backend: {service: {name: one, port: {number: 80}}}}
      - {path: /hello-world-two(/|$)(.*), pathType: ImplementationSpecific, backend: {service: {name: two, port: {name: web}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: hosts}
spec:
  tls: [{hosts: [secure.test], secretName: secure-tls}]
  rules:
  - host: secure.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: two, port: {number: 80}}}}]
  - host: broken.test
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: nope, port: {number: 80}}}}]
"#;

#[test]
fn ingress_rewrites_paths_routes_hosts_terminates_tls_and_reports_missing_backends() {
    let node_ip = "127.0.0.2";
    let (http, https) = (free_port(node_ip), free_port(node_ip));
    let c = Cluster::with_nodes(
        1,
        1,
        &[&format!("--node-arg=--ingress-http-port={http}"), &format!("--node-arg=--ingress-https-port={https}")],
    );
    let node = c.get_json("nodes", "node-1").unwrap();
    assert_eq!(node["status"]["addresses"][0]["address"], node_ip, "{node}");
    let cert = rcgen::generate_simple_self_signed(vec!["secure.test".to_string()]).unwrap();
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    c.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: secure-tls}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(&cert.cert.pem()),
        b64(&cert.key_pair.serialize_pem())
    ));
    c.apply_yaml(&(backend("one") + "---" + &backend("two") + "---" + INGRESSES));
    let plain = format!("{node_ip}:{http}");
    let secure = format!("{node_ip}:{https}");

    // Regex paths with the rewrite: each lands on its service with the path rewritten.
    for (path, want) in [("/hello-world-one/greeting", "one"), ("/hello-world-two/greeting", "two")] {
        wait_for(T, &format!("GET {path} answered by {want}"), || {
            let (code, _, body) = get(&plain, "anything.test", path).ok()?;
            (code == 200 && body == want).then_some(())
        });
    }
    let (code, _, _) = get(&plain, "anything.test", "/elsewhere").unwrap();
    assert_eq!(code, 404, "no rule matches");

    // The TLS host: HTTPS with the Secret's certificate; plain HTTP redirected.
    let (code, _, body) =
        wait_for(T, "HTTPS to secure.test", || get_tls(&secure, "secure.test", "/greeting", cert.cert.der()).ok());
    assert_eq!((code, body.as_str()), (200, "two"));
    let (code, head, _) = get(&plain, "secure.test", "/greeting").unwrap();
    assert_eq!(code, 308, "{head}");
    assert!(head.to_lowercase().contains("location: https://secure.test/greeting"), "{head}");

    // A missing service: 503, an event on the Ingress, nothing else disturbed.
    let (code, _, body) = get(&plain, "broken.test", "/").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("service default/nope not found"), "{body}");
    wait_for(T, "a BackendUnavailable event on ingress hosts", || {
        let v: Value = serde_json::from_str(&c.ctl_ok(&["get", "events", "-o", "json"])).ok()?;
        v["items"]
            .as_array()?
            .iter()
            .any(|e| e["involvedObject"]["name"] == "hosts" && e["reason"] == "BackendUnavailable")
            .then_some(())
    });
    assert_eq!(get(&plain, "x.test", "/hello-world-one/greeting").unwrap().2, "one");

    // The Ingress says where it is served: the node's address.
    wait_for(T, "the Ingress's status listing the node", || {
        let ing = c.get_json("ingresses", "hosts")?;
        (ing["status"]["loadBalancer"]["ingress"][0]["ip"] == node_ip).then_some(())
    });

    // Classes: the default class is Skiff's; an Ingress naming `nginx` (as manifests in the
    // wild do) is left alone until an IngressClass `nginx` names Skiff's controller.
    let class = c.get_json("ingressclasses", "skiff").expect("the default IngressClass");
    assert_eq!(class["spec"]["controller"], "skiff.io/ingress-controller", "{class}");
    assert_eq!(class["metadata"]["annotations"]["ingressclass.kubernetes.io/is-default-class"], "true", "{class}");
    let rule = |host: &str| {
        format!("rules: [{{host: {host}, http: {{paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: one, port: {{number: 80}}}}}}}}]}}}}]")
    };
    c.apply_yaml(&format!(
        "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: by-class}}\nspec:\n  ingressClassName: nginx\n  {}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: marker}}\nspec:\n  {}\n",
        rule("nginx.test"),
        rule("marker.test")
    ));
    // The marker, written after by-class, is served: the table has seen both.
    wait_for(T, "marker.test served", || (get(&plain, "marker.test", "/greeting").ok()?.0 == 200).then_some(()));
    let (code, _, _) = get(&plain, "nginx.test", "/greeting").unwrap();
    assert_eq!(code, 404, "class nginx has no IngressClass: not Skiff's to serve");
    c.apply_yaml(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: nginx}\nspec: {controller: skiff.io/ingress-controller}\n",
    );
    wait_for(T, "nginx.test served once class nginx names Skiff's controller", || {
        let (code, _, body) = get(&plain, "nginx.test", "/greeting").ok()?;
        (code == 200 && body == "one").then_some(())
    });
    let bad = c.dir.path().join("bad-class.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: bad}\nspec: {controller: nope}\n",
    )
    .unwrap();
    let out = c.ctl(&["create", "-f", bad.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("spec.controller"), "{said}");
    assert!(c.get_json("ingressclasses", "bad").is_none(), "nothing stored");

    // A change applies without a restart: the broken host now goes to `one`.
    c.apply_yaml(&INGRESSES.replace("name: nope", "name: one"));
    wait_for(T, "broken.test answered by one after the edit", || {
        let (code, _, body) = get(&plain, "broken.test", "/greeting").ok()?;
        (code == 200 && body == "one").then_some(())
    });
}
