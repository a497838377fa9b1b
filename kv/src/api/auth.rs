//! etcd's Auth service: enabling auth, authenticating, and managing users, roles and their
//! permissions. Every call goes through Raft as in etcd 3.4 (reads too), as sent by the
//! request's sender, so the admin checks happen at apply ([`crate::storage::auth`]).
//! Passwords are bcrypt-hashed here, before proposing, so the log never holds one in plain
//! text (etcd 3.5's `hashedPassword`; 3.4 hashed at apply, on every member).
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::access::requester;
use super::propose::unexpected;
use crate::error::EtcdError;
use crate::member::Member;
use crate::proto::authpb::{self, permission};
use crate::proto::etcdserverpb::{self as pb, auth_server::Auth};
use crate::storage::auth::{Access, AuthCommand, AuthReply, Permission};
use crate::storage::tokens::SimpleTokens;
use crate::types::{Command, Outcome};

/// etcd's bcrypt cost (`--bcrypt-cost` default).
const BCRYPT_COST: u32 = 10;

pub struct AuthService(pub Arc<Member>);

impl AuthService {
    fn header(&self) -> Option<pb::ResponseHeader> {
        self.0.header(self.0.shared.read().mvcc.revision())
    }

    /// Proposes `command` as sent by `request`'s sender; its reply once applied here.
    async fn run<T>(
        &self,
        request: &Request<T>,
        command: AuthCommand,
    ) -> Result<AuthReply, Status> {
        let user = requester(&self.0, request).await?;
        let command = Command::AsUser {
            user,
            command: Box::new(Command::Auth(command)),
        };
        match self.0.propose(command).await? {
            Outcome::Auth(reply) => Ok(reply),
            other => Err(unexpected(other)),
        }
    }

    /// Runs a command that answers nothing but its header.
    async fn done<T, R>(
        &self,
        request: &Request<T>,
        command: AuthCommand,
        response: impl FnOnce(Option<pb::ResponseHeader>) -> R,
    ) -> Result<Response<R>, Status> {
        match self.run(request, command).await? {
            AuthReply::Done => Ok(Response::new(response(self.header()))),
            other => Err(unexpected(Outcome::Auth(other))),
        }
    }

    /// Runs a command that answers a list of names.
    async fn names<T>(
        &self,
        request: &Request<T>,
        command: AuthCommand,
    ) -> Result<Vec<String>, Status> {
        match self.run(request, command).await? {
            AuthReply::Roles(names) | AuthReply::Users(names) => Ok(names),
            other => Err(unexpected(Outcome::Auth(other))),
        }
    }
}

/// bcrypt at etcd's cost, off the async threads (it takes tens of milliseconds).
async fn hash(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || bcrypt::hash(password, BCRYPT_COST))
        .await
        .map_err(|e| Status::internal(format!("etcdserver: hashing a password: {e}")))?
        .map_err(|e| Status::internal(format!("etcdserver: hashing a password: {e}")))
}

async fn password_matches(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .unwrap_or(false)
}

fn access_of(permission: i32) -> Access {
    match permission::Type::try_from(permission) {
        Ok(permission::Type::Write) => Access::Write,
        Ok(permission::Type::Readwrite) => Access::ReadWrite,
        // etcd reads an unknown type as its zero value.
        Ok(permission::Type::Read) | Err(_) => Access::Read,
    }
}

