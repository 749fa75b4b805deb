//! What a bubble-server reads from NATS about the other replicas' members: a message from a broken or hostile
//! replica must be refused whole, never crash the server, and what is accepted re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerbubble_proto::cluster::PresenceMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = PresenceMessage::decode(data) {
        assert_eq!(message.encode(), data);
    }
});
