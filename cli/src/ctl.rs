//! The kubectl-style verbs: `get`, `apply`, `create`, `delete`, `api-resources`. They talk to
//! any master through `skiff-client` (failover, deadlines) and print what kubectl prints.

use clap::Args;
use serde_json::Value;
use skiff_api::kinds::{self, KindInfo, KINDS};
use skiff_client::{Client, ClientConfig};
use std::io::Read;
use std::path::PathBuf;
use tonic::Code;

/// Flags every API verb takes.
#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Client config (default: $SKIFF_CONFIG, then ./.skiff/client.json).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Namespace (default: the context's).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
    /// Deadline for each request, e.g. 30s.
    #[arg(long, global = true, default_value = "30s")]
    request_timeout: String,
    /// Record the command line in the object's kubernetes.io/change-cause annotation (shown by
    /// `rollout history`).
    #[arg(long, global = true)]
    record: bool,
}

pub(crate) const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";

impl Conn {
    /// With `--record`: the command line as the object's change cause.
    pub(crate) fn record_into(&self, obj: &mut Value) {
        if self.record {
            let line: Vec<String> =
                std::env::args().map(|a| if a.contains(' ') { format!("{a:?}") } else { a }).collect();
            let mut line = line.join(" ");
            if let Some(rest) = line.split_once(' ').map(|(_, r)| r.to_string()) {
                line = format!("skiff {rest}");
            }
            obj["metadata"]["annotations"][CHANGE_CAUSE] = Value::String(line);
        }
    }

    pub(crate) fn client(&self) -> Result<Client, Failure> {
        let mut cfg = ClientConfig::discover(self.config.as_deref()).map_err(|e| Failure::Local(e.to_string()))?;
        cfg.timeout = parse_duration(&self.request_timeout).map_err(Failure::Local)?;
        if let Some(ns) = &self.namespace {
            cfg.namespace = ns.clone();
        }
        Client::new(cfg).map_err(|s| Failure::Local(s.message().to_string()))
    }
}

pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = n.parse().map_err(|_| format!("invalid duration {s:?} (use e.g. 30s, 2m)"))?;
    Ok(std::time::Duration::from_secs(match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("invalid duration {s:?} (use e.g. 30s, 2m)")),
    }))
}

/// How a verb failed: kubectl prints client-side problems as `error: …` and server answers as
/// `Error from server (Reason): …`; both exit 1.
#[derive(Debug)]
pub enum Failure {
    Local(String),
    Server(tonic::Status),
    /// Already printed (a verb that goes on past a failed object): exit 1 without more.
    Reported,
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Server(s)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Local(m) => write!(f, "error: {m}"),
            Failure::Reported => Ok(()),
            Failure::Server(s) => {
                let reason = match s.code() {
                    Code::NotFound => "NotFound",
                    Code::AlreadyExists => "AlreadyExists",
                    Code::Aborted => "Conflict",
                    Code::InvalidArgument => {
                        if s.message().contains(" is invalid: ") {
                            "Invalid"
                        } else {
                            "BadRequest"
                        }
                    }
                    Code::PermissionDenied | Code::ResourceExhausted => "Forbidden",
                    Code::Unauthenticated => "Unauthorized",
                    Code::Unavailable | Code::DeadlineExceeded => "ServiceUnavailable",
                    Code::OutOfRange => "Expired",
                    _ => "InternalError",
                };
                write!(f, "Error from server ({reason}): {}", s.message())
            }
        }
    }
}

pub type Outcome = Result<(), Failure>;

/// `TYPE NAME` or `TYPE/NAME` as verbs on one object take them: the kind and the name.
pub(crate) fn object_arg(target: &[String]) -> Result<(&'static KindInfo, &str), Failure> {
    let (kind, name) = match target {
        [one] => one.split_once('/').ok_or_else(|| Failure::Local("use TYPE NAME or TYPE/NAME".into()))?,
        [k, n] => (k.as_str(), n.as_str()),
        _ => return Err(Failure::Local("use TYPE NAME or TYPE/NAME".into())),
    };
    Ok((kind_arg(kind)?, name))
}

pub(crate) fn kind_arg(name: &str) -> Result<&'static KindInfo, Failure> {
    kinds::lookup(name).ok_or_else(|| Failure::Local(format!("the server doesn't have a resource type {name:?}")))
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime")
}

// ---- get ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct GetArgs {
    /// Kinds (`pods`, `po`, `deploy,rs,po`) and optional names, or `kind/name`.
    #[arg(required = true)]
    targets: Vec<String>,
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[arg(short = 'l', long, default_value = "")]
    selector: String,
    #[arg(long, default_value = "")]
    field_selector: String,
    /// wide, yaml, json, name or jsonpath=TEMPLATE.
    #[arg(short = 'o', long)]
    output: Option<String>,
    #[arg(long)]
    show_labels: bool,
    /// After listing, print every change until interrupted (one kind).
    #[arg(short = 'w', long)]
    watch: bool,
    #[command(flatten)]
    conn: Conn,
}

/// kubectl's short ages: 45s, 5m, 3h, 12d.
fn age(obj: &Value) -> String {
    since(obj, "/metadata/creationTimestamp")
}

