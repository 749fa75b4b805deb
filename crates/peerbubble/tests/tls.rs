//! Terminal members of a micro-node that speaks HTTPS (`peerbubble up --tls`, a self-signed certificate): they
//! enroll over HTTPS and chat over `wss://` by pinning the certificate's SHA-256 fingerprint, as the banner
//! prints it. Another certificate — a wrong pin — is refused before anything is sent (the invite stays unused);
//! without a pin the system's authorities decide, and refuse a self-signed certificate with a hint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Duration;

use peerbubble_client_core::Event;
use peerbubble_peer::node::{Node, NodeConfig, NodeEvent};
use peerbubble_tls_trust::{Pin, Trust};

mod support;

use support::{MicroNode, read_key};

const WAIT: Duration = Duration::from_secs(30);

fn peerbubble(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_peerbubble")).args(args).output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_members_pin_a_self_signed_micro_node_and_chat_over_wss() {
    let data = tempfile::tempdir().unwrap();
    let node =
        MicroNode::start(env!("CARGO_BIN_EXE_peerbubble").as_ref(), &[], &[("PEERBUBBLE_TLS", "true")], data.path())
            .await;
    let url = node.field("signaling");
    assert!(url.starts_with("wss://"), "{url}");
    let origin = node.field("web client").trim_end_matches('/').to_owned();
    assert!(origin.starts_with("https://"), "{origin}");
    let printed = node
        .banner
        .iter()
        .skip_while(|l| !l.contains("SHA-256 fingerprint"))
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in {:?}", node.banner))
        .trim()
        .to_owned();
    let pin: Pin = printed.parse().unwrap();
    // The banner's terminal commands carry the pin, and point at the HTTPS origin.
    let banner = node.banner.join("\n");
    assert!(banner.contains(&format!("--api {origin} --pin {printed}")), "{banner}");
    assert!(banner.contains(&format!("--url {url} --pin {printed}")), "{banner}");
    let links = node.invite_links();
    let keys = tempfile::tempdir().unwrap();
    let key = |name: &str| keys.path().join(format!("{name}.key"));
    let key_arg = |name: &str| key(name).to_str().unwrap().to_owned();

    // Another certificate's pin: refused before anything is sent; the invite stays unused.
    let other = Pin::of(b"some other certificate").to_string();
    let refused = peerbubble(&[
        "enroll",
        "--api",
        &origin,
        "--pin",
        &other,
        "--invite",
        &links[0],
        "--key-out",
        &key_arg("alice"),
    ]);
    assert!(!refused.status.success());
    assert!(stderr(&refused).contains("not the pinned one"), "{}", stderr(&refused));
    assert!(stderr(&refused).contains(&printed), "names the certificate it saw: {}", stderr(&refused));
    assert!(!stderr(&refused).contains("OtherError"), "said in words: {}", stderr(&refused));
    assert!(!key("alice").exists(), "a refused enrollment keeps no key");
    // No pin: the system's authorities do not know a self-signed certificate, and the error says what to do.
    let unpinned = peerbubble(&["enroll", "--api", &origin, "--invite", &links[0], "--key-out", &key_arg("alice")]);
    assert!(!unpinned.status.success());
    assert!(stderr(&unpinned).contains("--pin"), "{}", stderr(&unpinned));
    // A malformed pin is refused with what a pin looks like.
    let malformed = peerbubble(&[
        "enroll",
        "--api",
        &origin,
        "--pin",
        "AB:CD",
        "--invite",
        &links[0],
        "--key-out",
        &key_arg("alice"),
    ]);
    assert!(!malformed.status.success());
    assert!(stderr(&malformed).contains("64 hexadecimal digits"), "{}", stderr(&malformed));

    // The right pin: both enroll over HTTPS (the same invite, still unused).
    for (link, name) in [(&links[0], "alice"), (&links[1], "bob")] {
        let out =
            peerbubble(&["enroll", "--api", &origin, "--pin", &printed, "--invite", link, "--key-out", &key_arg(name)]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }

    // Bob: the terminal echo bot over wss://, pinned.
    let mut bob = Command::new(env!("CARGO_BIN_EXE_peerbubble"))
        .args(["chat", "--echo", "--key", &key_arg("bob"), "--url", &url, "--pin", &printed])
        .args(["--rtc-bind", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bob_id = read_key(&key("bob")).public_key().member_id();

    // A wrong pin: the native peer does not start, and says why.
    let config = |trust| NodeConfig { trust, bind: vec!["127.0.0.1:0".parse().unwrap()], ..NodeConfig::new(&url) };
    let err = Node::start(config(Trust::Pinned(Pin::of(b"not it"))), read_key(&key("alice"))).await.unwrap_err();
    assert!(err.to_string().starts_with("the server's certificate is not the pinned one"), "{err}");

    // Alice, pinned: a conversation with the bot, end to end over wss://.
    let mut alice = loop {
        match Node::start(config(Trust::Pinned(pin)), read_key(&key("alice"))).await {
            Ok(node) => break node,
            // Bob's enrollment may not have reached the bubble-server's directory yet.
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // The bot may still be connecting: ask until its KeyPackage comes back.
    let deadline = tokio::time::Instant::now() + WAIT;
    let conversation = loop {
        let _ = alice.start_direct(bob_id).await;
        if let Some(c) = alice.direct(bob_id).await.unwrap() {
            break c;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bot never answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    alice.send_text(conversation, "over wss, pinned").await.unwrap();
    alice
        .wait_for(
            "the echo",
            WAIT,
            |e| matches!(e, NodeEvent::Core(Event::Message { text, .. }) if text == "echo: over wss, pinned"),
        )
        .await
        .unwrap();
    alice.shutdown().await.unwrap();
    bob.kill().unwrap();
    let _ = bob.wait();
    node.stop().await;
}
