//! A member's whole client in the worker: the identity key, the key store and the [`Session`] (signaling and
//! conversations). The worker feeds the WebSocket and the clock in, writes the encrypted records this class
//! hands out to IndexedDB, and posts [`Member::view`] to the page.
//!
//! The identity key is made here and stays here; the key store's master key exists only while a `Member` is
//! alive (free it to lock). What crosses to JavaScript: public keys and ids, the directory slice, conversation
//! histories for the member's own screen, and key-store records already encrypted.

use std::collections::BTreeMap;

use peerbubble_client_core::files::{FileHasher, TransferConfig, TransferId};
use peerbubble_client_core::fingerprint::{Fingerprint, sdp_fingerprints};
use peerbubble_client_core::keystore::{
    HEADER_NAME, KdfParams, KeyStore, KeyStoreError, KnowledgeKdf, Segment, SegmentKind, Storage, StorageError,
};
use peerbubble_client_core::message::{CallSignal, ConversationKind, EndReason, MessageId, hex, hex16};
use peerbubble_client_core::session::{Session, SessionEvent};
use peerbubble_client_core::signaling::SignalEvent;
use peerbubble_client_core::{Client, ConversationId, Event};
use peerbubble_proto::enroll::{EnrollRequest, Enrolled, Invite};
use peerbubble_proto::{IdentityKey, MemberId, safety_number};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;
use zeroize::Zeroizing;

use crate::{event_json, js_error};

const RECORD_IDENTITY: &str = "member/identity";
const RECORD_PROFILE: &str = "member/profile";
/// Chunks a sending browser keeps unacknowledged (4 MiB of 16 KiB chunks): enough to cover the time a receiving
/// browser takes to keep 16 chunks (written and flushed to OPFS) and acknowledge them, well below the 16 MiB a
/// Chromium DataChannel buffers.
const FILE_WINDOW: u32 = 256;
/// A 1:1 conversation the contact opened: the contact offers the connection; if no offer has come by then (an
/// older client, whose rule is that the lower id offers), the lower id offers.
const JOINER_OFFERS_AFTER_MS: u64 = 3_000;
/// Contacts whose safety number the member compared: member id → the public key it was compared for.
const RECORD_VERIFIED: &str = "member/verified";

/// What the member is, in the bubble (kept encrypted in the key store).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    bubble: String,
    member: MemberId,
    display_name: String,
}

/// Key-store storage that remembers what changed, for the worker to write in one IndexedDB transaction.
#[derive(Debug, Default)]
struct Recording {
    records: BTreeMap<String, Vec<u8>>,
    writes: BTreeMap<String, Option<Vec<u8>>>,
}

impl Storage for Recording {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.records.get(name).cloned())
    }
    fn put(&mut self, name: &str, value: Vec<u8>) -> Result<(), StorageError> {
        self.writes.insert(name.to_owned(), Some(value.clone()));
        self.records.insert(name.to_owned(), value);
        Ok(())
    }
    fn delete(&mut self, name: &str) -> Result<(), StorageError> {
        self.writes.insert(name.to_owned(), None);
        self.records.remove(name);
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.records.keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }
}

/// One encrypted key-store record to write (`value` present) or delete.
#[wasm_bindgen]
#[derive(Debug)]
pub struct StoredRecord {
    name: String,
    value: Option<Vec<u8>>,
}

#[wasm_bindgen]
impl StoredRecord {
    /// The record's name (opaque; stored in the clear).
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }
    /// The encrypted bytes, or nothing to delete the record.
    #[wasm_bindgen(getter)]
    pub fn value(&self) -> Option<Vec<u8>> {
        self.value.clone()
    }
}

fn device_segment(device_secret: &mut [u8]) -> Result<Segment, JsError> {
    let secret: [u8; 32] = device_secret.try_into().map_err(|_| JsError::new("the device secret must be 32 bytes"))?;
    zeroize::Zeroize::zeroize(device_secret);
    Ok(Segment::device(Zeroizing::new(secret)))
}

/// The possession segment from a security key's WebAuthn PRF output (32 bytes, zeroed here), or none when the
/// member set no security key (empty).
fn possession_segment(hardware_secret: &mut [u8]) -> Result<Option<Segment>, JsError> {
    if hardware_secret.is_empty() {
        return Ok(None);
    }
    let secret: Result<[u8; 32], _> = (&*hardware_secret).try_into();
    zeroize::Zeroize::zeroize(hardware_secret);
    let secret = secret.map_err(|_| JsError::new("the security key's secret must be 32 bytes"))?;
    Ok(Some(Segment::possession(Zeroizing::new(secret))))
}

/// A key store's refusal of the segments it was given, as the page reads it (`wrong_segments: …`).
fn segments_error(e: KeyStoreError, needs_key: bool) -> JsError {
    match e {
        KeyStoreError::WrongSegments if needs_key => {
            JsError::new("wrong_segments: the passphrase or the security key is not the one of this device")
        }
        KeyStoreError::WrongSegments => JsError::new("wrong_segments: the passphrase is not the one of this device"),
        other => js_error(other),
    }
}

/// Enrolling this device: an identity key made here for one invite.
#[wasm_bindgen]
#[derive(Debug)]
pub struct Enrollment {
    key: IdentityKey,
    invite: Invite,
}

#[wasm_bindgen]
impl Enrollment {
    /// Reads the invite link (or its fragment) and makes a new identity key. A malformed link is an error that
    /// says so.
    #[wasm_bindgen(constructor)]
    pub fn new(link: &str) -> Result<Enrollment, JsError> {
        let invite = Invite::parse(link).map_err(js_error)?;
        let key = IdentityKey::generate().map_err(js_error)?;
        Ok(Self { key, invite })
    }

    /// The bubble the invite is for.
    #[wasm_bindgen(getter)]
    pub fn bubble(&self) -> String {
        self.invite.bubble().to_owned()
    }

    /// The body of `POST /api/v1/enroll` (token, public key, proof of possession), as JSON text.
    pub fn request(&self) -> String {
        serde_json::to_string(&EnrollRequest::new(&self.invite, &self.key)).unwrap_or_default()
    }

    /// Creates the key store from the admin API's answer: the device segment (32 bytes the worker keeps wrapped
    /// by a non-extractable WebCrypto key; zeroed here), the passphrase (Argon2id with the native client's
    /// costs) and, when the member added a security key, its WebAuthn PRF output (32 bytes, zeroed here; empty
    /// for none). Consumes the enrollment.
    pub fn finish(
        self,
        enrolled: &str,
        device_secret: &mut [u8],
        passphrase: &str,
        hardware_secret: &mut [u8],
    ) -> Result<Member, JsError> {
        let possession = possession_segment(hardware_secret);
        let enrolled: Enrolled =
            serde_json::from_str(enrolled).map_err(|e| JsError::new(&format!("unexpected enrollment answer: {e}")))?;
        let member: MemberId = enrolled.member.parse().map_err(js_error)?;
        if member != self.key.public_key().member_id() || enrolled.bubble != self.invite.bubble() {
            return Err(JsError::new("the enrollment answer is for another key or bubble"));
        }
        let kdf = KnowledgeKdf::generate(KdfParams::default()).map_err(js_error)?;
        let knowledge = Segment::knowledge(passphrase.as_bytes(), &kdf).map_err(js_error)?;
        let mut segments = vec![device_segment(device_secret)?, knowledge];
        segments.extend(possession?);
        let mut store = KeyStore::create(Recording::default(), &segments).map_err(js_error)?;
        let profile = Profile { bubble: enrolled.bubble, member, display_name: enrolled.display_name };
        store.put(RECORD_IDENTITY, &*self.key.to_seed()).map_err(js_error)?;
        store.put(RECORD_PROFILE, &serde_json::to_vec(&profile).map_err(js_error)?).map_err(js_error)?;
        let client = Client::new(&self.key);
        client.save(&mut store).map_err(js_error)?;
        Ok(Member::assemble(store, self.key, profile, client))
    }
}

