//! More of kubectl's verbs: `set image`, `cordon` / `uncordon`, `drain`, `taint`.

use crate::ctl::{kind_arg, read_modify_write, runtime, Conn, Failure, Outcome};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum SetCommand {
    /// Change container images of a workload: `set image deployment/web app=busybox:v2`.
    Image(SetImageArgs),
}

#[derive(Args, Debug)]
pub struct SetImageArgs {
    /// `TYPE/NAME` then `CONTAINER=IMAGE` pairs (`*=IMAGE` for every container).
    #[arg(required = true, num_args = 2..)]
    args: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

pub fn set(cmd: SetCommand) -> Outcome {
    let SetCommand::Image(a) = cmd;
    let rt = runtime();
    let _enter = rt.enter();
    let client = a.conn.client()?;
    let (kind, name) =
        a.args[0].split_once('/').ok_or_else(|| Failure::Local("use TYPE/NAME CONTAINER=IMAGE".into()))?;
    let info = kind_arg(kind)?;
    let ns = client.config.namespace.clone();
    read_modify_write(&rt, &client, info.resource, &ns, name, |obj| {
        let spec = if info.resource == "pods" {
            obj.pointer_mut("/spec")
        } else if info.resource == "cronjobs" {
            obj.pointer_mut("/spec/jobTemplate/spec/template/spec")
        } else {
            obj.pointer_mut("/spec/template/spec")
        }
        .ok_or_else(|| Failure::Local(format!("{} {name} has no pod template", info.resource)))?;
        for pair in &a.args[1..] {
            let (container, image) =
                pair.split_once('=').ok_or_else(|| Failure::Local(format!("{pair:?} is not CONTAINER=IMAGE")))?;
            let mut found = false;
            for list in ["initContainers", "containers"] {
                // `get_mut`, not indexing: indexing a missing key would insert a null.
                for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
                    if container == "*" || c["name"] == container {
                        c["image"] = json!(image);
                        found = true;
                    }
                }
            }
            if !found {
                return Err(Failure::Local(format!("unable to find container named \"{container}\"")));
            }
        }
        a.conn.record_into(obj);
        Ok(())
    })?;
    println!("{}/{name} image updated", info.resource.trim_end_matches('s'));
    Ok(())
}

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// The node.
    node: String,
    #[command(flatten)]
    conn: Conn,
}

/// `cordon` / `uncordon`: spec.unschedulable.
pub fn cordon(a: NodeArgs, unschedulable: bool) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = a.conn.client()?;
    let node = rt.block_on(client.get("nodes", "", &a.node))?;
    let verb = if unschedulable { "cordoned" } else { "uncordoned" };
    if node["spec"]["unschedulable"].as_bool().unwrap_or(false) == unschedulable {
        println!("node/{} already {verb}", a.node);
        return Ok(());
    }
    read_modify_write(&rt, &client, "nodes", "", &a.node, |node| {
        node["spec"]["unschedulable"] = json!(unschedulable);
        Ok(())
    })?;
    println!("node/{} {verb}", a.node);
    Ok(())
}

#[derive(Args, Debug)]
pub struct DrainArgs {
    node: String,
    /// Go on although DaemonSet-managed pods are on the node (they stay: their controller would
    /// put them back), as kubectl requires.
    #[arg(long)]
    ignore_daemonsets: bool,
    /// Delete pods no controller will replace.
    #[arg(long)]
    force: bool,
    /// Go on although pods use emptyDir volumes (their data is lost with them).
    #[arg(long)]
    delete_emptydir_data: bool,
    /// How long to wait for the evicted pods to be gone (e.g. 90s; 0 waits as long as it takes).
    #[arg(long, default_value = "5m")]
    timeout: String,
    #[command(flatten)]
    conn: Conn,
}

