//! Replays the fuzz corpus (fuzz/corpus/TARGET/*: the seeds below, plus what the fuzzers found worth
//! keeping) through the same harnesses the fuzz targets run, so an input that once crashed the server is
//! checked in every test run, on stable Rust. docs/SECURITY.md, "Fuzzing".

use std::path::{Path, PathBuf};

use prost::Message;
use qkv::fuzzing;
use qkv::pb::{CommandRequest, Kvpair};
use qkv::transport::frame::encode_frame;

type Harness = fn(&[u8]);

const TARGETS: [(&str, Harness); 4] = [
    ("frame_decoder", fuzzing::frame_decoder),
    ("request_dispatch", fuzzing::request_dispatch),
    ("tcp_pipeline", fuzzing::tcp_pipeline),
    ("log_recovery", fuzzing::log_recovery),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

/// Requests that reach every command, both limits and the budget of the harnesses' service.
fn requests() -> Vec<CommandRequest> {
    vec![
        CommandRequest::hset("t", "k", "v"),
        CommandRequest::hset_if_version("t", "k", "w", 0),
        CommandRequest::hget("t", "k"),
        CommandRequest::hmset("t", (0..40).map(|i| Kvpair::new(format!("k{i}"), vec![i as u8; 60]))),
        CommandRequest::hgetall("t"),
        CommandRequest::hmget("t", ["k", "k1", "nobody"]),
        CommandRequest::hexist("t", "k"),
        CommandRequest::hmexist("t", ["k", "k2"]),
        CommandRequest::hdel_if_version("t", "k", 1),
        CommandRequest::hdel("t", "k"),
        CommandRequest::hmdel("t", ["k1", "k2"]),
        CommandRequest::hset("t", "big", vec![0u8; 5000]),
        CommandRequest::hset("t".repeat(100), "k", "v"),
        CommandRequest::ping("hello"),
        CommandRequest::publish("topic", ["x".into()]),
        CommandRequest::default(),
    ]
}

/// Bodies of log records (docs/DESIGN.md, "Durable storage"): sets, a delete, a snapshot's end.
fn log_record_bodies() -> Vec<Vec<u8>> {
    let body = |kind: u8, number: u64, table: &str, key: &str, value: Option<qkv::pb::Value>| {
        let mut body = vec![kind];
        body.extend_from_slice(&number.to_le_bytes());
        for name in [table, key] {
            body.extend_from_slice(&(name.len() as u32).to_le_bytes());
            body.extend_from_slice(name.as_bytes());
        }
        if let Some(value) = value {
            value.encode(&mut body).unwrap();
        }
        body
    };
    vec![
        body(1, 7, "t", "k", Some("v".into())),
        body(1, 8, "t", "n", Some(42i64.into())),
        body(2, 9, "t", "k", None),
        body(1, 10, "", "", Some(vec![0u8, 1, 2].into())),
        [&[3u8][..], &3u64.to_le_bytes()].concat(),
    ]
}

/// Named seed inputs per target.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let frames: Vec<Vec<u8>> =
        requests().iter().map(|r| encode_frame(r, 1 << 20).unwrap().to_vec()).collect();
    let pipelined: Vec<u8> = frames.concat();
    let mut seeds = match target {
        "frame_decoder" => vec![
            ("all-commands-in-3-byte-pieces".into(), [&[3u8][..], &pipelined].concat()),
            ("oversized-header".into(), vec![1, 0xFF, 0xFF, 0xFF, 0xFF, 0]),
            ("truncated".into(), [&[7u8][..], &frames[0][..frames[0].len() - 1]].concat()),
            ("garbage-payload".into(), vec![2, 0, 0, 0, 3, 0xFF, 0xFF, 0xFF]),
        ],
        "request_dispatch" => vec![(
            "all-commands".into(),
            requests().iter().flat_map(|r| r.encode_length_delimited_to_vec()).collect(),
        )],
        "tcp_pipeline" => vec![
            ("all-commands".into(), pipelined.clone()),
            ("frame-then-garbage".into(), [&frames[0][..], b"GET / HTTP/1.1\r\n\r\n"].concat()),
            ("http".into(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            ("truncated".into(), pipelined[..pipelined.len() - 2].to_vec()),
        ],
        "log_recovery" => {
            // Structured inputs (first byte even): record bodies, each after its length byte.
            let bodies = log_record_bodies();
            let structured: Vec<u8> =
                bodies.iter().flat_map(|body| [&[body.len() as u8][..], body].concat()).collect();
            vec![
                ("records".into(), [&[0u8][..], &structured].concat()),
                ("records-cut".into(), [&[0u8][..], &structured[..structured.len() - 3]].concat()),
                ("raw-bytes".into(), [&[1u8][..], &structured].concat()),
            ]
        }
        _ => unreachable!("unknown target {target}"),
    };
    seeds.push(("empty".into(), Vec::new()));
    seeds
}

#[test]
fn every_seed_and_corpus_input_passes_its_harness() {
    for (target, harness) in TARGETS {
        for (name, input) in seeds(target) {
            eprintln!("{target}: seed {name}");
            harness(&input);
        }
        let Ok(entries) = std::fs::read_dir(corpus_dir(target)) else { continue };
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            harness(&std::fs::read(&path).unwrap());
            replayed += 1;
        }
        eprintln!("{target}: replayed {replayed} corpus inputs");
    }
}

/// Writes the seeds above into fuzz/corpus, where the fuzzers start from. Run after changing them:
/// `cargo test --test fuzz_corpus -- --ignored`.
#[test]
#[ignore = "writes the seed corpus; run by hand"]
fn write_seed_corpus() {
    for (target, _) in TARGETS {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, input) in seeds(target) {
            std::fs::write(dir.join(format!("seed-{name}")), input).unwrap();
        }
    }
}
