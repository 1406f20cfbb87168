//! Every command's semantics over a real server: values, versions, misses, conflicts and errors, over
//! every transport (QUIC, TLS over TCP, plaintext TCP).

#[macro_use]
mod common;

use common::TestServer;
use qkv::client::{ClientError, Written};
use qkv::pb::{CommandRequest, Kvpair, Value, Versioned, status};
use qkv::service::ItemLimits;
use qkv::storage::MemoryStore;
use qkv::transport::Transport;

async fn hget_returns_value_and_version_or_none(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    assert_eq!(client.hget("t", "k").await.unwrap(), None);
    let written = client.hset("t", "k", "v").await.unwrap();
    assert_eq!(
        client.hget("t", "k").await.unwrap(),
        Some(Versioned { value: "v".into(), version: written.version })
    );
    // On the wire a miss is status 404 with a message.
    let raw = client.call(&CommandRequest::hget("t", "nope")).await.unwrap();
    assert_eq!(raw.status, status::NOT_FOUND);
    assert!(raw.message.contains("nope"), "{}", raw.message);
}

async fn hset_returns_previous_value_and_a_new_version_each_time(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    let first = client.hset("t", "k", 1i64).await.unwrap();
    assert_eq!(first.previous, None);
    assert!(first.version > 0);
    let second = client.hset("t", "k", 2i64).await.unwrap();
    assert_eq!(second.previous, Some(1i64.into()));
    assert!(second.version > first.version);
}

async fn every_value_type_round_trips(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    let values: Vec<Value> = vec![
        "text".into(),
        "".into(),
        Value::from(vec![0u8, 255, 10]),
        (-7i64).into(),
        1.5f64.into(),
        true.into(),
    ];
    for (i, value) in values.iter().enumerate() {
        client.hset("types", &i.to_string(), value.clone()).await.unwrap();
        assert_eq!(
            client.hget("types", &i.to_string()).await.unwrap().map(|v| v.value).as_ref(),
            Some(value)
        );
    }
}

async fn hdel_returns_previous_value_and_leaves_the_key_absent(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    client.hset("t", "k", "v").await.unwrap();
    assert_eq!(client.hdel("t", "k").await.unwrap(), Written { previous: Some("v".into()), version: 0 });
    assert_eq!(client.hget("t", "k").await.unwrap(), None);
    assert_eq!(client.hdel("t", "k").await.unwrap(), Written { previous: None, version: 0 });
}

async fn hexist_and_hmexist_answer_booleans_and_versions_in_request_order(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    let version = client.hset("t", "a", "1").await.unwrap().version;
    assert!(client.hexist("t", "a").await.unwrap());
    assert!(!client.hexist("t", "b").await.unwrap());
    assert_eq!(client.hmexist("t", &["b", "a", "b"]).await.unwrap(), vec![false, true, false]);
    // On the wire both carry versions too, 0 for absent keys; a miss is `false`, not an empty Value.
    let one = client.call(&CommandRequest::hexist("t", "a")).await.unwrap();
    assert_eq!((one.values, one.versions), (vec![Value::from(true)], vec![version]));
    let many = client.call(&CommandRequest::hmexist("t", ["a", "b"])).await.unwrap();
    assert_eq!((many.values, many.versions), (vec![Value::from(true), Value::from(false)], vec![version, 0]));
}

async fn hmget_answers_one_entry_per_key_in_request_order_with_empty_values_for_misses(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    let a = client.hset("t", "a", "1").await.unwrap().version;
    let c = client.hset("t", "c", "3").await.unwrap().version;
    let got = client.hmget("t", &["c", "missing", "a"]).await.unwrap();
    assert_eq!(
        got,
        vec![
            Some(Versioned { value: "3".into(), version: c }),
            None,
            Some(Versioned { value: "1".into(), version: a })
        ]
    );
    let raw = client.call(&CommandRequest::hmget("t", ["missing"])).await.unwrap();
    assert_eq!(raw.status, status::OK);
    assert_eq!(raw.values, vec![Value::default()], "a miss is an empty Value");
}

