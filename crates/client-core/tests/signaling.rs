//! The sans-IO signaling client against a scripted server made of the protocol's own frames: handshake,
//! directory reassembly, presence, need-to-know on what we send and receive, keep-alive, reconnection back-off,
//! and the refusals after which it must stop.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peerbubble_client_core::signaling::{HANDSHAKE_TIMEOUT_MS, MAX_BACKOFF_MS, MIN_BACKOFF_MS, UNKNOWN_MEMBER_RETRIES};
use peerbubble_client_core::{SignalEvent, Signaling, SignalingError};
use peerbubble_proto::{
    ClientFrame, DirectoryEntry, ErrorCode, IdentityKey, Limits, MemberId, Nonce, Opaque, Purpose, ServerFrame,
    SessionId, auth_message, decode_client_frame, encode_frame,
};

const BUBBLE: &str = "crisis-cell-1";

fn key(n: u8) -> IdentityKey {
    IdentityKey::from_seed(&[n; 32])
}

fn id(n: u8) -> MemberId {
    key(n).public_key().member_id()
}

fn entry(n: u8, online: bool) -> DirectoryEntry {
    DirectoryEntry {
        member: id(n),
        public_key: key(n).public_key(),
        display_name: format!("member {n}"),
        categories: vec!["medics".into()],
        online,
    }
}

fn limits() -> Limits {
    Limits {
        max_frame_bytes: 4096,
        max_body_bytes: 2048,
        frames_per_second: 50,
        frame_burst: 100,
        member_frames_per_second: 100,
        max_sessions_per_member: 4,
        idle_timeout_ms: 60_000,
    }
}

fn feed(s: &mut Signaling, frame: &ServerFrame, now: u64) -> Result<(), SignalingError> {
    s.handle_text(encode_frame(frame).as_bytes(), now)
}

fn events(s: &mut Signaling) -> Vec<SignalEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn sent(s: &mut Signaling) -> Vec<ClientFrame> {
    std::iter::from_fn(|| s.poll_transmit()).map(|t| decode_client_frame(t.as_bytes(), 65_536).unwrap()).collect()
}

fn challenge(nonce: u8, bubble: &str) -> ServerFrame {
    ServerFrame::Challenge {
        protocol: peerbubble_proto::PROTOCOL_VERSION,
        bubble: bubble.into(),
        nonce: Nonce::from_bytes([nonce; 32]),
        expires_in_ms: 10_000,
    }
}

/// Through the handshake with a two-part directory: members 2 (online) and 3 (offline).
fn ready(s: &mut Signaling, now: u64) -> SessionId {
    assert_eq!(events(s), [SignalEvent::Connect]);
    s.connected(now);
    feed(s, &challenge(9, BUBBLE), now).unwrap();
    match sent(s).as_slice() {
        [ClientFrame::Auth { public_key, nonce, signature }] => {
            assert_eq!(*public_key, key(1).public_key());
            public_key.verify(Purpose::SignalAuth, &auth_message(BUBBLE, nonce, public_key), signature).unwrap();
        }
        other => panic!("{other:?}"),
    }
    let welcome = ServerFrame::Welcome {
        member: id(1),
        session: SessionId(7),
        display_name: "Ann".into(),
        ice_servers: Vec::new(),
        ice_expires_in_ms: None,
        limits: limits(),
        policy: Default::default(),
        mailbox_ttl_ms: None,
    };
    feed(s, &welcome, now).unwrap();
    assert!(!s.is_ready(), "not before the directory is complete");
    feed(s, &ServerFrame::Directory { part: 0, parts: 2, entries: vec![entry(2, true)] }, now).unwrap();
    assert!(events(s).is_empty());
    feed(s, &ServerFrame::Directory { part: 1, parts: 2, entries: vec![entry(3, false)] }, now).unwrap();
    assert_eq!(events(s), [SignalEvent::Ready { session: SessionId(7) }]);
    SessionId(7)
}

#[test]
fn handshake_directory_and_presence() {
    let mut s = Signaling::new(key(1), Some(BUBBLE.into()));
    ready(&mut s, 0);
    assert_eq!((s.session(), s.display_name(), s.bubble()), (Some(SessionId(7)), "Ann", Some(BUBBLE)));
    let online: Vec<(MemberId, bool)> = s.directory().values().map(|e| (e.member, e.online)).collect();
    assert_eq!(online.len(), 2);
    assert!(online.contains(&(id(2), true)) && online.contains(&(id(3), false)));
    feed(&mut s, &ServerFrame::Presence { member: id(3), online: true }, 1).unwrap();
    // A presence for someone we do not see is ignored.
    feed(&mut s, &ServerFrame::Presence { member: id(9), online: true }, 1).unwrap();
    assert_eq!(events(&mut s), [SignalEvent::Presence { member: id(3), online: true }]);
    assert!(s.directory()[&id(3)].online);
    // A new complete directory replaces the old one.
    feed(&mut s, &ServerFrame::Directory { part: 0, parts: 1, entries: vec![entry(4, true)] }, 2).unwrap();
    assert_eq!(events(&mut s), [SignalEvent::DirectoryChanged]);
    assert_eq!(s.directory().keys().copied().collect::<Vec<_>>(), [id(4)]);
}

