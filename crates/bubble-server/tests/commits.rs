//! The MLS delivery-service role over real WebSockets on loopback: the bubble-server orders commits per group
//! (the first for an epoch wins, the others get `commit_conflict`), relays only the winner, and claims nothing
//! for a refused commit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use peerbubble_peer::{ClientError, SignalClient};
use peerbubble_proto::{ClientFrame, ErrorCode, GroupId, MemberId, Opaque, Recipients, ServerFrame};
use support::*;

const ANN: u16 = 1;
const BOB: u16 = 2;
const CAT: u16 = 3;
const DAN: u16 = 4;

/// A random-looking MLS group id, as a group's creator would pick.
const GROUP: [u8; 16] = *b"\x8c\x1f\x03\x9a\x44\xe0\x5b\x71\x2d\xc6\x90\x0e\xb3\x57\xfa\x28";

/// Ann, Bob and Dan see each other; Cat sees only Bob.
fn bubble_yaml() -> String {
    let mut yaml = String::from(
        "bubble: test-bubble\ncategories:\n  - {id: medics}\n  - {id: logistics}\n  - {id: command, sees: [medics]}\nmembers:\n",
    );
    yaml += &member(ANN, "Ann", &["medics"]);
    yaml += &member(BOB, "Bob", &["medics", "logistics"]);
    yaml += &member(CAT, "Cat", &["logistics"]);
    yaml += &member(DAN, "Dan", &["command"]);
    yaml
}

/// What the server answered to the frame `id`: the `ack`'s session count, or the error's code and message.
/// Deliveries that arrive meanwhile are appended to `delivered`.
async fn answer(
    client: &mut SignalClient,
    id: u64,
    delivered: &mut Vec<(MemberId, Vec<u8>)>,
) -> Result<u32, (ErrorCode, String)> {
    expect(client, "ack or error", |f| match f {
        ServerFrame::Ack { id: acked, sessions, .. } if *acked == id => Some(Ok(*sessions)),
        ServerFrame::Error { id: Some(refused), code, message, .. } if *refused == id => {
            Some(Err((*code, message.clone())))
        }
        ServerFrame::Deliver { from, body, .. } => {
            delivered.push((*from, body.to_bytes()));
            None
        }
        _ => None,
    })
    .await
}

