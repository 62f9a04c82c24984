//! `skiff rollout status | history | undo | restart` for Deployments, as kubectl does them: the
//! history is the Deployment's ReplicaSets by `deployment.kubernetes.io/revision`, undo puts a
//! revision's pod template back (the controller then revives that ReplicaSet), restart stamps
//! the template so every pod is replaced by a rolling update.

use crate::ctl::{kind_arg, parse_duration, runtime, Conn, Failure, Outcome};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use skiff_client::Client;
use std::time::{Duration, Instant};

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Wait for a rollout to finish, showing progress; exit 1 on timeout.
    Status(RolloutArgs),
    /// The revisions of a Deployment with their change causes.
    History(RolloutArgs),
    /// Roll back to the previous revision (or --to-revision N).
    Undo(RolloutArgs),
    /// Replace every pod with a rolling update.
    Restart(RolloutArgs),
    /// Stop rolling out template changes (they are kept until resume).
    Pause(RolloutArgs),
    /// Roll out template changes again.
    Resume(RolloutArgs),
}

#[derive(Args, Debug)]
pub struct RolloutArgs {
    /// `deployment/NAME` or `deployment NAME`.
    #[arg(required = true, num_args = 1..=2)]
    target: Vec<String>,
    #[arg(long, default_value_t = 0)]
    to_revision: i64,
    /// How long `status` waits (e.g. 5m); 0 waits forever.
    #[arg(long, default_value = "10m")]
    timeout: String,
    #[command(flatten)]
    conn: Conn,
}

const REVISION: &str = "deployment.kubernetes.io/revision";

fn target(args: &RolloutArgs) -> Result<String, Failure> {
    let (kind, name) = match args.target.as_slice() {
        [one] => one.split_once('/').ok_or_else(|| Failure::Local("use TYPE/NAME or TYPE NAME".into()))?,
        [k, n] => (k.as_str(), n.as_str()),
        _ => return Err(Failure::Local("use TYPE/NAME or TYPE NAME".into())),
    };
    let info = kind_arg(kind)?;
    if info.resource != "deployments" {
        return Err(Failure::Local(format!("rollout is supported for deployments here, not {}", info.resource)));
    }
    Ok(name.to_string())
}

/// The Deployment's ReplicaSets, oldest revision first.
async fn history(client: &Client, ns: &str, d: &Value) -> Result<Vec<Value>, Failure> {
    let uid = d["metadata"]["uid"].clone();
    let list = client.list("replicasets", ns, "", "").await?;
    let mut sets: Vec<Value> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|rs| rs["metadata"]["ownerReferences"].as_array().is_some_and(|o| o.iter().any(|r| r["uid"] == uid)))
        .cloned()
        .collect();
    let rev =
        |rs: &Value| rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse::<i64>().ok()).unwrap_or(0);
    sets.sort_by_key(rev);
    Ok(sets)
}

/// get → `change` → update of a Deployment, again from a fresh read when the controller wrote
/// it in between (its status and revision annotation change as it works).
async fn update_retrying(client: &Client, ns: &str, name: &str, change: impl Fn(&mut Value)) -> Result<(), Failure> {
    for attempt in 0.. {
        let mut d = client.get("deployments", ns, name).await?;
        change(&mut d);
        match client.update("deployments", &d).await {
            Err(e) if e.code() == tonic::Code::Aborted && attempt < 5 => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => return Ok(()),
        }
    }
    Ok(())
}

