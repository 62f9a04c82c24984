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

/// Where an exec's stdin comes from.
enum Input {
    None,
    /// This process's stdin, read on a thread of its own (it blocks), chunk by chunk.
    Terminal,
    Bytes(Vec<u8>),
}

/// Runs `start` and hands each piece of its stdout and stderr to `out` and `err`; the command's
/// exit code (126 for one that could not start, whose reason goes to `err`).
async fn run(
    client: &Client,
    start: ExecStart,
    input: Input,
    mut out: impl FnMut(&[u8]),
    mut err: impl FnMut(&[u8]),
) -> Result<i32, Failure> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecInput>(8);
    tx.send(ExecInput { start: Some(start), ..Default::default() }).await.expect("the receiver is here");
    match input {
        Input::None => {}
        Input::Terminal => {
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
        Input::Bytes(bytes) => {
            let tx = tx.clone();
            tokio::spawn(async move {
                for chunk in bytes.chunks(256 * 1024) {
                    if tx.send(ExecInput { stdin: chunk.to_vec(), ..Default::default() }).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(ExecInput { close_stdin: true, ..Default::default() }).await;
            });
        }
    }
    // The request stream stays open (for stdin) until the command ends.
    let _keep = tx;
    let mut output = client.exec(tokio_stream::wrappers::ReceiverStream::new(rx)).await?;
    while let Some(msg) = output.message().await? {
        if !msg.stdout.is_empty() {
            out(&msg.stdout);
        }
        if !msg.stderr.is_empty() {
            err(&msg.stderr);
        }
        if let Some(exit) = msg.exit {
            if !exit.error.is_empty() {
                err(format!("{}\n", exit.error).as_bytes());
            }
            return Ok(exit.code);
        }
    }
    Err(Failure::Local("the exec ended without the command's exit status".into()))
}

fn to_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

fn to_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// `pod/NAME` or `NAME`.
pub(super) fn pod_name(arg: &str) -> String {
    arg.strip_prefix("pod/").or_else(|| arg.strip_prefix("pods/")).unwrap_or(arg).to_string()
}

/// The container a command runs in: the one named, else kubectl's default.
async fn container_of(
    client: &Client,
    ns: &str,
    pod: &str,
    named: &Option<String>,
    quiet: bool,
) -> Result<String, Failure> {
    Ok(match named {
        Some(c) => c.clone(),
        None => default_container(&client.get("pods", ns, pod).await?, quiet),
    })
}

/// kubectl's way out of a command that failed: what it says, and its exit code.
fn finish(code: i32) -> Outcome {
    match code {
        0 => Ok(()),
        code => {
            eprintln!("command terminated with exit code {code}");
            Err(Failure::Exit(code))
        }
    }
}

pub fn exec(args: ExecArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let name = pod_name(&args.pod);
    let namespace = client.config.namespace.clone();
    let code = rt.block_on(async {
        let container = container_of(&client, &namespace, &name, &args.container, args.quiet).await?;
        let start =
            ExecStart { namespace, name, container, command: args.command.clone(), stdin: args.stdin, tty: false };
        let input = if args.stdin { Input::Terminal } else { Input::None };
        run(&client, start, input, to_stdout, to_stderr).await
    })?;
    finish(code)
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// What to copy: a local path or `[NAMESPACE/]POD:PATH`.
    src: String,
    /// Where to: a local path or `[NAMESPACE/]POD:PATH` (one of the two is in a pod).
    dest: String,
    /// The container (default: the pod's default, as for exec).
    #[arg(short = 'c', long)]
    container: Option<String>,
    #[command(flatten)]
    conn: Conn,
}

/// `[NAMESPACE/]POD:PATH` split, or None for a local path.
fn remote(arg: &str) -> Option<(Option<&str>, &str, &str)> {
    let (pod, path) = arg.split_once(':').filter(|(pod, _)| !pod.is_empty())?;
    let (ns, pod) = match pod.split_once('/') {
        Some((ns, pod)) => (Some(ns), pod),
        None => (None, pod),
    };
    Some((ns, pod, path))
}

/// A path's parent and last part, as tar's `-C DIR NAME` take them (`/tmp/a/` → `/tmp`, `a`).
fn split_path(path: &str) -> (String, String) {
    let trimmed = path.trim_end_matches('/');
    let p = std::path::Path::new(if trimmed.is_empty() { "/" } else { trimmed });
    let parent = p.parent().map(|d| d.display().to_string()).filter(|d| !d.is_empty()).unwrap_or_else(|| ".".into());
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| ".".into());
    (parent, name)
}

