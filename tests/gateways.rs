//! qkv servers as stateless gateways over a real Redis Cluster (3 masters, 3 replicas, on loopback,
//! started by qkv-testkit): what one gateway writes, another reads at once; conditional writes racing
//! through two gateways; Redis away at start and in the middle; a plain Redis restarted under an idle
//! gateway; a master killed under load; slots moved under load; pipelined TCP writes keeping their
//! order.

#[macro_use]
mod common;

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::process::ServerProcess;
use futures_util::{SinkExt, StreamExt};
use qkv::client::{Client, ClientError, Event, Executed, Subscription};
use qkv::pb::{CommandRequest, CommandResponse, Value, status, value};
use qkv::transport::Transport;
use qkv::transport::frame::FrameCodec;
use qkv_testkit::{RedisCluster, RedisNode};
use tokio::time::Instant;
use tokio_util::codec::Framed;

/// The cluster the tests that do not break it share.
fn shared_cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(3, 1).expect("a 3 + 3 Redis Cluster starts"))
}

/// A gateway: `qkv serve --store redis` with the cluster's nodes as seeds (and `extra` flags), once
/// it has connected to Redis.
async fn gateway(seeds: &[String], extra: &[&str]) -> ServerProcess {
    gateway_with_env(seeds, extra, &[]).await
}

/// [`gateway`] with environment variables (the Redis user's name and password).
async fn gateway_with_env(seeds: &[String], extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    let mut gateway = starting_gateway(seeds, extra, env).await;
    gateway.log_line(&["connected to Redis"]).await;
    gateway
}

async fn starting_gateway(seeds: &[String], extra: &[&str], env: &[(&str, &str)]) -> ServerProcess {
    let seeds = seeds.join(",");
    let mut args = vec!["--store", "redis", "--redis", &seeds];
    args.extend_from_slice(extra);
    ServerProcess::start_with_env(&args, env).await
}

/// The flags a gateway needs to serve `transport`.
fn serving(transport: Transport) -> &'static [&'static str] {
    if transport == Transport::Tcp { &["--tcp-plaintext"] } else { &[] }
}

async fn client(gateway: &ServerProcess, transport: Transport) -> Client {
    Client::connect_with(gateway.client_config(transport)).await.expect("connects to the gateway")
}

