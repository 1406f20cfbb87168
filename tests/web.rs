//! The REST API as an HTTP client sees it: curl (HTTP/2 over TLS, HTTP/1.1, plaintext HTTP/2), against
//! a real server's web listener. Statuses, headers (ETag, Location, Content-Type), conditional
//! requests, representations by content type, paging, server-sent events, bad input (always a clear
//! 4xx as application/problem+json, never a 500) and the OpenAPI document held against the routes.
//! The command semantics themselves run over REST in tests/commands.rs.

#[macro_use]
mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::TestServer;
use futures_util::FutureExt;
use qkv::certs::CertDir;
use qkv::pb::{CommandRequest, Kvpair, Value, status};
use qkv::transport::Transport;
use serde_json::{Value as Json, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// What curl got: the status, the headers (names lowercase) and the body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// An error answer as RFC 9457 says: its content type, the status in the body, a detail.
    fn problem(&self, status: u16) -> Json {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        let problem = self.json();
        assert_eq!(problem["status"], status);
        assert!(problem["detail"].as_str().is_some_and(|d| d.len() > 10), "{problem}");
        problem
    }
}

/// A web listener and curl aimed at it.
struct Web {
    server: TestServer,
    base: String,
}

impl Web {
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    async fn start_with(configure: impl FnOnce(&mut qkv::server::ServerConfig)) -> Self {
        let server = TestServer::start_for_with(Transport::Http, configure).await;
        let port = server.web.expect("a web listener").port();
        Web { base: format!("https://localhost:{port}"), server }
    }

    /// curl with `args`, over HTTP/2 trusting the server's CA, on `path`.
    async fn curl(&self, path: &str, args: &[&str]) -> Answer {
        let ca = self.server.ca();
        let mut all = vec!["--cacert", ca.to_str().expect("a UTF-8 path"), "--http2", "--max-time", "20"];
        all.extend_from_slice(args);
        curl(&format!("{}{path}", self.base), &all).await
    }

    async fn put(&self, path: &str, content_type: &str, body: &[u8], headers: &[&str]) -> Answer {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(file.path(), body).expect("body written");
        let content_type = format!("content-type: {content_type}");
        let data = format!("@{}", file.path().display());
        let mut args = vec!["-X", "PUT", "-H", &content_type, "--data-binary", &data];
        for header in headers {
            args.extend(["-H", header]);
        }
        self.curl(path, &args).await
    }

    async fn post_json(&self, path: &str, body: &Json) -> Answer {
        let body = body.to_string();
        self.curl(path, &["-X", "POST", "-H", "content-type: application/json", "--data-binary", &body]).await
    }
}

/// Runs curl on `url` and reads what it got.
async fn curl(url: &str, args: &[&str]) -> Answer {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (headers, body) = (dir.path().join("headers"), dir.path().join("body"));
    let output = Command::new("curl")
        .args(["-sS", "-D"])
        .arg(&headers)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("curl runs (apt install curl)");
    assert!(output.status.success(), "curl failed: {}", String::from_utf8_lossy(&output.stderr));
    let status = String::from_utf8_lossy(&output.stdout).trim().parse().expect("a status code");
    let headers = std::fs::read_to_string(&headers)
        .expect("headers")
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer { status, headers, body: std::fs::read(&body).unwrap_or_default() }
}

fn etag(answer: &Answer) -> String {
    answer.header("etag").unwrap_or_else(|| panic!("an ETag: {answer:?}")).to_owned()
}

#[tokio::test]
async fn keys_are_resources_whose_etag_is_their_version() {
    let web = Web::start().await;
    let key = "/v1/tables/users/keys/ada";

    let created = web.put(key, "text/plain; charset=utf-8", b"Ada", &[]).await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("location"), Some(key));
    let first = etag(&created);
    assert_eq!(created.json()["version"].to_string(), first.trim_matches('"'));
    assert_eq!(created.json()["previous"], Json::Null);

    let read = web.curl(key, &[]).await;
    assert_eq!((read.status, read.text(), etag(&read)), (200, "Ada".into(), first.clone()));
    assert_eq!(read.header("content-type"), Some("text/plain; charset=utf-8"));
    let as_json = web.curl(key, &["-H", "accept: application/json"]).await;
    assert_eq!(as_json.json(), json!("Ada"));
    let head = web.curl(key, &["-I"]).await;
    assert_eq!((head.status, etag(&head)), (200, first.clone()));

    // Unchanged: 304, with the ETag and no body.
    let if_none_match = format!("if-none-match: {first}");
    let unchanged = web.curl(key, &["-H", &if_none_match]).await;
    assert_eq!((unchanged.status, unchanged.body.len()), (304, 0));
    // If it says a length, the 200's (RFC 9110, 8.6), over HTTP/2 as over HTTP/1.1.
    for http in ["--http2", "--http1.1"] {
        let unchanged = web.curl(key, &[http, "-H", &if_none_match]).await;
        assert!(unchanged.header("content-length").is_none_or(|l| l == "3"), "{http}: {unchanged:?}");
    }

    // A write that expects another version is refused, and says what the key holds.
    let stale = web.put(key, "text/plain", b"Eve", &["if-match: \"1\""]).await;
    let problem = stale.problem(412);
    assert_eq!(problem["qkv_status"], 409);
    assert_eq!(
        problem["current"],
        json!({ "value": "Ada", "version": first.trim_matches('"').parse::<u64>().unwrap() })
    );
    assert_eq!(etag(&stale), first);
    // Create-only on a key that exists: 412 too.
    web.put(key, "text/plain", b"Eve", &["if-none-match: *"]).await.problem(412);

    let if_match = format!("if-match: {first}");
    let replaced = web.put(key, "text/plain", b"Ada Lovelace", &[&if_match]).await;
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    assert_eq!(replaced.json()["previous"], json!("Ada"));
    let second = etag(&replaced);
    assert_ne!(second, first);
    // Strong comparison is character by character, an opaque tag may hold a comma, and * stands alone.
    let bare = second.trim_matches('"');
    for near in [format!("\"+{bare}\""), format!("\"0{bare}\""), "\"a,b\"".into()] {
        web.put(key, "text/plain", b"Eve", &[&format!("if-match: {near}")]).await.problem(412);
    }
    web.put(key, "text/plain", b"Eve", &[&format!("if-match: {second}, *")]).await.problem(400);
    // A read with If-Match: only of that version.
    assert_eq!(web.curl(key, &["-H", &format!("if-match: {second}")]).await.status, 200);
    let read = web.curl(key, &["-H", &if_match]).await;
    assert!(read.problem(412)["detail"].as_str().unwrap().contains("read it without one"), "{}", read.text());
    web.curl(key, &["-H", "if-match: garbage"]).await.problem(400);
    web.put(key, "text/plain", b"Eve", &[&format!("if-match: {second} \"1\"")]).await.problem(400);
    // The old ETag no longer matches: not modified no more, and a conditional delete fails.
    assert_eq!(web.curl(key, &["-H", &if_none_match]).await.status, 200);
    let delete = web.curl(key, &["-X", "DELETE", "-H", &if_match]).await;
    assert!(delete.problem(412)["detail"].as_str().unwrap().contains("to delete it whatever its version"));

    let deleted = web.curl(key, &["-X", "DELETE", "-H", &format!("if-match: {second}")]).await;
    assert_eq!((deleted.status, deleted.text()), (200, "Ada Lovelace".into()));
    web.curl(key, &[]).await.problem(404);
    // The service deleted nothing and said 200: the 404 is HTTP's own, with no qkv_status.
    let missing = web.curl(key, &["-X", "DELETE"]).await.problem(404);
    assert!(missing.get("qkv_status").is_none(), "{missing}");
    // Conditions belong to one key: a batch or a listing refuses them rather than run unconditionally.
    let batch = r#"{"items": [{"key": "users-ada", "value": 2}]}"#;
    let json = "content-type: application/json";
    let conditional = ["-X", "POST", "-H", json, "--data-binary", batch, "-H", "if-none-match: *"];
    let mset = web.curl("/v1/tables/t/mset", &conditional).await;
    assert!(mset.problem(400)["detail"].as_str().unwrap().contains("conditions apply to one key"));
    web.curl("/v1/tables/t", &["-H", "if-match: \"1\""]).await.problem(400);
    // "0" is no version: it matches nothing, even a key that does not exist (the protocol's
    // "expected version 0" is If-None-Match: *).
    web.put(key, "text/plain", b"Ada", &["if-match: \"0\""]).await.problem(412);
    let absent = web.curl(key, &["-X", "DELETE", "-H", "if-match: \"0\""]).await;
    assert!(
        absent.problem(412)["detail"].as_str().unwrap().contains("nothing to delete"),
        "{}",
        absent.text()
    );
    web.put(key, "text/plain", b"Ada", &["if-match: ,"]).await.problem(400);
    // Create-only on a key that does not exist: created.
    let created = web.put(key, "text/plain", b"Ada", &["if-none-match: *"]).await;
    assert_eq!(created.status, 201);
    // Representations share the ETag, so caches must tell them apart.
    assert_eq!(web.curl(key, &[]).await.header("vary"), Some("accept"));
}

