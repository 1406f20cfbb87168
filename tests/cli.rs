//! The `qkv` binary against a real server: what it prints, and its exit codes.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;
use std::time::Duration;

use common::TestServer;
use common::process::ServerProcess;
use qkv::transport::Transport;
use tokio::io::AsyncWriteExt;

const EXIT_SERVER_SAID_NO: i32 = 1;
const EXIT_INVALID_INPUT: i32 = 2;
const EXIT_UNREACHABLE: i32 = 3;
const EXIT_LOCAL_FAILURE: i32 = 4;

/// Runs `qkv ARGS...`; client subcommands get `--addr`, `--ca` and `--transport` for `server`.
async fn qkv(server: Option<&TestServer>, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"));
    command.args(args);
    if let Some(server) = server {
        command.arg("--addr").arg(server.client_addr().to_string()).arg("--ca").arg(server.ca());
        command.arg("--transport").arg(server.transport.name());
    }
    command.output().await.expect("qkv runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A reader that stops early (`qkv hgetall t | head -1`) ends the command quietly, with success, as it
/// ends a Unix filter: no panic, no backtrace.
#[tokio::test]
async fn a_reader_that_stops_early_ends_the_output_quietly() {
    use tokio::io::AsyncBufReadExt;
    let server = TestServer::start().await;
    let client = server.client().await;
    let value = "v".repeat(100);
    client
        .hmset("t", (0..3000).map(|i| qkv::pb::Kvpair::new(format!("k{i:04}"), value.as_str())))
        .await
        .unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"));
    command.args(["hgetall", "t", "--addr", &server.client_addr().to_string()]).arg("--ca").arg(server.ca());
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().expect("qkv runs");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("its stdout")).lines();
    assert!(lines.next_line().await.unwrap().is_some_and(|line| line.starts_with("k0000\t")));
    drop(lines); // 300 KB more to print than the pipe holds
    let output = child.wait_with_output().await.expect("qkv ends");
    assert!(output.status.success(), "{:?}: {}", output.status, stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}

#[tokio::test]
async fn the_cli_tour_prints_values_plainly() {
    for transport in Transport::ALL {
        the_cli_tour_over(transport).await;
    }
}

async fn the_cli_tour_over(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let s = Some(&server);

    let set = qkv(s, &["hset", "users", "ada", "Ada Lovelace"]).await;
    assert!(set.status.success(), "{}", stderr(&set));
    let version = stdout(&set).trim().to_owned();
    assert!(version.parse::<u64>().unwrap() > 0, "hset prints the new version, got {version:?}");

    let get = qkv(s, &["hget", "users", "ada"]).await;
    assert_eq!(stdout(&get), "Ada Lovelace\n");
    let get = qkv(s, &["hget", "users", "ada", "--with-version"]).await;
    assert_eq!(stdout(&get), format!("Ada Lovelace\t{version}\n"));

    assert!(qkv(s, &["hset", "users", "age", "36", "--type", "int"]).await.status.success());
    assert_eq!(stdout(&qkv(s, &["hgetall", "users"]).await), "ada\tAda Lovelace\nage\t36\n");
    assert_eq!(
        stdout(&qkv(s, &["hmget", "users", "age", "nobody", "ada"]).await),
        "36\n(nil)\nAda Lovelace\n"
    );
    assert_eq!(stdout(&qkv(s, &["hexist", "users", "ada"]).await), "true\n");

    let updated = qkv(s, &["hset", "users", "ada", "Ada King", "--if-version", &version]).await;
    assert!(updated.status.success(), "{}", stderr(&updated));
    assert_eq!(stdout(&qkv(s, &["hdel", "users", "ada"]).await), "Ada King\n");
    assert_eq!(stdout(&qkv(s, &["hexist", "users", "ada"]).await), "false\n");

    let ping = qkv(s, &["ping", "--count", "2"]).await;
    assert_eq!(stdout(&ping).lines().filter(|l| l.starts_with("pong from")).count(), 2, "{}", stdout(&ping));
}

#[tokio::test]
async fn server_refusals_exit_1_with_the_reason_on_stderr() {
    let server = TestServer::start().await;
    let s = Some(&server);
    let missing = qkv(s, &["hget", "users", "nobody"]).await;
    assert_eq!(missing.status.code(), Some(EXIT_SERVER_SAID_NO));
    assert!(stdout(&missing).is_empty());
    assert!(stderr(&missing).contains("\"nobody\" not found"), "{}", stderr(&missing));

    qkv(s, &["hset", "t", "k", "v"]).await;
    let conflict = qkv(s, &["hset", "t", "k", "w", "--if-absent"]).await;
    assert_eq!(conflict.status.code(), Some(EXIT_SERVER_SAID_NO));
    assert!(stderr(&conflict).contains("version conflict: the key exists"), "{}", stderr(&conflict));
    let absent = qkv(s, &["hdel", "t", "nothing", "--if-version", "5"]).await;
    assert_eq!(absent.status.code(), Some(EXIT_SERVER_SAID_NO));
    assert!(stderr(&absent).contains("the key does not exist"), "{}", stderr(&absent));
}

/// `--type binary` stores bytes as they are: an argument's, not UTF-8 (clap refused those before
/// they reached it), or a file's or standard input's (`--value-file`), NUL and all; text types still
/// need UTF-8 (exit 2, pointing at --type binary), and a number read from a file loses its newline.
#[tokio::test]
async fn binary_values_are_taken_as_bytes_from_an_argument_a_file_or_standard_input() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let server = TestServer::start().await;
    let client = server.client().await;
    let run = async |args: &[&OsStr], stdin: &[u8]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"));
        command.args(args).arg("--addr").arg(server.client_addr().to_string()).arg("--ca").arg(server.ca());
        command.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
        command.stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("qkv runs");
        let mut input = child.stdin.take().expect("its stdin");
        input.write_all(stdin).await.expect("stdin written");
        drop(input);
        child.wait_with_output().await.expect("qkv ends")
    };
    let stored = async |key: &str| match client.hget("t", key).await.unwrap().and_then(|v| v.value.value) {
        Some(qkv::pb::value::Value::Binary(bytes)) => bytes.to_vec(),
        other => panic!("{key}: not binary: {other:?}"),
    };
    let os = |s: &str| OsStr::new(s).to_owned();
    let not_utf8: &[u8] = b"\xff\xfe not UTF-8\t\n";
    let argument = run(
        &[&os("hset"), &os("t"), &os("arg"), OsStr::from_bytes(not_utf8), &os("--type"), &os("binary")],
        b"",
    )
    .await;
    assert!(argument.status.success(), "{}", stderr(&argument));
    assert_eq!(stored("arg").await, not_utf8);
    let pair = [b"pair=".as_slice(), not_utf8].concat();
    let pairs =
        run(&[&os("hmset"), &os("t"), OsStr::from_bytes(&pair), &os("--type"), &os("binary")], b"").await;
    assert!(pairs.status.success(), "{}", stderr(&pairs));
    assert_eq!(stored("pair").await, not_utf8);

    let every_byte: Vec<u8> = (0..=255).collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("value.bin");
    std::fs::write(&file, &every_byte).unwrap();
    let args = [
        os("hset"),
        os("t"),
        os("file"),
        os("--value-file"),
        file.into_os_string(),
        os("--type"),
        os("binary"),
    ];
    let from_file = run(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(), b"").await;
    assert!(from_file.status.success(), "{}", stderr(&from_file));
    assert_eq!(stored("file").await, every_byte);
    let args = [os("hset"), os("t"), os("stdin"), os("--value-file"), os("-"), os("--type"), os("binary")];
    let from_stdin = run(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(), &every_byte).await;
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    assert_eq!(stored("stdin").await, every_byte);
    // And read back as they are: `hget --output FILE`, or `-o -` to standard output (printed, they are
    // escaped).
    let out = dir.path().join("out.bin");
    let args = [os("hget"), os("t"), os("stdin"), os("--output"), out.clone().into_os_string()];
    let to_file = run(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(), b"").await;
    assert!(to_file.status.success() && to_file.stdout.is_empty(), "{}", stderr(&to_file));
    assert_eq!(std::fs::read(&out).unwrap(), every_byte);
    let to_stdout = run(&[&os("hget"), &os("t"), &os("stdin"), &os("-o"), &os("-")], b"").await;
    assert_eq!(to_stdout.stdout, every_byte, "{}", stderr(&to_stdout));
    assert_ne!(qkv(Some(&server), &["hget", "t", "stdin"]).await.stdout, every_byte);
    let number = run(
        &[&os("hset"), &os("t"), &os("n"), &os("--value-file"), &os("-"), &os("--type"), &os("int")],
        b"42\n",
    )
    .await;
    assert!(number.status.success(), "{}", stderr(&number));
    assert_eq!(stdout(&qkv(Some(&server), &["hget", "t", "n"]).await), "42\n");

    // A file larger than one request can carry is refused before it is read to its end.
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge).unwrap().set_len(qkv::transport::DEFAULT_MAX_FRAME_LEN as u64 + 1).unwrap();
    let args = [
        os("hset"),
        os("t"),
        os("huge"),
        os("--value-file"),
        huge.into_os_string(),
        os("--type"),
        os("binary"),
    ];
    let too_large = run(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(), b"").await;
    assert_eq!(too_large.status.code(), Some(EXIT_INVALID_INPUT), "{}", stderr(&too_large));
    assert!(stderr(&too_large).contains("one request carries at most"), "{}", stderr(&too_large));
    // One that cannot be read is a local failure, as an unreadable --ca is (README, exit codes).
    let missing = dir.path().join("missing.bin");
    let args = [os("hset"), os("t"), os("m"), os("--value-file"), missing.into_os_string()];
    let unreadable = run(&args.iter().map(|a| a.as_os_str()).collect::<Vec<_>>(), b"").await;
    assert_eq!(unreadable.status.code(), Some(EXIT_LOCAL_FAILURE), "{}", stderr(&unreadable));
    assert!(stderr(&unreadable).contains("cannot read the value from"), "{}", stderr(&unreadable));

    let text = run(&[&os("hset"), &os("t"), &os("text"), OsStr::from_bytes(not_utf8)], b"").await;
    assert_eq!(text.status.code(), Some(EXIT_INVALID_INPUT));
    assert!(stderr(&text).contains("--type binary"), "{}", stderr(&text));
}

