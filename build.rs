//! Compiles `proto/kv.proto` (the wire messages) and `proto/qkv/v1/kv.proto` (the gRPC service) with
//! protox, a pure-Rust protobuf compiler, so building qkv never needs a system `protoc`.

use std::path::PathBuf;

use prost::Message;

/// Rustdoc for the generated value types: the messages, the oneof, and its variants (by prost's
/// paths: a variant's is the oneof's and its field's name).
const VALUE_DOCS: [(&str, &str); 8] = [
    (
        ".abi.Value",
        "A stored or published value: one of the kinds of [`value::Value`] (an empty one is refused as a value to store).",
    ),
    (".abi.Value.value", "What a [`Value`](super::Value) holds."),
    (".abi.Value.value.string", "UTF-8 text."),
    (".abi.Value.value.binary", "Any bytes."),
    (".abi.Value.value.integer", "A signed 64-bit integer."),
    (".abi.Value.value.float", "A 64-bit IEEE 754 float (NaN and the infinities included)."),
    (".abi.Value.value.bool", "`true` or `false`."),
    (".abi.Kvpair", "A key and its value: Hmset's pairs, Hgetall's answer."),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let messages = protox::compile(["proto/kv.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    // `bytes` fields as `bytes::Bytes`: cloning a stored binary value is then a reference-count bump.
    config.bytes(["."]);
    // API documentation for what every client handles, kept out of the .proto, which PROTOCOL.md and
    // the JavaScript client carry verbatim.
    for (path, doc) in VALUE_DOCS {
        let doc = format!("#[doc = {doc:?}]");
        match path {
            ".abi.Value" | ".abi.Kvpair" => config.message_attribute(path, doc),
            ".abi.Value.value" => config.enum_attribute(path, doc),
            _ => config.field_attribute(path, doc),
        };
    }
    config.compile_fds(messages)?;

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