#[test]
fn the_bubble_policy_arrives_in_welcome_and_changes_live() {
    use peerbubble_proto::BubblePolicy;
    let mut s = Signaling::new(key(1), Some(BUBBLE.into()));
    ready(&mut s, 0);
    assert_eq!(*s.policy(), BubblePolicy::default());
    let strict = BubblePolicy { masked_by_default: true, relay_only: true, ..BubblePolicy::default() };
    feed(&mut s, &ServerFrame::Policy { policy: strict }, 1).unwrap();
    assert_eq!(events(&mut s), [SignalEvent::PolicyChanged]);
    assert_eq!(*s.policy(), strict);
    // The same policy again changes nothing.
    feed(&mut s, &ServerFrame::Policy { policy: strict }, 2).unwrap();
    assert!(events(&mut s).is_empty());
    // A policy out of bounds never reaches the state machine: the codec refuses the frame.
    let bad = r#"{"type":"policy","policy":{"masked_by_default":true,"disappear_within_secs":0,"files_allowed":true,"max_file_bytes":0,"calls_allowed":true,"relay_only":false}}"#;
    assert!(peerbubble_proto::decode_server_frame(bad.as_bytes()).is_err());
    assert!(s.handle_text(bad.as_bytes(), 3).is_err());
    events(&mut s);
    assert_eq!(*s.policy(), strict);
}

#[test]
fn another_bubble_never_gets_our_signature() {
    let mut s = Signaling::new(key(1), Some(BUBBLE.into()));
    events(&mut s);
    s.connected(0);
    assert!(matches!(feed(&mut s, &challenge(9, "other-bubble"), 0), Err(SignalingError::Protocol(_))));
    assert!(sent(&mut s).is_empty());
    assert_eq!(events(&mut s), [SignalEvent::Disconnect]);
    // The edge closes; we try again later.
    s.disconnected(None, 5);
    assert!(matches!(events(&mut s).as_slice(), [SignalEvent::Closed { code: None, retry_in_ms: Some(_) }]));
}

#[test]
fn inconsistent_server_frames_are_violations() {
    let welcome_for = |member| ServerFrame::Welcome {
        member,
        session: SessionId(1),
        display_name: "x".into(),
        ice_servers: Vec::new(),
        ice_expires_in_ms: None,
        limits: limits(),
        policy: Default::default(),
        mailbox_ttl_ms: None,
    };
    // Welcome for someone else.
    let mut s = Signaling::new(key(1), None);
    s.connected(0);
    feed(&mut s, &challenge(1, BUBBLE), 0).unwrap();
    assert!(feed(&mut s, &welcome_for(id(2)), 0).is_err());
    // A directory entry whose id is not its key's, and one naming ourselves.
    for bad in [DirectoryEntry { member: id(3), ..entry(2, true) }, entry(1, true)] {
        let mut s = Signaling::new(key(1), None);
        s.connected(0);
        feed(&mut s, &challenge(1, BUBBLE), 0).unwrap();
        feed(&mut s, &welcome_for(id(1)), 0).unwrap();
        let frame = ServerFrame::Directory { part: 0, parts: 1, entries: vec![bad] };
        assert!(matches!(feed(&mut s, &frame, 0), Err(SignalingError::Protocol(_))));
        assert!(!s.is_ready());
    }
    // Parts out of order.
    let mut s = Signaling::new(key(1), None);
    s.connected(0);
    feed(&mut s, &challenge(1, BUBBLE), 0).unwrap();
    feed(&mut s, &welcome_for(id(1)), 0).unwrap();
    let frame = ServerFrame::Directory { part: 1, parts: 2, entries: vec![entry(2, true)] };
    assert!(feed(&mut s, &frame, 0).is_err());
    // Garbage and a deliver before authentication.
    let mut s = Signaling::new(key(1), None);
    s.connected(0);
    assert!(s.handle_text(b"[]", 0).is_err());
    let mut s = Signaling::new(key(1), None);
    s.connected(0);
    let deliver = ServerFrame::Deliver {
        from: id(2),
        from_session: SessionId(1),
        body: Opaque::from_bytes(b"x").unwrap(),
        seq: None,
    };
    assert!(feed(&mut s, &deliver, 0).is_err());
}