/// A client command run away from the server's directory finds no `certs/ca.pem`: the error says that
/// is `--ca`'s default and what to do, not only that a file is missing.
#[tokio::test]
async fn a_missing_default_ca_says_it_is_the_default_and_what_to_do() {
    let elsewhere = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["hget", "t", "k"])
        .current_dir(elsewhere.path())
        .env_remove("QKV_CA")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_LOCAL_FAILURE), "{}", stderr(&output));
    let said = stderr(&output);
    assert!(
        said.contains("certs/ca.pem") && said.contains("--ca's default") && said.contains("pass --ca"),
        "{said}"
    );
}

#[tokio::test]
async fn bad_input_exits_2_and_negative_numbers_are_values() {
    let server = TestServer::start().await;
    let s = Some(&server);
    let bad_int = qkv(s, &["hset", "t", "k", "forty", "--type", "int"]).await;
    assert_eq!(bad_int.status.code(), Some(EXIT_INVALID_INPUT));
    assert!(stderr(&bad_int).contains("not an integer"), "{}", stderr(&bad_int));

    // A count of nothing is a mistake, not a run that prints nothing and succeeds.
    for command in
        [&["ping", "--count", "0"][..], &["subscribe", "news", "--count", "0"], &["stat", "--count", "0"]]
    {
        let nothing = qkv(None, command).await;
        assert_eq!(nothing.status.code(), Some(EXIT_INVALID_INPUT), "{command:?}: {}", stderr(&nothing));
        assert!(
            stderr(&nothing).contains("invalid value '0' for '--count"),
            "{command:?}: {}",
            stderr(&nothing)
        );
    }
    // An address that is no host:port is a typo (2), not a server to try later (3).
    for addr in ["127.0.0.1", "localhost:abc"] {
        let typo = qkv(None, &["hget", "t", "k", "--addr", addr]).await;
        assert_eq!(typo.status.code(), Some(EXIT_INVALID_INPUT), "{addr}: {}", stderr(&typo));
    }

    // TLS settings given to a plaintext client are said to be unused, not dropped without a word.
    let plaintext = TestServer::start_for(Transport::Tcp).await;
    let unused = qkv(Some(&plaintext), &["hget", "t", "k", "--server-name", "db.example.com"]).await;
    assert!(
        stderr(&unused).contains("--server-name not used: --transport tcp is plaintext"),
        "{}",
        stderr(&unused)
    );

    let negative = qkv(s, &["hset", "t", "n", "-5", "--type", "int"]).await;
    assert!(negative.status.success(), "{}", stderr(&negative));
    assert_eq!(stdout(&qkv(s, &["hget", "t", "n"]).await), "-5\n");

    // A float written out never silently becomes infinity or 0; one prints so that it is not taken
    // for an integer, nor spelt out in 301 digits, and reads back as it printed.
    for out_of_range in ["1e400", "-1e400", "1e-400"] {
        let refused = qkv(s, &["hset", "t", "x", out_of_range, "--type", "float"]).await;
        assert_eq!(refused.status.code(), Some(EXIT_INVALID_INPUT), "{out_of_range}: {}", stderr(&refused));
        assert!(stderr(&refused).contains("out of range"), "{out_of_range}: {}", stderr(&refused));
    }
    for (written, printed) in
        [("1", "1.0"), ("2.5e300", "2.5e300"), ("-0", "-0.0"), ("inf", "inf"), ("NaN", "NaN")]
    {
        let set = qkv(s, &["hset", "t", "x", written, "--type", "float"]).await;
        assert!(set.status.success(), "{written}: {}", stderr(&set));
        assert_eq!(stdout(&qkv(s, &["hget", "t", "x"]).await), format!("{printed}\n"), "{written}");
        let again = qkv(s, &["hset", "t", "y", printed, "--type", "float"]).await;
        assert!(again.status.success(), "{printed}: {}", stderr(&again));
    }

    let misuse = qkv(None, &["serve", "--threads", "2"]).await;
    assert_eq!(misuse.status.code(), Some(EXIT_INVALID_INPUT));
    assert!(stderr(&misuse).contains("--runtime multi-thread"), "{}", stderr(&misuse));

    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().to_str().expect("a UTF-8 path");
    let held = qkv(None, &["serve", "--store", "disk", "--data-dir", data, "--commit-wait", "1s"]).await;
    assert_eq!(held.status.code(), Some(EXIT_INVALID_INPUT));
    assert!(stderr(&held).contains("--commit-wait 1s holds writes too long"), "{}", stderr(&held));

    // A bench that cannot run as asked, or would ignore a flag, says so rather than measuring
    // something else (or panicking): a value no request can carry is named as the flag's.
    let huge = qkv(None, &["bench", "--value-size", "100000000"]).await;
    assert_eq!(huge.status.code(), Some(EXIT_INVALID_INPUT), "{}", stderr(&huge));
    assert!(
        stderr(&huge).contains("--value-size 100000000 is more than a request can carry"),
        "{}",
        stderr(&huge)
    );
    for (args, said) in [
        (&["--rate", "0"][..], "--rate must be a number of requests per second above 0"),
        (&["--rate=-5"][..], "--rate must be"),
        (&["--rate", "NaN"][..], "--rate must be"),
        (&["--rate", "1e12"][..], "at most"),
        (&["--duration", "0s"][..], "--duration must be longer than zero"),
        (&["--timeline", "100ms"][..], "use it with --json"),
        (&["--timeline", "0ms", "--json"][..], "--timeline must be a slot longer than zero"),
        (
            &["--zero-rtt"][..],
            "--zero-rtt is for the connect workload only; the hget workload would ignore it",
        ),
        (&["--stalled", "1"][..], "--stalled is for the fanout workload only"),
        (&["--read-ratio", "0.5"][..], "--read-ratio is for the mixed workload only"),
        (&["--workload", "mixed", "--read-ratio", "-0.1"][..], "--read-ratio must be between 0 and 1"),
        // What a workload or a transport would not use is refused, not reported as if it had been.
        (&["--workload", "ping", "--value-size", "4000"][..], "the ping workload does not use --value-size"),
        (&["--workload", "fanout", "--key-dist", "zipf"][..], "the fanout workload does not use --key-dist"),
        (
            &["--workload", "connect", "--connections-per-socket", "4"][..],
            "does not use --connections-per-socket",
        ),
        (&["--workload", "connect", "--zero-rtt", "--no-0rtt"][..], "contradict each other"),
        (
            &["--transport", "tls", "--no-gso"][..],
            "--no-gso is for QUIC; over --transport tls it would be ignored",
        ),
        (&["--transport", "tcp", "--congestion", "bbr"][..], "--congestion is for QUIC"),
    ] {
        let refused = qkv(None, &[&["bench", "--addr", "127.0.0.1:9"][..], args].concat()).await;
        assert_eq!(refused.status.code(), Some(EXIT_INVALID_INPUT), "{args:?}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(said), "{args:?}: {}", stderr(&refused));
    }

    // A Redis URL that cannot be used is refused at start, not retried for ever.
    for (url, said) in [("http://h:1", "redis:// or rediss://"), ("redis://h:port", "not a Redis URL")] {
        let refused = qkv(None, &["serve", "--store", "redis", "--redis", url]).await;
        assert_eq!(refused.status.code(), Some(EXIT_INVALID_INPUT), "{url}: {}", stderr(&refused));
        assert!(stderr(&refused).contains(said), "{url}: {}", stderr(&refused));
    }
}

#[tokio::test]
async fn an_unreachable_or_untrusted_server_exits_3() {
    let server = TestServer::start().await;
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let ca = server.ca();
    let nobody_there = qkv(
        None,
        &[
            "ping",
            "--addr",
            &silent.local_addr().unwrap().to_string(),
            "--ca",
            ca.to_str().unwrap(),
            "--connect-timeout",
            "300ms",
        ],
    )
    .await;
    assert_eq!(nobody_there.status.code(), Some(EXIT_UNREACHABLE));
    assert!(stderr(&nobody_there).contains("is the server running"), "{}", stderr(&nobody_there));

    let other = tempfile::tempdir().unwrap();
    assert!(qkv(None, &["cert", "--dir", other.path().to_str().unwrap()]).await.status.success());
    let other_ca = other.path().join("ca.pem");
    let untrusted =
        qkv(None, &["ping", "--addr", &server.addr.to_string(), "--ca", other_ca.to_str().unwrap()]).await;
    assert_eq!(untrusted.status.code(), Some(EXIT_UNREACHABLE));
    assert!(stderr(&untrusted).contains("UnknownIssuer"), "{}", stderr(&untrusted));

    // `qkv bench` fails as the client it runs does (it exited 4, "a local failure").
    let silent_addr = silent.local_addr().unwrap().to_string();
    for (addr, ca) in [(silent_addr.as_str(), &ca), (&server.addr.to_string(), &other_ca)] {
        let bench = qkv(
            None,
            &["bench", "--addr", addr, "--ca", ca.to_str().unwrap(), "--duration", "1s", "--warmup", "0s"],
        )
        .await;
        assert_eq!(bench.status.code(), Some(EXIT_UNREACHABLE), "{addr}: {}", stderr(&bench));
    }
}

#[tokio::test]
async fn cert_writes_private_keys_0600_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("certs");
    let path = path.to_str().unwrap();
    let created = qkv(None, &["cert", "--dir", path, "--name", "kv.example.com"]).await;
    assert!(created.status.success(), "{}", stderr(&created));
    assert!(stdout(&created).contains("kv.example.com"));
    for key in ["ca-key.pem", "server-key.pem"] {
        let mode = std::fs::metadata(dir.path().join("certs").join(key)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    let again = qkv(None, &["cert", "--dir", path]).await;
    assert_eq!(again.status.code(), Some(EXIT_INVALID_INPUT));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    // Names that cannot be certificate names are bad input too, not local failures.
    for bad in [&["--name", "bad name!", "--force"][..], &["--client", ""], &["--client", "../evil"]] {
        let refused = qkv(None, &[&["cert", "--dir", path][..], bad].concat()).await;
        assert_eq!(refused.status.code(), Some(EXIT_INVALID_INPUT), "{bad:?}: {}", stderr(&refused));
    }
    assert!(qkv(None, &["cert", "--dir", path, "--force"]).await.status.success());
    // A file where the directory should be is named as not a directory ("File exists" said nothing).
    let file = tempfile::NamedTempFile::new().unwrap();
    let not_a_dir = qkv(None, &["cert", "--dir", file.path().to_str().unwrap()]).await;
    assert!(stderr(&not_a_dir).contains("not a directory"), "{}", stderr(&not_a_dir));
}

/// `qkv cert --client NAME --valid-for DURATION` issues a short-lived client certificate (the stand-in
/// for revocation docs/SECURITY.md advises), and refuses a validity over the 397 days of the default.
#[tokio::test]
async fn cert_issues_client_certificates_valid_for_what_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    let issued = qkv(None, &["cert", "--dir", path, "--client", "brief", "--valid-for", "7d"]).await;
    assert!(issued.status.success(), "{}", stderr(&issued));
    let identity =
        qkv::tls::Identity::from_pem_files(&dir.path().join("brief.pem"), &dir.path().join("brief-key.pem"))
            .unwrap();
    let left = identity.not_after().unwrap().duration_since(std::time::SystemTime::now()).unwrap();
    assert!(left <= Duration::from_secs(7 * 86_400) && left > Duration::from_secs(6 * 86_400), "{left:?}");
    let refused = qkv(None, &["cert", "--dir", path, "--client", "long", "--valid-for", "400days"]).await;
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("at most 397 days"), "{}", stderr(&refused));
}

