//! Graceful shutdown under load: every call in flight is answered or fails with an error that says it
//! was not executed (and may be retried), no acknowledged write is lost, and the process exits once its
//! grace period has cut off what was left.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::TestServer;
use common::process::ServerProcess;
use qkv::Client;
use qkv::client::{ClientConfig, ClientError, Executed, RetryPolicy};
use qkv::pb::CommandRequest;
use qkv::storage::Storage;
use qkv::transport::Transport;
use tokio::sync::Barrier;

const WRITERS: usize = 16;

/// What one writer saw: the last value the server acknowledged, and the error that stopped it.
struct Writer {
    key: String,
    acknowledged: i64,
    error: ClientError,
}

/// `WRITERS` tasks, each writing 1, 2, 3... to a key of its own until a call fails; `started` is
/// passed once every writer has had a write acknowledged.
async fn write_until_failure(config: ClientConfig, started: Arc<Barrier>) -> Vec<Writer> {
    // No retries, so that each writer's first failure is seen. A deadline long enough that a loaded
    // machine answers every call in time; short reconnection waits, so that the writers that find the
    // server gone (they queue for one reconnection at a time) learn it quickly.
    let retry = RetryPolicy { attempts: 1, max_backoff: Duration::from_millis(20), ..config.retry };
    let config = ClientConfig { retry, request_timeout: Duration::from_secs(10), ..config };
    let client = Client::connect_with(config).await.expect("client connects");
    let writers = (0..WRITERS).map(|w| {
        let (client, started) = (client.clone(), started.clone());
        async move {
            let key = format!("writer-{w}");
            let mut acknowledged = 0;
            loop {
                match client.hset("load", &key, acknowledged + 1).await {
                    Ok(_) => acknowledged += 1,
                    Err(error) => return Writer { key, acknowledged, error },
                }
                if acknowledged == 1 {
                    started.wait().await;
                }
            }
        }
    });
    futures_util::future::join_all(writers).await
}

async fn under_load_every_call_is_answered_or_not_executed_and_no_acknowledged_write_is_lost(
    transport: Transport,
) {
    let mut server = TestServer::start_for(transport).await;
    let started = Arc::new(Barrier::new(WRITERS + 1));
    let load = tokio::spawn(write_until_failure(server.client_config(), started.clone()));
    started.wait().await;
    server.begin_stop();
    let writers = tokio::time::timeout(Duration::from_secs(60), load).await.expect("the load ends").unwrap();
    server.stopped().await;
    for Writer { key, acknowledged, error } in writers {
        assert!(error.is_retryable(), "{key} failed with {error}, which does not say it was not executed");
        let stored = server.service.storage().get("load", &key).await.unwrap().expect("acknowledged writes");
        // Nothing acknowledged is lost, and the call that failed "not executed" was indeed not executed.
        assert_eq!(
            stored.value,
            acknowledged.into(),
            "{key}: stored {:?}, acknowledged {acknowledged}",
            stored.value
        );
    }
}

transport_tests!(in_process: quic, tls, tcp, http, grpc, grpc_pipeline =>
    under_load_every_call_is_answered_or_not_executed_and_no_acknowledged_write_is_lost,
);

/// SIGTERM to a loaded `qkv serve` whose one client holds a reply unread: the writers stop with
/// errors that say their calls were not executed, the server waits out its grace period for the stuck
/// reply, cuts it off, and exits 0. (How soon after the grace period it exits is a matter of load, not
/// asserted: a server stuck on anything else never exits, and the test's hang guard fails.)
#[tokio::test]
async fn sigterm_under_load_exits_once_the_grace_period_is_over() {
    let grace = Duration::from_secs(2);
    let mut server = ServerProcess::start(&["--shutdown-grace", "2s", "--reply-timeout", "60s"]).await;
    // A reply that cannot complete: 8 MB that its client never reads.
    let stuck = Client::connect_with(server.client_config(Transport::Quic)).await.unwrap();
    for i in 0..8 {
        stuck.hset("big", &format!("k{i}"), vec![1u8; 1 << 20]).await.unwrap();
    }
    let mut unread = stuck.call_frames(&CommandRequest::hgetall("big")).await.unwrap();
    assert!(unread.next().await.unwrap().unwrap().more);

    let started = Arc::new(Barrier::new(2 * WRITERS + 1));
    let quic = tokio::spawn(write_until_failure(server.client_config(Transport::Quic), started.clone()));
    let tls = tokio::spawn(write_until_failure(server.client_config(Transport::Tls), started.clone()));
    started.wait().await;
    let terminated = Instant::now();
    server.terminate();
    // A second signal is answered, and changes nothing.
    server.log_line(&["received SIGTERM"]).await;
    server.log_line(&["finishing in-flight requests"]).await;
    server.terminate();
    server.log_line(&["already shutting down"]).await;
    // While the stuck reply holds the server in its grace period, a new QUIC client is refused at
    // once, as a TCP one is by the closed listener (it waited for its connect timeout, and was told
    // to check for a firewall).
    let once = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    let late =
        Client::connect_with(ClientConfig { retry: once, ..server.client_config(Transport::Quic) }).await;
    let refused = late.expect_err("no new connection while shutting down");
    assert!(!matches!(refused, ClientError::ConnectTimeout { .. }), "{refused}");
    assert!(refused.to_string().contains("refused"), "{refused}");
    assert!(refused.to_string().contains("shutting down"), "the error says why it may be: {refused}");
    let (status, log) = tokio::time::timeout(Duration::from_secs(60), server.exit()).await.expect("it exits");
    // Nothing can end the stuck reply before the grace period does: load only makes this later.
    assert!(terminated.elapsed() >= grace, "exited {:?} after SIGTERM", terminated.elapsed());
    assert!(status.success(), "exit status {status}; log: {log:#?}");
    // In this order: the signal, the grace period running out on the stuck connection, the end.
    let position = |words: &[&str]| {
        log.iter()
            .position(|line| words.iter().all(|w| line.contains(w)))
            .unwrap_or_else(|| panic!("no line with {words:?} in {log:#?}"))
    };
    // (The signals' lines were read above, before these.)
    let cut_off = position(&["WARN", "grace period over"]);
    let stopped = position(&["shut down"]);
    assert!(cut_off < stopped, "{log:#?}");
    // The stuck connection's last line says it was cut off, not closed as a finished one is.
    position(&["connection ended", "cut off when the shutdown grace period ran out"]);

    // The stuck reply was cut off by the grace period, not answered: it may have been executed.
    let cut = loop {
        match unread.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the stuck reply cannot have completed"),
        }
    };
    assert_eq!(cut.executed(), Executed::Maybe, "{cut}");
    assert!(cut.to_string().contains("shut down before answering"), "{cut}");
    for writer in quic.await.unwrap().into_iter().chain(tls.await.unwrap()) {
        assert!(writer.error.is_retryable(), "{}: {}", writer.key, writer.error);
        assert_eq!(writer.error.executed(), Executed::No, "{}: {}", writer.key, writer.error);
    }
}

