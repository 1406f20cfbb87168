//! Connections: many concurrent requests on one, certificate verification, and graceful shutdown.

#[macro_use]
mod common;

use std::collections::HashSet;

use common::TestServer;
use common::process::ServerProcess;
use futures_util::StreamExt;
use futures_util::future::join_all;
use std::time::Duration;

use qkv::client::{Client, ClientConfig, ClientError, Executed, RetryPolicy};
use qkv::pb::{CommandRequest, CommandResponse, Kvpair, Value, status};
use qkv::server::{Server, ServerConfig};
use qkv::storage::MemoryStore;
use qkv::transport::Transport;
use qkv::transport::frame::FrameCodec;
use qkv::transport::quic::codes;
use tokio_util::codec::FramedRead;

async fn a_thousand_concurrent_requests_on_one_connection_are_all_answered_correctly(transport: Transport) {
    // More requests than the connection's stream limit (256), so stream credit must be returned as
    // streams complete, or the later requests would wait forever.
    let server = TestServer::start_for(transport).await;
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

async fn a_client_trusting_another_ca_is_refused_with_a_clear_error(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let other = tempfile::tempdir().unwrap();
    qkv::certs::CertDir::new(other.path()).issue_server_certificate(&[], false).unwrap();
    let other_ca = other.path().join("ca.pem");
    let config = ClientConfig { ca_file: other_ca.clone(), ..server.client_config() };
    let err = Client::connect_with(config).await.expect_err("must be refused");
    let message = err.to_string();
    assert!(matches!(err, ClientError::Handshake { .. }), "{message}");
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert!(message.contains(&other_ca.display().to_string()), "the message names the CA file: {message}");
}

async fn a_certificate_for_another_name_is_refused(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let mut config = server.client_config();
    config.server_name = Some("db.example.com".into());
    let err = Client::connect_with(config).await.expect_err("must be refused");
    assert!(err.to_string().contains("not valid for name \"db.example.com\""), "{err}");
}

async fn a_missing_ca_file_is_reported_with_its_path(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let config = ClientConfig { ca_file: "/nonexistent/ca.pem".into(), ..server.client_config() };
    let err = Client::connect_with(config).await.err().unwrap();
    assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
}

/// A client config for an address where a UDP port is bound and never answers (the socket, to keep
/// it bound), trusting `server`'s CA, with `connect_timeout`.
fn silent_server(server: &TestServer, connect_timeout: Duration) -> (std::net::UdpSocket, ClientConfig) {
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = ClientConfig::new(silent.local_addr().unwrap().to_string(), server.ca());
    config.connect_timeout = connect_timeout;
    (silent, config)
}

#[tokio::test]
async fn an_unreachable_server_times_out_with_a_clear_error() {
    let server = TestServer::start().await; // only for its CA
    let (_silent, config) = silent_server(&server, Duration::from_millis(300));
    let err = Client::connect_with(config).await.err().unwrap();
    assert!(matches!(err, ClientError::ConnectTimeout { .. }), "{err}");
    assert!(err.to_string().contains("is the server running"), "{err}");
}

/// The request timeout bounds connecting as it bounds a call: `qkv hget --timeout 1s` against a silent
/// address must not wait out the 5 s connect timeout.
#[tokio::test]
async fn connecting_ends_at_the_request_timeout_when_that_comes_first() {
    let server = TestServer::start().await; // only for its CA
    let (_silent, mut config) = silent_server(&server, Duration::from_secs(3600));
    config.request_timeout = Duration::from_millis(300);
    let connecting = tokio::time::timeout(Duration::from_secs(60), Client::connect_with(config));
    let err = connecting.await.expect("connecting waited for the connect timeout").err().unwrap();
    assert!(
        matches!(err, ClientError::ConnectTimeout { timeout, .. } if timeout == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(err.to_string().contains("is the port open for UDP"), "{err}");
    assert_eq!(err.executed(), Executed::No);
}

#[tokio::test]
async fn a_call_that_never_finds_its_server_says_how_many_attempts_waited() {
    let server = TestServer::start().await; // only for its CA
    let (_silent, mut config) = silent_server(&server, Duration::from_millis(200));
    config.retry.attempts = 3;
    let client = qkv::client::ClientEndpoint::new(config).await.unwrap().client();
    // A read may be sent again after each timeout: the call waited three connect timeouts, not one.
    let err = client.hget("t", "k").await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectTimeout { attempts: 3, .. }), "{err:?}");
    assert!(err.to_string().contains("within 200ms (3 attempts)"), "{err}");
    // With the defaults' proportions the call's timeout ends the second attempt: it is counted too.
    let (_silent, mut config) = silent_server(&server, Duration::from_millis(200));
    config.request_timeout = Duration::from_millis(300);
    let client = qkv::client::ClientEndpoint::new(config).await.unwrap().client();
    let err = client.hget("t", "k").await.unwrap_err();
    assert!(err.to_string().contains("within 200ms (2 attempts)"), "{err}");
}

/// A table of `mebibytes` 1 MiB values: its Hgetall reply, far larger than what flow-control windows,
/// socket buffers and the client's queue can hold, stays unfinished while the client does not read it.
async fn load_big_table(client: &Client, mebibytes: usize) {
    for batch in (0..mebibytes).collect::<Vec<_>>().chunks(5) {
        let pairs = batch.iter().map(|i| Kvpair::new(format!("k{i}"), vec![7u8; 1 << 20]));
        client.hmset("big", pairs).await.unwrap();
    }
}

/// A listing of `table` on a QUIC stream of its own, whose answer nobody reads yet: its connection
/// (which must live on) and the stream's receiving side.
async fn unread_listing(server: &TestServer, table: &str) -> (quinn::Connection, quinn::RecvStream) {
    let connection = server.raw_connection().await;
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(&common::frame(&CommandRequest::hgetall(table))).await.unwrap();
    send.finish().unwrap();
    (connection, recv)
}

async fn graceful_shutdown_completes_in_flight_replies_and_later_calls_find_no_server(transport: Transport) {
    let mut server =
        TestServer::start_for_with(transport, |config| config.service.response_frame_target = 4096).await;
    let config = ClientConfig { connect_timeout: Duration::from_millis(500), ..server.client_config() };
    let client = Client::connect_with(config).await.unwrap();
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
    // The client tries a new connection, finds no server, and says so.
    let err = client.hget("t", "k1").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Connect { .. } | ClientError::ConnectTimeout { .. } | ClientError::ConnectionLost(_)
        ),
        "{err}"
    );
}