/// A value object naming its member twice is not one value or the other (serde_json alone keeps the
/// last): refused, as a batch body naming a member twice is; and a null says what a value is.
#[tokio::test]
async fn a_value_that_says_two_things_is_refused() {
    let web = Web::start().await;
    let twice = br#"{"binary": "AA==", "binary": "AQ=="}"#;
    let refused = web.put("/v1/tables/t/keys/k", "application/json", twice, &[]).await.problem(400);
    assert!(refused["detail"].as_str().unwrap().contains("\"binary\" is given twice"), "{refused}");
    let body = r#"[{"float": "NaN", "float": "Infinity"}]"#;
    let json = "content-type: application/json";
    let published = web.curl("/v1/topics/news", &["-X", "POST", "-H", json, "--data-binary", body]).await;
    assert!(published.problem(400)["detail"].as_str().unwrap().contains("given twice"));
    let null = web.post_json("/v1/topics/news", &json!([null])).await.problem(400);
    assert!(null["detail"].as_str().unwrap().contains("a value is a string, number"), "{null}");
    web.curl("/v1/tables/t/keys/k", &[]).await.problem(404);
}

#[tokio::test]
async fn values_keep_their_kind_through_content_types() {
    let web = Web::start().await;
    let binary: Vec<u8> = vec![0, 255, 10, 13];
    assert_eq!(web.put("/v1/tables/t/keys/bin", "application/octet-stream", &binary, &[]).await.status, 201);
    let read = web.curl("/v1/tables/t/keys/bin", &[]).await;
    assert_eq!((read.header("content-type"), read.body.clone()), (Some("application/octet-stream"), binary));
    let as_json = web.curl("/v1/tables/t/keys/bin", &["-H", "accept: application/json"]).await;
    assert_eq!(as_json.json(), json!({ "binary": "AP8KDQ==" }));

    for (key, body, kind) in [
        ("int", "-7", json!(-7)),
        ("float", "1.0", json!(1.0)),
        ("bool", "true", json!(true)),
        ("text", "\"7\"", json!("7")),
        ("b64", "{\"binary\": \"AAE=\"}", json!({ "binary": "AAE=" })),
        ("nan", "{\"float\": \"NaN\"}", json!({ "float": "NaN" })),
    ] {
        let path = format!("/v1/tables/t/keys/{key}");
        assert_eq!(web.put(&path, "application/json", body.as_bytes(), &[]).await.status, 201, "{key}");
        let read = web.curl(&path, &["-H", "accept: application/json"]).await;
        assert_eq!(read.json(), kind, "{key}");
        // Numbers and booleans are JSON either way; an integer stays an integer, a float a float.
        if matches!(key, "int" | "float" | "bool") {
            let plain = web.curl(&path, &[]).await;
            assert_eq!((plain.header("content-type"), plain.text()), (Some("application/json"), body.into()));
        }
    }
    // Over the Rust client the same keys read as the kinds REST wrote.
    let client = web.server.client().await;
    assert_eq!(client.hget("t", "int").await.unwrap().unwrap().value, (-7i64).into());
    assert_eq!(client.hget("t", "float").await.unwrap().unwrap().value, 1.0f64.into());
    // Names are percent-encoded path segments: any UTF-8, slashes included.
    let odd = "/v1/tables/t%2Fx/keys/%C3%A4%20b%2Fc";
    assert_eq!(web.put(odd, "text/plain", b"v", &[]).await.status, 201);
    assert_eq!(client.hget("t/x", "ä b/c").await.unwrap().unwrap().value, "v".into());
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_never_a_500() {
    let web = Web::start_with(|config| {
        config.limits.max_frame_len = 64 * 1024;
        config.service.items.max_value_len = 32 * 1024;
    })
    .await;
    let key = "/v1/tables/t/keys/k";
    web.put(key, "application/json", b"{not json", &[]).await.problem(400);
    web.put(key, "application/json", b"null", &[]).await.problem(400);
    web.put(key, "application/json", b"[1]", &[]).await.problem(400);
    // Integers out of the 64-bit signed range are refused, however far out (serde_json reads those
    // beyond 64 bits as floats, which stored them with digits lost), in a body, a batch or a message.
    for integer in
        ["18446744073709551615", "18446744073709551616", "-9223372036854775809", "1234567890123456789012"]
    {
        web.put(key, "application/json", integer.as_bytes(), &[]).await.problem(400);
        let item = format!(r#"{{"items": [{{"key": "k", "value": {integer}}}]}}"#);
        web.curl(
            "/v1/tables/t/mset",
            &["-X", "POST", "-H", "content-type: application/json", "--data-binary", &item],
        )
        .await
        .problem(400);
        let message = format!("[{integer}]");
        web.curl(
            "/v1/topics/t",
            &["-X", "POST", "-H", "content-type: application/json", "--data-binary", &message],
        )
        .await
        .problem(400);
    }
    // A % that does not start an escape is refused, not taken as itself (%zz would name %25zz's key);
    // so is a misspelt query parameter, as a misspelt JSON member is.
    web.curl("/v1/tables/t/keys/%zz", &[]).await.problem(400);
    web.curl("/v1/tables/t/keys/a%2", &[]).await.problem(400);
    web.curl("/v1/tables/t?limt=2", &[]).await.problem(400);
    // A resource that takes no query refuses one rather than ignore it: this DELETE deletes nothing.
    assert_eq!(web.put("/v1/tables/t/keys/kept", "text/plain", b"v", &[]).await.status, 201);
    web.curl("/v1/tables/t/keys/kept?dry_run=1", &["-X", "DELETE"]).await.problem(400);
    web.curl(
        "/v1/tables/t/mget?x",
        &["-X", "POST", "-H", "content-type: application/json", "--data-binary", "{\"keys\":[]}"],
    )
    .await
    .problem(400);
    assert_eq!(web.curl("/v1/tables/t/keys/kept", &[]).await.text(), "v");
    // gRPC-Web, or a codec other than protobuf, would be read as protobuf and answered in frames its
    // client cannot read: refused, saying so.
    for media in ["application/grpc-web+proto", "application/grpc+json", "application/grpcx"] {
        let content_type = format!("content-type: {media}");
        let refused =
            web.curl("/qkv.v1.Kv/Execute", &["-X", "POST", "-H", &content_type, "--data-binary", "x"]).await;
        assert!(refused.problem(415)["detail"].as_str().unwrap().contains("gRPC-Web"), "{}", refused.text());
    }
    // A body in a content coding would be stored as its coded bytes: refused.
    web.put(key, "text/plain", b"\x1f\x8b", &["content-encoding: gzip"]).await.problem(415);
    // JSON has no leading zeros.
    web.put(key, "application/json", b"007", &[]).await.problem(400);
    // "-0" is an integer, written without fraction or exponent: 0, not the float -0.0.
    assert_eq!(web.put("/v1/tables/t/keys/zero", "application/json", b"-0", &[]).await.status, 201);
    assert_eq!(web.curl("/v1/tables/t/keys/zero", &["-H", "accept: application/json"]).await.text(), "0");
    web.put(key, "application/json", b"{\"binary\": \"!\"}", &[]).await.problem(400);
    web.put(key, "text/plain", &[0xff, 0xfe], &[]).await.problem(400);
    web.put(key, "text/plain; charset=latin1", b"x", &[]).await.problem(415);
    web.put(key, "text/plain; Charset=latin1", b"x", &[]).await.problem(415);
    // JSON is UTF-8: a body said to be in another charset is refused, not read as UTF-8.
    web.put(key, "application/json; charset=utf-16", b"\"x\"", &[]).await.problem(415);
    let utf8 = web.put("/v1/tables/t/keys/json-utf8", "application/json; charset=\"UTF-8\"", b"\"x\"", &[]);
    assert_eq!(utf8.await.status, 201);
    web.put(key, "application/x-www-form-urlencoded", b"a=b", &[]).await.problem(415);
    web.curl(key, &["-X", "PUT", "--data-binary", "x", "-H", "content-type:"]).await.problem(415);
    web.put(key, "text/plain", &vec![b'x'; 200 * 1024], &[]).await.problem(413);
    // Over the item limits: 413 from the service, naming the limit.
    let huge = web.put(key, "application/octet-stream", &vec![1u8; 60 * 1024], &[]).await;
    assert!(huge.problem(413)["detail"].as_str().unwrap().contains("--max"), "{}", huge.text());
    web.put(key, "text/plain", b"x", &["if-match: 7"]).await.problem(400);
    // A refusal is not a missing key: If-Match does not turn it into a 412.
    let long_key = format!("/v1/tables/t/keys/{}", "k".repeat(17 * 1024));
    web.curl(&long_key, &["-H", "if-match: \"1\""]).await.problem(413);
    web.curl("/v1/tables/t?limit=lots", &[]).await.problem(400);
    web.curl("/v1/tables/t?limit=-1", &[]).await.problem(400);
    web.curl("/v1/tables/t?after=%FF", &[]).await.problem(400);
    web.post_json("/v1/tables/t/mget", &json!({ "names": [] })).await.problem(400);
    web.post_json("/v1/tables/t/mset", &json!({ "items": [{ "key": "a", "value": null }] }))
        .await
        .problem(400);
    web.post_json("/v1/topics/x", &json!({ "not": "an array" })).await.problem(400);
    // JSON bodies must say so: a page of another origin can send text/plain without asking.
    let as_text = ["-X", "POST", "-H", "content-type: text/plain", "--data-binary", r#"{"keys": ["k"]}"#];
    web.curl("/v1/tables/t/mdel", &as_text).await.problem(415);
    web.curl("/v1/topics/x", &[]).await.problem(406);
    web.curl("/nowhere", &[]).await.problem(404);
    web.curl("/v1/tables/t/keys/k/more", &[]).await.problem(404);
    web.curl("/v1/tables/t/keys/k", &["-X", "PATCH"]).await.problem(405);
    web.curl("/v1/tables/t/keys/%FF", &[]).await.problem(400);
    // After all that the server serves as before.
    assert_eq!(web.put(key, "text/plain", b"fine", &[]).await.status, 201);
}

/// A door that answers once (REST's mget, gRPC's Execute) gathers the answer's frames whole, so it
/// stops at the maximum frame size: a small request naming one large key many times is refused with
/// 413 rather than made into gigabytes the server holds (it was: 1.3 GB from a 4 KB mget). QUIC and
/// TCP send the same answer in frames.
async fn an_answer_gathered_whole_stops_at_the_maximum_frame_size(transport: Transport) {
    let server = TestServer::start_for_with(transport, |config| config.limits.max_frame_len = 1 << 20).await;
    let client = server.client().await;
    client.hset("t", "big", vec![1u8; 200 * 1024]).await.unwrap();
    let (few, many) = (["big"; 3], ["big"; 10]);
    assert_eq!(client.hmget("t", &few).await.unwrap().len(), 3, "600 KB fit");
    let answer = client.call(&CommandRequest::hmget("t", many)).await.unwrap();
    if transport.is_web() {
        assert_eq!(answer.status, status::PAYLOAD_TOO_LARGE, "2 MB do not fit: {}", answer.message);
        assert!(answer.message.contains("fewer keys"), "{}", answer.message);
    } else {
        assert_eq!((answer.status, answer.values.len()), (status::OK, 10), "sent in frames");
    }
}

/// An Hmget's answer is built whole before it is sent, whatever the transport: one naming a large
/// value many times is refused (413, naming --max-answer-size) before the value is copied that many
/// times (a 4 KB request made the server copy 1 MB a thousand times); each distinct key is read once,
/// and the answer keeps the request's order and repeats.
async fn an_hmget_answer_is_bounded_before_it_is_built(transport: Transport) {
    let server = TestServer::start_for_with(transport, |config| config.service.max_answer = 4 << 20).await;
    let client = server.client().await;
    client.hset("t", "big", "x".repeat(1 << 20)).await.unwrap();
    client.hset("t", "small", "s").await.unwrap();
    let answer = client.call(&CommandRequest::hmget("t", ["big"; 5])).await.unwrap();
    assert_eq!(answer.status, status::PAYLOAD_TOO_LARGE, "{}", answer.message);
    assert!(answer.message.contains("--max-answer-size"), "{}", answer.message);
    let keys = ["small", "big", "nope", "small", "big"];
    let read = client.hmget("t", &keys).await.unwrap();
    let values: Vec<Option<usize>> =
        read.iter().map(|v| v.as_ref().map(|v| v.value.to_string().len())).collect();
    assert_eq!(values, [Some(1), Some(1 << 20), None, Some(1), Some(1 << 20)]);
}

/// A multi-key write whose answer (the values it replaced) is over the maximum frame size is answered
/// whole all the same by the doors that gather answers: the write is made by then, and their 413 said
/// it was not (the keys overwritten or deleted, the client told to send fewer).
async fn a_write_is_answered_whatever_the_size_of_what_it_replaced(transport: Transport) {
    let server = TestServer::start_for_with(transport, |config| config.limits.max_frame_len = 1 << 20).await;
    let client = server.client().await;
    let keys = ["a", "b", "c", "d", "e"];
    let value = Value::from(vec![7u8; 300 * 1024]);
    let set_big = async || {
        for key in keys {
            client.hset("t", key, value.clone()).await.unwrap();
        }
    };
    set_big().await;
    let written = client.hmset("t", keys.map(|k| Kvpair::new(k, "x"))).await.unwrap();
    assert_eq!(written.len(), keys.len());
    assert!(written.iter().all(|w| w.previous.as_ref() == Some(&value)), "1.5 MB of previous values");
    set_big().await;
    let deleted = client.hmdel("t", &keys).await.unwrap();
    assert_eq!(deleted.len(), keys.len());
    assert!(deleted.iter().all(|d| d.previous.as_ref() == Some(&value) && d.version == 0));
}

transport_tests!(whole_answers: quic, tcp, http, grpc =>
    an_answer_gathered_whole_stops_at_the_maximum_frame_size,
    an_hmget_answer_is_bounded_before_it_is_built,
    a_write_is_answered_whatever_the_size_of_what_it_replaced,
);

#[tokio::test]
async fn a_table_is_listed_in_key_order_whole_or_page_by_page() {
    let web = Web::start_with(|config| config.service.response_frame_target = 4096).await;
    let n = 2_500;
    let mut keys: Vec<String> = (0..n).map(|i| format!("key-{i}")).collect();
    for chunk in keys.chunks(500) {
        let items: Vec<Json> = chunk.iter().map(|k| json!({ "key": k, "value": k })).collect();
        let written = web.post_json("/v1/tables/big/mset", &json!({ "items": items })).await;
        assert_eq!(written.status, 200, "{}", written.text());
    }
    keys.sort();
    let listed = |answer: &Answer| -> (Vec<String>, Json) {
        let page = answer.json();
        let keys =
            page["items"].as_array().unwrap().iter().map(|i| i["key"].as_str().unwrap().to_owned()).collect();
        (keys, page["next"].clone())
    };
    let whole = web.curl("/v1/tables/big", &[]).await;
    assert_eq!(whole.header("content-type"), Some("application/json"));
    assert_eq!(listed(&whole), (keys.clone(), Json::Null));

    // 700 leaves a short last page; 500 a full one, whose `next` leads to an empty page.
    for limit in [700, 500] {
        let mut paged = Vec::new();
        let mut after = String::new();
        loop {
            let (page, next) =
                listed(&web.curl(&format!("/v1/tables/big?limit={limit}&after={after}"), &[]).await);
            assert!(page.len() <= limit);
            paged.extend(page);
            match next.as_str() {
                Some(next) => after = next.to_owned(),
                None => break,
            }
        }
        assert_eq!(paged, keys, "pages of {limit}");
    }
    let missing = web.curl("/v1/tables/nothing", &[]).await;
    assert_eq!(missing.json(), json!({ "items": [], "next": null }));

    let batch = web.post_json("/v1/tables/big/mget", &json!({ "keys": ["key-1", "nope"] })).await;
    let items = batch.json()["items"].clone();
    assert_eq!(
        (items[0]["value"].clone(), items[1]["value"].clone(), items[1]["version"].clone()),
        (json!("key-1"), Json::Null, json!(0))
    );
    let deleted = web.post_json("/v1/tables/big/mdel", &json!({ "keys": ["key-1", "nope"] })).await;
    assert_eq!(
        deleted.json()["items"],
        json!([{ "key": "key-1", "previous": "key-1" }, { "key": "nope", "previous": null }])
    );
}

#[tokio::test]
async fn a_topic_streams_as_server_sent_events_until_the_server_stops() {
    let mut web = Web::start().await;
    let ca = web.server.ca();
    let mut events = Command::new("curl")
        .args(["-sS", "-N", "--http2", "--max-time", "60", "-H", "accept: text/event-stream", "--cacert"])
        .arg(&ca)
        .arg(format!("{}/v1/topics/news", web.base))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl runs");
    let mut lines = BufReader::new(events.stdout.take().expect("curl's output")).lines();
    let mut next_event = async || {
        let (mut name, mut data) = (String::new(), String::new());
        while let Some(line) = lines.next_line().await.expect("curl's output") {
            if let Some(value) = line.strip_prefix("event:") {
                name = value.trim().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                data = value.trim().to_owned();
            } else if line.is_empty() && !name.is_empty() {
                return Some((name, serde_json::from_str::<Json>(&data).expect("JSON data")));
            }
        }
        None
    };
    let subscribed = next_event().await.expect("subscribed");
    assert_eq!(subscribed.0, "subscribed");

    let published = web.post_json("/v1/topics/news", &json!(["hello", 7, { "binary": "AQ==" }])).await;
    assert_eq!(published.json(), json!({ "subscribers": 1, "lagging": 0 }));
    assert_eq!(next_event().await, Some(("message".into(), json!(["hello", 7, { "binary": "AQ==" }]))));
    // A QUIC client's message reaches the REST subscriber too.
    web.server.client().await.publish("news", ["from quic".into()]).await.unwrap();
    assert_eq!(next_event().await, Some(("message".into(), json!(["from quic"]))));

    web.server.begin_stop();
    let (name, end) = next_event().await.expect("an end event");
    assert_eq!((name.as_str(), end["status"].clone()), ("end", json!(410)));
    let exit =
        tokio::time::timeout(Duration::from_secs(30), events.wait()).await.expect("curl ends").unwrap();
    assert!(exit.success(), "the stream ended cleanly: {exit}");
    tokio::time::timeout(Duration::from_secs(30), web.server.stopped()).await.expect("stopped");
}

/// A client that waits for `100 Continue` before sending a body it declares over the limit is told
/// 413 at once, not invited to send it.
#[tokio::test]
async fn a_body_declared_too_large_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let web = Web::start().await;
    let addr = web.server.web.expect("a web listener");
    let mut stream = common::raw_tls(addr, &web.server.ca(), b"http/1.1").await;
    let head = "PUT /v1/tables/t/keys/k HTTP/1.1\r\nhost: localhost\r\ncontent-type: text/plain\r\n\
                content-length: 99999999999\r\nexpect: 100-continue\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer)).await.unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&answer), "HTTP/1.1 413");
}

/// HEAD on a topic says what a GET would answer, without subscribing: no subscription is registered
/// (and counted) for a request that reads nothing.
#[tokio::test]
async fn a_head_of_a_topic_subscribes_nothing() {
    let web = Web::start().await;
    let mut subscriptions = web.server.service.broker().watch_subscriptions();
    subscriptions.borrow_and_update();
    let head = web.curl("/v1/topics/news", &["-I", "-H", "accept: text/event-stream"]).await;
    assert_eq!((head.status, head.header("content-type")), (200, Some("text/event-stream")), "{head:?}");
    // A GET's body is endless: the HEAD announces no length either (not `content-length: 0`).
    assert_eq!(head.header("content-length"), None, "{head:?}");
    assert!(!subscriptions.has_changed().unwrap(), "a subscription came and went");
}

#[tokio::test]
async fn http_1_1_and_plaintext_http_2_are_served_too() {
    let web = Web::start().await;
    let put = web
        .curl(
            "/v1/tables/t/keys/k",
            &["--http1.1", "-X", "PUT", "-H", "content-type: text/plain", "--data-binary", "v"],
        )
        .await;
    assert_eq!(put.status, 201);
    assert_eq!(web.curl("/v1/tables/t/keys/k", &["--http1.1"]).await.text(), "v");

    // Behind a proxy on loopback: plaintext HTTP/1.1, and HTTP/2 with prior knowledge (as gRPC speaks).
    let plain = TestServer::start_for_with(Transport::Http, |config| config.web_plaintext = true).await;
    let url = format!("http://127.0.0.1:{}/v1/tables/t/keys/k", plain.web.unwrap().port());
    let put = curl(&url, &["-X", "PUT", "-H", "content-type: text/plain", "--data-binary", "v"]).await;
    assert_eq!(put.status, 201);
    assert_eq!(curl(&url, &["--http2-prior-knowledge"]).await.text(), "v");
}

#[tokio::test]
async fn the_web_listener_requires_client_certificates_when_the_server_does() {
    let web = Web::start_with(|config| {
        let dir = config.certs_dir.clone();
        CertDir::new(&dir).ensure_server_certificate().unwrap();
        config.client_ca = Some(dir.join("ca.pem"));
    })
    .await;
    let dir = web.server.certs.path();
    let output = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(web.server.ca())
        .arg(format!("{}/v1/tables/t", web.base))
        .output()
        .await
        .unwrap();
    assert!(!output.status.success(), "served without a client certificate");
    let issued = CertDir::new(dir).issue_client_certificate("alice", false).unwrap();
    let (cert, key) = (path(&issued.cert), path(&issued.key));
    let answer = web.curl("/v1/tables/t", &["--cert", &cert, "--key", &key]).await;
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// Request bodies are charged to the server-wide connection memory budget as they arrive: with room left
/// for one web connection and 16 KiB more, a 64 KiB body is refused with a 503 (nothing executed), and
/// bodies that fit are served before and after it; over gRPC the refusal is UNAVAILABLE with qkv's 503
/// in its details, so the client knows nothing was executed. (One client, one connection: a second
/// connection would not fit the budget either.)
#[tokio::test]
async fn request_bodies_are_charged_to_the_connection_memory_budget() {
    for transport in [Transport::Http, Transport::Grpc] {
        bodies_over_the_budget_are_refused(transport).await;
    }
}

async fn bodies_over_the_budget_are_refused(transport: Transport) {
    // The least budget the server starts with (a web connection and a WebSocket session's share), of
    // which other clients (the test, standing in for them) hold all but 16 KiB beyond this client's
    // connection.
    let mut session = 0;
    let server = TestServer::start_for_with(transport, |config| {
        session = qkv::web::browser::websocket_share(config.websocket_max_message);
        config.connection_memory = qkv::web::web_connection_share(&config.limits) + session;
    })
    .await;
    let _others = server.memory.try_charge(session - 16 * 1024).expect("the budget has room");
    let client = server.client().await;
    client.hset("t", "small", vec![1u8; 8 * 1024]).await.expect("a body that fits");
    match client.hset("t", "big", vec![7u8; 64 * 1024]).await {
        Err(e @ qkv::client::ClientError::Unavailable { .. }) => {
            assert!(e.to_string().contains("memory"), "{e}")
        }
        other => panic!("a body over the budget is refused with a 503, got {other:?}"),
    }
    assert_eq!(client.hget("t", "big").await.unwrap(), None, "nothing executed");
    // What the refused body was charged before it ran out was given back: small bodies keep fitting.
    for i in 0..8 {
        client.hset("t", &format!("k{i}"), vec![1u8; 8 * 1024]).await.expect("a body that fits");
    }
}

/// A gRPC Pipeline call holds a WebSocket's share of the connection memory budget (its message being
/// received and those queued for sending) for as long as it lasts: without room for it the call is
/// refused with qkv's 503 (UNAVAILABLE; nothing executed), with room it serves. What the pipeline
/// buffers beyond that share is charged as it is, as on TCP.
#[tokio::test]
async fn a_pipeline_call_is_charged_its_share_of_the_connection_memory_budget() {
    // Served: room for the share and for the pipeline's requests and answers (16 KiB).
    for (room, served) in [(0, false), (16 * 1024 + 1, true)] {
        // The least budget the server starts with: one web connection and one call's share. The
        // test spends one byte of it (other clients' connections, say), and then gives `room`.
        let server = TestServer::start_for_with(Transport::GrpcPipeline, |config| {
            let session = qkv::web::browser::websocket_share(config.websocket_max_message);
            config.connection_memory = qkv::web::web_connection_share(&config.limits) + session + room;
        })
        .await;
        let _others = server.memory.try_charge(1).expect("the budget has room");
        match qkv::Client::connect_with(server.client_config()).await {
            Ok(client) if served => {
                client.hset("t", "k", "v").await.expect("served");
            }
            Err(e @ qkv::client::ClientError::Unavailable { .. }) if !served => {
                assert!(e.to_string().contains("memory"), "{e}")
            }
            Ok(_) => panic!("a call without room for its share is refused"),
            Err(e) => panic!("a call with room for its share is served, got {e}"),
        }
    }
}

/// The request head is limited (`--web-max-header-size`): a URL over it is refused with 431, one under
/// it served.
#[tokio::test]
async fn request_heads_over_the_limit_are_refused() {
    let web = Web::start_with(|config| config.web_max_header_size = 8 * 1024).await;
    let long = format!("/v1/tables/t/keys/{}", "k".repeat(10_000));
    assert_eq!(web.curl(&long, &["--http1.1"]).await.status, 431);
    let fits = format!("/v1/tables/t/keys/{}", "k".repeat(4_000));
    web.curl(&fits, &["--http1.1"]).await.problem(404);
}

/// A connection that asks nothing is closed after the idle timeout, whether it never sent a request
/// (not even the bytes that tell HTTP/1.1 from HTTP/2) or its last one was answered.
#[tokio::test]
async fn idle_web_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_server, web) = plaintext_web(|config| {
        config.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let mut silent = tokio::net::TcpStream::connect(web).await.unwrap();
    let mut answered = tokio::net::TcpStream::connect(web).await.unwrap();
    answered.write_all(b"GET /v1/tables/t HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    for connection in [&mut silent, &mut answered] {
        let closed = tokio::time::timeout(Duration::from_secs(30), async {
            let mut buffer = vec![0u8; 4096];
            while connection.read(&mut buffer).await.is_ok_and(|n| n > 0) {}
        })
        .await;
        assert!(closed.is_ok(), "an idle connection stayed open");
    }
}

/// An answer its client does not read is charged to the connection memory budget while it waits, and
/// abandoned once it has waited the reply timeout: the budget gets it back and the connection is
/// closed. (Before, a 12 MiB value's answer was handed to hyper whole and held uncharged for as long
/// as the client liked.)
#[tokio::test]
async fn an_unread_answer_is_charged_until_it_is_abandoned_after_the_reply_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, web) = plaintext_web(|config| {
        config.limits.reply_timeout = Duration::from_millis(500);
        config.limits.max_frame_len = 16 << 20;
        config.service.items.max_value_len = 13 << 20;
    })
    .await;
    let value = vec![7u8; 12 << 20];
    put_over_http_1_1(&server, "/v1/tables/t/keys/big", &value).await;

    // A client that reads slowly (a small receive buffer), and has been answered once on its
    // connection, so that the connection's own share is charged before the budget is looked at.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader = socket.connect(web).await.unwrap();
    reader.write_all(b"GET /v1/tables/t/keys/missing HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    assert!(http_1_1_answer(&mut reader).await.starts_with("HTTP/1.1 404"));
    let before = server.memory.used();
    reader.write_all(b"GET /v1/tables/t/keys/big HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();

    // Not read, the answer waits: what the sockets do not hold is charged.
    budget_until(&server, "charged while unread", |used| used >= before + (4 << 20)).await;
    budget_until(&server, "given back once abandoned", |used| used < before).await;
    let mut received = 0;
    let mut buffer = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(n @ 1..) = reader.read(&mut buffer).await {
            received += n;
        }
    });
    assert!(ended.await.is_ok(), "the connection of an abandoned answer is closed");
    assert!(received < value.len(), "the answer was abandoned, not sent: {received} bytes");
}

/// Over HTTP/2 an answer whose client grants no window is abandoned after the reply timeout too: its
/// charge is given back, and the stream no longer counts as a request open, so the connection, with
/// nothing else open, is closed after the idle timeout (the client answers every keep-alive PING, and
/// hyper would wait on the stream for ever).
#[tokio::test]
async fn an_unread_http_2_answer_is_abandoned_and_its_connection_closed_when_idle() {
    let (server, web) = plaintext_web(|config| {
        config.limits.reply_timeout = Duration::from_millis(500);
        config.limits.idle_timeout = Duration::from_secs(1);
        config.limits.request_timeout = Duration::from_secs(1);
    })
    .await;
    let value = vec![7u8; 3 << 20];
    put_over_http_1_1(&server, "/v1/tables/t/keys/big", &value).await;

    let (mut client, connection) = h2_client(web, 1024).await;
    let before = server.memory.used();
    let request = axum::http::Request::get(format!("http://{web}/v1/tables/t/keys/big")).body(()).unwrap();
    let (answer, _) = client.send_request(request, true).unwrap();
    let answer = answer.await.unwrap();
    assert_eq!(answer.status(), 200);

    budget_until(&server, "charged while unread", |used| used >= before + (2 << 20)).await;
    budget_until(&server, "given back once abandoned", |used| used <= before).await;
    let closed = tokio::time::timeout(Duration::from_secs(20), connection).await;
    assert!(closed.is_ok(), "the connection of an abandoned stream is closed once idle");
    drop(answer);
}

/// An HTTP/2 connection's answers that its client does not read count in the connection's share
/// (`--max-request-buffer`) as they are charged: once they fill it, its next requests wait to run (the
/// `max_request_buffer` limit hit says one did) rather than add theirs, and every one is answered in
/// full once the client reads. For REST and gRPC answers.
#[tokio::test]
async fn an_http_2_connections_unread_answers_hold_its_share_not_the_budget() {
    let (server, web) = plaintext_web(|config| {
        config.limits.max_frame_len = 1 << 20;
        config.limits.max_request_buffer = 2 << 20;
        config.admin = Some("127.0.0.1:0".parse().expect("an address"));
    })
    .await;
    let admin = server.admin.expect("an admin listener");
    let waited_for_share = || async move {
        let (_, exposition) = common::admin_get(admin, "/metrics").await;
        common::sample(&exposition, r#"qkv_limits_hit_total{limit="max_request_buffer"}"#)
    };
    const VALUE: usize = 256 * 1024;
    put_over_http_1_1(&server, "/v1/tables/t/keys/big", &[7u8; VALUE]).await;
    let idle = server.memory.used();
    let hget = prost::Message::encode_to_vec(&CommandRequest::hget("t", "big"));
    let grpc = bytes::Bytes::from([&[0u8][..], &(hget.len() as u32).to_be_bytes(), &hget].concat());
    let rest = || axum::http::Request::get(format!("http://{web}/v1/tables/t/keys/big"));
    let execute = || {
        axum::http::Request::post(format!("http://{web}/qkv.v1.Kv/Execute"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
    };
    let doors: [(&str, &dyn Fn() -> axum::http::request::Builder, bytes::Bytes); 2] =
        [("REST", &rest, bytes::Bytes::new()), ("gRPC", &execute, grpc)];
    for (door, request, body) in doors {
        // A client that grants its streams no window until it is told to read.
        let socket = tokio::net::TcpStream::connect(web).await.unwrap();
        let (client, mut connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(socket)
            .await
            .unwrap();
        let (read, reads) = tokio::sync::oneshot::channel::<()>();
        let driver = tokio::spawn(async move {
            tokio::select! {
                ended = &mut connection => return ended,
                _ = reads => {}
            }
            connection.set_initial_window_size(1 << 20)?;
            connection.await
        });
        // Admitted (its share charged) before the server took part in the handshake.
        let mut client = client.ready().await.unwrap();
        let before = server.memory.used();
        let ask = async |client: h2::client::SendRequest<bytes::Bytes>| {
            let mut client = client.ready().await.unwrap();
            let (answer, mut sending) = client.send_request(request().body(()).unwrap(), false).unwrap();
            sending.send_data(body.clone(), true).unwrap();
            (client, answer)
        };
        let mut answers = futures_util::stream::FuturesUnordered::new();
        for _ in 0..32 {
            let answer;
            (client, answer) = ask(client).await;
            answers.push(answer);
        }
        // The share holds 8 answers (requests running at once may make more): their heads come,
        // and they are charged while they wait for their client.
        let mut answered = Vec::new();
        for _ in 0..8 {
            answered.push(futures_util::StreamExt::next(&mut answers).await.unwrap().unwrap());
        }
        budget_until(&server, door, |used| used >= before + 8 * VALUE).await;
        // The share is full: one more request waits to run.
        let waited = waited_for_share().await;
        let (_client, answer) = ask(client).await;
        answers.push(answer);
        let waits = async {
            while waited_for_share().await <= waited {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(20), waits).await.expect("a request waits for the share");

        read.send(()).unwrap();
        // Every answer read at once: the connection's window is shared, and the requests that wait
        // for the share run only as the others are read.
        let read_body = async |answer: Result<axum::http::Response<h2::RecvStream>, h2::Error>| {
            let answer = answer.unwrap();
            assert_eq!(answer.status(), 200, "{door}");
            let mut body = answer.into_body();
            let mut received = 0;
            while let Some(data) = body.data().await {
                let data = data.unwrap();
                received += data.len();
                let _ = body.flow_control().release_capacity(data.len());
            }
            received
        };
        let answered = answered.into_iter().map(|answer| read_body(Ok(answer)).boxed());
        let waiting = answers.into_iter().map(|answer| async { read_body(answer.await).await }.boxed());
        for received in futures_util::future::join_all(answered.chain(waiting)).await {
            assert!(received >= VALUE, "{door}: {received} bytes of an answer of {VALUE}");
        }
        driver.abort();
        budget_until(&server, "the connection's share given back", |used| used <= idle).await;
    }
}

/// A request that waits for room in its connection's share longer than a body may take to arrive
/// (`--request-timeout`) is refused, 503, and nothing is executed: waiting, its body holds the budget.
#[tokio::test]
async fn a_request_that_waits_too_long_for_its_connections_share_is_refused() {
    use qkv::storage::Storage;
    let (server, web) = plaintext_web(|config| {
        config.limits.max_frame_len = 1 << 20;
        config.limits.max_request_buffer = 2 << 20;
        config.limits.request_timeout = Duration::from_millis(300);
    })
    .await;
    const VALUE: usize = 256 * 1024;
    put_over_http_1_1(&server, "/v1/tables/t/keys/big", &[7u8; VALUE]).await;
    let (mut client, connection) = h2_client(web, 0).await;
    let before = server.memory.used();
    // Eight unread answers fill the share.
    let mut unread = Vec::new();
    for _ in 0..8 {
        client = client.ready().await.unwrap();
        let get = axum::http::Request::get(format!("http://{web}/v1/tables/t/keys/big")).body(()).unwrap();
        unread.push(client.send_request(get, true).unwrap().0);
    }
    budget_until(&server, "unread answers charged", |used| used >= before + 8 * VALUE).await;

    client = client.ready().await.unwrap();
    let put = axum::http::Request::put(format!("http://{web}/v1/tables/t/keys/late"))
        .header("content-type", "application/octet-stream")
        .body(())
        .unwrap();
    let (answer, mut sending) = client.send_request(put, false).unwrap();
    sending.send_data(bytes::Bytes::from_static(b"late"), true).unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), answer).await.expect("answered").unwrap();
    assert_eq!(answer.status(), 503);
    assert!(server.service.storage().get("t", "late").await.unwrap().is_none(), "nothing was executed");
    connection.abort();
    drop(unread);
}

/// An HTTP/2 client that grants no window, answering every keep-alive PING, cannot hold its connection
/// open with answers it does not read: an answer waiting for its client (a value, a listing, a gRPC
/// call: each has handed hyper its first frame, which hyper cannot send, and is not asked for the
/// next) does not count as a request open, so the connection is closed after the idle timeout, once
/// it has sent nothing for the reply timeout. (Before, the listing and the gRPC call, whose ends come
/// after their last data, kept their connections for ever.)
#[tokio::test]
async fn a_client_that_grants_no_window_cannot_hold_its_http_2_connection() {
    let (server, web) = plaintext_web(|config| {
        config.limits.reply_timeout = Duration::from_millis(500);
        config.limits.idle_timeout = Duration::from_secs(1);
    })
    .await;
    for key in ["a", "b", "c"] {
        put_over_http_1_1(&server, &format!("/v1/tables/t/keys/{key}"), b"value").await;
    }
    let hget = prost::Message::encode_to_vec(&CommandRequest::hget("t", "a"));
    let grpc = [&[0u8][..], &(hget.len() as u32).to_be_bytes(), &hget].concat();
    let get = |path: &str| axum::http::Request::get(format!("http://{web}{path}"));
    let calls = [
        ("a value", get("/v1/tables/t/keys/a"), bytes::Bytes::new()),
        ("a listing", get("/v1/tables/t"), bytes::Bytes::new()),
        (
            "a gRPC call",
            axum::http::Request::post(format!("http://{web}/qkv.v1.Kv/Execute"))
                .header("content-type", "application/grpc")
                .header("te", "trailers"),
            bytes::Bytes::from(grpc),
        ),
    ];
    let unread = calls.into_iter().map(|(what, request, body)| async move {
        let (mut client, connection) = h2_client(web, 0).await;
        let (answer, mut sending) = client.send_request(request.body(()).unwrap(), false).unwrap();
        sending.send_data(body, true).unwrap();
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 200, "{what}");
        let closed = tokio::time::timeout(Duration::from_secs(20), connection).await;
        assert!(closed.is_ok(), "{what}: the connection is closed though its client answers PINGs");
        drop(answer);
    });
    futures_util::future::join_all(unread).await;
}

/// A subscription waiting for its next event is a request open: its connection is not closed as idle,
/// however long nothing is published (here four idle and reply timeouts), and the next event reaches
/// it.
#[tokio::test]
async fn a_subscription_keeps_its_connection_however_long_nothing_is_published() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_server, web) = plaintext_web(|config| {
        config.limits.idle_timeout = Duration::from_millis(250);
        config.limits.reply_timeout = Duration::from_millis(250);
    })
    .await;
    let mut events = tokio::net::TcpStream::connect(web).await.unwrap();
    let subscribe = "GET /v1/topics/news HTTP/1.1\r\nhost: localhost\r\naccept: text/event-stream\r\n\r\n";
    events.write_all(subscribe.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let mut until = async |what: &str| {
        let mut piece = [0u8; 1024];
        while !String::from_utf8_lossy(&received).contains(what) {
            let n = events.read(&mut piece).await.unwrap();
            assert!(n > 0, "the subscription's connection was closed before {what:?} came");
            received.extend_from_slice(&piece[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), until("event: subscribed")).await.expect("subscribed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut publisher = tokio::net::TcpStream::connect(web).await.unwrap();
    let publish = "POST /v1/topics/news HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
                   content-length: 9\r\n\r\n[\"later\"]";
    publisher.write_all(publish.as_bytes()).await.unwrap();
    assert!(
        http_1_1_answer(&mut publisher).await.contains("\"subscribers\":1"),
        "published to the subscriber"
    );
    tokio::time::timeout(Duration::from_secs(20), until("later")).await.expect("the event arrives");
}

/// A client that pauses (well within the reply timeout) while it reads a long answer gets all of it,
/// though its connection is found idle meanwhile (an answer waiting for its client to read on does
/// not count as a request open): what a connection found idle holds is sent as long as its client
/// reads the minimum progress within the reply timeout. The listing, about 8 MB of JSON, is more than
/// the socket buffers hold, so that the server holds the rest when it finds the connection idle; that
/// it did shows in the request sent after it, which is not answered: a connection found idle takes no
/// more requests.
#[tokio::test]
async fn a_client_that_pauses_in_a_long_answer_gets_all_of_it_though_its_connection_is_found_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, web) = plaintext_web(|config| {
        config.limits.idle_timeout = Duration::from_millis(250);
        config.limits.request_timeout = Duration::from_millis(250);
        config.limits.reply_timeout = Duration::from_secs(5);
    })
    .await;
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5"];
    for key in keys {
        put_over_http_1_1(&server, &format!("/v1/tables/t/keys/{key}"), &[7u8; 1 << 20]).await;
    }

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(web).await.unwrap();
    stream.write_all(b"GET /v1/tables/t HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    stream.write_all(b"GET /v1/tables/t/keys/k0 HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), async {
        let mut piece = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = stream.read(&mut piece).await {
            received.extend_from_slice(&piece[..n]);
        }
    });
    assert!(read.await.is_ok(), "the connection is closed after the listing");
    let text = String::from_utf8_lossy(&received);
    assert!(text.ends_with("\r\n0\r\n\r\n"), "the listing arrives to its end, and nothing after it");
    assert_eq!(text.matches("HTTP/1.1 200").count(), 1, "one answer");
    for key in keys {
        assert!(text.contains(&format!("\"{key}\"")), "{key} is listed");
    }
}

/// A server whose web listener serves plaintext (so that tests may speak raw HTTP/1.1 and HTTP/2 to
/// it), with `configure` applied; and the listener's address.
async fn plaintext_web(
    configure: impl FnOnce(&mut qkv::server::ServerConfig),
) -> (TestServer, std::net::SocketAddr) {
    let server = TestServer::start_for_with(Transport::Http, |config| {
        config.web_plaintext = true;
        configure(config);
    })
    .await;
    let web = server.web.expect("a web listener");
    (server, web)
}

/// An HTTP/2 client of `web` that grants each stream a window of `window` bytes, ready to send a
/// request, and its connection's task (which ends when the server closes the connection).
async fn h2_client(
    web: std::net::SocketAddr,
    window: u32,
) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let socket = tokio::net::TcpStream::connect(web).await.unwrap();
    let (client, connection) =
        h2::client::Builder::new().initial_window_size(window).handshake(socket).await.unwrap();
    let connection = tokio::spawn(connection);
    (client.ready().await.unwrap(), connection)
}

/// Stores `value` at `path` (REST) over an HTTP/1.1 connection of its own, and returns once that
/// connection is closed and its share of the memory budget given back (so that tests can look at the
/// budget without it).
async fn put_over_http_1_1(server: &TestServer, path: &str, value: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(server.web.expect("a web listener")).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/octet-stream\r\n\
         content-length: {}\r\n\r\n",
        value.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(value).await.unwrap();
    let stored = http_1_1_answer(&mut stream).await;
    assert!(stored.starts_with("HTTP/1.1 2"), "the value is stored: {stored}");
    let with_writer = server.memory.used();
    drop(stream);
    budget_until(server, "a closed connection's share given back", |used| used < with_writer).await;
}

/// Waits (up to 20 s) until the bytes charged to `server`'s memory budget satisfy `done`.
async fn budget_until(server: &TestServer, what: &str, done: impl Fn(usize) -> bool) {
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while !done(server.memory.used()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    assert!(waited.await.is_ok(), "{what}: {} bytes charged", server.memory.used());
}

/// One HTTP/1.1 answer read from `stream` (its head, and a body of its content-length), as text.
async fn http_1_1_answer(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.expect("an answer"));
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length = head
        .lines()
        .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:")?.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.expect("the answer's body");
    head + &String::from_utf8_lossy(&body)
}

fn path(p: &Path) -> String {
    p.to_str().expect("a UTF-8 path").to_owned()
}

/// schemathesis makes requests from the OpenAPI document (valid and not: names, headers, bodies, in
/// sequences), and holds the answers to it: never a 500, only documented statuses and content types,
/// bodies that match their schemas. The subscription is left out (its event stream does not end); the
/// curl tests above cover it.
#[tokio::test]
async fn requests_made_from_the_openapi_document_are_answered_as_it_says() {
    let web = Web::start().await;
    // schemathesis keeps a cache where it runs: not in the repository.
    let scratch = tempfile::tempdir().expect("a temporary directory");
    let output = Command::new("python3")
        .current_dir(scratch.path())
        .args([
            "-c",
            "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
            "run",
        ])
        .arg(format!("{}/v1/openapi.json", web.base))
        .arg("--tls-verify")
        .arg(web.server.ca())
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--exclude-operation-id",
            "subscribe",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--no-color",
        ])
        .output()
        .await
        .expect("python3 runs (pip install -r tests/requirements.txt, or run cargo xtask test)");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{printed}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(printed.contains(" passed") && !printed.contains("failed"), "{printed}");
}

