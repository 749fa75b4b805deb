//! `cargo xtask bench e2ee`: the cost of end-to-end encryption.
//!
//! - msg_us: MLS encrypt + decrypt of one chat message between two client-core clients in this process (each
//!   text is answered by an automatic delivery receipt, so 2 N messages are timed and the figure is per
//!   message; `--message-bytes`, default 96; `--messages-only` stops there, for `bench browser`).
//! - file_mb_s vs raw_mb_s, same run, same machine, same message size: a file sent between two native peers
//!   (real bubble-server on loopback, real webrtc-rs DataChannel, chunks AEAD-encrypted under an MLS-exported
//!   key, MLS-encrypted acknowledgements, SHA-256 verified, written to disk) against the same number of bytes
//!   over a raw DataChannel between two bare RTCPeerConnections, no crypto: raw_mb_s is the faster of pushing
//!   as fast as the channel's backpressure allows and pacing with the transfer's own window and acks. Timed
//!   from the receiver's accept to the file being saved (hashing the file before offering it is not counted).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::time::{Duration, Instant};

use peerbubble_client_core::Event;
use peerbubble_client_core::files::DEFAULT_CHUNK_SIZE;
use peerbubble_peer::node::NodeEvent;
use peerbubble_peer::rtc::{RtcConfig, RtcEvent, RtcPeer};

/// The bubble-server and node harness of the integration tests.
#[path = "../tests/support/mod.rs"]
mod support;

const WAIT: Duration = Duration::from_secs(120);

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `bench::message_cost` with this process's clock (the browser bench runs the same code in wasm).
fn message_cost(n: u64, bytes: usize) -> f64 {
    let start = Instant::now();
    let mut clock = || start.elapsed().as_secs_f64() * 1000.0;
    peerbubble_client_core::bench::message_cost(n as u32, bytes, &mut clock).expect("messages flow")
}

