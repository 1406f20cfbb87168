//! gRPC from a client of another implementation: Python's grpcio (tests/grpc/client.py, with stubs
//! that grpcio-tools generates from proto/ at test time), against a real server's web listener over
//! TLS. Statuses, the qkv frame in a failure's details, streaming, deadlines and reflection. The Rust
//! (tonic) client runs the command and pub/sub suites over gRPC (tests/commands.rs, tests/pubsub.rs).
//!
//! Needs python3 with the packages in tests/requirements.txt: `cargo xtask test` installs them.

mod common;

use std::time::Duration;

use common::TestServer;
use hyper::HeaderMap;
use qkv::pb::CommandRequest;
use qkv::transport::Transport;
use tokio::process::Command;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc");
const PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto");

#[tokio::test]
async fn a_python_grpcio_client_uses_the_service() {
    let server = TestServer::start_for(Transport::Grpc).await;
    let stubs = tempfile::tempdir().expect("a temporary directory");
    let generated = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", PROTO, "-I", DIR])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args([
            format!("{PROTO}/kv.proto"),
            format!("{PROTO}/qkv/v1/kv.proto"),
            format!("{DIR}/rpc_status.proto"),
        ])
        .output()
        .await
        .expect("python3 runs");
    assert!(
        generated.status.success(),
        "generating the Python stubs failed (pip install -r tests/requirements.txt, or run cargo xtask test): {}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let address = format!("localhost:{}", server.web.expect("a web listener").port());
    let output = Command::new("python3")
        .arg(format!("{DIR}/client.py"))
        .arg(address)
        .arg(server.ca())
        .arg(stubs.path())
        .output()
        .await
        .expect("python3 runs");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && printed.trim_end().ends_with("all checks passed"),
        "{printed}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// One gRPC call made by hand over HTTP/2 (hyper, no gRPC library, so nothing on this side enforces
/// a deadline or checks the message): the messages' bytes and the trailers (or the headers of a
/// trailers-only answer).
async fn raw_call(server: &TestServer, method: &str, timeout: &str, message: &[u8]) -> (Vec<u8>, HeaderMap) {
    raw_call_of(server, method, timeout, &grpc_message(message)).await
}

/// `message` behind gRPC's 5-byte header (uncompressed, its length).
fn grpc_message(message: &[u8]) -> Vec<u8> {
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// An HTTP/2 connection to the server's web listener, trusting its CA, sending bodies of type `B`.
async fn h2_connection<B>(server: &TestServer) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut tls = qkv::tls::client_config(
        qkv::tls::read_roots(&server.ca()).expect("the CA"),
        &qkv::tls::Tickets::none(),
        None,
    )
    .expect("a TLS configuration");
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let stream = tokio::net::TcpStream::connect(server.web.expect("a web listener")).await.expect("connects");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().expect("a name"), stream)
        .await
        .expect("TLS");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("HTTP/2");
    tokio::spawn(connection);
    sender
}

