//! `qkv bench` against real servers: it loads them, counts every request, and reports what it saw,
//! for people and for programs.

#[macro_use]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::TestServer;
use common::process::ServerProcess;
use qkv::bench::floor::serve_floor;
use qkv::bench::{BenchConfig, FanoutReport, KeyDist, Progress, Workload};
use qkv::client::ClientConfig;
use qkv::pb::Value;
use qkv::pubsub::LagPolicy;
use qkv::server::TcpMode;
use qkv::transport::{Limits, Transport};
use tokio_util::sync::CancellationToken;

const VALUE_SIZE: usize = 16;

fn config(client: ClientConfig, workload: Workload) -> BenchConfig {
    BenchConfig {
        client,
        workload,
        connections: 2,
        connect_concurrency: 64,
        connections_per_socket: 1,
        inflight: 4,
        rate: None,
        duration: Duration::from_millis(300),
        warmup: Duration::from_millis(100),
        value_size: VALUE_SIZE,
        keys: 50,
        key_dist: KeyDist::Uniform,
        seed: 1,
        zero_rtt: false,
        timeline: None,
    }
}

async fn a_closed_loop_counts_every_answer(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let report =
        qkv::bench::run(&config(server.client_config(), Workload::Hget), Progress::new()).await.unwrap();
    assert!(report.requests > 0);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.latency_us.len(), report.requests, "every answered request has a latency");
    let json = report.to_json(&config(server.client_config(), Workload::Hget));
    assert_eq!((json.transport.as_str(), json.connections, json.inflight), (transport.name(), 2, 4));
    assert!(json.latency_us.p50 <= json.latency_us.p99 && json.latency_us.p99 <= json.latency_us.max);
}

async fn an_open_loop_sends_exactly_its_schedule(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let mut config = config(server.client_config(), Workload::Ping);
    config.rate = Some(1000.0); // 500/s on each of the 2 connections, 300 ms measured
    // Room for every request due in a long stall of a busy machine: none waits for a free slot.
    config.inflight = 1000;
    let report = qkv::bench::run(&config, Progress::new()).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    // However late the loop runs, it sends every request due in the 300 ms, and no more.
    assert_eq!(report.requests, 300, "requests at 1000/s for 300 ms");
}

transport_tests!(load: quic, tls, tcp => a_closed_loop_counts_every_answer, an_open_loop_sends_exactly_its_schedule);

/// The fan-out workload (docs/bench/PUBSUB.md, SCALE.md): every reading subscriber receives every
/// message published in the measured period, whatever a subscriber that never reads does. A publish
/// counts when it is sent in the period, a delivery when the message it carries was: they differ only
/// by the publishes in flight at the period's two ends. One publish at a time: a publish is answered
/// once its messages are queued, and faster publishers could fill a busy machine's reader's queue
/// (then it misses messages, as it should).
async fn the_fanout_workload_delivers_every_publish_to_every_reader(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let (subscribers, stalled) = (3, 1);
    let mut config = config(server.client_config(), Workload::Fanout { subscribers, stalled });
    (config.connections, config.inflight) = (1, 1);
    let report = qkv::bench::run(&config, Progress::new()).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    let fanout = report.fanout.expect("a fan-out report");
    assert_eq!((fanout.subscribers, fanout.stalled, fanout.missed), (subscribers, stalled, 0), "{fanout:?}");
    assert!(fanout.published > 0, "{fanout:?}");
    let in_flight = (config.connections * config.inflight) as u64;
    let expected = fanout.published * subscribers as u64;
    let edges = in_flight * subscribers as u64;
    let delivered = report.requests as u64;
    assert!(
        delivered + edges >= expected && delivered <= expected + edges,
        "{delivered} deliveries for {} publishes to {subscribers} readers",
        fanout.published
    );
}

