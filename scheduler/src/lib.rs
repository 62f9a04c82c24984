//! The scheduler and the controllers that run on the raft leader.
//!
//! Scheduling decisions are a pure function of a snapshot (DESIGN.md rule 6):
//! [`Snapshot::new`] folds nodes and bound pods into per-node usage, and [`placement::schedule`]
//! filters the nodes (readiness, cordon, resources, nodeSelector, required node affinity,
//! taints, host ports) and scores the rest (least allocated, balanced, preferred affinity,
//! PreferNoSchedule taints, spreading an owner's pods). A pod that fits nowhere gets a
//! [`placement::FitError`] worded as Kubernetes words it. [`scheduling`] is the scheduler's I/O
//! shell: a queue of unscheduled pods and a node cache fed by informers; on the raft leader
//! only, it assumes each decision and binds through the API's binding subresource.
//! [`controller`] is the runtime of the keyed controllers (triggers, a keyed queue, a pure
//! `reconcile(key)` returning commands, one fenced executor); [`controllers`] starts them all.
//! Each controller's pure plan lives beside it: [`deployment`] (a ReplicaSet per template
//! revision, RollingUpdate and Recreate, history), [`replicaset`] (replica counts, adoption),
//! [`statefulset`] (ordered, stable pods with a claim per ordinal), [`daemonset`] (a pod per
//! matching node, rolled one node at a time), [`job`] (completions, parallelism, backoff limit,
//! deadline), [`cronjob`] (cron schedules, concurrency policy, history limits),
//! [`endpoints`] (a Service's ready and not-ready pod addresses), [`endpointslices`] (the same as
//! EndpointSlices, which the nodes' proxy reads),
//! [`nodelifecycle`] (silent nodes tainted unreachable, their pods evicted after their
//! toleration), [`nodeipam`] (a pod range per Node), [`certificates`] (machines' certificate
//! requests approved and signed), [`gc`] (objects whose owners are all gone, pods whose node is gone),
//! [`volumebinder`] (claims to volumes), [`autoscaler`] (replicas from the pods' cpu and memory), [`tokencleaner`] (expired bootstrap tokens' Secrets
//! deleted), [`serviceaccounts`] (a `default` account per
//! namespace) and [`loadbalancers`] (the status of LoadBalancer Services and Ingresses).

pub mod autoscaler;
pub mod certificates;
pub mod controller;
pub mod controllers;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod endpointslices;
pub mod gc;
pub mod informers;
pub mod job;
pub mod loadbalancers;
pub mod nodeipam;
pub mod nodelifecycle;
pub mod objects;
pub mod placement;
pub mod preemption;
pub mod replicaset;
pub mod scheduling;
pub mod serviceaccounts;
pub mod snapshot;
pub mod statefulset;
pub mod tokencleaner;
pub mod volumebinder;

pub use placement::{schedule, FitError};
pub use snapshot::{NodeInfo, Snapshot};
