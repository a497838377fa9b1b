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
    Ok(())
}