/// A certificate or data directory that does not exist is made, as documented, but warned about: a
/// mistyped path or an unmounted volume otherwise served, ready, with an empty store or a CA no client
/// trusts.
#[tokio::test]
async fn directories_created_at_start_are_warned_about() {
    let certs = tempfile::tempdir().unwrap();
    std::fs::remove_dir(certs.path()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let missing = data.path().join("not-mounted");
    let args = ["--store", "disk", "--data-dir", missing.to_str().unwrap()];
    let server = ServerProcess::start_in(certs, &args, &[]).await;
    for what in ["certificate directory did not exist", "data directory did not exist"] {
        let warned = server.startup_log.iter().any(|l| l.contains("WARN") && l.contains(what));
        assert!(warned, "{what}: {:#?}", server.startup_log);
    }
}

/// A UDP buffer too small to hold a burst is refused; one larger than the kernel grants is warned about
/// (it was capped at net.core.rmem_max without a word).
#[tokio::test]
async fn a_udp_socket_buffer_too_small_is_refused_and_one_the_kernel_caps_is_warned_about() {
    let tiny = qkv(None, &["serve", "--udp-socket-buffer", "0", "--print-config"]).await;
    assert_eq!(tiny.status.code(), Some(EXIT_INVALID_INPUT), "{}", stderr(&tiny));
    assert!(stderr(&tiny).contains("at least 64KiB"), "{}", stderr(&tiny));
    let rmem_max: u64 =
        std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
    let more = (2 * rmem_max).max(64 * 1024).to_string();
    let server = ServerProcess::start(&["--udp-socket-buffer", &more]).await;
    let warned = server.startup_log.iter().any(|l| l.contains("WARN") && l.contains("net.core.rmem_max"));
    assert!(warned, "{:?}", server.startup_log);
}

#[tokio::test]
async fn bad_tcp_input_is_logged_and_plaintext_beyond_loopback_is_warned_about() {
    // Listening on every address (nothing is sent to any but loopback).
    let mut server = ServerProcess::start(&["--tcp-plaintext", "--listen", "0.0.0.0:0"]).await;
    let warned =
        server.startup_log.iter().any(|l| l.contains("WARN") && l.contains("plaintext TCP beyond loopback"));
    assert!(warned, "{:?}", server.startup_log);

    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let line = server.log_line(&["closing the connection"]).await;
    assert!(line.contains("INFO") && line.contains("bad request") && line.contains("HTTP request"), "{line}");
    assert!(line.contains("qkv::connection"), "{line}");
    assert!(line.contains(&stream.local_addr().unwrap().to_string()), "the line names the client: {line}");
}

/// Opens `count` connections to `server`, each sending `bad` and reading until the server closes it;
/// then stops the server and returns the lines it logged containing `logged`, and the clients'
/// addresses and how long the connections took.
async fn flood(
    mut server: ServerProcess,
    count: usize,
    bad: &[u8],
    logged: &str,
) -> (Vec<String>, HashSet<String>, Duration) {
    use tokio::io::AsyncReadExt;
    let started = std::time::Instant::now();
    let mut clients = HashSet::new();
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        clients.insert(stream.local_addr().unwrap().to_string());
        stream.write_all(bad).await.unwrap();
        // Until the server closes the connection (a reset is a close too).
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink).await;
    }
    // And one from another client, at once: the flood must not hide its line. (Linux takes all of
    // 127.0.0.0/8 as loopback; elsewhere 127.0.0.2 needs an alias.)
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();
    clients.insert(stream.local_addr().unwrap().to_string());
    stream.write_all(bad).await.unwrap();
    let _ = stream.read_to_end(&mut Vec::new()).await;
    let took = started.elapsed();
    // Shutdown waits for every connection's task: the lines are all written when it exits.
    server.terminate();
    let mut lines: Vec<String> = std::mem::take(&mut server.startup_log);
    let (exited, rest) = server.exit().await;
    assert!(exited.success(), "{exited:?}");
    lines.extend(rest);
    lines.retain(|line| line.contains(logged));
    (lines, clients, took)
}

