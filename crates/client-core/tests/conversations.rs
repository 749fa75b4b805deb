//! MLS conversations between simulated members: 1:1 and group chats, commit ordering, membership changes,
//! tampering, replays, forward secrecy, rejoin, need-to-know, call set-up authentication and files.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use peerbubble_client_core::files::{FileHasher, FileKey, FileOffer, TransferConfig, open_stored_chunk};
use peerbubble_client_core::message::{CallSignal, ConversationKind, ReceiptKind};
use peerbubble_client_core::mls::Provider;
use peerbubble_client_core::wire::Envelope;
use peerbubble_client_core::{Client, ClientError, CloseReason, Event, Fingerprint, Output, Path};
use peerbubble_proto::{DirectoryEntry, IdentityKey};
use support::Net;

#[test]
fn direct_conversation_both_ways_with_edits_receipts_typing_and_timers() {
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    assert!(net.events[1].iter().any(|e| matches!(e, Event::ConversationReady { kind: ConversationKind::Direct, .. })));
    let id = net.clients[0].send_text(c, "hello bob").unwrap();
    net.clients[1].send_text(c, "hello alice").unwrap();
    net.run();
    assert_eq!(net.texts(1), ["hello bob"]);
    assert_eq!(net.texts(0), ["hello alice"]);
    // Delivery receipt came back automatically.
    let history = net.clients[0].history(c).unwrap();
    let mine = history.iter().find(|m| m.id == id).unwrap();
    assert_eq!(mine.receipts.get(&net.ids[1]), Some(&ReceiptKind::Delivered));

    net.clients[0].edit(c, id, "hello Bob").unwrap();
    net.clients[1].mark_read(c, vec![id]).unwrap();
    net.clients[1].typing(c, true).unwrap();
    net.run();
    assert!(net.events[1].iter().any(|e| matches!(e, Event::Edited { text, .. } if text == "hello Bob")));
    assert!(net.events[0].iter().any(|e| matches!(e, Event::Typing { typing: true, .. })));
    let history = net.clients[0].history(c).unwrap();
    assert_eq!(history.iter().find(|m| m.id == id).unwrap().receipts.get(&net.ids[1]), Some(&ReceiptKind::Read));
    // The reader's own history remembers it read the message, and reading it again sends nothing.
    let read = net.clients[1].history(c).unwrap().iter().find(|m| m.id == id).unwrap().receipts.clone();
    assert_eq!(read.get(&net.ids[1]), Some(&ReceiptKind::Read));
    net.clients[1].mark_read(c, vec![id]).unwrap();
    assert!(net.clients[1].poll_output().is_none(), "no second receipt for the same message");
    assert_eq!(net.clients[1].history(c).unwrap().iter().find(|m| m.id == id).unwrap().text, "hello Bob");
    // Only the author may edit or delete.
    assert!(net.clients[1].edit(c, id, "forged").is_err());

    net.clients[0].delete(c, id).unwrap();
    net.run();
    assert!(net.clients[1].history(c).unwrap().iter().find(|m| m.id == id).unwrap().deleted);

    // Disappearing messages.
    net.clients[1].set_timer(c, Some(60)).unwrap();
    net.run();
    assert!(net.events[0].iter().any(|e| matches!(e, Event::TimerChanged { timer_secs: Some(60), .. })));
    assert_eq!(net.clients[0].timer(c).unwrap(), Some(60), "both sides show the timer");
    assert_eq!(net.clients[1].timer(c).unwrap(), Some(60));
    let gone = net.clients[0].send_text(c, "burn after reading").unwrap();
    net.run();
    assert!(net.clients[1].history(c).unwrap().iter().any(|m| m.id == gone));
    net.advance(59_000);
    assert!(net.clients[1].history(c).unwrap().iter().any(|m| m.id == gone));
    net.advance(2_000);
    assert!(!net.clients[1].history(c).unwrap().iter().any(|m| m.id == gone));
    assert!(!net.clients[0].history(c).unwrap().iter().any(|m| m.id == gone));
    assert!(net.events[1].iter().any(|e| matches!(e, Event::Expired { id, .. } if *id == gone)));
}

#[test]
fn both_starting_at_once_converge_on_one_conversation() {
    let mut net = Net::new(2);
    let (a, b) = (net.ids[0], net.ids[1]);
    net.clients[0].start_direct(b).unwrap();
    net.clients[1].start_direct(a).unwrap();
    net.run();
    let c0 = net.clients[0].direct_conversation(b).unwrap();
    assert_eq!(net.clients[1].direct_conversation(a), Some(c0));
    assert_eq!(net.clients[0].conversations().len(), 1);
    assert_eq!(net.clients[1].conversations().len(), 1);
    net.clients[1].send_text(c0, "one conversation").unwrap();
    net.run();
    assert_eq!(net.texts(0), ["one conversation"]);
}

#[test]
fn what_each_writes_while_both_start_at_once_reaches_the_other_once() {
    // Whichever conversation wins (their ids are random) and whenever each side writes its first message — as
    // soon as its own conversation is ready (before it has heard of the other's), or a step later — both
    // messages end in the one conversation kept, once.
    for round in 0..32 {
        let mut net = Net::new(2);
        let ids = [net.ids[0], net.ids[1]];
        net.clients[0].start_direct(ids[1]).unwrap();
        net.clients[1].start_direct(ids[0]).unwrap();
        let mut sent = [false, false];
        let mut first = [None, None];
        let mut write = |net: &mut Net, sent: &mut [bool; 2], step: usize| {
            for i in 0..2 {
                let wait = if i == 0 { round % 2 } else { round / 2 % 2 };
                if !sent[i]
                    && step >= wait
                    && let Some(c) = net.clients[i].direct_conversation(ids[1 - i])
                {
                    net.clients[i].send_text(c, &format!("from {i}")).unwrap();
                    sent[i] = true;
                    first[i] = Some(c);
                }
            }
        };
        for step in 0..200 {
            // The server accepts a commit (the creator's conversation is ready) before the contact's Welcome
            // for the other conversation arrives: a message written right then is the race.
            let collected = net.collect();
            write(&mut net, &mut sent, step);
            let collected = net.collect() || collected;
            let delivered = net.deliver();
            net.drain_events();
            if !collected && !delivered && sent == [true, true] {
                break;
            }
        }
        assert_eq!(sent, [true, true], "round {round}: both had a conversation");
        net.run();
        // The page may still address the conversation it showed a moment ago: the message goes to the one kept.
        for (i, c) in first.iter().enumerate() {
            net.clients[i].send_text(c.expect("written"), &format!("again {i}")).unwrap();
        }
        net.run();
        let kept = net.clients[0].direct_conversation(ids[1]).expect("a conversation");
        assert_eq!(net.clients[1].direct_conversation(ids[0]), Some(kept), "round {round}: the same one");
        // So may an edit, a read receipt, a typing indicator: they act on the messages as written again.
        for (i, c) in first.iter().enumerate() {
            let c = c.expect("written");
            let history = net.clients[i].history(kept).unwrap();
            let mine = history.iter().find(|m| m.text == format!("from {i}")).expect("mine, kept").id;
            let theirs = history.iter().find(|m| m.text == format!("from {}", 1 - i)).expect("theirs, kept").id;
            net.clients[i].edit(c, mine, &format!("edited {i}")).unwrap();
            net.clients[i].mark_read(c, vec![theirs]).unwrap();
            net.clients[i].typing(c, true).unwrap();
        }
        net.run();
        for i in 0..2 {
            assert_eq!(net.clients[i].conversations().len(), 1, "round {round}: one conversation at {i}");
            let history = net.clients[i].history(kept).unwrap();
            let mut texts: Vec<String> = history.iter().map(|m| m.text.clone()).collect();
            texts.sort();
            assert_eq!(texts, ["again 0", "again 1", "edited 0", "edited 1"], "round {round}: member {i}'s history");
            let mine = history.iter().find(|m| m.text == format!("edited {i}")).expect("mine");
            assert_eq!(
                mine.receipts.get(&ids[1 - i]),
                Some(&ReceiptKind::Read),
                "round {round}: member {i}'s message read by the other"
            );
        }
    }
}

