//! What a member's client reads from the relay or a DataChannel: envelopes, and through them MLS messages and
//! application messages. Decoding must never panic, whatever decodes must re-encode to the same bytes, and a
//! client fed arbitrary bytes from a visible member must refuse them without panicking or changing its
//! conversations.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerbubble_client_core::message::AppMessage;
use peerbubble_client_core::wire::Envelope;
use peerbubble_client_core::{Client, Path};
use peerbubble_proto::{DirectoryEntry, IdentityKey};

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(envelope.encode(), data);
    }
    if let Ok(message) = AppMessage::decode(data) {
        assert!(message.check().is_ok());
    }
    let (me, other) = (IdentityKey::from_seed(&[1; 32]), IdentityKey::from_seed(&[2; 32]));
    let public_key = other.public_key();
    let mut client = Client::new(&me);
    client.set_directory([DirectoryEntry {
        member: public_key.member_id(),
        public_key,
        display_name: "other".into(),
        categories: vec!["c".into()],
        online: true,
    }]);
    let path = if data.first().is_some_and(|b| b & 1 == 1) { Path::Channel } else { Path::Relay };
    client.handle_envelope(public_key.member_id(), data, path, 0);
    // Nothing but a KeyPackage request can be answered by arbitrary bytes, and no conversation appears.
    assert!(client.conversations().is_empty());
});
