//! Native peers over a real bubble-server on loopback and real WebRTC (webrtc-rs): 1:1 chat over the relay then
//! the DataChannel, a signaling restart, a group of five with additions and removals, a 100 MB file with a
//! dropped connection, and a signaling server that taps, tampers with and replays frames.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use peerbubble_client_core::message::ConversationKind;
use peerbubble_client_core::{CloseReason, Event, Path};
use peerbubble_peer::node::NodeEvent;
use support::{Bubble, Dir, Tap, id, node, wait};

fn message_text(e: &NodeEvent) -> Option<(&str, Path)> {
    match e {
        NodeEvent::Core(Event::Message { text, path, .. }) => Some((text.as_str(), *path)),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_chat_relay_first_then_datachannel_and_survive_a_signaling_restart() {
    let mut bubble = Bubble::start(&support::yaml(2)).await;
    let url = bubble.url();
    let (a, b) = if id(1) < id(2) { (1, 2) } else { (2, 1) }; // `a` calls (lower id)
    let mut alice = node(&url, a, |_| {}).await;
    let mut bob = node(&url, b, |_| {}).await;
    alice.start_direct(id(b)).await.unwrap();
    let ready =
        |e: &NodeEvent| matches!(e, NodeEvent::Core(Event::ConversationReady { kind: ConversationKind::Direct, .. }));
    wait(&mut alice, "conversation ready", ready).await;
    let conversation = alice.direct(id(b)).await.unwrap().unwrap();
    // Before the DataChannel is up the first message takes the relay.
    alice.send_text(conversation, "first, via the relay").await.unwrap();
    let got = wait(&mut bob, "first message", |e| message_text(e).is_some()).await;
    assert_eq!(message_text(&got), Some(("first, via the relay", Path::Relay)));
    wait(&mut alice, "channel", |e| matches!(e, NodeEvent::ChannelOpen(_))).await;
    wait(&mut bob, "channel", |e| matches!(e, NodeEvent::ChannelOpen(_))).await;
    alice.send_text(conversation, "over the channel").await.unwrap();
    bob.send_text(conversation, "and back").await.unwrap();
    let got = wait(&mut bob, "channel message", |e| message_text(e).is_some()).await;
    assert_eq!(message_text(&got), Some(("over the channel", Path::Channel)));
    let got = wait(&mut alice, "reply", |e| message_text(e).is_some_and(|(t, _)| t == "and back")).await;
    assert_eq!(message_text(&got), Some(("and back", Path::Channel)));

    // The signaling server goes away: the open DataChannel keeps working.
    bubble.stop().await;
    wait(&mut alice, "signaling down", |e| matches!(e, NodeEvent::SignalingDown)).await;
    alice.send_text(conversation, "while the server is down").await.unwrap();
    let got = wait(&mut bob, "message during outage", |e| message_text(e).is_some()).await;
    assert_eq!(message_text(&got), Some(("while the server is down", Path::Channel)));
    // It comes back on the same address; both reconnect on their own.
    bubble.restart().await;
    wait(&mut alice, "signaling up", |e| matches!(e, NodeEvent::SignalingUp)).await;
    wait(&mut bob, "signaling up", |e| matches!(e, NodeEvent::SignalingUp)).await;
    // The relay path works again: drop the channel and talk through the server.
    alice.drop_channel(id(b)).await.unwrap();
    wait(&mut bob, "channel closed", |e| matches!(e, NodeEvent::ChannelClosed(_))).await;
    alice.send_text(conversation, "relay after restart").await.unwrap();
    let got = wait(&mut bob, "relayed after restart", |e| message_text(e).is_some()).await;
    assert_eq!(message_text(&got), Some(("relay after restart", Path::Relay)));
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    bubble.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_peers_group_added_member_sees_later_messages_removed_member_none() {
    let mut bubble = Bubble::start(&support::yaml(5)).await;
    let url = bubble.url();
    let mut nodes = Vec::new();
    for seed in 1..=5 {
        nodes.push(node(&url, seed, |c| c.auto_connect = false).await);
    }
    let group = nodes[0].create_group("field team", &[id(2), id(3), id(4)]).await.unwrap();
    for n in nodes.iter_mut().skip(1).take(3) {
        wait(n, "group ready", |e| {
            matches!(e, NodeEvent::Core(Event::ConversationReady { kind: ConversationKind::Group { .. }, .. }))
        })
        .await;
    }
    // Everyone's Welcome is in: wait until the last member is in every view.
    for n in nodes.iter_mut().take(4) {
        let deadline = tokio::time::Instant::now() + support::WAIT;
        while n.members(group).await.unwrap().len() < 3 {
            assert!(tokio::time::Instant::now() < deadline, "member list incomplete");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    nodes[1].send_text(group, "before the fifth").await.unwrap();
    for i in [0, 2, 3] {
        let got = wait(&mut nodes[i], "group message", |e| message_text(e).is_some()).await;
        assert_eq!(message_text(&got).map(|m| m.0), Some("before the fifth"));
    }
    nodes[2].add_member(group, id(5)).await.unwrap();
    wait(&mut nodes[4], "joined", |e| matches!(e, NodeEvent::Core(Event::ConversationReady { .. }))).await;
    nodes[3].send_text(group, "after the fifth joined").await.unwrap();
    let got = wait(&mut nodes[4], "message for the new member", |e| message_text(e).is_some()).await;
    assert_eq!(message_text(&got).map(|m| m.0), Some("after the fifth joined"), "it sees only later messages");
    nodes[0].remove_member(group, id(2)).await.unwrap();
    wait(&mut nodes[1], "removed", |e| {
        matches!(e, NodeEvent::Core(Event::ConversationClosed { reason: CloseReason::Removed, .. }))
    })
    .await;
    for i in [0, 2, 3, 4] {
        let deadline = tokio::time::Instant::now() + support::WAIT;
        while nodes[i].members(group).await.unwrap().contains(&id(2)) {
            assert!(tokio::time::Instant::now() < deadline, "removal not merged at {i}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    nodes[4].send_text(group, "without the second").await.unwrap();
    for i in [0, 2, 3] {
        let got =
            wait(&mut nodes[i], "after removal", |e| message_text(e).is_some_and(|m| m.0 == "without the second"))
                .await;
        assert!(message_text(&got).is_some());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !nodes[1].drain().iter().any(|e| message_text(e).is_some_and(|m| m.0 == "without the second")),
        "the removed member read a later message"
    );
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
    bubble.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabyte_file_survives_a_dropped_connection() {
    use sha2::{Digest as _, Sha256};
    let mut bubble = Bubble::start(&support::yaml(2)).await;
    let url = bubble.url();
    let (a, b) = if id(1) < id(2) { (1, 2) } else { (2, 1) };
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let mut alice = node(&url, a, |_| {}).await;
    let mut bob = node(&url, b, |c| c.download_dir = Some(downloads.clone())).await;
    alice.start_direct(id(b)).await.unwrap();
    wait(&mut alice, "channel", |e| matches!(e, NodeEvent::ChannelOpen(_))).await;
    wait(&mut bob, "channel", |e| matches!(e, NodeEvent::ChannelOpen(_))).await;

    let source = dir.path().join("map-tiles.bin");
    let mut data = vec![0u8; 100 * 1024 * 1024];
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(&source, &data).unwrap();
    let digest: [u8; 32] = Sha256::digest(&data).into();
    drop(data);

    let transfer = alice.send_file(id(b), &source).await.unwrap();
    // Drop the connection once a third has been confirmed, then reconnect.
    wait(
        &mut alice,
        "a third sent",
        |e| matches!(e, NodeEvent::Core(Event::FileSendable { acked, total, .. }) if *acked > total / 3),
    )
    .await;
    alice.drop_channel(id(b)).await.unwrap();
    wait(&mut bob, "channel dropped", |e| matches!(e, NodeEvent::ChannelClosed(_))).await;
    alice.connect(id(b)).await.unwrap();
    let saved = wait(&mut bob, "file saved", |e| matches!(e, NodeEvent::FileSaved { .. })).await;
    let NodeEvent::FileSaved { transfer: got, path } = saved else { unreachable!() };
    assert_eq!(got, transfer);
    wait(&mut alice, "sender confirmed", |e| matches!(e, NodeEvent::Core(Event::FileSent { .. }))).await;
    let received = std::fs::read(&path).unwrap();
    assert_eq!(received.len(), 100 * 1024 * 1024);
    let received_digest: [u8; 32] = Sha256::digest(&received).into();
    assert_eq!(received_digest, digest, "the file arrived whole");
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    bubble.stop().await;
}

/// A file kept encrypted at rest (issue 17): what lands on disk never holds the plaintext, the decrypted copy is
/// the file sent (SHA-256 checked), a damaged copy or an existing destination is refused and nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_received_file_is_kept_encrypted_and_decrypted_on_demand() {
    let mut bubble = Bubble::start(&support::yaml(2)).await;
    let url = bubble.url();
    let (a, b) = if id(1) < id(2) { (1, 2) } else { (2, 1) };
    let dir = tempfile::tempdir().unwrap();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let mut alice = node(&url, a, |_| {}).await;
    let mut bob = node(&url, b, |c| {
        c.download_dir = Some(downloads.clone());
        c.keep_sealed = true;
    })
    .await;
    alice.start_direct(id(b)).await.unwrap();
    wait(&mut alice, "channel", |e| matches!(e, NodeEvent::ChannelOpen(_))).await;

    let canary = "CANARY-bridge-codes-7741 ";
    let source = dir.path().join("codes.txt");
    let sent = canary.repeat(40_000).into_bytes();
    std::fs::write(&source, &sent).unwrap();
    alice.send_file(id(b), &source).await.unwrap();
    let kept = wait(&mut bob, "file kept", |e| matches!(e, NodeEvent::FileKept { .. })).await;
    let NodeEvent::FileKept { path, .. } = kept else { unreachable!() };
    assert_eq!(path, downloads.join("codes.txt.sealed"));
    let stored = std::fs::read(&path).unwrap();
    assert!(stored.len() > sent.len(), "every chunk is there, sealed");
    assert!(!stored.windows(canary.len()).any(|w| w == canary.as_bytes()), "the plaintext never reaches the disk");
    assert_eq!(std::fs::read_dir(&downloads).unwrap().count(), 1, "no decrypted copy unless asked");

    let copy = dir.path().join("codes-copy.txt");
    assert_eq!(bob.save_file(&path, &copy).await.unwrap(), sent.len() as u64);
    assert_eq!(std::fs::read(&copy).unwrap(), sent);
    assert!(bob.save_file(&path, &copy).await.is_err(), "an existing file is not overwritten");
    assert!(alice.save_file(&path, &dir.path().join("alice.txt")).await.is_err(), "only the receiver holds the key");

    // One byte changed in the last chunk: refused, and no partial copy stays behind.
    let mut damaged = stored.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let damaged_path = dir.path().join("damaged.sealed");
    std::fs::write(&damaged_path, &damaged).unwrap();
    let out = dir.path().join("from-damaged.txt");
    assert!(bob.save_file(&damaged_path, &out).await.is_err());
    assert!(!out.exists(), "nothing decrypted from a damaged file is left");
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    bubble.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_sdp_fingerprints_and_candidates_never_reach_the_server_in_clear() {
    let logs = support::capture_logs();
    let mut bubble = Bubble::start(&support::yaml(2)).await;
    let tap = Tap::start(bubble.url()).await;
    let (a, b) = if id(1) < id(2) { (1, 2) } else { (2, 1) };
    let dir = tempfile::tempdir().unwrap();
    let mut alice = node(&tap.url(), a, |_| {}).await;
    let mut bob = node(&tap.url(), b, |c| c.download_dir = Some(dir.path().to_owned())).await;
    let canary = "CANARY-41d7-relay-must-never-see-this";
    alice.start_direct(id(b)).await.unwrap();
    wait(&mut alice, "ready", |e| matches!(e, NodeEvent::Core(Event::ConversationReady { .. }))).await;
    let conversation = alice.direct(id(b)).await.unwrap().unwrap();
    alice.send_text(conversation, canary).await.unwrap();
    wait(&mut bob, "canary via relay", |e| message_text(e).is_some_and(|m| m.0 == canary)).await;
    wait(&mut alice, "channel", |e| matches!(e, NodeEvent::ChannelOpen(_))).await;
    let file = dir.path().join("canary.txt");
    std::fs::write(&file, canary.repeat(100)).unwrap();
    alice.send_file(id(b), &file).await.unwrap();
    wait(&mut bob, "file", |e| matches!(e, NodeEvent::FileSaved { .. })).await;

    let raw = tap.raw();
    let bodies = tap.bodies();
    // The checks can fail: the tap saw the conversation's traffic.
    assert!(raw.contains("\"deliver\"") && raw.contains("\"commit\""), "the tap saw envelopes and commits");
    assert!(bodies.len() >= 4, "relayed envelopes: {}", bodies.len());
    let in_bodies = |needle: &[u8]| bodies.iter().any(|b| b.windows(needle.len()).any(|w| w == needle));
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    bubble.stop().await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(logs.contains("TRACE") || logs.contains("DEBUG"), "verbose logs were captured");
    for needle in [canary, "a=fingerprint", "sha-256", "candidate", "127.0.0.1", "v=0", "canary.txt"] {
        assert!(!raw.contains(needle), "{needle} in a frame");
        assert!(!in_bodies(needle.as_bytes()), "{needle} in a relayed envelope");
    }
    for needle in [canary, "a=fingerprint", "candidate:", "v=0", "canary.txt"] {
        assert!(!logs.contains(needle), "{needle} in the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signaling_server_that_tampers_or_replays_is_detected_and_the_call_refused() {
    let mut bubble = Bubble::start(&support::yaml(2)).await;
    let tap = Tap::start(bubble.url()).await;
    let (a, b) = if id(1) < id(2) { (1, 2) } else { (2, 1) };
    let mut alice = node(&tap.url(), a, |c| c.auto_connect = false).await;
    let mut bob = node(&tap.url(), b, |c| c.auto_connect = false).await;
    alice.start_direct(id(b)).await.unwrap();
    wait(&mut bob, "ready", |e| matches!(e, NodeEvent::Core(Event::ConversationReady { .. }))).await;
    let conversation = alice.direct(id(b)).await.unwrap().unwrap();

    // Tampering: every delivered envelope gets one bit flipped. The message and the call set-up are refused.
    tap.set_mutator(support::tamper_deliver);
    tap.activate(true);
    alice.send_text(conversation, "tampered").await.unwrap();
    wait(&mut bob, "refusal", |e| matches!(e, NodeEvent::Core(Event::Refused { .. }))).await;
    alice.connect(id(b)).await.unwrap();
    wait(&mut bob, "refused offer", |e| matches!(e, NodeEvent::Core(Event::Refused { .. }))).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = bob.drain();
    assert!(!seen.iter().any(|e| matches!(e, NodeEvent::ChannelOpen(_))), "a call through a tampering server");
    assert!(!seen.iter().any(|e| message_text(e).is_some()), "a tampered message was shown");
    assert!(!alice.drain().iter().any(|e| matches!(e, NodeEvent::ChannelOpen(_))));

    // Replay: the server delivers each envelope twice; the copy is refused, the message shown once.
    tap.set_mutator(|dir, text| {
        if dir == Dir::ToClient && text.contains("\"deliver\"") {
            vec![text.to_owned(), text.to_owned()]
        } else {
            vec![text.to_owned()]
        }
    });
    alice.send_text(conversation, "said once").await.unwrap();
    wait(&mut bob, "message", |e| message_text(e).is_some()).await;
    wait(&mut bob, "replay refused", |e| matches!(e, NodeEvent::Core(Event::Refused { .. }))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob.drain().iter().filter(|e| message_text(e).is_some()).count(), 0, "shown twice");

    // An honest server again: the group was not corrupted, the call goes through.
    tap.activate(false);
    alice.send_text(conversation, "intact").await.unwrap();
    let got = wait(&mut bob, "after tampering", |e| message_text(e).is_some()).await;
    assert_eq!(message_text(&got).map(|m| m.0), Some("intact"));
    alice.connect(id(b)).await.unwrap();
    wait(&mut alice, "channel", |e| matches!(e, NodeEvent::ChannelOpen(_))).await;
    alice.shutdown().await.unwrap();
    bob.shutdown().await.unwrap();
    bubble.stop().await;
}

/// The member who opens a 1:1 conversation offers the connection once it is ready, whatever the ids; the contact
/// offers only if it has the lower id and no offer came within a pause (a contact whose rule is "the lower id
/// offers", here one that does not connect on its own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_who_opens_the_conversation_connects_and_the_lower_id_steps_in_when_it_does_not() {
    let bubble = Bubble::start(&support::yaml(2)).await;
    let url = bubble.url();
    let (low, high) = if id(1) < id(2) { (1, 2) } else { (2, 1) };
    let opened = |e: &NodeEvent| matches!(e, NodeEvent::ChannelOpen(_));

    // The higher id opens it and connects (the contact, which does not connect on its own here, only answers).
    let mut opener = node(&url, high, |_| {}).await;
    let mut contact = node(&url, low, |c| c.auto_connect = false).await;
    opener.start_direct(id(low)).await.unwrap();
    wait(&mut opener, "channel offered by the opener", opened).await;
    wait(&mut contact, "channel", opened).await;
    opener.shutdown().await.unwrap();
    contact.shutdown().await.unwrap();

    // An opener that does not connect (another rule): the lower id offers after its pause.
    let bubble = Bubble::start(&support::yaml(2)).await;
    let url = bubble.url();
    let mut opener = node(&url, high, |c| c.auto_connect = false).await;
    let mut contact = node(&url, low, |_| {}).await;
    opener.start_direct(id(low)).await.unwrap();
    wait(&mut contact, "channel offered by the lower id", opened).await;
    wait(&mut opener, "channel", opened).await;
}
