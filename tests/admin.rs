//! The admin listener (`--admin`): what /metrics counts, over every transport, and what /healthz and
//! /readyz say while the server serves, while it shuts down, and while its Redis is away.
//!
//! The metrics recorder belongs to the process, so every assertion on a counter of a server in this
//! process is in one test (`metrics_count_what_each_transport_served`); the disk store's metrics are
//! read from servers of their own (`ServerProcess`).

mod common;

use std::time::Duration;

use common::process::ServerProcess;
use common::{TestServer, admin_get as get, sample};
use qkv::client::{Client, ClientConfig, ClientError, RetryPolicy};
use qkv::server::{Server, ServerConfig};
use qkv::storage::{RedisConfig, RedisStore};
use qkv::transport::Transport;
use qkv_testkit::RedisNode;

fn admin_config(config: &mut ServerConfig) {
    config.admin = Some("127.0.0.1:0".parse().expect("address"));
    config.service.items.max_value_len = 1024;
}

/// The `qkv_requests_total` series of `command` answered `status` on `transport`.
fn requests_series(command: &str, transport: &str, status: &str) -> String {
    format!("qkv_requests_total{{command=\"{command}\",transport=\"{transport}\",status=\"{status}\"}}")
}

#[tokio::test]
async fn metrics_count_what_each_transport_served() {
    for transport in Transport::ALL {
        let server = TestServer::start_for_with(transport, admin_config).await;
        let admin = server.admin.expect("an admin listener");
        let name = transport.name();
        // REST and gRPC share the web listener's connections, counted as "http"; their requests are
        // counted by door.
        let connections = if transport.is_web() { Transport::Http.name() } else { name };
        let before = get(admin, "/metrics").await.1;

        let client = server.client().await;
        for i in 0..3 {
            client.hset("t", &format!("k{i}"), "v").await.expect("hset");
        }
        assert!(client.hget("t", "missing").await.expect("hget").is_none());
        match client.hset("t", "big", "x".repeat(2000)).await {
            Err(ClientError::Status { status: 413, .. }) => {}
            other => panic!("{transport}: a value over --max-value-size is refused, got {other:?}"),
        }
        drop(client);
        // QUIC's bytes are counted from its statistics when the connection ends: wait for that.
        let open = format!("qkv_connections_open{{transport=\"{connections}\"}}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while sample(&get(admin, "/metrics").await.1, &open) > 0.0 {
            assert!(tokio::time::Instant::now() < deadline, "{transport}: the connection did not end");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (status, after) = get(admin, "/metrics").await;
        assert_eq!(status, 200);
        let delta = |series: &str| sample(&after, series) - sample(&before, series);
        let requests = |command: &str, status: &str| delta(&requests_series(command, name, status));
        assert_eq!(requests("Hset", "200"), 3.0, "{transport}:\n{after}");
        assert_eq!(requests("Hget", "404"), 1.0, "{transport}");
        assert_eq!(requests("Hset", "413"), 1.0, "{transport}");
        assert_eq!(
            delta(&format!("qkv_request_duration_seconds_count{{command=\"Hset\",transport=\"{name}\"}}")),
            4.0,
            "{transport}: every answered Hset is timed"
        );
        assert_eq!(delta("qkv_limits_hit_total{limit=\"max_value_size\"}"), 1.0, "{transport}");
        assert!(
            delta(&format!("qkv_connections_accepted_total{{transport=\"{connections}\"}}")) >= 1.0,
            "{transport}"
        );
        assert!(
            delta(&format!("qkv_bytes_received_total{{transport=\"{connections}\"}}")) > 0.0,
            "{transport}"
        );
        assert!(delta(&format!("qkv_bytes_sent_total{{transport=\"{connections}\"}}")) > 0.0, "{transport}");
        if transport != Transport::Tcp {
            assert!(
                delta(&format!("qkv_handshakes_total{{transport=\"{connections}\",result=\"completed\"}}"))
                    >= 1.0,
                "{transport}: {after}"
            );
        }
        assert_eq!(sample(&after, "qkv_storage_keys"), 3.0, "{transport}: this server's store");
        assert!(sample(&after, "qkv_storage_memory_used_bytes") > 0.0);
        assert!(sample(&after, "qkv_connection_memory_budget_bytes") > 0.0);
        if transport == Transport::Http {
            // REST requests count as what they are: a write whose precondition fails on the key's
            // current version (a list of ETags, `*`) is the write's 409 (HTTP's 412), not the 200 of
            // the read that decided it; a HEAD of a listing, whose body is never sent, is no answer
            // left unread (`reply_timeout`).
            let web = server.web.expect("a web listener");
            let url = |path: &str| format!("https://localhost:{}{path}", web.port());
            let ca = server.ca().to_string_lossy().into_owned();
            let curl = |args: Vec<String>| {
                let ca = ca.clone();
                async move {
                    let output = tokio::process::Command::new("curl")
                        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", &ca])
                        .args(args)
                        .output()
                        .await
                        .expect("curl runs");
                    String::from_utf8_lossy(&output.stdout).into_owned()
                }
            };
            let args = |list: &[&str]| list.iter().map(|a| a.to_string()).collect::<Vec<_>>();
            let k0 = url("/v1/tables/t/keys/k0");
            let listing = url("/v1/tables/t");
            let missing = url("/v1/tables/t/keys/missing");
            let if_match = "if-match: \"1\", \"2\"";
            let text = "content-type: text/plain";
            assert_eq!(
                curl(args(&["-X", "PUT", "-H", if_match, "-H", text, "--data", "w", &k0])).await,
                "412"
            );
            assert_eq!(curl(args(&["-X", "DELETE", "-H", "if-match: *", &missing])).await, "412");
            assert_eq!(curl(args(&["-I", &listing])).await, "200");
            assert_eq!(curl(args(&[&listing])).await, "200");
            let rest = get(admin, "/metrics").await.1;
            let delta = |series: &str| sample(&rest, series) - sample(&after, series);
            let requests = |command: &str, status: &str| delta(&requests_series(command, name, status));
            assert_eq!(requests("Hset", "409"), 1.0, "{rest}");
            assert_eq!(requests("Hdel", "409"), 1.0, "{rest}");
            assert_eq!(delta("qkv_limits_hit_total{limit=\"reply_timeout\"}"), 0.0, "{rest}");
        }
        if transport == Transport::Tcp {
            // A frame that is no request: refused with 400 and the connection closed, before any
            // command could be read, and counted as malformed.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
            raw.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).await.unwrap();
            let mut answer = Vec::new();
            raw.read_to_end(&mut answer).await.unwrap();
            assert!(!answer.is_empty(), "a 400 comes before the close");
            let garbage = get(admin, "/metrics").await.1;
            assert_eq!(
                sample(&garbage, "qkv_malformed_requests_total")
                    - sample(&after, "qkv_malformed_requests_total"),
                1.0
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn health_is_ok_and_readiness_ends_when_shutdown_begins() {
    let mut server = TestServer::start_with(|config| {
        admin_config(config);
        // Long enough that the shutdown below waits for the unfinished request, not for the clock.
        config.shutdown_grace = Duration::from_secs(60);
    })
    .await;
    let admin = server.admin.expect("an admin listener");
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));

    // A request stream left open: shutdown waits for it, with the admin listener still up.
    let connection = server.raw_connection().await;
    let (mut send, _recv) = connection.open_bi().await.expect("a stream");
    send.write_all(&[0, 0]).await.expect("half a frame header");
    server.begin_stop();
    // The server task sees the stop when it next runs: wait for readiness to end (it must, while the
    // unfinished request holds the shutdown open).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = get(admin, "/readyz").await;
        if status != 200 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::task::yield_now().await;
    };
    assert_eq!((status, body.as_str()), (503, "not ready: shutting down\n"));
    assert_eq!(get(admin, "/healthz").await.0, 200, "alive while it drains");
    drop(send);
    connection.close(0u32.into(), b"done");
    server.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_redis_backend() {
    let mut redis = RedisNode::start(&[]).expect("redis-server starts");
    let config = RedisConfig {
        urls: vec![redis.url()],
        prefix: "qkv-admin-test:".into(),
        response_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    let certs = tempfile::tempdir().expect("temporary directory");
    let server_config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        certs_dir: certs.path().to_owned(),
        admin: Some("127.0.0.1:0".parse().expect("address")),
        ..ServerConfig::default()
    };
    let server = Server::bind(server_config, RedisStore::start(config)).expect("binds");
    let admin = server.admin_addr().expect("an admin listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let readiness = |want: u16| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, body) = get(admin, "/readyz").await;
            if status == want {
                return body;
            }
            assert!(tokio::time::Instant::now() < deadline, "/readyz stayed {status}: {body}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    readiness(200).await;
    redis.kill();
    let body = readiness(503).await;
    assert!(body.starts_with("not ready: storage: "), "{body}");
    assert_eq!(get(admin, "/healthz").await.0, 200, "the process is alive without its Redis");
    redis.restart().expect("redis-server starts again");
    readiness(200).await;

    let _ = stop.send(());
    serving.await.expect("the server stops");
}

/// A gateway that has never reached its Redis (wrong seeds, Redis down when it started) answers 503,
/// and counts each of those round trips as `unavailable` in `qkv_backend_requests_total`, so that the
/// alert on that metric (docs/OPERATIONS.md) fires for it too. (Its own process: the counters of the
/// in-process servers here belong to the test process.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_never_reached_redis_counts_its_requests_as_unavailable() {
    let nothing_there = format!("redis://127.0.0.1:{}", qkv_testkit::free_port().expect("a free port"));
    let mut gateway =
        ServerProcess::start(&["--store", "redis", "--redis", &nothing_there, "--admin", "127.0.0.1:0"])
            .await;
    let admin = gateway.admin_addr().await;
    let config = ClientConfig {
        retry: RetryPolicy { attempts: 1, ..Default::default() },
        ..gateway.client_config(Transport::Quic)
    };
    let client = Client::connect_with(config).await.expect("connects to the gateway");
    let error = client.hget("t", "k").await.expect_err("no Redis to read from");
    assert!(matches!(error, ClientError::Unavailable { .. }), "{error}");

    let (status, metrics) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&metrics, "qkv_ready"), 0.0, "{metrics}");
    let unavailable = r#"qkv_backend_requests_total{backend="redis",result="unavailable"}"#;
    assert!(sample(&metrics, unavailable) >= 1.0, "the 503 is counted:\n{metrics}");
}

/// The admin listener answers from before the store is open, on the socket the server then takes
/// over: `/healthz` 200 (a liveness probe must not restart a server that is recovering), `/readyz`
/// 503 saying what the server is doing, and once the server runs, its own answers.
#[tokio::test]
async fn the_admin_listener_answers_while_the_store_opens_and_the_server_takes_it_over() {
    let certs = tempfile::tempdir().expect("temporary directory");
    let config = ServerConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        certs_dir: certs.path().to_owned(),
        admin: Some("127.0.0.1:0".parse().expect("address")),
        ..ServerConfig::default()
    };
    let starting = qkv::server::start_admin(&config, "opening the data directory /nowhere".into())
        .expect("the admin listener binds")
        .expect("an admin listener");
    let admin = starting.local_addr().expect("its address");
    // The store is not open: nothing but the admin listener exists yet.
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        get(admin, "/readyz").await,
        (503, "not ready: recovering: opening the data directory /nowhere\n".into())
    );
    assert_eq!(sample(&get(admin, "/metrics").await.1, "qkv_ready"), 0.0);

    let server = Server::bind_with_admin(config, qkv::storage::MemoryStore::new(), Some(starting))
        .expect("server binds");
    assert_eq!(server.admin_addr(), Some(admin));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    // Taken over when the server runs, which this task does not wait for: until then the starting
    // listener answers, and a probe never finds the port closed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = get(admin, "/readyz").await;
        if status == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(tokio::time::Instant::now() < deadline, "the server did not take the listener over");
        tokio::task::yield_now().await;
    }
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()));
    let _ = stop.send(());
    serving.await.expect("the server stops");
}

