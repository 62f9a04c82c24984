//! Encryption at rest of Secrets (and the service-account signing key), configured as
//! Kubernetes' `EncryptionConfiguration` (`--encryption-provider-config`):
//!
//! ```yaml
//! apiVersion: apiserver.config.k8s.io/v1
//! kind: EncryptionConfiguration
//! resources:
//!   - resources: [secrets]
//!     providers:
//!       - aesgcm:
//!           keys:
//!             - name: key2          # writes use the first provider's first key
//!               secret: <base64 of 32 bytes>
//!             - name: key1          # still read, so keys can be rotated
//!               secret: <base64 of 32 bytes>
//!       - identity: {}            # reads of values stored before encryption was on
//! ```
//!
//! A sealed value is `k8s:enc:aesgcm:v1:<key name>:` then a 12-byte random nonce and the
//! AES-256-GCM ciphertext with its tag; the store key is the additional data, so a sealed
//! value moved under another key does not open. The raft log carries the sealed value (it is
//! sealed before it is proposed), so neither the log, snapshots nor RocksDB files hold a
//! Secret in the clear.

use crate::error::{ApiError, ApiResult};
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::Deserialize;
use std::path::Path;

const PREFIX: &[u8] = b"k8s:enc:aesgcm:v1:";

/// Store keys whose values are sealed.
pub fn sealed_key(key: &[u8]) -> bool {
    key.starts_with(b"/registry/secrets/") || key == crate::registry::SERVICE_ACCOUNT_KEY.as_bytes()
}

pub struct AtRest {
    /// (name, key); the first seals.
    keys: Vec<(String, LessSafeKey)>,
    /// Whether values stored unsealed may still be read (an `identity` provider is listed).
    identity_reads: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Config {
    kind: String,
    resources: Vec<ResourceConfig>,
}

#[derive(Deserialize)]
struct ResourceConfig {
    resources: Vec<String>,
    providers: Vec<Provider>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Provider {
    aesgcm: Option<KeyList>,
    identity: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
struct KeyList {
    keys: Vec<NamedKey>,
}

#[derive(Deserialize)]
struct NamedKey {
    name: String,
    secret: String,
}

impl AtRest {
    /// Reads an `EncryptionConfiguration`; every problem names the file and what is wrong.
    pub fn load(path: &Path) -> Result<AtRest, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        AtRest::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<AtRest, String> {
        let config: Config = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if config.kind != "EncryptionConfiguration" {
            return Err(format!("kind is {:?}, not EncryptionConfiguration", config.kind));
        }
        let secrets = config
            .resources
            .iter()
            .find(|r| r.resources.iter().any(|r| r == "secrets"))
            .ok_or("no resources entry names secrets")?;
        let mut keys = Vec::new();
        for (i, provider) in secrets.providers.iter().enumerate() {
            if provider.identity.is_some() && i == 0 {
                return Err("the first provider is identity: Secrets would be written in the clear".into());
            }
            for k in provider.aesgcm.iter().flat_map(|a| &a.keys) {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(k.secret.trim())
                    .map_err(|e| format!("key {:?}: secret is not base64: {e}", k.name))?;
                if bytes.len() != 32 {
                    return Err(format!("key {:?}: secret is {} bytes; AES-256-GCM needs 32", k.name, bytes.len()));
                }
                if k.name.is_empty() || k.name.contains(':') {
                    return Err(format!("key name {:?} must be non-empty and contain no ':'", k.name));
                }
                let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| format!("key {:?} is unusable", k.name))?;
                keys.push((k.name.clone(), LessSafeKey::new(key)));
            }
        }
        if keys.is_empty() {
            return Err("no aesgcm key for secrets".into());
        }
        let identity_reads = secrets.providers.iter().any(|p| p.identity.is_some());
        Ok(AtRest { keys, identity_reads })
    }

    /// A fresh configuration with one random key, as `skiff up` writes it.
    pub fn generate() -> String {
        let secret = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    \
             providers:\n      - aesgcm:\n          keys:\n            - name: key1\n              secret: {secret}\n      \
             - identity: {{}}\n"
        )
    }

    /// `plain` sealed with the current key, bound to `store_key`.
    pub fn seal(&self, store_key: &[u8], plain: &[u8]) -> ApiResult<Vec<u8>> {
        let (name, key) = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut sealed = plain.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::from(store_key), &mut sealed)
            .map_err(|_| ApiError::Internal("sealing a value failed".into()))?;
        Ok([PREFIX, name.as_bytes(), b":", &nonce_bytes, &sealed].concat())
    }