#[test]
fn group_of_five_added_member_sees_only_later_messages_removed_member_reads_nothing_more() {
    let mut net = Net::new(5);
    let members: Vec<_> = (1..4).map(|i| net.id(i)).collect();
    let g = net.clients[0].create_group("crisis cell", &members).unwrap();
    net.run();
    for i in 1..4 {
        assert_eq!(net.clients[i].members(g).unwrap().len(), 3, "member {i} sees the others");
        assert!(net.events[i].iter().any(|e| matches!(e, Event::ConversationReady { kind: ConversationKind::Group { name }, .. } if name == "crisis cell")));
    }
    net.clients[2].send_text(g, "before dave").unwrap();
    net.run();
    for i in [0, 1, 3] {
        assert_eq!(net.texts(i), ["before dave"]);
    }
    // Member 4 joins: sees only what is said afterwards.
    net.clients[1].add_member(g, net.ids[4]).unwrap();
    net.run();
    assert_eq!(net.clients[4].members(g).unwrap().len(), 4);
    net.clients[3].send_text(g, "after dave").unwrap();
    net.run();
    assert_eq!(net.texts(4), ["after dave"]);
    // Member 2 is removed: it learns so, destroys its state, and cannot read what follows.
    net.clients[0].remove_member(g, net.ids[2]).unwrap();
    net.run();
    assert!(net.events[2].iter().any(|e| matches!(e, Event::ConversationClosed { reason: CloseReason::Removed, .. })));
    assert!(net.clients[2].history(g).is_err());
    let before = net.relay_log.len();
    net.clients[4].send_text(g, "without carol").unwrap();
    net.run();
    for i in [0, 1, 3] {
        assert!(net.texts(i).contains(&"without carol".to_owned()), "member {i}");
    }
    assert!(!net.texts(2).contains(&"without carol".to_owned()));
    // Even given the ciphertext, the removed member's (fresh) state cannot open it: nothing was sent to it,
    // and a client for its key with no group state refuses it.
    let sent_after: Vec<_> = net.relay_log[before..].to_vec();
    let mut carol = Client::new(&net.keys[2]);
    carol.set_directory((0..5).filter(|j| *j != 2).map(|j| net.entry(j)));
    for body in sent_after {
        carol.handle_envelope(net.ids[4], &body, Path::Relay, net.now);
    }
    while let Some(e) = carol.poll_event() {
        assert!(!matches!(e, Event::Message { .. }), "a removed member read a later message");
    }
    let epochs: Vec<_> = [0, 1, 3, 4].iter().map(|i| net.clients[*i].epoch(g).unwrap()).collect();
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "all at one epoch: {epochs:?}");
}

#[test]
fn concurrent_commits_are_ordered_loser_retries() {
    let mut net = Net::new(5);
    let g = net.clients[0].create_group("g", &[net.ids[1]]).unwrap();
    net.run();
    // Two members add two others at the same time: the relay takes the first commit for the epoch.
    net.clients[0].add_member(g, net.ids[2]).unwrap();
    net.clients[1].add_member(g, net.ids[3]).unwrap();
    net.run();
    net.advance(3_000);
    assert!(net.conflicts >= 1, "the race happened");
    for i in 0..4 {
        let mut m = net.clients[i].members(g).unwrap();
        m.sort();
        assert_eq!(m.len(), 3, "member {i} has everyone");
    }
    let epochs: Vec<_> = (0..4).map(|i| net.clients[i].epoch(g).unwrap()).collect();
    assert!(epochs.windows(2).all(|w| w[0] == w[1]), "{epochs:?}");
    net.clients[3].send_text(g, "all here").unwrap();
    net.run();
    for i in 0..3 {
        assert_eq!(net.texts(i), ["all here"], "member {i}");
    }
}

#[test]
fn tampered_replayed_and_misattributed_messages_are_refused_and_the_group_goes_on() {
    let mut net = Net::new(3);
    let c = net.direct(0, 1);
    net.take_events(1);
    net.clients[0].send_text(c, "first").unwrap();
    net.collect();
    let original = net.flights.pop_front().unwrap();
    // Tampered: one bit flipped anywhere in the ciphertext.
    for pos in [10, original.bytes.len() / 2, original.bytes.len() - 1] {
        let mut bad = original.bytes.clone();
        bad[pos] ^= 0x01;
        net.clients[1].handle_envelope(net.ids[0], &bad, Path::Relay, net.now);
    }
    net.drain_events();
    assert_eq!(net.refusals(1).len(), 3, "{:?}", net.refusals(1));
    assert!(net.texts(1).is_empty());
    // The genuine message still opens: nothing was corrupted.
    net.clients[1].handle_envelope(net.ids[0], &original.bytes, Path::Relay, net.now);
    net.drain_events();
    assert_eq!(net.texts(1), ["first"]);
    // Replayed: refused.
    net.clients[1].handle_envelope(net.ids[0], &original.bytes, Path::Relay, net.now);
    net.drain_events();
    assert_eq!(net.texts(1), ["first"]);
    assert_eq!(net.refusals(1).len(), 4);
    // Attributed by the transport to someone else (a relay swapping senders): refused.
    net.run();
    net.clients[0].send_text(c, "second").unwrap();
    net.collect();
    let second = net.flights.iter().find(|f| f.to == 1).unwrap().clone();
    net.flights.clear();
    net.clients[1].handle_envelope(net.ids[2], &second.bytes, Path::Relay, net.now);
    net.drain_events();
    assert!(net.refusals(1).iter().any(|r| r.contains("not in") || r.contains("differs")), "{:?}", net.refusals(1));
    // Reordered far beyond the window: the old message is refused, later ones read.
    let mut held = Vec::new();
    for n in 0..12 {
        net.clients[0].send_text(c, &format!("m{n}")).unwrap();
        net.collect();
        held.extend(net.flights.drain(..).filter(|f| f.to == 1));
    }
    for f in held.iter().skip(1) {
        net.clients[1].handle_envelope(net.ids[0], &f.bytes, Path::Relay, net.now);
    }
    net.clients[1].handle_envelope(net.ids[0], &held[0].bytes, Path::Relay, net.now);
    net.drain_events();
    let texts = net.texts(1);
    assert!(!texts.contains(&"m0".to_owned()), "a message 11 generations late was read");
    assert!(texts.contains(&"m11".to_owned()));
    net.run();
    net.clients[1].send_text(c, "still fine").unwrap();
    net.run();
    assert!(net.texts(0).contains(&"still fine".to_owned()));
}