/// `qkv serve --store disk` with a log that takes a while to replay: `/healthz` answers 200 before the
/// store is open (its `/readyz` says it is recovering), so that a liveness probe does not restart
/// it in a loop; then it serves as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_a_disk_store_recovers() {
    use qkv::storage::{DiskConfig, DiskStore, Durability, Storage};
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("data");
    {
        // A real log: 600,000 records, which take the server a while to replay.
        let store = DiskStore::open(
            &data,
            DiskConfig::new(Durability::Relaxed { flush_interval: Duration::from_millis(10) }),
        )
        .expect("store opens");
        for batch in 0..600 {
            let pairs = (0..1000i64).map(|i| (format!("k{batch}-{i}"), qkv::pb::Value::from(i))).collect();
            store.set_many("t", pairs).await.expect("written");
        }
        let closed = store.closed();
        drop(store);
        closed.wait().await.expect("the store closes with every write durable");
    }
    let data = data.to_str().expect("a UTF-8 path");
    let args = ["--store", "disk", "--data-dir", data, "--admin", "127.0.0.1:0"];
    let mut server = common::process::ServerProcess::launch(&args, &[]);
    let admin = server.admin_addr().await;
    // The event that shows it, whatever the speed of this machine: the admin listener served before
    // the store said it had recovered.
    assert!(
        !server.startup_log.iter().any(|line| line.contains("data recovered")),
        "the admin listener was bound only after recovery: {:#?}",
        server.startup_log
    );
    assert_eq!(get(admin, "/healthz").await, (200, "ok\n".into()), "alive while it recovers");
    // Most likely still recovering (a 600,000-record log); if it is done already, ready.
    let (status, body) = get(admin, "/readyz").await;
    if status != 200 {
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("not ready: recovering: opening the data directory"), "{body}");
    }

    server.wait_until_serving(&args).await;
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".into()));
    let client = qkv::Client::connect_with(server.client_config(Transport::Quic)).await.expect("connects");
    assert!(client.hget("t", "k599-999").await.expect("hget").is_some(), "the data was recovered");
    client.close().await;
    server.terminate();
    let (exited, _) = server.exit().await;
    assert!(exited.success(), "{exited:?}");
}

