//! The Raspberry Pi build, run here under Debian's qemu-user: the aarch64 `peerbubble` taken out of its Debian
//! package (`cargo xtask test` builds both and sets `PEERBUBBLE_AARCH64_BIN`) starts `up`, answers `/readyz`,
//! and members enrolled with this machine's own `peerbubble enroll` connect to it and see each other.
//! The figures printed are emulated (an x86_64 core pretending to be an ARM one), recorded, not targets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::time::{Duration, Instant};

use peerbubble_peer::SignalClient;
use peerbubble_proto::ServerFrame;

mod support;

use support::{MicroNode, enroll, read_key};

#[tokio::test]
#[ignore = "needs the aarch64 build: run by `cargo xtask test` (PEERBUBBLE_AARCH64_BIN)"]
async fn the_aarch64_micro_node_serves_members_under_qemu() {
    let binary = std::env::var_os("PEERBUBBLE_AARCH64_BIN")
        .expect("PEERBUBBLE_AARCH64_BIN names the aarch64 peerbubble (cargo xtask test sets it)");
    let binary = std::path::PathBuf::from(binary);
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let node = MicroNode::start(
        "qemu-aarch64".as_ref(),
        &[binary.to_str().unwrap()],
        &[("QEMU_LD_PREFIX", "/usr/aarch64-linux-gnu")],
        data.path(),
    )
    .await;
    let (url, api) = (node.field("signaling"), node.field("admin API"));
    let ready = loop {
        match reqwest::get(format!("{api}/readyz")).await {
            Ok(res) if res.status().is_success() => break started.elapsed(),
            _ if started.elapsed() > Duration::from_secs(60) => panic!("no /readyz within 60 s: {:?}", node.banner),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let links = node.invite_links();
    assert_eq!(links.len(), 3, "{:?}", node.banner);

    let keys = tempfile::tempdir().unwrap();
    let (alice_key, carol_key) = (keys.path().join("alice.key"), keys.path().join("carol.key"));
    enroll(&api, &links[0], &alice_key);
    enroll(&api, &links[2], &carol_key);
    let connected = Instant::now();
    let mut alice = loop {
        match SignalClient::connect(&url, &read_key(&alice_key)).await {
            Ok(client) => break client,
            Err(_) if connected.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("alice cannot connect to the emulated micro-node: {err}"),
        }
    };
    let mut carol = SignalClient::connect(&url, &read_key(&carol_key)).await.unwrap();
    // Alice sees Carol (command sees the field team), then relays an envelope to her through the emulated server.
    while alice.display_names() != ["Carol (command)"] {
        alice.next_timeout(Duration::from_secs(30)).await.unwrap();
    }
    alice.send(carol.member(), b"opaque ciphertext").await.unwrap();
    let body = loop {
        if let ServerFrame::Deliver { body, .. } = carol.next_timeout(Duration::from_secs(30)).await.unwrap() {
            break body.to_bytes();
        }
    };
    assert_eq!(&body[..], b"opaque ciphertext");
    let binary_mb = std::fs::metadata(&binary).unwrap().len() as f64 / 1e6;
    println!("aarch64 under qemu-user (emulated): ready_ms={} binary_mb={binary_mb:.1}", ready.as_millis());
    let exit = node.stop().await;
    assert!(exit.success(), "{exit}");
}
