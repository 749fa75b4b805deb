//! The WebSocket layer the server speaks itself (`peerbubble-ws`, ADR 0030), over real sockets: the upgrade and
//! its refusals, a message in fragments with a ping between them, the closing handshake, and a protocol
//! violation that ends only the connection that broke the protocol. The clients are raw TCP (bytes written by
//! hand from RFC 6455) and tokio-tungstenite, an independent implementation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use futures_util::{SinkExt as _, StreamExt as _};
use peerbubble_proto::{ClientFrame, Purpose, ServerFrame, auth_message, decode_server_frame, encode_frame};
use support::{Bubble, WAIT, expect_presence, id, key, member};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};

const ANN: u16 = 1;
const BOB: u16 = 2;

fn yaml() -> String {
    let mut yaml = String::from("bubble: ws-bubble\ncategories:\n  - {id: medics}\nmembers:\n");
    yaml += &member(ANN, "Ann", &["medics"]);
    yaml += &member(BOB, "Bob", &["medics"]);
    yaml
}

/// Sends `request` and reads the response head: (status, head).
async fn raw_request(b: &Bubble, request: &str) -> (TcpStream, u16, String) {
    let mut tcp = TcpStream::connect(b.addr()).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut byte)).await.unwrap().unwrap();
        assert_eq!(n, 1, "closed before the response head ended: {}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (tcp, status, head)
}

fn upgrade(key: &str, version: &str) -> String {
    format!(
        "GET /v1/signal HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// Reads one server frame off a raw socket: (opcode, payload). Server frames are never masked.
async fn read_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, tcp.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(head[1] & 0x80, 0, "a server frame is not masked");
    let len = match head[1] & 0x7F {
        126 => {
            let mut n = [0u8; 2];
            tcp.read_exact(&mut n).await.unwrap();
            u64::from(u16::from_be_bytes(n))
        }
        127 => {
            let mut n = [0u8; 8];
            tcp.read_exact(&mut n).await.unwrap();
            u64::from_be_bytes(n)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    tcp.read_exact(&mut payload).await.unwrap();
    (head[0] & 0x0F, payload)
}

#[tokio::test]
async fn the_upgrade_is_checked_and_answered_per_rfc_6455() {
    let b = Bubble::start(&yaml(), |_| {}).await;
    // RFC 6455 §1.3's example key and its accept value.
    let (mut tcp, status, head) = raw_request(&b, &upgrade("dGhlIHNhbXBsZSBub25jZQ==", "13")).await;
    assert_eq!(status, 101, "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="), "{head}");
    // The first frame is the challenge, as text.
    let (opcode, payload) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 1);
    assert!(matches!(decode_server_frame(&payload), Ok(ServerFrame::Challenge { .. })), "{payload:?}");

    // Not an upgrade, another version, a key that is not 16 bytes: refused with the reason, nothing opened.
    let (_, status, head) =
        raw_request(&b, "GET /v1/signal HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert_eq!(status, 400, "{head}");
    let (_, status, head) = raw_request(&b, &upgrade("dGhlIHNhbXBsZSBub25jZQ==", "8")).await;
    assert_eq!(status, 426, "{head}");
    assert!(head.to_ascii_lowercase().contains("sec-websocket-version: 13"), "{head}");
    let (_, status, head) = raw_request(&b, &upgrade("c2hvcnQ=", "13")).await;
    assert_eq!(status, 400, "{head}");
    let (status, body) = b.http_get("/v1/signal").await;
    assert_eq!((status, body.contains("WebSocket")), (400, true), "{body}");
    assert!(b.metrics().contains("peerbubble_signal_connections 1"), "only the one upgraded connection counts");
}

#[tokio::test]
async fn a_message_in_fragments_with_a_ping_between_them_is_one_message() {
    let b = Bubble::start(&yaml(), |_| {}).await;
    let mut ann = b.connect(ANN).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(b.url()).await.unwrap();
    let Some(Ok(Message::Text(challenge))) = ws.next().await else { panic!("no challenge") };
    let Ok(ServerFrame::Challenge { bubble, nonce, .. }) = decode_server_frame(challenge.as_bytes()) else {
        panic!("{challenge}")
    };
    let public_key = key(BOB).public_key();
    let signature = key(BOB).sign(Purpose::SignalAuth, &auth_message(&bubble, &nonce, &public_key));
    let auth = encode_frame(&ClientFrame::Auth { public_key, nonce, signature });
    let (first, rest) = auth.as_bytes().split_at(auth.len() / 3);
    let (second, third) = rest.split_at(rest.len() / 2);
    ws.send(Message::Frame(Frame::message(first.to_vec(), OpCode::Data(Data::Text), false))).await.unwrap();
    ws.send(Message::Ping(b"are you there".to_vec().into())).await.unwrap();
    ws.send(Message::Frame(Frame::message(second.to_vec(), OpCode::Data(Data::Continue), false))).await.unwrap();
    ws.send(Message::Frame(Frame::message(third.to_vec(), OpCode::Data(Data::Continue), true))).await.unwrap();
    let mut pong = None;
    let mut welcomed = false;
    while !(welcomed && pong.is_some()) {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(payload))) => pong = Some(payload.to_vec()),
            Some(Ok(Message::Text(text))) => {
                if let Ok(ServerFrame::Welcome { .. }) = decode_server_frame(text.as_bytes()) {
                    welcomed = true;
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"are you there"[..]), "a pong echoes the ping");
    // The member authenticated from the fragments: Ann sees Bob come online.
    assert_eq!(expect_presence(&mut ann).await, (id(BOB), true));

    // The closing handshake: the server answers the client's close with its code, and Bob goes offline.
    ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "bye".into() }))).await.unwrap();
    let echoed = loop {
        match tokio::time::timeout(WAIT, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(echoed, Some(1000));
    assert_eq!(expect_presence(&mut ann).await, (id(BOB), false));
}

#[tokio::test]
async fn a_protocol_violation_closes_only_that_connection_with_1002() {
    let b = Bubble::start(&yaml(), |_| {}).await;
    let mut ann = b.connect(ANN).await;
    let mut bob = b.connect(BOB).await;
    assert_eq!(expect_presence(&mut ann).await, (id(BOB), true));

    // An unmasked client frame (RFC 6455 §5.1: the server must close the connection).
    let (mut tcp, status, _) = raw_request(&b, &upgrade("dGhlIHNhbXBsZSBub25jZQ==", "13")).await;
    assert_eq!(status, 101);
    let (opcode, _) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 1, "the challenge");
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let (opcode, payload) = read_frame(&mut tcp).await;
    assert_eq!(opcode, 8, "a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, tcp.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0, "the server closed the connection after its close frame");

    // Ann and Bob go on: an envelope from Ann reaches Bob.
    ann.send(id(BOB), b"still here").await.unwrap();
    let got = support::expect(&mut bob, "the envelope", |f| match f {
        ServerFrame::Deliver { from, body, .. } => Some((*from, body.to_bytes())),
        _ => None,
    })
    .await;
    assert_eq!(got, (id(ANN), b"still here".to_vec()));
}
