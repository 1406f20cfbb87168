//! A UDP relay between one QUIC client and a server, for what a real path does to packets: it can go
//! silent (a dead radio link), change the source address the server sees (a NAT rebinding), and record
//! the client's datagrams so that a test can replay them as an attacker would.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

pub struct UdpRelay {
    /// Where the client connects.
    pub addr: SocketAddr,
    server: SocketAddr,
    controls: watch::Sender<Controls>,
    recording: Arc<Mutex<Option<Vec<Bytes>>>>,
    /// Notified whenever a datagram is recorded.
    recorded: Arc<Notify>,
    task: JoinHandle<()>,
}

#[derive(Clone, Copy, Default)]
struct Controls {
    /// Drop everything, both ways.
    silent: bool,
    /// Drop what the server sends.
    downstream_silent: bool,
    /// Bumped to make the relay send to the server from a new socket (a new source port).
    upstream_generation: u32,
}

impl UdpRelay {
    pub async fn start(server: SocketAddr) -> Self {
        let downstream = UdpSocket::bind("127.0.0.1:0").await.expect("relay socket");
        let addr = downstream.local_addr().expect("relay address");
        let (controls, watched) = watch::channel(Controls::default());
        let recording: Arc<Mutex<Option<Vec<Bytes>>>> = Arc::default();
        let recorded = Arc::new(Notify::new());
        let task = tokio::spawn(relay(downstream, server, watched, recording.clone(), recorded.clone()));
        UdpRelay { addr, server, controls, recording, recorded, task }
    }

    /// Drops every datagram both ways while `silent`.
    pub fn set_silent(&self, silent: bool) {
        self.controls.send_modify(|c| c.silent = silent);
    }

    /// Drops every datagram from the server to the client while `silent`.
    pub fn set_downstream_silent(&self, silent: bool) {
        self.controls.send_modify(|c| c.downstream_silent = silent);
    }

    /// Waits until the client has sent a datagram (since `start_recording`) for which `wanted` holds.
    pub async fn wait_for_datagram(&self, wanted: impl Fn(&[u8]) -> bool) {
        loop {
            let recorded = self.recorded.notified();
            if self.recording.lock().as_ref().is_some_and(|all| all.iter().any(|d| wanted(d))) {
                return;
            }
            recorded.await;
        }
    }

    /// From now on the server sees the client at a new address, as after a NAT rebinding.
    pub fn rebind_upstream(&self) {
        self.controls.send_modify(|c| c.upstream_generation += 1);
    }

    /// Starts keeping a copy of every datagram the client sends.
    pub fn start_recording(&self) {
        *self.recording.lock() = Some(Vec::new());
    }

    /// The datagrams the client sent since `start_recording`.
    pub fn take_recording(&self) -> Vec<Bytes> {
        self.recording.lock().take().unwrap_or_default()
    }

    /// Sends `datagrams` to the server from a new address, as an attacker replaying captured traffic
    /// would, and returns the socket they came from (what the server answers arrives there).
    pub async fn replay(&self, datagrams: &[Bytes]) -> UdpSocket {
        let attacker = UdpSocket::bind("127.0.0.1:0").await.expect("attacker socket");
        for datagram in datagrams {
            attacker.send_to(datagram, self.server).await.expect("replay");
        }
        attacker
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    downstream: UdpSocket,
    server: SocketAddr,
    mut controls: watch::Receiver<Controls>,
    recording: Arc<Mutex<Option<Vec<Bytes>>>>,
    recorded: Arc<Notify>,
) {
    let upstream_socket = || async {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("relay upstream socket");
        socket.connect(server).await.expect("relay upstream connect");
        socket
    };
    let mut upstream = upstream_socket().await;
    let mut generation = 0;
    let mut client: Option<SocketAddr> = None;
    let (mut from_client, mut from_server) = (vec![0u8; 65536], vec![0u8; 65536]);
    loop {
        tokio::select! {
            changed = controls.changed() => {
                if changed.is_err() {
                    return;
                }
                let wanted = controls.borrow().upstream_generation;
                if wanted != generation {
                    generation = wanted;
                    upstream = upstream_socket().await;
                }
            }
            received = downstream.recv_from(&mut from_client) => {
                let Ok((len, peer)) = received else { return };
                client = Some(peer);
                if let Some(datagrams) = recording.lock().as_mut() {
                    datagrams.push(Bytes::copy_from_slice(&from_client[..len]));
                    recorded.notify_waiters();
                }
                let silent = controls.borrow().silent;
                if !silent {
                    let _ = upstream.send(&from_client[..len]).await;
                }
            }
            received = upstream.recv(&mut from_server) => {
                let Ok(len) = received else { return };
                let Controls { silent, downstream_silent, .. } = *controls.borrow();
                let silent = silent || downstream_silent;
                if let (Some(client), false) = (client, silent) {
                    let _ = downstream.send_to(&from_server[..len], client).await;
                }
            }
        }
    }
}
