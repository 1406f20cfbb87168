//! `qkv`: the server and a client for it, on the command line.
#![forbid(unsafe_code)]

mod cli;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use futures_util::StreamExt;
use qkv::admin::StartingAdmin;
use qkv::certs::{CertDir, Provisioned};
use qkv::client::{Client, ClientConfig, ClientError, Event, Executed};
use qkv::pb::Kvpair;
use qkv::server::{Server, shutdown_signal};
use qkv::storage::{DiskConfig, DiskStore, MemoryStore, RedisStore, Repaired, RuntimeIdle, Storage};
use tracing_subscriber::EnvFilter;

use cli::args::{
    BenchArgs, CertArgs, ClientArgs, Command, FloorArgs, LogFormat, RepairArgs, ServeArgs, StatArgs, Store,
};
use cli::config::Invocation;
use cli::output::{self, CliError, out};
use qkv::bench::{BenchConfig, Progress};
use qkv::service::shown;

fn main() -> ExitCode {
    let cli = match cli::config::parse() {
        Ok(Invocation::Run(cli)) => *cli,
        Ok(Invocation::PrintConfig { toml, cli }) => {
            // What it prints is what a server would run with: refused as `serve` would refuse it.
            if let Command::Serve(args) = &cli.command
                && let Err(error) = check_serve(args)
            {
                return output::report(&error);
            }
            // As `qkv serve` would warn: a misspelt variable changes nothing, which is what is asked.
            for variable in cli::config::unknown_variables() {
                eprintln!("warning: no qkv flag reads the environment variable {variable}: is it misspelt?");
            }
            out!("{}", toml.strip_suffix('\n').unwrap_or(&toml));
            return ExitCode::SUCCESS;
        }
        Err(error) => return output::report(&error),
    };
    // Servers say what they do; the floor (a server too) says where it listens.
    let (default_log, format) = match &cli.command {
        Command::Serve(args) => ("info", args.log_format),
        Command::Floor(_) => ("info", LogFormat::Text),
        _ => ("warn", LogFormat::Text),
    };
    let (filter, ignored) = log_filter(default_log);
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_current_span(false).init(),
    }
    for (directive, error) in ignored {
        tracing::warn!(%directive, %error, "RUST_LOG: ignoring a directive that does not parse; the others apply");
    }
    for variable in cli::config::unknown_variables() {
        tracing::warn!(%variable, "no qkv flag reads this environment variable: is it misspelt?");
    }
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Cert(args) => cert(args),
        Command::Bench(args) => bench(args),
        Command::Floor(args) => floor(args),
        Command::Stat(args) => stat(args),
        Command::Repair(args) => repair(args),
        command => client_runtime().and_then(|runtime| runtime.block_on(run_client_command(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if matches!(format, LogFormat::Json) => output::report_in_log(&error),
        Err(error) => output::report(&error),
    }
}

/// What `RUST_LOG` asks to log (`default` when it is unset or says nothing), and the directives in it
/// that do not parse, with why: those are left out and named in a warning, the others kept. A typo in
/// one directive (`qkv::connection=warning`) would otherwise silently replace them all with the default;
/// and a logging setting is not worth refusing to start a server (or run a client command) over.
fn log_filter(default: &str) -> (EnvFilter, Vec<(String, String)>) {
    let spec = std::env::var(EnvFilter::DEFAULT_ENV).unwrap_or_default();
    let mut ignored = Vec::new();
    let mut good = Vec::new();
    for directive in spec.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        match directive.parse::<tracing_subscriber::filter::Directive>() {
            Ok(_) => good.push(directive),
            Err(e) => ignored.push((directive.to_owned(), e.to_string())),
        }
    }
    // Each parsed alone, so together they do too.
    let filter = if good.is_empty() {
        EnvFilter::new(default)
    } else {
        EnvFilter::try_new(good.join(",")).unwrap_or_else(|_| EnvFilter::new(default))
    };
    (filter, ignored)
}

