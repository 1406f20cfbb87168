//! Connections: many concurrent requests on one, certificate verification, and graceful shutdown.

mod common;

use std::collections::HashSet;

use common::TestServer;
use futures_util::future::join_all;
use qkv::client::{Client, ClientConfig, ClientError};
use qkv::pb::{CommandRequest, Kvpair, status};

#[tokio::test]
async fn a_thousand_concurrent_requests_on_one_connection_are_all_answered_correctly() {
    // More requests than the connection's stream limit (256), so stream credit must be returned as
    // streams complete, or the later requests would wait forever.
    let server = TestServer::start().await;
    let client = server.client().await;
    let writes = join_all((0..1000).map(|i| {
        let client = client.clone();
        async move { client.hset("many", &format!("k{i}"), i as i64).await }
    }))
    .await;
    let versions: HashSet<u64> = writes.into_iter().map(|w| w.expect("hset").version).collect();
    assert_eq!(versions.len(), 1000, "every write gets its own version");

    let reads = join_all((0..1000).map(|i| {
        let client = client.clone();
        async move { (i, client.hget("many", &format!("k{i}")).await) }
    }))
    .await;
    for (i, read) in reads {
        assert_eq!(read.expect("hget").expect("present").value, (i as i64).into(), "key k{i}");
    }
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused_with_a_clear_error() {
    let server = TestServer::start().await;
    let other = tempfile::tempdir().unwrap();
    qkv::certs::CertDir::new(other.path()).issue_server_certificate(&[], false).unwrap();
    let other_ca = other.path().join("ca.pem");
    let err = Client::connect(&server.addr.to_string(), &other_ca).await.err().expect("must be refused");
    let message = err.to_string();
    assert!(matches!(err, ClientError::Handshake { .. }), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(message.contains(&other_ca.display().to_string()), "the message names the CA file: {message}");
}

#[tokio::test]
async fn a_certificate_for_another_name_is_refused() {
    let server = TestServer::start().await;
    let mut config = server.client_config();
    config.server_name = Some("db.example.com".into());
    let err = Client::connect_with(config).await.err().expect("must be refused");
    assert!(err.to_string().contains("not valid for name \"db.example.com\""), "{err}");
}

#[tokio::test]
async fn a_missing_ca_file_is_reported_with_its_path() {
    let server = TestServer::start().await;
    let err = Client::connect(&server.addr.to_string(), "/nonexistent/ca.pem").await.err().unwrap();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

#[tokio::test]
async fn an_unreachable_server_times_out_with_a_clear_error() {
    // Bind a UDP port and never answer on it.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server = TestServer::start().await; // only for its CA
    let mut config = ClientConfig::new(silent.local_addr().unwrap().to_string(), server.ca());
    config.connect_timeout = std::time::Duration::from_millis(300);
    let err = Client::connect_with(config).await.err().unwrap();
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    assert!(err.to_string().contains("is the server running"), "{err}");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_replies_then_refuses_new_requests() {
    let mut server = TestServer::start_with(|config| config.service.response_frame_target = 4096).await;
    let client = server.client().await;
    let pairs = (0..20_000).map(|i| Kvpair::new(format!("k{i}"), i as i64));
    client.hmset("t", pairs).await.unwrap();

    // A reply of many frames is in flight: its first frame has arrived when shutdown begins.
    let mut frames = client.call_frames(&CommandRequest::hgetall("t")).await.unwrap();
    let first = frames.next().await.unwrap().unwrap();
    assert!(first.more);
    server.begin_stop();

    let mut keys = first.pairs.len();
    while let Some(frame) = frames.next().await {
        let frame = frame.expect("an in-flight reply completes during shutdown");
        assert_eq!(frame.status, status::OK);
        keys += frame.pairs.len();
    }
    assert_eq!(keys, 20_000, "the in-flight reply is complete");

    server.stopped().await;
    let err = client.hget("t", "k1").await.unwrap_err();
    assert!(matches!(err, ClientError::ServerShuttingDown), "{err}");
    assert!(err.is_retryable());
}
