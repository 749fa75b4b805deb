//! What a client reads from the network: server frames (a hostile server must not crash a client).
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerbubble_proto::{decode_server_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = decode_server_frame(data) {
        let again = encode_frame(&frame);
        assert_eq!(decode_server_frame(again.as_bytes()).ok(), Some(frame));
    }
});