async fn hmset_and_hmdel_answer_in_request_order(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    client.hset("t", "b", "old").await.unwrap();
    let written = client.hmset("t", [Kvpair::new("a", "1"), Kvpair::new("b", "2")]).await.unwrap();
    assert_eq!(written[0].previous, None);
    assert_eq!(written[1].previous, Some("old".into()));
    assert!(written.iter().all(|w| w.version > 0));
    let deleted = client.hmdel("t", &["b", "x", "a"]).await.unwrap();
    let previous: Vec<_> = deleted.into_iter().map(|d| d.previous).collect();
    assert_eq!(previous, vec![Some("2".into()), None, Some("1".into())]);
}

/// An empty table or key is a name like any other, on every door (REST has routes of its own for them).
async fn empty_names_are_names_like_any_other(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    for (table, key) in [("t", ""), ("", "k"), ("", "")] {
        let case = format!("table {table:?}, key {key:?}");
        let version = client.hset(table, key, "v").await.expect(&case).version;
        let held = Some(Versioned { value: "v".into(), version });
        assert_eq!(client.hget(table, key).await.expect(&case), held, "{case}");
        assert!(client.hexist(table, key).await.expect(&case), "{case}");
        let listed = client.hgetall(table).await.expect(&case);
        assert!(listed.iter().any(|(k, v)| k == key && v.version == version), "{case}: {listed:?}");
        let deleted = client.hdel(table, key).await.expect(&case);
        assert_eq!(deleted, Written { previous: Some("v".into()), version: 0 }, "{case}");
        assert!(!client.hexist(table, key).await.expect(&case), "{case}");
    }
}

async fn hgetall_returns_every_pair_with_its_version(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    assert_eq!(client.hgetall("empty").await.unwrap(), vec![]);
    let mut expected = Vec::new();
    for i in 0..20 {
        let key = format!("k{i:02}");
        let version = client.hset("t", &key, i as i64).await.unwrap().version;
        expected.push((key, Versioned { value: (i as i64).into(), version }));
    }
    client.hset("other", "k00", "not mine").await.unwrap();
    let mut all = client.hgetall("t").await.unwrap();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(all, expected);
}

async fn a_large_table_streams_over_many_bounded_frames(transport: Transport) {
    let target = 16 * 1024;
    let server =
        TestServer::start_for_with(transport, |config| config.service.response_frame_target = target).await;
    let client = server.client().await;
    let keys = 50_000;
    for batch in 0..(keys / 5_000) {
        let pairs = (batch * 5_000..(batch + 1) * 5_000).map(|i| Kvpair::new(format!("key-{i}"), i as i64));
        client.hmset("big", pairs).await.unwrap();
    }
    let mut frames = client.call_frames(&CommandRequest::hgetall("big")).await.unwrap();
    let (mut count, mut pairs, mut largest) = (0, std::collections::HashSet::new(), 0);
    while let Some(frame) = frames.next().await {
        let frame = frame.unwrap();
        count += 1;
        largest = largest.max(prost::Message::encoded_len(&frame));
        assert_eq!(frame.status, status::OK);
        assert_eq!(frame.pairs.len(), frame.versions.len());
        for pair in frame.pairs {
            assert!(pairs.insert(pair.key), "a key arrived twice");
        }
    }
    assert_eq!(pairs.len(), keys);
    assert!(count >= keys * 14 / target, "only {count} frames");
    assert!(largest <= target + 1024, "a frame of {largest} bytes exceeds the {target}-byte target");
}

async fn a_large_multi_key_answer_is_split_and_reassembled(transport: Transport) {
    let server =
        TestServer::start_for_with(transport, |config| config.service.response_frame_target = 4096).await;
    let client = server.client().await;
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    client.hmset("t", keys.iter().map(|k| Kvpair::new(k.clone(), vec![7u8; 1000]))).await.unwrap();
    // Owned keys as they are: the multi-key calls take `String`s as well as `&str`s.
    let got = client.hmget("t", &keys).await.unwrap();
    assert_eq!(got.len(), 100);
    assert!(got.iter().all(|v| { v.as_ref().is_some_and(|v| v.value == Value::from(vec![7u8; 1000])) }));
}

