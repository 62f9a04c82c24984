//! `skiff`: every role of a Skiff cluster in one binary. This file only parses flags and
//! installs tracing; the work happens in the library crates and the sub-command modules.

mod bench;
mod bench_api;
mod cluster_file;
mod ctl;
mod master_cmd;
mod up;

use clap::{Parser, Subcommand};

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
    /// Start (or restart) a local HA cluster as background processes and wait for a leader.
    Up(up::UpArgs),
    /// Stop a cluster started by `skiff up`, keeping its data.
    Down(up::DownArgs),
    /// Display one or many resources (kubectl get).
    Get(ctl::GetArgs),
    /// Create or update resources from files (kubectl apply).
    Apply(ctl::FileArgs),
    /// Create resources from files (kubectl create).
    Create(ctl::FileArgs),
    /// Delete resources by name or file (kubectl delete).
    Delete(ctl::DeleteArgs),
    /// The resource kinds the server serves.
    ApiResources,
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SKIFF_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Master(args) => master_cmd::run(args),
        Command::Up(args) => up::up(args),
        Command::Down(args) => up::down(args),
        Command::Get(args) => ctl::report(ctl::get(args)),
        Command::Apply(args) => ctl::report(ctl::apply(args, false)),
        Command::Create(args) => ctl::report(ctl::apply(args, true)),
        Command::Delete(args) => ctl::report(ctl::delete(args)),
        Command::ApiResources => ctl::report(ctl::api_resources()),
        Command::Label(args) => ctl::report(ctl::set_meta_map(args, "labels", "labeled")),
        Command::Annotate(args) => ctl::report(ctl::set_meta_map(args, "annotations", "annotated")),
        Command::Scale(args) => ctl::report(ctl::scale(args)),
        Command::Bench(args) => bench::run(args),
        Command::BenchApi(args) => bench_api::run(args),
    }
}
