//! File transfer between a sender and a receiver over a simulated DataChannel: whole files arrive with the
//! right hash, the window holds, a dropped connection resumes, and every kind of bad frame is refused without
//! breaking the transfer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peerbubble_client_core::files::{
    Accept, Ack, CancelReason, ChunkFrame, Complete, FileControl, FileError, FileHasher, FileKey, FileOffer,
    IncomingTransfer, MAX_FRAME_LEN, Opened, OutgoingTransfer, Received, Resume, TransferConfig, TransferId,
    open_stored_chunk, parse_chunk_frame,
};
use proptest::prelude::*;
use zeroize::Zeroizing;

const KEY: [u8; 32] = [0x5C; 32];

fn key() -> FileKey {
    FileKey::new(Zeroizing::new(KEY))
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn file_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn pair(file: &[u8], config: &TransferConfig) -> (OutgoingTransfer, IncomingTransfer) {
    let sender = OutgoingTransfer::new(
        TransferId::random().unwrap(),
        "holiday.mp4",
        file.len() as u64,
        FileHasher::digest(file),
        &key(),
        config,
    )
    .unwrap();
    // The offer travels as JSON inside MLS.
    let json = serde_json::to_string(&FileControl::Offer(sender.offer().clone())).unwrap();
    let FileControl::Offer(offer) = serde_json::from_str(&json).unwrap() else { panic!("not an offer") };
    let receiver = IncomingTransfer::new(offer, &key(), config).unwrap();
    (sender, receiver)
}

/// Everything the sender's window allows right now, as frames.
fn send_window(sender: &mut OutgoingTransfer, file: &[u8], window: u32) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while let Some(req) = sender.next_chunk() {
        assert!(sender.in_flight() <= window, "{} chunks in flight", sender.in_flight());
        let start = req.offset as usize;
        frames.push(sender.seal(req.index, &file[start..start + req.len as usize]).unwrap());
    }
    frames
}

/// Delivers a frame and the receiver's replies (acks, completion) back to the sender.
fn deliver(sender: &mut OutgoingTransfer, receiver: &mut IncomingTransfer, frame: &[u8]) -> Option<Received> {
    match receiver.open(frame).unwrap() {
        Opened::Chunk(received) => {
            if let Some(ack) = received.ack {
                sender.on_control(&FileControl::Ack(ack)).unwrap();
            }
            if let Some(complete) = received.complete {
                sender.on_control(&FileControl::Complete(complete)).unwrap();
            }
            Some(received)
        }
        Opened::Duplicate { ack } => {
            sender.on_ack(ack).unwrap();
            None
        }
    }
}

/// Runs a transfer to the end over a lossless link, returning what the receiver got.
fn run(sender: &mut OutgoingTransfer, receiver: &mut IncomingTransfer, file: &[u8], window: u32) -> Vec<u8> {
    let start = receiver.progress().bytes as usize;
    let mut got = Vec::with_capacity(file.len() - start);
    while !sender.is_complete() {
        let frames = send_window(sender, file, window);
        assert!(!frames.is_empty(), "stalled at {:?}", sender.progress());
        for frame in frames {
            if let Some(r) = deliver(sender, receiver, &frame) {
                assert_eq!(r.offset as usize, start + got.len());
                got.extend_from_slice(&r.plaintext);
            }
        }
    }
    got
}

#[test]
fn ten_megabyte_file_arrives_whole() {
    let file = file_bytes(10 * 1024 * 1024, 1);
    let config = TransferConfig::default();
    let (mut sender, mut receiver) = pair(&file, &config);
    assert_eq!(sender.next_chunk(), None, "sent before the receiver accepted");
    sender.on_control(&FileControl::Accept(receiver.accept())).unwrap();
    let got = run(&mut sender, &mut receiver, &file, config.window);
    assert!(got == file, "received file differs");
    assert!(receiver.is_complete() && sender.is_complete());
    assert_eq!(sender.progress().fraction(), 1.0);
    assert_eq!(receiver.progress().bytes, file.len() as u64);
    assert_eq!(sender.next_chunk(), None);
}

