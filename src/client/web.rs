//! The client over the web listener: gRPC (`qkv.v1.Kv`) or the REST API, on one HTTP/2 connection over
//! TLS (ALPN `h2`) that carries concurrent requests as streams. Each request's answer comes back as the
//! frames the other transports carry, so everything above [`ResponseFrames`] is shared.
//!
//! gRPC carries the protocol's messages as they are. REST is translated: each command becomes the
//! request docs/HTTP.md gives for it, and its JSON answer the frames it stands for (Hgetall page by
//! page, with `limit` and `after`; Subscribe from server-sent events). Unsubscribe has no REST form (a
//! REST subscription ends when its event stream is dropped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt, stream};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value as Json, json};

use super::error::Cause;
use super::tcp::{ByteStream, Closing, StreamOpener, open_stream};
use super::{ClientConfig, ClientError, ClientResult, ResponseFrames, Stats};
use crate::pb::command_request::RequestData;
use crate::pb::grpc::kv_client::KvClient;
use crate::pb::grpc::{Frames, MAX_MESSAGE_HEADER};
use crate::pb::json::{from_json, to_json};
use crate::pb::{CommandRequest, CommandResponse, Value, status};
use crate::transport::Transport;
use crate::transport::messages::{MIN_MAX_MESSAGE, message_stream};

/// Entries per page when the client reads a whole table over REST.
const REST_PAGE: u32 = 256;

/// The frames of one answer, as the web transports produce them.
pub(super) type WebFrames = std::pin::Pin<Box<dyn Stream<Item = ClientResult<CommandResponse>> + Send>>;

#[derive(Clone)]
pub(super) enum WebConnection {
    /// The client, and its connection's sender (to tell whether the connection still works).
    Grpc(KvClient<H2>, SendRequest<tonic::body::Body>),
    Rest(SendRequest<Full<Bytes>>),
}

/// tonic's client on one HTTP/2 connection of hyper's: a failed connection fails its calls, and the
/// client's own reconnection replaces it (tonic's channel would reconnect behind the client's back,
/// and lose why the connection failed).
#[derive(Clone)]
pub(super) struct H2(SendRequest<tonic::body::Body>);

impl tower::Service<hyper::Request<tonic::body::Body>> for H2 {
    type Response = hyper::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: hyper::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Opens an HTTP/2 connection on `io` and drives it in a task of its own.
async fn handshake<B>(
    io: TokioIo<Box<dyn super::tcp::ByteStream>>,
    config: &ClientConfig,
) -> ClientResult<SendRequest<B>>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .keep_alive_interval(config.keep_alive)
        .timer(hyper_util::rt::TokioTimer::new())
        .handshake(io)
        .await
        .map_err(|e| ClientError::Connect {
            addr: config.addr.clone(),
            cause: Cause::Http(Arc::new(e)),
            hint: "",
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "the HTTP/2 connection ended");
        }
    });
    Ok(sender)
}

impl WebConnection {
    /// Connects to the web listener at `remote` over TLS with ALPN `h2`.
    pub(super) async fn connect(
        config: &ClientConfig,
        tls: Arc<rustls::ClientConfig>,
        server_name: &str,
        remote: SocketAddr,
        stats: &Arc<Stats>,
    ) -> ClientResult<Self> {
        let stream = open_stream(config, Some(tls), server_name, remote, stats, Closing::Graceful).await?;
        let io = TokioIo::new(stream);
        match config.transport {
            Transport::Grpc => {
                // The URI's authority and scheme name the requests' :authority and :scheme only.
                let origin = hyper::Uri::try_from(format!("https://{server_name}")).map_err(|e| {
                    ClientError::InvalidConfig(format!("{server_name:?} is not a valid host name: {e}"))
                })?;
                let sender = handshake(io, config).await?;
                let client = KvClient::with_origin(H2(sender.clone()), origin)
                    // Unbounded: a write's answer (previous values, Hmset/Hmdel of large ones) is one
                    // message of no set size, and refusing it here would report an executed write as
                    // refused (tonic's local refusal looks like the server's).
                    .max_decoding_message_size(usize::MAX)
                    .max_encoding_message_size(config.limits.max_frame_len);
                Ok(WebConnection::Grpc(client, sender))
            }
            _ => Ok(WebConnection::Rest(handshake(io, config).await?)),
        }
    }

