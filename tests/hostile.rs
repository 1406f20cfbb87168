//! Hostile clients against a real `qkv serve` process: after each attack a normal client is answered
//! correctly, and the server's peak resident memory stayed within a bound far below what the attack
//! would have cost a server without limits. docs/SECURITY.md lists what each limit protects.

#[macro_use]
mod common;

use std::time::Duration;

use common::process::ServerProcess;
use common::{ByteStream, frame, raw_byte_stream, raw_exchange, raw_quic};
use futures_util::StreamExt;
use qkv::Client;
use qkv::client::ClientError;
use qkv::pb::{CommandRequest, CommandResponse, status};
use qkv::transport::Transport;
use qkv::transport::frame::FrameCodec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::FramedRead;

/// Small limits, so that the attacks reach them quickly.
const LIMITS: &[&str] = &[
    "--max-frame-size",
    "1MiB",
    "--max-request-buffer",
    "2MiB",
    "--connection-window",
    "2MiB",
    "--request-timeout",
    "500ms",
    "--reply-timeout",
    "1s",
    "--max-connections",
    "100",
];

/// Peak memory an attack may add to the server, in MiB.
const MEMORY_BOUND_MIB: u64 = 64;

async fn server_for(transport: Transport, extra: &[&str]) -> ServerProcess {
    let mut args = LIMITS.to_vec();
    if transport == Transport::Tcp {
        args.push("--tcp-plaintext");
    }
    args.extend_from_slice(extra);
    ServerProcess::start(&args).await
}

/// A well-behaved client writes and reads back a value, and the server's memory stayed bounded.
async fn assert_unharmed(server: &ServerProcess, transport: Transport, baseline_mib: u64) {
    let client =
        Client::connect_with(server.client_config(transport)).await.expect("a normal client connects");
    let written = client.hset("canary", "k", "still here").await.expect("a normal write");
    let read = client.hget("canary", "k").await.expect("a normal read").expect("the value");
    assert_eq!((read.value, read.version), ("still here".into(), written.version));
    let peak = server.peak_mib();
    eprintln!("server memory: {baseline_mib} MiB before the attack, peak {peak} MiB");
    assert!(
        peak <= baseline_mib + MEMORY_BOUND_MIB,
        "the server's memory peaked at {peak} MiB, from {baseline_mib} MiB before the attack"
    );
}

/// The server's memory once it has served a normal client.
async fn baseline(server: &ServerProcess, transport: Transport) -> u64 {
    let client =
        Client::connect_with(server.client_config(transport)).await.expect("a normal client connects");
    client.ping("").await.expect("ping");
    server.resident_mib()
}

/// Streams whose partial frames the attack of `thousands_of_streams_opened_and_never_finished` must
/// have written before a normal client is tried "during" it: 200 on each of its 4 connections, within
/// the first 256 each may have open at once (`--max-concurrent-requests`' default).
const ATTACK_UNDER_WAY: usize = 4 * 200;

/// 4,000 QUIC streams, each with 8 KiB of a 64 KiB request frame, never finished: each waits out the
/// request timeout holding one of its connection's stream slots, and the server's memory holds only
/// what those slots allow.
#[tokio::test]
async fn thousands_of_streams_opened_and_never_finished() {
    let server = server_for(Transport::Quic, &[]).await;
    let base = baseline(&server, Transport::Quic).await;
    let mut header = (64u32 * 1024).to_be_bytes().to_vec();
    header.extend_from_slice(&[0u8; 8 * 1024]);
    // How many partial frames the attackers have written so far.
    let (written, mut under_way) = tokio::sync::watch::channel(0usize);
    let attack = (0..4).map(|_| {
        let partial = header.clone();
        let (addr, ca, written) = (server.addr, server.ca(), written.clone());
        tokio::spawn(async move {
            let connection = raw_quic(addr, &ca).await;
            let mut statuses = Vec::new();
            let mut waiting = Vec::new();
            for _ in 0..1000 {
                let (mut send, recv) = connection.open_bi().await.expect("a stream, once one is free");
                send.write_all(&partial).await.expect("part of a frame");
                written.send_modify(|n| *n += 1);
                // Keep the send side open (never finished); read the server's answer elsewhere.
                waiting.push(tokio::spawn(async move {
                    let answer = common::read_responses(recv).await;
                    drop(send);
                    answer.first().map(|r| r.status)
                }));
            }
            for answer in waiting {
                statuses.push(answer.await.expect("reader"));
            }
            statuses
        })
    });
    let attack = futures_util::future::join_all(attack);
    // Meanwhile a normal client is served, once the attack holds hundreds of stream slots.
    let normal = async {
        under_way.wait_for(|n| *n >= ATTACK_UNDER_WAY).await.expect("the attackers are running");
        assert_unharmed(&server, Transport::Quic, base).await;
    };
    let (results, ()) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(attack, normal) })
        .await
        .expect("the attack ends within 60 s");
    for statuses in results {
        let statuses = statuses.expect("attacker");
        assert_eq!(statuses.len(), 1000);
        assert!(statuses.iter().all(|s| *s == Some(status::REQUEST_TIMEOUT)), "{statuses:?}");
    }
    assert_unharmed(&server, Transport::Quic, base).await;
}

