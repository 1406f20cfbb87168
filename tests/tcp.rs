//! What only the TCP transport has: pipelining, the course's client, and bad input that must end its
//! own connection and nothing else. (The command suite runs over TCP too, in `commands.rs`.)

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::process::ServerProcess;
use common::{TestServer, raw_byte_stream};
use futures_util::{SinkExt, StreamExt};
use prost::Message;
use qkv::client::{Client, ClientConfig, ClientError};
use qkv::pb::{CommandRequest, CommandResponse, Kvpair, Value, status};
use qkv::transport::Transport;
use qkv::transport::frame::{FrameCodec, FrameError};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::{Framed, FramedRead, LengthDelimitedCodec};

/// Every frame the server sends until it closes the connection.
async fn frames_until_closed(read: impl AsyncRead + Unpin) -> Vec<CommandResponse> {
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(64 << 20));
    let mut received = Vec::new();
    let until_closed = async {
        // An error (a reset, or a frame cut off by the close) ends the connection too.
        while let Some(Ok(frame)) = frames.next().await {
            received.push(frame);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), until_closed)
        .await
        .expect("the server closes the connection");
    received
}

#[tokio::test]
async fn ten_thousand_pipelined_requests_come_back_complete_and_in_order() {
    let server = TestServer::start_for(Transport::Tcp).await;
    // A receive buffer large enough for every answer, since none is read until all requests are written.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 << 20).unwrap();
    let mut stream = socket.connect(server.addr).await.unwrap();

    let mut burst = Vec::new();
    for i in 0..5_000 {
        burst.extend_from_slice(&common::frame(&CommandRequest::hset("p", format!("k{i}"), i as i64)));
        burst.extend_from_slice(&common::frame(&CommandRequest::hget("p", format!("k{i}"))));
    }
    stream.write_all(&burst).await.unwrap();

    let mut answers = FramedRead::new(stream, FrameCodec::<CommandResponse>::new(1 << 20));
    for i in 0..5_000 {
        let set = answers.next().await.unwrap().unwrap();
        assert_eq!((set.status, set.values.len()), (status::OK, 1), "Hset #{i}: {set:?}");
        let got = answers.next().await.unwrap().unwrap();
        assert_eq!(got.values, vec![Value::from(i as i64)], "Hget #{i} answered out of order");
        assert_eq!(got.versions, set.versions, "Hget #{i} sees Hset #{i}'s version");
    }
}

#[tokio::test]
async fn answers_keep_request_order_when_an_earlier_request_takes_longer() {
    let server = TestServer::start_for(Transport::Tcp).await;
    let client = server.client().await;
    // Large enough that the server snapshots its keys on a blocking thread: this Hgetall is still
    // running when the pings after it are done.
    client.hmset("slow", (0..10_000).map(|i| Kvpair::new(format!("k{i}"), i as i64))).await.unwrap();
    let mut stream = server.raw_tcp().await;
    let mut burst = common::frame(&CommandRequest::hgetall("slow")).to_vec();
    for i in 0..50u8 {
        burst.extend_from_slice(&common::frame(&CommandRequest::ping(vec![i])));
    }
    stream.write_all(&burst).await.unwrap();
    let mut answers = FramedRead::new(stream, FrameCodec::<CommandResponse>::new(1 << 20));
    let mut pairs = 0;
    loop {
        let frame = answers.next().await.unwrap().unwrap();
        assert!(frame.values.is_empty(), "a ping's answer overtook the Hgetall");
        pairs += frame.pairs.len();
        if !frame.more {
            break;
        }
    }
    assert_eq!(pairs, 10_000);
    for i in 0..50u8 {
        assert_eq!(answers.next().await.unwrap().unwrap().values, vec![Value::from(vec![i])]);
    }
}

/// Sends `requests` back to back on a raw plaintext connection to `addr` and returns each one's whole
/// answer, in order.
async fn pipelined(addr: std::net::SocketAddr, requests: &[CommandRequest]) -> Vec<CommandResponse> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let burst: Vec<u8> = requests.iter().flat_map(|r| common::frame(r).to_vec()).collect();
    stream.write_all(&burst).await.unwrap();
    let mut frames = FramedRead::new(stream, FrameCodec::<CommandResponse>::new(64 << 20));
    let mut answers = Vec::new();
    for _ in requests {
        let mut whole = CommandResponse::default();
        loop {
            let frame = frames.next().await.unwrap().unwrap();
            whole.values.extend(frame.values);
            (whole.status, whole.message) = (frame.status, frame.message);
            if !frame.more {
                break;
            }
        }
        answers.push(whole);
    }
    answers
}

#[tokio::test]
async fn a_pipelined_request_sees_every_write_sent_before_it_and_none_after() {
    let server = TestServer::start_for(Transport::Tcp).await;
    let client = server.client().await;
    // Multi-key commands work in steps (and yield between them): big enough to take several.
    let keys: Vec<String> = (0..3000).map(|i| format!("k{i}")).collect();
    client.hmset("t", keys.iter().map(|k| Kvpair::new(k.clone(), "old"))).await.unwrap();
    let answers = pipelined(
        server.addr,
        &[
            CommandRequest::hmget("t", keys.iter().map(String::as_str)),
            CommandRequest::hset("t", "k2999", "new"),
            CommandRequest::hmset("t", keys.iter().map(|k| Kvpair::new(k.clone(), "newer"))),
            CommandRequest::hget("t", "k2999"),
        ],
    )
    .await;
    assert_eq!(answers[0].values[2999], Value::from("old"), "an earlier read saw a later write");
    assert_eq!(answers[1].values, vec![Value::from("old")], "Hset replaced what Hmget saw");
    assert_eq!(answers[3].values, vec![Value::from("newer")], "a later read missed an earlier write");
}

