//! The Skiff API server: Kubernetes-shaped resources over gRPC, stored in the replicated store.
//!
//! Every master runs it on its client listener beside the etcd API. Objects are JSON in the
//! store under `/registry/<resource>/[<namespace>/]<name>`; `resourceVersion` is the key's mod
//! revision; reads are linearizable and writes go through raft (forwarded to the leader).
//!
//! Modules:
//! - [`kinds`]: the registered kinds (generated from one table in `skiff-proto`), names and keys.
//! - [`registry`]: the generic store — create/get/list/update/patch/delete/watch with optimistic
//!   concurrency, graceful deletion, finalizers, owner-reference cascades, namespace lifecycle.
//! - [`admission`]: ResourceQuota and Pod Security (baseline) for pods.
//! - [`defaults`] and [`validation`]: Kubernetes' defaulting and validation rules, on JSON.
//! - [`selector`]: label and field selectors.
//! - [`service`]: the per-kind gRPC services and the kind-agnostic `Objects` service.
//! - [`calls`]: the verbs on JSON objects (authorize, admit, store) every protocol goes through.
//! - [`rest`]: the Kubernetes REST API (discovery, resources, patches, Tables, Status errors).
//! - [`table`]: the columns kubectl shows per kind, for REST Tables and the CLI.
//! - [`auth`]: bearer-token authentication, RBAC authorization, node restriction, no escalation.
//! - [`bootstrap`]: bootstrap tokens (Secrets in kube-system) that joining machines authenticate with.
//! - [`cluster_info`]: the public CA and master list a joining machine starts from.
//! - [`at_rest`]: encryption at rest of Secrets (Kubernetes' EncryptionConfiguration, AES-GCM).
//! - [`node_authz`]: the Node authorizer's read side (a node reads only what its pods use).
//! - [`error`]: API errors and their gRPC codes.
//!
//! Invariant: every write is one raft transaction guarded by a compare on the revision it read,
//! so nothing is half-applied and a stale write fails with `Aborted` instead of overwriting.

pub mod admission;
pub mod allocator;
pub mod at_rest;
pub mod auth;
pub mod bootstrap;
pub mod calls;
pub mod cluster_info;
pub mod crd;
pub mod defaults;
pub mod encoded_list;
pub mod error;
pub mod exec;
pub mod fields;
pub mod kinds;
pub mod limits;
pub mod list_cache;
pub mod logs;
pub mod metrics;
pub mod node_authz;
pub mod object;
pub mod registry;
pub mod rest;
pub mod satoken;
pub mod schema;
pub mod selector;
pub mod service;
pub mod table;
pub mod validation;
pub mod versions;

pub use error::{ApiError, ApiResult};
pub use registry::Registry;
pub use service::{routes, Api};

use std::sync::Arc;
use std::time::Duration;

/// Starts the API on `master`: returns the routes to mount on its client listener and spawns
/// the bootstrap of the system namespaces (retried until a leader accepts it). With `tokens`,
/// every call must carry a bearer token and pass RBAC; `internal` maps tokens of components
/// inside the master process to their identities; `at_rest` encrypts Secrets in the store;
/// `node_client` is the TLS for dialing node servers.
pub fn start(
    master: Arc<skiff_raft_store::Master>,
    tokens: Option<auth::TokenFile>,
    internal: Vec<(String, auth::User)>,
    service_range: allocator::ServiceRange,
    at_rest: Option<at_rest::AtRest>,
    node_client: Option<tonic::transport::ClientTlsConfig>,
) -> tonic::service::Routes {
    let registry = Registry { service_range, at_rest: at_rest.map(Arc::new), ..Registry::new(master) };
    let mut api = Api::new(registry, tokens, internal);
    api.node_client = node_client;
    let api = Arc::new(api);
    let bootstrap = api.clone();
    tokio::spawn(async move {
        loop {
            let made = async {
                // The namespaces last: tests wait for kube-node-lease to know bootstrap is done.
                bootstrap.registry.ensure_ingress_class().await?;
                bootstrap.registry.ensure_system_namespaces().await
            };
            match made.await {
                Ok(()) => return,
                Err(e) => tracing::debug!("system objects not created yet: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    tokio::spawn(follow_definitions(api.registry.clone()));
    routes(api)
}

/// Keeps the registry's custom kinds current: every change to a CustomResourceDefinition
/// (a watch, from the list it reads) rebuilds the catalog, so a definition's new schema or
/// its deletion takes effect on this master without a request having to miss first.
async fn follow_definitions(registry: Registry) {
    let Ok(definitions) = kinds::by_resource("customresourcedefinitions") else { return };
    loop {
        let followed = async {
            let from = registry.refresh_custom().await?.to_string();
            let opts = registry::WatchOptions { resource_version: from, ..Default::default() };
            let mut changes = registry.watch(definitions, "", opts).await?;
            while let Some(change) = changes.recv().await {
                change?;
                registry.refresh_custom().await?;
            }
            ApiResult::Ok(())
        };
        if let Err(e) = followed.await {
            tracing::debug!("following CustomResourceDefinitions: {e}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
