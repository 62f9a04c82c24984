//! etcd's v3 gRPC services over a [`Master`](crate::master::Master). Handlers are adapters:
//! check the caller ([`Caller`]), validate, call the master or the MVCC store, map the error
//! (see `error.rs`), respond.

pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use crate::auth::{AuthError, AuthState};
use crate::error::StoreError;
use crate::master::Master;
use skiff_proto::etcdserverpb::{request_op, TxnRequest};
use std::sync::Arc;
use std::time::SystemTime;
use tonic::Status;

fn status(e: impl Into<StoreError>) -> Status {
    e.into().into()
}

fn denied(e: AuthError) -> Status {
    Status::new(e.code(), e.to_string())
}

/// Who is calling the etcd API, and what the store's auth lets them do.
///
/// While auth is off everyone may do everything (etcd's default; a master configured with a
/// root password is never in that state: it refuses every call until its bootstrap entry has
/// applied). While it is on, the caller is the user a `token` names, or else the common name
/// of the verified client certificate; without either the call is refused.
pub struct Caller {
    auth: Arc<AuthState>,
    /// `None` while auth is off.
    user: Option<String>,
}

impl Caller {
    pub fn of<T>(master: &Master, req: &tonic::Request<T>) -> Result<Caller, Status> {
        let auth = master.sm.auth.current();
        if !auth.enabled {
            if master.config.root_password_hash.is_some() && !auth.bootstrapped {
                return Err(denied(AuthError::NotReady));
            }
            return Ok(Caller { auth, user: None });
        }
        let user = if let Some(token) = req.metadata().get("token") {
            let token = token.to_str().map_err(|_| denied(AuthError::InvalidToken))?;
            auth.check_token(token, SystemTime::now()).map_err(denied)?
        } else if let Some(subject) = skiff_proto::cert::client_subject(req) {
            subject.common_name
        } else {
            return Err(denied(AuthError::UserEmpty));
        };
        Ok(Caller { auth, user: Some(user) })
    }

    /// The authenticated user (`None` while auth is off).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    fn check(&self, ok: impl FnOnce(&AuthState, &str) -> bool) -> Result<(), Status> {
        match &self.user {
            Some(user) if !ok(&self.auth, user) => Err(denied(AuthError::PermissionDenied)),
            _ => Ok(()),
        }
    }

    /// Cluster, maintenance and auth administration.
    pub fn root(&self) -> Result<(), Status> {
        self.check(|a, u| a.is_root(u))
    }

    pub fn read(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.check(|a, u| a.allowed(u, key, range_end, false))
    }

    pub fn write(&self, key: &[u8], range_end: &[u8]) -> Result<(), Status> {
        self.check(|a, u| a.allowed(u, key, range_end, true))
    }

    /// Every compare reads its key; every operation of both branches (nested txns too) needs
    /// its own permission, as etcd checks.
    pub fn txn(&self, t: &TxnRequest) -> Result<(), Status> {
        for c in &t.compare {
            self.read(&c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => self.read(&r.key, &r.range_end)?,
                Some(request_op::Request::RequestPut(p)) => {
                    self.write(&p.key, &[])?;
                    if p.prev_kv {
                        self.read(&p.key, &[])?;
                    }
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    self.write(&d.key, &d.range_end)?;
                    if d.prev_kv {
                        self.read(&d.key, &d.range_end)?;
                    }
                }
                Some(request_op::Request::RequestTxn(inner)) => self.txn(inner)?,
                None => {}
            }
        }
        Ok(())
    }
}
