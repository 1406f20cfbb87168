//! The README's tour of the command line is true: its commands, run in order in one shell against a
//! real `qkv serve`, print what the README shows. The tour is read from README.md itself, so the test
//! fails as soon as the two drift apart. So are its other examples: the REST and browser ones (curl),
//! the operations commands, and those that start servers of their own or run in the background
//! (transports, publish and subscribe, mutual TLS, benchmarking). Its Rust examples are compiled by
//! tests/readme_rust.rs.
//!
//! What may differ, and how the README shows it:
//! - versions (integers of 13 digits or more, counted from the server's start time in µs): every
//!   version shown must be the one printed plus one common offset, so the README's numbers must count
//!   up exactly as the server's do;
//! - measurements (decimal numbers, like a ping's milliseconds): any number;
//! - the server's address: the README shows the default, 127.0.0.1:9527;
//! - a line `...`: the command's remaining lines, whatever they are;
//! - `…` within a line: any text there (a hash, a date).

mod common;

use std::process::Stdio;

use common::process::ServerProcess;

/// The first command of the tour, which the test replaces with the binary it built (`cargo run
/// --release` would build another).
const ALIAS: &str = "alias qkv='cargo run --release --quiet --'";

/// What the README shows for the server's address.
const README_ADDR: &str = "127.0.0.1:9527";

/// In a line the README shows: any text, at least a character.
const ELIDED: &str = "…";

/// Printed before each command's output, to tell the outputs apart.
const MARKER: &str = "@@readme-tour-step@@";

/// One `$ command` of the tour and the lines shown under it.
#[derive(Debug)]
struct Step {
    command: String,
    expected: Vec<String>,
    /// Its lines may be printed in any order (a background command prints beside it).
    unordered: bool,
}

/// The README's section of the tour.
const TOUR: &str = "A tour of the command line";

/// The first `console` block of the README's tour.
fn tour() -> Vec<Step> {
    console_block(TOUR)
}

/// The first `console` block of the README's section `heading`, as steps.
fn console_block(heading: &str) -> Vec<Step> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section = readme.split(&format!("\n## {heading}\n")).nth(1).expect("the section");
    let block = section.split("```console\n").nth(1).expect("a console block in the section");
    let block = block.split("\n```").next().expect("the end of the console block");
    let mut steps: Vec<Step> = Vec::new();
    for line in block.lines() {
        match line.strip_prefix("$ ") {
            Some(command) => {
                steps.push(Step { command: command.to_owned(), expected: Vec::new(), unordered: false })
            }
            None => steps.last_mut().expect("the block starts with a command").expected.push(line.to_owned()),
        }
    }
    steps
}

/// A part of a line: text, or a number (digits, with a decimal part perhaps).
#[derive(Debug, PartialEq)]
enum Token<'a> {
    Text(&'a str),
    Number(&'a str),
}

fn tokens(line: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        if digits > 0 {
            tokens.push(Token::Text(&rest[..digits]));
            rest = &rest[digits..];
            continue;
        }
        let mut end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if rest[end..].starts_with('.') && rest[end + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            end += 1 + rest[end + 1..].find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len() - end - 1);
        }
        tokens.push(Token::Number(&rest[..end]));
        rest = &rest[end..];
    }
    tokens
}

/// Compares a line the README shows with one the tour printed; `offset` is what the printed versions
/// add to the README's, set by the first version met.
fn line_matches(expected: &str, actual: &str, offset: &mut Option<i128>) -> Result<(), String> {
    if expected.contains(ELIDED) {
        return elided_matches(expected, actual);
    }
    let (expected, actual) = (tokens(expected), tokens(actual));
    if expected.len() != actual.len() {
        return Err("different shapes".into());
    }
    for (e, a) in expected.iter().zip(&actual) {
        match (e, a) {
            (Token::Text(e), Token::Text(a)) if e == a => {}
            // A measurement: any value.
            (Token::Number(e), Token::Number(a)) if e.contains('.') && a.contains('.') => {}
            (Token::Number(e), Token::Number(a)) if e.len() >= 13 && !a.contains('.') => {
                let (e, a): (i128, i128) = (e.parse().expect("digits"), a.parse().expect("digits"));
                let offset = *offset.get_or_insert(a - e);
                if a - e != offset {
                    return Err(format!(
                        "version {a} is not the README's {e} plus {offset}, as earlier ones are"
                    ));
                }
            }
            (Token::Number(e), Token::Number(a)) if e == a => {}
            (e, a) => return Err(format!("{e:?} is shown, {a:?} printed")),
        }
    }
    Ok(())
}