/// The disk store applies writes in the order they are issued, so a pipelined connection issues its
/// writes without waiting for each other's commit; they must still be applied in request order, and
/// reads must still see exactly the writes before them.
#[tokio::test]
async fn pipelined_writes_to_the_disk_store_share_commits_yet_apply_in_request_order() {
    let data = tempfile::tempdir().unwrap();
    let data = data.path().to_str().unwrap();
    let server = ServerProcess::start(&["--tcp-plaintext", "--store", "disk", "--data-dir", data]).await;
    let mut requests: Vec<CommandRequest> =
        (1..=100).map(|i| CommandRequest::hset("t", "k", i as i64)).collect();
    requests.push(CommandRequest::hget("t", "k"));
    requests.extend((101..=200).map(|i| CommandRequest::hset("t", "k", i as i64)));
    requests.push(CommandRequest::hdel("t", "k"));
    requests.push(CommandRequest::hexist("t", "k"));
    let answers = pipelined(server.addr, &requests).await;
    let previous = |i: usize| answers[i].values.first().cloned().unwrap_or_default();
    assert_eq!(previous(0), Value::default(), "the first write replaced nothing");
    for i in 1..100 {
        assert_eq!(previous(i), Value::from(i as i64), "write {} replaced the wrong value", i + 1);
    }
    assert_eq!(answers[100].values, vec![Value::from(100i64)], "a read missed a write before it");
    for i in 101..201 {
        assert_eq!(previous(i), Value::from(i as i64 - 1), "write {i} replaced the wrong value");
    }
    assert_eq!(answers[201].values, vec![Value::from(200i64)], "Hdel removed the last value written");
    assert_eq!(answers[202].values, vec![Value::from(false)]);
}

#[tokio::test]
async fn a_frame_that_starts_on_an_idle_connection_gets_408_after_the_request_timeout() {
    let server = TestServer::start_for_with(Transport::Tcp, |config| {
        config.limits.request_timeout = Duration::from_millis(300);
        config.limits.idle_timeout = Duration::from_secs(20);
    })
    .await;
    let mut stream = server.raw_tcp().await;
    let started = tokio::time::Instant::now();
    stream.write_all(&[0, 0, 0, 100, 1, 2, 3]).await.unwrap(); // the first bytes ever, then nothing
    let (read, _write) = stream.split();
    let frames = frames_until_closed(read).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].status, status::REQUEST_TIMEOUT);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "closed by the idle timeout, not the request timeout"
    );
}

#[tokio::test]
async fn at_shutdown_the_next_request_is_answered_503_and_later_ones_are_not_executed() {
    let mut server = TestServer::start_for(Transport::Tcp).await;
    let _client = fill_big_table(&server).await;
    let mut stream = server.raw_tcp().await;
    stream.write_all(&common::frame(&CommandRequest::hgetall("big"))).await.unwrap();
    let (read, mut write) = stream.split();
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(64 << 20));
    // The answer has started: the server is busy writing 40 MiB it cannot send until this side reads.
    let first = frames.next().await.unwrap().unwrap();
    assert!(first.more);
    server.begin_stop();
    for key in ["after-1", "after-2"] {
        write.write_all(&common::frame(&CommandRequest::hset("t", key, "x"))).await.unwrap();
    }
    let mut pairs = first.pairs.len();
    let last = loop {
        let frame = frames.next().await.unwrap().unwrap();
        pairs += frame.pairs.len();
        if !frame.more {
            break frame;
        }
    };
    assert_eq!((last.status, pairs), (status::OK, 40), "the answer in progress is completed");
    let unavailable = frames.next().await.unwrap().unwrap();
    assert_eq!(unavailable.status, status::UNAVAILABLE, "{unavailable:?}");
    assert!(unavailable.message.contains("not executed"), "{}", unavailable.message);
    assert!(frames.next().await.is_none(), "no answer for the later request: the connection ends");
}

#[tokio::test]
async fn a_forced_shutdown_cuts_an_answer_off_without_a_503() {
    let mut server = TestServer::start_for_with(Transport::Tcp, |config| {
        config.shutdown_grace = Duration::from_millis(200);
        config.limits.reply_timeout = Duration::from_secs(60);
    })
    .await;
    let _client = fill_big_table(&server).await;
    let mut stream = server.raw_tcp().await;
    stream.write_all(&common::frame(&CommandRequest::hgetall("big"))).await.unwrap();
    let mut frames = FramedRead::new(stream, FrameCodec::<CommandResponse>::new(64 << 20));
    assert!(frames.next().await.unwrap().unwrap().more);
    server.begin_stop();
    tokio::time::timeout(Duration::from_secs(10), server.stopped()).await.expect("the grace period ends it");
    let mut rest = Vec::new();
    while let Some(Ok(frame)) = frames.next().await {
        rest.push(frame);
    }
    assert!(rest.iter().all(|f| f.more), "the answer was cut off, not completed");
    assert!(rest.iter().all(|f| f.status != status::UNAVAILABLE), "a 503 would wrongly say 'not executed'");
}

