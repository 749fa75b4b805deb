//! The segmented key store, through `MemoryStorage`: what a member notices (records come back, a wrong
//! passphrase says so and changes nothing, a changed passphrase works) and what an attacker with the storage
//! would look for (plaintext, key bytes, swappable records).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use peerbubble_client_core::keystore::{
    KdfParams, KeyStore, KeyStoreError, KnowledgeKdf, MasterKey, MemoryStorage, Segment, SegmentKind, Storage,
    StorageError,
};
use proptest::prelude::*;
use zeroize::Zeroizing;

const DEVICE: [u8; 32] = [0xA7; 32];
const PASSPHRASE: &[u8] = b"correct horse battery staple";

fn device() -> Segment {
    Segment::device(Zeroizing::new(DEVICE))
}

fn knowledge(passphrase: &[u8]) -> (KnowledgeKdf, Segment) {
    let kdf = KnowledgeKdf::generate(KdfParams::insecure_fast()).unwrap();
    let segment = Segment::knowledge(passphrase, &kdf).unwrap();
    (kdf, segment)
}

fn new_store() -> KeyStore<MemoryStorage> {
    let (_, k) = knowledge(PASSPHRASE);
    KeyStore::create(MemoryStorage::default(), &[device(), k]).unwrap()
}

/// Reopens the store's storage and unlocks it with the device segment and `passphrase`.
fn reopen(storage: MemoryStorage, passphrase: &[u8]) -> Result<KeyStore<MemoryStorage>, KeyStoreError> {
    let mut store = KeyStore::open(storage)?;
    let k = store.knowledge_segment(passphrase)?;
    store.unlock(&[k, device()])?;
    Ok(store)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn records_round_trip_and_survive_reopening() {
    let mut store = new_store();
    assert!(store.is_unlocked());
    assert_eq!(store.required_kinds(), [SegmentKind::Device, SegmentKind::Knowledge]);
    store.put("identity/key", b"secret identity").unwrap();
    store.put("mls/group-1", b"group state").unwrap();
    store.put("mls/group-2", b"").unwrap();
    store.put("mls/group-1", b"newer group state").unwrap();
    assert_eq!(store.get("mls/group-1").unwrap().unwrap().as_slice(), b"newer group state");
    assert_eq!(store.get("mls/group-2").unwrap().unwrap().as_slice(), b"");
    assert_eq!(store.get("absent").unwrap(), None);
    assert_eq!(store.list("mls/").unwrap(), ["mls/group-1", "mls/group-2"]);
    store.delete("mls/group-2").unwrap();
    assert_eq!(store.list("").unwrap(), ["identity/key", "mls/group-1"]);
    let files_key = store.subkey("files").unwrap();
    assert_ne!(*files_key, *store.subkey("other").unwrap());

    let store = reopen(store.into_storage(), PASSPHRASE).unwrap();
    assert_eq!(store.get("identity/key").unwrap().unwrap().as_slice(), b"secret identity");
    assert_eq!(*store.subkey("files").unwrap(), *files_key);
}

#[test]
fn storage_never_holds_plaintext_or_key_material() {
    let canary = b"CANARY-7f3a9c-do-not-store";
    let mut store = new_store();
    store.put("a", canary).unwrap();
    let mut long = b"prefix ".repeat(100);
    long.extend_from_slice(canary);
    store.put("b", &long).unwrap();
    let subkey = store.subkey("files").unwrap();
    let storage = store.into_storage();
    assert!(!storage.0.is_empty());
    for (name, value) in &storage.0 {
        for secret in [&canary[..], &canary[..8], PASSPHRASE, &DEVICE[..], &subkey[..]] {
            assert!(!contains(value, secret), "{name} holds a secret");
        }
    }
}

#[test]
fn wrong_passphrase_or_device_is_refused_and_changes_nothing() {
    let mut store = new_store();
    store.put("r", b"x").unwrap();
    let before = store.storage().clone();

    let mut store = KeyStore::open(store.into_storage()).unwrap();
    let wrong_k = store.knowledge_segment(b"wrong passphrase").unwrap();
    let err = store.unlock(&[device(), wrong_k]).unwrap_err();
    assert!(matches!(err, KeyStoreError::WrongSegments), "{err:?}");
    assert!(err.to_string().contains("passphrase"));
    assert!(!store.is_unlocked());

    let right_k = store.knowledge_segment(PASSPHRASE).unwrap();
    let other_device = Segment::device(Zeroizing::new([0x11; 32]));
    assert!(matches!(store.unlock(&[other_device, right_k.clone()]), Err(KeyStoreError::WrongSegments)));
    assert!(!store.is_unlocked());
    assert_eq!(store.storage(), &before, "a failed unlock changed storage");

    store.unlock(&[right_k, device()]).unwrap();
    assert_eq!(store.get("r").unwrap().unwrap().as_slice(), b"x");
}

#[test]
fn missing_unexpected_and_duplicate_segments_are_named() {
    let store = new_store();
    let before = store.storage().clone();
    let mut store = KeyStore::open(store.into_storage()).unwrap();
    let k = store.knowledge_segment(PASSPHRASE).unwrap();
    assert!(matches!(store.unlock(&[device()]), Err(KeyStoreError::MissingSegment(SegmentKind::Knowledge))));
    assert!(matches!(store.unlock(std::slice::from_ref(&k)), Err(KeyStoreError::MissingSegment(SegmentKind::Device))));
    assert!(matches!(store.unlock(&[]), Err(KeyStoreError::MissingSegment(SegmentKind::Device))));
    let key = Segment::possession(Zeroizing::new([3; 32]));
    assert!(matches!(
        store.unlock(&[device(), k.clone(), key]),
        Err(KeyStoreError::UnexpectedSegment(SegmentKind::Possession))
    ));
    assert!(matches!(
        store.unlock(&[device(), device(), k]),
        Err(KeyStoreError::DuplicateSegment(SegmentKind::Device))
    ));
    let err = KeyStoreError::MissingSegment(SegmentKind::Knowledge).to_string();
    assert!(err.contains("knowledge segment is missing"), "{err}");
    assert!(!store.is_unlocked());
    assert_eq!(store.storage(), &before);
}

#[test]
fn all_three_segments_and_device_only_stores_work() {
    let key = || Segment::possession(Zeroizing::new([0x42; 32]));
    let (_, k) = knowledge(PASSPHRASE);
    let mut store = KeyStore::create(MemoryStorage::default(), &[key(), k, device()]).unwrap();
    store.put("r", b"three").unwrap();
    let mut store = KeyStore::open(store.into_storage()).unwrap();
    let k = store.knowledge_segment(PASSPHRASE).unwrap();
    assert!(matches!(
        store.unlock(&[k.clone(), device()]),
        Err(KeyStoreError::MissingSegment(SegmentKind::Possession))
    ));
    store.unlock(&[device(), key(), k]).unwrap();
    assert_eq!(store.get("r").unwrap().unwrap().as_slice(), b"three");

    let store = KeyStore::create(MemoryStorage::default(), &[device()]).unwrap();
    let mut store = KeyStore::open(store.into_storage()).unwrap();
    assert!(matches!(store.knowledge_segment(PASSPHRASE), Err(KeyStoreError::NoPassphrase)));
    store.unlock(&[device()]).unwrap();
}

#[test]
fn create_refuses_existing_store_and_open_refuses_empty_storage() {
    let store = new_store();
    let (_, k) = knowledge(PASSPHRASE);
    assert!(matches!(KeyStore::create(store.into_storage(), &[device(), k]), Err(KeyStoreError::AlreadyExists)));
    assert!(matches!(KeyStore::open(MemoryStorage::default()), Err(KeyStoreError::NotFound)));
    assert!(matches!(KeyStore::create(MemoryStorage::default(), &[]), Err(KeyStoreError::NoSegments)));
    assert!(matches!(
        Segment::knowledge(b"", &KnowledgeKdf::generate(KdfParams::insecure_fast()).unwrap()),
        Err(KeyStoreError::EmptyPassphrase)
    ));
}

#[test]
fn lock_drops_the_master_key() {
    let mut store = new_store();
    store.put("r", b"x").unwrap();
    store.lock();
    assert!(!store.is_unlocked());
    assert!(matches!(store.get("r"), Err(KeyStoreError::Locked)));
    assert!(matches!(store.put("r", b"y"), Err(KeyStoreError::Locked)));
    assert!(matches!(store.delete("r"), Err(KeyStoreError::Locked)));
    assert!(matches!(store.list(""), Err(KeyStoreError::Locked)));
    assert!(matches!(store.subkey("files"), Err(KeyStoreError::Locked)));
    assert!(matches!(store.change_segments(&[device()]), Err(KeyStoreError::Locked)));
    assert!(format!("{store:?}").contains("unlocked: false"));
    let k = store.knowledge_segment(PASSPHRASE).unwrap();
    store.unlock(&[device(), k]).unwrap();
    assert_eq!(store.get("r").unwrap().unwrap().as_slice(), b"x");
}

#[test]
fn tampered_and_swapped_records_are_detected_without_changes() {
    let mut store = new_store();
    store.put("alice", b"alice's key").unwrap();
    store.put("bob", b"bob's key").unwrap();
    let mut storage = store.into_storage();
    let alice = storage.list("").unwrap().into_iter().find(|n| n.ends_with("/alice")).unwrap();
    let bob = storage.list("").unwrap().into_iter().find(|n| n.ends_with("/bob")).unwrap();

    // Flip one ciphertext bit of alice.
    let mut value = storage.get(&alice).unwrap().unwrap();
    *value.last_mut().unwrap() ^= 1;
    storage.put(&alice, value).unwrap();
    // In a copy, bob's intact record moved to alice's name.
    let mut swapped = storage.clone();
    swapped.put(&alice, storage.get(&bob).unwrap().unwrap()).unwrap();

    let before = storage.clone();
    let store = reopen(storage, PASSPHRASE).unwrap();
    assert!(matches!(store.get("alice"), Err(KeyStoreError::Corrupt(n)) if n == "alice"));
    assert_eq!(store.get("bob").unwrap().unwrap().as_slice(), b"bob's key");
    assert_eq!(store.storage(), &before);

    let store = reopen(swapped, PASSPHRASE).unwrap();
    assert!(matches!(store.get("alice"), Err(KeyStoreError::Corrupt(n)) if n == "alice"));

    let mut truncated = before.clone();
    truncated.put(&bob, vec![1, 2, 3]).unwrap();
    let store = reopen(truncated, PASSPHRASE).unwrap();
    assert!(matches!(store.get("bob"), Err(KeyStoreError::Corrupt(_))));
}

#[test]
fn tampered_header_does_not_open() {
    let store = new_store();
    let mut storage = store.into_storage();
    let header = storage.get("keystore/header").unwrap().unwrap();
    let text = String::from_utf8(header).unwrap();
    // A lower generation points at no records, but must not verify either.
    let tampered = text.replace("\"generation\":1", "\"generation\":0");
    assert_ne!(tampered, text);
    storage.put("keystore/header", tampered.into_bytes()).unwrap();
    assert!(matches!(reopen(storage.clone(), PASSPHRASE), Err(KeyStoreError::WrongSegments)));

    storage.put("keystore/header", b"{not json".to_vec()).unwrap();
    assert!(matches!(KeyStore::open(storage.clone()), Err(KeyStoreError::CorruptHeader(_))));
    let extra = text.replacen('{', "{\"extra\":1,", 1);
    storage.put("keystore/header", extra.into_bytes()).unwrap();
    assert!(matches!(KeyStore::open(storage.clone()), Err(KeyStoreError::CorruptHeader(_))));
    let future = text.replace("\"version\":1", "\"version\":9");
    storage.put("keystore/header", future.into_bytes()).unwrap();
    assert!(matches!(KeyStore::open(storage.clone()), Err(KeyStoreError::UnsupportedVersion(9))));
    let huge = text.replace("\"m_cost_kib\":8", "\"m_cost_kib\":4000000000");
    storage.put("keystore/header", huge.into_bytes()).unwrap();
    assert!(matches!(KeyStore::open(storage), Err(KeyStoreError::InvalidKdfParams(_))));
}

#[test]
fn change_segments_replaces_the_passphrase_and_keeps_records() {
    let mut store = new_store();
    store.put("a", b"first").unwrap();
    store.put("b", b"second").unwrap();
    let files_key = store.subkey("files").unwrap();
    let (_, new_k) = knowledge(b"a new passphrase");
    store.change_segments(&[device(), new_k]).unwrap();
    assert_eq!(store.get("a").unwrap().unwrap().as_slice(), b"first");
    assert_eq!(store.list("").unwrap(), ["a", "b"]);
    let storage = store.into_storage();
    assert_eq!(storage.0.len(), 3, "old records were not removed: {storage:?}");

    assert!(matches!(reopen(storage.clone(), PASSPHRASE), Err(KeyStoreError::WrongSegments)));
    let store = reopen(storage, b"a new passphrase").unwrap();
    assert_eq!(store.get("b").unwrap().unwrap().as_slice(), b"second");
    assert_eq!(*store.subkey("files").unwrap(), *files_key, "files kept encrypted at rest would be lost");
}

#[test]
fn check_tells_the_right_segments_without_unlocking_or_changing_anything() {
    let mut store = new_store();
    store.put("a", b"first").unwrap();
    let before = store.storage().clone();
    let right = store.knowledge_segment(PASSPHRASE).unwrap();
    let wrong = store.knowledge_segment(b"not the passphrase").unwrap();
    assert!(matches!(store.check(&[device(), wrong]), Err(KeyStoreError::WrongSegments)));
    assert!(matches!(store.check(&[device()]), Err(KeyStoreError::MissingSegment(SegmentKind::Knowledge))));
    store.check(&[device(), right]).unwrap();
    assert_eq!(store.storage(), &before, "a check wrote something");

    // A locked store is checked the same way and stays locked.
    let mut locked = KeyStore::open(before).unwrap();
    let right = locked.knowledge_segment(PASSPHRASE).unwrap();
    locked.check(&[right, device()]).unwrap();
    assert!(!locked.is_unlocked());
    assert!(matches!(locked.get("a"), Err(KeyStoreError::Locked)));
    let right = locked.knowledge_segment(PASSPHRASE).unwrap();
    locked.unlock(&[right, device()]).unwrap();
    assert_eq!(locked.get("a").unwrap().unwrap().as_slice(), b"first");
}

/// Storage whose `put` fails after a number of successful ones.
#[derive(Clone, Debug, Default)]
struct FlakyStorage {
    inner: MemoryStorage,
    puts_left: Option<usize>,
}

impl Storage for FlakyStorage {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        self.inner.get(name)
    }
    fn put(&mut self, name: &str, value: Vec<u8>) -> Result<(), StorageError> {
        match &mut self.puts_left {
            Some(0) => Err(StorageError("disk full".into())),
            Some(n) => {
                *n -= 1;
                self.inner.put(name, value)
            }
            None => self.inner.put(name, value),
        }
    }
    fn delete(&mut self, name: &str) -> Result<(), StorageError> {
        self.inner.delete(name)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        self.inner.list(prefix)
    }
}

