//! The strict codec: size checked before parsing, unknown fields, duplicate fields and trailing data refused.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::frame::{ClientFrame, ServerFrame};
use crate::limits::{MAX_FRAME_BYTES, is_valid_display_name};

/// Why a frame could not be decoded. The text never contains the frame's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The frame is larger than the limit; it was not parsed.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the refused frame.
        size: usize,
        /// The limit in force.
        limit: usize,
    },
    /// The frame is not one JSON object of a known type with exactly the documented fields; or a field has
    /// an invalid form or exceeds its limit. `field_error` tells which of the two.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What was wrong (from the parser; no frame content).
        reason: String,
        /// True when the structure was fine but a field's value was invalid or too large.
        field_error: bool,
    },
}

fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge { size: bytes.len(), limit });
    }
    // `from_slice` rejects trailing non-whitespace; `deny_unknown_fields` and derived structs reject unknown
    // and duplicate fields.
    serde_json::from_slice(bytes).map_err(|err| {
        // serde_json's messages name fields and types, never echo values; the custom validation errors of
        // our field types carry their own text. Drop the position (not useful to a client, stable for tests).
        let field_error = err.is_data() && !is_structure_error(&err);
        let mut reason = err.to_string();
        if let Some(at) = reason.find(" at line ") {
            reason.truncate(at);
        }
        CodecError::Malformed { reason, field_error }
    })
}

fn is_structure_error(err: &serde_json::Error) -> bool {
    let text = err.to_string();
    ["unknown field", "unknown variant", "missing field", "duplicate field", "invalid type", "trailing"]
        .iter()
        .any(|needle| text.contains(needle))
}

/// Decodes a frame sent by a client, enforcing `limit` (at most [`MAX_FRAME_BYTES`]).
pub fn decode_client_frame(bytes: &[u8], limit: usize) -> Result<ClientFrame, CodecError> {
    decode(bytes, limit.min(MAX_FRAME_BYTES))
}

/// Decodes a frame sent by a server (clients use this), enforcing the protocol ceiling and field limits.
pub fn decode_server_frame(bytes: &[u8]) -> Result<ServerFrame, CodecError> {
    let frame: ServerFrame = decode(bytes, MAX_FRAME_BYTES)?;
    let names_ok = match &frame {
        ServerFrame::Welcome { display_name, .. } => is_valid_display_name(display_name),
        ServerFrame::Directory { entries, part, parts } => {
            part < parts && entries.iter().all(|e| is_valid_display_name(&e.display_name))
        }
        _ => true,
    };
    if !names_ok {
        return Err(CodecError::Malformed { reason: "invalid display name".into(), field_error: true });
    }
    Ok(frame)
}

