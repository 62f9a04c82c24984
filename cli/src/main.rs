//! `skiff`: every role of a Skiff cluster in one binary. This file only parses flags and
//! installs tracing; the work happens in the library crates and the sub-command modules.

mod bench;
mod bench_api;
mod bench_node;
mod bench_rest;
mod bench_scheduler;
mod bench_services;
mod certificate_cmd;
mod chaos_cmd;
mod cluster_file;
mod config_cmd;
mod control_plane;
mod ctl;
mod describe;
mod edit;
mod generate;
mod join_cmd;
mod master_cmd;
mod node_cmd;
mod rollout;
mod snapshot_cmd;
mod token_cmd;
mod top;
mod up;
mod verbs;

use clap::{Parser, Subcommand};
use std::os::fd::AsFd;

#[derive(Parser)]
#[command(
    name = "skiff",
    version,
    about = "A container orchestrator whose control plane survives the loss of any master"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one master: a raft member of the replicated store serving the etcd v3 API.
    Master(master_cmd::MasterArgs),
    /// Run the node daemon: register this machine and run the pods bound to it.
    Node(node_cmd::NodeArgs),
    /// Join a cluster with a bootstrap token (kubeadm join): as a node, get certificates from
    /// the control plane and run the node daemon; with --control-plane, run a master that the
    /// store adds as a learner and promotes.
    Join(join_cmd::JoinArgs),
    /// The node daemon's per-container helper (not for direct use).
    #[command(hide = true)]
    Shim { dir: std::path::PathBuf },
    /// The node daemon's exec helper: runs a command in a running container (not for direct use).
    #[command(hide = true)]
    Tenant {
        dir: std::path::PathBuf,
        #[arg(long)]
        error_file: std::path::PathBuf,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Manage the nodes' local image stores.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Start (or restart) a local HA cluster as background processes and wait for a leader.
    Up(up::UpArgs),
    /// Stop a cluster started by `skiff up`, keeping its data.
    Down(up::DownArgs),
    /// Display one or many resources (kubectl get).
    Get(ctl::GetArgs),
    /// Create or update resources from files (kubectl apply).
    Apply(ctl::FileArgs),
    /// Create resources from files, or one from a generator: namespace, serviceaccount,
    /// configmap, secret generic|tls, deployment (kubectl create).
    Create(generate::CreateArgs),
    /// Run an image in a pod (kubectl run).
    Run(generate::RunArgs),
    /// Make a Service for the pods of a Deployment, ReplicaSet, StatefulSet, DaemonSet, Pod or
    /// Service (kubectl expose).
    Expose(generate::ExposeArgs),
    /// Replace resources with the files' contents (kubectl replace).
    Replace(ctl::FileArgs),
    /// Edit an object in $EDITOR and apply it on save (kubectl edit).
    Edit(edit::EditArgs),
    /// Delete resources by name or file (kubectl delete).
    Delete(ctl::DeleteArgs),
    /// Manage Deployment rollouts: status, history, undo, restart (kubectl rollout).
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Set fields of workloads (kubectl set image).
    #[command(subcommand)]
    Set(verbs::SetCommand),
    /// Mark a node unschedulable.
    Cordon(verbs::NodeArgs),
    /// Mark a node schedulable again.
    Uncordon(verbs::NodeArgs),
    /// Cordon a node and delete its pods (DaemonSet pods stay with --ignore-daemonsets).
    Drain(verbs::DrainArgs),
    /// Add (`key=value:Effect`) or remove (`key-`) node taints.
    Taint(verbs::TaintArgs),
    /// Display cpu and memory use of nodes or pods (kubectl top).
    #[command(subcommand)]
    Top(top::TopCommand),
    /// Show an object's details and its events (kubectl describe).
    Describe(describe::DescribeArgs),
    /// Print a container's log (kubectl logs).
    Logs(ctl::LogsArgs),
    /// Run a command in a running container (kubectl exec): `skiff exec [-i] POD [-c C] -- CMD…`.
    Exec(ctl::ExecArgs),
    /// Copy files into or out of a container (kubectl cp): `skiff cp SRC POD:DEST` or `POD:SRC DEST`.
    Cp(ctl::CpArgs),
    /// The resource kinds the server serves.
    ApiResources,
    /// Client and server versions.
    Version(ctl::VersionArgs),
    /// Shell completion script: `source <(skiff completion bash)`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The client config's contexts (kubectl config).
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Bootstrap tokens that new machines join with (kubeadm token).
    #[command(subcommand)]
    Token(token_cmd::TokenCommand),
    /// Approve or deny certificate signing requests (kubectl certificate).
    #[command(subcommand)]
    Certificate(certificate_cmd::CertificateCommand),
    /// Store backups: check one `etcdctl snapshot save` took (etcdctl snapshot status).
    #[command(subcommand)]
    Snapshot(snapshot_cmd::SnapshotCommand),
    /// Add, change (--overwrite) or remove (`key-`) labels (kubectl label).
    Label(ctl::MetaArgs),
    /// Add, change (--overwrite) or remove (`key-`) annotations (kubectl annotate).
    Annotate(ctl::MetaArgs),
    /// Set the replicas of a Deployment, ReplicaSet or StatefulSet (kubectl scale).
    Scale(ctl::ScaleArgs),
    /// Benchmark the store against etcd on this machine (prints a table).
    Bench(bench::BenchArgs),
    /// Benchmark the API server: pod creates, large lists, watch fan-out (prints a table).
    BenchApi(bench_api::BenchApiArgs),
    /// Benchmark the Kubernetes REST API beside the gRPC API: pod get, create and list
    /// (prints a table).
    BenchRest(bench_rest::BenchRestArgs),
    /// Benchmark the node: container create/start/delete against crun and runc, pod start
    /// latency and daemon memory (prints tables; needs root).
    BenchNode(bench_node::BenchNodeArgs),
    /// Benchmark the scheduler and controllers: fake nodes, a burst of pending pods, a big
    /// ReplicaSet (prints a table).
    BenchScheduler(bench_scheduler::BenchSchedulerArgs),
    /// Benchmark the service data path (ClusterIP, ingress vs direct, with wrk) and the
    /// service proxy's programming time (prints tables).
    BenchServices(bench_services::BenchServicesArgs),
    /// Chaos run: kill, pause and partition masters under load and check that nothing
    /// acknowledged was lost (prints a report; needs root).
    Chaos(chaos_cmd::ChaosArgs),
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout into every node of a `skiff up` cluster (or one, --node).
    Import(node_cmd::ImageImportArgs),
    /// Push an OCI image layout to a registry (e.g. `127.0.0.1:5000/tools/busybox:test`).
    Push(node_cmd::ImagePushArgs),
}