/// Opening the key store: the worker adds every stored record, then unlocks.
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct Vault {
    storage: Recording,
}

#[wasm_bindgen]
impl Vault {
    /// An empty vault.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Vault {
        Self::default()
    }

    /// A stored record, as IndexedDB holds it.
    pub fn add(&mut self, name: String, value: Vec<u8>) {
        self.storage.records.insert(name, value);
    }

    /// Whether this key store needs the member's security key to open (its WebAuthn PRF output).
    #[wasm_bindgen(js_name = needsHardwareKey)]
    pub fn needs_hardware_key(&self) -> Result<bool, JsError> {
        // The header says which segments the store needs; the records are not needed for that.
        let header = self.storage.records.get(HEADER_NAME).map(|h| (HEADER_NAME.to_owned(), h.clone()));
        let store = KeyStore::open(Recording { records: header.into_iter().collect(), writes: BTreeMap::new() })
            .map_err(js_error)?;
        Ok(store.required_kinds().contains(&SegmentKind::Possession))
    }

    /// Unlocks with the device secret (zeroed here), the passphrase and, for a key store made with a security
    /// key, its WebAuthn PRF output (zeroed here; empty for none). A wrong passphrase or key is an error
    /// (`wrong_segments` in its text), a missing key too (`hardware_key_needed`); neither changes anything
    /// stored.
    pub fn unlock(
        self,
        device_secret: &mut [u8],
        passphrase: &str,
        hardware_secret: &mut [u8],
    ) -> Result<Member, JsError> {
        let possession = possession_segment(hardware_secret);
        let device = device_segment(device_secret)?;
        let possession = possession?;
        let mut store = KeyStore::open(self.storage).map_err(js_error)?;
        let needs_key = store.required_kinds().contains(&SegmentKind::Possession);
        if needs_key && possession.is_none() {
            return Err(JsError::new("hardware_key_needed: this device opens only with its security key"));
        }
        let knowledge = store.knowledge_segment(passphrase.as_bytes()).map_err(js_error)?;
        let mut segments = vec![device, knowledge];
        // A key offered to a store made without one is not used (nothing of it is kept either).
        segments.extend(possession.filter(|_| needs_key));
        store.unlock(&segments).map_err(|e| segments_error(e, needs_key))?;
        let seed = store.get(RECORD_IDENTITY).map_err(js_error)?.ok_or_else(|| JsError::new("no identity stored"))?;
        let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| JsError::new("the stored identity is damaged"))?;
        let key = IdentityKey::from_seed(&seed);
        let profile = store.get(RECORD_PROFILE).map_err(js_error)?.ok_or_else(|| JsError::new("no profile stored"))?;
        let profile: Profile = serde_json::from_slice(&profile).map_err(js_error)?;
        let client = Client::restore(&key, &store).map_err(js_error)?;
        let verified = match store.get(RECORD_VERIFIED).map_err(js_error)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(js_error)?,
            None => BTreeMap::new(),
        };
        // Records were read, not written: nothing to hand back yet.
        store.storage_mut().writes.clear();
        let mut member = Member::assemble(store, key, profile, client);
        member.verified = verified;
        Ok(member)
    }
}

/// The unlocked member: key store, identity and session. Free it to lock (the master key is dropped).
#[wasm_bindgen]
pub struct Member {
    store: KeyStore<Recording>,
    profile: Profile,
    session: Session,
    /// Safety numbers are computed from this public key.
    public_key: peerbubble_proto::PublicKey,
    /// The key's fingerprint (5 200 SHA-512 rounds): computed once, not at every view.
    fingerprint: String,
    /// Contacts the member verified, with the key they verified.
    verified: BTreeMap<MemberId, String>,
    /// Events for the page, as JSON (public routing facts, and the member's own messages for their screen).
    notices: Vec<Value>,
    /// Envelope bytes (MLS ciphertext) for the DataChannel with a contact, in order.
    channel_out: std::collections::VecDeque<(MemberId, Vec<u8>)>,
    /// Chunks of incoming files, sealed, for the worker to keep at rest before anything else goes out.
    stored_out: std::collections::VecDeque<SealedChunk>,
    /// Contacts for whom something we sent waits in the bubble's mailbox (until they come online).
    waiting: std::collections::BTreeSet<MemberId>,
    /// Contacts this member opened a 1:1 conversation with (`startDirect`) that is not ready yet: this side
    /// offers the connection once it is, whatever the ids (the page gathered the offer meanwhile).
    opened: std::collections::BTreeSet<MemberId>,
    /// Envelopes sent to us that the bubble lost while we were away (this page's life).
    missed: u64,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("member", &self.profile.member).finish_non_exhaustive()
    }
}

fn conversation(id: &str) -> Result<ConversationId, JsError> {
    ConversationId::try_from(id.to_owned()).map_err(|e| JsError::new(&e))
}

fn member_id(id: &str) -> Result<MemberId, JsError> {
    id.parse().map_err(js_error)
}

fn transfer_id(id: &str) -> Result<TransferId, JsError> {
    hex16(id).map(TransferId).ok_or_else(|| JsError::new("a transfer id is 32 lowercase hex characters"))
}

fn message_id(id: &str) -> Result<MessageId, JsError> {
    MessageId::try_from(id.to_owned()).map_err(|e| JsError::new(&e))
}

/// The one DTLS fingerprint of a local SDP (browsers write one per media section, all the same).
fn single_fingerprint(sdp: &str) -> Result<Fingerprint, JsError> {
    let mut found = sdp_fingerprints(sdp).into_iter();
    match found.next() {
        Some(Some(first)) if found.all(|f| f == Some(first)) => Ok(first),
        _ => Err(JsError::new("the SDP must carry exactly one sha-256 a=fingerprint")),
    }
}

/// An envelope for the DataChannel with a contact.
#[wasm_bindgen]
#[derive(Debug)]
pub struct ChannelSend {
    to: String,
    bytes: Vec<u8>,
}

#[wasm_bindgen]
impl ChannelSend {
    /// The contact (member id, hex).
    #[wasm_bindgen(getter)]
    pub fn to(&self) -> String {
        self.to.clone()
    }

