//! Generates the etcd v3 gRPC server and message types from etcd's own .proto files (copied
//! unchanged from etcd into `proto/`).
//!
//! A put's key and value are `Bytes`: decoded from a request's encoding as slices of it
//! (`types::ClientRequest` keeps that encoding for the log and the peers) instead of copies of
//! their own, and cloned by reference count.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".etcdserverpb.PutRequest.key")
        .bytes(".etcdserverpb.PutRequest.value")
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/etcd/api/etcdserverpb/rpc.proto",
                "proto/etcd/api/mvccpb/kv.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
