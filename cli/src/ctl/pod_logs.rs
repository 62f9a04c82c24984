//! `logs`: a pod's container logs, followed or not, from one or all containers.

use super::*;

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
    let name = pod_name(&args.pod);
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
pub(super) async fn print_logs(
    client: &Client,
    streams: Vec<(skiff_proto::api::PodLogRequest, String)>,
    prefix: bool,
) -> Outcome {
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
