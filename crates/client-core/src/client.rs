//! The member's client as one sans-IO state machine: envelopes, commit verdicts, DataChannel state, the
//! directory and the clock go in; envelopes to relay, commits to order, DataChannel messages and events come
//! out. The edge (the native peer, the browser) owns sockets and RTCPeerConnections and does what it is told.
//!
//! Conversations are MLS groups: a 1:1 conversation is a two-member group, a group chat a group. KeyPackages
//! are asked for and delivered live through the relay (no server stores one). Group changes go to the
//! bubble-server as `commit` frames, which it orders per group; a commit is merged only once the server
//! accepted it, and retried after processing the winner when it did not.
//!
//! Offline members: nothing is stored for them. A member that comes back and receives a message of an epoch
//! it never reached asks the sender to add it again with a fresh KeyPackage (`rejoin`); the sender commits its
//! removal and re-addition, and it reads everything said from then on (ADR 0014).

use std::collections::{BTreeMap, HashMap, VecDeque};

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    GroupId, KeyPackage, KeyPackageIn, LeafNodeIndex, MlsGroup, MlsMessageBodyIn, MlsMessageIn,
    ProcessedMessageContent, ProtocolVersion, StagedWelcome,
};
use openmls_traits::OpenMlsProvider as _;
use peerbubble_proto::limits::KEY_PACKAGES_KEPT;
use peerbubble_proto::{DirectoryEntry, IdentityKey, MemberId, PublicKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::calls::{Calls, Verdict};
use crate::files::{
    ACK_FRAME_TAG, CHUNK_FRAME_TAG, CancelReason, ChunkRequest, FileControl, FileKey, FileOffer, TransferConfig,
    TransferId,
};
use crate::fingerprint::{Fingerprint, sdp_has_only_fingerprint};
use crate::group_calls::{GroupCall, GroupCallError, GroupCalls};
use crate::keystore::{KeyStore, Storage};
use crate::message::{AppMessage, CallSignal, ConversationKind, MessageId, ReceiptKind, hex};
use crate::mls::{self, CIPHERSUITE, MlsSigner, Provider};
use crate::paths::{Paths, Route};
use crate::transfers::{FileStatus, Transfers};
use crate::wire::Envelope;

/// The largest envelope the relay takes (signaling `max_body_bytes`).
pub const MAX_RELAY_BODY: usize = 32 * 1024;
/// Dropped twin 1:1 conversations remembered, to redirect a message addressed to one a moment before.
const MAX_SUPERSEDED: usize = 64;
/// Unanswered KeyPackage requests kept at once.
const MAX_PENDING_REQUESTS: usize = 256;
/// The MLS exporter label of file keys (context: the transfer id).
pub const FILE_KEY_LABEL: &str = "peerbubble file v1";
/// A KeyPackage request unanswered for this long may be sent again.
const REQUEST_RETRY_MS: u64 = 3_000;
/// Unanswered KeyPackage requests are forgotten after this long: a member may be offline for a while, and is
/// asked again when it comes online ([`Client::member_online`]). `MAX_PENDING_REQUESTS` bounds their number.
const REQUEST_EXPIRY_MS: u64 = 3_600_000;
/// KeyPackages minted for one member per window.
const KEY_PACKAGES_PER_WINDOW: u32 = 16;
/// The window of [`KEY_PACKAGES_PER_WINDOW`].
const KEY_PACKAGE_WINDOW_MS: u64 = 60_000;
/// Retry a refused commit after this long even if the winning commit did not reach us.
const COMMIT_RETRY_MS: u64 = 2_000;
/// An MLS message may arrive ahead of what it builds on: a Welcome and commits travel through the server, while a
/// message sent just after them may take the faster DataChannel. It is kept this long, and tried again after each
/// Welcome or commit of its conversation, before it counts as missed (and we ask to rejoin).
const EARLY_GRACE_MS: u64 = 8_000;
/// Messages kept that way at most (the oldest is dropped first).
const MAX_EARLY: usize = 256;

/// A conversation: the MLS group id (16 random bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConversationId(pub [u8; 16]);

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl TryFrom<String> for ConversationId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        crate::message::hex16(&s).map(Self).ok_or_else(|| "conversation id must be 32 lowercase hex characters".into())
    }
}

impl From<ConversationId> for String {
    fn from(id: ConversationId) -> Self {
        id.to_string()
    }
}

/// How an envelope travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Through the bubble-server.
    Relay,
    /// Over the DataChannel with that member.
    Channel,
}

/// What the edge must send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A signaling `send` of `body` to every session of `to`.
    Relay {
        /// Recipient.
        to: MemberId,
        /// Envelope bytes.
        body: Vec<u8>,
    },
    /// A signaling `commit`; answer with [`Client::commit_accepted`] or [`Client::commit_rejected`].
    Commit {
        /// Echo this in the verdict.
        token: u64,
        /// MLS group id.
        group: Vec<u8>,
        /// Epoch the commit was made in.
        epoch: u64,
        /// Current members to tell (never ourselves).
        to: Vec<MemberId>,
        /// Envelope bytes.
        body: Vec<u8>,
    },
    /// A DataChannel message to `to`.
    Channel {
        /// Recipient.
        to: MemberId,
        /// Message bytes.
        bytes: Vec<u8>,
    },
    /// A signaling `publish_key_package`: one of our KeyPackages for members who add us while we are away. Its
    /// private keys are in the state a save keeps, and must be saved before it goes out.
    PublishKeyPackage {
        /// The TLS-serialized KeyPackage.
        key_package: Vec<u8>,
        /// Whether it is our last-resort one.
        last_resort: bool,
    },
    /// A signaling `claim_key_package` for `member` (away); answer with [`Client::claimed_key_package`].
    ClaimKeyPackage {
        /// Echo this in the answer.
        request: [u8; 16],
        /// Whose KeyPackage.
        member: MemberId,
    },
}

/// Why a conversation ended locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another member removed us.
    Removed,
    /// We left or removed the contact.
    Left,
    /// A simultaneous 1:1 conversation with the same contact won (lower id).
    Superseded,
    /// A commit added a key the directory does not vouch for; we refuse to stay.
    UntrustedMember,
}

/// What happened, for the application.
#[derive(Clone, PartialEq, Eq)]
pub enum Event {
    /// The conversation can be used; `members` excludes us.
    ConversationReady {
        /// Which.
        conversation: ConversationId,
        /// Direct or group.
        kind: ConversationKind,
        /// The other members.
        members: Vec<MemberId>,
    },
    /// Members were added or removed.
    MembersChanged {
        /// Which.
        conversation: ConversationId,
        /// The other members now.
        members: Vec<MemberId>,
    },
    /// The conversation's local state and keys are destroyed.
    ConversationClosed {
        /// Which.
        conversation: ConversationId,
        /// Why.
        reason: CloseReason,
    },
    /// A chat message.
    Message {
        /// Where.
        conversation: ConversationId,
        /// Author (MLS-authenticated and equal to the transport's sender).
        from: MemberId,
        /// Its id.
        id: MessageId,
        /// The text.
        text: String,
        /// How it came.
        path: Path,
    },
    /// A message was edited by its author.
    Edited {
        /// Where.
        conversation: ConversationId,
        /// Which.
        id: MessageId,
        /// New text.
        text: String,
    },
    /// A message was deleted by its author.
    Deleted {
        /// Where.
        conversation: ConversationId,
        /// Which.
        id: MessageId,
    },
    /// A message disappeared (its timer ran out).
    Expired {
        /// Where.
        conversation: ConversationId,
        /// Which.
        id: MessageId,
    },
    /// Receipts from a member.
    Receipt {
        /// Where.
        conversation: ConversationId,
        /// Who.
        from: MemberId,
        /// Which messages.
        ids: Vec<MessageId>,
        /// Delivered or read.
        kind: ReceiptKind,
    },
    /// Typing indicator.
    Typing {
        /// Where.
        conversation: ConversationId,
        /// Who.
        from: MemberId,
        /// Started or stopped.
        typing: bool,
    },
    /// The disappearing timer changed.
    TimerChanged {
        /// Where.
        conversation: ConversationId,
        /// Seconds, or none.
        timer_secs: Option<u32>,
    },
    /// Call set-up from a member, MLS-authenticated; for offers and answers the SDP's `a=fingerprint` was
    /// checked to be `fingerprint`, which is the only DTLS certificate to accept from this member.
    Call {
        /// Where.
        conversation: ConversationId,
        /// Who.
        from: MemberId,
        /// The signal.
        signal: CallSignal,
    },
    /// A contact offers a file; answer with [`Client::accept_file`] or [`Client::decline_file`].
    FileOffered {
        /// Where.
        conversation: ConversationId,
        /// Who.
        from: MemberId,
        /// Name, size, hash.
        offer: FileOffer,
    },
    /// The transfer may send (more) chunks: call [`Client::next_file_chunk`] until it says none.
    FileSendable {
        /// Which.
        transfer: TransferId,
        /// Bytes the receiver confirmed, of the total.
        acked: u64,
        /// File size.
        total: u64,
    },
    /// A chunk of an incoming file, authenticated and in order: write `plaintext` at `offset`, or keep
    /// `sealed` (decryptable later with [`Client::file_key`]) to keep the file encrypted at rest.
    FileChunk {
        /// Which.
        transfer: TransferId,
        /// Chunk index.
        index: u32,
        /// Byte offset.
        offset: u64,
        /// The bytes.
        plaintext: Vec<u8>,
        /// The same bytes as received, encrypted.
        sealed: Vec<u8>,
    },
    /// An incoming file is whole and its SHA-256 matched the offer.
    FileReceived {
        /// Which.
        transfer: TransferId,
        /// The verified hash.
        sha256: [u8; 32],
    },
    /// The receiver confirmed the whole file with the right hash.
    FileSent {
        /// Which.
        transfer: TransferId,
    },
    /// A transfer stopped.
    FileCancelled {
        /// Which.
        transfer: TransferId,
        /// Why.
        reason: CancelReason,
    },
    /// A transfer was paused (`held`) or resumed by its contact `by`.
    FileHeld {
        /// Which.
        transfer: TransferId,
        /// The contact.
        by: MemberId,
        /// Paused or going on.
        held: bool,
    },
    /// The bytes kept of this file may be deleted: the member forgot it, it was cancelled before it was
    /// whole, or its conversation is gone (its key already is).
    FileForgotten {
        /// Which.
        transfer: TransferId,
    },
    /// A member left a group.
    Left {
        /// Where.
        conversation: ConversationId,
        /// Who.
        member: MemberId,
    },
    /// We missed commits of this conversation and asked `asked` to add us again.
    RejoinRequested {
        /// Where.
        conversation: ConversationId,
        /// Whom we asked.
        asked: MemberId,
    },
    /// Input was refused and changed nothing: tampered, replayed, out of window, from an unknown member, or
    /// not allowed.
    Refused {
        /// Who sent it (as the transport says).
        from: MemberId,
        /// Why, for logs (never content).
        reason: String,
    },
}