/// `qkv serve` arguments for a disk store in `data` that takes a snapshot every 8 KiB of log, with an
/// admin listener.
fn small_snapshots(data: &str) -> [&str; 8] {
    ["--store", "disk", "--data-dir", data, "--snapshot-log-size", "8KiB", "--admin", "127.0.0.1:0"]
}

const WRITTEN: &str = "qkv_disk_snapshots_total{result=\"written\"}";
const FAILED: &str = "qkv_disk_snapshots_total{result=\"failed\"}";

/// Writes 100-byte values to table `t` (keys `k{first}` on) until the admin listener's `series` is at
/// least 1; how many it wrote. 8 KiB of log make a snapshot due: a few hundred writes at most,
/// whatever the record's framing.
async fn write_until(client: &Client, admin: std::net::SocketAddr, series: &str, first: usize) -> usize {
    let value = "v".repeat(100);
    let mut writes = 0;
    while sample(&get(admin, "/metrics").await.1, series) < 1.0 {
        assert!(writes < 2000, "no {series} after {writes} writes of 100 bytes");
        for _ in 0..20 {
            client.hset("t", &format!("k{}", first + writes), value.as_str()).await.expect("hset");
            writes += 1;
        }
    }
    writes
}

/// An operator follows the disk store in /metrics: its log grows with the writes, a snapshot folds it
/// in (counted, with its size and time, and the log starts again), a restart gives its recovery's time
/// and the snapshot it loaded, and a store broken under the server (its data directory removed) is
/// unhealthy there as in /healthz.
#[tokio::test]
async fn metrics_follow_the_disk_stores_log_snapshots_and_health() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().expect("a UTF-8 path");
    let args = small_snapshots(data);
    let mut server = ServerProcess::start(&args).await;
    let admin = server.admin_addr().await;
    let scrape = |series: &'static str| async move { sample(&get(admin, "/metrics").await.1, series) };
    assert_eq!(scrape("qkv_disk_log_bytes").await, 0.0, "a new store's log is empty");
    assert_eq!(scrape(WRITTEN).await, 0.0);
    assert_eq!(scrape("qkv_healthy").await, 1.0);

    let client = Client::connect_with(server.client_config(Transport::Quic)).await.expect("connects");
    let value = "v".repeat(100);
    client.hset("t", "k0", value.as_str()).await.expect("hset");
    assert!(scrape("qkv_disk_log_bytes").await > 100.0, "the log holds the write");
    let writes = 1 + write_until(&client, admin, WRITTEN, 1).await;
    // A commit after the snapshot was written takes it in (the log's figure drops to what came since).
    client.hset("t", "after-snapshot", value.as_str()).await.expect("hset");
    let metrics = get(admin, "/metrics").await.1;
    assert!(sample(&metrics, "qkv_disk_snapshot_bytes") > 0.0, "{metrics}");
    assert!(sample(&metrics, "qkv_disk_snapshot_duration_seconds") > 0.0, "{metrics}");
    assert_eq!(sample(&metrics, FAILED), 0.0, "{metrics}");
    let log = sample(&metrics, "qkv_disk_log_bytes");
    assert!(
        log < 100.0 * writes as f64,
        "the log started again at the snapshot: {log} bytes after {writes} writes"
    );

    client.hset("t", "after", value.as_str()).await.expect("hset");
    client.close().await;
    server.terminate();
    let (exited, _) = server.exit().await;
    assert!(exited.success(), "{exited:?}");
    let mut server = ServerProcess::start(&args).await;
    let admin = server.admin_addr().await;
    let metrics = get(admin, "/metrics").await.1;
    assert!(sample(&metrics, "qkv_disk_recovery_duration_seconds") > 0.0, "{metrics}");
    assert!(sample(&metrics, "qkv_disk_snapshot_bytes") > 0.0, "the snapshot loaded: {metrics}");
    assert!(sample(&metrics, "qkv_disk_log_bytes") > 100.0, "the log after it, replayed: {metrics}");

    std::fs::remove_dir_all(&data_dir).expect("data directory removed");
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.expect("connects");
    client.hset("t", "lost", value.as_str()).await.expect_err("a store without its files fails the write");
    assert_eq!(get(admin, "/healthz").await.0, 503);
    assert_eq!(
        get(admin, "/metrics").await.1.lines().find(|l| l.starts_with("qkv_healthy ")),
        Some("qkv_healthy 0")
    );
    client.close().await;
}

