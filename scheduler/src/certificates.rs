//! Certificates for machines, as kube-controller-manager's CSR approver and signer: a node
//! that joins with a bootstrap token asks for its client certificate, and once registered for
//! its serving certificate, through CertificateSigningRequests; this controller approves the
//! ones Kubernetes' rules allow and signs approved requests of its signers with the cluster CA.
//!
//! - `kubernetes.io/kube-apiserver-client-kubelet`: CN `system:node:<name>`, O `system:nodes`,
//!   no alternative names, client auth. Approved when a bootstrapper asks (a new node) or the
//!   node itself (a renewal).
//! - `kubernetes.io/kubelet-serving`: the same subject, server auth, alternative names among
//!   its Node's addresses and names. Approved when the node itself asks.
//! - `kubernetes.io/kube-apiserver-client`: any client certificate, never approved here (an
//!   administrator approves it).
//!
//! Anything else is another signer's, and left alone. An approved request that breaks its
//! signer's rules is marked Failed, not signed.

use crate::controller::{self, Cache, Command, Object, Reconciler};
use skiff_client::informer::{ObjectKey, Store};
use skiff_client::queue::WorkQueue;
use skiff_proto::api::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestStatus, Node,
};
use skiff_proto::cert::Request;
use skiff_proto::pki::{Ca, Usage};
use std::sync::Arc;
use std::time::Duration;

pub const KUBELET_CLIENT: &str = "kubernetes.io/kube-apiserver-client-kubelet";
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";
pub const API_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
const NODES_GROUP: &str = "system:nodes";
const NODE_PREFIX: &str = "system:node:";
/// The group bootstrap tokens authenticate into.
const BOOTSTRAPPERS: &str = "system:bootstrappers";

/// The cluster CA the signers sign with, and for how long.
pub struct Signer {
    pub ca: Ca,
    /// kube-controller-manager's `--cluster-signing-duration` (a year by default).
    pub duration: Duration,
}

/// Whether a request names a node: CN `system:node:<name>`, O exactly `system:nodes`.
fn node_of(r: &Request) -> Option<&str> {
    let name = r.subject.common_name.strip_prefix(NODE_PREFIX)?;
    (!name.is_empty() && r.subject.organizations == [NODES_GROUP]).then_some(name)
}

fn usages_within(usages: &[String], allowed: &[&str], required: &str) -> bool {
    usages.iter().all(|u| allowed.contains(&u.as_str())) && usages.iter().any(|u| u == required)
}

/// Why `csr` (its request read as `r`) breaks its signer's rules; `None` if it keeps them.
pub fn breaks_signer_rules(csr: &CertificateSigningRequest, r: &Request) -> Option<String> {
    let spec = csr.spec.as_ref()?;
    let node = node_of(r);
    match spec.signer_name.as_str() {
        KUBELET_CLIENT if node.is_none() => {
            Some(format!("{KUBELET_CLIENT} signs only CN system:node:<name> in O system:nodes, not {:?}", r.subject))
        }
        KUBELET_CLIENT if !r.dns_names.is_empty() || !r.ip_addresses.is_empty() => {
            Some(format!("{KUBELET_CLIENT} signs no subject alternative names"))
        }
        KUBELET_CLIENT
            if !usages_within(
                &spec.usages,
                &["digital signature", "key encipherment", "client auth"],
                "client auth",
            ) =>
        {
            Some(format!("{KUBELET_CLIENT} signs client auth (with digital signature, key encipherment) only"))
        }
        KUBELET_SERVING if node.is_none() => {
            Some(format!("{KUBELET_SERVING} signs only CN system:node:<name> in O system:nodes, not {:?}", r.subject))
        }
        KUBELET_SERVING if r.dns_names.is_empty() && r.ip_addresses.is_empty() => {
            Some(format!("{KUBELET_SERVING} needs at least one subject alternative name"))
        }
        KUBELET_SERVING
            if !usages_within(
                &spec.usages,
                &["digital signature", "key encipherment", "server auth"],
                "server auth",
            ) =>
        {
            Some(format!("{KUBELET_SERVING} signs server auth (with digital signature, key encipherment) only"))
        }
        API_CLIENT if !spec.usages.iter().any(|u| u == "client auth") => {
            Some(format!("{API_CLIENT} signs client auth only"))
        }
        _ => None,
    }
}

/// Whether the rules let this controller approve `csr` by itself: `node` is the Node its
/// request names, if it is registered.
pub fn auto_approvable(csr: &CertificateSigningRequest, r: &Request, node: Option<&Node>) -> bool {
    let Some(spec) = csr.spec.as_ref() else { return false };
    let Some(name) = node_of(r) else { return false };
    let asked_by_itself = spec.username == r.subject.common_name && spec.groups.iter().any(|g| g == NODES_GROUP);
    match spec.signer_name.as_str() {
        KUBELET_CLIENT => asked_by_itself || spec.groups.iter().any(|g| g == BOOTSTRAPPERS),
        KUBELET_SERVING => {
            let Some(node) = node else { return false };
            let addresses: Vec<&str> =
                node.status.iter().flat_map(|s| &s.addresses).map(|a| a.address.as_str()).collect();
            asked_by_itself
                && r.ip_addresses.iter().all(|ip| addresses.contains(&ip.to_string().as_str()))
                && r.dns_names.iter().all(|d| d == name || addresses.contains(&d.as_str()))
        }
        _ => false,
    }
}