/// QUIC: a client that stops reading holds its answer in the server past the grace period. (Over TCP the
/// client reads everything; `tcp.rs` checks the server's side of a forced close there.)
#[tokio::test]
async fn a_shutdown_that_outlasts_its_grace_period_is_reported_as_not_retryable() {
    let mut server = TestServer::start_with(|config| {
        config.shutdown_grace = Duration::from_millis(200);
        config.limits.reply_timeout = Duration::from_secs(60);
    })
    .await;
    let client = server.client().await;
    load_big_table(&client, 20).await;
    // Executing (its first frame has arrived), but its reply cannot complete: nobody reads the rest.
    let mut frames = client.call_frames(&CommandRequest::hgetall("big")).await.unwrap();
    assert!(frames.next().await.unwrap().unwrap().more);
    server.begin_stop();
    tokio::time::timeout(Duration::from_secs(10), server.stopped()).await.expect("the grace period ends it");
    let err = loop {
        match frames.next().await {
            Some(Ok(_)) => continue,
            Some(Err(err)) => break err,
            None => panic!("the reply cannot have completed"),
        }
    };
    assert!(matches!(err, ClientError::ConnectionLost(_)), "{err}");
    assert!(!err.is_retryable(), "the request was executed; retrying is not safe");
    assert!(err.to_string().contains("shut down before answering"), "{err}");
}

#[tokio::test]
async fn a_reply_the_client_stops_reading_is_abandoned_after_the_reply_timeout() {
    let server =
        TestServer::start_with(|config| config.limits.reply_timeout = Duration::from_millis(300)).await;
    let client = server.client().await;
    load_big_table(&client, 20).await;
    let (_connection, mut recv) = unread_listing(&server, "big").await;
    // Read nothing: the server must give up on its own and say why.
    let reset = tokio::time::timeout(Duration::from_secs(10), recv.received_reset()).await;
    assert_eq!(reset.expect("the server abandons the reply").unwrap(), Some(codes::REPLY_TIMEOUT));
    assert!(client.hexist("big", "k0").await.unwrap(), "the server carries on");
}

#[tokio::test]
async fn dropping_a_reply_cancels_it_and_frees_its_scan_slot() {
    let server = TestServer::start_with(|config| config.service.max_concurrent_scans = 1).await;
    let client = server.client().await;
    load_big_table(&client, 20).await;
    let mut frames = client.call_frames(&CommandRequest::hgetall("big")).await.unwrap();
    assert!(frames.next().await.unwrap().unwrap().more);
    drop(frames); // STOP_SENDING 0x12: the server stops, and releases the only scan slot
    let second = tokio::time::timeout(Duration::from_secs(10), client.hgetall("big")).await;
    assert_eq!(second.expect("the scan slot was released").unwrap().len(), 20);
}