async fn conditional_hset_writes_on_matching_version_and_answers_409_otherwise(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    let created = client.hset_if_version("t", "k", "a", 0).await.unwrap();
    match client.hset_if_version("t", "k", "b", 0).await {
        Err(ClientError::Conflict { current }) => {
            assert_eq!(current, Some(Versioned { value: "a".into(), version: created.version }))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let stale = created.version + 100;
    assert!(matches!(client.hset_if_version("t", "k", "b", stale).await, Err(ClientError::Conflict { .. })));
    assert_eq!(client.hget("t", "k").await.unwrap().unwrap().value, "a".into(), "a 409 writes nothing");

    let updated = client.hset_if_version("t", "k", "b", created.version).await.unwrap();
    assert_eq!(updated.previous, Some("a".into()));
    assert!(updated.version > created.version);

    // On the wire: status 409, a message, the current value and version.
    let raw = client.call(&CommandRequest::hset_if_version("t", "k", "c", created.version)).await.unwrap();
    assert_eq!(raw.status, status::CONFLICT);
    assert!(raw.message.contains("version"), "{}", raw.message);
    assert_eq!(raw.values, vec![Value::from("b")]);
    assert_eq!(raw.versions, vec![updated.version]);
}

async fn conditional_hdel_deletes_only_on_matching_version(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    let version = client.hset("t", "k", "v").await.unwrap().version;
    assert!(matches!(client.hdel_if_version("t", "k", version + 1).await, Err(ClientError::Conflict { .. })));
    assert!(client.hexist("t", "k").await.unwrap());
    let deleted = client.hdel_if_version("t", "k", version).await.unwrap();
    assert_eq!(deleted.previous, Some("v".into()));
    assert!(!client.hexist("t", "k").await.unwrap());
    // Deleted and re-created, the key has a new version: the old one can never match again.
    let recreated = client.hset("t", "k", "v").await.unwrap().version;
    assert!(recreated > version);
    assert!(matches!(client.hdel_if_version("t", "k", version).await, Err(ClientError::Conflict { .. })));
}

async fn conditional_hdel_with_expected_version_0_means_only_if_absent(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    assert_eq!(client.hdel_if_version("t", "k", 0).await.unwrap(), Written { previous: None, version: 0 });
    let version = client.hset("t", "k", "v").await.unwrap().version;
    match client.hdel_if_version("t", "k", 0).await {
        Err(ClientError::Conflict { current }) => assert_eq!(current.map(|c| c.version), Some(version)),
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert!(client.hexist("t", "k").await.unwrap());
}

async fn pairs_and_payloads_whose_answers_cannot_fit_in_a_frame_get_413(transport: Transport) {
    let max_frame = 4096;
    let server = TestServer::start_for_with(transport, |config| {
        config.limits.max_frame_len = max_frame;
        config.limits.max_request_buffer = 2 * max_frame;
        config.service.response_frame_target = 1024;
    })
    .await;
    let client = server.client().await;
    let fits = max_frame - qkv::service::ANSWER_OVERHEAD - 16;
    client.hset("t", "k", vec![1u8; fits]).await.expect("a pair that fits is stored");
    let got = client.hget("t", "k").await.expect("and answered").expect("present");
    assert_eq!(got.value, Value::from(vec![1u8; fits]));
    // The answer to a conditional write that conflicts carries the value and a message: it fits too.
    assert!(matches!(client.hset_if_version("t", "k", "x", 1).await, Err(ClientError::Conflict { .. })));

    let mut requests = vec![
        CommandRequest::hset("t", "big", vec![2u8; max_frame - 100]),
        CommandRequest::hmset("t", [Kvpair::new("ok", "1"), Kvpair::new("big", vec![2u8; max_frame - 100])]),
    ];
    requests.push(CommandRequest::ping(vec![3u8; max_frame - 100]));
    for request in requests {
        let response = client.call(&request).await.unwrap();
        assert_eq!(response.status, status::PAYLOAD_TOO_LARGE, "{}", request.command_name());
        assert!(response.message.contains("fits"), "{}", response.message);
    }
    assert!(!client.hexist("t", "ok").await.unwrap(), "a refused Hmset writes nothing");
}

async fn error_messages_about_huge_names_stay_small(transport: Transport) {
    let server =
        TestServer::start_for_with(transport, |config| config.service.items.max_key_len = 200_000).await;
    let client = server.client().await;
    let huge = "k".repeat(100_000);
    let response = client.call(&CommandRequest::hget("t", huge.as_str())).await.unwrap();
    assert_eq!(response.status, status::NOT_FOUND);
    assert!(response.message.len() < 300, "a {}-byte message", response.message.len());
    assert!(response.message.contains("100000 bytes"), "{}", response.message);
}

async fn ping_echoes_its_payload(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    assert_eq!(client.ping("").await.unwrap(), "");
    let payload = vec![0xABu8; 10_000];
    assert_eq!(client.ping(payload.clone()).await.unwrap(), payload);
}

async fn invalid_requests_are_answered_400_with_a_message(transport: Transport) {
    // (A command newer than the server decodes as "no command", since protobuf skips unknown fields.)
    let server = TestServer::start_for(transport).await;
    let client = server.client().await;
    let cases = [
        (CommandRequest::default(), "no command this server knows"),
        (CommandRequest::hset("t", "k", Value::default()), "not set"),
        (
            CommandRequest::hmset("t", [Kvpair::new("ok", "1"), Kvpair { key: "bad".into(), value: None }]),
            "not set",
        ),
        (
            CommandRequest::from(qkv::pb::command_request::RequestData::Hset(qkv::pb::Hset {
                table: "t".into(),
                pair: None,
                expected_version: None,
            })),
            "pair",
        ),
    ];
    for (request, words) in cases {
        let response = client.call(&request).await.unwrap();
        assert_eq!(response.status, status::BAD_REQUEST, "{request:?}");
        assert!(response.message.contains(words), "{:?} lacks {words:?}", response.message);
    }
    assert!(!client.hexist("t", "ok").await.unwrap(), "an invalid Hmset must write nothing");
}

async fn names_and_values_over_the_item_limits_get_413_naming_the_limit(transport: Transport) {
    let server = TestServer::start_for_with(transport, |config| {
        config.service.items = ItemLimits { max_table_len: 8, max_key_len: 16, max_value_len: 64 };
    })
    .await;
    let client = server.client().await;
    for (request, limit) in [
        (CommandRequest::hset("t".repeat(9), "k", "v"), "--max-table-size"),
        (CommandRequest::hset("t", "k".repeat(17), "v"), "--max-key-size"),
        (CommandRequest::hset("t", "k", "v".repeat(63)), "--max-value-size"),
        (CommandRequest::hmget("t", ["k", &"k".repeat(17)]), "--max-key-size"),
    ] {
        let response = client.call(&request).await.unwrap();
        assert_eq!(response.status, status::PAYLOAD_TOO_LARGE, "{request:?}");
        assert!(response.message.contains(limit), "{:?} lacks {limit}", response.message);
    }
    // At the limits exactly: a string of 62 bytes encodes in 64.
    client.hset(&"t".repeat(8), &"k".repeat(16), "v".repeat(62)).await.unwrap();
    assert!(client.hexist("t", &"k".repeat(17)).await.is_err());
}

async fn a_full_store_refuses_writes_with_507_and_keeps_serving_reads_and_deletes(transport: Transport) {
    let server = TestServer::start_with_store(transport, MemoryStore::with_budget(64 * 1024), |_| {}).await;
    let client = server.client().await;
    let value = vec![7u8; 1000];
    let mut stored = 0;
    let refusal = loop {
        match client.hset("t", &format!("k{stored}"), value.clone()).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "a 64 KiB budget took {stored} values of 1000 bytes");
    };
    assert!(stored >= 40, "only {stored} values of 1000 bytes fit in 64 KiB");
    let ClientError::Status { status, message } = &refusal else { panic!("expected a 507, got {refusal}") };
    assert_eq!(*status, status::INSUFFICIENT_STORAGE);
    assert!(message.contains("--memory-budget"), "{message}");
    // A conditional write that cannot match is a conflict with the current value, as on a store with
    // room, so a read-modify-write loop retries; one that matches and does not grow the entry is made.
    let current = client.hget("t", "k0").await.unwrap();
    for expected in [current.as_ref().map_or(0, |c| c.version) + 1, 0] {
        match client.hset_if_version("t", "k0", vec![8u8; 1000], expected).await {
            Err(ClientError::Conflict { current: now }) => assert_eq!(now, current, "expected {expected}"),
            other => panic!("expected a conflict for version {expected}, got {other:?}"),
        }
    }
    let version = current.map_or(0, |c| c.version);
    client.hset_if_version("t", "k0", value.clone(), version).await.unwrap();
    // A multi-key write that does not fit changes nothing, even the keys that would have fit.
    let pairs = (0..10).map(|i| Kvpair::new(format!("m{i}"), value.clone()));
    let response = client.call(&CommandRequest::hmset("t", pairs)).await.unwrap();
    assert_eq!(response.status, status::INSUFFICIENT_STORAGE);
    assert!(!client.hexist("t", "m0").await.unwrap());
    // Reads still work, and a delete makes room for a write again.
    assert_eq!(client.hget("t", "k0").await.unwrap().unwrap().value, value.clone().into());
    client.hdel("t", "k0").await.unwrap();
    client.hset("t", "again", value).await.unwrap();
}

async fn clients_share_the_store_and_a_client_shares_its_connection(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let first = server.client().await;
    let second = server.client().await;
    first.hset("t", "k", "from first").await.unwrap();
    assert_eq!(second.hget("t", "k").await.unwrap().unwrap().value, "from first".into());
    let clone = first.clone();
    clone.hset("t", "k", "from clone").await.unwrap();
    assert_eq!(first.hget("t", "k").await.unwrap().unwrap().value, "from clone".into());
}

transport_tests!(commands: quic, tls, tcp, http, grpc, grpc_pipeline =>
    hget_returns_value_and_version_or_none,
    hset_returns_previous_value_and_a_new_version_each_time,
    every_value_type_round_trips,
    hdel_returns_previous_value_and_leaves_the_key_absent,
    empty_names_are_names_like_any_other,
    hexist_and_hmexist_answer_booleans_and_versions_in_request_order,
    hmget_answers_one_entry_per_key_in_request_order_with_empty_values_for_misses,
    hmset_and_hmdel_answer_in_request_order,
    hgetall_returns_every_pair_with_its_version,
    a_large_table_streams_over_many_bounded_frames,
    a_large_multi_key_answer_is_split_and_reassembled,
    conditional_hset_writes_on_matching_version_and_answers_409_otherwise,
    conditional_hdel_deletes_only_on_matching_version,
    conditional_hdel_with_expected_version_0_means_only_if_absent,
    pairs_and_payloads_whose_answers_cannot_fit_in_a_frame_get_413,
    clients_share_the_store_and_a_client_shares_its_connection,
    names_and_values_over_the_item_limits_get_413_naming_the_limit,
    a_full_store_refuses_writes_with_507_and_keeps_serving_reads_and_deletes,
    ping_echoes_its_payload,
);

// What only the transports that carry the protocol's messages as they are can say: REST cannot send a
// request that is not a command, and addresses keys by URL, whose length HTTP limits (tests/web.rs
// holds REST to its own bad input).
transport_tests!(messages: quic, tls, tcp, grpc, grpc_pipeline =>
    error_messages_about_huge_names_stay_small,
    invalid_requests_are_answered_400_with_a_message,
);
