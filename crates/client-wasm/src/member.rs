//! A member's whole client in the worker: the identity key, the key store and the [`Session`] (signaling and
//! conversations). The worker feeds the WebSocket and the clock in, writes the encrypted records this class
//! hands out to IndexedDB, and posts [`Member::view`] to the page.
//!
//! The identity key is made here and stays here; the key store's master key exists only while a `Member` is
//! alive (free it to lock). What crosses to JavaScript: public keys and ids, the directory slice, conversation
//! histories for the member's own screen, and key-store records already encrypted.

use std::collections::BTreeMap;

use peerbubble_client_core::fingerprint::{Fingerprint, sdp_fingerprints};
use peerbubble_client_core::keystore::{
    KdfParams, KeyStore, KeyStoreError, KnowledgeKdf, Segment, Storage, StorageError,
};
use peerbubble_client_core::message::{CallSignal, ConversationKind, MessageId};
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
    /// by a non-extractable WebCrypto key; zeroed here) and the passphrase (Argon2id with the native client's
    /// costs). Consumes the enrollment.
    pub fn finish(self, enrolled: &str, device_secret: &mut [u8], passphrase: &str) -> Result<Member, JsError> {
        let enrolled: Enrolled =
            serde_json::from_str(enrolled).map_err(|e| JsError::new(&format!("unexpected enrollment answer: {e}")))?;
        let member: MemberId = enrolled.member.parse().map_err(js_error)?;
        if member != self.key.public_key().member_id() || enrolled.bubble != self.invite.bubble() {
            return Err(JsError::new("the enrollment answer is for another key or bubble"));
        }
        let kdf = KnowledgeKdf::generate(KdfParams::default()).map_err(js_error)?;
        let knowledge = Segment::knowledge(passphrase.as_bytes(), &kdf).map_err(js_error)?;
        let mut store =
            KeyStore::create(Recording::default(), &[device_segment(device_secret)?, knowledge]).map_err(js_error)?;
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

    /// Unlocks with the device secret (zeroed here) and the passphrase. A wrong passphrase is an error
    /// (`wrong_segments` in its text) and changes nothing stored.
    pub fn unlock(self, device_secret: &mut [u8], passphrase: &str) -> Result<Member, JsError> {
        let device = device_segment(device_secret)?;
        let mut store = KeyStore::open(self.storage).map_err(js_error)?;
        let knowledge = store.knowledge_segment(passphrase.as_bytes()).map_err(js_error)?;
        store.unlock(&[device, knowledge]).map_err(|e| match e {
            KeyStoreError::WrongSegments => {
                JsError::new("wrong_segments: the passphrase is not the one of this device")
            }
            other => js_error(other),
        })?;
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

    /// The bytes (MLS ciphertext).
    #[wasm_bindgen(getter)]
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

impl Member {
    fn assemble(store: KeyStore<Recording>, key: IdentityKey, profile: Profile, client: Client) -> Self {
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
                SessionEvent::Core(Event::ConversationReady {
                    kind: ConversationKind::Direct, ref members, ..
                }) => {
                    if let [peer] = members.as_slice() {
                        self.want_channel(*peer);
                    }
                    self.notices.push(notice_json(event));
                }
                SessionEvent::Signal(SignalEvent::Presence { member, online: true }) => {
                    self.want_channel(member);
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
        let online = self.session.signaling().directory().get(&peer).is_some_and(|e| e.online);
        if self.profile.member < peer && online && self.session.client().direct_conversation(peer).is_some() {
            self.notices.push(json!({"type": "rtcWanted", "peer": peer.to_string()}));
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
        // `a=fingerprint` already checked against the announced one. Candidates travel inside the SDP (both
        // edges gather before they offer or answer), so trickled ones are not used.
        Event::Call { from, signal: CallSignal::Offer { sdp, .. }, .. } => {
            json!({"type": "rtcOffer", "peer": from.to_string(), "sdp": sdp})
        }
        Event::Call { from, signal: CallSignal::Answer { sdp, .. }, .. } => {
            json!({"type": "rtcAnswer", "peer": from.to_string(), "sdp": sdp})
        }
        Event::Call { from, signal: CallSignal::Hangup { .. }, .. } => {
            json!({"type": "rtcHangup", "peer": from.to_string()})
        }
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

    /// The next encrypted record to write or delete (write them all in one IndexedDB transaction).
    #[wasm_bindgen(js_name = nextWrite)]
    pub fn next_write(&mut self) -> Option<StoredRecord> {
        let writes = &mut self.store.storage_mut().writes;
        let name = writes.keys().next()?.clone();
        let value = writes.remove(&name)?;
        Some(StoredRecord { name, value })
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

    /// Offers a connection to `peer`: `sdp` is the page's complete offer (candidates gathered); its single
    /// `a=fingerprint` is announced inside MLS as the only certificate the contact may accept from us.
    #[wasm_bindgen(js_name = startCall)]
    pub fn start_call(&mut self, peer: &str, sdp: &str, now_ms: f64) -> Result<(), JsError> {
        let (peer, fingerprint) = (member_id(peer)?, single_fingerprint(sdp)?);
        self.act(now_ms, |c| c.start_call(peer, sdp, &fingerprint)).map(drop)
    }

    /// Answers the contact's offer with the page's complete answer.
    #[wasm_bindgen(js_name = answerCall)]
    pub fn answer_call(&mut self, peer: &str, sdp: &str, now_ms: f64) -> Result<(), JsError> {
        let (peer, fingerprint) = (member_id(peer)?, single_fingerprint(sdp)?);
        self.act(now_ms, |c| c.answer_call(peer, sdp, &fingerprint))
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
            "fingerprint": self.fingerprint,
        })
        .to_string()
    }
}
