//! Property tests of the framing: any request or response, encoded as a frame and delivered in pieces of
//! any sizes, decodes to itself; a response split over several frames reassembles to itself.

use bytes::BytesMut;
use proptest::prelude::*;
use prost::Message;
use qkv::pb::{CommandRequest, CommandResponse, Kvpair, Value, split_response};
use qkv::transport::frame::{FrameCodec, encode_frame};
use tokio_util::codec::Decoder;

fn a_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        ".{0,40}".prop_map(Value::from),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
        Just(Value { value: None }),
    ]
}

fn a_name() -> impl Strategy<Value = String> {
    // Arbitrary UTF-8, separators and the empty string included.
    ".{0,24}"
}

fn a_request() -> impl Strategy<Value = CommandRequest> {
    let keys = || proptest::collection::vec(a_name(), 0..8);
    let pairs = proptest::collection::vec((a_name(), a_value()).prop_map(|(k, v)| Kvpair::new(k, v)), 0..8);
    prop_oneof![
        (a_name(), a_name()).prop_map(|(t, k)| CommandRequest::hget(t, k)),
        a_name().prop_map(CommandRequest::hgetall),
        (a_name(), keys()).prop_map(|(t, k)| CommandRequest::hmget(t, k)),
        (a_name(), a_name(), a_value(), any::<Option<u64>>()).prop_map(|(t, k, v, e)| match e {
            Some(e) => CommandRequest::hset_if_version(t, k, v, e),
            None => CommandRequest::hset(t, k, v),
        }),
        (a_name(), pairs).prop_map(|(t, p)| CommandRequest::hmset(t, p)),
        (a_name(), a_name()).prop_map(|(t, k)| CommandRequest::hdel(t, k)),
        (a_name(), keys()).prop_map(|(t, k)| CommandRequest::hmdel(t, k)),
        (a_name(), keys()).prop_map(|(t, k)| CommandRequest::hmexist(t, k)),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(CommandRequest::ping),
        Just(CommandRequest::default()),
    ]
}

fn a_response() -> impl Strategy<Value = CommandResponse> {
    let values = proptest::collection::vec(a_value(), 0..50);
    let pairs = proptest::collection::vec((a_name(), a_value()).prop_map(|(k, v)| Kvpair::new(k, v)), 0..50);
    (values, pairs, any::<bool>(), prop_oneof![Just(200u32), Just(404u32), Just(500u32)], ".{0,30}").prop_map(
        |(values, pairs, use_pairs, status, message)| {
            let (values, pairs) = if use_pairs { (Vec::new(), pairs) } else { (values, Vec::new()) };
            let versions = (1..=(values.len() + pairs.len()) as u64).collect();
            CommandResponse { status, message, values, pairs, versions, ..Default::default() }
        },
    )
}

/// Decodes every frame in `wire`, fed to the decoder in pieces of the given sizes (cycled).
fn decode_in_pieces<M: Message + Default>(wire: &[u8], pieces: &[usize]) -> Vec<M> {
    let mut codec = FrameCodec::<M>::new(1 << 20);
    let (mut buffer, mut frames, mut at) = (BytesMut::new(), Vec::new(), 0);
    for &piece in pieces.iter().cycle() {
        if at == wire.len() {
            break;
        }
        let end = (at + piece.max(1)).min(wire.len());
        buffer.extend_from_slice(&wire[at..end]);
        at = end;
        while let Some(frame) = codec.decode(&mut buffer).expect("a valid frame") {
            frames.push(frame);
        }
    }
    assert!(codec.decode_eof(&mut buffer).expect("a clean end").is_none());
    frames
}

/// Messages compare by their encoding: floats make `==` unusable (NaN).
fn encoded<M: Message>(messages: &[M]) -> Vec<Vec<u8>> {
    messages.iter().map(Message::encode_to_vec).collect()
}

proptest! {
    #[test]
    fn requests_round_trip_in_any_pieces(
        requests in proptest::collection::vec(a_request(), 1..6),
        pieces in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let wire: Vec<u8> = requests.iter().flat_map(|r| encode_frame(r, 1 << 20).unwrap().to_vec()).collect();
        let decoded: Vec<CommandRequest> = decode_in_pieces(&wire, &pieces);
        prop_assert_eq!(encoded(&decoded), encoded(&requests));
    }

    #[test]
    fn split_responses_reassemble_and_every_frame_but_the_last_says_more(
        response in a_response(),
        target in 16usize..2048,
    ) {
        let frames = split_response(response.clone(), target);
        let (last, before) = frames.split_last().unwrap();
        prop_assert!(!last.more && before.iter().all(|f| f.more));
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f, 1 << 20).unwrap().to_vec()).collect();
        let decoded: Vec<CommandResponse> = decode_in_pieces(&wire, &[7]);
        let mut whole = decoded[0].clone();
        for frame in &decoded[1..] {
            whole.values.extend(frame.values.iter().cloned());
            whole.pairs.extend(frame.pairs.iter().cloned());
            whole.versions.extend(frame.versions.iter().copied());
            whole.status = frame.status;
            whole.message.clone_from(&frame.message);
            whole.more = frame.more;
        }
        prop_assert_eq!(whole.encode_to_vec(), response.encode_to_vec());
    }
}