/// [`raw_call`] with a request body of the caller's making.
async fn raw_call_of(server: &TestServer, method: &str, timeout: &str, body: &[u8]) -> (Vec<u8>, HeaderMap) {
    let mut sender = h2_connection(server).await;
    let call = hyper::Request::post(format!("https://localhost/qkv.v1.Kv/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body)))
        .expect("a request");
    let response = sender.send_request(call).await.expect("an answer");
    let (parts, mut body) = response.into_parts();
    let (mut data, mut trailers) = (Vec::new(), parts.headers);
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let frame = frame.expect("a frame");
        match frame.into_data() {
            Ok(bytes) => data.extend_from_slice(&bytes),
            Err(frame) => trailers.extend(frame.into_trailers().expect("trailers")),
        }
    }
    (data, trailers)
}

/// grpcurl's reflection client sends a request, waits for its answer, then sends the next on the same
/// stream, which it keeps open: each is answered as it comes (read whole first, the first request's
/// answer waited for a body that would not end until the request timeout).
#[tokio::test]
async fn reflection_answers_each_request_of_an_open_stream_as_it_comes() {
    // Its streams last at most the request timeout, not read whole first: a stream left open ends.
    let server = TestServer::start_for_with(Transport::Grpc, |config| {
        config.limits.request_timeout = Duration::from_secs(2);
    })
    .await;
    let mut sender = h2_connection(&server).await;
    let (requests, body) =
        tokio::sync::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>>(4);
    let call =
        hyper::Request::post("https://localhost/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::StreamBody::new(Box::pin(futures_util::stream::unfold(
                body,
                async |mut body| body.recv().await.map(|frame| (frame, body)),
            ))))
            .expect("a request");
    // ServerReflectionRequest { list_services: "" }: field 7, an empty string.
    let list_services = bytes::Bytes::from(grpc_message(&[0x3a, 0x00]));
    requests.send(Ok(hyper::body::Frame::data(list_services.clone()))).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(call))
        .await
        .expect("answered while the stream is open")
        .expect("an answer");
    let mut body = response.into_body();
    for turn in 0..2 {
        let frame = tokio::time::timeout(Duration::from_secs(5), http_body_util::BodyExt::frame(&mut body))
            .await
            .unwrap_or_else(|_| panic!("answer {turn} came while the stream was open"))
            .expect("a frame")
            .expect("data");
        let data = frame.into_data().expect("data, not trailers");
        assert!(String::from_utf8_lossy(&data).contains("qkv.v1.Kv"), "answer {turn}: {data:?}");
        if turn == 0 {
            requests.send(Ok(hyper::body::Frame::data(list_services.clone()))).await.unwrap();
        }
    }
    // Left open, the stream is ended by the server at its time, as a call at its deadline ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match http_body_util::BodyExt::frame(&mut body).await {
                Some(Ok(frame)) if frame.is_data() => continue,
                Some(Ok(frame)) => return frame.into_trailers().ok(),
                _ => return None,
            }
        }
    });
    let trailers = ended.await.expect("the server ends a reflection stream left open");
    let status = trailers.as_ref().and_then(|t| t.get("grpc-status")).map(|v| v.as_bytes().to_vec());
    assert_eq!(status.as_deref(), Some(&b"4"[..]), "DEADLINE_EXCEEDED: {trailers:?}");
    drop(requests);
}

/// Execute takes one request message. tonic decodes the first and drops the rest, so a call of two
/// ran the first alone and answered OK, leaving the client to think both ran: refused, nothing run.
#[tokio::test]
async fn a_unary_call_of_two_messages_is_refused_and_runs_neither() {
    let server = TestServer::start_for(Transport::Grpc).await;
    let mut body = grpc_message(&prost::Message::encode_to_vec(&CommandRequest::hset("t", "k", "first")));
    body.extend(grpc_message(&prost::Message::encode_to_vec(&CommandRequest::hset("t", "k", "second"))));
    for method in ["Execute", "ExecuteStream"] {
        let (_, trailers) = raw_call_of(&server, method, "10S", &body).await;
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"3"[..]), "{trailers:?}");
        let message = trailers.get("grpc-message").expect("a message").to_str().unwrap().to_owned();
        // grpc-message is percent-encoded.
        assert!(message.contains("more%20than%20one%20request%20message"), "{message}");
    }
    assert_eq!(server.client().await.hget("t", "k").await.unwrap(), None, "neither ran");
}