/// A listing whose client stops reading gives its scan slot to a listing that wants one (there is
/// one slot here), rather than hold it until the reply timeout (a minute here): 16 such clients made
/// every listing on the server wait that long. Once its client reads on, it resumes where it stopped
/// and sends every key exactly once, in order.
#[tokio::test]
async fn a_listing_nobody_reads_gives_its_scan_slot_to_one_that_wants_it() {
    let server = TestServer::start_with(|config| {
        config.service.max_concurrent_scans = 1;
        config.limits.reply_timeout = Duration::from_secs(60);
    })
    .await;
    let client = server.client().await;
    load_big_table(&client, 20).await;
    let (_connection, mut recv) = unread_listing(&server, "big").await;
    // Its first bytes have come: it holds the slot, and then waits for this reader, which waits.
    let mut first = [0u8; 4];
    recv.read_exact(&mut first).await.unwrap();
    client.hset("small", "k", "v").await.unwrap();
    let other = tokio::time::timeout(Duration::from_secs(30), client.hgetall("small")).await;
    assert_eq!(other.expect("the stalled listing gave its slot up").unwrap().len(), 1);
    // Read on: every key of the big table, once each, in key order.
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut rest).await.unwrap();
    let mut bytes = bytes::BytesMut::from(&[&first[..], &rest].concat()[..]);
    let mut keys = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        let frame = bytes.split_to(4 + len);
        let response = <CommandResponse as prost::Message>::decode(&frame[4..]).unwrap();
        assert_eq!(response.status, 200, "{}", response.message);
        keys.extend(response.pairs.into_iter().map(|pair| pair.key));
    }
    let mut expected: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    expected.sort();
    assert_eq!(keys, expected);
}

#[tokio::test]
async fn a_client_abandoning_a_reply_stops_the_stream_with_the_cancelled_code() {
    // A bare QUIC server stands in for qkv, to see exactly what the client sends.
    let bare = common::BareQuicServer::start(&Default::default());
    let endpoint = bare.endpoint.clone();
    let server = tokio::spawn(async move {
        let connection = endpoint.accept().await.unwrap().await.unwrap();
        let (mut send, _recv) = connection.accept_bi().await.unwrap();
        let first = CommandResponse { more: true, ..CommandResponse::ok() };
        send.write_all(&common::frame_of(&first)).await.unwrap();
        send.stopped().await.unwrap()
    });
    let client = Client::connect(&bare.addr.to_string(), &bare.ca).await.unwrap();
    let mut frames = client.call_frames(&CommandRequest::hgetall("t")).await.unwrap();
    assert!(frames.next().await.unwrap().unwrap().more);
    drop(frames);
    assert_eq!(server.await.unwrap(), Some(codes::CANCELLED));
}

async fn a_full_server_refuses_connections_without_blaming_certificates(transport: Transport) {
    let server = TestServer::start_for_with(transport, |config| config.limits.max_connections = 1).await;
    let first = server.client().await;
    // A TCP handshake completes before the server can refuse, so there the refusal shows on first use.
    let refused = match Client::connect_with(server.client_config()).await {
        Ok(second) => second.ping("").await.expect_err("a refused connection cannot be used"),
        Err(err) => err,
    };
    assert!(!matches!(refused, ClientError::Handshake { .. }), "not a certificate problem: {refused}");
    let says = match transport {
        Transport::Quic => "refused",
        _ => "connection limit",
    };
    assert!(refused.to_string().contains(says), "{refused}");
    first.ping("").await.expect("the first connection is unaffected");
}

/// A client that a full server refuses tries again, within its retry policy's attempts, and gets in
/// once a place is free (PROTOCOL.md, section 13: "the connection refused" is not executed, and sent
/// again). Its first connection is tried again too, not only its calls: `Client::connect_with` gave up
/// at the first refusal over QUIC and TLS (`--attempts` changed nothing for a CLI command).
async fn a_client_refused_at_the_connection_limit_gets_in_once_a_place_is_free(transport: Transport) {
    let mut args = vec!["--max-connections", "1"];
    if transport == Transport::Tcp {
        args.push("--tcp-plaintext");
    }
    let mut server = ServerProcess::start(&args).await;
    let first = Client::connect_with(server.client_config(transport)).await.expect("the first connects");
    first.ping("").await.expect("and is served");
    let retry = RetryPolicy {
        attempts: 40,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(250),
    };
    let config = ClientConfig { retry, ..server.client_config(transport) };
    let second = tokio::spawn(async move {
        let client = Client::connect_with(config).await?;
        client.ping("").await?;
        Ok::<_, ClientError>(client)
    });
    server.log_line(&["refusing new connections"]).await;
    first.close().await;
    let second = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("within its attempts")
        .expect("the task ends")
        .expect("the second client is served once the first has gone");
    assert!(second.stats().retries >= 1, "it was refused before it got in");
    second.close().await;
    server.kill().await;
}

