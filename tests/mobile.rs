//! What clients on mobile links rely on: 0-RTT resumption and its replay safety, TLS session
//! resumption, keeping a connection across address changes, per-call deadlines, reconnection, and
//! retrying only what is safe to retry.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::TestServer;
use common::relay::UdpRelay;
use futures_util::future::join_all;
use qkv::client::{Client, ClientConfig, ClientError, RetryPolicy};
use qkv::pb::{CommandRequest, Value};
use qkv::tls::Tickets;
use qkv::transport::Transport;
use qkv::transport::frame::FrameCodec;
use tokio::net::TcpListener;
use tokio_util::codec::FramedRead;

/// Connects once with `config` and closes again, leaving session tickets in `config.tickets`.
async fn collect_tickets(config: &ClientConfig) {
    let client = Client::connect_with(config.clone()).await.unwrap();
    client.ping("tickets").await.unwrap();
    client.close().await;
}

#[tokio::test]
async fn a_resumed_quic_connection_sends_its_first_requests_in_0rtt() {
    let server = TestServer::start().await;
    let config = server.client_config();
    collect_tickets(&config).await;

    let client = Client::connect_with(config.clone()).await.unwrap();
    // A write sent in early data: the server runs it once the handshake completes.
    let written = client.hset("t", "k", "in 0-RTT").await.unwrap();
    assert_eq!(client.hget("t", "k").await.unwrap().unwrap().version, written.version);
    // The server's verdict on the early data arrives with the end of the handshake, after the answers
    // perhaps: once closed, the client has recorded it.
    client.close().await;
    let stats = client.stats();
    assert_eq!((stats.connections, stats.zero_rtt_accepted, stats.zero_rtt_rejected), (1, 1, 0), "{stats:?}");

    // Without tickets there is nothing to resume.
    let fresh = ClientConfig { tickets: Tickets::none(), ..config };
    collect_tickets(&fresh).await;
    let client = Client::connect_with(fresh).await.unwrap();
    client.ping("").await.unwrap();
    let stats = client.stats();
    assert_eq!((stats.connections, stats.zero_rtt_accepted, stats.zero_rtt_rejected), (1, 0, 0), "{stats:?}");
}

/// `qkv serve --no-0rtt`: the server accepts no early data, so a client resuming its session sends
/// its requests after the handshake (it offers no 0-RTT, as its ticket allows none); without the flag
/// the same client's first request goes in early data.
#[tokio::test]
async fn a_server_with_no_0rtt_takes_no_early_data_from_a_resuming_client() {
    for (args, early) in [(&[][..], 1), (&["--no-0rtt"][..], 0)] {
        let server = common::process::ServerProcess::start(args).await;
        let config = server.client_config(Transport::Quic);
        collect_tickets(&config).await;
        let client = Client::connect_with(config).await.unwrap();
        client.hset("t", "k", "v").await.unwrap();
        client.close().await;
        let stats = client.stats();
        assert_eq!(
            (stats.connections, stats.zero_rtt_accepted, stats.zero_rtt_rejected),
            (1, early, 0),
            "{args:?}: {stats:?}"
        );
        server.kill().await;
    }
}

#[tokio::test]
async fn tls_over_tcp_resumes_sessions() {
    let server = TestServer::start_for(Transport::Tls).await;
    let config = server.client_config();
    collect_tickets(&config).await;
    let client = Client::connect_with(config.clone()).await.unwrap();
    assert_eq!(client.stats().resumed, 1);

    let fresh = ClientConfig { tickets: Tickets::none(), ..config };
    collect_tickets(&fresh).await;
    assert_eq!(Client::connect_with(fresh).await.unwrap().stats().resumed, 0);
}

