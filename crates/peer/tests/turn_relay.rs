//! Two native peers that may use relayed candidates only meet through a real bubble-server's embedded TURN
//! relay on loopback, with the TURN credentials each member got over its authenticated signaling session.
//!
//! The relay refuses loopback peers (no operator range is allowed here), so the only path is relay-to-relay
//! between the server's own two allocations: exactly what two relay-only peers behind one relay use.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use peerbubble_bubble_server::turn::{TlsSource, TurnConfig};
use peerbubble_bubble_server::{Config, FileSource, Server};
use peerbubble_peer::SignalClient;
use peerbubble_peer::rtc::{CandidateKind, RtcConfig, RtcEvent, RtcPeer, RtcRoute};
use peerbubble_proto::IdentityKey;
use peerbubble_turn::credentials::TurnSecret;
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(30);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn key(seed: u16) -> IdentityKey {
    let mut bytes = [9u8; 32];
    bytes[..2].copy_from_slice(&seed.to_be_bytes());
    IdentityKey::from_seed(&bytes)
}

fn bubble_yaml() -> String {
    let mut yaml = String::from("bubble: relay-bubble\ncategories:\n  - {id: team}\nmembers:\n");
    for (seed, name) in [(1, "Ann"), (2, "Ben")] {
        yaml += &format!("  - {{public_key: {}, display_name: {name}, categories: [team]}}\n", key(seed).public_key());
    }
    yaml
}

async fn start_server(dir: &std::path::Path) -> Server {
    std::fs::write(dir.join("bubble.yaml"), bubble_yaml()).unwrap();
    let turn = TurnConfig {
        secret: TurnSecret::new(b"relay-test-secret-0123456789abcdef".to_vec()).unwrap(),
        secret_file: None,
        listen: vec![SocketAddr::new(LOCALHOST, 0)],
        tls_port: None,
        tls: TlsSource::SelfSigned(vec!["localhost".into()]),
        relay_ips: vec![LOCALHOST],
        external_ips: vec![],
        ports: (40_000, 59_999),
        public_host: None,
        credential_ttl: Duration::from_secs(600),
        cluster: vec![],
        // The default: loopback peers are refused. Relay-to-relay between own allocations still works.
        allowed: vec![],
        core: peerbubble_turn::Config::default(),
        max_connections: 100,
    };
    let config = Config {
        listen: SocketAddr::new(LOCALHOST, 0),
        bubble_file: dir.join("bubble.yaml"),
        reload_interval: Duration::from_millis(100),
        turn: Some(turn),
        ..Config::default()
    };
    let server = Server::start(config.clone(), FileSource::new(config.bubble_file.clone(), config.reload_interval))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, server.ready()).await.unwrap();
    server
}

async fn next(events: &mut Receiver<RtcEvent>) -> RtcEvent {
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("event stream ended"),
        Err(_) => panic!("no event in {WAIT:?}"),
    }
}

/// Reads events up to `ChannelOpen`, checking that every local candidate is relayed and the remote
/// fingerprint is the expected one.
async fn expect_relayed_open(events: &mut Receiver<RtcEvent>, remote: &RtcPeer) -> usize {
    let mut candidates = 0;
    loop {
        match next(events).await {
            RtcEvent::LocalCandidate(line) => {
                assert!(line.contains(" typ relay"), "a relay-only peer offered a non-relayed candidate");
                candidates += 1;
            }
            RtcEvent::GatheringComplete => {}
            RtcEvent::Connected { remote_fingerprint } => assert_eq!(remote_fingerprint, remote.local_fingerprint()),
            RtcEvent::ChannelOpen => return candidates,
            other => panic!("unexpected {other:?}"),
        }
    }
}

async fn message(events: &mut Receiver<RtcEvent>) -> Vec<u8> {
    match next(events).await {
        RtcEvent::Message(bytes) => bytes,
        other => panic!("expected a message, got {other:?}"),
    }
}