/// `drain`: cordon, then delete the node's pods (DaemonSet pods stay; unmanaged pods need --force).
pub fn drain(a: DrainArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = a.conn.client()?;
    let timeout = crate::ctl::parse_duration(&a.timeout).map_err(Failure::Local)?;
    // The node daemon writes its Node's status often: retry the cordon on a conflict.
    read_modify_write(&rt, &client, "nodes", "", &a.node, |node| {
        node["spec"]["unschedulable"] = json!(true);
        Ok(())
    })?;
    println!("node/{} cordoned", a.node);
    rt.block_on(async {
        let pods = client.list("pods", "", "", &format!("spec.nodeName={}", a.node)).await?;
        let pods = pods["items"].as_array().cloned().unwrap_or_default();
        let owner = |p: &Value| -> Option<String> {
            p["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true)?["kind"]
                .as_str()
                .map(String::from)
        };
        // Mirror pods stand for a node's static pods: the API cannot remove those, so they stay.
        let mirror = |p: &Value| !p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_null();
        let pods: Vec<Value> = pods.into_iter().filter(|p| !mirror(p)).collect();
        let daemon: Vec<&Value> = pods.iter().filter(|p| owner(p).as_deref() == Some("DaemonSet")).collect();
        let unmanaged: Vec<&Value> = pods.iter().filter(|p| owner(p).is_none()).collect();
        let local_data: Vec<&Value> = pods
            .iter()
            .filter(|p| owner(p).as_deref() != Some("DaemonSet"))
            .filter(|p| p["spec"]["volumes"].as_array().is_some_and(|v| v.iter().any(|v| !v["emptyDir"].is_null())))
            .collect();
        // As kubectl: each kind of pod drain would lose needs its flag; the first refusal wins.
        let refusals = [
            (
                &local_data,
                a.delete_emptydir_data,
                "cannot delete Pods with local storage (use --delete-emptydir-data to override)",
            ),
            (&daemon, a.ignore_daemonsets, "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)"),
            (&unmanaged, a.force, "cannot delete Pods that declare no controller (use --force to override)"),
        ];
        for (pods, allowed, why) in refusals {
            if !pods.is_empty() && !allowed {
                let names: Vec<&str> = pods.iter().filter_map(|p| p["metadata"]["name"].as_str()).collect();
                return Err(Failure::Local(format!("{why}: {}", names.join(", "))));
            }
        }
        // As kubectl: every pod is evicted at once, each retried while its disruption budget
        // does not allow it yet, and drained means the pods are gone, not just asked to go.
        let deadline = (!timeout.is_zero()).then(|| std::time::Instant::now() + timeout);
        let mut evictions = tokio::task::JoinSet::new();
        for p in pods.iter().filter(|p| owner(p).as_deref() != Some("DaemonSet")) {
            let ns = p["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            let name = p["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let evicted =
                evict_and_wait(client.clone(), ns.clone(), name.clone(), p["metadata"]["uid"].clone(), deadline);
            evictions.spawn(async move { (format!("{ns}/{name}"), evicted.await) });
        }
        let mut stuck = Vec::new();
        while let Some(done) = evictions.join_next().await {
            match done.map_err(|e| Failure::Local(e.to_string()))? {
                (_, Ok(())) => {}
                (_, Err(Some(e))) => return Err(e.into()),
                (pod, Err(None)) => stuck.push(pod),
            }
        }
        if !stuck.is_empty() {
            stuck.sort();
            return Err(Failure::Local(format!(
                "drain did not complete within {}: pods still there: {}",
                a.timeout,
                stuck.join(", ")
            )));
        }
        println!("node/{} drained", a.node);
        Ok(())
    })
}

/// Evicts one pod, retrying every 5 s while its disruption budget refuses (kubectl's
/// interval and words), then waits until it is gone. `Err(None)`: still there at `deadline`.
async fn evict_and_wait(
    client: skiff_client::Client,
    ns: String,
    name: String,
    uid: Value,
    deadline: Option<std::time::Instant>,
) -> Result<(), Option<tonic::Status>> {
    let late = || deadline.is_some_and(|d| std::time::Instant::now() > d);
    println!("evicting pod {ns}/{name}");
    loop {
        match client.evict(&ns, &name).await {
            Ok(()) => break,
            Err(e) if e.code() == tonic::Code::NotFound => break,
            Err(e) if e.code() == tonic::Code::ResourceExhausted => {
                eprintln!("error when evicting pods/{name:?} -n {ns:?} (will retry after 5s): {}", e.message());
                if late() {
                    eprintln!("pod {ns}/{name} could not be evicted before the timeout");
                    return Err(None);
                }
                tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            }
            Err(e) => return Err(Some(e)),
        }
    }
    loop {
        match client.get("pods", &ns, &name).await {
            Ok(p) if p["metadata"]["uid"] == uid => {}
            Err(e) if e.code() != tonic::Code::NotFound => {}
            Ok(_) | Err(_) => {
                println!("pod/{name} evicted");
                return Ok(());
            }
        }
        if late() {
            eprintln!("pod {ns}/{name} is still there");
            return Err(None);
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

#[derive(Args, Debug)]
pub struct TaintArgs {
    /// `node NAME` then `key[=value]:Effect` to add, `key[:Effect]-` to remove.
    #[arg(required = true, num_args = 3..)]
    args: Vec<String>,
    /// Replace a taint with the same key and effect.
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    conn: Conn,
}

pub fn taint(a: TaintArgs) -> Outcome {
    if !matches!(a.args[0].as_str(), "node" | "nodes" | "no") {
        return Err(Failure::Local("taint applies to nodes: skiff taint node NAME key=value:Effect".into()));
    }
    let rt = runtime();
    let _enter = rt.enter();
    let client = a.conn.client()?;
    let name = &a.args[1];
    read_modify_write(&rt, &client, "nodes", "", name, |node| {
        let mut taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        for spec in &a.args[2..] {
            if let Some(remove) = spec.strip_suffix('-') {
                let (key, effect) = remove.split_once(':').map_or((remove, None), |(k, e)| (k, Some(e)));
                let before = taints.len();
                taints.retain(|t| !(t["key"] == key && effect.is_none_or(|e| t["effect"] == e)));
                if taints.len() == before {
                    return Err(Failure::Local(format!("taint {remove:?} not found")));
                }
                continue;
            }
            let parsed = skiff_node::parse_taints(spec).map_err(Failure::Local)?;
            for t in parsed {
                let same = |x: &Value| x["key"] == t["key"] && x["effect"] == t["effect"];
                if taints.iter().any(same) {
                    if !a.overwrite {
                        return Err(Failure::Local(format!(
                            "node {name} already has a taint with key ({}) and effect ({}), and --overwrite is false",
                            t["key"].as_str().unwrap_or_default(),
                            t["effect"].as_str().unwrap_or_default()
                        )));
                    }
                    taints.retain(|x| !same(x));
                }
                taints.push(t);
            }
        }
        node["spec"]["taints"] = json!(taints);
        Ok(())
    })?;
    println!("node/{name} modified");
    Ok(())
}
