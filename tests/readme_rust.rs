//! The README's Rust examples compile against the crate as it is: every `rust` block of README.md is
//! written out below, line for line, in a function of its own, and a test holds the two together. (The
//! calls themselves are tested elsewhere; these functions are compiled, not run: the first dials the
//! README's fixed address, the second reads messages until the server goes away.)

#![allow(dead_code)]

use futures_util::StreamExt;

/// README, "From Rust". (Not formatted: rustfmt would move the README's comments.)
#[rustfmt::skip]
async fn connect_write_and_update() -> Result<(), Box<dyn std::error::Error>> {
    let client = qkv::Client::connect("127.0.0.1:9527", "certs/ca.pem").await?;
    let written = client.hset("users", "ada", "Ada Lovelace").await?;
    client.hset_if_version("users", "ada", "Ada King", written.version).await?;
    Ok(())
}

/// README, "Publish and subscribe".
#[rustfmt::skip]
async fn subscribe_and_publish(client: &qkv::Client) -> Result<(), Box<dyn std::error::Error>> {
    let mut news = client.subscribe("news").await?;
    client.publish("news", [qkv::pb::Value::from("hello")]).await?;
    while let Some(event) = news.next().await {          // futures::StreamExt
        match event? {
            qkv::client::Event::Message(values) => println!("{values:?}"),
            qkv::client::Event::Missed(n) => eprintln!("missed {n}"),
        }
    }
    Ok(())
}

/// The `rust` blocks of README.md, each as its lines without their indentation.
fn readme_rust_blocks() -> Vec<Vec<String>> {
    let readme = include_str!("../README.md");
    readme
        .split("```rust\n")
        .skip(1)
        .map(|block| {
            let block = block.split("\n```").next().unwrap_or_default();
            block.lines().map(|line| line.trim().to_owned()).collect()
        })
        .collect()
}

#[test]
fn every_rust_block_of_the_readme_is_compiled_here() {
    let blocks = readme_rust_blocks();
    assert!(blocks.len() >= 2, "the README's Rust examples: {blocks:?}");
    let here: Vec<&str> = include_str!("readme_rust.rs").lines().map(str::trim).collect();
    for block in &blocks {
        assert!(
            here.windows(block.len()).any(|lines| lines == block.as_slice()),
            "this README block is not written out in tests/readme_rust.rs, so it is not compiled:\n{}",
            block.join("\n")
        );
    }
}