    /// The bytes (MLS ciphertext, or a file chunk frame), copied out.
    #[wasm_bindgen(getter)]
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    /// Where the bytes are in the module's memory, with [`ChannelSend::byte_len`]: the worker hands the
    /// DataChannel a view of them (the channel copies what it sends) rather than copying them out first. Valid
    /// until this object is freed.
    #[wasm_bindgen(getter)]
    pub fn ptr(&self) -> u32 {
        self.bytes.as_ptr() as u32
    }

    /// How many bytes there are at [`ChannelSend::ptr`].
    #[wasm_bindgen(getter, js_name = byteLength)]
    pub fn byte_len(&self) -> u32 {
        self.bytes.len() as u32
    }
}

/// A chunk of an incoming file as it arrived, still encrypted under the transfer's key: the worker writes it
/// at rest (OPFS) at `index`; only this member's key store can open it again.
#[wasm_bindgen]
#[derive(Debug)]
pub struct SealedChunk {
    transfer: TransferId,
    index: u32,
    sealed: Vec<u8>,
}

#[wasm_bindgen]
impl SealedChunk {
    /// The transfer (hex).
    #[wasm_bindgen(getter)]
    pub fn transfer(&self) -> String {
        hex(&self.transfer.0)
    }
    /// The chunk's index.
    #[wasm_bindgen(getter)]
    pub fn index(&self) -> u32 {
        self.index
    }
    /// Ciphertext and tag.
    #[wasm_bindgen(getter)]
    pub fn sealed(&self) -> Vec<u8> {
        self.sealed.clone()
    }
}

/// Which bytes of a file to read next: `offset` and `len` in the file, for chunk `index`.
#[wasm_bindgen]
#[derive(Debug, Clone, Copy)]
pub struct ChunkWanted {
    /// Chunk index.
    pub index: u32,
    /// Byte offset (a JavaScript number: files stay far below 2^53 bytes).
    pub offset: f64,
    /// Bytes to read.
    pub len: u32,
}

/// SHA-256 of a file the worker reads in slices (the offer carries it; the receiver checks it).
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct FileHash {
    inner: FileHasher,
}

#[wasm_bindgen]
impl FileHash {
    /// An empty hash.
    #[wasm_bindgen(constructor)]
    pub fn new() -> FileHash {
        Self::default()
    }
    /// The next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }
    /// The hash, hex.
    pub fn finish(self) -> String {
        hex(&self.inner.finalize())
    }
}

impl Member {
    fn assemble(store: KeyStore<Recording>, key: IdentityKey, profile: Profile, mut client: Client) -> Self {
        client.set_file_config(TransferConfig { window: FILE_WINDOW, ..TransferConfig::default() });
        let public_key = key.public_key();
        let fingerprint = peerbubble_proto::key_fingerprint(&public_key);
        let session = Session::new(key, Some(profile.bubble.clone()), client);
        let mut member = Self {
            store,
            profile,
            session,
            public_key,
            fingerprint,
            verified: BTreeMap::new(),
            notices: Vec::new(),
            channel_out: std::collections::VecDeque::new(),
            stored_out: std::collections::VecDeque::new(),
            waiting: std::collections::BTreeSet::new(),
            opened: std::collections::BTreeSet::new(),
            missed: 0,
        };
        // The session's first event (connect) becomes the first notice. Nothing changed yet, so nothing is saved.
        member.take_events();
        member
    }

    fn act<T>(
        &mut self,
        now_ms: f64,
        command: impl FnOnce(&mut Client) -> Result<T, peerbubble_client_core::ClientError>,
    ) -> Result<T, JsError> {
        let result = self.session.act(now_ms as u64, command).map_err(js_error);
        self.settle()?;
        result
    }

    /// A member's key as the directory gives it; members outside the directory are refused (need-to-know).
    fn directory_key(&self, peer: &MemberId) -> Result<&peerbubble_proto::PublicKey, JsError> {
        let entry = self.session.signaling().directory().get(peer);
        entry.map(|e| &e.public_key).ok_or_else(|| JsError::new("this member is not in your directory"))
    }

    /// Moves session events to notices (and DataChannel bytes to their queue).
    fn take_events(&mut self) {
        while let Some(event) = self.session.poll_event() {
            match event {
                SessionEvent::ChannelSend { to, bytes } => self.channel_out.push_back((to, bytes)),
                // File bytes go to storage, never into a notice.
                SessionEvent::Core(Event::FileChunk { transfer, index, sealed, .. }) => {
                    self.stored_out.push_back(SealedChunk { transfer, index, sealed });
                }
                // A group's call: who rang, joined or left, and who is in it now (from the core's count).
                SessionEvent::Core(Event::Call {
                    conversation,
                    from,
                    signal:
                        signal @ (CallSignal::Ring { .. }
                        | CallSignal::Accept { .. }
                        | CallSignal::End { .. }
                        | CallSignal::Full { .. }),
                }) if self.session.client().direct_conversation(from) != Some(conversation) => {
                    let call = self.session.client().group_call(conversation);
                    let participants: Vec<String> =
                        call.map(|c| c.participants.iter().map(ToString::to_string).collect()).unwrap_or_default();
                    let video = call.is_some_and(|c| c.video);
                    // A join the caller did not count is, for the page, that member leaving (us: the call is full).
                    let (kind, ring, video, peer) = match signal {
                        CallSignal::Ring { ring, video } => ("groupCallRing", ring, video, from),
                        CallSignal::Accept { ring } => ("groupCallJoined", ring, video, from),
                        CallSignal::End { ring, .. } => ("groupCallLeft", ring, video, from),
                        CallSignal::Full { ring, member } => ("groupCallLeft", ring, video, member),
                        _ => continue,
                    };
                    self.notices.push(json!({
                        "type": kind, "group": conversation, "peer": peer.to_string(), "ring": ring, "video": video,
                        "caller": call.map(|c| c.caller.to_string()), "participants": participants,
                    }));
                }
                SessionEvent::Core(Event::ConversationReady {
                    kind: ConversationKind::Direct, ref members, ..
                }) => {
                    if let [peer] = members.as_slice() {
                        if self.opened.remove(peer) {
                            // We opened it: we offer now (gathered while the conversation was set up).
                            self.offer_channel(*peer, None);
                        } else {
                            // The contact opened it and offers; should it not (an older client leaves it to the
                            // lower id), the lower id offers after a pause.
                            self.want_channel_after(*peer, Some(JOINER_OFFERS_AFTER_MS));
                        }
                    }
                    self.notices.push(notice_json(event));
                }
                SessionEvent::Signal(SignalEvent::Presence { member, online: true }) => {
                    // Back: the bubble hands it what waited.
                    self.waiting.remove(&member);
                    self.want_channel(member);
                    self.notices.push(notice_json(event));
                }
                SessionEvent::StoredForLater { to } => {
                    self.waiting.insert(to);
                    self.notices.push(notice_json(event));
                }
                SessionEvent::MissedWhileAway { lost } => {
                    self.missed += lost;
                    self.notices.push(notice_json(event));
                }
                SessionEvent::Signal(SignalEvent::Ready { .. }) => {
                    let contacts: Vec<MemberId> = self.session.signaling().directory().keys().copied().collect();
                    for peer in contacts {
                        self.want_channel(peer);
                    }
                    self.notices.push(notice_json(event));
                }
                other => self.notices.push(notice_json(other)),
            }
        }
    }