#[tokio::test]
async fn limits_that_cannot_work_together_are_refused_at_start() {
    let certs = tempfile::tempdir().unwrap();
    let base = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        certs_dir: certs.path().to_owned(),
        ..ServerConfig::default()
    };
    let mut small_buffer = base.clone();
    small_buffer.limits.max_request_buffer = small_buffer.limits.max_frame_len;
    let mut zero_target = base.clone();
    zero_target.service.response_frame_target = 0;
    let mut target_over_max = base.clone();
    target_over_max.service.response_frame_target = target_over_max.limits.max_frame_len + 1;
    let mut tiny_frames = base.clone();
    tiny_frames.limits.max_frame_len = 100;
    let mut streams = base.clone();
    streams.limits.max_concurrent_requests = qkv::transport::MAX_CONCURRENT_REQUESTS + 1;
    for (config, words) in [
        (small_buffer, "request buffer"),
        (zero_target, "frame target"),
        (target_over_max, "frame target"),
        (tiny_frames, "maximum frame size"),
        (streams, "concurrent requests"),
    ] {
        let err = Server::bind(config, MemoryStore::new()).err().expect("refused");
        assert!(err.to_string().contains(words), "{err}");
    }
}

/// A caller reads part of a long answer, and meanwhile makes another call: over TCP the second answer
/// comes after the whole first one, so the client must take the first in without waiting for its reader.
async fn a_call_made_while_reading_another_answer_completes(transport: Transport) {
    let server =
        TestServer::start_for_with(transport, |config| config.service.response_frame_target = 1024).await;
    let client = server.client().await;
    client.hmset("t", (0..2000).map(|i| Kvpair::new(format!("k{i}"), i as i64))).await.unwrap();
    let mut frames = client.call_frames(&CommandRequest::hgetall("t")).await.unwrap();
    assert!(frames.next().await.unwrap().unwrap().more);
    let pinged = tokio::time::timeout(Duration::from_secs(10), client.ping("meanwhile")).await;
    assert_eq!(pinged.expect("the second call is not stuck behind the first").unwrap(), "meanwhile");
    let mut pairs = 0;
    while let Some(frame) = frames.next().await {
        pairs += frame.unwrap().pairs.len();
    }
    assert!(pairs > 0);
    tokio::time::timeout(Duration::from_secs(10), client.close()).await.expect("close does not hang");
}

/// Large requests and large answers at once fill both directions' buffers: neither side may stop
/// reading while it waits to write.
async fn large_requests_and_answers_at_once_do_not_deadlock(transport: Transport) {
    let server = TestServer::start_for_with(transport, |config| {
        config.limits.request_timeout = Duration::from_secs(120)
    })
    .await;
    // 64 MiB through one connection's flow-control window: on a busy machine (a debug build sharing
    // its cores) that can take longer than the default 10 s per request. A deadlock never finishes.
    let mut config = server.client_config();
    config.request_timeout = Duration::from_secs(120);
    let client = Client::connect_with(config).await.unwrap();
    client.hset("big", "v", vec![1u8; 1 << 20]).await.unwrap();
    let calls = (0..64).map(|i| {
        let client = client.clone();
        async move {
            match i % 2 {
                0 => client.hset("big", &format!("w{i}"), vec![2u8; 1 << 20]).await.map(drop),
                _ => client.hget("big", "v").await.map(drop),
            }
        }
    });
    let results = tokio::time::timeout(Duration::from_secs(240), join_all(calls)).await.expect("no deadlock");
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
}

/// An answer already asked for arrives even if every handle on the client is gone.
async fn an_answer_outlives_the_client_that_asked(transport: Transport) {
    let server =
        TestServer::start_for_with(transport, |config| config.service.response_frame_target = 1024).await;
    let client = server.client().await;
    client.hmset("t", (0..2000).map(|i| Kvpair::new(format!("k{i}"), i as i64))).await.unwrap();
    let mut frames = client.call_frames(&CommandRequest::hgetall("t")).await.unwrap();
    drop(client);
    let mut pairs = 0;
    while let Some(frame) = frames.next().await {
        pairs += frame.expect("the answer completes").pairs.len();
    }
    assert_eq!(pairs, 2000);
}

