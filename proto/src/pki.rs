//! Making the certificates a cluster runs on: a CA, and identities it signs, written as PEM
//! files with keys readable by their owner only. One maker for `skiff up`, the chaos harness
//! and the benchmarks, so every cluster Skiff starts has the same shape of PKI.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa};
use std::io;
use std::path::{Path, PathBuf};

pub use rcgen::ExtendedKeyUsagePurpose as Usage;
pub use rcgen::KeyPair;

fn other(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("making a certificate: {e}"))
}

/// A certificate authority: its certificate and the key that signs with it.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// The two files of an issued identity.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a certificate is for and whom it names.
#[derive(Debug, Clone, Default)]
pub struct Subject<'a> {
    /// The common name: the user, the member, the node.
    pub common_name: &'a str,
    /// The organization: Kubernetes reads it as the user's group. (rcgen writes one
    /// attribute per type, so a certificate made here names one group at most.)
    pub organization: Option<&'a str>,
    /// DNS names and IP addresses the certificate is valid for (servers).
    pub sans: &'a [&'a str],
}

impl Ca {
    /// A new self-signed CA named `cn`.
    pub fn new(cn: &str) -> io::Result<Ca> {
        let key = KeyPair::generate().map_err(other)?;
        Ca::with_key(cn, key)
    }

    /// The CA named `cn` over `key`: made anew from the same name and key, it signs
    /// certificates that verify against the CA certificate written when the key was made.
    fn with_key(cn: &str, key: KeyPair) -> io::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).map_err(other)?;
        Ok(Ca { cert, key })
    }

    /// A new CA named `cn`, written as `<base>.crt` and `<base>.key` (0600).
    pub fn create(base: &Path, cn: &str) -> io::Result<Ca> {
        let ca = Ca::new(cn)?;
        std::fs::write(base.with_extension("crt"), ca.pem())?;
        write_private(&base.with_extension("key"), ca.key.serialize_pem().as_bytes())?;
        Ok(ca)
    }

    /// The CA of the PEM files `cert` and `key` (kube-controller-manager's
    /// `--cluster-signing-cert-file` and `--cluster-signing-key-file`): what it signs names
    /// the certificate's subject as its issuer.
    pub fn from_files(cert: &Path, key: &Path) -> io::Result<Ca> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", p.display())))
        };
        let key = KeyPair::from_pem(&read(key)?).map_err(other)?;
        let params = CertificateParams::from_ca_cert_pem(&read(cert)?).map_err(other)?;
        let cert = params.self_signed(&key).map_err(other)?;
        Ok(Ca { cert, key })
    }

    /// The CA named `cn` whose key is the PEM file `key`.
    pub fn load(key: &Path, cn: &str) -> io::Result<Ca> {
        let pem = std::fs::read_to_string(key)?;
        let key = KeyPair::from_pem(&pem).map_err(other)?;
        Ca::with_key(cn, key)
    }

    /// The CA certificate as PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `subject`, usable for `usages`, signed by this CA; written as
    /// `<base>.crt` and `<base>.key` (0600), their absolute paths returned.
    pub fn issue(&self, base: &Path, subject: &Subject, usages: &[Usage]) -> io::Result<Issued> {
        let sans: Vec<String> = subject.sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).map_err(other)?;
        params.distinguished_name.push(DnType::CommonName, subject.common_name);
        if let Some(o) = subject.organization {
            params.distinguished_name.push(DnType::OrganizationName, o);
        }
        params.extended_key_usages = usages.to_vec();
        let key = KeyPair::generate().map_err(other)?;
        let cert = params.signed_by(&key, &self.cert, &self.key).map_err(other)?;
        let (crt, pem_key) = (base.with_extension("crt"), base.with_extension("key"));
        std::fs::write(&crt, cert.pem())?;
        write_private(&pem_key, key.serialize_pem().as_bytes())?;
        Ok(Issued { cert: std::fs::canonicalize(crt)?, key: std::fs::canonicalize(pem_key)? })
    }
}

impl Ca {
    /// Signs the PEM certificate signing request `pem` (its signature checked): the subject and
    /// alternative names it asks for, for `usages`, valid from five minutes ago (clocks differ)
    /// for `valid_for`, never a CA. What the request should name is the caller's to check
    /// ([`crate::cert::parse_request`]).
    pub fn sign_request(&self, pem: &str, usages: &[Usage], valid_for: std::time::Duration) -> io::Result<String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(pem).map_err(other)?;
        let now = time::OffsetDateTime::now_utc();
        csr.params.not_before = now - time::Duration::minutes(5);
        csr.params.not_after = now + valid_for;
        csr.params.is_ca = IsCa::ExplicitNoCa;
        csr.params.extended_key_usages = usages.to_vec();
        csr.params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        Ok(csr.signed_by(&self.cert, &self.key).map_err(other)?.pem())
    }
}

