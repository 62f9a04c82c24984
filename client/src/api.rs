//! `Api<K>`: one kind's calls on its generated proto type, as kube-rs's `Api<K>` — no JSON on
//! the way, and the compiler checks every field a caller sets.

use crate::informer::{ObjectKey, Resource};
use crate::Client;
use skiff_proto::api::DeleteRequest;
use std::marker::PhantomData;
use tonic::Status;

/// The calls for kind `K` through `client` (fenced if the client is).
pub struct Api<K> {
    client: Client,
    kind: PhantomData<fn() -> K>,
}

impl<K> Clone for Api<K> {
    fn clone(&self) -> Self {
        Api { client: self.client.clone(), kind: PhantomData }
    }
}

impl<K: Resource> Api<K> {
    pub fn new(client: Client) -> Api<K> {
        Api { client, kind: PhantomData }
    }

    /// Stores `obj` (its namespace from its metadata); returns it as stored.
    pub async fn create(&self, obj: &K) -> Result<K, Status> {
        K::create(&self.client, obj.clone()).await
    }

    /// Replaces `obj`, guarded by its resourceVersion; returns it as stored.
    pub async fn update(&self, obj: &K) -> Result<K, Status> {
        K::update(&self.client, obj.clone()).await
    }

    /// Deletes the object at `key` with the server's default grace and propagation.
    pub async fn delete(&self, key: &ObjectKey) -> Result<K, Status> {
        let req = DeleteRequest { namespace: key.namespace.clone(), name: key.name.clone(), ..Default::default() };
        K::delete(&self.client, req).await
    }
}