/// A client that opens bad connections by the thousand cannot flood the log: the server logs at most
/// a line a second for them, under `qkv::connection`, each naming its client and how many lines it
/// left out, and the flood does not hide another client's line; `RUST_LOG=info,qkv::connection=warn`
/// turns them off, as docs/OPERATIONS.md says.
#[tokio::test]
async fn a_flood_of_bad_connections_logs_a_line_a_second_naming_its_client() {
    const COUNT: usize = 300;
    let oversized = (1u32 << 30).to_be_bytes();
    let garbage_hello = b"\x16\x03\x01\x00\x10not a client hello";
    for (args, bad, logged) in [
        (&["--tcp-plaintext"][..], &oversized[..], "closing the connection"),
        (&[][..], &garbage_hello[..], "TLS handshake failed"),
    ] {
        let server = ServerProcess::start(args).await;
        let (lines, clients, took) = flood(server, COUNT, bad, logged).await;
        assert!(!lines.is_empty(), "{logged}: logged at all");
        // A line at the start and then at most one a second, and the other client's.
        assert!(lines.len() as u64 <= took.as_secs() + 3, "{logged}: {} lines in {took:?}", lines.len());
        assert!(lines.iter().any(|line| line.contains("remote=127.0.0.2:")), "{logged}: {lines:#?}");
        for line in &lines {
            assert!(line.contains("INFO") && line.contains("qkv::connection"), "{line}");
            let client = line.split("remote=").nth(1).and_then(|r| r.split([' ', '}']).next());
            assert!(client.is_some_and(|c| clients.contains(c)), "the line names its client: {line}");
            assert!(line.contains("suppressed="), "{line}");
        }
    }

    let quiet =
        ServerProcess::start_with_env(&["--tcp-plaintext"], &[("RUST_LOG", "info,qkv::connection=warn")]);
    let (lines, _, _) = flood(quiet.await, 20, &oversized, "closing the connection").await;
    assert!(lines.is_empty(), "{lines:#?}");
}

