//! What a bubble-server reads from NATS about the other replicas: presence messages, batches of forwarded
//! envelopes and batches of answers. From a broken or hostile replica they must be refused whole, never crash
//! the server, and what is accepted re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerbubble_proto::cluster::{PresenceMessage, decode_answers, decode_forwards, encode_answer, encode_forward};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = PresenceMessage::decode(data) {
        assert_eq!(message.encode(), data);
    }
    if let Ok(forwards) = decode_forwards(data) {
        let mut again = Vec::new();
        for f in &forwards {
            encode_forward(&mut again, f.id, f.to_session, &f.to, f.frame);
        }
        assert_eq!(again, data);
    }
    if let Ok(answers) = decode_answers(data) {
        let mut again = Vec::new();
        for a in answers {
            encode_answer(&mut again, a);
        }
        assert_eq!(again, data);
    }
});
