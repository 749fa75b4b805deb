//! `peerbubble up` as a newcomer runs it (through `cargo xtask run`): starts with no configuration on SQLite,
//! prints the admin API, its token and demo invites; members enroll with keys made on their side, connect,
//! see what they may see; a revoked member is dropped within seconds; SIGTERM stops everything cleanly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::Duration;

use peerbubble_peer::SignalClient;
use peerbubble_proto::{ErrorCode, ServerFrame};

mod support;

use support::{MicroNode, enroll, read_key};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn up_enrolls_serves_revokes_and_stops() {
    let data = tempfile::tempdir().unwrap();
    let node = MicroNode::start(env!("CARGO_BIN_EXE_peerbubble").as_ref(), &[], &[], data.path()).await;
    let (url, api, token) = (node.field("signaling"), node.field("admin API"), node.field("admin token"));
    // Each demo invite is printed as a browser link (and the first once more in a CLI example).
    let links = node.invite_links();
    assert_eq!(links.len(), 3, "{:?}", node.banner);

    // `peerbubble probe`, the images' health check: 200 passes, anything else fails with the status.
    let probe = |url: String| Command::new(env!("CARGO_BIN_EXE_peerbubble")).args(["probe", &url]).output().unwrap();
    assert!(probe(format!("{api}/readyz")).status.success());
    let missing = probe(format!("{api}/no-such-page"));
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"), "{missing:?}");

    let keys = tempfile::tempdir().unwrap();
    let key_file = |name: &str| keys.path().join(format!("{name}.key"));
    enroll(&api, &links[0], &key_file("alice"));
    enroll(&api, &links[2], &key_file("carol"));
    // An invite is single-use.
    let again = Command::new(env!("CARGO_BIN_EXE_peerbubble"))
        .args(["enroll", "--api", &api, "--invite", &links[0], "--key-out"])
        .arg(key_file("mallory"))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already used"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!key_file("mallory").exists(), "a refused enrollment keeps no key");

    let read = |name: &str| read_key(&key_file(name));
    let alice = read("alice");
    // The embedded bubble-server picks enrollments up from the store within its interval.
    let mut client = loop {
        match SignalClient::connect(&url, &alice).await {
            Ok(client) => break client,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // Alice may have been picked up by a poll that came before Carol's enrollment: the next one brings Carol.
    while client.display_names().is_empty() {
        client.next_timeout(WAIT).await.unwrap();
    }
    assert_eq!(client.display_names(), ["Carol (command)"]);
    enroll(&api, &links[1], &key_file("bob"));
    loop {
        if let ServerFrame::Directory { .. } = client.next_timeout(WAIT).await.unwrap()
            && client.display_names() == ["Bob (field team)", "Carol (command)"]
        {
            break;
        }
    }

    // Revocation: the admin revokes Alice; her session is closed within seconds.
    let member = alice.public_key().member_id();
    let status = reqwest::Client::new()
        .post(format!("{api}/api/v1/bubbles/demo/members/{member}/revoke"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 204);
    let code = loop {
        match client.next_timeout(WAIT).await {
            Ok(ServerFrame::Error { code, .. }) => break code,
            Ok(_) => {}
            Err(err) => panic!("{err}"),
        }
    };
    assert_eq!(code, ErrorCode::MemberRemoved);

    // SIGTERM: clients are told to reconnect, the process exits successfully.
    let carol = SignalClient::connect(&url, &read("carol")).await.unwrap();
    let stopped = tokio::spawn(node.stop());
    let mut carol = carol;
    let notice = loop {
        if let ServerFrame::Error { code, .. } = carol.next_timeout(WAIT).await.unwrap() {
            break code;
        }
    };
    assert_eq!(notice, ErrorCode::ServerShutdown);
    let exit = stopped.await.unwrap();
    assert!(exit.success(), "{exit}");
}

/// `enroll --store`: the new key goes straight into an encrypted key store (never written in clear), which
/// `chat --store` then opens; a store that is not new, or a short passphrase, is refused before the invite is used.
#[tokio::test]
async fn enroll_keeps_the_key_in_an_encrypted_store_that_chat_opens() {
    let data = tempfile::tempdir().unwrap();
    let node = MicroNode::start(env!("CARGO_BIN_EXE_peerbubble").as_ref(), &[], &[], data.path()).await;
    let (url, api) = (node.field("signaling"), node.field("admin API"));
    let links = node.invite_links();
    let dirs = tempfile::tempdir().unwrap();
    let enroll_store = |link: &str, dir: &str, passphrase: &str| {
        Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .args(["enroll", "--api", &api, "--invite", link, "--store"])
            .arg(dirs.path().join(dir))
            .env("PEERBUBBLE_PASSPHRASE", passphrase)
            .output()
            .unwrap()
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).into_owned();

    // Too short a passphrase: refused, and the invite is still good.
    let short = enroll_store(&links[1], "bob", "short");
    assert!(!short.status.success());
    assert!(stderr(&short).contains("at least 8 characters"), "{}", stderr(&short));
    let made = enroll_store(&links[1], "bob", "harbour lights at dawn");
    assert!(made.status.success(), "{}", stderr(&made));
    let said = String::from_utf8_lossy(&made.stdout).into_owned();
    assert!(said.contains("key kept encrypted"), "{said}");
    let bob_id = said.split("(member ").nth(1).and_then(|rest| rest.split(')').next()).unwrap().to_owned();
    // A store that is not new: refused before the invite is spent (it then works elsewhere).
    let taken = enroll_store(&links[2], "bob", "harbour lights at dawn");
    assert!(!taken.status.success());
    assert!(stderr(&taken).contains("not empty"), "{}", stderr(&taken));
    assert!(enroll_store(&links[2], "carol", "seven lanterns north").status.success());

    // Nothing in the store is the key in clear: no record parses as a key file, and the records are sealed.
    let records: Vec<Vec<u8>> = std::fs::read_dir(dirs.path().join("bob"))
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    assert!(records.len() >= 2, "header and records");
    for record in &records {
        let text = String::from_utf8_lossy(record);
        assert!(peerbubble_proto::IdentityKey::from_seed_base64(text.trim()).is_err(), "a record is a key in clear");
        assert!(!text.contains("Bob (field team)"), "a record holds plaintext");
    }

    // `chat --store` opens it as the enrolled member: Bob is seen online by Carol's chat.
    let chat = |dir: &str, passphrase: &str| {
        Command::new(env!("CARGO_BIN_EXE_peerbubble"))
            .args(["chat", "--rtc-bind", "127.0.0.1:0", "--url", &url, "--store"])
            .arg(dirs.path().join(dir))
            .env("PEERBUBBLE_PASSPHRASE", passphrase)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let wrong = chat("bob", "not the passphrase").wait_with_output().unwrap();
    assert!(!wrong.status.success(), "a wrong passphrase opens nothing");
    let mut bob = chat("bob", "harbour lights at dawn");
    let stdout = bob.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).find(|l| l.contains("connected as"))
    });
    let line = tokio::time::timeout(WAIT * 3, line).await.expect("bob's chat connects").unwrap();
    assert!(line.is_some_and(|l| l.contains(&bob_id)), "the store opened as another member than {bob_id}");
    let _ = bob.kill();
    let _ = bob.wait();
}

/// The data directory holds the admin database, the mailbox, the TURN secret and the TLS key: `peerbubble up`
/// makes it its owner's alone (0700, files 0600), including what an earlier version left world-readable.
#[cfg(unix)]
#[tokio::test]
async fn the_data_directory_is_its_owners_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let parent = tempfile::tempdir().unwrap();
    let data = parent.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // As an earlier version left it: a world-readable file.
    std::fs::write(data.join("turn-secret"), [7u8; 32]).unwrap();
    std::fs::set_permissions(data.join("turn-secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let node = MicroNode::start(env!("CARGO_BIN_EXE_peerbubble").as_ref(), &[], &[], &data).await;
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut seen = Vec::new();
    let mut pending = vec![data.clone()];
    while let Some(dir) = pending.pop() {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                assert_eq!(mode(&path), 0o600, "{} is open to others", path.display());
                seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
            }
        }
    }
    // The check covered what matters: the database, the mailbox and the secret.
    for name in ["admin.db", "mailbox.sqlite", "turn-secret"] {
        assert!(seen.iter().any(|s| s == name), "{name} not in {seen:?}");
    }
    assert!(node.stop().await.success());
}
