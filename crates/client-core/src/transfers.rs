//! A member's file transfers, as one sub-machine of [`crate::Client`]: offers waiting for the member's answer,
//! files coming in and going out, pauses asked by either side, and the files received and kept encrypted at
//! rest with their keys. The client exports each transfer's key from MLS, carries the control messages queued
//! here inside MLS, and routes chunk frames from the DataChannel; the edge reads and writes the bytes.
//!
//! What it must never do: hand out a chunk while either side holds the transfer, accept control messages for
//! a transfer from anyone but its contact, keep a file key after its conversation is gone, or print a file
//! name or key.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use peerbubble_proto::MemberId;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::client::{ConversationId, Event};
use crate::files::{
    Cancel, CancelReason, ChunkRequest, FileControl, FileError, FileKey, FileOffer, Hold, IncomingTransfer, Opened,
    OutgoingTransfer, TransferConfig, TransferId, open_stored_chunk, parse_chunk_frame,
};

/// File offers waiting for an answer, at most.
const MAX_PENDING_OFFERS: usize = 64;

/// Who holds a transfer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Holds {
    ours: bool,
    theirs: bool,
}

impl Holds {
    fn any(self) -> bool {
        self.ours || self.theirs
    }
}

#[derive(Debug)]
struct Asked {
    peer: MemberId,
    conversation: ConversationId,
    offer: FileOffer,
    key: FileKey,
    at_ms: u64,
}

#[derive(Debug)]
struct Incoming {
    peer: MemberId,
    conversation: ConversationId,
    transfer: IncomingTransfer,
    key: FileKey,
    holds: Holds,
    at_ms: u64,
}

#[derive(Debug)]
struct Outgoing {
    peer: MemberId,
    conversation: ConversationId,
    transfer: OutgoingTransfer,
    key: FileKey,
    holds: Holds,
    /// The receiver accepted (or resumed) it.
    accepted: bool,
    at_ms: u64,
}

/// A finished transfer: received (its bytes are kept sealed by the edge, this key opens them) or sent.
#[derive(Debug)]
struct Kept {
    peer: MemberId,
    conversation: ConversationId,
    offer: FileOffer,
    /// Received files only.
    key: Option<FileKey>,
    outgoing: bool,
    at_ms: u64,
}

/// Where a transfer is, for the member's screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FileState {
    /// A contact offers it; the member has not answered.
    Asked,
    /// We offered it; the contact has not answered.
    Offered,
    /// Chunks are moving (or waiting for the connection, or held).
    Moving,
    /// Received whole with the right SHA-256, or confirmed so by the receiver.
    Done,
}

/// One transfer as the member's screen shows it.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct FileStatus {
    /// The transfer.
    pub transfer: TransferId,
    /// Its 1:1 conversation.
    pub conversation: ConversationId,
    /// The group it was sent to, where it is shown (checked on arrival: both members are in it).
    pub group: Option<ConversationId>,
    /// The contact.
    pub peer: MemberId,
    /// We send it.
    pub outgoing: bool,
    /// File name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// Where it is.
    pub state: FileState,
    /// Bytes received (receiver) or confirmed by the receiver (sender).
    pub bytes: u64,
    /// The member paused it.
    pub held_by_us: bool,
    /// The contact paused it.
    pub held_by_them: bool,
    /// When it was offered, on this member's clock.
    pub at_ms: u64,
}

impl fmt::Debug for FileStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStatus")
            .field("transfer", &self.transfer)
            .field("outgoing", &self.outgoing)
            .field("name", &crate::message::Redacted(self.name.len()))
            .field("size", &self.size)
            .field("state", &self.state)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// A file key as the key store keeps it (inside an encrypted record): base64url, zeroized after use.
#[derive(Clone)]
struct SavedKey(FileKey);

