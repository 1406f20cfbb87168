//! Compiles `proto/kv.proto` with protox (a pure-Rust protobuf compiler), so building qkv never needs
//! a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/kv.proto"], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields as `bytes::Bytes`: cloning a stored binary value is then a reference-count bump.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
