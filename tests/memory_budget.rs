//! The server-wide connection memory budget against clients that each try to make the server hold as
//! much as they can: many connections with unfinished requests, answers nobody reads, subscribers that
//! never read. Each test runs a real `qkv serve` and reads its peak memory from the kernel; without the
//! budget, the same attacks would make it hold gigabytes. And what a client is told when the budget is
//! spent: a request the server cannot take in is answered 503, not executed, on every transport.

#[macro_use]
mod common;

use std::time::Duration;

use common::TestServer;
use common::process::ServerProcess;
use futures_util::StreamExt;
use prost::Message;
use qkv::client::{Client, ClientConfig, ClientError, Executed};
use qkv::memory::Charge;
use qkv::pb::{CommandRequest, CommandResponse, Value, status};
use qkv::server::ServerConfig;
use qkv::storage::Storage;
use qkv::transport::Transport;
use qkv::transport::frame::FrameCodec;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

/// Small limits, so that the attacks fill the budget quickly: 64 MiB for all connections together.
const BUDGET_MIB: u64 = 64;
const SERVER: &[&str] = &[
    "--connection-memory",
    "64MiB",
    "--memory-wait",
    "500ms",
    "--max-frame-size",
    "2MiB",
    "--max-value-size",
    "1MiB",
    "--max-request-buffer",
    "8MiB",
    "--connection-window",
    "64KiB",
    "--send-window",
    "64KiB",
    "--tcp-plaintext",
];

/// What the process holds besides what connections make it hold (allocator slack, the runtime, the
/// store's test data): measured after a warm-up, plus room for what the allocator keeps.
const SLACK_MIB: u64 = 48;

/// Calls `ping` until the server has no memory for it (it refuses the request, 503, or drops its
/// answer): the event that says the budget is spent.
async fn until_refused_for_memory(client: &Client) {
    let refused = async {
        loop {
            match client.ping("probe").await {
                Err(ClientError::AnswerDropped) => return,
                Err(e @ ClientError::Unavailable { .. }) if e.to_string().contains("memory") => return,
                _ => tokio::task::yield_now().await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), refused).await.expect("the budget fills up");
}

/// A bare QUIC connection, or `None` once the server refuses connections (its budget spent).
async fn attacker(server: &ServerProcess) -> Option<quinn::Connection> {
    let endpoint = common::quic_client_endpoint(&server.ca(), &qkv::tls::Tickets::none());
    endpoint.connect(server.addr, "localhost").expect("connect").await.ok()
}

/// Until the server serves `client` again, now that the attackers have gone.
async fn until_served(client: &Client) {
    let served = async {
        while client.ping("again").await.is_err() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), served).await.expect("served once the attack ends");
}

#[tokio::test]
async fn unfinished_requests_and_unread_answers_on_many_connections_stay_within_the_budget() {
    let server = ServerProcess::start(SERVER).await;
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    // A value of almost 1 MiB, whose every Hget is an answer as large.
    client.hset("t", "big", Value::from(vec![7u8; 1000 * 1024])).await.unwrap();
    client.ping("warm").await.unwrap();
    // Connected before the attack: connections that come during it are refused.
    let probe = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    let baseline = server.resident_mib();

    let mut held = Vec::new();
    // QUIC: 24 connections × 64 streams, each sending 64 KiB of a request that declares 2 MiB and never
    // finishing it (each connection wants its 8 MiB request buffer: 192 MiB in all)...
    for _ in 0..24 {
        let Some(connection) = attacker(&server).await else { break };
        for _ in 0..64 {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            let mut partial = (2u32 << 20).to_be_bytes().to_vec();
            partial.extend_from_slice(&[0u8; 64 * 1024]);
            tokio::spawn(async move {
                let _ = send.write_all(&partial).await;
                // Never finished: kept open until the connection goes.
                std::future::pending::<()>().await;
                drop((send, recv));
            });
        }
        held.push(connection);
    }
    // ... 24 connections × 32 Hgets of the 1 MiB value, never read (768 MiB of answers)...
    let hget = common::frame(&CommandRequest::hget("t", "big"));
    for _ in 0..24 {
        let Some(connection) = attacker(&server).await else { break };
        for _ in 0..32 {
            let (mut send, recv) = connection.open_bi().await.unwrap();
            let _ = send.write_all(&hget).await;
            let _ = send.finish();
            tokio::spawn(async move {
                std::future::pending::<()>().await;
                drop(recv);
            });
        }
        held.push(connection);
    }
    // ... and 16 TCP connections, each pipelining 3 of those Hgets and 2 MiB of requests it never ends.
    let mut tcp = Vec::new();
    for _ in 0..16 {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let mut bytes = [&hget[..], &hget[..], &hget[..]].concat();
        bytes.extend_from_slice(&(2u32 << 20).to_be_bytes());
        bytes.extend_from_slice(&vec![0u8; 2 << 20]);
        tcp.push(tokio::spawn(async move {
            let _ = stream.write_all(&bytes).await;
            std::future::pending::<()>().await;
            drop(stream);
        }));
    }

    until_refused_for_memory(&probe).await;
    assert!(attacker(&server).await.is_none(), "new connections are refused while the budget is spent");
    let grown = server.peak_mib().saturating_sub(baseline);
    assert!(
        grown <= BUDGET_MIB + SLACK_MIB,
        "the attacks grew the server by {grown} MiB; the budget is {BUDGET_MIB} MiB"
    );

    for connection in &held {
        connection.close(0u32.into(), b"done");
    }
    for task in tcp {
        task.abort();
    }
    until_served(&probe).await;
}