#[test]
fn change_segments_is_all_or_nothing() {
    let (_, k) = knowledge(PASSPHRASE);
    let mut store = KeyStore::create(FlakyStorage::default(), &[device(), k]).unwrap();
    for i in 0..5 {
        store.put(&format!("r{i}"), format!("value {i}").as_bytes()).unwrap();
    }
    let before = store.storage().inner.clone();
    // Fail at every point: each record write, then the header switch.
    for puts in 0..=5 {
        let mut storage = store.into_storage();
        storage.puts_left = Some(puts);
        store = KeyStore::open(storage).unwrap();
        let k = store.knowledge_segment(PASSPHRASE).unwrap();
        store.unlock(&[device(), k]).unwrap();
        let (_, new_k) = knowledge(b"new");
        assert!(matches!(store.change_segments(&[device(), new_k]), Err(KeyStoreError::Storage(_))));
        assert_eq!(store.storage().inner, before, "failure after {puts} writes changed storage");
        assert_eq!(store.get("r3").unwrap().unwrap().as_slice(), b"value 3");
    }
    let mut storage = store.into_storage();
    storage.puts_left = None;
    let store = reopen(storage.inner, PASSPHRASE).unwrap();
    assert_eq!(store.get("r4").unwrap().unwrap().as_slice(), b"value 4");
}

