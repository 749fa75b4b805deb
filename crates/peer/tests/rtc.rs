//! Two native peers on loopback (host candidates only, no ICE server): offer/answer bound to DTLS fingerprints,
//! messages both ways and in order, a 20 MB transfer under backpressure, a slow reader, and the ways a wrong or
//! substituted fingerprint is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use peerbubble_client_core::Fingerprint;
use peerbubble_peer::rtc::{
    CandidateKind, EVENT_QUEUE, HIGH_WATER_MARK, RtcConfig, RtcError, RtcEvent, RtcPeer, RtcRoute,
};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc::Receiver;

const WAIT: Duration = Duration::from_secs(20);

async fn peer() -> (RtcPeer, Receiver<RtcEvent>) {
    RtcPeer::new(RtcConfig::default()).await.unwrap()
}

async fn peer_with_timeout(connect_timeout: Duration) -> (RtcPeer, Receiver<RtcEvent>) {
    RtcPeer::new(RtcConfig { connect_timeout, ..RtcConfig::default() }).await.unwrap()
}

/// The next event that is not about ICE gathering.
async fn next(events: &mut Receiver<RtcEvent>) -> RtcEvent {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await {
            Ok(Some(RtcEvent::LocalCandidate(_) | RtcEvent::GatheringComplete)) => {}
            Ok(Some(event)) => return event,
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no event in {WAIT:?}"),
        }
    }
}

/// `Connected` with the peer's fingerprint, then `ChannelOpen`.
async fn expect_open(events: &mut Receiver<RtcEvent>, remote: &RtcPeer) {
    assert_eq!(next(events).await, RtcEvent::Connected { remote_fingerprint: remote.local_fingerprint() });
    assert_eq!(next(events).await, RtcEvent::ChannelOpen);
}

async fn message(events: &mut Receiver<RtcEvent>) -> Vec<u8> {
    match next(events).await {
        RtcEvent::Message(bytes) => bytes,
        other => panic!("expected a message, got {other:?}"),
    }
}

struct Pair {
    a: RtcPeer,
    a_events: Receiver<RtcEvent>,
    b: RtcPeer,
    b_events: Receiver<RtcEvent>,
}

/// A offers, B answers, each expecting the other's real fingerprint.
async fn connected() -> Pair {
    let (a, mut a_events) = peer().await;
    let (b, mut b_events) = peer().await;
    let offer = a.create_offer().await.unwrap();
    let answer = b.accept_offer(&offer, &a.local_fingerprint()).await.unwrap();
    a.accept_answer(&answer, &b.local_fingerprint()).await.unwrap();
    expect_open(&mut a_events, &b).await;
    expect_open(&mut b_events, &a).await;
    Pair { a, a_events, b, b_events }
}

/// Deterministic, incompressible-looking test data, cheap to make: a window into a fixed random pool.
fn chunk(index: u32, len: usize) -> Vec<u8> {
    static POOL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let pool = POOL.get_or_init(|| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..2 * 1024 * 1024)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    });
    let start = (index as usize).wrapping_mul(7_368_787) % (pool.len() / 2);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let take = (len - out.len()).min(pool.len() - start);
        out.extend_from_slice(&pool[start..start + take]);
    }
    out
}

fn numbered(i: u32) -> Vec<u8> {
    let mut body = i.to_be_bytes().to_vec();
    body.extend(chunk(i, 1 + (i as usize * 7919) % 3000));
    body
}

async fn send_1000(peer: &RtcPeer) {
    for i in 0..1000u32 {
        peer.send(&numbered(i)).await.unwrap();
    }
}

async fn receive_1000(events: &mut Receiver<RtcEvent>) {
    for i in 0..1000u32 {
        let body = message(events).await;
        assert_eq!(body[..4], i.to_be_bytes(), "message {i} out of order");
        assert_eq!(body, numbered(i), "message {i} corrupted");
    }
}

