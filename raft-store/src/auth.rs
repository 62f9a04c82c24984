//! The store's own users, roles and key-range permissions: etcd's auth model, replicated
//! through the raft log like every other state.
//!
//! [`AuthState`] is one value in the state machine's `sm` column family (so snapshots carry
//! it); [`AuthOp`]s change it deterministically on every replica. Passwords are hashed on the
//! master that receives them (PBKDF2-HMAC-SHA256, a random salt), before they are proposed, so
//! no log entry holds one in the clear. Tokens are `user.expiry.mac`, HMAC-signed with a key
//! that is part of the replicated state: any master checks a token any other issued, and
//! turning auth off and on again retires every token.
//!
//! A caller is a user by a token (metadata `token`, as etcd clients send it) or by the common
//! name of a verified client certificate. While auth is on, a caller with neither is refused
//! with etcd's own message (`etcdserver: user name is empty`), and every key read or write
//! must be covered by a permission of one of the user's roles; the `root` role may do all.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The role that may do everything, and the user `AuthEnable` requires.
pub const ROOT: &str = "root";
/// How long a token from `Authenticate` is good for (etcd's JWT default).
pub const TOKEN_TTL: Duration = Duration::from_secs(300);
const PBKDF2_ROUNDS: u32 = 60_000;

/// Why an auth call or check failed, in etcd's words (clients match on them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AuthError {
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: invalid auth token")]
    InvalidToken,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: user name already exists")]
    UserExists,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleExists,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: root user does not exist")]
    RootUserMissing,
    #[error("etcdserver: root user does not have root role")]
    RootRoleMissing,
    #[error("etcdserver: invalid auth management")]
    InvalidManagement,
    #[error("etcdserver: authentication is not enabled")]
    NotEnabled,
    #[error("etcdserver: password must not be empty (or add the user with --no-password)")]
    PasswordEmpty,
    #[error("etcdserver: hashedPassword is not accepted; send the password, the server hashes it")]
    HashedPassword,
    #[error("etcdserver: authentication is being set up; retry")]
    NotReady,
}

impl AuthError {
    /// The gRPC code etcd answers this error with.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            AuthError::UserEmpty
            | AuthError::RoleEmpty
            | AuthError::AuthFailed
            | AuthError::PasswordEmpty
            | AuthError::HashedPassword => Code::InvalidArgument,
            AuthError::InvalidToken => Code::Unauthenticated,
            AuthError::PermissionDenied => Code::PermissionDenied,
            AuthError::NotReady => Code::Unavailable,
            _ => Code::FailedPrecondition,
        }
    }
}

/// What a permission lets its role do on its key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PermKind {
    Read,
    Write,
    ReadWrite,
}

impl PermKind {
    fn allows(self, write: bool) -> bool {
        matches!((self, write), (PermKind::ReadWrite, _) | (PermKind::Read, false) | (PermKind::Write, true))
    }
}

/// A key range (etcd's convention: empty `range_end` is the single key, `"\0"` is every key
/// from `key` on) and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Perm {
    pub kind: PermKind,
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// PBKDF2 hash (see [`hash_password`]); `None` for a user who may only present a
    /// client certificate (etcd's `--no-password`).
    pub password: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub perms: Vec<Perm>,
}

/// The replicated auth state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthState {
    /// Set by the first [`AuthOp::Bootstrap`]; a master configured with a root password
    /// proposes it until it is set, and refuses the etcd API meanwhile.
    pub bootstrapped: bool,
    pub enabled: bool,
    /// Grows with every change, as etcd's auth revision.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
    /// HMAC key of the tokens; a new one each time auth is enabled.
    pub token_key: Vec<u8>,
}

/// A change to the auth state, proposed through raft. Passwords arrive hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum AuthOp {
    /// A cluster's first auth state: user and role `root`, auth on. Applies once; later
    /// proposals (every master configured with the password makes one) change nothing.
    Bootstrap {
        root_password: String,
        token_key: Vec<u8>,
    },
    Enable {
        token_key: Vec<u8>,
    },
    Disable,
    UserAdd {
        name: String,
        password: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Perm,
    },
    RoleRevokePermission {
        name: String,
        key: Vec<u8>,
        range_end: Vec<u8>,
    },
}