    pub(super) fn is_usable(&self) -> bool {
        match self {
            WebConnection::Grpc(_, sender) => !sender.is_closed(),
            WebConnection::Rest(sender) => !sender.is_closed(),
        }
    }

    /// Sends `request`; its answer as frames.
    pub(super) async fn send(
        &self,
        request: &CommandRequest,
        timeout: Duration,
    ) -> ClientResult<ResponseFrames> {
        let frames = match self {
            WebConnection::Grpc(client, _) => grpc(client.clone(), request, timeout).await?,
            WebConnection::Rest(sender) => rest(sender.clone(), request).await?,
        };
        Ok(ResponseFrames::web(frames))
    }
}

/// Opens an HTTP/2 connection for gRPC `Pipeline` calls and the first call on it: the byte stream its
/// messages carry, on which the TCP client runs as on a socket (docs/HTTP.md, "Pipeline"), and what
/// opens further calls on the same connection (for subscriptions, each a call of its own).
pub(super) async fn open_pipeline(
    config: &ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    server_name: &str,
    remote: SocketAddr,
    stats: &Stats,
) -> ClientResult<(Box<dyn ByteStream>, StreamOpener)> {
    let stream = open_stream(config, Some(tls), server_name, remote, stats, Closing::Graceful).await?;
    let origin = hyper::Uri::try_from(format!("https://{server_name}"))
        .map_err(|e| ClientError::InvalidConfig(format!("{server_name:?} is not a valid host name: {e}")))?;
    let sender = handshake(TokioIo::new(stream), config).await?;
    // Unbounded: the server's messages are chunks of the byte stream of up to its
    // --websocket-max-message, which the client learns only from the call's headers.
    let client = KvClient::with_origin(H2(sender), origin).max_decoding_message_size(usize::MAX);
    let answered_within = config.connect_timeout;
    let first = pipeline_call(client.clone(), answered_within).await?;
    let opener: StreamOpener = Arc::new(move || Box::pin(pipeline_call(client.clone(), answered_within)));
    Ok((first, opener))
}

/// One `Pipeline` call on `client`'s connection, as a byte stream, once the server has answered its
/// headers (within `answered_within`: a server that takes the call and never answers would hold the
/// connect for ever). Each write is sent as one message, no larger than the server's
/// `qkv-max-message` says it accepts.
async fn pipeline_call(
    mut client: KvClient<H2>,
    answered_within: Duration,
) -> ClientResult<Box<dyn ByteStream>> {
    // One message queued beside the one being sent: the rest waits in the TCP client's buffer.
    let (requests, mut queued) = tokio::sync::mpsc::channel::<Bytes>(1);
    let messages = stream::poll_fn(move |cx| queued.poll_recv(cx)).map(|data| Frames { data });
    let answered = tokio::time::timeout(answered_within, client.pipeline(messages)).await;
    let Ok(answered) = answered else {
        let cause = super::error::Cause::Http(Arc::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the server did not answer the Pipeline call within {answered_within:?}"),
        )));
        return Err(ClientError::NotSent { cause });
    };
    let answers = match answered {
        Ok(answers) => answers,
        Err(failure) => {
            // The server's refusal (its frame, which `ok` turns into the error any call gets), or the
            // client's own error.
            let refused = grpc_failure(failure).and_then(super::ok);
            return Err(refused.err().unwrap_or_else(|| {
                ClientError::Protocol("a Pipeline call failed with an answer of status 200".into())
            }));
        }
    };
    let max_message = answers
        .metadata()
        .get(MAX_MESSAGE_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(MIN_MAX_MESSAGE);
    let received = answers.into_inner().map(|message| match message {
        Ok(message) => Ok(message.data),
        Err(failure) => Err(std::io::Error::other(failure)),
    });
    let sent = tokio_util::sync::PollSender::new(requests)
        .sink_map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    Ok(Box::new(Box::pin(message_stream(received, sent, max_message))))
}

