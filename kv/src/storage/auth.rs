//! etcd's auth store: users, roles, their key permissions, whether auth is on, and the auth
//! revision that every change moves. Deterministic and without I/O, like [`super::mvcc`]: the
//! state machine applies [`AuthCommand`]s to it in log order and the API asks it whether a
//! [`Requester`] may read, write or administer (etcd 3.4's `auth/store.go` and
//! `etcdserver/apply_auth.go`). Passwords arrive already bcrypt-hashed, so the Raft log never
//! holds one in plain text; the simple tokens live beside it, per member ([`super::tokens`]).
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::EtcdError;
use crate::proto::etcdserverpb::{self as pb, request_op};

/// The user and role etcd treats as the administrator.
pub const ROOT: &str = "root";

/// Who sent a request, as it travels in the log (etcd's `RequestHeader.username` and
/// `auth_revision`): the name the token or certificate named, and the auth revision when the
/// request arrived. An anonymous request has an empty name and revision 0.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Requester {
    pub name: String,
    pub revision: u64,
}

/// What a permission allows (authpb's `Permission.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn allows(self, wanted: Access) -> bool {
        self == Access::ReadWrite || self == wanted
    }
}

/// A role's permission on a key, or on `[key, range_end)` (`"\0"`: every key from `key` on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    pub access: Access,
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct User {
    /// The bcrypt hash; `None` for a user added with `--no-password`.
    password: Option<String>,
    /// Added with `--no-password`: never authenticates with a password, even one set later
    /// (etcd keeps the option through a password change).
    no_password: bool,
    /// Sorted, as etcd keeps them.
    roles: BTreeSet<String>,
}

/// A change to the auth store, or a question answered in log order (etcd 3.4 sends user and
/// role reads through Raft too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    Enable,
    Disable,
    /// Assigns the token `prefix.<log index>` on every member (the password was checked by
    /// the member the client asked).
    Authenticate {
        name: String,
        token_prefix: String,
    },
    UserAdd {
        name: String,
        /// bcrypt hash; `None` is etcd's `--no-password` user.
        password_hash: Option<String>,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password_hash: String,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    UserGet {
        name: String,
    },
    UserList,
    RoleAdd {
        name: String,
    },
    RoleDelete {
        role: String,
    },
    RoleGrantPermission {
        name: String,
        permission: Permission,
    },
    RoleRevokePermission {
        role: String,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        range_end: Vec<u8>,
    },
    RoleGet {
        role: String,
    },
    RoleList,
}

impl AuthCommand {
    /// The commands only an administrator may send (etcd's `needAdminPermission`).
    fn needs_admin(&self) -> bool {
        !matches!(
            self,
            AuthCommand::Authenticate { .. }
                | AuthCommand::UserGet { .. }
                | AuthCommand::RoleGet { .. }
        )
    }
}

/// What an [`AuthCommand`] answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthReply {
    Done,
    /// The user name a token is to be assigned to (by the state machine, which answers
    /// [`AuthReply::Token`]).
    Authenticated(String),
    Token(String),
    Roles(Vec<String>),
    Users(Vec<String>),
    Permissions(Vec<Permission>),
}

/// The replicated auth state, serialized as is into Raft snapshots.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthStore {
    enabled: bool,
    /// Moves with every change of users, roles or permissions, and on disable (never on enable).
    revision: u64,
    users: BTreeMap<String, User>,
    /// Each role's permissions, sorted by key.
    roles: BTreeMap<String, Vec<Permission>>,
}

impl AuthStore {
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The bcrypt hash to check a password against, and the revision it was read at.
    pub fn password_of(&self, name: &str) -> Result<(String, u64), EtcdError> {
        if !self.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(EtcdError::AuthFailed)?;
        match (&user.password, user.no_password) {
            (Some(hash), false) => Ok((hash.clone(), self.revision)),
            _ => Err(EtcdError::AuthFailed),
        }
    }

    /// Whether `name` holds `role`.
    pub fn has_role(&self, name: &str, role: &str) -> bool {
        self.users.get(name).is_some_and(|u| u.roles.contains(role))
    }

