//! The doors for browsers, from Rust clients that do what a browser does: WebTransport sessions on the
//! QUIC port (`wtransport`'s client, trusting the server by the certificate hash it publishes, as
//! `serverCertificateHashes` does), and WebSockets on the web listener (tokio-tungstenite, with an
//! `Origin` header as a page's). The JavaScript client and the console are tested from node and from
//! Chromium (tests/js_client.rs, tests/browser.rs).

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::{TestServer, frame};
use futures_util::{SinkExt, StreamExt};
use qkv::pb::{CommandRequest, CommandResponse, Value, status};
use qkv::transport::Transport;
use qkv::transport::frame::FrameCodec;
use serde_json::Value as Json;
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::codec::Decoder;
use wtransport::endpoint::{ConnectOptions, endpoint_side::Client};
use wtransport::error::ConnectingError;
use wtransport::tls::Sha256Digest;

/// A server with its web listener, and how browsers reach it.
struct Browsers {
    server: TestServer,
}

impl Browsers {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut qkv::server::ServerConfig)) -> Self {
        Browsers { server: TestServer::start_for_with(Transport::Http, configure).await }
    }

    fn web_port(&self) -> u16 {
        self.server.web.expect("a web listener").port()
    }

    /// The web listener's own origin: its pages' (the console's).
    fn own_origin(&self) -> String {
        format!("https://localhost:{}", self.web_port())
    }

    /// `GET /webtransport-cert`, as a page fetches it.
    async fn webtransport_cert(&self) -> Json {
        let ca = self.server.ca();
        let url = format!("{}/webtransport-cert", self.own_origin());
        let output = Command::new("curl")
            .args(["-sS", "--fail", "--cacert"])
            .arg(&ca)
            .arg(&url)
            .output()
            .await
            .expect("curl runs (apt install curl)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("JSON")
    }

    /// The headers of `GET path`, as a page of `origin` asks for it: lower-cased, one per line.
    async fn headers(&self, path: &str, origin: &str) -> String {
        self.response_head(path, &format!("origin: {origin}"), &["--fail"]).await
    }

    /// The status line and headers of `GET path` sent with `header`, lower-cased, one per line, then
    /// what `extra` curl arguments print (`-w`).
    async fn response_head(&self, path: &str, header: &str, extra: &[&str]) -> String {
        let output = Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-D", "-"])
            .args(extra)
            .arg("-H")
            .arg(header)
            .arg("--cacert")
            .arg(self.server.ca())
            .arg(format!("{}{path}", self.own_origin()))
            .output()
            .await
            .expect("curl runs (apt install curl)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).to_lowercase()
    }

    /// A WebTransport session to `path` on the QUIC port, as a page of `origin` opens it: trusting the
    /// certificate by the hash the server publishes.
    async fn webtransport(
        &self,
        origin: Option<&str>,
        path: &str,
    ) -> Result<wtransport::Connection, ConnectingError> {
        let published = self.webtransport_cert().await;
        let hex = published["sha256"].as_str().expect("a hash");
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect();
        let hash = Sha256Digest::new(bytes.try_into().expect("32 bytes"));
        let config = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_server_certificate_hashes([hash])
            .max_idle_timeout(Some(Duration::from_secs(10)))
            .expect("an idle timeout")
            .build();
        let endpoint: wtransport::Endpoint<Client> =
            wtransport::Endpoint::client(config).expect("a client endpoint");
        let port = published["port"].as_u64().expect("the QUIC port");
        let mut options = ConnectOptions::builder(format!("https://localhost:{port}{path}"));
        if let Some(origin) = origin {
            options = options.add_header("origin", origin);
        }
        endpoint.connect(options.build()).await
    }

    /// A WebSocket on `/ws`, as a page of `origin` opens it.
    async fn websocket(
        &self,
        origin: Option<&str>,
    ) -> Result<WebSocket, tokio_tungstenite::tungstenite::Error> {
        Ok(self.websocket_asking(origin, None).await?.0)
    }

    /// A WebSocket on `/ws` that asks for the subprotocols `protocols` (comma-separated), and the one
    /// the server selected.
    async fn websocket_asking(
        &self,
        origin: Option<&str>,
        protocols: Option<&str>,
    ) -> Result<(WebSocket, Option<String>), tokio_tungstenite::tungstenite::Error> {
        let tls =
            common::raw_tls(self.server.web.expect("a web listener"), &self.server.ca(), b"http/1.1").await;
        let mut request = format!("wss://localhost:{}/ws", self.web_port()).into_client_request()?;
        if let Some(origin) = origin {
            request.headers_mut().insert("origin", origin.parse().expect("a header value"));
        }
        if let Some(protocols) = protocols {
            request
                .headers_mut()
                .insert("sec-websocket-protocol", protocols.parse().expect("a header value"));
        }
        let (socket, response) = tokio_tungstenite::client_async(request, tls).await?;
        let selected =
            response.headers().get("sec-websocket-protocol").map(|p| p.to_str().unwrap().to_owned());
        Ok((socket, selected))
    }
}

type WebSocket = tokio_tungstenite::WebSocketStream<Box<dyn common::ByteStream>>;

/// One exchange on its own WebTransport stream: the request frame, FIN, every answer frame to the end.
async fn exchange(session: &wtransport::Connection, request: &CommandRequest) -> Vec<CommandResponse> {
    let (mut send, mut recv) = session.open_bi().await.expect("a stream").await.expect("the stream opens");
    send.write_all(&frame(request)).await.expect("request written");
    send.finish().await.expect("FIN");
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut bytes).await.expect("the answer, to its end");
    decode_all(&mut BytesMut::from(&bytes[..]))
}

