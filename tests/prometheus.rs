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
    let mut server = ServerProcess::start(&["--admin", "127.0.0.1:0"]).await;
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
    let text = metrics.1.clone();
    blocking(move || promtool_check_metrics(&text))
        .await
        .unwrap_or_else(|e| panic!("{e}\nin GET /metrics:\n{}", metrics.1));

    blocking(move || {
        prometheus
            .wait_target_up()
            .unwrap_or_else(|e| panic!("{e}\nprometheus logged: {}", prometheus.log()));
        prometheus.wait_for_sample(hsets_quic, |v| v == 7.0).expect("7 Hset over QUIC, through Prometheus");
        let all = r#"sum(qkv_requests_total{command="Hset"})"#;
        prometheus.wait_for_sample(all, |v| v == 10.0).expect("10 Hset in all, through Prometheus");
        let tls = r#"qkv_requests_total{command="Hset",transport="tls",status="200"}"#;
        prometheus.wait_for_sample(tls, |v| v == 3.0).expect("3 Hset over TLS, through Prometheus");
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
/// alert rules and graphs name only those, in rules `promtool check rules` accepts: a renamed
/// metric must not silently break a user's alerts. Its scrape configuration passes `promtool check
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

    let scraping = operations.split("### Scraping\n").nth(1).expect("the scraping section");
    let config = scraping.split("```yaml\n").nth(1).and_then(|b| b.split("\n```").next()).expect("a config");
    promtool_check_config(config).unwrap_or_else(|e| panic!("{e}\nthe configuration:\n{config}"));
}