/// `cp`: a file or directory into a pod or out of it, as a tar stream through `tar` in the
/// container (as kubectl does: the container needs a `tar`). The destination becomes a copy
/// of the source.
pub fn cp(args: CpArgs) -> Outcome {
    let rt = runtime();
    let _enter = rt.enter();
    let client = args.conn.client()?;
    let (into, ns, pod, remote_path, local) = match (remote(&args.src), remote(&args.dest)) {
        (None, Some((ns, pod, path))) => (true, ns, pod, path, args.src.as_str()),
        (Some((ns, pod, path)), None) => (false, ns, pod, path, args.dest.as_str()),
        _ => return Err(Failure::Local("one of src or dest must be a local file specification".into())),
    };
    let namespace = ns.map(str::to_string).unwrap_or_else(|| client.config.namespace.clone());
    let (dir, name) = split_path(remote_path);
    let code = rt.block_on(async {
        let container = container_of(&client, &namespace, pod, &args.container, false).await?;
        let start = |command: Vec<&str>, stdin: bool| ExecStart {
            namespace: namespace.clone(),
            name: pod.to_string(),
            container: container.clone(),
            command: command.into_iter().map(String::from).collect(),
            stdin,
            tty: false,
        };
        if into {
            let mut archive = tar::Builder::new(Vec::new());
            archive.follow_symlinks(false);
            let source = std::path::Path::new(local);
            let added = if source.is_dir() {
                archive.append_dir_all(&name, source)
            } else {
                archive.append_path_with_name(source, &name)
            };
            let bytes =
                added.and_then(|()| archive.into_inner()).map_err(|e| Failure::Local(format!("{local}: {e}")))?;
            let command = vec!["tar", "-xmf", "-", "-C", dir.as_str()];
            run(&client, start(command, true), Input::Bytes(bytes), to_stdout, to_stderr).await
        } else {
            let mut received = Vec::new();
            let command = vec!["tar", "-cf", "-", "-C", dir.as_str(), name.as_str()];
            let code =
                run(&client, start(command, false), Input::None, |b| received.extend_from_slice(b), to_stderr).await?;
            if code == 0 {
                unpack(&received, &name, std::path::Path::new(local))?;
            }
            Ok(code)
        }
    })?;
    finish(code)
}

/// Unpacks an archive whose entries are `NAME` and `NAME/…` so that `dest` is `NAME`'s copy;
/// entries that would land outside `dest` (`..`, or through a link) are refused, as kubectl
/// does.
fn unpack(bytes: &[u8], name: &str, dest: &std::path::Path) -> Result<(), Failure> {
    let fail = |e: std::io::Error| Failure::Local(format!("{}: {e}", dest.display()));
    let mut archive = tar::Archive::new(bytes);
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let path = entry.path().map_err(fail)?.into_owned();
        let rest = path
            .strip_prefix(name)
            .map_err(|_| Failure::Local(format!("the archive holds {} outside {name}", path.display())))?;
        if rest.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(Failure::Local(format!("refusing {}: it leaves the destination", path.display())));
        }
        let target = dest.join(rest);
        // No entry is written through a link an earlier entry made (`link -> /etc`, then
        // `link/passwd`).
        let mut through = dest.to_path_buf();
        for part in rest.parent().into_iter().flat_map(|p| p.components()) {
            through.push(part);
            if std::fs::symlink_metadata(&through).is_ok_and(|m| m.file_type().is_symlink()) {
                return Err(Failure::Local(format!("refusing {}: it goes through a link", path.display())));
            }
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(fail)?;
        }
        entry.unpack(&target).map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &[(&str, Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, link) in entries {
            let mut h = tar::Header::new_gnu();
            match link {
                Some(target) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_size(0);
                    b.append_link(&mut h, path, target).unwrap();
                }
                None => {
                    h.set_size(2);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, &b"hi"[..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn a_copy_out_of_a_pod_stays_inside_its_destination() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dest = dir.path().join("copy");
        unpack(&archive(&[("d/a", None), ("d/sub/b", None)]), "d", &dest).map_err(|e| e.to_string()).unwrap();
        assert_eq!(std::fs::read(dest.join("sub/b")).unwrap(), b"hi");
        let through = archive(&[("d/link", Some(outside.path().to_str().unwrap())), ("d/link/evil", None)]);
        let refused = unpack(&through, "d", &dir.path().join("two")).unwrap_err().to_string();
        assert!(refused.contains("goes through a link"), "{refused}");
        assert!(!outside.path().join("evil").exists());
        let elsewhere = archive(&[("other/a", None)]);
        assert!(unpack(&elsewhere, "d", &dir.path().join("three")).is_err());
    }

    #[test]
    fn pod_paths_split_as_kubectl_reads_them() {
        assert_eq!(remote("web:/tmp/x"), Some((None, "web", "/tmp/x")));
        assert_eq!(remote("team/web:/tmp/x"), Some((Some("team"), "web", "/tmp/x")));
        assert_eq!(remote("/tmp/local"), None);
        assert_eq!(split_path("/tmp/a/"), ("/tmp".to_string(), "a".to_string()));
        assert_eq!(split_path("a"), (".".to_string(), "a".to_string()));
    }
}