fn has(csr: &CertificateSigningRequest, kind: &str) -> bool {
    csr.status.iter().flat_map(|s| &s.conditions).any(|c| c.r#type == kind && c.status != "False")
}

fn condition(kind: &str, reason: &str, message: String) -> CertificateSigningRequestCondition {
    let now = skiff_proto::time::now_rfc3339();
    CertificateSigningRequestCondition {
        r#type: kind.into(),
        status: "True".into(),
        reason: reason.into(),
        message,
        last_update_time: now.clone(),
        last_transition_time: now,
    }
}

/// What `csr` needs next: approval and a certificate, a certificate, a Failed condition, or
/// nothing (decided, issued, another signer's, or waiting for an administrator).
pub fn plan(
    csr: &CertificateSigningRequest,
    node: Option<&Node>,
    signer: &Signer,
) -> Option<CertificateSigningRequest> {
    let spec = csr.spec.as_ref()?;
    let ours = matches!(spec.signer_name.as_str(), KUBELET_CLIENT | KUBELET_SERVING | API_CLIENT);
    let issued = csr.status.as_ref().is_some_and(|s| !s.certificate.is_empty());
    if !ours || issued || has(csr, "Denied") || has(csr, "Failed") {
        return None;
    }
    let mut next = csr.clone();
    let status = next.status.get_or_insert_with(CertificateSigningRequestStatus::default);
    let request = match skiff_proto::cert::parse_request(&spec.request) {
        Ok(r) => r,
        Err(e) => {
            status.conditions.push(condition("Failed", "SignerValidationFailure", format!("the request: {e}")));
            return Some(next);
        }
    };
    if !has(csr, "Approved") {
        if !auto_approvable(csr, &request, node) {
            return None;
        }
        let what = if spec.signer_name == KUBELET_CLIENT { "kubelet client" } else { "kubelet serving" };
        status.conditions.push(condition("Approved", "AutoApproved", format!("Auto approving {what} certificate")));
    }
    if let Some(why) = breaks_signer_rules(csr, &request) {
        status.conditions.push(condition("Failed", "SignerValidationFailure", why));
        return Some(next);
    }
    let usages: Vec<Usage> = spec
        .usages
        .iter()
        .filter_map(|u| match u.as_str() {
            "client auth" => Some(Usage::ClientAuth),
            "server auth" => Some(Usage::ServerAuth),
            _ => None,
        })
        .collect();
    let asked = spec.expiration_seconds.map(|s| Duration::from_secs(s.max(600) as u64));
    let lifetime = asked.map_or(signer.duration, |a| a.min(signer.duration));
    let pem = String::from_utf8_lossy(&spec.request);
    match signer.ca.sign_request(&pem, &usages, lifetime) {
        Ok(cert) => status.certificate = cert.into_bytes(),
        Err(e) => status.conditions.push(condition("Failed", "SignerValidationFailure", e.to_string())),
    }
    Some(next)
}

/// The controller over the master's CertificateSigningRequest and Node caches.
pub struct Certificates {
    pub requests: Store<CertificateSigningRequest>,
    pub nodes: Store<Node>,
    pub signer: Arc<Signer>,
}

impl Reconciler for Certificates {
    const NAME: &'static str = "certificate controller";

    fn every_key(&self) -> Vec<ObjectKey> {
        self.requests.keys()
    }

    fn triggers(self: &Arc<Self>, queue: &WorkQueue<ObjectKey>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            controller::on_changes(&self.requests, queue, self, |_, c| controller::own_key(c)),
            // A serving request may wait for its Node's addresses.
            controller::on_changes(&self.nodes, queue, self, |me, _| {
                me.requests
                    .list()
                    .iter()
                    .filter(|r| r.spec.as_ref().is_some_and(|s| s.signer_name == KUBELET_SERVING))
                    .filter_map(|r| r.metadata.as_ref().map(ObjectKey::of))
                    .collect()
            }),
        ]
    }

    fn caches(&self) -> Vec<&dyn Cache> {
        vec![&self.requests, &self.nodes]
    }

    fn reconcile(&self, key: &ObjectKey) -> Vec<Command> {
        let Some(csr) = self.requests.get(key) else { return Vec::new() };
        let node = csr
            .spec
            .as_ref()
            .and_then(|s| skiff_proto::cert::parse_request(&s.request).ok())
            .and_then(|r| node_of(&r).map(|n| ObjectKey::new("", n)))
            .and_then(|k| self.nodes.get(&k));
        plan(&csr, node.as_deref(), &self.signer)
            .map(|next| Command::UpdateStatus { object: Object::CertificateSigningRequest(next), note: None })
            .into_iter()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_proto::api::{CertificateSigningRequestSpec, NodeAddress, NodeStatus, ObjectMeta};

    fn signer() -> (tempfile::TempDir, Signer) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(&dir.path().join("ca"), "test-ca").unwrap();
        (dir, Signer { ca, duration: Duration::from_secs(86_400) })
    }

    fn csr(
        signer_name: &str,
        cn: &str,
        sans: &[&str],
        usages: &[&str],
        user: &str,
        groups: &[&str],
    ) -> CertificateSigningRequest {
        let key = skiff_proto::pki::KeyPair::generate().unwrap();
        let pem = skiff_proto::pki::request(&key, cn, Some("system:nodes"), sans).unwrap();
        CertificateSigningRequest {
            metadata: Some(ObjectMeta { name: "r".into(), ..Default::default() }),
            spec: Some(CertificateSigningRequestSpec {
                request: pem.into_bytes(),
                signer_name: signer_name.into(),
                usages: usages.iter().map(|u| u.to_string()).collect(),
                username: user.into(),
                groups: groups.iter().map(|g| g.to_string()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn node(name: &str, ip: &str) -> Node {
        Node {
            metadata: Some(ObjectMeta { name: name.into(), ..Default::default() }),
            status: Some(NodeStatus {
                addresses: vec![NodeAddress { r#type: "InternalIP".into(), address: ip.into() }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn types(c: &CertificateSigningRequest) -> Vec<String> {
        c.status.iter().flat_map(|s| &s.conditions).map(|c| c.r#type.clone()).collect()
    }

    const CLIENT: &[&str] = &["digital signature", "key encipherment", "client auth"];
    const SERVING: &[&str] = &["digital signature", "key encipherment", "server auth"];

    #[test]
    fn a_bootstrapper_gets_a_node_client_certificate_and_nothing_else() {
        let (_dir, s) = signer();
        let boot = ["system:bootstrappers", "system:authenticated"];
        let r = csr(KUBELET_CLIENT, "system:node:n1", &[], CLIENT, "system:bootstrap:abc123", &boot);
        let done = plan(&r, None, &s).expect("approved and signed");
        assert_eq!(types(&done), ["Approved"]);
        let cert = &done.status.as_ref().unwrap().certificate;
        assert_eq!(skiff_proto::cert::subject_of_pem(cert).unwrap().common_name, "system:node:n1");
        assert!(plan(&done, None, &s).is_none(), "issued: nothing more to do");
        // A serving certificate is the node's own to ask for, not a bootstrapper's.
        let r = csr(KUBELET_SERVING, "system:node:n1", &["10.0.0.5"], SERVING, "system:bootstrap:abc123", &boot);
        assert!(plan(&r, Some(&node("n1", "10.0.0.5")), &s).is_none(), "left for an administrator");
        // Another user's client certificate waits for an administrator too.
        let r = csr(API_CLIENT, "mallory", &[], CLIENT, "system:bootstrap:abc123", &boot);
        assert!(plan(&r, None, &s).is_none());
    }

    #[test]
    fn a_node_gets_a_serving_certificate_for_its_own_addresses_only() {
        let (_dir, s) = signer();
        let me = ["system:nodes", "system:authenticated"];
        let n1 = node("n1", "10.0.0.5");
        let r = csr(KUBELET_SERVING, "system:node:n1", &["10.0.0.5", "n1"], SERVING, "system:node:n1", &me);
        let done = plan(&r, Some(&n1), &s).expect("approved and signed");
        assert!(!done.status.unwrap().certificate.is_empty());
        let r = csr(KUBELET_SERVING, "system:node:n1", &["10.0.0.9"], SERVING, "system:node:n1", &me);
        assert!(plan(&r, Some(&n1), &s).is_none(), "not its address");
        let r = csr(KUBELET_SERVING, "system:node:n2", &["10.0.0.5"], SERVING, "system:node:n1", &me);
        assert!(plan(&r, Some(&n1), &s).is_none(), "another node's name");
        assert!(
            plan(&csr(KUBELET_SERVING, "system:node:n1", &["10.0.0.5"], SERVING, "system:node:n1", &me), None, &s)
                .is_none(),
            "no Node yet"
        );
    }

    #[test]
    fn an_approved_request_that_breaks_its_signers_rules_fails_instead_of_being_signed() {
        let (_dir, s) = signer();
        let mut r = csr(KUBELET_CLIENT, "system:node:n1", &["10.0.0.5"], CLIENT, "admin", &["system:masters"]);
        r.status = Some(CertificateSigningRequestStatus {
            conditions: vec![condition("Approved", "AdminApproved", String::new())],
            ..Default::default()
        });
        let done = plan(&r, None, &s).unwrap();
        assert_eq!(types(&done), ["Approved", "Failed"]);
        assert!(done.status.as_ref().unwrap().certificate.is_empty());
        assert!(done.status.unwrap().conditions[1].message.contains("no subject alternative names"));
    }
}