#[tokio::test]
async fn the_course_client_works_unchanged() {
    let server = TestServer::start_for(Transport::Tcp).await;
    // What the course's client does: a plain TCP stream, tokio-util's LengthDelimitedCodec with its
    // defaults, and prost.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let mut client = Framed::new(stream, LengthDelimitedCodec::new());

    let cmd = CommandRequest::hset("table1", "hello", "world");
    client.send(Bytes::from(cmd.encode_to_vec())).await.unwrap();
    let data = client.next().await.unwrap().unwrap();
    let res = CommandResponse::decode(data).unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.values, vec![Value::default()], "no previous value");

    let cmd = CommandRequest::hget("table1", "hello");
    client.send(Bytes::from(cmd.encode_to_vec())).await.unwrap();
    let data = client.next().await.unwrap().unwrap();
    let res = CommandResponse::decode(data).unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.values, vec![Value::from("world")]);
}

#[tokio::test]
async fn bad_input_ends_its_connection_with_an_error_frame_and_nothing_else() {
    let server = TestServer::start_for_with(Transport::Tcp, |config| {
        config.limits.request_timeout = Duration::from_millis(300);
    })
    .await;
    let survivor = server.client().await;
    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xFF; 8]);
    let cases: [(&str, Vec<u8>, u32, &str); 5] = [
        ("length 0xFFFFFFFF", [0xFF; 4].repeat(25), status::PAYLOAD_TOO_LARGE, "exceeds"),
        ("length 2^30", (1u32 << 30).to_be_bytes().to_vec(), status::PAYLOAD_TOO_LARGE, "exceeds"),
        ("garbage", garbage, status::BAD_REQUEST, "not a valid CommandRequest"),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: qkv\r\n\r\n".to_vec(),
            status::PAYLOAD_TOO_LARGE,
            "HTTP",
        ),
        (
            "a frame that stops half way",
            vec![0, 0, 0, 100, 1, 2, 3],
            status::REQUEST_TIMEOUT,
            "did not arrive",
        ),
    ];
    for (case, bad, expected_status, words) in cases {
        let mut stream = server.raw_tcp().await;
        // A good request first: its answer must still arrive, before the error.
        stream.write_all(&common::frame(&CommandRequest::ping("before"))).await.unwrap();
        stream.write_all(&bad).await.unwrap();
        let (read, _write) = stream.split();
        let frames = frames_until_closed(read).await;
        assert_eq!(frames.len(), 2, "{case}: {frames:?}");
        assert_eq!(frames[0].values, vec![Value::from(b"before".to_vec())], "{case}");
        assert_eq!(frames[1].status, expected_status, "{case}: {:?}", frames[1]);
        assert!(frames[1].message.contains(words), "{case}: {:?}", frames[1].message);
        survivor.ping("").await.unwrap_or_else(|e| panic!("{case} affected another connection: {e}"));
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_after_the_reply_timeout() {
    let server = TestServer::start_for_with(Transport::Tcp, |config| {
        config.limits.reply_timeout = Duration::from_millis(200);
    })
    .await;
    let client = fill_big_table(&server).await;
    let mut stream = server.raw_tcp().await;
    stream.write_all(&common::frame(&CommandRequest::hgetall("big"))).await.unwrap();
    // Testing a timer: nothing to wait on but time. Read nothing for ten times the reply timeout...
    tokio::time::sleep(Duration::from_secs(2)).await;
    // ...then what arrives is what the kernel buffered, and the connection's end, not 40 MiB.
    let (read, _write) = stream.split();
    let frames = frames_until_closed(read).await;
    let values: usize = frames.iter().map(|f| f.pairs.len()).sum();
    assert!(values < 40, "the server should have given up, yet sent {values} of 40 values");
    client.ping("").await.expect("the server carries on");
}

#[tokio::test]
async fn tls_over_tcp_requires_alpn_qkv_1() {
    let server = TestServer::start_for(Transport::Tls).await;
    let connect = |alpn: &'static [u8]| {
        let roots = qkv::tls::read_roots(&server.ca()).unwrap();
        let mut config = qkv::tls::client_config(roots, &qkv::tls::Tickets::none(), None).unwrap();
        config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let addr = server.addr;
        async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            connector.connect("localhost".try_into().unwrap(), stream).await
        }
    };
    let refused = connect(b"h2").await.expect_err("a client that does not speak qkv/1 is refused");
    assert!(refused.to_string().contains("NoApplicationProtocol"), "{refused}");
    // qkv's own client for the web listener, dialling the main port by mistake, is told so (it heard
    // "does the server serve TLS on TCP, not plaintext?", which it does).
    let config = ClientConfig { transport: Transport::Http, ..server.client_config() };
    let mistaken = Client::connect_with(config).await.expect_err("h2 is not spoken here");
    assert!(matches!(mistaken, ClientError::NoApplicationProtocol { .. }), "{mistaken:?}");
    assert!(mistaken.to_string().contains("h2 on its --web listener"), "{mistaken}");
    let mut accepted = connect(b"qkv/1").await.expect("qkv/1 is accepted");
    accepted.write_all(&common::frame(&CommandRequest::ping("tls"))).await.unwrap();
    let answer = FramedRead::new(accepted, FrameCodec::<CommandResponse>::new(1 << 20)).next().await;
    assert_eq!(answer.unwrap().unwrap().values, vec![Value::from(b"tls".to_vec())]);
}