#[test]
fn key_update_moves_everyone_to_a_new_epoch_and_the_old_state_cannot_read_on() {
    let mut net = Net::new(3);
    let g = net.clients[0].create_group("g", &[net.ids[1], net.ids[2]]).unwrap();
    net.run();
    let before = net.clients[1].epoch(g).unwrap();
    // A snapshot of member 1's state, as an attacker who copied the device would hold it.
    let stolen = net.clients[1].mls_snapshot();
    let logged = net.relay_log.len();
    net.clients[1].update_keys(g).unwrap();
    net.run();
    let update_commit = net.relay_log[logged].clone();
    for i in 0..3 {
        assert_eq!(net.clients[i].epoch(g).unwrap(), before + 1, "member {i}");
    }
    net.clients[2].send_text(g, "after the update").unwrap();
    net.collect();
    let to_one = net.flights.iter().find(|f| f.to == 1).unwrap().bytes.clone();
    net.deliver();
    net.drain_events();
    assert!(net.texts(1).contains(&"after the update".to_owned()));
    // The copied state is one epoch behind: it cannot open the message.
    let provider = Provider::restore(&stolen).unwrap();
    let mut group = openmls::prelude::MlsGroup::load(
        openmls_traits::OpenMlsProvider::storage(&provider),
        &openmls::prelude::GroupId::from_slice(&g.0),
    )
    .unwrap()
    .unwrap();
    use openmls::prelude::tls_codec::Deserialize as _;
    let process = |group: &mut openmls::prelude::MlsGroup, envelope: &[u8]| {
        let Envelope::Mls { message } = Envelope::decode(envelope).unwrap() else { panic!() };
        let message = openmls::prelude::MlsMessageIn::tls_deserialize_exact(message).unwrap();
        group.process_message(&provider, message.try_into_protocol_message().unwrap()).map(|p| p.into_content())
    };
    // Even given the update commit itself, the message stays closed to the copied state.
    if let Ok(openmls::prelude::ProcessedMessageContent::StagedCommitMessage(staged)) =
        process(&mut group, &update_commit)
    {
        let _ = group.merge_staged_commit(&provider, *staged);
    }
    assert!(process(&mut group, &to_one).is_err(), "the copied state read a message after the update");
}

#[test]
fn forward_secrecy_a_read_message_key_is_gone_from_the_stored_state() {
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    net.clients[0].send_text(c, "secret").unwrap();
    net.collect();
    let flight = net.flights.pop_front().unwrap();
    let before = net.clients[1].mls_snapshot();
    net.clients[1].handle_envelope(net.ids[0], &flight.bytes, Path::Relay, net.now);
    let after = net.clients[1].mls_snapshot();
    // Replaying the ciphertext against each stored state: the state from before reading still holds the key
    // (the control: this test can fail), the state from after reading does not.
    let open_with = |state: &[u8]| -> bool {
        let provider = Provider::restore(state).unwrap();
        let mut group = openmls::prelude::MlsGroup::load(
            openmls_traits::OpenMlsProvider::storage(&provider),
            &openmls::prelude::GroupId::from_slice(&c.0),
        )
        .unwrap()
        .unwrap();
        let Envelope::Mls { message } = Envelope::decode(&flight.bytes).unwrap() else { panic!() };
        use openmls::prelude::tls_codec::Deserialize as _;
        let message = openmls::prelude::MlsMessageIn::tls_deserialize_exact(message).unwrap();
        group.process_message(&provider, message.try_into_protocol_message().unwrap()).is_ok()
    };
    assert!(open_with(&before), "the key was there before reading");
    assert!(!open_with(&after), "the key survived reading");
}

#[test]
fn a_member_that_missed_commits_asks_to_rejoin_and_reads_again() {
    let mut net = Net::new(4);
    let g = net.clients[0].create_group("g", &[net.ids[1], net.ids[2]]).unwrap();
    net.run();
    net.online[2] = false;
    net.clients[0].add_member(g, net.ids[3]).unwrap();
    net.run();
    net.online[2] = true;
    net.clients[0].send_text(g, "you missed a commit").unwrap();
    net.run();
    // The commit may still be on its way: the message is kept a few seconds before it counts as missed.
    assert!(!net.events[2].iter().any(|e| matches!(e, Event::RejoinRequested { .. })));
    net.advance(8_000);
    assert!(net.events[2].iter().any(|e| matches!(e, Event::RejoinRequested { .. })));
    net.advance(3_000);
    assert_eq!(net.clients[2].members(g).unwrap().len(), 3);
    net.clients[1].send_text(g, "welcome back").unwrap();
    net.run();
    assert!(net.texts(2).contains(&"welcome back".to_owned()));
    assert!(net.texts(3).contains(&"welcome back".to_owned()));
}

#[test]
fn a_message_that_overtakes_its_welcome_or_commit_on_the_channel_is_kept_and_read_once_they_arrive() {
    let mut net = Net::new(3);
    let (a, b) = (net.ids[0], net.ids[1]);
    net.direct(0, 1);
    net.clients[0].channel_opened(b);
    net.clients[1].channel_opened(a);
    // The group's name (sent right after the Welcome, on the channel) arrives before the Welcome (relayed).
    let g = net.clients[0].create_group("north sector", &[b]).unwrap();
    net.run_channel_first();
    let kind = net.clients[1].conversations().into_iter().find(|(id, _)| *id == g).and_then(|(_, kind)| kind);
    assert_eq!(kind, Some(ConversationKind::Group { name: "north sector".into() }));
    // A commit adding a third member is relayed; the name sent just after it to the newcomers, and to b on the
    // channel, overtakes it: b waits for the commit instead of asking to rejoin.
    net.clients[0].add_member(g, net.ids[2]).unwrap();
    net.run_channel_first();
    assert_eq!(net.clients[1].members(g).unwrap().len(), 2, "b sees the two others");
    net.clients[0].send_text(g, "all three").unwrap();
    net.run_channel_first();
    assert_eq!(net.texts(1), ["all three"]);
    assert_eq!(net.texts(2), ["all three"]);
    net.advance(10_000);
    let b_events = net.take_events(1);
    assert!(!b_events.iter().any(|e| matches!(e, Event::RejoinRequested { .. })), "{b_events:?}");
    assert!(!b_events.iter().any(|e| matches!(e, Event::Refused { .. })), "{b_events:?}");
}

