//! Skiff's chaos harness: real masters in network namespaces, a nemesis that kills, pauses,
//! partitions and degrades them, workloads that record histories, and checkers that judge them.
//!
//! - [`net`]: the run's namespaces and bridge; partitions and lossy links; sockets into a
//!   namespace for the harness's clients.
//! - [`disk`]: a tmpfs under a master's data directory and a filler that takes its space.
//! - [`delay`]: slow links — packets held in an nfnetlink queue for a fixed time.
//! - [`cluster`]: `skiff master` processes (kill, restart, pause, resume, who leads).
//! - [`pki`]: the run's CAs and certificates: masters, members, nodes and the harness all
//!   authenticate over TLS, with the store's auth on, as in a `skiff up` cluster.
//! - [`nemesis`]: the seeded fault schedule and its execution.
//! - [`kv`]: the register workload (get, put, compare-and-set, delete) through the etcd API.
//! - [`watchers`]: a watcher per master that resumes across reconnects.
//! - [`apps`]: the API workload (Deployments scaled, rolled, pods deleted) and its convergence
//!   check.
//! - [`rollouts`]: the rolling-update surge bound, checked at every revision during the run.
//! - [`linearizability`], [`watch`]: the checkers, proven able to fail on known-bad histories.
//! - [`oracle`]: the committed history rebuilt by reading every revision on every master —
//!   the read path judging the watch path.
//! - [`checks`]: the checkers' verdicts, each failing below the run's floors (a check that saw
//!   nothing does not pass).
//! - [`run`]: one experiment end to end; [`report`]: its figures and verdicts.
//!
//! Invariant: nothing leaves the machine — the masters' peer links are veths on a bridge with no
//! address in the host namespace, and their client listeners are their namespaces' loopbacks.

pub mod apps;
pub mod checks;
pub mod cluster;
pub mod delay;
pub mod disk;
pub mod kv;
pub mod linearizability;
pub mod nemesis;
pub mod net;
pub mod nodes;
pub mod oracle;
pub mod pki;
pub mod process;
pub mod report;
pub mod rollouts;
pub mod run;
pub mod watch;
pub mod watchers;
