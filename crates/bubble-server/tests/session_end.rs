//! Every way the server ends a session releases it (issue 13): afterwards the member is offline for those who
//! see it, its slot is free (the full number of sessions log in again), envelopes reach its other sessions, and
//! the gauges count what is really connected. Over real WebSockets, with a client written from the protocol
//! document (tokio-tungstenite and the proto types only), one test per close path.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_proto::{ClientFrame, ErrorCode, Purpose, ServerFrame, auth_message, decode_server_frame, encode_frame};
use support::{Bubble, WAIT, id, key, member};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const ANN: u16 = 1;
const BOB: u16 = 2;
const SESSIONS: usize = 4;

fn yaml(with_ann: bool) -> String {
    let mut yaml = String::from("bubble: end-bubble\ncategories:\n  - {id: medics}\nmembers:\n");
    if with_ann {
        yaml += &member(ANN, "Ann", &["medics"]);
    }
    yaml += &member(BOB, "Bob", &["medics"]);
    yaml
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A session opened by hand: challenge, auth, welcome, directory.
async fn login(b: &Bubble, seed: u16) -> Ws {
    let (mut ws, _) = tokio_tungstenite::connect_async(b.url()).await.unwrap();
    let (bubble, nonce) = match next(&mut ws).await {
        Some(ServerFrame::Challenge { bubble, nonce, .. }) => (bubble, nonce),
        other => panic!("{other:?}"),
    };
    let public_key = key(seed).public_key();
    let signature = key(seed).sign(Purpose::SignalAuth, &auth_message(&bubble, &nonce, &public_key));
    ws.send(Message::text(encode_frame(&ClientFrame::Auth { public_key, nonce, signature }))).await.unwrap();
    match next(&mut ws).await {
        Some(ServerFrame::Welcome { .. }) => {}
        other => panic!("member {seed}: {other:?}"),
    }
    match next(&mut ws).await {
        Some(ServerFrame::Directory { .. }) => ws,
        other => panic!("{other:?}"),
    }
}

/// The next frame; `None` once closed.
async fn next(ws: &mut Ws) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("a frame in time") {
            Some(Ok(Message::Text(text))) => return Some(decode_server_frame(text.as_bytes()).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    }
}

/// Reads until the close frame: (close code, last error code).
async fn closed(ws: &mut Ws) -> (Option<u16>, Option<ErrorCode>) {
    let mut last = None;
    loop {
        match tokio::time::timeout(WAIT, ws.next()).await.expect("closed in time") {
            Some(Ok(Message::Text(text))) => {
                if let Ok(ServerFrame::Error { code, .. }) = decode_server_frame(text.as_bytes()) {
                    last = Some(code);
                }
            }
            Some(Ok(Message::Close(frame))) => return (frame.map(|f| u16::from(f.code)), last),
            None | Some(Err(_)) => return (None, last),
            Some(Ok(_)) => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Path {
    TextTooLarge,
    BinaryTooLarge,
    Flood,
    InvalidUtf8,
    Idle,
    SlowConsumer,
    MemberRemoved,
}

/// Ends `victim` the way `path` does; returns what the victim saw (close code, last error code), or `None` when
/// it cannot read it any more (a slow consumer's buffers are full).
async fn end(
    b: &Bubble,
    path: Path,
    mut victim: Ws,
    bob: &mut Ws,
    others: &mut [Ws],
) -> Option<(Option<u16>, Option<ErrorCode>)> {
    match path {
        Path::TextTooLarge => {
            victim
                .send(Message::text(format!(r#"{{"type":"ping","id":1,"p":"{}"}}"#, "x".repeat(5000))))
                .await
                .unwrap();
        }
        Path::BinaryTooLarge => victim.send(Message::binary(vec![0u8; 5000])).await.unwrap(),
        Path::Flood => {
            for _ in 0..60 {
                if victim.send(Message::text(r#"{"type":"ping","id":1}"#)).await.is_err() {
                    break;
                }
            }
        }
        Path::InvalidUtf8 => {
            let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
            victim.send(Message::Frame(frame)).await.unwrap();
        }
        Path::Idle => {
            // The server's idle timeout is 1 s in this bubble: everyone else pings meanwhile.
            let mut last = None;
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let deadline = tokio::time::Instant::now() + WAIT;
            loop {
                tokio::select! {
                    message = victim.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            if let Ok(ServerFrame::Error { code, .. }) = decode_server_frame(text.as_bytes()) {
                                last = Some(code);
                            }
                        }
                        Some(Ok(Message::Close(frame))) => return Some((frame.map(|f| u16::from(f.code)), last)),
                        None | Some(Err(_)) => return Some((None, last)),
                        Some(Ok(_)) => {}
                    },
                    _ = tick.tick() => {
                        assert!(tokio::time::Instant::now() < deadline, "the idle session was never closed");
                        for ws in std::iter::once(&mut *bob).chain(others.iter_mut()) {
                            ws.send(Message::text(r#"{"type":"ping","id":3}"#)).await.unwrap();
                        }
                    }
                }
            }
        }
        Path::SlowConsumer => {
            // The victim stops reading; Bob fills its socket and its budget, then its own pongs cannot be queued.
            let body = format!(r#""{}""#, "A".repeat(3_000));
            loop {
                let send = format!(r#"{{"type":"send","id":5,"to":"{}","body":{body}}}"#, id(ANN));
                bob.send(Message::text(send)).await.unwrap();
                match next(bob).await {
                    Some(ServerFrame::Error { code: ErrorCode::RecipientCongested, .. }) => break,
                    Some(ServerFrame::Ack { .. } | ServerFrame::Presence { .. }) => {}
                    other => panic!("{other:?}"),
                }
            }
            // Its own pongs must arrive: once they no longer fit, the session is closed.
            for _ in 0..1000 {
                if victim.send(Message::text(r#"{"type":"ping","id":2}"#)).await.is_err() {
                    break;
                }
            }
            // It cannot read the close (its buffers are full of envelopes): the server says why it ended it.
            let offline = next_presence(bob).await;
            assert_eq!(offline, (id(ANN), false), "{path:?}");
            assert!(b.metrics().contains("peerbubble_signal_disconnects_total{reason=\"slow_consumer\"}"), "{path:?}");
            return None;
        }
        Path::MemberRemoved => {
            b.write(&yaml(false));
            let seen = Some(closed(&mut victim).await);
            b.write(&yaml(true));
            // Bob's slice shows Ann again (offline) once the reload is through.
            loop {
                if let Some(ServerFrame::Directory { entries, .. }) = next(bob).await
                    && entries.iter().any(|e| e.member == id(ANN))
                {
                    break;
                }
            }
            return seen;
        }
    }
    Some(closed(&mut victim).await)
}

async fn next_presence(ws: &mut Ws) -> (peerbubble_proto::MemberId, bool) {
    loop {
        match next(ws).await {
            Some(ServerFrame::Presence { member, online }) => return (member, online),
            Some(_) => {}
            None => panic!("closed while waiting for presence"),
        }
    }
}

fn gauge(metrics: &str, name: &str) -> i64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
}

/// Waits until the gauges show `sessions` sessions and connections (connection teardown is asynchronous).
async fn gauges_settle(b: &Bubble, sessions: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = b.metrics();
        let (s, c) = (gauge(&metrics, "peerbubble_signal_sessions"), gauge(&metrics, "peerbubble_signal_connections"));
        if s == sessions && c == sessions {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "sessions {s}, connections {c}, expected {sessions}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send_to_ann(bob: &mut Ws) -> u32 {
    bob.send(Message::text(format!(r#"{{"type":"send","id":77,"to":"{}","body":"AAEC"}}"#, id(ANN)))).await.unwrap();
    loop {
        match next(bob).await {
            Some(ServerFrame::Ack { id: 77, sessions, .. }) => return sessions,
            Some(ServerFrame::Error { code, .. }) => panic!("bob -> ann refused: {code:?}"),
            Some(_) => {}
            None => panic!("bob closed"),
        }
    }
}

async fn check(path: Path, expected: Option<(Option<u16>, Option<ErrorCode>)>) {
    let b = Bubble::start(&yaml(true), |c| {
        c.max_frame_bytes = 4096;
        (c.frames_per_second, c.frame_burst) = if matches!(path, Path::Flood) { (5, 10) } else { (100_000, 100_000) };
        c.idle_timeout = if matches!(path, Path::Idle) { Duration::from_secs(1) } else { Duration::from_secs(60) };
        c.send_queue_bytes = 2 * 4096;
        c.member_frames_per_second = 100_000;
    })
    .await;
    let mut bob = login(&b, BOB).await;
    // More ends than there are slots: a leak would lock Ann out.
    for round in 0..=SESSIONS {
        let victim = login(&b, ANN).await;
        assert_eq!(next_presence(&mut bob).await, (id(ANN), true), "{path:?} round {round}");
        let seen = end(&b, path, victim, &mut bob, &mut []).await;
        assert_eq!(seen, expected, "{path:?}");
        // A removed member leaves Bob's directory instead; a slow consumer's offline was checked in `end`.
        if !matches!(path, Path::SlowConsumer | Path::MemberRemoved) {
            assert_eq!(next_presence(&mut bob).await, (id(ANN), false), "{path:?}: Ann offline for Bob");
        }
        gauges_settle(&b, 1).await;
    }
    // Every slot is free again.
    let mut anns = Vec::new();
    for _ in 0..SESSIONS {
        anns.push(login(&b, ANN).await);
    }
    gauges_settle(&b, 1 + SESSIONS as i64).await;
    assert_eq!(send_to_ann(&mut bob).await, SESSIONS as u32);
    // One of them ended by the server: the others still get envelopes, nobody is told Ann left.
    if !matches!(path, Path::MemberRemoved | Path::SlowConsumer) {
        let victim = anns.pop().unwrap();
        end(&b, path, victim, &mut bob, &mut anns).await;
        gauges_settle(&b, SESSIONS as i64).await;
        assert_eq!(send_to_ann(&mut bob).await, SESSIONS as u32 - 1);
        for ann in &mut anns {
            let delivered = expect_deliver(ann).await;
            assert!(delivered);
        }
    }
    let metrics = b.metrics();
    assert!(!metrics.contains("recipient_congested") || matches!(path, Path::SlowConsumer), "{metrics}");
}

async fn expect_deliver(ws: &mut Ws) -> bool {
    loop {
        match next(ws).await {
            Some(ServerFrame::Deliver { .. }) => return true,
            Some(_) => {}
            None => return false,
        }
    }
}

#[tokio::test]
async fn text_frame_too_large() {
    check(Path::TextTooLarge, Some((Some(1009), Some(ErrorCode::FrameTooLarge)))).await;
}

#[tokio::test]
async fn binary_frame_too_large() {
    check(Path::BinaryTooLarge, Some((Some(1009), Some(ErrorCode::FrameTooLarge)))).await;
}

#[tokio::test]
async fn flooding() {
    check(Path::Flood, Some((Some(1008), Some(ErrorCode::RateLimited)))).await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007_and_is_counted() {
    check(Path::InvalidUtf8, Some((Some(1007), Some(ErrorCode::MalformedFrame)))).await;
}

#[tokio::test]
async fn idle_timeout() {
    check(Path::Idle, Some((Some(4000), Some(ErrorCode::IdleTimeout)))).await;
}

#[tokio::test]
async fn slow_consumer() {
    check(Path::SlowConsumer, None).await;
}

#[tokio::test]
async fn member_removed_and_readmitted() {
    check(Path::MemberRemoved, Some((Some(4001), Some(ErrorCode::MemberRemoved)))).await;
}

#[tokio::test]
async fn invalid_utf8_metric_counts_it() {
    let b = Bubble::start(&yaml(true), |_| {}).await;
    let mut bob = login(&b, BOB).await;
    let victim = login(&b, ANN).await;
    next_presence(&mut bob).await;
    end(&b, Path::InvalidUtf8, victim, &mut bob, &mut []).await;
    let metrics = b.metrics();
    assert!(metrics.contains("peerbubble_signal_frame_errors_total{reason=\"invalid_utf8\"} 1"), "{metrics}");
    assert!(metrics.contains("peerbubble_signal_disconnects_total{reason=\"invalid_utf8\"} 1"), "{metrics}");
}