/// A fan-out run of one reading subscriber and one stalled one, against a server with room for two
/// messages per subscriber and `policy` for those that fall behind; the number of publishes that can be
/// on the measured period's edge, with the fan-out report.
async fn stalled_fanout(transport: Transport, policy: LagPolicy) -> (u64, FanoutReport) {
    let server = TestServer::start_for_with(transport, |config| {
        config.service.subscriber_queue = 2;
        config.service.lag_policy = policy;
        config.limits.send_window = 64 * 1024;
    })
    .await;
    let mut config = config(server.client_config(), Workload::Fanout { subscribers: 1, stalled: 1 });
    (config.connections, config.inflight, config.value_size) = (1, 1, 64 * 1024);
    config.duration = Duration::from_secs(1);
    let report = qkv::bench::run(&config, Progress::new()).await.unwrap();
    ((config.connections * config.inflight) as u64, report.fanout.expect("a fan-out report"))
}

/// A stalled subscriber stalls at the server, on every transport: once its transport's buffers and
/// its queue on the server are full, publishes find it lagging (over QUIC, the client's own queue used
/// to read it all as it came, and the server saw no stall at all).
async fn a_stalled_subscriber_lags_at_the_server(transport: Transport) {
    let (edge, fanout) = stalled_fanout(transport, LagPolicy::Skip).await;
    assert!(fanout.lagging > 0, "{fanout:?}");
    // A publish on the window's edge may be counted on one side only (the one in flight).
    assert!(fanout.lagging <= fanout.published + edge, "only the stalled one lags: {fanout:?}");
    assert_eq!(fanout.dropped, 0, "lagging, not dropped (--lag-policy skip): {fanout:?}");
}

/// Under `--lag-policy drop` the server ends a stalled subscriber once its queue is full, in the
/// warm-up already, after which nothing lags: the report counts it (it said nothing was lost).
async fn a_stalled_subscriber_the_server_drops_is_counted(transport: Transport) {
    let (_, fanout) = stalled_fanout(transport, LagPolicy::Drop).await;
    assert_eq!(fanout.dropped, 1, "{fanout:?}");
}

transport_tests!(fanout: quic, tls, tcp =>
    the_fanout_workload_delivers_every_publish_to_every_reader,
    a_stalled_subscriber_lags_at_the_server,
    a_stalled_subscriber_the_server_drops_is_counted,
);

/// The connect workload opens a connection per request; with --zero-rtt each resumes the session of
/// one before it (0-RTT over QUIC), without it none does.
async fn the_connect_workload_resumes_only_when_asked(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let mut config = config(server.client_config(), Workload::Connect);
    // Long enough for a worker's second connection, which can resume its first's session, even on a
    // busy machine.
    config.duration = Duration::from_secs(1);
    for zero_rtt in [false, true] {
        config.zero_rtt = zero_rtt;
        let report = qkv::bench::run(&config, Progress::new()).await.unwrap();
        assert_eq!(report.errors, 0, "{:?}", report.first_error);
        let stats = report.client_stats;
        assert!(stats.connections >= report.requests && report.requests > 0, "{stats:?}");
        let resumed = match transport {
            Transport::Quic => (stats.zero_rtt_accepted, stats.resumed),
            _ => (stats.resumed, stats.zero_rtt_accepted),
        };
        match zero_rtt {
            // A connection may start before the tickets of earlier ones have arrived (a server sends
            // them after the handshake, so after a 0-RTT answer), the more so on a busy machine: some,
            // not all, resume. What share does is a benchmark's figure, not a test's.
            true => assert!(resumed.0 > 0 && resumed.1 == 0, "{stats:?}"),
            false => assert_eq!(resumed, (0, 0), "{stats:?}"),
        }
        assert_eq!(stats.zero_rtt_rejected, 0, "{stats:?}");
    }
}

transport_tests!(connect: quic, tls => the_connect_workload_resumes_only_when_asked);

/// A server that forgets its sessions (a certificate reload, as a restart would) refuses the 0-RTT
/// requests of the tickets it issued: they were not executed, and each is sent again in its connection,
/// as a client does, counted as rejected, not as an error.
#[tokio::test]
async fn the_connect_workload_sends_refused_early_data_again() {
    let mut server = ServerProcess::start(&[]).await;
    let mut config = config(server.client_config(Transport::Quic), Workload::Connect);
    config.zero_rtt = true;
    config.warmup = Duration::ZERO;
    config.duration = Duration::from_secs(5);
    // Paced, so that each client holds the ticket of its last connection between requests (in a closed
    // loop the next connection may start before it arrives, and resume nothing): at the reload, every
    // client's ticket is one the server forgets, unless its connection is being set up just then.
    (config.connections, config.inflight, config.rate) = (4, 1, Some(40.0));
    let progress = Progress::new();
    let forgetting = async {
        assert!(progress.completed_at_least(20).await, "the run began");
        server.hang_up();
        server.log_line(&["SIGHUP: reloaded the certificates"]).await;
        let after = progress.completed();
        assert!(progress.completed_at_least(after + 40).await, "the run went on");
    };
    let (report, ()) = tokio::join!(qkv::bench::run(&config, progress.clone()), forgetting);
    let report = report.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert!(report.client_stats.zero_rtt_rejected > 0, "{:?}", report.client_stats);
    server.kill().await;
}