impl AuthState {
    /// The state after `op`, or why `op` is refused (then nothing changes).
    pub fn apply(&self, op: &AuthOp) -> Result<AuthState, AuthError> {
        let mut next = self.clone();
        match op {
            AuthOp::Bootstrap { root_password, token_key } => {
                if self.bootstrapped {
                    return Ok(next);
                }
                next.bootstrapped = true;
                next.roles.entry(ROOT.into()).or_default();
                let root = next.users.entry(ROOT.into()).or_default();
                root.password = Some(root_password.clone());
                root.roles.insert(ROOT.into());
                next.enabled = true;
                next.token_key = token_key.clone();
            }
            AuthOp::Enable { token_key } => {
                if self.enabled {
                    return Ok(next);
                }
                let root = self.users.get(ROOT).ok_or(AuthError::RootUserMissing)?;
                if !root.roles.contains(ROOT) {
                    return Err(AuthError::RootRoleMissing);
                }
                next.enabled = true;
                next.bootstrapped = true;
                next.token_key = token_key.clone();
            }
            AuthOp::Disable => next.enabled = false,
            AuthOp::UserAdd { name, password } => {
                if name.is_empty() {
                    return Err(AuthError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(AuthError::UserExists);
                }
                next.users.insert(name.clone(), User { password: password.clone(), roles: BTreeSet::new() });
            }
            AuthOp::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                next.users.remove(name).ok_or(AuthError::UserNotFound)?;
            }
            AuthOp::UserChangePassword { name, password } => {
                next.users.get_mut(name).ok_or(AuthError::UserNotFound)?.password = Some(password.clone());
            }
            AuthOp::UserGrantRole { user, role } => {
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(AuthError::RoleNotFound);
                }
                next.users.get_mut(user).ok_or(AuthError::UserNotFound)?.roles.insert(role.clone());
            }
            AuthOp::UserRevokeRole { user, role } => {
                if self.enabled && user == ROOT && role == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                let u = next.users.get_mut(user).ok_or(AuthError::UserNotFound)?;
                if !u.roles.remove(role) {
                    return Err(AuthError::RoleNotGranted);
                }
            }
            AuthOp::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(AuthError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(AuthError::RoleExists);
                }
                next.roles.insert(name.clone(), Role::default());
            }
            AuthOp::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(AuthError::InvalidManagement);
                }
                next.roles.remove(name).ok_or(AuthError::RoleNotFound)?;
                for u in next.users.values_mut() {
                    u.roles.remove(name);
                }
            }
            AuthOp::RoleGrantPermission { name, perm } => {
                let role = next.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                match role.perms.iter_mut().find(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(p) => p.kind = perm.kind,
                    None => role.perms.push(perm.clone()),
                }
            }
            AuthOp::RoleRevokePermission { name, key, range_end } => {
                let role = next.roles.get_mut(name).ok_or(AuthError::RoleNotFound)?;
                let before = role.perms.len();
                role.perms.retain(|p| !(&p.key == key && &p.range_end == range_end));
                if role.perms.len() == before {
                    return Err(AuthError::PermissionNotGranted);
                }
            }
        }
        next.revision += 1;
        Ok(next)
    }

    /// A token for `user` if `password` is theirs.
    pub fn authenticate(&self, user: &str, password: &str, now: SystemTime) -> Result<String, AuthError> {
        if !self.enabled {
            return Err(AuthError::NotEnabled);
        }
        let hash = self.users.get(user).and_then(|u| u.password.as_deref()).ok_or(AuthError::AuthFailed)?;
        if !verify_password(hash, password) {
            return Err(AuthError::AuthFailed);
        }
        let expiry = (now + TOKEN_TTL).duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let signed = format!("{}.{expiry}", hex::encode(user));
        let mac = ring::hmac::sign(&self.mac_key(), signed.as_bytes());
        Ok(format!("{signed}.{}", hex::encode(mac.as_ref())))
    }

    /// The user a token names, if the token is ours, unexpired, and the user still exists.
    pub fn check_token(&self, token: &str, now: SystemTime) -> Result<String, AuthError> {
        let (signed, mac) = token.rsplit_once('.').ok_or(AuthError::InvalidToken)?;
        let mac = hex::decode(mac).map_err(|_| AuthError::InvalidToken)?;
        ring::hmac::verify(&self.mac_key(), signed.as_bytes(), &mac).map_err(|_| AuthError::InvalidToken)?;
        let (user, expiry) = signed.split_once('.').ok_or(AuthError::InvalidToken)?;
        let expiry: u64 = expiry.parse().map_err(|_| AuthError::InvalidToken)?;
        if now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() >= expiry {
            return Err(AuthError::InvalidToken);
        }
        let user = String::from_utf8(hex::decode(user).map_err(|_| AuthError::InvalidToken)?)
            .map_err(|_| AuthError::InvalidToken)?;
        if !self.users.contains_key(&user) {
            return Err(AuthError::InvalidToken);
        }
        Ok(user)
    }

    fn mac_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.token_key)
    }

    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }

    /// Whether `user` may read (or write) every key in `[key, range_end)` (etcd's range
    /// convention). Ranges of several permissions together may cover it.
    pub fn allowed(&self, user: &str, key: &[u8], range_end: &[u8], write: bool) -> bool {
        let Some(u) = self.users.get(user) else { return false };
        if u.roles.contains(ROOT) {
            return true;
        }
        let mut ranges: Vec<(Vec<u8>, Option<Vec<u8>>)> = u
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| &r.perms)
            .filter(|p| p.kind.allows(write))
            .map(|p| interval(&p.key, &p.range_end))
            .collect();
        ranges.sort();
        let (want_start, want_end) = interval(key, range_end);
        // Walk the sorted intervals, extending the covered prefix from want_start.
        let mut covered_to = want_start;
        for (start, end) in ranges {
            if start > covered_to {
                break;
            }
            match end {
                None => return true,
                Some(end) if end > covered_to => covered_to = end,
                Some(_) => {}
            }
            if want_end.as_ref().is_some_and(|w| &covered_to >= w) {
                return true;
            }
        }
        false
    }
}

