//! `cargo xtask bench mailbox`: the offline mailbox against live relaying, same server, same run.
//!
//! One bubble-server (in this process, on loopback, with its SQLite mailbox in a temp dir) and two members. Ann
//! sends N envelopes to Bob while he is away (each acknowledged only once on disk: `keep_per_s`); Bob connects and
//! reads the N back (`drain_per_s`, from his `auth` to the last kept envelope); then, Bob online, Ann sends N more
//! live and Bob reads them (`live_per_s`, the baseline). Ann keeps a window of frames in flight in both cases.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerbubble_bubble_server::{Config, FileSource, MailboxConfig, Server};
use peerbubble_peer::SignalClient;
use peerbubble_proto::{ClientFrame, IdentityKey, ServerFrame};

const WINDOW: usize = 64;

fn key(n: u8) -> IdentityKey {
    IdentityKey::from_seed(&[n; 32])
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Sends `n` envelopes of `bytes` to `to` with `WINDOW` in flight; returns how many were acknowledged as stored.
async fn send_all(ann: &mut SignalClient, to: peerbubble_proto::MemberId, n: usize, bytes: usize) -> usize {
    let body = vec![0x5a; bytes];
    let (mut sent, mut acked, mut stored) = (0, 0, 0);
    while acked < n {
        while sent < n && sent - acked < WINDOW {
            ann.send(to, &body).await.unwrap();
            sent += 1;
        }
        match ann.next_timeout(Duration::from_secs(30)).await.unwrap() {
            ServerFrame::Ack { stored: s, .. } => {
                acked += 1;
                stored += s as usize;
            }
            ServerFrame::Error { code, message, .. } => panic!("refused: {code:?} {message}"),
            _ => {}
        }
    }
    stored
}

/// Reads until `n` deliveries arrived; returns the last mailbox seq seen.
async fn read_all(bob: &mut SignalClient, n: usize) -> Option<u64> {
    let (mut got, mut last) = (0, None);
    while got < n {
        if let ServerFrame::Deliver { seq, .. } = bob.next_timeout(Duration::from_secs(30)).await.unwrap() {
            got += 1;
            last = seq.or(last);
        }
    }
    last
}

#[tokio::main]
async fn main() {
    let n = arg("--envelopes", 10_000);
    let bytes = arg("--bytes", 512);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "bubble: bench\ncategories:\n  - {{id: team}}\nmembers:\n  - {{public_key: {}, display_name: Ann, categories: [team]}}\n  - {{public_key: {}, display_name: Bob, categories: [team]}}\n",
        key(1).public_key(),
        key(2).public_key()
    );
    std::fs::write(dir.path().join("bubble.yaml"), yaml).unwrap();
    let mut mailbox = MailboxConfig::at(dir.path().join("mailbox.sqlite"));
    mailbox.member_entries = n.max(20_000);
    mailbox.member_bytes = (n * (bytes * 2 + 256)).max(16 << 20);
    mailbox.total_bytes = mailbox.member_bytes;
    let config = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        bubble_file: dir.path().join("bubble.yaml"),
        // The rate limits protect a bubble from a member; here one member is the load.
        frames_per_second: 1_000_000,
        frame_burst: 1_000_000,
        member_frames_per_second: 1_000_000,
        send_queue_bytes: 64 << 20,
        mailbox: Some(mailbox),
        ..Config::default()
    };
    let server = Server::start(config.clone(), FileSource::new(dir.path().join("bubble.yaml"), Duration::from_secs(1)))
        .await
        .unwrap();
    server.ready().await;
    let url = format!("ws://{}/v1/signal", server.local_addr());
    let bob_id = key(2).public_key().member_id();
    let mut ann = SignalClient::connect(&url, &key(1)).await.unwrap();

    let started = Instant::now();
    let stored = send_all(&mut ann, bob_id, n, bytes).await;
    let keep_s = started.elapsed().as_secs_f64();
    assert_eq!(stored, n, "every envelope kept");

    let started = Instant::now();
    let mut bob = SignalClient::connect(&url, &key(2)).await.unwrap();
    let last = read_all(&mut bob, n).await.expect("kept envelopes carry a seq");
    let drain_s = started.elapsed().as_secs_f64();
    bob.send_frame(&ClientFrame::Received { upto: last }).await.unwrap();

    let started = Instant::now();
    let (stored, _) = tokio::join!(send_all(&mut ann, bob_id, n, bytes), read_all(&mut bob, n));
    let live_s = started.elapsed().as_secs_f64();
    assert_eq!(stored, 0, "live envelopes are not kept");

    let deadline = Instant::now() + Duration::from_secs(30);
    while server.mailbox().map_or(0, |c| c.entries) > 0 {
        assert!(Instant::now() < deadline, "the acknowledged backlog was not deleted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (keep, drain, live) = (n as f64 / keep_s, n as f64 / drain_s, n as f64 / live_s);
    println!("envelopes={n} bytes={bytes} keep={keep_s:.3}s drain={drain_s:.3}s live={live_s:.3}s");
    println!(
        "bench mailbox: keep_per_s={keep:.0} drain_per_s={drain:.0} live_per_s={live:.0} drain_ratio={:.2} keep_ratio={:.2}",
        drain / live,
        keep / live
    );
    server.shutdown().await.unwrap();
}
