//! docs/PROTOCOL.md is a product: these tests fail when it drifts from the code.

use qkv::pb::{CommandRequest, CommandResponse, Value};
use qkv::transport::frame::encode_frame;

const DOC: &str = include_str!("../docs/PROTOCOL.md");

/// Parses the hex bytes of the fenced block that follows `heading_words` in the document.
fn example_bytes(heading_words: &str) -> Vec<u8> {
    let start = DOC.find(heading_words).expect("example in the document");
    let block = DOC[start..].split("```text").nth(1).expect("a fenced block").split("```").next().unwrap();
    block
        .lines()
        .flat_map(|line| {
            line.split_whitespace().take_while(|w| w.len() == 2 && u8::from_str_radix(w, 16).is_ok())
        })
        .map(|w| u8::from_str_radix(w, 16).unwrap())
        .collect()
}

#[test]
fn the_spec_carries_the_proto_file_verbatim() {
    let proto = include_str!("../proto/kv.proto");
    assert!(
        DOC.contains(proto),
        "docs/PROTOCOL.md must include proto/kv.proto verbatim; update it with the proto"
    );
}

#[test]
fn the_worked_example_is_what_the_code_sends() {
    let request = encode_frame(&CommandRequest::hget("users", "ada"), 1024).unwrap();
    assert_eq!(example_bytes("Client to\nserver"), request.to_vec());
    let response = CommandResponse::with_values(vec![Value::from("Ada")], vec![7]);
    assert_eq!(example_bytes("Server to client"), encode_frame(&response, 1024).unwrap().to_vec());
}
