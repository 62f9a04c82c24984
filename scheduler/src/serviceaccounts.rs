//! The service-account controller: every namespace that is not terminating has a `default`
//! ServiceAccount. Namespaces get theirs in the write that creates them; this mends older
//! namespaces and a deleted account. Keyed by namespace: a namespace's own changes and
//! changes to its `default` account queue it.

use crate::controller::{self, before_and_after, Cache, Command, Object, Reconciler};
use crate::objects::deleting;
use skiff_client::informer::{Change, ObjectKey, Resource, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{Namespace, ObjectMeta, ServiceAccount};
use std::sync::Arc;

pub const DEFAULT: &str = "default";

/// The account a namespace should have, if it has none: `None` when it has it, or is going.
pub fn missing(ns: &Namespace, has_default: bool) -> Option<ServiceAccount> {
    let meta = ns.metadata.as_ref()?;
    let terminating = deleting(meta) || ns.status.as_ref().is_some_and(|s| s.phase == "Terminating");
    (!meta.name.is_empty() && !terminating && !has_default).then(|| ServiceAccount {
        api_version: "v1".into(),
        kind: "ServiceAccount".into(),
        metadata: Some(ObjectMeta { name: DEFAULT.into(), namespace: meta.name.clone(), ..Default::default() }),
        ..Default::default()
    })
}

/// The controller over the master's caches. Keys are namespaces (`ObjectKey { namespace: "",
/// name }`, as a cluster-scoped object's).
pub struct ServiceAccounts {
    pub namespaces: Store<Namespace>,
    pub accounts: Store<ServiceAccount>,
}

impl Reconciler for ServiceAccounts {
    const NAME: &'static str = "service account controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.namespaces.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.namespaces, queue, self, |_, c| controller::own_key(c)),
            controller::on_changes(&self.accounts, queue, self, |_, c: &Change<ServiceAccount>| {
                before_and_after(c)
                    .into_iter()
                    .filter_map(|a| a.meta())
                    .filter(|m| m.name == DEFAULT)
                    .map(|m| ObjectKey::new("", &m.namespace))
                    .collect()
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.namespaces, &self.accounts]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(ns) = self.namespaces.get(key) else { return Vec::new() };
        let has_default = self.accounts.get(&ObjectKey::new(&key.name, DEFAULT)).is_some();
        missing(&ns, has_default)
            .map(|account| Command::Create { object: Object::ServiceAccount(account), note: None })
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::NamespaceStatus;

    fn ns(name: &str, phase: &str) -> Namespace {
        Namespace {
            metadata: Some(ObjectMeta { name: name.into(), ..Default::default() }),
            status: Some(NamespaceStatus { phase: phase.into() }),
            ..Default::default()
        }
    }

    #[test]
    fn a_namespace_without_its_default_account_gets_one_unless_it_is_going() {
        let account = missing(&ns("team", "Active"), false).unwrap();
        let meta = account.metadata.unwrap();
        assert_eq!((meta.namespace.as_str(), meta.name.as_str()), ("team", "default"));
        assert!(missing(&ns("team", "Active"), true).is_none(), "it has one");
        assert!(missing(&ns("team", "Terminating"), false).is_none(), "it is going");
    }
}
