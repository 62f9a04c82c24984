//! `get componentstatuses` and `version`.

use super::*;

/// `get cs`: each configured master's own view — raft role, term, leader, applied index — or why
/// it did not answer. Exits 1 when any master is unhealthy.
pub(super) async fn component_statuses(client: &Client) -> Outcome {
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
