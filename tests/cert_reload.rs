//! Certificate rotation without a restart: on SIGHUP `qkv serve` reads its certificate, key and client
//! CA again. New handshakes use the new files, established connections keep going, and a bad new file
//! is refused with the old ones kept (docs/OPERATIONS.md, "Certificate rotation").

mod common;

use std::path::Path;

use common::process::ServerProcess;
use qkv::certs::CertDir;
use qkv::client::{Client, ClientConfig, ClientError};
use qkv::tls::ClientCertFiles;
use qkv::transport::Transport;

const NAMES: [&str; 1] = ["127.0.0.1"];

/// A client of `server` over `transport` trusting `ca`, with a ticket store of its own (a ticket from
/// an earlier connection would resume without looking at the new certificate at all).
fn config(server: &ServerProcess, transport: Transport, ca: &Path) -> ClientConfig {
    ClientConfig { transport, ..ClientConfig::new(server.addr.to_string(), ca) }
}

/// A server certificate from a CA of its own (in the returned directory), written over `server`'s
/// files and reloaded (SIGHUP, once its log says so).
async fn reload_from_another_ca(server: &mut ServerProcess) -> (tempfile::TempDir, CertDir) {
    let other = tempfile::tempdir().unwrap();
    let other_dir = CertDir::new(other.path());
    other_dir.issue_server_certificate(&NAMES.map(String::from), false).unwrap();
    let served = CertDir::new(server.certs.path());
    std::fs::copy(other_dir.server_cert(), served.server_cert()).unwrap();
    std::fs::copy(other_dir.server_key(), served.server_key()).unwrap();
    server.hang_up();
    server.log_line(&["SIGHUP: reloaded the certificates"]).await;
    (other, other_dir)
}

async fn connects(config: ClientConfig) -> Result<(), ClientError> {
    let client = Client::connect_with(config).await?;
    client.hset("t", "k", "v").await.map(drop)
}

#[tokio::test]
async fn sighup_reloads_the_server_certificate_for_new_handshakes_only() {
    let mut server = ServerProcess::start(&[]).await;
    let old_ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::copy(server.ca(), old_ca.path()).unwrap();
    let established: Vec<Client> = {
        let mut clients = Vec::new();
        for transport in [Transport::Quic, Transport::Tls] {
            clients.push(Client::connect_with(config(&server, transport, old_ca.path())).await.unwrap());
        }
        clients
    };

    // A certificate from another CA, written over the server's files.
    let (other, other_dir) = reload_from_another_ca(&mut server).await;
    let served = CertDir::new(server.certs.path());

    for transport in [Transport::Quic, Transport::Tls] {
        let refused = connects(config(&server, transport, old_ca.path())).await;
        assert!(refused.is_err(), "{transport}: a new handshake presents the new certificate");
        connects(config(&server, transport, &other_dir.ca_cert())).await.expect("the new CA is trusted");
    }
    for client in &established {
        client.hget("t", "k").await.expect("an established connection keeps going");
    }

    // A bad file is refused; the certificate in use stays in use.
    std::fs::write(served.server_cert(), "not a certificate").unwrap();
    server.hang_up();
    let refusal = server.log_line(&["SIGHUP: the new certificates were refused"]).await;
    assert!(refusal.contains("server.pem"), "the log names the file: {refusal}");
    for transport in [Transport::Quic, Transport::Tls] {
        connects(config(&server, transport, &other_dir.ca_cert()))
            .await
            .expect("still the reloaded certificate");
    }
    // A key that does not belong to the certificate is refused too.
    std::fs::copy(other_dir.server_cert(), served.server_cert()).unwrap();
    std::fs::copy(server.certs.path().join("ca-key.pem"), served.server_key()).unwrap();
    server.hang_up();
    let refusal = server.log_line(&["SIGHUP: the new certificates were refused"]).await;
    assert!(
        refusal.contains("server-key.pem does not belong to the certificate in")
            && refusal.contains("server.pem"),
        "the log names the files: {refusal}"
    );
    connects(config(&server, Transport::Quic, &other_dir.ca_cert())).await.expect("still serving");
    // A CA's own certificate and key, which qkv's clients refuse as a server's (others may take it):
    // taken, and said.
    std::fs::copy(other_dir.ca_cert(), served.server_cert()).unwrap();
    std::fs::copy(other.path().join("ca-key.pem"), served.server_key()).unwrap();
    server.hang_up();
    let warning = server.log_line(&["WARN", "the certificate is a CA's"]).await;
    assert!(warning.contains("server.pem"), "the log names the file: {warning}");
    server.kill().await;
}