/// What the server answers on a byte stream (TCP or TLS) to `bytes`, until it closes.
async fn answers_on(mut stream: Box<dyn ByteStream>, bytes: &[u8]) -> Vec<CommandResponse> {
    let _ = stream.write_all(bytes).await;
    FramedRead::new(stream, FrameCodec::<CommandResponse>::new(1 << 20))
        .take_while(|frame| std::future::ready(frame.is_ok()))
        .map(|frame| frame.expect("checked"))
        .collect()
        .await
}

/// What the server answers to `bytes` on a new request stream or connection of `transport`.
async fn answers_to(server: &ServerProcess, transport: Transport, bytes: &[u8]) -> Vec<CommandResponse> {
    match transport {
        Transport::Quic => raw_exchange(&raw_quic(server.addr, &server.ca()).await, bytes).await,
        _ => answers_on(raw_byte_stream(server.addr, &server.ca(), transport).await, bytes).await,
    }
}

/// Length headers of 4 GiB and 1 GiB are refused from the header alone (413), before any payload is
/// buffered: a server that trusted them would allocate gigabytes.
async fn absurd_length_headers_are_refused_before_any_allocation(transport: Transport) {
    let server = server_for(transport, &[]).await;
    let base = baseline(&server, transport).await;
    for declared in [u32::MAX, 1 << 30] {
        let mut bytes = declared.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0x5a; 64 * 1024]);
        let answers = answers_to(&server, transport, &bytes).await;
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].status, status::PAYLOAD_TOO_LARGE);
        assert!(answers[0].message.contains("maximum frame size"), "{}", answers[0].message);
    }
    assert_unharmed(&server, transport, base).await;
}

/// Bytes after a valid request frame: the request is refused (QUIC: a request stream carries one
/// frame) or answered and the garbage refused (TCP), and nothing else is disturbed.
async fn garbage_after_a_valid_frame_is_refused(transport: Transport) {
    let server = server_for(transport, &[]).await;
    let base = baseline(&server, transport).await;
    let mut bytes = frame(&CommandRequest::hset("t", "k", "v")).to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 3, 0xff, 0xff, 0xff]);
    let answers = answers_to(&server, transport, &bytes).await;
    let last = answers.last().expect("an answer");
    assert_eq!(last.status, status::BAD_REQUEST, "{answers:?}");
    assert_unharmed(&server, transport, base).await;
}