fn to_proto(p: Permission) -> authpb::Permission {
    let perm_type = match p.access {
        Access::Read => permission::Type::Read,
        Access::Write => permission::Type::Write,
        Access::ReadWrite => permission::Type::Readwrite,
    };
    authpb::Permission {
        perm_type: perm_type as i32,
        key: p.key,
        range_end: p.range_end,
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        self.done(&request, AuthCommand::Enable, |header| {
            pb::AuthEnableResponse { header }
        })
        .await
    }

    async fn auth_disable(
        &self,
        request: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        self.done(&request, AuthCommand::Disable, |header| {
            pb::AuthDisableResponse { header }
        })
        .await
    }

    async fn auth_status(
        &self,
        _request: Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.0.read_barrier().await?;
        let state = self.0.shared.read();
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.0.header(state.mvcc.revision()),
            enabled: state.auth.is_enabled(),
            auth_revision: state.auth.revision(),
        }))
    }

    /// Checks the password here, then has every member assign the token (etcd 3.4); retried
    /// when the auth store changed meanwhile, so a password changed since is not honoured.
    async fn authenticate(
        &self,
        request: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        let req = request.into_inner();
        self.0.read_barrier().await?;
        loop {
            let (hash, checked) = self.0.shared.read().auth.password_of(&req.name)?;
            if !password_matches(req.password.clone(), hash).await {
                return Err(EtcdError::AuthFailed.into());
            }
            let command = Command::Auth(AuthCommand::Authenticate {
                name: req.name.clone(),
                token_prefix: SimpleTokens::prefix(),
            });
            let token = match self.0.propose(command).await? {
                Outcome::Auth(AuthReply::Token(token)) => token,
                other => return Err(unexpected(other)),
            };
            if checked == self.0.shared.read().auth.revision() {
                return Ok(Response::new(pb::AuthenticateResponse {
                    header: self.header(),
                    token,
                }));
            }
            tracing::info!("auth revision moved while checking a password; retrying");
        }
    }

    async fn user_add(
        &self,
        request: Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let req = request.get_ref();
        let no_password = req.options.is_some_and(|o| o.no_password);
        let password_hash = match no_password {
            true => None,
            false => Some(hash(req.password.clone()).await?),
        };
        let command = AuthCommand::UserAdd {
            name: req.name.clone(),
            password_hash,
        };
        self.done(&request, command, |header| pb::AuthUserAddResponse {
            header,
        })
        .await
    }

    async fn user_get(
        &self,
        request: Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone();
        let roles = self.names(&request, AuthCommand::UserGet { name }).await?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let users = self.names(&request, AuthCommand::UserList).await?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users,
        }))
    }

    async fn user_delete(
        &self,
        request: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.done(&request, AuthCommand::UserDelete { name }, |header| {
            pb::AuthUserDeleteResponse { header }
        })
        .await
    }

    async fn user_change_password(
        &self,
        request: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let req = request.get_ref();
        let command = AuthCommand::UserChangePassword {
            name: req.name.clone(),
            password_hash: hash(req.password.clone()).await?,
        };
        self.done(&request, command, |header| {
            pb::AuthUserChangePasswordResponse { header }
        })
        .await
    }

    async fn user_grant_role(
        &self,
        request: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let req = request.get_ref();
        let command = AuthCommand::UserGrantRole {
            user: req.user.clone(),
            role: req.role.clone(),
        };
        self.done(&request, command, |header| pb::AuthUserGrantRoleResponse {
            header,
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        request: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let req = request.get_ref();
        let command = AuthCommand::UserRevokeRole {
            name: req.name.clone(),
            role: req.role.clone(),
        };
        self.done(&request, command, |header| pb::AuthUserRevokeRoleResponse {
            header,
        })
        .await
    }

    async fn role_add(
        &self,
        request: Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.done(&request, AuthCommand::RoleAdd { name }, |header| {
            pb::AuthRoleAddResponse { header }
        })
        .await
    }

    async fn role_get(
        &self,
        request: Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let role = request.get_ref().role.clone();
        match self.run(&request, AuthCommand::RoleGet { role }).await? {
            AuthReply::Permissions(permissions) => Ok(Response::new(pb::AuthRoleGetResponse {
                header: self.header(),
                perm: permissions.into_iter().map(to_proto).collect(),
            })),
            other => Err(unexpected(Outcome::Auth(other))),
        }
    }

    async fn role_list(
        &self,
        request: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let roles = self.names(&request, AuthCommand::RoleList).await?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn role_delete(
        &self,
        request: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let role = request.get_ref().role.clone();
        self.done(&request, AuthCommand::RoleDelete { role }, |header| {
            pb::AuthRoleDeleteResponse { header }
        })
        .await
    }

    async fn role_grant_permission(
        &self,
        request: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let req = request.get_ref();
        let perm = req.perm.clone().ok_or(EtcdError::PermissionNotGiven)?;
        let command = AuthCommand::RoleGrantPermission {
            name: req.name.clone(),
            permission: Permission {
                access: access_of(perm.perm_type),
                key: perm.key,
                range_end: perm.range_end,
            },
        };
        self.done(&request, command, |header| {
            pb::AuthRoleGrantPermissionResponse { header }
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        request: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let req = request.get_ref();
        let command = AuthCommand::RoleRevokePermission {
            role: req.role.clone(),
            key: req.key.clone(),
            range_end: req.range_end.clone(),
        };
        self.done(&request, command, |header| {
            pb::AuthRoleRevokePermissionResponse { header }
        })
        .await
    }
}
