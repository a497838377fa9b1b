//! go-grpc-prometheus's server counters (`grpc_server_started_total`,
//! `grpc_server_handled_total`) as a layer around the client server, with counters made once per
//! method and code ([`crate::metrics`]), so counting takes no lock: a call is counted when it
//! starts, and handled with the code of its `grpc-status`, read from the response headers of a
//! trailers-only answer (an error) or from the trailers at the end of the body. The bytes of
//! gRPC requests and responses go to etcd's `etcd_network_client_grpc_{received,sent}_bytes_total`.
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Buf;
use http_body::{Body, Frame};

use crate::metrics::{GrpcCounters, metrics};

/// Wraps a service in [`GrpcMetrics`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics(inner)
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S>(S);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

fn status_code(headers: &http::HeaderMap) -> Option<tonic::Code> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(tonic::Code::from_i32(code))
}

impl<S, R> tower_service::Service<http::Request<tonic::body::Body>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Counted<R>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let call = is_grpc(&request)
            .then(|| metrics().grpc_call(request.uri().path()))
            .flatten();
        let request = match call {
            Some(call) => {
                call.started();
                request.map(|body| tonic::body::Body::new(Received(body)))
            }
            None => request,
        };
        let response = self.0.call(request);
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            let mut counted = Counted { body, call };
            if let Some(code) = status_code(&parts.headers) {
                counted.handled(code);
            }
            Ok(http::Response::from_parts(parts, counted))
        })
    }
}

/// A response body that counts its call handled when its trailers pass (or, dropped before
/// them, as cancelled).
#[derive(Debug)]
pub struct Counted<B> {
    body: B,
    /// The call's counters, until it is counted.
    call: Option<&'static GrpcCounters>,
}

impl<B> Counted<B> {
    fn handled(&mut self, code: tonic::Code) {
        if let Some(call) = self.call.take() {
            call.handled(code);
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        self.handled(tonic::Code::Cancelled);
    }
}

/// A gRPC request's body, its bytes counted as they arrive.
struct Received(tonic::body::Body);

impl Body for Received {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, tonic::Status>>> {
        let frame = ready!(Pin::new(&mut self.0).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            metrics().client_received.inc_by(data.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.0.size_hint()
    }
}

impl<B: Body + Unpin> Body for Counted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(status_code) {
                    self.handled(code);
                }
                if let (Some(data), Some(_)) = (frame.data_ref(), &self.call) {
                    metrics().client_sent.inc_by(data.remaining() as u64);
                }
            }
            Some(Err(_)) => self.handled(tonic::Code::Unknown),
            None => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