/// A line with `…` stands for any text there (a hash, a date); the rest must be printed as shown.
fn elided_matches(expected: &str, actual: &str) -> Result<(), String> {
    let mut parts = expected.split(ELIDED);
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = actual.strip_prefix(first) else {
        return Err(format!("it does not start with {first:?}"));
    };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        let at = if i + 1 == parts.len() {
            rest.len().checked_sub(part.len()).filter(|&at| rest.is_char_boundary(at) && rest[at..] == **part)
        } else {
            rest.find(part)
        };
        let Some(at) = at.filter(|&at| at > 0) else {
            return Err(format!("{part:?} is not printed after …"));
        };
        rest = &rest[at + part.len()..];
    }
    Ok(())
}

/// The tour, in one shell as a reader's terminal (its variables carry from one command to the next),
/// against the server the README's first command runs.
#[tokio::test]
async fn the_readme_tour_prints_what_the_readme_shows() {
    let steps = tour();
    assert_eq!(steps.first().map(|s| s.command.as_str()), Some(ALIAS), "the tour starts with the alias");
    assert!(steps.len() > 5, "{steps:#?}");
    assert!(steps[0].expected.is_empty(), "{steps:#?}");
    let shown_versions = assert_example_prints_what_it_shows(TOUR, true).await;
    assert!(shown_versions, "the tour shows versions");
}

/// Each step's output in `printed` (each after a marker line) is what the README shows under it.
/// Whether it showed versions.
fn assert_printed_as_shown(steps: &[Step], printed: &str) -> bool {
    let marker_line = format!("{MARKER}\n");
    let mut outputs = printed.split(&marker_line);
    assert_eq!(outputs.next(), Some(""), "nothing before the first command: {printed}");
    let outputs: Vec<&str> = outputs.collect();
    assert_eq!(outputs.len(), steps.len(), "{printed}");
    let mut offset = None;
    for (step, printed) in steps.iter().zip(outputs) {
        let mut printed: Vec<&str> = printed.lines().collect();
        let mut shown: Vec<&str> = step.expected.iter().map(String::as_str).collect();
        if step.unordered {
            assert!(!shown.contains(&"..."), "`{}`: an unordered step shows every line", step.command);
            printed.sort_unstable();
            shown.sort_unstable();
        }
        let mismatch = |why: String| {
            panic!(
                "`{}`: {why}\nthe README shows:\n{}\nit printed:\n{}",
                step.command,
                step.expected.join("\n"),
                printed.join("\n")
            )
        };
        let mut lines = printed.iter();
        for expected in shown {
            if expected == "..." {
                lines.by_ref().for_each(drop);
                break;
            }
            let Some(actual) = lines.next() else { mismatch(format!("{expected:?} is missing")) };
            line_matches(expected, actual, &mut offset).unwrap_or_else(|why| mismatch(why));
        }
        if let Some(extra) = lines.next() {
            mismatch(format!("{extra:?} is not shown"));
        }
    }
    offset.is_some()
}

/// The README's curl examples of the REST API print what it shows: against a server started as its
/// first line says (on a free port instead of the one shown), trusting that server's CA.
#[tokio::test]
async fn the_readme_http_examples_print_what_the_readme_shows() {
    assert!(assert_curl_examples(HTTP).await, "the examples show versions");
}

/// The README's browser section: what `/webtransport-cert` tells a page.
#[tokio::test]
async fn the_readme_browser_examples_print_what_the_readme_shows() {
    assert_curl_examples(BROWSER).await;
}

