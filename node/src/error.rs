//! The node crate's error type.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum NodeError {
    /// An image could not be found, verified or unpacked; the message names it.
    #[error("image: {0}")]
    Image(String),
    /// A container could not be prepared or started; the message names the pod and container.
    #[error("{0}")]
    Runtime(String),
    /// The pod's namespaces or network could not be set up or torn down.
    #[error("sandbox: {0}")]
    Sandbox(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("api: {0}")]
    Api(#[from] tonic::Status),
}