/// kubectl's short age of the timestamp at `pointer` (`45s`, `12m`, `5h`, `3d`).
pub(crate) fn since(obj: &Value, pointer: &str) -> String {
    let Some(ts) = obj.pointer(pointer).and_then(Value::as_str) else {
        return "<unknown>".into();
    };
    let Some(then) = skiff_proto::time::parse_rfc3339(ts) else { return "<unknown>".into() };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    match (now - then).max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's pod STATUS column.
fn pod_status(pod: &Value) -> String {
    if !s(pod, "/metadata/deletionTimestamp").is_empty() {
        return "Terminating".into();
    }
    let inits = pod.pointer("/spec/initContainers").and_then(Value::as_array).map_or(0, |a| a.len());
    let init_statuses =
        pod.pointer("/status/initContainerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    for (n, st) in init_statuses.iter().enumerate() {
        // proto3 JSON leaves out a zero exitCode.
        if st.pointer("/state/terminated").is_some() && i(st, "/state/terminated/exitCode") == 0 {
            continue;
        }
        if let Some(r) = st.pointer("/state/waiting/reason").and_then(Value::as_str) {
            if r != "PodInitializing" {
                return format!("Init:{r}");
            }
        }
        return format!("Init:{n}/{inits}");
    }
    for st in pod.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(r) = st.pointer("/state/waiting/reason").and_then(Value::as_str) {
            return r.into();
        }
        if let Some(r) = st.pointer("/state/terminated/reason").and_then(Value::as_str) {
            return r.into();
        }
    }
    if inits > 0
        && init_statuses.len() < inits
        && s(pod, "/status/phase") == "Pending"
        && !s(pod, "/spec/nodeName").is_empty()
    {
        return format!("Init:0/{inits}");
    }
    let phase = s(pod, "/status/phase");
    if phase.is_empty() {
        "Pending".into()
    } else {
        phase.into()
    }
}

fn columns(info: &KindInfo, wide: bool) -> Vec<&'static str> {
    let mut c = match info.kind {
        "Pod" => vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
        "Deployment" => vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "ReplicaSet" => vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
        "StatefulSet" => vec!["NAME", "READY", "AGE"],
        "DaemonSet" => vec!["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "Namespace" => vec!["NAME", "STATUS", "AGE"],
        "Service" => vec!["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
        "Node" => vec!["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
        "ConfigMap" | "Secret" => vec!["NAME", "DATA", "AGE"],
        "Job" => vec!["NAME", "COMPLETIONS", "DURATION", "AGE"],
        "CronJob" => vec!["NAME", "SCHEDULE", "SUSPEND", "ACTIVE", "LAST SCHEDULE", "AGE"],
        "Event" => vec!["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"],
        _ => vec!["NAME", "AGE"],
    };
    if wide && info.kind == "Pod" {
        c.extend(["IP", "NODE"]);
    }
    c
}

fn row(info: &KindInfo, o: &Value, wide: bool) -> Vec<String> {
    let name = s(o, "/metadata/name").to_string();
    let mut r = match info.kind {
        "Pod" => {
            let statuses =
                o.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = o.pointer("/spec/containers").and_then(Value::as_array).map_or(0, |a| a.len());
            let ready = statuses.iter().filter(|c| c["ready"] == true).count();
            let restarts: i64 = statuses.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum();
            vec![name, format!("{ready}/{total}"), pod_status(o), restarts.to_string(), age(o)]
        }
        "Deployment" => vec![
            name,
            format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas")),
            i(o, "/status/updatedReplicas").to_string(),
            i(o, "/status/availableReplicas").to_string(),
            age(o),
        ],
        "ReplicaSet" => vec![
            name,
            i(o, "/spec/replicas").to_string(),
            i(o, "/status/replicas").to_string(),
            i(o, "/status/readyReplicas").to_string(),
            age(o),
        ],
        "StatefulSet" => vec![name, format!("{}/{}", i(o, "/status/readyReplicas"), i(o, "/spec/replicas")), age(o)],
        "DaemonSet" => vec![
            name,
            i(o, "/status/desiredNumberScheduled").to_string(),
            i(o, "/status/currentNumberScheduled").to_string(),
            i(o, "/status/numberReady").to_string(),
            i(o, "/status/updatedNumberScheduled").to_string(),
            i(o, "/status/numberAvailable").to_string(),
            age(o),
        ],
        "Namespace" => vec![name, s(o, "/status/phase").to_string(), age(o)],
        "Service" => {
            let ports: Vec<String> = o
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| match p.get("nodePort").and_then(Value::as_i64) {
                    Some(np) => format!("{}:{np}/{}", p["port"], s(p, "/protocol")),
                    None => format!("{}/{}", p["port"], s(p, "/protocol")),
                })
                .collect();
            let ip = s(o, "/spec/clusterIP");
            // As kubectl: an ExternalName's name, a load balancer's ingress (or <pending>).
            let ingress: Vec<&str> = o
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|i| i["ip"].as_str().or(i["hostname"].as_str()))
                .collect();
            let external = match s(o, "/spec/type") {
                "ExternalName" => s(o, "/spec/externalName").to_string(),
                "LoadBalancer" if ingress.is_empty() => "<pending>".into(),
                "LoadBalancer" => ingress.join(","),
                _ => "<none>".into(),
            };
            vec![
                name,
                s(o, "/spec/type").to_string(),
                if ip.is_empty() { "<none>".into() } else { ip.into() },
                external,
                if ports.is_empty() { "<none>".into() } else { ports.join(",") },
                age(o),
            ]
        }
        "Node" => {
            let ready = o
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .map_or("Unknown", |c| if c["status"] == "True" { "Ready" } else { "NotReady" });
            let status = if o.pointer("/spec/unschedulable") == Some(&Value::Bool(true)) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            vec![name, status, "<none>".into(), age(o), s(o, "/status/nodeInfo/kubeletVersion").to_string()]
        }
        "ConfigMap" | "Secret" => {
            let n = ["data", "binaryData"]
                .iter()
                .filter_map(|f| o.get(*f).and_then(Value::as_object))
                .map(|m| m.len())
                .sum::<usize>();
            vec![name, n.to_string(), age(o)]
        }
        "Job" => vec![name, format!("{}/{}", i(o, "/status/succeeded"), i(o, "/spec/completions")), "".into(), age(o)],
        "CronJob" => vec![
            name,
            s(o, "/spec/schedule").to_string(),
            o.pointer("/spec/suspend")
                .and_then(Value::as_bool)
                .unwrap_or(false)
                .to_string()
                .replace("false", "False")
                .replace("true", "True"),
            o.pointer("/status/active").and_then(Value::as_array).map_or(0, |a| a.len()).to_string(),
            "<none>".into(),
            age(o),
        ],
        "Event" => {
            let last = if s(o, "/lastTimestamp").is_empty() { "/metadata/creationTimestamp" } else { "/lastTimestamp" };
            let seen = since(o, last);
            let object = format!("{}/{}", s(o, "/involvedObject/kind").to_lowercase(), s(o, "/involvedObject/name"));
            vec![seen, s(o, "/type").to_string(), s(o, "/reason").to_string(), object, s(o, "/message").to_string()]
        }
        _ => vec![name, age(o)],
    };
    if wide && info.kind == "Pod" {
        let ip = s(o, "/status/podIP");
        let node = s(o, "/spec/nodeName");
        r.push(if ip.is_empty() { "<none>".into() } else { ip.into() });
        r.push(if node.is_empty() { "<none>".into() } else { node.into() });
    }
    r
}

