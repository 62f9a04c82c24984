//! `get`: tables as kubectl prints them, `-o json|yaml|name|wide|jsonpath`, `--watch`.

use super::*;

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
pub(super) fn age(obj: &Value) -> String {
    since(obj, "/metadata/creationTimestamp")
}

/// kubectl's short age of the timestamp at `pointer` (`45s`, `12m`, `5h`, `3d`).
pub(crate) fn since(obj: &Value, pointer: &str) -> String {
    let Some(ts) = obj.pointer(pointer).and_then(Value::as_str) else {
        return "<unknown>".into();
    };
    let Some(then) = skiff_proto::time::parse_rfc3339(ts) else { return "<unknown>".into() };
    short_duration(skiff_proto::time::now_secs() - then)
}

/// kubectl's short form of `seconds` (`45s`, `12m`, `5h`, `3d`).
pub(crate) fn short_duration(seconds: i64) -> String {
    match seconds.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub(super) fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

pub(super) fn i(v: &Value, p: &str) -> i64 {
    v.pointer(p).and_then(Value::as_i64).unwrap_or(0)
}

/// kubectl's pod STATUS column.
pub(super) fn pod_status(pod: &Value) -> String {
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

pub(super) fn columns(info: &KindInfo, wide: bool) -> Vec<&'static str> {
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

pub(super) fn row(info: &KindInfo, o: &Value, wide: bool) -> Vec<String> {
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

pub(super) fn table_widths(rows: &[Vec<String>]) -> Vec<usize> {
    (0..rows[0].len()).map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0)).collect()
}

pub(super) fn print_row(r: &[String], widths: &[usize]) {
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
pub(super) struct TableShape {
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

pub(super) fn print_doc(output: &str, doc: &Value) -> Outcome {
    if let Some(template) = output.strip_prefix("jsonpath=") {
        let template = template.trim_matches('\'');
        print!(
            "{}",
            skiff_client::jsonpath::render_template(template, doc)
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
pub(super) async fn watch_and_print(
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