/// Encodes any frame as the JSON text of one WebSocket message.
pub fn encode_frame<T: Serialize>(frame: &T) -> String {
    // Our frame types serialize infallibly (no maps with non-string keys, no failing Serialize impls).
    serde_json::to_string(frame).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::IdentityKey;
    use crate::opaque::{Nonce, Opaque};
    use crate::{ErrorCode, MemberId, SessionId};
    use proptest::prelude::*;

    fn member(seed: u8) -> MemberId {
        IdentityKey::from_seed(&[seed; 32]).public_key().member_id()
    }

    #[test]
    fn refuses_unknown_fields_types_trailing_and_duplicates() {
        let to = member(1);
        let ok = format!(r#"{{"type":"send","id":1,"to":"{to}","body":"AAEC"}}"#);
        assert!(decode_client_frame(ok.as_bytes(), MAX_FRAME_BYTES).is_ok());
        for bad in [
            format!(r#"{{"type":"send","id":1,"to":"{to}","body":"AAEC","extra":1}}"#),
            format!(r#"{{"type":"send","id":1,"to":"{to}","body":"AAEC"}} {{}}"#),
            format!(r#"{{"type":"send","id":1,"id":2,"to":"{to}","body":"AAEC"}}"#),
            format!(r#"{{"type":"teleport","id":1,"to":"{to}","body":"AAEC"}}"#),
            format!(r#"{{"type":"ping","id":1,"to":"{to}"}}"#),
            format!(r#"{{"type":"send","id":1,"to":"{to}"}}"#),
            r#"{"type":"send","type":"send","id":1}"#.to_owned(),
            format!(r#"{{"id":1,"to":"{to}","body":"AAEC"}}"#),
            r#"{"type":"ping"}"#.to_owned(),
            "[1,2]".to_owned(),
        ] {
            match decode_client_frame(bad.as_bytes(), MAX_FRAME_BYTES) {
                Err(CodecError::Malformed { field_error: false, .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_invalid_fields_as_field_errors() {
        let to = member(1);
        for bad in [
            r#"{"type":"send","id":1,"to":"not-a-member","body":"AAEC"}"#.to_owned(),
            format!(r#"{{"type":"send","id":1,"to":"{to}","body":"AA=="}}"#),
            format!(r#"{{"type":"send","id":1,"to":"{to}","body":""}}"#),
            r#"{"type":"ping","id":-1}"#.to_owned(),
        ] {
            match decode_client_frame(bad.as_bytes(), MAX_FRAME_BYTES) {
                Err(CodecError::Malformed { field_error: true, .. }) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_oversized_frames_before_parsing() {
        let big = vec![b' '; MAX_FRAME_BYTES + 1];
        assert_eq!(
            decode_client_frame(&big, usize::MAX),
            Err(CodecError::TooLarge { size: MAX_FRAME_BYTES + 1, limit: MAX_FRAME_BYTES })
        );
        assert_eq!(decode_client_frame(&big[..100], 99), Err(CodecError::TooLarge { size: 100, limit: 99 }));
    }

    #[test]
    fn error_reasons_do_not_echo_content() {
        let frame = r#"{"type":"ping","id":1,"canary-field-xyz":"canary-value-xyz"}"#;
        let err = decode_client_frame(frame.as_bytes(), MAX_FRAME_BYTES).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(!err.contains("canary-value-xyz"), "{err}");
    }

    fn arb_client_frame() -> impl Strategy<Value = ClientFrame> {
        let body = proptest::collection::vec(any::<u8>(), 1..2048)
            .prop_map(|b| Opaque::from_bytes(&b).unwrap_or_else(|_| unreachable!()));
        prop_oneof![
            (any::<[u8; 32]>(), any::<[u8; 32]>(), any::<u8>()).prop_map(|(seed, nonce, msg)| {
                let key = IdentityKey::from_seed(&seed);
                ClientFrame::Auth {
                    public_key: key.public_key(),
                    nonce: Nonce::from_bytes(nonce),
                    signature: key.sign(crate::Purpose::SignalAuth, &[msg]),
                }
            }),
            (any::<u64>(), any::<u8>(), proptest::option::of(any::<u64>()), any::<bool>(), body).prop_map(
                |(id, to, session, with_from, body)| ClientFrame::Send {
                    id,
                    to: member(to),
                    to_session: session.map(SessionId),
                    from: with_from.then(|| member(to.wrapping_add(1))),
                    body,
                }
            ),
            any::<u64>().prop_map(|id| ClientFrame::Ping { id }),
        ]
    }

    proptest! {
        #[test]
        fn client_frames_roundtrip(frame in arb_client_frame()) {
            let text = encode_frame(&frame);
            prop_assert!(text.len() <= MAX_FRAME_BYTES);
            prop_assert_eq!(decode_client_frame(text.as_bytes(), MAX_FRAME_BYTES), Ok(frame));
        }

        #[test]
        fn server_error_frames_roundtrip(idx in 0..ErrorCode::ALL.len(), id in proptest::option::of(any::<u64>()),
                                         retry in proptest::option::of(any::<u64>()), message in "[ -~]{0,80}") {
            let frame = ServerFrame::Error { code: ErrorCode::ALL[idx], message, id, retry_after_ms: retry };
            prop_assert_eq!(decode_server_frame(encode_frame(&frame).as_bytes()), Ok(frame));
        }

        #[test]
        fn fast_deliver_encoding_matches_serde(from in any::<u8>(), session in any::<u64>(),
                                               body in proptest::collection::vec(any::<u8>(), 1..512)) {
            let body = Opaque::from_bytes(&body).unwrap_or_else(|_| unreachable!());
            let from = member(from);
            let fast = crate::encode_deliver(&from, SessionId(session), &body);
            prop_assert_eq!(&fast, &encode_frame(&ServerFrame::Deliver { from, from_session: SessionId(session), body }));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_client_frame(&bytes, MAX_FRAME_BYTES);
            let _ = decode_server_frame(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(frame in arb_client_frame(), pos in any::<usize>(), byte in any::<u8>()) {
            let mut bytes = encode_frame(&frame).into_bytes();
            let at = pos % bytes.len();
            bytes[at] = byte;
            let _ = decode_client_frame(&bytes, MAX_FRAME_BYTES);
        }
    }
}