/// `window`: 0 sends as fast as the DataChannel's backpressure allows; otherwise at most `window` messages are
/// unacknowledged, the receiver acknowledging every 16 (the file transfer's flow control, without its crypto).
async fn raw_throughput(bytes: usize, message: usize, window: usize) -> f64 {
    let (a, mut a_events) = RtcPeer::new(RtcConfig::default()).await.unwrap();
    let (b, mut b_events) = RtcPeer::new(RtcConfig::default()).await.unwrap();
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer, &a.local_fingerprint()).await.unwrap();
    a.accept_answer(&answer, &b.local_fingerprint()).await.unwrap();
    for events in [&mut a_events, &mut b_events] {
        loop {
            match tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap() {
                RtcEvent::ChannelOpen => break,
                RtcEvent::Failed(e) => panic!("{e}"),
                _ => {}
            }
        }
    }
    let chunk = vec![0x5a; message];
    let receiver = tokio::spawn(async move {
        let (mut got, mut count) = (0usize, 0u32);
        while got < bytes {
            match b_events.recv().await {
                Some(RtcEvent::Message(m)) => {
                    got += m.len();
                    count += 1;
                    if window > 0 && (count % 16 == 0 || got >= bytes) {
                        b.send(&count.to_be_bytes()).await.unwrap();
                    }
                }
                Some(RtcEvent::Failed(e)) => panic!("{e}"),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        (Instant::now(), b)
    });
    let start = Instant::now();
    let (mut sent, mut messages, mut acked) = (0, 0u32, 0u32);
    while sent < bytes {
        while window > 0 && (messages - acked) as usize >= window {
            match a_events.recv().await {
                Some(RtcEvent::Message(m)) => acked = u32::from_be_bytes(m[..4].try_into().unwrap()),
                Some(RtcEvent::Failed(e)) => panic!("{e}"),
                Some(_) => {}
                None => panic!("closed"),
            }
        }
        let n = message.min(bytes - sent);
        a.send(&chunk[..n]).await.unwrap();
        sent += n;
        messages += 1;
    }
    let (end, b) = receiver.await.unwrap();
    a.close().await;
    b.close().await;
    bytes as f64 / 1e6 / (end - start).as_secs_f64()
}

async fn encrypted_throughput(bytes: usize) -> f64 {
    let mut bubble = support::Bubble::start(&support::yaml(2)).await;
    let url = bubble.url();
    // Member `a` has the lower id, so it calls; both bind loopback only, as the raw pair.
    let (a, b) = if support::id(1) < support::id(2) { (1, 2) } else { (2, 1) };
    let downloads = bubble.dir.path().join("in");
    std::fs::create_dir(&downloads).unwrap();
    let mut alice = support::node(&url, a, |_| {}).await;
    let mut bob = support::node(&url, b, |c| c.download_dir = Some(downloads)).await;
    alice.start_direct(support::id(b)).await.unwrap();
    alice.wait_for("channel", WAIT, |e| matches!(e, NodeEvent::ChannelOpen(_))).await.unwrap();
    bob.wait_for("channel", WAIT, |e| matches!(e, NodeEvent::ChannelOpen(_))).await.unwrap();
    let source = bubble.dir.path().join("payload.bin");
    std::fs::write(&source, vec![0xa5u8; bytes]).unwrap();
    alice.send_file(support::id(b), &source).await.unwrap();
    alice.wait_for("accept", WAIT, |e| matches!(e, NodeEvent::Core(Event::FileSendable { .. }))).await.unwrap();
    let start = Instant::now();
    bob.wait_for("saved", WAIT, |e| matches!(e, NodeEvent::FileSaved { .. })).await.unwrap();
    let elapsed = start.elapsed();
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    bubble.stop().await;
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let messages = arg("--messages", 2000);
    let megabytes = arg("--megabytes", 100) as usize;
    let rounds = arg("--rounds", 3);
    let bytes = megabytes * 1024 * 1024;
    // Raw messages as large as an encrypted chunk frame (chunk + header + tag).
    let message = DEFAULT_CHUNK_SIZE as usize + peerbubble_client_core::files::FRAME_OVERHEAD;
    let message_bytes = arg("--message-bytes", 96) as usize;
    let msg_us = message_cost(messages, message_bytes);
    println!(
        "mls: {msg_us:.1} us per message (encrypt + decrypt), {messages} texts of {message_bytes} bytes and their \
         receipts"
    );
    let start = Instant::now();
    let mut clock = || start.elapsed().as_secs_f64() * 1000.0;
    let chunk = peerbubble_client_core::bench::chunk_cost(8192, &mut clock).expect("chunks move");
    println!(
        "chunk: seal {:.1} us open {:.1} us sha256 {:.1} us per 16 KiB file chunk (8192 chunks)",
        chunk.seal, chunk.open, chunk.sha256
    );
    if std::env::args().any(|a| a == "--messages-only") {
        return;
    }
    let (mut raw, mut file) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        // Alternate the order so neither side always runs on a warmer machine. The baseline is the faster of a
        // raw channel pushed as fast as backpressure allows and one paced by the transfer's own window.
        let encrypted_first = round % 2 == 0;
        let mut f = 0.0;
        if encrypted_first {
            f = encrypted_throughput(bytes).await;
        }
        let blast = raw_throughput(bytes, message, 0).await;
        let windowed = raw_throughput(bytes, message, 64).await;
        if !encrypted_first {
            f = encrypted_throughput(bytes).await;
        }
        println!(
            "round {round}: raw {blast:.1} MB/s, raw windowed {windowed:.1} MB/s, encrypted file {f:.1} MB/s \
             ({megabytes} MiB, {message}-byte messages)"
        );
        raw.push(blast.max(windowed));
        file.push(f);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (raw_mb_s, file_mb_s) = (median(&mut raw), median(&mut file));
    println!(
        "bench e2ee: msg_us={msg_us:.1} file_mb_s={file_mb_s:.1} raw_mb_s={raw_mb_s:.1} ratio={:.2}",
        file_mb_s / raw_mb_s
    );
}