pub(crate) fn print_table(rows: &[Vec<String>]) {
    let widths = table_widths(rows);
    for r in rows {
        print_row(r, &widths);
    }
}

fn table_widths(rows: &[Vec<String>]) -> Vec<usize> {
    (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect()
}

fn print_row(r: &[String], widths: &[usize]) {
    let cells: Vec<String> = r
        .iter()
        .enumerate()
        .map(
            |(c, v)| {
                if c + 1 == r.len() {
                    v.clone()
                } else {
                    format!("{v:<w$}", w = widths.get(c).copied().unwrap_or(0))
                }
            },
        )
        .collect();
    println!("{}", cells.join("   ").trim_end());
}

/// How `get` prints one kind's rows: the columns and the optional extras.
struct TableShape {
    info: &'static KindInfo,
    wide: bool,
    /// Several kinds at once: names print as `kind/name`.
    multi: bool,
    namespace_column: bool,
    show_labels: bool,
}

impl TableShape {
    fn header(&self) -> Vec<String> {
        let mut header: Vec<String> = columns(self.info, self.wide).iter().map(|c| c.to_string()).collect();
        if self.namespace_column {
            header.insert(0, "NAMESPACE".into());
        }
        if self.show_labels {
            header.push("LABELS".into());
        }
        header
    }

    fn row(&self, o: &Value) -> Vec<String> {
        let info = self.info;
        let mut r = row(info, o, self.wide);
        if self.multi {
            r[0] = format!("{}/{}", kinds::qualified(info).replace(info.resource, &info.kind.to_lowercase()), r[0]);
        }
        if self.namespace_column {
            r.insert(0, s(o, "/metadata/namespace").to_string());
        }
        if self.show_labels {
            let labels = o
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            r.push(if labels.is_empty() { "<none>".into() } else { labels });
        }
        r
    }
}

pub fn get(args: GetArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    if matches!(args.targets[0].as_str(), "cs" | "componentstatus" | "componentstatuses") {
        return rt.block_on(component_statuses(&client));
    }
    let ns = if args.all_namespaces { String::new() } else { client.config.namespace.clone() };
    // `deploy,rs,po`, `po/web`, `po web db`.
    let mut requests: Vec<(&'static KindInfo, Vec<String>)> = Vec::new();
    let mut rest = args.targets.iter();
    if let Some(first) = rest.next() {
        if first.contains('/') {
            for t in &args.targets {
                let (k, n) = t.split_once('/').ok_or_else(|| Failure::Local(format!("there is no need to specify a resource type as a separate argument when passing arguments in resource/name form (e.g. 'skiff get resource/<resource_name>' instead of 'skiff get resource resource/<resource_name>'): {t}")))?;
                requests.push((kind_arg(k)?, vec![n.to_string()]));
            }
        } else {
            let names: Vec<String> = rest.cloned().collect();
            for k in first.split(',') {
                requests.push((kind_arg(k)?, names.clone()));
            }
        }
    }
    let output = args.output.as_deref().unwrap_or("");
    if args.watch && requests.len() != 1 {
        return Err(Failure::Local("you may only specify a single resource type to watch".into()));
    }
    let mut widths: Vec<usize> = Vec::new();
    let mut list_version = String::new();
    let mut all_items: Vec<Value> = Vec::new();
    let mut errors = Vec::new();
    let multi = requests.len() > 1;
    let mut first_table = true;
    for (info, names) in requests.clone() {
        let mut items = Vec::new();
        if names.is_empty() {
            let list = rt.block_on(client.list(info.resource, &ns, &args.selector, &args.field_selector))?;
            items = list["items"].as_array().cloned().unwrap_or_default();
            list_version = s(&list, "/metadata/resourceVersion").to_string();
        } else {
            for n in &names {
                match rt.block_on(client.get(info.resource, &ns, n)) {
                    Ok(o) => items.push(o),
                    Err(e) => errors.push(Failure::Server(e)),
                }
            }
        }
        match output {
            "yaml" | "json" => all_items.extend(items),
            "name" => {
                for o in &items {
                    println!("{}/{}", kinds::qualified(info).replace(info.resource, &info.kind.to_lowercase()), s(o, "/metadata/name"));
                }
            }
            "" | "wide" => {
                if items.is_empty() {
                    continue;
                }
                if !first_table {
                    println!();
                }
                first_table = false;
                let shape = TableShape {
                    info,
                    wide: output == "wide",
                    multi,
                    namespace_column: args.all_namespaces && info.namespaced,
                    show_labels: args.show_labels,
                };
                let mut rows = vec![shape.header()];
                rows.extend(items.iter().map(|o| shape.row(o)));
                print_table(&rows);
                widths = table_widths(&rows);
            }
            t if t.starts_with("jsonpath=") => all_items.extend(items),
            other => return Err(Failure::Local(format!("unable to match a printer suitable for the output format {other:?}, allowed formats are: json,jsonpath,name,wide,yaml"))),
        }
    }
    let jsonpath = output.strip_prefix("jsonpath=");
    if output == "yaml" || output == "json" || jsonpath.is_some() {
        // A single named object prints as itself; anything else as a List, as kubectl does.
        let named = args.targets.len() > 1 || args.targets[0].contains('/');
        let doc = if all_items.len() == 1 && errors.is_empty() && !multi && named {
            all_items.remove(0)
        } else {
            serde_json::json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": all_items})
        };
        print_doc(output, &doc)?;
    } else if first_table && errors.is_empty() && output != "name" && !args.watch {
        eprintln!("No resources found{}.", if ns.is_empty() { String::new() } else { format!(" in {ns} namespace") });
    }
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    if args.watch {
        let (info, names) = &requests[0];
        let mut fields = args.field_selector.clone();
        if let [name] = names.as_slice() {
            fields = [fields, format!("metadata.name={name}")]
                .into_iter()
                .filter(|f| !f.is_empty())
                .collect::<Vec<_>>()
                .join(",");
        }
        let shape = TableShape {
            info,
            wide: output == "wide",
            multi: false,
            namespace_column: args.all_namespaces && info.namespaced,
            show_labels: args.show_labels,
        };
        if widths.is_empty() && (output.is_empty() || output == "wide") {
            let header = shape.header();
            print_row(&header, &table_widths(std::slice::from_ref(&header)));
            widths = table_widths(&[header]);
        }
        return rt.block_on(watch_and_print(
            &client,
            info,
            &ns,
            &args.selector,
            &fields,
            list_version,
            output,
            &shape,
            &widths,
        ));
    }
    Ok(())
}

fn print_doc(output: &str, doc: &Value) -> Outcome {
    if let Some(template) = output.strip_prefix("jsonpath=") {
        let template = template.trim_matches('\'');
        print!(
            "{}",
            crate::jsonpath::render_template(template, doc)
                .map_err(|e| Failure::Local(format!("error executing jsonpath {template:?}: {e}")))?
        );
    } else if output == "yaml" {
        print!("{}", serde_yaml::to_string(doc).map_err(|e| Failure::Local(e.to_string()))?);
    } else {
        println!("{}", serde_json::to_string_pretty(doc).map_err(|e| Failure::Local(e.to_string()))?);
    }
    Ok(())
}

/// `get -w`: every change after `version`, printed as the listing was, until interrupted. A
/// broken stream (its master died) resumes from the last version seen through another master.
#[allow(clippy::too_many_arguments)]
async fn watch_and_print(
    client: &Client,
    info: &'static KindInfo,
    ns: &str,
    labels: &str,
    fields: &str,
    mut version: String,
    output: &str,
    shape: &TableShape,
    widths: &[usize],
) -> Outcome {
    use std::io::Write;
    loop {
        let mut stream = match client.watch(info.resource, ns, labels, fields, &version).await {
            Ok(s) => s,
            Err(e) if e.code() == Code::Unavailable || e.code() == Code::DeadlineExceeded => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                continue;
            }
            Err(e) => return Err(Failure::Server(e)),
        };
        loop {
            let ev = match stream.message().await {
                Ok(Some(ev)) => ev,
                Ok(None) | Err(_) => break,
            };
            if ev.r#type == "ERROR" || ev.r#type == "BOOKMARK" {
                continue;
            }
            let obj: Value = serde_json::from_str(&ev.json).map_err(|e| Failure::Local(e.to_string()))?;
            version = s(&obj, "/metadata/resourceVersion").to_string();
            match output {
                "" | "wide" => print_row(&shape.row(&obj), widths),
                "name" => println!("{}/{}", info.kind.to_lowercase(), s(&obj, "/metadata/name")),
                "yaml" => println!(
                    "---\n{}",
                    serde_yaml::to_string(&obj).map_err(|e| Failure::Local(e.to_string()))?.trim_end()
                ),
                other => print_doc(other, &obj)?,
            }
            let _ = std::io::stdout().flush();
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

// ---- apply / create / delete -------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct FileArgs {
    /// A manifest file, a directory of them, or `-` for standard input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) conn: Conn,
}

/// Every document of every file, parsed before anything is sent: a malformed file changes
/// nothing. Errors name the file and line.
fn read_manifests(files: &[PathBuf]) -> Result<Vec<(String, Value)>, Failure> {
    let mut paths = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            paths.push(f.clone());
        } else if f.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(f)
                .map_err(|e| Failure::Local(format!("{}: {e}", f.display())))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                .collect();
            entries.sort();
            paths.extend(entries);
        } else if f.exists() {
            paths.push(f.clone());
        } else {
            return Err(Failure::Local(format!("the path {:?} does not exist", f.display().to_string())));
        }
    }
    let mut docs = Vec::new();
    for p in paths {
        let (label, text) = if p.as_os_str() == "-" {
            let mut t = String::new();
            std::io::stdin().read_to_string(&mut t).map_err(|e| Failure::Local(e.to_string()))?;
            ("STDIN".to_string(), t)
        } else {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).map_err(|e| Failure::Local(format!("{}: {e}", p.display())))?,
            )
        };
        for (n, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let v: Value = serde::Deserialize::deserialize(doc)
                .map_err(|e| Failure::Local(format!("error parsing {label}: {e}")))?;
            if v.is_null() {
                continue;
            }
            if v.get("kind").and_then(Value::as_str).is_none() {
                return Err(Failure::Local(format!(
                    "error validating {label} (document {}): Object 'Kind' is missing",
                    n + 1
                )));
            }
            docs.push((label.clone(), v));
        }
    }
    Ok(docs)
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn info_of(obj: &Value) -> Result<&'static KindInfo, Failure> {
    let kind = s(obj, "/kind");
    let api_version = s(obj, "/apiVersion");
    KINDS
        .iter()
        .find(|k| k.kind == kind && (api_version.is_empty() || k.api_version == api_version))
        .ok_or_else(|| Failure::Local(format!("resource mapping not found for name: {:?} namespace: {:?}: no matches for kind {kind:?} in version {api_version:?}", s(obj, "/metadata/name"), s(obj, "/metadata/namespace"))))
}