/// Writes 40 MiB to table `big` (40 values of 1 MiB): an Hgetall of it takes many frames, more than
/// socket buffers hold. Returns the client that wrote it.
async fn fill_big_table(server: &TestServer) -> qkv::Client {
    let client = server.client().await;
    for batch in 0..8 {
        let pairs = (0..5).map(|i| Kvpair::new(format!("k{}", batch * 5 + i), vec![1u8; 1 << 20]));
        client.hmset("big", pairs).await.unwrap();
    }
    client
}

/// The multi-frame rule with a subscription on a pipelined connection, byte for byte as a client in
/// another language would see it: the subscription's frames until its last, then the answers of the
/// requests sent after the Subscribe, in request order. The Unsubscribe runs while the subscription
/// is still being answered; the Hset sent before it runs too.
#[tokio::test]
async fn a_subscription_holds_later_answers_until_an_unsubscribe_on_the_same_connection_ends_it() {
    let server = TestServer::start_for(Transport::Tcp).await;
    let publisher = server.client().await;
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let mut connection = Framed::new(stream, FrameCodec::<CommandResponse>::new(1 << 20));
    let send = |request: CommandRequest| common::frame(&request);
    connection.get_mut().write_all(&send(CommandRequest::subscribe("news"))).await.unwrap();
    let first = connection.next().await.unwrap().unwrap();
    assert!(first.more && first.status == status::OK, "{first:?}");
    let Some(qkv::pb::value::Value::Integer(id)) = first.values[0].value else { panic!("an id: {first:?}") };

    assert_eq!(publisher.publish("news", [Value::from("one")]).await.unwrap().receivers, 1);
    let one = connection.next().await.unwrap().unwrap();
    assert_eq!((one.values, one.more), (vec![Value::from("one")], true));

    let (hset, unsubscribe) =
        (CommandRequest::hset("t", "k", "v"), CommandRequest::unsubscribe("news", id as u32));
    connection.get_mut().write_all(&[send(hset), send(unsubscribe)].concat()).await.unwrap();
    let last = connection.next().await.unwrap().unwrap();
    assert_eq!((last.status, last.more), (status::OK, false), "the subscription's last frame: {last:?}");
    let hset_answer = connection.next().await.unwrap().unwrap();
    assert_eq!((hset_answer.status, hset_answer.versions.len()), (status::OK, 1), "{hset_answer:?}");
    let unsubscribe_answer = connection.next().await.unwrap().unwrap();
    assert_eq!((unsubscribe_answer.status, unsubscribe_answer.more), (status::OK, false));
    assert_eq!(server.service.broker().total_subscriptions(), 0);
    assert_eq!(publisher.publish("news", [Value::from("two")]).await.unwrap().receivers, 0);
}

/// A connection answers in request order, so it carries one subscription at a time: a second
/// Subscribe is refused (429) rather than left registered, holding messages nobody can be sent, until
/// the first ends; once it is unsubscribed, the next one is taken.
#[tokio::test]
async fn a_connection_carries_one_subscription_at_a_time() {
    let server = TestServer::start_for(Transport::Tcp).await;
    let publisher = server.client().await;
    let stream = server.raw_tcp().await;
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(1 << 20));
    let mut burst = common::frame(&CommandRequest::subscribe("a")).to_vec();
    burst.extend_from_slice(&common::frame(&CommandRequest::subscribe("b")));
    write.write_all(&burst).await.unwrap();
    let first_a = frames.next().await.unwrap().unwrap();
    assert!(first_a.more, "{first_a:?}");
    assert_eq!(publisher.publish("b", [Value::from("early")]).await.unwrap().receivers, 0, "b was refused");
    assert_eq!(server.service.broker().total_subscriptions(), 1);

    let Some(qkv::pb::value::Value::Integer(id)) = first_a.values[0].value else { panic!("{first_a:?}") };
    let mut burst = common::frame(&CommandRequest::unsubscribe("a", id as u32)).to_vec();
    burst.extend_from_slice(&common::frame(&CommandRequest::subscribe("c")));
    write.write_all(&burst).await.unwrap();
    let last_a = frames.next().await.unwrap().unwrap();
    assert_eq!((last_a.status, last_a.more), (status::OK, false), "{last_a:?}");
    let refused_b = frames.next().await.unwrap().unwrap();
    assert_eq!((refused_b.status, refused_b.more), (status::TOO_MANY_REQUESTS, false), "{refused_b:?}");
    assert_eq!(frames.next().await.unwrap().unwrap().status, status::OK, "the Unsubscribe's own answer");
    let first_c = frames.next().await.unwrap().unwrap();
    assert!(first_c.more, "after the Unsubscribe, a new subscription is taken: {first_c:?}");
    assert_eq!(publisher.publish("c", [Value::from("now")]).await.unwrap().receivers, 1);
    assert_eq!(frames.next().await.unwrap().unwrap().values, [Value::from("now")]);
}