    /// Applies `command` sent by `requester` (`None`: the cluster itself).
    pub fn apply(
        &mut self,
        requester: Option<&Requester>,
        command: AuthCommand,
    ) -> Result<AuthReply, EtcdError> {
        if let Some(requester) = requester {
            self.check_command(requester, &command)?;
        }
        match command {
            AuthCommand::Enable => self.enable(),
            AuthCommand::Disable => {
                if self.enabled {
                    self.enabled = false;
                    self.revision += 1;
                }
                Ok(AuthReply::Done)
            }
            AuthCommand::Authenticate { name, .. } => self.authenticate(name),
            AuthCommand::UserAdd {
                name,
                password_hash,
            } => self.user_add(name, password_hash),
            AuthCommand::UserDelete { name } => self.user_delete(&name),
            AuthCommand::UserChangePassword {
                name,
                password_hash,
            } => {
                let user = self.users.get_mut(&name).ok_or(EtcdError::UserNotFound)?;
                user.password = Some(password_hash);
                self.changed()
            }
            AuthCommand::UserGrantRole { user, role } => self.user_grant_role(&user, role),
            AuthCommand::UserRevokeRole { name, role } => self.user_revoke_role(&name, &role),
            AuthCommand::UserGet { name } => {
                let user = self.users.get(&name).ok_or(EtcdError::UserNotFound)?;
                Ok(AuthReply::Roles(user.roles.iter().cloned().collect()))
            }
            AuthCommand::UserList => Ok(AuthReply::Users(self.users.keys().cloned().collect())),
            AuthCommand::RoleAdd { name } => self.role_add(name),
            AuthCommand::RoleDelete { role } => self.role_delete(&role),
            AuthCommand::RoleGrantPermission { name, permission } => {
                self.role_grant_permission(&name, permission)
            }
            AuthCommand::RoleRevokePermission {
                role,
                key,
                range_end,
            } => self.role_revoke_permission(&role, &key, &range_end),
            AuthCommand::RoleGet { role } => {
                let permissions = self.roles.get(&role).ok_or(EtcdError::RoleNotFound)?;
                Ok(AuthReply::Permissions(permissions.clone()))
            }
            AuthCommand::RoleList => Ok(AuthReply::Roles(self.roles.keys().cloned().collect())),
        }
    }

    /// etcd's `authApplierV3`: admin commands need root; a user may read itself and the
    /// roles it holds.
    fn check_command(&self, requester: &Requester, command: &AuthCommand) -> Result<(), EtcdError> {
        let admin = self.check_admin(requester);
        match command {
            AuthCommand::UserGet { name } if admin.is_err() && *name != requester.name => admin,
            AuthCommand::RoleGet { role }
                if admin.is_err() && !self.has_role(&requester.name, role) =>
            {
                admin
            }
            command if command.needs_admin() => admin,
            _ => Ok(()),
        }
    }

    fn changed(&mut self) -> Result<AuthReply, EtcdError> {
        self.revision += 1;
        Ok(AuthReply::Done)
    }

    fn enable(&mut self) -> Result<AuthReply, EtcdError> {
        if self.enabled {
            return Ok(AuthReply::Done);
        }
        let root = self.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
        if !root.roles.contains(ROOT) {
            return Err(EtcdError::RootRoleNotExist);
        }
        self.enabled = true;
        Ok(AuthReply::Done)
    }

    fn authenticate(&self, name: String) -> Result<AuthReply, EtcdError> {
        if !self.enabled {
            return Err(EtcdError::AuthNotEnabled);
        }
        match self.users.get(&name) {
            Some(user) if !user.no_password => Ok(AuthReply::Authenticated(name)),
            _ => Err(EtcdError::AuthFailed),
        }
    }

