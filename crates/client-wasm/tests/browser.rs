//! client-core inside a real browser (Debian's Chromium through chromedriver, `cargo xtask test`): the
//! post-quantum hybrid MLS suite in conversations with add, remove and rejoin, a file key exported on both
//! sides, the key store unlocked with the real Argon2id costs, and the signaling session's handshake as the
//! worker drives it. The simulated bubble is client-core's own test harness, shared, not copied.
#![cfg(target_arch = "wasm32")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../client-core/tests/support/mod.rs"]
mod support;

use peerbubble_client_core::keystore::{KdfParams, KeyStore, KeyStoreError, KnowledgeKdf, MemoryStorage, Segment};
use peerbubble_client_core::mls::CIPHERSUITE;
use peerbubble_client_core::{CloseReason, Event};
use peerbubble_client_wasm::SignalingSession;
use peerbubble_proto::{
    ClientFrame, DirectoryEntry, IdentityKey, Limits, Nonce, Purpose, ServerFrame, SessionId, auth_message,
    decode_client_frame, encode_frame,
};
use support::Net;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};
use zeroize::Zeroizing;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn the_hybrid_suite_holds_a_group_through_add_remove_and_rejoin() {
    assert_eq!(u16::from(CIPHERSUITE), 0x004F, "ML-KEM-768 + X25519");
    let mut net = Net::new(5);
    let g = net.clients[0].create_group("cell", &[net.ids[1], net.ids[2]]).unwrap();
    net.run();
    net.clients[1].send_text(g, "in the browser").unwrap();
    net.run();
    assert_eq!(net.texts(0), ["in the browser"]);
    assert_eq!(net.texts(2), ["in the browser"]);

    // Member 2 misses a commit (offline), then asks to rejoin and reads again.
    net.online[2] = false;
    net.clients[0].add_member(g, net.ids[3]).unwrap();
    net.run();
    net.online[2] = true;
    net.clients[0].send_text(g, "you missed a commit").unwrap();
    net.run();
    net.advance(8_000);
    assert!(net.events[2].iter().any(|e| matches!(e, Event::RejoinRequested { .. })));
    net.advance(3_000);
    net.clients[3].send_text(g, "welcome back").unwrap();
    net.run();
    assert!(net.texts(2).contains(&"welcome back".to_owned()));

    // Member 1 is removed: it is told, and reads nothing more.
    net.clients[0].remove_member(g, net.ids[1]).unwrap();
    net.run();
    assert!(net.events[1].iter().any(|e| matches!(e, Event::ConversationClosed { reason: CloseReason::Removed, .. })));
    net.clients[3].send_text(g, "without member one").unwrap();
    net.run();
    assert!(!net.texts(1).contains(&"without member one".to_owned()));
    assert!(net.texts(2).contains(&"without member one".to_owned()));

    // A file key exported from the epoch is the same on both sides, and differs per context.
    let c = net.direct(0, 4);
    let mine = net.clients[0].export_secret(c, "peerbubble file", b"transfer-1").unwrap();
    let theirs = net.clients[4].export_secret(c, "peerbubble file", b"transfer-1").unwrap();
    let other = net.clients[4].export_secret(c, "peerbubble file", b"transfer-2").unwrap();
    assert_eq!(*mine, *theirs);
    assert_ne!(*mine, *other);
}

