//! The offline mailbox over real WebSockets on loopback, with its SQLite file: what is sent to a member with no
//! session is kept (the sender's `ack` says "stored"), survives a server restart, comes to the member in order
//! and before live traffic when it returns, and is deleted only once acknowledged with `received`. Quotas and
//! time to live turn into a `gap` marker (naming the groups that lost commits); a member removed from the
//! bubble has its queue purged, and its bytes are gone from the file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use peerbubble_bubble_server::{Config, MailboxConfig};
use peerbubble_peer::SignalClient;
use peerbubble_proto::{ClientFrame, ErrorCode, GroupId, Opaque, ServerFrame};
use support::*;

const ANN: u16 = 1;
const BOB: u16 = 2;
const CAT: u16 = 3;
const DAN: u16 = 4;

const GROUP: [u8; 16] = *b"\x31\x07\xa2\x9c\x44\x10\x5b\x7e\x2d\xc6\x90\x0e\xb3\x57\xfa\x01";

fn bubble_yaml(with_dan: bool) -> String {
    let mut yaml = String::from("bubble: test-bubble\ncategories:\n  - {id: medics}\nmembers:\n");
    yaml += &member(ANN, "Ann", &["medics"]);
    yaml += &member(BOB, "Bob", &["medics"]);
    yaml += &member(CAT, "Cat", &["medics"]);
    if with_dan {
        yaml += &member(DAN, "Dan", &["medics"]);
    }
    yaml
}

/// A bubble keeping a mailbox in `mailbox.sqlite` of its temp dir.
async fn bubble(tweak: impl FnOnce(&mut MailboxConfig)) -> Bubble {
    Bubble::start_in(&bubble_yaml(true), |config: &mut Config, dir| {
        let mut mailbox = MailboxConfig::at(dir.join("mailbox.sqlite"));
        tweak(&mut mailbox);
        config.mailbox = Some(mailbox);
    })
    .await
}

/// The `ack` (sessions, stored) or the error code of frame `id`.
async fn answer(client: &mut SignalClient, id: u64) -> Result<(u32, u32), ErrorCode> {
    expect(client, "ack or error", |f| match f {
        ServerFrame::Ack { id: acked, sessions, stored } if *acked == id => Some(Ok((*sessions, *stored))),
        ServerFrame::Error { id: Some(refused), code, .. } if *refused == id => Some(Err(*code)),
        _ => None,
    })
    .await
}

/// What a returning member reads: (seq, body) of kept envelopes, `None` seq for live ones, and gaps.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Kept(u64, Vec<u8>),
    Live(Vec<u8>),
    Gap { lost: u64, groups: Vec<GroupId> },
}

async fn next_got(client: &mut SignalClient) -> Got {
    expect(client, "deliver or gap", |f| match f {
        ServerFrame::Deliver { body, seq: Some(seq), .. } => Some(Got::Kept(*seq, body.to_bytes())),
        ServerFrame::Deliver { body, seq: None, .. } => Some(Got::Live(body.to_bytes())),
        ServerFrame::Gap { lost, groups, .. } => Some(Got::Gap { lost: *lost, groups: groups.clone() }),
        _ => None,
    })
    .await
}