#[tokio::test]
async fn subscribe_prints_each_message_as_it_arrives_and_publish_prints_its_receivers() {
    for transport in [Transport::Quic, Transport::Tcp] {
        let server = TestServer::start_for(transport).await;
        let s = Some(&server);
        let mut subscribed = server.service.broker().watch_subscriptions();
        let subscriber = qkv(s, &["subscribe", "news", "--count", "3"]);
        // A value too large for a command line goes in a file.
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "from a file\n").unwrap();
        let publishing = async {
            subscribed.wait_for(|&n| n == 1).await.expect("the broker lives");
            let first = qkv(s, &["publish", "news", "hello", "world"]).await;
            assert_eq!(stdout(&first), "1\n", "{}", stderr(&first));
            let second = qkv(s, &["publish", "news", "-7", "--type", "int"]).await;
            assert_eq!(stdout(&second), "1\n", "{}", stderr(&second));
            let third = qkv(s, &["publish", "news", "--value-file", file.path().to_str().unwrap()]).await;
            assert_eq!(stdout(&third), "1\n", "{}", stderr(&third));
        };
        let (output, ()) = tokio::join!(subscriber, publishing);
        assert!(output.status.success(), "{}", stderr(&output));
        assert_eq!(stdout(&output), "hello\tworld\n-7\nfrom a file\n\n", "over {transport}");
        assert_eq!(stderr(&output), "subscribed to \"news\"\n", "over {transport}");
        // It unsubscribed on its way out.
        assert_eq!(server.service.broker().total_subscriptions(), 0);
    }
}

