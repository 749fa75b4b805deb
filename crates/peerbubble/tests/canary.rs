//! DESIGN.md invariants 1-2 on the whole micro-node: a unique canary sent between two members reaches the other
//! member, and never the database or the logs (at trace level), in clear or in its wire (base64url) form.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use peerbubble_peer::SignalClient;
use peerbubble_proto::{IdentityKey, Opaque, ServerFrame};

#[tokio::test]
async fn canary_never_reaches_database_or_logs() {
    let data = tempfile::tempdir().unwrap();
    let log_path = data.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_peerbubble"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--turn-port",
            "0",
            "--turn-tls-port",
            "0",
            "--data-dir",
        ])
        .arg(data.path())
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner: Vec<String> = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take_while(|l| !l.starts_with("Stop with Ctrl-C"))
            .collect()
    })
    .await
    .unwrap();
    let field = |label: &str| {
        banner
            .iter()
            .find_map(|l| l.trim().strip_prefix(label).and_then(|r| r.split_whitespace().next()).map(str::to_owned))
            .unwrap()
    };
    let (url, api) = (field("signaling"), field("admin API"));
    let mut links: Vec<&str> = Vec::new();
    for word in banner.iter().flat_map(|l| l.split_whitespace()).map(|w| w.trim_matches('\'')) {
        if word.contains("/enroll#") && !links.contains(&word) {
            links.push(word);
        }
    }
    let keys = tempfile::tempdir().unwrap();
    let mut members = Vec::new();
    for (i, link) in links.iter().take(2).enumerate() {
        let path = keys.path().join(format!("{i}.key"));
        let out = Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .args(["enroll", "--api", &api, "--invite", link, "--key-out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        members.push(IdentityKey::from_seed_base64(&std::fs::read_to_string(&path).unwrap()).unwrap());
    }
    let connect = |key: &IdentityKey| {
        let (url, key) = (url.clone(), IdentityKey::from_seed(&key.to_seed()));
        async move {
            loop {
                match SignalClient::connect(&url, &key).await {
                    Ok(c) if !c.directory().is_empty() => return c,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    };
    let mut alice = connect(&members[0]).await;
    let mut bob = connect(&members[1]).await;
    let canary = b"CANARY-e2c4-9f1b-the-plaintext-no-server-may-see";
    alice.send(bob.member(), canary).await.unwrap();
    let got = loop {
        if let ServerFrame::Deliver { body, .. } = bob.next_timeout(Duration::from_secs(10)).await.unwrap() {
            break body.to_bytes();
        }
    };
    assert_eq!(got, canary);
    let _ = alice.ping().await;

    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    assert!(child.wait().unwrap().success());

    let wire = String::from(Opaque::from_bytes(canary).unwrap());
    let logs = std::fs::read_to_string(&log_path).unwrap();
    let mut database = Vec::new();
    for entry in std::fs::read_dir(data.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("admin.db")) {
            database.extend(std::fs::read(path).unwrap());
        }
    }
    // The checks can fail: the logs are at trace level and the database holds the members' keys.
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "verbose logs were captured");
    let db_text = String::from_utf8_lossy(&database);
    assert!(db_text.contains(&members[0].public_key().to_string()), "the database was read");
    for needle in [std::str::from_utf8(canary).unwrap(), wire.as_str(), "CANARY"] {
        assert!(!logs.contains(needle), "{needle} reached the logs");
        assert!(!db_text.contains(needle), "{needle} reached the database");
    }
    // Nor does any member's secret key.
    for key in &members {
        assert!(!db_text.contains(key.to_seed_base64().as_str()) && !logs.contains(key.to_seed_base64().as_str()));
    }
}