impl Serialize for SavedKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        let text = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.expose_secret()));
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for SavedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use base64::Engine;
        let text = Zeroizing::new(String::deserialize(d)?);
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(text.as_bytes())
                .map_err(serde::de::Error::custom)?,
        );
        FileKey::from_slice(&bytes).map(SavedKey).map_err(serde::de::Error::custom)
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum SavedKind {
    Asked,
    Incoming,
    Outgoing { accepted: bool },
    Received,
    Sent,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedTransfer {
    kind: SavedKind,
    peer: MemberId,
    conversation: ConversationId,
    offer: FileOffer,
    key: Option<SavedKey>,
    at_ms: u64,
    /// The member paused it (a transfer under way).
    #[serde(default)]
    held: bool,
}

/// The transfers of one member.
pub struct Transfers {
    config: TransferConfig,
    asked: BTreeMap<TransferId, Asked>,
    incoming: BTreeMap<TransferId, Incoming>,
    outgoing: BTreeMap<TransferId, Outgoing>,
    kept: BTreeMap<TransferId, Kept>,
    /// Control messages for the client to send inside MLS, in order.
    controls: VecDeque<(ConversationId, FileControl)>,
    /// Acknowledgement frames for the contact's DataChannel.
    frames: VecDeque<(MemberId, Vec<u8>)>,
    events: VecDeque<Event>,
}

impl fmt::Debug for Transfers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transfers")
            .field("asked", &self.asked.len())
            .field("incoming", &self.incoming.len())
            .field("outgoing", &self.outgoing.len())
            .field("kept", &self.kept.len())
            .finish_non_exhaustive()
    }
}

impl Default for Transfers {
    fn default() -> Self {
        Self::new(TransferConfig::default())
    }
}

