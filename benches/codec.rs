//! Framing and protobuf on the request path: encoding and decoding one HGET request and its answer.
//! `cargo bench --bench codec`

use bytes::BytesMut;
use criterion::{Criterion, criterion_group, criterion_main};
use prost::Message;
use qkv::pb::{CommandRequest, CommandResponse, Value};
use qkv::transport::frame::{FrameCodec, encode_frame};
use std::hint::black_box;
use tokio_util::codec::Decoder;

fn request() -> CommandRequest {
    CommandRequest::hget("bench", "key:0000001234")
}

fn response() -> CommandResponse {
    // A 64-byte value and a version of today's size (microseconds since 1970).
    CommandResponse::with_values(vec![Value::from(vec![b'v'; 64])], vec![1_795_259_844_372_543])
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    let (request, response) = (request(), response());
    let request_frame = encode_frame(&request, 1 << 20).unwrap();
    let response_frame = encode_frame(&response, 1 << 20).unwrap();

    group.bench_function("protobuf/encode request", |b| b.iter(|| black_box(&request).encode_to_vec()));
    group.bench_function("protobuf/decode request", |b| {
        let bytes = request.encode_to_vec();
        b.iter(|| CommandRequest::decode(black_box(&bytes[..])).unwrap())
    });
    group.bench_function("protobuf/encode response", |b| b.iter(|| black_box(&response).encode_to_vec()));
    group.bench_function("frame/encode request", |b| {
        b.iter(|| encode_frame(black_box(&request), 1 << 20).unwrap())
    });
    group.bench_function("frame/encode response", |b| {
        b.iter(|| encode_frame(black_box(&response), 1 << 20).unwrap())
    });
    group.bench_function("frame/decode request", |b| {
        let mut codec = FrameCodec::<CommandRequest>::new(1 << 20);
        b.iter(|| codec.decode(&mut BytesMut::from(&request_frame[..])).unwrap().unwrap())
    });
    group.bench_function("frame/decode response", |b| {
        let mut codec = FrameCodec::<CommandResponse>::new(1 << 20);
        b.iter(|| codec.decode(&mut BytesMut::from(&response_frame[..])).unwrap().unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