#[test]
fn need_to_know_and_keys_come_from_the_directory() {
    let mut net = Net::new(3);
    // Member 2 is not visible to member 0: no conversation can be started, envelopes from it are refused.
    net.set_visible(0, &[1]);
    assert!(net.clients[0].start_direct(net.ids[2]).is_err());
    net.clients[2].start_direct(net.ids[0]).unwrap();
    net.run();
    assert!(net.refusals(0).iter().any(|r| r.contains("not in your directory")));
    assert!(net.clients[0].conversations().is_empty());
    // A group containing a member we cannot see is refused at the Welcome.
    let g = net.clients[1].create_group("g", &[net.ids[2]]).unwrap();
    net.run();
    net.clients[1].add_member(g, net.ids[0]).unwrap();
    net.run();
    assert!(net.refusals(0).iter().any(|r| r.contains("not in our directory")), "{:?}", net.refusals(0));
    assert!(net.clients[0].history(g).is_err());
    // The server substitutes a key of its own for member 1 (a directory entry under another key) and relabels
    // member 1's answer as coming from it: the KeyPackage's credential is not that key's, so it is refused.
    let mut net = Net::new(3);
    let substitute = IdentityKey::from_seed(&[77; 32]).public_key();
    let fake = DirectoryEntry { member: substitute.member_id(), public_key: substitute, ..net.entry(1) };
    net.clients[0].set_directory([fake]);
    net.clients[0].start_direct(substitute.member_id()).unwrap();
    let Some(Output::Relay { body: request, .. }) = net.clients[0].poll_output() else { panic!("no request") };
    net.clients[1].handle_envelope(net.ids[0], &request, Path::Relay, net.now);
    let Some(Output::Relay { body: answer, .. }) = net.clients[1].poll_output() else { panic!("no answer") };
    assert!(matches!(Envelope::decode(&answer), Ok(Envelope::KeyPackage { .. })));
    net.clients[0].handle_envelope(substitute.member_id(), &answer, Path::Relay, net.now);
    net.drain_events();
    assert!(net.refusals(0).iter().any(|r| r.contains("does not match the directory")), "{:?}", net.refusals(0));
    assert!(net.clients[0].conversations().is_empty());
    assert!(net.clients[0].poll_output().is_none(), "no commit for a substituted key");
}