/// One gRPC call: `ExecuteStream` for the commands that answer with many frames, `Execute` otherwise.
async fn grpc(
    mut client: KvClient<H2>,
    request: &CommandRequest,
    timeout: Duration,
) -> ClientResult<WebFrames> {
    let streamed = matches!(request.request_data, Some(RequestData::Hgetall(_) | RequestData::Subscribe(_)));
    let mut call = tonic::Request::new(request.clone());
    // Subscriptions last as long as they are read; everything else has the call's deadline.
    if !matches!(request.request_data, Some(RequestData::Subscribe(_))) {
        call.set_timeout(timeout);
    }
    if !streamed {
        let frame = match client.execute(call).await {
            Ok(response) => response.into_inner(),
            Err(failure) => grpc_failure(failure)?,
        };
        return Ok(Box::pin(stream::once(std::future::ready(Ok(frame)))));
    }
    let frames = match client.execute_stream(call).await {
        Ok(response) => response.into_inner(),
        Err(failure) => return Ok(Box::pin(stream::once(std::future::ready(grpc_failure(failure))))),
    };
    Ok(Box::pin(frames.map(|frame| match frame {
        Ok(frame) => Ok(frame),
        Err(failure) => grpc_failure(failure),
    })))
}

/// A failed call: the qkv frame its details carry (the server's answer, as any transport would carry
/// it), or an error of the client's.
fn grpc_failure(failure: tonic::Status) -> ClientResult<CommandResponse> {
    if let Some(frame) = crate::pb::grpc::frame_in_details(failure.details())
        && frame.status != status::OK
    {
        return Ok(frame);
    }
    if let Some(refused) = certificate_refusal(&failure) {
        return Err(refused);
    }
    let cause = Cause::Grpc(Arc::new(failure.clone()));
    Err(match failure.code() {
        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
            ClientError::ConnectionLost(cause)
        }
        tonic::Code::DeadlineExceeded => ClientError::Stream(cause),
        // Refused by the gRPC layer itself (a message over its size limit, an unknown method): the
        // status qkv gives the same refusal.
        code => {
            let status = match code {
                tonic::Code::InvalidArgument | tonic::Code::OutOfRange => status::BAD_REQUEST,
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => status::FORBIDDEN,
                tonic::Code::NotFound => status::NOT_FOUND,
                tonic::Code::ResourceExhausted => status::PAYLOAD_TOO_LARGE,
                tonic::Code::Unimplemented => status::NOT_IMPLEMENTED,
                _ => status::INTERNAL_ERROR,
            };
            ClientError::Status { status, message: failure.message().to_owned() }
        }
    })
}