#[tokio::test]
async fn a_run_keeps_counting_when_the_client_address_changes() {
    let server = TestServer::start().await;
    let relay = common::relay::UdpRelay::start(server.addr).await;
    let client = ClientConfig { addr: relay.addr.to_string(), ..server.client_config() };
    let mut config = config(client, Workload::Hget);
    config.connections = 1; // the relay serves one client
    config.warmup = Duration::ZERO;
    config.duration = Duration::from_secs(1);
    config.timeline = Some(Duration::from_millis(100));
    let progress = Progress::new();
    // Each move once requests flow, and answers must follow it: the run carries on across both. (How
    // long a move interrupts service is the network lab's measurement, not this test's.)
    let rebinding = async {
        for (moves, answered) in [(0, 20), (1, 40)] {
            assert!(progress.completed_at_least(answered).await, "the run ended after {moves} moves");
            relay.rebind_upstream();
        }
        progress.completed_at_least(60).await
    };
    let (report, answered_after_the_moves) =
        tokio::join!(qkv::bench::run(&config, progress.clone()), rebinding);
    let report = report.unwrap();
    assert!(
        answered_after_the_moves,
        "{} requests completed, 20 after the last move were due",
        progress.completed()
    );
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.client_stats.connections, 1, "the connection migrated: {:?}", report.client_stats);
    let timeline = report.timeline.unwrap();
    assert_eq!(timeline.ok.len(), 10, "{timeline:?}");
    // Requests answered after the measured period (while draining) are counted but outside it.
    let in_period: u64 = timeline.ok.iter().sum();
    assert!(in_period <= report.requests && in_period + 4 >= report.requests, "{timeline:?}");
}

/// Connections opened concurrently, several on each QUIC socket, all counted and all closed.
async fn connections_can_share_sockets(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let mut config = config(server.client_config(), Workload::Ping);
    (config.connections, config.connect_concurrency, config.connections_per_socket) = (10, 4, 3);
    let report = qkv::bench::run(&config, Progress::new()).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert_eq!(report.client_stats.connections, 10, "{:?}", report.client_stats);
    assert!(report.connection_times.is_some(), "the time to open and close is reported");
}

transport_tests!(sharing: quic, tls => connections_can_share_sockets);

/// How many of the bench table's keys hold a value the run wrote (not the preloaded one).
async fn keys_written(server: &TestServer) -> usize {
    let written = Value::from(vec![b'w'; VALUE_SIZE]);
    let pairs = server.client().await.hgetall("bench").await.unwrap();
    assert_eq!(pairs.len(), 50, "every key was preloaded");
    pairs.iter().filter(|(_, versioned)| versioned.value == written).count()
}

#[tokio::test]
async fn the_read_ratio_decides_between_reads_and_writes() {
    let server = TestServer::start().await;
    let mixed = |read_ratio| Workload::Mixed { read_ratio };

    qkv::bench::run(&config(server.client_config(), mixed(1.0)), Progress::new()).await.unwrap();
    assert_eq!(keys_written(&server).await, 0, "a read-only mix wrote");

    let report = qkv::bench::run(&config(server.client_config(), mixed(0.0)), Progress::new()).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    assert!(keys_written(&server).await > 25, "a write-only mix left preloaded values");
}

