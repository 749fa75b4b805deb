//! Signaling over real WebSockets on loopback: authentication, need-to-know, relay, multi-session, reload,
//! limits, restart, health and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use peerbubble_peer::{ClientError, SignalClient};
use peerbubble_proto::{
    ClientFrame, ErrorCode, MemberId, Nonce, Opaque, Purpose, ServerFrame, SessionId, auth_message,
    decode_server_frame, encode_frame,
};
use support::*;

const ANN: u16 = 1;
const BOB: u16 = 2;
const CAT: u16 = 3;
const DAN: u16 = 4;
const EVE: u16 = 5;

fn bubble_yaml() -> String {
    let mut yaml = String::from(
        "bubble: test-bubble\ncategories:\n  - {id: medics}\n  - {id: logistics}\n  - {id: command, sees: [medics]}\n  - {id: press}\nmembers:\n",
    );
    yaml += &member(ANN, "Ann", &["medics"]);
    yaml += &member(BOB, "Bob", &["medics", "logistics"]);
    yaml += &member(CAT, "Cat", &["logistics"]);
    yaml += &member(DAN, "Dan", &["command"]);
    yaml += &member(EVE, "Eve", &["press"]);
    yaml
}

async fn bubble() -> Bubble {
    Bubble::start(&bubble_yaml(), |_| {}).await
}

#[tokio::test]
async fn directory_slices_follow_overlapping_categories() {
    let b = bubble().await;
    for (seed, expected) in [
        (ANN, vec!["Bob", "Dan"]),
        (BOB, vec!["Ann", "Cat", "Dan"]),
        (CAT, vec!["Bob"]),
        (DAN, vec!["Ann", "Bob"]),
        (EVE, vec![]),
    ] {
        let client = b.connect(seed).await;
        assert_eq!(client.display_names(), expected, "slice of member {seed}");
        assert_eq!(client.member(), id(seed));
        assert_eq!(client.bubble(), "test-bubble");
    }
    // Cat learns Bob's logistics category but not that he is a medic.
    let cat = b.connect(CAT).await;
    assert_eq!(cat.directory()[&id(BOB)].categories, ["logistics"]);
}