#[tokio::test]
async fn subscribers_that_never_read_cannot_make_the_server_hold_more_than_the_budget() {
    let server = ServerProcess::start(SERVER).await;
    let publisher = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    publisher.ping("warm").await.unwrap();
    let baseline = server.resident_mib();
    // 16 subscribers to 16 topics, none of which reads: their queues (16 MiB each) could hold 256 MiB
    // of messages between them if the messages were not charged. (Without a queue of their own, which
    // would read for them and drop what it cannot hold.)
    let mut subscribers = Vec::new();
    for topic in 0..16 {
        let config = ClientConfig { subscription_queue: None, ..server.client_config(Transport::Quic) };
        let client = Client::connect_with(config).await.unwrap();
        subscribers.push((client.subscribe(&format!("news{topic}")).await.unwrap(), client));
    }
    let message = Value::from(vec![1u8; 512 * 1024]);
    let refused = async {
        for round in 0.. {
            if let Err(e) = publisher.publish(&format!("news{}", round % 16), [message.clone()]).await {
                return e;
            }
        }
        unreachable!()
    };
    let refused = tokio::time::timeout(Duration::from_secs(60), refused).await.expect("the budget fills up");
    assert!(refused.to_string().contains("memory"), "{refused}");
    assert_eq!(refused.executed(), Executed::No, "a refused publish reached nobody");
    let grown = server.peak_mib().saturating_sub(baseline);
    assert!(grown <= BUDGET_MIB + SLACK_MIB, "the subscribers grew the server by {grown} MiB");

    drop(subscribers);
    let published = async {
        while publisher.publish("news", [Value::from("small")]).await.is_err() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), published).await.expect("publishing works again");
}