/// The next delivered envelope.
async fn delivery(client: &mut SignalClient) -> (MemberId, Vec<u8>) {
    expect(client, "deliver", |f| match f {
        ServerFrame::Deliver { from, body, .. } => Some((*from, body.to_bytes())),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn racing_commits_first_wins_the_epoch_and_only_it_is_relayed() {
    let b = Bubble::start(&bubble_yaml(), |_| {}).await;
    let mut ann = b.connect(ANN).await;
    let mut bob = b.connect(BOB).await;
    let mut cat = b.connect(CAT).await;
    // Dan on two devices: a commit reaches every session of every recipient.
    let mut dan = b.connect(DAN).await;
    let mut dan_phone = b.connect(DAN).await;
    let mut ignored = Vec::new();

    // Ann creates the group: epoch 0 is claimed with nobody to tell yet.
    let created = ann.commit(&GROUP, 0, &[], b"create").await.unwrap();
    assert_eq!(answer(&mut ann, created, &mut ignored).await, Ok(0));

    // Ann and Bob both commit in epoch 1, at the same time.
    let (ann_to, bob_to) = ([id(BOB), id(DAN)], [id(ANN), id(DAN)]);
    let (ann_id, bob_id) = tokio::join!(
        ann.commit(&GROUP, 1, &ann_to, b"ann's commit for epoch 1"),
        bob.commit(&GROUP, 1, &bob_to, b"bob's commit for epoch 1"),
    );
    let (mut to_ann, mut to_bob) = (Vec::new(), Vec::new());
    let ann_answer = answer(&mut ann, ann_id.unwrap(), &mut to_ann).await;
    let bob_answer = answer(&mut bob, bob_id.unwrap(), &mut to_bob).await;
    let (winner, loser) = match (&ann_answer, &bob_answer) {
        (Ok(_), Err(_)) => (ANN, BOB),
        (Err(_), Ok(_)) => (BOB, ANN),
        other => panic!("exactly one commit must win epoch 1: {other:?}"),
    };
    let (winner_answer, loser_answer, to_winner, mut to_loser) =
        if winner == ANN { (ann_answer, bob_answer, to_ann, to_bob) } else { (bob_answer, ann_answer, to_bob, to_ann) };
    let winning_body =
        if winner == ANN { b"ann's commit for epoch 1".to_vec() } else { b"bob's commit for epoch 1".to_vec() };
    assert_eq!(winner_answer, Ok(3), "queued to the loser's session and to Dan's two");
    match loser_answer {
        Err((ErrorCode::CommitConflict, message)) => assert!(message.contains("epoch 2"), "{message}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(to_winner, [], "the losing commit is relayed to nobody");

    // Everyone told receives exactly the winning commit.
    let loser_client = if loser == ANN { &mut ann } else { &mut bob };
    if to_loser.is_empty() {
        to_loser.push(delivery(loser_client).await);
    }
    assert_eq!(to_loser, [(id(winner), winning_body.clone())]);
    for device in [&mut dan, &mut dan_phone] {
        assert_eq!(delivery(device).await, (id(winner), winning_body.clone()));
    }

    // Having processed it, the loser commits in epoch 2: accepted, and it is Dan's next delivery (so Dan never
    // got the losing commit for epoch 1).
    let next = loser_client.commit(&GROUP, 2, &[id(winner), id(DAN)], b"epoch 2").await.unwrap();
    assert_eq!(answer(loser_client, next, &mut ignored).await, Ok(3));
    for device in [&mut dan, &mut dan_phone] {
        assert_eq!(delivery(device).await, (id(loser), b"epoch 2".to_vec()));
    }

    // A stale commit (epoch 1 again) is a conflict too, and says where the group is.
    let stale = dan.commit(&GROUP, 1, &[id(ANN)], b"stale").await.unwrap();
    match answer(&mut dan, stale, &mut ignored).await {
        Err((ErrorCode::CommitConflict, message)) => assert!(message.contains("epoch 3"), "{message}"),
        other => panic!("{other:?}"),
    }

    // Cat is not visible to Ann: the commit is refused whole, relayed to nobody, and claims nothing.
    let hidden = ann.commit_unchecked(&GROUP, 3, &[id(DAN), id(CAT)], b"not for cat").await.unwrap();
    assert!(matches!(answer(&mut ann, hidden, &mut ignored).await, Err((ErrorCode::RecipientNotVisible, _))));
    // Epoch 3 is still free: Bob takes it, and it is the next thing Dan receives.
    let third = bob.commit(&GROUP, 3, &[id(ANN), id(DAN)], b"epoch 3").await.unwrap();
    assert_eq!(answer(&mut bob, third, &mut ignored).await, Ok(3));
    for device in [&mut dan, &mut dan_phone] {
        assert_eq!(delivery(device).await, (id(BOB), b"epoch 3".to_vec()));
    }
    // Cat received nothing from any of it: its first delivery is a later plain send.
    bob.send(id(CAT), b"hello cat").await.unwrap();
    assert_eq!(delivery(&mut cat).await, (id(BOB), b"hello cat".to_vec()));

    // The reference client refuses a commit it would be refused for, before sending it.
    assert!(matches!(bob.commit(&GROUP, 4, &[id(ANN), id(ANN)], b"x").await, Err(ClientError::Protocol(_))));
    assert!(matches!(bob.commit(&[1; 8], 0, &[], b"x").await, Err(ClientError::Protocol(_))));
    assert!(matches!(bob.commit(&GROUP, 4, &[id(BOB)], b"x").await, Err(ClientError::Protocol(_))));
    // Sent anyway, naming ourselves is refused with the frame's id, and claims nothing either.
    let to = Recipients::new(vec![id(ANN), id(BOB)]).unwrap();
    let (group, body) = (GroupId::from_bytes(&GROUP).unwrap(), Opaque::from_bytes(b"x").unwrap());
    bob.send_frame(&ClientFrame::Commit { id: 900, group, epoch: 4, to, body }).await.unwrap();
    assert!(matches!(answer(&mut bob, 900, &mut ignored).await, Err((ErrorCode::InvalidField, _))));
    let fourth = ann.commit(&GROUP, 4, &[], b"epoch 4").await.unwrap();
    assert_eq!(answer(&mut ann, fourth, &mut ignored).await, Ok(0));

    let metrics = b.metrics();
    assert!(metrics.contains("peerbubble_signal_commits_total{result=\"accepted\"} 5"), "{metrics}");
    assert!(metrics.contains("peerbubble_signal_commits_total{result=\"conflict\"} 2"), "{metrics}");
    assert!(
        metrics.contains("peerbubble_signal_security_events_total{event=\"recipient_not_visible\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_restarted_server_accepts_the_next_commit_for_any_epoch() {
    let mut b = Bubble::start(&bubble_yaml(), |_| {}).await;
    let mut ann = b.connect(ANN).await;
    let mut ignored = Vec::new();
    for epoch in 0..3 {
        let frame = ann.commit(&GROUP, epoch, &[id(BOB)], b"commit").await.unwrap();
        assert_eq!(answer(&mut ann, frame, &mut ignored).await, Ok(0), "Bob is offline: ordered, queued nowhere");
    }
    let stale = ann.commit(&GROUP, 1, &[], b"stale").await.unwrap();
    assert!(matches!(answer(&mut ann, stale, &mut ignored).await, Err((ErrorCode::CommitConflict, _))));
    drop(ann);
    b.stop().await;
    b.restart().await;
    // The ledger lived in the old process: the group is unknown again and the next commit wins whatever its
    // epoch (the members' MLS state refuses one for the wrong epoch), after which the group is ordered again.
    let mut ann = b.connect(ANN).await;
    let after = ann.commit(&GROUP, 1, &[], b"after restart").await.unwrap();
    assert_eq!(answer(&mut ann, after, &mut ignored).await, Ok(0));
    let again = ann.commit(&GROUP, 1, &[], b"again").await.unwrap();
    assert!(matches!(answer(&mut ann, again, &mut ignored).await, Err((ErrorCode::CommitConflict, _))));
}