#[tokio::test]
async fn authentication_refusals() {
    let b = bubble().await;
    // Unknown member.
    match SignalClient::connect(&b.url(), &key(99)).await {
        Err(ClientError::Refused { code: ErrorCode::UnknownMember, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Wrong key: claims Ann's public key, signs with another.
    let mut raw = SignalClient::raw(&b.url()).await.unwrap();
    let (bubble, nonce) = match raw.next(WAIT).await.unwrap() {
        ServerFrame::Challenge { bubble, nonce, .. } => (bubble, nonce),
        other => panic!("{other:?}"),
    };
    let ann = key(ANN).public_key();
    let forged = key(99).sign(Purpose::SignalAuth, &auth_message(&bubble, &nonce, &ann));
    raw.send_text(encode_frame(&ClientFrame::Auth { public_key: ann, nonce, signature: forged })).await.unwrap();
    assert!(matches!(raw.next(WAIT).await, Ok(ServerFrame::Error { code: ErrorCode::BadSignature, .. })));
    assert!(matches!(raw.next(WAIT).await, Err(ClientError::Closed(Some(1008)))));

    // Replayed challenge answer: record a good answer, replay it on a new connection.
    let mut first = SignalClient::raw(&b.url()).await.unwrap();
    let nonce = match first.next(WAIT).await.unwrap() {
        ServerFrame::Challenge { nonce, .. } => nonce,
        other => panic!("{other:?}"),
    };
    let answer = encode_frame(&ClientFrame::Auth {
        public_key: ann,
        nonce: nonce.clone(),
        signature: key(ANN).sign(Purpose::SignalAuth, &auth_message("test-bubble", &nonce, &ann)),
    });
    first.send_text(answer.clone()).await.unwrap();
    assert!(matches!(first.next(WAIT).await, Ok(ServerFrame::Welcome { .. })));
    let mut second = SignalClient::raw(&b.url()).await.unwrap();
    second.next(WAIT).await.unwrap();
    second.send_text(answer).await.unwrap();
    assert!(matches!(second.next(WAIT).await, Ok(ServerFrame::Error { code: ErrorCode::ChallengeReplayed, .. })));

    // A nonce nobody issued.
    let mut third = SignalClient::raw(&b.url()).await.unwrap();
    third.next(WAIT).await.unwrap();
    let made_up = Nonce::from_bytes([42; 32]);
    let signature = key(ANN).sign(Purpose::SignalAuth, &auth_message("test-bubble", &made_up, &ann));
    third.send_text(encode_frame(&ClientFrame::Auth { public_key: ann, nonce: made_up, signature })).await.unwrap();
    assert!(matches!(third.next(WAIT).await, Ok(ServerFrame::Error { code: ErrorCode::ChallengeMismatch, .. })));

    // A frame before auth.
    let mut early = SignalClient::raw(&b.url()).await.unwrap();
    early.next(WAIT).await.unwrap();
    early.send_text(r#"{"type":"ping","id":1}"#.into()).await.unwrap();
    assert!(matches!(early.next(WAIT).await, Ok(ServerFrame::Error { code: ErrorCode::NotAuthenticated, .. })));

    let metrics = b.metrics();
    for reason in ["unknown_member", "bad_signature", "challenge_replayed", "challenge_mismatch", "not_authenticated"] {
        assert!(
            metrics.contains(&format!("peerbubble_signal_auth_failures_total{{reason=\"{reason}\"}} 1")),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn expired_challenge_is_refused() {
    let b = Bubble::start(&bubble_yaml(), |c| c.challenge_ttl = Duration::from_secs(1)).await;
    let mut raw = SignalClient::raw(&b.url()).await.unwrap();
    let expires = match raw.next(WAIT).await.unwrap() {
        ServerFrame::Challenge { expires_in_ms, .. } => expires_in_ms,
        other => panic!("{other:?}"),
    };
    assert_eq!(expires, 1000);
    // Say nothing: the server closes when the challenge expires.
    assert!(matches!(raw.next(WAIT).await, Ok(ServerFrame::Error { code: ErrorCode::ChallengeExpired, .. })));
    assert!(matches!(raw.next(WAIT).await, Err(ClientError::Closed(Some(1008)))));
}

#[tokio::test]
async fn relay_between_visible_members_only() {
    let b = bubble().await;
    let mut ann = b.connect(ANN).await;
    let mut bob = b.connect(BOB).await;
    let mut cat = b.connect(CAT).await;

    let id = ann.send(id(BOB), b"sealed bytes").await.unwrap();
    let delivered = expect(&mut bob, "deliver", |f| match f {
        ServerFrame::Deliver { from, from_session, body, .. } => Some((*from, *from_session, body.to_bytes())),
        _ => None,
    })
    .await;
    assert_eq!(delivered, (id_of(ANN), ann.session(), b"sealed bytes".to_vec()));
    let acked = expect(&mut ann, "ack", |f| match f {
        ServerFrame::Ack { id, sessions, .. } => Some((*id, *sessions)),
        _ => None,
    })
    .await;
    assert_eq!(acked, (id, 1));

    // Ann and Cat do not share a category: refused, nothing reaches Cat.
    let refused = ann.send_unchecked(id_of(CAT), b"not for you").await.unwrap();
    let (code, ref_id) = expect(&mut ann, "error", |f| match f {
        ServerFrame::Error { code, id, .. } => Some((*code, *id)),
        _ => None,
    })
    .await;
    assert_eq!((code, ref_id), (ErrorCode::RecipientNotVisible, Some(refused)));

    // Spoofed sender.
    let body = Opaque::from_bytes(b"x").unwrap();
    ann.send_frame(&ClientFrame::Send { id: 77, to: id_of(BOB), to_session: None, from: Some(id_of(CAT)), body })
        .await
        .unwrap();
    assert_eq!(expect_error(&mut ann).await, ErrorCode::SpoofedSender);

    // Dan is visible to Ann but offline.
    ann.send(id_of(DAN), b"later").await.unwrap();
    assert_eq!(expect_error(&mut ann).await, ErrorCode::RecipientOffline);

    // Cat received nothing: the next thing Cat gets is Bob's message.
    bob.send(id_of(CAT), b"hello cat").await.unwrap();
    let from = expect(&mut cat, "deliver", |f| match f {
        ServerFrame::Deliver { from, .. } => Some(*from),
        ServerFrame::Presence { .. } | ServerFrame::Ack { .. } => None,
        other => panic!("cat got {other:?}"),
    })
    .await;
    assert_eq!(from, id_of(BOB));

    let metrics = b.metrics();
    assert!(metrics.contains("peerbubble_signal_envelopes_refused_total{reason=\"recipient_offline\"} 1"), "{metrics}");
    assert!(
        metrics.contains("peerbubble_signal_security_events_total{event=\"recipient_not_visible\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("peerbubble_signal_envelopes_relayed_total 2"), "{metrics}");
}

fn id_of(seed: u16) -> MemberId {
    id(seed)
}

#[tokio::test]
async fn presence_is_scoped_to_visible_members() {
    let b = bubble().await;
    let mut ann = b.connect(ANN).await;
    assert!(ann.online().is_empty());
    // Cat and Eve are invisible to Ann: their arrival must not reach her. Bob's does, and comes first.
    let cat = b.connect(CAT).await;
    let eve = b.connect(EVE).await;
    let bob = b.connect(BOB).await;
    assert_eq!(expect_presence(&mut ann).await, (id(BOB), true));
    assert_eq!(ann.online(), vec![id(BOB)]);
    // Bob's own directory says Cat is online already.
    assert!(bob.directory()[&id(CAT)].online);
    drop((cat, eve));
    bob.close().await.unwrap();
    assert_eq!(expect_presence(&mut ann).await, (id(BOB), false));
    let dan = b.connect(DAN).await;
    assert_eq!(expect_presence(&mut ann).await, (id(DAN), true));
    assert!(dan.directory()[&id(ANN)].online);
}

#[tokio::test]
async fn several_sessions_of_one_member() {
    let b = Bubble::start(&bubble_yaml(), |c| c.max_sessions_per_member = 2).await;
    let mut bob = b.connect(BOB).await;
    let mut ann1 = b.connect(ANN).await;
    assert_eq!(expect_presence(&mut bob).await, (id(ANN), true));
    let mut ann2 = b.connect(ANN).await;
    assert_ne!(ann1.session(), ann2.session());

    // To the member: every session. To one session: only it.
    bob.send(id(ANN), b"both").await.unwrap();
    for ann in [&mut ann1, &mut ann2] {
        let body = expect(ann, "deliver", |f| match f {
            ServerFrame::Deliver { body, .. } => Some(body.to_bytes()),
            _ => None,
        })
        .await;
        assert_eq!(body, b"both");
    }
    assert!(matches!(
        expect(&mut bob, "ack", |f| matches!(f, ServerFrame::Ack { .. }).then(|| f.clone())).await,
        ServerFrame::Ack { sessions: 2, .. }
    ));
    bob.send_to(id(ANN), Some(ann2.session()), b"only two").await.unwrap();
    bob.send_to(id(ANN), Some(SessionId(u64::MAX)), b"nobody").await.unwrap();
    assert_eq!(expect_error(&mut bob).await, ErrorCode::RecipientOffline);
    let body = expect(&mut ann2, "deliver", |f| match f {
        ServerFrame::Deliver { body, .. } => Some(body.to_bytes()),
        _ => None,
    })
    .await;
    assert_eq!(body, b"only two");

    // Tabs of one member can reach each other (never the sending tab itself).
    ann1.send(id(ANN), b"sync").await.unwrap();
    let from_session = expect(&mut ann2, "deliver", |f| match f {
        ServerFrame::Deliver { from_session, .. } => Some(*from_session),
        _ => None,
    })
    .await;
    assert_eq!(from_session, ann1.session());

    // A third session is refused.
    match SignalClient::connect(&b.url(), &key(ANN)).await {
        Err(ClientError::Refused { code: ErrorCode::TooManySessions, .. }) => {}
        other => panic!("{other:?}"),
    }
    // Ann stays online until her last session closes.
    ann1.close().await.unwrap();
    bob.ping().await.unwrap();
    let next = expect(&mut bob, "pong or presence", |f| match f {
        ServerFrame::Pong { .. } => Some(None),
        ServerFrame::Presence { member, online } => Some(Some((*member, *online))),
        _ => None,
    })
    .await;
    assert_eq!(next, None, "ann is still online through her second session");
    ann2.close().await.unwrap();
    assert_eq!(expect_presence(&mut bob).await, (id(ANN), false));
    // And ann2's slot is free again.
    let _again = b.connect(ANN).await;
}

#[tokio::test]
async fn bubble_file_reload_applies_to_connected_members() {
    let b = bubble().await;
    let mut ann = b.connect(ANN).await;
    let mut cat = b.connect(CAT).await;
    let mut bob = b.connect(BOB).await;
    assert_eq!(expect_presence(&mut ann).await, (id(BOB), true));

    // Cat joins medics: Ann's slice gains Cat (online), Cat's gains Ann.
    let yaml = bubble_yaml()
        .replace("display_name: Cat, categories: [logistics]", "display_name: Cat, categories: [logistics, medics]");
    b.write(&yaml);
    expect(&mut ann, "directory with Cat", |f| matches!(f, ServerFrame::Directory { .. }).then_some(())).await;
    assert_eq!(ann.display_names(), ["Bob", "Cat", "Dan"]);
    assert!(ann.directory()[&id(CAT)].online);
    expect(&mut cat, "directory with Ann", |f| matches!(f, ServerFrame::Directory { .. }).then_some(())).await;
    // Cat is now a medic, and command sees medics: Dan too.
    assert_eq!(cat.display_names(), ["Ann", "Bob", "Dan"]);
    ann.send(id(CAT), b"now allowed").await.unwrap();
    expect(&mut cat, "deliver", |f| matches!(f, ServerFrame::Deliver { .. }).then_some(())).await;
    // Cat, visible to Ann only since the reload, leaves and comes back: Ann is told both.
    cat.close().await.unwrap();
    assert_eq!(expect_presence(&mut ann).await, (id(CAT), false));
    let mut cat = b.connect(CAT).await;
    assert_eq!(expect_presence(&mut ann).await, (id(CAT), true));

    // A broken file keeps the previous directory.
    b.write("bubble: test-bubble\nmembers: [{public_key: nope, display_name: X}]\n");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !b.metrics().contains("peerbubble_signal_directory_reloads_total{result=\"error\"} 1") {
        assert!(tokio::time::Instant::now() < deadline, "reload error not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ann.send(id(CAT), b"still allowed").await.unwrap();
    expect(&mut cat, "deliver", |f| matches!(f, ServerFrame::Deliver { .. }).then_some(())).await;

    // Bob removed: his session is closed with member_removed; Ann sees him go.
    let without_bob: String =
        yaml.lines().filter(|l| !l.contains("display_name: Bob")).map(|l| format!("{l}\n")).collect();
    b.write(&without_bob);
    assert_eq!(expect_closed(&mut bob).await, (Some(4001), Some(ErrorCode::MemberRemoved)));
    // Ann is told Bob left, by presence or by a directory without him, whichever comes first.
    loop {
        match ann.next_timeout(WAIT).await.unwrap() {
            ServerFrame::Presence { member, online: false } if member == id(BOB) => break,
            ServerFrame::Directory { .. } if !ann.directory().contains_key(&id(BOB)) => break,
            _ => {}
        }
    }
    // And he cannot come back.
    match SignalClient::connect(&b.url(), &key(BOB)).await {
        Err(ClientError::Refused { code: ErrorCode::UnknownMember, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_bubble_policy_is_in_welcome_and_reaches_connected_members_when_it_changes() {
    use peerbubble_proto::BubblePolicy;
    let b = bubble().await;
    let mut ann = b.connect(ANN).await;
    assert_eq!(*ann.policy(), BubblePolicy::default());
    b.write(&format!(
        "{}policy: {{masked_by_default: true, relay_only: true, disappear_within_secs: 3600}}\n",
        bubble_yaml()
    ));
    let pushed = expect(&mut ann, "policy", |f| match f {
        ServerFrame::Policy { policy } => Some(*policy),
        _ => None,
    })
    .await;
    let expected = BubblePolicy {
        masked_by_default: true,
        relay_only: true,
        disappear_within_secs: 3600,
        ..BubblePolicy::default()
    };
    assert_eq!(pushed, expected);
    assert_eq!(*ann.policy(), expected);
    // A new session gets it in welcome.
    let bob = b.connect(BOB).await;
    assert_eq!(*bob.policy(), expected);
    // A policy out of bounds is a broken file: the previous directory (and policy) stays.
    b.write(&format!("{}policy: {{max_file_bytes: 0}}\n", bubble_yaml()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !b.metrics().contains("peerbubble_signal_directory_reloads_total{result=\"error\"} 1") {
        assert!(tokio::time::Instant::now() < deadline, "invalid policy not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*b.connect(CAT).await.policy(), expected);
}

#[tokio::test]
async fn malformed_and_oversized_frames() {
    let b = Bubble::start(&bubble_yaml(), |c| c.max_frame_bytes = 4096).await;
    let mut ann = b.connect(ANN).await;
    assert_eq!(ann.limits().max_frame_bytes, 4096);
    for (text, code) in [
        ("not json".to_owned(), ErrorCode::MalformedFrame),
        (r#"{"type":"ping","id":1,"extra":true}"#.to_owned(), ErrorCode::MalformedFrame),
        (r#"{"type":"ping","id":1} trailing"#.to_owned(), ErrorCode::MalformedFrame),
        (format!(r#"{{"type":"send","id":1,"to":"{}","body":"AA=="}}"#, id(BOB)), ErrorCode::InvalidField),
        (r#"{"type":"send","id":1,"to":"ZZ","body":"AA"}"#.to_owned(), ErrorCode::InvalidField),
    ] {
        ann.send_text(text.clone()).await.unwrap();
        assert_eq!(expect_error(&mut ann).await, code, "{text}");
    }
    // Still usable after those.
    ann.ping().await.unwrap();
    expect(&mut ann, "pong", |f| matches!(f, ServerFrame::Pong { .. }).then_some(())).await;
    // Oversized: refused with frame_too_large and closed with 1009.
    ann.send_text(format!(r#"{{"type":"ping","id":1,"pad":"{}"}}"#, "x".repeat(5000))).await.unwrap();
    assert_eq!(expect_closed(&mut ann).await, (Some(1009), Some(ErrorCode::FrameTooLarge)));
    // Far beyond the limit: still closed, not crashed.
    let mut bob = b.connect(BOB).await;
    let _ = bob.send_text("x".repeat(1 << 20)).await;
    // The server may reset the connection before the client has read the close frame.
    let outcome = loop {
        match bob.next_timeout(WAIT).await {
            Ok(_) => {}
            Err(err) => break err,
        }
    };
    assert!(matches!(outcome, ClientError::Closed(Some(1009) | None) | ClientError::WebSocket(_)), "{outcome:?}");
    let metrics = b.metrics();
    assert!(metrics.contains("peerbubble_signal_frame_errors_total{reason=\"malformed_frame\"} 3"), "{metrics}");
    assert!(metrics.contains("peerbubble_signal_frame_errors_total{reason=\"invalid_field\"} 2"), "{metrics}");
    // The server still serves others.
    let _cat = b.connect(CAT).await;
}

#[tokio::test]
async fn flooding_is_rate_limited_then_closed() {
    let b = Bubble::start(&bubble_yaml(), |c| {
        c.frames_per_second = 5;
        c.frame_burst = 10;
    })
    .await;
    let mut ann = b.connect(ANN).await;
    for _ in 0..40 {
        if ann.ping().await.is_err() {
            break;
        }
    }
    let mut limited = 0;
    let close = loop {
        match ann.next_timeout(WAIT).await {
            Ok(ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms, .. }) => {
                assert!(retry_after_ms.is_some());
                limited += 1;
            }
            Ok(_) => {}
            Err(ClientError::Closed(code)) => break code,
            Err(err) => panic!("{err}"),
        }
    };
    assert!(limited >= 10, "{limited}");
    assert_eq!(close, Some(1008));
    // Other members are unaffected.
    let _bob = b.connect(BOB).await;
}

#[tokio::test]
async fn member_rate_limit_spans_sessions() {
    let b = Bubble::start(&bubble_yaml(), |c| {
        c.member_frames_per_second = 1;
        c.frames_per_second = 1000;
        c.frame_burst = 1000;
    })
    .await;
    let mut bob = b.connect(BOB).await;
    let mut ann1 = b.connect(ANN).await;
    let mut ann2 = b.connect(ANN).await;
    // Burst of twice the member rate, shared by both sessions.
    ann1.send(id(BOB), b"1").await.unwrap();
    ann2.send(id(BOB), b"2").await.unwrap();
    ann2.send(id(BOB), b"3").await.unwrap();
    assert_eq!(expect_error(&mut ann2).await, ErrorCode::RateLimited);
    let mut got = 0;
    while got < 2 {
        if let ServerFrame::Deliver { .. } = bob.next_timeout(WAIT).await.unwrap() {
            got += 1;
        }
    }
    let _ = &mut ann1;
}

#[tokio::test]
async fn slow_reader_does_not_grow_server_memory() {
    let b = Bubble::start(&bubble_yaml(), |c| {
        c.send_queue_bytes = 256 * 1024;
        c.frames_per_second = 100_000;
        c.frame_burst = 100_000;
        c.member_frames_per_second = 100_000;
    })
    .await;
    // Bob never reads.
    let _bob = b.connect(BOB).await;
    let mut ann = b.connect(ANN).await;
    let body = vec![0xAB; 32 * 1024];
    let mut congested = false;
    // 4 000 x 32 KiB = 128 MiB would be queued without a budget; the budget plus socket buffers hold far less.
    for _ in 0..4000 {
        ann.send(id(BOB), &body).await.unwrap();
        while let Ok(Ok(frame)) = tokio::time::timeout(Duration::ZERO, ann.next()).await {
            if matches!(frame, ServerFrame::Error { code: ErrorCode::RecipientCongested, .. }) {
                congested = true;
            }
        }
        if congested {
            break;
        }
    }
    if !congested {
        assert_eq!(expect_error(&mut ann).await, ErrorCode::RecipientCongested);
    }
    assert!(b.metrics().contains("peerbubble_signal_envelopes_refused_total{reason=\"recipient_congested\"}"));
    // Ann's own session keeps working.
    ann.ping().await.unwrap();
    expect(&mut ann, "pong", |f| matches!(f, ServerFrame::Pong { .. }).then_some(())).await;
}

#[tokio::test]
async fn idle_sessions_are_closed_and_pings_keep_them() {
    let b = Bubble::start(&bubble_yaml(), |c| c.idle_timeout = Duration::from_secs(1)).await;
    let mut idle = b.connect(ANN).await;
    let mut busy = b.connect(BOB).await;
    // Bob pings three times a second for twice the idle timeout, while Ann says nothing.
    let pinger = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            busy.ping().await.unwrap();
            expect(&mut busy, "pong", |f| matches!(f, ServerFrame::Pong { .. }).then_some(())).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        busy
    });
    let (code, error) = expect_closed(&mut idle).await;
    assert_eq!((code, error), (Some(4000), Some(ErrorCode::IdleTimeout)));
    let mut busy = pinger.await.unwrap();
    busy.ping().await.unwrap();
    expect(&mut busy, "pong", |f| matches!(f, ServerFrame::Pong { .. }).then_some(())).await;
}

#[tokio::test]
async fn restart_tells_clients_to_reconnect_and_they_can() {
    let mut b = bubble().await;
    let mut ann = b.connect(ANN).await;
    let mut bob = b.connect(BOB).await;
    let stop = tokio::spawn({
        let server = b.server.take().unwrap();
        async move { server.shutdown().await }
    });
    for client in [&mut ann, &mut bob] {
        let retry = expect(client, "shutdown notice", |f| match f {
            ServerFrame::Error { code: ErrorCode::ServerShutdown, retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        })
        .await;
        assert!(retry.is_some_and(|ms| (500..=3000).contains(&ms)), "{retry:?}");
        assert!(matches!(client.next_timeout(WAIT).await, Err(ClientError::Closed(Some(1012)))));
    }
    stop.await.unwrap().unwrap();
    b.restart().await;
    let mut ann = b.connect(ANN).await;
    let mut bob = b.connect(BOB).await;
    bob.send(id(ANN), b"after restart").await.unwrap();
    expect(&mut ann, "deliver", |f| matches!(f, ServerFrame::Deliver { .. }).then_some(())).await;
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let b = bubble().await;
    assert_eq!(b.http_get("/healthz").await, (200, "ok".to_owned()));
    assert_eq!(b.http_get("/readyz").await.0, 200);
    let _ann = b.connect(ANN).await;
    let (status, text) = b.http_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "peerbubble_signal_connections 1",
        "peerbubble_signal_sessions 1",
        "peerbubble_signal_bytes_total{direction=\"out\"}",
        "peerbubble_signal_directory_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    // A binary frame is refused with its own code.
    let mut raw = SignalClient::raw(&b.url()).await.unwrap();
    raw.next(WAIT).await.unwrap();
    raw.send_binary(vec![1, 2, 3]).await.unwrap();
    assert!(matches!(raw.next(WAIT).await, Ok(ServerFrame::Error { code: ErrorCode::BinaryFrame, .. })));
}

#[tokio::test]
async fn many_clients_relay_concurrently() {
    // 60 members in 12 teams of 5; every member messages every teammate.
    let mut yaml = String::from("bubble: many\ncategories:\n");
    for t in 0..12 {
        yaml += &format!("  - {{id: team-{t}}}\n");
    }
    yaml += "members:\n";
    for m in 0..60u16 {
        yaml += &member(100 + m, &format!("M{m}"), &[&format!("team-{}", m / 5)]);
    }
    let b = Bubble::start(&yaml, |_| {}).await;
    let url = b.url();
    let mut tasks = Vec::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(60));
    for m in 0..60u16 {
        let (url, barrier) = (url.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = SignalClient::connect(&url, &key(100 + m)).await.unwrap();
            assert_eq!(client.directory().len(), 4);
            barrier.wait().await;
            let mates: Vec<MemberId> = client.directory().keys().copied().collect();
            let mut from = BTreeSet::new();
            for mate in &mates {
                // A teammate may not have registered its session yet at the very start: retry when offline.
                loop {
                    client.send(*mate, format!("{m}").as_bytes()).await.unwrap();
                    let acked = loop {
                        match client.next_timeout(WAIT).await.unwrap() {
                            ServerFrame::Ack { .. } => break true,
                            ServerFrame::Error { code: ErrorCode::RecipientOffline, .. } => break false,
                            ServerFrame::Deliver { from: f, .. } => {
                                from.insert(f);
                            }
                            _ => {}
                        }
                    };
                    if acked {
                        break;
                    }
                }
            }
            while from.len() < 4 {
                if let ServerFrame::Deliver { from: f, .. } = client.next_timeout(WAIT).await.unwrap() {
                    from.insert(f);
                }
            }
            assert_eq!(from, mates.into_iter().collect());
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

#[test]
fn frames_decode_strictly_on_the_client_side_too() {
    let text = r#"{"type":"pong","id":1,"sneaky":1}"#;
    assert!(decode_server_frame(text.as_bytes()).is_err());
}
