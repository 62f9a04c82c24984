//! `etcdserverpb.Auth`: users, roles, permissions and tokens (see [`crate::auth`]).
//!
//! Administration needs the root role once auth is on; `Authenticate` and `AuthStatus` need
//! nothing; a user may read their own record and their roles'. Passwords are hashed here,
//! on the receiving master, before anything is proposed.

use super::{denied, status, Caller};
use crate::auth::{self as model, AuthError, AuthOp, Perm, PermKind};
use crate::master::{reply_result, Master};
use crate::types::Op;
use skiff_proto::authpb::permission::Type as PermType;
use skiff_proto::authpb::Permission;
use skiff_proto::etcdserverpb::auth_server::Auth;
use skiff_proto::etcdserverpb::*;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuthService {
    pub master: Arc<Master>,
}

impl AuthService {
    fn header(&self) -> Option<ResponseHeader> {
        Some(self.master.header(self.master.sm.mvcc.current_revision()))
    }

    /// Proposes `op` after checking that the caller is root.
    async fn change<T>(&self, req: &Request<T>, op: AuthOp) -> Result<Option<ResponseHeader>, Status> {
        Caller::of(&self.master, req)?.root()?;
        self.propose(op).await
    }

    async fn propose(&self, op: AuthOp) -> Result<Option<ResponseHeader>, Status> {
        reply_result(self.master.propose(Op::Auth(op)).await.map_err(status)?).map_err(status)?;
        Ok(self.header())
    }
}

/// Hashes off the async threads: PBKDF2 is deliberately slow.
async fn hash(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || model::hash_password(&password))
        .await
        .map_err(|e| Status::internal(e.to_string()))
}

fn perm_from_wire(p: Permission) -> Perm {
    let kind = match PermType::try_from(p.perm_type) {
        Ok(PermType::Write) => PermKind::Write,
        Ok(PermType::Readwrite) => PermKind::ReadWrite,
        _ => PermKind::Read,
    };
    Perm { kind, key: p.key, range_end: p.range_end }
}

fn perm_to_wire(p: &Perm) -> Permission {
    let t = match p.kind {
        PermKind::Read => PermType::Read,
        PermKind::Write => PermType::Write,
        PermKind::ReadWrite => PermType::Readwrite,
    };
    Permission { perm_type: t as i32, key: p.key.clone(), range_end: p.range_end.clone() }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(&self, req: Request<AuthEnableRequest>) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self.change(&req, AuthOp::Enable { token_key: model::new_token_key() }).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(&self, req: Request<AuthDisableRequest>) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.change(&req, AuthOp::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn auth_status(&self, _req: Request<AuthStatusRequest>) -> Result<Response<AuthStatusResponse>, Status> {
        let auth = self.master.sm.auth.current();
        Ok(Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: auth.enabled,
            auth_revision: auth.revision,
        }))
    }

    async fn authenticate(&self, req: Request<AuthenticateRequest>) -> Result<Response<AuthenticateResponse>, Status> {
        self.master.check_accepting().map_err(status)?;
        // A user or password changed through another master counts from the moment it was
        // acknowledged.
        self.master.read_barrier().await.map_err(status)?;
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(denied(AuthError::UserEmpty));
        }
        let auth = self.master.sm.auth.current();
        let token = tokio::task::spawn_blocking(move || {
            auth.authenticate(&req.name, &req.password, std::time::SystemTime::now())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(denied)?;
        Ok(Response::new(AuthenticateResponse { header: self.header(), token }))
    }

    async fn user_add(&self, req: Request<AuthUserAddRequest>) -> Result<Response<AuthUserAddResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let req = req.into_inner();
        if !req.hashed_password.is_empty() {
            return Err(denied(AuthError::HashedPassword));
        }
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password = match (req.password.is_empty(), no_password) {
            (_, true) => None,
            (true, false) => return Err(denied(AuthError::PasswordEmpty)),
            (false, false) => Some(hash(req.password).await?),
        };
        let header = self.propose(AuthOp::UserAdd { name: req.name, password }).await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(&self, req: Request<AuthUserGetRequest>) -> Result<Response<AuthUserGetResponse>, Status> {
        let caller = Caller::of(&self.master, &req)?;
        let name = req.into_inner().name;
        if caller.user() != Some(name.as_str()) {
            caller.root()?;
        }
        let auth = self.master.sm.auth.current();
        let user = auth.users.get(&name).ok_or_else(|| denied(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse { header: self.header(), roles: user.roles.iter().cloned().collect() }))
    }

    async fn user_list(&self, req: Request<AuthUserListRequest>) -> Result<Response<AuthUserListResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let users = self.master.sm.auth.current().users.keys().cloned().collect();
        Ok(Response::new(AuthUserListResponse { header: self.header(), users }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self.change(&req, AuthOp::UserDelete { name }).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let req = req.into_inner();
        if !req.hashed_password.is_empty() {
            return Err(denied(AuthError::HashedPassword));
        }
        if req.password.is_empty() {
            return Err(denied(AuthError::PasswordEmpty));
        }
        let password = hash(req.password).await?;
        let header = self.propose(AuthOp::UserChangePassword { name: req.name, password }).await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let AuthUserGrantRoleRequest { user, role } = req.get_ref().clone();
        let header = self.change(&req, AuthOp::UserGrantRole { user, role }).await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let AuthUserRevokeRoleRequest { name, role } = req.get_ref().clone();
        let header = self.change(&req, AuthOp::UserRevokeRole { user: name, role }).await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(&self, req: Request<AuthRoleAddRequest>) -> Result<Response<AuthRoleAddResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self.change(&req, AuthOp::RoleAdd { name }).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(&self, req: Request<AuthRoleGetRequest>) -> Result<Response<AuthRoleGetResponse>, Status> {
        let caller = Caller::of(&self.master, &req)?;
        let name = req.into_inner().role;
        let auth = self.master.sm.auth.current();
        let own = caller.user().and_then(|u| auth.users.get(u)).is_some_and(|u| u.roles.contains(&name));
        if !own {
            caller.root()?;
        }
        let role = auth.roles.get(&name).ok_or_else(|| denied(AuthError::RoleNotFound))?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm: role.perms.iter().map(perm_to_wire).collect(),
        }))
    }

    async fn role_list(&self, req: Request<AuthRoleListRequest>) -> Result<Response<AuthRoleListResponse>, Status> {
        Caller::of(&self.master, &req)?.root()?;
        let roles = self.master.sm.auth.current().roles.keys().cloned().collect();
        Ok(Response::new(AuthRoleListResponse { header: self.header(), roles }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let name = req.get_ref().role.clone();
        let header = self.change(&req, AuthOp::RoleDelete { name }).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = req.get_ref().clone();
        let perm = r.perm.ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
        let op = AuthOp::RoleGrantPermission { name: r.name, perm: perm_from_wire(perm) };
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = req.get_ref().clone();
        let op = AuthOp::RoleRevokePermission { name: r.role, key: r.key, range_end: r.range_end };
        let header = self.change(&req, op).await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