/// One REST exchange (or, for Hgetall, one per page), as frames.
async fn rest(sender: SendRequest<Full<Bytes>>, request: &CommandRequest) -> ClientResult<WebFrames> {
    let Some(command) = &request.request_data else {
        return Err(ClientError::Unsupported("an empty request has no REST form"));
    };
    let one = |frame: CommandResponse| -> WebFrames { Box::pin(stream::once(std::future::ready(Ok(frame)))) };
    Ok(match command {
        RequestData::Hget(c) => {
            let (status, headers, body) =
                exchange(&sender, Method::GET, &key_path(&c.table, &c.key), &[], None).await?;
            match status {
                StatusCode::OK => {
                    let value = parse_value(&body)?;
                    one(CommandResponse::with_values(vec![value], vec![etag(&headers)?]))
                }
                _ => one(problem(status, &body)),
            }
        }
        RequestData::Hexist(c) => {
            let (status, headers, body) =
                exchange(&sender, Method::HEAD, &key_path(&c.table, &c.key), &[], None).await?;
            match status {
                StatusCode::OK => one(CommandResponse::with_values(vec![true.into()], vec![etag(&headers)?])),
                StatusCode::NOT_FOUND => one(CommandResponse::with_values(vec![false.into()], vec![0])),
                _ => one(problem(status, &body)),
            }
        }
        RequestData::Hmget(c) => {
            let body = json!({ "keys": c.keys });
            let (status, _, body) =
                exchange(&sender, Method::POST, &table_path(&c.table, "/mget"), &[], Some(body)).await?;
            one(match status {
                StatusCode::OK => items(&body, |item| {
                    Ok((from_nullable(&item["value"])?, item["version"].as_u64().unwrap_or_default()))
                })?,
                _ => problem(status, &body),
            })
        }
        RequestData::Hmexist(c) => {
            let body = json!({ "keys": c.keys });
            let (status, _, body) =
                exchange(&sender, Method::POST, &table_path(&c.table, "/mget"), &[], Some(body)).await?;
            one(match status {
                StatusCode::OK => items(&body, |item| {
                    Ok((Value::from(!item["value"].is_null()), item["version"].as_u64().unwrap_or_default()))
                })?,
                _ => problem(status, &body),
            })
        }
        RequestData::Hset(c) => {
            let pair = c.pair.clone().unwrap_or_default();
            let value = pair.value.unwrap_or_default();
            let condition = match c.expected_version {
                None => None,
                Some(0) => Some((header::IF_NONE_MATCH, "*".to_owned())),
                Some(version) => Some((header::IF_MATCH, format!("\"{version}\""))),
            };
            let path = key_path(&c.table, &pair.key);
            let (status, _, body) =
                exchange(&sender, Method::PUT, &path, condition.as_slice(), Some(to_json(&value))).await?;
            one(match status {
                StatusCode::OK | StatusCode::CREATED => {
                    let written = parse_json(&body)?;
                    let previous = from_nullable(&written["previous"])?;
                    CommandResponse::with_values(
                        vec![previous],
                        vec![written["version"].as_u64().unwrap_or_default()],
                    )
                }
                _ => problem(status, &body),
            })
        }
        RequestData::Hmset(c) => {
            let list: Vec<Json> = c
                .pairs
                .iter()
                .map(|p| json!({ "key": p.key, "value": p.value.as_ref().map_or(Json::Null, to_json) }))
                .collect();
            let body = json!({ "items": list });
            let (status, _, body) =
                exchange(&sender, Method::POST, &table_path(&c.table, "/mset"), &[], Some(body)).await?;
            one(match status {
                StatusCode::OK => items(&body, |item| {
                    Ok((from_nullable(&item["previous"])?, item["version"].as_u64().unwrap_or_default()))
                })?,
                _ => problem(status, &body),
            })
        }
        RequestData::Hdel(c) => {
            let condition = match c.expected_version {
                None => None,
                Some(0) => Some((header::IF_NONE_MATCH, "*".to_owned())),
                Some(version) => Some((header::IF_MATCH, format!("\"{version}\""))),
            };
            let path = key_path(&c.table, &c.key);
            let (status, _, body) =
                exchange(&sender, Method::DELETE, &path, condition.as_slice(), None).await?;
            one(match status {
                StatusCode::OK => CommandResponse::with_values(vec![parse_value(&body)?], vec![0]),
                // Deleting an absent key unconditionally (or only if absent) succeeds, with nothing deleted.
                StatusCode::NOT_FOUND if c.expected_version.is_none_or(|v| v == 0) => {
                    CommandResponse::with_values(vec![Value::default()], vec![0])
                }
                _ => problem(status, &body),
            })
        }
        RequestData::Hmdel(c) => {
            let body = json!({ "keys": c.keys });
            let (status, _, body) =
                exchange(&sender, Method::POST, &table_path(&c.table, "/mdel"), &[], Some(body)).await?;
            one(match status {
                StatusCode::OK => items(&body, |item| Ok((from_nullable(&item["previous"])?, 0)))?,
                _ => problem(status, &body),
            })
        }
        RequestData::Hgetall(c) => table_pages(sender, c.table.clone(), c.after.clone(), c.limit),
        RequestData::Publish(c) => {
            let data: Vec<Json> = c.data.iter().map(to_json).collect();
            let path = format!("/v1/topics/{}", encode(&c.topic));
            let (status, _, body) =
                exchange(&sender, Method::POST, &path, &[], Some(Json::Array(data))).await?;
            one(match status {
                StatusCode::OK => {
                    let published = parse_json(&body)?;
                    let count = |name: &str| Value::from(published[name].as_i64().unwrap_or_default());
                    CommandResponse::with_values(vec![count("subscribers"), count("lagging")], Vec::new())
                }
                _ => problem(status, &body),
            })
        }
        RequestData::Subscribe(c) => events(sender, &c.topic).await?,
        RequestData::Unsubscribe(_) => {
            return Err(ClientError::Unsupported(
                "over REST a subscription ends when its event stream is dropped",
            ));
        }
        RequestData::Ping(c) => {
            let request = hyper::Request::post("/v1/ping")
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(Full::new(c.payload.clone()))
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            let response = send(&sender, request).await?;
            let (parts, body) = response.into_parts();
            let body =
                body.collect().await.map_err(|e| ClientError::ConnectionLost(Cause::Http(Arc::new(e))))?;
            one(match parts.status {
                StatusCode::OK => {
                    let mut values = vec![Value::from(body.to_bytes())];
                    let identity = parts.headers.get("qkv-identity").and_then(|v| v.to_str().ok());
                    values.extend(identity.map(Value::from));
                    CommandResponse::with_values(values, Vec::new())
                }
                status => problem(status, &body.to_bytes()),
            })
        }
    })
}

