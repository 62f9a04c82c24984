//! `exec`: a command in a running container — its output, its stdin with `-i`, and its exit
//! code as the command's own, as kubectl gives them.

use super::*;
use skiff_proto::api::{ExecInput, ExecStart};
use std::io::{Read, Write};

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// The pod (`NAME` or `pod/NAME`).
    pod: String,
    /// The container (default: the pod's `kubectl.kubernetes.io/default-container`, else its
    /// first).
    #[arg(short = 'c', long)]
    container: Option<String>,
    /// Pass stdin to the command (it reads end-of-file when stdin ends).
    #[arg(short = 'i', long)]
    stdin: bool,
    /// Only print what the command prints (no "Defaulted container" note).
    #[arg(short = 'q', long)]
    quiet: bool,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    command: Vec<String>,
    #[command(flatten)]
    conn: Conn,
}

/// The container kubectl picks when none is named: the pod's default-container annotation,
/// else its first container (and it says so when there are several).
fn default_container(pod: &Value, quiet: bool) -> String {
    let names: Vec<&str> =
        pod["spec"]["containers"].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str()).collect();
    let annotated = s(pod, "/metadata/annotations/kubectl.kubernetes.io~1default-container");
    let chosen = if names.contains(&annotated) { annotated } else { names.first().copied().unwrap_or_default() };
    if names.len() > 1 && !quiet && annotated.is_empty() {
        eprintln!("Defaulted container {chosen:?} out of: {}", names.join(", "));
    }
    chosen.to_string()
}

pub fn exec(args: ExecArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let name =
        args.pod.strip_prefix("pod/").or_else(|| args.pod.strip_prefix("pods/")).unwrap_or(&args.pod).to_string();
    let namespace = client.config.namespace.clone();
    let code = rt.block_on(async {
        let container = match &args.container {
            Some(c) => c.clone(),
            None => default_container(&client.get("pods", &namespace, &name).await?, args.quiet),
        };
        let start =
            ExecStart { namespace, name, container, command: args.command.clone(), stdin: args.stdin, tty: false };
        let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(8);
        tx.send(ExecInput { start: Some(start), ..Default::default() }).await.expect("the receiver is here");
        if args.stdin {
            // Standard input is read on a thread of its own (it blocks), chunk by chunk.
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                let mut input = std::io::stdin().lock();
                loop {
                    let msg = match input.read(&mut buf) {
                        Ok(0) | Err(_) => ExecInput { close_stdin: true, ..Default::default() },
                        Ok(n) => ExecInput { stdin: buf[..n].to_vec(), ..Default::default() },
                    };
                    let last = msg.close_stdin;
                    if tx.blocking_send(msg).is_err() || last {
                        return;
                    }
                }
            });
        }
        // The request stream stays open (for stdin) until the command ends.
        let _keep = tx;
        let mut output = client.exec(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
        while let Some(msg) = output.message().await? {
            if !msg.stdout.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&msg.stdout).and_then(|()| out.flush());
            }
            if !msg.stderr.is_empty() {
                let _ = std::io::stderr().lock().write_all(&msg.stderr);
            }
            if let Some(exit) = msg.exit {
                // A command that could not start: the runtime's reason, then its code (126).
                if !exit.error.is_empty() {
                    eprintln!("{}", exit.error);
                }
                return Ok(exit.code);
            }
        }
        Err(Failure::Local("the exec ended without the command's exit status".into()))
    })?;
    match code {
        0 => Ok(()),
        code => {
            eprintln!("command terminated with exit code {code}");
            Err(Failure::Exit(code))
        }
    }
}