#[test]
fn need_to_know_on_what_we_send_and_receive() {
    let mut s = Signaling::new(key(1), None);
    assert_eq!(s.send(id(2), None, b"early", 0), Err(SignalingError::NotReady));
    ready(&mut s, 0);
    let id1 = s.send(id(2), None, b"hello", 1).unwrap();
    let id2 = s.send(id(1), None, b"to my other tabs", 1).unwrap();
    assert_ne!(id1, id2);
    assert_eq!(s.send(id(9), None, b"stranger", 1), Err(SignalingError::NotVisible(id(9))));
    assert!(matches!(s.send(id(2), None, &[0; 2049], 1), Err(SignalingError::Invalid(_))), "over max_body_bytes");
    match sent(&mut s).as_slice() {
        [ClientFrame::Send { id: frame_id, to, body, .. }, ClientFrame::Send { .. }] => {
            assert_eq!((*frame_id, *to, body.to_bytes()), (id1, id(2), b"hello".to_vec()));
        }
        other => panic!("{other:?}"),
    }
    let body = Opaque::from_bytes(b"sealed").unwrap();
    for (from, passes) in [(id(2), true), (id(1), true), (id(9), false)] {
        feed(&mut s, &ServerFrame::Deliver { from, from_session: SessionId(3), body: body.clone(), seq: None }, 2)
            .unwrap();
        let got = events(&mut s);
        assert_eq!(!got.is_empty(), passes, "deliver from {from}");
    }
    feed(&mut s, &ServerFrame::Ack { id: id1, sessions: 2, stored: 0 }, 3).unwrap();
    let refusal = ServerFrame::Error {
        code: ErrorCode::RecipientCongested,
        message: "slow".into(),
        id: Some(id2),
        retry_after_ms: Some(250),
    };
    feed(&mut s, &refusal, 3).unwrap();
    assert_eq!(
        events(&mut s),
        [
            SignalEvent::Ack { id: id1, sessions: 2, stored: 0 },
            SignalEvent::Refused { id: Some(id2), code: ErrorCode::RecipientCongested, retry_after_ms: Some(250) }
        ]
    );
    assert!(s.is_ready(), "a non-fatal refusal keeps the session");
    // Commits: never to ourselves, only to members we see, and a valid group id.
    let group = [7u8; 16];
    assert!(s.commit(&group, 0, &[id(2), id(3)], b"c", 4).is_ok());
    assert!(matches!(s.commit(&group, 1, &[id(1)], b"c", 4), Err(SignalingError::Invalid(_))));
    assert_eq!(s.commit(&group, 1, &[id(9)], b"c", 4), Err(SignalingError::NotVisible(id(9))));
    assert!(matches!(s.commit(&[1, 2], 1, &[id(2)], b"c", 4), Err(SignalingError::Invalid(_))));
    assert!(matches!(s.commit(&group, u64::MAX, &[id(2)], b"c", 4), Err(SignalingError::Invalid(_))));
    assert!(matches!(sent(&mut s).as_slice(), [ClientFrame::Commit { epoch: 0, .. }]));
}

#[test]
fn keeps_alive_at_a_third_of_the_idle_timeout() {
    let mut s = Signaling::new(key(1), None);
    ready(&mut s, 1_000);
    let due = s.poll_timeout().unwrap();
    assert_eq!(due, 1_000 + limits().idle_timeout_ms / 3);
    s.handle_timeout(due - 1);
    assert!(sent(&mut s).is_empty());
    s.handle_timeout(due);
    assert!(matches!(sent(&mut s).as_slice(), [ClientFrame::Ping { .. }]));
    // Sending anything postpones the next ping.
    s.send(id(2), None, b"x", due + 5_000).unwrap();
    sent(&mut s);
    assert_eq!(s.poll_timeout(), Some(due + 5_000 + limits().idle_timeout_ms / 3));
}