#[tokio::test]
async fn early_data_a_restarted_server_refuses_is_sent_again_transparently() {
    let server = TestServer::start().await;
    let config = server.client_config();
    collect_tickets(&config).await;
    // The new server process remembers no session: the ticket is useless, the early data refused.
    let _server = server.restart().await;
    let client = Client::connect_with(config).await.unwrap();
    client.hset("t", "k", "sent twice, applied once").await.unwrap();
    assert!(client.stats().retries >= 1, "{:?}", client.stats());
    let stored = client.hget("t", "k").await.unwrap().unwrap();
    assert_eq!(stored.value, Value::from("sent twice, applied once"));
    client.close().await;
    assert_eq!((client.stats().zero_rtt_rejected, client.stats().zero_rtt_accepted), (1, 0));
}

#[tokio::test]
async fn replayed_early_data_does_not_execute_a_write_again() {
    let server = TestServer::start().await;
    let relay = UdpRelay::start(server.addr).await;
    let config = ClientConfig { addr: relay.addr.to_string(), ..server.client_config() };
    collect_tickets(&config).await;

    // An attacker on the path records a connection that writes in 0-RTT...
    relay.start_recording();
    let client = Client::connect_with(config).await.unwrap();
    client.hset("t", "k", "original").await.unwrap();
    client.close().await;
    assert_eq!(client.stats().zero_rtt_accepted, 1, "the recording holds accepted early data");
    let captured = relay.take_recording();

    // ...the key changes...
    let direct = server.client().await;
    direct.hset("t", "k", "changed").await.unwrap();

    // ...and the attacker replays the recording from its own address, again until the server answers:
    // while the server still holds the recorded connection (closing, for a few probe timeouts) it takes
    // a copy of its Initial for that connection's and ignores it.
    let replayed = async {
        loop {
            let attacker = relay.replay(&captured).await;
            let mut answer = vec![0u8; 2048];
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), attacker.recv(&mut answer)).await
            {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), replayed)
        .await
        .expect("the server answers a replayed Initial");
    // Two round trips on another connection: the server has read every replayed datagram by then.
    direct.ping("").await.unwrap();
    direct.ping("").await.unwrap();
    let stored = direct.hget("t", "k").await.unwrap().unwrap();
    assert_eq!(stored.value, Value::from("changed"), "the replayed write ran again");
}

#[tokio::test]
async fn a_quic_client_keeps_its_connection_when_it_rebinds() {
    let server = TestServer::start().await;
    let client = server.client().await;
    client.hset("t", "k", "v").await.unwrap();
    for _ in 0..3 {
        let before = client.local_address();
        let reads: Vec<_> = (0..50).map(|_| client.hget("t", "k")).collect();
        let (reads, rebound) = tokio::join!(join_all(reads), async { client.rebind() });
        rebound.unwrap();
        assert!(reads.iter().all(|r| matches!(r, Ok(Some(_)))), "{reads:?}");
        assert_ne!(client.local_address(), before, "the client moved to a new socket");
    }
    client.ping("after the moves").await.unwrap();
    assert_eq!(client.stats().connections, 1, "the connection survived every move");
}

#[tokio::test]
async fn a_nat_rebinding_does_not_break_the_connection() {
    let server = TestServer::start().await;
    let relay = UdpRelay::start(server.addr).await;
    let client =
        Client::connect_with(ClientConfig { addr: relay.addr.to_string(), ..server.client_config() })
            .await
            .unwrap();
    // QUIC forbids migrating before the handshake is confirmed (RFC 9000, section 9), and a server
    // drops packets from a new address until then: one round trip first.
    client.ping("").await.unwrap();
    for round in 0..3 {
        let keys: Vec<String> = (0..20).map(|i| format!("{round}-{i}")).collect();
        let writes: Vec<_> = keys.iter().map(|key| client.hset("t", key, "v")).collect();
        let (writes, ()) = tokio::join!(join_all(writes), async { relay.rebind_upstream() });
        assert!(writes.iter().all(Result::is_ok), "{writes:?}");
    }
    assert_eq!(client.hgetall("t").await.unwrap().len(), 60);
    assert_eq!(client.stats().connections, 1);
}