    /// Asks the page for a DataChannel with `peer` when we are the side that offers (the lower member id, as
    /// the native peer does), the contact is online and we share a 1:1 conversation. The page ignores the ask
    /// while a connection with `peer` is being set up or open.
    fn want_channel(&mut self, peer: MemberId) {
        self.want_channel_after(peer, None);
    }

    /// [`Member::want_channel`], the page waiting `after_ms` first (and offering only if no connection with
    /// `peer` exists or is being set up by then).
    fn want_channel_after(&mut self, peer: MemberId, after_ms: Option<u64>) {
        if self.profile.member < peer {
            self.offer_channel(peer, after_ms);
        }
    }

    /// Asks the page to offer a DataChannel to `peer` (online, with a 1:1 conversation), now or after `after_ms`.
    fn offer_channel(&mut self, peer: MemberId, after_ms: Option<u64>) {
        let online = self.session.signaling().directory().get(&peer).is_some_and(|e| e.online);
        if online && self.session.client().direct_conversation(peer).is_some() {
            self.notices.push(match after_ms {
                Some(after) => json!({"type": "rtcWanted", "peer": peer.to_string(), "afterMs": after}),
                None => json!({"type": "rtcWanted", "peer": peer.to_string()}),
            });
        }
    }

    /// Moves session events to notices and saves what changed.
    fn settle(&mut self) -> Result<(), JsError> {
        self.take_events();
        if self.session.take_changed() {
            self.session.client().save(&mut self.store).map_err(js_error)?;
        }
        Ok(())
    }
}

/// A session event for the page.
fn notice_json(event: SessionEvent) -> Value {
    match event {
        SessionEvent::Signal(signal) => event_json(&signal),
        SessionEvent::Core(core) => core_json(&core),
        SessionEvent::ChannelSend { to, bytes } => {
            json!({"type": "channelSend", "to": to.to_string(), "bytes": bytes.len()})
        }
        SessionEvent::Undeliverable { to, reason } => {
            json!({"type": "undeliverable", "to": to.to_string(), "reason": reason})
        }
        SessionEvent::StoredForLater { to } => json!({"type": "storedForLater", "to": to.to_string()}),
        SessionEvent::MissedWhileAway { lost } => json!({"type": "missedWhileAway", "lost": lost}),
    }
}

/// A core event for the page: what changed, never key material. Message text is included only as the
/// member's own conversation content (the page renders it, masked until revealed).
fn core_json(event: &Event) -> Value {
    match event {
        Event::ConversationReady { conversation, .. } => {
            json!({"type": "conversationReady", "conversation": conversation})
        }
        Event::MembersChanged { conversation, .. } => json!({"type": "membersChanged", "conversation": conversation}),
        Event::ConversationClosed { conversation, reason } => {
            json!({"type": "conversationClosed", "conversation": conversation, "reason": format!("{reason:?}")})
        }
        Event::Message { conversation, from, id, .. } => {
            json!({"type": "message", "conversation": conversation, "from": from.to_string(), "id": id})
        }
        Event::Refused { from, reason } => {
            json!({"type": "refusedEnvelope", "from": from.to_string(), "reason": reason})
        }
        Event::Typing { conversation, from, typing } => {
            json!({"type": "typing", "conversation": conversation, "from": from.to_string(), "typing": typing})
        }
        // Call set-up for the page's RTCPeerConnection: the SDP came MLS-authenticated from the contact, with its
        // `a=fingerprint` already checked against the announced one; candidates gathered after it left follow,
        // each checked to be one `candidate:` line.
        Event::Call { from, signal: CallSignal::Offer { sdp, .. }, .. } => {
            json!({"type": "rtcOffer", "peer": from.to_string(), "sdp": sdp})
        }
        Event::Call { from, signal: CallSignal::Answer { sdp, .. }, .. } => {
            json!({"type": "rtcAnswer", "peer": from.to_string(), "sdp": sdp})
        }
        Event::Call { from, signal: CallSignal::Hangup { .. }, .. } => {
            json!({"type": "rtcHangup", "peer": from.to_string()})
        }
        Event::Call { from, signal: CallSignal::Candidate { candidate, .. }, .. } => {
            json!({"type": "rtcCandidate", "peer": from.to_string(), "candidate": candidate})
        }
        // Media calls: who rings, picks up or ends, for the page's call screen.
        Event::Call { from, signal: CallSignal::Ring { ring, video }, .. } => {
            json!({"type": "callRing", "peer": from.to_string(), "ring": ring, "video": video})
        }
        Event::Call { from, signal: CallSignal::Accept { ring }, .. } => {
            json!({"type": "callAccepted", "peer": from.to_string(), "ring": ring})
        }
        Event::Call { from, signal: CallSignal::End { ring, reason }, .. } => {
            json!({"type": "callEnded", "peer": from.to_string(), "ring": ring, "reason": reason})
        }
        // File events name the transfer only; the view lists what it is.
        Event::FileOffered { offer, from, .. } => {
            json!({"type": "fileOffered", "transfer": hex(&offer.transfer.0), "from": from.to_string()})
        }
        Event::FileSendable { transfer, .. } => json!({"type": "fileSendable", "transfer": hex(&transfer.0)}),
        Event::FileReceived { transfer, .. } => json!({"type": "fileReceived", "transfer": hex(&transfer.0)}),
        Event::FileSent { transfer } => json!({"type": "fileSent", "transfer": hex(&transfer.0)}),
        Event::FileCancelled { transfer, reason } => {
            json!({"type": "fileCancelled", "transfer": hex(&transfer.0), "reason": reason})
        }
        Event::FileHeld { transfer, by, held } => {
            json!({"type": "fileHeld", "transfer": hex(&transfer.0), "by": by.to_string(), "held": held})
        }
        Event::FileForgotten { transfer } => json!({"type": "fileForgotten", "transfer": hex(&transfer.0)}),
        _ => json!({"type": "changed"}),
    }
}

#[wasm_bindgen]
impl Member {
    /// Our member id (hex).
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> String {
        self.profile.member.to_string()
    }

    /// The bubble.
    #[wasm_bindgen(getter)]
    pub fn bubble(&self) -> String {
        self.profile.bubble.clone()
    }