    fn user_add(&mut self, name: String, password: Option<String>) -> Result<AuthReply, EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        if self.users.contains_key(&name) {
            return Err(EtcdError::UserAlreadyExist);
        }
        let no_password = password.is_none();
        self.users.insert(
            name,
            User {
                password,
                no_password,
                roles: BTreeSet::new(),
            },
        );
        self.changed()
    }

    fn user_delete(&mut self, name: &str) -> Result<AuthReply, EtcdError> {
        if self.enabled && name == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.users.remove(name).ok_or(EtcdError::UserNotFound)?;
        self.changed()
    }

    fn user_grant_role(&mut self, name: &str, role: String) -> Result<AuthReply, EtcdError> {
        if !self.users.contains_key(name) {
            return Err(EtcdError::UserNotFound);
        }
        if role != ROOT && !self.roles.contains_key(&role) {
            return Err(EtcdError::RoleNotFound);
        }
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        if !user.roles.insert(role) {
            return Ok(AuthReply::Done);
        }
        self.changed()
    }

    fn user_revoke_role(&mut self, name: &str, role: &str) -> Result<AuthReply, EtcdError> {
        if self.enabled && name == ROOT && role == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        let user = self.users.get_mut(name).ok_or(EtcdError::UserNotFound)?;
        if !user.roles.remove(role) {
            return Err(EtcdError::RoleNotGranted);
        }
        self.changed()
    }

    fn role_add(&mut self, name: String) -> Result<AuthReply, EtcdError> {
        if name.is_empty() {
            return Err(EtcdError::RoleEmpty);
        }
        if self.roles.contains_key(&name) {
            return Err(EtcdError::RoleAlreadyExist);
        }
        self.roles.insert(name, Vec::new());
        self.changed()
    }

    fn role_delete(&mut self, role: &str) -> Result<AuthReply, EtcdError> {
        if self.enabled && role == ROOT {
            return Err(EtcdError::InvalidAuthMgmt);
        }
        self.roles.remove(role).ok_or(EtcdError::RoleNotFound)?;
        for user in self.users.values_mut() {
            user.roles.remove(role);
        }
        self.changed()
    }

    fn role_grant_permission(
        &mut self,
        name: &str,
        permission: Permission,
    ) -> Result<AuthReply, EtcdError> {
        let permissions = self.roles.get_mut(name).ok_or(EtcdError::RoleNotFound)?;
        let same_range =
            |p: &Permission| p.key == permission.key && p.range_end == permission.range_end;
        match permissions.iter_mut().find(|p| same_range(p)) {
            Some(existing) => existing.access = permission.access,
            None => {
                let at = permissions.partition_point(|p| p.key <= permission.key);
                permissions.insert(at, permission);
            }
        }
        self.changed()
    }

    fn role_revoke_permission(
        &mut self,
        role: &str,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<AuthReply, EtcdError> {
        let permissions = self.roles.get_mut(role).ok_or(EtcdError::RoleNotFound)?;
        let before = permissions.len();
        permissions.retain(|p| p.key != key || p.range_end != range_end);
        if permissions.len() == before {
            return Err(EtcdError::PermissionNotGranted);
        }
        self.changed()
    }

    /// etcd's `IsAdminPermitted`: anyone while auth is off, else a user with the root role.
    pub fn check_admin(&self, requester: &Requester) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if requester.name.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        let user = self
            .users
            .get(&requester.name)
            .ok_or(EtcdError::UserNotFound)?;
        if !user.roles.contains(ROOT) {
            return Err(EtcdError::PermissionDenied);
        }
        Ok(())
    }

    /// etcd's `isOpPermitted`: whether `requester` may `access` the key or range.
    pub fn check_range(
        &self,
        requester: &Requester,
        key: &[u8],
        range_end: &[u8],
        access: Access,
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if requester.revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if requester.revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let user = self
            .users
            .get(&requester.name)
            .ok_or(EtcdError::PermissionDenied)?;
        if user.roles.contains(ROOT) || self.covered(user, key, range_end, access) {
            return Ok(());
        }
        Err(EtcdError::PermissionDenied)
    }

    /// Whether the user's roles grant `access` on all of the key or range (etcd's interval
    /// tree `Intersects` for a key, `Contains` for a range).
    fn covered(&self, user: &User, key: &[u8], range_end: &[u8], access: Access) -> bool {
        let mut granted: Vec<Interval<'_>> = user
            .roles
            .iter()
            .filter_map(|role| self.roles.get(role))
            .flatten()
            .filter(|p| p.access.allows(access))
            .map(Interval::of_permission)
            .collect();
        if range_end.is_empty() {
            return granted.iter().any(|ivl| ivl.holds(key));
        }
        let wanted = Interval::of_range(key, range_end);
        granted.retain(|ivl| ivl.overlaps(&wanted));
        granted.sort_by(|a, b| affine_cmp(a.begin, b.begin));
        let Some(first) = granted.first() else {
            return false;
        };
        let mut reach = first.end.clone();
        for ivl in &granted[1..] {
            if affine_cmp(&reach, ivl.begin) == Ordering::Less {
                return false;
            }
            if affine_cmp(&ivl.end, &reach) == Ordering::Greater {
                reach = ivl.end.clone();
            }
        }
        affine_cmp(first.begin, wanted.begin) != Ordering::Greater
            && affine_cmp(&reach, &wanted.end) != Ordering::Less
    }

    pub fn check_put(&self, requester: &Requester, key: &[u8]) -> Result<(), EtcdError> {
        self.check_range(requester, key, &[], Access::Write)
    }

    /// etcd's `checkTxnAuth`: read on every compare, and every operation of both branches.
    /// Nested transactions are checked too (etcd 3.4 skips them, letting them through).
    pub fn check_txn(&self, requester: &Requester, txn: &pb::TxnRequest) -> Result<(), EtcdError> {
        for compare in &txn.compare {
            self.check_range(requester, &compare.key, &compare.range_end, Access::Read)?;
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.check_range(requester, &r.key, &r.range_end, Access::Read)?
                }
                Some(request_op::Request::RequestPut(r)) => self.check_put(requester, &r.key)?,
                Some(request_op::Request::RequestDeleteRange(r)) => {
                    self.check_delete(requester, r)?
                }
                Some(request_op::Request::RequestTxn(nested)) => {
                    self.check_txn(requester, nested)?
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Write on the range, and read too when the deleted values are returned.
    pub fn check_delete(
        &self,
        requester: &Requester,
        req: &pb::DeleteRangeRequest,
    ) -> Result<(), EtcdError> {
        if req.prev_kv {
            self.check_range(requester, &req.key, &req.range_end, Access::Read)?;
        }
        self.check_range(requester, &req.key, &req.range_end, Access::Write)
    }
}

/// A key interval with etcd's "affine" bounds: an empty bound is +infinity.
#[derive(Debug)]
struct Interval<'a> {
    begin: &'a [u8],
    end: Vec<u8>,
}