#[test]
fn reconnects_with_growing_back_off_and_starts_over() {
    let mut s = Signaling::new(key(1), None);
    ready(&mut s, 0);
    let mut now = 10;
    let mut delays = Vec::new();
    for _ in 0..10 {
        s.disconnected(None, now);
        let delay = match events(&mut s).as_slice() {
            [SignalEvent::Closed { code: None, retry_in_ms: Some(d) }] => *d,
            other => panic!("{other:?}"),
        };
        delays.push(delay);
        assert_eq!(s.poll_timeout(), Some(now + delay));
        s.handle_timeout(now + delay - 1);
        assert!(events(&mut s).is_empty(), "not before the delay");
        now += delay;
        s.handle_timeout(now);
        assert_eq!(events(&mut s), [SignalEvent::Connect]);
        // The socket fails to open, or drops during the handshake.
        s.connected(now);
    }
    assert!(delays[0] >= MIN_BACKOFF_MS && delays[0] <= MIN_BACKOFF_MS * 5 / 4, "{delays:?}");
    assert!(delays.windows(2).take(5).all(|w| w[1] > w[0]), "grows: {delays:?}");
    assert!(delays.iter().all(|d| *d <= MAX_BACKOFF_MS * 5 / 4), "capped: {delays:?}");
    // A successful session resets the back-off; the directory was kept meanwhile.
    assert_eq!(s.directory().len(), 2);
    feed(&mut s, &challenge(3, BUBBLE), now).unwrap();
    sent(&mut s);
    let welcome = ServerFrame::Welcome {
        member: id(1),
        session: SessionId(8),
        display_name: "Ann".into(),
        ice_servers: Vec::new(),
        ice_expires_in_ms: None,
        limits: limits(),
        policy: Default::default(),
        mailbox_ttl_ms: None,
    };
    feed(&mut s, &welcome, now).unwrap();
    feed(&mut s, &ServerFrame::Directory { part: 0, parts: 1, entries: vec![entry(2, true)] }, now).unwrap();
    assert_eq!(events(&mut s), [SignalEvent::Ready { session: SessionId(8) }]);
    s.disconnected(Some(1006), now);
    assert!(
        matches!(events(&mut s).as_slice(), [SignalEvent::Closed { retry_in_ms: Some(d), .. }] if *d <= MIN_BACKOFF_MS * 5 / 4)
    );
}

#[test]
fn the_server_s_retry_after_is_honoured() {
    let mut s = Signaling::new(key(1), None);
    ready(&mut s, 0);
    let shutdown = ServerFrame::Error {
        code: ErrorCode::ServerShutdown,
        message: "restarting".into(),
        id: None,
        retry_after_ms: Some(2_345),
    };
    feed(&mut s, &shutdown, 5).unwrap();
    events(&mut s);
    s.disconnected(Some(1012), 6);
    assert_eq!(
        events(&mut s),
        [SignalEvent::Closed { code: Some(ErrorCode::ServerShutdown), retry_in_ms: Some(2_345) }]
    );
}

#[test]
fn a_member_never_accepted_retries_unknown_member_for_a_while_then_stops() {
    // Just enrolled: the bubble-server may not have picked the enrollment up yet.
    let mut s = Signaling::new(key(1), Some(BUBBLE.into()));
    let refuse = |s: &mut Signaling, now: u64| {
        s.connected(now);
        feed(s, &challenge(1, BUBBLE), now).unwrap();
        sent(s);
        let frame =
            ServerFrame::Error { code: ErrorCode::UnknownMember, message: "no".into(), id: None, retry_after_ms: None };
        feed(s, &frame, now).unwrap();
        events(s);
        s.disconnected(Some(1008), now);
        events(s)
    };
    let mut now = 0;
    assert_eq!(events(&mut s), [SignalEvent::Connect]);
    for attempt in 1..=UNKNOWN_MEMBER_RETRIES {
        match refuse(&mut s, now).as_slice() {
            [SignalEvent::Closed { code: Some(ErrorCode::UnknownMember), retry_in_ms: Some(delay) }] => now += delay,
            other => panic!("attempt {attempt}: {other:?}"),
        }
        s.handle_timeout(now);
        assert_eq!(events(&mut s), [SignalEvent::Connect], "attempt {attempt} is retried");
    }
    assert_eq!(
        refuse(&mut s, now),
        [SignalEvent::Closed { code: Some(ErrorCode::UnknownMember), retry_in_ms: None }],
        "then it stops: the key is really not a member"
    );
    assert_eq!(s.stopped(), Some(ErrorCode::UnknownMember));

    // Accepted once, then refused as unknown: removed, final at once (the next test holds the other codes).
    let mut s = Signaling::new(key(1), Some(BUBBLE.into()));
    ready(&mut s, 0);
    s.disconnected(Some(1006), 1);
    events(&mut s);
    s.handle_timeout(60_000);
    assert_eq!(
        refuse(&mut s, 60_000),
        [SignalEvent::Closed { code: Some(ErrorCode::UnknownMember), retry_in_ms: None }]
    );
}

