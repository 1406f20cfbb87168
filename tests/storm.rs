//! What a reconnect storm needs (docs/bench/STORM.md): clients that share one UDP socket, every client
//! of a connect-workload fleet resuming with tickets of its own, and path MTU discovery that costs a
//! new connection one probe, not a search (and none with `--no-mtu-discovery`).

#[macro_use]
mod common;

use std::time::Duration;

use common::{BareQuicServer, TestServer};
use qkv::bench::Progress;
use qkv::bench::{BenchConfig, KeyDist, Workload};
use qkv::client::{ClientConfig, ClientEndpoint, ClientError};
use qkv::tls::Tickets;
use qkv::transport::{Transport, quic};

/// Long enough for anything on loopback, however loaded the machine: a bound, not a wait.
const PATIENCE: Duration = Duration::from_secs(20);

/// Clients of a fleet keep their own settings (tickets) on one shared socket.
#[tokio::test]
async fn clients_with_settings_of_their_own_share_one_socket() {
    let server = TestServer::start().await;
    let shared = ClientEndpoint::new(server.client_config()).await.unwrap();
    let own_tickets = ClientConfig { tickets: Tickets::in_memory(1), ..server.client_config() };
    let first = shared.with_config(own_tickets.clone()).await.unwrap().connect().await.unwrap();
    let second = shared.with_config(own_tickets).await.unwrap().connect().await.unwrap();
    assert_eq!(first.local_address(), second.local_address(), "one socket for both");
    first.hset("t", "k", "v").await.unwrap();
    tokio::time::timeout(PATIENCE, first.close()).await.expect("close returns while the socket is in use");
    assert_eq!(second.hget("t", "k").await.unwrap().map(|v| v.value), Some("v".into()));
    second.close().await;
    shared.wait_idle().await;
}

#[tokio::test]
async fn a_quic_socket_is_not_shared_with_tcp_settings() {
    let server = TestServer::start().await;
    let shared = ClientEndpoint::new(server.client_config()).await.unwrap();
    let tls = ClientConfig { transport: Transport::Tls, ..server.client_config() };
    assert!(matches!(shared.with_config(tls).await, Err(ClientError::InvalidConfig(_))));
}

/// More clients connect at once than one ticket store holds tickets for a server (rustls keeps 8):
/// each client must resume with tickets of its own, and the connections counted must be those of the
/// measured requests.
async fn every_client_of_a_fleet_resumes(transport: Transport) {
    const CLIENTS: usize = 32;
    let server = TestServer::start_for(transport).await;
    let config = BenchConfig {
        client: server.client_config(),
        workload: Workload::Connect,
        connections: CLIENTS,
        inflight: 1,
        rate: None,
        duration: Duration::from_millis(500),
        warmup: Duration::from_millis(200),
        value_size: 16,
        keys: 10,
        key_dist: KeyDist::Uniform,
        seed: 1,
        zero_rtt: true,
        timeline: None,
        connect_concurrency: 64,
        connections_per_socket: 16,
    };
    let report = qkv::bench::run(&config, Progress::new()).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    let stats = report.client_stats;
    assert_eq!(stats.connections, report.requests, "one connection per measured request: {stats:?}");
    let resumed = match transport {
        Transport::Quic => stats.zero_rtt_accepted,
        _ => stats.resumed,
    };
    // Only a client's first connection has no ticket, and most of those fall in the warm-up.
    assert!(resumed + CLIENTS as u64 >= stats.connections, "{stats:?}");
    assert_eq!(stats.zero_rtt_rejected, 0, "{stats:?}");
}

transport_tests!(fleet: quic, tls => every_client_of_a_fleet_resumes);

#[tokio::test]
async fn a_new_connection_probes_the_path_mtu_once() {
    let server = TestServer::start().await;
    let connection = common::raw_quic(server.addr, &server.ca()).await;
    // Loopback carries any size: the one probe, straight to quinn's upper bound, succeeds.
    let reached = tokio::time::timeout(PATIENCE, async {
        while connection.stats().path.current_mtu < 1452 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let path = connection.stats().path;
    assert!(reached.is_ok(), "the MTU stayed at {}", path.current_mtu);
    assert_eq!(path.current_mtu, 1452);
    // quinn's default search would have taken four probes (1326, 1389, 1420, 1436 bytes).
    assert_eq!(path.sent_plpmtud_probes, 1, "{path:?}");
}

/// `--no-mtu-discovery` (`QuicOptions::mtu_discovery`) on both sides: neither sends a probe, and
/// packets stay at QUIC's minimum. With discovery on, each side has sent its one probe by the time a
/// request is answered: quinn sends it once the connection is established and has nothing else to
/// send, in the same turn of its driver, before the stream reaches the application.
#[tokio::test]
async fn without_path_mtu_discovery_neither_side_probes() {
    for discovery in [true, false] {
        let options = quic::QuicOptions { mtu_discovery: discovery, ..Default::default() };
        let server = BareQuicServer::start(&options);
        let endpoint = server.endpoint.clone();
        let echo = tokio::spawn(async move {
            let connection = endpoint.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = connection.accept_bi().await.unwrap();
            let request = recv.read_to_end(64).await.unwrap();
            send.write_all(&request).await.unwrap();
            send.finish().unwrap();
            connection
        });
        let client = common::quic_client_endpoint_with(&server.ca, &Tickets::none(), &options);
        let connection = client.connect(server.addr, "localhost").unwrap().await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(b"ping").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(64).await.unwrap(), b"ping");
        let server_side = echo.await.unwrap();
        for (side, path) in [("client", connection.stats().path), ("server", server_side.stats().path)] {
            if discovery {
                assert_eq!(path.sent_plpmtud_probes, 1, "{side}: {path:?}");
            } else {
                assert_eq!(path.sent_plpmtud_probes, 0, "{side}: {path:?}");
                assert_eq!(path.current_mtu, 1200, "{side}: {path:?}");
            }
        }
    }
}