/// A subscription's answer lasts, so the answers of the requests sent behind it wait: once they reach
/// the connection's limits the server can read nothing more, not even the Unsubscribe that would end
/// it. It ends the subscription then (429, saying why) and the answers follow, so the connection takes
/// requests again, and one its client closes in that state is gone, not held open with its
/// subscription for good (it held the only connection slot here, and every later client was refused).
async fn a_subscription_the_requests_behind_it_stall_ends_and_their_answers_follow(transport: Transport) {
    let server = TestServer::start_for_with(transport, |config| {
        config.limits.max_concurrent_requests = 4;
        config.limits.max_connections = 1;
    })
    .await;
    let stream = raw_byte_stream(server.addr, &server.ca(), transport).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(1 << 20));
    // Without its subscription ended the answers would never come: wait for each at most 10 s.
    async fn next(
        frames: &mut (impl StreamExt<Item = Result<CommandResponse, FrameError>> + Unpin),
    ) -> CommandResponse {
        let next = tokio::time::timeout(Duration::from_secs(10), frames.next()).await;
        next.expect("a frame within 10 s").expect("a frame").expect("a whole frame")
    }
    let stall = |topic: &str| {
        let mut burst = common::frame(&CommandRequest::subscribe(topic)).to_vec();
        // The Subscribe and three pings take the four places; the fourth ping cannot start.
        for i in 0..5u8 {
            burst.extend_from_slice(&common::frame(&CommandRequest::ping(vec![i])));
        }
        burst
    };
    write.write_all(&stall("news")).await.unwrap();
    let first = next(&mut frames).await;
    assert!(first.more && first.status == status::OK, "{first:?}");
    let last = next(&mut frames).await;
    assert_eq!((last.status, last.more), (status::TOO_MANY_REQUESTS, false), "{last:?}");
    assert!(last.message.contains("Unsubscribe"), "says why: {}", last.message);
    for i in 0..5u8 {
        let pong = next(&mut frames).await;
        assert_eq!((pong.status, pong.values.clone()), (status::OK, vec![Value::from(vec![i])]), "{pong:?}");
    }
    assert_eq!(server.service.broker().total_subscriptions(), 0);
    write.write_all(&common::frame(&CommandRequest::ping(b"again".to_vec()))).await.unwrap();
    assert_eq!(next(&mut frames).await.values, [Value::from(b"again".to_vec())]);

    // Stalled again, and closed without reading a thing: the connection's slot comes back.
    write.write_all(&stall("more")).await.unwrap();
    drop((frames, write));
    let admitted = async {
        loop {
            let mut next = raw_byte_stream(server.addr, &server.ca(), transport).await;
            next.write_all(&common::frame(&CommandRequest::ping(Bytes::new()))).await.unwrap();
            let mut answers = FramedRead::new(next, FrameCodec::<CommandResponse>::new(1 << 20));
            match answers.next().await {
                Some(Ok(answer)) if answer.status == status::OK => break,
                // Refused (the connection limit): the closed connection has not ended yet.
                Some(Ok(answer)) => assert_eq!(answer.status, status::UNAVAILABLE, "{answer:?}"),
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), admitted).await.expect("the closed connection ends");
}

/// Only an endless answer stalls a connection for good: behind a long Hgetall still being written, a
/// Subscribe and the requests after it wait, and once the Hgetall ends the subscription's place frees
/// and the waiting request starts, so the subscription lives (it was ended while it waited). Its
/// Unsubscribe, one request too many behind it, then stalls it as the rule says.
async fn a_subscription_waiting_behind_a_long_answer_is_not_ended(transport: Transport) {
    let server =
        TestServer::start_for_with(transport, |config| config.limits.max_concurrent_requests = 4).await;
    let publisher = fill_big_table(&server).await;
    let stream = raw_byte_stream(server.addr, &server.ca(), transport).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(64 << 20));
    // The Subscribe and three pings take the four places while the Hgetall is written; the fourth
    // ping waits.
    let mut burst = common::frame(&CommandRequest::hgetall("big")).to_vec();
    burst.extend_from_slice(&common::frame(&CommandRequest::subscribe("news")));
    for i in 0..4u8 {
        burst.extend_from_slice(&common::frame(&CommandRequest::ping(vec![i])));
    }
    write.write_all(&burst).await.unwrap();
    let next = async |frames: &mut FramedRead<_, _>| -> CommandResponse {
        let next = tokio::time::timeout(Duration::from_secs(10), frames.next()).await;
        next.expect("a frame within 10 s").expect("a frame").expect("a whole frame")
    };
    while next(&mut frames).await.more {}
    let first = next(&mut frames).await;
    assert!(first.more && first.status == status::OK, "subscribed: {first:?}");
    let Some(qkv::pb::value::Value::Integer(id)) = first.values[0].value else { panic!("an id: {first:?}") };
    assert_eq!(publisher.publish("news", [Value::from("live")]).await.unwrap().receivers, 1, "alive");
    let message = next(&mut frames).await;
    assert_eq!((message.values, message.more), (vec![Value::from("live")], true));
    write.write_all(&common::frame(&CommandRequest::unsubscribe("news", id as u32))).await.unwrap();
    let last = next(&mut frames).await;
    assert_eq!((last.status, last.more), (status::TOO_MANY_REQUESTS, false), "{last:?}");
    for i in 0..4u8 {
        assert_eq!(next(&mut frames).await.values, [Value::from(vec![i])]);
    }
    assert_eq!(next(&mut frames).await.status, status::NOT_FOUND, "the Unsubscribe found it ended");
}

