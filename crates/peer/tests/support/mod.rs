//! A real bubble-server on loopback, native peers, and a WebSocket tap that sits between them and the server:
//! it records every frame (what the server receives and sends) and can tamper with what it forwards, playing a
//! malicious signaling server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_bubble_server::{Config, FileSource, Server};
use peerbubble_peer::node::{Node, NodeConfig, NodeEvent};
use peerbubble_proto::{IdentityKey, MemberId};
use tokio_tungstenite::tungstenite::Message;

pub const WAIT: Duration = Duration::from_secs(20);

pub fn key(seed: u16) -> IdentityKey {
    let mut bytes = [9u8; 32];
    bytes[..2].copy_from_slice(&seed.to_be_bytes());
    IdentityKey::from_seed(&bytes)
}

pub fn id(seed: u16) -> MemberId {
    key(seed).public_key().member_id()
}

/// A bubble where members `1..=n` share one category.
pub fn yaml(n: u16) -> String {
    let mut yaml = String::from("bubble: e2e\ncategories:\n  - {id: team}\nmembers:\n");
    for seed in 1..=n {
        yaml += &format!("  - {{public_key: {}, display_name: m{seed}, categories: [team]}}\n", key(seed).public_key());
    }
    yaml
}

pub struct Bubble {
    pub dir: tempfile::TempDir,
    pub server: Option<Server>,
    pub config: Config,
}

impl Bubble {
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("bubble.yaml"), yaml).unwrap();
        let config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bubble_file: dir.path().join("bubble.yaml"),
            reload_interval: Duration::from_millis(100),
            ..Config::default()
        };
        let mut bubble = Self { dir, server: None, config };
        bubble.restart().await;
        bubble
    }

    pub async fn restart(&mut self) {
        let source = FileSource::new(self.config.bubble_file.clone(), self.config.reload_interval);
        let server = Server::start(self.config.clone(), source).await.unwrap();
        tokio::time::timeout(WAIT, server.ready()).await.unwrap();
        self.config.listen = server.local_addr();
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/signal", self.config.listen)
    }

    pub fn metrics(&self) -> String {
        self.server.as_ref().unwrap().metrics_text()
    }
}

pub async fn node(url: &str, seed: u16, tweak: impl FnOnce(&mut NodeConfig)) -> Node {
    let mut config = NodeConfig::new(url);
    // Tests stay on loopback.
    config.bind = vec![SocketAddr::from(([127, 0, 0, 1], 0))];
    tweak(&mut config);
    Node::start(config, key(seed)).await.unwrap_or_else(|e| panic!("member {seed}: {e}"))
}

/// Waits for a matching event or fails with `what`.
pub async fn wait(node: &mut Node, what: &'static str, pred: impl FnMut(&NodeEvent) -> bool) -> NodeEvent {
    node.wait_for(what, WAIT, pred).await.unwrap_or_else(|e| panic!("member {}: {e}", node.member()))
}

/// Captures, at trace level, the logs of the bubble-server and of our own client code in this process (with the
/// server's own redactions of the WebSocket layer), for canary checks.
pub fn capture_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let mut filter = tracing_subscriber::EnvFilter::new(
            "info,peerbubble_bubble_server=trace,peerbubble_turn=trace,peerbubble_peer=trace,peerbubble_client_core=trace,axum=trace,tower=trace",
        );
        for directive in peerbubble_bubble_server::LOG_REDACTIONS {
            filter = filter.add_directive(directive.parse().unwrap());
        }
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || LogWriter(sink.clone()))
            .init();
        buffer
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Which way a frame went through the tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToServer,
    ToClient,
}

type Mutator = Box<dyn Fn(Dir, &str) -> Vec<String> + Send + Sync>;

/// A WebSocket man-in-the-middle on loopback in front of the bubble-server.
pub struct Tap {
    pub addr: SocketAddr,
    pub frames: Arc<Mutex<Vec<(Dir, String)>>>,
    pub active: Arc<AtomicBool>,
    mutator: Arc<Mutex<Option<Mutator>>>,
}

impl Tap {
    pub async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let active = Arc::new(AtomicBool::new(false));
        let mutator: Arc<Mutex<Option<Mutator>>> = Arc::new(Mutex::new(None));
        let (f, a, m) = (frames.clone(), active.clone(), mutator.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (f, a, m, upstream) = (f.clone(), a.clone(), m.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(client) = tokio_tungstenite::accept_async(stream).await else { return };
                    let Ok((server, _)) = tokio_tungstenite::connect_async(&upstream).await else { return };
                    let (mut client_tx, mut client_rx) = client.split();
                    let (mut server_tx, mut server_rx) = server.split();
                    let forward = |dir: Dir, text: &str| -> Vec<String> {
                        f.lock().unwrap().push((dir, text.to_owned()));
                        match (a.load(Ordering::SeqCst), m.lock().unwrap().as_ref()) {
                            (true, Some(mutate)) => mutate(dir, text),
                            _ => vec![text.to_owned()],
                        }
                    };
                    loop {
                        tokio::select! {
                            msg = client_rx.next() => match msg {
                                Some(Ok(Message::Text(t))) => {
                                    for out in forward(Dir::ToServer, &t) {
                                        if server_tx.send(Message::text(out)).await.is_err() { return; }
                                    }
                                }
                                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { let _ = server_tx.close().await; return; }
                                Some(Ok(_)) => {}
                            },
                            msg = server_rx.next() => match msg {
                                Some(Ok(Message::Text(t))) => {
                                    for out in forward(Dir::ToClient, &t) {
                                        if client_tx.send(Message::text(out)).await.is_err() { return; }
                                    }
                                }
                                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => { let _ = client_tx.close().await; return; }
                                Some(Ok(_)) => {}
                            },
                        }
                    }
                });
            }
        });
        Self { addr, frames, active, mutator }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/signal", self.addr)
    }

    /// What the tap forwards instead of each frame while active.
    pub fn set_mutator(&self, mutate: impl Fn(Dir, &str) -> Vec<String> + Send + Sync + 'static) {
        *self.mutator.lock().unwrap() = Some(Box::new(mutate));
    }

    pub fn activate(&self, on: bool) {
        self.active.store(on, Ordering::SeqCst);
    }

    /// Every envelope body the server relayed (decoded from base64url), and every raw frame.
    pub fn bodies(&self) -> Vec<Vec<u8>> {
        self.frames
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, text)| {
                let v: serde_json::Value = serde_json::from_str(text).ok()?;
                let body = v.get("body")?.as_str()?.to_owned();
                String::try_into(body).ok().map(|o: peerbubble_proto::Opaque| o.to_bytes())
            })
            .collect()
    }

    pub fn raw(&self) -> String {
        self.frames.lock().unwrap().iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>().join("\n")
    }
}

/// Flips one bit in the body of every `deliver` frame.
pub fn tamper_deliver(dir: Dir, text: &str) -> Vec<String> {
    if dir != Dir::ToClient {
        return vec![text.to_owned()];
    }
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) else { return vec![text.to_owned()] };
    if v["type"] != "deliver" {
        return vec![text.to_owned()];
    }
    let body: peerbubble_proto::Opaque = String::try_into(v["body"].as_str().unwrap().to_owned()).unwrap();
    let mut bytes = body.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    v["body"] = serde_json::Value::String(peerbubble_proto::Opaque::from_bytes(&bytes).unwrap().into());
    vec![v.to_string()]
}