#[tokio::test]
async fn a_call_without_an_answer_times_out_and_the_connection_outlives_a_short_outage() {
    let server = TestServer::start().await;
    let relay = UdpRelay::start(server.addr).await;
    // Long enough that a loaded machine answers a call on a working path within it.
    let timeout = Duration::from_secs(1);
    let config =
        ClientConfig { addr: relay.addr.to_string(), request_timeout: timeout, ..server.client_config() };
    let client = Client::connect_with(config).await.unwrap();
    client.ping("").await.unwrap();

    relay.set_silent(true);
    let err = client.ping("into the void").await.unwrap_err();
    assert!(matches!(err, ClientError::Timeout(t) if t == timeout), "{err}");

    relay.set_silent(false);
    // The connection's probes have backed off during the silence: the first call after it may time
    // out too, before a probe finds the path open again. Calls go on until one is answered.
    let mut attempts = 0;
    while let Err(err) = client.ping("back").await {
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        attempts += 1;
        assert!(attempts < 30, "the connection did not recover");
    }
    assert_eq!(client.stats().connections, 1);
}

#[tokio::test]
async fn a_quic_call_whose_answer_is_overdue_probes_its_connection_with_enough_bytes_to_lift_amplification_limits()
 {
    let server = TestServer::start().await;
    let relay = UdpRelay::start(server.addr).await;
    let config = ClientConfig {
        addr: relay.addr.to_string(),
        request_timeout: Duration::from_secs(30),
        ..server.client_config()
    };
    let client = Client::connect_with(config).await.unwrap();
    client.ping("").await.unwrap();

    // The server's datagrams stop arriving, as when a server may not send to the client's new
    // address after losing its first datagram there (its anti-amplification limit).
    relay.start_recording();
    relay.set_downstream_silent(true);
    let (answer, ()) = tokio::join!(client.ping("overdue"), async {
        // The client's own retransmissions are small, and path MTU probes 1200 bytes or more: a
        // datagram in between is the probe, over a third of the 1200 bytes the server needs.
        let probe = relay.wait_for_datagram(|datagram| (1000..1200).contains(&datagram.len()));
        tokio::time::timeout(Duration::from_secs(20), probe).await.expect("no probe within 20 s");
        relay.set_downstream_silent(false);
    });
    assert_eq!(answer.unwrap(), "overdue".as_bytes());
    assert_eq!(client.stats().connections, 1);
}

/// A plaintext TCP server that reads requests and, after each one, does what `answer` says: `true`
/// to keep the connection (without answering), `false` to close it. Counts requests and connections.
struct FakeServer {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    connections: Arc<AtomicUsize>,
}

impl FakeServer {
    async fn start(keep_connection: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (counted, accepted) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                let counted = counted.clone();
                tokio::spawn(async move {
                    use futures_util::StreamExt;
                    let mut frames = FramedRead::new(stream, FrameCodec::<CommandRequest>::new(1 << 20));
                    while let Some(Ok(_)) = frames.next().await {
                        counted.fetch_add(1, Ordering::SeqCst);
                        if !keep_connection {
                            return;
                        }
                    }
                });
            }
        });
        FakeServer { addr, requests, connections }
    }

    /// A client whose calls have `request_timeout` to be answered, retries included.
    fn config(&self, request_timeout: Duration) -> ClientConfig {
        ClientConfig {
            transport: Transport::Tcp,
            request_timeout,
            retry: RetryPolicy {
                attempts: 3,
                initial_backoff: Duration::from_millis(1),
                ..Default::default()
            },
            ..ClientConfig::new(self.addr.to_string(), "unused-for-plaintext.pem")
        }
    }
}

