//! Generates the etcd v3 gRPC server and message types from etcd's own .proto files (copied
//! unchanged from etcd into `proto/`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(
            &[
                "proto/etcd/api/etcdserverpb/rpc.proto",
                "proto/etcd/api/mvccpb/kv.proto",
            ],
            &["proto"],
        )?;
    // The Watch service once more, with a codec that sends events encoded once for every
    // stream (`api::watch::WatchCodec`); the server uses this one, not the generated one above.
    let watch = tonic_build::manual::Service::builder()
        .name("Watch")
        .package("etcdserverpb")
        .method(
            tonic_build::manual::Method::builder()
                .name("watch")
                .route_name("Watch")
                .input_type("crate::proto::etcdserverpb::WatchRequest")
                .output_type("crate::api::watch::Outgoing")
                .codec_path("crate::api::watch::WatchCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[watch]);
    Ok(())
}
