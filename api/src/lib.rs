//! The Skiff API server: the registry of Kubernetes-shaped kinds, authentication,
//! authorization and the resource gRPC services.
//!
//! Not built yet (see the "API server" issue). The etcd-compatible KV API that
//! the store serves today lives in `skiff-raft-store`.
