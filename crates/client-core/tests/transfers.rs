//! File transfers between two simulated members, through the client: pauses from either side, cancels, a
//! restart of the receiver and of the sender in the middle (kept in the encrypted key store, the receiver's
//! sealed chunks replayed), and files forgotten with their conversation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use peerbubble_client_core::files::{CancelReason, FileHasher, TransferConfig, TransferId};
use peerbubble_client_core::keystore::{KdfParams, KeyStore, KnowledgeKdf, MemoryStorage, Segment};
use peerbubble_client_core::transfers::FileState;
use peerbubble_client_core::{Client, Event, Path};
use support::{Flight, Net};

const CHUNK: u32 = 4096;

fn data(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

/// Two members with a 1:1 conversation and an open DataChannel, small chunks.
fn pair() -> Net {
    let mut net = Net::new(2);
    net.direct(0, 1);
    for i in 0..2 {
        net.clients[i].set_file_config(TransferConfig { chunk_size: CHUNK, ..TransferConfig::default() });
    }
    let (a, b) = (net.ids[0], net.ids[1]);
    net.clients[0].channel_opened(b);
    net.clients[1].channel_opened(a);
    net
}

/// Offers `file` from 0 to 1 and accepts it.
fn start(net: &mut Net, file: &[u8]) -> TransferId {
    let b = net.ids[1];
    let t = net.clients[0].offer_file(b, "plan.bin", file.len() as u64, FileHasher::digest(file)).unwrap();
    net.run();
    assert_eq!(net.clients[1].files()[0].state, FileState::Asked);
    assert_eq!(net.clients[0].files()[0].state, FileState::Offered);
    net.clients[1].accept_file(t).unwrap();
    net.run();
    t
}

/// Sends what the window allows (at most `limit` chunks) and lets everything arrive; returns the chunks sent.
/// The receiver's sealed chunks are appended to `kept`, as an edge keeps them at rest.
fn pump(net: &mut Net, t: TransferId, file: &[u8], limit: usize, kept: &mut Vec<(u32, Vec<u8>)>) -> usize {
    let mut sent = 0;
    while sent < limit {
        let Some(req) = net.clients[0].next_file_chunk(t) else { break };
        let s = req.offset as usize;
        let frame = net.clients[0].seal_file_chunk(t, req.index, &file[s..s + req.len as usize]).unwrap();
        net.flights.push_back(Flight { from: 0, to: 1, bytes: frame, path: Path::Channel });
        sent += 1;
    }
    net.run();
    for e in net.take_events(1) {
        if let Event::FileChunk { index, sealed, .. } = e {
            kept.push((index, sealed));
        }
    }
    sent
}

fn until_done(net: &mut Net, t: TransferId, file: &[u8], kept: &mut Vec<(u32, Vec<u8>)>) {
    for _ in 0..10_000 {
        if net.events[0].iter().any(|e| matches!(e, Event::FileSent { transfer } if *transfer == t)) {
            return;
        }
        if pump(net, t, file, usize::MAX, kept) == 0 {
            net.run();
        }
    }
    panic!("the transfer did not finish");
}

fn store() -> (KeyStore<MemoryStorage>, [Segment; 2]) {
    let kdf = KnowledgeKdf::generate(KdfParams::insecure_fast()).unwrap();
    let segments = [Segment::device(zeroize::Zeroizing::new([9; 32])), Segment::knowledge(b"pass", &kdf).unwrap()];
    (KeyStore::create(MemoryStorage::default(), &segments).unwrap(), segments)
}

#[test]
fn either_side_pauses_and_the_sender_hands_out_nothing_until_both_go_on() {
    let mut net = pair();
    let file = data(40 * CHUNK as usize);
    let t = start(&mut net, &file);
    let mut kept = Vec::new();
    assert_eq!(pump(&mut net, t, &file, 5, &mut kept), 5);
    // The receiver pauses: the sender is told and hands out nothing more.
    net.clients[1].hold_file(t, true).unwrap();
    net.run();
    assert!(net.events[0].iter().any(|e| matches!(e, Event::FileHeld { transfer, held: true, .. } if *transfer == t)));
    assert_eq!(net.clients[0].next_file_chunk(t), None);
    let sender_view = &net.clients[0].files()[0];
    assert!(sender_view.held_by_them && !sender_view.held_by_us);
    // The sender pauses too; the receiver going on is not enough.
    net.clients[0].hold_file(t, true).unwrap();
    net.clients[1].hold_file(t, false).unwrap();
    net.run();
    assert_eq!(net.clients[0].next_file_chunk(t), None);
    assert!(net.clients[1].files()[0].held_by_them);
    net.clients[0].hold_file(t, false).unwrap();
    net.run();
    assert!(net.events[0].iter().any(|e| matches!(e, Event::FileSendable { transfer, .. } if *transfer == t)));
    until_done(&mut net, t, &file, &mut kept);
    assert_eq!(kept.len(), 40);
    let status = &net.clients[1].files()[0];
    assert_eq!((status.state, status.bytes), (FileState::Done, file.len() as u64));
}

#[test]
fn controls_from_anyone_but_the_contact_are_refused_and_change_nothing() {
    use peerbubble_client_core::files::{Cancel, FileControl, FileKey, Hold, Resume};
    use peerbubble_client_core::transfers::Transfers;
    let net = Net::new(3);
    let (contact, stranger) = (net.ids[1], net.ids[2]);
    let conversation = peerbubble_client_core::ConversationId([7; 16]);
    let mut transfers = Transfers::new(TransferConfig { chunk_size: CHUNK, ..TransferConfig::default() });
    let file = data(3 * CHUNK as usize);
    let t = TransferId([5; 16]);
    let key = FileKey::from_slice(&[1; 32]).unwrap();
    transfers
        .offer(contact, conversation, (t, "plan.bin", file.len() as u64, FileHasher::digest(&file)), None, key, 0)
        .unwrap();
    transfers.on_control(contact, FileControl::Resume(Resume { transfer: t, next_chunk: 0 })).unwrap();
    for control in [
        FileControl::Hold(Hold { transfer: t, held: true }),
        FileControl::Cancel(Cancel { transfer: t, reason: CancelReason::Cancelled }),
        FileControl::Resume(Resume { transfer: t, next_chunk: 2 }),
    ] {
        assert!(transfers.on_control(stranger, control).is_err());
    }
    assert_eq!(transfers.next_chunk(t).map(|r| r.index), Some(0), "the transfer went on untouched");
    let status = &transfers.list()[0];
    assert!(!status.held_by_them && status.state == FileState::Moving);
    // A hold for a transfer nobody knows is refused too.
    assert!(
        transfers.on_control(contact, FileControl::Hold(Hold { transfer: TransferId([6; 16]), held: true })).is_err()
    );
}

#[test]
fn a_cancel_stops_both_sides_and_the_receiver_may_delete_what_it_kept() {
    let mut net = pair();
    let file = data(20 * CHUNK as usize);
    let t = start(&mut net, &file);
    let mut kept = Vec::new();
    pump(&mut net, t, &file, 4, &mut kept);
    net.clients[0].cancel_file(t).unwrap();
    net.run();
    let receiver: Vec<_> = net.take_events(1);
    assert!(receiver.iter().any(|e| matches!(e, Event::FileCancelled { reason: CancelReason::Cancelled, .. })));
    assert!(receiver.iter().any(|e| matches!(e, Event::FileForgotten { transfer } if *transfer == t)));
    assert!(net.clients[1].files().is_empty() && net.clients[0].files().is_empty());
    assert!(net.clients[1].file_key(t).is_none());
    // Declining an offer is a cancel too, and tells the sender.
    let t2 = net.clients[0].offer_file(net.ids[1], "b.bin", 10, FileHasher::digest(&[0; 10])).unwrap();
    net.run();
    net.clients[1].decline_file(t2).unwrap();
    net.run();
    assert!(
        net.events[0]
            .iter()
            .any(|e| matches!(e, Event::FileCancelled { transfer, reason: CancelReason::Declined } if *transfer == t2))
    );
    assert!(net.clients[1].cancel_file(t2).is_err(), "nothing left to cancel");
}

#[test]
fn the_receiver_restarts_mid_transfer_and_resumes_from_what_it_kept() {
    let mut net = pair();
    let file = data(100 * CHUNK as usize + 123);
    let t = start(&mut net, &file);
    let mut kept = Vec::new();
    while kept.len() < 37 {
        pump(&mut net, t, &file, 37 - kept.len(), &mut kept);
    }
    let (mut ks, segments) = store();
    net.clients[1].save(&mut ks).unwrap();
    // At rest: the file's name is not in clear.
    let at_rest: Vec<u8> = ks.storage().0.values().flatten().copied().collect();
    assert!(!at_rest.windows(8).any(|w| w == b"plan.bin"));
    // The page reloads: the channel drops on both sides, chunks in flight are lost.
    let (a, b) = (net.ids[0], net.ids[1]);
    net.clients[0].channel_closed(b);
    while net.clients[0].next_file_chunk(t).is_some() {}
    ks.lock();
    ks.unlock(&segments).unwrap();
    let mut restored = Client::restore(&net.keys[1], &ks).unwrap();
    restored.set_directory([net.entry(0)]);
    restored.set_file_config(TransferConfig { chunk_size: CHUNK, ..TransferConfig::default() });
    assert_eq!(restored.files()[0].bytes, 0, "progress comes back from the kept chunks, not from the record");
    // The edge replays what it kept, in order; a torn last chunk is refused and not counted.
    let mut torn = kept[36].1.clone();
    torn.truncate(100);
    for (index, sealed) in &kept[..36] {
        restored.replay_file_chunk(t, *index, sealed).unwrap();
    }
    assert!(restored.replay_file_chunk(t, 36, &torn).is_err());
    assert_eq!(restored.files()[0].bytes, 36 * u64::from(CHUNK));
    net.clients[1] = restored;
    kept.truncate(36);
    // The channel opens again: the receiver says where to go on, the sender sends only the rest.
    net.clients[0].channel_opened(b);
    net.clients[1].channel_opened(a);
    net.run();
    let first = net.clients[0].next_file_chunk(t).map(|r| r.index);
    assert_eq!(first, Some(36), "the transfer resumes at the first chunk not kept");
    net.clients[0].channel_closed(b);
    net.clients[0].channel_opened(b);
    net.clients[1].channel_closed(a);
    net.clients[1].channel_opened(a);
    net.run();
    until_done(&mut net, t, &file, &mut kept);
    let mut whole = Vec::new();
    for (index, sealed) in &kept {
        whole.extend(net.clients[1].open_stored_chunk(t, *index, sealed).unwrap());
    }
    assert_eq!(whole, file);
}

#[test]
fn the_sender_restarts_and_goes_on_once_the_receiver_resumes() {
    let mut net = pair();
    let file = data(30 * CHUNK as usize);
    let t = start(&mut net, &file);
    let mut kept = Vec::new();
    while kept.len() < 12 {
        pump(&mut net, t, &file, 12 - kept.len(), &mut kept);
    }
    let (mut ks, _) = store();
    net.clients[0].save(&mut ks).unwrap();
    let mut restored = Client::restore(&net.keys[0], &ks).unwrap();
    restored.set_directory([net.entry(1)]);
    restored.set_file_config(TransferConfig { chunk_size: CHUNK, ..TransferConfig::default() });
    assert_eq!(restored.files()[0].state, FileState::Moving, "it was accepted before the restart");
    assert_eq!(restored.next_file_chunk(t), None, "nothing is sent before the receiver says where it is");
    net.clients[0] = restored;
    let (a, b) = (net.ids[0], net.ids[1]);
    net.clients[1].channel_closed(a);
    net.clients[0].channel_opened(b);
    net.clients[1].channel_opened(a);
    net.run();
    assert_eq!(net.clients[0].next_file_chunk(t).map(|r| r.index), Some(12));
    net.clients[1].channel_closed(a);
    net.clients[1].channel_opened(a);
    net.run();
    until_done(&mut net, t, &file, &mut kept);
    assert_eq!(kept.len(), 30);
}

#[test]
fn leaving_the_conversation_forgets_its_files_and_their_keys() {
    let mut net = pair();
    let file = data(3 * CHUNK as usize);
    let t = start(&mut net, &file);
    let mut kept = Vec::new();
    until_done(&mut net, t, &file, &mut kept);
    assert!(net.clients[1].file_key(t).is_some());
    let (mut ks, _) = store();
    net.clients[1].save(&mut ks).unwrap();
    let mut restored = Client::restore(&net.keys[1], &ks).unwrap();
    assert_eq!(restored.files()[0].state, FileState::Done, "a received file is kept across restarts");
    assert!(restored.open_stored_chunk(t, 0, &kept[0].1).is_ok());
    restored.set_directory([net.entry(0)]);
    restored.remove_contact(net.ids[0]).unwrap();
    let mut events = Vec::new();
    while let Some(e) = restored.poll_event() {
        events.push(e);
    }
    assert!(events.iter().any(|e| matches!(e, Event::FileForgotten { transfer } if *transfer == t)));
    assert!(restored.file_key(t).is_none() && restored.files().is_empty());
    restored.save(&mut ks).unwrap();
    assert!(Client::restore(&net.keys[1], &ks).unwrap().files().is_empty());
}

#[test]
fn acknowledgements_travel_only_on_the_channel_and_only_from_the_receiver() {
    let mut net = pair();
    let file = data(20 * CHUNK as usize);
    let t = start(&mut net, &file);
    // Capture the receiver's acknowledgement frame for the first 16 chunks.
    let mut kept = Vec::new();
    pump(&mut net, t, &file, 16, &mut kept);
    assert_eq!(kept.len(), 16);
    assert_eq!(net.clients[0].files()[0].bytes, 16 * u64::from(CHUNK), "the ack came back on the channel");
    let frame = {
        let ack = peerbubble_client_core::files::Ack { transfer: t, received: 16 };
        let key = net.clients[1].file_key(t).unwrap().clone();
        let offer = net.clients[1].file_offer(t).unwrap().clone();
        let incoming = peerbubble_client_core::files::IncomingTransfer::new(
            offer,
            &key,
            &TransferConfig { chunk_size: CHUNK, ..TransferConfig::default() },
        )
        .unwrap();
        incoming.ack_frame(ack).unwrap()
    };
    let (a, b) = (net.ids[0], net.ids[1]);
    net.drain_events();
    net.clients[0].handle_envelope(b, &frame, Path::Relay, net.now);
    net.drain_events();
    assert!(net.refusals(0).iter().any(|r| r.contains("only on the DataChannel")));
    // From someone else than the receiver (member 0 acknowledging its own transfer to itself is refused).
    net.clients[1].handle_envelope(a, &frame, Path::Channel, net.now);
    net.drain_events();
    assert!(net.refusals(1).iter().any(|r| r.contains("unknown transfer")));
}
