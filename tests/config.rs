//! `qkv serve --config FILE`, the QKV_<KEY> environment variables and `--print-config`
//! (docs/OPERATIONS.md, "Configuration"): precedence flag > environment > file > default, bad files
//! refused before anything starts, and a server that runs on what its file says.

mod common;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use common::process::ServerProcess;
use prost::Message;
use qkv::client::{Client, ClientError};
use qkv::pb::{CommandRequest, Kvpair};
use qkv::transport::Transport;

const EXIT_INVALID_INPUT: i32 = 2;
const EXIT_LOCAL_FAILURE: i32 = 4;

/// Runs `qkv serve ARGS... --print-config`-style commands with exactly the QKV_ variables in `env`
/// (none inherited from the test's own environment). A config that is accepted would start a
/// server, so every run is bounded in time.
async fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"));
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("QKV_")) {
        command.env_remove(name);
    }
    command.arg("serve").args(args).envs(env.iter().copied()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("qkv serve returns (a config that is accepted must not start a server here)")
        .expect("qkv runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The effective configuration's lines that set `key`.
async fn effective(key: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut args = args.to_vec();
    args.push("--print-config");
    let output = serve(&args, env).await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let printed = text(&output.stdout);
    let prefix = format!("{key} = ");
    printed
        .lines()
        .find(|line| line.starts_with(&prefix))
        .unwrap_or_else(|| panic!("{key} in {printed}"))
        .to_owned()
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write the config file");
    path.to_string_lossy().into_owned()
}

#[tokio::test]
async fn printed_configuration_reads_back_as_the_same_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = serve(&["--print-config"], &[]).await;
    assert!(defaults.status.success(), "{}", text(&defaults.stderr));
    let defaults = text(&defaults.stdout);
    for key in ["listen = ", "max_connections = ", "store = \"memory\"", "tcp_plaintext = false", "redis = ["]
    {
        assert!(defaults.lines().any(|l| l.starts_with(key)), "{key} in\n{defaults}");
    }
    assert!(
        defaults.contains("\n# connection_memory =\n"),
        "an option without a default is shown commented out"
    );

    // Everything changed from its default at once, then printed, read back and printed again.
    let changed = serve(
        &[
            "--print-config",
            "--max-connections",
            "7",
            "--no-tcp",
            "--redis",
            "redis://a:1,redis://b:2",
            // A switch that needs another flag, both from the file (clap refused the switch alone).
            "--web",
            "127.0.0.1:9",
            "--web-plaintext",
        ],
        &[("QKV_IDLE_TIMEOUT", "1m")],
    )
    .await;
    let changed = text(&changed.stdout);
    let file = write(dir.path(), "qkv.toml", &changed);
    let again = serve(&["--config", &file, "--print-config"], &[]).await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert_eq!(text(&again.stdout), changed);
    assert_ne!(changed, defaults);
}

#[tokio::test]
async fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "qkv.toml",
        "max_connections = 100\nno_tcp = true\nredis = [\"redis://file:1\"]\nidle_timeout = \"5s\"\n\
         web = \"127.0.0.1:9\"\n",
    );
    let config = ["--config", file.as_str()];
    // Default, then file.
    assert_eq!(effective("max_connections", &[], &[]).await, "max_connections = 10000");
    assert_eq!(effective("max_connections", &config, &[]).await, "max_connections = 100");
    // The file named by the environment, like any other key.
    assert_eq!(effective("max_connections", &[], &[("QKV_CONFIG", &file)]).await, "max_connections = 100");
    // Environment over file, flag over environment; for a number, a switch, a list and a duration.
    let env = [
        ("QKV_MAX_CONNECTIONS", "200"),
        ("QKV_NO_TCP", "false"),
        ("QKV_REDIS", "redis://env:1"),
        ("QKV_IDLE_TIMEOUT", "6s"),
    ];
    assert_eq!(effective("max_connections", &config, &env).await, "max_connections = 200");
    assert_eq!(effective("no_tcp", &config, &[]).await, "no_tcp = true");
    assert_eq!(effective("no_tcp", &config, &env).await, "no_tcp = false");
    assert_eq!(effective("redis", &config, &[]).await, "redis = [\"redis://file:1\"]");
    assert_eq!(effective("redis", &config, &env).await, "redis = [\"redis://env:1\"]");
    assert_eq!(effective("idle_timeout", &config, &env).await, "idle_timeout = \"6s\"");
    // A switch that needs a key of the file.
    let plaintext = [&config[..], &["--web-plaintext"]].concat();
    assert_eq!(effective("web_plaintext", &plaintext, &[]).await, "web_plaintext = true");
    let plaintext = [("QKV_WEB_PLAINTEXT", "true")];
    assert_eq!(effective("web_plaintext", &config, &plaintext).await, "web_plaintext = true");
    let flags = [
        "--config",
        file.as_str(),
        "--max-connections",
        "300",
        "--redis",
        "redis://flag:1",
        "--idle-timeout",
        "7s",
    ];
    assert_eq!(effective("max_connections", &flags, &env).await, "max_connections = 300");
    assert_eq!(effective("redis", &flags, &env).await, "redis = [\"redis://flag:1\"]");
    assert_eq!(effective("idle_timeout", &flags, &env).await, "idle_timeout = \"7s\"");
}