/// `--log-format json`: a server that cannot start says why in a JSON line too, like every other
/// line of its log, for a log shipper to parse.
#[tokio::test]
async fn json_logs_say_why_the_server_stopped_in_json() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let certs = tempfile::tempdir().unwrap();
    let certs = certs.path().to_string_lossy();
    // The admin listener on the TCP listener's port: it cannot listen.
    let args = ["serve", "--listen", &addr, "--admin", &addr, "--certs", &certs, "--log-format", "json"];
    // Whatever the log's filter keeps.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(args)
        .env("RUST_LOG", "qkv::connection=debug")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_LOCAL_FAILURE), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stderr(&output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let last = lines.last().expect("a log");
    assert_eq!(last["level"], "ERROR", "{last}");
    let error = last["fields"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("cannot listen"), "{last}");
}

/// `--log-format json`: the line a connection logs as it ends has exactly the fields of
/// docs/OPERATIONS.md's sample (a QUIC connection's); over TLS and HTTP (the web listener), all but
/// QUIC's own (`reason`, `rtt_us`, `lost_packets`, `migrations`, and the span's `id`).
#[tokio::test]
async fn json_logs_have_the_fields_operations_md_shows() {
    let operations = include_str!("../docs/OPERATIONS.md");
    let logs = operations.split("\n## Logs\n").nth(1).expect("the Logs section");
    let sample = logs.split("```json\n").nth(1).and_then(|b| b.lines().next()).expect("a JSON sample");
    let sample: serde_json::Value = serde_json::from_str(sample).expect("the sample is JSON");
    let keys = |value: &serde_json::Value| -> std::collections::BTreeSet<String> {
        value.as_object().expect("an object").keys().cloned().collect()
    };
    const QUIC_ONLY: [&str; 5] = ["reason", "rtt_us", "lost_packets", "migrations", "id"];

    let mut server = ServerProcess::start(&["--log-format", "json", "--web", "127.0.0.1:0"]).await;
    let web = server.web_addr().await.to_string();
    for transport in [Transport::Quic, Transport::Tls, Transport::Http] {
        let config = match transport.is_web() {
            true => qkv::client::ClientConfig {
                transport,
                ..qkv::client::ClientConfig::new(web.clone(), server.ca())
            },
            false => server.client_config(transport),
        };
        let client = qkv::Client::connect_with(config).await.unwrap();
        client.ping(bytes::Bytes::new()).await.unwrap();
        client.close().await;
        let line = server.log_line(&["connection ended", &format!("\"transport\":\"{transport}\"")]).await;
        let logged: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let expected = |value: &serde_json::Value| {
            let mut keys = keys(value);
            if transport != Transport::Quic {
                keys.retain(|key| !QUIC_ONLY.contains(&key.as_str()));
            }
            keys
        };
        assert_eq!(keys(&logged), keys(&sample), "{line}");
        assert_eq!(keys(&logged["fields"]), expected(&sample["fields"]), "{transport}: {line}");
        assert_eq!(keys(&logged["spans"][0]), expected(&sample["spans"][0]), "{transport}: {line}");
        assert_eq!(logged["target"], sample["target"], "{line}");
    }
    server.kill().await;
}