/// A table name of its own for each test, so that tests sharing the cluster do not meet.
fn table(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

async fn a_write_through_one_gateway_is_read_through_the_other_at_once(transport: Transport) {
    let seeds = shared_cluster().urls();
    let flags = serving(transport);
    let (a, b) = (gateway(&seeds, flags).await, gateway(&seeds[3..], flags).await);
    let (a, b) = (client(&a, transport).await, client(&b, transport).await);
    let table = table(&format!("read-your-write-{transport}"));
    for i in 0..50 {
        let key = format!("k{}", i % 7);
        let written = a.hset(&table, &key, i as i64).await.unwrap();
        let read = b.hget(&table, &key).await.unwrap().expect("written through the other gateway");
        assert_eq!((read.value, read.version), ((i as i64).into(), written.version));
    }
    let all = b.hgetall(&table).await.unwrap();
    assert_eq!(all.len(), 7);
}

transport_tests!(read_your_writes: quic, tls, tcp => a_write_through_one_gateway_is_read_through_the_other_at_once);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_writes_racing_through_two_gateways_exactly_one_wins_each_round() {
    let seeds = shared_cluster().urls();
    let (a, b) = (gateway(&seeds, &[]).await, gateway(&seeds, &[]).await);
    let (a, b) = (client(&a, Transport::Quic).await, client(&b, Transport::Tls).await);
    let table = table("race");
    let mut version = 0;
    for round in 0..100 {
        let (ra, rb) = tokio::join!(
            a.hset_if_version(&table, "k", format!("a{round}"), version),
            b.hset_if_version(&table, "k", format!("b{round}"), version)
        );
        let (winner, loser) = match (ra, rb) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (ra, rb) => panic!("round {round}: not exactly one winner: {ra:?} / {rb:?}"),
        };
        let ClientError::Conflict { current } = loser else { panic!("round {round}: {loser:?}") };
        assert_eq!(
            current.map(|c| c.version),
            Some(winner.version),
            "the loser is told the winner's version"
        );
        assert!(winner.version > version);
        version = winner.version;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_through_one_gateway_reaches_subscribers_of_every_gateway_in_order() {
    let seeds = shared_cluster().urls();
    let (a, b) = (gateway(&seeds, &[]).await, gateway(&seeds, &[]).await);
    let (publisher, near, far) = (
        client(&a, Transport::Quic).await,
        client(&a, Transport::Tls).await,
        client(&b, Transport::Quic).await,
    );
    let topic = table("news");
    let mut subscriptions = vec![near.subscribe(&topic).await.unwrap(), far.subscribe(&topic).await.unwrap()];
    let n = 200;
    for i in 0..n {
        let published = publisher.publish(&topic, [Value::from(i as i64)]).await.unwrap();
        assert_eq!(published.receivers, 2, "both gateways have subscribers");
    }
    for subscription in &mut subscriptions {
        for i in 0..n {
            match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
                Ok(Some(Ok(Event::Message(values)))) => assert_eq!(values, vec![Value::from(i as i64)]),
                other => panic!("message {i}: {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_tcp_writes_apply_in_the_order_sent() {
    let gateway = gateway(&shared_cluster().urls(), &["--tcp-plaintext"]).await;
    let stream = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let mut framed = Framed::new(stream, FrameCodec::<CommandResponse>::new(1 << 20));
    let table = table("pipeline");
    let n = 200;
    // All requests are written before any answer is read: the server has them all at once.
    for i in 0..n {
        framed.feed(CommandRequest::hset(&table, "k", i as i64)).await.unwrap();
    }
    SinkExt::<CommandRequest>::flush(&mut framed).await.unwrap();
    let mut last = 0;
    for i in 0..n {
        let answer = framed.next().await.expect("an answer").unwrap();
        assert_eq!(answer.status, status::OK, "{answer:?}");
        let version = answer.versions.first().copied().unwrap_or_default();
        assert!(version > last, "write {i} got version {version} after {last}");
        last = version;
    }
    let client = client(&gateway, Transport::Tcp).await;
    assert_eq!(client.hget(&table, "k").await.unwrap().map(|v| v.value), Some((n as i64 - 1).into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_is_503_with_the_reason_and_the_gateway_recovers_by_itself() {
    let mut redis = RedisNode::start(&[]).unwrap();
    redis.kill();
    // The gateway starts without Redis, and says what it cannot reach.
    let mut gateway = starting_gateway(&[redis.url()], &[], &[]).await;
    let warning = gateway.log_line(&["cannot reach Redis"]).await;
    assert!(warning.contains(&format!("127.0.0.1:{}", redis.port)), "{warning}");
    let config = qkv::client::ClientConfig {
        retry: qkv::client::RetryPolicy { attempts: 1, ..Default::default() },
        ..gateway.client_config(Transport::Quic)
    };
    let client = Client::connect_with(config).await.unwrap();
    let error = client.hget("t", "k").await.unwrap_err();
    assert_eq!(error.executed(), Executed::No);
    assert!(
        matches!(&error, ClientError::Unavailable { reason } if reason.contains("cannot reach Redis")),
        "{error}"
    );

    redis.restart().unwrap();
    until_answered(&client, Duration::from_secs(20)).await;
    client.hset("t", "k", "v").await.unwrap();

    // Away in the middle of a run, and back: no restart of the gateway.
    redis.kill();
    let error = client.hget("t", "k").await.unwrap_err();
    assert!(
        matches!(
            error,
            ClientError::Unavailable { .. } | ClientError::Status { status: status::GATEWAY_TIMEOUT, .. }
        ),
        "{error}"
    );
    redis.restart().unwrap();
    until_answered(&client, Duration::from_secs(20)).await;
}

/// A plain Redis restarted under a gateway that nothing goes through but a subscription: the gateway
/// connects again by itself, so its subscriber is told of the gap and then receives what is published
/// after, and the gateway's first request since the restart is served (not 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_redis_restarted_under_an_idle_gateway_is_connected_again_without_a_request() {
    let mut redis = RedisNode::start(&[]).unwrap();
    let topic = table("idle-plain");
    let mut gateways = IdleSubscriber::start(&[redis.url()], &topic).await;

    // Redis restarts: the subscriber is told of the gap as the connection breaks.
    redis.kill();
    match tokio::time::timeout(Duration::from_secs(10), gateways.subscription.next()).await {
        Ok(Some(Ok(Event::Missed(n)))) => assert!(n >= 1),
        other => panic!("a gap, not {other:?}"),
    }
    // Away for a second, as a restart takes: longer than redis-rs's own attempt to connect again at
    // the moment the connection broke, so the gateway must try again by itself. (The length of the
    // outage, not a wait for an event.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart().unwrap();
    // Published through the other gateway (its own requests make it connect again; the idle one has
    // none): the subscriber receives again.
    publish_until_received(
        &gateways.publisher,
        &topic,
        &mut gateways.subscription,
        &mut gateways.next,
        Duration::from_secs(30),
    )
    .await;
    let config = qkv::client::ClientConfig {
        retry: qkv::client::RetryPolicy { attempts: 1, ..Default::default() },
        ..gateways.idle.client_config(Transport::Quic)
    };
    let first = Client::connect_with(config).await.unwrap();
    first.hget(&topic, "k").await.expect("the idle gateway's first request since the restart is served");
}

async fn until_answered(client: &Client, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match client.hget("t", "k").await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                assert!(
                    e.executed() == Executed::No || matches!(e, ClientError::Status { status: 504, .. }),
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("the gateway did not serve again: {e}"),
        }
    }
}

/// Writes through `clients` in turn, each write a new key, until `stop`; counts what happened.
#[derive(Default)]
struct Tally {
    acknowledged: Vec<String>,
    failed_not_executed: usize,
    failed_maybe_executed: usize,
}

async fn write_until(client: Client, table: String, name: &'static str, stop: Arc<AtomicUsize>) -> Tally {
    let mut tally = Tally::default();
    let mut i = 0;
    while stop.load(Ordering::Relaxed) == 0 {
        let key = format!("{name}-{i}");
        i += 1;
        match client.hset(&table, &key, i as i64).await {
            Ok(_) => tally.acknowledged.push(key),
            Err(e) => {
                assert!(
                    !matches!(e, ClientError::Status { status: status::INTERNAL_ERROR, .. }),
                    "a failover is not a server failure: {e}"
                );
                match e.executed() {
                    Executed::No => tally.failed_not_executed += 1,
                    Executed::Maybe => tally.failed_maybe_executed += 1,
                }
            }
        }
    }
    tally
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_fails_over_and_no_acknowledged_write_is_lost_with_redis_wait() {
    let mut cluster = RedisCluster::start(3, 1).expect("a cluster of its own, to break");
    let seeds = cluster.urls();
    let (a, b) =
        (gateway(&seeds, &["--redis-wait", "1"]).await, gateway(&seeds, &["--redis-wait", "1"]).await);
    let table = "failover".to_owned();
    let slot = cluster.slot_of("qkv:{tfailover}:values").expect("the table's slot");
    let master = cluster.master_of_slot(slot).expect("the slot's master");

    let stop = Arc::new(AtomicUsize::new(0));
    let writers = [
        tokio::spawn(write_until(client(&a, Transport::Quic).await, table.clone(), "a", stop.clone())),
        tokio::spawn(write_until(client(&b, Transport::Tls).await, table.clone(), "b", stop.clone())),
    ];
    // A subscriber, through the other gateway, of a topic on the shard that fails.
    let (topic, _) = topic_on(&cluster, master, "failover-news");
    let listener = client(&b, Transport::Quic).await;
    let mut subscription = listener.subscribe(&topic).await.unwrap();
    let reader = client(&a, Transport::Quic).await;
    wait_for_writes(&reader, &table, 20).await;
    cluster.nodes[master].kill();
    // Serving again: reads through each gateway are answered once the replica has taken over. Writes
    // are not acknowledged while the new master has no replica to confirm them (504, not lost).
    for gateway in [&a, &b] {
        until(gateway, Duration::from_secs(30), |probe| async move {
            probe.hget("failover", "a-0").await.map(drop)
        })
        .await;
    }
    // The old master comes back as the new one's replica, and writes are acknowledged again.
    cluster.nodes[master].restart().expect("the killed node restarts");
    for gateway in [&a, &b] {
        until(gateway, Duration::from_secs(30), |probe| async move {
            probe.hset("failover", "probe", "x").await.map(drop)
        })
        .await;
    }
    // The subscriber is told it may have missed messages, then gets what is published after.
    let published = tokio::time::timeout(Duration::from_secs(30), async {
        let publisher = client(&a, Transport::Quic).await;
        loop {
            if publisher.publish(&topic, [Value::from("after")]).await.is_ok_and(|p| p.receivers > 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    published.await.expect("publishing works again");
    let mut events = Vec::new();
    while !events.iter().any(|e| matches!(e, Event::Message(_))) {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
            Ok(Some(Ok(event))) => events.push(event),
            other => panic!("after {events:?}: {other:?}"),
        }
    }
    assert!(
        matches!(events.first(), Some(Event::Missed(n)) if *n >= 1),
        "the gap is reported first: {events:?}"
    );
    stop.store(1, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for writer in writers {
        let tally = writer.await.unwrap();
        eprintln!(
            "acknowledged {}, failed not executed {}, failed maybe executed {}",
            tally.acknowledged.len(),
            tally.failed_not_executed,
            tally.failed_maybe_executed
        );
        acknowledged.extend(tally.acknowledged);
    }
    let keys: Vec<&str> = acknowledged.iter().map(String::as_str).collect();
    let found = reader.hmget(&table, &keys).await.unwrap();
    let lost: Vec<&str> = keys.iter().zip(&found).filter(|(_, f)| f.is_none()).map(|(k, _)| *k).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged writes lost: {lost:?}", lost.len(), keys.len());
}

/// A topic whose channel (`qkv:` and its name) lives on the shard of `master`, and its slot.
fn topic_on(cluster: &RedisCluster, master: usize, name: &str) -> (String, u16) {
    (0..)
        .map(|i| format!("{name}-{i}"))
        .find_map(|topic| {
            let slot = cluster.slot_of(&format!("qkv:{topic}"))?;
            (cluster.master_of_slot(slot) == Some(master)).then_some((topic, slot))
        })
        .expect("a topic on that shard")
}

/// Publishes numbered messages (from `next` on) through `publisher`, one every so often, until
/// `subscription` receives one of them (messages published before, late on a slow machine, are
/// received on the way); the events it received on the way. Publishes that fail (the shard is
/// failing over) are simply tried again with the next number, so which number arrives is not known.
async fn publish_until_received(
    publisher: &Client,
    topic: &str,
    subscription: &mut Subscription,
    next: &mut i64,
    within: Duration,
) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let first = *next;
    let mut events = Vec::new();
    while Instant::now() < deadline {
        let _ = publisher.publish(topic, [Value::from(*next)]).await;
        *next += 1;
        // Whatever arrives within a moment; then the next message, until one gets through.
        while let Ok(event) = tokio::time::timeout(Duration::from_millis(250), subscription.next()).await {
            let event = event.expect("the subscription goes on").expect("an event");
            let ours = matches!(&event, Event::Message(values) if matches!(values.as_slice(),
                [Value { value: Some(value::Value::Integer(i)) }] if *i >= first));
            events.push(event);
            if ours {
                return events;
            }
        }
    }
    panic!("no message reached the subscriber within {within:?}; it received {events:?}")
}

/// Two gateways on the same Redis: one that serves nothing but a subscriber of a topic, so that no
/// request of its own makes it notice what happens in Redis, and one to publish through; made once a
/// message has reached the subscriber.
struct IdleSubscriber {
    idle: ServerProcess,
    _other: ServerProcess,
    _listener: Client,
    subscription: Subscription,
    publisher: Client,
    /// The number of the next message to publish (see [`publish_until_received`]).
    next: i64,
}

impl IdleSubscriber {
    async fn start(seeds: &[String], topic: &str) -> Self {
        let (idle, other) = (gateway(seeds, &[]).await, gateway(seeds, &[]).await);
        let listener = client(&idle, Transport::Quic).await;
        let mut subscription = listener.subscribe(topic).await.unwrap();
        let publisher = client(&other, Transport::Quic).await;
        let mut next = 0;
        let events =
            publish_until_received(&publisher, topic, &mut subscription, &mut next, Duration::from_secs(30))
                .await;
        assert!(matches!(events.as_slice(), [Event::Message(_)]), "a message, no gap: {events:?}");
        IdleSubscriber { idle, _other: other, _listener: listener, subscription, publisher, next }
    }
}

/// How many subscriptions to `channel` the live nodes of the cluster hold, in all.
fn subscriptions_in_redis(cluster: &RedisCluster, channel: &str) -> usize {
    cluster
        .nodes
        .iter()
        .filter_map(|node| qkv_testkit::cli(node.port, &["PUBSUB", "SHARDNUMSUB", channel]).ok())
        .filter_map(|answer| answer.lines().nth(1)?.trim().parse::<usize>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_gateways_subscriber_follows_a_failover_and_gets_each_message_once_when_the_old_master_returns()
 {
    let mut cluster = RedisCluster::start(3, 1).expect("a cluster of its own, to break");
    let seeds = cluster.urls();
    let master = cluster.master_of_slot(0).expect("slot 0's master");
    let (topic, slot) = topic_on(&cluster, master, "idle-news");
    // No request of the subscriber's gateway's own shows it the new master.
    let mut gateways = IdleSubscriber::start(&seeds, &topic).await;

    // The master dies and its replica takes over: the subscriber is told of the gap, then receives again.
    // (A message published before the kill may still arrive before the gap.)
    cluster.nodes[master].kill();
    let events = publish_until_received(
        &gateways.publisher,
        &topic,
        &mut gateways.subscription,
        &mut gateways.next,
        Duration::from_secs(60),
    )
    .await;
    assert!(
        events.iter().any(|event| matches!(event, Event::Missed(n) if *n >= 1)),
        "the gap is reported before the next message: {events:?}"
    );
    assert_ne!(cluster.master_of_slot(slot), Some(master), "the replica took over");

    // The old master returns, as the new one's replica: each message is delivered once, none lost.
    cluster.nodes[master].restart().expect("the killed node restarts");
    tokio::task::block_in_place(|| cluster.wait_until_healthy()).expect("the old master is a replica again");
    let batch: Vec<i64> = (gateways.next..gateways.next + 20).collect();
    for i in &batch {
        let published = gateways.publisher.publish(&topic, [Value::from(*i)]).await.unwrap();
        assert_eq!(published.receivers, 1, "one gateway subscribes");
    }
    let mut received = Vec::new();
    while received.last() != batch.last() {
        match tokio::time::timeout(Duration::from_secs(30), gateways.subscription.next()).await {
            Ok(Some(Ok(Event::Message(values)))) => match values.as_slice() {
                [Value { value: Some(value::Value::Integer(i)) }] if *i >= batch[0] => received.push(*i),
                _ => {}
            },
            other => panic!("after {received:?}: {other:?}"),
        }
    }
    assert_eq!(received, batch, "each message once, in order");
    let channel = format!("qkv:{topic}");
    assert_eq!(
        subscriptions_in_redis(&cluster, &channel),
        1,
        "the gateway holds one subscription to {channel}"
    );
}

/// Calls `call` through a new client of `gateway` until it succeeds.
async fn until<F, Fut>(gateway: &ServerProcess, within: Duration, call: F)
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), ClientError>>,
{
    let deadline = Instant::now() + within;
    let probe = client(gateway, Transport::Quic).await;
    while let Err(e) = call(probe.clone()).await {
        assert!(Instant::now() < deadline, "the gateway did not serve again: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_writes(client: &Client, table: &str, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.hgetall(table).await.map_or(0, |all| all.len()) < at_least {
        assert!(Instant::now() < deadline, "the writers did not get going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_slots_under_load_fails_no_request() {
    let cluster = RedisCluster::start(3, 0).expect("a cluster of its own, to reshard");
    let seeds = cluster.urls();
    let ports: Vec<u16> = cluster.nodes.iter().map(|node| node.port).collect();
    let gateway = gateway_as_documented_user(&seeds, &ports, &[]).await;
    // Tables in the first slots of one master, which the reshard below moves to another.
    let source = cluster.master_of_slot(0).expect("slot 0's master");
    let target = (0..cluster.nodes.len()).find(|i| *i != source).expect("another master");

    // As the user docs/DEPLOY.md makes, which must allow ASKING: a table whose keys have moved to the
    // node its slot is moving to is reached there (ASK). Without ASKING, redis-rs tried again until
    // the slot had moved (the reshard below, quick, hid that) or the request's time was up. A
    // publish during the move, to a channel of the same slot, reaches its master.
    let asking = client(&gateway, Transport::Quic).await;
    asking.hset("asked", "k", "v").await.expect("a write");
    let slot = cluster.slot_of("qkv:{tasked}:values").expect("the table's slot");
    let moving = cluster.begin_slot_move(slot).expect("the slot set moving");
    moving.move_keys().expect("the table's keys moved");
    let read = asking.hget("asked", "k").await;
    let published = asking.publish("asked", [Value::from("x")]).await;
    drop(moving);
    assert_eq!(read.expect("a read of a table whose keys moved").map(|v| v.value), Some("v".into()));
    published.expect("a publish while its slot is moved, as the documented user");
    let moved = 200;
    let tables: Vec<String> = (0..)
        .map(|i| format!("moving-{i}"))
        .filter(|t| cluster.slot_of(&format!("qkv:{{t{t}}}:values")).is_some_and(|s| s < moved))
        .take(4)
        .collect();

    let stop = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for (i, table) in tables.iter().enumerate() {
        let transport = if i % 2 == 0 { Transport::Quic } else { Transport::Tls };
        let name: &'static str = ["w0", "w1", "w2", "w3"][i];
        writers.push(tokio::spawn(write_until(
            client(&gateway, transport).await,
            table.clone(),
            name,
            stop.clone(),
        )));
    }
    let reader = client(&gateway, Transport::Quic).await;
    wait_for_writes(&reader, &tables[0], 20).await;
    let resharded = tokio::task::spawn_blocking(move || {
        let ids = |port: u16| qkv_testkit::cli(port, &["CLUSTER", "MYID"]).map(|id| id.trim().to_owned());
        let (from, to) = (ids(cluster.nodes[source].port)?, ids(cluster.nodes[target].port)?);
        let output = std::process::Command::new("redis-cli")
            .args(["--cluster", "reshard", &format!("127.0.0.1:{}", cluster.nodes[source].port)])
            .args(["--cluster-from", &from, "--cluster-to", &to, "--cluster-slots", &moved.to_string()])
            .args(["--cluster-yes", "--cluster-pipeline", "10"])
            .output()?;
        assert!(output.status.success(), "reshard: {}", String::from_utf8_lossy(&output.stdout));
        std::io::Result::Ok(cluster)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resharded.master_of_slot(0), Some(target), "the slots moved");
    stop.store(1, Ordering::Relaxed);
    for writer in writers {
        let tally = writer.await.unwrap();
        assert_eq!((tally.failed_not_executed, tally.failed_maybe_executed), (0, 0), "failed requests");
        assert!(!tally.acknowledged.is_empty());
    }
}

/// The arguments of docs/DEPLOY.md's `ACL SETUSER` for a gateway's Redis user, as `redis-cli` gets
/// them from a shell (quotes taken off), with `password` put in.
fn documented_acl_user(password: &str) -> Vec<String> {
    let guide = include_str!("../docs/DEPLOY.md");
    let start = guide.find("ACL SETUSER").expect("docs/DEPLOY.md sets up a Redis user");
    let command: String = guide[start..]
        .lines()
        .take_while(|line| !line.trim_start().starts_with("```"))
        .map(|line| line.trim().trim_end_matches('\\'))
        .collect::<Vec<_>>()
        .join(" ");
    command.split_whitespace().map(|word| word.trim_matches('\'').replace("PASSWORD", password)).collect()
}

/// Sets `args` (`ACL SETUSER …`) on every node of `ports`.
fn acl_on(ports: &[u16], args: &[String]) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    for port in ports {
        let answer = qkv_testkit::cli(*port, &args).expect("redis-cli runs");
        assert_eq!(answer.trim(), "OK", "{args:?} on {port}");
    }
}

/// A gateway on `seeds` that connects as docs/DEPLOY.md's Redis user, made on every node of `ports`.
async fn gateway_as_documented_user(seeds: &[String], ports: &[u16], extra: &[&str]) -> ServerProcess {
    acl_on(ports, &documented_acl_user("gateway-secret"));
    let user = documented_acl_user("")[2].clone();
    let env = [("QKV_REDIS_USERNAME", user.as_str()), ("QKV_REDIS_PASSWORD", "gateway-secret")];
    gateway_with_env(seeds, extra, &env).await
}

/// A gateway whose Redis user has the rights docs/DEPLOY.md gives, and no more, serves every command
/// (on a cluster with `--redis-wait`, which needs WAIT); a right taken away is named in the error.
/// (Redirects during a reshard, which need ASKING: `moving_slots_under_load_fails_no_request`.)
async fn the_deployment_guides_redis_user_serves_every_command(on_a_cluster: bool) {
    let plain;
    let (seeds, nodes, wait): (Vec<String>, Vec<u16>, &[&str]) = if on_a_cluster {
        let cluster = shared_cluster();
        (cluster.urls(), cluster.nodes.iter().map(|n| n.port).collect(), &["--redis-wait", "1"])
    } else {
        plain = RedisNode::start(&[]).expect("redis-server starts");
        (vec![plain.url()], vec![plain.port], &[])
    };
    let gateway = gateway_as_documented_user(&seeds, &nodes, wait).await;
    let user = documented_acl_user("")[2].clone();
    let client = client(&gateway, Transport::Quic).await;

    let table = table(&format!("acl-{on_a_cluster}"));
    let written = client.hset(&table, "a", "1").await.expect("hset");
    client.hset_if_version(&table, "a", "2", written.version).await.expect("a conditional hset");
    let pairs = [qkv::pb::Kvpair::new("b", "3"), qkv::pb::Kvpair::new("c", "4")];
    client.hmset(&table, pairs).await.expect("hmset");
    assert_eq!(client.hget(&table, "a").await.expect("hget").map(|v| v.value), Some("2".into()));
    assert_eq!(client.hmget(&table, &["b", "x"]).await.expect("hmget").len(), 2);
    assert!(client.hexist(&table, "c").await.expect("hexist"));
    assert_eq!(client.hmexist(&table, &["c", "x"]).await.expect("hmexist"), [true, false]);
    assert_eq!(client.hgetall(&table).await.expect("hgetall").len(), 3);
    client.hdel(&table, "a").await.expect("hdel");
    client.hmdel(&table, &["b", "c"]).await.expect("hmdel");
    let mut subscription = client.subscribe(&table).await.expect("subscribe");
    let published = client.publish(&table, [Value::from("news")]).await.expect("publish");
    assert_eq!(published.receivers, 1);
    match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
        Ok(Some(Ok(Event::Message(values)))) => assert_eq!(values, [Value::from("news")]),
        other => panic!("the message: {other:?}"),
    }

    // Without the right to one command a script runs, the error names what is wrong.
    acl_on(&nodes, &["ACL".into(), "SETUSER".into(), user.clone(), "-zscore".into()]);
    let refused = client.hset(&table, "a", "1").await.expect_err("a write without ZSCORE");
    assert!(refused.to_string().contains("refused the gateway's user a command"), "{refused}");
    acl_on(&nodes, &["ACL".into(), "SETUSER".into(), user, "+zscore".into()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_guides_redis_user_serves_every_command_on_a_plain_redis() {
    the_deployment_guides_redis_user_serves_every_command(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployment_guides_redis_user_serves_every_command_on_a_cluster() {
    the_deployment_guides_redis_user_serves_every_command(true).await;
}

/// A write Redis does not answer in time may have been made: the gateway answers 504, the client
/// says `Executed::Maybe`, and the CLI exits 5 ("read the key before writing it again"), not 1 (a
/// refusal, after which nothing changed); a read it does not answer, 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_redis_does_not_answer_in_time_is_an_unknown_outcome_to_the_client_and_the_cli() {
    let redis = RedisNode::start(&[]).expect("redis-server starts");
    let gateway = gateway(&[redis.url()], &["--redis-timeout", "300ms"]).await;
    let client = client(&gateway, Transport::Quic).await;
    client.hset("paused", "k", "before").await.expect("a write while Redis answers");
    // Redis holds every write command (scripts that may write among them) until unpaused.
    qkv_testkit::cli(redis.port, &["CLIENT", "PAUSE", "30000", "WRITE"]).expect("redis-cli runs");
    let lost = client.hset("paused", "k", "during").await.expect_err("Redis is paused");
    assert_eq!(lost.executed(), Executed::Maybe, "{lost}");
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["hset", "paused", "k", "from the CLI", "--addr", &gateway.addr.to_string()])
        .arg("--ca")
        .arg(gateway.ca())
        .output()
        .await
        .expect("qkv runs");
    qkv_testkit::cli(redis.port, &["CLIENT", "UNPAUSE"]).expect("redis-cli runs");
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(cli.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("504"), "{stderr}");
    // A read that is not answered wrote nothing: the CLI exits 3 (try again later), not 5. (Paused
    // for every command, Redis takes no UNPAUSE either: the pause runs out, long after the 504.)
    qkv_testkit::cli(redis.port, &["CLIENT", "PAUSE", "5000", "ALL"]).expect("redis-cli runs");
    let read = tokio::process::Command::new(env!("CARGO_BIN_EXE_qkv"))
        .args(["hget", "paused", "k", "--addr", &gateway.addr.to_string()])
        .arg("--ca")
        .arg(gateway.ca())
        .output()
        .await
        .expect("qkv runs");
    let stderr = String::from_utf8_lossy(&read.stderr);
    assert_eq!(read.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("504"), "{stderr}");
}