#[tokio::test]
async fn printed_configuration_shows_no_credentials() {
    // The user stays: a server started from the printed file connects as the same user.
    let printed = effective("redis", &["--redis", "redis://user:hunter2@10.0.0.1:7000"], &[]).await;
    assert_eq!(printed, "redis = [\"redis://user@10.0.0.1:7000\"]");
    let printed = effective("redis", &[], &[("QKV_REDIS", "rediss://:hunter2@h:1")]).await;
    assert!(!printed.contains("hunter2"), "{printed}");
}

#[tokio::test]
async fn a_bad_config_file_is_refused_naming_the_file_the_key_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let certs = certs.to_string_lossy();
    // (contents, what the error must say besides the file's name)
    let cases = [
        ("max_conections = 1\n", vec!["unknown key `max_conections`", "--print-config"]),
        ("max_connections = \"many\"\n", vec!["key `max_connections`", "invalid value 'many'"]),
        ("max_connections = -1\n", vec!["key `max_connections`", "'-1'"]),
        ("threads = 0\n", vec!["key `threads`", "0 is not in 1..=65535"]),
        ("store = \"mem\"\n", vec!["key `store`", "possible values: memory, disk, redis"]),
        ("idle_timeout = \"5x\"\n", vec!["key `idle_timeout`", "unknown time unit"]),
        ("max_frame_size = \"lots\"\n", vec!["key `max_frame_size`", "'lots'"]),
        ("no_tcp = \"yes\"\n", vec!["key `no_tcp`", "expected true or false"]),
        ("listen = [\"127.0.0.1:1\"]\n", vec!["key `listen`", "expected one value"]),
        ("redis = []\n", vec!["key `redis`", "expected at least one value"]),
        ("listen = { port = 1 }\n", vec!["key `listen`", "expected a string or a number, found table"]),
        ("[quic]\ncongestion = \"bbr\"\n", vec!["unknown key `quic`"]),
        ("listen = \n", vec!["TOML parse error at line 1"]),
        // A good key does not let a bad one through, whatever their order.
        ("max_connections = 5\nsend_window = \"big\"\n", vec!["key `send_window`"]),
        // Out of range, refused by the parser as a flag would be.
        ("max_connections = 0\n", vec!["key `max_connections`", "must be at least 1"]),
        ("max_frame_size = \"5GiB\"\n", vec!["key `max_frame_size`", "must be between 1KiB"]),
        ("idle_timeout = \"0s\"\n", vec!["key `idle_timeout`", "longer than zero"]),
        // Far beyond any use, and past what the clock's arithmetic takes.
        ("request_timeout = \"1000years\"\n", vec!["key `request_timeout`", "at most a year"]),
        ("memory_budget = 0\n", vec!["key `memory_budget`", "at least 1 byte"]),
        ("connection_window = 1\n", vec!["key `connection_window`", "between 16KiB and 1TiB"]),
    ];
    for (contents, expected) in cases {
        let file = write(dir.path(), "bad.toml", contents);
        let output = serve(&["--config", &file, "--listen", "127.0.0.1:0", "--certs", &certs], &[]).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_INVALID_INPUT), "{contents:?}: {stderr}");
        assert!(stderr.contains(&format!("config file {file}")), "{contents:?}: {stderr}");
        for words in expected {
            assert!(stderr.contains(words), "{contents:?}: {words:?} not in {stderr}");
        }
        assert!(!stderr.contains("serving"), "{contents:?}: the server must not start: {stderr}");
    }
    // Limits that cannot work together: refused before anything is opened, naming the flags.
    let file = write(dir.path(), "bad.toml", "max_frame_size = \"32MiB\"\nmax_request_buffer = \"16MiB\"\n");
    let output = serve(&["--config", &file, "--listen", "127.0.0.1:0", "--certs", &certs], &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_INVALID_INPUT), "{stderr}");
    assert!(stderr.contains("--max-request-buffer") && stderr.contains("--max-frame-size"), "{stderr}");
    let missing = dir.path().join("missing.toml");
    let output = serve(&["--config", &missing.to_string_lossy()], &[]).await;
    assert_eq!(output.status.code(), Some(EXIT_INVALID_INPUT));
    assert!(text(&output.stderr).contains("cannot read the config file"), "{}", text(&output.stderr));
}

