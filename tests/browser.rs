//! The web console (src/web/console) in a real browser: tests/browser/console.mjs drives Debian's
//! headless Chromium (playwright-core) against a real server's web listener, like a person would:
//! sets a key and reads it back, meets a version conflict made by another writer and reloads, pages
//! through a table, subscribes and watches published messages arrive, and checks that the console
//! says which transport it uses (and DevTools confirms the browser used it). Once over WebTransport
//! (the QUIC port) and once over WebSocket; and once against a server without --admin, whose console
//! says why it shows no figures.
//!
//! Chromium trusts the server's development CA through an NSS database in a temporary $HOME, as a
//! person's browser would after importing it: no certificate check is skipped.
//!
//! Needs node, Debian's `chromium` and `certutil` (`libnss3-tools`), and tests/browser/node_modules
//! (`npm ci` there): `cargo xtask test` installs them all.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TestServer;
use qkv::transport::Transport;
use tokio::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser");

/// Far above what a visit takes (a few seconds), so that only a hang fails by time.
const VISIT_TIMEOUT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn the_console_works_over_webtransport() {
    visit_the_console("webtransport", Figures::Recorded).await;
}

#[tokio::test]
async fn the_console_works_over_websocket() {
    visit_the_console("websocket", Figures::Recorded).await;
}

#[tokio::test]
async fn the_console_says_why_it_has_no_figures() {
    visit_the_console("no-figures", Figures::NotRecorded).await;
}

#[tokio::test]
async fn the_readme_browser_example_logs_what_it_shows() {
    visit_the_console("readme", Figures::NotRecorded).await;
}

/// Any string is a name: the console lists, opens, reads and writes the empty key, loads the empty
/// table and a padded one under their own names, and subscribes to the empty topic.
#[tokio::test]
async fn the_console_takes_names_as_typed_the_empty_one_included() {
    visit_the_console("names", Figures::NotRecorded).await;
}

/// The console's subscriptions are made again on its next connection (a change of transport here).
#[tokio::test]
async fn the_console_makes_its_subscriptions_again_on_a_new_connection() {
    visit_the_console("resubscribe", Figures::NotRecorded).await;
}

/// A page's `Promise.all` of 600 requests over WebTransport: more than the streams the server grants
/// a session, which Chromium refuses at once rather than waiting. All are answered.
#[tokio::test]
async fn a_page_sends_more_requests_at_once_than_it_may_open_streams() {
    visit_with("many-requests", |_| {}).await;
}

/// The same with a server that runs 8 of a connection's requests at once: the session is granted 16
/// streams (twice the limit), fewer than the client's 256, and the client keeps to those.
#[tokio::test]
async fn a_page_keeps_to_the_streams_a_small_limit_grants() {
    visit_with("many-requests", |config| config.limits.max_concurrent_requests = 8).await;
}

/// Whether the server records the figures the console shows (GET /v1/stats): only with --admin.
#[derive(PartialEq)]
enum Figures {
    Recorded,
    NotRecorded,
}

async fn visit_the_console(visit: &str, figures: Figures) {
    visit_with(visit, |config| {
        if figures == Figures::Recorded {
            config.admin = Some("127.0.0.1:0".parse().expect("an address"));
        }
    })
    .await
}

/// Runs console.mjs's `visit` against a fresh server configured by `configure`; on a failure its
/// output says what the page showed and logged, and where its screenshot is (kept: the temporary
/// directory is not removed).
async fn visit_with(visit: &str, configure: impl FnOnce(&mut qkv::server::ServerConfig)) {
    assert!(
        Path::new(DIR).join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser, or cargo xtask test"
    );
    let server = TestServer::start_for_with(Transport::Http, configure).await;
    let web = server.web.expect("a web listener");
    let out = tempfile::tempdir().expect("a temporary directory");
    let started = Instant::now();
    let run = Command::new("node")
        .arg(format!("{DIR}/console.mjs"))
        .arg(visit)
        // As the README has people open it: "localhost", which Chromium resolves to ::1 first, where
        // nothing listens; its QUIC does not fall back to 127.0.0.1 as TCP does, so WebTransport works
        // only because /webtransport-cert names the address the server listens on.
        .env("QKV_WEB_URL", format!("https://localhost:{}", web.port()))
        .env("QKV_CA", server.ca())
        .env("QKV_OUT_DIR", out.path())
        .current_dir(DIR)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(VISIT_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("console.mjs {visit} took more than {VISIT_TIMEOUT:?}"))
        .expect("node runs (install Node.js)");
    let printed = String::from_utf8_lossy(&output.stdout);
    let complaints = String::from_utf8_lossy(&output.stderr);
    if !(output.status.success() && printed.trim_end().ends_with("all checks passed")) {
        let kept = out.keep();
        panic!("console.mjs {visit} failed (screenshot in {}):\n{printed}\n{complaints}", kept.display());
    }
    eprintln!("{}in {:.1} s with Chromium's start", printed, started.elapsed().as_secs_f64());
}
