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

/// The subject of a PEM certificate.
pub fn subject_of_pem(pem: &[u8]) -> Option<Subject> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    subject(&pem.contents)
}

/// The subject of the client certificate a TLS request was made with, if any.
pub fn client_subject<T>(req: &tonic::Request<T>) -> Option<Subject> {
    req.peer_certs().and_then(|certs| certs.first().and_then(|c| subject(c)))
}

/// kubeadm's `--discovery-token-ca-cert-hash` of a PEM CA certificate: `sha256:` and the hex
/// SHA-256 of its DER SubjectPublicKeyInfo (so a re-issued CA with the same key keeps it).
pub fn ca_cert_hash(pem: &[u8]) -> Result<String, String> {
    use sha2::Digest;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    Ok(format!("sha256:{}", hex::encode(sha2::Sha256::digest(cert.public_key().raw))))
}

/// What a certificate signing request asks for; its self-signature is checked (the asker
/// holds the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub subject: Subject,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<std::net::IpAddr>,
}

/// Reads a PEM `CERTIFICATE REQUEST`.
pub fn parse_request(pem: &[u8]) -> Result<Request, String> {
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("not PEM: {e}"))?;
    if pem.label != "CERTIFICATE REQUEST" {
        return Err(format!("a PEM {:?}, not a CERTIFICATE REQUEST", pem.label));
    }
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
        .map_err(|e| format!("not a certificate request: {e}"))?;
    csr.verify_signature().map_err(|e| format!("its signature does not verify: {e}"))?;
    let name = &csr.certification_request_info.subject;
    let common_name = name.iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default().to_string();
    let organizations = name.iter_organization().filter_map(|o| o.as_str().ok().map(String::from)).collect();
    let mut request =
        Request { subject: Subject { common_name, organizations }, dns_names: Vec::new(), ip_addresses: Vec::new() };
    for ext in csr.requested_extensions().into_iter().flatten() {
        let ParsedExtension::SubjectAlternativeName(san) = ext else { continue };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(d) => request.dns_names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => request.ip_addresses.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                    16 => {
                        request.ip_addresses.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")))
                    }
                    n => return Err(format!("an IP address of {n} bytes in its subject alternative names")),
                },
                other => return Err(format!("a subject alternative name of an unsupported kind: {other}")),
            }
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_hash_is_of_the_public_key_and_survives_reissue() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("ca");
        crate::pki::Ca::create(&base, "test-ca").unwrap();
        let pem = std::fs::read(base.with_extension("crt")).unwrap();
        let hash = ca_cert_hash(&pem).unwrap();
        assert!(hash.starts_with("sha256:") && hash.len() == 7 + 64, "{hash}");
        let other = dir.path().join("other");
        crate::pki::Ca::create(&other, "test-ca").unwrap();
        assert_ne!(ca_cert_hash(&std::fs::read(other.with_extension("crt")).unwrap()).unwrap(), hash, "another key");
        assert!(ca_cert_hash(b"not pem").unwrap_err().contains("not a PEM certificate"));
    }

    #[test]
    fn a_request_is_read_with_its_names_and_a_forged_one_is_refused() {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem =
            crate::pki::request(&key, "system:node:n1", Some("system:nodes"), &["n1.example", "10.0.0.5"]).unwrap();
        let r = parse_request(pem.as_bytes()).unwrap();
        assert_eq!(
            r.subject,
            Subject { common_name: "system:node:n1".into(), organizations: vec!["system:nodes".into()] }
        );
        assert_eq!(r.dns_names, ["n1.example"]);
        assert_eq!(r.ip_addresses, [std::net::IpAddr::from([10, 0, 0, 5])]);
        // One byte of the signed part changed: the signature no longer verifies.
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        let mut der = parsed.contents.clone();
        let at = der.windows(2).position(|w| w == b"n1").unwrap();
        der[at + 1] = b'2';
        let forged = pem_of("CERTIFICATE REQUEST", &der);
        let e = parse_request(forged.as_bytes()).unwrap_err();
        assert!(e.contains("signature does not verify"), "{e}");
        assert!(parse_request(b"junk").unwrap_err().contains("not PEM"));
    }

    fn pem_of(label: &str, der: &[u8]) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
    }
}