/// Every whole frame in `bytes`, taken out of it.
fn decode_all(bytes: &mut BytesMut) -> Vec<CommandResponse> {
    let mut codec = FrameCodec::<CommandResponse>::new(64 << 20);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode(bytes).expect("a well-formed answer") {
        frames.push(frame);
    }
    frames
}

/// Reads WebSocket messages until `count` answers (their last frames) have arrived.
async fn answers(socket: &mut WebSocket, count: usize) -> Vec<Vec<CommandResponse>> {
    let mut received = BytesMut::new();
    let mut answers = vec![Vec::new()];
    while answers.len() <= count {
        match socket.next().await.expect("a message").expect("the session stays up") {
            Message::Binary(bytes) => received.extend_from_slice(&bytes),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
        for frame in decode_all(&mut received) {
            let last = !frame.more;
            answers.last_mut().expect("an answer").push(frame);
            if last {
                answers.push(Vec::new());
            }
        }
    }
    answers.pop();
    answers
}

#[tokio::test]
async fn a_webtransport_session_serves_one_exchange_per_stream() {
    let browsers = Browsers::start_with(|config| config.service.response_frame_target = 64).await;
    let session = browsers.webtransport(Some(&browsers.own_origin()), "/").await.expect("a session");
    let set = exchange(&session, &CommandRequest::hset("t", "k", "v")).await;
    assert_eq!((set.len(), set[0].status), (1, status::OK), "{set:?}");
    for i in 0..20 {
        exchange(&session, &CommandRequest::hset("t", format!("k{i:02}"), Value::from(i as i64))).await;
    }
    // Streams are independent: many at once, each answered on its own.
    let gets = (0..20).map(|i| {
        let session = &session;
        async move { exchange(session, &CommandRequest::hget("t", format!("k{i:02}"))).await }
    });
    for (i, answer) in futures_util::future::join_all(gets).await.into_iter().enumerate() {
        assert_eq!(answer[0].values, vec![Value::from(i as i64)], "{answer:?}");
    }
    // A long answer spans frames on its stream, the last with more = false.
    let all = exchange(&session, &CommandRequest::hgetall("t")).await;
    assert!(all.len() > 1, "small frames: {all:?}");
    assert!(all[..all.len() - 1].iter().all(|f| f.more) && !all[all.len() - 1].more);
    assert_eq!(all.iter().map(|f| f.pairs.len()).sum::<usize>(), 21);
    // The same data is there for qkv's own clients.
    let client = browsers.server.client().await;
    assert_eq!(client.hget("t", "k").await.expect("hget").map(|e| e.value), Some(Value::from("v")));
}

/// A browser refuses a stream beyond the server's credit at once, so a session is granted from its
/// start what a QUIC client is once it uses all of `--max-concurrent-requests`: twice the limit, its
/// CONNECT stream beside them.
#[tokio::test]
async fn a_webtransport_session_may_open_twice_the_limit_of_request_streams_at_once() {
    let browsers = Browsers::start_with(|config| config.limits.max_concurrent_requests = 8).await;
    let session = browsers.webtransport(Some(&browsers.own_origin()), "/").await.expect("a session");
    let mut held = Vec::new();
    for n in 1..=16 {
        // wtransport's client waits for credit where a browser fails: a stream not granted never opens.
        let opening = async { session.open_bi().await.expect("a stream").await.expect("the stream opens") };
        let stream = tokio::time::timeout(Duration::from_secs(10), opening)
            .await
            .unwrap_or_else(|_| panic!("request stream {n} of 16 was not granted"));
        held.push(stream);
    }
    // Each is a request stream the server serves: the first 8 now, the others as those end.
    let (mut send, mut recv) = held.swap_remove(0);
    send.write_all(&frame(&CommandRequest::ping(bytes::Bytes::new()))).await.expect("request written");
    send.finish().await.expect("FIN");
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut recv, &mut bytes).await.expect("the answer");
    assert_eq!(decode_all(&mut BytesMut::from(&bytes[..]))[0].status, status::OK);
}