#[test]
fn window_bounds_unacknowledged_chunks() {
    let file = file_bytes(200 * 1024, 2);
    let config = TransferConfig { chunk_size: 1024, window: 16, ack_every: 4, ..TransferConfig::default() };
    let (mut sender, mut receiver) = pair(&file, &config);
    sender.on_accept(receiver.accept()).unwrap();
    let frames = send_window(&mut sender, &file, 16);
    assert_eq!(frames.len(), 16);
    assert_eq!(sender.next_chunk(), None, "window full");
    // Acks free exactly what they cover.
    for frame in &frames[..4] {
        deliver(&mut sender, &mut receiver, frame);
    }
    assert_eq!(sender.in_flight(), 12);
    assert_eq!(sender.progress().bytes, 4 * 1024);
    let more = send_window(&mut sender, &file, 16);
    assert_eq!(more.len(), 4);
    for frame in frames[4..].iter().chain(&more) {
        deliver(&mut sender, &mut receiver, frame);
    }
    let rest = run(&mut sender, &mut receiver, &file, 16);
    assert!(rest == file[20 * 1024..]);
    assert!(sender.is_complete());
}

#[test]
fn dropped_connection_resumes_where_the_receiver_is() {
    let file = file_bytes(3 * 1024 * 1024 + 123, 3);
    let config = TransferConfig::default();
    let (mut sender, mut receiver) = pair(&file, &config);
    sender.on_accept(receiver.accept()).unwrap();
    let mut got = Vec::new();
    let mut rounds = 0;
    // Each round the link carries only part of the window, and the acks of the last chunks it carried are
    // lost too; then the connection drops and the receiver says where it is.
    while !sender.is_complete() {
        rounds += 1;
        let frames = send_window(&mut sender, &file, config.window);
        for frame in frames.iter().take(37) {
            if let Opened::Chunk(r) = receiver.open(frame).unwrap() {
                got.extend_from_slice(&r.plaintext);
                if let (Some(ack), true) = (r.ack, r.index % 3 == 0) {
                    sender.on_ack(ack).unwrap();
                }
                if let Some(complete) = r.complete {
                    sender.on_complete(complete).unwrap();
                }
            }
        }
        if !sender.is_complete() {
            let resume = receiver.resume_point();
            let json = serde_json::to_string(&FileControl::Resume(resume)).unwrap();
            sender.on_control(&serde_json::from_str(&json).unwrap()).unwrap();
        }
    }
    assert!(rounds > 3, "{rounds} rounds");
    assert!(got == file);
    assert!(receiver.is_complete());
}

#[test]
fn a_duplicate_chunk_repeats_a_lost_ack() {
    let file = file_bytes(40 * 1024, 4);
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let (mut sender, mut receiver) = pair(&file, &config);
    sender.on_accept(receiver.accept()).unwrap();
    let frames = send_window(&mut sender, &file, config.window);
    for frame in &frames[..20] {
        receiver.open(frame).unwrap(); // acks lost
    }
    assert_eq!(sender.progress().bytes, 0);
    let Opened::Duplicate { ack } = receiver.open(&frames[3]).unwrap() else { panic!("not a duplicate") };
    assert_eq!(ack.received, 20);
    assert_eq!(receiver.progress().bytes, 20 * 1024);
    sender.on_ack(ack).unwrap();
    assert_eq!(sender.progress().bytes, 20 * 1024);
    for frame in &frames[20..] {
        deliver(&mut sender, &mut receiver, frame);
    }
    assert!(sender.is_complete() && receiver.is_complete());
    assert!(matches!(receiver.open(&frames[0]).unwrap(), Opened::Duplicate { ack } if ack.received == 40));
}