    /// Changes what protects the key store on this device: the passphrase, the security key, or both. The
    /// current passphrase (and, for a store made with one, the current security key's PRF output) must be given
    /// and is checked first, so an unlocked screen left unattended is not enough. `new_passphrase` empty keeps
    /// the passphrase (under a fresh Argon2id salt); `security_key` is `keep`, `remove` or `new` (then
    /// `new_hardware_secret` is the new key's PRF output). Every secret given is zeroed here. All or nothing:
    /// the re-encrypted records come out of [`next_write`](Self::next_write) for one IndexedDB transaction, and
    /// on any error nothing changed. Errors start with `wrong_segments`, `hardware_key_needed` or
    /// `bad_request`.
    #[wasm_bindgen(js_name = changeProtection)]
    pub fn change_protection(
        &mut self,
        device_secret: &mut [u8],
        passphrase: &str,
        hardware_secret: &mut [u8],
        new_passphrase: &str,
        security_key: &str,
        new_hardware_secret: &mut [u8],
    ) -> Result<(), JsError> {
        let device: Result<Zeroizing<[u8; 32]>, _> = (&*device_secret).try_into().map(Zeroizing::new);
        zeroize::Zeroize::zeroize(device_secret);
        let current_key: Option<Result<Zeroizing<[u8; 32]>, _>> =
            (!hardware_secret.is_empty()).then(|| (&*hardware_secret).try_into().map(Zeroizing::new));
        zeroize::Zeroize::zeroize(hardware_secret);
        let new_key = possession_segment(new_hardware_secret);
        let device = device.map_err(|_| JsError::new("bad_request: the device secret must be 32 bytes"))?;
        let current_key = current_key
            .transpose()
            .map_err(|_| JsError::new("bad_request: the security key's secret must be 32 bytes"))?;
        let new_key = new_key?;
        let needs_key = self.store.required_kinds().contains(&SegmentKind::Possession);
        if needs_key && current_key.is_none() {
            return Err(JsError::new("hardware_key_needed: this device's key store opens only with its security key"));
        }
        let possession = match (security_key, new_key) {
            ("keep", None) if needs_key => current_key.clone().map(Segment::possession),
            ("keep", None) | ("remove", None) => None,
            ("new", Some(key)) => Some(key),
            _ => {
                return Err(JsError::new(
                    "bad_request: security_key is keep or remove (no new secret), or new with the new key's secret",
                ));
            }
        };
        let mut current = vec![
            Segment::device(device.clone()),
            self.store.knowledge_segment(passphrase.as_bytes()).map_err(js_error)?,
        ];
        current.extend(current_key.filter(|_| needs_key).map(Segment::possession));
        self.store.check(&current).map_err(|e| segments_error(e, needs_key))?;
        drop(current);
        let new_passphrase = if new_passphrase.is_empty() { passphrase } else { new_passphrase };
        let kdf = KnowledgeKdf::generate(KdfParams::default()).map_err(js_error)?;
        let mut segments =
            vec![Segment::device(device), Segment::knowledge(new_passphrase.as_bytes(), &kdf).map_err(js_error)?];
        segments.extend(possession);
        self.store.change_segments(&segments).map_err(js_error)
    }

    /// Whether this device's key store needs a security key to open.
    #[wasm_bindgen(getter, js_name = hasHardwareKey)]
    pub fn has_hardware_key(&self) -> bool {
        self.store.required_kinds().contains(&SegmentKind::Possession)
    }

    /// The next encrypted record to write or delete (write them all in one IndexedDB transaction).
    #[wasm_bindgen(js_name = nextWrite)]
    pub fn next_write(&mut self) -> Option<StoredRecord> {
        let writes = &mut self.store.storage_mut().writes;
        let name = writes.keys().next()?.clone();
        let value = writes.remove(&name)?;
        Some(StoredRecord { name, value })
    }

    /// The records of the last step are written: what the bubble kept for this member while it was away, and
    /// that this state includes, may now be deleted there (a `received` frame is queued; send `pollTransmit`).
    pub fn saved(&mut self, now_ms: f64) {
        self.session.saved(now_ms as u64);
    }

    /// The next notice for the page, as JSON text with a `type` field.
    #[wasm_bindgen(js_name = nextNotice)]
    pub fn next_notice(&mut self) -> Option<String> {
        if self.notices.is_empty() {
            return None;
        }
        Some(self.notices.remove(0).to_string())
    }

    /// The WebSocket opened.
    pub fn connected(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.session.connected(now_ms as u64);
        self.settle()
    }

    /// The WebSocket closed.
    pub fn disconnected(&mut self, close_code: Option<u16>, now_ms: f64) -> Result<(), JsError> {
        self.session.disconnected(close_code, now_ms as u64);
        self.settle()
    }

    /// A text message from the WebSocket. A protocol violation is an error (a `disconnect` notice was queued).
    #[wasm_bindgen(js_name = handleText)]
    pub fn handle_text(&mut self, text: &str, now_ms: f64) -> Result<(), JsError> {
        let result = self.session.handle_text(text.as_bytes(), now_ms as u64).map_err(js_error);
        self.settle()?;
        result
    }

    /// Timers: call at `pollTimeout()`.
    #[wasm_bindgen(js_name = handleTimeout)]
    pub fn handle_timeout(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.session.handle_timeout(now_ms as u64);
        self.settle()
    }

    /// When to call `handleTimeout`, if ever (ms since the epoch).
    #[wasm_bindgen(js_name = pollTimeout)]
    pub fn poll_timeout(&self) -> Option<f64> {
        self.session.poll_timeout().map(|t| t as f64)
    }

    /// The next text frame to write to the WebSocket.
    #[wasm_bindgen(js_name = pollTransmit)]
    pub fn poll_transmit(&mut self) -> Option<String> {
        self.session.poll_transmit()
    }

    /// Starts (or resumes) the 1:1 conversation with a member of the directory.
    #[wasm_bindgen(js_name = startDirect)]
    pub fn start_direct(&mut self, peer: &str, now_ms: f64) -> Result<(), JsError> {
        let peer = member_id(peer)?;
        if self.session.client().direct_conversation(peer).is_some() {
            return Ok(());
        }
        self.opened.insert(peer);
        self.act(now_ms, |c| c.start_direct(peer))
    }

    /// Creates a group with `members` (JSON array of member ids); its id.
    #[wasm_bindgen(js_name = createGroup)]
    pub fn create_group(&mut self, name: &str, members: &str, now_ms: f64) -> Result<String, JsError> {
        let members: Vec<MemberId> = serde_json::from_str(members).map_err(js_error)?;
        self.act(now_ms, |c| c.create_group(name, &members)).map(|id| id.to_string())
    }

    /// Adds a member to a group.
    #[wasm_bindgen(js_name = addMember)]
    pub fn add_member(&mut self, conversation_id: &str, member: &str, now_ms: f64) -> Result<(), JsError> {
        let (id, member) = (conversation(conversation_id)?, member_id(member)?);
        self.act(now_ms, |c| c.add_member(id, member))
    }

    /// Removes a member from a group.
    #[wasm_bindgen(js_name = removeMember)]
    pub fn remove_member(&mut self, conversation_id: &str, member: &str, now_ms: f64) -> Result<(), JsError> {
        let (id, member) = (conversation(conversation_id)?, member_id(member)?);
        self.act(now_ms, |c| c.remove_member(id, member))
    }

    /// Leaves a conversation (its keys and history are destroyed here).
    pub fn leave(&mut self, conversation_id: &str, now_ms: f64) -> Result<(), JsError> {
        let id = conversation(conversation_id)?;
        self.act(now_ms, |c| c.leave(id))
    }

