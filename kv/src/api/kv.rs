//! etcd's KV service: ranges (linearizable through ReadIndex unless serializable) and the
//! writes (put, delete, txn, compact), proposed through Raft; each checked against its
//! sender's permissions.
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::access::requester;
use super::propose::{propose, propose_as};
use super::revision_of;
use crate::member::Member;
use crate::proto::etcdserverpb::{self as pb, kv_server::Kv};
use crate::storage::auth::Access;
use crate::storage::mvcc::validate;
use crate::storage::quota;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct KvService(pub Arc<Member>);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        validate::range(request.get_ref())?;
        let user = requester(&self.0, &request).await?;
        let req = request.into_inner();
        if !req.serializable {
            self.0.read_barrier().await?;
        }
        // Checked and read under one lock: the auth store cannot change in between.
        let mut response = {
            let state = self.0.shared.read();
            state
                .auth
                .check_range(&user, &req.key, &req.range_end, Access::Read)?;
            state.mvcc.range(&req)?
        };
        response.header = self.0.header(revision_of(&response.header));
        Ok(Response::new(response))
    }

    type RangeStreamStream = BoxStream<pb::RangeStreamResponse>;

    async fn range_stream(
        &self,
        _request: Request<pb::RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(Status::unimplemented(
            "RangeStream is not part of the etcd 3.4 API",
        ))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        // The quota first (etcd's quota server wraps the KV server), then validated before the
        // sender's permissions, as etcd's v3rpc layer does (an empty key is "key is not
        // provided" for anyone); the member checks again for forwarded writes.
        self.0
            .check_quota(quota::put_cost(request.get_ref()))
            .await?;
        validate::put(request.get_ref())?;
        let user = requester(&self.0, &request).await?;
        propose_as(&self.0, user, request.into_inner()).await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        validate::delete_range(request.get_ref())?;
        let user = requester(&self.0, &request).await?;
        propose_as(&self.0, user, request.into_inner()).await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        // Every transaction, reads only too, meets the quota (cost 0 then), as in etcd.
        self.0
            .check_quota(quota::txn_cost(request.get_ref()))
            .await?;
        validate::txn(request.get_ref())?;
        let user = requester(&self.0, &request).await?;
        propose_as(&self.0, user, request.into_inner()).await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        // etcd 3.4 checks no permission for compaction, only that a token is valid.
        requester(&self.0, &request).await?;
        propose(&self.0, request.into_inner()).await
    }
}