/// Settings that cannot work together are a bad command line: said before anything is opened, by
/// `serve` and by `serve --print-config` alike.
fn check_serve(args: &ServeArgs) -> anyhow::Result<qkv::server::ServerConfig> {
    let config = args.config();
    config.validate().map_err(|e| CliError::InvalidInput(format!("invalid configuration: {e}")))?;
    args.runtime.layout()?;
    match args.store {
        Store::Memory => {
            memory_budget(args)?;
        }
        Store::Disk => {
            memory_budget(args)?;
            args.durability()?;
            args.commit_wait()?;
        }
        Store::Redis => {
            args.redis.config()?;
        }
    }
    Ok(config)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = check_serve(&args)?;
    warn_of_budgets_beyond_the_machine(&args, &config);
    make_room_for_connections(&config);
    let idle = RuntimeIdle::default();
    let runtime = qkv::server::runtime(args.runtime.layout()?, Some(idle.clone()))
        .context("cannot start the runtime")?;
    let mut disk_closed = None;
    let mut retained = None;
    let args_store = args.store;
    let served = runtime.block_on(async {
        match args.store {
            Store::Memory => {
                let budget = memory_budget(&args)?;
                tracing::info!(budget = %bytesize::ByteSize(budget as u64).display().iec(), "in-memory store");
                run_server(args.config(), MemoryStore::with_budget(budget), None).await
            }
            Store::Disk => {
                let config = DiskConfig {
                    durability: args.durability()?,
                    memory_budget: memory_budget(&args)?,
                    snapshot_log_size: args.snapshot_log_size as u64,
                    commit_wait: args.commit_wait()?,
                };
                // Recovery takes time proportional to the data (minutes for tens of GB): the admin
                // listener answers meanwhile, `/healthz` 200 and `/readyz` 503 saying so, and the store
                // opens on a blocking thread so that the runtime answers them.
                let doing = format!(
                    "opening the data directory {}: loading its snapshot and replaying its log",
                    args.data_dir.display()
                );
                // SIGHUP's default action ends the process: listened for while the store opens, so that
                // a reload sent meanwhile (`systemctl reload`, a certificate rotation) is not fatal. The
                // certificates are read after, when the server binds.
                let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
                let early_hangups = tokio::spawn(async move {
                    let Ok(mut hangups) = hangups else { return };
                    while hangups.recv().await.is_some() {
                        tracing::info!("SIGHUP while the store opens: the certificates are read once it is open");
                    }
                });
                let starting = qkv::server::start_admin(&args.config(), doing)?;
                let dir = args.data_dir.clone();
                let store = tokio::task::spawn_blocking(move || DiskStore::open(&dir, config))
                    .await
                    .context("opening the store stopped")?
                    .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;
                tracing::info!(
                    dir = %args.data_dir.display(), durability = %config.durability,
                    budget = %bytesize::ByteSize(config.memory_budget as u64).display().iec(), "durable store"
                );
                early_hangups.abort();
                store.attach_runtime(&idle);
                disk_closed = Some(store.closed());
                retained = Some(store.retain_memory());
                run_server(args.config(), store, starting).await
            }
            Store::Redis => {
                let config = qkv::storage::RedisConfig { ca_pem: args.redis.ca_pem()?, ..args.redis.config()? };
                tracing::info!(seeds = %config.seeds(), wait_replicas = config.wait_replicas, "Redis store");
                run_server(args.config(), RedisStore::start(config), None).await
            }
        }
    });
    // Tasks the runtime still holds may hold the last handles on the store: they go with it. Then the
    // committer makes every acknowledged write durable, and this thread, no runtime's, waits for it.
    // The data itself is not freed: entry by entry that takes seconds for millions of keys, and the
    // operating system takes it back at once when the process exits.
    if matches!(args_store, Store::Memory) {
        std::mem::forget(runtime);
        return served;
    }
    drop(runtime);
    let closed = disk_closed.map_or(Ok(()), |closed| closed.wait_blocking());
    std::mem::forget(retained);
    // A log that failed while serving stops the server with a failure too (exit code 4), however it
    // was stopped: a supervisor then knows the store needs looking at.
    served.and(closed.map_err(anyhow::Error::msg))
}

