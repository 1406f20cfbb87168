//! gRPC: service `qkv.v1.Kv` (proto/qkv/v1/kv.proto) on tonic, with the protocol's own messages.
//! `Execute` answers once, `ExecuteStream` with the frames every other transport carries. A frame whose
//! qkv status is not 200 ends the call with the matching gRPC status code; the frame itself travels in
//! the status's details (its protobuf encoding) and its code in the `qkv-status` trailer, so a client
//! loses nothing the other transports would tell it (docs/HTTP.md, "gRPC"). Deadlines (`grpc-timeout`)
//! bound the whole call. `Pipeline` carries TCP's byte stream in its messages, served by the pipeline
//! every byte stream has ([`serve_pipelined`]), not a copy of it.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt, stream};
use tokio_util::sync::PollSender;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::browser::{ConnectionScope, websocket_share};
use super::{complete, first_frame, unstalled};
use crate::pb::command_request::RequestData;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Caller, Handler};
use crate::transport::Limits;
use crate::transport::log_throttle;
use crate::transport::messages::message_stream;
use crate::transport::pipeline::{AfterClose, serve_pipelined};
use crate::transport::timeouts::StallTimeout;

use crate::pb::grpc::kv_server::{Kv, KvServer};
use crate::pb::grpc::{FILE_DESCRIPTOR_SET, Frames, MAX_MESSAGE_HEADER, refusal};

/// The path of `Pipeline` calls, which [`pipeline_router`] serves.
pub const PIPELINE_PATH: &str = "/qkv.v1.Kv/Pipeline";

/// The paths of `qkv.v1.Kv`'s one-message calls, whose request body is one message.
pub const UNARY_PATHS: [&str; 2] = ["/qkv.v1.Kv/Execute", "/qkv.v1.Kv/ExecuteStream"];

/// `qkv.v1.Kv`'s routes but `Pipeline` (and any other method, answered UNIMPLEMENTED). Their request
/// bodies are read whole before they get here.
pub fn router<H: Handler>(handler: H, limits: &Limits, max_message: usize) -> Router {
    let door = GrpcDoor {
        handler,
        reply_timeout: limits.reply_timeout,
        max_message,
        max_answer: limits.max_frame_len,
    };
    let kv = KvServer::new(door).max_decoding_message_size(limits.max_frame_len);
    tonic::service::Routes::new(kv).prepare().into_axum_router()
}

/// Whether `path` is server reflection's ([`reflection_router`]).
pub fn is_reflection(path: &str) -> bool {
    path.starts_with("/grpc.reflection.")
}

/// The largest reflection request message: a symbol or file name (tonic's default, 4 MiB, would let a
/// client make the server reserve that much per stream as a header declares it).
pub const MAX_REFLECTION_REQUEST: usize = 16 * 1024;

/// Server reflection (v1, and v1alpha for older grpcurl): streams of requests, each answered as it
/// comes (grpcurl sends its next once it has the answer, on the same stream), so not read whole
/// first; `web::bounded_reflection` charges and times each stream instead.
pub fn reflection_router(max_answer: usize) -> Router {
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
    };
    match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => {
            let v1 =
                v1.max_decoding_message_size(MAX_REFLECTION_REQUEST).max_encoding_message_size(max_answer);
            let v1alpha = v1alpha
                .max_decoding_message_size(MAX_REFLECTION_REQUEST)
                .max_encoding_message_size(max_answer);
            tonic::service::Routes::new(v1).add_service(v1alpha).prepare().into_axum_router()
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "gRPC reflection is off: its descriptors did not load");
            tonic::service::Routes::default().prepare().into_axum_router()
        }
    }
}

