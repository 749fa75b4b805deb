//! What a bubble-server reads from the network: client frames. Decoding must never panic, and whatever
//! decodes must be a JSON object and re-encode to something that decodes to the same frame (no lossy or
//! ambiguous forms).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerbubble_proto::limits::MAX_FRAME_BYTES;
use peerbubble_proto::{decode_client_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    let object = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let decoded = decode_client_frame(data, MAX_FRAME_BYTES);
    // Only a JSON object is a frame (serde would otherwise fill fields from an array, by position).
    assert!(object || decoded.is_err());
    if let Ok(frame) = decoded {
        let again = encode_frame(&frame);
        assert_eq!(decode_client_frame(again.as_bytes(), MAX_FRAME_BYTES).ok(), Some(frame));
    }
});