/// A `RUST_LOG` directive that does not parse is named in a warning and left out; the others apply,
/// rather than all of them silently replaced by the default.
#[tokio::test]
async fn a_bad_rust_log_directive_is_named_and_the_others_apply() {
    let env = [("RUST_LOG", "info,qkv::connection=warning,qkv::transport=debug")];
    let mut server = ServerProcess::start_with_env(&[], &env).await;
    let warned = server.startup_log.iter().find(|l| l.contains("WARN") && l.contains("RUST_LOG"));
    let warned = warned.unwrap_or_else(|| panic!("no warning: {:#?}", server.startup_log));
    assert!(warned.contains("qkv::connection=warning"), "{warned}");
    // `qkv::transport=debug` applies: a connection is logged at debug as it is established.
    let client = qkv::Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    client.ping(bytes::Bytes::new()).await.unwrap();
    let line = server.log_line(&["DEBUG", "connection established"]).await;
    assert!(line.contains("qkv::transport"), "{line}");
    client.close().await;
    server.kill().await;
}

/// A `QKV_` variable that no flag reads is named in a warning, not ignored without a word.
#[tokio::test]
async fn a_misspelt_environment_variable_is_named_in_a_warning() {
    // Any command warns; `--print-config` too, which answers "what would this server run with?".
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().to_str().unwrap();
    for args in [&["cert", "--dir", certs][..], &["serve", "--print-config"]] {
        let known = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
            .args(args)
            .env("QKV_MAX_CONECTIONS", "5")
            .env("QKV_MAX_CONNECTIONS", "5")
            .output()
            .await
            .expect("qkv runs");
        let said = stderr(&known);
        assert!(said.contains("QKV_MAX_CONECTIONS") && said.contains("misspelt"), "{args:?}: {said}");
        assert!(!said.contains("QKV_MAX_CONNECTIONS"), "a variable a flag reads is not warned of: {said}");
    }
}

/// Budgets above what the machine has bound nothing: the server says so as it starts.
#[tokio::test]
async fn budgets_beyond_the_machine_are_warned_of() {
    let server = ServerProcess::start(&["--memory-budget", "1PiB"]).await;
    let warned =
        server.startup_log.iter().any(|line| line.contains("WARN") && line.contains("add up to more"));
    assert!(warned, "{:#?}", server.startup_log);
    let modest = ServerProcess::start(&["--memory-budget", "16MiB", "--connection-memory", "16MiB"]).await;
    assert!(
        !modest.startup_log.iter().any(|line| line.contains("add up to more")),
        "{:#?}",
        modest.startup_log
    );
}