/// A snapshot that cannot be written is counted as failed in /metrics, and the store goes on serving
/// (the log keeps everything; /healthz and `qkv_healthy` stay as they were). Here the snapshot's
/// partial file cannot be created: a directory has its name.
#[tokio::test]
async fn a_failed_snapshot_is_counted_and_the_store_goes_on() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data_dir = dir.path().join("data");
    let data = data_dir.to_str().expect("a UTF-8 path");
    let args = small_snapshots(data);
    let mut server = ServerProcess::start(&args).await;
    let admin = server.admin_addr().await;
    // A new store writes segment 1; the first snapshot is of generation 2.
    std::fs::create_dir(data_dir.join("qkv-snapshot.00000002.tmp")).expect("directory in the way");
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.expect("connects");
    let value = "v".repeat(100);
    let writes = write_until(&client, admin, FAILED, 0).await;
    client.hset("t", "after", value.as_str()).await.expect("the store goes on after a failed snapshot");
    assert_eq!(client.hget("t", "k0").await.expect("hget").map(|v| v.value), Some(value.into()));
    let metrics = get(admin, "/metrics").await.1;
    // The log a restart would replay is all of it still: the failed snapshot compacted nothing, and
    // the next try is due as soon as its retry time comes.
    let log = sample(&metrics, "qkv_disk_log_bytes");
    assert!(log > 100.0 * writes as f64, "{log} bytes of log after {writes} writes: {metrics}");
    assert_eq!(sample(&metrics, WRITTEN), 0.0, "{metrics}");
    assert_eq!(sample(&metrics, "qkv_healthy"), 1.0, "{metrics}");
    client.close().await;
}

