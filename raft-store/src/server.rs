//! Serving a master: the peer listener (raft + forwarding) and the client listener (etcd v3
//! API, gRPC health and reflection), both on listeners the caller bound.

use crate::etcd::{
    auth::AuthService,
    cluster::ClusterService,
    concurrency::{ElectionService, LockService},
    kv::KvService,
    lease::LeaseService,
    maintenance::MaintenanceService,
    watch::WatchService,
};
use crate::master::{ClientTls, Master};
use crate::network::peer_max_message;
use crate::peer_service::PeerService;
use skiff_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer, lease_server::LeaseServer,
    maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use skiff_proto::peer::peer_server::PeerServer;
use skiff_proto::v3electionpb::election_server::ElectionServer;
use skiff_proto::v3lockpb::lock_server::LockServer;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tonic::transport::Server;

/// Serves `master` until `shutdown` resolves (or its raft core fails), then stops taking
/// requests and stops raft. `extra` services (the Skiff API) share the client listener; the
/// same services answer on `local`, the in-process connections of the master's own components.
/// Returns `Ok(false)` when it stopped because raft failed.
pub async fn serve(
    master: Arc<Master>,
    peer_listener: TcpListener,
    client_listener: TcpListener,
    local: Option<crate::local::LocalListener>,
    extra: Option<tonic::service::Routes>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<bool, ServeError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_rx_grace = stop_rx.clone();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(master.clone().run_lease_expiry(stop_rx.clone()));
    tokio::spawn(master.clone().announce(stop_rx.clone()));
    tokio::spawn(master.clone().run_election_watch(stop_rx.clone()));
    tokio::spawn(master.clone().bootstrap_auth(stop_rx.clone()));
    tokio::spawn(master.clone().run_disk_monitor(stop_rx.clone()));
    tokio::spawn(master.clone().run_scheduled_backups(stop_rx.clone()));

    // h2's rapid-reset guard closes a connection once more than 20 streams were cancelled
    // before the server accepted them — what a master stopped for a few seconds (SIGSTOP, a
    // long pause) sees on resuming, with every heartbeat sent meanwhile timed out by its peer.
    // On the peer listener only authenticated members open streams; the 2026-12-06 soak lost
    // its leader for good to connections this guard left unserved (docs/reliability.md).
    let mut peer = Server::builder().http2_max_pending_accept_reset_streams(Some(PEER_PENDING_ACCEPT_RESETS));
    if let Some(tls) = &master.config.peer_tls {
        let credentials = tls.load().map_err(ServeError::Tls)?;
        peer = peer.tls_config(credentials.server())?;
    }
    let peer_max = peer_max_message(master.config.max_request_bytes);
    let peer = peer
        .add_service(
            PeerServer::new(PeerService { master: master.clone() })
                .max_decoding_message_size(peer_max)
                .max_encoding_message_size(peer_max),
        )
        .serve_with_incoming_shutdown(incoming(peer_listener)?, wait_stop(stop_rx.clone()));

    // Room above the request limit so our own size check, with its clear message, answers
    // first rather than the transport's.
    let max_msg = master.config.max_request_bytes * 2 + (1 << 20);
    let (mut health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
    // Both reflection versions: grpcurl before 1.8.8 (Debian's, PyPI's wrapper) asks v1alpha.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(skiff_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("descriptor set is valid");
    let reflection_alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(skiff_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("descriptor set is valid");
    // Controllers' writes carry the term they are fenced to in a header (DESIGN.md rule 4).
    // Streams (watches, keep-alives, calls) one connection may have open at once, as Kubernetes'
    // API server bounds them (--http2-max-streams-per-connection 1000).
    let routes = extra
        .unwrap_or_default()
        .add_service(KvServer::new(KvService { master: master.clone() }).max_decoding_message_size(max_msg))
        .add_service(WatchServer::new(WatchService { master: master.clone() }))
        .add_service(LeaseServer::new(LeaseService { master: master.clone() }))
        .add_service(ClusterServer::new(ClusterService { master: master.clone() }))
        .add_service(MaintenanceServer::new(MaintenanceService { master: master.clone() }))
        .add_service(AuthServer::new(AuthService { master: master.clone() }))
        .add_service(LockServer::new(LockService { master: master.clone() }))
        .add_service(ElectionServer::new(ElectionService { master: master.clone() }))
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_alpha);
    // Controllers' writes carry the term they are fenced to in a header (DESIGN.md rule 4).
    // Streams (watches, keep-alives, calls) one connection may have open at once, as Kubernetes'
    // API server bounds them (--http2-max-streams-per-connection 1000).
    let counting = crate::metrics::grpc_layer(master.grpc_handled.clone());
    // HTTP/1.1 as well as HTTP/2, for `GET /metrics` from any HTTP client.
    let builder = || {
        Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
            .layer(crate::fence::FenceLayer)
            .layer(counting.clone())
    };
    let network = builder().add_routes(routes.clone());
    let client_stop = stop_rx.clone();
    let acceptor = master.config.client_tls.as_ref().map(client_tls_acceptor).transpose()?;
    let client = async move {
        match acceptor {
            Some(acceptor) => {
                let connections = tls_incoming(client_listener, acceptor, client_stop.clone());
                network.serve_with_incoming_shutdown(connections, wait_stop(client_stop)).await?
            }
            None => network.serve_with_incoming_shutdown(incoming(client_listener)?, wait_stop(client_stop)).await?,
        }
        Ok::<(), ServeError>(())
    };
    let local = async {
        match local {
            Some(local) => {
                builder().add_routes(routes).serve_with_incoming_shutdown(local.incoming(), wait_stop(stop_rx)).await
            }
            None => Ok(()),
        }
    };

    let stopper = {
        let master = master.clone();
        let failed = failed.clone();
        async move {
            let mut metrics = master.raft.metrics();
            let raft_failed = async {
                loop {
                    if let Err(fatal) = &metrics.borrow().running_state {
                        return fatal.to_string();
                    }
                    if metrics.changed().await.is_err() {
                        return "raft core stopped".to_string();
                    }
                }
            };
            tokio::select! {
                _ = shutdown => tracing::info!(id = master.id(), "shutting down"),
                why = raft_failed => {
                    // A master whose raft core died must not keep answering clients.
                    tracing::error!(id = master.id(), "raft stopped: {why}; shutting down");
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            master.shutdown().await;
            let _ = stop_tx.send(true);
        }
    };
    // Streams a client keeps open (lease keep-alives, a log follow) would hold a graceful
    // shutdown forever: after a grace period the connections are dropped.
    let servers = async { tokio::join!(peer, client, local) };
    let grace = async {
        wait_stop(stop_rx_grace).await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    let ((), results) = tokio::join!(stopper, async {
        tokio::select! {
            results = servers => Some(results),
            () = grace => None,
        }
    });
    match results {
        Some((peer_result, client_result, local_result)) => {
            peer_result?;
            client_result?;
            local_result?;
        }
        None => {
            tracing::warn!(id = master.id(), "connections still open {SHUTDOWN_GRACE:?} after shutdown; dropping them")
        }
    }
    Ok(!failed.load(std::sync::atomic::Ordering::SeqCst))
}

/// Streams a member may cancel before the peer listener accepted them (h2's default is 20).
pub const PEER_PENDING_ACCEPT_RESETS: usize = 10_000;

/// How long open streams may take to finish once a master is shutting down.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The client listener's TLS: this master's certificate, the client CA (optional or required),
/// and ALPN offering HTTP/2 and HTTP/1.1 — gRPC and kubectl negotiate h2, while HTTP/1.1-only
/// clients (Python's urllib3, curl --http1.1) would be refused by an h2-only listener.
fn client_tls_acceptor(tls: &ClientTls) -> Result<tokio_rustls::TlsAcceptor, ServeError> {
    use tokio_rustls::rustls;
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| ServeError::Tls(format!("{}: {e}", p.display())));
    let bad = |what: &std::path::Path, e: &dyn std::fmt::Display| ServeError::Tls(format!("{}: {e}", what.display()));
    let certs = rustls_pemfile::certs(&mut read(&tls.cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&tls.cert, &e))?;
    let key = rustls_pemfile::private_key(&mut read(&tls.key)?.as_slice())
        .map_err(|e| bad(&tls.key, &e))?
        .ok_or_else(|| bad(&tls.key, &"no private key in the file"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServeError::Tls(e.to_string()))?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut read(ca)?.as_slice()) {
                roots.add(cert.map_err(|e| bad(ca, &e))?).map_err(|e| bad(ca, &e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if tls.client_cert_optional { verifier.allow_unauthenticated() } else { verifier };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| bad(ca, &e))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| bad(&tls.cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Connections accepted on `listener` (TCP_NODELAY, keep-alive as [`incoming`]) once their TLS
/// handshake completed; each handshake runs on its own task, so a slow or silent client holds
/// up nobody else. Ends when `stop` says so.
fn tls_incoming(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.changed() => return,
                () = tx.closed() => return,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: pause rather than spin.
                    tracing::warn!("accepting a client connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let keepalive = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(30));
            let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::debug!("TLS handshake with a client failed: {e}"),
                    Err(_) => tracing::debug!("a client did not finish its TLS handshake in {HANDSHAKE_TIMEOUT:?}"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// HTTP/2 streams one client connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 1000;

/// Why serving stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Listener(String),
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Accepted connections with TCP_NODELAY: without it, small raft and read-index messages
/// wait out Nagle's algorithm against delayed ACKs (~40 ms each).
fn incoming(listener: TcpListener) -> Result<tonic::transport::server::TcpIncoming, ServeError> {
    tonic::transport::server::TcpIncoming::from_listener(listener, true, Some(std::time::Duration::from_secs(30)))
        .map_err(|e| ServeError::Listener(e.to_string()))
}

async fn wait_stop(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