#[tokio::test]
async fn an_idle_timeout_shorter_than_clients_keep_alive_needs_is_warned_about() {
    let warned = |server: &ServerProcess| {
        server.startup_log.iter().any(|l| l.contains("WARN") && l.contains("three keep-alive intervals"))
    };
    // `qkv subscribe` against `--idle-timeout 5s` lost its quiet subscription: clients keep alive
    // every 10 s by default.
    let short = ServerProcess::start(&["--idle-timeout", "5s"]).await;
    assert!(warned(&short), "{:?}", short.startup_log);
    let default = ServerProcess::start(&[]).await;
    assert!(!warned(&default), "{:?}", default.startup_log);
}

/// Every TCP connection takes a file descriptor: a server whose limit of open files is below what
/// `--max-connections` needs raises it as far as it may, and says so when even that is too low (then
/// TCP connections beyond the limit are refused, and each failed accept is logged).
#[tokio::test]
async fn a_server_that_may_open_too_few_files_for_its_connections_says_so() {
    let certs = tempfile::tempdir().unwrap();
    let serve = |limits: &str| {
        let mut command = tokio::process::Command::new("prlimit");
        command
            .arg(format!("--nofile={limits}"))
            .arg(env!("CARGO_BIN_EXE_qkv"))
            .args(["serve", "--listen", "127.0.0.1:0", "--max-connections", "1000", "--certs"])
            .arg(certs.path())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        command.spawn().expect("prlimit runs qkv serve (util-linux)")
    };
    // The lines the server logs until it serves.
    async fn startup(mut child: tokio::process::Child) -> String {
        use tokio::io::AsyncBufReadExt;
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut log = String::new();
        let until_serving = async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.push_str(&line);
                log.push('\n');
                if line.contains("serving") {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), until_serving).await.expect("it serves");
        child.kill().await.expect("stopped");
        log
    }
    let raised = startup(serve("300:2000")).await;
    assert!(raised.contains("raised the limit of open files"), "{raised}");
    let short = startup(serve("300:300")).await;
    assert!(short.contains("may open fewer files than --max-connections needs"), "{short}");
}

/// A subscriber the server ends (it shuts down: 410) exits 3, "try again later", as one that cannot
/// reach the server does: not 5, which asks to read what a write did.
#[tokio::test]
async fn a_subscriber_the_server_ends_exits_3() {
    use tokio::io::AsyncBufReadExt;
    let server = ServerProcess::start(&[]).await;
    let mut subscriber = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["subscribe", "news", "--addr", &server.addr.to_string()])
        .arg("--ca")
        .arg(server.ca())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qkv runs");
    let mut lines = tokio::io::BufReader::new(subscriber.stderr.take().expect("stderr")).lines();
    let subscribed = lines.next_line().await.unwrap().unwrap_or_default();
    assert!(subscribed.starts_with("subscribed to"), "{subscribed}");
    server.terminate();
    let status = subscriber.wait().await.unwrap();
    let said = lines.next_line().await.unwrap().unwrap_or_default();
    assert_eq!(status.code(), Some(3), "{said}");
    assert!(said.contains("410"), "{said}");
}

/// A subscription that loses its connection, or whose Subscribe is never answered, exits 3 and says
/// the subscription ended: nothing about a request that "may or may not have been executed", and not
/// 5, which asks to read what a write did.
#[tokio::test]
async fn a_subscription_lost_or_unanswered_exits_3_as_a_subscription() {
    // The server's idle timeout ends a quiet QUIC connection (the client's keep-alive is longer).
    let idle = ServerProcess::start(&["--idle-timeout", "1s"]).await;
    let lost = qkv_at(&idle, &["subscribe", "news", "--transport", "quic"]).await;
    assert_eq!(lost.status.code(), Some(EXIT_UNREACHABLE), "{}", stderr(&lost));
    assert!(
        stderr(&lost).contains("the subscription ended: the connection to the server was lost"),
        "{}",
        stderr(&lost)
    );
    // A server that stopped (SIGSTOP) takes the TCP connection in its backlog and never answers.
    let stopped = ServerProcess::start(&["--tcp-plaintext"]).await;
    stopped.signal("STOP");
    let unanswered = qkv_at(&stopped, &["subscribe", "news", "--transport", "tcp", "--timeout", "1s"]).await;
    stopped.signal("CONT");
    assert_eq!(unanswered.status.code(), Some(EXIT_UNREACHABLE), "{}", stderr(&unanswered));
    let said = stderr(&unanswered);
    assert!(said.contains("could not subscribe: no answer") && !said.contains("may or may not"), "{said}");
}

/// `qkv ARGS --addr` `server`'s address `--ca` its CA.
async fn qkv_at(server: &ServerProcess, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"));
    command.args(args).arg("--addr").arg(server.addr.to_string()).arg("--ca").arg(server.ca());
    command.output().await.expect("qkv runs")
}
