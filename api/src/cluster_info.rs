//! The public `ClusterInfo` service: the CA a joining machine pins by its hash, and the
//! masters to talk to (kubeadm's cluster-info ConfigMap). It needs no credentials — the CA
//! certificate and the masters' addresses are what a machine needs before it can check any —
//! and reveals nothing secret.

use skiff_proto::api::cluster_info_server::ClusterInfo;
use skiff_proto::api::{ClusterInfoRequest, ClusterInfoResponse};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ClusterInfoService {
    pub master: Arc<skiff_raft_store::Master>,
}

#[tonic::async_trait]
impl ClusterInfo for ClusterInfoService {
    async fn get(&self, _req: Request<ClusterInfoRequest>) -> Result<Response<ClusterInfoResponse>, Status> {
        let tls = self.master.config.client_tls.as_ref();
        let Some(path) = tls.and_then(|t| t.ca.as_ref()) else {
            return Err(Status::failed_precondition(
                "this master serves no TLS with a known CA: machines cannot join it (start it with --client-cert and its CA)",
            ));
        };
        let ca = tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Status::internal(format!("reading the cluster CA {}: {e}", path.display())))?;
        Ok(Response::new(ClusterInfoResponse { ca, servers: self.master.client_urls() }))
    }
}