/// Runs the first `console` block of the README's section `heading`: a `qkv serve --web` line, then
/// curl commands, which must print what the README shows. The server runs on free ports, which the
/// output shows as the README's (the web listener's 9443, the QUIC port's 9527). Whether they showed
/// versions.
async fn assert_curl_examples(heading: &str) -> bool {
    let steps = console_block(heading);
    let readme_web = "localhost:9443";
    let serve = format!("qkv serve --web 127.0.0.1:{} &", readme_web.rsplit(':').next().unwrap_or_default());
    assert_eq!(
        steps.first().map(|s| s.command.as_str()),
        Some(serve.as_str()),
        "the examples start the server"
    );
    assert!(steps.len() > 1 && steps[1..].iter().all(|s| s.command.contains("curl ")), "{steps:#?}");

    let mut server = ServerProcess::start(&["--web", "127.0.0.1:0"]).await;
    let web = format!("localhost:{}", server.web_addr().await.port());
    let ca = server.ca().to_string_lossy().into_owned();
    let mut script = String::from("exec 2>&1\n");
    for step in &steps[1..] {
        let command = step.command.replace(readme_web, &web).replace("certs/ca.pem", &ca);
        script.push_str(&format!("echo '{MARKER}'\n{command}\n"));
    }
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("sh runs");
    let quic_port = format!("\"port\":{}", server.addr.port());
    let printed = String::from_utf8_lossy(&output.stdout)
        .replace(&web, readme_web)
        .replace(&quic_port, &format!("\"port\":{}", README_ADDR.rsplit(':').next().unwrap_or_default()));
    assert_printed_as_shown(&steps[1..], &printed)
}

#[test]
fn versions_measurements_and_text_are_told_apart() {
    let mut offset = None;
    assert!(
        line_matches("Ada Lovelace\t1796190614423501", "Ada Lovelace\t1800000000000001", &mut offset).is_ok()
    );
    assert_eq!(offset, Some(3_809_385_576_500));
    // Later versions keep the same offset: one more write, one more.
    assert!(line_matches("1796190614423502", "1800000000000002", &mut offset).is_ok());
    assert!(line_matches("1796190614423502", "1800000000000007", &mut offset).is_err());
    assert!(line_matches("pong in 0.412 ms", "pong in 12.5 ms", &mut offset).is_ok());
    assert!(line_matches("born\t1815", "born\t1816", &mut offset).is_err());
    assert!(line_matches("Ada King", "Ada Lovelace", &mut offset).is_err());
    assert!(line_matches("false", "false true", &mut offset).is_err());
    // `…` elides any text, but at least a character, and nothing else.
    assert!(
        line_matches(
            r#"{"sha256":"…","self_issued":true}"#,
            r#"{"sha256":"a1b2","self_issued":true}"#,
            &mut offset
        )
        .is_ok()
    );
    assert!(
        line_matches(
            r#"{"sha256":"…","self_issued":true}"#,
            r#"{"sha256":"","self_issued":true}"#,
            &mut offset
        )
        .is_err()
    );
    assert!(
        line_matches(
            r#"{"sha256":"…","self_issued":true}"#,
            r#"{"sha256":"ab","self_issued":false}"#,
            &mut offset
        )
        .is_err()
    );
    assert!(line_matches("at … and …", "at noon and later", &mut offset).is_ok());
    assert!(line_matches("at … and …", "by noon and later", &mut offset).is_err());
}

/// The commands of the README's section "Operations", in order: the configuration printed to a file, a
/// server started on that file with an admin listener, `qkv stat` against it. The server and `qkv
/// stat` run until stopped, so the test gives the server a free port and stops `qkv stat` after one
/// line (`--count 1`); the admin address the README shows is replaced by a free one.
#[tokio::test]
async fn the_readme_operations_commands_work() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section = readme.split("\n## Operations\n").nth(1).expect("the Operations section");
    let section = section.split("\n## ").next().expect("the section's end");
    let commands: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("\n```").next())
        .flat_map(str::lines)
        .collect();
    let [print, serve, stat] = commands[..] else {
        panic!("three commands in the Operations section: {commands:?}")
    };
    let readme_admin = "127.0.0.1:9100";
    let dir = tempfile::tempdir().unwrap();
    let qkv = env!("CARGO_BIN_EXE_qkv");

    let mut printing = tokio::process::Command::new("sh");
    // The configuration printed must be the defaults, not whatever QKV_ variables this test inherited.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("QKV_")) {
        printing.env_remove(name);
    }
    let printed = printing
        .arg("-c")
        .arg(print.replacen("qkv ", &format!("{qkv} "), 1))
        .current_dir(dir.path())
        .output()
        .await
        .unwrap();
    assert!(printed.status.success(), "{print}: {}", String::from_utf8_lossy(&printed.stderr));

    let args: Vec<String> = serve
        .strip_prefix("qkv serve ")
        .expect("qkv serve ...")
        .split_whitespace()
        .map(|arg| match arg {
            "qkv.toml" => dir.path().join(arg).to_string_lossy().into_owned(),
            arg if arg == readme_admin => "127.0.0.1:0".to_owned(),
            arg => arg.to_owned(),
        })
        .collect();
    assert!(args.iter().any(|a| a.ends_with("qkv.toml")), "the server reads the printed file: {serve}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = ServerProcess::start(&args).await;
    let admin = server.admin_addr().await.to_string();

    let stat = stat.replacen("qkv ", &format!("{qkv} "), 1).replace(readme_admin, &admin) + " --count 1";
    let shown = tokio::process::Command::new("sh").arg("-c").arg(&stat).output().await.unwrap();
    let output = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{stat}: {}", String::from_utf8_lossy(&shown.stderr));
    assert!(output.contains("req/s") && output.lines().count() == 3, "a header and one line: {output}");
    server.kill().await;
}