/// A table's entries, a GET per page, each page one frame.
fn table_pages(sender: SendRequest<Full<Bytes>>, table: String, after: String, limit: u32) -> WebFrames {
    // Entries still wanted, when the request set a limit.
    let remaining = (limit > 0).then_some(limit);
    Box::pin(stream::unfold(Some((after, remaining)), move |state| {
        let (sender, table) = (sender.clone(), table.clone());
        async move {
            let (after, remaining) = state?;
            let page = remaining.map_or(REST_PAGE, |left| left.min(REST_PAGE));
            let path = format!("{}?limit={page}&after={}", table_path(&table, ""), encode(&after));
            let (status, _, body) = match exchange(&sender, Method::GET, &path, &[], None).await {
                Ok(answer) => answer,
                Err(e) => return Some((Err(e), None)),
            };
            if status != StatusCode::OK {
                return Some((Ok(problem(status, &body)), None));
            }
            let listing = match parse_json(&body) {
                Ok(listing) => listing,
                Err(e) => return Some((Err(e), None)),
            };
            let mut frame = CommandResponse::ok();
            for item in listing["items"].as_array().into_iter().flatten() {
                let value = match from_nullable(&item["value"]) {
                    Ok(value) => value,
                    Err(e) => return Some((Err(e), None)),
                };
                frame.pairs.push(crate::pb::Kvpair::new(item["key"].as_str().unwrap_or_default(), value));
                frame.versions.push(item["version"].as_u64().unwrap_or_default());
            }
            let left = remaining.map(|left| left - (frame.pairs.len() as u32).min(left));
            let next = listing["next"].as_str().map(str::to_owned).filter(|_| left != Some(0));
            frame.more = next.is_some();
            Some((Ok(frame), next.map(|after| (after, left))))
        }
    }))
}

/// A subscription as server-sent events, read as frames.
async fn events(sender: SendRequest<Full<Bytes>>, topic: &str) -> ClientResult<WebFrames> {
    let path = format!("/v1/topics/{}", encode(topic));
    let request = hyper::Request::get(&path)
        .header(header::ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let response = send(&sender, request).await?;
    let status = response.status();
    if status != StatusCode::OK {
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Ok(Box::pin(stream::once(std::future::ready(Ok(problem(status, &body))))));
    }
    let body = response.into_body().into_data_stream();
    // `scanned`: how much of the buffer is known to hold no event's end, so that each chunk of a large
    // event is looked through once (a 4 MiB message comes in some 300 chunks, each of which looked
    // through the whole buffer again: a gigabyte of comparisons).
    let lines =
        stream::unfold((body, Vec::<u8>::new(), 0), |(mut body, mut buffer, mut scanned)| async move {
            loop {
                if let Some(end) = buffer[scanned..].windows(2).position(|w| w == b"\n\n") {
                    let event: Vec<u8> = buffer.drain(..scanned + end + 2).collect();
                    return Some((Ok(event), (body, buffer, 0)));
                }
                // The last byte may be the first of an end.
                scanned = buffer.len().saturating_sub(1);
                match body.next().await {
                    Some(Ok(chunk)) => buffer.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        return Some((
                            Err(ClientError::ConnectionLost(Cause::Http(Arc::new(e)))),
                            (body, buffer, scanned),
                        ));
                    }
                    None => return None,
                }
            }
        });
    Ok(Box::pin(lines.filter_map(|event| std::future::ready(event.and_then(|e| sse_frame(&e)).transpose()))))
}