#[tokio::test]
async fn sighup_reloads_the_client_ca_for_new_handshakes_only() {
    let clients = tempfile::tempdir().unwrap();
    let clients_dir = CertDir::new(clients.path());
    let alice = clients_dir.issue_client_certificate("alice", false).unwrap();
    let client_ca = clients_dir.ca_cert();
    let mut server = ServerProcess::start(&["--client-ca", client_ca.to_str().unwrap()]).await;
    let (addr, server_ca) = (server.addr.to_string(), server.ca());
    let as_client = |files: &qkv::certs::IssuedClient, transport| ClientConfig {
        transport,
        client_cert: Some(ClientCertFiles { cert: files.cert.clone(), key: files.key.clone() }),
        ..ClientConfig::new(addr.clone(), &server_ca)
    };
    let established = Client::connect_with(as_client(&alice, Transport::Quic)).await.unwrap();
    established.hset("t", "k", "v").await.unwrap();
    // A client holding session tickets from before the reload (clones of a config share its tickets).
    let resuming = as_client(&alice, Transport::Quic);
    connects(resuming.clone()).await.expect("alice connects before the reload");

    // Another CA takes the place of the client CA; bob has a certificate from it.
    let other = tempfile::tempdir().unwrap();
    let other_dir = CertDir::new(other.path());
    let bob = other_dir.issue_client_certificate("bob", false).unwrap();
    std::fs::copy(other_dir.ca_cert(), &client_ca).unwrap();
    server.hang_up();
    server.log_line(&["SIGHUP: reloaded the certificates"]).await;

    for transport in [Transport::Quic, Transport::Tls] {
        assert!(connects(as_client(&alice, transport)).await.is_err(), "{transport}: alice's CA is gone");
        connects(as_client(&bob, transport)).await.expect("bob's CA is the client CA now");
    }
    established.hget("t", "k").await.expect("alice's established connection keeps going");
    assert!(
        connects(resuming).await.is_err(),
        "a session made under the old client CA must not resume after the reload"
    );

    std::fs::write(&client_ca, "").unwrap();
    server.hang_up();
    let refusal = server.log_line(&["SIGHUP: the new certificates were refused"]).await;
    assert!(refusal.contains("ca.pem"), "the log names the file: {refusal}");
    connects(as_client(&bob, Transport::Quic)).await.expect("the client CA in use stays in use");
    server.kill().await;
}

/// A reload may be sent at any moment after the start (`systemctl reload`, a rotation job), also while
/// a disk store recovers, which takes minutes for tens of GB: SIGHUP's default action ended the
/// process then. Listened for before the admin listener (which serves during recovery) starts.
#[tokio::test]
async fn sighup_while_the_disk_store_recovers_is_not_fatal() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_string_lossy().into_owned();
    let args = ["--store", "disk", "--data-dir", &dir, "--admin", "127.0.0.1:0"];
    {
        // A log of some megabytes, for a recovery that takes a while.
        let server = ServerProcess::start(&args).await;
        let client = Client::connect_with(config(&server, Transport::Quic, &server.ca())).await.unwrap();
        for batch in 0..16 {
            let pairs = (0..500).map(|i| qkv::pb::Kvpair::new(format!("k{batch}-{i}"), vec![7u8; 1000]));
            client.hmset("t", pairs).await.unwrap();
        }
        server.kill().await;
    }
    let mut server = ServerProcess::launch(&args, &[]);
    server.log_line(&["admin listener serving"]).await;
    server.hang_up();
    server.wait_until_serving(&args).await;
    let client = Client::connect_with(config(&server, Transport::Quic, &server.ca())).await.unwrap();
    assert_eq!(client.hgetall("t").await.unwrap().len(), 16 * 500, "recovered, and serving");
}

/// A certificate that has expired is loaded (its replacement may be on the way) but warned about; when
/// the certificate in use expires is a metric, and so is every reload's result, for an alert before
/// clients start failing their handshakes.
#[tokio::test]
async fn an_expired_certificate_is_warned_about_and_its_expiry_and_reloads_are_metrics() {
    let certs = tempfile::tempdir().unwrap();
    let mut params = rcgen::CertificateParams::new(NAMES.map(String::from).to_vec()).unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 2, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let expired = params.self_signed(&key).unwrap();
    let served = CertDir::new(certs.path());
    std::fs::write(served.server_cert(), expired.pem()).unwrap();
    std::fs::write(served.server_key(), key.serialize_pem()).unwrap();
    let mut server = ServerProcess::start_in(certs, &["--admin", "127.0.0.1:0"], &[]).await;
    let warned = server.startup_log.iter().any(|l| l.contains("WARN") && l.contains("has expired"));
    assert!(warned, "{:#?}", server.startup_log);
    let admin = server.admin_addr().await;
    let metrics = || async move { common::admin_get(admin, "/metrics").await.1 };
    const EXPIRY: &str = "qkv_tls_certificate_expiry_timestamp_seconds";
    let reloads = |result: &str| format!(r#"qkv_tls_certificate_reloads_total{{result="{result}"}}"#);
    let before = metrics().await;
    assert_eq!(common::sample(&before, EXPIRY), 1_580_515_200.0, "2020-02-01: {before}");
    assert_eq!(common::sample(&before, &reloads("reloaded")), 0.0, "{before}");

    // A valid certificate reloaded: its expiry, and the reload counted.
    let _other = reload_from_another_ca(&mut server).await;
    let served = CertDir::new(server.certs.path());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let after = metrics().await;
    assert!(common::sample(&after, EXPIRY) > now, "{after}");
    assert_eq!(common::sample(&after, &reloads("reloaded")), 1.0, "{after}");
    // A refused one counted as such.
    std::fs::write(served.server_cert(), "not a certificate").unwrap();
    server.hang_up();
    server.log_line(&["SIGHUP: the new certificates were refused"]).await;
    assert_eq!(common::sample(&metrics().await, &reloads("refused")), 1.0);
    server.kill().await;
}
