//! docs/protocol.md is the contract a third-party client is written from: its test vectors must be what this
//! crate computes, and every error code must be documented.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use peerbubble_proto::{
    ErrorCode, GroupId, IdentityKey, Nonce, Opaque, Purpose, auth_message, decode_client_frame, decode_server_frame,
    encode_frame, safety_number,
};

fn doc() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/protocol.md")).unwrap()
}

fn vector(doc: &str, item: &str) -> String {
    let line = doc.lines().find(|l| l.starts_with(&format!("| {item} |"))).unwrap_or_else(|| panic!("no row {item}"));
    let cell = line.split('|').nth(2).unwrap();
    cell.split('`').nth(1).unwrap_or_else(|| panic!("no value in {line}")).to_owned()
}

#[test]
fn test_vectors_match_the_implementation() {
    let doc = doc();
    let a = IdentityKey::from_seed(&[1; 32]);
    let b = IdentityKey::from_seed(&[2; 32]);
    assert_eq!(a.to_seed_base64().as_str(), vector(&doc, "Seed A (32 bytes of `0x01`)"));
    assert_eq!(a.public_key().to_string(), vector(&doc, "Public key A"));
    assert_eq!(a.public_key().member_id().to_string(), vector(&doc, "Member id A"));
    assert_eq!(b.public_key().to_string(), vector(&doc, "Seed B (32 bytes of `0x02`) → public key B"));
    assert_eq!(b.public_key().member_id().to_string(), vector(&doc, "Member id B"));
    let nonce = Nonce::from_bytes([9; 32]);
    assert_eq!(String::from(nonce.clone()), vector(&doc, "Nonce (32 bytes of `0x09`)"));
    let bubble = vector(&doc, "Bubble");
    let signature = a.sign(Purpose::SignalAuth, &auth_message(&bubble, &nonce, &a.public_key()));
    assert_eq!(signature.to_string(), vector(&doc, "Signature by A"));
    assert_eq!(safety_number(&a.public_key(), &b.public_key()), vector(&doc, "Safety number (A, B) = (B, A)"));
    assert_eq!(String::from(Opaque::from_bytes(b"sealed bytes").unwrap()), vector(&doc, "Body `sealed bytes`"));
    assert_eq!(String::from(GroupId::from_bytes(&[7; 16]).unwrap()), vector(&doc, "Group id (16 bytes of `0x07`)"));
}

#[test]
fn every_example_frame_decodes_and_reencodes_as_written() {
    let doc = doc();
    let client_types = ["auth", "send", "commit", "ping", "received", "publish_key_package", "claim_key_package"];
    let mut seen = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with(r#"{"type":""#)) {
        let kind = line.split('"').nth(3).unwrap();
        let again = if client_types.contains(&kind) {
            encode_frame(&decode_client_frame(line.as_bytes(), usize::MAX).unwrap_or_else(|e| panic!("{line}: {e}")))
        } else {
            encode_frame(&decode_server_frame(line.as_bytes()).unwrap_or_else(|e| panic!("{line}: {e}")))
        };
        assert_eq!(again, line, "examples are written in the encoder's field order");
        seen.push(kind.to_owned());
    }
    for kind in client_types {
        assert!(seen.iter().any(|k| k == kind), "no example of {kind}");
    }
}

#[test]
fn every_error_code_is_documented() {
    let doc = doc();
    for code in ErrorCode::ALL {
        assert!(doc.contains(&format!("`{}`", code.as_str())), "{} is not in docs/protocol.md", code.as_str());
    }
}