/// The course's client subscribes, then closes its sending side (`stream.close()`) and reads on: a
/// half-closed connection's subscription goes on, delivering every message, until it ends otherwise
/// (here the client's closing the whole connection, found at the next message). With a request behind
/// it, which could be answered only once it ends, a half-close ends it (200) and that answer follows.
async fn a_subscriber_that_closes_its_sending_side_reads_on(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let publisher = server.client().await;
    let next = async |frames: &mut FramedRead<_, _>| -> CommandResponse {
        let next = tokio::time::timeout(Duration::from_secs(10), frames.next()).await;
        next.expect("a frame within 10 s").expect("a frame").expect("a whole frame")
    };
    let stream = raw_byte_stream(server.addr, &server.ca(), transport).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(1 << 20));
    write.write_all(&common::frame(&CommandRequest::subscribe("news"))).await.unwrap();
    write.shutdown().await.unwrap();
    let first = next(&mut frames).await;
    assert!(first.more && first.status == status::OK, "subscribed: {first:?}");
    for word in ["one", "two"] {
        assert_eq!(publisher.publish("news", [Value::from(word)]).await.unwrap().receivers, 1);
        let message = next(&mut frames).await;
        assert_eq!((message.values, message.more), (vec![Value::from(word)], true), "{word}");
    }
    drop((frames, write));
    let gone = async {
        while publisher.publish("news", [Value::from("anyone?")]).await.unwrap().receivers > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone).await.expect("the closed subscriber is found");

    let stream = raw_byte_stream(server.addr, &server.ca(), transport).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(1 << 20));
    let mut burst = common::frame(&CommandRequest::subscribe("news")).to_vec();
    burst.extend_from_slice(&common::frame(&CommandRequest::ping(b"behind".to_vec())));
    write.write_all(&burst).await.unwrap();
    write.shutdown().await.unwrap();
    assert!(next(&mut frames).await.more, "subscribed");
    let last = next(&mut frames).await;
    assert_eq!((last.status, last.more), (status::OK, false), "{last:?}");
    assert!(last.message.contains("with a request sent after this subscription"), "{last:?}");
    assert_eq!(next(&mut frames).await.values, [Value::from(b"behind".to_vec())]);
    assert!(frames.next().await.is_none(), "then the connection ends");

    // Nothing more is read from a half-closed connection, so a client that went away is found only by
    // a write: the idle timeout bounds how long its subscription goes without one (else peers that
    // subscribe, close and vanish would hold connections for good).
    let quiet = TestServer::start_for_with(transport, |config| {
        config.limits.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let stream = raw_byte_stream(quiet.addr, &quiet.ca(), transport).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, FrameCodec::<CommandResponse>::new(1 << 20));
    write.write_all(&common::frame(&CommandRequest::subscribe("news"))).await.unwrap();
    write.shutdown().await.unwrap();
    assert!(next(&mut frames).await.more, "subscribed");
    let last = next(&mut frames).await;
    assert_eq!((last.status, last.more), (status::OK, false), "{last:?}");
    // It says why: the idle timeout, not a request behind it (there was none) or a failure.
    assert!(last.message.contains("for the idle timeout (--idle-timeout)"), "{last:?}");
    assert!(frames.next().await.is_none(), "then the connection ends");
    assert_eq!(quiet.service.broker().total_subscriptions(), 0);
}

