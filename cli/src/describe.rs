//! `skiff describe TYPE NAME` (or `TYPE/NAME`): kubectl's human summary — metadata, the parts
//! of spec and status people look for (pods, deployments, nodes; other kinds as YAML), the
//! conditions, and the object's Events.

use crate::ctl::{object_arg, print_table, runtime, since, Conn, Outcome};
use clap::Args;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// `TYPE NAME` or `TYPE/NAME`.
    #[arg(required = true, num_args = 1..=2)]
    target: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or_default()
}

fn map_lines(v: &Value) -> String {
    match v.as_object().filter(|m| !m.is_empty()) {
        None => "<none>".into(),
        Some(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().map(String::from).unwrap_or_else(|| v.to_string())))
            .collect::<Vec<_>>()
            .join("\n              "),
    }
}

fn line(label: &str, value: impl std::fmt::Display) {
    println!("{:<14}{value}", format!("{label}:"));
}

fn yaml_block(title: &str, v: &Value) {
    if v.is_null() {
        return;
    }
    println!("{title}:");
    let text = serde_yaml::to_string(v).unwrap_or_default();
    for l in text.lines() {
        println!("  {l}");
    }
}

fn conditions(obj: &Value) {
    let Some(list) = obj.pointer("/status/conditions").and_then(Value::as_array).filter(|l| !l.is_empty()) else {
        return;
    };
    println!("Conditions:");
    let mut rows = vec![vec!["  Type".to_string(), "Status".into(), "Reason".into()]];
    for c in list {
        rows.push(vec![format!("  {}", s(c, "/type")), s(c, "/status").into(), s(c, "/reason").into()]);
    }
    print_table(&rows);
}

fn state(c: &Value) -> String {
    let st = &c["state"];
    if st["running"].is_object() {
        format!("Running\n      Started:      {}", s(st, "/running/startedAt"))
    } else if st["terminated"].is_object() {
        format!(
            "Terminated\n      Reason:       {}\n      Exit Code:    {}",
            s(st, "/terminated/reason"),
            st["terminated"]["exitCode"].as_i64().unwrap_or(0)
        )
    } else if st["waiting"].is_object() {
        format!("Waiting\n      Reason:       {}", s(st, "/waiting/reason"))
    } else {
        "<unknown>".into()
    }
}

fn pod(obj: &Value) {
    line("Node", format!("{}/{}", s(obj, "/spec/nodeName"), s(obj, "/status/hostIP")));
    line("Status", s(obj, "/status/phase"));
    line("IP", s(obj, "/status/podIP"));
    if let Some(owner) = obj.pointer("/metadata/ownerReferences/0") {
        line("Controlled By", format!("{}/{}", s(owner, "/kind"), s(owner, "/name")));
    }
    for (title, spec_key, status_key) in [
        ("Init Containers", "initContainers", "initContainerStatuses"),
        ("Containers", "containers", "containerStatuses"),
    ] {
        let Some(list) = obj["spec"][spec_key].as_array().filter(|l| !l.is_empty()) else { continue };
        println!("{title}:");
        for c in list {
            let name = s(c, "/name");
            let st = obj["status"][status_key].as_array().and_then(|l| l.iter().find(|x| x["name"] == name)).cloned();
            println!("  {name}:");
            println!("    Image:          {}", s(c, "/image"));
            if let Some(cmd) = c["command"].as_array() {
                println!("    Command:        {}", cmd.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "));
            }
            if let Some(st) = st {
                println!("    State:          {}", state(&st));
                if st["lastState"]["terminated"].is_object() {
                    println!(
                        "    Last State:     Terminated ({}, exit code {})",
                        s(&st, "/lastState/terminated/reason"),
                        st["lastState"]["terminated"]["exitCode"].as_i64().unwrap_or(0)
                    );
                }
                println!("    Ready:          {}", if st["ready"] == true { "True" } else { "False" });
                println!("    Restart Count:  {}", st["restartCount"].as_i64().unwrap_or(0));
            }
        }
    }
}

fn deployment(obj: &Value) {
    let n = |p: &str| obj.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    line(
        "Replicas",
        format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            n("/spec/replicas"),
            n("/status/updatedReplicas"),
            n("/status/replicas"),
            n("/status/availableReplicas"),
            n("/status/unavailableReplicas")
        ),
    );
    line(
        "StrategyType",
        if s(obj, "/spec/strategy/type").is_empty() { "RollingUpdate" } else { s(obj, "/spec/strategy/type") },
    );
    yaml_block("Pod Template", &obj["spec"]["template"]);
}

fn node(obj: &Value) {
    let taints: Vec<String> = obj["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            let v = s(t, "/value");
            if v.is_empty() {
                format!("{}:{}", s(t, "/key"), s(t, "/effect"))
            } else {
                format!("{}={v}:{}", s(t, "/key"), s(t, "/effect"))
            }
        })
        .collect();
    line("Taints", if taints.is_empty() { "<none>".into() } else { taints.join("\n              ") });
    line("Unschedulable", obj["spec"]["unschedulable"].as_bool().unwrap_or(false));
    line("PodCIDR", s(obj, "/spec/podCIDR"));
    yaml_block("Addresses", &obj["status"]["addresses"]);
    yaml_block("Capacity", &obj["status"]["capacity"]);
    yaml_block("Allocatable", &obj["status"]["allocatable"]);
}

pub fn describe(args: DescribeArgs) -> Outcome {
    let (info, name) = object_arg(&args.target)?;
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let ns = if info.namespaced { client.config.namespace.clone() } else { String::new() };
    let obj = rt.block_on(client.get(info.resource, &ns, name))?;
    line("Name", s(&obj, "/metadata/name"));
    if info.namespaced {
        line("Namespace", s(&obj, "/metadata/namespace"));
    }
    line("Labels", map_lines(&obj["metadata"]["labels"]));
    line("Annotations", map_lines(&obj["metadata"]["annotations"]));
    line("Created", s(&obj, "/metadata/creationTimestamp"));
    match info.kind {
        "Pod" => pod(&obj),
        "Deployment" => deployment(&obj),
        "Node" => node(&obj),
        _ => {
            yaml_block("Spec", &obj["spec"]);
            if !obj["data"].is_null() {
                yaml_block("Data", &obj["data"]);
            }
            let mut status = obj["status"].clone();
            if let Some(m) = status.as_object_mut() {
                m.remove("conditions");
            }
            if status.as_object().is_some_and(|m| !m.is_empty()) {
                yaml_block("Status", &status);
            }
        }
    }
    conditions(&obj);
    // Events about this object (by uid), oldest first.
    let uid = obj["metadata"]["uid"].clone();
    let events = rt.block_on(client.list("events", if info.namespaced { &ns } else { "" }, "", ""))?;
    let mut mine: Vec<Value> = events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["uid"] == uid)
        .cloned()
        .collect();
    mine.sort_by_key(|e| s(e, "/lastTimestamp").to_string());
    if mine.is_empty() {
        println!("Events:       <none>");
        return Ok(());
    }
    println!("Events:");
    let mut rows = vec![vec!["  Type".to_string(), "Reason".into(), "Age".into(), "From".into(), "Message".into()]];
    rows.push(vec!["  ----".to_string(), "------".into(), "----".into(), "----".into(), "-------".into()]);
    for e in &mine {
        let age = since(e, "/lastTimestamp");
        rows.push(vec![
            format!("  {}", s(e, "/type")),
            s(e, "/reason").into(),
            age,
            s(e, "/source/component").into(),
            s(e, "/message").into(),
        ]);
    }
    print_table(&rows);
    Ok(())
}