    /// Removes a contact: the 1:1 conversation's keys and history are destroyed on this device.
    #[wasm_bindgen(js_name = removeContact)]
    pub fn remove_contact(&mut self, peer: &str, now_ms: f64) -> Result<(), JsError> {
        let peer = member_id(peer)?;
        self.act(now_ms, |c| c.remove_contact(peer))
    }

    /// Sends a text; its message id.
    #[wasm_bindgen(js_name = sendText)]
    pub fn send_text(&mut self, conversation_id: &str, text: &str, now_ms: f64) -> Result<String, JsError> {
        let id = conversation(conversation_id)?;
        self.act(now_ms, |c| c.send_text(id, text)).map(String::from)
    }

    /// Edits one of our messages.
    pub fn edit(&mut self, conversation_id: &str, message: &str, text: &str, now_ms: f64) -> Result<(), JsError> {
        let (id, message) = (conversation(conversation_id)?, message_id(message)?);
        self.act(now_ms, |c| c.edit(id, message, text))
    }

    /// Deletes one of our messages, for everyone.
    pub fn delete(&mut self, conversation_id: &str, message: &str, now_ms: f64) -> Result<(), JsError> {
        let (id, message) = (conversation(conversation_id)?, message_id(message)?);
        self.act(now_ms, |c| c.delete(id, message))
    }

    /// Tells the others these messages were read (JSON array of message ids).
    #[wasm_bindgen(js_name = markRead)]
    pub fn mark_read(&mut self, conversation_id: &str, messages: &str, now_ms: f64) -> Result<(), JsError> {
        let id = conversation(conversation_id)?;
        let ids: Vec<MessageId> = serde_json::from_str(messages).map_err(js_error)?;
        self.act(now_ms, |c| c.mark_read(id, ids))
    }

    /// Typing indicator.
    pub fn typing(&mut self, conversation_id: &str, typing: bool, now_ms: f64) -> Result<(), JsError> {
        let id = conversation(conversation_id)?;
        self.act(now_ms, |c| c.typing(id, typing))
    }

    /// The disappearing-message timer (seconds; 0 turns it off).
    #[wasm_bindgen(js_name = setTimer)]
    pub fn set_timer(&mut self, conversation_id: &str, seconds: u32, now_ms: f64) -> Result<(), JsError> {
        let id = conversation(conversation_id)?;
        self.act(now_ms, |c| c.set_timer(id, (seconds > 0).then_some(seconds)))
    }

    /// The 60-digit safety number with a member of the directory.
    #[wasm_bindgen(js_name = safetyNumber)]
    pub fn safety_number(&self, peer: &str) -> Result<String, JsError> {
        let key = self.directory_key(&member_id(peer)?)?;
        Ok(safety_number(&self.public_key, key))
    }

    /// Marks a contact's current key as verified (the safety numbers matched), or clears the mark.
    #[wasm_bindgen(js_name = setVerified)]
    pub fn set_verified(&mut self, peer: &str, verified: bool) -> Result<(), JsError> {
        let peer = member_id(peer)?;
        if verified {
            let key = self.directory_key(&peer)?.to_string();
            self.verified.insert(peer, key);
        } else {
            self.verified.remove(&peer);
        }
        let bytes = serde_json::to_vec(&self.verified).map_err(js_error)?;
        self.store.put(RECORD_VERIFIED, &bytes).map_err(js_error)
    }

    /// The ICE servers signaling handed out (the bubble's TURN, with short-lived credentials), as the JSON
    /// array `RTCPeerConnection` takes.
    #[wasm_bindgen(js_name = iceServers)]
    pub fn ice_servers(&self) -> String {
        let servers: Vec<Value> = self
            .session
            .signaling()
            .ice_servers()
            .iter()
            .map(|s| json!({"urls": s.urls, "username": s.username, "credential": s.credential}))
            .collect();
        Value::Array(servers).to_string()
    }

    /// Offers a connection to `peer`: `sdp` is the page's offer with the candidates gathered so far (the rest
    /// follow with [`Member::send_candidate`]); its single
    /// `a=fingerprint` is announced inside MLS as the only certificate the contact may accept from us.
    #[wasm_bindgen(js_name = startCall)]
    pub fn start_call(&mut self, peer: &str, sdp: &str, now_ms: f64) -> Result<(), JsError> {
        let (peer, fingerprint) = (member_id(peer)?, single_fingerprint(sdp)?);
        self.act(now_ms, |c| c.start_call(peer, sdp, &fingerprint)).map(drop)
    }

    /// Answers the contact's offer with the page's answer (candidates gathered later follow).
    #[wasm_bindgen(js_name = answerCall)]
    pub fn answer_call(&mut self, peer: &str, sdp: &str, now_ms: f64) -> Result<(), JsError> {
        let (peer, fingerprint) = (member_id(peer)?, single_fingerprint(sdp)?);
        self.act(now_ms, |c| c.answer_call(peer, sdp, &fingerprint))
    }

    /// A candidate the page gathered after its offer or answer left (one `candidate:` line), for `peer`.
    #[wasm_bindgen(js_name = sendCandidate)]
    pub fn send_candidate(&mut self, peer: &str, candidate: &str, now_ms: f64) -> Result<(), JsError> {
        let peer = member_id(peer)?;
        self.act(now_ms, |c| c.send_candidate(peer, candidate))
    }

    /// The certificate (DER) the contact's DTLS handshake presented: true only if it is the one announced
    /// inside MLS. On false the page must close the connection (the member is told).
    #[wasm_bindgen(js_name = verifyDtls)]
    pub fn verify_dtls(&mut self, peer: &str, certificate: &[u8], now_ms: f64) -> Result<bool, JsError> {
        let (peer, actual) = (member_id(peer)?, Fingerprint::of_certificate(certificate));
        let bound = self.act(now_ms, |c| Ok(c.verify_dtls(peer, &actual)))?;
        if !bound {
            // The member is told: someone answered the connection with a certificate the contact never announced.
            self.notices.push(json!({"type": "linkRefused", "peer": peer.to_string()}));
        }
        Ok(bound)
    }

    /// The DataChannel with `peer` opened (after [`Member::verify_dtls`]) or closed: messages to it go over
    /// the channel while it is open, through the relay otherwise.
    pub fn channel(&mut self, peer: &str, open: bool, now_ms: f64) -> Result<(), JsError> {
        let peer = member_id(peer)?;
        self.session.channel(peer, open, now_ms as u64);
        self.settle()
    }

    /// Bytes that arrived on the DataChannel with `peer`.
    #[wasm_bindgen(js_name = handleChannel)]
    pub fn handle_channel(&mut self, peer: &str, bytes: &[u8], now_ms: f64) -> Result<(), JsError> {
        let peer = member_id(peer)?;
        self.session.handle_channel(peer, bytes, now_ms as u64);
        self.settle()
    }

    /// The next envelope to send on a DataChannel (MLS ciphertext).
    #[wasm_bindgen(js_name = nextChannelSend)]
    pub fn next_channel_send(&mut self) -> Option<ChannelSend> {
        self.channel_out.pop_front().map(|(to, bytes)| ChannelSend { to: to.to_string(), bytes })
    }

