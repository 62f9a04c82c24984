//! Creates a client may retry after an unknown outcome. A reply lost after the leader
//! committed a create (a connection broken, a master killed) leaves the client not knowing
//! whether the object exists; retried blindly, a create with `generateName` made a second object
//! and a named one failed with AlreadyExists for the client's own object.
//!
//! A client that may retry sends a request id ([`skiff_proto::REQUEST_ID_HEADER`]) that stays
//! the same across its retries of one create. The object's uid, and the suffix `generateName`
//! gets, are derived from the caller's name and that id, so every attempt prepares the same
//! object; an attempt that finds the object already there with the uid its id derives answers
//! with that object, as if it had created it. Another caller's id, or none, derives another uid
//! and gets AlreadyExists as before.

use crate::error::{ApiError, ApiResult};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use tonic::metadata::MetadataMap;

/// One create as its client names it, across retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateId {
    digest: [u8; 32],
}

impl CreateId {
    /// `user`'s create `request_id` (8–128 characters of `[A-Za-z0-9._-]`).
    pub fn new(user: &str, request_id: &str) -> ApiResult<CreateId> {
        let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if !(8..=128).contains(&request_id.len()) || !request_id.chars().all(fits) {
            return Err(ApiError::BadRequest(format!(
                "{}: {request_id:?} is not a request id (8 to 128 characters of letters, digits, '.', '_' and '-')",
                skiff_proto::REQUEST_ID_HEADER
            )));
        }
        let input = [user.as_bytes(), b"\0", request_id.as_bytes()].concat();
        let digest = ring::digest::digest(&ring::digest::SHA256, &input);
        Ok(CreateId { digest: digest.as_ref().try_into().expect("SHA-256 is 32 bytes") })
    }

    /// The create id a request carries, if any.
    pub fn of_request(metadata: &MetadataMap, user: &str) -> ApiResult<Option<CreateId>> {
        let Some(value) = metadata.get(skiff_proto::REQUEST_ID_HEADER) else { return Ok(None) };
        let id = value
            .to_str()
            .map_err(|_| ApiError::BadRequest(format!("{}: not printable ASCII", skiff_proto::REQUEST_ID_HEADER)))?;
        CreateId::new(user, id).map(Some)
    }

    /// The object's uid: a version-4-shaped UUID from the digest's first 16 bytes.
    pub fn uid(&self) -> String {
        super::uid_from(self.digest[..16].try_into().expect("16 bytes"))
    }

    /// The `generateName` suffix, from the digest's last bytes.
    pub fn suffix(&self) -> String {
        super::suffix_from(&self.digest[16..])
    }
}

/// Testing only: with `SKIFF_TESTING_LOSE_CREATE_REPLIES=NAMESPACE` in its environment, a
/// master answers the first create it commits in NAMESPACE with an outcome-unknown error, as a
/// connection broken after the commit would look to the client.
pub(super) fn lose_this_reply(namespace: &str, key: &str) -> bool {
    static TARGET: OnceLock<Option<(String, AtomicBool)>> = OnceLock::new();
    let target = TARGET.get_or_init(|| {
        let ns = std::env::var("SKIFF_TESTING_LOSE_CREATE_REPLIES").ok().filter(|ns| !ns.is_empty())?;
        tracing::warn!(namespace = %ns, "testing: the reply to the first create committed in this namespace will be lost");
        Some((ns, AtomicBool::new(false)))
    });
    let Some((ns, spent)) = target else { return false };
    if ns != namespace || spent.swap(true, Ordering::Relaxed) {
        return false;
    }
    tracing::warn!(key, "testing: losing the reply to a committed create");
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_callers_id_derives_one_uid_and_suffix() {
        let a = CreateId::new("alice", "0123456789abcdef").unwrap();
        assert_eq!(a, CreateId::new("alice", "0123456789abcdef").unwrap());
        assert_eq!((a.uid(), a.suffix()), (a.uid(), a.suffix()));
        let other_user = CreateId::new("bob", "0123456789abcdef").unwrap();
        let other_id = CreateId::new("alice", "0123456789abcdeg").unwrap();
        assert_ne!(a.uid(), other_user.uid());
        assert_ne!(a.uid(), other_id.uid());
        assert_eq!(a.uid().len(), 36);
        assert_eq!(a.uid().as_bytes()[14], b'4', "version-4 shaped: {}", a.uid());
        assert_eq!(a.suffix().len(), 5);
    }

    #[test]
    fn a_malformed_id_is_refused_by_name() {
        for bad in ["short", "has space in it", &"x".repeat(129), "ünïcödé-chars"] {
            let e = CreateId::new("alice", bad).unwrap_err();
            assert!(e.to_string().contains(skiff_proto::REQUEST_ID_HEADER), "{e}");
        }
    }
}