/// The frame an event stands for; `None` for comments (keep-alives).
fn sse_frame(event: &[u8]) -> ClientResult<Option<CommandResponse>> {
    let text = String::from_utf8_lossy(event);
    let (mut name, mut data) = ("message", String::new());
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("event:") {
            name = match value.trim() {
                "subscribed" => "subscribed",
                "missed" => "missed",
                "end" => "end",
                _ => "message",
            };
        } else if let Some(value) = line.strip_prefix("data:") {
            data.push_str(value.trim_start());
        }
    }
    if data.is_empty() {
        return Ok(None);
    }
    let json: Json =
        serde_json::from_str(&data).map_err(|e| ClientError::Protocol(format!("bad event data: {e}")))?;
    let more = |frame: CommandResponse| CommandResponse { more: true, ..frame };
    Ok(Some(match name {
        "subscribed" => more(CommandResponse::with_values(
            vec![json["id"].as_i64().unwrap_or_default().into()],
            Vec::new(),
        )),
        "missed" => CommandResponse {
            missed: json["missed"].as_u64().unwrap_or_default(),
            ..more(CommandResponse::ok())
        },
        "end" => CommandResponse::error(
            json["status"].as_u64().unwrap_or(u64::from(status::INTERNAL_ERROR)) as u32,
            json["detail"].as_str().unwrap_or_default(),
        ),
        _ => {
            let values = json
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| from_json(v.clone()).map_err(ClientError::Protocol))
                .collect::<ClientResult<Vec<Value>>>()?;
            more(CommandResponse::with_values(values, Vec::new()))
        }
    }))
}

async fn send(
    sender: &SendRequest<Full<Bytes>>,
    request: hyper::Request<Full<Bytes>>,
) -> ClientResult<hyper::Response<hyper::body::Incoming>> {
    let mut sender = sender.clone();
    // Ready: the connection can take a stream; a failure here is before anything was sent.
    sender.ready().await.map_err(|e| {
        certificate_refusal(&e).unwrap_or_else(|| ClientError::NotSent { cause: Cause::Http(Arc::new(e)) })
    })?;
    sender.send_request(request).await.map_err(|e| {
        certificate_refusal(&e).unwrap_or_else(|| ClientError::ConnectionLost(Cause::Http(Arc::new(e))))
    })
}

/// h2 passes an I/O error on as its kind and message only, so rustls's alert is known by the message
/// rustls gave it ("received fatal alert: UnknownCA").
fn alert_in_message(io: &std::io::Error) -> Option<rustls::Error> {
    use rustls::AlertDescription::*;
    let message = io.to_string();
    let name = message.strip_prefix("received fatal alert: ")?;
    let alert = [
        BadCertificate,
        UnsupportedCertificate,
        CertificateRevoked,
        CertificateExpired,
        CertificateUnknown,
        UnknownCA,
        AccessDenied,
        CertificateRequired,
    ]
    .into_iter()
    .find(|alert| format!("{alert:?}") == name)?;
    ClientError::certificate_alert(&std::io::Error::other(rustls::Error::AlertReceived(alert)))
}