/// How the runner of a README example treats one of its commands.
#[derive(Debug, PartialEq)]
enum Role {
    /// `qkv serve … &` or `qkv floor … &`: a server, in the background until the example ends.
    Server,
    /// Any other `… &` (`qkv subscribe … &`): a client in the background, waited for at the end.
    Client,
    /// A command the example waits for.
    Foreground,
}

impl Role {
    /// The role of `command` (without its comment), and the command without its `&`.
    fn of(command: &str) -> (Role, &str) {
        // A background job's `$!` must be qkv itself, not a subshell running the `qkv` function, so
        // that killing it stops qkv: the runner puts the binary in place of `qkv` there.
        match command.strip_suffix('&').map(str::trim_end) {
            Some(server) if server.starts_with("qkv serve") || server.starts_with("qkv floor") => {
                (Role::Server, server)
            }
            Some(client) => (Role::Client, client),
            None => (Role::Foreground, command),
        }
    }
}

/// How long a bench of a README example runs in its test, instead of what it says (or 10 s), and with
/// no warm-up: what it prints has the same lines.
const BENCH_DURATION: &str = "1s";

/// The shell functions of a README example's script; whatever the example left in the background is
/// killed when the script ends.
/// - `ready FILE TEXT PID` waits until FILE has a whole line with TEXT (any line if TEXT is empty)
///   while process PID runs;
/// - `ended PID...` waits until those processes have ended.
///
/// Both give up after a minute, a deadline for a hang and no measure of speed, at once if the process
/// waited for has ended, and end the script if the test that runs it has ended (the script is in a
/// process group of its own). A process that ended but was not waited for is a zombie, which `kill -0`
/// still finds: `alive` reads its state.
const EXAMPLE_PRELUDE: &str = r#"exec 2>&1
qkv() { "$README_QKV_BIN" "$@"; }
servers=
clients=
trap 'kill $servers $clients 2>/dev/null' EXIT
alive() { [ -e "/proc/$1" ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]; }
ready() {
    for _ in $(seq 1200); do
        head -n "$(wc -l < "$1" 2>/dev/null || echo 0)" "$1" 2>/dev/null | grep -q -e "$2" && return 0
        alive "$3" || { echo "ended before it was ready: $1"; cat "$1"; exit 1; }
        alive "$PPID" || exit 1
        sleep 0.05
    done
    echo "never ready: $1"; cat "$1"; exit 1
}
ended() {
    for _ in $(seq 1200); do
        running=
        for pid in "$@"; do alive "$pid" && running=1; done
        [ -z "$running" ] && { wait "$@"; return 0; }
        alive "$PPID" || exit 1
        sleep 0.05
    done
    echo "never ended: $*"; exit 1
}
"#;

