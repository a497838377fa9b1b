//! Typed proposals: each write request of the etcd API maps to one [`Command`], and the
//! [`Outcome`] it applies to back to its response, which leaves with this member's header.
use tonic::{Response, Status};

use super::revision_of;
use crate::member::Member;
use crate::proto::etcdserverpb as pb;
use crate::storage::auth::Requester;
use crate::types::{ClientRequest, Command, Outcome, Proto};

/// A request the API serves by proposing it through Raft.
pub(super) trait Proposal {
    type Response;
    fn command(self) -> Command;
    /// The response in `outcome`, or the outcome when it is of another kind.
    fn response(outcome: Outcome) -> Result<Self::Response, Outcome>;
    fn header(response: &mut Self::Response) -> &mut Option<pb::ResponseHeader>;
}

/// Proposes `request`, waits until this member applied it and answers with its typed response.
pub(super) async fn propose<P: Proposal>(
    member: &Member,
    request: P,
) -> Result<Response<P::Response>, Status> {
    let outcome = member.propose(request.command()).await?;
    answer::<P>(member, outcome)
}

/// Proposes `request` as sent by `user`: refused at once when the auth store already says no,
/// and checked again when applied, against the auth revision `user` carries (etcd's way).
pub(super) async fn propose_as<P: Proposal>(
    member: &Member,
    user: Requester,
    request: P,
) -> Result<Response<P::Response>, Status> {
    let command = request.command();
    member.shared.read().check_write(&user, &command)?;
    let command = Command::AsUser {
        user,
        command: Box::new(command),
    };
    let outcome = member.propose(command).await?;
    answer::<P>(member, outcome)
}

fn answer<P: Proposal>(member: &Member, outcome: Outcome) -> Result<Response<P::Response>, Status> {
    let mut response = P::response(outcome).map_err(unexpected)?;
    let header = P::header(&mut response);
    *header = member.header(revision_of(header));
    Ok(Response::new(response))
}

pub(super) fn unexpected(outcome: Outcome) -> Status {
    Status::internal(format!("etcdserver: unexpected outcome {outcome:?}"))
}

macro_rules! proposal {
    ($request:ty => $response:ty, $outcome:ident, |$req:ident| $command:expr) => {
        impl Proposal for $request {
            type Response = $response;
            fn command(self) -> Command {
                let $req = self;
                $command
            }
            fn response(outcome: Outcome) -> Result<$response, Outcome> {
                match outcome {
                    Outcome::$outcome(Proto(response)) => Ok(response),
                    other => Err(other),
                }
            }
            fn header(response: &mut $response) -> &mut Option<pb::ResponseHeader> {
                &mut response.header
            }
        }
    };
}

proposal!(pb::PutRequest => pb::PutResponse, Put, |req| Command::Put(ClientRequest::detached(req)));
proposal!(pb::DeleteRangeRequest => pb::DeleteRangeResponse, DeleteRange,
    |req| Command::DeleteRange(ClientRequest::new(req)));
proposal!(pb::TxnRequest => pb::TxnResponse, Txn, |req| Command::Txn(ClientRequest::detached(req)));
proposal!(pb::CompactionRequest => pb::CompactionResponse, Compact,
    |req| Command::Compact(req.revision));
proposal!(pb::LeaseGrantRequest => pb::LeaseGrantResponse, LeaseGrant,
    |req| Command::LeaseGrant { id: req.id, ttl: req.ttl });
proposal!(pb::LeaseRevokeRequest => pb::LeaseRevokeResponse, LeaseRevoke,
    |req| Command::LeaseRevoke { id: req.id });