#[test]
fn bad_frames_are_refused_and_the_transfer_still_finishes() {
    let file = file_bytes(10 * 1024, 5);
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let (mut sender, mut receiver) = pair(&file, &config);
    sender.on_accept(receiver.accept()).unwrap();
    let frames = send_window(&mut sender, &file, config.window);

    // Another transfer of the same file, under the same exported key.
    let (mut other, other_receiver) = pair(&file, &config);
    other.on_accept(other_receiver.accept()).unwrap();
    let other_frames = send_window(&mut other, &file, config.window);
    // A different key for this very transfer.
    let mut wrong_key_sender = OutgoingTransfer::new(
        sender.offer().transfer,
        "holiday.mp4",
        file.len() as u64,
        FileHasher::digest(&file),
        &FileKey::from_slice(&[1; 32]).unwrap(),
        &config,
    )
    .unwrap();
    wrong_key_sender.on_accept(Accept { transfer: sender.offer().transfer, from_chunk: 0 }).unwrap();
    let wrong_key_frame = send_window(&mut wrong_key_sender, &file, config.window).remove(0);

    let mut tampered = frames[0].clone();
    tampered[30] ^= 1;
    let mut moved = other_frames[0].clone(); // other transfer's chunk, relabelled with our transfer id
    moved[1..17].copy_from_slice(&sender.offer().transfer.0);
    let mut bad_tag = frames[0].clone();
    bad_tag[0] = 0xF2;
    let mut index_changed = frames[1].clone();
    index_changed[17..21].copy_from_slice(&0u32.to_be_bytes());

    type Case = (&'static str, Vec<u8>, fn(&FileError) -> bool);
    let cases: Vec<Case> = vec![
        ("tampered", tampered, |e| matches!(e, FileError::Tampered { index: 0 })),
        ("other transfer", other_frames[0].clone(), |e| matches!(e, FileError::WrongTransfer)),
        ("moved between transfers", moved, |e| matches!(e, FileError::Tampered { index: 0 })),
        ("reordered", frames[1].clone(), |e| matches!(e, FileError::OutOfOrder { expected: 0, got: 1 })),
        ("renumbered", index_changed, |e| matches!(e, FileError::Tampered { index: 0 })),
        ("truncated", frames[0][..frames[0].len() - 1].to_vec(), |e| matches!(e, FileError::ChunkLength { .. })),
        ("padded", [&frames[0][..], &[0]].concat(), |e| matches!(e, FileError::ChunkLength { .. })),
        ("header only", frames[0][..30].to_vec(), |e| matches!(e, FileError::MalformedFrame(_))),
        ("unknown tag", bad_tag, |e| matches!(e, FileError::MalformedFrame(_))),
        (
            "beyond the file",
            ChunkFrame { transfer: sender.offer().transfer, index: 10, sealed: &[0; 17] }.to_bytes(),
            |e| matches!(e, FileError::IndexOutOfRange { index: 10, chunks: 10 }),
        ),
        ("wrong key", wrong_key_frame, |e| matches!(e, FileError::Tampered { index: 0 })),
        ("empty", Vec::new(), |e| matches!(e, FileError::MalformedFrame(_))),
    ];
    for (what, frame, expected) in cases {
        let err = receiver.open(&frame).unwrap_err();
        assert!(expected(&err), "{what}: {err:?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(receiver.progress().bytes, 0, "{what} changed state");
        assert_eq!(receiver.resume_point().next_chunk, 0);
    }
    // Chunk 0 arrived intact, then a later chunk tampered: refused, and its good copy still goes through.
    deliver(&mut sender, &mut receiver, &frames[0]);
    let mut tampered_last = frames[9].clone();
    let n = tampered_last.len();
    tampered_last[n - 1] ^= 0x40;
    for frame in &frames[1..9] {
        deliver(&mut sender, &mut receiver, frame);
    }
    assert!(matches!(receiver.open(&tampered_last), Err(FileError::Tampered { index: 9 })));
    assert!(!receiver.is_complete());
    deliver(&mut sender, &mut receiver, &frames[9]);
    assert!(receiver.is_complete() && sender.is_complete());
}

#[test]
fn a_wrong_hash_fails_at_the_end() {
    let file = file_bytes(5000, 6);
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let transfer = TransferId::random().unwrap();
    let mut sender = OutgoingTransfer::new(transfer, "x.bin", 5000, [7; 32], &key(), &config).unwrap();
    let mut receiver = IncomingTransfer::new(sender.offer().clone(), &key(), &config).unwrap();
    sender.on_accept(receiver.accept()).unwrap();
    let frames = send_window(&mut sender, &file, config.window);
    for frame in &frames[..4] {
        receiver.open(frame).unwrap();
    }
    assert_eq!(receiver.open(&frames[4]), Err(FileError::HashMismatch));
    assert!(!receiver.is_complete());
    assert_eq!(receiver.open(&frames[4]), Err(FileError::Finished));
    // And a sender told a different hash than it offered does not call it complete.
    let complete = Complete { transfer, sha256: FileHasher::digest(&file) };
    assert_eq!(sender.on_complete(complete), Err(FileError::HashMismatch));
    assert!(!sender.is_complete());
}

#[test]
fn chunks_kept_encrypted_decrypt_later() {
    let file = file_bytes(7 * 1024 + 1, 7);
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let (mut sender, mut receiver) = pair(&file, &config);
    sender.on_accept(receiver.accept()).unwrap();
    let mut stored = Vec::new();
    for frame in send_window(&mut sender, &file, config.window) {
        let r = deliver(&mut sender, &mut receiver, &frame).unwrap();
        assert!(!file.windows(16).any(|w| r.sealed.windows(16).any(|s| s == w)), "sealed holds plaintext");
        stored.push(r.sealed);
    }
    assert!(receiver.is_complete());
    // Later: the offer and key come back from the key store.
    let offer: FileOffer = serde_json::from_slice(&serde_json::to_vec(receiver.offer()).unwrap()).unwrap();
    let saved_key = FileKey::from_slice(key().expose_secret()).unwrap();
    let mut hasher = FileHasher::new();
    let mut got = Vec::new();
    for (i, sealed) in stored.iter().enumerate() {
        let plain = open_stored_chunk(&saved_key, &offer, i as u32, sealed).unwrap();
        hasher.update(&plain);
        got.extend(plain);
    }
    assert_eq!(got, file);
    assert_eq!(hasher.finalize(), offer.sha256);
    assert!(matches!(open_stored_chunk(&saved_key, &offer, 1, &stored[2]), Err(FileError::Tampered { index: 1 })));
    assert!(matches!(open_stored_chunk(&saved_key, &offer, 7, &stored[2]), Err(FileError::ChunkLength { .. })));
    let wrong = FileKey::from_slice(&[9; 32]).unwrap();
    assert!(matches!(open_stored_chunk(&wrong, &offer, 0, &stored[0]), Err(FileError::Tampered { index: 0 })));
}

#[test]
fn an_empty_file_is_one_empty_chunk() {
    let config = TransferConfig::default();
    let (mut sender, mut receiver) = pair(&[], &config);
    assert_eq!(sender.offer().chunks, 1);
    sender.on_accept(receiver.accept()).unwrap();
    assert!(run(&mut sender, &mut receiver, &[], config.window).is_empty());
    assert!(receiver.is_complete() && sender.is_complete());
}

#[test]
fn sender_refuses_what_would_reuse_a_nonce_or_break_the_window() {
    let file = file_bytes(64 * 1024, 8);
    let config = TransferConfig { chunk_size: 1024, window: 16, ..TransferConfig::default() };
    let (mut sender, receiver) = pair(&file, &config);
    let t = sender.offer().transfer;
    assert_eq!(sender.seal(0, &file[..1024]), Err(FileError::NotRequested { index: 0 }));
    sender.on_accept(receiver.accept()).unwrap();
    assert!(matches!(sender.on_accept(receiver.accept()), Err(FileError::UnexpectedControl(_))));
    let req = sender.next_chunk().unwrap();
    assert_eq!(sender.seal(req.index + 1, &file[..1024]), Err(FileError::NotRequested { index: 1 }));
    assert!(matches!(sender.seal(req.index, &file[..1000]), Err(FileError::ChunkLength { .. })));
    let first = sender.seal(0, &file[..1024]).unwrap();
    // Resent after a drop: the same bytes give the same frame; other bytes are refused.
    sender.on_resume(Resume { transfer: t, next_chunk: 0 }).unwrap();
    assert_eq!(sender.next_chunk().map(|r| r.index), Some(0));
    assert_eq!(sender.seal(0, &file[1024..2048]), Err(FileError::ChunkChanged { index: 0 }));
    assert_eq!(sender.seal(0, &file[..1024]).unwrap(), first);
    assert_eq!(sender.on_ack(Ack { transfer: t, received: 2 }), Err(FileError::AckBeyondSent { received: 2, sent: 1 }));
    assert!(matches!(sender.on_resume(Resume { transfer: t, next_chunk: 5 }), Err(FileError::ResumeOutOfRange { .. })));
    sender.on_ack(Ack { transfer: t, received: 1 }).unwrap();
    // A receiver that lost an acknowledged chunk to a power cut (synced to disk only now and then) asks for it
    // again: it comes again, and the tag kept past the acknowledgement still refuses other bytes under its nonce.
    sender.on_resume(Resume { transfer: t, next_chunk: 0 }).unwrap();
    assert_eq!(sender.progress().bytes, 0);
    assert_eq!(sender.next_chunk().map(|r| r.index), Some(0));
    assert_eq!(sender.seal(0, &file[1024..2048]), Err(FileError::ChunkChanged { index: 0 }));
    assert_eq!(sender.seal(0, &file[..1024]).unwrap(), first);
    sender.on_ack(Ack { transfer: t, received: 1 }).unwrap();
    assert!(matches!(
        sender.on_complete(Complete { transfer: t, sha256: [0; 32] }),
        Err(FileError::CompleteTooEarly { .. })
    ));
    let other = TransferId([0; 16]);
    assert_eq!(sender.on_ack(Ack { transfer: other, received: 1 }), Err(FileError::WrongTransfer));
    let cancel = sender.cancel(CancelReason::Cancelled);
    assert_eq!(sender.next_chunk(), None);
    assert!(matches!(
        sender.on_ack(Ack { transfer: t, received: 1 }),
        Err(FileError::Cancelled(CancelReason::Cancelled))
    ));
    assert_eq!(cancel.reason, CancelReason::Cancelled);
    assert!(TransferConfig { window: 8, ..config }.window < 16);
    let bad = TransferConfig { window: 8, ..config };
    assert!(matches!(OutgoingTransfer::new(t, "a", 1, [0; 32], &key(), &bad), Err(FileError::InvalidConfig(_))));
}

#[test]
fn offers_with_bad_names_or_sizes_are_refused() {
    let t = TransferId([1; 16]);
    let max = 4 << 30;
    let offer = |name: &str| FileOffer::new(t, name, 10, 1024, [0; 32], max);
    for name in ["report.pdf", "résumé final (2).docx", "..hidden", "日本語.txt"] {
        offer(name).unwrap();
    }
    let long = "a".repeat(256);
    for name in ["", "a/b", "..\\win.ini", "/etc/passwd", ".", "..", "a\nb", "nul\0", "tab\t", "\u{202e}gpj.exe", &long]
    {
        assert!(matches!(offer(name), Err(FileError::InvalidName(_))), "{name:?} accepted");
    }
    assert!(matches!(FileOffer::new(t, "a", max + 1, 16 * 1024, [0; 32], max), Err(FileError::TooLarge { .. })));
    assert!(matches!(FileOffer::new(t, "a", 10, 1023, [0; 32], max), Err(FileError::InvalidChunkSize(1023))));
    assert!(matches!(FileOffer::new(t, "a", 10, 64 * 1024, [0; 32], max), Err(FileError::InvalidChunkSize(_))));
    assert!(matches!(FileOffer::new(t, "a", 10, 0, [0; 32], max), Err(FileError::InvalidChunkSize(0))));
    let largest = FileOffer::new(t, "a", 1 << 20, 65499, [0; 32], max).unwrap();
    assert_eq!(largest.chunks, 17);

    let mut bad = FileOffer::new(t, "a", 4096, 1024, [0; 32], max).unwrap();
    assert_eq!(bad.chunks, 4);
    bad.chunks = 3;
    assert!(matches!(bad.validate(max), Err(FileError::ChunkCountMismatch { chunks: 3, expected: 4 })));
    assert!(IncomingTransfer::new(bad, &key(), &TransferConfig::default()).is_err());
    let big = FileOffer::new(t, "a", 100 << 20, 16 * 1024, [0; 32], max).unwrap();
    let small = TransferConfig { max_file_size: 10 << 20, ..TransferConfig::default() };
    assert!(matches!(IncomingTransfer::new(big, &key(), &small), Err(FileError::TooLarge { .. })));
    assert!(FileError::TooLarge { size: 2, max: 1 }.to_string().contains("smaller"));
}

#[test]
fn control_messages_are_strict_json() {
    let t = TransferId([0xFB; 16]);
    let messages = [
        FileControl::Offer(FileOffer::new(t, "a.txt", 1, 1024, [0xEE; 32], 1 << 20).unwrap()),
        FileControl::Accept(Accept { transfer: t, from_chunk: 0 }),
        FileControl::Ack(Ack { transfer: t, received: 3 }),
        FileControl::Resume(Resume { transfer: t, next_chunk: 3 }),
        FileControl::Complete(Complete { transfer: t, sha256: [1; 32] }),
        FileControl::Cancel(peerbubble_client_core::files::Cancel { transfer: t, reason: CancelReason::Declined }),
    ];
    for m in &messages {
        let json = serde_json::to_string(m).unwrap();
        assert_eq!(&serde_json::from_str::<FileControl>(&json).unwrap(), m);
    }
    let ack = serde_json::to_string(&messages[2]).unwrap();
    assert_eq!(ack, r#"{"ack":{"transfer":"-_v7-_v7-_v7-_v7-_v7-w","received":3}}"#);
    let bad = [
        r#"{"ack":{"transfer":"-_v7-_v7-_v7-_v7-_v7-w","received":3,"extra":1}}"#,
        r#"{"ack":{"transfer":"-_v7-_v7-_v7-_v7-_v7-w","received":3},"accept":{}}"#,
        r#"{"ack":{"transfer":"-_v7-_v7-_v7-_v7-_v7","received":3}}"#,
        r#"{"ack":{"transfer":"-_v7-_v7-_v7-_v7-_v7-w==","received":3}}"#,
        r#"{"ack":{"transfer":"+/v7-_v7-_v7-_v7-_v7-w","received":3}}"#,
        r#"{"nack":{"transfer":"-_v7-_v7-_v7-_v7-_v7-w","received":3}}"#,
        r#"{"cancel":{"transfer":"-_v7-_v7-_v7-_v7-_v7-w","reason":"<script>"}}"#,
    ];
    for json in bad {
        assert!(serde_json::from_str::<FileControl>(json).is_err(), "accepted {json}");
    }
}

#[test]
fn debug_output_shows_no_key_material() {
    let file = file_bytes(3000, 9);
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let (sender, receiver) = pair(&file, &config);
    let hex: String = KEY.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(format!("{:?}", key()), "FileKey(redacted)");
    for debug in [format!("{:?}", key()), format!("{sender:?}"), format!("{receiver:?}")] {
        assert!(debug.contains("redacted") || debug.contains("Transfer"), "{debug}");
        assert!(!debug.contains(&hex) && !debug.contains("92, 92, 92"), "{debug}");
    }
}

proptest! {
    #[test]
    fn parse_chunk_frame_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        if let Ok(frame) = parse_chunk_frame(&bytes) {
            prop_assert_eq!(frame.to_bytes(), bytes);
        }
    }

    #[test]
    fn frames_near_the_tag_and_sizes_never_panic(
        index in any::<u32>(),
        sealed_len in prop::sample::select(vec![0usize, 15, 16, 17, 1039, 1040, 1041, MAX_FRAME_LEN]),
        same_transfer in any::<bool>(),
    ) {
        let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
        let file = file_bytes(4000, 10);
        let (sender, mut receiver) = pair(&file, &config);
        let transfer = if same_transfer { sender.offer().transfer } else { TransferId([3; 16]) };
        let frame = ChunkFrame { transfer, index, sealed: &vec![0xAB; sealed_len] }.to_bytes();
        prop_assert!(receiver.open(&frame).is_err());
        prop_assert_eq!(receiver.progress().bytes, 0);
    }
}

#[test]
fn acknowledgement_frames_authenticate_and_a_forged_one_changes_nothing() {
    let file = file_bytes(40 * 1024, 11);
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let (mut sender, mut receiver) = pair(&file, &config);
    sender.on_accept(receiver.accept()).unwrap();
    for frame in send_window(&mut sender, &file, 64) {
        receiver.open(&frame).unwrap();
    }
    assert_eq!(sender.in_flight(), 40);
    let frame = receiver.ack_frame(Ack { transfer: receiver.offer().transfer, received: 16 }).unwrap();
    assert_eq!(frame.len(), peerbubble_client_core::files::ACK_FRAME_LEN);
    // Any flipped bit, a truncated frame or a frame of another transfer is refused and moves nothing.
    for i in [0, 5, 20, frame.len() - 1] {
        let mut forged = frame.clone();
        forged[i] ^= 0x40;
        assert!(sender.on_ack_frame(&forged).is_err(), "byte {i} flipped");
    }
    assert!(sender.on_ack_frame(&frame[..frame.len() - 1]).is_err());
    let (other, _) = pair(&file, &config);
    let mut elsewhere = frame.clone();
    elsewhere[1..17].copy_from_slice(&other.offer().transfer.0);
    assert!(sender.on_ack_frame(&elsewhere).is_err());
    assert_eq!(sender.in_flight(), 40);
    sender.on_ack_frame(&frame).unwrap();
    assert_eq!(sender.in_flight(), 24);
    // Two frames for the same count differ (random nonces), and a stale one is harmless.
    let again = receiver.ack_frame(Ack { transfer: receiver.offer().transfer, received: 16 }).unwrap();
    assert_ne!(again, frame);
    sender.on_ack_frame(&again).unwrap();
    assert_eq!(sender.in_flight(), 24);
}

#[test]
fn a_peeked_chunk_is_not_handed_out_and_the_window_still_holds() {
    let file = file_bytes(64 * 1024, 9);
    let config = TransferConfig { chunk_size: 1024, window: 16, ..TransferConfig::default() };
    let (mut sender, receiver) = pair(&file, &config);
    assert_eq!(sender.peek_chunk(), None, "nothing before the accept");
    sender.on_accept(receiver.accept()).unwrap();
    for index in 0..16u32 {
        let peeked = sender.peek_chunk().unwrap();
        assert_eq!(sender.peek_chunk(), Some(peeked), "peeking twice hands out nothing");
        let taken = sender.next_chunk().unwrap();
        assert_eq!((taken.index, taken.offset, taken.len), (index, u64::from(index) * 1024, 1024));
        assert_eq!(peeked, taken);
    }
    assert_eq!(sender.peek_chunk(), None, "the window is full");
    assert_eq!(sender.seal(16, &file[16 * 1024..17 * 1024]), Err(FileError::NotRequested { index: 16 }));
}