/// Runs the first `console` block of the README's section `heading` in one shell, in a directory of
/// its own where `qkv cert` has made the certificates (as the README's first command does), and
/// asserts that each command prints what the README shows under it. Beside what the tour's test
/// allows (versions, measurements, `...`, `…`):
/// - `qkv serve` listens on a free port (`QKV_LISTEN`) and later commands reach it (`QKV_ADDR`); a
///   server started with `--listen ADDR` gets a free port instead, which later commands get in place
///   of ADDR. In what was printed, each server's address becomes the one the README shows.
/// - With `running_server`, the example runs against a `qkv serve` started first, as the README's
///   first section has the reader do.
/// - A server is waited for until it logs that it serves. A client in the background (`qkv subscribe
///   … &`) is waited for until it says something on stderr, which is shown under its command, and at
///   the end until it exits; the commands that run meanwhile may have their lines in any order.
/// - Benches run for [`BENCH_DURATION`] without warm-up, and what they say on stderr is shown only if
///   they fail.
/// - The tour's first line, its alias for `qkv`, is the script's `qkv` function.
///
/// Whether the example showed versions.
async fn assert_example_prints_what_it_shows(heading: &str, running_server: bool) -> bool {
    let mut steps = console_block(heading);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let qkv = env!("CARGO_BIN_EXE_qkv");
    let certs = tokio::process::Command::new(qkv)
        .args(["cert", "--dir", "certs"])
        .current_dir(dir.path())
        .output()
        .await
        .expect("qkv cert runs");
    assert!(certs.status.success(), "{}", String::from_utf8_lossy(&certs.stderr));

    let mut script = String::from(EXAMPLE_PRELUDE);
    if running_server {
        script.push_str(&start_server(0, "qkv serve", &mut Vec::new()));
    }
    // What later commands say in place of an address given to a server's --listen.
    let mut listen: Vec<(String, String)> = Vec::new();
    let mut in_background = false;
    for (i, step) in steps.iter_mut().enumerate() {
        step.unordered = in_background;
        let command = step.command.split(" #").next().unwrap_or_default().trim_end();
        for flag in ["--listen=", "--duration=", "--warmup="] {
            assert!(!command.contains(flag), "the runner reads `{flag}` as two words: {command}");
        }
        let mut command = command.to_owned();
        for (readme, variable) in &listen {
            command = command.replace(readme.as_str(), variable);
        }
        script.push_str(&format!("echo '{MARKER}'\n"));
        if command == ALIAS {
            // The prelude's `qkv` function stands for it.
            continue;
        }
        match Role::of(&command) {
            (Role::Server, server) => script.push_str(&start_server(i + 1, server, &mut listen)),
            (Role::Client, client) => {
                in_background = true;
                script.push_str(&format!(
                    "{} 2>background-{i}.err &\npid=$!\nclients=\"$clients $pid\"\n\
                     ready background-{i}.err '' $pid\ncat background-{i}.err\n",
                    binary_in_place(client)
                ));
            }
            (Role::Foreground, command) if command.starts_with("qkv bench") => {
                let mut args: Vec<&str> = command.split_whitespace().collect();
                match args.iter().position(|&a| a == "--duration") {
                    Some(at) if at + 1 < args.len() => args[at + 1] = BENCH_DURATION,
                    _ => args.extend(["--duration", BENCH_DURATION]),
                }
                if !args.contains(&"--warmup") {
                    args.extend(["--warmup", "0s"]);
                }
                // What a bench says on stderr (errors it counted, at a rate a debug build on a busy
                // machine cannot keep up) depends on the machine; it is shown if the bench fails.
                script.push_str(&format!("{} 2>bench.err || cat bench.err\n", args.join(" ")));
            }
            (Role::Foreground, command) => script.push_str(&format!("{command}\n")),
        }
    }
    // Background clients end by themselves (the README's `--count`); what they said after their first
    // line on stderr is shown under the last command.
    script.push_str("[ -z \"$clients\" ] || ended $clients\n");
    script.push_str("for err in background-*.err; do [ -e \"$err\" ] && tail -n +2 \"$err\"; done\n");

    let mut shell = tokio::process::Command::new("sh");
    // What the README's reader has not set: a QKV_ variable or a log filter would change what qkv does.
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("QKV_") || name == "RUST_LOG") {
        shell.env_remove(name);
    }
    // A process group of its own: if the example hangs, its background jobs are killed with it.
    let shell = shell
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("README_QKV_BIN", qkv)
        .env("QKV_LISTEN", "127.0.0.1:0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("sh runs");
    let group = shell.id().expect("the shell's pid");
    let output = tokio::time::timeout(std::time::Duration::from_secs(120), shell.wait_with_output()).await;
    let Ok(output) = output else {
        let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{group}")]).status();
        panic!("the example did not end within 120 s (a deadline for a hang)");
    };
    let output = output.expect("sh runs");
    let mut printed = String::from_utf8_lossy(&output.stdout).into_owned();
    let addresses = std::fs::read_to_string(dir.path().join("addresses")).unwrap_or_default();
    for line in addresses.lines() {
        if let Some((actual, readme)) = line.split_once(' ') {
            printed = printed.replace(actual, readme);
        }
    }
    assert_printed_as_shown(&steps, &printed)
}