transport_tests!(every_transport: quic, tls, tcp =>
    a_call_made_while_reading_another_answer_completes,
    large_requests_and_answers_at_once_do_not_deadlock,
    an_answer_outlives_the_client_that_asked,
    a_thousand_concurrent_requests_on_one_connection_are_all_answered_correctly,
    graceful_shutdown_completes_in_flight_replies_and_later_calls_find_no_server,
    a_full_server_refuses_connections_without_blaming_certificates,
    a_client_refused_at_the_connection_limit_gets_in_once_a_place_is_free,
);

transport_tests!(encrypted: quic, tls =>
    a_client_trusting_another_ca_is_refused_with_a_clear_error,
    a_certificate_for_another_name_is_refused,
    a_missing_ca_file_is_reported_with_its_path,
);

/// `count` subscriptions to "news" on `connection`, each answered (so each holds a request's place
/// for as long as it lasts).
async fn subscribed(
    connection: &quinn::Connection,
    count: usize,
) -> Vec<FramedRead<quinn::RecvStream, FrameCodec<CommandResponse>>> {
    let mut subscriptions = Vec::new();
    for _ in 0..count {
        let (mut send, recv) = connection.open_bi().await.expect("a stream within the limit");
        send.write_all(&common::frame(&CommandRequest::subscribe("news"))).await.expect("subscribe sent");
        send.finish().expect("finished");
        let mut frames = FramedRead::new(recv, FrameCodec::<CommandResponse>::new(1 << 20));
        let first = frames.next().await.expect("a first frame").expect("well formed");
        assert_eq!(first.status, status::OK, "subscribed: {first:?}");
        subscriptions.push(frames);
    }
    subscriptions
}

/// A QUIC client using every request it may have in progress gets more stream credit (a stream's credit
/// comes back only with the client's acknowledgement of its answer), while the server still runs no
/// more than the limit at once: a request opened beyond it waits, and runs once one ends.
#[tokio::test]
async fn a_client_at_the_request_limit_may_open_more_streams_which_wait_their_turn() {
    let server = TestServer::start_with(|config| config.limits.max_concurrent_requests = 2).await;
    let connection = server.raw_connection().await;
    let mut subscriptions = subscribed(&connection, 2).await;
    // Both in progress for as long as they last: a third stream needs the credit the server adds.
    let third = tokio::time::timeout(Duration::from_secs(10), connection.open_bi()).await;
    let (mut send, recv) = third.expect("more credit for a client at its limit").expect("a stream");
    send.write_all(&common::frame(&CommandRequest::ping("after"))).await.expect("ping sent");
    send.finish().expect("finished");
    let answered = tokio::spawn(common::read_responses(recv));
    // Still two in progress: a publish reaches both subscriptions, and the ping has not run.
    let publisher = server.client().await;
    assert_eq!(publisher.publish("news", ["x".into()]).await.expect("published").receivers, 2);
    assert!(!answered.is_finished(), "a third request ran beside the two the limit allows");
    // One ends (the client stops reading it): the waiting ping runs.
    drop(subscriptions.pop());
    let answer =
        tokio::time::timeout(Duration::from_secs(10), answered).await.expect("answered").expect("task");
    assert_eq!(answer.first().map(|a| a.status), Some(status::OK), "{answer:?}");
}

/// Requests waiting their turn on a QUIC connection must not hold back the bytes of those that have
/// it: every stream of a connection shares its flow-control window, so streams left unread until
/// their turn once filled it, and the request given the next turn could not receive the rest of
/// itself (408 after the request timeout). With two subscriptions holding the limit of two, two
/// writes of 1 MB (four windows each) are opened; once a subscription ends, both run.
#[tokio::test]
async fn requests_waiting_their_turn_do_not_starve_the_one_that_has_it() {
    let server = TestServer::start_with(|config| config.limits.max_concurrent_requests = 2).await;
    let connection = server.raw_connection().await;
    let mut subscriptions = subscribed(&connection, 2).await;
    let mut writes = Vec::new();
    for key in ["a", "b"] {
        let connection = connection.clone();
        writes.push(tokio::spawn(async move {
            let (mut send, recv) = connection.open_bi().await.expect("credit for a client at its limit");
            let request = CommandRequest::hset("big", key, Value::from(vec![7u8; 1_000_000]));
            send.write_all(&common::frame(&request)).await.expect("request sent");
            send.finish().expect("finished");
            common::read_responses(recv).await
        }));
    }
    drop(subscriptions.pop());
    for write in writes {
        let answer =
            tokio::time::timeout(Duration::from_secs(60), write).await.expect("answered").expect("task");
        assert_eq!(answer.first().map(|a| a.status), Some(status::OK), "{answer:?}");
    }
}
