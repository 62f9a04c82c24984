//! The machine's real `kubectl` against a `skiff up` cluster over the Kubernetes REST API,
//! with the kubeconfig `skiff up` writes: discovery, the verbs people type daily, kubectl's
//! tables and its error texts as Kubernetes words them.

use serde_json::json;
use skiff_tests::{grpcurl_call, run_piped, wait_for, Cluster};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Kubectl {
    /// The kubeconfig `skiff up` wrote.
    config: std::path::PathBuf,
    /// Extra arguments before the verb (`--token=…`).
    before: Vec<String>,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("kubectl");
        cmd.env("KUBECONFIG", &self.config).envs(env.iter().copied()).args(&self.before).args(args);
        run_piped(cmd, stdin)
    }

    /// kubectl ARGS, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run(args, stdin, &[]);
        assert!(o.status.success(), "kubectl {args:?} failed:\n{}{}", out(&o), err(&o));
        out(&o)
    }

    /// kubectl ARGS, which must fail; its stderr.
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> String {
        let o = self.run(args, stdin, &[]);
        assert!(!o.status.success(), "kubectl {args:?} succeeded:\n{}", out(&o));
        err(&o)
    }
}

/// A kubectl that keeps printing (`logs -f`, `get --watch`): its stdout lines as they come.
struct Following {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Following {
    fn start(k: &Kubectl, args: &[&str]) -> Following {
        let mut child = Command::new("kubectl")
            .env("KUBECONFIG", &k.config)
            .args(&k.before)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl runs");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Following { child, lines, seen: Vec::new() }
    }

    /// Waits for a printed line that `wanted` accepts; fails with every line seen.
    fn until(&mut self, timeout: Duration, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if wanted(&line) {
                        return line;
                    }
                }
                Err(e) => panic!("no line with {what} ({e}); kubectl printed:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Still following (kubectl has not exited).
    fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `manager/operation` of each entry of an object's managedFields.
fn managers(k: &Kubectl, object: &str) -> String {
    let each = "jsonpath={range .metadata.managedFields[*]}{.manager}/{.operation} {end}";
    k.ok(&["get", object, "--show-managed-fields", "-o", each])
}

/// The words of a table's first line.
fn header(table: &str) -> Vec<String> {
    table.lines().next().unwrap_or_default().split_whitespace().map(String::from).collect()
}

/// An Event at events.k8s.io/v1.
const EVENT_V1: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata: {name: synced-1}
eventTime: '2026-12-07T20:00:00.000000Z'
reportingController: example.com/controller
reportingInstance: controller-0
action: Reconcile
reason: Synced
type: Normal
note: all good
regarding: {apiVersion: apps/v1, kind: Deployment, name: web, namespace: default}
";

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
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
        image: busybox:test
        command: [sleep, '3600']
        env:
        - {name: A, value: '1'}
";

/// Applied server-side with REPLICAS replaced.
const SSA: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: ssa}
spec:
  replicas: REPLICAS
  selector:
    matchLabels: {app: ssa}
  template:
    metadata:
      labels: {app: ssa}
    spec:
      containers:
      - name: app
        image: busybox:test
        env: [{name: A, value: '1'}]
";

/// Kubernetes' documented CronTab definition, with a second served version, bounds, a
/// default, and the status and scale subresources.
const CRONTAB_CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: crontabs.stable.example.com}
spec:
  group: stable.example.com
  scope: Namespaced
  names: {plural: crontabs, singular: crontab, kind: CronTab, shortNames: [ct]}
  versions:
  - name: v1beta1
    served: true
    storage: false
    schema: {openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}}
  - name: v1
    served: true
    storage: true
    subresources:
      status: {}
      scale: {specReplicasPath: .spec.replicas, statusReplicasPath: .status.replicas}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [cronSpec]
            properties:
              cronSpec: {type: string, pattern: '^(\d+|\*)(/\d+)?(\s+(\d+|\*)(/\d+)?){4}$'}
              image: {type: string}
              replicas: {type: integer, minimum: 1, maximum: 10, default: 1}
          status:
            type: object
            properties:
              replicas: {type: integer}
    additionalPrinterColumns:
    - {name: Spec, type: string, jsonPath: .spec.cronSpec}
    - {name: Replicas, type: integer, jsonPath: .spec.replicas}
    - {name: Age, type: date, jsonPath: .metadata.creationTimestamp}
"#;

const CRONTAB: &str = "apiVersion: stable.example.com/v1
kind: CronTab
metadata: {name: my-new-cron-object}
spec: {cronSpec: '* * * * */5', image: my-awesome-cron-image, typo: dropped}
";

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: fast}
";