/// Nothing is delivered within a short while.
async fn nothing_delivered(client: &mut SignalClient) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(600);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.next_timeout(left).await {
            Ok(ServerFrame::Deliver { .. } | ServerFrame::Gap { .. }) => panic!("something was delivered again"),
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wire(bytes: &[u8]) -> String {
    Opaque::from_bytes(bytes).unwrap().as_wire().to_owned()
}

#[tokio::test]
async fn what_waits_for_an_absent_member_survives_a_restart_and_comes_in_order_before_live_traffic() {
    let mut b = bubble(|_| {}).await;
    let mut ann = b.connect(ANN).await;
    // Bob is away: 100 envelopes and a commit of a group he is in are kept, each acknowledged as stored.
    for n in 0..100u32 {
        let id = ann.send(id(BOB), format!("sealed {n}").as_bytes()).await.unwrap();
        assert_eq!(answer(&mut ann, id).await, Ok((0, 1)), "envelope {n}");
    }
    let commit = ann.commit(&GROUP, 0, &[id(BOB)], b"sealed commit").await.unwrap();
    assert_eq!(answer(&mut ann, commit).await, Ok((0, 1)));
    assert_eq!(b.server.as_ref().unwrap().mailbox().unwrap().entries, 101);
    assert!(b.metrics().contains("peerbubble_signal_mailbox_entries 101"), "{}", b.metrics());

    // The server restarts in between; what it acknowledged as stored is still there.
    drop(ann);
    b.stop().await;
    b.restart().await;
    assert_eq!(b.server.as_ref().unwrap().mailbox().unwrap().entries, 101);
    let mut ann = b.connect(ANN).await;

    // Bob returns: the 101 in order, with increasing seq, then what Ann sends live.
    let mut bob = b.connect(BOB).await;
    let live = ann.send(id(BOB), b"live after return").await.unwrap();
    assert_eq!(answer(&mut ann, live).await, Ok((1, 0)));
    let mut last = 0;
    for n in 0..100u32 {
        match next_got(&mut bob).await {
            Got::Kept(seq, body) => {
                assert_eq!(body, format!("sealed {n}").into_bytes());
                assert!(seq > last, "seq {seq} after {last}");
                last = seq;
            }
            other => panic!("envelope {n}: {other:?}"),
        }
    }
    match next_got(&mut bob).await {
        Got::Kept(seq, body) if seq > last && body == b"sealed commit" => last = seq,
        other => panic!("the commit: {other:?}"),
    }
    assert_eq!(next_got(&mut bob).await, Got::Live(b"live after return".to_vec()));

    // Not acknowledged: nothing deleted. Acknowledged up to the last: deleted, and not delivered again.
    assert_eq!(b.server.as_ref().unwrap().mailbox().unwrap().entries, 101);
    bob.send_frame(&ClientFrame::Received { upto: last }).await.unwrap();
    until("the acknowledged entries to be deleted", || b.server.as_ref().unwrap().mailbox().unwrap().entries == 0)
        .await;
    drop(bob);
    let mut bob = b.connect(BOB).await;
    nothing_delivered(&mut bob).await;
}

#[tokio::test]
async fn what_is_not_acknowledged_comes_again_with_the_same_seq() {
    let b = bubble(|_| {}).await;
    let mut ann = b.connect(ANN).await;
    for n in 0..3u32 {
        let id = ann.send(id(CAT), format!("for Cat {n}").as_bytes()).await.unwrap();
        answer(&mut ann, id).await.unwrap();
    }
    let mut cat = b.connect(CAT).await;
    let first: Vec<Got> = vec![next_got(&mut cat).await, next_got(&mut cat).await, next_got(&mut cat).await];
    // Cat's tab closes before its state is saved: no `received`.
    drop(cat);
    let mut cat = b.connect(CAT).await;
    let again: Vec<Got> = vec![next_got(&mut cat).await, next_got(&mut cat).await, next_got(&mut cat).await];
    assert_eq!(first, again);
    // Acknowledging part of it deletes that part only.
    let Got::Kept(second, _) = again[1] else { panic!("{again:?}") };
    cat.send_frame(&ClientFrame::Received { upto: second }).await.unwrap();
    until("two entries deleted", || b.server.as_ref().unwrap().mailbox().unwrap().entries == 1).await;
    drop(cat);
    let mut cat = b.connect(CAT).await;
    assert_eq!(next_got(&mut cat).await, again[2]);
    // A `received` before authentication is refused like any frame.
    let mut raw = SignalClient::raw(&b.url()).await.unwrap();
    raw.next(WAIT).await.unwrap();
    raw.send_text(peerbubble_proto::encode_frame(&ClientFrame::Received { upto: 99 })).await.unwrap();
    assert!(matches!(raw.next(WAIT).await, Ok(ServerFrame::Error { code: ErrorCode::NotAuthenticated, .. })));
    assert_eq!(b.server.as_ref().unwrap().mailbox().unwrap().entries, 1, "nothing deleted by it");
}

#[tokio::test]
async fn a_full_mailbox_refuses_and_leaves_a_gap_and_expired_envelopes_become_one() {
    let b = bubble(|m| {
        m.member_entries = 5;
        m.ttl = Duration::from_secs(1);
        m.sweep_interval = Duration::from_millis(100);
    })
    .await;
    let mut ann = b.connect(ANN).await;
    // Quota: five kept, the next two refused with `mailbox_full` (the sender knows) and counted in a gap.
    let mut answers = Vec::new();
    for n in 0..7u32 {
        let id = ann.send(id(BOB), format!("to Bob {n}").as_bytes()).await.unwrap();
        answers.push(answer(&mut ann, id).await);
    }
    assert_eq!(answers[..5], [Ok((0, 1)); 5]);
    assert_eq!(answers[5..], [Err(ErrorCode::MailboxFull); 2]);
    // Bob returns at once (within the time to live): five envelopes, then the gap of two.
    let mut bob = b.connect(BOB).await;
    for n in 0..5u32 {
        assert!(matches!(next_got(&mut bob).await, Got::Kept(_, body) if body == format!("to Bob {n}").into_bytes()));
    }
    assert_eq!(next_got(&mut bob).await, Got::Gap { lost: 2, groups: vec![] });

    // Time to live: two envelopes and a commit for Cat, who stays away past it, become one gap naming the group.
    for body in [&b"one"[..], b"two"] {
        let id = ann.send(id(CAT), body).await.unwrap();
        answer(&mut ann, id).await.unwrap();
    }
    let commit = ann.commit(&GROUP, 3, &[id(CAT)], b"a commit Cat misses").await.unwrap();
    assert_eq!(answer(&mut ann, commit).await, Ok((0, 1)));
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let mut cat = b.connect(CAT).await;
    assert_eq!(next_got(&mut cat).await, Got::Gap { lost: 3, groups: vec![GroupId::from_bytes(&GROUP).unwrap()] });
    nothing_delivered(&mut cat).await;
    assert!(b.metrics().contains("peerbubble_signal_mailbox_lost_total 3"), "{}", b.metrics());
}

#[tokio::test]
async fn a_member_removed_from_the_bubble_has_its_queue_purged_from_memory_and_disk() {
    let b = bubble(|_| {}).await;
    let mut ann = b.connect(ANN).await;
    let canary = b"DAN-MAILBOX-CANARY-5f1c";
    let id = ann.send(id(DAN), canary).await.unwrap();
    assert_eq!(answer(&mut ann, id).await, Ok((0, 1)));
    let file = b.dir.path().join("mailbox.sqlite");
    let on_disk = || {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let needle = wire(canary).into_bytes();
        bytes.windows(needle.len()).any(|w| w == needle.as_slice())
    };
    // Acknowledged as stored means written: the entry is in the file.
    assert!(on_disk(), "the kept envelope is in the store");
    // Dan is revoked (removed from the bubble file): his queue goes at once, and its bytes with it.
    b.write(&bubble_yaml(false));
    until("Dan's queue purged", || b.server.as_ref().unwrap().mailbox().unwrap().members == 0).await;
    until("Dan's envelope gone from the file", || !on_disk()).await;
}

/// A backlog larger than a session's send budget (and the sockets' buffers) does not make the returning member look like a slow reader:
/// what it sends at once is answered, presence reaches it, and it reads the whole backlog, then live traffic.
#[tokio::test]
async fn a_backlog_larger_than_the_send_budget_does_not_cut_the_returning_member_off() {
    let b = Bubble::start_in(&bubble_yaml(true), |config: &mut Config, dir| {
        config.mailbox = Some(MailboxConfig::at(dir.join("mailbox.sqlite")));
        // The smallest budget allowed (two maximal frames), and rates that let Ann send her 200 at once.
        config.send_queue_bytes = 2 * config.max_frame_bytes as usize;
        (config.frames_per_second, config.frame_burst, config.member_frames_per_second) = (10_000, 10_000, 10_000);
    })
    .await;
    let mut ann = b.connect(ANN).await;
    let body = vec![0x42; 2048];
    // Some 8 MiB of frames: more than the budget and than what the sockets buffer while Bob does not read yet.
    let n = 3_000u32;
    for _ in 0..n {
        let id = ann.send(id(BOB), &body).await.unwrap();
        assert_eq!(answer(&mut ann, id).await, Ok((0, 1)));
    }
    let mut bob = b.connect(BOB).await;
    // Bob speaks at once, before reading (as a client answering its first messages does), and Cat comes online
    // meanwhile: neither the `ack` nor the presence may find Bob "too slow".
    let back = bob.send(id(ANN), b"back").await.unwrap();
    let _cat = b.connect(CAT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut kept, mut acked, mut presence) = (0, false, false);
    while kept < n || !acked || !presence {
        match bob.next_timeout(WAIT).await.unwrap_or_else(|e| panic!("after {kept} kept: {e}")) {
            ServerFrame::Deliver { seq: Some(_), .. } => kept += 1,
            ServerFrame::Ack { id: acked_id, .. } if acked_id == back => acked = true,
            ServerFrame::Presence { member, online: true } if member == id(CAT) => presence = true,
            ServerFrame::Error { code, .. } => panic!("refused: {code:?}"),
            _ => {}
        }
    }
    let live = ann.send(id(BOB), b"live").await.unwrap();
    answer(&mut ann, live).await.unwrap();
    assert_eq!(next_got(&mut bob).await, Got::Live(b"live".to_vec()));
}

/// The stock the bubble announces after the directory.
async fn stock(client: &mut SignalClient) -> (u32, bool) {
    expect(client, "key_package_stock", |f| match f {
        ServerFrame::KeyPackageStock { one_time, last_resort } => Some((*one_time, *last_resort)),
        _ => None,
    })
    .await
}

/// A KeyPackage stand-in: the bubble keeps and hands out bytes it never parses (the claimer checks them).
fn key_package(label: &str) -> Opaque {
    Opaque::from_bytes(format!("KP-{label}-{}", "x".repeat(2000)).as_bytes()).unwrap()
}

async fn publish(client: &mut SignalClient, label: &str, last_resort: bool) {
    client.send_frame(&ClientFrame::PublishKeyPackage { key_package: key_package(label), last_resort }).await.unwrap();
}

/// The KeyPackage handed out for claim `id` (its label), or the refusal.
async fn claimed(client: &mut SignalClient, id: u64) -> Result<Option<String>, ErrorCode> {
    expect(client, "claimed_key_package or error", |f| match f {
        ServerFrame::ClaimedKeyPackage { id: answered, key_package, .. } if *answered == id => {
            Some(Ok(key_package.as_ref().map(|kp| {
                let text = String::from_utf8(kp.to_bytes()).unwrap();
                text.trim_start_matches("KP-").split('-').next().unwrap().to_owned()
            })))
        }
        ServerFrame::Error { id: Some(refused), code, .. } if *refused == id => Some(Err(*code)),
        _ => None,
    })
    .await
}

async fn claim(client: &mut SignalClient, id: u64, of: u16) -> Result<Option<String>, ErrorCode> {
    client.send_frame(&ClientFrame::ClaimKeyPackage { id, member: support::id(of) }).await.unwrap();
    claimed(client, id).await
}

#[tokio::test]
async fn published_key_packages_are_handed_out_once_each_then_the_last_resort_and_survive_a_restart() {
    let mut b = bubble(|_| {}).await;
    let mut cat = b.connect(CAT).await;
    assert_eq!(stock(&mut cat).await, (0, false), "a bubble with a mailbox tells a member its stock");
    // One more one-time KeyPackage than kept (the oldest goes), and two last-resort ones (the second replaces).
    let kept = peerbubble_proto::limits::KEY_PACKAGES_KEPT;
    for n in 0..=kept {
        publish(&mut cat, &format!("one{n}"), false).await;
    }
    publish(&mut cat, "lastA", true).await;
    publish(&mut cat, "lastB", true).await;
    until("the KeyPackages kept", || b.server.as_ref().unwrap().mailbox().unwrap().key_packages == kept + 1).await;
    drop(cat);
    let mut cat = b.connect(CAT).await;
    assert_eq!(stock(&mut cat).await, (kept as u32, true));
    drop(cat);

    // They are on disk: a restart keeps them.
    b.stop().await;
    b.restart().await;
    assert_eq!(b.server.as_ref().unwrap().mailbox().unwrap().key_packages, kept + 1);
    let mut ann = b.connect(ANN).await;
    for n in 1..=kept {
        assert_eq!(claim(&mut ann, n as u64, CAT).await, Ok(Some(format!("one{n}"))), "oldest first, each once");
    }
    assert_eq!(claim(&mut ann, 100, CAT).await, Ok(Some("lastB".into())), "then the last resort");
    assert_eq!(claim(&mut ann, 101, CAT).await, Ok(Some("lastB".into())), "which stays");
    // A member that published nothing: an answer with none.
    assert_eq!(claim(&mut ann, 102, BOB).await, Ok(None));
    let mut cat = b.connect(CAT).await;
    assert_eq!(stock(&mut cat).await, (0, true), "the member learns it must top its stock up");
}

#[tokio::test]
async fn claims_are_need_to_know_and_bounded_and_bad_key_packages_are_refused() {
    let mut yaml = bubble_yaml(false);
    yaml = yaml.replace("  - {id: medics}\n", "  - {id: medics}\n  - {id: logistics}\n");
    yaml += &member(DAN, "Dan", &["logistics"]);
    let b = Bubble::start_in(&yaml, |config: &mut Config, dir| {
        config.mailbox = Some(MailboxConfig::at(dir.join("mailbox.sqlite")));
        // Frame rates out of the way: the claim budget is what is tested.
        config.frames_per_second = 1000;
        config.frame_burst = 1000;
        config.member_frames_per_second = 1000;
    })
    .await;
    let mut dan = b.connect(DAN).await;
    publish(&mut dan, "dan", false).await;
    let mut cat = b.connect(CAT).await;
    publish(&mut cat, "cat", true).await;
    until("both kept", || b.server.as_ref().unwrap().mailbox().unwrap().key_packages == 2).await;

    let mut ann = b.connect(ANN).await;
    // Dan is in another category: Ann may not know of him, so she may not take his KeyPackage.
    assert_eq!(claim(&mut ann, 1, DAN).await, Err(ErrorCode::RecipientNotVisible));
    assert_eq!(claim(&mut ann, 2, ANN).await, Err(ErrorCode::RecipientNotVisible), "not one's own");
    assert_eq!(b.server.as_ref().unwrap().mailbox().unwrap().key_packages, 2, "nothing handed out");
    // A burst of claims is answered; past it they are refused with a delay, and the connection stays.
    let mut refused = None;
    for n in 10..60 {
        match claim(&mut ann, n, CAT).await {
            Ok(Some(label)) => assert_eq!(label, "cat"),
            Err(ErrorCode::RateLimited) => {
                refused = Some(n);
                break;
            }
            other => panic!("claim {n}: {other:?}"),
        }
    }
    let refused = refused.expect("claims are bounded");
    assert!(refused >= 10 + 30, "the burst serves a large group at once: refused at claim {}", refused - 10);
    assert!(ann.ping().await.is_ok());

    // A KeyPackage over its limit is refused (not fatal) and nothing is kept.
    let big = Opaque::from_bytes(&vec![7u8; peerbubble_proto::limits::MAX_KEY_PACKAGE_BYTES + 1]).unwrap();
    ann.send_frame(&ClientFrame::PublishKeyPackage { key_package: big, last_resort: false }).await.unwrap();
    assert_eq!(expect_error(&mut ann).await, ErrorCode::InvalidField);
    assert!(ann.ping().await.is_ok());
    assert_eq!(b.server.as_ref().unwrap().mailbox().unwrap().key_packages, 2);
}

#[tokio::test]
async fn a_bubble_without_a_mailbox_keeps_no_key_packages_and_says_so() {
    let b = Bubble::start(&bubble_yaml(true), |_| {}).await;
    let mut ann = b.connect(ANN).await;
    publish(&mut ann, "ann", false).await;
    assert_eq!(expect_error(&mut ann).await, ErrorCode::InvalidField);
    let mut bob = b.connect(BOB).await;
    assert_eq!(claim(&mut bob, 1, ANN).await, Ok(None));
    // No stock is announced: nothing but the answer to a ping follows the directory.
    drop(ann);
    let mut ann = b.connect(ANN).await;
    let ping = ann.ping().await.unwrap();
    match ann.next().await.unwrap() {
        ServerFrame::Pong { id } => assert_eq!(id, ping),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_removed_member_s_key_packages_are_purged_from_memory_and_disk() {
    let b = bubble(|_| {}).await;
    let mut dan = b.connect(DAN).await;
    publish(&mut dan, "DANCANARY", false).await;
    publish(&mut dan, "DANCANARY", true).await;
    let file = b.dir.path().join("mailbox.sqlite");
    let needle = key_package("DANCANARY").as_wire().to_owned().into_bytes();
    let on_disk = || std::fs::read(&file).unwrap_or_default().windows(needle.len()).any(|w| w == needle.as_slice());
    until("Dan's KeyPackages on disk", on_disk).await;
    drop(dan);
    b.write(&bubble_yaml(false));
    until("Dan's KeyPackages purged", || b.server.as_ref().unwrap().mailbox().unwrap().key_packages == 0).await;
    until("and gone from the file", || !on_disk()).await;
}