/// Many a TLS client ends its sending side with a bare FIN, without TLS's close_notify (it shuts its
/// socket down, not its TLS session). That is the half-close it is on plaintext: the subscription goes
/// on, and the requests before the FIN are answered (the subscription ended at once before).
#[tokio::test]
async fn a_tls_subscriber_that_sends_a_fin_without_close_notify_reads_on() {
    let server = TestServer::start_for(Transport::Tls).await;
    let publisher = server.client().await;
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let roots = qkv::tls::read_roots(&server.ca()).unwrap();
    let config = qkv::tls::client_config(roots, &qkv::tls::Tickets::none(), None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(&common::frame(&CommandRequest::subscribe("news"))).await.unwrap();
    tls.flush().await.unwrap();
    tls.get_mut().0.shutdown().await.unwrap(); // the TCP socket's FIN: no close_notify
    let mut frames = FramedRead::new(tls, FrameCodec::<CommandResponse>::new(1 << 20));
    let mut next = async || {
        let next = tokio::time::timeout(Duration::from_secs(10), frames.next()).await;
        next.expect("a frame within 10 s").expect("a frame").expect("a whole frame")
    };
    assert!(next().await.more, "subscribed");
    // The FIN may reach the server after the first publish: both must be delivered.
    for word in ["one", "two"] {
        assert_eq!(publisher.publish("news", [Value::from(word)]).await.unwrap().receivers, 1, "{word}");
        let message = next().await;
        assert_eq!((message.values, message.more), (vec![Value::from(word)], true), "{word}");
    }
}

/// A read whose answer breaks off after its first frame (the connection lost) is sent again, as one
/// that fails before its first frame is: it changes nothing. A fake server sends the first listing one
/// frame of two and closes; the second connection is answered whole.
#[tokio::test]
async fn a_read_whose_answer_broke_off_is_sent_again() {
    let server = TestServer::start_for(Transport::Tcp).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ClientConfig::new(listener.local_addr().unwrap().to_string(), server.ca());
    config.transport = Transport::Tcp;
    let fake = tokio::spawn(async move {
        let pair = |key: &str| Kvpair::new(key, Value::from(1));
        for whole in [false, true] {
            let (stream, _) = listener.accept().await.unwrap();
            let mut connection = Framed::new(stream, FrameCodec::<CommandRequest>::new(1 << 20));
            connection.next().await.expect("a request").expect("a frame");
            let first = CommandResponse {
                pairs: vec![pair("a")],
                versions: vec![1],
                more: true,
                ..CommandResponse::ok()
            };
            connection.send(first).await.unwrap();
            if whole {
                let last =
                    CommandResponse { pairs: vec![pair("b")], versions: vec![1], ..CommandResponse::ok() };
                connection.send(last).await.unwrap();
                connection.next().await; // until the client closes
            }
        }
    });
    let client = Client::connect_with(config).await.unwrap();
    let listed = client.hgetall("t").await.expect("answered by the second attempt");
    assert_eq!(listed.iter().map(|(key, _)| key.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(client.stats().retries, 1);
    client.close().await;
    fake.await.unwrap();
}

/// A read whose answers keep breaking off is sent at most the policy's attempts times in all, not
/// that many for every break. A fake server that closes every other connection without an answer and
/// on the others sends the first of two frames, then closes; two attempts allowed.
#[tokio::test]
async fn a_read_is_sent_no_more_often_than_its_attempts_allow() {
    let server = TestServer::start_for(Transport::Tcp).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ClientConfig::new(listener.local_addr().unwrap().to_string(), server.ca());
    (config.transport, config.retry.attempts) = (Transport::Tcp, 2);
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    let fake = tokio::spawn(async move {
        for answering in [false, true].into_iter().cycle() {
            let (stream, _) = listener.accept().await.unwrap();
            let mut connection = Framed::new(stream, FrameCodec::<CommandRequest>::new(1 << 20));
            if let Some(Ok(_)) = connection.next().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if answering {
                    let first = CommandResponse { more: true, ..CommandResponse::ok() };
                    connection.send(first).await.unwrap();
                }
            }
        }
    });
    let client = Client::connect_with(config).await.unwrap();
    client.hgetall("t").await.expect_err("every answer broke off");
    assert_eq!(requests.load(std::sync::atomic::Ordering::Relaxed), 2, "requests sent");
    fake.abort();
}

/// A fake TCP server that answers its client's first request 503 (a backend unavailable) and its
/// second with `pong`, then waits for the client to close; and a TCP client config for it, whose
/// retries `attempts` allows, trusting the CA of the test server returned with it (kept alive for its
/// certificate files). The task says whether the client closed.
async fn answering_503_then(
    pong: &'static [u8],
    attempts: u32,
) -> (TestServer, ClientConfig, tokio::task::JoinHandle<bool>) {
    let server = TestServer::start_for(Transport::Tcp).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = ClientConfig::new(listener.local_addr().unwrap().to_string(), server.ca());
    (config.transport, config.retry.attempts) = (Transport::Tcp, attempts);
    let fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut connection = Framed::new(stream, FrameCodec::<CommandRequest>::new(1 << 20));
        let pong = CommandResponse { values: vec![Value::from(pong.to_vec())], ..CommandResponse::ok() };
        for answer in [CommandResponse::error(status::UNAVAILABLE, "the backend is unavailable"), pong] {
            connection.next().await.expect("a request").expect("a frame");
            connection.send(answer).await.unwrap();
        }
        connection.next().await.is_none() // the client closes
    });
    (server, config, fake)
}

/// A 503 that refuses one request (a backend unavailable) is that request's answer alone: the qkv
/// client goes on with the connection, and the calls after it are answered. Only a 503 the server
/// closes the connection after means the later requests were not executed.
#[tokio::test]
async fn a_503_followed_by_more_answers_refuses_its_request_alone() {
    let (_server, config, fake) = answering_503_then(b"b", 1).await;
    let client = Client::connect_with(config).await.unwrap();
    let (refused, served) = tokio::join!(client.ping(b"a".to_vec()), async {
        tokio::task::yield_now().await;
        client.ping(b"b".to_vec()).await
    });
    assert!(matches!(refused, Err(ClientError::Unavailable { .. })), "{refused:?}");
    assert!(served.is_ok(), "the call after a backend's 503 was answered: {served:?}");
    client.close().await;
    assert!(fake.await.unwrap());
}

/// A 503 is sent again within the call's attempts, as PROTOCOL.md section 13 says (it certainly was
/// not executed): the call is answered by the retry. It was returned to the caller at once.
#[tokio::test]
async fn a_503_is_sent_again() {
    let (_server, config, fake) = answering_503_then(b"a", 3).await;
    let client = Client::connect_with(config).await.unwrap();
    assert_eq!(client.ping(b"a".to_vec()).await.unwrap(), &b"a"[..]);
    assert_eq!(client.stats().retries, 1);
    client.close().await;
    assert!(fake.await.unwrap());
}

/// A frame compressed as the course's `frame.rs` does it: gzip, its length's top bit set.
fn compressed_frame(request: &CommandRequest) -> Vec<u8> {
    compressed_frame_of(&request.encode_to_vec())
}

/// `message` compressed into a frame as [`compressed_frame`] does.
fn compressed_frame_of(message: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(message).unwrap();
    let gzip = gzip.finish().unwrap();
    let mut frame = ((gzip.len() as u32) | 1 << 31).to_be_bytes().to_vec();
    frame.extend_from_slice(&gzip);
    frame
}