#[tokio::test]
async fn over_tcp_a_call_that_times_out_gives_up_its_connection() {
    let server = FakeServer::start(true).await;
    // Long enough for the second call to reconnect on a loaded machine before its deadline.
    let client = Client::connect_with(server.config(Duration::from_secs(1))).await.unwrap();
    assert!(matches!(client.ping("").await, Err(ClientError::Timeout(_))));
    assert!(matches!(client.ping("").await, Err(ClientError::Timeout(_))));
    // Every later answer waits behind a missing one, so the second call had a new connection.
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_request_that_may_have_run_is_retried_only_if_it_is_read_only() {
    let server = FakeServer::start(false).await; // reads each request, then drops the connection
    // Time enough for three attempts and two reconnections on a loaded machine.
    let client = Client::connect_with(server.config(Duration::from_secs(30))).await.unwrap();
    let err = client.hset("t", "k", "v").await.unwrap_err();
    assert!(!err.may_retry(false), "{err}");
    assert_eq!(server.requests.load(Ordering::SeqCst), 1, "a write was sent again");

    client.hget("t", "k").await.unwrap_err();
    assert_eq!(server.requests.load(Ordering::SeqCst), 1 + 3, "a read is tried three times");
}

async fn a_lost_connection_is_replaced_on_the_next_call(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    client.hset("t", "k", "v").await.unwrap();
    let _server = server.restart().await;
    // The old connection is gone with the old server; the call finds a new one (and an empty store).
    assert_eq!(client.hget("t", "k").await.unwrap(), None);
    assert_eq!(client.stats().connections, 2);
}

transport_tests!(reconnection: quic, tls, tcp, http, grpc, grpc_pipeline => a_lost_connection_is_replaced_on_the_next_call);

/// A call read to its last frame leaves its stream read to the end: the client sends the server no
/// STOP_SENDING for it (quinn sends one for a stream dropped before its end was read, even when every
/// byte of it has arrived: a frame after every request, for nothing). A bare QUIC server answers three
/// pings, each with its last frame and the stream's end together, as qkv's server sends them; the
/// client's STOP_SENDING for a call would come before the next call's stream data.
#[tokio::test]
async fn a_call_read_to_its_last_frame_sends_no_stop_sending() {
    let bare = common::BareQuicServer::start(&Default::default());
    let endpoint = bare.endpoint.clone();
    let server = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        for _ in 0..3 {
            let (mut send, mut recv) = connection.accept_bi().await.unwrap();
            recv.read_to_end(1 << 20).await.unwrap();
            let pong = qkv::pb::CommandResponse {
                values: vec![Value::from(b"p".to_vec())],
                ..qkv::pb::CommandResponse::ok()
            };
            send.write_all(&common::frame_of(&pong)).await.unwrap();
            send.finish().unwrap();
        }
        let stops = connection.stats().frame_rx.stop_sending;
        connection.closed().await;
        stops
    });
    let client =
        Client::connect_with(ClientConfig::new(bare.addr.to_string(), bare.ca.clone())).await.unwrap();
    for _ in 0..3 {
        assert_eq!(client.ping(b"p".to_vec()).await.unwrap(), &b"p"[..]);
    }
    client.close().await;
    assert_eq!(server.await.unwrap(), 0, "STOP_SENDING frames the server received");
}

/// A connection lost while a request is still being written (flow control holds the rest of a large
/// value) did not execute it: the server runs a request only once it has its stream's end, which the
/// client had not sent. The call says so (it was reported "may have been executed").
#[tokio::test]
async fn a_connection_lost_before_the_request_was_whole_did_not_execute_it() {
    let bare = common::BareQuicServer::start(&Default::default());
    let endpoint = bare.endpoint.clone();
    let server = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (_send, mut recv) = connection.accept_bi().await.unwrap();
        // The request has begun to arrive; 12 MiB are far more than the stream's window lets through.
        recv.read_chunk(1024, true).await.unwrap().expect("a first piece");
        connection.close(qkv::transport::quic::codes::SHUTDOWN_FORCED, b"gone");
        connection.closed().await;
    });
    let config = ClientConfig {
        retry: RetryPolicy { attempts: 1, ..Default::default() },
        ..ClientConfig::new(bare.addr.to_string(), bare.ca.clone())
    };
    let client = Client::connect_with(config).await.unwrap();
    let err = client.hset("t", "big", vec![0u8; 12 << 20]).await.unwrap_err();
    assert_eq!(err.executed(), qkv::client::Executed::No, "{err}");
    server.await.unwrap();
}

