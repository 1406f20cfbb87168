//! `qkv stat` against a stand-in admin listener whose canned /metrics change from one scrape to the
//! next: the figures it prints for programs and for people, and its errors and exit codes; and once
//! against a real server, whose metric names it must read.

mod common;

use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Router;
use axum::routing::get;
use serde_json::Value;

const EXIT_UNREACHABLE: i32 = 3;

/// The baseline scrape.
const FIRST: &str = r#"# TYPE qkv_build_info gauge
qkv_build_info{version="0.1.0"} 1
# HELP qkv_requests_total Requests answered.
# TYPE qkv_requests_total counter
qkv_requests_total{command="Hget",transport="quic",status="200"} 1000
qkv_requests_total{command="Hset",transport="tcp",status="200"} 50
# TYPE qkv_request_duration_seconds histogram
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.001"} 1000
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.01"} 1000
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="+Inf"} 1000
qkv_request_duration_seconds_sum{command="Hget",transport="quic"} 0.5
qkv_request_duration_seconds_count{command="Hget",transport="quic"} 1000
qkv_request_duration_seconds_bucket{command="Hset",transport="tcp",le="0.001"} 0
qkv_request_duration_seconds_bucket{command="Hset",transport="tcp",le="0.01"} 50
qkv_request_duration_seconds_bucket{command="Hset",transport="tcp",le="+Inf"} 50
# TYPE qkv_connections_open gauge
qkv_connections_open{transport="quic"} 2
qkv_connections_open{transport="tcp"} 1
qkv_limits_hit_total{limit="max_value_size"} 4
qkv_storage_keys 100
qkv_storage_memory_used_bytes 65536
qkv_storage_memory_budget_bytes 1073741824
qkv_subscriptions 3
qkv_pubsub_published_total 10
qkv_pubsub_delivered_total 30
qkv_pubsub_missed_total 0
"#;

/// 200 more Hget, all in (1, 10] ms; 10 Hset refused 507 by the memory budget; 20 deliveries.
const SECOND: &str = r#"qkv_build_info{version="0.1.0"} 1
qkv_requests_total{command="Hget",transport="quic",status="200"} 1200
qkv_requests_total{command="Hset",transport="tcp",status="200"} 50
qkv_requests_total{command="Hset",transport="tcp",status="507"} 10
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.001"} 1000
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.01"} 1200
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="+Inf"} 1200
qkv_request_duration_seconds_bucket{command="Hset",transport="tcp",le="0.001"} 10
qkv_request_duration_seconds_bucket{command="Hset",transport="tcp",le="0.01"} 60
qkv_request_duration_seconds_bucket{command="Hset",transport="tcp",le="+Inf"} 60
qkv_connections_open{transport="quic"} 5
qkv_connections_open{transport="tcp"} 0
qkv_limits_hit_total{limit="max_value_size"} 4
qkv_limits_hit_total{limit="memory_budget"} 10
qkv_storage_keys 120
qkv_storage_memory_used_bytes 131072
qkv_storage_memory_budget_bytes 1073741824
qkv_subscriptions 3
qkv_pubsub_published_total 15
qkv_pubsub_delivered_total 50
qkv_pubsub_missed_total 2
"#;

/// The server restarted: its counters start again from 0.
const THIRD: &str = r#"qkv_build_info{version="0.1.0"} 1
qkv_requests_total{command="Hget",transport="quic",status="200"} 8
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.001"} 8
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="0.01"} 8
qkv_request_duration_seconds_bucket{command="Hget",transport="quic",le="+Inf"} 8
qkv_connections_open{transport="quic"} 1
qkv_storage_keys 0
qkv_subscriptions 0
qkv_pubsub_delivered_total 0
"#;

