//! Shared test harness: a real bubble-server on loopback with a bubble file in a temp dir.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use peerbubble_bubble_server::{Config, FileSource, Server};
use peerbubble_peer::SignalClient;
use peerbubble_proto::{ErrorCode, IdentityKey, MemberId, ServerFrame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

pub const WAIT: Duration = Duration::from_secs(10);

pub fn key(seed: u16) -> IdentityKey {
    let mut bytes = [7u8; 32];
    bytes[..2].copy_from_slice(&seed.to_be_bytes());
    IdentityKey::from_seed(&bytes)
}

pub fn id(seed: u16) -> MemberId {
    key(seed).public_key().member_id()
}

/// A member line for the bubble file.
pub fn member(seed: u16, name: &str, categories: &[&str]) -> String {
    format!(
        "  - {{public_key: {}, display_name: {name}, categories: [{}]}}\n",
        key(seed).public_key(),
        categories.join(", ")
    )
}

pub struct Bubble {
    pub dir: tempfile::TempDir,
    pub server: Option<Server>,
    pub config: Config,
}

impl Bubble {
    pub fn file(&self) -> PathBuf {
        self.dir.path().join("bubble.yaml")
    }

    pub fn write(&self, yaml: &str) {
        // Write-and-rename, as editors and Kubernetes do.
        let tmp = self.dir.path().join("bubble.yaml.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.file()).unwrap();
    }

    pub async fn start(yaml: &str, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_in(yaml, |config, _| tweak(config)).await
    }

    /// Like [`Bubble::start`], with the bubble's temp dir given to `tweak` (for files the server keeps).
    pub async fn start_in(yaml: &str, tweak: impl FnOnce(&mut Config, &std::path::Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            bubble_file: dir.path().join("bubble.yaml"),
            reload_interval: Duration::from_millis(50),
            ..Config::default()
        };
        tweak(&mut config, dir.path());
        let mut bubble = Self { dir, server: None, config };
        bubble.write(yaml);
        bubble.restart().await;
        bubble
    }

    pub async fn restart(&mut self) {
        let server = Server::start(self.config.clone(), FileSource::new(self.file(), self.config.reload_interval))
            .await
            .unwrap();
        tokio::time::timeout(WAIT, server.ready()).await.unwrap();
        // Later restarts come back on the same port, as a restarted pod behind its Service would.
        self.config.listen = server.local_addr();
        self.server = Some(server);
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().unwrap().local_addr()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/signal", self.addr())
    }

    pub async fn connect(&self, seed: u16) -> SignalClient {
        SignalClient::connect(&self.url(), &key(seed)).await.unwrap_or_else(|e| panic!("member {seed}: {e}"))
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }

    pub fn metrics(&self) -> String {
        self.server.as_ref().unwrap().metrics_text()
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr()).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        (status, body)
    }
}

/// Reads frames until one matches, failing on timeout or close.
pub async fn expect<T>(client: &mut SignalClient, what: &str, mut pick: impl FnMut(&ServerFrame) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_timeout(left).await {
            Ok(frame) => {
                if let Some(found) = pick(&frame) {
                    return found;
                }
            }
            Err(err) => panic!("waiting for {what}: {err}"),
        }
    }
}

/// Reads frames until an error frame arrives and returns its code.
pub async fn expect_error(client: &mut SignalClient) -> ErrorCode {
    expect(client, "an error", |f| match f {
        ServerFrame::Error { code, .. } => Some(*code),
        _ => None,
    })
    .await
}

/// The next frame must be this member's presence change.
pub async fn expect_presence(client: &mut SignalClient) -> (MemberId, bool) {
    expect(client, "presence", |f| match f {
        ServerFrame::Presence { member, online } => Some((*member, *online)),
        _ => None,
    })
    .await
}

/// Reads until the connection closes; returns the close code and the last error code seen.
pub async fn expect_closed(client: &mut SignalClient) -> (Option<u16>, Option<ErrorCode>) {
    let mut last = None;
    loop {
        match client.next_timeout(WAIT).await {
            Ok(ServerFrame::Error { code, .. }) => last = Some(code),
            Ok(_) => {}
            Err(peerbubble_peer::ClientError::Closed(code)) => return (code, last),
            Err(err) => panic!("waiting for close: {err}"),
        }
    }
}