#[tokio::test]
async fn a_server_runs_on_what_its_config_file_says() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "qkv.toml", "tcp_plaintext = true\nmax_value_size = \"1KiB\"\n");
    let server = ServerProcess::start(&["--config", &file]).await;
    // Plaintext TCP, as the file asks (TLS would refuse this client).
    let client = Client::connect_with(server.client_config(Transport::Tcp)).await.expect("plaintext TCP");
    client.hset("t", "small", "x".repeat(1000)).await.expect("a value under the file's limit");
    match client.hset("t", "large", "x".repeat(2000)).await {
        Err(ClientError::Status { status: 413, .. }) => {}
        other => panic!("a value over the file's 1 KiB limit must be refused with 413, got {other:?}"),
    }
    server.kill().await;
}

/// `--print-config` answers "what would this server run with?": what `serve` would refuse (settings
/// that cannot work together) it refuses too, with the same message and exit code 2, printing nothing.
#[tokio::test]
async fn print_config_refuses_what_serve_refuses() {
    for (args, said) in [
        (&["--threads", "4"][..], "--threads needs --runtime multi-thread"),
        (&["--max-frame-size", "4KiB", "--response-frame-target", "8KiB"][..], "invalid configuration"),
        (&["--connection-memory", "1KiB"][..], "cannot admit a single connection"),
        (
            &["--web", "127.0.0.1:0", "--websocket-max-message", "10GiB"][..],
            "cannot admit a single web connection",
        ),
        (&["--store", "disk", "--commit-wait", "1s"][..], "holds writes too long"),
        (&["--store", "disk", "--flush-interval", "5ms"][..], "applies only with --durability relaxed"),
        (
            &["--store", "redis", "--redis-wait", "1", "--redis-wait-timeout", "0s"][..],
            "--redis-wait-timeout",
        ),
        (
            &["--store", "redis", "--redis-wait", "1", "--redis-wait-timeout", "2s", "--redis-timeout", "2s"]
                [..],
            "must be shorter than --redis-timeout",
        ),
        (&["--store", "redis", "--redis-prefix", "a{b"][..], "--redis-prefix must not contain"),
        // A Redis command given no time at all fails at random as 504 "may have been executed".
        (&["--store", "redis", "--redis-timeout", "0s"][..], "must be longer than zero"),
        (&["--store", "redis", "--redis-connect-timeout", "0s"][..], "must be longer than zero"),
        // Longer than a repeated write is recognised for.
        (&["--store", "redis", "--redis-timeout", "8s"][..], "--redis-timeout (8s) must be at most 5s"),
        (
            &["--store", "redis", "--redis-wait", "1", "--redis-wait-timeout", "2s", "--redis-timeout", "4s"]
                [..],
            "--redis-timeout with --redis-wait-timeout added (6s) must be at most 5s",
        ),
        // Allocated whole at start: ten billion sessions aborted the server.
        (&["--session-cache", "99999999999"][..], "must be at most 1048576"),
        (&["--web-plaintext"][..], "set --web ADDR too"),
    ] {
        let printed = serve(&[args, &["--print-config"]].concat(), &[]).await;
        let stderr = text(&printed.stderr);
        assert_eq!(printed.status.code(), Some(EXIT_INVALID_INPUT), "{args:?}: {stderr}");
        assert!(stderr.contains(said), "{args:?}: {said:?} not in {stderr}");
        assert!(printed.stdout.is_empty(), "{args:?}: printed {}", text(&printed.stdout));
        // As `serve` itself says (before anything is opened).
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let served =
            serve(&[args, &["--listen", "127.0.0.1:0", "--certs", &certs.to_string_lossy()]].concat(), &[])
                .await;
        assert_eq!(served.status.code(), Some(EXIT_INVALID_INPUT), "{args:?}: {}", text(&served.stderr));
        assert!(text(&served.stderr).contains(said), "{args:?}: {}", text(&served.stderr));
    }
}

