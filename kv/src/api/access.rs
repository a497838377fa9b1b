//! Who sent a request, as etcd 3.4 decides it (`AuthInfoFromCtx`, `AuthInfoFromTLS`): the
//! `token` metadata names a user through this member's simple tokens; without a token, a
//! verified client certificate's common name is the user (`--client-cert-auth`: the listener
//! only verifies certificates then); else the request is anonymous. Plus the admin checks the
//! maintenance and membership RPCs make before acting.
use tonic::{Request, Status};

use super::identity::ClientConnectInfo;
use crate::error::EtcdError;
use crate::member::Member;
use crate::storage::auth::Requester;
use crate::storage::state_machine::State;
use crate::storage::tokens::SimpleTokens;

/// etcd's token metadata keys: gRPC clients' and the gRPC gateway's.
const TOKEN_KEYS: [&str; 2] = ["token", "authorization"];

/// What a request (or a watch stream) presented to prove who sent it.
#[derive(Debug, Clone, Default)]
pub(super) struct Credentials {
    token: Option<String>,
    common_name: Option<String>,
}

impl Credentials {
    pub(super) fn of<T>(request: &Request<T>) -> Self {
        let token = TOKEN_KEYS
            .iter()
            .find_map(|key| request.metadata().get(*key))
            .map(|value| value.to_str().unwrap_or_default().to_string());
        let common_name = request
            .extensions()
            .get::<ClientConnectInfo>()
            .and_then(|info| info.certificate.as_ref())
            .map(|certificate| certificate.common_name.clone());
        Credentials { token, common_name }
    }

    /// The sender (anonymous: empty name, revision 0), with the auth revision as of now.
    pub(super) async fn requester(&self, member: &Member) -> Result<Requester, EtcdError> {
        if let Some(token) = &self.token {
            // The token is assigned when its Authenticate applies; wait until it has here.
            let index = SimpleTokens::index_of(token).ok_or(EtcdError::InvalidAuthToken)?;
            // As etcd, a token not assigned by then (a forged index) is invalid.
            member
                .wait_applied(index)
                .await
                .map_err(|_| EtcdError::InvalidAuthToken)?;
        }
        self.resolve(&member.shared.read())
    }

    fn resolve(&self, state: &State) -> Result<Requester, EtcdError> {
        let name = match (&self.token, &self.common_name) {
            (Some(token), _) => state
                .tokens
                .user_of(token)
                .ok_or(EtcdError::InvalidAuthToken)?,
            (None, Some(name)) => name.clone(),
            (None, None) => return Ok(Requester::default()),
        };
        Ok(Requester {
            name,
            revision: state.auth.revision(),
        })
    }
}

/// The sender of `request`.
pub(super) async fn requester<T>(
    member: &Member,
    request: &Request<T>,
) -> Result<Requester, Status> {
    Ok(Credentials::of(request).requester(member).await?)
}

/// Refuses `request` unless auth is off or its sender holds the root role.
pub(super) async fn check_admin<T>(member: &Member, request: &Request<T>) -> Result<(), Status> {
    Ok(admin_check(member, request).await?)
}

/// The admin check of etcd 3.4's Maintenance service, which hands the auth store's own error to
/// gRPC untranslated: code Unknown and the `auth: ...` text, which is what clients see.
pub(super) async fn check_maintenance_admin<T>(
    member: &Member,
    request: &Request<T>,
) -> Result<(), Status> {
    admin_check(member, request).await.map_err(|refused| {
        let text = match refused {
            EtcdError::UserEmpty => "auth: user name is empty",
            EtcdError::UserNotFound => "auth: user not found",
            EtcdError::PermissionDenied => "auth: permission denied",
            EtcdError::InvalidAuthToken => "auth: invalid auth token",
            other => return Status::from(other),
        };
        Status::unknown(text)
    })
}

async fn admin_check<T>(member: &Member, request: &Request<T>) -> Result<(), EtcdError> {
    let requester = Credentials::of(request).requester(member).await?;
    member.shared.read().auth.check_admin(&requester)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::identity::CertificateIdentity;

    fn with_certificate(common_name: &str) -> Request<()> {
        let mut request = Request::new(());
        request.extensions_mut().insert(ClientConnectInfo {
            remote: None,
            certificate: Some(CertificateIdentity {
                common_name: common_name.to_string(),
            }),
        });
        request
    }

    #[test]
    fn a_verified_certificate_names_the_user_unless_a_token_does() {
        let state = State::default();
        let requester = Credentials::of(&with_certificate("alice")).resolve(&state);
        assert_eq!(
            requester,
            Ok(Requester {
                name: "alice".to_string(),
                revision: state.auth.revision(),
            })
        );
        state.tokens.assign("abc.7".to_string(), "bob".to_string());
        let mut request = with_certificate("alice");
        request
            .metadata_mut()
            .insert("token", "abc.7".parse().expect("metadata"));
        let requester = Credentials::of(&request).resolve(&state).expect("token");
        assert_eq!(requester.name, "bob");
        request
            .metadata_mut()
            .insert("token", "abc.8".parse().expect("metadata"));
        assert_eq!(
            Credentials::of(&request).resolve(&state),
            Err(EtcdError::InvalidAuthToken)
        );
        assert_eq!(
            Credentials::of(&Request::new(())).resolve(&state),
            Ok(Requester::default())
        );
    }
}