#[test]
fn stops_for_good_when_the_bubble_refuses_the_member() {
    for (error, close) in [
        (Some(ErrorCode::UnknownMember), Some(1008)),
        (Some(ErrorCode::MemberRemoved), Some(4001)),
        (None, Some(4001)),
        (Some(ErrorCode::BadSignature), Some(1008)),
    ] {
        let mut s = Signaling::new(key(1), None);
        ready(&mut s, 0);
        if let Some(code) = error {
            let frame = ServerFrame::Error { code, message: "no".into(), id: None, retry_after_ms: None };
            feed(&mut s, &frame, 1).unwrap();
            events(&mut s);
        }
        s.disconnected(close, 2);
        let code = error.unwrap_or(ErrorCode::MemberRemoved);
        assert_eq!(events(&mut s), [SignalEvent::Closed { code: Some(code), retry_in_ms: None }]);
        assert_eq!((s.stopped(), s.poll_timeout()), (Some(code), None));
        s.handle_timeout(u64::MAX / 2);
        assert!(events(&mut s).is_empty(), "never reconnects");
        assert_eq!(s.send(id(2), None, b"x", 3), Err(SignalingError::Stopped(code)));
    }
    // Too many sessions is worth retrying later.
    let mut s = Signaling::new(key(1), None);
    events(&mut s);
    s.connected(0);
    feed(&mut s, &challenge(1, BUBBLE), 0).unwrap();
    let frame = ServerFrame::Error {
        code: ErrorCode::TooManySessions,
        message: "close one".into(),
        id: None,
        retry_after_ms: None,
    };
    feed(&mut s, &frame, 0).unwrap();
    events(&mut s);
    s.disconnected(Some(1008), 1);
    assert!(matches!(
        events(&mut s).as_slice(),
        [SignalEvent::Closed { code: Some(ErrorCode::TooManySessions), retry_in_ms: Some(_) }]
    ));
}

#[test]
fn a_stalled_handshake_is_abandoned() {
    let mut s = Signaling::new(key(1), None);
    events(&mut s);
    s.connected(100);
    assert_eq!(s.poll_timeout(), Some(100 + HANDSHAKE_TIMEOUT_MS));
    s.handle_timeout(100 + HANDSHAKE_TIMEOUT_MS);
    assert_eq!(events(&mut s), [SignalEvent::Disconnect]);
    s.disconnected(None, 100 + HANDSHAKE_TIMEOUT_MS);
    assert!(matches!(events(&mut s).as_slice(), [SignalEvent::Closed { retry_in_ms: Some(_), .. }]));
}

#[test]
fn debug_shows_no_key_material() {
    let s = Signaling::new(key(1), None);
    let text = format!("{s:?}");
    let seed = key(1).to_seed_base64();
    assert!(!text.contains(seed.as_str()), "{text}");
    assert!(text.contains(&id(1).to_string()));
}

#[test]
fn mailbox_entries_come_in_order_and_are_acknowledged_once_and_only_when_seen() {
    let mut s = Signaling::new(key(1), None);
    ready(&mut s, 0);
    let body = Opaque::from_bytes(b"kept").unwrap();
    let kept =
        |seq| ServerFrame::Deliver { from: id(2), from_session: SessionId(3), body: body.clone(), seq: Some(seq) };
    // Nothing seen, nothing to acknowledge.
    s.acknowledge_mailbox(5, 1);
    assert!(sent(&mut s).is_empty());
    feed(&mut s, &kept(4), 1).unwrap();
    feed(&mut s, &kept(6), 1).unwrap();
    assert!(matches!(
        events(&mut s).as_slice(),
        [SignalEvent::Deliver { seq: Some(4), .. }, SignalEvent::Deliver { seq: Some(6), .. }]
    ));
    assert_eq!(s.mailbox_seen_upto(), Some(6));
    // Not past what arrived; once; a lower one after it is not sent again.
    s.acknowledge_mailbox(7, 2);
    assert!(sent(&mut s).is_empty(), "cannot acknowledge what has not arrived");
    s.acknowledge_mailbox(6, 2);
    assert_eq!(sent(&mut s), [ClientFrame::Received { upto: 6 }]);
    s.acknowledge_mailbox(6, 2);
    s.acknowledge_mailbox(4, 2);
    assert!(sent(&mut s).is_empty());
    // A gap is an entry too; then an entry that goes back is a protocol violation.
    let gap = ServerFrame::Gap { seq: 8, lost: 2, groups: vec![] };
    feed(&mut s, &gap, 3).unwrap();
    assert_eq!(events(&mut s), [SignalEvent::Gap { lost: 2, groups: vec![] }]);
    assert!(feed(&mut s, &kept(7), 3).is_err(), "entries out of order");
    assert!(!s.is_ready());
}