/// `[start, end)` of an etcd key range; `None` is unbounded.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => (key.to_vec(), Some([key, &[0]].concat())),
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// `pbkdf2-sha256$ROUNDS$SALT$HASH` (hex), with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    let salt: [u8; 16] = rand::random();
    let mut out = [0u8; 32];
    let rounds = NonZeroU32::new(PBKDF2_ROUNDS).expect("non-zero");
    ring::pbkdf2::derive(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, &salt, password.as_bytes(), &mut out);
    format!("pbkdf2-sha256${PBKDF2_ROUNDS}${}${}", hex::encode(salt), hex::encode(out))
}

pub fn verify_password(hash: &str, password: &str) -> bool {
    let parts: Vec<&str> = hash.split('$').collect();
    let [scheme, rounds, salt, expected] = parts[..] else { return false };
    let (Some(rounds), Ok(salt), Ok(expected)) =
        (rounds.parse().ok().and_then(NonZeroU32::new), hex::decode(salt), hex::decode(expected))
    else {
        return false;
    };
    scheme == "pbkdf2-sha256"
        && ring::pbkdf2::verify(ring::pbkdf2::PBKDF2_HMAC_SHA256, rounds, &salt, password.as_bytes(), &expected).is_ok()
}

/// A fresh random token key.
pub fn new_token_key() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

/// The auth state as this master has applied it: read by every request, swapped whole by
/// the state machine after an auth entry is written.
#[derive(Default)]
pub struct AuthStore {
    state: RwLock<Arc<AuthState>>,
}

impl AuthStore {
    pub fn current(&self) -> Arc<AuthState> {
        self.state.read().expect("auth lock").clone()
    }

