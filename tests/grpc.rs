//! gRPC from a client of another implementation: Python's grpcio (tests/grpc/client.py, with stubs
//! that grpcio-tools generates from proto/ at test time), against a real server's web listener over
//! TLS. Statuses, the qkv frame in a failure's details, streaming, deadlines and reflection. The Rust
//! (tonic) client runs the command and pub/sub suites over gRPC (tests/commands.rs, tests/pubsub.rs).
//!
//! Needs python3 with the packages in tests/grpc/requirements.txt: `cargo xtask test` installs them.

mod common;

use common::TestServer;
use qkv::transport::Transport;
use tokio::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc");
const PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");

#[tokio::test]
async fn a_python_grpcio_client_uses_the_service() {
    let server = TestServer::start_for(Transport::Grpc).await;
    let stubs = tempfile::tempdir().expect("a temporary directory");
    let generated = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", PROTO])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args([format!("{PROTO}/kv.proto"), format!("{PROTO}/qkv/v1/kv.proto")])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        generated.status.success(),
        "generating the Python stubs failed (pip install -r tests/grpc/requirements.txt, or run cargo xtask test): {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let address = format!("localhost:{}", server.web.expect("a web listener").port());
    let output = Command::new("python3")
        .arg(format!("{DIR}/client.py"))
        .arg(address)
        .arg(server.ca())
        .arg(stubs.path())
        .output()
        .await
        .expect("python3 runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && printed.trim_end().ends_with("all checks passed"),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
