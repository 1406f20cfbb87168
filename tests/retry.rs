//! Address validation: Initial packets whose sender never answers (as from a spoofed address) start
//! handshakes that can only time out. Without validation each would hold a connection place for the
//! handshake deadline; with it, once `max_unvalidated_handshakes` are in progress, the server answers
//! the rest with a stateless Retry and holds nothing for them.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use qkv::client::{Client, ClientError};
use qkv::tls;
use quinn::crypto::rustls::QuicClientConfig;

/// The first datagrams of `count` connection attempts to `server`: real Initials, as clients would
/// send them, each with a connection ID of its own.
fn initial_datagrams(server: SocketAddr, ca: &std::path::Path, count: usize) -> Vec<Vec<u8>> {
    first_datagrams(server, ca, count, 0)
}

/// As [`initial_datagrams`], from clients that offer `padding` application protocols more, of 100
/// bytes each: a ClientHello of more than one packet, of which the first datagram holds only the start.
fn first_datagrams(server: SocketAddr, ca: &std::path::Path, count: usize, padding: usize) -> Vec<Vec<u8>> {
    let roots = tls::read_roots(ca).expect("CA");
    let mut crypto = tls::client_config(roots, &tls::Tickets::none(), None).expect("TLS config");
    crypto.alpn_protocols.extend((0..padding).map(|i| format!("{i:0100}").into_bytes()));
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(crypto).expect("QUIC TLS")));
    let mut endpoint = quinn_proto::Endpoint::new(Arc::default(), None, false, None);
    (0..count)
        .map(|_| {
            let (_, mut connection) =
                endpoint.connect(Instant::now(), config.clone(), server, "localhost").expect("connect");
            let mut datagram = Vec::new();
            let transmit =
                connection.poll_transmit(Instant::now(), 1, &mut datagram).expect("an Initial to send");
            datagram.truncate(transmit.size);
            datagram
        })
        .collect()
}

/// What the server answered an Initial with.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A Retry packet: the sender must prove its address first.
    Retry,
    /// Its handshake (an Initial packet): the server keeps state for it.
    Handshake,
    /// A close (CONNECTION_REFUSED comes in an Initial too, but smaller than a handshake's flight).
    Other,
}

/// Sends `count` Initials to `server`, each from a socket of its own that never answers, and reads
/// what the server sent back to each (a test may look; the "attacker" would not).
async fn spoof(server: &TestServer, count: usize) -> Vec<Answer> {
    let (addr, ca) = (server.addr, server.ca());
    // Blocking sockets on a thread of their own, while the server runs on the test's.
    tokio::task::spawn_blocking(move || spoof_from_sockets(addr, &ca, count)).await.expect("spoofer")
}

fn spoof_from_sockets(server: SocketAddr, ca: &std::path::Path, count: usize) -> Vec<Answer> {
    let sockets: Vec<UdpSocket> = initial_datagrams(server, ca, count)
        .into_iter()
        .map(|datagram| {
            let socket = UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
            socket.send_to(&datagram, server).expect("send");
            socket.set_nonblocking(true).expect("non-blocking");
            socket
        })
        .collect();
    // Each socket's first datagram from the server, whichever comes first; the server answers at once,
    // so the deadline only bounds a broken run.
    let mut answers: Vec<Option<Answer>> = (0..count).map(|_| None).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answers.iter().any(Option::is_none) && Instant::now() < deadline {
        for (socket, answer) in sockets.iter().zip(&mut answers).filter(|(_, a)| a.is_none()) {
            let mut buffer = [0u8; 2048];
            if let Ok(len) = socket.recv(&mut buffer) {
                // A long header (top bit); QUIC v1's packet types: 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry.
                *answer = Some(match (buffer[0] & 0x80 != 0, (buffer[0] >> 4) & 0x3) {
                    (true, 3) => Answer::Retry,
                    (true, 0) if len >= 1200 => Answer::Handshake,
                    _ => Answer::Other,
                });
            }
        }
        std::thread::yield_now();
    }
    answers.into_iter().map(|answer| answer.unwrap_or(Answer::Other)).collect()
}

#[tokio::test]
async fn spoofed_initials_cannot_hold_the_connection_places() {
    // Without validation (a limit above the flood), the flood takes every place and a real client is
    // refused: the attack this test is about is real.
    let unprotected = TestServer::start_with(|config| {
        config.limits.max_connections = 40;
        config.limits.max_unvalidated_handshakes = 10_000;
    })
    .await;
    let flood = spoof(&unprotected, 60).await;
    assert_eq!(flood.iter().filter(|a| **a == Answer::Handshake).count(), 40, "{flood:?}");
    match Client::connect_with(unprotected.client_config()).await {
        Err(ClientError::Connect { .. }) => {}
        other => panic!("expected the connection to be refused, got {:?}", other.map(|_| "a connection")),
    }

    // With validation, only `max_unvalidated_handshakes` get a handshake; the rest get a Retry, and a
    // real client (which answers the Retry) is served.
    let protected = TestServer::start_with(|config| {
        config.limits.max_connections = 40;
        config.limits.max_unvalidated_handshakes = 10;
    })
    .await;
    let flood = spoof(&protected, 200).await;
    let count = |answer| flood.iter().filter(|a| **a == answer).count();
    assert_eq!((count(Answer::Handshake), count(Answer::Retry)), (10, 190), "{flood:?}");
    let client = protected.client().await;
    assert_eq!(client.ping("still served").await.unwrap(), "still served".as_bytes());
}

/// A client whose first flight never ends (a ClientHello of several packets, of which only the first
/// comes) holds its connection place until the request timeout, as any handshake does: the server
/// waited for the rest of it for as long as packets kept the connection alive (its idle timeout).
#[tokio::test]
async fn a_first_flight_never_finished_holds_its_place_only_until_the_request_timeout() {
    let server = TestServer::start_with(|config| {
        config.limits.max_connections = 1;
        config.limits.request_timeout = Duration::from_millis(500);
        config.limits.idle_timeout = Duration::from_secs(120);
    })
    .await;
    let (addr, ca) = (server.addr, server.ca());
    let half_hello = tokio::task::spawn_blocking(move || {
        let first = first_datagrams(addr, &ca, 1, 30).pop().expect("a datagram");
        let socket = UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
        socket.send_to(&first, addr).expect("send");
        socket
    })
    .await
    .expect("sender");
    // The one place comes free for a real client once the server gives up on the half handshake.
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = loop {
        match Client::connect_with(server.client_config()).await {
            Ok(client) => break client,
            Err(e) if Instant::now() < deadline => {
                assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the half handshake held the only place for 20 s: {e:?}"),
        }
    };
    assert_eq!(client.ping("served").await.unwrap(), "served".as_bytes());
    drop(half_hello);
}