fn revision_of(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

pub fn run(cmd: RolloutCommand) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let args = match &cmd {
        RolloutCommand::Status(a)
        | RolloutCommand::History(a)
        | RolloutCommand::Undo(a)
        | RolloutCommand::Restart(a)
        | RolloutCommand::Pause(a)
        | RolloutCommand::Resume(a) => a,
    };
    let name = target(args)?;
    let client = args.conn.client()?;
    let ns = client.config.namespace.clone();
    rt.block_on(async {
        let d = client.get("deployments", &ns, &name).await?;
        match cmd {
            RolloutCommand::History(_) => {
                println!("deployment.apps/{name}");
                println!("{:<10} CHANGE-CAUSE", "REVISION");
                for rs in history(&client, &ns, &d).await? {
                    let cause =
                        rs["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str().unwrap_or("<none>");
                    println!("{:<10} {cause}", revision_of(&rs));
                }
                Ok(())
            }
            RolloutCommand::Undo(ref a) => {
                let sets = history(&client, &ns, &d).await?;
                let current =
                    d["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse::<i64>().ok()).unwrap_or(0);
                let target = if a.to_revision > 0 {
                    sets.iter().find(|rs| revision_of(rs) == a.to_revision).ok_or_else(|| {
                        Failure::Local(format!("unable to find specified revision {} in history", a.to_revision))
                    })?
                } else {
                    sets.iter().rev().find(|rs| revision_of(rs) != current).ok_or_else(|| {
                        Failure::Local("no rollout history found for deployment \"".to_string() + &name + "\"")
                    })?
                };
                let mut template = target["spec"]["template"].clone();
                if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
                    labels.remove("pod-template-hash");
                }
                // As kubectl: the Deployment takes the revision's change cause along with its
                // template (none if it had none).
                let cause = target["metadata"]["annotations"][crate::ctl::CHANGE_CAUSE].clone();
                update_retrying(&client, &ns, &name, |d| {
                    d["spec"]["template"] = template.clone();
                    match (&cause, d["metadata"]["annotations"].as_object_mut()) {
                        (Value::String(_), _) => d["metadata"]["annotations"][crate::ctl::CHANGE_CAUSE] = cause.clone(),
                        (_, Some(a)) => {
                            a.remove(crate::ctl::CHANGE_CAUSE);
                        }
                        _ => {}
                    }
                })
                .await?;
                println!("deployment.apps/{name} rolled back");
                Ok(())
            }
            RolloutCommand::Restart(_) => {
                let now = skiff_proto::time::now_rfc3339();
                update_retrying(&client, &ns, &name, |d| {
                    d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = json!(now)
                })
                .await?;
                println!("deployment.apps/{name} restarted");
                Ok(())
            }
            RolloutCommand::Pause(_) | RolloutCommand::Resume(_) => {
                let pause = matches!(cmd, RolloutCommand::Pause(_));
                if d["spec"]["paused"].as_bool().unwrap_or(false) == pause {
                    return Err(Failure::Local(format!(
                        "deployments.apps \"{name}\" is {}",
                        if pause { "already paused" } else { "not paused" }
                    )));
                }
                update_retrying(&client, &ns, &name, |d| d["spec"]["paused"] = json!(pause)).await?;
                println!("deployment.apps/{name} {}", if pause { "paused" } else { "resumed" });
                Ok(())
            }
            RolloutCommand::Status(ref a) => status(&client, &ns, &name, a).await,
        }
    })
}

/// kubectl's rollout status messages, polled until done or the timeout.
async fn status(client: &Client, ns: &str, name: &str, a: &RolloutArgs) -> Outcome {
    let timeout = parse_duration(&a.timeout).map_err(Failure::Local)?;
    let deadline = (timeout > Duration::ZERO).then(|| Instant::now() + timeout);
    let mut last = String::new();
    loop {
        let d = client.get("deployments", ns, name).await?;
        let want = d["spec"]["replicas"].as_i64().unwrap_or(1);
        let s = &d["status"];
        let n = |k: &str| s[k].as_i64().unwrap_or(0);
        let observed = n("observedGeneration") >= d["metadata"]["generation"].as_i64().unwrap_or(0);
        let msg = if !observed {
            "Waiting for deployment spec update to be observed...".to_string()
        } else if n("updatedReplicas") < want {
            format!("Waiting for deployment \"{name}\" rollout to finish: {} out of {want} new replicas have been updated...", n("updatedReplicas"))
        } else if n("replicas") > n("updatedReplicas") {
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
                n("replicas") - n("updatedReplicas")
            )
        } else if n("availableReplicas") < n("updatedReplicas") {
            format!(
                "Waiting for deployment \"{name}\" rollout to finish: {} of {} updated replicas are available...",
                n("availableReplicas"),
                n("updatedReplicas")
            )
        } else {
            println!("deployment \"{name}\" successfully rolled out");
            return Ok(());
        };
        if msg != last {
            println!("{msg}");
            last = msg;
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            return Err(Failure::Local(format!("timed out waiting for the rollout of deployment \"{name}\"")));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