impl<'a> Interval<'a> {
    /// A permission's keys: one key is `[key, key\0)`, `"\0"` is every key from `key` on.
    fn of_permission(p: &'a Permission) -> Self {
        if p.range_end.is_empty() {
            let mut end = p.key.clone();
            end.push(0);
            return Interval { begin: &p.key, end };
        }
        Self::of_range(&p.key, &p.range_end)
    }

    fn of_range(key: &'a [u8], range_end: &[u8]) -> Self {
        let end = if range_end == [0] {
            Vec::new()
        } else {
            range_end.to_vec()
        };
        Interval { begin: key, end }
    }

    fn holds(&self, key: &[u8]) -> bool {
        affine_cmp(self.begin, key) != Ordering::Greater
            && affine_cmp(key, &self.end) == Ordering::Less
    }

    fn overlaps(&self, other: &Interval<'_>) -> bool {
        affine_cmp(self.begin, &other.end) == Ordering::Less
            && affine_cmp(other.begin, &self.end) == Ordering::Less
    }
}

/// Byte order, with the empty bound above every key (etcd's `BytesAffineComparable`).
fn affine_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin() -> Requester {
        Requester {
            name: ROOT.to_string(),
            revision: u64::MAX,
        }
    }

    fn run(store: &mut AuthStore, command: AuthCommand) -> Result<AuthReply, EtcdError> {
        store.apply(Some(&admin()), command)
    }

    fn permission(access: Access, key: &str, range_end: &str) -> Permission {
        Permission {
            access,
            key: key.as_bytes().to_vec(),
            range_end: range_end.as_bytes().to_vec(),
        }
    }

    /// root (with the root role) and alice holding role `app`, auth on.
    fn store_with(permissions: &[Permission]) -> AuthStore {
        let mut store = AuthStore::default();
        let user = |name: &str| AuthCommand::UserAdd {
            name: name.to_string(),
            password_hash: Some("hash".to_string()),
        };
        for command in [
            user(ROOT),
            user("alice"),
            AuthCommand::RoleAdd {
                name: "app".to_string(),
            },
            AuthCommand::UserGrantRole {
                user: ROOT.to_string(),
                role: ROOT.to_string(),
            },
            AuthCommand::UserGrantRole {
                user: "alice".to_string(),
                role: "app".to_string(),
            },
        ] {
            run(&mut store, command).expect("setup");
        }
        for p in permissions {
            run(
                &mut store,
                AuthCommand::RoleGrantPermission {
                    name: "app".to_string(),
                    permission: p.clone(),
                },
            )
            .expect("grant");
        }
        run(&mut store, AuthCommand::Enable).expect("enable");
        store
    }

    fn alice(store: &AuthStore) -> Requester {
        Requester {
            name: "alice".to_string(),
            revision: store.revision(),
        }
    }

    fn read(store: &AuthStore, key: &str, range_end: &str) -> Result<(), EtcdError> {
        store.check_range(
            &alice(store),
            key.as_bytes(),
            range_end.as_bytes(),
            Access::Read,
        )
    }

    #[test]
    fn enable_needs_root_with_the_root_role() {
        let mut store = AuthStore::default();
        assert_eq!(
            run(&mut store, AuthCommand::Enable),
            Err(EtcdError::RootUserNotExist)
        );
        run(
            &mut store,
            AuthCommand::UserAdd {
                name: ROOT.to_string(),
                password_hash: None,
            },
        )
        .expect("add root");
        assert_eq!(
            run(&mut store, AuthCommand::Enable),
            Err(EtcdError::RootRoleNotExist)
        );
        run(
            &mut store,
            AuthCommand::UserGrantRole {
                user: ROOT.to_string(),
                role: ROOT.to_string(),
            },
        )
        .expect("grant root");
        let revision = store.revision();
        run(&mut store, AuthCommand::Enable).expect("enable");
        assert!(store.is_enabled());
        assert_eq!(
            store.revision(),
            revision,
            "enable does not move the revision"
        );
    }

    #[test]
    fn ranges_are_granted_by_prefix_by_range_and_by_key() {
        let store = store_with(&[
            permission(Access::Read, "app/", "app0"),
            permission(Access::ReadWrite, "b", "d"),
            permission(Access::Read, "d", "f"),
            permission(Access::Write, "only", ""),
            permission(Access::Read, "z", "\0"),
        ]);
        assert_eq!(read(&store, "app/x", ""), Ok(()));
        assert_eq!(read(&store, "app/", "app0"), Ok(()));
        assert_eq!(read(&store, "ap", "app0"), Err(EtcdError::PermissionDenied));
        // Two adjacent grants cover a range spanning both.
        assert_eq!(read(&store, "c", "e"), Ok(()));
        assert_eq!(read(&store, "c", "g"), Err(EtcdError::PermissionDenied));
        assert_eq!(read(&store, "only", ""), Err(EtcdError::PermissionDenied));
        assert_eq!(store.check_put(&alice(&store), b"only"), Ok(()));
        assert_eq!(
            store.check_put(&alice(&store), b"onlyx"),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(read(&store, "zz", "\0"), Ok(()));
        assert_eq!(read(&store, "y", "\0"), Err(EtcdError::PermissionDenied));
    }

    #[test]
    fn requests_without_a_user_or_with_an_old_revision_are_refused() {
        let mut store = store_with(&[permission(Access::Read, "a", "")]);
        let anonymous = Requester::default();
        assert_eq!(
            store.check_range(&anonymous, b"a", b"", Access::Read),
            Err(EtcdError::UserEmpty)
        );
        let before = alice(&store);
        run(
            &mut store,
            AuthCommand::RoleAdd {
                name: "other".to_string(),
            },
        )
        .expect("role add");
        assert_eq!(
            store.check_range(&before, b"a", b"", Access::Read),
            Err(EtcdError::AuthOldRevision)
        );
        assert_eq!(
            store.check_admin(&alice(&store)),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(store.check_admin(&anonymous), Err(EtcdError::UserEmpty));
    }

    #[test]
    fn a_user_added_without_password_never_authenticates() {
        let mut store = store_with(&[]);
        let add = AuthCommand::UserAdd {
            name: "svc".to_string(),
            password_hash: None,
        };
        run(&mut store, add).expect("add");
        let change = AuthCommand::UserChangePassword {
            name: "svc".to_string(),
            password_hash: "hash".to_string(),
        };
        run(&mut store, change).expect("passwd");
        assert_eq!(store.password_of("svc"), Err(EtcdError::AuthFailed));
        assert!(store.password_of("alice").is_ok());
    }

    #[test]
    fn every_branch_and_nested_txn_is_checked() {
        let store = store_with(&[permission(Access::ReadWrite, "a", "")]);
        let put = |key: &str| pb::RequestOp {
            request: Some(request_op::Request::RequestPut(pb::PutRequest {
                key: key.as_bytes().to_vec().into(),
                ..Default::default()
            })),
        };
        let allowed = pb::TxnRequest {
            success: vec![put("a")],
            failure: vec![put("a")],
            ..Default::default()
        };
        assert_eq!(store.check_txn(&alice(&store), &allowed), Ok(()));
        let denied_failure = pb::TxnRequest {
            success: vec![put("a")],
            failure: vec![put("b")],
            ..Default::default()
        };
        assert_eq!(
            store.check_txn(&alice(&store), &denied_failure),
            Err(EtcdError::PermissionDenied)
        );
        let nested = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(request_op::Request::RequestTxn(denied_failure)),
            }],
            ..Default::default()
        };
        assert_eq!(
            store.check_txn(&alice(&store), &nested),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn user_and_role_management_follow_etcd() {
        let mut store = store_with(&[]);
        let name = |s: &str| s.to_string();
        assert_eq!(
            run(&mut store, AuthCommand::UserDelete { name: name(ROOT) }),
            Err(EtcdError::InvalidAuthMgmt)
        );
        assert_eq!(
            run(
                &mut store,
                AuthCommand::UserRevokeRole {
                    name: name("alice"),
                    role: name("nope")
                }
            ),
            Err(EtcdError::RoleNotGranted)
        );
        assert_eq!(
            run(
                &mut store,
                AuthCommand::UserGrantRole {
                    user: name("alice"),
                    role: name("nope")
                }
            ),
            Err(EtcdError::RoleNotFound)
        );
        // A user reads itself and its roles without being admin, nothing else.
        let alice = alice(&store);
        assert_eq!(
            store.apply(
                Some(&alice),
                AuthCommand::UserGet {
                    name: name("alice")
                }
            ),
            Ok(AuthReply::Roles(vec![name("app")]))
        );
        assert_eq!(
            store.apply(Some(&alice), AuthCommand::RoleGet { role: name("app") }),
            Ok(AuthReply::Permissions(Vec::new()))
        );
        assert_eq!(
            store.apply(Some(&alice), AuthCommand::UserGet { name: name(ROOT) }),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            store.apply(Some(&alice), AuthCommand::UserList),
            Err(EtcdError::PermissionDenied)
        );
        run(&mut store, AuthCommand::RoleDelete { role: name("app") }).expect("delete role");
        assert_eq!(
            run(
                &mut store,
                AuthCommand::UserGet {
                    name: name("alice")
                }
            ),
            Ok(AuthReply::Roles(Vec::new()))
        );
        run(&mut store, AuthCommand::Disable).expect("disable");
        assert_eq!(
            store.apply(Some(&Requester::default()), AuthCommand::UserList),
            Ok(AuthReply::Users(vec![name("alice"), name(ROOT)]))
        );
    }
}