/// A file that cannot be read is `qkv serve`'s to find, as it starts (exit code 4, a local failure,
/// as docs/OPERATIONS.md says): `--print-config` opens none.
#[tokio::test]
async fn an_unreadable_redis_ca_is_found_when_the_server_starts_not_by_print_config() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing-ca.pem");
    let missing = missing.to_string_lossy();
    let args = ["--store", "redis", "--redis", "redis://127.0.0.1:1", "--redis-ca", &missing];
    let printed = serve(&[&args[..], &["--print-config"]].concat(), &[]).await;
    assert_eq!(printed.status.code(), Some(0), "{}", text(&printed.stderr));
    let certs = dir.path().join("certs");
    let served =
        serve(&[&args[..], &["--listen", "127.0.0.1:0", "--certs", &certs.to_string_lossy()]].concat(), &[])
            .await;
    let stderr = text(&served.stderr);
    assert_eq!(served.status.code(), Some(EXIT_LOCAL_FAILURE), "{stderr}");
    assert!(stderr.contains("cannot read --redis-ca"), "{stderr}");
}

/// Lowering the maximum frame size is enough: the response frame target (64 KiB by default) comes down
/// with it, rather than leaving a configuration the server refuses; answers are split to fit.
#[tokio::test]
async fn a_smaller_maximum_frame_size_brings_the_frame_target_down_with_it() {
    let server = ServerProcess::start(&["--max-frame-size", "4KiB"]).await;
    let client = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    for batch in 0..5 {
        let pairs = (0..20).map(|i| Kvpair::new(format!("k{batch}-{i}"), vec![7u8; 100]));
        client.hmset("t", pairs).await.unwrap();
    }
    let mut frames = client.call_frames(&CommandRequest::hgetall("t")).await.unwrap();
    let mut pairs = 0;
    while let Some(frame) = frames.next().await {
        let frame = frame.unwrap();
        assert!(frame.encoded_len() <= 4096, "a frame of {} bytes", frame.encoded_len());
        pairs += frame.pairs.len();
    }
    assert_eq!(pairs, 100);
    server.kill().await;
}

/// A bad value in a `QKV_` variable is reported as the variable (which the operator set), with the
/// flag it stands for, not as a flag the operator never typed.
#[tokio::test]
async fn a_bad_environment_value_is_named_as_its_variable() {
    for (variable, value, said) in [
        ("QKV_IDLE_TIMEOUT", "30", "time unit needed"),
        ("QKV_STORE", "mem", "possible values: memory, disk, redis"),
        ("QKV_MAX_CONNECTIONS", "0", "must be at least 1"),
    ] {
        let output = serve(&["--print-config"], &[(variable, value)]).await;
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(EXIT_INVALID_INPUT), "{variable}: {stderr}");
        let flag = format!("--{}", variable.trim_start_matches("QKV_").to_lowercase().replace('_', "-"));
        assert!(stderr.contains(&format!("{variable}={value} (for {flag}): ")), "{stderr}");
        assert!(stderr.contains(said), "{said:?} not in {stderr}");
        assert!(!stderr.contains(&format!("for '{flag}")), "the flag as if typed: {stderr}");
    }
    // A flag given on the command line is still named as the flag.
    let output = serve(&["--idle-timeout", "30", "--print-config"], &[]).await;
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(EXIT_INVALID_INPUT), "{stderr}");
    assert!(stderr.contains("for '--idle-timeout"), "{stderr}");
}