/// A client that asks for a 16 MiB table 64 times and never reads: flow control holds the replies
/// back, the reply timeout abandons them, and the server's memory stays flat.
async fn a_client_that_never_reads_its_answers_holds_no_memory(transport: Transport) {
    // The server says at debug level when it gives up on a TCP connection's reply: the test waits for it.
    let mut server = ServerProcess::start_with_env(
        &[LIMITS, if transport == Transport::Tcp { &["--tcp-plaintext"] } else { &[] }].concat(),
        &[("RUST_LOG", "info,qkv::transport=debug")],
    )
    .await;
    let filler = Client::connect_with(server.client_config(transport)).await.unwrap();
    for i in 0..16 {
        filler.hset("big", &format!("k{i}"), vec![1u8; 1000 * 1000]).await.unwrap();
    }
    let base = baseline(&server, transport).await;
    let hgetall = frame(&CommandRequest::hgetall("big"));
    // Held open, unread, until the server has given up on every reply.
    match transport {
        Transport::Quic => {
            let connection = raw_quic(server.addr, &server.ca()).await;
            let mut streams = Vec::new();
            for _ in 0..64 {
                let (mut send, recv) = connection.open_bi().await.unwrap();
                send.write_all(&hgetall).await.unwrap();
                send.finish().unwrap();
                streams.push(recv);
            }
            // Each reply is reset by the server once its reply timeout has run out; the data the
            // server sent before stays unread.
            let resets = futures_util::future::join_all(streams.iter_mut().map(|recv| recv.received_reset()));
            let resets =
                tokio::time::timeout(Duration::from_secs(60), resets).await.expect("the replies end");
            let timed_out = Some(qkv::transport::quic::codes::REPLY_TIMEOUT);
            assert!(resets.iter().all(|reset| *reset.as_ref().unwrap() == timed_out), "{resets:?}");
            assert_unharmed(&server, transport, base).await;
        }
        _ => {
            let mut stream = raw_byte_stream(server.addr, &server.ca(), transport).await;
            for _ in 0..64 {
                stream.write_all(&hgetall).await.unwrap();
            }
            // Reading nothing, this client cannot see the connection close: the server's log says it.
            server.log_line(&["closing the connection", "the peer read less than"]).await;
            assert_unharmed(&server, transport, base).await;
            drop(stream);
        }
    }
}

/// 300 connections at once against a limit of 100: the excess is refused with an error that says
/// the server is full, every admitted client is served, and the memory stays bounded.
async fn hundreds_of_connections_at_once(transport: Transport) {
    let server = server_for(transport, &[]).await;
    let base = baseline(&server, transport).await;
    let attempts = (0..300).map(|_| {
        let mut config = server.client_config(transport);
        config.retry.attempts = 1;
        async move {
            let client = Client::connect_with(config).await?;
            client.ping("").await.map(|_| client)
        }
    });
    let outcomes = futures_util::future::join_all(attempts).await;
    let admitted = outcomes.iter().filter(|o| o.is_ok()).count();
    assert!((1..=100).contains(&admitted), "{admitted} of 300 admitted with a limit of 100");
    for refused in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        let message = refused.to_string();
        assert!(!message.contains("certificate"), "a full server must not blame certificates: {message}");
        assert!(!matches!(refused, ClientError::Handshake { .. }), "{message}");
    }
    let clients: Vec<Client> = outcomes.into_iter().filter_map(Result::ok).collect();
    futures_util::future::join_all(clients.iter().map(Client::close)).await;
    drop(clients);
    // Closed connections give their places back, each once the server has seen it close, in its own
    // time: the event waited for is this very admission, tried until it happens (paced, so that the
    // attempts do not crowd out the closes they wait for).
    let served = async {
        loop {
            if let Ok(client) = Client::connect_with(server.client_config(transport)).await
                && client.ping("").await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), served).await.expect("a place frees up");
    assert_unharmed(&server, transport, base).await;
}

/// An HTTP request to the TCP port: a plaintext server answers a 413 that names HTTP and closes; a
/// TLS server fails the handshake (HTTP is not a ClientHello) and closes.
async fn an_http_request_to_the_tcp_port_is_refused(transport: Transport) {
    let server = server_for(transport, &[]).await;
    let base = baseline(&server, transport).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut answer))
        .await
        .expect("the server closes the connection")
        .ok();
    if transport == Transport::Tcp {
        let frames: Vec<CommandResponse> = FramedRead::new(&answer[..], FrameCodec::new(1 << 20))
            .map(|frame| frame.expect("a whole frame"))
            .collect()
            .await;
        assert_eq!(frames.len(), 1, "{answer:?}");
        assert!(frames[0].message.contains("HTTP"), "{}", frames[0].message);
    }
    assert_unharmed(&server, transport, base).await;
}

transport_tests!(hostile: quic, tls, tcp =>
    absurd_length_headers_are_refused_before_any_allocation,
    garbage_after_a_valid_frame_is_refused,
    a_client_that_never_reads_its_answers_holds_no_memory,
    hundreds_of_connections_at_once,
);

transport_tests!(http: tls, tcp => an_http_request_to_the_tcp_port_is_refused);
