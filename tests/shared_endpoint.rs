//! Many clients on one `ClientEndpoint`: over QUIC one UDP socket carries all their connections; each
//! client still has a connection of its own, rebinding moves them all, closing one leaves the others
//! working, and a client made without connecting connects on first use.

#[macro_use]
mod common;

use common::TestServer;
use futures_util::future::join_all;
use qkv::client::{Client, ClientEndpoint};
use qkv::transport::Transport;

async fn clients_on(endpoint: &ClientEndpoint, n: usize) -> Vec<Client> {
    join_all((0..n).map(|_| endpoint.connect())).await.into_iter().map(Result::unwrap).collect()
}

async fn every_client_works(clients: &[Client], key: &str) {
    let writes = clients.iter().enumerate().map(|(i, c)| c.hset("t", key, format!("{i}")));
    for (i, written) in join_all(writes).await.into_iter().enumerate() {
        written.unwrap_or_else(|e| panic!("client {i}: {e}"));
    }
}

#[tokio::test]
async fn quic_clients_on_one_endpoint_share_its_socket_with_a_connection_each() {
    let server = TestServer::start().await;
    let endpoint = ClientEndpoint::new(server.client_config()).await.unwrap();
    let clients = clients_on(&endpoint, 8).await;
    every_client_works(&clients, "k").await;
    let socket = endpoint.local_address().expect("a QUIC endpoint has a socket");
    for client in &clients {
        assert_eq!(client.local_address(), Some(socket), "one socket for all");
        assert_eq!(client.stats().connections, 1, "a connection of its own, made once");
    }
}

#[tokio::test]
async fn rebinding_a_shared_endpoint_moves_every_client_on_it() {
    let server = TestServer::start().await;
    let endpoint = ClientEndpoint::new(server.client_config()).await.unwrap();
    let clients = clients_on(&endpoint, 4).await;
    let before = endpoint.local_address();
    // Through one client, as an app's network-change callback would: all of them move.
    clients[0].rebind().unwrap();
    let after = endpoint.local_address();
    assert_ne!(after, before, "the endpoint moved to a new socket");
    every_client_works(&clients, "after the first move").await;
    endpoint.rebind().unwrap();
    every_client_works(&clients, "after the second move").await;
    for client in &clients {
        assert_eq!(client.local_address(), endpoint.local_address());
        assert_eq!(client.stats().connections, 1, "the connection migrated, none was made anew");
    }
}

#[tokio::test]
async fn closing_one_client_of_a_shared_endpoint_leaves_the_others_working() {
    let server = TestServer::start().await;
    let endpoint = ClientEndpoint::new(server.client_config()).await.unwrap();
    let clients = clients_on(&endpoint, 3).await;
    // Returns without waiting for the endpoint, which the other clients keep busy.
    clients[0].close().await;
    assert!(matches!(clients[0].ping("").await, Err(qkv::client::ClientError::Closed)));
    every_client_works(&clients[1..], "k").await;
    join_all(clients[1..].iter().map(Client::close)).await;
    // Every connection has been closed: the endpoint falls idle.
    endpoint.wait_idle().await;
}

async fn tcp_clients_from_one_endpoint_have_connections_of_their_own(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let endpoint = ClientEndpoint::new(server.client_config()).await.unwrap();
    assert_eq!(endpoint.local_address(), None, "no UDP socket to share over TCP");
    let clients = clients_on(&endpoint, 3).await;
    every_client_works(&clients, "k").await;
    clients[0].close().await;
    every_client_works(&clients[1..], "k").await;
    join_all(clients[1..].iter().map(Client::close)).await;
    endpoint.wait_idle().await;
}

transport_tests!(tcp: tls, tcp => tcp_clients_from_one_endpoint_have_connections_of_their_own);

/// `ClientEndpoint::client` makes a client that connects when first used: none before, one after.
async fn a_client_made_without_connecting_connects_on_first_use(transport: Transport) {
    let server = TestServer::start_for(transport).await;
    let endpoint = ClientEndpoint::new(server.client_config()).await.unwrap();
    let client = endpoint.client();
    assert_eq!(client.stats().connections, 0, "nothing connected before the first call");
    client.hset("t", "k", "v").await.unwrap();
    assert!(client.hget("t", "k").await.unwrap().is_some());
    assert_eq!(client.stats().connections, 1, "one connection, made by the first call");
    client.close().await;
}

transport_tests!(lazy: quic, tls, tcp, http, grpc, grpc_pipeline => a_client_made_without_connecting_connects_on_first_use);