/// One QUIC connection that opens many streams and reads none of their answers holds its share of
/// memory (`--max-request-buffer`), not the whole budget: its requests beyond the share wait to run,
/// so another client is served meanwhile, and the waiting requests are answered, none refused, once
/// the connection reads. (Without the share, 64 answers of 512 KiB made at once want 32 MiB of a 24 MiB
/// budget: answers are refused for memory, which the test sees as a `connection_memory` limit hit.)
#[tokio::test]
async fn one_quic_connection_leaving_its_answers_unread_holds_its_share_not_the_budget() {
    let args = ["--connection-memory", "24MiB", "--max-frame-size", "1MiB", "--max-request-buffer", "2MiB"];
    let mut server = ServerProcess::start(&[&args[..], &["--admin", "127.0.0.1:0"]].concat()).await;
    let admin = server.admin_addr().await;
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    // Eight values of 64 KiB: an Hmget of them all is an answer of 512 KiB, in frames, made whole.
    let keys: Vec<String> = (0..8).map(|i| format!("k{i}")).collect();
    for key in &keys {
        client.hset("t", key, Value::from(vec![3u8; 64 * 1024])).await.unwrap();
    }
    let hmget = common::frame(&CommandRequest::hmget("t", keys.iter().map(String::as_str)));
    let connection = common::raw_quic(server.addr, &server.ca()).await;
    let mut unread = Vec::new();
    for _ in 0..64 {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        send.write_all(&hmget).await.unwrap();
        send.finish().unwrap();
        unread.push(recv);
    }
    // Either limit says the attack has taken hold: the share (a request waits) or the budget (an
    // answer refused).
    let hits = |exposition: &str, limit: &str| {
        common::sample(exposition, &format!("qkv_limits_hit_total{{limit=\"{limit}\"}}"))
    };
    let took_hold = async {
        loop {
            let (_, exposition) = common::admin_get(admin, "/metrics").await;
            let (share, budget) =
                (hits(&exposition, "max_request_buffer"), hits(&exposition, "connection_memory"));
            if share + budget > 0.0 {
                return budget;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let refused =
        tokio::time::timeout(Duration::from_secs(60), took_hold).await.expect("the attack takes hold");
    assert_eq!(refused, 0.0, "answers were refused for memory: one connection spent the budget");

    let values = client.hmget("t", &keys).await.unwrap();
    assert!(values.iter().all(Option::is_some), "another client is served in full");
    let answers = futures_util::future::join_all(unread.into_iter().map(common::read_responses)).await;
    for frames in &answers {
        assert!(
            frames.iter().all(|frame| frame.status == status::OK),
            "{:?}",
            frames.first().map(|f| &f.message)
        );
        let values: usize = frames.iter().map(|frame| frame.values.len()).sum();
        assert_eq!(values, keys.len(), "every value of every answer, once the connection reads");
    }
}

/// A length header alone reserves nothing: 200 streams declaring the largest frame and sending ten
/// bytes of it make the server map almost nothing (a codec that reserved the declared length would
/// map 3 GiB, which a peak-resident-memory check cannot see).
#[tokio::test]
async fn declared_frame_lengths_reserve_nothing() {
    let server = ServerProcess::start(&["--tcp-plaintext"]).await;
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    client.ping("warm").await.unwrap();
    let baseline = server.virtual_peak_mib();
    let connection = common::raw_quic(server.addr, &server.ca()).await;
    let mut streams = Vec::new();
    for _ in 0..200 {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        let mut header = (16u32 << 20).to_be_bytes().to_vec();
        header.extend_from_slice(&[0u8; 10]);
        send.write_all(&header).await.unwrap();
        streams.push((send, recv));
    }
    // The server has read every header once it answers a request sent after them all.
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(&common::frame(&CommandRequest::ping("after"))).await.unwrap();
    send.finish().unwrap();
    assert_eq!(common::read_responses(recv).await[0].status, 200);
    let grown = server.virtual_peak_mib().saturating_sub(baseline);
    assert!(grown < 512, "200 headers made the server map {grown} MiB");
}

transport_tests!(refusals: quic, tls, tcp =>
    a_request_larger_than_the_budget_is_answered_503_and_not_executed,
    a_request_is_answered_503_and_not_executed_when_other_connections_spent_the_budget,
    a_service_refusal_is_delivered_when_other_connections_spent_the_budget,
);

/// A server with a small connection memory budget (2 MiB) and a short memory wait, whose clients make
/// one attempt per call, so that a test sees the server's answer rather than a retry's.
async fn small_budget_server(transport: Transport) -> TestServer {
    TestServer::start_for_with(transport, |config: &mut ServerConfig| {
        config.connection_memory = 2 << 20;
        config.limits.connection_receive_window = 64 * 1024;
        config.limits.send_window = 64 * 1024;
        config.limits.memory_wait = Duration::from_millis(100);
        // The connections that spend the budget in the tests wait for no timeout meanwhile.
        config.limits.request_timeout = Duration::from_secs(600);
        config.limits.idle_timeout = Duration::from_secs(600);
    })
    .await
}

async fn one_attempt_client(server: &TestServer) -> Client {
    let mut config = server.client_config();
    config.retry.attempts = 1;
    Client::connect_with(config).await.expect("client connects")
}

/// The refusal a write the server had no memory for must get: 503, "not executed".
fn assert_refused_for_memory(written: Result<impl std::fmt::Debug, ClientError>) {
    let error = written.expect_err("the server has no memory for the write");
    assert!(matches!(error, ClientError::Unavailable { .. }), "{error:?}: {error}");
    assert_eq!(error.executed(), Executed::No, "{error}");
    assert!(error.to_string().contains("not executed"), "{error}");
    assert!(error.to_string().contains("memory"), "{error}");
}

/// Whether the server's store holds `table`/`key`.
async fn stored(server: &TestServer, table: &str, key: &str) -> bool {
    server.service.storage().get(table, key).await.expect("the store answers").is_some()
}

/// One request larger than the whole budget: the server holds what it can of it, waits the memory
/// wait, and answers 503 from the memory the request's own bytes gave back.
async fn a_request_larger_than_the_budget_is_answered_503_and_not_executed(transport: Transport) {
    let server = small_budget_server(transport).await;
    let client = one_attempt_client(&server).await;
    client.ping("warm").await.unwrap();

    assert_refused_for_memory(client.hset("bench", "k0", Value::from(vec![7u8; 3_000_000])).await);
    assert!(!stored(&server, "bench", "k0").await, "the refused write was executed");
}

/// A compressed frame (the course's) is inflated only into room charged first, as its gzip trailer
/// says: 3 MB of zeros, a few kilobytes compressed, on a server whose whole budget is 2 MiB, waits the
/// memory wait and is answered 503, not executed; the server never inflated it.
#[tokio::test]
async fn a_compressed_request_inflating_beyond_the_budget_is_answered_503_and_not_executed() {
    use std::io::Write;
    let server = small_budget_server(Transport::Tcp).await;
    let request = CommandRequest::hset("t", "zeros", Value::from(vec![0u8; 3_000_000])).encode_to_vec();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&request).unwrap();
    let gzip = gzip.finish().unwrap();
    assert!(gzip.len() < 64 << 10, "{} bytes compressed", gzip.len());
    let mut stream = server.raw_tcp().await;
    stream.write_all(&((gzip.len() as u32) | 1 << 31).to_be_bytes()).await.unwrap();
    stream.write_all(&gzip).await.unwrap();
    let mut answers = FramedRead::new(stream, FrameCodec::<CommandResponse>::new(1 << 20));
    let answer = answers.next().await.expect("an answer").expect("a frame");
    assert_eq!(answer.status, status::UNAVAILABLE, "{answer:?}");
    assert!(answer.message.contains("memory"), "{}", answer.message);
    assert!(!stored(&server, "t", "zeros").await, "the refused write was executed");
}

/// Many connections together spend the budget: idle QUIC connections take their fixed shares until the
/// server refuses the next one, and the test takes the rest (standing in for one more client's
/// unfinished request), so that not one byte is left. Returns what holds it spent.
async fn spend_the_budget(server: &TestServer) -> (Charge, Vec<quinn::Connection>) {
    let endpoint = common::quic_client_endpoint(&server.ca(), &qkv::tls::Tickets::none());
    let mut others = Vec::new();
    while let Ok(connection) = endpoint.connect(server.addr, "localhost").expect("connect").await {
        others.push(connection);
        assert!(others.len() < 100, "the budget admits only a few connections");
    }
    assert!(others.len() > 2, "{} connections spent the budget", others.len());
    let rest = spend_the_rest(server);
    assert_eq!(server.memory.available(), 0);
    (rest, others)
}

/// A request on a connection admitted before the budget was spent waits the memory wait and is
/// answered 503: a refusal needs no memory from the spent budget.
async fn a_request_is_answered_503_and_not_executed_when_other_connections_spent_the_budget(
    transport: Transport,
) {
    let server = small_budget_server(transport).await;
    let client = one_attempt_client(&server).await;
    client.ping("warm").await.unwrap();
    let spent = spend_the_budget(&server).await;

    // Larger than one read, so that the server must charge it before it has it whole.
    assert_refused_for_memory(client.hset("t", "k", Value::from(vec![7u8; 100_000])).await);

    assert!(!stored(&server, "t", "k").await, "the refused write was executed");
    drop(spent);
}

/// A request the service refuses (a table name over its limit: 413), small enough to arrive in one
/// read, while the budget is spent. On TCP and TLS it arrives in the read chunk the connection's fixed
/// share covers, and the service's refusal reaches the client as it is, not executed, where it once
/// closed the connection (the client could not tell whether its request had run). On QUIC a stream's
/// request is charged whole before the service sees it: 503.
async fn a_service_refusal_is_delivered_when_other_connections_spent_the_budget(transport: Transport) {
    let server = small_budget_server(transport).await;
    let client = one_attempt_client(&server).await;
    client.ping("warm").await.unwrap();
    let spent = spend_the_budget(&server).await;

    let written = client.hset(&"t".repeat(1025), "k", Value::from("v")).await;
    if transport == Transport::Quic {
        assert_refused_for_memory(written);
    } else {
        let refused = written.expect_err("a name over its limit");
        assert!(matches!(refused, ClientError::Status { status: 413, .. }), "{refused:?}: {refused}");
        assert_eq!(refused.executed(), Executed::No, "{refused}");
        assert!(refused.to_string().contains("--max-table-size"), "{refused}");
    }
    drop(spent);
}

/// Charges everything the server's budget has left.
fn spend_the_rest(server: &TestServer) -> Charge {
    loop {
        if let Some(charge) = server.memory.try_charge(server.memory.available()) {
            return charge;
        }
    }
}
