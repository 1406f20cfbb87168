//! Compiles `proto/kv.proto` (the wire messages) and `proto/qkv/v1/kv.proto` (the gRPC service) with
//! protox, a pure-Rust protobuf compiler, so building qkv never needs a system `protoc`.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let messages = protox::compile(["proto/kv.proto"], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields as `bytes::Bytes`: cloning a stored binary value is then a reference-count bump.
        .bytes(["."])
        .compile_fds(messages)?;

    // The service's messages are the ones above (`extern_path`); its descriptors, with kv.proto's,
    // are what gRPC server reflection serves.
    let service = protox::compile(["proto/qkv/v1/kv.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("qkv_descriptor.bin"), service.encode_to_vec())?;
    let only_service = prost_types::FileDescriptorSet {
        file: service.file.into_iter().filter(|file| file.package() == "qkv.v1").collect(),
    };
    tonic_prost_build::configure()
        .build_transport(false)
        .extern_path(".abi", "crate::pb")
        // A Pipeline message's bytes are handed on without a copy.
        .bytes(".qkv.v1")
        // A message that does not decode is INVALID_ARGUMENT, not INTERNAL (src/pb/grpc.rs).
        .codec_path("crate::pb::grpc::Codec")
        .compile_fds(only_service)?;
    Ok(())
}