/// Events print what happened and to whom, never what was said: texts, SDP, candidates, file names and chunk
/// bytes show as their length only (CONVENTIONS.md: secrets and content have a redacting `Debug`).
impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::message::Redacted;
        match self {
            Event::ConversationReady { conversation, kind, members } => f
                .debug_struct("ConversationReady")
                .field("conversation", conversation)
                .field("kind", kind)
                .field("members", members)
                .finish(),
            Event::MembersChanged { conversation, members } => {
                f.debug_struct("MembersChanged").field("conversation", conversation).field("members", members).finish()
            }
            Event::ConversationClosed { conversation, reason } => f
                .debug_struct("ConversationClosed")
                .field("conversation", conversation)
                .field("reason", reason)
                .finish(),
            Event::Message { conversation, from, id, text, path } => f
                .debug_struct("Message")
                .field("conversation", conversation)
                .field("from", from)
                .field("id", id)
                .field("text", &Redacted(text.len()))
                .field("path", path)
                .finish(),
            Event::Edited { conversation, id, text } => f
                .debug_struct("Edited")
                .field("conversation", conversation)
                .field("id", id)
                .field("text", &Redacted(text.len()))
                .finish(),
            Event::Deleted { conversation, id } => {
                f.debug_struct("Deleted").field("conversation", conversation).field("id", id).finish()
            }
            Event::Expired { conversation, id } => {
                f.debug_struct("Expired").field("conversation", conversation).field("id", id).finish()
            }
            Event::Receipt { conversation, from, ids, kind } => f
                .debug_struct("Receipt")
                .field("conversation", conversation)
                .field("from", from)
                .field("ids", ids)
                .field("kind", kind)
                .finish(),
            Event::Typing { conversation, from, typing } => f
                .debug_struct("Typing")
                .field("conversation", conversation)
                .field("from", from)
                .field("typing", typing)
                .finish(),
            Event::TimerChanged { conversation, timer_secs } => f
                .debug_struct("TimerChanged")
                .field("conversation", conversation)
                .field("timer_secs", timer_secs)
                .finish(),
            Event::Call { conversation, from, signal } => f
                .debug_struct("Call")
                .field("conversation", conversation)
                .field("from", from)
                .field("signal", signal)
                .finish(),
            Event::FileOffered { conversation, from, offer } => f
                .debug_struct("FileOffered")
                .field("conversation", conversation)
                .field("from", from)
                .field("offer", offer)
                .finish(),
            Event::FileSendable { transfer, acked, total } => f
                .debug_struct("FileSendable")
                .field("transfer", transfer)
                .field("acked", acked)
                .field("total", total)
                .finish(),
            Event::FileChunk { transfer, index, offset, plaintext, sealed } => f
                .debug_struct("FileChunk")
                .field("transfer", transfer)
                .field("index", index)
                .field("offset", offset)
                .field("plaintext", &Redacted(plaintext.len()))
                .field("sealed", &Redacted(sealed.len()))
                .finish(),
            Event::FileReceived { transfer, sha256 } => {
                f.debug_struct("FileReceived").field("transfer", transfer).field("sha256", sha256).finish()
            }
            Event::FileSent { transfer } => f.debug_struct("FileSent").field("transfer", transfer).finish(),
            Event::FileCancelled { transfer, reason } => {
                f.debug_struct("FileCancelled").field("transfer", transfer).field("reason", reason).finish()
            }
            Event::FileHeld { transfer, by, held } => {
                f.debug_struct("FileHeld").field("transfer", transfer).field("by", by).field("held", held).finish()
            }
            Event::FileForgotten { transfer } => f.debug_struct("FileForgotten").field("transfer", transfer).finish(),
            Event::Left { conversation, member } => {
                f.debug_struct("Left").field("conversation", conversation).field("member", member).finish()
            }
            Event::RejoinRequested { conversation, asked } => {
                f.debug_struct("RejoinRequested").field("conversation", conversation).field("asked", asked).finish()
            }
            Event::Refused { from, reason } => {
                f.debug_struct("Refused").field("from", from).field("reason", reason).finish()
            }
        }
    }
}

impl std::fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatMessage")
            .field("id", &self.id)
            .field("from", &self.from)
            .field("text", &crate::message::Redacted(self.text.len()))
            .field("sent_at_ms", &self.sent_at_ms)
            .field("edited", &self.edited)
            .field("deleted", &self.deleted)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("receipts", &self.receipts)
            .finish()
    }
}

/// Errors of calls into the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The member is not in our directory (need-to-know: we cannot reach it).
    #[error("member {0} is not in your directory")]
    NotVisible(MemberId),
    /// No such conversation (closed, or never set up).
    #[error("no conversation {0}")]
    NoConversation(ConversationId),
    /// The conversation is not set up yet (waiting for a KeyPackage or for the server to order the commit).
    #[error("conversation {0} is not ready yet; wait for ConversationReady")]
    NotReady(ConversationId),
    /// The message would not fit in a relayed envelope and no DataChannel is open.
    #[error("message of {0} bytes is too large for the relay; open a DataChannel or send it as a file")]
    TooLarge(usize),
    /// The message breaks a limit.
    #[error(transparent)]
    Message(#[from] crate::message::MessageError),
    /// The operation is not possible in this conversation (e.g. adding to a 1:1 conversation).
    #[error("not allowed: {0}")]
    NotAllowed(&'static str),
    /// MLS failed (a bug or exhausted randomness); the conversation is unchanged.
    #[error("MLS: {0}")]
    Mls(String),
    /// A file transfer refused the operation.
    #[error("file transfer: {0}")]
    File(String),
    /// The bubble's policy forbids it (set by its administrators; the text says what it allows).
    #[error("not allowed in this bubble: {0}")]
    Policy(String),
    /// A group call could not be joined (full, or no longer under way).
    #[error(transparent)]
    GroupCall(#[from] GroupCallError),
    /// Stored state could not be read.
    #[error("stored client state is unreadable: {0}")]
    State(String),
}

fn file_err(e: crate::files::FileError) -> ClientError {
    ClientError::File(e.to_string())
}

fn mls_err(e: impl std::fmt::Debug) -> ClientError {
    ClientError::Mls(format!("{e:?}"))
}

/// A chat message as kept in the conversation's history.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Its id.
    pub id: MessageId,
    /// Author.
    pub from: MemberId,
    /// Text (empty once deleted).
    pub text: String,
    /// The author's clock.
    pub sent_at_ms: u64,
    /// Edited by its author.
    pub edited: bool,
    /// Deleted by its author.
    pub deleted: bool,
    /// When it disappears.
    pub expires_at_ms: Option<u64>,
    /// Receipts by member.
    pub receipts: BTreeMap<MemberId, ReceiptKind>,
}

/// Key-store record of the MLS state.
pub const RECORD_MLS: &str = "client/mls";
/// Key-store record of the conversations and their histories.
pub const RECORD_CONVERSATIONS: &str = "client/conversations";
/// Key-store record of file transfers under way and files kept, with their keys.
pub const RECORD_FILES: &str = "client/files";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedConversation {
    id: ConversationId,
    kind: Option<ConversationKind>,
    timer_secs: Option<u32>,
    history: Vec<ChatMessage>,
    ready: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Add(MemberId, Box<KeyPackage>),
    Remove(MemberId),
    /// A fresh leaf key for us: post-compromise security.
    Update,
}

#[derive(Debug)]
struct PendingCommit {
    token: u64,
    op: Op,
    /// The added member's Welcome, sent once the server accepts the commit.
    welcome: Option<(MemberId, Vec<u8>)>,
}

#[derive(Debug)]
struct Conversation {
    group: MlsGroup,
    kind: Option<ConversationKind>,
    timer_secs: Option<u32>,
    history: Vec<ChatMessage>,
    ops: VecDeque<Op>,
    pending: Option<PendingCommit>,
    /// When a refused commit may be retried without news.
    retry_at_ms: Option<u64>,
    /// The epoch we last asked to rejoin at (ask once per epoch).
    rejoin_asked: Option<u64>,
    ready: bool,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Direct,
    AddTo(ConversationId),
}

/// The client. One per member per bubble.
/// An MLS message kept until what it builds on arrives.
struct Early {
    conversation: ConversationId,
    epoch: u64,
    from: MemberId,
    bytes: Vec<u8>,
    path: Path,
    until_ms: u64,
}

pub struct Client {
    signer: MlsSigner,
    me: MemberId,
    provider: Provider,
    directory: BTreeMap<MemberId, DirectoryEntry>,
    conversations: BTreeMap<ConversationId, Conversation>,
    /// 1:1 conversations dropped for their twin (both started at once) → the one kept, so that a message the
    /// page addressed to the dropped one a moment before goes to the kept one instead of failing. Bounded.
    superseded: BTreeMap<ConversationId, ConversationId>,
    requests: HashMap<[u8; 16], (MemberId, Purpose, u64)>,
    /// The bubble keeps KeyPackages (it told us our stock on this signaling session): a member who is away is
    /// added from one it claims there, instead of waiting for the member to answer a request.
    bubble_keeps_key_packages: bool,
    /// The relay-or-DataChannel choice per contact.
    paths: Paths,
    /// The connection set-up with each contact.
    calls: Calls,
    /// KeyPackages minted per requesting member: (window start, count).
    minted: HashMap<MemberId, (u64, u32)>,
    policy: peerbubble_proto::BubblePolicy,
    /// File transfers and the files kept with their keys.
    transfers: Transfers,
    /// Who is in the call of each group conversation.
    group_calls: GroupCalls,
    /// MLS messages that arrived before their conversation's Welcome or an earlier commit (see [`EARLY_GRACE_MS`]).
    early: VecDeque<Early>,
    /// Counts MLS messages made or opened: each advances secrets the key store must keep.
    mls_generation: u64,
    outputs: VecDeque<Output>,
    events: VecDeque<Event>,
    next_token: u64,
    now_ms: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("member", &self.me)
            .field("conversations", &self.conversations.len())
            .finish_non_exhaustive()
    }
}

fn random16() -> Result<[u8; 16], ClientError> {
    let mut out = [0; 16];
    getrandom::fill(&mut out).map_err(|e| ClientError::Mls(format!("no randomness: {e}")))?;
    Ok(out)
}

impl Client {
    /// A client for the member holding `identity`, with no conversations.
    pub fn new(identity: &IdentityKey) -> Self {
        let signer = MlsSigner::new(identity);
        let me = signer.public_key().member_id();
        Self {
            signer,
            me,
            provider: Provider::default(),
            directory: BTreeMap::new(),
            conversations: BTreeMap::new(),
            superseded: BTreeMap::new(),
            requests: HashMap::new(),
            bubble_keeps_key_packages: false,
            paths: Paths::default(),
            calls: Calls::default(),
            minted: HashMap::new(),
            policy: peerbubble_proto::BubblePolicy::default(),
            transfers: Transfers::default(),
            group_calls: GroupCalls::default(),
            early: VecDeque::new(),
            mls_generation: 0,
            outputs: VecDeque::new(),
            events: VecDeque::new(),
            next_token: 1,
            now_ms: 0,
        }
    }

    /// Our member id.
    pub fn member(&self) -> MemberId {
        self.me
    }

    /// The next thing to send.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The directory the server sent (need-to-know slice). Members who left it can no longer be reached;
    /// conversations with them stay until closed.
    pub fn set_directory(&mut self, entries: impl IntoIterator<Item = DirectoryEntry>) {
        self.directory =
            entries.into_iter().filter(|e| e.public_key.member_id() == e.member).map(|e| (e.member, e)).collect();
        self.paths.set_away(self.directory.values().filter(|e| !e.online).map(|e| e.member));
    }

    /// A DataChannel with `member` opened (its DTLS fingerprint was the MLS-authenticated one).
    pub fn channel_opened(&mut self, member: MemberId) {
        self.paths.channel_opened(member);
        // Transfers cut by a dropped connection (or a restart) continue where the receiver is.
        self.transfers.channel_opened(member);
        let _ = self.send_file_controls();
    }

    /// Counts MLS messages made or opened since the client was made: when it moved, secrets the key store
    /// keeps changed and must be saved before anything else is sent.
    pub fn mls_generation(&self) -> u64 {
        self.mls_generation
    }

    /// `member` went offline (signaling presence, its last session ended): until it comes back, messages to it
    /// take the relay even while a DataChannel with it still looks open (a closed tab's channel dies silently).
    pub fn member_offline(&mut self, member: MemberId) {
        let again = self.paths.offline(member);
        self.resend(member, again);
    }

    /// Our signaling session ended: who is online is not known any more (a server shutting down even reports
    /// everyone going offline first), so open DataChannels are trusted again until the next directory.
    pub fn signaling_lost(&mut self) {
        self.paths.signaling_lost();
        self.bubble_keeps_key_packages = false;
    }

