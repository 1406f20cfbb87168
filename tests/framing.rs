//! Frames on real QUIC streams: delivery in small pieces, and every kind of bad frame answered as
//! docs/PROTOCOL.md says, on its own stream only, while the connection keeps serving other streams.

mod common;

use std::time::Duration;

use common::{TestServer, frame, raw_exchange, read_responses};
use qkv::pb::{CommandRequest, CommandResponse, status};
use qkv::transport::quic::codes;

/// A good request on the same connection still gets the right answer.
async fn assert_connection_still_serves(connection: &quinn::Connection) {
    let set = raw_exchange(connection, &frame(&CommandRequest::hset("t", "alive", "yes"))).await;
    assert_eq!(set.len(), 1);
    assert_eq!(set[0].status, status::OK);
    let got = raw_exchange(connection, &frame(&CommandRequest::hget("t", "alive"))).await;
    assert_eq!(got[0].values, vec!["yes".into()]);
}

fn single_error(responses: &[CommandResponse], expected_status: u32, words: &str) {
    assert_eq!(responses.len(), 1, "{responses:?}");
    let response = &responses[0];
    assert_eq!(response.status, expected_status, "{response:?}");
    assert!(!response.more);
    assert!(response.message.contains(words), "{:?} should mention {words:?}", response.message);
}

/// An end-to-end check over real QUIC. quinn may coalesce the pieces into fewer packets, so this cannot
/// prove the server saw them separately; `frame::tests::frames_split_at_every_boundary_decode_whole`
/// is the guard for that bug class, feeding the decoder one piece per read.
#[tokio::test]
async fn a_request_written_in_small_pieces_is_read_whole() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    let request = frame(&CommandRequest::hset("pieces", "key", "x".repeat(3000)));
    for piece_len in [1, 3, 500] {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        for piece in request.chunks(piece_len) {
            send.write_all(piece).await.unwrap();
            // Let the connection send what has been written before the next piece is added.
            tokio::task::yield_now().await;
        }
        send.finish().unwrap();
        let responses = read_responses(recv).await;
        assert_eq!(responses.len(), 1);
        assert_eq!(responses[0].status, status::OK, "pieces of {piece_len}: {:?}", responses[0]);
    }
    let got = raw_exchange(&connection, &frame(&CommandRequest::hget("pieces", "key"))).await;
    assert_eq!(got[0].values, vec!["x".repeat(3000).into()]);
}

#[tokio::test]
async fn oversized_frames_get_413_and_stop_sending_while_other_streams_work() {
    let server = TestServer::start_with(|config| config.limits.max_frame_len = 1 << 20).await;
    let connection = server.raw_connection().await;
    for declared in [u32::MAX, 1 << 30, (1 << 20) + 1] {
        let (mut send, recv) = connection.open_bi().await.unwrap();
        send.write_all(&declared.to_be_bytes()).await.unwrap();
        send.write_all(&[0u8; 1000]).await.unwrap();
        // The client never finishes this stream: the server must answer without waiting for the payload.
        let (responses, ()) = tokio::join!(read_responses(recv), assert_connection_still_serves(&connection));
        single_error(&responses, status::PAYLOAD_TOO_LARGE, "exceeds the maximum frame size");
        assert!(responses[0].message.contains("(--max-frame-size)"), "{}", responses[0].message);
        assert!(responses[0].message.contains(&declared.to_string()));
        assert_eq!(send.stopped().await.unwrap(), Some(codes::REQUEST_REJECTED));
    }
    assert_connection_still_serves(&connection).await;
}

#[tokio::test]
async fn a_frame_cut_short_by_the_end_of_the_stream_gets_400() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    let whole = frame(&CommandRequest::hget("t", "k"));
    for cut in [2, 4, whole.len() - 1] {
        let responses = raw_exchange(&connection, &whole[..cut]).await;
        single_error(&responses, status::BAD_REQUEST, "ended inside a frame");
    }
    assert_connection_still_serves(&connection).await;
}

#[tokio::test]
async fn a_payload_that_is_not_protobuf_gets_400() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    let mut garbage = 8u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xFF; 8]);
    single_error(
        &raw_exchange(&connection, &garbage).await,
        status::BAD_REQUEST,
        "not a valid CommandRequest",
    );
    assert_connection_still_serves(&connection).await;
}

#[tokio::test]
async fn anything_after_the_request_frame_gets_400_and_is_not_executed() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    let first = frame(&CommandRequest::hset("t", "trailing", "no"));
    let mut two_frames = first.to_vec();
    two_frames.extend_from_slice(&frame(&CommandRequest::ping("")));
    let mut with_garbage = first.to_vec();
    with_garbage.extend_from_slice(b"xyz");
    for bytes in [two_frames, with_garbage] {
        single_error(&raw_exchange(&connection, &bytes).await, status::BAD_REQUEST, "exactly one frame");
    }
    let got = raw_exchange(&connection, &frame(&CommandRequest::hexist("t", "trailing"))).await;
    assert_eq!(got[0].values, vec![false.into()], "a rejected request must not be executed");
}