/// The script lines that start `server` (a `qkv serve` or `qkv floor` command line) in the background,
/// as the `number`th command, wait until it serves and tell later commands where: `QKV_ADDR` for `qkv
/// serve` on its default address, or, for `--listen ADDR`, a shell variable that `listen` records in
/// place of ADDR.
fn start_server(number: usize, server: &str, listen: &mut Vec<(String, String)>) -> String {
    let log = format!("server-{number}.log");
    let mut args: Vec<String> = server.split_whitespace().map(str::to_owned).collect();
    let given = args.iter().position(|a| a == "--listen").and_then(|at| args.get(at + 1).cloned());
    if let Some(readme) = &given {
        for arg in args.iter_mut().filter(|a| *a == readme) {
            *arg = "127.0.0.1:0".to_owned();
        }
    }
    let tell = match given {
        Some(readme) => {
            let variable = format!("server_{number}");
            listen.push((readme.clone(), format!("${variable}")));
            format!("{variable}=$addr\necho \"$addr {readme}\" >> addresses\n")
        }
        None => format!("export QKV_ADDR=$addr\necho \"$addr {README_ADDR}\" >> addresses\n"),
    };
    format!(
        "RUST_LOG=info {} >{log} 2>&1 &\npid=$!\nservers=\"$servers $pid\"\nready {log} '{SERVING}' $pid\n\
         addr=$(sed -n 's/.*\\({SERVING}\\).* addr=\\([0-9.:]*\\).*/\\2/p' {log} | head -n 1)\n\
         [ -n \"$addr\" ] || {{ echo 'no address in {log}'; cat {log}; exit 1; }}\n{tell}",
        binary_in_place(&args.join(" "))
    )
}

/// What a server's log says once it serves, as a basic regular expression: `qkv serve`'s line (not its
/// admin or web listener's, which may come first), or `qkv floor`'s.
const SERVING: &str = r"qkv::server: serving\|qkv: serving the floor";

/// `command` with the qkv binary in place of its leading `qkv`.
fn binary_in_place(command: &str) -> String {
    match command.strip_prefix("qkv ") {
        Some(args) => format!("\"$README_QKV_BIN\" {args}"),
        None => command.to_owned(),
    }
}

/// The README's sections of curl examples.
const HTTP: &str = "HTTP: REST and gRPC";
const BROWSER: &str = "From a browser";