impl Transfers {
    /// No transfers.
    pub fn new(config: TransferConfig) -> Self {
        Self {
            config,
            asked: BTreeMap::new(),
            incoming: BTreeMap::new(),
            outgoing: BTreeMap::new(),
            kept: BTreeMap::new(),
            controls: VecDeque::new(),
            frames: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Tuning for transfers started or accepted from now on.
    pub fn set_config(&mut self, config: TransferConfig) {
        self.config = config;
    }

    /// The next control message to send inside MLS.
    pub fn poll_control(&mut self) -> Option<(ConversationId, FileControl)> {
        self.controls.pop_front()
    }

    /// The next frame for a contact's DataChannel (acknowledgements).
    pub fn poll_frame(&mut self) -> Option<(MemberId, Vec<u8>)> {
        self.frames.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Starts sending a file whose key the client exported: queues the offer.
    pub fn offer(
        &mut self,
        peer: MemberId,
        conversation: ConversationId,
        file: (TransferId, &str, u64, [u8; 32]),
        group: Option<ConversationId>,
        key: FileKey,
        now_ms: u64,
    ) -> Result<(), FileError> {
        let (transfer, name, size, sha256) = file;
        let outgoing = OutgoingTransfer::new(transfer, name, size, sha256, &key, &self.config)?.in_group(group);
        self.controls.push_back((conversation, FileControl::Offer(outgoing.offer().clone())));
        self.outgoing.insert(
            transfer,
            Outgoing {
                peer,
                conversation,
                transfer: outgoing,
                key,
                holds: Holds::default(),
                accepted: false,
                at_ms: now_ms,
            },
        );
        Ok(())
    }

    /// Whether an offer with this id was already seen (a replay).
    pub fn knows(&self, transfer: TransferId) -> bool {
        self.asked.contains_key(&transfer)
            || self.incoming.contains_key(&transfer)
            || self.outgoing.contains_key(&transfer)
            || self.kept.contains_key(&transfer)
    }

    /// A contact's offer, validated, with the key the client exported for it.
    pub fn on_offer(
        &mut self,
        peer: MemberId,
        conversation: ConversationId,
        offer: FileOffer,
        key: FileKey,
        now_ms: u64,
    ) -> Result<(), String> {
        offer.validate(self.config.max_file_size).map_err(|e| format!("file offer refused: {e}"))?;
        if self.knows(offer.transfer) {
            return Err("file offer replayed".into());
        }
        if self.asked.len() >= MAX_PENDING_OFFERS {
            return Err("too many unanswered file offers; answer or decline some".into());
        }
        self.events.push_back(Event::FileOffered { conversation, from: peer, offer: offer.clone() });
        self.asked.insert(offer.transfer, Asked { peer, conversation, offer, key, at_ms: now_ms });
        Ok(())
    }

    /// The size of an offer waiting for the member's answer.
    pub fn asked_size(&self, transfer: TransferId) -> Option<u64> {
        self.asked.get(&transfer).map(|a| a.offer.size)
    }

    /// Accepts an offer: queues the accept; chunks follow.
    pub fn accept(&mut self, transfer: TransferId) -> Result<(), FileError> {
        let asked = self.asked.get(&transfer).ok_or(FileError::UnexpectedControl("no such file offer"))?;
        let incoming = IncomingTransfer::new(asked.offer.clone(), &asked.key, &self.config)?;
        let Some(Asked { peer, conversation, key, at_ms, .. }) = self.asked.remove(&transfer) else {
            return Err(FileError::UnexpectedControl("no such file offer"));
        };
        self.controls.push_back((conversation, FileControl::Accept(incoming.accept())));
        self.incoming
            .insert(transfer, Incoming { peer, conversation, transfer: incoming, key, holds: Holds::default(), at_ms });
        Ok(())
    }

    /// Stops a transfer in either direction, or declines an offer; the contact is told. A finished one cannot
    /// be cancelled (forget it instead).
    pub fn cancel(&mut self, transfer: TransferId) -> Result<(), FileError> {
        if let Some(a) = self.asked.remove(&transfer) {
            let cancel = Cancel { transfer, reason: CancelReason::Declined };
            self.controls.push_back((a.conversation, FileControl::Cancel(cancel)));
            self.events.push_back(Event::FileCancelled { transfer, reason: CancelReason::Declined });
            return Ok(());
        }
        if let Some(mut i) = self.incoming.remove(&transfer) {
            let cancel = i.transfer.cancel(CancelReason::Cancelled);
            self.controls.push_back((i.conversation, FileControl::Cancel(cancel)));
        } else if let Some(mut o) = self.outgoing.remove(&transfer) {
            let cancel = o.transfer.cancel(CancelReason::Cancelled);
            self.controls.push_back((o.conversation, FileControl::Cancel(cancel)));
        } else {
            return Err(FileError::UnexpectedControl("no such transfer under way"));
        }
        self.events.push_back(Event::FileCancelled { transfer, reason: CancelReason::Cancelled });
        // Bytes kept of a cancelled incoming file are of no use.
        self.events.push_back(Event::FileForgotten { transfer });
        Ok(())
    }

    /// Pauses (`held`) or resumes a transfer under way; the contact is told.
    pub fn hold(&mut self, transfer: TransferId, held: bool) -> Result<(), FileError> {
        let (conversation, holds) = if let Some(i) = self.incoming.get_mut(&transfer) {
            (i.conversation, &mut i.holds)
        } else if let Some(o) = self.outgoing.get_mut(&transfer) {
            (o.conversation, &mut o.holds)
        } else {
            return Err(FileError::UnexpectedControl("no such transfer under way"));
        };
        if holds.ours == held {
            return Ok(());
        }
        holds.ours = held;
        let go_on = !holds.any();
        self.controls.push_back((conversation, FileControl::Hold(Hold { transfer, held })));
        if go_on {
            self.sendable(transfer);
        }
        Ok(())
    }

    /// Forgets a finished file: its key goes; the edge deletes the bytes it kept.
    pub fn forget(&mut self, transfer: TransferId) -> Result<(), FileError> {
        self.kept.remove(&transfer).ok_or(FileError::UnexpectedControl("no such file"))?;
        self.events.push_back(Event::FileForgotten { transfer });
        Ok(())
    }

    /// Everything of a conversation that is gone: transfers stop without a word (there is no group to say it
    /// in) and kept files are forgotten.
    pub fn forget_conversation(&mut self, conversation: ConversationId) {
        let gone_peers: Vec<MemberId> =
            self.incoming.values().filter(|i| i.conversation == conversation).map(|i| i.peer).collect();
        self.asked.retain(|_, a| a.conversation != conversation);
        let ours = |c: &ConversationId| *c == conversation;
        let gone: Vec<TransferId> = (self.incoming.iter().filter(|(_, i)| ours(&i.conversation)).map(|(t, _)| *t))
            .chain(self.outgoing.iter().filter(|(_, o)| ours(&o.conversation)).map(|(t, _)| *t))
            .chain(self.kept.iter().filter(|(_, k)| ours(&k.conversation)).map(|(t, _)| *t))
            .collect();
        for transfer in &gone {
            self.incoming.remove(transfer);
            self.outgoing.remove(transfer);
            self.kept.remove(transfer);
        }
        self.controls.retain(|(c, _)| *c != conversation);
        self.frames.retain(|(peer, _)| !gone_peers.contains(peer));
        for transfer in gone {
            self.events.push_back(Event::FileForgotten { transfer });
        }
    }

    /// A group is gone (left, removed from it, closed): the files sent to it stop, and their senders or
    /// receivers are told in each pair's 1:1 conversation; the ones kept are forgotten.
    pub fn forget_group(&mut self, group: &ConversationId) {
        let of_group = |offer: &FileOffer| offer.group.as_ref() == Some(group);
        let moving: Vec<TransferId> = (self.asked.iter().filter(|(_, a)| of_group(&a.offer)).map(|(t, _)| *t))
            .chain(self.incoming.iter().filter(|(_, i)| of_group(i.transfer.offer())).map(|(t, _)| *t))
            .chain(self.outgoing.iter().filter(|(_, o)| of_group(o.transfer.offer())).map(|(t, _)| *t))
            .collect();
        for transfer in moving {
            let _ = self.cancel(transfer);
        }
        let kept: Vec<TransferId> = self.kept.iter().filter(|(_, k)| of_group(&k.offer)).map(|(t, _)| *t).collect();
        for transfer in kept {
            let _ = self.forget(transfer);
        }
    }

    /// The DataChannel with `member` opened: incoming transfers cut by a dropped connection (or a restart)
    /// ask the sender to go on from where they are.
    pub fn channel_opened(&mut self, member: MemberId) {
        for i in self.incoming.values().filter(|i| i.peer == member && !i.transfer.is_complete()) {
            self.controls.push_back((i.conversation, FileControl::Resume(i.transfer.resume_point())));
        }
    }

    /// A control message from `from`, in `conversation` (the client checked it is their 1:1 conversation).
    pub fn on_control(&mut self, from: MemberId, control: FileControl) -> Result<(), String> {
        let transfer = control.transfer();
        if let FileControl::Hold(hold) = control {
            let holds = match (self.incoming.get_mut(&transfer), self.outgoing.get_mut(&transfer)) {
                (Some(i), _) if i.peer == from => &mut i.holds,
                (_, Some(o)) if o.peer == from => &mut o.holds,
                _ => return Err("hold for an unknown transfer".into()),
            };
            holds.theirs = hold.held;
            let go_on = !holds.any();
            self.events.push_back(Event::FileHeld { transfer, by: from, held: hold.held });
            if go_on {
                self.sendable(transfer);
            }
            return Ok(());
        }
        if let FileControl::Cancel(cancel) = control {
            if self.asked.get(&transfer).is_some_and(|a| a.peer == from) {
                self.asked.remove(&transfer);
                self.events.push_back(Event::FileCancelled { transfer, reason: cancel.reason });
                return Ok(());
            }
            if let Some(i) = self.incoming.get_mut(&transfer).filter(|i| i.peer == from) {
                let _ = i.transfer.on_cancel(cancel);
                self.incoming.remove(&transfer);
                self.events.push_back(Event::FileCancelled { transfer, reason: cancel.reason });
                self.events.push_back(Event::FileForgotten { transfer });
                return Ok(());
            }
        }
        let Some(o) = self.outgoing.get_mut(&transfer) else {
            return Err("control for an unknown transfer".into());
        };
        if o.peer != from {
            return Err("control for another member's transfer".into());
        }
        o.transfer.on_control(&control).map_err(|e| format!("file control refused: {e}"))?;
        match control {
            FileControl::Complete(_) => {
                if let Some(o) = self.outgoing.remove(&transfer) {
                    let kept = Kept {
                        peer: o.peer,
                        conversation: o.conversation,
                        offer: o.transfer.offer().clone(),
                        key: None,
                        outgoing: true,
                        at_ms: o.at_ms,
                    };
                    self.kept.insert(transfer, kept);
                }
                self.events.push_back(Event::FileSent { transfer });
            }
            FileControl::Cancel(cancel) => {
                self.outgoing.remove(&transfer);
                self.events.push_back(Event::FileCancelled { transfer, reason: cancel.reason });
            }
            FileControl::Accept(_) | FileControl::Resume(_) => {
                o.accepted = true;
                self.sendable(transfer);
            }
            _ => self.sendable(transfer),
        }
        Ok(())
    }

    fn sendable(&mut self, transfer: TransferId) {
        if let Some(o) = self.outgoing.get(&transfer)
            && !o.holds.any()
        {
            let progress = o.transfer.progress();
            self.events.push_back(Event::FileSendable { transfer, acked: progress.bytes, total: progress.total });
        }
    }

    /// A chunk frame from `from`'s DataChannel.
    pub fn on_chunk(&mut self, from: MemberId, bytes: &[u8]) -> Result<(), String> {
        let frame = parse_chunk_frame(bytes).map_err(|e| e.to_string())?;
        let transfer = frame.transfer;
        let i = self.incoming.get_mut(&transfer).ok_or("chunk of an unknown transfer")?;
        if i.peer != from {
            return Err("chunk of another member's transfer".into());
        }
        match i.transfer.open(bytes) {
            Ok(Opened::Chunk(r)) => {
                if let Some(ack) = r.ack {
                    let frame = i.transfer.ack_frame(ack).map_err(|e| e.to_string())?;
                    self.frames.push_back((from, frame));
                }
                let complete = r.complete;
                self.events.push_back(Event::FileChunk {
                    transfer,
                    index: r.index,
                    offset: r.offset,
                    plaintext: r.plaintext,
                    sealed: r.sealed,
                });
                if let Some(complete) = complete {
                    self.received(transfer, complete);
                }
                Ok(())
            }
            Ok(Opened::Duplicate { ack }) => {
                let frame = i.transfer.ack_frame(ack).map_err(|e| e.to_string())?;
                self.frames.push_back((from, frame));
                Ok(())
            }
            Err(e) => Err(format!("file chunk refused: {e}")),
        }
    }

    /// An acknowledgement frame from `from`'s DataChannel.
    pub fn on_ack_frame(&mut self, from: MemberId, bytes: &[u8]) -> Result<(), String> {
        let transfer = crate::files::ack_frame_transfer(bytes).map_err(|e| e.to_string())?;
        let o = self.outgoing.get_mut(&transfer).ok_or("acknowledgement of an unknown transfer")?;
        if o.peer != from {
            return Err("acknowledgement of another member's transfer".into());
        }
        o.transfer.on_ack_frame(bytes).map_err(|e| format!("file acknowledgement refused: {e}"))?;
        self.sendable(transfer);
        Ok(())
    }

    fn received(&mut self, transfer: TransferId, complete: crate::files::Complete) {
        if let Some(i) = self.incoming.remove(&transfer) {
            self.controls.push_back((i.conversation, FileControl::Complete(complete)));
            let kept = Kept {
                peer: i.peer,
                conversation: i.conversation,
                offer: i.transfer.offer().clone(),
                key: Some(i.key),
                outgoing: false,
                at_ms: i.at_ms,
            };
            self.kept.insert(transfer, kept);
            self.events.push_back(Event::FileReceived { transfer, sha256: complete.sha256 });
        }
    }

    /// After a restart, before any DataChannel opens: chunk `index` of an incoming transfer, as kept sealed at
    /// rest, brings the transfer back to where it was (see [`IncomingTransfer::replay`]). An error means the
    /// rest must come from the sender again (the chunk, and every later one, should be dropped).
    pub fn replay(&mut self, transfer: TransferId, index: u32, sealed: &[u8]) -> Result<(), FileError> {
        let i = self.incoming.get_mut(&transfer).ok_or(FileError::UnexpectedControl("no such transfer under way"))?;
        if let Some(complete) = i.transfer.replay(index, sealed)? {
            self.received(transfer, complete);
        }
        Ok(())
    }

    /// The next chunk of an outgoing file to read and seal, unless the window is full or it is held.
    pub fn next_chunk(&mut self, transfer: TransferId) -> Option<ChunkRequest> {
        let o = self.outgoing.get_mut(&transfer)?;
        if o.holds.any() {
            return None;
        }
        o.transfer.next_chunk()
    }

    /// What [`next_chunk`](Self::next_chunk) would hand out, without handing it out.
    pub fn peek_chunk(&self, transfer: TransferId) -> Option<ChunkRequest> {
        let o = self.outgoing.get(&transfer)?;
        if o.holds.any() {
            return None;
        }
        o.transfer.peek_chunk()
    }

    /// Seals a chunk into a DataChannel frame.
    pub fn seal(&mut self, transfer: TransferId, index: u32, plaintext: &[u8]) -> Result<Vec<u8>, FileError> {
        let o = self.outgoing.get_mut(&transfer).ok_or(FileError::UnexpectedControl("no such transfer"))?;
        o.transfer.seal(index, plaintext)
    }

    /// The contact of a transfer.
    pub fn peer(&self, transfer: TransferId) -> Option<MemberId> {
        self.outgoing
            .get(&transfer)
            .map(|o| o.peer)
            .or_else(|| self.incoming.get(&transfer).map(|i| i.peer))
            .or_else(|| self.asked.get(&transfer).map(|a| a.peer))
            .or_else(|| self.kept.get(&transfer).map(|k| k.peer))
    }

    /// The key of an incoming transfer, running or received (kept sealed at rest).
    pub fn key(&self, transfer: TransferId) -> Option<&FileKey> {
        self.incoming.get(&transfer).map(|i| &i.key).or_else(|| self.kept.get(&transfer).and_then(|k| k.key.as_ref()))
    }

    /// The offer of any transfer this member knows.
    pub fn offer_of(&self, transfer: TransferId) -> Option<&FileOffer> {
        self.outgoing
            .get(&transfer)
            .map(|o| o.transfer.offer())
            .or_else(|| self.incoming.get(&transfer).map(|i| i.transfer.offer()))
            .or_else(|| self.asked.get(&transfer).map(|a| &a.offer))
            .or_else(|| self.kept.get(&transfer).map(|k| &k.offer))
    }

    /// Decrypts chunk `index` of a received file kept sealed at rest (or of one still arriving).
    pub fn open_stored(&self, transfer: TransferId, index: u32, sealed: &[u8]) -> Result<Vec<u8>, FileError> {
        let (key, offer) = match (self.incoming.get(&transfer), self.kept.get(&transfer)) {
            (Some(i), _) => (&i.key, i.transfer.offer()),
            (None, Some(Kept { key: Some(key), offer, .. })) => (key, offer),
            _ => return Err(FileError::UnexpectedControl("no such received file")),
        };
        open_stored_chunk(key, offer, index, sealed)
    }

    /// Every transfer this member knows, oldest first.
    pub fn list(&self) -> Vec<FileStatus> {
        let status = |transfer: &TransferId, peer, conversation, outgoing, offer: &FileOffer| FileStatus {
            transfer: *transfer,
            conversation,
            group: offer.group,
            peer,
            outgoing,
            name: offer.name.clone(),
            size: offer.size,
            sha256: crate::message::hex(&offer.sha256),
            state: FileState::Done,
            bytes: offer.size,
            held_by_us: false,
            held_by_them: false,
            at_ms: 0,
        };
        let mut out = Vec::new();
        for (t, a) in &self.asked {
            out.push(FileStatus {
                state: FileState::Asked,
                bytes: 0,
                at_ms: a.at_ms,
                ..status(t, a.peer, a.conversation, false, &a.offer)
            });
        }
        for (t, i) in &self.incoming {
            out.push(FileStatus {
                state: FileState::Moving,
                bytes: i.transfer.progress().bytes,
                held_by_us: i.holds.ours,
                held_by_them: i.holds.theirs,
                at_ms: i.at_ms,
                ..status(t, i.peer, i.conversation, false, i.transfer.offer())
            });
        }
        for (t, o) in &self.outgoing {
            out.push(FileStatus {
                state: if o.accepted { FileState::Moving } else { FileState::Offered },
                bytes: o.transfer.progress().bytes,
                held_by_us: o.holds.ours,
                held_by_them: o.holds.theirs,
                at_ms: o.at_ms,
                ..status(t, o.peer, o.conversation, true, o.transfer.offer())
            });
        }
        for (t, k) in &self.kept {
            out.push(FileStatus { at_ms: k.at_ms, ..status(t, k.peer, k.conversation, k.outgoing, &k.offer) });
        }
        out.sort_by_key(|s| (s.at_ms, s.transfer));
        out
    }

    /// The transfers and kept files, with their keys, for the encrypted key store. Progress is not kept: the
    /// edge's sealed chunks are the receiver's progress ([`Transfers::replay`]), the receiver's resume the
    /// sender's.
    pub fn save(&self) -> Result<Zeroizing<Vec<u8>>, serde_json::Error> {
        let entry = |kind, peer, conversation, offer: &FileOffer, key: Option<&FileKey>, at_ms, held| SavedTransfer {
            kind,
            peer,
            conversation,
            offer: offer.clone(),
            key: key.map(|k| SavedKey(k.clone())),
            at_ms,
            held,
        };
        let mut saved = Vec::new();
        for a in self.asked.values() {
            saved.push(entry(SavedKind::Asked, a.peer, a.conversation, &a.offer, Some(&a.key), a.at_ms, false));
        }
        for i in self.incoming.values() {
            let offer = i.transfer.offer();
            saved.push(entry(SavedKind::Incoming, i.peer, i.conversation, offer, Some(&i.key), i.at_ms, i.holds.ours));
        }
        for o in self.outgoing.values() {
            let kind = SavedKind::Outgoing { accepted: o.accepted };
            saved.push(entry(kind, o.peer, o.conversation, o.transfer.offer(), Some(&o.key), o.at_ms, o.holds.ours));
        }
        for k in self.kept.values() {
            let kind = if k.outgoing { SavedKind::Sent } else { SavedKind::Received };
            saved.push(entry(kind, k.peer, k.conversation, &k.offer, k.key.as_ref(), k.at_ms, false));
        }
        serde_json::to_vec(&saved).map(Zeroizing::new)
    }

    /// Transfers as [`Transfers::save`] kept them. Incoming ones start over from chunk 0 until the edge
    /// replays what it kept; outgoing ones wait for the receiver's resume and for the edge to have the file.
    pub fn restore(config: TransferConfig, bytes: &[u8]) -> Result<Self, String> {
        let saved: Vec<SavedTransfer> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mut t = Self::new(config);
        for s in saved {
            let id = s.offer.transfer;
            let key = s.key.map(|k| k.0);
            let holds = Holds { ours: s.held, theirs: false };
            let need = |key: Option<FileKey>| key.ok_or_else(|| "a saved transfer lost its key".to_owned());
            match s.kind {
                SavedKind::Asked => {
                    t.asked.insert(
                        id,
                        Asked {
                            peer: s.peer,
                            conversation: s.conversation,
                            offer: s.offer,
                            key: need(key)?,
                            at_ms: s.at_ms,
                        },
                    );
                }
                SavedKind::Incoming => {
                    let key = need(key)?;
                    let transfer = IncomingTransfer::new(s.offer, &key, &t.config).map_err(|e| e.to_string())?;
                    t.incoming.insert(
                        id,
                        Incoming { peer: s.peer, conversation: s.conversation, transfer, key, holds, at_ms: s.at_ms },
                    );
                }
                SavedKind::Outgoing { accepted } => {
                    let key = need(key)?;
                    let transfer = OutgoingTransfer::resume(s.offer, &key, &t.config).map_err(|e| e.to_string())?;
                    t.outgoing.insert(
                        id,
                        Outgoing {
                            peer: s.peer,
                            conversation: s.conversation,
                            transfer,
                            key,
                            holds,
                            accepted,
                            at_ms: s.at_ms,
                        },
                    );
                }
                SavedKind::Received | SavedKind::Sent => {
                    let outgoing = matches!(s.kind, SavedKind::Sent);
                    t.kept.insert(
                        id,
                        Kept {
                            peer: s.peer,
                            conversation: s.conversation,
                            offer: s.offer,
                            key,
                            outgoing,
                            at_ms: s.at_ms,
                        },
                    );
                }
            }
        }
        Ok(t)
    }
}
