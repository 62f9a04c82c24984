//! The token cleaner (Kubernetes' `tokencleaner`): a bootstrap token's Secret
//! (`bootstrap-token-<id>` of type `bootstrap.kubernetes.io/token` in `kube-system`) is deleted
//! once its `expiration` has passed, so expired join credentials do not pile up. A token is
//! refused by the API from its expiry on whether or not its Secret is gone yet; this only
//! tidies. Each token's key is looked at again when it expires.

use crate::controller::{self, Cache, Command, Reconciler};
use skiff_client::informer::{ObjectKey, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::Secret;
use std::sync::Arc;
use std::time::Duration;

pub const TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";

/// When a bootstrap token's Secret expires (seconds since the epoch); `None` for another
/// Secret, a token without an expiry, or one whose expiry cannot be read (left alone, as
/// Kubernetes leaves it).
pub fn expires_at(secret: &Secret) -> Option<i64> {
    if secret.r#type != TOKEN_TYPE {
        return None;
    }
    let at = std::str::from_utf8(secret.data.get("expiration")?).ok()?;
    skiff_proto::time::parse_rfc3339(at)
}

/// Over the master's cache of `kube-system` Secrets.
pub struct TokenCleaner {
    pub secrets: Store<Secret>,
}

impl Reconciler for TokenCleaner {
    const NAME: &'static str = "token cleaner";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.secrets.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![controller::on_changes(&self.secrets, queue, self, |_, c| controller::own_key(c))]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.secrets]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(secret) = self.secrets.get(key) else { return Vec::new() };
        match expires_at(&secret) {
            Some(at) if at <= skiff_proto::time::now_secs() => {
                vec![Command::Delete { resource: "secrets", key: key.clone(), note: None }]
            }
            _ => Vec::new(),
        }
    }

    fn requeue_after(&self, key: &ObjectKey) -> Option<Duration> {
        let at = expires_at(&*self.secrets.get(key)?)?;
        let left = at - skiff_proto::time::now_secs();
        // A second past the expiry, so the reconcile then sees it passed.
        Some(Duration::from_secs(left.max(0) as u64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(expiration: Option<&str>, kind: &str) -> Secret {
        let mut s = Secret { r#type: kind.into(), ..Default::default() };
        if let Some(e) = expiration {
            s.data.insert("expiration".into(), e.as_bytes().to_vec());
        }
        s
    }

    #[test]
    fn only_bootstrap_tokens_with_a_readable_expiry_expire() {
        assert_eq!(expires_at(&token(Some("2026-12-07T01:00:00Z"), TOKEN_TYPE)), Some(1796605200));
        assert_eq!(expires_at(&token(None, TOKEN_TYPE)), None, "a token without expiry stays");
        assert_eq!(expires_at(&token(Some("soon"), TOKEN_TYPE)), None, "unreadable: left alone");
        assert_eq!(expires_at(&token(Some("2026-12-07T01:00:00Z"), "Opaque")), None, "not a token");
    }
}