/// The server's refusal of this client's certificate (a TLS alert after the handshake, as TLS 1.3
/// sends it), if that is what an HTTP or gRPC failure comes down to.
fn certificate_refusal(error: &(dyn std::error::Error + 'static)) -> Option<ClientError> {
    let mut next = Some(error);
    while let Some(error) = next {
        let alert = match (error.downcast_ref::<std::io::Error>(), error.downcast_ref::<rustls::Error>()) {
            (Some(io), _) => ClientError::certificate_alert(io).or_else(|| alert_in_message(io)),
            (_, Some(tls @ rustls::Error::AlertReceived(_))) => {
                ClientError::certificate_alert(&std::io::Error::other(tls.clone()))
            }
            _ => None,
        };
        if let Some(alert) = alert {
            return Some(ClientError::ClientCertificateRefused { cause: Cause::Tls(alert) });
        }
        next = error.source();
    }
    None
}

/// One request, its whole answer.
async fn exchange(
    sender: &SendRequest<Full<Bytes>>,
    method: Method,
    path: &str,
    headers: &[(header::HeaderName, String)],
    body: Option<Json>,
) -> ClientResult<(StatusCode, hyper::HeaderMap, Bytes)> {
    let mut request =
        hyper::Request::builder().method(method).uri(path).header(header::ACCEPT, "application/json");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let body = match body {
        Some(json) => {
            request = request.header(header::CONTENT_TYPE, "application/json");
            Bytes::from(json.to_string())
        }
        None => Bytes::new(),
    };
    let request = request.body(Full::new(body)).map_err(|e| ClientError::Protocol(e.to_string()))?;
    let response = send(sender, request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| ClientError::ConnectionLost(Cause::Http(Arc::new(e))))?;
    Ok((parts.status, parts.headers, body.to_bytes()))
}

fn key_path(table: &str, key: &str) -> String {
    format!("/v1/tables/{}/keys/{}", encode(table), encode(key))
}

fn table_path(table: &str, rest: &str) -> String {
    format!("/v1/tables/{}{rest}", encode(table))
}

/// Percent-encodes a path segment or query value.
fn encode(segment: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn etag(headers: &hyper::HeaderMap) -> ClientResult<u64> {
    headers
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_matches('"').parse().ok())
        .ok_or_else(|| ClientError::Protocol("an answer without a version ETag".into()))
}

fn parse_json(body: &[u8]) -> ClientResult<Json> {
    serde_json::from_slice(body).map_err(|e| ClientError::Protocol(format!("the answer is not JSON: {e}")))
}

fn parse_value(body: &[u8]) -> ClientResult<Value> {
    from_json(parse_json(body)?).map_err(ClientError::Protocol)
}

/// A value that may be `null` (absent: the empty value).
fn from_nullable(json: &Json) -> ClientResult<Value> {
    match json {
        Json::Null => Ok(Value::default()),
        json => from_json(json.clone()).map_err(ClientError::Protocol),
    }
}

/// `{"items": [...]}` as one frame of values and versions.
fn items(body: &[u8], item: impl Fn(&Json) -> ClientResult<(Value, u64)>) -> ClientResult<CommandResponse> {
    let answer = parse_json(body)?;
    let (values, versions) = answer["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(item)
        .collect::<ClientResult<(Vec<Value>, Vec<u64>)>>()?;
    Ok(CommandResponse::with_values(values, versions))
}

/// An error answer (`application/problem+json`) as the frame it stands for: qkv's status (409 for a
/// 412, with the key's current value and version when it exists), and the detail as its message.
fn problem(http: StatusCode, body: &[u8]) -> CommandResponse {
    let problem: Json = serde_json::from_slice(body).unwrap_or(Json::Null);
    let status = problem["qkv_status"].as_u64().map_or(u32::from(http.as_u16()), |s| s as u32);
    let detail =
        problem["detail"].as_str().map_or_else(|| String::from_utf8_lossy(body).into_owned(), str::to_owned);
    let mut frame = CommandResponse::error(status, detail);
    if let Some(current) = problem.get("current")
        && let Ok(value) = from_nullable(&current["value"])
    {
        frame.values.push(value);
        frame.versions.push(current["version"].as_u64().unwrap_or_default());
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode("a b/ä"), "a%20b%2F%C3%A4");
    }
}