/// The course's client compresses every frame over 1436 bytes: such requests are taken, answered
/// uncompressed (which the course's decoder reads), beside plain ones. A gzip that says it inflates
/// to more than the maximum frame size is refused before it is inflated (413), one that holds other
/// than its trailer says, or is not gzip, or is several gzip members, is a bad request (400), and each
/// ends its connection as a bad frame does, saying why.
async fn the_course_clients_compressed_frames_are_taken(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let value = "course ".repeat(2000); // 14 KB, as the course's test of compression sends
    let stream = raw_byte_stream(server.addr, &server.ca(), transport).await;
    let (read, mut write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, LengthDelimitedCodec::new());
    let mut burst = compressed_frame(&CommandRequest::hset("course", "k", value.as_str()));
    burst.extend_from_slice(&common::frame(&CommandRequest::hget("course", "k")));
    burst.extend_from_slice(&compressed_frame(&CommandRequest::hget("course", "k")));
    write.write_all(&burst).await.unwrap();
    let answer = async |frames: &mut FramedRead<_, LengthDelimitedCodec>| {
        let frame = frames.next().await.expect("an answer").expect("an uncompressed frame");
        CommandResponse::decode(frame).unwrap()
    };
    assert_eq!(answer(&mut frames).await.status, status::OK, "the compressed Hset");
    for which in ["plain", "compressed"] {
        assert_eq!(answer(&mut frames).await.values, [Value::from(value.as_str())], "the {which} Hget");
    }

    let bomb = {
        let mut frame = compressed_frame(&CommandRequest::hset("course", "k", value.as_str()));
        let len = frame.len();
        frame[len - 4..].copy_from_slice(&(64u32 << 20).to_le_bytes()); // "inflates to 64 MiB"
        frame
    };
    let lying = {
        let mut frame = compressed_frame(&CommandRequest::hset("course", "k", value.as_str()));
        let len = frame.len();
        frame[len - 4..].copy_from_slice(&100u32.to_le_bytes()); // "inflates to 100 bytes"
        frame
    };
    let not_gzip = {
        let junk = b"notgzip".repeat(10);
        let mut frame = ((junk.len() as u32) | 1 << 31).to_be_bytes().to_vec();
        frame.extend_from_slice(&junk);
        frame
    };
    // RFC 1952 allows several members in a row, but the trailer gives only the last one's size.
    let two_members = {
        let message = CommandRequest::hset("course", "k", value.as_str()).encode_to_vec();
        let (first, second) = message.split_at(10);
        let gzip = |part: &[u8]| {
            let mut frame = compressed_frame_of(part);
            frame.drain(..4);
            frame
        };
        let members = [gzip(first), gzip(second)].concat();
        let mut frame = ((members.len() as u32) | 1 << 31).to_be_bytes().to_vec();
        frame.extend_from_slice(&members);
        frame
    };
    let refused = [
        (bomb, status::PAYLOAD_TOO_LARGE, "inflates to 67108864 bytes by its gzip trailer"),
        (
            lying,
            status::BAD_REQUEST,
            "inflates to more than the 100 bytes its gzip trailer (the frame's last 4 bytes) says",
        ),
        (not_gzip, status::BAD_REQUEST, "not a gzip stream"),
        (two_members, status::BAD_REQUEST, "send the message as one gzip member"),
    ];
    for (frame, expected, saying) in refused {
        let mut stream = raw_byte_stream(server.addr, &server.ca(), transport).await;
        stream.write_all(&frame).await.unwrap();
        let (read, _write) = tokio::io::split(stream);
        let answers = frames_until_closed(read).await;
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert_eq!(answers[0].status, expected, "{answers:?}");
        assert!(answers[0].message.contains(saying), "{saying:?} in {answers:?}");
    }
    let client = server.client().await;
    assert_eq!(client.hget("course", "k").await.unwrap().map(|v| v.value), Some(Value::from(value.as_str())));
}

transport_tests!(pipelined: tls, tcp =>
    the_course_clients_compressed_frames_are_taken,
    a_subscription_the_requests_behind_it_stall_ends_and_their_answers_follow,
    a_subscription_waiting_behind_a_long_answer_is_not_ended,
    a_subscriber_that_closes_its_sending_side_reads_on,
);

/// A plaintext client pointed at a port of another protocol (the TLS listener, or the admin listener's
/// HTTP) is told what it met and that nothing was executed: not "the connection was lost after the
/// request was sent", which would send its user to check for a write.
#[tokio::test]
async fn a_plaintext_client_at_a_port_of_another_protocol_is_told_nothing_was_executed() {
    let server = TestServer::start_for_with(Transport::Tls, |config| {
        config.admin = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let admin = server.admin.unwrap().to_string();
    for (addr, saying) in [(server.addr.to_string(), "looks like TLS"), (admin, "looks like an HTTP answer")]
    {
        let config = qkv::client::ClientConfig { transport: Transport::Tcp, addr, ..server.client_config() };
        let client = qkv::Client::connect_with(config).await.unwrap();
        let err = client.hset("t", "k", "v").await.unwrap_err();
        assert_eq!(err.executed(), qkv::client::Executed::No, "{err}");
        assert!(!err.is_retryable(), "the same mistake again: {err}");
        assert!(err.to_string().contains(saying), "{saying:?} in {err}");
    }
    assert_eq!(server.client().await.hget("t", "k").await.unwrap(), None);
}
