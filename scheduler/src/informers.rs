//! One informer per kind for everything in a master process: the scheduler and every
//! controller read the same caches, fed by one list and then one watch per kind, on every
//! master (a new leader starts with warm caches). The caches ask for a bookmark every
//! [`BOOKMARK_INTERVAL`] while the store moves on without them, so a reconcile that waits for
//! them to reach the store's revision (Kubernetes' consistent read from cache) waits little.

use skiff_client::informer::{self, ApiSource, Store};
use skiff_client::Client;
use skiff_proto::api::{
    CertificateSigningRequest, CronJob, DaemonSet, Deployment, EndpointSlice, Endpoints, HorizontalPodAutoscaler,
    Ingress, IngressClass, Job, Lease, Namespace, Node, PersistentVolume, PersistentVolumeClaim, Pod,
    PodDisruptionBudget, ReplicaSet, ReplicationController, Secret, Service, ServiceAccount, StatefulSet,
};
use std::time::Duration;

/// How often a cache hears that the store moved on when nothing of its kind changed.
pub const BOOKMARK_INTERVAL: Duration = Duration::from_millis(20);

macro_rules! informers {
    ($($field:ident: $kind:ty, $namespace:expr;)*) => {
        /// The caches, one per kind. Clones share them.
        #[derive(Clone, Default)]
        pub struct Informers {
            $(pub $field: Store<$kind>,)*
        }

        impl Informers {
            /// Starts an informer per kind through `client`, until `stop`.
            pub fn start(client: &Client, stop: &tokio::sync::watch::Receiver<bool>) -> Informers {
                let informers = Informers::default();
                // The ReplicaSet controller's: the pods it may adopt.
                crate::replicaset::index_orphans(informers.pods.clone());
                // The node lifecycle controller's and the pod GC's: the pods on a node.
                crate::nodelifecycle::index_by_node(informers.pods.clone());
                $(
                    let mut source = ApiSource::new(client.clone()).bookmarks_every(BOOKMARK_INTERVAL);
                    source.namespace = $namespace.to_string();
                    tokio::spawn(informer::run(informers.$field.clone(), source, stop.clone()));
                )*
                informers
            }
        }
    };
}

informers! {
    pods: Pod, "";
    nodes: Node, "";
    // Only the node heartbeats.
    leases: Lease, crate::nodelifecycle::LEASE_NAMESPACE;
    // Only kube-system's: the bootstrap tokens.
    system_secrets: Secret, "kube-system";
    namespaces: Namespace, "";
    service_accounts: ServiceAccount, "";
    deployments: Deployment, "";
    replica_sets: ReplicaSet, "";
    replication_controllers: ReplicationController, "";
    stateful_sets: StatefulSet, "";
    daemon_sets: DaemonSet, "";
    jobs: Job, "";
    cron_jobs: CronJob, "";
    claims: PersistentVolumeClaim, "";
    volumes: PersistentVolume, "";
    services: Service, "";
    budgets: PodDisruptionBudget, "";
    autoscalers: HorizontalPodAutoscaler, "";
    endpoints: Endpoints, "";
    endpoint_slices: EndpointSlice, "";
    ingresses: Ingress, "";
    ingress_classes: IngressClass, "";
    certificate_requests: CertificateSigningRequest, "";
}