#[tokio::test]
async fn dropping_a_call_while_its_request_is_written_resets_the_stream() {
    // A bare QUIC server that accepts the request stream and reads none of it: the client's write
    // blocks on flow control, and the call is given up.
    let bare = common::BareQuicServer::start(&Default::default());
    let endpoint = bare.endpoint.clone();
    let server = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (_send, mut recv) = connection.accept_bi().await.unwrap();
        recv.received_reset().await.unwrap()
    });
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..ClientConfig::new(bare.addr.to_string(), bare.ca.clone())
    };
    let client = Client::connect_with(config).await.unwrap();
    let err = client.hset("t", "big", vec![0u8; 12 << 20]).await.unwrap_err();
    // Its stream never finished, so the server cannot have run it: not "may have been executed".
    assert!(matches!(err, ClientError::NotSent { .. }), "{err}");
    assert_eq!(err.executed(), qkv::client::Executed::No, "{err}");
    assert_eq!(server.await.unwrap(), Some(qkv::transport::quic::codes::CANCELLED));
}

#[tokio::test]
async fn a_retry_that_reaches_the_server_and_times_out_may_have_executed_the_request() {
    // A bare QUIC server: the first connection is closed as a server shutting down closes it (the
    // request not executed, so even a write is sent again); the second takes the retry and never
    // answers, as a server that executes it and stalls would.
    let bare = common::BareQuicServer::start(&Default::default());
    let endpoint = bare.endpoint.clone();
    let (retry_read, retry_received) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let first = endpoint.accept().await.unwrap().await.unwrap();
        let _request = first.accept_bi().await.unwrap();
        first.close(qkv::transport::quic::codes::SHUTTING_DOWN, b"shutting down");
        let second = endpoint.accept().await.unwrap().await.unwrap();
        let (send, mut recv) = second.accept_bi().await.unwrap();
        let request = recv.read_to_end(1 << 20).await.unwrap();
        let _ = retry_read.send(request);
        // Held, unanswered, until the client has given up.
        second.closed().await;
        drop(send);
    });
    let config = ClientConfig {
        // Long enough for the retry to reach the server on a loaded machine.
        request_timeout: Duration::from_secs(5),
        zero_rtt: false,
        retry: RetryPolicy { attempts: 3, initial_backoff: Duration::from_millis(1), ..Default::default() },
        ..ClientConfig::new(bare.addr.to_string(), bare.ca.clone())
    };
    let client = Client::connect_with(config).await.unwrap();
    let err = client.hset("t", "k", "v").await.unwrap_err();
    let request = retry_received.await.expect("the retry reached the server");
    assert!(!request.is_empty());
    assert_eq!(err.executed(), qkv::client::Executed::Maybe, "{err}");
    assert!(!err.may_retry(false), "{err}");
    match &err {
        ClientError::TimeoutRetrying { earlier, .. } => {
            assert!(matches!(**earlier, ClientError::Unavailable { .. }), "{earlier}")
        }
        other => panic!("expected a timeout after a retry, got {other}"),
    }
    client.close().await;
    server.await.unwrap();
}

