//! Mutual TLS: with `--client-ca`, only clients with a certificate from that CA get in, over QUIC and
//! TLS over TCP, and the service knows each by its certificate's subject.

#[macro_use]
mod common;

use std::time::Duration;

use common::TestServer;
use qkv::Client;
use qkv::certs::CertDir;
use qkv::client::{ClientConfig, ClientError};
use qkv::server::{Server, ServerConfig, TcpMode};
use qkv::storage::MemoryStore;
use qkv::tls::ClientCertFiles;
use qkv::transport::Transport;

/// A server requiring client certificates from its own CA.
async fn mtls_server(transport: Transport) -> TestServer {
    TestServer::start_for_with(transport, |config| {
        config.client_ca = Some(config.certs_dir.join("ca.pem"));
    })
    .await
}

/// A client certificate for `name` from the CA in `dir`.
fn client_cert(dir: &std::path::Path, name: &str) -> ClientCertFiles {
    let issued = CertDir::new(dir).issue_client_certificate(name, false).unwrap();
    ClientCertFiles { cert: issued.cert, key: issued.key }
}

async fn a_client_with_a_certificate_from_the_client_ca_is_served_and_known_by_name(transport: Transport) {
    let server = mtls_server(transport).await;
    let config = ClientConfig {
        client_cert: Some(client_cert(server.certs.path(), "alice")),
        ..server.client_config()
    };
    let client = Client::connect_with(config).await.unwrap();
    client.hset("t", "k", "v").await.unwrap();
    assert_eq!(client.hget("t", "k").await.unwrap().unwrap().value, "v".into());
    assert_eq!(client.whoami().await.unwrap().as_deref(), Some("CN=alice"));
}

async fn a_client_without_a_certificate_is_refused_with_an_error_that_says_so(transport: Transport) {
    let server = mtls_server(transport).await;
    let error = match Client::connect_with(server.client_config()).await {
        Ok(client) => client.hget("t", "k").await.unwrap_err(),
        Err(e) => e,
    };
    let message = error.to_string();
    assert!(message.contains("client certificate"), "{message}");
    assert!(!error.is_retryable(), "{message}");
}

async fn a_client_certificate_from_another_ca_is_refused(transport: Transport) {
    let server = mtls_server(transport).await;
    let elsewhere = tempfile::tempdir().unwrap();
    let config = ClientConfig {
        client_cert: Some(client_cert(elsewhere.path(), "mallory")),
        ..server.client_config()
    };
    let error = match Client::connect_with(config).await {
        Ok(client) => client.hget("t", "k").await.unwrap_err(),
        Err(e) => e,
    };
    assert!(error.to_string().contains("client certificate"), "{error}");
}

async fn without_client_ca_no_identity_is_reported(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    assert_eq!(server.client().await.whoami().await.unwrap(), None);
}

transport_tests!(mtls: quic, tls, http, grpc, grpc_pipeline =>
    a_client_with_a_certificate_from_the_client_ca_is_served_and_known_by_name,
    a_client_without_a_certificate_is_refused_with_an_error_that_says_so,
    a_client_certificate_from_another_ca_is_refused,
    without_client_ca_no_identity_is_reported,
);

/// A resumed QUIC connection keeps the identity of the certificate its ticket was issued to, and its
/// 0-RTT requests are served once the handshake has completed.
#[tokio::test]
async fn a_resumed_connection_keeps_its_identity_and_its_early_writes_are_served_once() {
    let server = mtls_server(Transport::Quic).await;
    let config = ClientConfig {
        client_cert: Some(client_cert(server.certs.path(), "alice")),
        ..server.client_config()
    };
    let first = Client::connect_with(config.clone()).await.unwrap();
    first.ping("").await.unwrap();
    first.close().await;
    // Clones of a config share their tickets: this client resumes, sending its first request in 0-RTT.
    let resumed = Client::connect_with(config).await.unwrap();
    let written = resumed.hset("t", "k", "early").await.unwrap();
    assert_eq!(resumed.hget("t", "k").await.unwrap().unwrap().version, written.version);
    assert_eq!(resumed.whoami().await.unwrap().as_deref(), Some("CN=alice"));
    assert_eq!(resumed.stats().zero_rtt_accepted, 1, "the early data was accepted");
}

/// A resumed handshake does not verify a certificate, it takes the resumed session's (which its own
/// tickets carry on): the server checks it again once the handshake has completed, so a client whose
/// certificate has expired since cannot go on resuming, and nothing it sends is executed. The client
/// then forgets the tickets the refusal came with, and its next connection is a full handshake.
/// Whether a call or a subscription (over TLS a connection of its own) meets the refusal first.
async fn a_session_resumed_after_its_certificate_expired_is_refused(transport: Transport) {
    let server = mtls_server(transport).await;
    let dir = CertDir::new(server.certs.path());
    // A client each (configs made apart keep tickets apart), first served with a full handshake.
    let mut configs = Vec::new();
    for name in ["calls", "subscribes"] {
        let brief = dir.issue_client_certificate_valid_for(name, false, Duration::from_secs(2)).unwrap();
        let config = ClientConfig {
            client_cert: Some(ClientCertFiles { cert: brief.cert, key: brief.key }),
            ..server.client_config()
        };
        let first = Client::connect_with(config.clone()).await.unwrap();
        assert_eq!(first.whoami().await.unwrap(), Some(format!("CN={name}")));
        first.close().await;
        configs.push(config);
    }
    // Until the certificates have expired, to the second (a certificate's times have no fraction).
    let expired = std::time::SystemTime::now() + Duration::from_secs(3);
    while std::time::SystemTime::now() < expired {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (config, subscribes) in configs.into_iter().zip([false, true]) {
        // Clones of a config share their tickets: this client resumes.
        let error = match Client::connect_with(config.clone()).await {
            Ok(resumed) if subscribes => match resumed.subscribe("news").await {
                Ok(_) => panic!("a subscription with an expired certificate's session"),
                Err(e) => e,
            },
            Ok(resumed) => resumed.hset("t", "k", "after expiry").await.expect_err("a refused write"),
            Err(e) => e,
        };
        assert!(matches!(error, ClientError::ClientCertificateRefused { .. }), "{error:?}");
        assert!(error.to_string().contains("no longer trusted"), "{error}");
        assert_eq!(error.executed(), qkv::client::Executed::No, "{error}");
        let again = match Client::connect_with(config).await {
            Ok(client) => client.hset("t", "k", "again").await.expect_err("an expired certificate"),
            Err(e) => e,
        };
        assert!(matches!(again, ClientError::ClientCertificateRefused { .. }), "{again:?}");
        assert!(!again.to_string().contains("no longer trusted"), "a full handshake refused it: {again}");
    }
    let other = ClientConfig {
        client_cert: Some(client_cert(server.certs.path(), "alice")),
        ..server.client_config()
    };
    let other = Client::connect_with(other).await.unwrap();
    assert_eq!(other.hget("t", "k").await.unwrap(), None, "nothing was written");
}

transport_tests!(expiry: quic, tls =>
    a_session_resumed_after_its_certificate_expired_is_refused,
);

#[tokio::test]
async fn client_certificates_cannot_be_required_of_plaintext_tcp() {
    let certs = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tcp: TcpMode::Plaintext,
        certs_dir: certs.path().to_owned(),
        client_ca: Some(certs.path().join("ca.pem")),
        ..ServerConfig::default()
    };
    let error =
        Server::bind(config, MemoryStore::new()).err().expect("plaintext with a client CA is refused");
    assert!(error.to_string().contains("--client-ca"), "{error}");
}
