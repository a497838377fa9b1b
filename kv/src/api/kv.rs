//! etcd's KV service: ranges (linearizable through ReadIndex unless serializable) and the
//! writes (put, delete, txn, compact), proposed through Raft.
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::propose::propose;
use super::revision_of;
use crate::member::Member;
use crate::proto::etcdserverpb::{self as pb, kv_server::Kv};
use crate::storage::mvcc::validate;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct KvService(pub Arc<Member>);

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: Request<pb::RangeRequest>,
    ) -> Result<Response<pb::RangeResponse>, Status> {
        let req = request.into_inner();
        validate::range(&req)?;
        if !req.serializable {
            self.0.read_barrier().await?;
        }
        let mut response = self.0.shared.read().mvcc.range(&req)?;
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
        propose(&self.0, request.into_inner()).await
    }

    async fn delete_range(
        &self,
        request: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        propose(&self.0, request.into_inner()).await
    }

    async fn txn(
        &self,
        request: Request<pb::TxnRequest>,
    ) -> Result<Response<pb::TxnResponse>, Status> {
        propose(&self.0, request.into_inner()).await
    }

    async fn compact(
        &self,
        request: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        propose(&self.0, request.into_inner()).await
    }
}