#[wasm_bindgen_test]
fn the_key_store_unlocks_with_the_real_argon2id_costs() {
    let params = KdfParams::default();
    assert!(params.m_cost_kib >= 19 * 1024 && params.t_cost >= 2, "the costs the native client uses");
    let device = || Segment::device(Zeroizing::new([5u8; 32]));
    let kdf = KnowledgeKdf::generate(params).unwrap();
    let knowledge = Segment::knowledge(b"correct horse battery staple", &kdf).unwrap();
    let mut store = KeyStore::create(MemoryStorage::default(), &[device(), knowledge]).unwrap();
    store.put("conversation/1", b"history").unwrap();

    let mut reopened = KeyStore::open(store.into_storage()).unwrap();
    let wrong = reopened.knowledge_segment(b"wrong horse").unwrap();
    assert!(matches!(reopened.unlock(&[wrong, device()]), Err(KeyStoreError::WrongSegments)));
    let right = reopened.knowledge_segment(b"correct horse battery staple").unwrap();
    reopened.unlock(&[right, device()]).unwrap();
    assert_eq!(reopened.get("conversation/1").unwrap().as_deref().map(|v| v.to_vec()), Some(b"history".to_vec()));
}

#[wasm_bindgen_test]
fn the_worker_s_signaling_session_answers_the_challenge_with_a_key_made_here() {
    let mut session = SignalingSession::generate("crisis-cell-1".into()).unwrap();
    assert_eq!(session.poll_event().as_deref(), Some(r#"{"type":"connect"}"#));
    session.connected(0.0);
    let challenge = ServerFrame::Challenge {
        protocol: peerbubble_proto::PROTOCOL_VERSION,
        bubble: "crisis-cell-1".into(),
        nonce: Nonce::from_bytes([9; 32]),
        expires_in_ms: 10_000,
    };
    session.handle_text(&encode_frame(&challenge), 1.0).unwrap();
    let auth = session.poll_transmit().unwrap();
    let Ok(ClientFrame::Auth { public_key, nonce, signature }) = decode_client_frame(auth.as_bytes(), 65_536) else {
        panic!("{auth}");
    };
    assert_eq!(public_key.member_id().to_string(), session.member_id());
    public_key.verify(Purpose::SignalAuth, &auth_message("crisis-cell-1", &nonce, &public_key), &signature).unwrap();

    let limits = Limits {
        max_frame_bytes: 65_536,
        max_body_bytes: 32_768,
        frames_per_second: 50,
        frame_burst: 100,
        member_frames_per_second: 100,
        max_sessions_per_member: 4,
        idle_timeout_ms: 60_000,
    };
    let welcome = ServerFrame::Welcome {
        member: public_key.member_id(),
        session: SessionId(3),
        display_name: "Ann".into(),
        ice_servers: Vec::new(),
        ice_expires_in_ms: None,
        limits,
        policy: Default::default(),
        mailbox_ttl_ms: None,
    };
    session.handle_text(&encode_frame(&welcome), 2.0).unwrap();
    let bob = IdentityKey::from_seed(&[2; 32]).public_key();
    let entry = DirectoryEntry {
        member: bob.member_id(),
        public_key: bob,
        display_name: "Bob (field team)".into(),
        categories: vec!["medics".into()],
        online: true,
    };
    session
        .handle_text(&encode_frame(&ServerFrame::Directory { part: 0, parts: 1, entries: vec![entry] }), 3.0)
        .unwrap();
    assert_eq!(session.poll_event().as_deref(), Some(r#"{"session":3,"type":"ready"}"#));
    assert!(session.directory().contains("Bob (field team)"));
    assert!(session.send(&bob.member_id().to_string(), b"sealed", 4.0).is_ok());
    assert!(session.poll_transmit().unwrap().contains(r#""type":"send""#));
    // Need-to-know holds in the browser too.
    let stranger = IdentityKey::from_seed(&[3; 32]).public_key().member_id().to_string();
    assert!(session.send(&stranger, b"sealed", 5.0).is_err());
}

#[wasm_bindgen_test]
fn a_member_enrolls_locks_and_unlocks_from_the_records_the_worker_keeps() {
    use peerbubble_client_wasm::{Enrollment, Vault};
    use peerbubble_proto::enroll::{EnrollRequest, Enrolled};

    assert!(Enrollment::new("https://cell.example/enroll#ops.abc%20").is_err(), "a tampered link is refused");
    let enrollment = Enrollment::new("https://cell.example/enroll#ops.tok-_9").unwrap();
    assert_eq!(enrollment.bubble(), "ops");
    // The request proves possession of a key made inside WebAssembly, for this bubble and token.
    let request: EnrollRequest = serde_json::from_str(&enrollment.request()).unwrap();
    assert_eq!(request.invite, "tok-_9");
    let public_key = request.verify("ops").unwrap();
    assert!(request.verify("other-bubble").is_err());
    let member = public_key.member_id().to_string();

    // An answer for another key is refused; the right one creates the key store.
    let wrong = Enrolled { bubble: "ops".into(), member: "00".repeat(16), display_name: "Ann".into() };
    let enrollment2 = Enrollment::new("ops.tok").unwrap();
    assert!(
        enrollment2.finish(&serde_json::to_string(&wrong).unwrap(), &mut [1u8; 32], "pass phrase", &mut []).is_err()
    );
    let enrolled = Enrolled { bubble: "ops".into(), member: member.clone(), display_name: "Ann".into() };
    let mut device = [7u8; 32];
    let mut ann = enrollment
        .finish(&serde_json::to_string(&enrolled).unwrap(), &mut device, "long pass phrase", &mut [])
        .unwrap();
    assert_eq!(device, [0u8; 32], "the device secret is zeroed once used");
    assert_eq!(ann.id(), member);
    assert!(ann.view().contains(r#""displayName":"Ann""#));
    // The worker's first instruction: open the WebSocket.
    assert_eq!(ann.next_notice().as_deref(), Some(r#"{"type":"connect"}"#));

    // What the worker writes to IndexedDB: encrypted records only.
    let mut records = Vec::new();
    while let Some(record) = ann.next_write() {
        records.push((record.name(), record.value().unwrap()));
    }
    assert!(records.iter().any(|(name, _)| name == "keystore/header"));
    for (name, value) in &records {
        assert!(!String::from_utf8_lossy(value).contains("Ann"), "{name} holds plaintext");
    }
    drop(ann);

    let vault = |records: &[(String, Vec<u8>)]| {
        let mut vault = Vault::new();
        for (name, value) in records {
            vault.add(name.clone(), value.clone());
        }
        vault
    };
    assert!(!vault(&records).needs_hardware_key().unwrap());
    assert!(vault(&records).unlock(&mut [7u8; 32], "wrong pass phrase", &mut []).is_err(), "a wrong passphrase");
    assert!(vault(&records).unlock(&mut [8u8; 32], "long pass phrase", &mut []).is_err(), "another device's secret");
    let mut again = vault(&records).unlock(&mut [7u8; 32], "long pass phrase", &mut []).unwrap();
    assert_eq!(again.id(), member, "the identity key came back from the store");
    assert_eq!(again.next_notice().as_deref(), Some(r#"{"type":"connect"}"#));
}

#[wasm_bindgen_test]
fn a_key_store_made_with_a_security_key_opens_only_with_it() {
    use peerbubble_client_wasm::{Enrollment, Vault};
    use peerbubble_proto::enroll::{EnrollRequest, Enrolled};

    let enrollment = Enrollment::new("ops.tok-key").unwrap();
    let request: EnrollRequest = serde_json::from_str(&enrollment.request()).unwrap();
    let member = request.verify("ops").unwrap().member_id().to_string();
    let enrolled = Enrolled { bubble: "ops".into(), member: member.clone(), display_name: "Ann".into() };
    // Not 32 bytes: refused, and zeroed all the same.
    let mut short = [5u8; 16];
    let refused = Enrollment::new("ops.tok-key").unwrap();
    assert!(
        refused
            .finish(&serde_json::to_string(&enrolled).unwrap(), &mut [7u8; 32], "long pass phrase", &mut short)
            .is_err()
    );
    assert_eq!(short, [0u8; 16]);
    let mut prf = [9u8; 32];
    let mut ann = enrollment
        .finish(&serde_json::to_string(&enrolled).unwrap(), &mut [7u8; 32], "long pass phrase", &mut prf)
        .unwrap();
    assert_eq!(prf, [0u8; 32], "the security key's secret is zeroed once used");
    let mut records = Vec::new();
    while let Some(record) = ann.next_write() {
        records.push((record.name(), record.value().unwrap()));
    }
    drop(ann);
    let vault = || {
        let mut vault = Vault::new();
        for (name, value) in &records {
            vault.add(name.clone(), value.clone());
        }
        vault
    };
    assert!(vault().needs_hardware_key().unwrap());
    let error = |result: Result<peerbubble_client_wasm::Member, wasm_bindgen::JsError>| {
        let value: wasm_bindgen::JsValue = result.err().expect("refused").into();
        js_sys::Reflect::get(&value, &"message".into()).unwrap().as_string().unwrap()
    };
    // Passphrase and device right, but no key, or another key: refused, saying which.
    assert!(error(vault().unlock(&mut [7u8; 32], "long pass phrase", &mut [])).starts_with("hardware_key_needed"));
    assert!(error(vault().unlock(&mut [7u8; 32], "long pass phrase", &mut [8u8; 32])).starts_with("wrong_segments"));
    // The key does not stand in for the passphrase.
    assert!(error(vault().unlock(&mut [7u8; 32], "wrong pass phrase", &mut [9u8; 32])).starts_with("wrong_segments"));
    let again = vault().unlock(&mut [7u8; 32], "long pass phrase", &mut [9u8; 32]).unwrap();
    assert_eq!(again.id(), member);
}

#[wasm_bindgen_test]
fn a_member_changes_the_passphrase_then_adds_and_removes_a_security_key() {
    use std::collections::BTreeMap;

    use peerbubble_client_wasm::{Enrollment, Member, Vault};
    use peerbubble_proto::enroll::{EnrollRequest, Enrolled};

    // What IndexedDB holds: each step's writes applied, deletions included.
    fn apply(member: &mut Member, records: &mut BTreeMap<String, Vec<u8>>) -> usize {
        let mut count = 0;
        while let Some(record) = member.next_write() {
            match record.value() {
                Some(value) => records.insert(record.name(), value),
                None => records.remove(&record.name()),
            };
            count += 1;
        }
        count
    }
    fn vault(records: &BTreeMap<String, Vec<u8>>) -> Vault {
        let mut vault = Vault::new();
        for (name, value) in records {
            vault.add(name.clone(), value.clone());
        }
        vault
    }
    fn message<T>(result: Result<T, wasm_bindgen::JsError>) -> String {
        let value: wasm_bindgen::JsValue = result.err().expect("refused").into();
        js_sys::Reflect::get(&value, &"message".into()).unwrap().as_string().unwrap()
    }

    let enrollment = Enrollment::new("ops.tok-change").unwrap();
    let request: EnrollRequest = serde_json::from_str(&enrollment.request()).unwrap();
    let member = request.verify("ops").unwrap().member_id().to_string();
    let enrolled = Enrolled { bubble: "ops".into(), member: member.clone(), display_name: "Ann".into() };
    let mut ann = enrollment
        .finish(&serde_json::to_string(&enrolled).unwrap(), &mut [7u8; 32], "first pass phrase", &mut [])
        .unwrap();
    let mut records = BTreeMap::new();
    apply(&mut ann, &mut records);
    assert!(!ann.has_hardware_key());

    // The current passphrase is asked, and a wrong one changes nothing.
    let mut device = [7u8; 32];
    let refused =
        ann.change_protection(&mut device, "not my pass phrase", &mut [], "second pass phrase", "keep", &mut []);
    assert!(message(refused).starts_with("wrong_segments"));
    assert_eq!(device, [0u8; 32], "the device secret is zeroed, refused or not");
    assert_eq!(apply(&mut ann, &mut records), 0, "a refused change wrote something");
    // Nonsense is refused before anything is derived.
    let bad = ann.change_protection(&mut [7u8; 32], "first pass phrase", &mut [], "", "new", &mut []);
    assert!(message(bad).starts_with("bad_request"));
    let bad = ann.change_protection(&mut [7u8; 16], "first pass phrase", &mut [], "", "keep", &mut []);
    assert!(message(bad).starts_with("bad_request"));

    // A new passphrase: the old one no longer opens the store, the new one does, and the member is the same.
    ann.change_protection(&mut [7u8; 32], "first pass phrase", &mut [], "second pass phrase", "keep", &mut []).unwrap();
    assert!(apply(&mut ann, &mut records) > 0);
    assert!(
        message(vault(&records).unlock(&mut [7u8; 32], "first pass phrase", &mut [])).starts_with("wrong_segments")
    );
    assert_eq!(vault(&records).unlock(&mut [7u8; 32], "second pass phrase", &mut []).unwrap().id(), member);

    // A security key added: the store needs it from now on, with the same passphrase.
    let mut prf = [9u8; 32];
    ann.change_protection(&mut [7u8; 32], "second pass phrase", &mut [], "", "new", &mut prf).unwrap();
    assert_eq!(prf, [0u8; 32], "the new key's secret is zeroed once used");
    apply(&mut ann, &mut records);
    assert!(ann.has_hardware_key());
    assert!(vault(&records).needs_hardware_key().unwrap());
    assert!(
        message(vault(&records).unlock(&mut [7u8; 32], "second pass phrase", &mut []))
            .starts_with("hardware_key_needed")
    );
    assert_eq!(vault(&records).unlock(&mut [7u8; 32], "second pass phrase", &mut [9u8; 32]).unwrap().id(), member);

    // Changing anything now needs the key too; with it, the passphrase changes and the key stays.
    let no_key =
        ann.change_protection(&mut [7u8; 32], "second pass phrase", &mut [], "third pass phrase", "keep", &mut []);
    assert!(message(no_key).starts_with("hardware_key_needed"));
    let other_key = ann.change_protection(
        &mut [7u8; 32],
        "second pass phrase",
        &mut [8u8; 32],
        "third pass phrase",
        "keep",
        &mut [],
    );
    assert!(message(other_key).starts_with("wrong_segments"));
    ann.change_protection(&mut [7u8; 32], "second pass phrase", &mut [9u8; 32], "third pass phrase", "keep", &mut [])
        .unwrap();
    apply(&mut ann, &mut records);
    assert!(vault(&records).needs_hardware_key().unwrap());
    assert_eq!(vault(&records).unlock(&mut [7u8; 32], "third pass phrase", &mut [9u8; 32]).unwrap().id(), member);

    // The key removed: the passphrase alone opens the store again.
    ann.change_protection(&mut [7u8; 32], "third pass phrase", &mut [9u8; 32], "", "remove", &mut []).unwrap();
    apply(&mut ann, &mut records);
    assert!(!ann.has_hardware_key());
    assert!(!vault(&records).needs_hardware_key().unwrap());
    let again = vault(&records).unlock(&mut [7u8; 32], "third pass phrase", &mut []).unwrap();
    assert_eq!(again.id(), member);
    assert!(again.view().contains(r#""displayName":"Ann""#), "records survived three changes");
    // Only the last generation is left: the old records were deleted.
    let header = records.keys().filter(|k| k.as_str() == "keystore/header").count();
    assert_eq!(header, 1);
    let generations: std::collections::BTreeSet<&str> = records
        .keys()
        .filter_map(|k| k.strip_prefix("keystore/records/"))
        .filter_map(|k| k.split('/').next())
        .collect();
    assert_eq!(generations.len(), 1, "records of older generations remain: {generations:?}");
}