#[test]
fn change_segments_refuses_corrupt_records_before_writing() {
    let mut store = new_store();
    store.put("good", b"1").unwrap();
    store.put("bad", b"2").unwrap();
    let mut storage = store.into_storage();
    let bad = storage.list("").unwrap().into_iter().find(|n| n.ends_with("/bad")).unwrap();
    let mut value = storage.get(&bad).unwrap().unwrap();
    value[30] ^= 0x80;
    storage.put(&bad, value).unwrap();
    let before = storage.clone();
    let mut store = reopen(storage, PASSPHRASE).unwrap();
    let (_, new_k) = knowledge(b"new");
    assert!(matches!(store.change_segments(&[device(), new_k]), Err(KeyStoreError::Corrupt(n)) if n == "bad"));
    assert_eq!(store.storage(), &before);
}

#[test]
fn debug_output_shows_no_key_material() {
    let (_, k) = knowledge(PASSPHRASE);
    let k_debug = format!("{k:?}");
    let dev = device();
    let master = MasterKey::derive(&[dev.clone(), k.clone()], &[9; 32]).unwrap();
    let store = KeyStore::create(MemoryStorage::default(), &[dev.clone(), k]).unwrap();
    let subkey = store.subkey("files").unwrap();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    for (what, debug) in [
        ("segment", format!("{dev:?}")),
        ("knowledge", k_debug),
        ("master", format!("{master:?}")),
        ("store", format!("{store:?}")),
    ] {
        assert!(debug.contains("redacted"), "{what}: {debug}");
        for secret in [&DEVICE[..], &subkey[..]] {
            assert!(!debug.contains(&hex(secret)), "{what} shows hex: {debug}");
            assert!(!debug.contains(&format!("{}, {}, {}", secret[0], secret[1], secret[2])), "{what}: {debug}");
        }
        assert!(!debug.contains("correct horse"), "{what}: {debug}");
    }
    assert_eq!(format!("{master:?}"), "MasterKey(redacted)");
    assert_eq!(format!("{dev:?}"), "Segment(device, redacted)");
    let err = format!("{:?} {}", KeyStoreError::WrongSegments, KeyStoreError::WrongSegments);
    assert!(!err.contains(&hex(&DEVICE)));
}

#[test]
fn default_kdf_params_follow_owasp() {
    assert_eq!(KdfParams::default(), KdfParams { m_cost_kib: 19456, t_cost: 2, p_cost: 1 });
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn arbitrary_records_round_trip(records in prop::collection::btree_map("[a-z0-9/._-]{1,24}", prop::collection::vec(any::<u8>(), 0..600), 0..12)) {
        let mut store = new_store();
        for (name, value) in &records {
            store.put(name, value).unwrap();
        }
        let store = reopen(store.into_storage(), PASSPHRASE).unwrap();
        let names: Vec<_> = records.keys().cloned().collect();
        prop_assert_eq!(store.list("").unwrap(), names);
        let got: BTreeMap<String, Vec<u8>> =
            records.keys().map(|n| (n.clone(), store.get(n).unwrap().unwrap().to_vec())).collect();
        prop_assert_eq!(got, records);
    }
}