    /// Ends the connection with `peer` (tells it; its channel, if any, is closed by the page).
    pub fn hangup(&mut self, peer: &str, now_ms: f64) -> Result<(), JsError> {
        let peer = member_id(peer)?;
        self.act(now_ms, |c| c.hangup(peer))
    }

    /// Rings a contact for an audio (or video) call; the call's id.
    pub fn ring(&mut self, peer: &str, video: bool, now_ms: f64) -> Result<String, JsError> {
        let peer = member_id(peer)?;
        self.act(now_ms, |c| c.ring(peer, video)).map(String::from)
    }

    /// Accepts or declines a contact's ring.
    #[wasm_bindgen(js_name = answerRing)]
    pub fn answer_ring(&mut self, peer: &str, ring: &str, accept: bool, now_ms: f64) -> Result<(), JsError> {
        let (peer, ring) = (member_id(peer)?, message_id(ring)?);
        self.act(now_ms, |c| c.answer_ring(peer, ring, accept))
    }

    /// Ends a call: `busy` when another call is under way, hung up otherwise.
    #[wasm_bindgen(js_name = endRing)]
    pub fn end_ring(&mut self, peer: &str, ring: &str, busy: bool, now_ms: f64) -> Result<(), JsError> {
        let (peer, ring) = (member_id(peer)?, message_id(ring)?);
        let reason = if busy { EndReason::Busy } else { EndReason::HungUp };
        self.act(now_ms, |c| c.end_ring(peer, ring, reason))
    }

    /// Rings everyone in a group conversation (who may each join); the call's id. Refused while a call is
    /// under way there (join it), or where the bubble forbids calls.
    #[wasm_bindgen(js_name = ringGroup)]
    pub fn ring_group(&mut self, group: &str, video: bool, now_ms: f64) -> Result<String, JsError> {
        let group = conversation(group)?;
        self.act(now_ms, |c| c.ring_in(group, video)).map(String::from)
    }

    /// Joins the call under way in a group (refused when it is full: 4 with video, 8 audio-only).
    #[wasm_bindgen(js_name = joinGroupCall)]
    pub fn join_group_call(&mut self, group: &str, ring: &str, now_ms: f64) -> Result<(), JsError> {
        let (group, ring) = (conversation(group)?, message_id(ring)?);
        self.act(now_ms, |c| c.answer_ring_in(group, ring, true))
    }

    /// Leaves the call of a group (the others go on).
    #[wasm_bindgen(js_name = leaveGroupCall)]
    pub fn leave_group_call(&mut self, group: &str, ring: &str, now_ms: f64) -> Result<(), JsError> {
        let (group, ring) = (conversation(group)?, message_id(ring)?);
        self.act(now_ms, |c| c.end_ring_in(group, ring, EndReason::HungUp))
    }

    /// The other members of a group conversation (hex ids, as a JSON array): the worker offers a file sent to
    /// the group to each of them.
    #[wasm_bindgen(js_name = groupMembers)]
    pub fn group_members(&self, group: &str) -> Result<String, JsError> {
        let group = conversation(group)?;
        let client = self.session.client();
        let is_group = client
            .conversations()
            .iter()
            .any(|(id, kind)| *id == group && matches!(kind, Some(ConversationKind::Group { .. })));
        if !is_group {
            return Err(JsError::new("no such group"));
        }
        let members = client.members(group).map_err(js_error)?;
        serde_json::to_string(&members.iter().map(ToString::to_string).collect::<Vec<_>>()).map_err(js_error)
    }

    /// Whether the 1:1 conversation with `peer` is set up (a file can be offered to them).
    #[wasm_bindgen(js_name = hasDirect)]
    pub fn has_direct(&self, peer: &str) -> Result<bool, JsError> {
        Ok(self.session.client().direct_conversation(member_id(peer)?).is_some())
    }

    /// Offers a file to the contact of a 1:1 conversation: `sha256` (hex) from [`FileHash`] over the same
    /// bytes. With `group`, the file is one sent to that group (the worker offers it to each member in turn,
    /// over each pair's conversation) and shown there. The transfer's id (hex).
    #[wasm_bindgen(js_name = offerFile)]
    pub fn offer_file(
        &mut self,
        peer: &str,
        name: &str,
        size: f64,
        sha256: &str,
        group: Option<String>,
        now_ms: f64,
    ) -> Result<String, JsError> {
        let peer = member_id(peer)?;
        let digest = parse_sha256(sha256)?;
        if !(0.0..=9.0e15).contains(&size) || size.fract() != 0.0 {
            return Err(JsError::new("a file size is a whole number of bytes"));
        }
        let size = size as u64;
        match group {
            None => self.act(now_ms, |c| c.offer_file(peer, name, size, digest)),
            Some(group) => {
                let group = conversation(&group)?;
                self.act(now_ms, |c| c.offer_group_file(group, peer, name, size, digest))
            }
        }
        .map(|t| hex(&t.0))
    }

    /// Accepts an offered file; its chunks come as [`Member::next_sealed_chunk`].
    #[wasm_bindgen(js_name = acceptFile)]
    pub fn accept_file(&mut self, transfer: &str, now_ms: f64) -> Result<(), JsError> {
        let t = transfer_id(transfer)?;
        self.act(now_ms, |c| c.accept_file(t))
    }

    /// Declines an offered file, or stops a transfer under way (the contact is told).
    #[wasm_bindgen(js_name = cancelFile)]
    pub fn cancel_file(&mut self, transfer: &str, now_ms: f64) -> Result<(), JsError> {
        let t = transfer_id(transfer)?;
        self.act(now_ms, |c| c.cancel_file(t))
    }

    /// Pauses or resumes a transfer (the contact is told).
    #[wasm_bindgen(js_name = holdFile)]
    pub fn hold_file(&mut self, transfer: &str, held: bool, now_ms: f64) -> Result<(), JsError> {
        let t = transfer_id(transfer)?;
        self.act(now_ms, |c| c.hold_file(t, held))
    }

    /// Deletes a finished file: its key is destroyed (a `fileForgotten` notice tells the worker to delete the
    /// bytes).
    #[wasm_bindgen(js_name = forgetFile)]
    pub fn forget_file(&mut self, transfer: &str, now_ms: f64) -> Result<(), JsError> {
        let t = transfer_id(transfer)?;
        self.act(now_ms, |c| c.forget_file(t))
    }

    /// The next chunk of an outgoing file to read, if the window allows.
    #[wasm_bindgen(js_name = nextFileChunk)]
    pub fn next_file_chunk(&mut self, transfer: &str) -> Result<Option<ChunkWanted>, JsError> {
        let t = transfer_id(transfer)?;
        Ok(self.session.client_mut().next_file_chunk(t).map(|r| ChunkWanted {
            index: r.index,
            offset: r.offset as f64,
            len: r.len,
        }))
    }

    /// The chunk [`Member::next_file_chunk`] would hand out, without handing it out: the worker reads the file
    /// ahead asynchronously and takes a chunk only once its bytes are in memory.
    #[wasm_bindgen(js_name = peekFileChunk)]
    pub fn peek_file_chunk(&self, transfer: &str) -> Result<Option<ChunkWanted>, JsError> {
        let t = transfer_id(transfer)?;
        Ok(self.session.client().peek_file_chunk(t).map(|r| ChunkWanted {
            index: r.index,
            offset: r.offset as f64,
            len: r.len,
        }))
    }

