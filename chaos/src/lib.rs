//! Skiff's chaos harness: workloads record histories, nemeses inject faults, checkers judge.
//!
//! Built so far: the checkers ([`linearizability`] for the key-value register workload,
//! [`watch`] for watch streams), proven able to fail on known-bad histories. The nemesis
//! (kill, pause, partition), the workloads and the `skiff-chaos` runner come next (see the
//! "Chaos harness" issue).

pub mod linearizability;
pub mod watch;
