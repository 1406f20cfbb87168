//! A real Prometheus on loopback, scraping the targets a test names, and `promtool check metrics`:
//! Debian's `prometheus` package, started like the Redis nodes (a temporary directory, a free port,
//! gone with its handle or with the process that started it).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// How long Prometheus may take to be ready, and a query or the targets to reach what a test waits for.
pub const WAIT_DEADLINE: Duration = Duration::from_secs(30);

/// How often every target is scraped: short, so that a test sees its counters within a second.
const SCRAPE_INTERVAL: &str = "500ms";

/// How often a wait asks Prometheus again.
const POLL: Duration = Duration::from_millis(100);

/// One prometheus process scraping the targets it was started with.
pub struct Prometheus {
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
    dir: TempDir,
    supervisor: Option<Child>,
}

/// One sample of an instant vector: its labels (`__name__` among them) and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (each `GET /metrics`, plain HTTP) every 500 ms, and
    /// waits until it is ready to answer queries (a few hundred ms). Its first scrape comes about 5 s
    /// later (Prometheus 2.42 passes discovered targets on at most every 5 s, the first time too): start
    /// it before the work whose metrics it is to see, and wait on what it sees, not on time.
    pub fn start(targets: &[SocketAddr]) -> io::Result<Self> {
        Self::start_scraping(targets, false)
    }

    /// Starts Prometheus scraping `targets` and, if `itself`, its own metrics too.
    fn start_scraping(targets: &[SocketAddr], itself: bool) -> io::Result<Self> {
        let mut last = None;
        // A port found free may be taken before prometheus binds it: try again on another.
        for _ in 0..5 {
            let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
            let mut all = targets.to_vec();
            if itself {
                all.push(addr);
            }
            let mut prometheus = Prometheus { addr, dir: tempfile::tempdir()?, supervisor: None };
            match prometheus.launch(&all) {
                Ok(()) => return Ok(prometheus),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("prometheus did not start")))
    }

    fn launch(&mut self, targets: &[SocketAddr]) -> io::Result<()> {
        let config = self.dir.path().join("prometheus.yml");
        std::fs::write(&config, scrape_config(targets))?;
        let log = File::create(self.dir.path().join("prometheus.log"))?;
        // The server dies with this process: `cat` (reading the pipe from this process as fd 3, since
        // an asynchronous list's standard input is /dev/null) ends when that pipe closes. `wait` makes
        // the supervisor exit when prometheus does, so that a failed start is seen at once.
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(
                r#"exec 3<&0; prometheus "$@" & pid=$!; (cat <&3 >/dev/null; kill -9 $pid 2>/dev/null) & exec 3<&-; wait $pid"#,
            )
            .arg("sh")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", self.dir.path().join("data").display()))
            .arg(format!("--web.listen-address={}", self.addr))
            .args(["--log.level=warn", "--storage.tsdb.retention.time=1h", "--web.max-connections=64"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log);
        crate::which("prometheus", "prometheus")?;
        self.supervisor = Some(command.spawn()?);
        let deadline = Instant::now() + WAIT_DEADLINE;
        while Instant::now() < deadline {
            if matches!(http_get(self.addr, "/-/ready"), Ok((200, _))) {
                return Ok(());
            }
            if let Some(supervisor) = &mut self.supervisor
                && supervisor.try_wait()?.is_some()
            {
                break;
            }
            thread::sleep(POLL);
        }
        let log = self.log();
        self.stop();
        Err(io::Error::other(format!("prometheus on {} did not become ready: {log}", self.addr)))
    }

    /// What prometheus logged (warnings and errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The `data` of an instant query (`/api/v1/query`) evaluated now: `resultType` and `result`.
    /// A query Prometheus refuses (a PromQL syntax error, say) is an error naming its reason.
    pub fn query(&self, promql: &str) -> io::Result<Value> {
        let body = self.api("/api/v1/query", &[("query", promql)])?;
        body.get("data").cloned().ok_or_else(|| io::Error::other(format!("no data in {body}")))
    }

    /// The samples an instant query returns now: one per series of a vector, one without labels for
    /// a scalar.
    pub fn samples(&self, promql: &str) -> io::Result<Vec<Sample>> {
        parse_samples(&self.query(promql)?)
    }

    /// Waits until `promql` returns a sample whose value satisfies `predicate`, and returns that
    /// sample; after [`WAIT_DEADLINE`], an error with the last answer.
    pub fn wait_for_sample(&self, promql: &str, predicate: impl Fn(f64) -> bool) -> io::Result<Sample> {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let last = self.samples(promql);
            if let Ok(samples) = &last
                && let Some(sample) = samples.iter().find(|s| predicate(s.value))
            {
                return Ok(sample.clone());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "`{promql}` did not return the sample awaited within {WAIT_DEADLINE:?}; it last returned {last:?}"
                    ),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until every target (there is at least one) has been scraped successfully: health "up"
    /// in `/api/v1/targets`. After [`WAIT_DEADLINE`], an error with each target's health and last
    /// scrape error.
    pub fn wait_target_up(&self) -> io::Result<()> {
        let deadline = Instant::now() + WAIT_DEADLINE;
        loop {
            let body = self.api("/api/v1/targets", &[("state", "active")])?;
            let targets = body["data"]["activeTargets"].as_array().cloned().unwrap_or_default();
            if !targets.is_empty() && targets.iter().all(|t| t["health"] == "up") {
                return Ok(());
            }
            if Instant::now() > deadline {
                let health: Vec<String> = targets
                    .iter()
                    .map(|t| format!("{} {} {}", t["scrapeUrl"], t["health"], t["lastError"]))
                    .collect();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the targets were not all up within {WAIT_DEADLINE:?}: {health:?}"),
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// GETs an API path with `query` parameters; its JSON body if the status is "success".
    fn api(&self, path: &str, query: &[(&str, &str)]) -> io::Result<Value> {
        let (status, body) = get(self.addr, path, query)?;
        let json: Value = serde_json::from_str(&body)
            .map_err(|e| io::Error::other(format!("GET {path}: {status}, not JSON ({e}): {body}")))?;
        if json["status"] != "success" {
            return Err(io::Error::other(format!(
                "GET {path}: {status} {}: {}",
                json["errorType"], json["error"]
            )));
        }
        Ok(json)
    }

    fn stop(&mut self) {
        if let Some(mut supervisor) = self.supervisor.take() {
            // Closing its standard input makes the supervisor kill prometheus; then reap it.
            drop(supervisor.stdin.take());
            let _ = supervisor.wait();
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A configuration scraping `targets` as one job, `test`, every [`SCRAPE_INTERVAL`].
fn scrape_config(targets: &[SocketAddr]) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    format!(
        "global:\n  scrape_interval: {SCRAPE_INTERVAL}\n  scrape_timeout: {SCRAPE_INTERVAL}\n\
         scrape_configs:\n  - job_name: test\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    )
}

/// The samples of a query's `data`: a vector's, or a scalar as one sample without labels.
fn parse_samples(data: &Value) -> io::Result<Vec<Sample>> {
    let value_of = |pair: &Value| -> io::Result<f64> {
        // [ <unix time>, "<value>" ]; "NaN", "+Inf" and "-Inf" parse too.
        pair.get(1)
            .and_then(Value::as_str)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other(format!("not a [time, \"value\"] pair: {pair}")))
    };
    match data["resultType"].as_str() {
        Some("vector") => {
            let series = data["result"].as_array().map(Vec::as_slice).unwrap_or_default();
            series
                .iter()
                .map(|s| {
                    let labels = s["metric"]
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok(Sample { labels, value: value_of(&s["value"])? })
                })
                .collect()
        }
        Some("scalar") => Ok(vec![Sample { labels: BTreeMap::new(), value: value_of(&data["result"])? }]),
        other => Err(io::Error::other(format!("an instant query returned {other:?}: {data}"))),
    }
}

/// `GET path` over plain HTTP/1.1 to `addr` (loopback; no proxy, whatever the environment says):
/// the status code and the body, whatever the status.
pub fn http_get(addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    get(addr, path, &[])
}

/// [`http_get`] with query parameters, %-encoded.
fn get(addr: SocketAddr, path: &str, query: &[(&str, &str)]) -> io::Result<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let mut response = agent
        .get(&url)
        .query_pairs(query.iter().copied())
        .call()
        .map_err(|e| io::Error::other(format!("GET {url}: {e}")))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| io::Error::other(format!("GET {url}: body: {e}")))?;
    Ok((status, body))
}

/// `promtool check metrics` on `text` (the text exposition format): `Err` with what promtool said if
/// it exits with an error (1: the text does not parse; 3: lint problems, such as a metric without
/// HELP, a counter without the `_total` suffix or a non-base unit) or prints anything at all.
pub fn promtool_check_metrics(text: &str) -> Result<(), String> {
    crate::which("promtool", "prometheus").map_err(|e| e.to_string())?;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool: {e}"))?;
    // promtool reads all its input before it writes, so writing first cannot deadlock.
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(text.as_bytes()));
    let output = child.wait_with_output().map_err(|e| format!("promtool: {e}"))?;
    if let Some(Err(e)) = written {
        return Err(format!("promtool did not read the metrics: {e}"));
    }
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() && said.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("promtool check metrics: {}: {}", output.status, said.trim()))
    }
}

/// Runs `promtool check rules` on `rules`, a YAML file of Prometheus rule groups: `Ok` if it accepts
/// them (their syntax and every expression's PromQL), else what it said.
pub fn promtool_check_rules(rules: &str) -> Result<(), String> {
    promtool_check_file(&["rules"], rules)
}

/// Runs `promtool check config --syntax-only` on `config`, a prometheus.yml (its rule files and
/// credentials are not looked for): `Ok` if it accepts it, else what it said.
pub fn promtool_check_config(config: &str) -> Result<(), String> {
    promtool_check_file(&["config", "--syntax-only"], config)
}

/// Runs `promtool test rules` on `tests`, a file of rule unit tests (series, and the alerts they must
/// and must not fire) whose `rule_files` name `rules_name`, which holds `rules`: `Ok` if every case
/// passes, else what promtool said (each expected and fired alert).
pub fn promtool_test_rules(rules_name: &str, rules: &str, tests: &str) -> Result<(), String> {
    crate::which("promtool", "prometheus").map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let (rules_file, tests_file) = (dir.path().join(rules_name), dir.path().join("tests.yml"));
    for (file, contents) in [(&rules_file, rules), (&tests_file, tests)] {
        std::fs::write(file, contents).map_err(|e| format!("{}: {e}", file.display()))?;
    }
    promtool(&["test", "rules"], &tests_file, dir.path())
}

/// `promtool check ARGS FILE`, FILE holding `contents`.
fn promtool_check_file(args: &[&str], contents: &str) -> Result<(), String> {
    crate::which("promtool", "prometheus").map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
    let file = dir.path().join("checked.yml");
    std::fs::write(&file, contents).map_err(|e| format!("{}: {e}", file.display()))?;
    promtool(&[&["check"], args].concat(), &file, dir.path())
}

/// `promtool ARGS FILE` in `dir`: what it printed, when it fails.
fn promtool(args: &[&str], file: &std::path::Path, dir: &std::path::Path) -> Result<(), String> {
    let output = Command::new("promtool")
        .args(args)
        .arg(file)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("promtool: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "promtool {}: {}: {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness against Prometheus's own metrics: it scrapes itself.
    #[test]
    fn prometheus_scrapes_itself() {
        let prometheus = Prometheus::start_scraping(&[], true).expect("prometheus starts");
        prometheus.wait_target_up().expect("its own target is up");
        let up = prometheus.wait_for_sample("up{job=\"test\"}", |v| v == 1.0).expect("up is 1");
        assert_eq!(up.labels.get("instance"), Some(&prometheus.addr.to_string()), "{up:?}");
        // A count that grows with every scrape: a later value is seen through the API.
        let scrapes = "sum(prometheus_target_interval_length_seconds_count)";
        let seen = prometheus.wait_for_sample(scrapes, |v| v >= 1.0).expect("scrapes counted").value;
        prometheus.wait_for_sample(scrapes, |v| v > seen).expect("the count grows");
        assert_eq!(
            prometheus.samples("1 + 1").expect("a scalar"),
            vec![Sample { labels: BTreeMap::new(), value: 2.0 }]
        );
        let refused = prometheus.query("sum(").expect_err("a syntax error");
        assert!(refused.to_string().contains("bad_data"), "{refused}");
        assert!(prometheus.samples("absent_metric_total").expect("an empty vector").is_empty());
    }

    #[test]
    fn promtool_accepts_prometheus_own_metrics() {
        let prometheus = Prometheus::start(&[]).expect("prometheus starts");
        let (status, metrics) = http_get(prometheus.addr, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        promtool_check_metrics(&metrics).expect("Prometheus's own metrics pass");
    }

    #[test]
    fn promtool_refuses_what_it_lints() {
        let good = "# HELP qkv_requests_total Requests.\n# TYPE qkv_requests_total counter\nqkv_requests_total{command=\"Hset\"} 7\n";
        promtool_check_metrics(good).expect("a counter with HELP and _total");
        for (bad, why) in [
            ("# TYPE a_total counter\na_total 1\n", "no help text"),
            ("# HELP a A.\n# TYPE a counter\na 1\n", "\"_total\" suffix"),
            ("# HELP a_total A.\n# TYPE a_total gauge\na_total 1\n", "should not have \"_total\""),
            ("# HELP a_milliseconds A.\n# TYPE a_milliseconds gauge\na_milliseconds 1\n", "base unit"),
            ("a{ 1\n", "parsing error"),
            ("# HELP a A.\n# TYPE a gauge\na 1", "unexpected end"),
        ] {
            let refused = promtool_check_metrics(bad).expect_err(bad);
            assert!(refused.contains(why), "{bad:?}: {refused}");
        }
    }
}