/// A WebSocket session whose client stops reading is closed after the reply timeout and counted as
/// a `reply_timeout` hit, as a TCP connection's or an HTTP one's is. (Its stall times out on the
/// socket beneath the WebSocket, after the HTTP/1.1 connection it was upgraded from has ended.)
#[tokio::test]
async fn a_websocket_session_that_stops_reading_is_counted_as_a_reply_timeout() {
    use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
    let args =
        ["--web", "127.0.0.1:0", "--web-plaintext", "--reply-timeout", "500ms", "--admin", "127.0.0.1:0"];
    let mut server = ServerProcess::start(&args).await;
    let (admin, web) = (server.admin_addr().await, server.web_addr().await);
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.expect("connects");
    client.hset("t", "big", vec![7u8; 1 << 20]).await.expect("hset");
    client.close().await;
    // A client that reads nothing, with a small receive buffer: 8 MiB of answers fill what the
    // sockets hold.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    let stream = socket.connect(web).await.expect("connects");
    let request = format!("ws://{web}/ws").into_client_request().expect("request");
    let (mut websocket, _) = tokio_tungstenite::client_async(request, stream).await.expect("WebSocket");
    let hget = common::frame(&qkv::pb::CommandRequest::hget("t", "big"));
    for _ in 0..8 {
        futures_util::SinkExt::send(&mut websocket, Message::Binary(hget.clone())).await.expect("sent");
    }
    let timeouts = || async move {
        sample(&get(admin, "/metrics").await.1, "qkv_limits_hit_total{limit=\"reply_timeout\"}")
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while timeouts().await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "the unread WebSocket was not counted in 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(timeouts().await, 1.0, "counted once");
    drop(websocket);
}

/// The admin listener serves at most 64 connections at once: the next is closed as soon as it is
/// accepted, so that whatever reaches the port cannot take the file descriptors the data ports need;
/// once the holders go, it serves again.
#[tokio::test]
async fn the_admin_listener_holds_a_bounded_number_of_connections() {
    use tokio::io::AsyncReadExt;
    let server = TestServer::start_with(admin_config).await;
    let admin = server.admin.expect("an admin listener");
    let mut held = Vec::new();
    for _ in 0..64 {
        held.push(tokio::net::TcpStream::connect(admin).await.expect("connects"));
    }
    let mut extra = tokio::net::TcpStream::connect(admin).await.expect("connects");
    let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut [0u8; 16])).await;
    assert!(matches!(read, Ok(Ok(0) | Err(_))), "the 65th is closed at once, not held: {read:?}");
    drop(held);
    let served = async {
        loop {
            // The holders' closes reach the listener's tasks in their own time.
            if let Ok((200, _)) = tokio::spawn(get(admin, "/healthz")).await {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), served).await.expect("served once the holders are gone");
}
