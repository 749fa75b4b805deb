//! What a bubble-server reads from the network: client frames. Decoding must never panic, and whatever
//! decodes must re-encode to something that decodes to the same frame (no lossy or ambiguous forms).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerbubble_proto::limits::MAX_FRAME_BYTES;
use peerbubble_proto::{decode_client_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_client_frame(data, MAX_FRAME_BYTES) {
        let again = encode_frame(&frame);
        assert_eq!(decode_client_frame(again.as_bytes(), MAX_FRAME_BYTES).ok(), Some(frame));
    }
});