fn main() -> anyhow::Result<()> {
    // As kubectl, a usage error (unknown flag, missing argument) exits 1; --help and --version 0.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() { 1 } else { 0 });
        }
    };
    if let Command::Tenant { dir, error_file, command } = &cli.command {
        // No logging: its stdout and stderr are the command's.
        std::process::exit(skiff_node::shim::tenant(dir, error_file, command.clone()));
    }
    if let Command::Shim { dir } = &cli.command {
        // The shim's log goes to its own stderr as it was at start (DIR/shim.log): once
        // libcontainer hands fd 2 to the container, fd 2 is the container's stderr.
        let log = std::io::stderr().as_fd().try_clone_to_owned().map(std::fs::File::from)?;
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG")
                    // libcgroups warns about every controller this kernel lacks, on every run.
                    .unwrap_or_else(|_| "warn,libcgroups=error,libcontainer::process::init=error".into()),
            )
            .with_writer(std::sync::Mutex::new(log))
            .with_ansi(false)
            .init();
        return node_cmd::shim(dir);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Master(args) => master_cmd::run(args),
        Command::Node(args) => node_cmd::run(args),
        Command::Join(args) => join_cmd::run(args),
        Command::Shim { dir } => node_cmd::shim(&dir),
        Command::Tenant { .. } => unreachable!("run before logging starts"),
        Command::Image(ImageCommand::Import(args)) => node_cmd::image_import(args),
        Command::Image(ImageCommand::Push(args)) => node_cmd::image_push(args),
        Command::Up(args) => up::up(args),
        Command::Down(args) => up::down(args),
        Command::Get(args) => ctl::report(ctl::get(args)),
        Command::Apply(args) => ctl::report(ctl::apply(args, ctl::ApplyMode::Apply)),
        Command::Create(args) => ctl::report(ctl::create(args)),
        Command::Run(args) => ctl::report(generate::run(args)),
        Command::Expose(args) => ctl::report(generate::expose(args)),
        Command::Edit(args) => ctl::report(edit::edit(args)),
        Command::Replace(args) => ctl::report(ctl::apply(args, ctl::ApplyMode::Replace)),
        Command::Delete(args) => ctl::report(ctl::delete(args)),
        Command::Logs(args) => ctl::report(ctl::logs(args)),
        Command::Exec(args) => ctl::report(ctl::exec(args)),
        Command::Cp(args) => ctl::report(ctl::cp(args)),
        Command::Describe(args) => ctl::report(describe::describe(args)),
        Command::Rollout(cmd) => ctl::report(rollout::run(cmd)),
        Command::Top(cmd) => ctl::report(top::run(cmd)),
        Command::Set(cmd) => ctl::report(verbs::set(cmd)),
        Command::Cordon(args) => ctl::report(verbs::cordon(args, true)),
        Command::Uncordon(args) => ctl::report(verbs::cordon(args, false)),
        Command::Drain(args) => ctl::report(verbs::drain(args)),
        Command::Taint(args) => ctl::report(verbs::taint(args)),
        Command::ApiResources => ctl::report(ctl::api_resources()),
        Command::Config(cmd) => ctl::report(config_cmd::run(cmd)),
        Command::Token(cmd) => ctl::report(token_cmd::run(cmd)),
        Command::Certificate(cmd) => ctl::report(certificate_cmd::run(cmd)),
        Command::Snapshot(cmd) => ctl::report(snapshot_cmd::run(cmd)),
        Command::Version(args) => ctl::report(ctl::version(args)),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into memory first: a closed pipe (`| head`) is not an error worth a panic.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "skiff", &mut script);
            let _ = std::io::stdout().write_all(&script);
            Ok(())
        }
        Command::Label(args) => ctl::report(ctl::set_meta_map(args, "labels", "labeled")),
        Command::Annotate(args) => ctl::report(ctl::set_meta_map(args, "annotations", "annotated")),
        Command::Scale(args) => ctl::report(ctl::scale(args)),
        Command::Bench(args) => bench::run(args),
        Command::BenchApi(args) => bench_api::run(args),
        Command::BenchRest(args) => bench_rest::run(args),
        Command::BenchNode(args) => bench_node::run(args),
        Command::BenchScheduler(args) => bench_scheduler::run(args),
        Command::BenchServices(args) => bench_services::run(args),
        Command::Chaos(args) => chaos_cmd::run(args),
    }
}