/// Budgets set above what the machine (or cgroup) has do not bound anything: the kernel's OOM killer
/// would stop the server before they turn a write or a connection away.
fn warn_of_budgets_beyond_the_machine(args: &ServeArgs, config: &qkv::server::ServerConfig) {
    let store = match args.store {
        Store::Memory | Store::Disk => args.memory_budget.unwrap_or_else(qkv::storage::default_memory_budget),
        Store::Redis => 0,
    };
    let available = qkv::memory::available_memory();
    if store.saturating_add(config.connection_memory) > available {
        let iec = |bytes: usize| bytesize::ByteSize(bytes as u64).display().iec().to_string();
        tracing::warn!(
            store = %iec(store), connections = %iec(config.connection_memory), available = %iec(available),
            "--memory-budget and --connection-memory add up to more than this machine (or cgroup) has: the server may be killed before they turn anything away"
        );
    }
}

/// Every TCP connection (TLS, plaintext, web) takes a file descriptor. Raises the soft limit of open
/// files to what `--max-connections` needs (at most the hard limit), and warns when even the hard
/// limit is lower: then TCP connections beyond it are refused as accepting fails (QUIC connections
/// share one socket), and every accept that fails is logged.
fn make_room_for_connections(config: &qkv::server::ServerConfig) {
    // The listeners, the store's files, the admin listener's connections, certificates, /proc.
    const OTHER_FILES: u64 = 256;
    let needed = config.limits.max_connections as u64 + OTHER_FILES;
    let Ok((soft, _)) = rlimit::Resource::NOFILE.get() else { return };
    if soft >= needed {
        return;
    }
    match rlimit::increase_nofile_limit(needed) {
        Ok(raised) if raised >= needed => {
            tracing::info!(from = soft, to = raised, "raised the limit of open files for --max-connections")
        }
        Ok(limit) => tracing::warn!(
            limit,
            needed,
            max_connections = config.limits.max_connections,
            "the process may open fewer files than --max-connections needs: TCP connections beyond the limit are refused until others close (raise `ulimit -Hn`, or LimitNOFILE= for a service, or lower --max-connections)"
        ),
        Err(e) => {
            tracing::warn!(error = %e, soft, needed, "could not raise the limit of open files for --max-connections")
        }
    }
}

fn memory_budget(args: &ServeArgs) -> anyhow::Result<usize> {
    let budget = args.memory_budget.unwrap_or_else(qkv::storage::default_memory_budget);
    if budget == 0 {
        anyhow::bail!("invalid configuration: the memory budget must be larger than zero");
    }
    Ok(budget)
}

/// Serves until a shutdown signal. A store that failed in a way only a restart mends (a disk store whose
/// log could not be written) makes it an error, so that the process exits with status 4 when it is
/// stopped. Nothing stops it for that: `/healthz` answers 503 meanwhile, for a liveness probe to
/// restart it (an explicit stop is not restarted by `Restart=on-failure`).
async fn run_server<S: Storage>(
    config: qkv::server::ServerConfig,
    storage: S,
    starting: Option<StartingAdmin>,
) -> anyhow::Result<()> {
    let grace = config.shutdown_grace;
    let server = Server::bind_with_admin(config, storage, starting)?;
    let service = server.service().clone();
    server.run(qkv::server::shutdown_signal_answering_repeats(grace)).await;
    match service.storage().broken() {
        Some(reason) => bail!("the store failed while serving, and refused writes since: {reason}"),
        None => Ok(()),
    }
}

fn cert(args: CertArgs) -> anyhow::Result<()> {
    let dir = CertDir::new(&args.dir);
    if let Some(name) = &args.client {
        let issued = match args.valid_for {
            Some(valid_for) if valid_for > std::time::Duration::from_secs(397 * 86_400) => {
                bail!(
                    "--valid-for {}: a client certificate is valid for at most 397 days",
                    humantime::format_duration(valid_for)
                )
            }
            Some(valid_for) => dir.issue_client_certificate_valid_for(name, args.force, valid_for)?,
            None => dir.issue_client_certificate(name, args.force)?,
        };
        if issued.new_ca {
            out!("created a CA: {} (servers take it as --client-ca)", dir.ca_cert().display());
        }
        out!("created a client certificate for CN={name}: {}", issued.cert.display());
        out!("and its private key (keep it secret): {}", issued.key.display());
        return Ok(());
    }
    match dir.issue_server_certificate(&args.names, args.force)? {
        Provisioned::NewCaAndServer { names } => {
            out!("created a CA: {} (give this file to clients)", dir.ca_cert().display());
            out!("created a server certificate for {}: {}", names.join(", "), dir.server_cert().display());
        }
        Provisioned::IssuedByExistingCa { names } => {
            out!("using the CA in {}", dir.ca_cert().display());
            out!("created a server certificate for {}: {}", names.join(", "), dir.server_cert().display());
        }
        Provisioned::Existing => {}
    }
    Ok(())
}