/// A floor server (bare echo) on an ephemeral port, stopped when the token is cancelled.
async fn start_floor(tcp: TcpMode) -> (SocketAddr, tempfile::TempDir, CancellationToken) {
    let certs = tempfile::tempdir().unwrap();
    let shutdown = CancellationToken::new();
    let (bound, addr) = tokio::sync::oneshot::channel();
    let dir = certs.path().to_owned();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        serve_floor(
            "127.0.0.1:0".parse().unwrap(),
            &dir,
            tcp,
            Limits::default(),
            &Default::default(),
            stop,
            bound,
        )
        .await
    });
    (addr.await.unwrap(), certs, shutdown)
}

async fn the_floor_echoes_without_kv_work(transport: Transport) {
    let tcp = if transport == Transport::Tcp { TcpMode::Plaintext } else { TcpMode::Tls };
    let (addr, certs, shutdown) = start_floor(tcp).await;
    let mut client = ClientConfig::new(addr.to_string(), certs.path().join("ca.pem"));
    client.transport = transport;
    let config = config(client, Workload::Echo);
    let report = qkv::bench::run(&config, Progress::new()).await.unwrap();
    assert!(report.requests > 0);
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    // Its connections are counted as a qkv client's are, and over QUIC what they sent.
    let stats = report.client_stats;
    assert_eq!(stats.connections, config.connections as u64, "{stats:?}");
    assert_eq!(stats.packets_sent > 0, transport == Transport::Quic, "{stats:?}");
    shutdown.cancel();
}

transport_tests!(floor: quic, tls, tcp => the_floor_echoes_without_kv_work);

async fn qkv_bench(server: &TestServer, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["bench", "--addr", &server.addr.to_string(), "--ca"])
        .arg(server.ca())
        .args(["--duration", "300ms", "--warmup", "100ms"])
        // Few keys, for the workloads that read keys (the bench refuses a flag the echo one would ignore).
        .args(if args.contains(&"echo") { &[][..] } else { &["--keys", "20"][..] })
        .args(args)
        .output()
        .await
        .unwrap()
}

/// A bench that cannot open all its connections (the server is at its limit) fails, and closes the
/// ones it opened: the server is told at once, and a client after it is served, rather than refused
/// until those time out (30 s here).
#[tokio::test]
async fn a_bench_refused_a_connection_closes_the_ones_it_opened() {
    let server = TestServer::start_with(|config| config.limits.max_connections = 3).await;
    // Full handshakes: a resumed (0-RTT) connection is open to the client before the server admits it.
    let refused =
        qkv_bench(&server, &["--connections", "6", "--connect-concurrency", "1", "--no-0rtt"]).await;
    assert!(!refused.status.success(), "the server admits only 3");
    let mut config = server.client_config();
    config.retry.attempts = 1;
    let client = qkv::Client::connect_with(config).await.expect("a place under the limit");
    tokio::time::timeout(Duration::from_secs(10), client.ping(Vec::new())).await.expect("served").unwrap();
}

#[tokio::test]
async fn json_output_is_exactly_one_object_with_every_documented_field() {
    let server = TestServer::start().await;
    let output = qkv_bench(&server, &["--json", "--connections", "2", "--inflight", "3"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for field in [
        "transport",
        "workload",
        "connections",
        "inflight",
        "value_size",
        "duration_s",
        "requests",
        "errors",
        "throughput_rps",
        "longest_gap_ms",
        "client_stats",
        "open_s",
        "close_s",
    ] {
        assert!(json.get(field).is_some(), "no {field} in {json}");
    }
    for quantile in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_us"][quantile].is_u64(), "no latency_us.{quantile} in {json}");
    }
    assert_eq!((json["transport"].as_str(), json["workload"].as_str()), (Some("quic"), Some("hget")));
    assert_eq!((json["connections"].as_u64(), json["inflight"].as_u64()), (Some(2), Some(3)));
    assert!(json["requests"].as_u64().unwrap() > 0 && json["errors"] == 0);
}

/// The floor's echo workload pointed at a qkv server: the connection works, but every answer would be
/// a qkv error response instead of the echo. Found by one echo before the run, and said so, rather
/// than a run that fails every request as fast as it can send them (69,568 errors in a second).
#[tokio::test]
async fn an_echo_run_against_a_server_that_is_not_a_floor_stops_before_it_starts() {
    let server = TestServer::start().await;
    let output = qkv_bench(&server, &["--json", "--workload", "echo"]).await;
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "no run, no report");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--workload echo needs a floor server (qkv floor)"), "{stderr}");
}