fn sdp_fingerprints(sdp: &str) -> Vec<&str> {
    sdp.lines().filter_map(|line| line.trim_end().strip_prefix("a=fingerprint:")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_connect_on_loopback_and_exchange_ordered_messages_both_ways() {
    let (a, mut a_events) = peer().await;
    let (b, mut b_events) = peer().await;
    assert_ne!(a.local_fingerprint(), b.local_fingerprint());

    let offer = a.create_offer().await.unwrap();
    // Non-trickle: the candidates are in the SDP, and the fingerprint is in the same form as local_fingerprint.
    assert!(offer.contains("a=candidate:") && offer.contains("typ host"));
    assert!(!sdp_fingerprints(&offer).is_empty());
    assert!(sdp_fingerprints(&offer).iter().all(|fp| *fp == a.local_fingerprint().to_string()));
    // The trickle events came too, and gathering completed.
    let candidates = trickled(&mut a_events).await;
    assert!(candidates.iter().all(|line| line.starts_with("candidate:")));
    let candidates = candidates.len();
    assert!(candidates >= 1);

    let answer = b.accept_offer(&offer, &a.local_fingerprint()).await.unwrap();
    assert!(sdp_fingerprints(&answer).iter().all(|fp| *fp == b.local_fingerprint().to_string()));
    a.accept_answer(&answer, &b.local_fingerprint()).await.unwrap();
    expect_open(&mut a_events, &b).await;
    expect_open(&mut b_events, &a).await;
    let host = RtcRoute { local: CandidateKind::Host, remote: CandidateKind::Host };
    assert_eq!(a.route().await, Some(host));
    assert!(a.max_message_size() >= 64 * 1024, "{}", a.max_message_size());

    a.send(b"hello").await.unwrap();
    assert_eq!(message(&mut b_events).await, b"hello");
    b.send(b"world").await.unwrap();
    assert_eq!(message(&mut a_events).await, b"world");

    // 1 000 messages each way at once, of varied sizes: all arrive, in order.
    tokio::join!(send_1000(&a), send_1000(&b), receive_1000(&mut a_events), receive_1000(&mut b_events));

    // Messages at the limit pass, one byte more is refused before anything is sent.
    let max = a.max_message_size();
    a.send(&chunk(7, max)).await.unwrap();
    assert_eq!(message(&mut b_events).await, chunk(7, max));
    assert!(matches!(a.send(&vec![0; max + 1]).await, Err(RtcError::MessageTooLarge { .. })));

    // Closing one side closes the channel on the other.
    a.close().await;
    assert!(matches!(a.send(b"late").await, Err(RtcError::Closed)));
    assert_eq!(next(&mut b_events).await, RtcEvent::ChannelClosed);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_megabytes_in_64_kib_messages_arrive_intact_under_backpressure() {
    const TOTAL: usize = 20 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let Pair { a, a_events: _a_events, b, mut b_events } = connected().await;

    let receiver = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut received = 0;
        while received < TOTAL {
            let body = message(&mut b_events).await;
            received += body.len();
            hash.update(&body);
        }
        assert_eq!(received, TOTAL);
        (hash.finalize(), b_events)
    });

    let started = Instant::now();
    let mut hash = Sha256::new();
    let mut most_buffered = 0;
    for i in 0..(TOTAL / CHUNK) as u32 {
        let body = chunk(i, CHUNK);
        hash.update(&body);
        a.send(&body).await.unwrap();
        // Right after a send is when the buffer is fullest.
        most_buffered = most_buffered.max(a.buffered_amount().await);
        assert!(most_buffered <= HIGH_WATER_MARK + CHUNK, "{most_buffered} bytes buffered");
    }
    let (received_hash, _b_events) = receiver.await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(received_hash, hash.finalize(), "sha-256 of what arrived");
    eprintln!(
        "20 MiB in {:.2} s: {:.1} MB/s; at most {} KiB buffered (high-water mark {} KiB)",
        elapsed.as_secs_f64(),
        TOTAL as f64 / 1e6 / elapsed.as_secs_f64(),
        most_buffered / 1024,
        HIGH_WATER_MARK / 1024
    );
    // The buffer was actually used: backpressure, not a trickle.
    assert!(most_buffered > HIGH_WATER_MARK / 2, "{most_buffered}");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_stops_the_sender_instead_of_filling_memory() {
    const CHUNK: usize = 64 * 1024;
    let Pair { a, a_events: _a_events, b, mut b_events } = connected().await;

    // B reads nothing. A's sends must stall after a bounded amount: B's event queue, webrtc-rs's two queues of
    // 256 messages (driver to channel, and the core's), the SCTP receive window (1 MiB), A's send buffer
    // (high-water mark + one message), and some slack for a receive pass in flight.
    let bound = (EVENT_QUEUE + 2 * 256) * CHUNK + 1024 * 1024 + HIGH_WATER_MARK + 4 * 1024 * 1024;
    let mut sent = 0u32;
    loop {
        let body = chunk(sent, CHUNK);
        match tokio::time::timeout(Duration::from_secs(2), a.send(&body)).await {
            Ok(result) => result.unwrap(),
            Err(_) => break, // stalled: flow control reached the sender
        }
        sent += 1;
        assert!(
            sent as usize * CHUNK <= bound,
            "{} bytes accepted by a peer that reads nothing",
            sent as usize * CHUNK
        );
    }
    eprintln!("sender stalled after {} KiB with the reader stopped", sent as usize * CHUNK / 1024);

    // Reading again drains everything, in order, and the sender goes on.
    for i in 0..sent {
        assert_eq!(message(&mut b_events).await, chunk(i, CHUNK), "message {i}");
    }
    a.send(b"after").await.unwrap();
    // The send that timed out was cancelled before it queued anything.
    assert_eq!(message(&mut b_events).await, b"after");
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expected_fingerprint_is_refused_before_anything_is_applied() {
    let (a, mut a_events) = peer().await;
    let (b, mut b_events) = peer().await;
    let (stranger, _stranger_events) = peer().await;
    let offer = a.create_offer().await.unwrap();

    // Expecting someone else's fingerprint, or a malformed one (which cannot even be made into one).
    let refused = b.accept_offer(&offer, &stranger.local_fingerprint()).await;
    assert!(matches!(refused, Err(RtcError::FingerprintMismatch)), "{refused:?}");
    assert!(Fingerprint::parse("sha-256 not-a-fingerprint").is_err());
    // Case does not matter; a second, different fingerprint line in the offer does.
    let doubled = offer.replacen(
        "a=fingerprint:",
        &format!("a=fingerprint:{}\r\na=fingerprint:", stranger.local_fingerprint()),
        1,
    );
    assert!(matches!(b.accept_offer(&doubled, &a.local_fingerprint()).await, Err(RtcError::FingerprintMismatch)));
    let stripped: String =
        offer.lines().filter(|l| !l.starts_with("a=fingerprint:")).map(|l| format!("{l}\r\n")).collect();
    assert!(matches!(b.accept_offer(&stripped, &a.local_fingerprint()).await, Err(RtcError::FingerprintMismatch)));

    // Nothing was applied: the right fingerprint still works (read from lower case), and so does the answer check.
    let lower = Fingerprint::parse(&a.local_fingerprint().to_string().to_lowercase()).unwrap();
    let answer = b.accept_offer(&offer, &lower).await.unwrap();
    let refused = a.accept_answer(&answer, &stranger.local_fingerprint()).await;
    assert!(matches!(refused, Err(RtcError::FingerprintMismatch)), "{refused:?}");
    a.accept_answer(&answer, &b.local_fingerprint()).await.unwrap();
    expect_open(&mut a_events, &b).await;
    expect_open(&mut b_events, &a).await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_from_a_third_peer_is_refused_even_with_the_expected_fingerprint_pasted_in() {
    // A offers to B, but the signaling path hands the offer to C, and C's answer comes back to A.
    let (a, mut a_events) = peer_with_timeout(Duration::from_secs(5)).await;
    let (b, _b_events) = peer().await;
    let (c, mut c_events) = peer().await;
    let offer = a.create_offer().await.unwrap();
    let answer = c.accept_offer(&offer, &a.local_fingerprint()).await.unwrap();

    // As C sent it: A expects B's fingerprint and refuses.
    let refused = a.accept_answer(&answer, &b.local_fingerprint()).await;
    assert!(matches!(refused, Err(RtcError::FingerprintMismatch)), "{refused:?}");

    // With B's fingerprint pasted over C's: the SDP check passes, but C cannot present B's certificate. The DTLS
    // handshake fails, A reports the failure and never opens the channel or delivers a message.
    let forged = answer.replace(&c.local_fingerprint().to_string(), &b.local_fingerprint().to_string());
    assert_ne!(forged, answer);
    a.accept_answer(&forged, &b.local_fingerprint()).await.unwrap();
    match next(&mut a_events).await {
        RtcEvent::Failed(reason) => assert_eq!(reason, "connection timed out"),
        other => panic!("A must fail, got {other:?}"),
    }
    assert!(matches!(a.send(b"secret").await, Err(RtcError::Closed | RtcError::WrongState(_))));
    // C never gets an open channel either.
    let c_outcome = tokio::time::timeout(Duration::from_secs(3), next(&mut c_events)).await;
    assert!(!matches!(c_outcome, Ok(RtcEvent::ChannelOpen | RtcEvent::Message(_))), "{c_outcome:?}");
    a.close().await;
    c.close().await;
}

/// The candidate lines a peer reported with `LocalCandidate`, up to `GatheringComplete`.
async fn trickled(events: &mut Receiver<RtcEvent>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap().unwrap() {
            RtcEvent::LocalCandidate(line) => lines.push(line),
            RtcEvent::GatheringComplete => return lines,
            other => panic!("{other:?}"),
        }
    }
}

fn without_candidates(sdp: &str) -> String {
    sdp.lines()
        .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
        .map(|l| format!("{l}\r\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_candidates_connect_descriptions_that_carry_none() {
    let (a, mut a_events) = peer().await;
    let (b, mut b_events) = peer().await;
    let offer = without_candidates(&a.create_offer().await.unwrap());
    let a_candidates = trickled(&mut a_events).await;
    assert!(!a_candidates.is_empty());

    let answer = without_candidates(&b.accept_offer(&offer, &a.local_fingerprint()).await.unwrap());
    let b_candidates = trickled(&mut b_events).await;
    for line in &a_candidates {
        b.add_remote_candidate(line).await.unwrap();
    }
    b.add_remote_candidate("").await.unwrap(); // end of candidates
    assert!(matches!(b.add_remote_candidate("candidate:garbage").await, Err(RtcError::InvalidCandidate)));

    a.accept_answer(&answer, &b.local_fingerprint()).await.unwrap();
    for line in &b_candidates {
        a.add_remote_candidate(line).await.unwrap();
    }
    expect_open(&mut a_events, &b).await;
    expect_open(&mut b_events, &a).await;
    a.send(b"trickled").await.unwrap();
    assert_eq!(message(&mut b_events).await, b"trickled");
    a.close().await;
    b.close().await;
}