/// The server holds a call to the client's deadline (`grpc-timeout`), whatever the client does: a
/// subscription's stream ends at it with DEADLINE_EXCEEDED and qkv's 504, which only the server sets.
#[tokio::test]
async fn the_server_ends_a_call_at_its_deadline() {
    let server = TestServer::start_for(Transport::Grpc).await;
    let started = std::time::Instant::now();
    let subscribe = prost::Message::encode_to_vec(&CommandRequest::subscribe("t"));
    let (data, trailers) = raw_call(&server, "ExecuteStream", "300m", &subscribe).await;
    assert!(data.len() > 5, "the subscription's first message came before the end");
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"4"[..]), "{trailers:?}");
    assert_eq!(trailers.get("qkv-status").map(|v| v.as_bytes()), Some(&b"504"[..]), "{trailers:?}");
    // The details are a google.rpc.Status of the call's code, whose one detail is qkv's frame.
    let details = trailers.get("grpc-status-details-bin").expect("details").to_str().expect("base64");
    let details = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        details.trim_end_matches('='),
    )
    .expect("base64");
    let status = <qkv::pb::grpc::RpcStatus as prost::Message>::decode(details.as_slice()).expect("a Status");
    assert_eq!(status.code, tonic::Code::DeadlineExceeded as i32, "{status:?}");
    let frame = qkv::pb::grpc::frame_in_details(&details).expect("qkv's frame");
    assert_eq!(frame.status, 504, "{frame:?}");
    assert!(started.elapsed() >= Duration::from_millis(300), "not before the deadline");

    let ping = prost::Message::encode_to_vec(&CommandRequest::ping(""));
    let (_, trailers) = raw_call(&server, "Execute", "18446744073709551615S", &ping).await;
    assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"3"[..]), "{trailers:?}");
}

/// A message that does not decode is the client's error, INVALID_ARGUMENT (qkv's 400), not INTERNAL.
#[tokio::test]
async fn a_message_that_does_not_decode_is_an_invalid_argument() {
    let server = TestServer::start_for(Transport::Grpc).await;
    // An Hget (field 1) whose length runs past the end, and a key that is not UTF-8.
    let hget_bad_key = [0x0a, 0x05, 0x12, 0x03, 0xff, 0xfe, 0xfd];
    for message in [&[0x0a, 0x05, 0x0a][..], &hget_bad_key] {
        let (_, trailers) = raw_call(&server, "Execute", "10S", message).await;
        assert_eq!(trailers.get("grpc-status").map(|v| v.as_bytes()), Some(&b"3"[..]), "{trailers:?}");
    }
}

/// A gRPC `Pipeline` connect to a server that takes the call and never answers its headers fails
/// within the connect timeout, as not sent (nothing goes on the call before they come): it waited for
/// ever. The server: TLS with ALPN h2, accepting every stream and answering none.
#[tokio::test]
async fn a_pipeline_call_the_server_never_answers_fails_within_the_connect_timeout() {
    let certs = tempfile::tempdir().expect("temporary directory");
    let dir = qkv::certs::CertDir::new(certs.path());
    dir.ensure_server_certificate().expect("certificate");
    let identity =
        qkv::tls::Identity::from_pem_files(&dir.server_cert(), &dir.server_key()).expect("identity");
    let tls = qkv::tls::server_configs(identity, 16, None, qkv::tls::WebTransportCert::Server).expect("TLS");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(tls.web));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("listener");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("a connection");
        let tls = acceptor.accept(stream).await.expect("TLS");
        let mut connection = h2::server::handshake(tls).await.expect("HTTP/2");
        let mut held = Vec::new();
        while let Some(Ok(call)) = connection.accept().await {
            held.push(call); // never answered
        }
    });
    let config = qkv::client::ClientConfig {
        transport: Transport::GrpcPipeline,
        connect_timeout: Duration::from_millis(500),
        retry: qkv::client::RetryPolicy { attempts: 1, ..Default::default() },
        ..qkv::client::ClientConfig::new(addr.to_string(), dir.ca_cert())
    };
    let connected = tokio::time::timeout(Duration::from_secs(30), qkv::Client::connect_with(config))
        .await
        .expect("the connect gave up on its own");
    let error = connected.map(drop).expect_err("no call was answered");
    assert_eq!(error.executed(), qkv::client::Executed::No, "{error}");
    server.abort();
}