/// `Pipeline` calls ([`PIPELINE_PATH`]), whose bodies are streams: messages of at most `max_message`
/// bytes (`--websocket-max-message`, which bounds the WebSocket's the same way).
pub fn pipeline_router<H: Handler>(handler: H, limits: &Limits, max_message: usize) -> Router {
    let door = GrpcDoor {
        handler,
        reply_timeout: limits.reply_timeout,
        max_message,
        max_answer: limits.max_frame_len,
    };
    // The message's encoding: `data`'s tag and length, then at most `max_message` bytes.
    let kv = KvServer::new(door).max_decoding_message_size(max_message + FRAMES_OVERHEAD);
    tonic::service::Routes::new(kv).prepare().into_axum_router()
}

/// What a `Frames` message adds to its data: a tag and a length of up to 5 bytes.
const FRAMES_OVERHEAD: usize = 6;

/// The gRPC status code of a qkv status (docs/HTTP.md has the table).
pub fn code_of(qkv_status: u32) -> Code {
    match qkv_status {
        status::OK => Code::Ok,
        status::BAD_REQUEST => Code::InvalidArgument,
        status::FORBIDDEN => Code::PermissionDenied,
        status::NOT_FOUND => Code::NotFound,
        status::REQUEST_TIMEOUT | status::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        // A conditional write that lost: retry at a higher level (read, then write again).
        status::CONFLICT => Code::Aborted,
        // The server ended the subscription as it shuts down.
        status::GONE => Code::Unavailable,
        status::PAYLOAD_TOO_LARGE | status::TOO_MANY_REQUESTS | status::INSUFFICIENT_STORAGE => {
            Code::ResourceExhausted
        }
        status::NOT_IMPLEMENTED => Code::Unimplemented,
        status::UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// A frame with a qkv error status as the gRPC status that ends the call.
pub(super) fn failure(response: &CommandResponse) -> Status {
    refusal(code_of(response.status), response.clone())
}

/// The deadline a gRPC client set (`grpc-timeout`: digits and a unit, H M S m u n), if any.
fn deadline(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else { return Ok(None) };
    let bad = || {
        failure(&CommandResponse::error(
            status::BAD_REQUEST,
            "grpc-timeout must be at most 8 digits and a unit (H, M, S, m, u, n)",
        ))
    };
    let text = value.as_bytes();
    let (Some((&unit, digits)), true) = (text.split_last(), (1..=8).contains(&text.len().saturating_sub(1)))
    else {
        return Err(bad());
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    // At most 8 digits: no overflow below, whatever the unit.
    let amount = digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    let timeout = match unit {
        b'H' => Duration::from_secs(amount * 3600),
        b'M' => Duration::from_secs(amount * 60),
        b'S' => Duration::from_secs(amount),
        b'm' => Duration::from_millis(amount),
        b'u' => Duration::from_micros(amount),
        b'n' => Duration::from_nanos(amount),
        _ => return Err(bad()),
    };
    Ok(Some(timeout))
}

fn deadline_exceeded(timeout: Duration) -> Status {
    failure(&CommandResponse::error(
        status::GATEWAY_TIMEOUT,
        format!(
            "the call's deadline ({timeout:?}) passed; a write may have executed: read before writing again"
        ),
    ))
}

struct GrpcDoor<H> {
    handler: H,
    reply_timeout: Duration,
    /// The largest `Pipeline` message either way.
    max_message: usize,
    /// The largest answer of `Execute`, which gathers its frames into one message.
    max_answer: usize,
}

impl<H: Handler> GrpcDoor<H> {
    fn caller<M>(request: &Request<M>) -> Caller {
        // Set on every request by the web listener's connection; a request without it (which cannot
        // come from a socket) has no identity.
        request.extensions().get::<Caller>().cloned().unwrap_or_default()
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<CommandResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<H: Handler> Kv for GrpcDoor<H> {
    async fn execute(&self, request: Request<CommandRequest>) -> Result<Response<CommandResponse>, Status> {
        let timeout = deadline(request.metadata())?;
        let caller = Self::caller(&request);
        let command = request.into_inner();
        if matches!(command.request_data, Some(RequestData::Hgetall(_) | RequestData::Subscribe(_))) {
            return Err(failure(&CommandResponse::error(
                status::BAD_REQUEST,
                "Hgetall and Subscribe answer with many frames: call ExecuteStream",
            )));
        }
        let max_answer = super::answer_limit(&command, self.max_answer);
        let run = async { complete(self.handler.execute(command, &caller).await, max_answer).await };
        let response = match timeout {
            Some(timeout) => {
                tokio::time::timeout(timeout, run).await.map_err(|_| deadline_exceeded(timeout))?
            }
            None => run.await,
        };
        if response.status == status::OK { Ok(Response::new(response)) } else { Err(failure(&response)) }
    }

    type ExecuteStreamStream = ResponseStream;
    type PipelineStream = Pin<Box<dyn Stream<Item = Result<Frames, Status>> + Send>>;

    /// Serves the pipeline on the call's byte stream, in a task of the connection's sessions (so that
    /// its timeouts run while the client does not read, and shutdown waits for it). It ends when the
    /// client half-closes, resets the call or stops reading for the reply timeout, or at shutdown;
    /// a message over the limit or a failed stream ends the call with the status that says why.
    async fn pipeline(
        &self,
        request: Request<Streaming<Frames>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let caller = Self::caller(&request);
        let Some(scope) = request.extensions().get::<ConnectionScope>().cloned() else {
            return Err(Status::internal("a Pipeline call came without its connection"));
        };
        let max_message = self.max_message;
        let Some(share) = scope.memory.try_charge(websocket_share(max_message)) else {
            crate::metrics::limit_hit(crate::metrics::Limit::ConnectionMemory);
            return Err(failure(&CommandResponse::error(
                status::UNAVAILABLE,
                "the server's connection memory budget is spent; nothing was executed: retry shortly",
            )));
        };
        let failed = Arc::new(parking_lot::Mutex::new(None::<Status>));
        let failure_seen = failed.clone();
        let too_large = move || {
            failure(&CommandResponse::error(
                status::PAYLOAD_TOO_LARGE,
                format!(
                    "a Pipeline message carries at most {max_message} bytes of data (the qkv-max-message \
                     header; the server's --websocket-max-message)"
                ),
            ))
        };
        let received = request.into_inner().map(move |message| {
            let status = match message {
                Ok(message) if message.data.len() <= max_message => return Ok(message.data),
                Ok(_) => too_large(),
                // tonic's refusal of a message over its limit (this one's, give or take the overhead).
                Err(status) if status.code() == Code::OutOfRange => too_large(),
                Err(status) => status,
            };
            let e = std::io::Error::other(status.message().to_owned());
            // The first failure is why: the stream read after it (to its end) is garbage.
            failure_seen.lock().get_or_insert(status);
            Err(e)
        });
        // One message in flight to hyper, one queued: the rest waits in the pipeline's own buffers.
        let (sent, mut outgoing) = tokio::sync::mpsc::channel::<Bytes>(1);
        let sent =
            PollSender::new(sent).sink_map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        let (ended, ending) = tokio::sync::oneshot::channel();
        let handler = self.handler.clone();
        let session = async move {
            let io = std::pin::pin!(message_stream(received, sent, max_message));
            let (limits, memory, shutdown) = (scope.limits.clone(), scope.memory.clone(), scope.shutdown);
            let io = StallTimeout::new(io, limits.reply_timeout, limits.reply_min_progress);
            serve_pipelined(io, handler, limits, memory, shutdown, caller, AfterClose::EndSubscriptions)
                .await;
            drop(share);
            let _ = ended.send(failed.lock().take());
        };
        scope.sessions.spawn(log_throttle::keeping_client(session).in_current_span());
        let answers = stream::poll_fn(move |cx| outgoing.poll_recv(cx)).map(|data| Ok(Frames { data }));
        // After the last answer, the status a failed stream ended with (OK otherwise).
        let ending =
            stream::once(ending).filter_map(|failure| std::future::ready(failure.ok().flatten().map(Err)));
        let mut response = Response::new(Box::pin(answers.chain(ending)) as Self::PipelineStream);
        response.metadata_mut().insert(MAX_MESSAGE_HEADER, MetadataValue::from(max_message as u64));
        Ok(response)
    }

    async fn execute_stream(
        &self,
        request: Request<CommandRequest>,
    ) -> Result<Response<ResponseStream>, Status> {
        let timeout = deadline(request.metadata())?;
        let caller = Self::caller(&request);
        let started = tokio::time::Instant::now();
        let command = request.into_inner();
        let scan = matches!(command.request_data, Some(RequestData::Hgetall(_)));
        let reply = self.handler.execute(command, &caller);
        let (first, rest) = match timeout {
            Some(timeout) => tokio::time::timeout(timeout, async { first_frame(reply.await).await })
                .await
                .map_err(|_| deadline_exceeded(timeout))?,
            None => first_frame(reply.await).await,
        };
        if first.status != status::OK {
            return Err(failure(&first));
        }
        // Frames as messages until one with an error status, which ends the call with its status.
        let frames: super::Frames = Box::pin(stream::once(std::future::ready(Ok(first))).chain(rest));
        // A client that stops reading a table must not hold the scan for ever; a subscriber that stops
        // reading is the lag policy's.
        let frames = if scan { unstalled(frames, self.reply_timeout) } else { frames };
        let frames = frames.scan(false, |failed, frame| {
            let item = match frame {
                _ if *failed => None,
                Ok(frame) if frame.status == status::OK => Some(Ok(frame)),
                Ok(frame) => {
                    *failed = true;
                    Some(Err(failure(&frame)))
                }
                Err(e) => {
                    *failed = true;
                    Some(Err(Status::internal(format!("an answer could not be decoded: {e}"))))
                }
            };
            std::future::ready(item)
        });
        let frames: ResponseStream = match timeout {
            // The deadline covers the whole stream: when it passes first, the call ends with it.
            Some(timeout) => {
                // Far beyond any clock's reach: no deadline at all.
                let expired = match started.checked_add(timeout) {
                    Some(at) => Box::pin(tokio::time::sleep_until(at)),
                    None => Box::pin(tokio::time::sleep(Duration::from_secs(u64::from(u32::MAX)))),
                };
                Box::pin(stream::unfold(
                    (Box::pin(frames), expired, false),
                    move |(mut frames, mut expired, done)| async move {
                        if done {
                            return None;
                        }
                        tokio::select! {
                            item = frames.next() => item.map(|item| (item, (frames, expired, false))),
                            _ = &mut expired => Some((Err(deadline_exceeded(timeout)), (frames, expired, true))),
                        }
                    },
                ))
            }
            None => Box::pin(frames),
        };
        Ok(Response::new(frames))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(value: &'static str) -> Result<Option<Duration>, Code> {
        let mut metadata = tonic::metadata::MetadataMap::new();
        metadata.insert("grpc-timeout", MetadataValue::from_static(value));
        deadline(&metadata).map_err(|status| status.code())
    }

    #[test]
    fn deadlines_are_read_as_grpc_writes_them_and_nothing_else() {
        assert_eq!(parsed("100m"), Ok(Some(Duration::from_millis(100))));
        assert_eq!(parsed("99999999H"), Ok(Some(Duration::from_secs(99_999_999 * 3600))));
        assert_eq!(parsed("1n"), Ok(Some(Duration::from_nanos(1))));
        for bad in ["", "S", "123456789S", "18446744073709551615S", "10x", "-1S", "1.5S", "ms"] {
            assert_eq!(parsed(bad), Err(Code::InvalidArgument), "{bad:?}");
        }
    }
}