/// The document is generated from the routes; here every operation it lists is held to be served
/// (not the fallback's 404 or 405), and every route this test knows to be documented.
#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let web = Web::start().await;
    let document = web.curl("/v1/openapi.json", &[]).await.json();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"), "{}", document["openapi"]);
    let paths = document["paths"].as_object().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| ["get", "put", "post", "delete"].contains(&m.as_str()))
        {
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    operations.sort();
    assert_eq!(
        operations,
        [
            "DELETE /v1/tables/{table}/keys/{key}",
            "GET /v1/tables/{table}",
            "GET /v1/tables/{table}/keys/{key}",
            "GET /v1/topics/{topic}",
            "POST /v1/ping",
            "POST /v1/tables/{table}/mdel",
            "POST /v1/tables/{table}/mget",
            "POST /v1/tables/{table}/mset",
            "POST /v1/topics/{topic}",
            "PUT /v1/tables/{table}/keys/{key}",
        ]
    );
    // What any operation may answer is listed on each; bodies of bytes are binary, not integers.
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            for status in ["503", "421", "431"] {
                assert!(operation["responses"][status].is_object(), "{method} {path}: no {status}");
            }
            if operation.get("requestBody").is_some() {
                assert!(operation["responses"]["408"].is_object(), "{method} {path}: no 408");
            }
        }
    }
    let key = &paths["/v1/tables/{table}/keys/{key}"];
    let octets = &key["put"]["requestBody"]["content"]["application/octet-stream"]["schema"];
    let octets = match octets["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
        Some(name) => &document["components"]["schemas"][name],
        None => octets,
    };
    assert_eq!(
        (octets["type"].as_str(), octets["format"].as_str()),
        (Some("string"), Some("binary")),
        "{octets}"
    );
    assert!(
        key["put"]["responses"]["412"]["headers"]["ETag"].is_object(),
        "{}",
        key["put"]["responses"]["412"]
    );
    assert!(paths["/v1/tables/{table}/mset"]["post"]["responses"]["507"].is_object());
    for operation in operations {
        let (method, path) = operation.split_once(' ').unwrap();
        let path = path.replace("{table}", "t").replace("{key}", "k").replace("{topic}", "x");
        // No body and no negotiation: a routed operation answers something else than "no such
        // resource" or "method not allowed" (a 4xx about the missing body, say).
        let answer = web.curl(&path, &["-X", method, "--max-time", "2"]).await;
        let unrouted = answer.status == 405
            || (answer.status == 404
                && answer.json()["detail"].as_str().is_some_and(|d| d.starts_with("no such resource")));
        assert!(!unrouted, "{operation}: {answer:?}");
    }
}

/// The browser routes answer their errors as the REST routes do: problem+json, and a 405 says which
/// methods the route takes.
#[tokio::test]
async fn the_browser_routes_answer_errors_as_problems() {
    let web = Web::start().await;
    let posted = web.curl("/", &["-X", "POST"]).await;
    posted.problem(405);
    assert_eq!(posted.header("allow"), Some("GET,HEAD"), "{posted:?}");
    // A GET of /ws over HTTP/2, where the upgrade is a CONNECT; over HTTP/1.1 without upgrade headers.
    let over_h2 = web.curl("/ws", &[]).await;
    over_h2.problem(405);
    assert_eq!(over_h2.header("allow"), Some("GET, CONNECT"), "{over_h2:?}");
    web.curl("/ws", &["--http1.1"]).await.problem(400);
}
