//! What a member reads from a DataChannel during a file transfer: chunk frames. Parsing must never panic,
//! whatever parses must re-encode to the same bytes, and a frame the receiver refuses must change nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerbubble_client_core::files::{
    FileError, FileKey, FileOffer, IncomingTransfer, TransferConfig, TransferId, parse_chunk_frame,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = parse_chunk_frame(data) {
        assert_eq!(frame.to_bytes(), data);
    }
    // A receiver of a three-chunk file, fed the input as a sequence of frames, each prefixed by a u16 BE length.
    let config = TransferConfig { chunk_size: 1024, ..TransferConfig::default() };
    let Ok(offer) = FileOffer::new(TransferId([0x11; 16]), "fuzz.bin", 2100, 1024, [0; 32], 1 << 20) else { return };
    let Ok(key) = FileKey::from_slice(&[7; 32]) else { return };
    let Ok(mut receiver) = IncomingTransfer::new(offer, &key, &config) else { return };
    let mut rest = data;
    while let [hi, lo, tail @ ..] = rest {
        let (frame, next) = tail.split_at(usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len()));
        rest = next;
        let before = (receiver.progress(), receiver.resume_point());
        match receiver.open(frame) {
            // Only an authentic last chunk can fail the hash, and that failure is final.
            Ok(_) | Err(FileError::HashMismatch) => {}
            Err(_) => assert_eq!((receiver.progress(), receiver.resume_point()), before),
        }
    }
});
