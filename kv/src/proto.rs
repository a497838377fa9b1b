//! Types and services generated from etcd's .proto files.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
/// The Watch service with shoal's codec (`kv/build.rs`).
pub mod watch_service {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.Watch.rs"));
}
