//! Invariants 1 and 2 for this server: envelope bodies never reach logs or metrics, whatever the log level, on
//! both the relay and the refusal paths.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use peerbubble_proto::{ErrorCode, Opaque, ServerFrame};
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn envelope_bodies_never_reach_logs_or_metrics() {
    let captured = Captured::default();
    let writer = captured.clone();
    // Everything at trace, except what every PeerBubble binary caps.
    // Even a user asking for the WebSocket library at trace level does not get frames.
    let mut filter = tracing_subscriber::EnvFilter::new("trace,tungstenite=trace,tokio_tungstenite=trace");
    for directive in peerbubble_bubble_server::LOG_REDACTIONS {
        filter = filter.add_directive(directive.parse().unwrap());
    }
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(move || writer.clone()).with_ansi(false).init();

    let yaml = format!(
        "bubble: canary\ncategories: [{{id: a}}, {{id: b}}]\nmembers:\n{}{}{}",
        member(1, "One", &["a"]),
        member(2, "Two", &["a"]),
        member(3, "Three", &["b"])
    );
    let b = Bubble::start(&yaml, |c| c.max_frame_bytes = 4096).await;
    let mut one = b.connect(1).await;
    let mut two = b.connect(2).await;
    let canary = b"CANARY-7f3c9e1d-plaintext-that-must-stay-secret";
    let wire = String::from(Opaque::from_bytes(canary).unwrap());

    // Relayed, refused (invisible, offline after leaving), oversized and malformed frames all carry it.
    one.send(id(2), canary).await.unwrap();
    let got = expect(&mut two, "deliver", |f| match f {
        ServerFrame::Deliver { body, .. } => Some(body.to_bytes()),
        _ => None,
    })
    .await;
    assert_eq!(got, canary);
    one.send_unchecked(id(3), canary).await.unwrap();
    assert_eq!(expect_error(&mut one).await, ErrorCode::RecipientNotVisible);
    one.send_text(format!(r#"{{"type":"send","id":1,"to":"{}","body":"{wire}","x":1}}"#, id(2))).await.unwrap();
    assert_eq!(expect_error(&mut one).await, ErrorCode::MalformedFrame);
    one.send_text(format!(r#"{{"type":"send","id":1,"to":"{}","body":"{}"}}"#, id(2), wire.repeat(100))).await.unwrap();
    let (code, error) = expect_closed(&mut one).await;
    assert_eq!((code, error), (Some(1009), Some(ErrorCode::FrameTooLarge)));
    two.close().await.unwrap();
    // A flood is refused frame by frame but logged once, when it ends the connection.
    let mut three = b.connect(3).await;
    for _ in 0..400 {
        if three.ping().await.is_err() {
            break;
        }
    }
    assert_eq!(expect_closed(&mut three).await, (Some(1008), Some(ErrorCode::RateLimited)));

    let metrics = b.metrics();
    let mut b = b;
    b.stop().await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("session opened"), "logging was captured: {logs}");
    assert!(logs.contains("peerbubble::security"), "security events were logged: {logs}");
    let flood = logs.lines().filter(|l| l.contains("peerbubble::security") && l.contains("rate_limited")).count();
    assert_eq!(flood, 1, "one line for the whole flood");
    assert!(metrics.contains("peerbubble_signal_security_events_total{event=\"rate_limited\"}"), "still counted");
    for needle in [std::str::from_utf8(canary).unwrap(), wire.as_str(), "CANARY"] {
        if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
            panic!("{needle} leaked into logs: {}", &line[..line.len().min(300)]);
        }
        assert!(!metrics.contains(needle), "{needle} leaked into metrics");
    }
}
