//! OTLP traces: a reconcile's span reaches a collector over OTLP/HTTP (a loopback listener standing in for the
//! collector, reading the real request the exporter sends).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use peerbubble_operator::controller::{FINALIZER, reconcile_bubble};
use peerbubble_operator::telemetry::{SERVICE, otlp_provider};
use serde_json::json;
use support::*;
use tracing_subscriber::layer::SubscriberExt as _;

/// Accepts one HTTP request and hands back (request line, headers, body).
fn collector() -> (String, mpsc::Receiver<(String, String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let mut headers = String::new();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some(value) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = value.trim().parse().unwrap();
            }
            headers.push_str(&header);
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").unwrap();
        tx.send((line, headers, body)).unwrap();
    });
    (url, rx)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_reconcile_span_reaches_the_otlp_collector() {
    let (url, received) = collector();
    let provider = otlp_provider(&url).unwrap();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE)));
    let guard = tracing::subscriber::set_default(subscriber);

    // One reconcile (the finalizer step), on this thread, inside the subscriber.
    let mut h = harness(vec![]);
    let mut fresh = bubble("field", json!({"displayName": "Field"}));
    fresh.metadata.finalizers = None;
    let task = reconcile_bubble(Arc::new(fresh.clone()), h.ctx.clone());
    let api = async {
        let call = h.api.expect("PATCH", &bubbles("field")).await;
        let mut with = serde_json::to_value(&fresh).unwrap();
        with["metadata"]["finalizers"] = json!([FINALIZER]);
        call.reply(200, &with);
    };
    let (result, ()) = tokio::join!(task, api);
    result.unwrap();
    drop(guard);

    tokio::task::spawn_blocking(move || provider.force_flush()).await.unwrap().unwrap();
    let (line, headers, body) = received.recv_timeout(Duration::from_secs(10)).expect("the collector got a request");
    assert!(line.starts_with("POST /v1/traces "), "{line}");
    assert!(headers.to_ascii_lowercase().contains("content-type: application/x-protobuf"), "{headers}");
    for expected in ["reconcile_bubble", SERVICE, "crisis", "field"] {
        assert!(contains(&body, expected), "{expected} missing from the exported spans");
    }
}