/// A write sent in 0-RTT early data to a server that answers nothing (stopped, say): the handshake
/// never completes, and the server executes no early-data write before it does.
async fn unanswered_early_data(
    connect_timeout: Duration,
    request_timeout: Duration,
    attempts: u32,
) -> ClientError {
    let server = TestServer::start().await;
    let relay = UdpRelay::start(server.addr).await;
    let config = ClientConfig {
        addr: relay.addr.to_string(),
        connect_timeout,
        request_timeout,
        retry: RetryPolicy { attempts, initial_backoff: Duration::from_millis(1), ..Default::default() },
        ..server.client_config()
    };
    collect_tickets(&config).await;
    relay.set_silent(true);
    let client = Client::connect_with(config).await.unwrap();
    let err = client.hset("t", "k", "early").await.unwrap_err();
    relay.set_silent(false);
    // Nothing reached the store, even once the client can reach the server again: a handshake left
    // pending at the deadline completed then, and the server ran the early write.
    client.ping("after").await.unwrap();
    assert_eq!(server.client().await.hget("t", "k").await.unwrap(), None);
    err
}

#[tokio::test]
async fn early_data_the_server_never_answers_was_not_executed_at_the_deadline() {
    // The call's deadline comes first, while the handshake is still awaited.
    let err = unanswered_early_data(Duration::from_secs(30), Duration::from_millis(500), 3).await;
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    assert_eq!(err.executed(), qkv::client::Executed::No, "{err}");
    assert!(err.to_string().contains("is the server running"), "{err}");
}

#[tokio::test]
async fn early_data_the_server_never_answers_was_not_executed_when_the_handshake_is_given_up() {
    // The connect timeout comes first: the client gives the handshake up and closes the connection.
    // One attempt, so that its own failure is seen (a retry, without a ticket left, would make a full
    // handshake and fail as that does).
    let err = unanswered_early_data(Duration::from_millis(300), Duration::from_secs(2), 1).await;
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    assert_eq!(err.executed(), qkv::client::Executed::No, "{err}");
}

/// A client closed while a call is opening a new connection (the old one lost) ends that call with
/// `Closed`, and its close returns: the connection the call opened was kept and used after the close,
/// and the close waited for ever for the endpoint it kept busy.
#[tokio::test]
async fn a_client_closed_while_a_call_connects_ends_the_call_and_its_connection() {
    let server = TestServer::start().await;
    let relay = UdpRelay::start(server.addr).await;
    let limits = qkv::transport::Limits { idle_timeout: Duration::from_millis(500), ..Default::default() };
    let config = ClientConfig {
        addr: relay.addr.to_string(),
        limits,
        keep_alive: Duration::from_millis(200),
        // A resumed connection would be returned at once, in 0-RTT, before its handshake ends.
        zero_rtt: false,
        connect_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        ..server.client_config()
    };
    let client = Client::connect_with(config).await.unwrap();
    client.ping("").await.unwrap();
    // The path goes silent: the connection times out, and a call opens another, whose handshake the
    // relay holds up.
    relay.set_silent(true);
    relay.start_recording();
    let calling = tokio::spawn({
        let client = client.clone();
        async move {
            loop {
                match client.ping("late").await {
                    Err(ClientError::Closed) => return Err(ClientError::Closed),
                    Ok(answer) => return Ok(answer),
                    Err(_) => {}
                }
            }
        }
    });
    // A long header's Initial packet (first byte 0b1100_xxxx): a new connection's first flight.
    let initial = relay.wait_for_datagram(|datagram| datagram.first().is_some_and(|b| b & 0xf0 == 0xc0));
    tokio::time::timeout(Duration::from_secs(30), initial).await.expect("a new connection's Initial");
    let closing = tokio::spawn({
        let client = client.clone();
        async move { client.close().await }
    });
    relay.set_silent(false);
    let called = tokio::time::timeout(Duration::from_secs(30), calling).await.expect("the call ended");
    assert!(matches!(called.unwrap(), Err(ClientError::Closed)), "a call after close() fails Closed");
    tokio::time::timeout(Duration::from_secs(30), closing).await.expect("close() returned").unwrap();
}
