//! gRPC: service `qkv.v1.Kv` (proto/qkv/v1/kv.proto) on tonic, with the protocol's own messages.
//! `Execute` answers once, `ExecuteStream` with the frames every other transport carries. A frame whose
//! qkv status is not 200 ends the call with the matching gRPC status code; the frame itself travels in
//! the status's details (its protobuf encoding) and its code in the `qkv-status` trailer, so a client
//! loses nothing the other transports would tell it (docs/HTTP.md, "gRPC"). Deadlines (`grpc-timeout`)
//! bound the whole call.

use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use futures_util::{Stream, StreamExt, stream};
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};

use super::{Frames, complete, first_frame, unstalled};
use crate::pb::command_request::RequestData;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Caller, Handler};
use crate::transport::Limits;

use crate::pb::grpc::kv_server::{Kv, KvServer};
use crate::pb::grpc::{FILE_DESCRIPTOR_SET, QKV_STATUS};

/// The gRPC routes: `qkv.v1.Kv` and server reflection (v1 and v1alpha, for older grpcurl).
pub fn router<H: Handler>(handler: H, limits: &Limits) -> Router {
    let door = GrpcDoor { handler, reply_timeout: limits.reply_timeout };
    let kv = KvServer::new(door).max_decoding_message_size(limits.max_frame_len);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
    };
    let mut routes = tonic::service::Routes::new(kv);
    match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => routes = routes.add_service(v1).add_service(v1alpha),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "gRPC reflection is off: its descriptors did not load")
        }
    }
    routes.prepare().into_axum_router()
}

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
    let mut failure = Status::with_details(
        code_of(response.status),
        response.message.clone(),
        response.encode_to_vec().into(),
    );
    failure.metadata_mut().insert(QKV_STATUS, MetadataValue::from(response.status));
    failure
}

/// The deadline a gRPC client set (`grpc-timeout`: digits and a unit, H M S m u n), if any.
fn deadline(metadata: &tonic::metadata::MetadataMap) -> Result<Option<Duration>, Status> {
    let Some(value) = metadata.get("grpc-timeout") else { return Ok(None) };
    let bad =
        || Status::invalid_argument("grpc-timeout must be at most 8 digits and a unit (H, M, S, m, u, n)");
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
    let mut failure = Status::deadline_exceeded(format!(
        "the call's deadline ({timeout:?}) passed; a write may have executed: read before writing again"
    ));
    failure.metadata_mut().insert(QKV_STATUS, MetadataValue::from(status::GATEWAY_TIMEOUT));
    failure
}

struct GrpcDoor<H> {
    handler: H,
    reply_timeout: Duration,
}

impl<H: Handler> GrpcDoor<H> {
    fn caller(request: &Request<CommandRequest>) -> Caller {
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
            return Err(Status::invalid_argument(
                "Hgetall and Subscribe answer with many frames: call ExecuteStream",
            ));
        }
        let run = async { complete(self.handler.execute(command, &caller).await).await };
        let response = match timeout {
            Some(timeout) => {
                tokio::time::timeout(timeout, run).await.map_err(|_| deadline_exceeded(timeout))?
            }
            None => run.await,
        };
        if response.status == status::OK { Ok(Response::new(response)) } else { Err(failure(&response)) }
    }

    type ExecuteStreamStream = ResponseStream;

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
        let frames: Frames = Box::pin(stream::once(std::future::ready(Ok(first))).chain(rest));
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
