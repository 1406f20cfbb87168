//! The JavaScript client (clients/js) from node: its unit tests (`npm test`), then its integration
//! tests (`npm run test:integration`) against a real server's web listener over `wss://`, which node
//! verifies against the server's development CA (NODE_EXTRA_CA_CERTS): no certificate check is
//! skipped.
//!
//! Needs node (20 or later) and clients/js/node_modules (`npm ci` there): `cargo xtask test`
//! installs them.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use common::TestServer;
use qkv::transport::Transport;
use tokio::process::Command;
use tokio::sync::Mutex;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/js");

/// How many tests each suite has: a runner that silently ran fewer (a file not compiled, a glob that
/// matched nothing) fails. Update them with the suites.
const UNIT_TESTS: usize = 75;
const INTEGRATION_TESTS: usize = 23;

/// Far above what a suite takes (seconds), so that only a hang fails by time.
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);

/// Both suites build clients/js/dist: one at a time.
static BUILD: Mutex<()> = Mutex::const_new(());

/// The largest subscriber queue, in bytes, of the integration tests' server: small, so that a test
/// can make a subscriber miss messages by publishing large ones, and large enough that the small
/// messages of the other tests are never missed.
const SUBSCRIBER_QUEUE_BYTES: usize = 64 * 1024;

#[tokio::test]
async fn the_unit_tests_pass() {
    let _building = BUILD.lock().await;
    let output = npm("test", &[]).await;
    check("npm test", &output, UNIT_TESTS);
}

#[tokio::test]
async fn the_client_works_against_a_real_server_over_websocket() {
    let server = TestServer::start_for_with(Transport::Http, |config| {
        config.service.subscriber_queue_bytes = SUBSCRIBER_QUEUE_BYTES;
    })
    .await;
    let web = server.web.expect("a web listener");
    let url = format!("https://localhost:{}", web.port());
    let ca = server.ca();
    let _building = BUILD.lock().await;
    let output = npm(
        "run test:integration",
        &[("QKV_WEB_URL", url.as_str()), ("NODE_EXTRA_CA_CERTS", ca.to_str().expect("a UTF-8 path"))],
    )
    .await;
    check("npm run test:integration", &output, INTEGRATION_TESTS);
}

/// Runs `npm <script>` in clients/js with `env`, within the suite timeout.
async fn npm(script: &str, env: &[(&str, &str)]) -> Output {
    assert!(
        Path::new(DIR).join("node_modules/@bufbuild/protobuf").is_dir(),
        "clients/js/node_modules is missing: run npm ci in clients/js, or cargo xtask test"
    );
    let started = Instant::now();
    let run = Command::new("npm")
        .args(script.split(' '))
        // Only what `env` says: the integration suite fails when it is given no server.
        .env_remove("QKV_WEB_URL")
        .envs(env.iter().copied())
        .current_dir(DIR)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SUITE_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("npm {script} took more than {SUITE_TIMEOUT:?}"))
        .expect("npm runs (install Node.js 20 or later)");
    eprintln!("npm {script}: {:.1} s", started.elapsed().as_secs_f64());
    output
}

/// Asserts that node's test runner succeeded and passed exactly `expected` tests; prints its output
/// otherwise.
fn check(what: &str, output: &Output, expected: usize) {
    let printed = String::from_utf8_lossy(&output.stdout);
    let complaints = String::from_utf8_lossy(&output.stderr);
    let count = |name: &str| summary(&printed, name);
    let (tests, pass, fail) = (count("tests"), count("pass"), count("fail"));
    assert!(
        output.status.success() && tests == Some(expected) && pass == Some(expected) && fail == Some(0),
        "{what} failed ({}; expected {expected} tests to pass, the summary says tests {tests:?}, \
         pass {pass:?}, fail {fail:?}):\n{printed}\n{complaints}",
        output.status
    );
}

/// A number of node's test summary: the line `# pass 19` (TAP reporter) or `ℹ pass 19` (spec).
fn summary(printed: &str, name: &str) -> Option<usize> {
    printed.lines().rev().find_map(|line| {
        let rest = line.trim_start_matches(['#', 'ℹ', ' ']);
        rest.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()
    })
}
