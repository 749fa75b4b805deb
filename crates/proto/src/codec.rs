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
    // serde's derived structs also accept a JSON array (fields by position); a frame is an object only.
    let first = bytes.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first != Some(&b'{') {
        return Err(CodecError::Malformed { reason: "a frame must be one JSON object".into(), field_error: false });
    }
    // `from_slice` rejects trailing non-whitespace; `deny_unknown_fields` and derived structs reject unknown
    // and duplicate fields.
    serde_json::from_slice(bytes).map_err(|err| {
        let field_error = err.is_data() && !is_structure_error(&err);
        // Refusals are rare: only then parse again, tracking where the error is, to name the field.
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let path = match serde_path_to_error::deserialize::<_, T>(&mut de) {
            Err(tracked) => tracked.path().to_string(),
            Ok(_) => String::new(),
        };
        CodecError::Malformed { reason: reason(&err, &path), field_error }
    })
}

/// What was wrong, and where, without anything the frame held. serde's messages quote what they found
/// (`invalid type: string "…"`, `unknown variant `…``, an unknown field's name); those quotes are cut and only
/// the kind of value and what was expected are kept. The position is dropped (not useful to a client).
fn reason(err: &serde_json::Error, path: &str) -> String {
    let mut text = err.to_string();
    if let Some(at) = text.find(" at line ") {
        text.truncate(at);
    }
    // What serde expected is written by our types or by serde, never taken from the frame, and comes last:
    // split at the last separator, so that a value containing the same words cannot move it.
    let expected = |text: &str| {
        text.rfind(", expected ")
            .map(|at| text[at..].to_owned())
            .or_else(|| text.rfind(", there are no ").map(|at| text[at..].to_owned()))
            .unwrap_or_default()
    };
    let unknown_field = text.starts_with("unknown field");
    let mut sanitized =
        if let Some(rest) = text.strip_prefix("invalid type: ").or_else(|| text.strip_prefix("invalid value: ")) {
            let label = if text.starts_with("invalid type") { "invalid type" } else { "invalid value" };
            let end = rest.rfind(", expected ").unwrap_or(rest.len());
            // `string "…"`, `integer `5``, `floating point `1.5``, `sequence`: keep the kind only.
            let found = &rest[..end];
            let kind = found.split([' ', '`', '"']).take_while(|w| !w.is_empty()).collect::<Vec<_>>();
            let kind = match kind.as_slice() {
                ["floating", "point", ..] => "floating point".to_owned(),
                [first, ..] => (*first).to_owned(),
                [] => "value".to_owned(),
            };
            format!("{label}: {kind}{}", expected(rest))
        } else if text.starts_with("unknown variant") {
            format!("unknown value{}", expected(&text))
        } else if text.starts_with("unknown field") && !expected(&text).is_empty() {
            // serde's (the name is the client's); ours name a documented field of another frame type.
            format!("unknown field{}", expected(&text))
        } else {
            text
        };
    // The path names our own fields, except for an unknown field, whose name the client chose.
    let ours = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "_[].".contains(c);
    if !path.is_empty() && path != "." && !unknown_field && path.chars().all(ours) {
        sanitized.push_str(&format!(" (field `{path}`)"));
    }
    sanitized
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
    if let ServerFrame::Welcome { policy, .. } | ServerFrame::Policy { policy } = &frame
        && let Err(reason) = policy.check()
    {
        return Err(CodecError::Malformed { reason: format!("invalid policy: {reason}"), field_error: true });
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
    use crate::limits::MAX_COMMIT_RECIPIENTS;
    use crate::opaque::{GroupId, Nonce, Opaque};
    use crate::{ErrorCode, MemberId, Recipients, SessionId};
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

    /// 16 bytes of 0x07.
    const GROUP: &str = "BwcHBwcHBwcHBwcHBwcHBw";

    fn reason(frame: &str) -> Result<ClientFrame, (String, bool)> {
        decode_client_frame(frame.as_bytes(), MAX_FRAME_BYTES).map_err(|e| match e {
            CodecError::Malformed { reason, field_error } => (reason, field_error),
            CodecError::TooLarge { .. } => ("too large".into(), false),
        })
    }

    #[test]
    fn commit_decodes_with_a_list_of_recipients() {
        let (b, c) = (member(2), member(3));
        let frame =
            format!(r#"{{"type":"commit","id":4,"group":"{GROUP}","epoch":5,"to":["{b}","{c}"],"body":"AAEC"}}"#);
        let expected = ClientFrame::Commit {
            id: 4,
            group: GroupId::from_bytes(&[7; 16]).unwrap_or_else(|e| panic!("{e}")),
            epoch: 5,
            to: Recipients::new(vec![b, c]).unwrap_or_else(|e| panic!("{e}")),
            body: Opaque::from_bytes(&[0, 1, 2]).unwrap_or_else(|e| panic!("{e}")),
        };
        assert_eq!(reason(&frame), Ok(expected.clone()));
        assert_eq!(encode_frame(&expected), frame, "fields in documented order");
        // Nobody to tell yet: a new group's first commit.
        let first = format!(r#"{{"type":"commit","id":1,"group":"{GROUP}","epoch":0,"to":[],"body":"AAEC"}}"#);
        assert!(matches!(reason(&first), Ok(ClientFrame::Commit { epoch: 0, ref to, .. }) if to.as_slice().is_empty()));
    }

    #[test]
    fn commit_and_send_refuse_each_others_fields_and_forms_of_to() {
        let (a, b) = (member(1), member(2));
        let ok = |extra: &str, to: &str| {
            format!(r#"{{"type":"commit","id":1,"group":"{GROUP}","epoch":0,"to":{to},"body":"AAEC"{extra}}}"#)
        };
        let list = format!(r#"["{b}"]"#);
        let structural = [
            // `to` is a list for commit, one id for send.
            (ok("", &format!(r#""{b}""#)), "invalid type: string, expected a list of member ids for `to` in commit"),
            (
                format!(r#"{{"type":"send","id":1,"to":["{b}"],"body":"AAEC"}}"#),
                "invalid type: sequence, expected a member id for `to` in send",
            ),
            (ok("", "5"), "invalid type: integer, expected a member id or a list of member ids (field `to`)"),
            (ok(",\"to_session\":1", &list), "unknown field `to_session` in commit"),
            (ok(&format!(r#","from":"{a}""#), &list), "unknown field `from` in commit"),
            (ok(r#","nonce":"CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk""#, &list), "unknown field `nonce` in commit"),
            (ok(",\"epoch\":1", &list), "duplicate field `epoch`"),
            (ok(",\"extra\":1", &list), "unknown field, expected one of `type`, `id`"),
            (
                r#"{"type":"commit","id":1,"epoch":0,"to":[],"body":"AAEC"}"#.to_owned(),
                "missing field `group` in commit",
            ),
            (
                format!(r#"{{"type":"commit","id":1,"group":"{GROUP}","to":[],"body":"AAEC"}}"#),
                "missing field `epoch` in commit",
            ),
            (
                format!(r#"{{"type":"commit","id":1,"group":"{GROUP}","epoch":0,"body":"AAEC"}}"#),
                "missing field `to` in commit",
            ),
            (
                format!(r#"{{"type":"send","id":1,"to":"{b}","group":"{GROUP}","body":"AAEC"}}"#),
                "unknown field `group` in send",
            ),
            (
                format!(r#"{{"type":"send","id":1,"to":"{b}","epoch":3,"body":"AAEC"}}"#),
                "unknown field `epoch` in send",
            ),
            (r#"{"type":"ping","id":1,"epoch":3}"#.to_owned(), "unknown field `epoch` in ping"),
            (r#"{"type":"ping","id":1,"to":[]}"#.to_owned(), "unknown field `to` in ping"),
        ];
        for (frame, expected) in structural {
            match reason(&frame) {
                Err((got, false)) => assert!(got.starts_with(expected), "{frame}: {got}"),
                other => panic!("{frame}: {other:?}"),
            }
        }
        let too_many: Vec<String> = (0..=MAX_COMMIT_RECIPIENTS as u16)
            .map(|i| {
                let mut seed = [0u8; 32];
                seed[..2].copy_from_slice(&i.to_be_bytes());
                format!(r#""{}""#, IdentityKey::from_seed(&seed).public_key().member_id())
            })
            .collect();
        let values = [
            (ok("", &format!(r#"["{b}","{a}","{b}"]"#)), "a commit names a recipient twice in `to`"),
            (ok("", &format!("[{}]", too_many.join(","))), "a commit may name at most 256 recipients in `to`"),
            (
                ok("", r#"["D509CE50C08DCB14248CCCCC216FA4C2"]"#),
                "member id must be 32 lowercase hexadecimal characters",
            ),
            (
                ok("", &list).replace(GROUP, "BwcHBwcHBwcHBwcHBwcH"),
                "group id must be 16 to 32 bytes of unpadded base64url",
            ),
            (
                ok("", &list).replace(GROUP, &format!("{GROUP}==")),
                "group id must be 16 to 32 bytes of unpadded base64url",
            ),
            (
                ok("", &list).replace("\"epoch\":0", &format!("\"epoch\":{}", u64::MAX)),
                "epoch must be below 18446744073709551615 in commit",
            ),
            (
                ok("", &list).replace("\"epoch\":0", "\"epoch\":-1"),
                "invalid value: integer, expected u64 (field `epoch`)",
            ),
            (ok("", &list).replace("AAEC", ""), "envelope body is empty"),
        ];
        for (frame, expected) in values {
            match reason(&frame) {
                Err((got, true)) => assert!(got.starts_with(expected), "{frame}: {got}"),
                other => panic!("{frame}: {other:?}"),
            }
        }
        // The full list is accepted.
        let full = ok("", &format!("[{}]", too_many[..MAX_COMMIT_RECIPIENTS].join(",")));
        assert!(full.len() < MAX_FRAME_BYTES);
        assert!(reason(&full).is_ok());
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
    fn only_an_object_is_a_frame() {
        let to = member(1);
        // An array would fill a frame's fields by position; `[]` is no object either.
        for bad in [
            format!(r#"["send",1,"{to}",null,null,"AAEC",null,null,null,null,null]"#),
            "[]".to_owned(),
            " \n[1]".to_owned(),
            "\"ping\"".to_owned(),
            "1".to_owned(),
            "null".to_owned(),
            String::new(),
            "   ".to_owned(),
        ] {
            assert_eq!(
                decode_client_frame(bad.as_bytes(), MAX_FRAME_BYTES),
                Err(CodecError::Malformed { reason: "a frame must be one JSON object".into(), field_error: false }),
                "{bad:?}"
            );
            assert!(decode_server_frame(bad.as_bytes()).is_err(), "{bad:?}");
        }
        // Leading whitespace before the object is fine.
        assert!(decode_client_frame(b" \r\n\t{\"type\":\"ping\",\"id\":1}", MAX_FRAME_BYTES).is_ok());
    }

    #[test]
    fn error_reasons_name_the_field_never_the_value() {
        const CANARY: &str = "cAnArY-7, expected z";
        let (b, key) = (member(2), IdentityKey::from_seed(&[3; 32]).public_key());
        let commit = |field: &str, value: &str| {
            let mut fields = vec![
                ("type", "\"commit\"".to_owned()),
                ("id", "1".to_owned()),
                ("group", format!("\"{GROUP}\"")),
                ("epoch", "0".to_owned()),
                ("to", format!(r#"["{b}"]"#)),
                ("body", "\"AAEC\"".to_owned()),
            ];
            for f in &mut fields {
                if f.0 == field {
                    f.1 = value.to_owned();
                }
            }
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        };
        let quoted = format!("\"{CANARY}\"");
        let cases = [
            (commit("type", &quoted), "type"),
            (commit("id", &quoted), "id"),
            (commit("group", &quoted), "group"),
            (commit("epoch", &quoted), "epoch"),
            (commit("to", &quoted), ""),
            (commit("to", &format!("[{quoted}]")), "to[0]"),
            (commit("body", &quoted), "body"),
            (commit("id", "-77123"), "id"),
            (commit("epoch", "1.5e3"), "epoch"),
            (format!(r#"{{"type":"auth","public_key":{quoted},"nonce":"x","signature":"y"}}"#), "public_key"),
            (format!(r#"{{"type":"auth","public_key":"{key}","nonce":{quoted},"signature":"y"}}"#), "nonce"),
            (format!(r#"{{"type":"ping","id":1,{quoted}:1}}"#), ""),
            (r#"{"type":"ping","id":true}"#.to_owned(), "id"),
        ];
        for (frame, field) in cases {
            let err = decode_client_frame(frame.as_bytes(), MAX_FRAME_BYTES).err();
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(!text.is_empty(), "{frame} was accepted");
            for leak in ["cAnArY", "77123", "1.5", "true"] {
                assert!(!text.contains(leak), "{frame}: {text}");
            }
            if !field.is_empty() {
                assert!(text.contains(&format!("(field `{field}`)")), "{frame}: {text}");
            }
        }
    }

    #[test]
    fn key_package_frames_are_checked_like_the_others() {
        let kp = Opaque::from_bytes(&[1; 100]).unwrap_or_else(|_| unreachable!());
        let publish =
            format!(r#"{{"type":"publish_key_package","key_package":"{}","last_resort":true}}"#, kp.as_wire());
        assert!(matches!(
            decode_client_frame(publish.as_bytes(), MAX_FRAME_BYTES),
            Ok(ClientFrame::PublishKeyPackage { last_resort: true, .. })
        ));
        // Over the KeyPackage limit (though under the body limit): a field error, named.
        let big = Opaque::from_bytes(&[1; crate::limits::MAX_KEY_PACKAGE_BYTES + 1]).unwrap_or_else(|_| unreachable!());
        let publish =
            format!(r#"{{"type":"publish_key_package","key_package":"{}","last_resort":false}}"#, big.as_wire());
        match decode_client_frame(publish.as_bytes(), MAX_FRAME_BYTES) {
            Err(CodecError::Malformed { reason, field_error: true }) => {
                assert!(reason.contains("key_package"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Missing, foreign and mistyped fields are refused.
        for frame in [
            format!(r#"{{"type":"publish_key_package","key_package":"{}"}}"#, kp.as_wire()),
            format!(r#"{{"type":"publish_key_package","key_package":"{}","last_resort":false,"id":3}}"#, kp.as_wire()),
            r#"{"type":"claim_key_package","id":1}"#.to_owned(),
            r#"{"type":"claim_key_package","id":1,"member":"zz"}"#.to_owned(),
            format!(r#"{{"type":"claim_key_package","id":1,"member":"{}","body":"{}"}}"#, member(1), kp.as_wire()),
            format!(r#"{{"type":"send","id":1,"to":"{}","body":"{}","last_resort":true}}"#, member(1), kp.as_wire()),
        ] {
            assert!(decode_client_frame(frame.as_bytes(), MAX_FRAME_BYTES).is_err(), "{frame}");
        }
        let claim = format!(r#"{{"type":"claim_key_package","id":9,"member":"{}"}}"#, member(1));
        assert_eq!(
            decode_client_frame(claim.as_bytes(), MAX_FRAME_BYTES).ok(),
            Some(ClientFrame::ClaimKeyPackage { id: 9, member: member(1) })
        );
        // The server's answers decode; a claim answered with nothing has no key_package field.
        let none = ServerFrame::ClaimedKeyPackage { id: 9, member: member(1), key_package: None };
        assert!(!encode_frame(&none).contains(r#""key_package""#));
        assert_eq!(decode_server_frame(encode_frame(&none).as_bytes()).ok(), Some(none));
        let stock = ServerFrame::KeyPackageStock { one_time: 2, last_resort: true };
        assert_eq!(decode_server_frame(encode_frame(&stock).as_bytes()).ok(), Some(stock));
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
            (any::<u64>(), any::<u8>(), proptest::option::of(any::<u64>()), any::<bool>(), body.clone()).prop_map(
                |(id, to, session, with_from, body)| ClientFrame::Send {
                    id,
                    to: member(to),
                    to_session: session.map(SessionId),
                    from: with_from.then(|| member(to.wrapping_add(1))),
                    body,
                }
            ),
            any::<u64>().prop_map(|id| ClientFrame::Ping { id }),
            any::<u64>().prop_map(|upto| ClientFrame::Received { upto }),
            (body.clone(), any::<bool>())
                .prop_map(|(key_package, last_resort)| ClientFrame::PublishKeyPackage { key_package, last_resort }),
            (any::<u64>(), any::<u8>()).prop_map(|(id, m)| ClientFrame::ClaimKeyPackage { id, member: member(m) }),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 16..=32),
                0..u64::MAX,
                proptest::collection::btree_set(any::<u8>(), 0..12),
                body,
            )
                .prop_map(|(id, group, epoch, to, body)| ClientFrame::Commit {
                    id,
                    group: GroupId::from_bytes(&group).unwrap_or_else(|_| unreachable!()),
                    epoch,
                    to: Recipients::new(to.into_iter().map(member).collect()).unwrap_or_else(|_| unreachable!()),
                    body,
                }),
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
            prop_assert_eq!(&fast, &encode_frame(&ServerFrame::Deliver { from, from_session: SessionId(session), body: body.clone(), seq: None }));
            let kept = crate::encode_deliver_seq(&from, SessionId(session), &body, Some(session ^ 0x5a5a));
            prop_assert_eq!(&kept, &encode_frame(&ServerFrame::Deliver { from, from_session: SessionId(session), body, seq: Some(session ^ 0x5a5a) }));
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