/// Serves `scrapes` one after the other on GET /metrics (the last one again once they run out).
async fn admin_listener(scrapes: &'static [&'static str]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let served = Arc::new(AtomicUsize::new(0));
    let metrics = move || {
        let next = served.fetch_add(1, Ordering::SeqCst);
        async move { scrapes[next.min(scrapes.len() - 1)] }
    };
    let app = Router::new().route("/metrics", get(metrics));
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn qkv(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(args)
        .env_remove("QKV_ADMIN")
        .output()
        .await
        .expect("qkv runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `rate` is `count` per `seconds`, whatever the seconds were.
fn assert_rate(rate: &Value, count: u64, seconds: f64) {
    let rate = rate.as_f64().expect("a rate is a number");
    assert!((rate * seconds - count as f64).abs() < 1e-6 * count.max(1) as f64, "{rate}/s over {seconds}s");
}

fn assert_near(value: &Value, expected: f64) {
    let value = value.as_f64().expect("a number");
    assert!((value - expected).abs() < 1e-9, "{value} is not {expected}");
}

#[tokio::test]
async fn json_lines_carry_each_intervals_figures_and_notice_a_restart() {
    let addr = admin_listener(&[FIRST, SECOND, THIRD]).await;
    let admin = format!("http://{addr}");
    let output = qkv(&["stat", "--admin", &admin, "--count", "2", "--json", "--interval", "100ms"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
        .collect();
    assert_eq!(lines.len(), 2, "one object per interval");

    let first = &lines[0];
    let seconds = first["interval_seconds"].as_f64().expect("interval_seconds");
    assert!(seconds > 0.0);
    assert_eq!(first["restarted"], false);
    assert_eq!(first["requests"], 210);
    assert_rate(&first["requests_per_second"], 210, seconds);
    assert_eq!(first["errors"], 10, "the 507s");
    assert_rate(&first["errors_per_second"], 10, seconds);
    // 200 Hget in (1, 10] ms, 10 Hset in (0, 1]: rank 105 is 95 of 200 into (1, 10].
    assert_near(&first["p50_ms"], 1.0 + 9.0 * 95.0 / 200.0);
    assert_eq!(first["commands"]["Hget"]["requests"], 200);
    assert_eq!(first["commands"]["Hget"]["errors"], 0);
    assert_near(&first["commands"]["Hget"]["p50_ms"], 5.5);
    assert_eq!(first["commands"]["Hset"]["errors"], 10);
    assert_near(&first["commands"]["Hset"]["p99_ms"], 0.99);
    assert_eq!(first["connections"], serde_json::json!({"quic": 5, "tcp": 0}));
    assert_eq!(first["limits_hit"], 10);
    assert_eq!(first["limits"], serde_json::json!({"memory_budget": 10}));
    assert_eq!(
        first["storage"],
        serde_json::json!({"keys": 120, "memory_used_bytes": 131072, "memory_budget_bytes": 1073741824u64})
    );
    assert_eq!(first["pubsub"]["subscriptions"], 3);
    assert_eq!((&first["pubsub"]["published"], &first["pubsub"]["delivered"]), (&5.into(), &20.into()));
    assert_eq!(first["pubsub"]["missed"], 2);
    assert_rate(&first["pubsub"]["delivered_per_second"], 20, seconds);

    let second = &lines[1];
    assert_eq!(second["restarted"], true);
    assert_eq!(second["requests"], 8, "after a restart the new count is the delta");
    assert_eq!(second["errors"], 0);
    assert_near(&second["p99_ms"], 0.99);
    assert_eq!(second["storage"]["memory_used_bytes"], Value::Null, "no longer exported");
    assert_eq!(second["pubsub"]["delivered"], 0);
}

#[tokio::test]
async fn the_table_has_a_header_then_a_line_per_interval() {
    let addr = admin_listener(&[FIRST, SECOND]).await;
    let output = qkv(&["stat", "--admin", &addr.to_string(), "--count", "3", "--interval", "100ms"]).await;
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 5, "two header rows and three intervals:\n{stdout}");
    assert!(lines[0].contains("requests") && lines[1].contains("req/s"), "{stdout}");
    assert!(lines.iter().all(|line| line.len() <= 100), "{stdout}");
    let cells = |line: &str| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    let (busy, quiet) = (cells(lines[2]), cells(lines[3]));
    assert_eq!(busy.len(), 13, "{stdout}");
    assert_eq!(&busy[4..9], ["5", "0", "0", "120", "128K/1.0G"], "connections and storage:\n{stdout}");
    assert_eq!(&quiet[..4], ["0", "0", "-", "-"], "nothing happened, no quantiles:\n{stdout}");
}

#[tokio::test]
async fn an_unreachable_admin_listener_is_named_with_a_hint_and_exit_code_3() {
    // A port that was just free: nothing listens on it.
    let addr = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port");
    let output = qkv(&["stat", "--admin", &addr.to_string(), "--count", "1"]).await;
    assert_eq!(output.status.code(), Some(EXIT_UNREACHABLE), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.starts_with(&format!("error: cannot reach the admin listener at {addr}: ")), "{message}");
    assert!(
        message.trim_end().ends_with(&format!("(is qkv serve running with --admin {addr}?)")),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn an_address_without_metrics_is_refused_with_exit_code_3() {
    let addr = admin_listener(&[FIRST]).await;
    let output = qkv(&["stat", "--admin", &format!("http://{addr}/elsewhere"), "--count", "1"]).await;
    assert_eq!(output.status.code(), Some(EXIT_UNREACHABLE), "{}", stderr(&output));
    assert!(stderr(&output).contains("answered 404 Not Found to GET /elsewhere"), "{}", stderr(&output));
}

/// Another exporter's metrics (here Prometheus's own, as on its port 9090) are not an idle qkv server.
const NOT_QKV: &str = r#"# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 38
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1.7649e+09
"#;

#[tokio::test]
async fn metrics_that_are_not_a_qkv_servers_are_refused_with_exit_code_3() {
    let addr = admin_listener(&[NOT_QKV]).await;
    let output = qkv(&["stat", "--admin", &addr.to_string(), "--count", "1", "--interval", "100ms"]).await;
    assert_eq!(output.status.code(), Some(EXIT_UNREACHABLE), "{}", stderr(&output));
    assert!(stderr(&output).contains("with metrics, but not a qkv server's"), "{}", stderr(&output));
    assert!(output.stdout.is_empty(), "no figures of an idle server");
}

#[tokio::test]
async fn figures_of_a_real_server() {
    let mut server = common::process::ServerProcess::start(&["--admin", "127.0.0.1:0"]).await;
    let admin = server.admin_addr().await.to_string();
    let client = qkv::Client::connect_with(server.client_config(qkv::transport::Transport::Quic))
        .await
        .expect("a client connects");
    for key in ["a", "b", "c"] {
        client.hset("t", key, "v").await.expect("hset");
    }
    let output = qkv(&["stat", "--admin", &admin, "--count", "1", "--json", "--interval", "100ms"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let line: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(line["storage"]["keys"], 3, "{line}");
    assert_eq!(line["connections"]["quic"], 1, "{line}");
    assert_eq!(line["pubsub"]["subscriptions"], 0, "{line}");
    assert!(line["storage"]["memory_budget_bytes"].as_u64().is_some_and(|b| b > 0), "{line}");
    server.kill().await;
}
