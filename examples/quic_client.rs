//! A walk through the qkv client: connect, set, get, a conditional update that conflicts, get all.
//!
//! Start a server in another terminal (`cargo run --release -- serve`), then:
//!
//! ```text
//! cargo run --example quic_client [ADDR] [CA_FILE]
//! ```

use qkv::Client;
use qkv::client::ClientError;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9527".into());
    let ca = args.next().unwrap_or_else(|| "certs/ca.pem".into());

    // One QUIC connection, verified against the CA. Every call below runs on its own stream.
    let client = Client::connect(&addr, ca).await?;
    println!("connected to {}", client.remote_address());

    // Writes return the key's new version.
    let written = client.hset("inventory", "widgets", 10i64).await?;
    println!("set widgets = 10 (version {})", written.version);

    // Reads return the value with its version.
    let widgets = client.hget("inventory", "widgets").await?.expect("just written");
    println!("get widgets = {} (version {})", widgets.value, widgets.version);

    // Optimistic concurrency: update only if nobody wrote since we read. Here somebody did.
    client.hset("inventory", "widgets", 7i64).await?;
    match client.hset_if_version("inventory", "widgets", 9i64, widgets.version).await {
        Err(ClientError::Conflict { current }) => {
            let current = current.expect("the key exists");
            println!(
                "conflict: widgets is now {} (version {}); re-read and retry",
                current.value, current.version
            );
            // Retry against the version the conflict reported.
            let retried = client.hset_if_version("inventory", "widgets", 6i64, current.version).await?;
            println!("retried: widgets = 6 (version {})", retried.version);
        }
        Ok(_) => println!("no conflict this time"),
        Err(e) => return Err(e.into()),
    }

    client.hset("inventory", "gadgets", 3i64).await?;
    let mut all = client.hgetall("inventory").await?;
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, entry) in all {
        println!("  {key} = {} (version {})", entry.value, entry.version);
    }

    client.close().await;
    Ok(())
}
