//! The admin listener seen by the real thing (docs/OPERATIONS.md, "Metrics"): `qkv serve --admin`
//! answers /healthz and /readyz, its /metrics pass `promtool check metrics`, and a real Prometheus
//! (Debian's, started by qkv-testkit; `cargo xtask test` installs it) scrapes them and counts the
//! requests a client made, by command, transport and status. OPERATIONS.md names only metrics the
//! server exports, in alert rules `promtool check rules` accepts.

mod common;

use common::process::ServerProcess;
use qkv::client::Client;
use qkv::transport::Transport;
use qkv_testkit::{
    Prometheus, http_get, promtool_check_config, promtool_check_metrics, promtool_check_rules,
    promtool_test_rules,
};

/// Runs blocking testkit work (HTTP, waits on Prometheus) off the runtime, which keeps reading the
/// server's log meanwhile.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.expect("the blocking work does not panic")
}

async fn hsets(server: &ServerProcess, transport: Transport, count: usize) {
    let client = Client::connect_with(server.client_config(transport))
        .await
        .unwrap_or_else(|e| panic!("a {transport:?} client connects: {e}"));
    for i in 0..count {
        client.hset("t", &format!("{transport:?}{i}"), "v").await.expect("Hset answers 200");
    }
}

#[tokio::test]
async fn prometheus_scrapes_the_admin_listener() {
    let mut server = ServerProcess::start(&["--admin", "127.0.0.1:0", "--max-key-size", "64"]).await;
    let admin = server.admin_addr().await;
    // Prometheus sends its first targets to the scrapers 5 s after it starts (its discovery throttle,
    // fixed in 2.42): started first, it waits while the test does the rest.
    let prometheus = blocking(move || Prometheus::start(&[admin])).await.expect("prometheus starts");

    hsets(&server, Transport::Quic, 7).await;
    hsets(&server, Transport::Tls, 3).await;

    let (health, ready, metrics) = blocking(move || {
        let get = |path: &str| http_get(admin, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        (get("/healthz"), get("/readyz"), get("/metrics"))
    })
    .await;
    assert_eq!(health.0, 200, "GET /healthz: {health:?}");
    assert_eq!(ready.0, 200, "GET /readyz: {ready:?}");
    assert_eq!(metrics.0, 200, "GET /metrics: {}", metrics.1);
    let hsets_quic = r#"qkv_requests_total{command="Hset",transport="quic",status="200"}"#;
    assert!(
        metrics.1.lines().any(|l| l.starts_with("qkv_requests_total{") && l.contains(r#"command="Hset""#)),
        "GET /metrics counts no Hset:\n{}",
        metrics.1
    );
    // A memory store answers in microseconds: the service time's buckets start at 1 µs, so that its
    // quantiles are not all guesses within one bucket.
    let finest = r#"qkv_request_duration_seconds_bucket{command="Hset",transport="quic",le="0.000001"}"#;
    assert!(metrics.1.contains(finest), "no 1 µs bucket in GET /metrics:\n{}", metrics.1);
    let text = metrics.1.clone();
    blocking(move || promtool_check_metrics(&text))
        .await
        .unwrap_or_else(|e| panic!("{e}\nin GET /metrics:\n{}", metrics.1));

    let prometheus = blocking(move || {
        prometheus
            .wait_target_up()
            .unwrap_or_else(|e| panic!("{e}\nprometheus logged: {}", prometheus.log()));
        prometheus
    })
    .await;
    // The first burst of refusals after Prometheus has seen the server: the series was there at 0,
    // so `increase()` sees all of it (a series that appeared at 4 would show an increase of 0).
    let key_limit = r#"qkv_limits_hit_total{limit="max_key_size"}"#;
    let prometheus = blocking(move || {
        prometheus
            .wait_for_sample(key_limit, |v| v == 0.0)
            .expect("the limit's series at 0 before it is hit");
        prometheus
    })
    .await;
    let client =
        Client::connect_with(server.client_config(Transport::Quic)).await.expect("a client connects");
    for _ in 0..4 {
        client.hset("t", &"k".repeat(100), "v").await.expect_err("a key over --max-key-size is refused");
    }
    blocking(move || {
        prometheus.wait_for_sample(hsets_quic, |v| v == 7.0).expect("7 Hset over QUIC, through Prometheus");
        let all = r#"sum(qkv_requests_total{command="Hset"})"#;
        prometheus.wait_for_sample(all, |v| v == 10.0).expect("10 Hset in all, through Prometheus");
        let tls = r#"qkv_requests_total{command="Hset",transport="tls",status="200"}"#;
        prometheus.wait_for_sample(tls, |v| v == 3.0).expect("3 Hset over TLS, through Prometheus");
        prometheus.wait_for_sample(key_limit, |v| v == 4.0).expect("the 4 refusals counted");
        let burst = format!("increase({key_limit}[1m])");
        prometheus.wait_for_sample(&burst, |v| v > 0.0).expect("increase() sees the first burst");
        // What the clients waited, queueing included, is measured on both kinds of transport (QUIC's
        // request streams, TLS's pipeline): every answer once, refusals too (QUIC's 4).
        for (transport, count) in [("quic", 11.0), ("tls", 3.0)] {
            let latency = format!(
                r#"qkv_request_latency_seconds_count{{command="Hset",transport="{transport}"}}"#
            );
            prometheus.wait_for_sample(&latency, |v| v == count).expect("every Hset's latency, through Prometheus");
            // The latency's span holds the execution's: never less in sum.
            let both = format!(
                r#"{latency} and on() (sum(qkv_request_latency_seconds_sum{{transport="{transport}"}}) >= sum(qkv_request_duration_seconds_sum{{transport="{transport}"}}))"#
            );
            prometheus.wait_for_sample(&both, |v| v == count).expect("the latency includes the service time");
        }
    })
    .await;
}

/// The `qkv_…` names in `text`, without a histogram's `_bucket` suffix.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("qkv_"))
        .map(|word| word.strip_suffix("_bucket").unwrap_or(word).to_owned())
        .collect()
}

/// docs/OPERATIONS.md's table lists exactly the metrics the server describes (src/metrics.rs), and its
/// alert rules and graphs name only those, in rules `promtool check rules` accepts and that pass
/// `promtool test rules` on tests/alerts_test.yml: a renamed metric must not silently break a user's
/// alerts, nor an expression fire at the first failure. Its scrape configuration passes `promtool check
/// config`.
#[test]
fn operations_md_names_the_metrics_the_server_exports_in_rules_prometheus_accepts() {
    let operations = include_str!("../docs/OPERATIONS.md");
    let table: String = operations.lines().filter(|line| line.starts_with("| `qkv_")).collect();
    let listed = metric_names(&table);
    let described = metric_names(include_str!("../src/metrics.rs"));
    assert_eq!(listed, described, "OPERATIONS.md's table against src/metrics.rs");

    let alerts = operations.split("### Alerts worth setting\n").nth(1).expect("the alerts section");
    let alerts = alerts.split("\n### ").next().unwrap_or_default();
    let unknown: Vec<String> = metric_names(alerts).difference(&listed).cloned().collect();
    assert!(unknown.is_empty(), "the alerts and graphs name metrics the server does not export: {unknown:?}");

    let rules = alerts.split("```yaml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("the rules");
    promtool_check_rules(rules).unwrap_or_else(|e| panic!("{e}\nthe rules:\n{rules}"));

    // The rules do what their names say: each fires on the series of tests/alerts_test.yml that should
    // fire it, for the server that is in trouble, and on no other (a single failure among many, a
    // second server's connections).
    let cases = include_str!("alerts_test.yml");
    promtool_test_rules("alerts.yml", rules, cases).unwrap_or_else(|e| panic!("{e}\nthe rules:\n{rules}"));

    let scraping = operations.split("### Scraping\n").nth(1).expect("the scraping section");
    let config = scraping.split("```yaml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a config");
    promtool_check_config(config).unwrap_or_else(|e| panic!("{e}\nthe configuration:\n{config}"));
}

/// A fresh server already exports every counter whose labels are known in advance, at 0: a first event
/// is then an increase Prometheus can see, and `qkv stat` has figures (connections open) from the
/// start. It exports the process's standard metrics too.
#[tokio::test]
async fn a_fresh_server_exports_its_labelled_counters_at_zero() {
    use qkv::metrics::{BackendResult, HandshakeResult, Limit, Resumption};

    let mut server = ServerProcess::start(&["--admin", "127.0.0.1:0"]).await;
    let admin = server.admin_addr().await;
    let (status, metrics) = blocking(move || http_get(admin, "/metrics")).await.expect("GET /metrics");
    assert_eq!(status, 200, "{metrics}");
    let mut expected: Vec<String> = Limit::ALL
        .iter()
        .map(|limit| format!(r#"qkv_limits_hit_total{{limit="{}"}} 0"#, limit.name()))
        .collect();
    for transport in ["quic", "tls", "tcp", "http"] {
        expected.push(format!(r#"qkv_connections_open{{transport="{transport}"}} 0"#));
        expected.push(format!(r#"qkv_connections_accepted_total{{transport="{transport}"}} 0"#));
        for reason in [Limit::MaxConnections, Limit::ConnectionMemory] {
            let reason = reason.name();
            expected.push(format!(
                r#"qkv_connections_refused_total{{transport="{transport}",reason="{reason}"}} 0"#
            ));
        }
    }
    for transport in ["quic", "tls", "http"] {
        for result in HandshakeResult::ALL {
            let result = result.name();
            expected.push(format!(r#"qkv_handshakes_total{{transport="{transport}",result="{result}"}} 0"#));
        }
        for result in Resumption::ALL {
            let result = result.name();
            expected
                .push(format!(r#"qkv_tls_resumptions_total{{transport="{transport}",result="{result}"}} 0"#));
        }
    }
    for result in BackendResult::ALL {
        let result = result.name();
        expected.push(format!(r#"qkv_backend_requests_total{{backend="redis",result="{result}"}} 0"#));
    }
    for name in ["qkv_pubsub_published_total", "qkv_pubsub_missed_total", "qkv_quic_lost_packets_total"] {
        expected.push(format!("{name} 0"));
    }
    let missing: Vec<&String> = expected.iter().filter(|line| !metrics.lines().any(|l| l == *line)).collect();
    // The process's standard figures: `qkv stat` tells a restart by a new start time.
    for name in [
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
    ] {
        let value = metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' '));
        let value: f64 =
            value.and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no {name}:\n{metrics}"));
        assert!(value >= 0.0, "{name} {value}");
    }
    let started = metrics.lines().find_map(|l| l.strip_prefix("process_start_time_seconds "));
    let started: f64 = started.and_then(|v| v.parse().ok()).unwrap_or_default();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    assert!(
        started > 0.0 && started <= now.as_secs_f64() + 1.0,
        "the process started {started}, now is {now:?}"
    );
    assert!(
        missing.is_empty(),
        "not exported at 0 by a fresh server: {missing:#?}\nin GET /metrics:\n{metrics}"
    );
    server.kill().await;
}