    /// Seals chunk `index` (asked by [`Member::next_file_chunk`]) for the contact's DataChannel: it comes out
    /// of [`Member::next_channel_send`].
    #[wasm_bindgen(js_name = sealFileChunk)]
    pub fn seal_file_chunk(&mut self, transfer: &str, index: u32, plaintext: &[u8]) -> Result<(), JsError> {
        let t = transfer_id(transfer)?;
        let client = self.session.client_mut();
        let peer = client.file_peer(t).ok_or_else(|| JsError::new("no such transfer"))?;
        let frame = client.seal_file_chunk(t, index, plaintext).map_err(js_error)?;
        self.channel_out.push_back((peer, frame));
        Ok(())
    }

    /// The next chunk of an incoming file to keep at rest, sealed. Write it before sending anything else: the
    /// acknowledgement that goes with it tells the sender it is kept.
    #[wasm_bindgen(js_name = nextSealedChunk)]
    pub fn next_sealed_chunk(&mut self) -> Option<SealedChunk> {
        self.stored_out.pop_front()
    }

    /// After unlocking, before anything else: chunk `index` of an incoming file as it was kept at rest. An
    /// error means it did not open (torn storage): drop it and every later one; the sender resends them.
    /// Nothing is sent or saved until [`Member::finish_replay`].
    #[wasm_bindgen(js_name = replayFileChunk)]
    pub fn replay_file_chunk(&mut self, transfer: &str, index: u32, sealed: &[u8]) -> Result<(), JsError> {
        let t = transfer_id(transfer)?;
        self.session.client_mut().replay_file_chunk(t, index, sealed).map_err(js_error)
    }

    /// Every kept chunk was replayed: what the replay queued is sent (a transfer it completed tells the
    /// sender), and the state is saved once.
    #[wasm_bindgen(js_name = finishReplay)]
    pub fn finish_replay(&mut self, now_ms: f64) -> Result<(), JsError> {
        self.act(now_ms, |_| Ok(()))
    }

    /// Decrypts chunk `index` of a received file kept at rest (the key stays here).
    #[wasm_bindgen(js_name = openStoredChunk)]
    pub fn open_stored_chunk(&self, transfer: &str, index: u32, sealed: &[u8]) -> Result<Vec<u8>, JsError> {
        let t = transfer_id(transfer)?;
        self.session.client().open_stored_chunk(t, index, sealed).map_err(js_error)
    }

    /// How a transfer's file is cut: `{"size", "chunkSize", "chunks", "sha256"}` (hex), as JSON.
    #[wasm_bindgen(js_name = fileLayout)]
    pub fn file_layout(&self, transfer: &str) -> Result<String, JsError> {
        let t = transfer_id(transfer)?;
        let offer = self.session.client().file_offer(t).ok_or_else(|| JsError::new("no such transfer"))?;
        Ok(json!({"size": offer.size, "chunkSize": offer.chunk_size, "chunks": offer.chunks, "sha256": hex(&offer.sha256)})
            .to_string())
    }

    /// Everything the member's screen shows, as JSON: who we are, the signaling state, the directory slice
    /// (with each contact's public key, for key-change warnings) and the conversations with their histories.
    pub fn view(&self) -> String {
        let signaling = self.session.signaling();
        let state = match (signaling.is_ready(), signaling.stopped()) {
            (_, Some(code)) => format!("stopped:{}", code.as_str()),
            (true, None) => "ready".to_owned(),
            (false, None) => "connecting".to_owned(),
        };
        let directory: Vec<Value> = signaling
            .directory()
            .values()
            .map(|e| {
                let key = e.public_key.to_string();
                let verified_key = self.verified.get(&e.member);
                json!({
                    "member": e.member.to_string(),
                    "displayName": e.display_name,
                    "categories": e.categories,
                    "online": e.online,
                    // Something we sent waits for them in the bubble.
                    "waiting": !e.online && self.waiting.contains(&e.member),
                    "verified": verified_key == Some(&key),
                    // A verified contact whose key is not the one compared: warn, never silently trust.
                    "keyChanged": verified_key.is_some_and(|k| *k != key),
                    "publicKey": key,
                })
            })
            .collect();
        let client = self.session.client();
        let conversations: Vec<Value> = client
            .conversations()
            .into_iter()
            .map(|(id, kind)| {
                let members: Vec<String> =
                    client.members(id).unwrap_or_default().iter().map(ToString::to_string).collect();
                let (kind, name) = match kind {
                    Some(ConversationKind::Direct) => ("direct", None),
                    Some(ConversationKind::Group { name }) => ("group", Some(name)),
                    None => ("pending", None),
                };
                json!({
                    "id": id,
                    "kind": kind,
                    "name": name,
                    "members": members,
                    "history": client.history(id).unwrap_or_default(),
                    "timer": client.timer(id).ok().flatten(),
                    // The group's call under way, if any: who is in it (ids only), so a member can join.
                    "call": client.group_call(id).map(|c| json!({
                        "ring": c.ring,
                        "video": c.video,
                        "caller": c.caller.to_string(),
                        "participants": c.participants.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    })),
                })
            })
            .collect();
        let files: Vec<Value> = client
            .files()
            .into_iter()
            .map(|f| {
                json!({
                    "transfer": hex(&f.transfer.0),
                    "conversation": f.conversation.to_string(),
                    "group": f.group.map(|g| g.to_string()),
                    "peer": f.peer.to_string(),
                    "outgoing": f.outgoing,
                    "name": f.name,
                    "size": f.size,
                    "sha256": f.sha256,
                    "state": f.state,
                    "bytes": f.bytes,
                    "heldByUs": f.held_by_us,
                    "heldByThem": f.held_by_them,
                    "at": f.at_ms,
                })
            })
            .collect();
        json!({
            "me": {"member": self.profile.member.to_string(), "displayName": self.profile.display_name,
                   "bubble": self.profile.bubble, "publicKey": self.public_key.to_string()},
            "signaling": state,
            "directory": directory,
            "conversations": conversations,
            "policy": self.session.signaling().policy(),
            // How long the bubble keeps what is sent to someone away (null: it keeps nothing).
            "mailboxTtlMs": self.session.signaling().mailbox_ttl_ms(),
            // Envelopes sent to us that expired before we came back.
            "missedWhileAway": self.missed,
            "fingerprint": self.fingerprint,
            "files": files,
        })
        .to_string()
    }
}

fn parse_sha256(text: &str) -> Result<[u8; 32], JsError> {
    let bad = || JsError::new("a SHA-256 is 64 lowercase hex characters");
    let (first, second) = text.split_at_checked(32).ok_or_else(bad)?;
    let mut out = [0u8; 32];
    out[..16].copy_from_slice(&hex16(first).ok_or_else(bad)?);
    out[16..].copy_from_slice(&hex16(second).ok_or_else(bad)?);
    Ok(out)
}