/// A PEM certificate signing request for `common_name` (and `organization`, read as the
/// group) with alternative names `sans` (IP addresses or DNS names), signed with `key`.
pub fn request(key: &KeyPair, common_name: &str, organization: Option<&str>, sans: &[&str]) -> io::Result<String> {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).map_err(other)?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    if let Some(o) = organization {
        params.distinguished_name.push(DnType::OrganizationName, o);
    }
    params.serialize_request(key).map_err(other)?.pem().map_err(other)
}

/// Writes a credential or key: readable by its owner only (0600), whatever the umask, also
/// when the file existed before.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("writing {}: {e}", path.display())))?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(contents)
}

/// Creates a directory only its owner may enter (0700).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_subject_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("skiff-pki-{}", std::process::id()));
        create_private_dir(&dir).unwrap();
        let ca = Ca::create(&dir.join("ca"), "test-ca").unwrap();
        let subject = Subject { common_name: "alice", organization: Some("team-a"), sans: &[] };
        let issued = ca.issue(&dir.join("alice"), &subject, &[Usage::ClientAuth]).unwrap();
        let pem = std::fs::read(&issued.cert).unwrap();
        let der = der_of(&pem);
        let read = crate::cert::subject(&der).expect("the certificate parses");
        assert_eq!(read.common_name, "alice");
        assert_eq!(read.organizations, vec!["team-a"]);
        for p in [issued.key, dir.join("ca.key")] {
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{}", p.display());
        }
        // The same key makes the same CA: a reloaded CA signs certificates the written one verifies.
        let again = Ca::load(&dir.join("ca.key"), "test-ca").unwrap();
        let (_, written) = x509_parser::pem::parse_x509_pem(&std::fs::read(dir.join("ca.crt")).unwrap()).unwrap();
        let other = again.issue(&dir.join("bob"), &Subject { common_name: "bob", ..Default::default() }, &[]).unwrap();
        let (_, bob) = x509_parser::pem::parse_x509_pem(&std::fs::read(other.cert).unwrap()).unwrap();
        let ca_cert = written.parse_x509().unwrap();
        bob.parse_x509().unwrap().verify_signature(Some(ca_cert.public_key())).expect("signed by the written CA");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_signed_request_keeps_its_names_and_verifies_against_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::create(&dir.path().join("ca"), "test-ca").unwrap();
        let key = KeyPair::generate().unwrap();
        let pem = request(&key, "system:node:n1", Some("system:nodes"), &["10.0.0.5"]).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        let signed = ca.sign_request(&pem, &[Usage::ServerAuth], day).unwrap();
        let (_, cert) = x509_parser::pem::parse_x509_pem(signed.as_bytes()).unwrap();
        let cert = cert.parse_x509().unwrap();
        let (_, ca_pem) = x509_parser::pem::parse_x509_pem(&std::fs::read(dir.path().join("ca.crt")).unwrap()).unwrap();
        cert.verify_signature(Some(ca_pem.parse_x509().unwrap().public_key())).expect("signed by the CA");
        assert_eq!(crate::cert::subject(&der_of(signed.as_bytes())).unwrap().common_name, "system:node:n1");
        assert_eq!(cert.public_key().raw, key.public_key_der(), "the requester's key");
        let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime, 86_400 + 300, "a day from five minutes ago");
        assert!(!cert.is_ca());
        assert!(ca.sign_request("junk", &[], day).is_err());
        // The same CA read back from its files signs what the written certificate verifies.
        let loaded = Ca::from_files(&dir.path().join("ca.crt"), &dir.path().join("ca.key")).unwrap();
        let again = loaded.sign_request(&pem, &[Usage::ServerAuth], day).unwrap();
        let (_, again) = x509_parser::pem::parse_x509_pem(again.as_bytes()).unwrap();
        again
            .parse_x509()
            .unwrap()
            .verify_signature(Some(ca_pem.parse_x509().unwrap().public_key()))
            .expect("verifies");
    }

    fn der_of(pem: &[u8]) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem).expect("PEM").1.contents
    }
}