    /// The bubble keeps `one_time` one-time KeyPackages of ours and (`last_resort`) a last-resort one, for
    /// members who add us while we are away: fresh ones are made to top the stock up to
    /// [`KEY_PACKAGES_KEPT`] and one last resort ([`Output::PublishKeyPackage`]). Their private keys join the
    /// state to save; a one-time one is used once, the last-resort one as often as it is handed out.
    pub fn key_package_stock(&mut self, one_time: u32, last_resort: bool) -> Result<(), ClientError> {
        if !self.bubble_keeps_key_packages {
            // Asked before the bubble said it keeps KeyPackages (a conversation started right after connecting):
            // a member away got the request in its mailbox, answered only when it returns. Claim one now too;
            // its late answer is then refused as unsolicited, harmlessly.
            let mut away: Vec<([u8; 16], MemberId)> = self
                .requests
                .iter()
                .filter(|(_, (member, _, _))| self.paths.is_away(*member))
                .map(|(request, (member, _, _))| (*request, *member))
                .collect();
            away.sort_unstable();
            for (request, member) in away {
                self.outputs.push_back(Output::ClaimKeyPackage { request, member });
            }
        }
        self.bubble_keeps_key_packages = true;
        let missing = KEY_PACKAGES_KEPT.saturating_sub(one_time as usize);
        for _ in 0..missing {
            let key_package = self.fresh_key_package()?;
            self.outputs.push_back(Output::PublishKeyPackage { key_package, last_resort: false });
        }
        if !last_resort {
            let key_package = self.last_resort_key_package()?;
            self.outputs.push_back(Output::PublishKeyPackage { key_package, last_resort: true });
        }
        Ok(())
    }

    /// The bubble's answer to [`Output::ClaimKeyPackage`] `request`: `member`'s KeyPackage, checked like one
    /// the member sent, or none (it published none, the claim was refused or could not be sent): then the
    /// member is asked directly, and the request waits in the bubble until it returns.
    pub fn claimed_key_package(&mut self, request: [u8; 16], key_package: Option<&[u8]>) -> Result<(), String> {
        let Some(&(member, purpose, _)) = self.requests.get(&request) else { return Ok(()) };
        let Some(bytes) = key_package else {
            self.outputs
                .push_back(Output::Relay { to: member, body: Envelope::KeyPackageRequest { request }.encode() });
            return Ok(());
        };
        let key = self.visible_key(member).map_err(|e| e.to_string())?;
        match self.validate_key_package(bytes, &key) {
            Ok(kp) => {
                self.requests.remove(&request);
                self.on_key_package(member, purpose, kp)
            }
            Err(reason) => {
                // Not what the member signed: ask the member instead.
                self.outputs
                    .push_back(Output::Relay { to: member, body: Envelope::KeyPackageRequest { request }.encode() });
                Err(format!("the bubble handed out a bad KeyPackage for {member}: {reason}"))
            }
        }
    }

    /// `member` came online (signaling presence): KeyPackage requests it has not answered — sent while it was
    /// offline, so lost — are sent again, and their expiry starts over. A late answer to the first copy is
    /// refused as unsolicited, harmlessly.
    pub fn member_online(&mut self, member: MemberId) {
        self.paths.online(member);
        let now = self.now_ms;
        let mut again = Vec::new();
        for (request, (asked, _, at)) in &mut self.requests {
            if *asked == member {
                *at = now;
                again.push(*request);
            }
        }
        again.sort_unstable();
        for request in again {
            self.outputs
                .push_back(Output::Relay { to: member, body: Envelope::KeyPackageRequest { request }.encode() });
        }
    }

    /// The DataChannel with `member` closed; messages go through the relay again.
    pub fn channel_closed(&mut self, member: MemberId) {
        let again = self.paths.channel_closed(member);
        self.resend(member, again);
    }

    /// Sends again, through the relay, the chat messages `member` never confirmed over a channel that is gone.
    fn resend(&mut self, member: MemberId, bodies: Vec<Vec<u8>>) {
        for body in bodies {
            self.outputs.push_back(Output::Relay { to: member, body });
        }
    }

    /// Conversation ids, with their kinds once known.
    pub fn conversations(&self) -> Vec<(ConversationId, Option<ConversationKind>)> {
        self.conversations.iter().map(|(id, c)| (*id, c.kind.clone())).collect()
    }

    /// The 1:1 conversation with `peer`, if set up.
    pub fn direct_conversation(&self, peer: MemberId) -> Option<ConversationId> {
        self.conversations
            .iter()
            .filter(|(_, c)| c.kind == Some(ConversationKind::Direct) && c.ready)
            .find(|(_, c)| others_in(&c.group, self.me) == [peer])
            .map(|(id, _)| *id)
    }

    /// The other members of a conversation.
    pub fn members(&self, conversation: ConversationId) -> Result<Vec<MemberId>, ClientError> {
        Ok(others_in(&self.conversation(conversation)?.group, self.me))
    }

    /// The conversation's MLS epoch.
    pub fn epoch(&self, conversation: ConversationId) -> Result<u64, ClientError> {
        Ok(self.conversation(conversation)?.group.epoch().as_u64())
    }

    /// The conversation's history.
    pub fn history(&self, conversation: ConversationId) -> Result<&[ChatMessage], ClientError> {
        Ok(&self.conversation(conversation)?.history)
    }

    /// After how many seconds messages of the conversation disappear (set by any member), if they do.
    pub fn timer(&self, conversation: ConversationId) -> Result<Option<u32>, ClientError> {
        Ok(self.conversation(conversation)?.timer_secs)
    }

    /// A secret both sides of a conversation derive from the current epoch (MLS exporter), e.g. a file key.
    pub fn export_secret(
        &self,
        conversation: ConversationId,
        label: &str,
        context: &[u8],
    ) -> Result<Zeroizing<[u8; 32]>, ClientError> {
        let c = self.conversation(conversation)?;
        let bytes = c.group.export_secret(self.provider.crypto(), label, context, 32).map_err(mls_err)?;
        let mut out = Zeroizing::new([0u8; 32]);
        out.copy_from_slice(&bytes);
        Ok(out)
    }

    /// Starts a 1:1 conversation with `peer` (asks it for a KeyPackage). [`Event::ConversationReady`] follows.
    pub fn start_direct(&mut self, peer: MemberId) -> Result<(), ClientError> {
        self.visible_key(peer)?;
        // An unanswered request (the contact was offline) is asked again after a while.
        let now = self.now_ms;
        if self.direct_conversation(peer).is_some()
            || self.requests.values().any(|(m, p, at)| {
                *m == peer && matches!(p, Purpose::Direct) && now.saturating_sub(*at) < REQUEST_RETRY_MS
            })
        {
            return Ok(());
        }
        self.request_key_package(peer, Purpose::Direct)
    }

    /// Creates a group chat named `name` and invites `members` (each asked for a KeyPackage, added as it comes).
    pub fn create_group(&mut self, name: &str, members: &[MemberId]) -> Result<ConversationId, ClientError> {
        for m in members {
            self.visible_key(*m)?;
        }
        let kind = ConversationKind::Group { name: name.to_owned() };
        AppMessage::Meta { conversation: kind.clone(), timer_secs: None }.check()?;
        let id = self.new_group(kind.clone())?;
        if let Some(c) = self.conversations.get_mut(&id) {
            c.ready = true;
        }
        self.events.push_back(Event::ConversationReady { conversation: id, kind, members: Vec::new() });
        for m in members {
            self.request_key_package(*m, Purpose::AddTo(id))?;
        }
        Ok(id)
    }

    /// Adds a member to a group chat; it sees only what is said after it joined.
    pub fn add_member(&mut self, conversation: ConversationId, member: MemberId) -> Result<(), ClientError> {
        self.visible_key(member)?;
        let c = self.conversation(conversation)?;
        if c.kind == Some(ConversationKind::Direct) {
            return Err(ClientError::NotAllowed("a 1:1 conversation has exactly two members; create a group"));
        }
        self.request_key_package(member, Purpose::AddTo(conversation))
    }

    /// Removes a member from a group chat; it cannot read anything said after the commit.
    pub fn remove_member(&mut self, conversation: ConversationId, member: MemberId) -> Result<(), ClientError> {
        let c = self.conversation_mut(conversation)?;
        c.ops.push_back(Op::Remove(member));
        self.drive(conversation);
        Ok(())
    }

    /// Replaces our leaf key in the conversation (an MLS update commit): whoever learnt our current keys can
    /// no longer read what follows (post-compromise security).
    pub fn update_keys(&mut self, conversation: ConversationId) -> Result<(), ClientError> {
        self.conversation_mut(conversation)?.ops.push_back(Op::Update);
        self.drive(conversation);
        Ok(())
    }

    /// Leaves a conversation: tells the others (so one of them commits our removal) and destroys our state
    /// and keys for it.
    pub fn leave(&mut self, conversation: ConversationId) -> Result<(), ClientError> {
        if self.conversation(conversation)?.ready {
            let _ = self.send_app(conversation, &AppMessage::Leave);
        }
        self.destroy(conversation, CloseReason::Left);
        Ok(())
    }