pub(crate) fn display_name(info: &KindInfo, obj: &Value) -> String {
    let group = info.api_version.split_once('/').map(|(g, _)| format!(".{g}")).unwrap_or_default();
    format!("{}{group}/{}", info.kind.to_lowercase(), s(obj, "/metadata/name"))
}

/// What `apply`, `create` and `replace` do with each document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyMode {
    /// Create, or merge into the live object (kubectl apply).
    Apply,
    /// Create; an existing object is an error.
    Create,
    /// Replace the live object with the document; a missing one is an error.
    Replace,
}

pub fn apply(args: FileArgs, mode: ApplyMode) -> Outcome {
    let docs = read_manifests(&args.files)?;
    apply_docs(&args.conn, docs, mode)
}

/// `kubectl create -f` or `kubectl create <generator> …`.
pub fn create(args: crate::generate::CreateArgs) -> Outcome {
    match args.what {
        Some(what) => {
            let doc = crate::generate::object(what)?;
            apply_docs(&args.files.conn, vec![("(generated)".into(), doc)], ApplyMode::Create)
        }
        None => apply(args.files, ApplyMode::Create),
    }
}

/// Applies parsed documents (`(source, document)`) one by one, reporting each.
pub fn apply_docs(conn: &Conn, docs: Vec<(String, Value)>, mode: ApplyMode) -> Outcome {
    let create_only = mode == ApplyMode::Create;
    let infos: Vec<&KindInfo> = docs.iter().map(|(_, d)| info_of(d)).collect::<Result<_, _>>()?;
    let rt = runtime();
    let _enter = rt.enter();
    let client = conn.client()?;
    let mut failed = None;
    for ((_, doc), info) in docs.iter().zip(infos) {
        let ns = if info.namespaced {
            let own = s(doc, "/metadata/namespace");
            if own.is_empty() {
                client.config.namespace.clone()
            } else {
                own.to_string()
            }
        } else {
            String::new()
        };
        let name = s(doc, "/metadata/name").to_string();
        // As kubectl: remember what was applied, so re-applying the same manifest is a no-op.
        let applied = doc.to_string();
        let mut with_annotation = doc.clone();
        if mode == ApplyMode::Apply {
            with_annotation["metadata"]["annotations"][LAST_APPLIED] = Value::String(applied.clone());
        }
        conn.record_into(&mut with_annotation);
        let result: Result<&str, tonic::Status> = rt.block_on(async {
            if mode == ApplyMode::Replace {
                let live = client.get(info.resource, &ns, &name).await?;
                let mut replacement = with_annotation.clone();
                if s(&replacement, "/metadata/resourceVersion").is_empty() {
                    // No version in the file: replace whatever is there (as kubectl does).
                    replacement["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
                }
                if replacement["metadata"]["namespace"].is_null() && info.namespaced {
                    replacement["metadata"]["namespace"] = Value::String(ns.clone());
                }
                return client.update(info.resource, &replacement).await.map(|_| "replaced");
            }
            if create_only || name.is_empty() {
                return client.create(info.resource, &ns, &with_annotation).await.map(|_| "created");
            }
            // A merge into the live object, as kubectl's patch: a write that lands between
            // the read and the update (a controller's status, say) is merged into again,
            // unless the manifest pins a resourceVersion.
            let pinned = !s(doc, "/metadata/resourceVersion").is_empty();
            let mut attempt = 0;
            loop {
                let live = match client.get(info.resource, &ns, &name).await {
                    Err(e) if e.code() == Code::NotFound => {
                        return client.create(info.resource, &ns, &with_annotation).await.map(|_| "created")
                    }
                    other => other?,
                };
                let pointer = format!("/metadata/annotations/{}", LAST_APPLIED.replace('/', "~1"));
                if live.pointer(&pointer).and_then(Value::as_str) == Some(applied.as_str()) {
                    return Ok("unchanged");
                }
                let mut merged = live.clone();
                skiff_api::object::merge_patch(&mut merged, &with_annotation);
                match client.update(info.resource, &merged).await {
                    Err(e) if e.code() == Code::Aborted && !pinned && attempt < 5 => attempt += 1,
                    other => return other.map(|_| "configured"),
                }
            }
        });
        match result {
            Ok(what) => println!("{} {what}", display_name(info, doc)),
            Err(e) => {
                eprintln!("{}", Failure::Server(e));
                failed = Some(Failure::Reported);
            }
        }
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// Kind and names, or `kind/name`.
    targets: Vec<String>,
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// Delete every object of the kind matching this label selector.
    #[arg(short = 'l', long = "selector")]
    selector: Option<String>,
    /// Delete every object of the kind in the namespace.
    #[arg(long)]
    all: bool,
    /// Seconds a pod gets to stop (-1: its own terminationGracePeriodSeconds).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    grace_period: i64,
    /// With --grace-period=0: remove pods from the API at once, without waiting for the node.
    #[arg(long)]
    force: bool,
    /// background (default), foreground or orphan (dependents keep running, ownerless).
    #[arg(long, default_value = "background")]
    cascade: String,
    #[command(flatten)]
    conn: Conn,
}

pub fn delete(args: DeleteArgs) -> Outcome {
    // Flags first: a bad one is refused even when nothing matches.
    let policy = match args.cascade.as_str() {
        "background" | "true" => "Background",
        "foreground" => "Foreground",
        "orphan" | "false" => "Orphan",
        other => {
            return Err(Failure::Local(format!("invalid --cascade {other:?}: use background, foreground or orphan")))
        }
    };
    if args.force && args.grace_period > 0 {
        return Err(Failure::Local("--force needs --grace-period=0 (or none)".into()));
    }
    let grace = if args.force { Some(0) } else { (args.grace_period >= 0).then_some(args.grace_period) };
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let mut targets: Vec<(&'static KindInfo, String, String)> = Vec::new();
    if !args.files.is_empty() {
        for (_, doc) in read_manifests(&args.files)? {
            let info = info_of(&doc)?;
            let ns = if s(&doc, "/metadata/namespace").is_empty() {
                client.config.namespace.clone()
            } else {
                s(&doc, "/metadata/namespace").into()
            };
            targets.push((info, ns, s(&doc, "/metadata/name").into()));
        }
    } else if let Some(first) = args.targets.first() {
        if first.contains('/') {
            for t in &args.targets {
                let (k, n) = t.split_once('/').unwrap_or((t, ""));
                targets.push((kind_arg(k)?, client.config.namespace.clone(), n.into()));
            }
        } else {
            let info = kind_arg(first)?;
            if args.all || args.selector.is_some() {
                let ns = if info.namespaced { client.config.namespace.clone() } else { String::new() };
                let labels = args.selector.clone().unwrap_or_default();
                let list = rt.block_on(client.list(info.resource, &ns, &labels, ""))?;
                for o in list["items"].as_array().into_iter().flatten() {
                    targets.push((info, s(o, "/metadata/namespace").to_string(), s(o, "/metadata/name").to_string()));
                }
                if targets.is_empty() {
                    println!("No resources found");
                    return Ok(());
                }
            } else if args.targets.len() < 2 {
                return Err(Failure::Local("resource(s) were provided, but no name was specified".into()));
            }
            for n in &args.targets[1..] {
                targets.push((info, client.config.namespace.clone(), n.clone()));
            }
        }
    } else {
        return Err(Failure::Local("You must provide one or more resources by argument or filename.".into()));
    }
    let mut failed = None;
    for (info, ns, name) in targets {
        match rt.block_on(client.delete_with(info.resource, &ns, &name, grace, policy)) {
            Ok(_) => println!(
                "{} {name:?} deleted",
                kinds::qualified(info).replace(info.resource, &info.kind.to_lowercase())
            ),
            Err(e) => {
                eprintln!("{}", Failure::Server(e));
                failed = Some(Failure::Reported);
            }
        }
    }
    match failed {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

pub fn api_resources() -> Outcome {
    let mut rows =
        vec![vec!["NAME".to_string(), "SHORTNAMES".into(), "APIVERSION".into(), "NAMESPACED".into(), "KIND".into()]];
    for k in KINDS {
        rows.push(vec![
            k.resource.into(),
            k.short_names.into(),
            k.api_version.into(),
            k.namespaced.to_string(),
            k.kind.into(),
        ]);
    }
    print_table(&rows);
    Ok(())
}

/// Runs a verb, printing its failure as kubectl does; the caller exits 1 on `Err`.
pub fn report(outcome: Outcome) -> anyhow::Result<()> {
    if let Err(f) = outcome {
        if !matches!(f, Failure::Reported) {
            eprintln!("{f}");
        }
        std::process::exit(1);
    }
    Ok(())
}

// ---- logs ----------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// The pod (`NAME` or `pod/NAME`).
    pod: String,
    /// The container (needed when the pod has several).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Keep streaming while the container runs.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only the last N lines (-1: all).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    tail: i64,
    /// Only lines newer than this (e.g. 10s, 5m).
    #[arg(long)]
    since: Option<String>,
    /// The previous (terminated) run of the container.
    #[arg(short = 'p', long)]
    previous: bool,
    /// Prefix each line with its time.
    #[arg(long)]
    timestamps: bool,
    /// Every container of the pod (init containers first); with -f, all at once.
    #[arg(long)]
    all_containers: bool,
    /// Prefix each line with `[pod/NAME/CONTAINER]`.
    #[arg(long)]
    prefix: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn logs(args: LogsArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let name = args.pod.strip_prefix("pod/").or_else(|| args.pod.strip_prefix("pods/")).unwrap_or(&args.pod);
    let since = args.since.as_deref().map(parse_duration).transpose().map_err(Failure::Local)?;
    let req = skiff_proto::api::PodLogRequest {
        namespace: client.config.namespace.clone(),
        name: name.to_string(),
        container: args.container.clone().unwrap_or_default(),
        follow: args.follow,
        tail_lines: (args.tail >= 0).then_some(args.tail),
        since_seconds: since.map(|d| d.as_secs() as i64),
        previous: args.previous,
        timestamps: args.timestamps,
    };
    if args.all_containers && args.container.is_some() {
        return Err(Failure::Local("--container (-c) and --all-containers go one at a time".into()));
    }
    rt.block_on(async {
        let containers: Vec<String> = if args.all_containers {
            let pod = client.get("pods", &req.namespace, &req.name).await?;
            ["initContainers", "containers"]
                .iter()
                .flat_map(|l| pod["spec"][l].as_array().cloned().unwrap_or_default())
                .filter_map(|c| c["name"].as_str().map(String::from))
                .collect()
        } else {
            vec![req.container.clone()]
        };
        let streams: Vec<(skiff_proto::api::PodLogRequest, String)> = containers
            .into_iter()
            .map(|c| {
                let label = format!("[pod/{}/{}] ", req.name, if c.is_empty() { "-" } else { c.as_str() });
                (skiff_proto::api::PodLogRequest { container: c, ..req.clone() }, label)
            })
            .collect();
        if args.follow {
            // Followed containers stream at once, interleaved.
            print_logs(&client, streams, args.prefix).await
        } else {
            // One after another, in the pod's order.
            for s in streams {
                print_logs(&client, vec![s], args.prefix).await?;
            }
            Ok(())
        }
    })
}

/// Streams the logs of `streams` (request, line label) to stdout as they come; with `prefix`,
/// whole lines only, each with its label.
async fn print_logs(client: &Client, streams: Vec<(skiff_proto::api::PodLogRequest, String)>, prefix: bool) -> Outcome {
    use std::io::Write;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    let mut tasks = Vec::new();
    for (req, label) in streams {
        let (client, tx) = (client.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = client.logs(req).await?;
            let mut partial: Vec<u8> = Vec::new();
            while let Some(chunk) = stream.message().await? {
                if !prefix {
                    let _ = tx.send(chunk.data).await;
                    continue;
                }
                partial.extend_from_slice(&chunk.data);
                while let Some(at) = partial.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = partial.drain(..=at).collect();
                    let _ = tx.send([label.as_bytes(), &line].concat()).await;
                }
            }
            if !partial.is_empty() {
                let _ = tx.send([label.as_bytes(), &partial, b"\n"].concat()).await;
            }
            Ok::<(), tonic::Status>(())
        }));
    }
    drop(tx);
    let mut out = std::io::stdout();
    while let Some(data) = rx.recv().await {
        let _ = out.write_all(&data);
        let _ = out.flush();
    }
    for t in tasks {
        t.await.map_err(|e| Failure::Local(e.to_string()))??;
    }
    Ok(())
}

// ---- label / annotate / scale ------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct MetaArgs {
    /// Kind, name, then `key=value` to set and `key-` to remove.
    #[arg(required = true, num_args = 3..)]
    args: Vec<String>,
    /// Replace values that are already set.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `label` and `annotate`: edit one metadata map with kubectl's rules, guarded by the
/// resourceVersion that was read (a concurrent change is a conflict, not lost).
/// get → `change` → update, again from a fresh read when a controller wrote the object in
/// between (a resourceVersion conflict), as kubectl's patches never conflict.
pub(crate) fn read_modify_write(
    rt: &tokio::runtime::Runtime,
    client: &Client,
    resource: &str,
    ns: &str,
    name: &str,
    mut change: impl FnMut(&mut Value) -> Result<(), Failure>,
) -> Result<Value, Failure> {
    let mut attempt = 0;
    loop {
        let mut obj = rt.block_on(client.get(resource, ns, name))?;
        change(&mut obj)?;
        match rt.block_on(client.update(resource, &obj)) {
            Err(e) if e.code() == Code::Aborted && attempt < 5 => attempt += 1,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(obj),
        }
    }
}

pub fn set_meta_map(args: MetaArgs, field: &str, verb: &str) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let info = kind_arg(&args.args[0])?;
    let name = &args.args[1];
    let ns = client.config.namespace.clone();
    let obj = read_modify_write(&rt, &client, info.resource, &ns, name, |obj| {
        let map = obj["metadata"]
            .as_object_mut()
            .expect("metadata")
            .entry(field)
            .or_insert_with(|| Value::Object(Default::default()));
        for change in &args.args[2..] {
            if let Some(key) = change.strip_suffix('-') {
                map.as_object_mut().expect("map").remove(key);
            } else if let Some((k, v)) = change.split_once('=') {
                if let Some(old) = map.get(k).and_then(Value::as_str) {
                    if old != v && !args.overwrite {
                        return Err(Failure::Local(format!(
                            "'{k}' already has a value ({old}), and --overwrite is false"
                        )));
                    }
                }
                map[k] = Value::String(v.into());
            } else {
                return Err(Failure::Local(format!("invalid {verb} argument {change:?}: use key=value or key-")));
            }
        }
        Ok(())
    })?;
    println!("{} {verb}", display_name(info, &obj));
    Ok(())
}

#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// `deployment web`, `deploy/web`, `rs web`, `sts web`.
    #[arg(required = true)]
    target: Vec<String>,
    #[arg(long, required = true)]
    replicas: i64,
    #[command(flatten)]
    conn: Conn,
}