#[test]
fn call_set_up_is_inside_mls_and_binds_the_dtls_fingerprint() {
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    let fp = |byte: u8| Fingerprint::parse(&format!("sha-256 {}", vec![format!("{byte:02X}"); 32].join(":"))).unwrap();
    let (fp_a, fp_b, other) = (fp(0xAA), fp(0xDD), fp(0x66));
    let sdp_a = format!("v=0\r\na=fingerprint:{fp_a}\r\na=candidate:1 1 udp 1 192.0.2.7 5000 typ host\r\n");
    // The SDP must carry the fingerprint given.
    assert!(net.clients[0].start_call(net.ids[1], &sdp_a, &fp(0x00)).is_err());
    net.clients[0].start_call(net.ids[1], &sdp_a, &fp_a).unwrap();
    net.run();
    // The relay never saw the SDP, the fingerprint or the candidate address in clear.
    for body in &net.relay_log {
        let text = String::from_utf8_lossy(body);
        assert!(!text.contains("fingerprint") && !text.contains("192.0.2.7") && !text.contains("AA:AA"));
    }
    assert!(net.events[1].iter().any(|e| matches!(e, Event::Call { signal: CallSignal::Offer { .. }, .. })));
    assert_eq!(net.clients[1].expected_fingerprint(net.ids[0]), Some(&fp_a));
    // In lower case in the SDP, as some stacks write it: the same fingerprint.
    let sdp_b = format!("v=0\r\na=fingerprint:{}\r\n", fp_b.to_string().to_lowercase());
    net.clients[1].answer_call(net.ids[0], &sdp_b, &fp_b).unwrap();
    net.run();
    assert_eq!(net.clients[0].expected_fingerprint(net.ids[1]), Some(&fp_b));
    // The answer left with no candidate: those gathered afterwards trickle, inside MLS too.
    let relay = "candidate:2 1 udp 41885439 198.51.100.9 3478 typ relay raddr 0.0.0.0 rport 0";
    net.clients[1].send_candidate(net.ids[0], relay).unwrap();
    for bad in ["a=fingerprint:sha-256 00", "candidate:3 1 udp 1 198.51.100.9 1 typ host\r\na=fingerprint:x"] {
        assert!(net.clients[1].send_candidate(net.ids[0], bad).is_err(), "{bad:?} is not one candidate line");
    }
    net.run();
    assert!(net.relay_log.iter().all(|body| !String::from_utf8_lossy(body).contains("198.51.100.9")));
    let trickled: Vec<&str> = net.events[0]
        .iter()
        .filter_map(|e| match e {
            Event::Call { signal: CallSignal::Candidate { candidate, .. }, .. } => Some(candidate.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(trickled, [relay]);
    // The DTLS certificate actually presented must be the announced one.
    assert!(net.clients[0].verify_dtls(net.ids[1], &fp_b));
    assert!(!net.clients[1].verify_dtls(net.ids[0], &other));
    net.drain_events();
    assert!(net.refusals(1).iter().any(|r| r.contains("DTLS")));
    let _ = c;
}

#[test]
fn file_transfer_over_the_channel_with_a_drop_and_resume() {
    let mut net = Net::new(2);
    net.direct(0, 1);
    let (a, b) = (net.ids[0], net.ids[1]);
    for i in 0..2 {
        net.clients[i].set_file_config(TransferConfig { chunk_size: 4096, ..TransferConfig::default() });
    }
    net.clients[0].channel_opened(b);
    net.clients[1].channel_opened(a);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let t = net.clients[0].offer_file(b, "report.pdf", data.len() as u64, FileHasher::digest(&data)).unwrap();
    net.run();
    assert!(net.events[1].iter().any(|e| matches!(e, Event::FileOffered { .. })));
    net.clients[1].accept_file(t).unwrap();
    net.run();
    let mut received = vec![0u8; data.len()];
    // The receiver also keeps every chunk sealed, with the key it takes at the first chunk.
    let (mut sealed_chunks, mut key) = (Vec::new(), None);
    let mut dropped_once = false;
    for _ in 0..1000 {
        let mut sent = 0;
        while let Some(req) = net.clients[0].next_file_chunk(t) {
            let s = req.offset as usize;
            let frame = net.clients[0].seal_file_chunk(t, req.index, &data[s..s + req.len as usize]).unwrap();
            sent += 1;
            if !dropped_once && req.index == 20 {
                // The connection drops: this chunk and the rest of the window are lost.
                dropped_once = true;
                net.clients[0].channel_closed(b);
                net.clients[1].channel_closed(a);
                while net.clients[0].next_file_chunk(t).is_some() {}
                break;
            }
            net.flights.push_back(support::Flight { from: 0, to: 1, bytes: frame, path: Path::Channel });
        }
        net.run();
        for e in net.take_events(1) {
            if let Event::FileChunk { offset, plaintext, index, sealed, .. } = &e {
                if key.is_none() {
                    key = net.clients[1].file_key(t).map(|k| FileKey::from_slice(k.expose_secret()).unwrap());
                }
                sealed_chunks.push((*index, sealed.clone()));
                let offset = *offset;
                received[offset as usize..offset as usize + plaintext.len()].copy_from_slice(plaintext);
            }
            if let Event::FileReceived { sha256, .. } = e {
                assert_eq!(sha256, FileHasher::digest(&data));
            }
        }
        if dropped_once && sent == 0 && !net.events[0].iter().any(|e| matches!(e, Event::FileSent { .. })) {
            // Reconnect: the receiver tells where to resume.
            net.clients[0].channel_opened(b);
            net.clients[1].channel_opened(a);
            net.run();
        }
        if net.events[0].iter().any(|e| matches!(e, Event::FileSent { .. })) {
            break;
        }
    }
    assert!(net.events[0].iter().any(|e| matches!(e, Event::FileSent { .. })), "the sender got the confirmation");
    assert_eq!(received, data);
    // Kept encrypted at rest, the file opens later with the kept key, and through the client itself.
    let key = key.expect("the key was there during the transfer");
    assert_eq!(net.clients[1].file_key(t).map(|k| *k.expose_secret()), Some(*key.expose_secret()));
    let (index, sealed) = &sealed_chunks[3];
    assert_eq!(net.clients[1].open_stored_chunk(t, *index, sealed).unwrap(), data[3 * 4096..4 * 4096]);
    // Forgotten, its key is gone and the edge is told to delete the bytes.
    net.clients[1].forget_file(t).unwrap();
    net.drain_events();
    assert!(net.events[1].iter().any(|e| matches!(e, Event::FileForgotten { transfer } if *transfer == t)));
    assert!(net.clients[1].file_key(t).is_none(), "a forgotten file's key stays in the client");
    assert!(net.clients[1].open_stored_chunk(t, *index, sealed).is_err());
    let offer = FileOffer::new(t, "report.pdf", data.len() as u64, 4096, FileHasher::digest(&data), 1 << 30).unwrap();
    let reopened: Vec<u8> = sealed_chunks
        .iter()
        .flat_map(|(index, sealed)| open_stored_chunk(&key, &offer, *index, sealed).unwrap())
        .collect();
    assert_eq!(reopened, data);
    // Chunks are refused on the relay path.
    let frame = vec![0xF1; 40];
    net.clients[1].handle_envelope(a, &frame, Path::Relay, net.now);
    net.drain_events();
    assert!(net.refusals(1).iter().any(|r| r.contains("DataChannel")));
}

#[test]
fn a_file_sent_to_a_group_goes_to_each_member_over_the_pair_and_shows_in_the_group() {
    let mut net = Net::new(4);
    let (b, c, d) = (net.id(1), net.id(2), net.id(3));
    let g = net.clients[0].create_group("logistics", &[b, c]).unwrap();
    net.run();
    net.direct(0, 1);
    net.direct(0, 2);
    net.direct(0, 3);
    let data = b"manifest: 40 pallets".to_vec();
    let (size, digest) = (data.len() as u64, FileHasher::digest(&data));

    // One transfer per member, each over the pair's 1:1 conversation, shown in the group on both sides.
    let to_b = net.clients[0].offer_group_file(g, b, "manifest.txt", size, digest).unwrap();
    let to_c = net.clients[0].offer_group_file(g, c, "manifest.txt", size, digest).unwrap();
    // Not to someone outside the group, even a contact.
    assert!(matches!(
        net.clients[0].offer_group_file(g, d, "manifest.txt", size, digest),
        Err(ClientError::NotAllowed(_))
    ));
    net.run();
    for (i, t) in [(1, to_b), (2, to_c)] {
        let f = net.clients[i].files().into_iter().find(|f| f.transfer == t).expect("offered");
        assert_eq!(f.group, Some(g), "member {i} shows it in the group");
        assert_eq!(Some(f.conversation), net.clients[i].direct_conversation(net.ids[0]), "carried 1:1");
        let mine = net.clients[0].files().into_iter().find(|f| f.transfer == t).expect("ours");
        assert_eq!(mine.group, Some(g));
    }
    assert!(net.clients[3].files().is_empty());
    // A 1:1 file stays out of the group.
    let direct = net.clients[0].offer_file(b, "private.txt", size, digest).unwrap();
    net.run();
    assert_eq!(net.clients[1].files().into_iter().find(|f| f.transfer == direct).unwrap().group, None);

    // Received and checked as any file.
    net.clients[2].channel_opened(net.ids[0]);
    net.clients[0].channel_opened(c);
    net.clients[2].accept_file(to_c).unwrap();
    net.run();
    while let Some(req) = net.clients[0].next_file_chunk(to_c) {
        let s = req.offset as usize;
        let frame = net.clients[0].seal_file_chunk(to_c, req.index, &data[s..s + req.len as usize]).unwrap();
        net.flights.push_back(support::Flight { from: 0, to: 2, bytes: frame, path: Path::Channel });
        net.run();
    }
    assert!(net.events[2].iter().any(|e| matches!(e, Event::FileReceived { sha256, .. } if *sha256 == digest)));

    // An offer naming a group the receiver is no longer in (it left before the offer arrived) is shown in the
    // 1:1 conversation, not in a group it cannot see.
    net.clients[2].leave(g).unwrap();
    let late = net.clients[0].offer_group_file(g, c, "late.txt", size, digest).unwrap();
    net.run();
    assert_eq!(net.clients[2].files().into_iter().find(|f| f.transfer == late).expect("offered").group, None);
    // The file it received in that group went with the group.
    assert!(net.clients[2].files().iter().all(|f| f.transfer != to_c), "kept after leaving the group");

    // A member removed from the group: the offer waiting there is declined, and the sender is told.
    net.take_events(0);
    net.clients[0].remove_member(g, b).unwrap();
    net.run();
    assert!(net.clients[1].files().iter().all(|f| f.transfer != to_b));
    assert!(net.clients[1].files().iter().any(|f| f.transfer == direct), "the 1:1 file is not the group's");
    assert!(net.take_events(0).iter().any(|e| matches!(e, Event::FileCancelled { transfer, .. } if *transfer == to_b)));
    assert!(net.clients[0].files().iter().all(|f| f.transfer != to_b));
}

#[test]
fn removing_a_contact_destroys_its_state_and_keys() {
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    let gid = openmls::prelude::GroupId::from_slice(&c.0);
    let snapshot = net.clients[0].mls_snapshot();
    let provider = Provider::restore(&snapshot).unwrap();
    assert!(
        openmls::prelude::MlsGroup::load(openmls_traits::OpenMlsProvider::storage(&provider), &gid).unwrap().is_some()
    );
    net.clients[0].remove_contact(net.ids[1]).unwrap();
    net.drain_events();
    assert!(net.events[0].iter().any(|e| matches!(e, Event::ConversationClosed { reason: CloseReason::Left, .. })));
    let provider = Provider::restore(&net.clients[0].mls_snapshot()).unwrap();
    assert!(
        openmls::prelude::MlsGroup::load(openmls_traits::OpenMlsProvider::storage(&provider), &gid).unwrap().is_none()
    );
    assert!(net.clients[0].send_text(c, "gone").is_err());
}

#[test]
fn canary_never_reaches_the_relay_in_clear() {
    let mut net = Net::new(3);
    let canary = "CANARY-7f3a9c1e-ddb2";
    let c = net.direct(0, 1);
    let g = net.clients[0].create_group(&format!("group {canary}"), &[net.ids[1], net.ids[2]]).unwrap();
    net.run();
    net.clients[0].send_text(c, canary).unwrap();
    net.clients[1].send_text(g, canary).unwrap();
    net.run();
    assert!(net.texts(1).contains(&canary.to_owned()));
    assert!(net.texts(2).contains(&canary.to_owned()));
    for body in &net.relay_log {
        assert!(!body.windows(canary.len()).any(|w| w == canary.as_bytes()), "canary in a relayed envelope");
    }
}

#[test]
fn state_saved_to_the_key_store_is_encrypted_and_restores_the_conversation() {
    use peerbubble_client_core::keystore::{KdfParams, KeyStore, KnowledgeKdf, MemoryStorage, Segment};
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    let canary = "CANARY-at-rest-5c1d";
    net.clients[0].send_text(c, canary).unwrap();
    net.run();
    let kdf = KnowledgeKdf::generate(KdfParams::insecure_fast()).unwrap();
    let segments =
        [Segment::device(zeroize::Zeroizing::new([3; 32])), Segment::knowledge(b"correct horse", &kdf).unwrap()];
    let mut store = KeyStore::create(MemoryStorage::default(), &segments).unwrap();
    net.clients[1].save(&mut store).unwrap();
    // At rest: no content, no conversation id in clear.
    let at_rest: Vec<u8> = store.storage().0.values().flatten().copied().collect();
    for needle in [canary.as_bytes(), c.to_string().as_bytes()] {
        assert!(!at_rest.windows(needle.len()).any(|w| w == needle));
    }
    // The member comes back later: unlock, restore, and the conversation goes on.
    store.lock();
    assert!(Client::restore(&net.keys[1], &store).is_err(), "locked store gives nothing");
    store.unlock(&segments).unwrap();
    let mut restored = Client::restore(&net.keys[1], &store).unwrap();
    assert!(restored.history(c).unwrap().iter().any(|m| m.text == canary));
    restored.set_directory([net.entry(0)]);
    net.clients[1] = restored;
    net.clients[0].send_text(c, "after the restart").unwrap();
    net.clients[1].send_text(c, "I am back").unwrap();
    net.run();
    assert!(net.texts(1).contains(&"after the restart".to_owned()));
    assert!(net.texts(0).contains(&"I am back".to_owned()));
}

#[test]
fn a_member_cannot_make_us_mint_key_packages_without_bound() {
    let mut net = Net::new(2);
    for n in 0..20u8 {
        let request = Envelope::KeyPackageRequest { request: [n; 16] }.encode();
        net.clients[0].handle_envelope(net.ids[1], &request, Path::Relay, net.now);
    }
    let mut answered = 0;
    while let Some(out) = net.clients[0].poll_output() {
        if let Output::Relay { body, .. } = out {
            assert!(matches!(Envelope::decode(&body), Ok(Envelope::KeyPackage { .. })));
            answered += 1;
        }
    }
    net.drain_events();
    assert_eq!(answered, 16);
    assert_eq!(net.refusals(0).len(), 4);
    // A minute later it may ask again.
    net.clients[0].handle_timeout(net.now + 61_000);
    net.clients[0].handle_envelope(
        net.ids[1],
        &Envelope::KeyPackageRequest { request: [99; 16] }.encode(),
        Path::Relay,
        net.now + 61_000,
    );
    assert!(net.clients[0].poll_output().is_some());
}

#[test]
fn the_suite_is_the_post_quantum_hybrid_and_no_other_is_accepted() {
    // If this changes, the post-quantum promise changes: ADR 0014 and the threat model must say so first.
    assert_eq!(
        u16::from(peerbubble_client_core::mls::CIPHERSUITE),
        0x004F,
        "MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519"
    );
    let mut net = Net::new(2);
    // Member 0 asks member 1 for a KeyPackage; a KeyPackage of the classical X25519 suite comes back, validly
    // signed by member 1's own identity key: refused, and no conversation is made.
    net.clients[0].start_direct(net.ids[1]).unwrap();
    let Some(Output::Relay { body: request, .. }) = net.clients[0].poll_output() else { panic!("no request") };
    let Ok(Envelope::KeyPackageRequest { request }) = Envelope::decode(&request) else { panic!("not a request") };
    let provider = Provider::default();
    let signer = peerbubble_client_core::mls::MlsSigner::new(&net.keys[1]);
    let classical = openmls::prelude::Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;
    let bundle =
        openmls::prelude::KeyPackage::builder().build(classical, &provider, &signer, signer.credential()).unwrap();
    let key_package = tls_codec::Serialize::tls_serialize_detached(bundle.key_package()).unwrap();
    let answer = Envelope::KeyPackage { request, key_package }.encode();
    net.clients[0].handle_envelope(net.ids[1], &answer, Path::Relay, net.now);
    net.drain_events();
    assert!(net.refusals(0).iter().any(|r| r.contains("another ciphersuite")), "{:?}", net.refusals(0));
    assert!(net.clients[0].conversations().is_empty());
    assert!(net.clients[0].poll_output().is_none(), "nothing is committed in another suite");
}

#[test]
fn debug_output_never_shows_what_was_said() {
    const CANARY: &str = "canary-7f3a-never-in-logs";
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    net.clients[0].send_text(c, CANARY).unwrap();
    net.run();
    assert_eq!(net.texts(1), [CANARY], "the control: the text did arrive");
    let mut printed = format!("{:?} {:?}", net.events, net.clients[1].history(c).unwrap());
    let fp = Fingerprint::parse(&format!("sha-256 {}", vec!["AB"; 32].join(":"))).unwrap();
    let offer = CallSignal::Offer {
        call: peerbubble_client_core::message::MessageId([1; 16]),
        sdp: format!("v=0\r\na=fingerprint:{fp}\r\na=candidate:{CANARY}\r\n"),
        fingerprint: fp,
    };
    let candidate =
        CallSignal::Candidate { call: peerbubble_client_core::message::MessageId([1; 16]), candidate: CANARY.into() };
    let text = peerbubble_client_core::message::AppMessage::Edit {
        id: peerbubble_client_core::message::MessageId([2; 16]),
        text: CANARY.into(),
    };
    let transfer = peerbubble_client_core::files::TransferId([3; 16]);
    let name_offer = FileOffer {
        transfer,
        name: format!("{CANARY}.pdf"),
        size: 10,
        chunk_size: 16_384,
        chunks: 1,
        sha256: [0; 32],
        group: None,
    };
    let chunk = Event::FileChunk {
        transfer,
        index: 0,
        offset: 0,
        plaintext: CANARY.as_bytes().to_vec(),
        sealed: vec![1, 2, 3],
    };
    printed += &format!("{offer:?} {candidate:?} {text:?} {name_offer:?} {chunk:?}");
    assert!(!printed.contains(CANARY), "{printed}");
    assert!(!printed.contains("v=0") && !printed.contains("99, 97, 110, 97, 114, 121"), "{printed}");
    assert!(printed.contains("redacted"), "{printed}");
}

#[test]
fn the_bubble_policy_is_enforced_by_the_client() {
    use peerbubble_proto::BubblePolicy;
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    let b = net.ids[1];
    let policy = BubblePolicy {
        disappear_within_secs: 30,
        files_allowed: true,
        max_file_bytes: 1000,
        ..BubblePolicy::default()
    };
    for client in &mut net.clients {
        client.set_policy(policy);
    }
    // No timer asked: messages still disappear within the bubble's limit, on both devices.
    let gone = net.clients[0].send_text(c, "short-lived").unwrap();
    net.run();
    net.advance(29_000);
    assert!(net.clients[1].history(c).unwrap().iter().any(|m| m.id == gone));
    net.advance(2_000);
    assert!(!net.clients[0].history(c).unwrap().iter().any(|m| m.id == gone));
    assert!(!net.clients[1].history(c).unwrap().iter().any(|m| m.id == gone));
    // A longer timer, or none, is refused; a shorter one is fine.
    assert!(matches!(net.clients[0].set_timer(c, None), Err(ClientError::Policy(_))));
    assert!(matches!(net.clients[0].set_timer(c, Some(3600)), Err(ClientError::Policy(_))));
    net.clients[0].set_timer(c, Some(10)).unwrap();
    // A sender whose client ignores the policy: our device still applies our bubble's limit.
    net.clients[0].set_policy(BubblePolicy::default());
    net.clients[0].set_timer(c, None).unwrap();
    net.run();
    let kept = net.clients[0].send_text(c, "kept by the sender, not by us").unwrap();
    net.run();
    net.advance(31_000);
    assert!(net.clients[0].history(c).unwrap().iter().any(|m| m.id == kept));
    assert!(!net.clients[1].history(c).unwrap().iter().any(|m| m.id == kept));
    // Files: too large, or not at all, refused before anything is offered; within the limit, offered.
    net.clients[0].set_policy(policy);
    net.clients[0].channel_opened(b);
    let big = net.clients[0].offer_file(b, "big.bin", 1001, [0; 32]);
    assert!(matches!(big, Err(ClientError::Policy(_))), "{big:?}");
    net.clients[0].set_policy(BubblePolicy { files_allowed: false, ..policy });
    assert!(matches!(net.clients[0].offer_file(b, "small.bin", 10, [0; 32]), Err(ClientError::Policy(_))));
    // The receiver's own policy holds too: an offer larger than it allows cannot be accepted (only declined).
    net.clients[0].set_policy(BubblePolicy::default());
    let t = net.clients[0].offer_file(b, "large.bin", 5000, [0; 32]).unwrap();
    net.run();
    assert!(matches!(net.clients[1].accept_file(t), Err(ClientError::Policy(_))));
    net.clients[1].decline_file(t).unwrap();
}

#[test]
fn a_media_call_rings_is_accepted_or_declined_and_the_bubble_rule_refuses_it() {
    use peerbubble_client_core::message::EndReason;
    let mut net = Net::new(2);
    let c = net.direct(0, 1);
    let (a, b) = (net.ids[0], net.ids[1]);
    let ring = net.clients[0].ring(b, true).unwrap();
    net.run();
    let rang = net.take_events(1).into_iter().any(
        |e| matches!(e, Event::Call { conversation, from, signal: CallSignal::Ring { ring: r, video: true } } if conversation == c && from == a && r == ring),
    );
    assert!(rang, "the callee's screen rings");
    net.clients[1].answer_ring(a, ring, true).unwrap();
    net.run();
    assert!(
        net.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Call { signal: CallSignal::Accept { ring: r }, .. } if *r == ring))
    );
    net.clients[0].end_ring(b, ring, EndReason::HungUp).unwrap();
    net.run();
    assert!(
        net.take_events(1)
            .iter()
            .any(|e| matches!(e, Event::Call { signal: CallSignal::End { reason: EndReason::HungUp, .. }, .. }))
    );
    // Declined.
    let ring = net.clients[0].ring(b, false).unwrap();
    net.run();
    net.clients[1].answer_ring(a, ring, false).unwrap();
    net.run();
    assert!(
        net.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Call { signal: CallSignal::End { reason: EndReason::Declined, .. }, .. }))
    );
    // A bubble without calls: we cannot ring, and a ring that arrives is refused and answered "not allowed".
    let no_calls = peerbubble_proto::BubblePolicy { calls_allowed: false, ..peerbubble_proto::BubblePolicy::default() };
    net.clients[1].set_policy(no_calls);
    assert!(net.clients[1].ring(a, false).is_err());
    net.take_events(1);
    net.clients[0].ring(b, false).unwrap();
    net.run();
    let callee = net.take_events(1);
    assert!(!callee.iter().any(|e| matches!(e, Event::Call { signal: CallSignal::Ring { .. }, .. })), "it never rings");
    assert!(
        net.take_events(0)
            .iter()
            .any(|e| matches!(e, Event::Call { signal: CallSignal::End { reason: EndReason::NotAllowed, .. }, .. }))
    );
}