/// While a TCP connection alone holds the server in its grace period, a new QUIC client is refused at
/// once all the same: the QUIC listener, with nothing of its own to finish, keeps its endpoint open and
/// refusing until the other listeners are done (it closed its socket, and the client waited out its
/// connect timeout and was told to check for a firewall). Each listener says what it has to finish.
#[tokio::test]
async fn a_quic_client_is_refused_while_a_tcp_connection_alone_holds_the_shutdown() {
    let (mut server, stuck) = stuck_in_an_answer("60s").await;
    server.terminate();
    // One line from each listener, in either order.
    let mut finishing = [0; 2].map(|_| String::new());
    for line in &mut finishing {
        *line = server.log_line(&["finishing in-flight requests"]).await;
    }
    finishing.sort_by_key(|line| !line.contains("quic"));
    let [quic, tcp] = finishing;
    assert!(quic.contains("quic") && quic.contains("connections=0"), "{quic}");
    // The stuck one, and perhaps the writer's, closing.
    assert!(tcp.contains("tcp") && !tcp.contains("connections=0"), "{tcp}");
    let once = RetryPolicy { attempts: 1, ..RetryPolicy::default() };
    let late =
        Client::connect_with(ClientConfig { retry: once, ..server.client_config(Transport::Quic) }).await;
    let refused = late.expect_err("no new connection while shutting down");
    assert!(refused.to_string().contains("shutting down"), "{refused}");
    // The stuck client gone, the server finishes at once.
    drop(stuck);
    let (status, log) = tokio::time::timeout(Duration::from_secs(30), server.exit()).await.expect("it exits");
    assert!(status.success(), "exit status {status}; log: {log:#?}");
}

/// A TCP connection the grace period cuts off (a client that stopped reading its answer) has its
/// "connection ended" line like any other, saying so: its task was dropped, and it had none, the one
/// connection an operator would look for.
#[tokio::test]
async fn a_tcp_connection_cut_off_by_the_grace_period_is_logged_as_it_ends() {
    let (mut server, stuck) = stuck_in_an_answer("1s").await;
    server.terminate();
    server.log_line(&["received SIGTERM"]).await;
    let (status, log) = tokio::time::timeout(Duration::from_secs(60), server.exit()).await.expect("it exits");
    assert!(status.success(), "exit status {status}; log: {log:#?}");
    let cut = log.iter().position(|line| line.contains("grace period over") && line.contains("tcp"));
    let ended =
        log.iter().position(|line| line.contains("connection ended") && line.contains("cut_off=true"));
    assert!(cut.is_some() && cut < ended, "{log:#?}");
    drop(stuck);
}

/// A plaintext server with `grace` to shut down, and a raw client of it with a small receive buffer
/// that asked for 16 MB and read one byte of it: the server is writing what will not be read.
async fn stuck_in_an_answer(grace: &str) -> (ServerProcess, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server =
        ServerProcess::start(&["--tcp-plaintext", "--shutdown-grace", grace, "--reply-timeout", "60s"]).await;
    let writer = Client::connect_with(server.client_config(Transport::Tcp)).await.unwrap();
    for i in 0..16 {
        writer.hset("big", &format!("k{i}"), vec![1u8; 1 << 20]).await.unwrap();
    }
    drop(writer);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stuck = socket.connect(server.addr).await.unwrap();
    stuck.write_all(&common::frame_of(&CommandRequest::hgetall("big"))).await.unwrap();
    stuck.read_exact(&mut [0; 1]).await.unwrap();
    (server, stuck)
}