pub fn scale(args: ScaleArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let (kind, name) = match args.target.as_slice() {
        [one] => one.split_once('/').ok_or_else(|| Failure::Local("use TYPE NAME or TYPE/NAME".into()))?,
        [k, n] => (k.as_str(), n.as_str()),
        _ => return Err(Failure::Local("use TYPE NAME or TYPE/NAME".into())),
    };
    let info = kind_arg(kind)?;
    if !info.subresources.contains("scale") {
        return Err(Failure::Local(format!("cannot scale {}: it has no scale subresource", info.resource)));
    }
    let ns = client.config.namespace.clone();
    let obj = read_modify_write(&rt, &client, info.resource, &ns, name, |obj| {
        obj["spec"]["replicas"] = Value::from(args.replicas);
        args.conn.record_into(obj);
        Ok(())
    })?;
    println!("{} scaled", display_name(info, &obj));
    Ok(())
}

// ---- componentstatuses / version -----------------------------------------------------------------

/// `get cs`: each configured master's own view — raft role, term, leader, applied index — or why
/// it did not answer. Exits 1 when any master is unhealthy.
async fn component_statuses(client: &Client) -> Outcome {
    let names: std::collections::HashMap<u64, String> =
        client.members().await.map(|m| m.into_iter().map(|m| (m.id, m.name)).collect()).unwrap_or_default();
    let name_of = |id: u64| names.get(&id).cloned().unwrap_or_else(|| format!("{id:x}"));
    let mut rows = vec![["NAME", "STATUS", "ROLE", "TERM", "LEADER", "APPLIED", "MESSAGE"].map(String::from).to_vec()];
    let mut unhealthy = 0;
    for (endpoint, status) in client.master_statuses().await {
        match status {
            Ok(st) => {
                let me = st.header.as_ref().map_or(0, |h| h.member_id);
                let role = if st.is_learner {
                    "learner"
                } else if st.leader == me {
                    "leader"
                } else {
                    "follower"
                };
                let healthy = st.leader != 0 && st.errors.is_empty();
                if !healthy {
                    unhealthy += 1;
                }
                rows.push(vec![
                    name_of(me),
                    if healthy { "Healthy" } else { "Unhealthy" }.into(),
                    role.into(),
                    st.raft_term.to_string(),
                    if st.leader == 0 { "<none>".into() } else { name_of(st.leader) },
                    st.raft_applied_index.to_string(),
                    if st.leader == 0 { "no leader".into() } else { st.errors.join("; ") },
                ]);
            }
            Err(e) => {
                unhealthy += 1;
                rows.push(vec![
                    endpoint,
                    "Unhealthy".into(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    e.message().to_string(),
                ]);
            }
        }
    }
    print_table(&rows);
    if unhealthy > 0 {
        return Err(Failure::Local(format!("{unhealthy} of {} masters unhealthy", rows.len() - 1)));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Only the client's version (no server contacted).
    #[arg(long)]
    client: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `version`: this binary's version and, unless --client, what the masters report.
pub fn version(args: VersionArgs) -> Outcome {
    println!("Client Version: v{}", env!("CARGO_PKG_VERSION"));
    if args.client {
        return Ok(());
    }
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let statuses = rt.block_on(client.master_statuses());
    match statuses.iter().find_map(|(_, s)| s.as_ref().ok()) {
        Some(st) => {
            println!("Server Version: v{} (etcd API {})", env!("CARGO_PKG_VERSION"), st.version);
            Ok(())
        }
        None => Err(Failure::Local(format!(
            "no master answered: {}",
            statuses
                .iter()
                .filter_map(|(e, s)| s.as_ref().err().map(|x| format!("{e}: {}", x.message())))
                .collect::<Vec<_>>()
                .join("; ")
        ))),
    }
}
