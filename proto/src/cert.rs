//! Who a verified client certificate names: its subject's common name and organizations.
//! (The TLS layer has checked the certificate against the listener's client CA; this only
//! reads it.) One reader for every listener that takes client certificates: the etcd API
//! (CN = store user), the Skiff API (CN = user, O = groups), the peer port (CN = member) and
//! node servers (CN = the masters').

/// The subject of a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub common_name: String,
    pub organizations: Vec<String>,
}

/// The subject of a DER certificate; `None` if it does not parse or names no common name.
pub fn subject(der: &[u8]) -> Option<Subject> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert.subject();
    let common_name = name.iter_common_name().next()?.as_str().ok()?.to_string();
    let organizations = name.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    Some(Subject { common_name, organizations })
}

/// The subject of the client certificate a TLS request was made with, if any.
pub fn client_subject<T>(req: &tonic::Request<T>) -> Option<Subject> {
    req.peer_certs().and_then(|certs| certs.first().and_then(|c| subject(c)))
}