#[test]
fn a_group_call_rings_everyone_counts_who_joins_stops_at_the_mesh_limit_and_goes_on_when_one_leaves() {
    use peerbubble_client_core::group_calls::MAX_VIDEO_PARTICIPANTS;
    use peerbubble_client_core::message::EndReason;
    let mut net = Net::new(6);
    let others: Vec<_> = (1..6).map(|i| net.id(i)).collect();
    let g = net.clients[0].create_group("north sector", &others).unwrap();
    net.run();
    for i in 0..6 {
        net.take_events(i);
    }
    let ring = net.clients[0].ring_in(g, true).unwrap();
    net.run();
    let a = net.ids[0];
    for i in 1..6 {
        let rang = net.take_events(i).into_iter().any(|e| {
            matches!(e, Event::Call { conversation, from, signal: CallSignal::Ring { ring: r, video: true } } if conversation == g && from == a && r == ring)
        });
        assert!(rang, "member {i} hears the group ring");
        assert_eq!(net.clients[i].group_call(g).unwrap().participants.len(), 1, "only the caller is in it yet");
    }
    // A second ring while this call is under way is refused: join it instead.
    assert!(net.clients[1].ring_in(g, false).is_err());
    // Two join; then the last seat (four with video) is taken by two at once: members that heard both count one
    // of them, all the same one, and the participants stay at the limit. The caller tells the other one, which
    // then counts as everybody does (it is not in).
    for i in 1..MAX_VIDEO_PARTICIPANTS - 1 {
        net.clients[i].answer_ring_in(g, ring, true).unwrap();
        net.run();
    }
    for i in 0..6 {
        net.take_events(i);
    }
    net.clients[3].answer_ring_in(g, ring, true).unwrap();
    net.clients[5].answer_ring_in(g, ring, true).unwrap();
    net.run();
    let seen: Vec<_> = (0..6).map(|i| net.clients[i].group_call(g).unwrap().participants.clone()).collect();
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "all six count the same participants: {seen:?}");
    assert_eq!(seen[0].len(), MAX_VIDEO_PARTICIPANTS);
    let refused =
        net.take_events(0).iter().any(|e| matches!(e, Event::Refused { reason, .. } if reason.contains("full")));
    assert!(refused, "the join beyond the limit is refused, and said so");
    let late = if seen[0].contains(&net.ids[3]) { 5 } else { 3 };
    let told = net.take_events(late).into_iter().any(|e| {
        matches!(e, Event::Call { from, signal: CallSignal::Full { ring: r, member }, .. } if from == a && r == ring && member == net.ids[late])
    });
    assert!(told, "the one that lost the last seat heard it from the caller");
    let full = net.clients[4].answer_ring_in(g, ring, true);
    assert!(matches!(full, Err(ClientError::GroupCall(_))), "{full:?}");
    assert!(full.unwrap_err().to_string().contains("full"));
    // Declining tells nobody.
    net.clients[4].answer_ring_in(g, ring, false).unwrap();
    net.run();
    assert_eq!(net.clients[0].group_call(g).unwrap().participants.len(), 4);
    // One leaves: the others go on, and there is room again.
    net.clients[2].end_ring_in(g, ring, EndReason::HungUp).unwrap();
    net.run();
    let b = net.ids[2];
    assert!(net.take_events(1).iter().any(
        |e| matches!(e, Event::Call { from, signal: CallSignal::End { ring: r, .. }, .. } if *from == b && *r == ring)
    ));
    for i in [0, 1, 3, 4, 5] {
        let call = net.clients[i].group_call(g).unwrap();
        assert_eq!(call.participants.len(), 3, "member {i}");
        assert!(!call.participants.contains(&b));
    }
    net.clients[4].answer_ring_in(g, ring, true).unwrap();
    net.run();
    assert!(net.clients[0].group_call(g).unwrap().participants.contains(&net.ids[4]));
    // The call ends once the last one leaves.
    let inside: Vec<usize> =
        (0..6).filter(|i| net.clients[0].group_call(g).unwrap().participants.contains(&net.ids[*i])).collect();
    for i in inside {
        net.clients[i].end_ring_in(g, ring, EndReason::HungUp).unwrap();
        net.run();
    }
    for i in 0..6 {
        assert!(net.clients[i].group_call(g).is_none(), "member {i}");
    }
    // A bubble without calls: the group is not rung.
    let no_calls = peerbubble_proto::BubblePolicy { calls_allowed: false, ..peerbubble_proto::BubblePolicy::default() };
    net.clients[3].set_policy(no_calls);
    net.take_events(3);
    net.clients[0].ring_in(g, false).unwrap();
    net.run();
    assert!(!net.take_events(3).iter().any(|e| matches!(e, Event::Call { signal: CallSignal::Ring { .. }, .. })));
    assert!(net.clients[3].group_call(g).is_none());
}