/// A test per README example that [`assert_example_prints_what_it_shows`] runs as it is: its name, its
/// section, and whether it runs against the server the README's first command starts. `EXAMPLES`
/// lists their sections.
macro_rules! readme_examples {
    ($($(#[$doc:meta])* $test:ident: $heading:literal, running_server: $running:literal;)+) => {
        const EXAMPLES: &[&str] = &[$($heading),+];
        $(
            $(#[$doc])*
            #[tokio::test]
            async fn $test() {
                assert_example_prints_what_it_shows($heading, $running).await;
            }
        )+
    };
}

readme_examples! {
    /// A plaintext TCP server, a write and a bench over it.
    the_readme_transports_example_prints_what_it_shows: "Transports", running_server: false;
    /// A subscriber in the background, then a publish.
    the_readme_publish_and_subscribe_example_prints_what_it_shows: "Publish and subscribe", running_server: true;
    /// A client certificate, a server that requires one, a ping with it and one without.
    the_readme_mutual_tls_example_prints_what_it_shows: "Only your clients: mutual TLS", running_server: false;
    /// Closed and open loop against the running server, then the floor.
    the_readme_benchmarking_example_prints_what_it_shows: "Benchmarking", running_server: true;
}

/// The README's sections whose `console` block a test here runs.
fn run_sections() -> Vec<&'static str> {
    [TOUR, HTTP, BROWSER].into_iter().chain(EXAMPLES.iter().copied()).collect()
}

/// No `console` block of the README goes unrun: each is the only one of a section a test runs.
#[test]
fn every_console_example_of_the_readme_is_run() {
    let run = run_sections();
    let readme = include_str!("../README.md");
    for section in readme.split("\n## ").skip(1) {
        let heading = section.lines().next().unwrap_or_default();
        let blocks = section.matches("```console\n").count();
        match blocks {
            0 => assert!(!run.contains(&heading), "{heading:?} has no console block to run"),
            1 => assert!(run.contains(&heading), "the console block of {heading:?} is run by no test"),
            _ => panic!("{heading:?} has {blocks} console blocks; the tests run a section's first only"),
        }
    }
}

/// The flags of `qkv SUBCOMMAND`, from its `--help`.
fn flags_of(subcommand: &str) -> std::collections::BTreeSet<String> {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args([subcommand, "--help"])
        .output()
        .expect("qkv runs");
    assert!(help.status.success(), "qkv {subcommand} --help");
    String::from_utf8_lossy(&help.stdout)
        .lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .flat_map(|line| line.split([' ', ',', '=', '[', '<']).filter(|word| word.starts_with("--")))
        .map(str::to_owned)
        .collect()
}

/// The `--flags` in `text`, without what follows an `=` and without brackets.
fn flags_in(text: &str) -> Vec<&str> {
    text.split(|c: char| c.is_whitespace() || "[]()=`,;".contains(c))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .collect()
}

/// Every flag the README names exists where it says: each `qkv SUBCOMMAND ...` it shows (in a code
/// block or in running text) has the flags it is given; a flag said to be `(on server and client)`
/// is a flag of `qkv serve` and of the client commands, one said to be `on the client` of the client
/// commands; and every other flag in running text (`--flag`) is a flag of some subcommand.
#[test]
fn every_flag_the_readme_names_is_a_flag_of_its_command() {
    let readme = include_str!("../README.md");
    let help =
        std::process::Command::new(env!("CARGO_BIN_EXE_qkv")).arg("--help").output().expect("qkv runs");
    let listed = String::from_utf8_lossy(&help.stdout).into_owned();
    let subcommands: Vec<String> = listed
        .split("Commands:")
        .nth(1)
        .expect("a list of commands")
        .lines()
        .skip(1)
        .take_while(|line| !line.trim().is_empty())
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect();
    let flags: std::collections::BTreeMap<&str, _> =
        subcommands.iter().map(|name| (name.as_str(), flags_of(name))).collect();
    let any: std::collections::BTreeSet<&String> = flags.values().flatten().collect();
    let mut wrong = Vec::new();

    // `qkv SUBCOMMAND --flag ...`, to the end of its line or of its code span, or a pipe.
    for line in readme.lines() {
        for (at, _) in line.match_indices("qkv ") {
            let before = line[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '/' || c == '-' || c == '_') {
                continue;
            }
            let rest = &line[at + 4..];
            let Some(subcommand) = rest.split_whitespace().next() else { continue };
            let Some(known) = flags.get(subcommand) else { continue };
            let command = rest.split(['`', '|', ';', '&', ')']).next().unwrap_or_default();
            for flag in flags_in(command) {
                if !known.contains(flag) {
                    wrong.push(format!("`qkv {subcommand}` has no {flag}: {line}"));
                }
            }
        }
    }
    // The running text, paragraph by paragraph (code blocks left out).
    let prose: String = readme.split("```").step_by(2).collect::<Vec<_>>().join("\n");
    let client = &flags["ping"];
    let serve = &flags["serve"];
    for paragraph in prose.split("\n\n").map(|p| p.replace('\n', " ")) {
        // A clause that ends in "(on server and client)" or "on the client)": its flags.
        for (sides, said) in
            [(&[serve, client][..], "(on server and client)"), (&[client][..], "on the client)")]
        {
            for (at, _) in paragraph.match_indices(said) {
                // Back to the clause's start: a `;` or the end of a sentence.
                let before = &paragraph[..at];
                let start = [before.rfind(';').map(|i| i + 1), before.rfind(". ").map(|i| i + 2)]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(0);
                let clause = &before[start..];
                for flag in flags_in(clause) {
                    if !sides.iter().all(|side| side.contains(flag)) {
                        wrong.push(format!("{flag} is not {said}: {clause}"));
                    }
                }
            }
        }
        for span in paragraph.split('`').skip(1).step_by(2).filter(|span| span.starts_with("--")) {
            for flag in flags_in(span) {
                if !any.contains(&flag.to_owned()) {
                    wrong.push(format!("no qkv command has {flag}: `{span}`"));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