#[test]
fn kubectl_discovers_reads_writes_watches_and_words_errors_as_kubernetes() {
    let c = Cluster::up(3, &[]);
    let k = Kubectl { config: c.dir.path().join("kubeconfig"), before: Vec::new() };

    // phase: discovery
    let version = k.ok(&["version"]);
    assert!(version.contains("Server Version: v1.32.0-skiff"), "{version}");
    let versions = k.ok(&["api-versions"]);
    for gv in ["v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1"] {
        assert!(versions.lines().any(|l| l == gv), "{gv} in {versions}");
    }
    // Aggregated discovery: kubectl learns every group's resources from /api and /apis alone.
    let cache = tempfile::tempdir().unwrap();
    let o = k.run(&["api-resources", "-v=6", &format!("--cache-dir={}", cache.path().display())], None, &[]);
    let log = err(&o);
    let gets: Vec<&str> = log.lines().filter(|l| l.contains("GET https://")).collect();
    assert!(o.status.success() && gets.len() == 2, "discovery took other requests than /api and /apis: {gets:?}");
    let resources = k.ok(&["api-resources"]);
    assert_eq!(header(&resources), ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]);
    let deployments = resources.lines().find(|l| l.starts_with("deployments ")).expect("deployments listed");
    assert_eq!(
        deployments.split_whitespace().collect::<Vec<_>>(),
        ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    );
    let explained = k.ok(&["explain", "deployment.spec.strategy"]);
    assert!(explained.contains("FIELD: strategy <DeploymentStrategy>"), "{explained}");
    assert!(
        explained.contains("rollingUpdate\t<RollingUpdateDeployment>") && explained.contains("type\t<string>"),
        "{explained}"
    );
    let namespaces = k.ok(&["get", "namespaces", "-o", "name"]);
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(namespaces.contains(&format!("namespace/{ns}\n")), "{namespaces}");
    }

    // phase: create, apply, apply a change (kubectl's strategic merge patch), tables
    assert_eq!(k.ok_with(&["create", "-f", "-"], Some(DEPLOY)), "deployment.apps/web created\n");
    assert_eq!(k.ok_with(&["apply", "-f", "-"], Some(CONFIGMAP)), "configmap/settings created\n");
    assert_eq!(k.ok_with(&["apply", "-f", "-"], Some(CONFIGMAP)), "configmap/settings unchanged\n");
    let changed = CONFIGMAP.replace("fast", "slow");
    assert_eq!(k.ok_with(&["apply", "-f", "-"], Some(&changed)), "configmap/settings configured\n");
    assert_eq!(k.ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.mode}"]), "slow");
    let table = k.ok(&["get", "deployments"]);
    assert_eq!(header(&table), ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], "{table}");

    // phase: server-side apply: field ownership, a conflict with the owner of a field, forcing
    let applied = SSA.replace("REPLICAS", "2");
    assert_eq!(
        k.ok_with(&["apply", "--server-side", "-f", "-"], Some(&applied)),
        "deployment.apps/ssa serverside-applied\n"
    );
    assert_eq!(managers(&k, "deploy/ssa"), "kubectl/Apply ");
    let owned = k.ok(&[
        "get",
        "deploy",
        "ssa",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[0].fieldsV1.f:spec}",
    ]);
    assert!(owned.contains(r#""f:replicas":{}"#) && owned.contains(r#"k:{\"name\":\"app\"}"#), "{owned}");
    assert!(
        !k.ok(&["get", "deploy", "ssa", "-o", "yaml"]).contains("managedFields"),
        "kubectl hides managedFields by default"
    );
    assert_eq!(k.ok(&["scale", "deploy", "ssa", "--replicas=3"]), "deployment.apps/ssa scaled\n");
    let refused = k.fails(&["apply", "--server-side", "-f", "-"], Some(&SSA.replace("REPLICAS", "4")));
    assert!(refused.contains("Apply failed with 1 conflict: conflict with \"kubectl\" with subresource \"scale\" using apps/v1: .spec.replicas"), "{refused}");
    assert_eq!(
        k.ok(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}"]),
        "3",
        "a refused apply changed nothing"
    );
    // Applying the value the other manager set is no conflict: the field is shared.
    k.ok_with(&["apply", "--server-side", "-f", "-"], Some(&SSA.replace("REPLICAS", "3")));
    k.ok_with(&["apply", "--server-side", "--force-conflicts", "-f", "-"], Some(&SSA.replace("REPLICAS", "4")));
    assert_eq!(k.ok(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.replicas}"]), "4");
    assert_eq!(managers(&k, "deploy/ssa"), "kubectl/Apply ", "the forced apply took the only field the scale owned");
    // A field dropped from the applied configuration is removed from the object.
    let fewer = SSA.replace("REPLICAS", "4").replace("        env: [{name: A, value: '1'}]\n", "");
    k.ok_with(&["apply", "--server-side", "-f", "-"], Some(&fewer));
    assert_eq!(k.ok(&["get", "deploy", "ssa", "-o", "jsonpath={.spec.template.spec.containers[0].env}"]), "");
    let without_manager = k.run(&["apply", "--server-side", "--field-manager=", "-f", "-"], Some(&fewer), &[]);
    assert!(!without_manager.status.success(), "an apply without a field manager was taken");
    k.ok(&["delete", "deploy", "ssa"]);
    assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("web ") && l.contains(" 0/2 ")), "{table}");
    let wide = k.ok(&["get", "deployments", "-o", "wide"]);
    assert_eq!(
        header(&wide),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
        "{wide}"
    );
    assert!(wide.contains("busybox:test") && wide.contains("app=web"), "{wide}");
    let pods = wait_for(Duration::from_secs(20), "the Deployment's 2 pods", || {
        let names = k.ok(&["get", "pods", "-l", "app=web", "-o", "name"]);
        (names.lines().count() == 2).then_some(names)
    });
    assert!(pods.lines().all(|l| l.starts_with("pod/web-")), "{pods}");
    let all = k.ok(&["get", "pods", "-A", "--field-selector", "status.phase=Pending"]);
    assert_eq!(header(&all)[..3], ["NAMESPACE", "NAME", "READY"], "{all}");
    let columns = k.ok(&["get", "deploy", "web", "-o", "custom-columns=NAME:.metadata.name,REPLICAS:.spec.replicas"]);
    assert_eq!(columns, "NAME   REPLICAS\nweb    2\n");
    let json: serde_json::Value = serde_json::from_str(&k.ok(&["get", "deploy", "web", "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "Deployment");
    assert!(k.ok(&["get", "deploy", "web", "-o", "yaml"]).contains("apiVersion: apps/v1\n"));
    let everything = k.ok(&["get", "all"]);
    assert!(everything.contains("deployment.apps/web") && everything.contains("pod/web-"), "{everything}");

    // phase: server-side dry run: every check runs, nothing is written (create, diff, delete)
    let draft = DEPLOY.replace("name: web\n  labels", "name: draft\n  labels");
    assert_eq!(
        k.ok_with(&["create", "-f", "-", "--dry-run=server"], Some(&draft)),
        "deployment.apps/draft created (server dry run)\n"
    );
    assert!(k.fails(&["get", "deploy", "draft"], None).contains("NotFound"), "a dry run wrote the Deployment");
    let invalid =
        k.fails(&["create", "-f", "-", "--dry-run=server"], Some(&draft.replace("replicas: 2", "replicas: -2")));
    assert!(invalid.contains("spec.replicas: Invalid value: -2"), "a dry run still validates: {invalid}");
    let o = k.run(&["diff", "-f", "-"], Some(&changed.replace("slow", "slower")), &[]);
    assert_eq!(o.status.code(), Some(1), "kubectl diff exits 1 when the server's dry run differs: {}", err(&o));
    assert!(out(&o).contains("-  mode: slow\n+  mode: slower\n"), "{}", out(&o));
    assert_eq!(
        k.ok(&["delete", "configmap", "settings", "--dry-run=server"]),
        "configmap \"settings\" deleted (server dry run)\n"
    );
    assert_eq!(k.ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.mode}"]), "slow");

    // phase: patches of each type, scale, label, annotate, set image, rollout
    assert_eq!(
        k.ok(&[
            "patch",
            "deploy",
            "web",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","env":[{"name":"B","value":"2"}]}]}}}}"#
        ]),
        "deployment.apps/web patched\n"
    );
    let env = k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].env[*].name}"]);
    assert_eq!(env, "A B", "a strategic merge patch merges env by name");
    k.ok(&["patch", "deploy", "web", "--type=merge", "-p", r#"{"metadata":{"labels":{"tier":"front"}}}"#]);
    k.ok(&["patch", "deploy", "web", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/replicas","value":3}]"#]);
    assert_eq!(k.ok(&["get", "deploy", "web", "-o", "jsonpath={.spec.replicas} {.metadata.labels.tier}"]), "3 front");
    assert_eq!(k.ok(&["scale", "deploy", "web", "--replicas=1"]), "deployment.apps/web scaled\n");
    assert_eq!(k.ok(&["label", "deploy", "web", "team=a"]), "deployment.apps/web labeled\n");
    assert_eq!(k.ok(&["annotate", "deploy", "web", "note=hi"]), "deployment.apps/web annotated\n");
    assert_eq!(k.ok(&["set", "image", "deploy/web", "web=busybox:other"]), "deployment.apps/web image updated\n");
    assert_eq!(
        k.ok(&[
            "get",
            "deploy",
            "web",
            "-o",
            "jsonpath={.spec.replicas} {.metadata.labels.team} {.spec.template.spec.containers[0].image}"
        ]),
        "1 a busybox:other"
    );
    assert_eq!(k.ok(&["rollout", "restart", "deploy/web"]), "deployment.apps/web restarted\n");
    let history = k.ok(&["rollout", "history", "deploy/web"]);
    assert!(
        history.contains("REVISION") && history.lines().filter(|l| l.starts_with(char::is_numeric)).count() >= 2,
        "{history}"
    );
    let described = k.ok(&["describe", "deploy", "web"]);
    assert!(described.contains("Name:                   web") && described.contains("note: hi"), "{described}");

    // phase: edit and replace; a stale replace is a conflict in Kubernetes' words
    let stale = k.ok(&["get", "configmap", "settings", "-o", "yaml"]);
    let o =
        k.run(&["edit", "configmap", "settings"], None, &[("KUBE_EDITOR", "sed -i s/mode:\\ slow/mode:\\ edited/")]);
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(k.ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.mode}"]), "edited");
    let conflict = k.fails(&["replace", "-f", "-"], Some(&stale));
    assert!(
        conflict.contains(
            "Error from server (Conflict): error when replacing \"STDIN\": Operation cannot be fulfilled on configmaps \
             \"settings\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        "{conflict}"
    );

    // phase: errors as Kubernetes words them
    let missing = k.fails(&["get", "deploy", "nope"], None);
    assert_eq!(missing.trim(), "Error from server (NotFound): deployments.apps \"nope\" not found");
    let invalid = k.fails(
        &["create", "-f", "-"],
        Some(&DEPLOY.replace("name: web\n  labels", "name: bad\n  labels").replace("replicas: 2", "replicas: -1")),
    );
    assert!(
        invalid.contains(
            "The Deployment \"bad\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        ),
        "{invalid}"
    );
    let exists = k.fails(&["create", "-f", "-"], Some(CONFIGMAP));
    assert!(
        exists.contains(
            "Error from server (AlreadyExists): error when creating \"STDIN\": configmaps \"settings\" already exists"
        ),
        "{exists}"
    );
    c.add_user("reader-token", "reader", &[]);
    let reader = Kubectl { config: c.dir.path().join("kubeconfig"), before: vec!["--token=reader-token".into()] };
    let forbidden = wait_for(Duration::from_secs(10), "the new user to be known", || {
        let e = reader.fails(&["get", "pods"], None);
        (!e.contains("Unauthorized")).then_some(e)
    });
    assert_eq!(
        forbidden.trim(),
        "Error from server (Forbidden): pods is forbidden: User \"reader\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    // kubectl auth can-i asks the same authorizer (a SelfSubjectAccessReview, in protobuf)
    assert_eq!(k.ok(&["auth", "can-i", "create", "deployments"]), "yes\n");
    let o = reader.run(&["auth", "can-i", "list", "pods"], None, &[]);
    assert_eq!((o.status.code(), out(&o)), (Some(1), "no\n".to_string()), "{}", err(&o));
    k.ok(&["create", "role", "pod-reader", "--verb=get,list", "--resource=pods"]);
    k.ok(&["create", "rolebinding", "reader-reads", "--role=pod-reader", "--user=reader"]);
    assert_eq!(reader.ok(&["auth", "can-i", "list", "pods"]), "yes\n");
    assert_eq!(reader.run(&["auth", "can-i", "delete", "pods"], None, &[]).status.code(), Some(1));
    let listed = reader.ok(&["auth", "can-i", "--list"]);
    assert_eq!(header(&listed), ["Resources", "Non-Resource", "URLs", "Resource", "Names", "Verbs"], "{listed}");
    assert!(listed.lines().any(|l| l.starts_with("pods ") && l.ends_with("[get list]")), "{listed}");
    let elsewhere = reader.ok(&["auth", "can-i", "--list", "-n", "kube-system"]);
    assert_eq!(elsewhere.lines().count(), 1, "the Role binds in default only: {elsewhere}");

    assert_eq!(reader.run(&["auth", "can-i", "list", "pods", "-n", "kube-system"], None, &[]).status.code(), Some(1));
    let stranger = Kubectl { config: c.dir.path().join("kubeconfig"), before: vec!["--token=wrong".into()] };
    assert_eq!(
        stranger.fails(&["get", "pods"], None).trim(),
        "error: You must be logged in to the server (Unauthorized)"
    );

    // phase: PriorityClasses give pods their priority at admission
    let classes = "apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: high-priority}\nvalue: 1000000\ndescription: for XYZ service pods only\n";
    assert_eq!(
        k.ok_with(&["apply", "-f", "-"], Some(classes)),
        "priorityclass.scheduling.k8s.io/high-priority created\n"
    );
    let table = k.ok(&["get", "pc"]);
    assert_eq!(header(&table), ["NAME", "VALUE", "GLOBAL-DEFAULT", "AGE", "PREEMPTIONPOLICY"], "{table}");
    k.ok(&[
        "run",
        "important",
        "--image=busybox:test",
        "--overrides={\"spec\":{\"priorityClassName\":\"high-priority\"}}",
    ]);
    assert_eq!(
        k.ok(&["get", "pod", "important", "-o", "jsonpath={.spec.priority} {.spec.preemptionPolicy}"]),
        "1000000 PreemptLowerPriority"
    );
    let missing = k.fails(
        &["run", "orphan", "--image=busybox:test", "--overrides={\"spec\":{\"priorityClassName\":\"missing\"}}"],
        None,
    );
    assert_eq!(
        missing.trim(),
        r#"Error from server (Forbidden): pods "orphan" is forbidden: no PriorityClass with name missing was found"#
    );
    let reserved = k.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: scheduling.k8s.io/v1\nkind: PriorityClass\nmetadata: {name: system-mine}\nvalue: 10\n"),
    );
    assert!(reserved.contains("priority class names with 'system-' prefix are reserved"), "{reserved}");
    k.ok(&["delete", "pod", "important", "--grace-period=0", "--force"]);

    // phase: tokens: kubectl create token (a TokenRequest), auth whoami, TokenReviews
    assert_eq!(k.ok(&["create", "serviceaccount", "bot"]), "serviceaccount/bot created\n");
    let token = k.ok(&["create", "token", "bot", "--duration=20m"]).trim().to_string();
    let bot = Kubectl { config: c.dir.path().join("kubeconfig"), before: vec![format!("--token={token}")] };
    assert_eq!(
        bot.ok(&["auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"]),
        "system:serviceaccount:default:bot"
    );
    let refused = bot.fails(&["get", "pods"], None);
    assert!(refused.contains(r#"User "system:serviceaccount:default:bot" cannot list resource "pods""#), "{refused}");
    let short = k.fails(&["create", "token", "bot", "--duration=1m"], None);
    assert!(
        short.contains("spec.expirationSeconds: Invalid value: 60: may not specify a duration less than 10 minutes"),
        "{short}"
    );
    let vault = k.ok(&["create", "token", "bot", "--audience=vault"]).trim().to_string();
    let review = |token: &str, audiences: &str| {
        let asked = format!("apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {{token: '{token}', audiences: {audiences}}}\n");
        k.ok_with(
            &[
                "create",
                "-f",
                "-",
                "-o",
                "jsonpath={.status.authenticated} {.status.user.username} {.status.audiences}",
            ],
            Some(&asked),
        )
    };
    assert_eq!(
        review(&token, "[]"),
        r#"true system:serviceaccount:default:bot ["https://kubernetes.default.svc.cluster.local"]"#
    );
    assert_eq!(review(&vault, "[]").trim(), "false", "a token for vault is not one for the API");
    assert_eq!(review(&vault, "[vault]"), r#"true system:serviceaccount:default:bot ["vault"]"#);
    assert_eq!(review("made.up.token", "[]").trim(), "false");
    let not_for_api = Kubectl { config: c.dir.path().join("kubeconfig"), before: vec![format!("--token={vault}")] };
    assert!(not_for_api.fails(&["get", "pods"], None).contains("Unauthorized"));
    let review_refused = bot.fails(
        &["create", "-f", "-"],
        Some("apiVersion: authentication.k8s.io/v1\nkind: TokenReview\nspec: {token: x}\n"),
    );
    assert!(
        review_refused.contains(r#"cannot create resource "tokenreviews" in API group "authentication.k8s.io""#),
        "{review_refused}"
    );
    k.ok(&["delete", "serviceaccount", "bot"]);
    assert!(bot.fails(&["get", "pods"], None).contains("Unauthorized"), "a token outlived its service account");

    // phase: watch: kubectl get -w prints the table's rows as changes come
    let mut watch = Following::start(&k, &["get", "configmaps", "-w", "-l", "watched=yes"]);
    let watched =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched, labels: {watched: 'yes'}}\ndata: {a: b, c: d}\n";
    // Whether the create lands before kubectl's list or after (as an event), the row prints.
    k.ok_with(&["create", "-f", "-"], Some(watched));
    let row = watch.until(Duration::from_secs(10), "the new ConfigMap", |l| l.starts_with("watched "));
    assert_eq!(
        watch.seen.first().map(|l| header(l)),
        Some(vec!["NAME".into(), "DATA".into(), "AGE".into()]),
        "{:?}",
        watch.seen
    );
    assert!(row.split_whitespace().take(2).eq(["watched", "2"]), "{row}");

    // phase: nodes: cordon, taint
    k.ok_with(&["create", "-f", "-"], Some("apiVersion: v1\nkind: Node\nmetadata: {name: spare}\n"));
    assert_eq!(k.ok(&["cordon", "spare"]), "node/spare cordoned\n");
    assert_eq!(k.ok(&["taint", "nodes", "spare", "k=v:NoSchedule"]), "node/spare tainted\n");
    assert!(k.ok(&["get", "node", "spare"]).contains("SchedulingDisabled"));
    assert_eq!(k.ok(&["get", "node", "spare", "-o", "jsonpath={.spec.taints[0].key}"]), "k");

    // phase: kubectl's typed clients send Kubernetes' protobuf encoding: its generators, run,
    // expose and drain's evictions
    for (args, said) in [
        (
            &[
                "create",
                "deployment",
                "gen",
                "--image=busybox:test",
                "--replicas=2",
                "--port=80",
                "--",
                "sleep",
                "3600",
            ][..],
            "deployment.apps/gen created",
        ),
        (&["create", "configmap", "gen", "--from-literal=a=b", "--from-literal=c=d"][..], "configmap/gen created"),
        (&["create", "secret", "generic", "gen", "--from-literal=p=q"][..], "secret/gen created"),
        (&["create", "namespace", "gen"][..], "namespace/gen created"),
        (&["create", "serviceaccount", "gen"][..], "serviceaccount/gen created"),
        (&["create", "service", "nodeport", "gen", "--tcp=80:8080"][..], "service/gen created"),
        (&["create", "job", "gen", "--image=busybox:test", "--", "true"][..], "job.batch/gen created"),
        (
            &["create", "cronjob", "gen", "--image=busybox:test", "--schedule=*/5 * * * *", "--", "true"][..],
            "cronjob.batch/gen created",
        ),
        (
            &["create", "role", "gen", "--verb=get,list", "--resource=pods"][..],
            "role.rbac.authorization.k8s.io/gen created",
        ),
        (
            &["create", "rolebinding", "gen", "--role=gen", "--user=bob"][..],
            "rolebinding.rbac.authorization.k8s.io/gen created",
        ),
        (&["create", "ingress", "gen", "--rule=a.example/=gen:80"][..], "ingress.networking.k8s.io/gen created"),
        (&["create", "quota", "gen", "--hard=pods=50"][..], "resourcequota/gen created"),
        (&["run", "gen", "--image=busybox:test", "--env=A=1", "--", "sleep", "100"][..], "pod/gen created"),
        (&["expose", "deployment", "gen", "--port=80", "--name=gen-web"][..], "service/gen-web exposed"),
    ] {
        assert_eq!(k.ok(args).trim(), said, "kubectl {args:?}");
    }
    assert_eq!(k.ok(&["get", "secret", "gen", "-o", "jsonpath={.data.p} {.type}"]), "cQ== Opaque");
    let quota = k.ok(&["get", "quota", "gen"]);
    assert_eq!(header(&quota), ["NAME", "AGE", "REQUEST", "LIMIT"], "{quota}");
    assert!(quota.lines().nth(1).is_some_and(|l| l.contains("pods: ") && l.contains("/50")), "{quota}");
    assert_eq!(
        k.ok(&["get", "deploy", "gen", "-o", "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort} {.spec.template.spec.containers[0].command}"]),
        r#"2 80 ["sleep","3600"]"#
    );
    assert_eq!(k.ok(&["get", "pod", "gen", "-o", "jsonpath={.spec.containers[0].env[0].value}"]), "1");
    assert_eq!(k.ok(&["get", "configmap", "gen", "-o", "jsonpath={.data}"]), r#"{"a":"b","c":"d"}"#);
    k.ok_with(&["create", "-f", "-"], Some("apiVersion: v1\nkind: Node\nmetadata: {name: drained}\n"));
    k.ok_with(&["create", "-f", "-"], Some("apiVersion: v1\nkind: Pod\nmetadata: {name: on-drained, labels: {app: on-drained}}\nspec:\n  nodeName: drained\n  containers: [{name: c, image: busybox:test}]\n"));
    // A running, ready pod (this node has no daemon: its status is written here) under a
    // budget that needs it: the eviction is Kubernetes' 429 until the budget goes.
    let ready = r#"{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"True"}]}}"#;
    k.ok(&["patch", "pod", "on-drained", "--subresource=status", "--type=merge", "-p", ready]);
    k.ok(&["create", "pdb", "on-drained", "--selector=app=on-drained", "--min-available=1"]);
    wait_for(Duration::from_secs(20), "the budget to count the pod healthy", || {
        (k.ok(&["get", "pdb", "on-drained", "-o", "jsonpath={.status.currentHealthy}"]) == "1").then_some(())
    });
    let eviction = r#"{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"on-drained"}}"#;
    let refused =
        k.fails(&["create", "--raw", "/api/v1/namespaces/default/pods/on-drained/eviction", "-f", "-"], Some(eviction));
    assert!(
        refused.contains("TooManyRequests")
            && refused.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{refused}"
    );
    let pdb = k.ok(&["get", "pdb", "on-drained"]);
    assert!(pdb.starts_with("NAME         MIN AVAILABLE   MAX UNAVAILABLE   ALLOWED DISRUPTIONS   AGE\n"), "{pdb}");
    assert!(
        pdb.lines().nth(1).is_some_and(|l| l.split_whitespace().take(4).eq(["on-drained", "1", "N/A", "0"])),
        "{pdb}"
    );
    k.ok(&["delete", "pdb", "on-drained"]);
    let drained = k.ok(&["drain", "drained", "--force", "--grace-period=0", "--timeout=30s"]);
    assert!(drained.contains("pod/on-drained evicted") && drained.contains("node/drained drained"), "{drained}");
    assert!(k.fails(&["get", "pod", "on-drained"], None).contains("NotFound"));

    // phase: a LimitRange defaults a new pod's resources and bounds them, in Kubernetes' words
    k.ok(&["create", "namespace", "limited"]);
    k.ok_with(
        &["apply", "-n", "limited", "-f", "-"],
        Some("apiVersion: v1\nkind: LimitRange\nmetadata: {name: cpu}\nspec:\n  limits:\n  - type: Container\n    default: {cpu: 500m}\n    defaultRequest: {cpu: 100m}\n    max: {cpu: '1'}\n"),
    );
    assert!(k.ok(&["get", "limits", "-n", "limited"]).starts_with("NAME   CREATED AT\ncpu    "));
    k.ok(&["run", "defaulted", "-n", "limited", "--image=busybox:test"]);
    assert_eq!(
        k.ok(&["get", "pod", "defaulted", "-n", "limited", "-o", "jsonpath={.spec.containers[0].resources}"]),
        r#"{"limits":{"cpu":"500m"},"requests":{"cpu":"100m"}}"#
    );
    assert_eq!(
        k.ok(&[
            "get",
            "pod",
            "defaulted",
            "-n",
            "limited",
            "-o",
            "jsonpath={.metadata.annotations.kubernetes\\.io/limit-ranger}"
        ]),
        "LimitRanger plugin set: cpu request for container defaulted; cpu limit for container defaulted"
    );
    let refused = k.fails(
        &[
            "run",
            "big",
            "-n",
            "limited",
            "--image=busybox:test",
            "--overrides",
            r#"{"spec":{"containers":[{"name":"big","image":"busybox:test","resources":{"limits":{"cpu":"2"}}}]}}"#,
        ],
        None,
    );
    assert!(
        refused.contains(r#"pods "big" is forbidden: maximum cpu usage per Container is 1, but limit is 2"#),
        "{refused}"
    );
    k.ok(&["delete", "namespace", "limited", "--wait=false"]);

    // phase: an autoscaling/v2 HorizontalPodAutoscaler with kubectl's columns; a bad one refused
    // with the field path
    k.ok_with(
        &["apply", "-f", "-"],
        Some("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: web}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  maxReplicas: 4\n"),
    );
    let hpa = k.ok(&["get", "hpa", "web"]);
    let header = hpa.lines().next().unwrap_or_default();
    assert!(
        header.split_whitespace().eq(["NAME", "REFERENCE", "TARGETS", "MINPODS", "MAXPODS", "REPLICAS", "AGE"]),
        "{hpa}"
    );
    assert!(
        hpa.lines().nth(1).is_some_and(|l| l.contains("Deployment/web") && l.contains("cpu: <unknown>/80%")),
        "{hpa}"
    );
    let refused = k.fails(
        &["apply", "-f", "-"],
        Some("apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: bad}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}\n  minReplicas: 5\n  maxReplicas: 2\n"),
    );
    assert!(
        refused.contains("spec.maxReplicas: Invalid value: 2: must be greater than or equal to `minReplicas`"),
        "{refused}"
    );
    k.ok(&["delete", "hpa", "web"]);

    // phase: `kubectl autoscale` (autoscaling/v1, in protobuf) makes the same kind of object;
    // read back at v1 it shows the cpu target as v1 names it
    assert_eq!(
        k.ok(&["autoscale", "deployment", "web", "--min=2", "--max=5", "--cpu-percent=60"]),
        "horizontalpodautoscaler.autoscaling/web autoscaled\n"
    );
    let v2: serde_json::Value = serde_json::from_str(&k.ok(&["get", "hpa", "web", "-o", "json"])).unwrap();
    assert_eq!(v2["apiVersion"], "autoscaling/v2", "{v2}");
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 60, "{v2}");
    assert_eq!((v2["spec"]["minReplicas"].as_i64(), v2["spec"]["maxReplicas"].as_i64()), (Some(2), Some(5)));
    let at_v1 = "horizontalpodautoscalers.v1.autoscaling";
    let v1: serde_json::Value = serde_json::from_str(&k.ok(&["get", at_v1, "web", "-o", "json"])).unwrap();
    assert_eq!(v1["apiVersion"], "autoscaling/v1", "{v1}");
    assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 60, "{v1}");
    // A patch written against v1 changes the stored metric.
    k.ok(&["patch", at_v1, "web", "--type=merge", "-p", r#"{"spec":{"targetCPUUtilizationPercentage":70}}"#]);
    let v2: serde_json::Value = serde_json::from_str(&k.ok(&["get", "hpa", "web", "-o", "json"])).unwrap();
    assert_eq!(v2["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"], 70, "{v2}");
    k.ok(&["delete", "hpa", "web"]);

    // phase: an events.k8s.io/v1 Event (as client-go's events recorder writes them) is a core
    // Event too; one missing what that version requires is refused by field
    k.ok_with(&["create", "-f", "-"], Some(EVENT_V1));
    let core: serde_json::Value = serde_json::from_str(&k.ok(&["get", "events", "synced-1", "-o", "json"])).unwrap();
    assert_eq!((core["message"].as_str(), core["involvedObject"]["name"].as_str()), (Some("all good"), Some("web")));
    let new: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "events.v1.events.k8s.io", "synced-1", "-o", "json"])).unwrap();
    assert_eq!((new["apiVersion"].as_str(), new["note"].as_str()), (Some("events.k8s.io/v1"), Some("all good")));
    let refused = k.fails(
        &["create", "-f", "-"],
        Some(&EVENT_V1.replace("synced-1", "synced-2").replace("action: Reconcile\n", "")),
    );
    assert!(refused.contains("action: Required value"), "{refused}");
    k.ok(&["delete", "events", "synced-1"]);

    // phase: custom resources: a definition is served at once on every master, checks its
    // schema, prints its columns, watches, and takes its subresources
    assert_eq!(
        k.ok_with(&["apply", "-f", "-"], Some(CRONTAB_CRD)),
        "customresourcedefinition.apiextensions.k8s.io/crontabs.stable.example.com created\n"
    );
    // Through another master, at once: it reads the definition it has not seen yet.
    let through = |i: usize, name: &str, cron: &str| {
        let body = json!({"resource": "crontabs.stable.example.com", "namespace": "default", "json": json!({
            "apiVersion": "stable.example.com/v1", "kind": "CronTab",
            "metadata": {"name": name}, "spec": {"cronSpec": cron}}).to_string()});
        grpcurl_call(&c.admin_token(), &c.masters[i].etcd, "skiff.api.Objects/Create", &body)
    };
    let (ok, made, why) = through(2, "via-grpc", "0 * * * *");
    assert!(ok && made.contains("via-grpc"), "{made}{why}");
    let (ok, _, refused) = through(1, "bad-grpc", "often");
    assert!(
        !ok && refused.contains("spec.cronSpec: Invalid value: \"often\": spec.cronSpec in body should match"),
        "{refused}"
    );
    k.ok(&["wait", "--for=condition=established", "crd/crontabs.stable.example.com", "--timeout=20s"]);
    let bad = CRONTAB
        .replace("'* * * * */5'", "'* * * *'")
        .replace("image:", "replicas: 15, image:")
        .replace(", typo: dropped", "");
    let refused = k.fails(&["apply", "-f", "-"], Some(&bad));
    assert!(
        refused.contains("spec.cronSpec: Invalid value: \"* * * *\": spec.cronSpec in body should match")
            && refused
                .contains("spec.replicas: Invalid value: 15: spec.replicas in body should be less than or equal to 10"),
        "{refused}"
    );
    // kubectl asks for strict field validation: a field the schema does not name is refused;
    // without it, the field is pruned.
    let strict = k.fails(&["apply", "-f", "-"], Some(CRONTAB));
    assert!(strict.contains("strict decoding error: unknown field \"spec.typo\""), "{strict}");
    assert_eq!(
        k.ok_with(&["apply", "--validate=false", "-f", "-"], Some(CRONTAB)),
        "crontab.stable.example.com/my-new-cron-object created\n"
    );
    let table = k.ok(&["get", "crontabs"]);
    assert_eq!(crate::header(&table), ["NAME", "SPEC", "REPLICAS", "AGE"], "{table}");
    let row = table.lines().find(|l| l.starts_with("my-new-cron-object ")).expect("the object listed");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cells[..7], ["my-new-cron-object", "*", "*", "*", "*", "*/5", "1"], "{table}");
    let stored: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "ct", "my-new-cron-object", "-o", "json"])).unwrap();
    assert_eq!(
        stored["spec"],
        json!({"cronSpec": "* * * * */5", "image": "my-awesome-cron-image", "replicas": 1}),
        "pruned and defaulted"
    );
    let older =
        k.ok(&["get", "crontabs.v1beta1.stable.example.com", "my-new-cron-object", "-o", "jsonpath={.apiVersion}"]);
    assert_eq!(older, "stable.example.com/v1beta1");
    let explained = k.ok(&["explain", "crontab.spec"]);
    assert!(explained.contains("cronSpec") && explained.contains("replicas"), "{explained}");
    let mut watching = Following::start(&k, &["get", "crontabs", "--watch", "--output-watch-events"]);
    watching.until(Duration::from_secs(20), "the listed object", |l| l.contains("my-new-cron-object"));
    k.ok(&["scale", "crontab", "my-new-cron-object", "--replicas=3"]);
    watching.until(Duration::from_secs(20), "the scaled object", |l| {
        l.starts_with("MODIFIED") && l.contains("my-new-cron-object") && l.split_whitespace().nth(7) == Some("3")
    });
    k.ok(&[
        "patch",
        "crontab",
        "my-new-cron-object",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":3}}"#,
    ]);
    k.ok(&["patch", "crontab", "my-new-cron-object", "--type=merge", "-p", r#"{"status":{"replicas":9}}"#]);
    let scale =
        k.ok(&["get", "--raw", "/apis/stable.example.com/v1/namespaces/default/crontabs/my-new-cron-object/scale"]);
    let scale: serde_json::Value = serde_json::from_str(&scale).unwrap();
    assert_eq!(
        (scale["spec"]["replicas"].as_i64(), scale["status"]["replicas"].as_i64()),
        (Some(3), Some(3)),
        "{scale}"
    );
    // Deleting the definition deletes its objects; a kind no longer defined is not served.
    k.ok(&["delete", "crd", "crontabs.stable.example.com"]);
    wait_for(Duration::from_secs(20), "crontabs no longer served", || {
        (!k.run(&["get", "crontabs"], None, &[]).status.success()).then_some(())
    });
    k.ok_with(&["apply", "-f", "-"], Some(CRONTAB_CRD));
    let none = k.run(&["get", "crontabs", "-o", "name"], None, &[]);
    assert!(
        none.status.success() && out(&none).is_empty(),
        "objects outlived their definition: {}{}",
        out(&none),
        err(&none)
    );
    k.ok(&["delete", "crd", "crontabs.stable.example.com"]);

    // phase: a pod with a scheduling gate shows why it waits
    k.ok(&[
        "run",
        "gated",
        "--image=busybox:test",
        "--overrides",
        r#"{"spec":{"schedulingGates":[{"name":"example.com/wait"}]}}"#,
    ]);
    let gated = k.ok(&["get", "pod", "gated"]);
    assert!(gated.lines().nth(1).is_some_and(|l| l.split_whitespace().nth(2) == Some("SchedulingGated")), "{gated}");
    k.ok(&["delete", "pod", "gated", "--grace-period=0", "--force"]);

    // phase: delete, foreground cascade waits for the dependents
    assert_eq!(k.ok(&["delete", "deploy", "web", "--cascade=foreground"]), "deployment.apps \"web\" deleted\n");
    wait_for(Duration::from_secs(20), "the Deployment and its ReplicaSets and pods gone", || {
        let left = k.ok(&["get", "deploy,rs,pods", "-l", "app=web", "-o", "name"]);
        left.trim().is_empty().then_some(())
    });
    assert_eq!(
        k.ok(&["delete", "configmap", "settings", "watched"]),
        "configmap \"settings\" deleted\nconfigmap \"watched\" deleted\n"
    );
    assert!(k.fails(&["get", "configmap", "settings"], None).contains("NotFound"));
}

#[test]
fn the_python_kubernetes_client_lists_watches_creates_patches_and_deletes() {
    let c = Cluster::up(3, &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/python/kubernetes_client.py");
    let o = Command::new("python3")
        .arg(script)
        .arg(c.dir.path().join("kubeconfig"))
        .output()
        .expect("python3 runs (scripts/setup installs the kubernetes client)");
    assert!(o.status.success(), "the Python client failed:\n{}{}", out(&o), err(&o));
    let lines: Vec<&str> = std::str::from_utf8(&o.stdout).unwrap().lines().collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("configmaps: created, listed, patched, watched from "), "{lines:?}");
    assert_eq!(lines[1..], ["deployments: created, patched (strategic, JSON, scale)", "deleted"]);
}

/// A pod with fields from Kubernetes' PodSpec that Skiff stores (some it does not act on yet)
/// and a volume type no node here can mount.
const ACCEPTED: &str = "apiVersion: v1
kind: Pod
metadata: {name: accepted}
spec:
  shareProcessNamespace: true
  serviceAccount: default
  enableServiceLinks: false
  os: {name: linux}
  imagePullSecrets: [{name: regcred}]
  topologySpreadConstraints:
  - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app: a}}}
  securityContext: {runAsNonRoot: false, seccompProfile: {type: RuntimeDefault}, supplementalGroups: [1000]}
  containers:
  - name: c
    image: busybox:test
    command: [sleep, '3600']
    resources: {limits: {cpu: 1, memory: 64Mi}}
    lifecycle: {preStop: {sleep: {seconds: 1}}}
    securityContext: {allowPrivilegeEscalation: false, seccompProfile: {type: RuntimeDefault}}
    volumeMounts: [{name: disk, mountPath: /disk}]
  volumes:
  - {name: disk, gcePersistentDisk: {pdName: my-disk, fsType: ext4}}
";

const ROLLING: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: roll}
spec:
  replicas: 3
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  selector: {matchLabels: {app: roll}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:test
        command: [sh, -c, 'echo started $VERSION; exec sleep 3600']
        env: [{name: VERSION, value: v1}]
";

#[test]
fn a_rolling_update_driven_by_kubectl_survives_a_leader_kill() {
    let mut c = Cluster::with_nodes(3, 2, &[]);
    let ids: Vec<u64> = c.masters.iter().map(|m| m.id).collect();
    let k = Kubectl { config: c.dir.path().join("kubeconfig"), before: Vec::new() };
    assert_eq!(k.ok_with(&["apply", "-f", "-"], Some(ROLLING)), "deployment.apps/roll created\n");
    let waited = k.ok(&["wait", "--for=condition=Available", "deploy/roll", "--timeout=120s"]);
    assert_eq!(waited, "deployment.apps/roll condition met\n");
    let logs = wait_for(Duration::from_secs(30), "the first pod's log", || {
        let o = k.run(&["logs", "deploy/roll"], None, &[]);
        let text = out(&o);
        text.contains("started v1").then_some(text)
    });
    assert_eq!(logs, "started v1\n");

    // phase: kubectl top reads the nodes' cgroup samples through metrics.k8s.io
    let replicas: usize = k.ok(&["get", "deploy", "roll", "-o", "jsonpath={.spec.replicas}"]).parse().unwrap();
    let top = wait_for(Duration::from_secs(30), "kubectl top pods to list every pod", || {
        let o = k.run(&["top", "pods", "-l", "app=roll", "--containers"], None, &[]);
        let text = out(&o);
        (o.status.success() && text.lines().filter(|l| l.starts_with("roll-")).count() == replicas).then_some(text)
    });
    assert_eq!(header(&top), ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"], "{top}");
    assert!(top.lines().skip(1).all(|l| l.split_whitespace().nth(1) == Some("app")), "{top}");
    let nodes = k.ok(&["top", "nodes"]);
    assert_eq!(header(&nodes), ["NAME", "CPU(cores)", "CPU(%)", "MEMORY(bytes)", "MEMORY(%)"], "{nodes}");
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    for line in nodes.lines().skip(1) {
        let memory = line.split_whitespace().nth(3).unwrap_or_default();
        assert!(memory.ends_with("Mi") && memory != "0Mi", "a node with no memory in use: {nodes}");
    }
    let raw = k.ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/namespaces/default/pods"]);
    let listed: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let memory = listed["items"][0]["containers"][0]["usage"]["memory"].as_str().unwrap_or_default();
    assert!(!memory.is_empty() && !memory.starts_with('0'), "a running container with no memory: {raw}");

    // phase: kubectl get events --watch sees a new pod scheduled; kubectl logs -f follows its
    // log as it is written
    let mut events = Following::start(&k, &["get", "events", "--watch"]);
    events.until(Duration::from_secs(20), "the events table's header", |l| l.starts_with("LAST SEEN"));
    let ticker = "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done";
    assert_eq!(k.ok(&["run", "ticker", "--image=busybox:test", "--", "sh", "-c", ticker]), "pod/ticker created\n");
    events.until(Duration::from_secs(30), "ticker's Scheduled event", |l| {
        l.contains("Scheduled") && l.contains("pod/ticker")
    });
    drop(events);
    // kubectl describe finds a pod's events by field selector (involvedObject.name, .uid, …)
    let described = wait_for(Duration::from_secs(20), "ticker's events in kubectl describe", || {
        let d = k.ok(&["describe", "pod", "ticker"]);
        d.lines().any(|l| l.contains("Scheduled") && l.contains("Successfully assigned default/ticker")).then_some(d)
    });
    assert!(!described.contains("Events:          <none>"), "{described}");
    k.ok(&["wait", "--for=condition=Ready", "pod/ticker", "--timeout=60s"]);
    let mut log = Following::start(&k, &["logs", "-f", "ticker"]);
    let first: u32 = log
        .until(Duration::from_secs(20), "a tick", |l| l.starts_with("tick "))
        .trim_start_matches("tick ")
        .parse()
        .unwrap();
    let later = format!("tick {}", first + 3);
    log.until(Duration::from_secs(20), &later, |l| l == later);
    assert!(log.running(), "kubectl logs -f stopped following");
    drop(log);
    k.ok(&["delete", "pod", "ticker", "--grace-period=0", "--force"]);

    // phase: pod fields Kubernetes accepts are stored and returned; a volume no node here can
    // mount keeps its pod in ContainerCreating with a FailedMount event, as the kubelet reports
    k.ok_with(&["apply", "-f", "-"], Some(ACCEPTED));
    let stored = k.ok(&["get", "pod", "accepted", "-o", "jsonpath={.spec.os.name} {.spec.topologySpreadConstraints[0].maxSkew} {.spec.containers[0].lifecycle.preStop.sleep.seconds} {.spec.imagePullSecrets[0].name} {.spec.volumes[0].gcePersistentDisk.pdName} {.spec.containers[0].resources.limits.cpu}"]);
    assert_eq!(stored, "linux 1 1 regcred my-disk 1");
    let mount = wait_for(Duration::from_secs(30), "a FailedMount event for the cloud disk", || {
        let e = k.ok(&[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=accepted,reason=FailedMount",
            "-o",
            "jsonpath={.items[*].message}",
        ]);
        (!e.is_empty()).then_some(e)
    });
    assert!(
        mount.contains(
            r#"MountVolume.SetUp failed for volume "disk" : gcePersistentDisk volumes cannot be mounted on this node"#
        ),
        "{mount}"
    );
    assert_eq!(
        k.ok(&["get", "pod", "accepted", "-o", "jsonpath={.status.containerStatuses[0].state.waiting.reason}"]),
        "ContainerCreating"
    );
    k.ok(&["delete", "pod", "accepted", "--grace-period=0", "--force"]);

    // phase: a paused Deployment takes the change without rolling it out
    assert_eq!(k.ok(&["rollout", "pause", "deploy/roll"]), "deployment.apps/roll paused\n");
    assert_eq!(k.ok(&["set", "env", "deploy/roll", "VERSION=v2"]), "deployment.apps/roll env updated\n");
    // Once the controller has seen the change (observedGeneration caught up), the count holds.
    wait_for(Duration::from_secs(20), "the controller to observe the paused change", || {
        let seen =
            k.ok(&["get", "deploy", "roll", "-o", "jsonpath={.metadata.generation} {.status.observedGeneration}"]);
        let (generation, observed) = seen.split_once(' ')?;
        (generation == observed).then_some(())
    });
    let sets = k.ok(&["get", "rs", "-l", "app=roll", "-o", "name"]);
    assert_eq!(sets.lines().count(), 1, "a paused Deployment made a new ReplicaSet: {sets}");

    // phase: resume, and SIGKILL the leader while kubectl (on a surviving master) follows the
    // rollout
    let leader = c.wait_leader(&ids, Duration::from_secs(20));
    let follower = c.masters.iter().find(|m| m.id != leader).unwrap().name.clone();
    let context = format!("--context=skiff-{follower}");
    let follow = Kubectl { config: c.dir.path().join("kubeconfig"), before: vec![context.clone()] };
    assert_eq!(follow.ok(&["rollout", "resume", "deploy/roll"]), "deployment.apps/roll resumed\n");
    let status = std::process::Command::new("kubectl")
        .env("KUBECONFIG", c.dir.path().join("kubeconfig"))
        .args([context.as_str(), "rollout", "status", "deploy/roll", "--timeout=180s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(60), "the rollout to start", || {
        (follow.ok(&["get", "rs", "-l", "app=roll", "-o", "name"]).lines().count() == 2).then_some(())
    });
    c.kill(leader);
    let alive: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    c.wait_leader(&alive, Duration::from_secs(20));
    c.restart_stopped();
    let o = status.wait_with_output().unwrap();
    assert!(o.status.success(), "kubectl rollout status failed across the leader kill:\n{}{}", out(&o), err(&o));
    assert!(out(&o).ends_with("deployment \"roll\" successfully rolled out\n"), "{}", out(&o));
    // kubectl logs picks one pod of the selector; old ones may still be terminating a moment
    // (and one picked may be gone by the time its log is asked for).
    wait_for(Duration::from_secs(30), "kubectl logs to show a v2 pod", || {
        (out(&follow.run(&["logs", "deploy/roll"], None, &[])) == "started v2\n").then_some(())
    });

    // phase: undo goes back to the first template
    assert_eq!(follow.ok(&["rollout", "undo", "deploy/roll"]), "deployment.apps/roll rolled back\n");
    let done = follow.ok(&["rollout", "status", "deploy/roll", "--timeout=120s"]);
    assert!(done.ends_with("deployment \"roll\" successfully rolled out\n"), "{done}");
    wait_for(Duration::from_secs(30), "kubectl logs to show a v1 pod again", || {
        (out(&follow.run(&["logs", "deploy/roll"], None, &[])) == "started v1\n").then_some(())
    });
    let history = follow.ok(&["rollout", "history", "deploy/roll"]);
    // As Kubernetes: the first ReplicaSet is taken back as revision 3 (no new one is made).
    let revisions: Vec<&str> = history
        .lines()
        .filter(|l| l.starts_with(char::is_numeric))
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    let sets =
        follow.ok(&["get", "rs", "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.template}{\"\\n\"}{end}"]);
    assert_eq!(revisions, ["2", "3"], "{history}\n{sets}");
    assert_eq!(follow.ok(&["get", "rs", "-l", "app=roll", "-o", "name"]).lines().count(), 2);
}
