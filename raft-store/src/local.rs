//! Connections from components inside a master process (its scheduler and controllers) to the
//! master's own services: in-memory pipes to the same routes the client listener serves, so
//! they need neither the network, nor a certificate the listener would accept, nor the CA that
//! signed the listener's. They still authenticate (an in-process token) and pass RBAC, and
//! their writes still carry the fence header through the same layer.

use tokio::io::DuplexStream;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint, Uri};

/// Bytes buffered each way in one in-memory connection.
const PIPE_BYTES: usize = 1 << 20;

/// The serving end: connections as the server takes them ([`crate::serve`]).
pub struct LocalListener(mpsc::Receiver<DuplexStream>);

/// The dialing end: every connection it opens arrives at its [`LocalListener`].
#[derive(Clone)]
pub struct LocalConnector(mpsc::Sender<DuplexStream>);

/// A listener and the connector that reaches it.
pub fn pair() -> (LocalListener, LocalConnector) {
    let (tx, rx) = mpsc::channel(16);
    (LocalListener(rx), LocalConnector(tx))
}

impl LocalListener {
    /// The connections, as a server's incoming stream.
    pub fn incoming(self) -> impl tokio_stream::Stream<Item = Result<DuplexStream, std::io::Error>> {
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(self.0), Ok)
    }
}

impl LocalConnector {
    /// A lazily connecting channel over in-memory connections.
    pub fn channel(&self) -> Channel {
        let tx = self.0.clone();
        let connector = tower::service_fn(move |_: Uri| {
            let tx = tx.clone();
            async move {
                let (client, server) = tokio::io::duplex(PIPE_BYTES);
                tx.send(server).await.map_err(|_| std::io::Error::other("the master stopped serving"))?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(client))
            }
        });
        Endpoint::from_static("http://in-process.skiff").connect_with_connector_lazy(connector)
    }
}