fn bench(args: BenchArgs) -> anyhow::Result<()> {
    args.validate()?;
    let config = BenchConfig {
        client: client_config(&args.client),
        workload: args.workload()?,
        connections: args.connections as usize,
        connect_concurrency: args.connect_concurrency as usize,
        connections_per_socket: args.connections_per_socket as usize,
        inflight: args.inflight as usize,
        rate: args.rate,
        duration: args.duration,
        warmup: args.warmup,
        value_size: args.value_size,
        keys: args.keys as usize,
        key_dist: args.key_dist(),
        seed: args.seed,
        zero_rtt: args.zero_rtt,
        timeline: args.timeline,
    };
    let runtime = qkv::server::runtime(args.runtime.layout()?, None)?;
    let bar = std::io::stderr().is_terminal().then(output::bench_progress_bar);
    let progress = bar.clone().map_or_else(Progress::new, Progress::shown_on);
    let report = runtime.block_on(qkv::bench::run(&config, progress))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if args.json {
        out!("{}", serde_json::to_string(&report.to_json(&config))?);
    } else {
        output::bench_summary(&config, &report);
    }
    if let Some(error) = &report.first_error {
        eprintln!("{} errors; the first: {error}", report.errors);
    }
    if report.requests == 0 {
        let backlog = match report.earlier {
            0 => String::new(),
            n => format!(
                " (though {n} requests sent or due in the warm-up were answered during it: the server was answering a backlog)"
            ),
        };
        bail!(
            "no request of the measured period succeeded{backlog}; first error: {}",
            report.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}

fn floor(args: FloorArgs) -> anyhow::Result<()> {
    let runtime = qkv::server::runtime(args.runtime.layout()?, None)?;
    runtime.block_on(async {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (bound, addr) = tokio::sync::oneshot::channel();
        let options = args.quic.options();
        let serving = qkv::bench::floor::serve_floor(
            args.listen,
            &args.certs,
            args.tcp(),
            qkv::transport::Limits::default(),
            &options,
            shutdown.clone(),
            bound,
        );
        tokio::pin!(serving);
        tokio::select! {
            result = &mut serving => return Ok(result?),
            addr = addr => if let Ok(addr) = addr {
                tracing::info!(%addr, "serving the floor: echo on QUIC and TCP");
            },
        }
        tokio::select! {
            result = &mut serving => return Ok(result?),
            _ = shutdown_signal() => shutdown.cancel(),
        }
        Ok(serving.await?)
    })
}

/// `qkv repair`: cuts a damaged log segment that `qkv serve` refused, keeping what it cuts.
fn repair(args: RepairArgs) -> anyhow::Result<()> {
    match DiskStore::repair(&args.data_dir)? {
        Repaired::Nothing => out!(
            "nothing to repair in {}: its log ends whole, or in a write torn by a crash, which qkv serve cuts off",
            args.data_dir.display()
        ),
        Repaired::Unrepairable { what, .. } => {
            return Err(CliError::Refused(format!("{what}; nothing was changed")).into());
        }
        Repaired::Cut { segment, offset, first_whole, records_after, saved } => {
            match first_whole {
                Some(first) => out!(
                    "cut {} at byte {offset}: damaged there, with a whole record from byte {first} on",
                    segment.display()
                ),
                None => out!(
                    "cut {} at byte {offset}: damaged there, with too much after it to tell whether a whole record follows",
                    segment.display()
                ),
            }
            out!(
                "the bytes cut off ({records_after} whole record{} after the damage, their writes lost) are in {}",
                if records_after == 1 { "" } else { "s" },
                saved.display()
            );
        }
    }
    Ok(())
}

/// `qkv stat`: a line (or a JSON object) per interval, until --count intervals or Ctrl-C. Only the first
/// scrape must succeed; a later failure is reported and the view goes on, so it picks a restarted
/// server up again (whose counters then start from 0: `Interval::between` takes that into account).
fn stat(args: StatArgs) -> anyhow::Result<()> {
    client_runtime()?.block_on(async {
        let mut ticks = tokio::time::interval(args.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        let mut before = qkv::stat::scrape(&args.admin, args.timeout).await?;
        let mut scraped_at = Instant::now();
        let mut table = qkv::stat::Table::new(args.by_command);
        let shutdown = shutdown_signal();
        tokio::pin!(shutdown);
        let mut intervals = 0;
        while args.count.is_none_or(|count| intervals < count) {
            tokio::select! {
                _ = ticks.tick() => intervals += 1,
                () = &mut shutdown => break,
            }
            let now = match qkv::stat::scrape(&args.admin, args.timeout).await {
                Ok(now) => now,
                Err(error) => {
                    eprintln!("{}; trying again", output::one_line(&error.into()));
                    continue;
                }
            };
            let interval = qkv::stat::Interval::between(&before, &now, scraped_at.elapsed());
            (before, scraped_at) = (now, Instant::now());
            let text =
                if args.json { serde_json::to_string(&interval)? + "\n" } else { table.render(&interval) };
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
                Ok(()) => {}
                // `qkv stat | head`: whoever read the lines has enough of them.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

fn client_config(args: &ClientArgs) -> ClientConfig {
    let mut config = ClientConfig::new(&args.addr, &args.ca);
    config.transport = args.transport;
    config.server_name = args.server_name.clone();
    config.client_cert = args
        .client_cert
        .clone()
        .zip(args.client_key.clone())
        .map(|(cert, key)| qkv::tls::ClientCertFiles { cert, key });
    config.connect_timeout = args.connect_timeout;
    config.request_timeout = args.timeout;
    config.retry.attempts = args.attempts;
    config.keep_alive = args.keep_alive;
    config.limits.idle_timeout = args.idle_timeout;
    config.zero_rtt = !args.no_0rtt;
    config.quic = args.quic.options();
    config
}

async fn run_client_command(command: Command) -> anyhow::Result<()> {
    let client_args = match &command {
        Command::Hget { client, .. }
        | Command::Hgetall { client, .. }
        | Command::Hmget { client, .. }
        | Command::Hset { client, .. }
        | Command::Hmset { client, .. }
        | Command::Hdel { client, .. }
        | Command::Hmdel { client, .. }
        | Command::Hexist { client, .. }
        | Command::Hmexist { client, .. }
        | Command::Subscribe { client, .. }
        | Command::Publish { client, .. }
        | Command::Ping { client, .. } => client,
        Command::Serve(_)
        | Command::Cert(_)
        | Command::Bench(_)
        | Command::Floor(_)
        | Command::Stat(_)
        | Command::Repair(_) => {
            unreachable!("handled in main")
        }
    };
    // A read (or a subscription) whose answer did not come wrote nothing: it exits as unreachable
    // (3), not as a write that may have been made (5).
    let subscribing = matches!(command, Command::Subscribe { .. });
    let reads = subscribing
        || matches!(
            command,
            Command::Hget { .. }
                | Command::Hgetall { .. }
                | Command::Hmget { .. }
                | Command::Hexist { .. }
                | Command::Hmexist { .. }
                | Command::Ping { .. }
        );
    // Settings of TLS that plaintext TCP has no use for: said, not dropped without a word (they may
    // come from QKV_CERT and QKV_KEY set for other commands, so not refused).
    if client_args.transport == qkv::transport::Transport::Tcp {
        let unused: Vec<&str> = [
            (client_args.client_cert.is_some(), "--cert"),
            (client_args.client_key.is_some(), "--key"),
            (client_args.server_name.is_some(), "--server-name"),
        ]
        .into_iter()
        .filter_map(|(given, flag)| given.then_some(flag))
        .collect();
        if !unused.is_empty() {
            eprintln!(
                "warning: {} not used: --transport tcp is plaintext, with no certificate either way",
                unused.join(" and ")
            );
        }
    }
    let client = Client::connect_with(client_config(client_args))
        .await
        .map_err(|error| with_default_ca_hint(error, &client_args.ca))?;
    let result = execute(&client, command).await;
    client.close().await;
    result.map_err(|error| {
        let unknown = error.downcast_ref::<ClientError>().is_some_and(|e| e.executed() == Executed::Maybe);
        match (reads && unknown, subscribing) {
            (true, true) => match error.downcast::<ClientError>() {
                Ok(error) => not_subscribed(error).into(),
                Err(error) => error,
            },
            (true, false) => CliError::Ended(output::one_line(&error)).into(),
            (false, _) => error,
        }
    })
}

/// A CA file missing at `--ca`'s default path most often means a command run from another directory
/// than the server's: the error says so, and what to do.
fn with_default_ca_hint(error: ClientError, ca: &std::path::Path) -> anyhow::Error {
    match &error {
        ClientError::Tls(qkv::tls::TlsError::Read { path, .. })
            if path == ca && ca == std::path::Path::new(cli::args::DEFAULT_CA) && !ca.exists() =>
        {
            CliError::Local(format!(
                "{error} ({} is --ca's default: the development CA that qkv serve writes in the directory it runs in; run from there, or pass --ca with the CA the server's certificate chains to)",
                cli::args::DEFAULT_CA
            ))
            .into()
        }
        _ => error.into(),
    }
}

/// Prints messages as they arrive, until `count` of them or Ctrl-C (then unsubscribes).
async fn subscribe(client: &Client, topic: &str, count: Option<u64>) -> anyhow::Result<()> {
    let mut subscription = client.subscribe(topic).await?;
    // On stderr, so that stdout holds messages only: from here on, every message published is printed.
    // One write, so that a reader of stderr never sees half the line.
    let _ = std::io::stderr().write_all(format!("subscribed to {}\n", shown(topic)).as_bytes());
    let mut received = 0;
    while count.is_none_or(|count| received < count) {
        let event = tokio::select! {
            event = subscription.next() => event,
            _ = shutdown_signal() => break,
        };
        // A subscription that ends (the server shut down, dropped it, or went away) asks for another
        // later (exit code 3), not for a read of what a write did (5).
        match event.transpose().map_err(subscription_ended)? {
            Some(Event::Message(values)) => {
                let line: Vec<String> = values.iter().map(ToString::to_string).collect();
                out!("{}", line.join("\t"));
                received += 1;
            }
            Some(Event::Missed(missed)) => {
                eprintln!(
                    "(missed {missed} messages: this subscriber read too slowly, or, a gateway over Redis, its server lost its link to Redis for a while)"
                )
            }
            None => return Ok(()),
        }
    }
    subscription.unsubscribe().await?;
    Ok(())
}

/// Why a subscription ended, in its own words: "the request may or may not have been executed"
/// means nothing to a subscriber.
fn subscription_ended(error: ClientError) -> CliError {
    match error {
        ClientError::ConnectionLost(cause) => CliError::Ended(format!(
            "the subscription ended: the connection to the server was lost ({cause})"
        )),
        error => CliError::Ended(format!("the subscription ended: {error}")),
    }
}

/// Why a Subscribe was not answered, as [`subscription_ended`] says why a subscription ended.
fn not_subscribed(error: ClientError) -> CliError {
    match error {
        ClientError::ConnectionLost(cause) => {
            CliError::Ended(format!("could not subscribe: the connection to the server was lost ({cause})"))
        }
        ClientError::Timeout(timeout) | ClientError::TimeoutRetrying { timeout, .. } => CliError::Ended(
            format!("could not subscribe: no answer from the server within {timeout:?} (--timeout)"),
        ),
        error => CliError::Ended(format!("could not subscribe: {error}")),
    }
}

async fn execute(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Hget { table, key, show, output: file, .. } => match client.hget(&table, &key).await? {
            Some(entry) => match file {
                Some(file) => output::write_value(&file, &entry.value)?,
                None => out!("{}", output::versioned(&entry, show.with_version)),
            },
            None => {
                let message = format!("key {} not found in table {}", shown(&key), shown(&table));
                return Err(CliError::Refused(message).into());
            }
        },
        Command::Hgetall { table, show, .. } => {
            let mut entries = client.hgetall(&table).await?;
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (key, entry) in entries {
                out!("{key}\t{}", output::versioned(&entry, show.with_version));
            }
        }
        Command::Hmget { table, keys, show, .. } => {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            for entry in client.hmget(&table, &keys).await? {
                out!("{}", output::optional(entry.as_ref(), show.with_version));
            }
        }
        Command::Hset { table, key, value, value_file, typed, if_version, if_absent, .. } => {
            let value = match (value, value_file) {
                (Some(value), _) => output::parse_value(value.as_encoded_bytes(), typed.value_type)?,
                (None, Some(file)) => {
                    output::parse_value_file(&file, typed.value_type, qkv::transport::DEFAULT_MAX_FRAME_LEN)?
                }
                (None, None) => {
                    return Err(CliError::InvalidInput("give a VALUE or --value-file".into()).into());
                }
            };
            let expected = if if_absent { Some(0) } else { if_version };
            let written = match expected {
                Some(expected) => client.hset_if_version(&table, &key, value, expected).await.map_err(|e| {
                    match (&e, if_absent) {
                        (ClientError::Conflict { current: Some(current) }, true) => CliError::Refused(format!(
                            "version conflict: the key exists (version {}), and --if-absent writes only a key that does not",
                            current.version
                        ))
                        .into(),
                        _ => anyhow::Error::from(e),
                    }
                })?,
                None => client.hset(&table, &key, value).await?,
            };
            out!("{}", written.version);
        }
        Command::Hmset { table, pairs, typed, .. } => {
            let pairs = pairs
                .into_iter()
                .map(|(key, raw)| Ok(Kvpair::new(key, output::parse_value(&raw, typed.value_type)?)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for written in client.hmset(&table, pairs).await? {
                out!("{}", written.version);
            }
        }
        Command::Hdel { table, key, if_version, .. } => {
            let written = match if_version {
                Some(expected) => client.hdel_if_version(&table, &key, expected).await?,
                None => client.hdel(&table, &key).await?,
            };
            out!("{}", output::previous(&written));
        }
        Command::Hmdel { table, keys, .. } => {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            for written in client.hmdel(&table, &keys).await? {
                out!("{}", output::previous(&written));
            }
        }
        Command::Hexist { table, key, .. } => out!("{}", client.hexist(&table, &key).await?),
        Command::Hmexist { table, keys, .. } => {
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            for exists in client.hmexist(&table, &keys).await? {
                out!("{exists}");
            }
        }
        Command::Subscribe { topic, count, .. } => subscribe(client, &topic, count).await?,
        Command::Publish { topic, values, value_file, typed, .. } => {
            let values = match value_file {
                Some(file) => vec![output::parse_value_file(
                    &file,
                    typed.value_type,
                    qkv::transport::DEFAULT_MAX_FRAME_LEN,
                )?],
                None => values
                    .iter()
                    .map(|raw| output::parse_value(raw.as_encoded_bytes(), typed.value_type))
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let published = client.publish(&topic, values).await?;
            out!("{}", published.receivers);
            if published.lagging > 0 {
                eprintln!("{} subscribers missed it: their queues were full", published.lagging);
            }
        }
        Command::Ping { payload, count, .. } => {
            if let Some(identity) = client.whoami().await? {
                out!("the server knows this client as {identity}");
            }
            for _ in 0..count {
                let start = Instant::now();
                let echoed = client.ping(payload.clone().into_bytes()).await?;
                if echoed != payload.as_bytes() {
                    bail!("the server echoed {echoed:?} instead of the payload sent");
                }
                let rtt_ms = start.elapsed().as_secs_f64() * 1e3;
                out!("pong from {} in {rtt_ms:.3} ms", client.remote_address());
            }
        }
        Command::Serve(_)
        | Command::Cert(_)
        | Command::Bench(_)
        | Command::Floor(_)
        | Command::Stat(_)
        | Command::Repair(_) => {
            unreachable!("handled in main")
        }
    }
    Ok(())
}