    /// The plaintext of a stored value: opened with the key it names, or as stored when it is
    /// not sealed and an identity provider allows that.
    pub fn open(&self, store_key: &[u8], stored: &[u8]) -> ApiResult<Vec<u8>> {
        let what = || String::from_utf8_lossy(store_key).into_owned();
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            if self.identity_reads {
                return Ok(stored.to_vec());
            }
            return Err(ApiError::Internal(format!(
                "{} is stored unencrypted and no identity provider reads it",
                what()
            )));
        };
        let colon = rest
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| ApiError::Internal(format!("{}: malformed sealed value", what())))?;
        let (name, body) = (&rest[..colon], &rest[colon + 1..]);
        let key = self.keys.iter().find(|(n, _)| n.as_bytes() == name).map(|(_, k)| k).ok_or_else(|| {
            ApiError::Internal(format!(
                "{}: sealed with key {:?}, which is not configured",
                what(),
                String::from_utf8_lossy(name)
            ))
        })?;
        if body.len() < NONCE_LEN {
            return Err(ApiError::Internal(format!("{}: malformed sealed value", what())));
        }
        let (nonce, ciphertext) = body.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| ApiError::Internal("bad nonce".into()))?;
        let mut buf = ciphertext.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(store_key), &mut buf).map_err(|_| {
            ApiError::Internal(format!("{}: sealed value does not open (wrong key or tampered)", what()))
        })?;
        Ok(plain.to_vec())
    }
}

/// Sealing when a configuration is given; values pass through unchanged without one.
pub fn seal(at_rest: Option<&AtRest>, store_key: &[u8], plain: Vec<u8>) -> ApiResult<Vec<u8>> {
    match at_rest {
        Some(a) if sealed_key(store_key) => a.seal(store_key, &plain),
        _ => Ok(plain),
    }
}

/// The plaintext of a stored value (sealed or not, whatever the configuration).
pub fn open<'a>(at_rest: Option<&AtRest>, store_key: &[u8], stored: &'a [u8]) -> ApiResult<std::borrow::Cow<'a, [u8]>> {
    match at_rest {
        Some(a) if stored.starts_with(PREFIX) || sealed_key(store_key) => Ok(a.open(store_key, stored)?.into()),
        None if stored.starts_with(PREFIX) => Err(ApiError::Internal(format!(
            "{} is encrypted at rest but this master has no --encryption-provider-config",
            String::from_utf8_lossy(store_key)
        ))),
        _ => Ok(stored.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_with_any_listed_key_and_only_under_their_store_key() {
        let old = AtRest::parse(&AtRest::generate()).unwrap();
        let sealed = old.seal(b"/registry/secrets/default/s", b"{\"data\":1}").unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:key1:"));
        assert!(!sealed.windows(10).any(|w| w == b"{\"data\":1}"), "no plaintext in the sealed value");
        assert_eq!(old.open(b"/registry/secrets/default/s", &sealed).unwrap(), b"{\"data\":1}");
        assert!(old.open(b"/registry/secrets/default/other", &sealed).is_err(), "bound to its store key");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(old.open(b"/registry/secrets/default/s", &tampered).is_err());
        // Rotation: a new first key writes, the old one still reads.
        let old_yaml = AtRest::generate();
        let old = AtRest::parse(&old_yaml).unwrap();
        let sealed = old.seal(b"k", b"v").unwrap();
        let new_key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let rotated = old_yaml.replace(
            "          keys:\n",
            &format!("          keys:\n            - name: key2\n              secret: {new_key}\n"),
        );
        let rotated = AtRest::parse(&rotated).unwrap();
        assert_eq!(rotated.open(b"k", &sealed).unwrap(), b"v");
        assert!(rotated.seal(b"k", b"v").unwrap().starts_with(b"k8s:enc:aesgcm:v1:key2:"));
        // Plain values read only through an identity provider.
        assert_eq!(rotated.open(b"k", b"plain").unwrap(), b"plain");
        let strict = AtRest::parse(&old_yaml.replace("      - identity: {}\n", "")).unwrap();
        assert!(strict.open(b"k", b"plain").is_err());
    }

    #[test]
    fn bad_configurations_are_refused_by_what_is_wrong() {
        let bad = |yaml: &str, phrase: &str| {
            let err = AtRest::parse(yaml).err().unwrap_or_else(|| panic!("accepted {yaml}"));
            assert!(err.contains(phrase), "{err}");
        };
        let good = AtRest::generate();
        bad(&good.replace("EncryptionConfiguration", "Other"), "not EncryptionConfiguration");
        bad(&good.replace("[secrets]", "[configmaps]"), "names secrets");
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 16]);
        let secret_line = good.lines().find(|l| l.contains("secret:")).unwrap().to_string();
        bad(&good.replace(&secret_line, &format!("              secret: {short}")), "needs 32");
        let identity_first = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n  - resources: [secrets]\n    providers:\n      - identity: {}\n";
        bad(identity_first, "in the clear");
    }
}