/// A conversation started with an away member before the bubble said it keeps KeyPackages (right after
/// connecting): the request waits in the member's mailbox, and once the stock frame comes a KeyPackage is claimed
/// for it as well, so the conversation does not wait for the member to return.
#[test]
fn a_request_made_before_the_bubble_said_it_keeps_key_packages_is_claimed_when_it_does() {
    let (ann, bob) = (IdentityKey::generate().unwrap(), IdentityKey::generate().unwrap());
    let bob_id = bob.public_key().member_id();
    let mut client = Client::new(&ann);
    let entry = |key: &IdentityKey, online: bool| DirectoryEntry {
        member: key.public_key().member_id(),
        public_key: key.public_key(),
        display_name: "Bob".into(),
        categories: vec!["cell".into()],
        online,
    };
    client.set_directory([entry(&bob, false)]);
    client.start_direct(bob_id).unwrap();
    let mut asked = None;
    while let Some(out) = client.poll_output() {
        if let Output::Relay { to, body } = out
            && let Ok(Envelope::KeyPackageRequest { request }) = Envelope::decode(&body)
        {
            assert_eq!(to, bob_id);
            asked = Some(request);
        }
    }
    let asked = asked.expect("the member is asked directly while nothing says the bubble keeps KeyPackages");
    client.key_package_stock(0, false).unwrap();
    let claims: Vec<_> = std::iter::from_fn(|| client.poll_output())
        .filter_map(|out| match out {
            Output::ClaimKeyPackage { request, member } => Some((request, member)),
            _ => None,
        })
        .collect();
    assert_eq!(claims, [(asked, bob_id)], "the same request, claimed in the bubble");
    // Told again (a new signaling session), nothing is claimed twice.
    client.key_package_stock(5, true).unwrap();
    assert!(std::iter::from_fn(|| client.poll_output()).all(|out| !matches!(out, Output::ClaimKeyPackage { .. })));
}
