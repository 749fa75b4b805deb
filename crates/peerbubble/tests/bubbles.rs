//! Several bubbles in one `peerbubble up`: a bubble created through the admin API is served at once on its own
//! port (web client, signaling, TURN, mailbox); members of one bubble never see, reach or learn about another;
//! a key enrolled in one bubble is refused by the other; deleting a bubble disconnects its members and removes
//! its directory and files; a restart serves every bubble again where it was.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use peerbubble_peer::SignalClient;
use peerbubble_proto::{IdentityKey, ServerFrame};
use serde_json::{Value, json};

mod support;

use support::{MicroNode, enroll, read_key};

const WAIT: Duration = Duration::from_secs(10);

async fn post(api: &str, token: &str, path: &str, body: Value) -> (u16, Value) {
    let res = reqwest::Client::new().post(format!("{api}{path}")).bearer_auth(token).json(&body).send().await.unwrap();
    (res.status().as_u16(), res.json().await.unwrap_or(Value::Null))
}

/// Connects, retrying while the bubble-server has not yet picked the enrollment up from the store.
async fn connect(url: &str, key: &IdentityKey) -> SignalClient {
    for _ in 0..50 {
        if let Ok(client) = SignalClient::connect(url, key).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot connect to {url}")
}

fn signal_url(origin: &str) -> String {
    format!("{}/v1/signal", origin.replacen("http", "ws", 1))
}

#[tokio::test]
async fn bubbles_are_served_apart_deleted_whole_and_back_after_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_peerbubble");
    let node = MicroNode::start(exe.as_ref(), &[], &[], data.path()).await;
    let (demo_url, api, token) = (node.field("signaling"), node.field("admin API"), node.field("admin token"));
    let keys = tempfile::tempdir().unwrap();
    let key_file = |name: &str| keys.path().join(format!("{name}.key"));
    let links = node.invite_links();
    enroll(&api, &links[0], &key_file("alice"));

    // A second bubble, made as an administrator does: served at once, on its own origin.
    let (status, body) = post(&api, &token, "/api/v1/bubbles", json!({"id": "relief", "display_name": "Relief"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        post(&api, &token, "/api/v1/bubbles/relief/categories", json!({"id": "team", "display_name": "Team"})).await;
    assert_eq!(status, 201, "{body}");
    let mut relief_links = Vec::new();
    for name in ["Rita", "Ravi"] {
        let (status, body) =
            post(&api, &token, "/api/v1/bubbles/relief/invites", json!({"display_name": name, "categories": ["team"]}))
                .await;
        assert_eq!(status, 201, "{body}");
        relief_links.push(body["link"].as_str().unwrap().to_owned());
    }
    let relief_origin = relief_links[0].split("/enroll#").next().unwrap().to_owned();
    assert!(!links[0].starts_with(&relief_origin), "relief shares the demo's origin: {relief_origin} {}", links[0]);
    let readyz = reqwest::get(format!("{relief_origin}/readyz")).await.unwrap();
    assert_eq!(readyz.status().as_u16(), 200);
    enroll(&api, &relief_links[0], &key_file("rita"));
    enroll(&api, &relief_links[1], &key_file("ravi"));
    let relief_url = signal_url(&relief_origin);

    // Each bubble's members see their own bubble only.
    let mut rita = connect(&relief_url, &read_key(&key_file("rita"))).await;
    while rita.display_names() != ["Ravi"] {
        rita.next_timeout(WAIT).await.unwrap();
    }
    let alice = connect(&demo_url, &read_key(&key_file("alice"))).await;
    assert!(alice.display_names().iter().all(|n| n != "Rita" && n != "Ravi"), "{:?}", alice.display_names());
    // Nobody reaches across: a relief key is no member of the demo bubble, and the other way round.
    assert!(SignalClient::connect(&demo_url, &read_key(&key_file("rita"))).await.is_err());
    assert!(SignalClient::connect(&relief_url, &read_key(&key_file("alice"))).await.is_err());
    // A relief envelope to Alice's member id is refused like one to a stranger.
    let alice_id = read_key(&key_file("alice")).public_key().member_id();
    rita.send_unchecked(alice_id, b"across bubbles").await.unwrap();
    loop {
        match rita.next_timeout(WAIT).await.unwrap() {
            ServerFrame::Error { .. } => break,
            ServerFrame::Ack { sessions, stored, .. } => {
                panic!("relayed across bubbles ({sessions} sessions, {stored} stored)")
            }
            _ => {}
        }
    }
    // One identity per bubble: Alice's demo key cannot also join relief.
    let (_, body) =
        post(&api, &token, "/api/v1/bubbles/relief/invites", json!({"display_name": "Alice", "categories": ["team"]}))
            .await;
    let out = std::process::Command::new(exe)
        .args(["enroll", "--api", &api, "--invite", body["link"].as_str().unwrap(), "--key-out"])
        .arg(key_file("alice-in-relief"))
        .output()
        .unwrap();
    assert!(out.status.success(), "a fresh key for relief is welcome: {}", String::from_utf8_lossy(&out.stderr));
    let pk = read_key(&key_file("alice")).public_key();
    let (_, again) =
        post(&api, &token, "/api/v1/bubbles/relief/invites", json!({"display_name": "Alice", "categories": ["team"]}))
            .await;
    let invite = peerbubble_proto::Invite::parse(again["link"].as_str().unwrap()).unwrap();
    let request = peerbubble_proto::EnrollRequest::new(&invite, &read_key(&key_file("alice")));
    let res = reqwest::Client::new().post(format!("{api}/api/v1/enroll")).json(&request).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 409, "{pk} joined a second bubble");

    // Restart: both bubbles come back where they were, with their members.
    drop((rita, alice));
    assert!(node.stop().await.success());
    let node = MicroNode::start(exe.as_ref(), &[], &[], data.path()).await;
    let (demo_url, api, token) = (node.field("signaling"), node.field("admin API"), node.field("admin token"));
    assert!(node.banner.iter().any(|l| l.contains("relief") && l.contains(&relief_origin)), "{:?}", node.banner);
    let mut rita = connect(&relief_url, &read_key(&key_file("rita"))).await;
    while rita.display_names().len() < 2 {
        rita.next_timeout(WAIT).await.unwrap();
    }
    let mut alice = connect(&demo_url, &read_key(&key_file("alice"))).await;

    // Deleting relief disconnects its members, removes its directory and files; the demo bubble goes on.
    let res =
        reqwest::Client::new().delete(format!("{api}/api/v1/bubbles/relief")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status().as_u16(), 204);
    loop {
        match rita.next_timeout(WAIT).await {
            Ok(ServerFrame::Error { .. }) => break,
            Err(peerbubble_peer::signal::ClientError::Timeout) => panic!("relief's member is still connected"),
            Err(_) => break,
            Ok(_) => {}
        }
    }
    assert!(SignalClient::connect(&relief_url, &read_key(&key_file("rita"))).await.is_err());
    assert!(!data.path().join("bubbles/relief").exists(), "relief's mailbox and secrets stay on disk");
    let res = reqwest::Client::new()
        .get(format!("{api}/api/v1/bubbles/relief/members"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.json::<Value>().await.unwrap(), json!([]));
    // Alice's session in the demo bubble goes on: it answers a ping.
    let ping = alice.ping().await.unwrap();
    loop {
        match alice.next_timeout(WAIT).await.unwrap() {
            ServerFrame::Pong { id } if id == ping => break,
            ServerFrame::Error { code, message, .. } => panic!("the demo bubble refused Alice: {code:?} {message}"),
            _ => {}
        }
    }
    assert_eq!(alice.bubble(), "demo");
    assert!(node.stop().await.success());
}