    /// Removes a contact: destroys the 1:1 conversation's state and keys.
    pub fn remove_contact(&mut self, peer: MemberId) -> Result<(), ClientError> {
        let ids: Vec<_> = self
            .conversations
            .iter()
            .filter(|(_, c)| c.kind == Some(ConversationKind::Direct) && others_in(&c.group, self.me) == [peer])
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.leave(id)?;
        }
        self.requests.retain(|_, (m, _, _)| *m != peer);
        Ok(())
    }

    /// Sends a chat message; returns its id.
    pub fn send_text(&mut self, conversation: ConversationId, text: &str) -> Result<MessageId, ClientError> {
        let id = MessageId(random16()?);
        self.write_text(conversation, id, text)?;
        Ok(id)
    }

    /// Sends the text message `id` (a new one, or one written again in the conversation kept of two twins).
    fn write_text(&mut self, conversation: ConversationId, id: MessageId, text: &str) -> Result<(), ClientError> {
        let conversation = self.kept(conversation);
        let timer = self.policy.timer(self.conversation(conversation)?.timer_secs);
        let message = AppMessage::Text { id, text: text.to_owned(), sent_at_ms: self.now_ms, expires_in_secs: timer };
        message.check()?;
        self.send_app_confirmed(conversation, &message, Some(id))?;
        let now = self.now_ms;
        let expires_at_ms = timer.map(|t| now + u64::from(t) * 1000);
        let me = self.me;
        self.conversation_mut(conversation)?.history.push(ChatMessage {
            id,
            from: me,
            text: text.to_owned(),
            sent_at_ms: now,
            edited: false,
            deleted: false,
            expires_at_ms,
            receipts: BTreeMap::new(),
        });
        Ok(())
    }

    /// Edits one of our messages.
    pub fn edit(&mut self, conversation: ConversationId, id: MessageId, text: &str) -> Result<(), ClientError> {
        let conversation = self.kept(conversation);
        self.own_message(conversation, id)?;
        self.send_app(conversation, &AppMessage::Edit { id, text: text.to_owned() })?;
        if let Some(m) = self.conversation_mut(conversation)?.history.iter_mut().find(|m| m.id == id) {
            m.text = text.to_owned();
            m.edited = true;
        }
        Ok(())
    }

    /// Deletes one of our messages for everyone.
    pub fn delete(&mut self, conversation: ConversationId, id: MessageId) -> Result<(), ClientError> {
        let conversation = self.kept(conversation);
        self.own_message(conversation, id)?;
        self.send_app(conversation, &AppMessage::Delete { id })?;
        if let Some(m) = self.conversation_mut(conversation)?.history.iter_mut().find(|m| m.id == id) {
            m.text.clear();
            m.deleted = true;
        }
        Ok(())
    }

    /// Sends read receipts for messages of others not marked read yet, and records ours in the history (so that
    /// the member's other screens, and this one after a restart, know what was read). Ids already read, ours or
    /// unknown are skipped; with nothing left, nothing is sent.
    pub fn mark_read(&mut self, conversation: ConversationId, ids: Vec<MessageId>) -> Result<(), ClientError> {
        let conversation = self.kept(conversation);
        let me = self.me;
        let c = self.conversation_mut(conversation)?;
        let mut fresh = Vec::new();
        for m in c.history.iter_mut().filter(|m| ids.contains(&m.id) && m.from != me) {
            if m.receipts.get(&me) != Some(&ReceiptKind::Read) {
                m.receipts.insert(me, ReceiptKind::Read);
                fresh.push(m.id);
            }
        }
        if fresh.is_empty() {
            return Ok(());
        }
        self.send_app(conversation, &AppMessage::Receipt { ids: fresh, kind: ReceiptKind::Read })
    }

    /// Sends a typing indicator.
    pub fn typing(&mut self, conversation: ConversationId, typing: bool) -> Result<(), ClientError> {
        self.send_app(self.kept(conversation), &AppMessage::Typing { typing })
    }

    /// Sets the conversation's disappearing timer.
    pub fn set_timer(&mut self, conversation: ConversationId, timer_secs: Option<u32>) -> Result<(), ClientError> {
        let limit = self.policy.disappear_within_secs;
        if limit > 0 && timer_secs.is_none_or(|t| t > limit) {
            return Err(ClientError::Policy(format!("messages must disappear within {limit} s")));
        }
        let conversation = self.kept(conversation);
        self.send_app(conversation, &AppMessage::Timer { timer_secs })?;
        self.conversation_mut(conversation)?.timer_secs = timer_secs;
        Ok(())
    }

    /// Starts the set-up of a connection with the contact of a 1:1 conversation: the edge made an
    /// RTCPeerConnection whose DTLS certificate has `fingerprint` and whose offer is `sdp`. Returns the call id.
    pub fn start_call(
        &mut self,
        peer: MemberId,
        sdp: &str,
        fingerprint: &Fingerprint,
    ) -> Result<MessageId, ClientError> {
        let conversation = self.direct_conversation(peer).ok_or(ClientError::NotAllowed("no 1:1 conversation yet"))?;
        let call = MessageId(random16()?);
        self.send_signal(conversation, CallSignal::Offer { call, sdp: sdp.into(), fingerprint: *fingerprint })?;
        self.calls.offered(peer, call);
        Ok(call)
    }

    /// Answers a contact's offer ([`Event::Call`] with an offer) with our SDP and DTLS fingerprint.
    pub fn answer_call(&mut self, peer: MemberId, sdp: &str, fingerprint: &Fingerprint) -> Result<(), ClientError> {
        let call = self.calls.to_answer(peer).ok_or(ClientError::NotAllowed("no offer from this contact to answer"))?;
        let conversation = self.direct_conversation(peer).ok_or(ClientError::NotAllowed("no 1:1 conversation"))?;
        self.send_signal(conversation, CallSignal::Answer { call, sdp: sdp.into(), fingerprint: *fingerprint })?;
        self.calls.answered(peer);
        Ok(())
    }

    /// Rings the contact of a 1:1 conversation for an audio (or video) call; its id. The media flows on the
    /// contact's connection once they accept ([`CallSignal::Accept`]). Refused where the bubble forbids calls.
    pub fn ring(&mut self, peer: MemberId, video: bool) -> Result<MessageId, ClientError> {
        let conversation = self.direct_conversation(peer).ok_or(ClientError::NotAllowed("no 1:1 conversation yet"))?;
        self.ring_in(conversation, video)
    }

    /// Rings in a conversation: its contact (1:1), or everyone in a group, who may each join. A group call is a
    /// mesh over each pair's connection, at most 4 people with video and 8 audio-only ([`crate::group_calls`]);
    /// while one is under way in the group, join it instead ([`Client::answer_ring_in`]).
    pub fn ring_in(&mut self, conversation: ConversationId, video: bool) -> Result<MessageId, ClientError> {
        if !self.policy.calls_allowed {
            return Err(ClientError::Policy("calls are not allowed".into()));
        }
        let group = self.is_group(conversation)?;
        if group && self.group_calls.get(conversation).is_some() {
            return Err(ClientError::NotAllowed("a call is already under way in this group: join it"));
        }
        let ring = MessageId(random16()?);
        self.send_app(conversation, &AppMessage::Call(CallSignal::Ring { ring, video }))?;
        if group {
            self.group_calls.rang(conversation, self.me, ring, video);
        }
        Ok(ring)
    }

    /// Answers a ring: accept, or end it (declined, busy).
    pub fn answer_ring(&mut self, peer: MemberId, ring: MessageId, accept: bool) -> Result<(), ClientError> {
        let conversation = self.direct_conversation(peer).ok_or(ClientError::NotAllowed("no 1:1 conversation"))?;
        self.answer_ring_in(conversation, ring, accept)
    }

    /// Answers a ring in a conversation. In a group, accepting joins the call (refused when it is full) and
    /// tells the group, whose participants then set their media up with us; declining tells nobody.
    pub fn answer_ring_in(
        &mut self,
        conversation: ConversationId,
        ring: MessageId,
        accept: bool,
    ) -> Result<(), ClientError> {
        if accept && !self.policy.calls_allowed {
            return Err(ClientError::Policy("calls are not allowed".into()));
        }
        if self.is_group(conversation)? {
            if !accept {
                return Ok(());
            }
            self.group_calls.can_join(conversation, self.me, ring).map_err(ClientError::GroupCall)?;
            self.send_app(conversation, &AppMessage::Call(CallSignal::Accept { ring }))?;
            self.group_calls.joined(conversation, self.me, ring).map_err(ClientError::GroupCall)?;
            return Ok(());
        }
        let signal = if accept {
            CallSignal::Accept { ring }
        } else {
            CallSignal::End { ring, reason: crate::message::EndReason::Declined }
        };
        self.send_app(conversation, &AppMessage::Call(signal))
    }

    /// Ends a media call (ours or theirs, ringing or under way).
    pub fn end_ring(
        &mut self,
        peer: MemberId,
        ring: MessageId,
        reason: crate::message::EndReason,
    ) -> Result<(), ClientError> {
        let conversation = self.direct_conversation(peer).ok_or(ClientError::NotAllowed("no 1:1 conversation"))?;
        self.end_ring_in(conversation, ring, reason)
    }

    /// Ends a media call in a conversation. In a group we leave the call (the others go on); a ring we do not
    /// take because we are busy tells nobody there.
    pub fn end_ring_in(
        &mut self,
        conversation: ConversationId,
        ring: MessageId,
        reason: crate::message::EndReason,
    ) -> Result<(), ClientError> {
        if self.is_group(conversation)? {
            let joined =
                self.group_calls.get(conversation).is_some_and(|c| c.ring == ring && c.participants.contains(&self.me));
            if !joined {
                return Ok(());
            }
            self.send_app(
                conversation,
                &AppMessage::Call(CallSignal::End { ring, reason: crate::message::EndReason::HungUp }),
            )?;
            self.group_calls.left(conversation, self.me, ring);
            return Ok(());
        }
        self.send_app(conversation, &AppMessage::Call(CallSignal::End { ring, reason }))
    }

    /// The call under way in a group conversation: its id, and who is in it.
    pub fn group_call(&self, conversation: ConversationId) -> Option<&GroupCall> {
        self.group_calls.get(conversation)
    }

    fn is_group(&self, conversation: ConversationId) -> Result<bool, ClientError> {
        let c = self.conversations.get(&conversation).ok_or(ClientError::NoConversation(conversation))?;
        Ok(matches!(c.kind, Some(ConversationKind::Group { .. })))
    }

    /// Sends a trickled ICE candidate of the current call with `peer`: one `candidate:` line gathered after the
    /// offer or answer left (an edge sends its description as soon as it has one, and what it gathers later this way).
    pub fn send_candidate(&mut self, peer: MemberId, candidate: &str) -> Result<(), ClientError> {
        if !crate::calls::is_candidate_line(candidate) || candidate.len() > crate::message::MAX_CANDIDATE {
            return Err(ClientError::NotAllowed("not one ICE candidate line"));
        }
        let call = self.calls.current(peer).ok_or(ClientError::NotAllowed("no call with this contact"))?;
        let conversation = self.direct_conversation(peer).ok_or(ClientError::NotAllowed("no 1:1 conversation"))?;
        self.send_signal(conversation, CallSignal::Candidate { call, candidate: candidate.into() })
    }

    /// Ends the call with `peer` (tells it, forgets the fingerprint).
    pub fn hangup(&mut self, peer: MemberId) -> Result<(), ClientError> {
        let Some(call) = self.calls.end(peer) else { return Ok(()) };
        self.paths.drop_channel(peer);
        match self.direct_conversation(peer) {
            Some(conversation) => self.send_signal(conversation, CallSignal::Hangup { call }),
            None => Ok(()),
        }
    }

    /// The DTLS fingerprint the contact's MLS-authenticated offer or answer announced: the only certificate
    /// the edge may accept from it.
    pub fn expected_fingerprint(&self, peer: MemberId) -> Option<&Fingerprint> {
        self.calls.expected(peer)
    }

    /// Checks the fingerprint of the certificate the DTLS handshake actually presented; true only if it is the
    /// one the contact announced inside MLS. On false the edge must close the connection.
    pub fn verify_dtls(&mut self, peer: MemberId, actual: &Fingerprint) -> bool {
        let ok = self.calls.verify(peer, actual);
        if !ok {
            self.paths.drop_channel(peer);
            self.events
                .push_back(Event::Refused { from: peer, reason: "DTLS certificate is not the announced one".into() });
        }
        ok
    }

    fn send_signal(&mut self, conversation: ConversationId, signal: CallSignal) -> Result<(), ClientError> {
        if let CallSignal::Offer { sdp, fingerprint, .. } | CallSignal::Answer { sdp, fingerprint, .. } = &signal
            && !sdp_has_only_fingerprint(sdp, fingerprint)
        {
            return Err(ClientError::NotAllowed("the SDP's a=fingerprint is not the fingerprint given"));
        }
        self.send_app(conversation, &AppMessage::Call(signal))
    }

    /// Sets chunk size, window and limits of file transfers started or accepted from now on.
    pub fn set_file_config(&mut self, config: TransferConfig) {
        self.transfers.set_config(config);
    }

    /// Applies the bubble's policy (from `welcome` or a `policy` frame: [`crate::signaling::Signaling::policy`]).
    /// From now on: sent and received messages disappear within its limit, timers beyond it are refused, and
    /// files it does not allow are refused before anything is offered.
    pub fn set_policy(&mut self, policy: peerbubble_proto::BubblePolicy) {
        self.policy = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> &peerbubble_proto::BubblePolicy {
        &self.policy
    }

    /// Offers a file to the contact of a 1:1 conversation. The edge hashed it ([`crate::files::FileHasher`]);
    /// its chunks are encrypted under a key exported from the conversation's MLS group for this transfer.
    pub fn offer_file(
        &mut self,
        peer: MemberId,
        name: &str,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<TransferId, ClientError> {
        self.offer_file_in(peer, (name, size, sha256), None)
    }

    /// Offers a file sent to a group to one of its members: the transfer is 1:1, as [`Client::offer_file`]
    /// (over the pair's conversation and connection; the edge sends one per member), and shown in the group on
    /// both sides. The group must be one we are in with `peer`.
    pub fn offer_group_file(
        &mut self,
        group: ConversationId,
        peer: MemberId,
        name: &str,
        size: u64,
        sha256: [u8; 32],
    ) -> Result<TransferId, ClientError> {
        if !self.shares_group(group, peer) {
            return Err(ClientError::NotAllowed("that member is not in this group with us"));
        }
        self.offer_file_in(peer, (name, size, sha256), Some(group))
    }

    /// Whether `group` is a group conversation, set up, with `peer` among its other members.
    fn shares_group(&self, group: ConversationId, peer: MemberId) -> bool {
        self.conversations.get(&group).is_some_and(|c| {
            c.ready
                && matches!(c.kind, Some(ConversationKind::Group { .. }))
                && others_in(&c.group, self.me).contains(&peer)
        })
    }

    fn offer_file_in(
        &mut self,
        peer: MemberId,
        (name, size, sha256): (&str, u64, [u8; 32]),
        group: Option<ConversationId>,
    ) -> Result<TransferId, ClientError> {
        if !self.policy.files_allowed {
            return Err(ClientError::Policy("files cannot be sent".into()));
        }
        if !self.policy.allows_file(size) {
            return Err(ClientError::Policy(format!("files are limited to {} bytes", self.policy.max_file_bytes)));
        }
        let conversation = self.direct_conversation(peer).ok_or(ClientError::NotAllowed("no 1:1 conversation"))?;
        if !self.conversation(conversation)?.ready {
            return Err(ClientError::NotReady(conversation));
        }
        let transfer = TransferId::random().map_err(file_err)?;
        let key = FileKey::new(self.export_secret(conversation, FILE_KEY_LABEL, &transfer.0)?);
        self.transfers
            .offer(peer, conversation, (transfer, name, size, sha256), group, key, self.now_ms)
            .map_err(file_err)?;
        self.send_file_controls()?;
        Ok(transfer)
    }

    /// Accepts an offered file; [`Event::FileChunk`]s follow.
    pub fn accept_file(&mut self, transfer: TransferId) -> Result<(), ClientError> {
        let size = self.transfers.asked_size(transfer).ok_or(ClientError::NotAllowed("no such file offer"))?;
        if !self.policy.allows_file(size) {
            // Kept: the member may still decline it, which tells the sender.
            return Err(ClientError::Policy("this bubble does not allow receiving this file".into()));
        }
        self.transfers.accept(transfer).map_err(file_err)?;
        self.send_file_controls()
    }

    /// Declines an offered file.
    pub fn decline_file(&mut self, transfer: TransferId) -> Result<(), ClientError> {
        if self.transfers.asked_size(transfer).is_none() {
            return Err(ClientError::NotAllowed("no such file offer"));
        }
        self.cancel_file(transfer)
    }

    /// Stops a transfer under way in either direction (or declines an offer); the contact is told, and the
    /// bytes kept of an incoming file may be deleted ([`Event::FileForgotten`]).
    pub fn cancel_file(&mut self, transfer: TransferId) -> Result<(), ClientError> {
        self.transfers.cancel(transfer).map_err(file_err)?;
        self.send_file_controls()
    }

    /// Pauses (`held`) or resumes a transfer under way; the contact is told and its screen says so. While
    /// either side holds it, the sender hands out no chunk.
    pub fn hold_file(&mut self, transfer: TransferId, held: bool) -> Result<(), ClientError> {
        self.transfers.hold(transfer, held).map_err(file_err)?;
        self.send_file_controls()
    }

    /// Forgets a finished file: its key is destroyed, and [`Event::FileForgotten`] tells the edge to delete
    /// the bytes it kept.
    pub fn forget_file(&mut self, transfer: TransferId) -> Result<(), ClientError> {
        self.transfers.forget(transfer).map_err(file_err)?;
        self.send_file_controls()
    }

    /// After a restart, before any DataChannel opens: an incoming file's chunk `index` as the edge kept it
    /// sealed ([`Event::FileChunk`]'s `sealed`), in order from 0. The transfer then resumes from there, not
    /// from the start. An error says this chunk did not open (torn storage): drop it and every later one.
    pub fn replay_file_chunk(&mut self, transfer: TransferId, index: u32, sealed: &[u8]) -> Result<(), ClientError> {
        self.transfers.replay(transfer, index, sealed).map_err(file_err)?;
        self.send_file_controls()
    }

    /// Decrypts chunk `index` of a received file kept sealed at rest (the key never leaves the client).
    pub fn open_stored_chunk(&self, transfer: TransferId, index: u32, sealed: &[u8]) -> Result<Vec<u8>, ClientError> {
        self.transfers.open_stored(transfer, index, sealed).map_err(file_err)
    }

    /// Every file transfer and kept file, oldest first, for the member's screen.
    pub fn files(&self) -> Vec<FileStatus> {
        self.transfers.list()
    }

    /// The offer of a transfer this client knows (name, size, chunking, hash).
    pub fn file_offer(&self, transfer: TransferId) -> Option<&FileOffer> {
        self.transfers.offer_of(transfer)
    }

    /// The next chunk of an outgoing file to read and seal, if the window allows, nobody holds it and the
    /// DataChannel with the contact is open (chunks never take the relay; the receiver resumes the transfer
    /// when the channel opens again).
    pub fn next_file_chunk(&mut self, transfer: TransferId) -> Option<ChunkRequest> {
        if !self.paths.has_channel(self.transfers.peer(transfer)?) {
            return None;
        }
        self.transfers.next_chunk(transfer)
    }

    /// What [`next_file_chunk`](Self::next_file_chunk) would hand out, without handing it out (to read its
    /// bytes first, asynchronously).
    pub fn peek_file_chunk(&self, transfer: TransferId) -> Option<ChunkRequest> {
        if !self.paths.has_channel(self.transfers.peer(transfer)?) {
            return None;
        }
        self.transfers.peek_chunk(transfer)
    }

    /// Seals a chunk into a DataChannel message for the transfer's contact.
    pub fn seal_file_chunk(
        &mut self,
        transfer: TransferId,
        index: u32,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        self.transfers.seal(transfer, index, plaintext).map_err(file_err)
    }

    /// The contact of a transfer.
    pub fn file_peer(&self, transfer: TransferId) -> Option<MemberId> {
        self.transfers.peer(transfer)
    }

    /// The key of an incoming transfer, while it runs and once received, to decrypt chunks kept sealed at
    /// rest ([`crate::files::open_stored_chunk`]). Never store it in clear: [`Client::save`] keeps it in the
    /// encrypted key store, and [`Client::forget_file`] destroys it.
    pub fn file_key(&self, transfer: TransferId) -> Option<&FileKey> {
        self.transfers.key(transfer)
    }

    /// Sends what the transfers queued, inside MLS, and moves their events out.
    fn send_file_controls(&mut self) -> Result<(), ClientError> {
        let mut first_error = None;
        while let Some((conversation, control)) = self.transfers.poll_control() {
            if let Err(e) = self.send_app(conversation, &AppMessage::File(control)) {
                first_error.get_or_insert(e);
            }
        }
        while let Some((to, bytes)) = self.transfers.poll_frame() {
            self.outputs.push_back(Output::Channel { to, bytes });
        }
        while let Some(event) = self.transfers.poll_event() {
            self.events.push_back(event);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn on_file(&mut self, conversation: ConversationId, from: MemberId, control: FileControl) {
        if self.direct_conversation(from) != Some(conversation) {
            self.events.push_back(Event::Refused { from, reason: "file transfer outside its 1:1 conversation".into() });
            return;
        }
        let result = if let FileControl::Offer(mut offer) = control {
            // Shown in a group only if it is one we are in with the sender; otherwise in the 1:1 conversation.
            if offer.group.is_some_and(|g| !self.shares_group(g, from)) {
                offer.group = None;
            }
            match self.export_secret(conversation, FILE_KEY_LABEL, &offer.transfer.0) {
                Ok(key) => self.transfers.on_offer(from, conversation, offer, FileKey::new(key), self.now_ms),
                Err(e) => Err(e.to_string()),
            }
        } else {
            self.transfers.on_control(from, control)
        };
        if let Err(reason) = result {
            self.events.push_back(Event::Refused { from, reason });
        }
        let _ = self.send_file_controls();
    }

    fn on_chunk(&mut self, from: MemberId, bytes: &[u8]) -> Result<(), String> {
        let result = self.transfers.on_chunk(from, bytes);
        self.send_file_controls().map_err(|e| e.to_string())?;
        result
    }

    /// The server accepted our commit: merge it, welcome the added members.
    pub fn commit_accepted(&mut self, token: u64) {
        let Some((id, PendingCommit { op, welcome, .. })) = self.take_pending(token) else { return };
        let provider = &self.provider;
        let Some(c) = self.conversations.get_mut(&id) else { return };
        if let Err(e) = c.group.merge_pending_commit(provider) {
            self.events.push_back(Event::Refused { from: self.me, reason: format!("merging our commit: {e:?}") });
            return;
        }
        c.retry_at_ms = None;
        let me = self.me;
        let members = others_in(&c.group, me);
        let first_ready = !c.ready;
        c.ready = true;
        let kind = c.kind.clone();
        let timer_secs = c.timer_secs;
        if let (true, Some(kind)) = (first_ready, kind.clone()) {
            let direct_with = match (&kind, members.as_slice()) {
                (ConversationKind::Direct, [peer]) => Some(*peer),
                _ => None,
            };
            self.events.push_back(Event::ConversationReady { conversation: id, kind, members: members.clone() });
            // The contact may have started one with us meanwhile (and we joined it): keep one, as the joiner does.
            if let Some(peer) = direct_with {
                self.settle_direct(id, peer);
            }
        } else {
            self.events.push_back(Event::MembersChanged { conversation: id, members });
        }
        if let Some((to, welcome)) = welcome {
            self.outputs.push_back(Output::Relay { to, body: Envelope::Welcome { welcome }.encode() });
        }
        if let (Op::Add(_, _), Some(kind)) = (&op, kind) {
            let _ = self.send_app(id, &AppMessage::Meta { conversation: kind, timer_secs });
        }
        self.drive(id);
        self.replay_early(id);
    }

    /// The server refused our commit (another commit won the epoch): drop it; it is retried once the winner
    /// has been processed.
    pub fn commit_rejected(&mut self, token: u64) {
        let Some((id, PendingCommit { op, .. })) = self.take_pending(token) else { return };
        let (provider, now) = (&self.provider, self.now_ms);
        if let Some(c) = self.conversations.get_mut(&id) {
            let _ = c.group.clear_pending_commit(provider.storage());
            c.ops.push_front(op);
            c.retry_at_ms = Some(now + COMMIT_RETRY_MS);
        }
    }

    /// Advances the clock: disappearing messages expire, refused commits are retried.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        self.requests.retain(|_, (_, _, at)| now_ms.saturating_sub(*at) < REQUEST_EXPIRY_MS);
        let mut retry = Vec::new();
        for (id, c) in &mut self.conversations {
            let mut gone = Vec::new();
            c.history.retain(|m| {
                let keep = m.expires_at_ms.is_none_or(|at| at > now_ms);
                if !keep {
                    gone.push(m.id);
                }
                keep
            });
            self.events.extend(gone.into_iter().map(|m| Event::Expired { conversation: *id, id: m }));
            if c.retry_at_ms.is_some_and(|at| at <= now_ms) {
                c.retry_at_ms = None;
                retry.push(*id);
            }
        }
        for id in retry {
            self.drive(id);
        }
        self.expire_early(now_ms);
    }

    /// When [`Client::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.conversations
            .values()
            .flat_map(|c| c.history.iter().filter_map(|m| m.expires_at_ms).chain(c.retry_at_ms))
            .chain(self.early.iter().map(|e| e.until_ms))
            .min()
    }

    /// Keeps a message that arrived ahead of its conversation's Welcome or of an earlier commit.
    fn hold(
        &mut self,
        conversation: ConversationId,
        epoch: u64,
        from: MemberId,
        bytes: &[u8],
        path: Path,
        until_ms: u64,
    ) {
        if self.early.len() == MAX_EARLY
            && let Some(dropped) = self.early.pop_front()
        {
            self.events.push_back(Event::Refused {
                from: dropped.from,
                reason: "too many messages ahead of their conversation; the oldest was dropped".into(),
            });
        }
        self.early.push_back(Early { conversation, epoch, from, bytes: bytes.to_vec(), path, until_ms });
    }

    /// Tries again the messages kept for `conversation` (a Welcome or a commit of it was just processed); those
    /// still ahead are kept with their first deadline.
    fn replay_early(&mut self, conversation: ConversationId) {
        if !self.early.iter().any(|e| e.conversation == conversation) {
            return;
        }
        let (now, later): (VecDeque<Early>, VecDeque<Early>) =
            std::mem::take(&mut self.early).into_iter().partition(|e| e.conversation == conversation);
        self.early = later;
        for e in now {
            if let Err(reason) = self.on_mls_until(e.from, &e.bytes, e.path, e.until_ms) {
                self.events.push_back(Event::Refused { from: e.from, reason });
            }
        }
    }

    /// Messages still ahead after their grace: for a conversation we are in, commits were missed (ask to
    /// rejoin); for one we never joined, the message is refused.
    fn expire_early(&mut self, now_ms: u64) {
        while let Some(pos) = self.early.iter().position(|e| e.until_ms <= now_ms) {
            let Some(e) = self.early.remove(pos) else { break };
            match self.conversations.get(&e.conversation).map(|c| c.group.epoch().as_u64()) {
                Some(current) if e.epoch > current => {
                    if let Err(reason) = self.ask_rejoin(e.conversation, e.from, current) {
                        self.events.push_back(Event::Refused { from: e.from, reason });
                    }
                }
                Some(_) => {
                    if let Err(reason) = self.on_mls_until(e.from, &e.bytes, e.path, now_ms) {
                        self.events.push_back(Event::Refused { from: e.from, reason });
                    }
                }
                None => self
                    .events
                    .push_back(Event::Refused { from: e.from, reason: "message for an unknown conversation".into() }),
            }
        }
    }

    /// The bubble lost commits of `group` it kept for us while we were away (a mailbox gap): ask another member
    /// of the group, online ones first, to add us again. Nothing happens for a group we are not in.
    pub fn missed_commits(&mut self, group: &[u8]) {
        let Ok(id) = <[u8; 16]>::try_from(group).map(ConversationId) else { return };
        let me = self.me;
        let Some(c) = self.conversations.get(&id) else { return };
        let current = c.group.epoch().as_u64();
        let others: Vec<MemberId> = member_ids(&c.group).into_iter().filter(|m| *m != me).collect();
        let online = |m: &&MemberId| self.directory.get(m).is_some_and(|e| e.online);
        let Some(ask) = others.iter().find(online).or(others.first()).copied() else { return };
        if let Err(reason) = self.ask_rejoin(id, ask, current) {
            self.events.push_back(Event::Refused { from: ask, reason });
        }
    }

    /// We missed commits while away: ask `from` to add us again (once per epoch).
    fn ask_rejoin(&mut self, id: ConversationId, from: MemberId, current: u64) -> Result<(), String> {
        let Some(c) = self.conversations.get_mut(&id) else { return Ok(()) };
        if c.rejoin_asked.is_some_and(|e| e >= current) {
            return Ok(());
        }
        c.rejoin_asked = Some(current);
        let kp = self.fresh_key_package().map_err(|e| e.to_string())?;
        self.outputs.push_back(Output::Relay {
            to: from,
            body: Envelope::Rejoin { group: id.0.to_vec(), key_package: kp }.encode(),
        });
        self.events.push_back(Event::RejoinRequested { conversation: id, asked: from });
        Ok(())
    }

    /// An envelope from `from` (authenticated by the server for [`Path::Relay`], by the DTLS fingerprint for
    /// [`Path::Channel`]). Whatever is wrong with it is reported as [`Event::Refused`] and changes nothing.
    pub fn handle_envelope(&mut self, from: MemberId, bytes: &[u8], path: Path, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        if let Err(reason) = self.envelope(from, bytes, path) {
            self.events.push_back(Event::Refused { from, reason });
        }
    }

    fn envelope(&mut self, from: MemberId, bytes: &[u8], path: Path) -> Result<(), String> {
        let key = self.visible_key(from).map_err(|e| e.to_string())?;
        if bytes.first() == Some(&CHUNK_FRAME_TAG) {
            if path != Path::Channel {
                return Err("file chunks travel only on the DataChannel".into());
            }
            return self.on_chunk(from, bytes);
        }
        if bytes.first() == Some(&ACK_FRAME_TAG) {
            if path != Path::Channel {
                return Err("file acknowledgements travel only on the DataChannel".into());
            }
            let result = self.transfers.on_ack_frame(from, bytes);
            self.send_file_controls().map_err(|e| e.to_string())?;
            return result;
        }
        match Envelope::decode(bytes).map_err(|e| e.to_string())? {
            Envelope::KeyPackageRequest { request } => self.answer_key_package(from, request),
            Envelope::KeyPackage { request, key_package } => {
                let (asked, purpose, _) = self.requests.get(&request).copied().ok_or("unsolicited KeyPackage")?;
                if asked != from {
                    return Err("KeyPackage from a member we did not ask".into());
                }
                self.requests.remove(&request);
                let kp = self.validate_key_package(&key_package, &key)?;
                self.on_key_package(from, purpose, kp)
            }
            Envelope::Welcome { welcome } => self.on_welcome(from, &welcome),
            Envelope::Mls { message } => self.on_mls(from, &message, path),
            Envelope::Rejoin { group, key_package } => {
                let id = conversation_id(&group).ok_or("bad group id")?;
                let kp = self.validate_key_package(&key_package, &key)?;
                let c = self.conversations.get_mut(&id).ok_or("rejoin for an unknown conversation")?;
                if !c.ready || !member_ids(&c.group).contains(&from) {
                    return Err("rejoin from a member not in the group".into());
                }
                c.ops.push_back(Op::Remove(from));
                c.ops.push_back(Op::Add(from, Box::new(kp)));
                self.drive(id);
                Ok(())
            }
        }
    }

    fn answer_key_package(&mut self, from: MemberId, request: [u8; 16]) -> Result<(), String> {
        // Each KeyPackage leaves a private key in our storage until used: a member may not make us mint them
        // without bound.
        let now = self.now_ms;
        let (since, count) = self.minted.entry(from).or_insert((now, 0));
        if now.saturating_sub(*since) >= KEY_PACKAGE_WINDOW_MS {
            (*since, *count) = (now, 0);
        }
        if *count >= KEY_PACKAGES_PER_WINDOW {
            return Err("too many KeyPackage requests from this member; try again in a minute".into());
        }
        *count += 1;
        let kp = self.fresh_key_package().map_err(|e| e.to_string())?;
        self.outputs
            .push_back(Output::Relay { to: from, body: Envelope::KeyPackage { request, key_package: kp }.encode() });
        Ok(())
    }

    fn fresh_key_package(&self) -> Result<Vec<u8>, ClientError> {
        let bundle = KeyPackage::builder()
            .build(CIPHERSUITE, &self.provider, &self.signer, self.signer.credential())
            .map_err(mls_err)?;
        bundle.key_package().tls_serialize_detached().map_err(mls_err)
    }

    /// A KeyPackage that stays usable after it was used (RFC 9420 `last_resort`): its private keys are kept.
    fn last_resort_key_package(&self) -> Result<Vec<u8>, ClientError> {
        // RFC 9420 §7.2: an extension in a KeyPackage must be one its leaf says it supports.
        let capabilities = openmls::prelude::Capabilities::builder()
            .extensions(vec![openmls::prelude::ExtensionType::LastResort])
            .build();
        let bundle = KeyPackage::builder()
            .leaf_node_capabilities(capabilities)
            .mark_as_last_resort()
            .build(CIPHERSUITE, &self.provider, &self.signer, self.signer.credential())
            .map_err(mls_err)?;
        bundle.key_package().tls_serialize_detached().map_err(mls_err)
    }

    fn validate_key_package(&self, bytes: &[u8], key: &PublicKey) -> Result<KeyPackage, String> {
        let kp = KeyPackageIn::tls_deserialize_exact(bytes)
            .map_err(|e| format!("malformed KeyPackage: {e}"))?
            .validate(self.provider.crypto(), ProtocolVersion::Mls10)
            .map_err(|e| format!("invalid KeyPackage: {e:?}"))?;
        if kp.ciphersuite() != CIPHERSUITE {
            return Err("KeyPackage of another ciphersuite".into());
        }
        let leaf = kp.leaf_node();
        mls::credential_member(leaf.credential(), leaf.signature_key().as_slice(), key)
            .ok_or("KeyPackage credential does not match the directory's key")?;
        Ok(kp)
    }

    fn on_key_package(&mut self, from: MemberId, purpose: Purpose, kp: KeyPackage) -> Result<(), String> {
        let id = match purpose {
            Purpose::Direct => {
                if self.direct_conversation(from).is_some() {
                    return Ok(());
                }
                self.new_group(ConversationKind::Direct).map_err(|e| e.to_string())?
            }
            Purpose::AddTo(id) => id,
        };
        let c = self.conversations.get_mut(&id).ok_or("conversation closed meanwhile")?;
        c.ops.push_back(Op::Add(from, Box::new(kp)));
        self.drive(id);
        Ok(())
    }

    fn on_welcome(&mut self, from: MemberId, welcome: &[u8]) -> Result<(), String> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|e| format!("malformed Welcome: {e}"))?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else { return Err("not a Welcome".into()) };
        let join = StagedWelcome::build_from_welcome(&self.provider, &mls::join_config(), welcome)
            .map_err(|e| format!("Welcome refused: {e:?}"))?;
        let id = conversation_id(join.processed_welcome().unverified_group_info().group_id().as_slice())
            .ok_or("bad group id")?;
        // Rejoining after missed commits replaces the stale state; any other Welcome for a group we are in is
        // refused.
        let rejoining = match self.conversations.get(&id) {
            Some(c) if c.rejoin_asked.is_some() => true,
            Some(_) => return Err("Welcome for a conversation we are in".into()),
            None => false,
        };
        let join = if rejoining { join.replace_old_group() } else { join };
        let staged = join.build().map_err(|e| format!("Welcome refused: {e:?}"))?;
        // Never downgraded: a group in any other suite (a classical one) is refused, whoever invites us.
        if staged.group_context().ciphersuite() != CIPHERSUITE {
            return Err("Welcome to a group of another ciphersuite".into());
        }
        let sender = staged.welcome_sender().map_err(|e| format!("{e:?}"))?;
        let key = self.visible_key(from).map_err(|e| e.to_string())?;
        if mls::credential_member(sender.credential(), sender.signature_key().as_slice(), &key).is_none() {
            return Err("Welcome signed by someone other than its sender".into());
        }
        for m in staged.members() {
            self.check_member(&m.credential, &m.signature_key)?;
        }
        let group = staged.into_group(&self.provider).map_err(|e| format!("joining: {e:?}"))?;
        let mut conversation = Conversation::new(group, None);
        if let Some(old) = self.conversations.remove(&id) {
            // Same conversation, new membership: what was said before stays in the history.
            conversation.kind = old.kind;
            conversation.timer_secs = old.timer_secs;
            conversation.history = old.history;
            conversation.ready = old.ready;
            let members: Vec<_> = member_ids(&conversation.group).into_iter().filter(|m| *m != self.me).collect();
            self.events.push_back(Event::MembersChanged { conversation: id, members });
        }
        self.conversations.insert(id, conversation);
        self.replay_early(id);
        Ok(())
    }

    /// A credential in a group we are asked to trust: ourselves, or a member of our directory with its key.
    fn check_member(&self, credential: &openmls::prelude::Credential, signature_key: &[u8]) -> Result<(), String> {
        let claimed = mls::claimed_member(credential).ok_or("credential that is not a member id")?;
        if claimed == *self.me.as_bytes() && signature_key == self.signer.public_key().as_bytes() {
            return Ok(());
        }
        let entry = self
            .directory
            .values()
            .find(|e| *e.member.as_bytes() == claimed)
            .ok_or("group member not in our directory")?;
        mls::credential_member(credential, signature_key, &entry.public_key)
            .map(|_| ())
            .ok_or_else(|| "group member's key differs from the directory's".into())
    }

    fn on_mls(&mut self, from: MemberId, bytes: &[u8], path: Path) -> Result<(), String> {
        self.on_mls_until(from, bytes, path, self.now_ms + EARLY_GRACE_MS)
    }

    /// An MLS message; one ahead of what it builds on is kept until `until_ms` ([`EARLY_GRACE_MS`]).
    fn on_mls_until(&mut self, from: MemberId, bytes: &[u8], path: Path, until_ms: u64) -> Result<(), String> {
        let message = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|e| format!("malformed MLS message: {e}"))?;
        let protocol =
            message.try_into_protocol_message().map_err(|e| format!("not an MLS protocol message: {e:?}"))?;
        let id = conversation_id(protocol.group_id().as_slice()).ok_or("bad group id")?;
        let epoch = protocol.epoch().as_u64();
        let me = self.me;
        let Some(c) = self.conversations.get_mut(&id) else {
            // Its Welcome may still be on the way (through the server, while this took the DataChannel).
            if until_ms <= self.now_ms {
                return Err("message for an unknown conversation".into());
            }
            self.hold(id, epoch, from, bytes, path, until_ms);
            return Ok(());
        };
        let current = c.group.epoch().as_u64();
        if epoch > current {
            // A commit may still be on the way; past the grace, we missed it and ask to rejoin.
            if until_ms > self.now_ms {
                self.hold(id, epoch, from, bytes, path, until_ms);
                return Ok(());
            }
            return self.ask_rejoin(id, from, current);
        }
        if c.pending.is_some() && protocol.content_type() == openmls::prelude::ContentType::Commit && epoch == current {
            // The server relays only the commit it ordered first: ours lost. Retry after this one.
            if let Some(p) = c.pending.take() {
                let _ = c.group.clear_pending_commit(self.provider.storage());
                c.ops.push_front(p.op);
            }
        }
        let processed = c.group.process_message(&self.provider, protocol).map_err(|e| format!("MLS refused: {e:?}"))?;
        self.mls_generation += 1;
        let claimed = mls::claimed_member(processed.credential()).ok_or("sender credential is not a member id")?;
        if claimed != *from.as_bytes() {
            return Err("MLS sender differs from the transport's sender".into());
        }
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let app = AppMessage::decode(&app.into_bytes()).map_err(|e| e.to_string())?;
                self.on_app(id, from, app, path);
                Ok(())
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                for add in staged.add_proposals() {
                    let leaf = add.add_proposal().key_package().leaf_node();
                    if let Err(e) = self.check_member(leaf.credential(), leaf.signature_key().as_slice()) {
                        self.destroy(id, CloseReason::UntrustedMember);
                        return Err(format!("commit adds an untrusted key ({e}); conversation closed"));
                    }
                }
                let removed = staged.self_removed();
                let Some(c) = self.conversations.get_mut(&id) else { return Ok(()) };
                c.group.merge_staged_commit(&self.provider, *staged).map_err(|e| format!("merge: {e:?}"))?;
                if removed {
                    self.destroy(id, CloseReason::Removed);
                    return Ok(());
                }
                c.rejoin_asked = None;
                c.retry_at_ms = None;
                let members = others_in(&c.group, me);
                self.events.push_back(Event::MembersChanged { conversation: id, members });
                self.drive(id);
                self.replay_early(id);
                Ok(())
            }
            _ => Err("standalone proposals are not used".into()),
        }
    }

    fn on_app(&mut self, id: ConversationId, from: MemberId, app: AppMessage, path: Path) {
        let now = self.now_ms;
        let me = self.me;
        let policy = self.policy;
        let Some(c) = self.conversations.get_mut(&id) else { return };
        fn own(c: &mut Conversation, mid: MessageId, from: MemberId) -> Option<&mut ChatMessage> {
            c.history.iter_mut().find(|m| m.id == mid && m.from == from)
        }
        match app {
            AppMessage::Meta { conversation, timer_secs } => {
                if c.kind.is_some() {
                    return;
                }
                if conversation == ConversationKind::Direct && c.group.members().count() != 2 {
                    self.events.push_back(Event::Refused { from, reason: "1:1 conversation with more members".into() });
                    return;
                }
                c.kind = Some(conversation.clone());
                c.timer_secs = timer_secs;
                c.ready = true;
                let members = others_in(&c.group, me);
                self.events.push_back(Event::ConversationReady {
                    conversation: id,
                    kind: conversation.clone(),
                    members,
                });
                if conversation == ConversationKind::Direct {
                    self.settle_direct(id, from);
                }
            }
            AppMessage::Text { id: mid, text, sent_at_ms, expires_in_secs } => {
                if c.history.iter().any(|m| m.id == mid) {
                    return;
                }
                // Our bubble's limit holds on our device whatever the sender's client asked for.
                let timer = policy.timer(expires_in_secs.or(c.timer_secs));
                c.history.push(ChatMessage {
                    id: mid,
                    from,
                    text: text.clone(),
                    sent_at_ms,
                    edited: false,
                    deleted: false,
                    expires_at_ms: timer.map(|t| now + u64::from(t) * 1000),
                    receipts: BTreeMap::new(),
                });
                self.events.push_back(Event::Message { conversation: id, from, id: mid, text, path });
                // Delivery receipt, best effort.
                let _ = self.send_app(id, &AppMessage::Receipt { ids: vec![mid], kind: ReceiptKind::Delivered });
            }
            AppMessage::Edit { id: mid, text } => {
                if let Some(m) = own(c, mid, from).filter(|m| !m.deleted) {
                    m.text.clone_from(&text);
                    m.edited = true;
                    self.events.push_back(Event::Edited { conversation: id, id: mid, text });
                }
            }
            AppMessage::Delete { id: mid } => {
                if let Some(m) = own(c, mid, from) {
                    m.text.clear();
                    m.deleted = true;
                    self.events.push_back(Event::Deleted { conversation: id, id: mid });
                }
            }
            AppMessage::Receipt { ids, kind } => {
                self.paths.confirmed(from, &ids);
                for m in c.history.iter_mut().filter(|m| m.from == me && ids.contains(&m.id)) {
                    let slot = m.receipts.entry(from).or_insert(kind);
                    if kind == ReceiptKind::Read {
                        *slot = kind;
                    }
                }
                self.events.push_back(Event::Receipt { conversation: id, from, ids, kind });
            }
            AppMessage::Typing { typing } => self.events.push_back(Event::Typing { conversation: id, from, typing }),
            AppMessage::Timer { timer_secs } => {
                c.timer_secs = timer_secs;
                self.events.push_back(Event::TimerChanged { conversation: id, timer_secs });
            }
            AppMessage::Leave => {
                self.group_calls.left_group(id, from);
                self.events.push_back(Event::Left { conversation: id, member: from });
                c.ops.push_back(Op::Remove(from));
                self.drive(id);
            }
            AppMessage::Call(signal) => self.on_call(id, from, signal),
            AppMessage::File(control) => self.on_file(id, from, control),
        }
    }

    fn on_call(&mut self, conversation: ConversationId, from: MemberId, signal: CallSignal) {
        if matches!(
            signal,
            CallSignal::Ring { .. } | CallSignal::Accept { .. } | CallSignal::End { .. } | CallSignal::Full { .. }
        ) && self.is_group(conversation).unwrap_or(false)
        {
            return self.on_group_call(conversation, from, signal);
        }
        if matches!(signal, CallSignal::Full { .. }) {
            self.events.push_back(Event::Refused { from, reason: "a group call's refusal outside a group".into() });
            return;
        }
        if self.direct_conversation(from) != Some(conversation) {
            self.events.push_back(Event::Refused { from, reason: "call set-up outside its 1:1 conversation".into() });
            return;
        }
        let refuse = |reason: &str| Event::Refused { from, reason: reason.to_owned() };
        if let CallSignal::Ring { ring, .. } = &signal
            && !self.policy.calls_allowed
        {
            // The bubble forbids calls: the caller hears why, the member is not disturbed.
            self.events.push_back(refuse("a call rang where the bubble does not allow calls"));
            let end = CallSignal::End { ring: *ring, reason: crate::message::EndReason::NotAllowed };
            let _ = self.send_app(conversation, &AppMessage::Call(end));
            return;
        }
        match self.calls.on_signal(self.me, from, &signal) {
            Err(reason) => return self.events.push_back(refuse(reason)),
            Ok(Verdict::Ignore) => return,
            Ok(Verdict::HungUp) => self.paths.drop_channel(from),
            Ok(Verdict::Pass) => {}
        }
        self.events.push_back(Event::Call { conversation, from, signal });
    }

    /// Ringing, joining and leaving the call of a group: every member of the group hears it, so each knows
    /// who is in the call. Joins beyond the mesh's limit are ignored (their sender should not have made them).
    fn on_group_call(&mut self, conversation: ConversationId, from: MemberId, signal: CallSignal) {
        let refuse = |reason: &str| Event::Refused { from, reason: reason.to_owned() };
        match &signal {
            CallSignal::Ring { .. } if !self.policy.calls_allowed => {
                self.events.push_back(refuse("a call rang where the bubble does not allow calls"));
                return;
            }
            CallSignal::Ring { ring, video } => {
                if self.group_calls.rang(conversation, from, *ring, *video).ring != *ring {
                    // Another call is under way (or won at once): this ring is not the group's call.
                    return;
                }
            }
            CallSignal::Accept { ring } => match self.group_calls.joined(conversation, from, *ring) {
                Ok(_) => {}
                Err(err) => {
                    // The caller settles a race for the last seat: everyone else counted the join the server
                    // ordered first, and the one that came later hears from the caller that it is not in.
                    let caller = self
                        .group_calls
                        .get(conversation)
                        .is_some_and(|c| c.ring == *ring && c.caller == self.me && c.participants.contains(&self.me));
                    if caller && matches!(err, GroupCallError::Full(_)) {
                        let full = CallSignal::Full { ring: *ring, member: from };
                        let _ = self.send_app(conversation, &AppMessage::Call(full));
                    }
                    self.events.push_back(refuse(&format!("a join not taken: {err}")));
                    return;
                }
            },
            CallSignal::Full { ring, member } => {
                // Only the caller says who is not in; a member it names leaves the call (us included).
                let from_caller =
                    self.group_calls.get(conversation).is_some_and(|c| c.ring == *ring && c.caller == from);
                let counted = self.group_calls.get(conversation).is_some_and(|c| c.participants.contains(member));
                if !from_caller {
                    self.events.push_back(refuse("a call's refusal from someone who did not ring it"));
                    return;
                }
                if !counted {
                    return;
                }
                if *member == self.me {
                    self.group_calls.turned_out(conversation, self.me, *ring);
                } else {
                    self.group_calls.left(conversation, *member, *ring);
                }
            }
            CallSignal::End { ring, .. } => {
                let was_in = self
                    .group_calls
                    .get(conversation)
                    .is_some_and(|c| c.ring == *ring && c.participants.contains(&from));
                if !was_in {
                    return;
                }
                self.group_calls.left(conversation, from, *ring);
            }
            _ => return,
        }
        self.events.push_back(Event::Call { conversation, from, signal });
    }

    /// Two 1:1 conversations with the same contact (both started at once): keep the lower id on both sides.
    /// What we wrote in the other one is written again in the one kept: the contact may have dropped that
    /// conversation before our messages in it arrived, and either side's copy of it is destroyed here.
    fn settle_direct(&mut self, id: ConversationId, peer: MemberId) {
        let twins: Vec<_> = self
            .conversations
            .iter()
            .filter(|(other, c)| {
                **other != id && c.kind == Some(ConversationKind::Direct) && others_in(&c.group, self.me) == [peer]
            })
            .map(|(other, _)| *other)
            .collect();
        for other in twins {
            let (winner, loser) = (id.min(other), id.max(other));
            let me = self.me;
            // Ours, with their ids: an edit, a deletion or a receipt the page addresses to the dropped twin
            // finds them in the one kept.
            let ours: Vec<(MessageId, String)> = self
                .conversations
                .get(&loser)
                .map(|c| {
                    c.history.iter().filter(|m| m.from == me && !m.deleted).map(|m| (m.id, m.text.clone())).collect()
                })
                .unwrap_or_default();
            self.destroy(loser, CloseReason::Superseded);
            for kept in self.superseded.values_mut().filter(|kept| **kept == loser) {
                *kept = winner;
            }
            if self.superseded.len() >= MAX_SUPERSEDED
                && let Some(oldest) = self.superseded.keys().next().copied()
            {
                self.superseded.remove(&oldest);
            }
            self.superseded.insert(loser, winner);
            for (id, text) in ours {
                if let Err(e) = self.write_text(winner, id, &text) {
                    self.events
                        .push_back(Event::Refused { from: me, reason: format!("writing again after a merge: {e}") });
                }
            }
        }
    }

    /// `id`, or the conversation kept in its place when it was dropped for its twin.
    fn kept(&self, id: ConversationId) -> ConversationId {
        match self.superseded.get(&id) {
            Some(kept) if !self.conversations.contains_key(&id) => *kept,
            _ => id,
        }
    }

    fn new_group(&mut self, kind: ConversationKind) -> Result<ConversationId, ClientError> {
        let id = ConversationId(random16()?);
        let group = MlsGroup::new_with_group_id(
            &self.provider,
            &self.signer,
            &mls::create_config(),
            GroupId::from_slice(&id.0),
            self.signer.credential(),
        )
        .map_err(mls_err)?;
        self.conversations.insert(id, Conversation::new(group, Some(kind)));
        Ok(id)
    }

    fn request_key_package(&mut self, member: MemberId, purpose: Purpose) -> Result<(), ClientError> {
        if self.requests.len() >= MAX_PENDING_REQUESTS {
            return Err(ClientError::NotAllowed("too many unanswered KeyPackage requests; wait for answers"));
        }
        let request = random16()?;
        self.requests.insert(request, (member, purpose, self.now_ms));
        if self.bubble_keeps_key_packages && self.paths.is_away(member) {
            self.outputs.push_back(Output::ClaimKeyPackage { request, member });
        } else {
            self.outputs
                .push_back(Output::Relay { to: member, body: Envelope::KeyPackageRequest { request }.encode() });
        }
        Ok(())
    }

    /// Starts the next queued group change if none is waiting for the server.
    fn drive(&mut self, id: ConversationId) {
        let me = self.me;
        let Some(c) = self.conversations.get_mut(&id) else { return };
        if c.pending.is_some() || c.retry_at_ms.is_some() {
            return;
        }
        while let Some(op) = c.ops.pop_front() {
            let members = member_ids(&c.group);
            let result = match &op {
                Op::Add(m, _) if members.contains(m) => continue,
                Op::Remove(m) if !members.contains(m) || *m == me => continue,
                Op::Add(_, kp) => c
                    .group
                    .add_members(&self.provider, &self.signer, std::slice::from_ref(kp))
                    .map(|(commit, welcome, _)| (commit, Some(welcome)))
                    .map_err(mls_err),
                Op::Update => c
                    .group
                    .self_update(&self.provider, &self.signer, openmls::prelude::LeafNodeParameters::default())
                    .map(|bundle| (bundle.into_commit(), None))
                    .map_err(mls_err),
                Op::Remove(m) => match leaf_of(&c.group, *m) {
                    Some(leaf) => c
                        .group
                        .remove_members(&self.provider, &self.signer, &[leaf])
                        .map(|(commit, welcome, _)| (commit, welcome))
                        .map_err(mls_err),
                    None => continue,
                },
            };
            let (commit, welcome) = match result {
                Ok(r) => r,
                Err(e) => {
                    self.events.push_back(Event::Refused { from: me, reason: format!("group change failed: {e}") });
                    continue;
                }
            };
            let (Ok(commit), welcome) = (commit.tls_serialize_detached(), welcome.map(|w| w.tls_serialize_detached()))
            else {
                let _ = c.group.clear_pending_commit(self.provider.storage());
                continue;
            };
            let token = self.next_token;
            self.next_token += 1;
            let to: Vec<_> = members.into_iter().filter(|m| *m != me).collect();
            self.outputs.push_back(Output::Commit {
                token,
                group: id.0.to_vec(),
                epoch: c.group.epoch().as_u64(),
                to,
                body: Envelope::Mls { message: commit }.encode(),
            });
            // The Welcome is held until the server accepts the commit.
            let welcome = match (&op, welcome) {
                (Op::Add(m, _), Some(Ok(welcome))) => Some((*m, welcome)),
                _ => None,
            };
            c.pending = Some(PendingCommit { token, op, welcome });
            return;
        }
    }

    fn take_pending(&mut self, token: u64) -> Option<(ConversationId, PendingCommit)> {
        let (id, c) =
            self.conversations.iter_mut().find(|(_, c)| c.pending.as_ref().is_some_and(|p| p.token == token))?;
        Some((*id, c.pending.take()?))
    }

    fn send_app(&mut self, id: ConversationId, message: &AppMessage) -> Result<(), ClientError> {
        self.send_app_confirmed(id, message, None)
    }

    /// [`Client::send_app`]; a chat message (`confirm`) sent on a channel is kept until its receipt.
    fn send_app_confirmed(
        &mut self,
        id: ConversationId,
        message: &AppMessage,
        confirm: Option<MessageId>,
    ) -> Result<(), ClientError> {
        let me = self.me;
        let c = self.conversations.get_mut(&id).ok_or(ClientError::NoConversation(id))?;
        if !c.ready && !matches!(message, AppMessage::Meta { .. }) {
            return Err(ClientError::NotReady(id));
        }
        let out = c.group.create_message(&self.provider, &self.signer, &message.encode()).map_err(mls_err)?;
        self.mls_generation += 1;
        let body = Envelope::Mls { message: out.tls_serialize_detached().map_err(mls_err)? }.encode();
        for m in member_ids(&c.group).into_iter().filter(|m| *m != me) {
            match self.paths.route(m, &body, confirm) {
                Route::Channel => self.outputs.push_back(Output::Channel { to: m, bytes: body.clone() }),
                Route::Relay => self.outputs.push_back(Output::Relay { to: m, body: body.clone() }),
                Route::TooLarge => return Err(ClientError::TooLarge(body.len())),
            }
        }
        Ok(())
    }

    fn destroy(&mut self, id: ConversationId, reason: CloseReason) {
        if let Some(mut c) = self.conversations.remove(&id) {
            if c.kind == Some(ConversationKind::Direct) {
                for peer in others_in(&c.group, self.me) {
                    self.calls.end(peer);
                    self.paths.forget(peer);
                }
            }
            self.group_calls.forget(id);
            // Its file keys go with it, and the edge is told to delete the bytes it kept; files sent to a group
            // that is gone stop (each pair's contact is told) and are forgotten.
            self.transfers.forget_conversation(id);
            self.transfers.forget_group(&id);
            let _ = self.send_file_controls();
            while let Some(event) = self.transfers.poll_event() {
                self.events.push_back(event);
            }
            let _ = c.group.delete(self.provider.storage());
            self.events.push_back(Event::ConversationClosed { conversation: id, reason });
        }
        self.requests.retain(|_, (_, p, _)| !matches!(p, Purpose::AddTo(c) if *c == id));
    }

    fn own_message(&self, conversation: ConversationId, id: MessageId) -> Result<(), ClientError> {
        let c = self.conversation(conversation)?;
        if c.history.iter().any(|m| m.id == id && m.from == self.me && !m.deleted) {
            Ok(())
        } else {
            Err(ClientError::NotAllowed("only your own messages can be edited or deleted"))
        }
    }

    fn visible_key(&self, member: MemberId) -> Result<PublicKey, ClientError> {
        self.directory.get(&member).map(|e| e.public_key).ok_or(ClientError::NotVisible(member))
    }

    fn conversation(&self, id: ConversationId) -> Result<&Conversation, ClientError> {
        self.conversations.get(&id).ok_or(ClientError::NoConversation(id))
    }

    fn conversation_mut(&mut self, id: ConversationId) -> Result<&mut Conversation, ClientError> {
        self.conversations.get_mut(&id).ok_or(ClientError::NoConversation(id))
    }

    /// Every MLS secret and group state, serialised, for the encrypted key store (never store it as is).
    pub fn mls_snapshot(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.provider.snapshot())
    }

    /// Writes the client's state — MLS secrets and group states, conversations and their histories — into the
    /// (unlocked) key store, which encrypts every record. Group changes waiting for the server are not
    /// kept; file transfers keep their offers and keys, not their progress (see [`Client::replay_file_chunk`]).
    pub fn save<S: Storage>(&self, store: &mut KeyStore<S>) -> Result<(), ClientError> {
        let conversations: Vec<SavedConversation> = self
            .conversations
            .iter()
            .map(|(id, c)| SavedConversation {
                id: *id,
                kind: c.kind.clone(),
                timer_secs: c.timer_secs,
                history: c.history.clone(),
                ready: c.ready,
            })
            .collect();
        let state = Zeroizing::new(serde_json::to_vec(&conversations).map_err(|e| ClientError::State(e.to_string()))?);
        let files = self.transfers.save().map_err(|e| ClientError::State(e.to_string()))?;
        store.put(RECORD_MLS, &self.mls_snapshot()).map_err(|e| ClientError::State(e.to_string()))?;
        store.put(RECORD_FILES, &files).map_err(|e| ClientError::State(e.to_string()))?;
        store.put(RECORD_CONVERSATIONS, &state).map_err(|e| ClientError::State(e.to_string()))
    }

    /// A client for `identity` with the state [`Client::save`] kept in `store` (unlocked).
    pub fn restore<S: Storage>(identity: &IdentityKey, store: &KeyStore<S>) -> Result<Self, ClientError> {
        let unreadable = |what: &str| ClientError::State(format!("{what} record missing or corrupt"));
        let mls =
            store.get(RECORD_MLS).map_err(|e| ClientError::State(e.to_string()))?.ok_or_else(|| unreadable("mls"))?;
        let saved = store
            .get(RECORD_CONVERSATIONS)
            .map_err(|e| ClientError::State(e.to_string()))?
            .ok_or_else(|| unreadable("conversations"))?;
        let saved: Vec<SavedConversation> =
            serde_json::from_slice(&saved).map_err(|e| ClientError::State(e.to_string()))?;
        let mut client = Self::new(identity);
        client.provider = Provider::restore(&mls).ok_or_else(|| unreadable("mls"))?;
        for s in saved {
            let group = MlsGroup::load(client.provider.storage(), &GroupId::from_slice(&s.id.0))
                .map_err(mls_err)?
                .ok_or_else(|| unreadable("conversation"))?;
            let mut c = Conversation::new(group, s.kind);
            c.timer_secs = s.timer_secs;
            c.history = s.history;
            c.ready = s.ready;
            client.conversations.insert(s.id, c);
        }
        // Stores written before files were kept have no record: no transfers.
        if let Some(files) = store.get(RECORD_FILES).map_err(|e| ClientError::State(e.to_string()))? {
            client.transfers = Transfers::restore(TransferConfig::default(), &files).map_err(ClientError::State)?;
        }
        Ok(client)
    }
}

impl Conversation {
    fn new(group: MlsGroup, kind: Option<ConversationKind>) -> Self {
        Self {
            group,
            kind,
            timer_secs: None,
            history: Vec::new(),
            ops: VecDeque::new(),
            pending: None,
            retry_at_ms: None,
            rejoin_asked: None,
            ready: false,
        }
    }
}

fn conversation_id(bytes: &[u8]) -> Option<ConversationId> {
    bytes.try_into().ok().map(ConversationId)
}

fn member_ids(group: &MlsGroup) -> Vec<MemberId> {
    group.members().filter_map(|m| mls::claimed_member(&m.credential)).map(MemberId::from_bytes).collect()
}

/// The members of a group other than `me`.
fn others_in(group: &MlsGroup, me: MemberId) -> Vec<MemberId> {
    member_ids(group).into_iter().filter(|m| *m != me).collect()
}

fn leaf_of(group: &MlsGroup, member: MemberId) -> Option<LeafNodeIndex> {
    group.members().find(|m| mls::claimed_member(&m.credential) == Some(*member.as_bytes())).map(|m| m.index)
}