    pub fn set(&self, state: AuthState) {
        *self.state.write().expect("auth lock") = Arc::new(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with(perms: Vec<Perm>) -> AuthState {
        let mut s = AuthState::default();
        for op in [
            AuthOp::UserAdd { name: "alice".into(), password: Some(hash_password("pw")) },
            AuthOp::RoleAdd { name: "r".into() },
            AuthOp::UserGrantRole { user: "alice".into(), role: "r".into() },
        ] {
            s = s.apply(&op).unwrap();
        }
        for perm in perms {
            s = s.apply(&AuthOp::RoleGrantPermission { name: "r".into(), perm }).unwrap();
        }
        s
    }

    fn perm(kind: PermKind, key: &str, end: &str) -> Perm {
        Perm { kind, key: key.into(), range_end: end.into() }
    }

    #[test]
    fn ranges_of_several_permissions_cover_a_request_together() {
        let s = state_with(vec![perm(PermKind::Read, "a", "c"), perm(PermKind::ReadWrite, "c", "e")]);
        assert!(s.allowed("alice", b"a", b"e", false));
        assert!(s.allowed("alice", b"b", b"", false));
        assert!(!s.allowed("alice", b"a", b"f", false), "past the covered range");
        assert!(!s.allowed("alice", b"a", b"d", true), "write covers only c..e");
        assert!(s.allowed("alice", b"c", b"d", true));
        assert!(!s.allowed("alice", b"a", b"\0", false), "an open-ended read needs an open-ended grant");
        assert!(!s.allowed("bob", b"a", b"", false), "unknown users may do nothing");
        let open = state_with(vec![perm(PermKind::Read, "k", "\0")]);
        assert!(open.allowed("alice", b"k", b"\0", false));
        assert!(open.allowed("alice", b"zz", b"", false));
        assert!(!open.allowed("alice", b"a", b"", false));
    }

    #[test]
    fn enable_needs_root_and_tokens_name_their_user() {
        let s = state_with(vec![]);
        let key = new_token_key();
        assert_eq!(s.apply(&AuthOp::Enable { token_key: key.clone() }), Err(AuthError::RootUserMissing));
        let s = s.apply(&AuthOp::UserAdd { name: ROOT.into(), password: Some(hash_password("rootpw")) }).unwrap();
        assert_eq!(s.apply(&AuthOp::Enable { token_key: key.clone() }), Err(AuthError::RootRoleMissing));
        let s = s.apply(&AuthOp::UserGrantRole { user: ROOT.into(), role: ROOT.into() }).unwrap();
        let s = s.apply(&AuthOp::Enable { token_key: key }).unwrap();
        let now = SystemTime::now();
        assert_eq!(s.authenticate("alice", "wrong", now), Err(AuthError::AuthFailed));
        let token = s.authenticate("alice", "pw", now).unwrap();
        assert_eq!(s.check_token(&token, now).as_deref(), Ok("alice"));
        assert_eq!(s.check_token(&token, now + TOKEN_TTL), Err(AuthError::InvalidToken), "expired");
        let forged = token.replace(&hex::encode("alice"), &hex::encode("root"));
        assert_eq!(s.check_token(&forged, now), Err(AuthError::InvalidToken));
        assert_eq!(s.apply(&AuthOp::UserDelete { name: ROOT.into() }), Err(AuthError::InvalidManagement));
        // A new key (auth off and on) retires every token.
        let s = s.apply(&AuthOp::Disable).unwrap().apply(&AuthOp::Enable { token_key: new_token_key() }).unwrap();
        assert_eq!(s.check_token(&token, now), Err(AuthError::InvalidToken));
    }

    #[test]
    fn bootstrap_applies_once() {
        let s = AuthState::default()
            .apply(&AuthOp::Bootstrap { root_password: hash_password("one"), token_key: new_token_key() })
            .unwrap();
        assert!(s.enabled && s.is_root(ROOT));
        let again =
            s.apply(&AuthOp::Bootstrap { root_password: hash_password("two"), token_key: new_token_key() }).unwrap();
        assert_eq!(again, s, "a second bootstrap changes nothing");
        assert!(s.authenticate(ROOT, "one", SystemTime::now()).is_ok());
    }
}
