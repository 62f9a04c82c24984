//! Every controller of a master, started over its shared informers: each runs on every master
//! (so its queue is current) and reconciles only while this master leads.

use crate::controller::{run, Context, Reconciler};
use crate::informers::Informers;
use std::sync::Arc;
use std::time::Duration;

/// The controllers' settings.
#[derive(Clone)]
pub struct Settings {
    /// How long a node's Lease may go unrenewed before the node counts as unreachable.
    pub node_grace: Duration,
    /// How long pods without a toleration stay on an unreachable node.
    pub pod_eviction: Duration,
    /// How many times faster than real time the CronJob controller's clock runs (tests).
    pub cron_clock_speed: u32,
    /// The node IPAM controller's ranges (`None`: Nodes get no pod range from the masters).
    pub pod_ranges: Option<crate::nodeipam::Ranges>,
    /// The cluster CA the certificate controller signs machines' requests with (`None`: it
    /// does not run, and joining machines wait).
    pub signer: Option<Arc<crate::certificates::Signer>>,
}

/// Starts every controller until `stop`.
pub fn start(informers: &Informers, ctx: &Context, settings: Settings, stop: &tokio::sync::watch::Receiver<bool>) {
    fn spawn<R: Reconciler>(r: R, ctx: &Context, stop: &tokio::sync::watch::Receiver<bool>) {
        tokio::spawn(run(Arc::new(r), ctx.clone(), stop.clone()));
    }
    let i = informers;
    let owners = crate::gc::Owners {
        deployments: i.deployments.clone(),
        replica_sets: i.replica_sets.clone(),
        replication_controllers: i.replication_controllers.clone(),
        daemon_sets: i.daemon_sets.clone(),
        stateful_sets: i.stateful_sets.clone(),
        jobs: i.jobs.clone(),
        cron_jobs: i.cron_jobs.clone(),
    };
    spawn(
        crate::endpoints::EndpointsController {
            services: i.services.clone(),
            endpoints: i.endpoints.clone(),
            pods: i.pods.clone(),
        },
        ctx,
        stop,
    );
    spawn(
        crate::endpointslices::EndpointSlices {
            services: i.services.clone(),
            endpoints: i.endpoints.clone(),
            slices: i.endpoint_slices.clone(),
            pods: i.pods.clone(),
        },
        ctx,
        stop,
    );
    spawn(crate::replicaset::ReplicaSets { sets: i.replica_sets.clone(), pods: i.pods.clone() }, ctx, stop);
    spawn(crate::replicaset::ReplicaSets { sets: i.replication_controllers.clone(), pods: i.pods.clone() }, ctx, stop);
    spawn(
        crate::deployment::Deployments {
            deployments: i.deployments.clone(),
            sets: i.replica_sets.clone(),
            pods: i.pods.clone(),
        },
        ctx,
        stop,
    );
    spawn(
        crate::statefulset::StatefulSets {
            sets: i.stateful_sets.clone(),
            pods: i.pods.clone(),
            claims: i.claims.clone(),
        },
        ctx,
        stop,
    );
    spawn(
        crate::daemonset::DaemonSets { sets: i.daemon_sets.clone(), nodes: i.nodes.clone(), pods: i.pods.clone() },
        ctx,
        stop,
    );
    spawn(
        crate::disruption::Disruption {
            budgets: i.budgets.clone(),
            pods: i.pods.clone(),
            deployments: i.deployments.clone(),
            replica_sets: i.replica_sets.clone(),
            replication_controllers: i.replication_controllers.clone(),
            stateful_sets: i.stateful_sets.clone(),
        },
        ctx,
        stop,
    );
    spawn(
        crate::autoscaler::Autoscalers {
            autoscalers: i.autoscalers.clone(),
            pods: i.pods.clone(),
            nodes: i.nodes.clone(),
            deployments: i.deployments.clone(),
            replica_sets: i.replica_sets.clone(),
            replication_controllers: i.replication_controllers.clone(),
            stateful_sets: i.stateful_sets.clone(),
            client: ctx.client.clone(),
            leadership: ctx.leadership.clone(),
            samples: Default::default(),
            history: Default::default(),
        },
        ctx,
        stop,
    );
    spawn(crate::job::Jobs { jobs: i.jobs.clone(), pods: i.pods.clone() }, ctx, stop);
    let clock = crate::cronjob::CronClock::new(settings.cron_clock_speed);
    spawn(crate::cronjob::CronJobs { cron_jobs: i.cron_jobs.clone(), jobs: i.jobs.clone(), clock }, ctx, stop);
    spawn(
        crate::nodelifecycle::NodeLifecycle {
            nodes: i.nodes.clone(),
            leases: i.leases.clone(),
            pods: i.pods.clone(),
            grace: settings.node_grace,
            eviction: settings.pod_eviction,
            last_taint: Default::default(),
        },
        ctx,
        stop,
    );
    spawn(crate::gc::Collector { dependents: i.pods.clone(), owners: owners.clone() }, ctx, stop);
    spawn(crate::gc::Collector { dependents: i.replica_sets.clone(), owners: owners.clone() }, ctx, stop);
    spawn(crate::gc::Collector { dependents: i.jobs.clone(), owners: owners.clone() }, ctx, stop);
    spawn(crate::gc::Collector { dependents: i.claims.clone(), owners }, ctx, stop);
    spawn(crate::gc::PodGc { pods: i.pods.clone(), nodes: i.nodes.clone(), missing: Default::default() }, ctx, stop);
    if let Some(signer) = settings.signer {
        spawn(
            crate::certificates::Certificates {
                requests: i.certificate_requests.clone(),
                nodes: i.nodes.clone(),
                signer,
            },
            ctx,
            stop,
        );
    }
    if let Some(ranges) = settings.pod_ranges {
        spawn(crate::nodeipam::NodeIpam { nodes: i.nodes.clone(), ranges }, ctx, stop);
    }
    spawn(
        crate::serviceaccounts::ServiceAccounts {
            namespaces: i.namespaces.clone(),
            accounts: i.service_accounts.clone(),
        },
        ctx,
        stop,
    );
    spawn(crate::tokencleaner::TokenCleaner { secrets: i.system_secrets.clone() }, ctx, stop);
    spawn(crate::volumebinder::VolumeBinder { claims: i.claims.clone(), volumes: i.volumes.clone() }, ctx, stop);
    spawn(
        crate::loadbalancers::ServiceLoadBalancers { services: i.services.clone(), nodes: i.nodes.clone() },
        ctx,
        stop,
    );
    spawn(
        crate::loadbalancers::IngressStatuses {
            ingresses: i.ingresses.clone(),
            classes: i.ingress_classes.clone(),
            nodes: i.nodes.clone(),
        },
        ctx,
        stop,
    );
}
