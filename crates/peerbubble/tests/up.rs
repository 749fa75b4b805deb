//! `peerbubble up` as a newcomer runs it (through `cargo xtask run`): starts with no configuration, prints how to
//! connect, serves the demo bubble, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use peerbubble_peer::SignalClient;
use peerbubble_proto::IdentityKey;

#[tokio::test]
async fn up_serves_the_demo_bubble_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerbubble"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The banner names the signaling URL (with the port actually bound).
    let stdout = child.stdout.take().unwrap();
    let url = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines
            .find_map(|l| l.ok().and_then(|l| l.trim().strip_prefix("signaling").map(|u| u.trim().to_owned())))
            .expect("no signaling URL printed")
    })
    .await
    .unwrap();
    assert!(url.starts_with("ws://127.0.0.1:") && url.ends_with("/v1/signal"), "{url}");

    let alice = std::fs::read_to_string(data.path().join("demo-keys/alice.key")).unwrap();
    let alice = IdentityKey::from_seed_base64(&alice).unwrap();
    let client =
        tokio::time::timeout(Duration::from_secs(10), SignalClient::connect(&url, &alice)).await.unwrap().unwrap();
    let mut names: Vec<_> = client.directory().values().map(|e| e.display_name.clone()).collect();
    names.sort();
    assert_eq!(names, ["Bob (field team)", "Carol (command)"]);

    // SIGTERM: the server tells clients to reconnect and exits successfully.
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let mut client = client;
    let notice = client.next_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(matches!(
        notice,
        peerbubble_proto::ServerFrame::Error { code: peerbubble_proto::ErrorCode::ServerShutdown, .. }
    ));
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit}");
}
