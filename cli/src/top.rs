//! `skiff top nodes | pods`: cpu and memory in use, from the node daemons' cgroup samples
//! relayed by the masters (kubectl top's columns).

use crate::ctl::{print_table, runtime, Conn, Failure, Outcome};
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub enum TopCommand {
    /// Usage of each node.
    #[command(alias = "node", alias = "no")]
    Nodes(TopArgs),
    /// Usage of each pod in the namespace (-A: all namespaces).
    #[command(alias = "pod", alias = "po")]
    Pods(TopArgs),
}

#[derive(Args, Debug)]
pub struct TopArgs {
    /// Only this node or pod.
    name: Option<String>,
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[command(flatten)]
    conn: Conn,
}

fn cpu(m: i64) -> String {
    format!("{m}m")
}

fn mem(bytes: i64) -> String {
    format!("{}Mi", bytes / (1 << 20))
}

pub fn run(cmd: TopCommand) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let (args, pods) = match &cmd {
        TopCommand::Nodes(a) => (a, false),
        TopCommand::Pods(a) => (a, true),
    };
    let client = args.conn.client()?;
    rt.block_on(async {
        let nodes = client.list("nodes", "", "", "").await?;
        let names: Vec<String> = nodes["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["metadata"]["name"].as_str().map(String::from))
            .collect();
        let names: Vec<String> =
            names.into_iter().filter(|n| pods || args.name.as_deref().is_none_or(|a| a == n)).collect();
        // A node that cannot be read (its machine down) is a warning, not the end of the
        // table: as kubectl, its row shows <unknown>.
        let mut usage = Vec::new();
        let mut unknown = Vec::new();
        for n in &names {
            match client.node_usage(n).await {
                Ok(u) => usage.push(u),
                Err(e) if names.len() == 1 && !pods => return Err(Failure::Server(e)),
                Err(e) => {
                    eprintln!("warning: node {n}: {}", e.message());
                    unknown.push(n.clone());
                }
            }
        }
        if !pods {
            let mut rows =
                vec![vec!["NAME".into(), "CPU(cores)".into(), "CPU%".into(), "MEMORY(bytes)".into(), "MEMORY%".into()]];
            for u in &usage {
                let pct = |a: i64, b: i64| format!("{}%", if b > 0 { a * 100 / b } else { 0 });
                rows.push(vec![
                    u.node.clone(),
                    cpu(u.cpu_millicores),
                    pct(u.cpu_millicores, u.cpu_capacity_millicores),
                    mem(u.memory_bytes),
                    pct(u.memory_bytes, u.memory_capacity_bytes),
                ]);
            }
            for n in unknown {
                let mut row = vec!["<unknown>".to_string(); 5];
                row[0] = n;
                rows.push(row);
            }
            print_table(&rows);
            return Ok(());
        }
        let ns = client.config.namespace.clone();
        let mut rows = vec![];
        for u in &usage {
            for p in &u.pods {
                if (args.all_namespaces || p.namespace == ns) && args.name.as_deref().is_none_or(|n| n == p.name) {
                    let mut row = vec![p.name.clone(), cpu(p.cpu_millicores), mem(p.memory_bytes)];
                    if args.all_namespaces {
                        row.insert(0, p.namespace.clone());
                    }
                    rows.push(row);
                }
            }
        }
        if rows.is_empty() {
            return Err(Failure::Local(match &args.name {
                Some(n) => format!("metrics not available yet for pod {ns}/{n}"),
                None => format!("Metrics not available for pods in namespace {ns}"),
            }));
        }
        rows.sort();
        let mut header = vec!["NAME".to_string(), "CPU(cores)".into(), "MEMORY(bytes)".into()];
        if args.all_namespaces {
            header.insert(0, "NAMESPACE".into());
        }
        rows.insert(0, header);
        print_table(&rows);
        Ok(())
    })
}