#[tokio::test]
async fn the_webtransport_certificate_is_one_browsers_accept_by_hash() {
    let browsers = Browsers::start().await;
    let published = browsers.webtransport_cert().await;
    assert_eq!(published["self_issued"], true);
    let session = browsers.webtransport(Some(&browsers.own_origin()), "/").await.expect("a session");
    let chain = session.peer_identity().expect("the server's certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(chain.as_slice()[0].der()).expect("X.509");
    let validity = cert.validity();
    let days = (validity.not_after.timestamp() - validity.not_before.timestamp()) / 86_400;
    assert!(days <= 14, "valid for {days} days: browsers refuse more than 14");
    // Published as the certificate says it, to the second (RFC 3339, as the protocol's example).
    let not_after = published["not_after"].as_str().expect("not_after");
    let parsed = time::OffsetDateTime::parse(not_after, &time::format_description::well_known::Rfc3339);
    assert_eq!(parsed.map(|t| t.unix_timestamp()).ok(), Some(validity.not_after.timestamp()), "{not_after}");
    assert!(!not_after.contains('.'), "no fraction of a second: {not_after}");
    assert_eq!(
        cert.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY,
        "an ECDSA key (P-256)"
    );
    // qkv's own clients still get the server's certificate, from the CA they trust.
    let client = browsers.server.client().await;
    client.ping("p").await.expect("a QUIC client still connects");
}

/// Any site's page may import the client's bundle (it is public code; what the page may then open is
/// `--web-origin`'s to say), but the console itself is not for framing, nor for other origins' scripts.
#[tokio::test]
async fn other_sites_may_import_the_client_bundle_but_not_embed_the_console() {
    let browsers = Browsers::start().await;
    let bundle = browsers.headers("/console/qkv-client.js", "https://app.example").await;
    assert!(bundle.contains("access-control-allow-origin: *\r\n"), "{bundle}");
    assert!(bundle.contains("content-type: text/javascript"), "{bundle}");
    let console = browsers.headers("/", "https://app.example").await;
    assert!(!console.contains("access-control-allow-origin"), "{console}");
    assert!(console.contains("frame-ancestors 'none'"), "{console}");
}

/// The console's files are `no-cache`: a browser revalidates them on every load, and a file it has
/// already (its ETag) is answered 304 without its bytes (the client bundle is ~190 KB).
#[tokio::test]
async fn the_consoles_files_are_revalidated_by_their_etag() {
    let browsers = Browsers::start().await;
    let get = async |path: &str, if_none_match: &str| {
        let header = format!("if-none-match: {if_none_match}");
        browsers.response_head(path, &header, &["-w", "%{size_download}"]).await
    };
    for path in ["/", "/console/qkv-client.js"] {
        let first = get(path, "\"none\"").await;
        assert!(first.starts_with("http/2 200"), "{first}");
        let etag = first.lines().find_map(|l| l.strip_prefix("etag: ")).expect("an etag").trim().to_owned();
        let again = get(path, &etag).await;
        assert!(again.starts_with("http/2 304"), "{again}");
        // The 304's length is the 200's (RFC 9110, 8.6), not its own empty body's (over HTTP/2, as
        // here: hyper drops a 304's length over HTTP/1.1).
        let length =
            |answer: &str| answer.lines().find_map(|l| l.strip_prefix("content-length: ")).map(str::to_owned);
        assert_eq!(length(&again), length(&first), "{first}\n{again}");
        assert!(again.ends_with("\r\n0"), "bytes sent with the 304: {again}");
        assert!(
            again.contains(&format!("etag: {etag}")) && again.contains("cache-control: no-cache"),
            "{again}"
        );
        let weak = get(path, &format!("\"other\", W/{etag}")).await;
        assert!(weak.starts_with("http/2 304"), "{weak}");
    }
}

/// The console's page links only files the listener serves, an icon among them: without one a
/// browser asks for /favicon.ico, a 404 that its developer tools report on every load.
#[tokio::test]
async fn the_console_page_links_an_icon_and_only_files_that_are_served() {
    let page = include_str!("../src/web/console/index.html");
    assert!(page.contains("rel=\"icon\""), "the console's page links no icon");
    let linked: Vec<&str> = page.split(['"', '\'']).filter(|word| word.starts_with("/console/")).collect();
    assert!(linked.len() >= 3, "{linked:?}");
    let browsers = Browsers::start().await;
    for path in linked {
        let head = browsers.response_head(path, "accept: */*", &[]).await;
        assert!(head.starts_with("http/2 200"), "{path}: {head}");
    }
}

#[tokio::test]
async fn webtransport_sessions_from_other_origins_or_for_other_paths_are_refused() {
    let browsers =
        Browsers::start_with(|config| config.web_origins = vec!["https://app.example".into()]).await;
    let refused = browsers.webtransport(Some("https://evil.example"), "/").await;
    assert!(matches!(refused, Err(ConnectingError::SessionRejected)), "{:?}", refused.err());
    let refused = browsers.webtransport(Some(&browsers.own_origin()), "/elsewhere").await;
    assert!(matches!(refused, Err(ConnectingError::SessionRejected)), "{:?}", refused.err());
    browsers.webtransport(Some("https://app.example"), "/").await.expect("an allowed origin");
    browsers.webtransport(None, "/").await.expect("no origin: not a page");
}

#[tokio::test]
async fn a_websocket_carries_the_tcp_byte_stream_whatever_its_message_boundaries() {
    let browsers = Browsers::start().await;
    let mut socket = browsers.websocket(Some(&browsers.own_origin())).await.expect("a WebSocket");
    let requests = [
        CommandRequest::hset("t", "a", "1"),
        CommandRequest::hset("t", "a", "2"),
        CommandRequest::hget("t", "a"),
        CommandRequest::hset("t", "b", "3"),
        CommandRequest::hgetall("t"),
    ];
    let bytes: Vec<u8> = requests.iter().flat_map(|r| frame(r).to_vec()).collect();
    // The first request a byte per message, the rest in one message: frames span messages, and
    // messages carry several frames.
    let first = frame(&requests[0]).len();
    for byte in &bytes[..first] {
        socket.send(Message::binary(vec![*byte])).await.expect("sent");
    }
    socket.send(Message::binary(bytes[first..].to_vec())).await.expect("sent");
    let answers = answers(&mut socket, requests.len()).await;
    // In request order: each sees the writes before it.
    assert_eq!(answers[1][0].values, vec![Value::from("1")], "{answers:?}");
    assert_eq!(answers[2][0].values, vec![Value::from("2")], "{answers:?}");
    let pairs: Vec<_> = answers[4].iter().flat_map(|f| f.pairs.iter().map(|p| p.key.clone())).collect();
    assert_eq!(pairs, ["a", "b"]);
}

/// The subprotocol has a name browsers may ask for (`new WebSocket(url, "qkv.v1")`: a `/` is not
/// allowed in one); the name first documented, qkv's ALPN, is still selected for clients that send it;
/// a session that asks for none is served all the same.
#[tokio::test]
async fn a_websocket_may_ask_for_the_qkv_subprotocol_by_a_name_browsers_accept() {
    let browsers = Browsers::start().await;
    let origin = browsers.own_origin();
    for (asked, selected) in [
        (Some("qkv.v1"), Some("qkv.v1")),
        (Some("chat, qkv.v1"), Some("qkv.v1")),
        (Some("qkv/1"), Some("qkv/1")),
        (None, None),
    ] {
        let (mut socket, chosen) =
            browsers.websocket_asking(Some(&origin), asked).await.expect("a WebSocket");
        assert_eq!(chosen.as_deref(), selected, "asking for {asked:?}");
        socket
            .send(Message::binary(frame(&CommandRequest::hset("t", "k", "v")).to_vec()))
            .await
            .expect("sent");
        assert_eq!(answers(&mut socket, 1).await[0][0].status, qkv::pb::status::OK, "asking for {asked:?}");
    }
}

#[tokio::test]
async fn websockets_from_other_origins_are_refused() {
    let browsers =
        Browsers::start_with(|config| config.web_origins = vec!["https://app.example".into()]).await;
    match browsers.websocket(Some("https://evil.example")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    browsers.websocket(Some("https://app.example")).await.expect("an allowed origin");
    browsers.websocket(None).await.expect("no origin: not a page");
}

#[tokio::test]
async fn a_text_message_or_one_over_the_limit_ends_the_session() {
    let browsers = Browsers::start_with(|config| config.websocket_max_message = 4096).await;
    let own = browsers.own_origin();
    let mut socket = browsers.websocket(Some(&own)).await.expect("a WebSocket");
    socket.send(Message::text("HGET t k")).await.expect("sent");
    assert_eq!(closed(&mut socket).await, Some(CloseCode::Unsupported), "a text message is not qkv's");

    let mut socket = browsers.websocket(Some(&own)).await.expect("a WebSocket");
    socket.send(Message::binary(vec![0u8; 8192])).await.expect("sent");
    assert_eq!(closed(&mut socket).await, Some(CloseCode::Size), "over --websocket-max-message");

    // Within the limit, a large request travels in several messages.
    let mut socket = browsers.websocket(Some(&own)).await.expect("a WebSocket");
    let large = frame(&CommandRequest::hset("t", "large", "x".repeat(10_000)));
    for chunk in large.chunks(4096) {
        socket.send(Message::binary(chunk.to_vec())).await.expect("sent");
    }
    let answer = answers(&mut socket, 1).await;
    assert_eq!(answer[0][0].status, status::OK, "{answer:?}");
}

/// Reads until the server closes the session; its close code, if it sent one.
async fn closed(socket: &mut WebSocket) -> Option<CloseCode> {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), socket.next()).await.expect("closed in time") {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test]
async fn websocket_sessions_end_when_the_server_shuts_down() {
    let mut browsers = Browsers::start().await;
    let mut socket = browsers.websocket(None).await.expect("a WebSocket");
    socket
        .send(Message::binary(frame(&CommandRequest::ping(bytes::Bytes::new())).to_vec()))
        .await
        .expect("sent");
    answers(&mut socket, 1).await;
    browsers.server.begin_stop();
    // As on TCP: a 503 announces the end (nothing later was executed), then the session closes.
    let announced = answers(&mut socket, 1).await;
    assert_eq!(announced[0][0].status, status::UNAVAILABLE, "{announced:?}");
    assert_eq!(closed(&mut socket).await, Some(CloseCode::Away));
    browsers.server.stopped().await;
}

/// The head of the answer to `request` (an HTTP/1.1 request's head, without its blank line unless a
/// body follows it) sent to
/// `addr` in plaintext, as it would come from a browser whatever name it dialled: lower-cased.
async fn plaintext_head(addr: std::net::SocketAddr, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connected");
    // A request with a body carries its blank line already.
    let ending = if request.contains("\r\n\r\n") { "" } else { "\r\n\r\n" };
    stream.write_all(format!("{request}{ending}").as_bytes()).await.expect("sent");
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("an answer in time")
            .expect("read");
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

/// A request names its host once: an HTTP/1.1 request without `Host`, with two (the first allowed, the
/// second not: a proxy may route by either), or with a `Host` other than its absolute-form target is a
/// 400 on every door, before anything runs; HTTP/1.0 may leave `Host` out.
#[tokio::test]
async fn a_request_that_does_not_name_its_host_once_is_refused() {
    let browsers = Browsers::start_with(|config| config.web_plaintext = true).await;
    let web = browsers.server.web.expect("a web listener");
    let port = web.port();
    let put = |head: &str| {
        format!(
            "PUT /v1/tables/t/keys/k {head}\r\ncontent-type: text/plain\r\ncontent-length: 1\r\nconnection: close\r\n\r\nv"
        )
    };
    let absolute = |target: &str, host: &str| {
        format!(
            "PUT http://{target}/v1/tables/t/keys/k HTTP/1.1\r\nhost: {host}\r\n\
             content-type: text/plain\r\ncontent-length: 1\r\nconnection: close\r\n\r\nv"
        )
    };
    for request in [
        put("HTTP/1.1"),
        put(&format!("HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nhost: evil.test:{port}")),
        absolute(&format!("127.0.0.1:{port}"), &format!("evil.test:{port}")),
        absolute("127.0.0.1", "127.0.0.1:81"),
        // A Host that is no host: empty, or a port that is not a number.
        put("HTTP/1.1\r\nhost: "),
        put("HTTP/1.1\r\nhost: localhost:abc"),
    ] {
        let head = plaintext_head(web, &request).await;
        assert!(head.starts_with("http/1.1 400"), "{request}\n→ {head}");
        assert!(head.contains("application/problem+json"), "{head}");
    }
    let grpc = plaintext_head(
        web,
        "POST /qkv.v1.Kv/Execute HTTP/1.1\r\ncontent-type: application/grpc\r\ncontent-length: 0\r\nconnection: close",
    )
    .await;
    assert!(grpc.contains("qkv-status: 400") && !grpc.contains("grpc-status: 0\r\n"), "{grpc}");
    // Nothing was stored by the refused writes.
    let get = format!("GET /v1/tables/t/keys/k HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nconnection: close");
    assert!(plaintext_head(web, &get).await.starts_with("http/1.1 404"));
    // Named once, or not at all in HTTP/1.0, the same write is served.
    // A port left out is the scheme's default, in the target or in Host.
    for request in [
        put(&format!("HTTP/1.1\r\nhost: 127.0.0.1:{port}")),
        put("HTTP/1.0"),
        absolute("127.0.0.1", "127.0.0.1:80"),
        absolute("LOCALHOST:80", "localhost"),
    ] {
        let head = plaintext_head(web, &request).await;
        let status = head.split_whitespace().nth(1);
        assert!(status.is_some_and(|s| s.starts_with("20")), "{request}\n→ {head}");
    }
}

/// DNS rebinding: a site makes its name resolve to the server's address, and its page (origin
/// `http://evil.test:PORT`) then sends `Host: evil.test:PORT`. In plaintext no certificate stops it,
/// so the listener answers only to the host names it has (IP addresses, localhost, its certificate's,
/// `--web-host`): every route refuses another name with 421, and its page is never the listener's own.
#[tokio::test]
async fn a_rebound_host_name_is_refused_on_every_web_route() {
    let browsers = Browsers::start_with(|config| config.web_plaintext = true).await;
    let web = browsers.server.web.expect("a web listener");
    let port = web.port();
    let requests = |host: &str| {
        let origin = format!("origin: http://{host}:{port}");
        let get = |path: &str| {
            format!("GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\n{origin}\r\nconnection: close")
        };
        [
            get("/"),
            get("/console/console.js"),
            get("/console/qkv-client.js"),
            get("/webtransport-cert"),
            get("/v1/stats"),
            get("/v1/tables/t/keys/k"),
            get("/v1/tables/t"),
            format!(
                "GET /ws HTTP/1.1\r\nhost: {host}:{port}\r\n{origin}\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
                 sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ=="
            ),
            format!(
                "PUT /v1/tables/t/keys/k HTTP/1.1\r\nhost: {host}:{port}\r\n{origin}\r\ncontent-type: text/plain\r\n\
                 content-length: 1\r\nconnection: close\r\n\r\nv"
            ),
        ]
    };
    for request in requests("evil.test") {
        let head = plaintext_head(web, &request).await;
        assert!(head.starts_with("http/1.1 421"), "{request}\n→ {head}");
        assert!(!head.contains("access-control-allow-origin"), "{head}");
    }
    // The names the listener answers to are served as before: its address, localhost.
    for host in ["127.0.0.1", "localhost"] {
        for request in requests(host) {
            let head = plaintext_head(web, &request).await;
            assert!(!head.starts_with("http/1.1 421"), "{request}\n→ {head}");
        }
        let upgrade = &requests(host)[7];
        assert!(plaintext_head(web, upgrade).await.starts_with("http/1.1 101"), "the own origin's WebSocket");
    }
    // gRPC too (routed by content type): refused before it is read.
    let grpc = plaintext_head(
        web,
        &format!(
            "POST /qkv.v1.Kv/Execute HTTP/1.1\r\nhost: evil.test:{port}\r\ncontent-type: application/grpc\r\n\
             content-length: 0\r\nconnection: close"
        ),
    )
    .await;
    assert!(grpc.contains("qkv-status: 421") && !grpc.contains("grpc-status: 0\r\n"), "{grpc}");

    // A name a proxy forwards is served once given with --web-host.
    let proxied = Browsers::start_with(|config| {
        config.web_plaintext = true;
        config.web_hosts = vec!["kv.example.com".into()];
    })
    .await;
    let web = proxied.server.web.expect("a web listener");
    let port = web.port();
    let cert = plaintext_head(
        web,
        &format!(
            "GET /webtransport-cert HTTP/1.1\r\nhost: kv.example.com:{port}\r\norigin: http://kv.example.com:{port}\r\nconnection: close"
        ),
    )
    .await;
    assert!(cert.starts_with("http/1.1 200"), "{cert}");
    assert!(cert.contains(&format!("access-control-allow-origin: http://kv.example.com:{port}")), "{cert}");
    let rebound = plaintext_head(
        web,
        &format!("GET /v1/tables/t HTTP/1.1\r\nhost: evil.test:{port}\r\nconnection: close"),
    )
    .await;
    assert!(rebound.starts_with("http/1.1 421"), "{rebound}");
}
