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

use super::{complete, first_frame};
use crate::pb::command_request::RequestData;
use crate::pb::{CommandRequest, CommandResponse, status};
use crate::service::{Caller, Handler};
use crate::transport::Limits;

use crate::pb::grpc::kv_server::{Kv, KvServer};
use crate::pb::grpc::{FILE_DESCRIPTOR_SET, QKV_STATUS};

/// The gRPC routes: `qkv.v1.Kv` and server reflection (v1 and v1alpha, for older grpcurl).
pub fn router<H: Handler>(handler: H, limits: &Limits) -> Router {
    let kv = KvServer::new(GrpcDoor { handler }).max_decoding_message_size(limits.max_frame_len);
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
fn failure(response: &CommandResponse) -> Status {
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
    let text = value.to_str().map_err(|_| bad())?;
    let (digits, unit) = text.split_at(text.len().saturating_sub(1));
    let amount: u64 = digits.parse().map_err(|_| bad())?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
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
        let reply = self.handler.execute(request.into_inner(), &caller);
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
        let frames = stream::once(std::future::ready(Ok(first))).chain(rest).scan(false, |failed, frame| {
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
                let expired = Box::pin(tokio::time::sleep_until(started + timeout));
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