fn candidate_lines(sdp: &str) -> Vec<&str> {
    sdp.lines().filter(|line| line.starts_with("a=candidate:")).collect()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_peers_connect_through_the_bubble_servers_turn_relay() {
    let dir = tempfile::tempdir().unwrap();
    let server = start_server(dir.path()).await;
    let url = format!("ws://{}/v1/signal", server.local_addr());
    let ann_session = SignalClient::connect(&url, &key(1)).await.unwrap();
    let ben_session = SignalClient::connect(&url, &key(2)).await.unwrap();
    assert!(ann_session.ice_servers().iter().any(|s| s.urls.iter().any(|u| u.starts_with("turn:"))));

    let config = |session: &SignalClient| RtcConfig {
        ice_servers: session.ice_servers().to_vec(),
        relay_only: true,
        ..RtcConfig::default()
    };
    let (ann, mut ann_events) = RtcPeer::new(config(&ann_session)).await.unwrap();
    let (ben, mut ben_events) = RtcPeer::new(config(&ben_session)).await.unwrap();

    // In PeerBubble the SDP travels MLS-encrypted through signaling; here it is handed over in-process.
    let started = Instant::now();
    let offer = ann.create_offer().await.unwrap();
    let answer = ben.accept_offer(&offer, &ann.local_fingerprint()).await.unwrap();
    ann.accept_answer(&answer, &ben.local_fingerprint()).await.unwrap();
    for sdp in [&offer, &answer] {
        let lines = candidate_lines(sdp);
        assert!(!lines.is_empty(), "no candidate gathered");
        assert!(lines.iter().all(|l| l.contains(" typ relay")), "a relay-only description carries another kind");
    }
    assert!(expect_relayed_open(&mut ann_events, &ben).await >= 1);
    assert!(expect_relayed_open(&mut ben_events, &ann).await >= 1);
    let connect = started.elapsed();
    let relayed = RtcRoute { local: CandidateKind::Relay, remote: CandidateKind::Relay };
    assert_eq!(ann.route().await, Some(relayed));
    assert_eq!(ben.route().await, Some(relayed));

    // Messages both ways, in order.
    for i in 0..100u32 {
        ann.send(&i.to_be_bytes()).await.unwrap();
        ben.send(&(i + 1000).to_be_bytes()).await.unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(message(&mut ben_events).await, i.to_be_bytes());
        assert_eq!(message(&mut ann_events).await, (i + 1000).to_be_bytes());
    }
    // Round trips are prompt: each used to wait for a webrtc-rs timer on a relayed pair (about 150 ms; see
    // `flush_relayed` in src/rtc.rs), which 40 of them would show.
    let started = Instant::now();
    for i in 0..40u32 {
        ann.send(&i.to_be_bytes()).await.unwrap();
        assert_eq!(message(&mut ben_events).await, i.to_be_bytes());
        ben.send(&i.to_be_bytes()).await.unwrap();
        assert_eq!(message(&mut ann_events).await, i.to_be_bytes());
    }
    let round_trips = started.elapsed();
    assert!(round_trips < Duration::from_secs(5), "40 round trips through the relay took {round_trips:?}");
    // And a bulk transfer: 512 KiB in 16 KiB messages. Kept small: through this in-process relay, bursts lose
    // packets and each loss costs webrtc-rs an SCTP retransmission timeout;
    // this test proves the path, not its throughput.
    const BULK: usize = 512 * 1024;
    let body: Vec<u8> = (0..16 * 1024).map(|i| (i % 251) as u8).collect();
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut received = 0;
        while received < BULK {
            let got = message(&mut ben_events).await;
            assert_eq!(got.len(), 16 * 1024);
            received += got.len();
        }
        ben_events
    });
    for _ in 0..BULK / body.len() {
        ann.send(&body).await.unwrap();
    }
    let _ben_events = tokio::time::timeout(2 * WAIT, receiver).await.unwrap().unwrap();
    let bulk = started.elapsed();

    // The relay carried it: two allocations, and at least the 2 MiB (DTLS-encrypted, so more) to peers.
    let (stats, alive) = server.turn().unwrap().stats();
    assert!(stats.allocations_created >= 2 && alive >= 2, "{} created, {alive} alive", stats.allocations_created);
    assert!(stats.to_peer.1 >= BULK as u64, "{} bytes relayed to peers", stats.to_peer.1);
    assert!(stats.refused_peers.values().sum::<u64>() == 0, "{:?}", stats.refused_peers);
    let metrics = server.metrics_text();
    assert!(metric(&metrics, "peerbubble_turn_allocations_created_total") >= 2, "{metrics}");
    assert!(metric(&metrics, "peerbubble_turn_bytes_total") >= 2 * BULK as u64, "{metrics}");
    eprintln!(
        "relay-only: connected in {connect:.1?}, 40 round trips in {round_trips:.1?}, 512 KiB in {bulk:.1?}; relayed \
         {} packets / {} bytes to peers, {} / {} to clients",
        stats.to_peer.0, stats.to_peer.1, stats.to_client.0, stats.to_client.1
    );

    // Closing releases the allocations.
    ann.close().await;
    ben.close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.turn().unwrap().stats().1 > 0 {
        assert!(tokio::time::Instant::now() < deadline, "allocations still alive after close");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ann_session.close().await.unwrap();
    ben_session.close().await.unwrap();
    server.shutdown().await.unwrap();
}
