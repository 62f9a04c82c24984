//! The `skiff` CLI's kubectl verbs against a `skiff up` cluster: apply/get/delete, kubectl's
//! output and errors, and failover when the master it talks to is gone.

use skiff_tests::{run_piped, skiff_bin, Cluster};
use std::process::{Command, Output};

fn skiff(c: &Cluster, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(skiff_bin());
    cmd.args(args).env("SKIFF_CONFIG", c.dir.path().join("client.json"));
    run_piped(cmd, stdin)
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: busybox:1.36
";

#[test]
fn apply_get_delete_errors_and_failover() {
    let c = Cluster::up(3, &[]);
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/manifests");

    // phase: apply from stdin and from a file; re-apply is a no-op
    let o = skiff(&c, &["apply", "-f", "-"], Some(DEPLOY));
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), "deployment.apps/web created\n");
    assert_eq!(out(&skiff(&c, &["apply", "-f", "-"], Some(DEPLOY))), "deployment.apps/web unchanged\n");
    let o = skiff(&c, &["apply", "-f", &format!("{fixtures}/service.yaml")], None);
    assert_eq!(out(&o), "service/my-service created\n", "{}", err(&o));

    // phase: get, as kubectl prints it
    let o = skiff(&c, &["get", "deploy"], None);
    let text = out(&o);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].split_whitespace().eq(["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]), "{lines:?}");
    assert!(lines[1].starts_with("web ") && lines[1].contains(" 0/2 "), "{lines:?}");
    let o = skiff(&c, &["get", "deploy,svc"], None);
    assert!(out(&o).contains("deployment.apps/web") && out(&o).contains("service/my-service"), "{}", out(&o));
    let o = skiff(&c, &["get", "deploy", "web", "-o", "yaml"], None);
    assert!(out(&o).starts_with("apiVersion: apps/v1\nkind: Deployment\n"), "{}", out(&o));
    let o = skiff(&c, &["get", "ns", "-o", "name"], None);
    assert!(out(&o).lines().any(|l| l == "namespace/kube-system"), "{}", out(&o));

    // phase: errors read like kubectl's and exit 1
    let o = skiff(&c, &["get", "podz"], None);
    assert_eq!(
        (o.status.code(), err(&o).trim()),
        (Some(1), r#"error: the server doesn't have a resource type "podz""#)
    );
    let o = skiff(&c, &["get", "deploy", "nope"], None);
    assert_eq!(
        (o.status.code(), err(&o).trim()),
        (Some(1), r#"Error from server (NotFound): deployments.apps "nope" not found"#)
    );
    let o = skiff(&c, &["apply", "-f", "/no/such/file.yaml"], None);
    assert!(o.status.code() == Some(1) && err(&o).contains("does not exist"), "{}", err(&o));
    let broken = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: [oops\n";
    let o = skiff(&c, &["apply", "-f", "-"], Some(broken));
    assert!(o.status.code() == Some(1) && err(&o).contains("line"), "malformed YAML names the line: {}", err(&o));
    assert!(
        err(&skiff(&c, &["get", "cm", "first"], None)).contains("NotFound"),
        "nothing from a malformed file is created"
    );
    let invalid = DEPLOY.replace("name: web\n", "name: Bad_Name\n");
    let o = skiff(&c, &["apply", "-f", "-"], Some(&invalid));
    assert!(
        o.status.code() == Some(1)
            && err(&o).contains("Error from server (Invalid)")
            && err(&o).contains("metadata.name"),
        "{}",
        err(&o)
    );
    // A document of a kind the server does not serve is reported; the others are applied.
    let mixed = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: before}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: after}\n";
    let o = skiff(&c, &["apply", "-f", "-"], Some(mixed));
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    assert_eq!(out(&o), "configmap/before created\nconfigmap/after created\n");
    assert!(err(&o).contains(r#"no matches for kind "Widget" in version "example.com/v1""#), "{}", err(&o));
    let o = skiff(&c, &["frobnicate"], None);
    assert_eq!(o.status.code(), Some(1), "unknown verb");
    let o = skiff(&c, &["get", "pods", "--frobnicate"], None);
    assert!(o.status.code() == Some(1) && err(&o).contains("--frobnicate"), "unknown flag: {}", err(&o));

    // phase: the CLI's first master is killed; the command still succeeds through another
    c.kill(c.masters[0].id);
    let o = skiff(&c, &["get", "deploy", "web", "-o", "name"], None);
    assert!(o.status.success(), "failover: {}", err(&o));
    assert_eq!(out(&o), "deployment.apps/web\n");

    // phase: label, annotate, scale
    let o = skiff(&c, &["label", "deploy", "web", "tier=front"], None);
    assert_eq!(out(&o), "deployment.apps/web labeled\n", "{}", err(&o));
    let o = skiff(&c, &["label", "deploy", "web", "tier=back"], None);
    assert!(
        o.status.code() == Some(1) && err(&o).contains("'tier' already has a value (front), and --overwrite is false"),
        "{}",
        err(&o)
    );
    assert!(skiff(&c, &["label", "deploy", "web", "tier=back", "--overwrite"], None).status.success());
    assert!(out(&skiff(&c, &["get", "deploy", "-l", "tier=back", "-o", "name"], None)).contains("deployment.apps/web"));
    assert!(skiff(&c, &["label", "deploy", "web", "tier-"], None).status.success());
    assert!(err(&skiff(&c, &["get", "deploy", "-l", "tier", "-o", "name"], None)).is_empty());
    let o = skiff(&c, &["annotate", "deploy", "web", "note=hello"], None);
    assert_eq!(out(&o), "deployment.apps/web annotated\n", "{}", err(&o));
    let o = skiff(&c, &["scale", "deploy", "web", "--replicas", "4"], None);
    assert_eq!(out(&o), "deployment.apps/web scaled\n", "{}", err(&o));
    assert!(out(&skiff(&c, &["get", "deploy", "web"], None)).contains(" 0/4 "));

    // phase: delete
    let o = skiff(&c, &["delete", "deploy", "web"], None);
    assert_eq!(out(&o), "deployment.apps \"web\" deleted\n", "{}", err(&o));
    assert!(err(&skiff(&c, &["get", "deploy"], None)).contains("No resources found in default namespace."));
}