#[tokio::test]
async fn bytes_after_the_frame_are_refused_at_once_not_when_the_stream_ends() {
    let server = TestServer::start().await; // request timeout 10 s: a 408 would mean the server waited
    let connection = server.raw_connection().await;
    let (mut send, recv) = connection.open_bi().await.unwrap();
    send.write_all(&frame(&CommandRequest::hset("t", "k", "v"))).await.unwrap();
    send.write_all(&[0, 0]).await.unwrap(); // the start of a second frame; the stream stays open
    single_error(&read_responses(recv).await, status::BAD_REQUEST, "exactly one frame");
    assert_eq!(send.stopped().await.unwrap(), Some(codes::REQUEST_REJECTED));
}

#[tokio::test]
async fn a_connection_cannot_buffer_more_request_bytes_than_its_budget() {
    let (max_frame, window) = (64 * 1024, 128 * 1024);
    let server = TestServer::start_with(|config| {
        config.limits.max_frame_len = max_frame;
        config.limits.max_request_buffer = max_frame + 4; // the smallest allowed: one frame
        config.limits.connection_receive_window = window;
        config.limits.request_timeout = Duration::from_secs(5);
        config.service.response_frame_target = 16 * 1024;
    })
    .await;
    // Open stream after stream, each with a large request that is never finished, until QUIC flow
    // control stops accepting bytes. What the server takes in is what it reads (its budget) plus the
    // flow-control window; without the budget it would read everything, 32 x 60 KiB.
    let hog = server.raw_connection().await;
    let (mut accepted, mut streams) = (0, Vec::new());
    for _ in 0..32 {
        let (mut send, recv) = hog.open_bi().await.unwrap();
        let mut request = (max_frame as u32).to_be_bytes().to_vec();
        request.resize(60 * 1024, 0);
        match tokio::time::timeout(Duration::from_millis(300), send.write_all(&request)).await {
            Ok(written) => written.unwrap(),
            Err(_blocked) => break,
        }
        accepted += request.len();
        streams.push((send, recv));
    }
    let bound = (max_frame + 4) + window + 64 * 1024; // budget + window + one write in flight
    assert!(accepted <= bound, "the connection took in {accepted} bytes; the bound is {bound}");
    // Other connections are not affected at all.
    let other = server.client().await;
    other.hset("t", "other", "fine").await.unwrap();
    assert_eq!(other.hget("t", "other").await.unwrap().unwrap().value, "fine".into());
}

#[tokio::test]
async fn a_command_newer_than_the_server_gets_400_saying_so() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    // CommandRequest field 14, an empty message: what a future command looks like to this server.
    let unknown = [0, 0, 0, 2, 0x72, 0x00];
    single_error(
        &raw_exchange(&connection, &unknown).await,
        status::BAD_REQUEST,
        "no command this server knows",
    );
}

#[tokio::test]
async fn a_stream_finished_without_a_frame_gets_400() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    single_error(&raw_exchange(&connection, &[]).await, status::BAD_REQUEST, "before a request frame");
    assert_connection_still_serves(&connection).await;
}

#[tokio::test]
async fn a_request_that_never_completes_gets_408_after_the_request_timeout() {
    let server =
        TestServer::start_with(|config| config.limits.request_timeout = Duration::from_millis(300)).await;
    let connection = server.raw_connection().await;
    let whole = frame(&CommandRequest::hget("t", "k"));
    let (mut partial, partial_recv) = connection.open_bi().await.unwrap();
    partial.write_all(&whole[..whole.len() / 2]).await.unwrap();
    let (mut unfinished, unfinished_recv) = connection.open_bi().await.unwrap();
    unfinished.write_all(&whole).await.unwrap(); // a whole frame, but the stream is never finished
    let (partial_responses, unfinished_responses, ()) = tokio::join!(
        read_responses(partial_recv),
        read_responses(unfinished_recv),
        assert_connection_still_serves(&connection)
    );
    single_error(&partial_responses, status::REQUEST_TIMEOUT, "did not arrive");
    single_error(&unfinished_responses, status::REQUEST_TIMEOUT, "did not arrive");
    assert!(partial_responses[0].message.contains("(--request-timeout)"), "{}", partial_responses[0].message);
}

#[tokio::test]
async fn a_stream_reset_by_the_client_does_not_disturb_the_connection() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(&[0, 0, 1]).await.unwrap();
    send.reset(codes::CANCELLED).unwrap();
    assert_connection_still_serves(&connection).await;
}

/// A write whose stream the client resets before its end (half a frame, or a whole frame without the
/// FIN) never runs, and the server's answer side says so: RESET_STREAM 0x12, not 0x11 ("may have
/// been executed"), which would leave a careful client thinking the write might have happened.
#[tokio::test]
async fn a_request_reset_before_its_end_is_answered_as_not_executed() {
    let server = TestServer::start().await;
    let connection = server.raw_connection().await;
    let whole = frame(&CommandRequest::hset("t", "k", "never"));
    for sent in [&whole[..whole.len() / 2], &whole[..]] {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(sent).await.unwrap();
        send.reset(codes::CANCELLED).unwrap();
        let ended = recv.read_to_end(1 << 20).await.expect_err("no answer comes");
        assert!(
            matches!(ended, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) if code == codes::CANCELLED),
            "{ended:?}"
        );
    }
    assert_connection_still_serves(&connection).await;
    assert_eq!(server.client().await.hget("t", "k").await.unwrap(), None, "nothing was written");
}
