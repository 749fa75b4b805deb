//! File transfer between two members, as a sans-IO state machine: the sender's [`OutgoingTransfer`] says which
//! bytes to read next and seals them into chunk frames; the receiver's [`IncomingTransfer`] opens frames in
//! order, hashes the plaintext and says when to acknowledge, resume or declare the file complete.
//!
//! Frames travel on a WebRTC DataChannel; [`FileControl`] messages travel inside MLS application messages.
//! Both are someone else's IO. Each transfer has its own 32-byte [`FileKey`] exported from the MLS group; the
//! chunk key is derived from it and the transfer id, chunk nonces from the chunk index, and every chunk's AAD
//! binds the transfer id, the index, the chunk count, the chunk size and the file size.
//!
//! What it must never do: seal two different plaintexts under one nonce, hand out plaintext that did not
//! authenticate, change state on a rejected frame, or print key material.

use std::fmt;

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// First byte of a chunk frame.
pub const CHUNK_FRAME_TAG: u8 = 0xF1;
/// First byte of an acknowledgement frame: the receiver's `ack`, sealed under the transfer's key, on the
/// DataChannel (not an MLS message: at one every 16 chunks, MLS state changes would cost a key-store save each).
pub const ACK_FRAME_TAG: u8 = 0xF2;
/// Tag, transfer id, nonce, sealed count (4 bytes) and AEAD tag.
pub const ACK_FRAME_LEN: usize = 1 + 16 + 12 + 4 + AEAD_TAG_LEN;
/// Tag, transfer id and chunk index.
pub const FRAME_HEADER_LEN: usize = 1 + 16 + 4;
/// Poly1305 tag.
pub const AEAD_TAG_LEN: usize = 16;
/// Bytes a frame adds to its chunk.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + AEAD_TAG_LEN;
/// Largest frame: a DataChannel message stays within 64 KiB.
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Smallest chunk an offer may use.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Largest chunk an offer may use, so that its frame fits [`MAX_FRAME_LEN`].
pub const MAX_CHUNK_SIZE: u32 = (MAX_FRAME_LEN - FRAME_OVERHEAD) as u32;
/// Default chunk: its frame is exactly 16 KiB, the message size every browser's DataChannel carries without
/// fragmentation trouble.
pub const DEFAULT_CHUNK_SIZE: u32 = (16 * 1024 - FRAME_OVERHEAD) as u32;
/// Default largest file accepted or offered: 4 GiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 4 << 30;
/// Longest file name, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// The receiver acknowledges at least this often, and a sender's window is at least this large, so that two
/// peers with different settings can never wait on each other.
pub const MAX_ACK_EVERY: u32 = 16;
/// Largest sender window.
pub const MAX_WINDOW: u32 = 1024;

/// Tuning for both sides of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferConfig {
    /// Chunk size the sender offers.
    pub chunk_size: u32,
    /// Most unacknowledged chunks the sender has out ([`MAX_ACK_EVERY`]..=[`MAX_WINDOW`]).
    pub window: u32,
    /// The receiver acknowledges every this many chunks (1..=[`MAX_ACK_EVERY`]) and on the last.
    pub ack_every: u32,
    /// Largest file offered or accepted.
    pub max_file_size: u64,
}

impl Default for TransferConfig {
    fn default() -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            window: 64,
            ack_every: MAX_ACK_EVERY,
            max_file_size: DEFAULT_MAX_FILE_SIZE,
        }
    }
}

impl TransferConfig {
    fn validate(&self) -> Result<(), FileError> {
        if !(MAX_ACK_EVERY..=MAX_WINDOW).contains(&self.window) {
            return Err(FileError::InvalidConfig("window must be between 16 and 1024 chunks"));
        }
        if !(1..=MAX_ACK_EVERY).contains(&self.ack_every) {
            return Err(FileError::InvalidConfig("ack_every must be between 1 and 16 chunks"));
        }
        Ok(())
    }
}

/// The 32-byte key of one transfer, exported from the MLS group. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct FileKey(Zeroizing<[u8; 32]>);

impl FileKey {
    /// Wraps exported key bytes.
    pub fn new(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    /// Wraps exported key bytes given as a slice (e.g. an MLS exporter's output), which must be 32 bytes long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, FileError> {
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != key.len() {
            return Err(FileError::InvalidKeyLength(bytes.len()));
        }
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// The key bytes, e.g. to keep them in the key store next to chunks stored encrypted.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileKey(redacted)")
    }
}

/// Identifies one transfer; random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TransferId(#[serde(with = "base64url")] pub [u8; 16]);

impl TransferId {
    /// A fresh random id. Never reuse an id with the same key for different content.
    pub fn random() -> Result<Self, FileError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| FileError::Random(e.to_string()))?;
        Ok(Self(id))
    }
}

/// SHA-256 over a file, fed in pieces (sha2 0.11: in the browser, its WebAssembly SIMD backend).
#[derive(Clone, Default)]
pub struct FileHasher(sha2_next::Sha256);

impl FileHasher {
    /// An empty hash state.
    pub fn new() -> Self {
        Self::default()
    }
    /// Feeds the next bytes of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        sha2_next::Digest::update(&mut self.0, bytes);
    }
    /// The SHA-256 of everything fed.
    pub fn finalize(self) -> [u8; 32] {
        sha2_next::Digest::finalize(self.0).into()
    }
    /// SHA-256 of `bytes` in one go.
    pub fn digest(bytes: &[u8]) -> [u8; 32] {
        <sha2_next::Sha256 as sha2_next::Digest>::digest(bytes).into()
    }
}

impl fmt::Debug for FileHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileHasher")
    }
}

/// What the sender proposes. Travels MLS-encrypted as JSON; byte fields are base64url without padding.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOffer {
    /// The transfer.
    pub transfer: TransferId,
    /// File name without any path.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Bytes per chunk (the last may be shorter).
    pub chunk_size: u32,
    /// Number of chunks: `ceil(size / chunk_size)`, and 1 for an empty file.
    pub chunks: u32,
    /// SHA-256 of the whole file.
    #[serde(with = "base64url")]
    pub sha256: [u8; 32],
    /// The group it was sent to (one transfer per member, each over the pair's own connection), shown there;
    /// none for a file sent 1:1. The receiver shows it in the group only if it and the sender are both in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<crate::client::ConversationId>,
}

/// The file's name is content: `Debug` shows its length only.
impl fmt::Debug for FileOffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileOffer")
            .field("transfer", &self.transfer)
            .field("name", &crate::message::Redacted(self.name.len()))
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size)
            .field("chunks", &self.chunks)
            .field("sha256", &self.sha256)
            .field("group", &self.group)
            .finish()
    }
}

impl FileOffer {
    /// An offer with its chunk count computed; validated against `max_file_size`.
    pub fn new(
        transfer: TransferId,
        name: impl Into<String>,
        size: u64,
        chunk_size: u32,
        sha256: [u8; 32],
        max_file_size: u64,
    ) -> Result<Self, FileError> {
        let chunks = chunk_count(size, chunk_size).ok_or(FileError::InvalidChunkSize(chunk_size))?;
        let chunks = u32::try_from(chunks).map_err(|_| FileError::TooLarge { size, max: max_file_size })?;
        let offer = Self { transfer, name: name.into(), size, chunk_size, chunks, sha256, group: None };
        offer.validate(max_file_size)?;
        Ok(offer)
    }

    /// Checks a received (or built) offer: a plain file name, sizes within bounds, a consistent chunk count.
    pub fn validate(&self, max_file_size: u64) -> Result<(), FileError> {
        validate_name(&self.name)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(FileError::InvalidChunkSize(self.chunk_size));
        }
        if self.size > max_file_size {
            return Err(FileError::TooLarge { size: self.size, max: max_file_size });
        }
        let expected = chunk_count(self.size, self.chunk_size).ok_or(FileError::InvalidChunkSize(self.chunk_size))?;
        if u64::from(self.chunks) != expected {
            return Err(FileError::ChunkCountMismatch { chunks: self.chunks, expected });
        }
        Ok(())
    }

    /// Plaintext length of chunk `index`, if it exists.
    pub fn chunk_len(&self, index: u32) -> Option<u32> {
        if index >= self.chunks {
            return None;
        }
        let rest = self.size.saturating_sub(self.chunk_offset(index));
        Some(rest.min(u64::from(self.chunk_size)) as u32)
    }

    /// Byte offset of chunk `index` in the file.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    fn bytes_before(&self, chunks: u32) -> u64 {
        self.chunk_offset(chunks).min(self.size)
    }
}

fn chunk_count(size: u64, chunk_size: u32) -> Option<u64> {
    (chunk_size > 0).then(|| size.div_ceil(u64::from(chunk_size)).max(1))
}

fn validate_name(name: &str) -> Result<(), FileError> {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        Err(FileError::InvalidName("must be 1 to 255 bytes long"))
    } else if name.contains(['/', '\\']) || name == "." || name == ".." {
        Err(FileError::InvalidName("must not contain a path"))
    } else if name.chars().any(|c| c.is_control() || bidi(c)) {
        Err(FileError::InvalidName("must not contain control or text-direction characters"))
    } else {
        Ok(())
    }
}

/// The receiver accepts an offer, starting at `from_chunk` (0 for a new transfer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Accept {
    /// The transfer.
    pub transfer: TransferId,
    /// First chunk the receiver wants.
    pub from_chunk: u32,
}

/// The receiver has the first `received` chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// The transfer.
    pub transfer: TransferId,
    /// Count of contiguous chunks received from the start.
    pub received: u32,
}

/// After a reconnect: the receiver has everything before `next_chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// The transfer.
    pub transfer: TransferId,
    /// The chunk to send next.
    pub next_chunk: u32,
}

/// The receiver has the whole file and its hash matched the offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Complete {
    /// The transfer.
    pub transfer: TransferId,
    /// SHA-256 of what was received.
    #[serde(with = "base64url")]
    pub sha256: [u8; 32],
}

/// Either side stops the transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    /// The transfer.
    pub transfer: TransferId,
    /// Why.
    pub reason: CancelReason,
}

/// Why a transfer was stopped; a closed set, so nothing a peer writes reaches the other's screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// The receiver declined the offer.
    Declined,
    /// The member stopped it.
    Cancelled,
    /// The offer was refused as invalid or too large.
    InvalidOffer,
    /// A chunk or the final hash did not verify.
    IntegrityFailure,
}

/// Either side pauses (`held`) or resumes the transfer: the sender hands out no chunk while either side holds
/// it. Chunks already in flight still arrive and are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// The transfer.
    pub transfer: TransferId,
    /// Paused (true) or going on (false).
    pub held: bool,
}

/// Control messages between sender and receiver (MLS-encrypted, JSON, unknown fields rejected).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FileControl {
    /// Sender to receiver.
    Offer(FileOffer),
    /// Receiver to sender.
    Accept(Accept),
    /// Receiver to sender.
    Ack(Ack),
    /// Receiver to sender, after a reconnect.
    Resume(Resume),
    /// Receiver to sender.
    Complete(Complete),
    /// Either way.
    Cancel(Cancel),
    /// Either way (a pause asked by the member; peers that predate it refuse it, and the transfer goes on).
    Hold(Hold),
}

impl FileControl {
    /// The transfer it is about.
    pub fn transfer(&self) -> TransferId {
        match self {
            FileControl::Offer(o) => o.transfer,
            FileControl::Accept(a) => a.transfer,
            FileControl::Ack(a) => a.transfer,
            FileControl::Resume(r) => r.transfer,
            FileControl::Complete(c) => c.transfer,
            FileControl::Cancel(c) => c.transfer,
            FileControl::Hold(h) => h.transfer,
        }
    }
}

/// Which bytes of the file the sender should read and [`seal`](OutgoingTransfer::seal) next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRequest {
    /// Chunk index.
    pub index: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes to read.
    pub len: u32,
}

/// Bytes done out of bytes total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes acknowledged (sender) or received and verified (receiver).
    pub bytes: u64,
    /// File size.
    pub total: u64,
}

impl Progress {
    /// Between 0 and 1, for a progress bar.
    pub fn fraction(&self) -> f64 {
        if self.total == 0 { 1.0 } else { self.bytes as f64 / self.total as f64 }
    }
}

/// A parsed chunk frame: `tag (0xF1) || transfer id (16) || index (u32 BE) || ciphertext+tag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkFrame<'a> {
    /// The transfer.
    pub transfer: TransferId,
    /// Chunk index.
    pub index: u32,
    /// ChaCha20-Poly1305 ciphertext and tag.
    pub sealed: &'a [u8],
}

impl ChunkFrame<'_> {
    /// The frame's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut frame = Vec::with_capacity(FRAME_HEADER_LEN + self.sealed.len());
        frame.push(CHUNK_FRAME_TAG);
        frame.extend_from_slice(&self.transfer.0);
        frame.extend_from_slice(&self.index.to_be_bytes());
        frame.extend_from_slice(self.sealed);
        frame
    }
}

/// Parses a frame from the network without trusting it: known tag, room for the header and an AEAD tag, no
/// longer than [`MAX_FRAME_LEN`]. The exact length for the index is checked against the offer when opening.
pub fn parse_chunk_frame(frame: &[u8]) -> Result<ChunkFrame<'_>, FileError> {
    if frame.len() < FRAME_OVERHEAD {
        return Err(FileError::MalformedFrame("shorter than a frame header and tag"));
    }
    if frame.len() > MAX_FRAME_LEN {
        return Err(FileError::MalformedFrame("longer than 64 KiB"));
    }
    let (header, sealed) = frame.split_at(FRAME_HEADER_LEN);
    let (tag, rest) = header.split_at(1);
    let (id, index) = rest.split_at(16);
    if tag != [CHUNK_FRAME_TAG] {
        return Err(FileError::MalformedFrame("unknown tag"));
    }
    let transfer = TransferId(id.try_into().map_err(|_| FileError::MalformedFrame("bad transfer id"))?);
    let index = u32::from_be_bytes(index.try_into().map_err(|_| FileError::MalformedFrame("bad index"))?);
    Ok(ChunkFrame { transfer, index, sealed })
}

/// The transfer an acknowledgement frame is for, checking its tag and length (not its authenticity).
pub fn ack_frame_transfer(frame: &[u8]) -> Result<TransferId, FileError> {
    if frame.len() != ACK_FRAME_LEN || frame.first() != Some(&ACK_FRAME_TAG) {
        return Err(FileError::MalformedFrame("not an acknowledgement frame"));
    }
    let id = frame.get(1..17).ok_or(FileError::MalformedFrame("bad transfer id"))?;
    Ok(TransferId(id.try_into().map_err(|_| FileError::MalformedFrame("bad transfer id"))?))
}

/// The per-transfer chunk cipher; `Debug` is redacted (the cipher zeroizes its key on drop).
struct ChunkCipher {
    aead: ChaCha20Poly1305,
    /// Seals acknowledgement frames (its own key: chunk nonces are indexes, ack nonces random).
    acks: ChaCha20Poly1305,
    offer: FileOffer,
}

impl fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChunkCipher(redacted)")
    }
}

impl ChunkCipher {
    fn new(key: &FileKey, offer: &FileOffer) -> Result<Self, FileError> {
        let mut info = b"PeerBubble file chunks v1 ".to_vec();
        info.extend_from_slice(&offer.transfer.0);
        let mut chunk_key = Zeroizing::new([0u8; 32]);
        let hkdf = Hkdf::<Sha256>::new(None, key.expose_secret().as_slice());
        hkdf.expand(&info, chunk_key.as_mut()).map_err(|_| FileError::KeyDerivation)?;
        let mut ack_info = b"PeerBubble file acks v1 ".to_vec();
        ack_info.extend_from_slice(&offer.transfer.0);
        let mut ack_key = Zeroizing::new([0u8; 32]);
        hkdf.expand(&ack_info, ack_key.as_mut()).map_err(|_| FileError::KeyDerivation)?;
        Ok(Self {
            aead: ChaCha20Poly1305::new(chunk_key.as_ref().into()),
            acks: ChaCha20Poly1305::new(ack_key.as_ref().into()),
            offer: offer.clone(),
        })
    }

    /// `tag || transfer || nonce (random) || ChaCha20-Poly1305(received, BE u32)`, AAD = tag || transfer.
    fn seal_ack(&self, received: u32) -> Result<Vec<u8>, FileError> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| FileError::Random(e.to_string()))?;
        let mut frame = Vec::with_capacity(ACK_FRAME_LEN);
        frame.push(ACK_FRAME_TAG);
        frame.extend_from_slice(&self.offer.transfer.0);
        let sealed = self
            .acks
            .encrypt(&nonce.into(), Payload { msg: &received.to_be_bytes(), aad: &frame })
            .map_err(|_| FileError::KeyDerivation)?;
        frame.extend_from_slice(&nonce);
        frame.extend_from_slice(&sealed);
        Ok(frame)
    }

    fn open_ack(&self, frame: &[u8]) -> Result<u32, FileError> {
        let transfer = ack_frame_transfer(frame)?;
        if transfer != self.offer.transfer {
            return Err(FileError::WrongTransfer);
        }
        let (aad, rest) = frame.split_at(17);
        let (nonce, sealed) = rest.split_at(12);
        let nonce: [u8; 12] = nonce.try_into().map_err(|_| FileError::MalformedFrame("bad nonce"))?;
        let plain = self
            .acks
            .decrypt(&nonce.into(), Payload { msg: sealed, aad })
            .map_err(|_| FileError::MalformedFrame("acknowledgement did not authenticate"))?;
        let count: [u8; 4] = plain.as_slice().try_into().map_err(|_| FileError::MalformedFrame("bad count"))?;
        Ok(u32::from_be_bytes(count))
    }

    fn nonce(index: u32) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[8..].copy_from_slice(&index.to_be_bytes());
        nonce.into()
    }

    fn aad(&self, index: u32) -> Vec<u8> {
        let o = &self.offer;
        let mut aad = b"PeerBubble file chunk v1 ".to_vec();
        aad.extend_from_slice(&o.transfer.0);
        aad.extend_from_slice(&index.to_be_bytes());
        aad.extend_from_slice(&o.chunks.to_be_bytes());
        aad.extend_from_slice(&o.chunk_size.to_be_bytes());
        aad.extend_from_slice(&o.size.to_be_bytes());
        aad
    }

    fn check_len(&self, index: u32, got: usize) -> Result<(), FileError> {
        let chunks = self.offer.chunks;
        let expected = self.offer.chunk_len(index).ok_or(FileError::IndexOutOfRange { index, chunks })? as usize;
        if got != expected {
            return Err(FileError::ChunkLength { index, expected, got });
        }
        Ok(())
    }

    /// Chunk `index` sealed into its frame (see [`ChunkFrame`]), encrypted in place in the frame's buffer.
    fn seal_frame(&self, index: u32, plaintext: &[u8]) -> Result<Vec<u8>, FileError> {
        self.check_len(index, plaintext.len())?;
        let mut frame = Vec::with_capacity(FRAME_OVERHEAD + plaintext.len());
        frame.push(CHUNK_FRAME_TAG);
        frame.extend_from_slice(&self.offer.transfer.0);
        frame.extend_from_slice(&index.to_be_bytes());
        frame.extend_from_slice(plaintext);
        let tag = self
            .aead
            .encrypt_in_place_detached(&Self::nonce(index), &self.aad(index), &mut frame[FRAME_HEADER_LEN..])
            .map_err(|_| FileError::KeyDerivation)?;
        frame.extend_from_slice(&tag);
        Ok(frame)
    }

    fn open(&self, index: u32, sealed: &[u8]) -> Result<Vec<u8>, FileError> {
        self.check_len(index, sealed.len().saturating_sub(AEAD_TAG_LEN))?;
        if sealed.len() < AEAD_TAG_LEN {
            return Err(FileError::MalformedFrame("shorter than a tag"));
        }
        self.aead
            .decrypt(&Self::nonce(index), Payload { msg: sealed, aad: &self.aad(index) })
            .map_err(|_| FileError::Tampered { index })
    }
}

/// Decrypts a chunk kept encrypted at rest: the `sealed` bytes from [`Received`], the transfer's key and offer.
pub fn open_stored_chunk(key: &FileKey, offer: &FileOffer, index: u32, sealed: &[u8]) -> Result<Vec<u8>, FileError> {
    ChunkCipher::new(key, offer)?.open(index, sealed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Offered,
    Active,
    Complete,
    Failed,
    Cancelled(CancelReason),
}

fn check_active(state: State) -> Result<(), FileError> {
    match state {
        State::Offered | State::Active => Ok(()),
        State::Cancelled(reason) => Err(FileError::Cancelled(reason)),
        State::Complete | State::Failed => Err(FileError::Finished),
    }
}

/// The sending side of one transfer.
pub struct OutgoingTransfer {
    cipher: ChunkCipher,
    window: u32,
    state: State,
    /// The receiver has every chunk before this.
    acked: u32,
    /// The next chunk to hand out.
    next: u32,
    /// The AEAD tag of every chunk sealed since this side started, acknowledged or not, so a resend cannot reuse
    /// a nonce for other bytes (it is compared before the frame leaves). Acknowledged ones stay: a receiver that
    /// lost what it had not yet synced to disk (a power cut) asks to resume from below what it acknowledged.
    /// By chunk index, 17 bytes each: about 2 MiB for a 2 GiB file of 16 KiB chunks.
    sealed: Vec<Option<[u8; AEAD_TAG_LEN]>>,
}

impl fmt::Debug for OutgoingTransfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutgoingTransfer")
            .field("offer", self.offer())
            .field("state", &self.state)
            .field("acked", &self.acked)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl OutgoingTransfer {
    /// A transfer of a file of `size` bytes whose SHA-256 is `sha256` (see [`FileHasher`]). Send
    /// [`offer`](Self::offer) to the receiver and wait for its [`Accept`].
    pub fn new(
        transfer: TransferId,
        name: impl Into<String>,
        size: u64,
        sha256: [u8; 32],
        key: &FileKey,
        config: &TransferConfig,
    ) -> Result<Self, FileError> {
        config.validate()?;
        let offer = FileOffer::new(transfer, name, size, config.chunk_size, sha256, config.max_file_size)?;
        let cipher = ChunkCipher::new(key, &offer)?;
        Ok(Self { cipher, window: config.window, state: State::Offered, acked: 0, next: 0, sealed: Vec::new() })
    }

    /// The sending side of `offer`, made again after a restart (the offer and key were kept): it waits for the
    /// receiver's [`Accept`] or [`Resume`], as a new transfer does. Feed it the same file: its SHA-256 is the
    /// offer's, so a chunk sealed again under the same nonce is the same plaintext.
    pub fn resume(offer: FileOffer, key: &FileKey, config: &TransferConfig) -> Result<Self, FileError> {
        config.validate()?;
        offer.validate(config.max_file_size)?;
        let cipher = ChunkCipher::new(key, &offer)?;
        Ok(Self { cipher, window: config.window, state: State::Offered, acked: 0, next: 0, sealed: Vec::new() })
    }

    /// The offer to send.
    pub fn offer(&self) -> &FileOffer {
        &self.cipher.offer
    }

    /// The same transfer, offered as part of a file sent to `group` (one transfer per member).
    #[must_use]
    pub fn in_group(mut self, group: Option<crate::client::ConversationId>) -> Self {
        self.cipher.offer.group = group;
        self
    }

    /// The receiver accepted.
    pub fn on_accept(&mut self, accept: Accept) -> Result<(), FileError> {
        self.check_transfer(accept.transfer)?;
        check_active(self.state)?;
        if self.state != State::Offered {
            return Err(FileError::UnexpectedControl("an accept for a transfer already under way"));
        }
        self.rewind(accept.from_chunk)
    }

    /// The next chunk to read and seal, or `None` if the window is full, everything is out, or the receiver
    /// has not accepted yet.
    pub fn next_chunk(&mut self) -> Option<ChunkRequest> {
        let request = self.peek_chunk()?;
        self.next += 1;
        Some(request)
    }

    /// What [`next_chunk`](Self::next_chunk) would hand out, without handing it out: an edge that reads the file
    /// asynchronously takes a chunk only once its bytes are at hand, so chunks are still sealed in order.
    pub fn peek_chunk(&self) -> Option<ChunkRequest> {
        if self.state != State::Active || self.next - self.acked >= self.window {
            return None;
        }
        let index = self.next;
        let len = self.offer().chunk_len(index)?;
        Some(ChunkRequest { index, offset: self.offer().chunk_offset(index), len })
    }

    /// Seals chunk `index` (handed out by [`next_chunk`](Self::next_chunk)) into a frame for the DataChannel.
    pub fn seal(&mut self, index: u32, plaintext: &[u8]) -> Result<Vec<u8>, FileError> {
        check_active(self.state)?;
        if self.state != State::Active || !(self.acked..self.next).contains(&index) {
            return Err(FileError::NotRequested { index });
        }
        let frame = self.cipher.seal_frame(index, plaintext)?;
        // Same key, same nonce: the same plaintext gives the same tag, other bytes another one (but for a
        // 2^-100 chance). A chunk sealed again with other bytes is dropped here, before anyone sees it.
        let mut tag = [0u8; AEAD_TAG_LEN];
        tag.copy_from_slice(&frame[frame.len() - AEAD_TAG_LEN..]);
        let slot = index as usize;
        if self.sealed.len() <= slot {
            self.sealed.resize(slot + 1, None);
        }
        if self.sealed[slot].is_some_and(|t| t != tag) {
            return Err(FileError::ChunkChanged { index });
        }
        self.sealed[slot] = Some(tag);
        Ok(frame)
    }

    /// The receiver has the first `ack.received` chunks; frees window space. Stale acks are ignored.
    pub fn on_ack(&mut self, ack: Ack) -> Result<(), FileError> {
        self.check_transfer(ack.transfer)?;
        check_active(self.state)?;
        if ack.received > self.next {
            return Err(FileError::AckBeyondSent { received: ack.received, sent: self.next });
        }
        if ack.received > self.acked {
            self.acked = ack.received;
        }
        Ok(())
    }

    /// An acknowledgement frame from the DataChannel ([`IncomingTransfer::ack_frame`]): authenticated under
    /// the transfer's key, then taken as [`OutgoingTransfer::on_ack`].
    pub fn on_ack_frame(&mut self, frame: &[u8]) -> Result<(), FileError> {
        let received = self.cipher.open_ack(frame)?;
        self.on_ack(Ack { transfer: self.offer().transfer, received })
    }

    /// After a reconnect: the receiver has everything before `resume.next_chunk`; chunks from it on are handed
    /// out again. Also accepts an offer that was not accepted yet. The point may be below what the receiver
    /// acknowledged: a receiver keeps what it acknowledges (written, so a reload or a crash of the browser loses
    /// none of it) but syncs it to disk only now and then, and a power cut loses what was not synced yet. Every
    /// chunk sent again is compared with the tag it had ([`OutgoingTransfer::seal`]).
    pub fn on_resume(&mut self, resume: Resume) -> Result<(), FileError> {
        self.check_transfer(resume.transfer)?;
        check_active(self.state)?;
        let next = resume.next_chunk;
        if self.state == State::Active && next > self.next {
            return Err(FileError::ResumeOutOfRange { next_chunk: next, acked: self.acked, sent: self.next });
        }
        self.rewind(next)
    }

    /// The receiver verified the whole file.
    pub fn on_complete(&mut self, complete: Complete) -> Result<(), FileError> {
        self.check_transfer(complete.transfer)?;
        check_active(self.state)?;
        if self.state != State::Active || self.next != self.offer().chunks {
            return Err(FileError::CompleteTooEarly { sent: self.next, chunks: self.offer().chunks });
        }
        if complete.sha256 != self.offer().sha256 {
            self.state = State::Failed;
            return Err(FileError::HashMismatch);
        }
        self.acked = self.next;
        self.sealed.clear();
        self.state = State::Complete;
        Ok(())
    }

    /// The receiver stopped the transfer (a cancel arriving after completion is ignored).
    pub fn on_cancel(&mut self, cancel: Cancel) -> Result<(), FileError> {
        self.check_transfer(cancel.transfer)?;
        if self.state != State::Complete {
            self.state = State::Cancelled(cancel.reason);
        }
        Ok(())
    }

    /// Dispatches a control message from the receiver.
    pub fn on_control(&mut self, control: &FileControl) -> Result<(), FileError> {
        match *control {
            FileControl::Accept(m) => self.on_accept(m),
            FileControl::Ack(m) => self.on_ack(m),
            FileControl::Resume(m) => self.on_resume(m),
            FileControl::Complete(m) => self.on_complete(m),
            FileControl::Cancel(m) => self.on_cancel(m),
            FileControl::Offer(_) => Err(FileError::UnexpectedControl("an offer sent to the sender")),
            FileControl::Hold(_) => Err(FileError::UnexpectedControl("a hold is the client's to apply")),
        }
    }

    /// Stops the transfer; send the returned message to the receiver.
    pub fn cancel(&mut self, reason: CancelReason) -> Cancel {
        self.state = State::Cancelled(reason);
        Cancel { transfer: self.offer().transfer, reason }
    }

    /// Chunks handed out and not yet acknowledged (never more than the window).
    pub fn in_flight(&self) -> u32 {
        self.next - self.acked
    }

    /// Whether the receiver confirmed the whole file with the right hash.
    pub fn is_complete(&self) -> bool {
        self.state == State::Complete
    }

    /// Bytes acknowledged by the receiver.
    pub fn progress(&self) -> Progress {
        Progress { bytes: self.offer().bytes_before(self.acked), total: self.offer().size }
    }

    fn rewind(&mut self, next: u32) -> Result<(), FileError> {
        if next > self.offer().chunks {
            return Err(FileError::ResumeOutOfRange { next_chunk: next, acked: self.acked, sent: self.next });
        }
        self.acked = next;
        self.next = next;
        self.state = State::Active;
        Ok(())
    }

    fn check_transfer(&self, transfer: TransferId) -> Result<(), FileError> {
        if transfer != self.offer().transfer {
            return Err(FileError::WrongTransfer);
        }
        Ok(())
    }
}

/// A chunk the receiver opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Chunk index.
    pub index: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// The authenticated plaintext.
    pub plaintext: Vec<u8>,
    /// The ciphertext and tag: with the [`FileKey`] and the offer, enough to decrypt later
    /// ([`open_stored_chunk`]), so the file can be kept encrypted at rest.
    pub sealed: Vec<u8>,
    /// Send to the sender, when due (every `ack_every` chunks and on the last).
    pub ack: Option<Ack>,
    /// Send to the sender: the file is whole and its hash matched. Set with the last chunk.
    pub complete: Option<Complete>,
}

/// What [`IncomingTransfer::open`] made of a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Opened {
    /// The next chunk.
    Chunk(Received),
    /// A chunk already received (the sender resent it); nothing changed. The sender may have missed an ack:
    /// sending this one lets it move on.
    Duplicate {
        /// What the receiver has.
        ack: Ack,
    },
}

/// The receiving side of one transfer.
#[derive(Debug)]
pub struct IncomingTransfer {
    cipher: ChunkCipher,
    ack_every: u32,
    state: State,
    /// Every chunk before this is received.
    next: u32,
    received_bytes: u64,
    hasher: FileHasher,
}

impl IncomingTransfer {
    /// Prepares to receive `offer` (validated against `config`). Send [`accept`](Self::accept) to start.
    pub fn new(offer: FileOffer, key: &FileKey, config: &TransferConfig) -> Result<Self, FileError> {
        config.validate()?;
        offer.validate(config.max_file_size)?;
        Ok(Self {
            cipher: ChunkCipher::new(key, &offer)?,
            ack_every: config.ack_every,
            state: State::Active,
            next: 0,
            received_bytes: 0,
            hasher: FileHasher::new(),
        })
    }

    /// The offer being received.
    pub fn offer(&self) -> &FileOffer {
        &self.cipher.offer
    }

    /// The message accepting the offer.
    pub fn accept(&self) -> Accept {
        Accept { transfer: self.offer().transfer, from_chunk: self.next }
    }

    /// `ack` as a frame for the DataChannel, sealed under the transfer's key.
    pub fn ack_frame(&self, ack: Ack) -> Result<Vec<u8>, FileError> {
        self.cipher.seal_ack(ack.received)
    }

    /// After a reconnect, tells the sender where to continue.
    pub fn resume_point(&self) -> Resume {
        Resume { transfer: self.offer().transfer, next_chunk: self.next }
    }

    /// Opens a frame from the DataChannel. Only the next chunk in order is accepted; on any error nothing
    /// changes, so the transfer can go on with the right frames.
    pub fn open(&mut self, frame: &[u8]) -> Result<Opened, FileError> {
        let frame = parse_chunk_frame(frame)?;
        let offer = self.offer();
        if frame.transfer != offer.transfer {
            return Err(FileError::WrongTransfer);
        }
        let (index, chunks) = (frame.index, offer.chunks);
        if index >= chunks {
            return Err(FileError::IndexOutOfRange { index, chunks });
        }
        if index < self.next && matches!(self.state, State::Active | State::Complete) {
            return Ok(Opened::Duplicate { ack: self.ack() });
        }
        check_active(self.state)?;
        if index != self.next {
            return Err(FileError::OutOfOrder { expected: self.next, got: index });
        }
        let plaintext = self.cipher.open(index, frame.sealed)?;
        let offset = offer.chunk_offset(index);
        self.hasher.update(&plaintext);
        self.received_bytes += plaintext.len() as u64;
        self.next += 1;
        let last = self.next == chunks;
        let ack = (last || self.next.is_multiple_of(self.ack_every)).then(|| self.ack());
        let complete = if last {
            let sha256 = std::mem::take(&mut self.hasher).finalize();
            if sha256 != self.offer().sha256 || self.received_bytes != self.offer().size {
                self.state = State::Failed;
                return Err(FileError::HashMismatch);
            }
            self.state = State::Complete;
            Some(Complete { transfer: self.offer().transfer, sha256 })
        } else {
            None
        };
        Ok(Opened::Chunk(Received { index, offset, plaintext, sealed: frame.sealed.to_vec(), ack, complete }))
    }

    /// After a restart: chunk `index`, kept sealed at rest ([`Received::sealed`]), is opened again to bring the
    /// transfer (and its running hash) back to where it was. Chunks must come in order from 0, each
    /// authenticated; the first one that does not open ends the replay (storage torn at a crash) and the
    /// sender is asked for the rest. Sends no ack. The last chunk completes the transfer: send the
    /// [`Complete`] it returns.
    pub fn replay(&mut self, index: u32, sealed: &[u8]) -> Result<Option<Complete>, FileError> {
        let frame = ChunkFrame { transfer: self.offer().transfer, index, sealed }.to_bytes();
        match self.open(&frame)? {
            Opened::Chunk(received) => Ok(received.complete),
            Opened::Duplicate { .. } => Err(FileError::OutOfOrder { expected: self.next, got: index }),
        }
    }

    /// The sender stopped the transfer (a cancel arriving after completion is ignored).
    pub fn on_cancel(&mut self, cancel: Cancel) -> Result<(), FileError> {
        if cancel.transfer != self.offer().transfer {
            return Err(FileError::WrongTransfer);
        }
        if self.state != State::Complete {
            self.state = State::Cancelled(cancel.reason);
        }
        Ok(())
    }

    /// Stops the transfer; send the returned message to the sender.
    pub fn cancel(&mut self, reason: CancelReason) -> Cancel {
        self.state = State::Cancelled(reason);
        Cancel { transfer: self.offer().transfer, reason }
    }

    /// Whether the whole file arrived and its hash matched.
    pub fn is_complete(&self) -> bool {
        self.state == State::Complete
    }

    /// Bytes received and authenticated.
    pub fn progress(&self) -> Progress {
        Progress { bytes: self.received_bytes, total: self.offer().size }
    }

    fn ack(&self) -> Ack {
        Ack { transfer: self.offer().transfer, received: self.next }
    }
}

/// What went wrong in a file transfer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The file name is unusable.
    #[error("the file name {0}; rename the file and send it again")]
    InvalidName(&'static str),
    /// The file is larger than allowed.
    #[error("the file is {size} bytes, more than the {max} allowed; send a smaller file or split it")]
    TooLarge {
        /// File size.
        size: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The chunk size is out of bounds.
    #[error("chunk size {0} is outside 1024..=65499 bytes; the sender must use a supported chunk size")]
    InvalidChunkSize(u32),
    /// The offer's chunk count does not match its size.
    #[error("the offer says {chunks} chunks but its size needs {expected}; the sender's offer is invalid")]
    ChunkCountMismatch {
        /// Claimed.
        chunks: u32,
        /// Implied by size and chunk size.
        expected: u64,
    },
    /// A [`TransferConfig`] value is out of bounds.
    #[error("invalid transfer settings: {0}")]
    InvalidConfig(&'static str),
    /// A key was not 32 bytes long.
    #[error("a file key is 32 bytes, {0} were given; export 32 bytes from the MLS group")]
    InvalidKeyLength(usize),
    /// A frame is not a chunk frame.
    #[error("malformed chunk frame: {0}; the frame was dropped")]
    MalformedFrame(&'static str),
    /// A frame or message belongs to another transfer.
    #[error("this belongs to another file transfer; route it by its transfer id")]
    WrongTransfer,
    /// A chunk index beyond the file.
    #[error("chunk {index} does not exist (the file has {chunks}); the frame was dropped")]
    IndexOutOfRange {
        /// Index given.
        index: u32,
        /// Chunks in the file.
        chunks: u32,
    },
    /// A chunk arrived ahead of the one expected (chunks are accepted in order only).
    #[error("expected chunk {expected}, got chunk {got}; ask the sender to resume from {expected}")]
    OutOfOrder {
        /// The next chunk the receiver needs.
        expected: u32,
        /// What came.
        got: u32,
    },
    /// A chunk's length does not match the offer.
    #[error("chunk {index} should hold {expected} bytes, not {got}; it was truncated or padded and was dropped")]
    ChunkLength {
        /// Chunk index.
        index: u32,
        /// Expected plaintext length.
        expected: usize,
        /// Actual plaintext length.
        got: usize,
    },
    /// A chunk failed authentication.
    #[error("chunk {index} failed authentication: it was altered, or sealed under another key; it was dropped")]
    Tampered {
        /// Chunk index.
        index: u32,
    },
    /// The whole file does not hash to what the offer said.
    #[error("the received file does not match the hash in the offer; it was discarded, send it again")]
    HashMismatch,
    /// [`OutgoingTransfer::seal`] for a chunk [`OutgoingTransfer::next_chunk`] did not hand out.
    #[error("chunk {index} was not requested by next_chunk; seal only the chunks it hands out")]
    NotRequested {
        /// Chunk index.
        index: u32,
    },
    /// A chunk is being resent with different bytes: the file changed while it was being sent.
    #[error("chunk {index} changed since it was first sent: the file was modified; cancel and send it again")]
    ChunkChanged {
        /// Chunk index.
        index: u32,
    },
    /// The receiver acknowledged chunks that were never sent.
    #[error("the receiver acknowledged {received} chunks but only {sent} were sent; cancel the transfer")]
    AckBeyondSent {
        /// Acknowledged.
        received: u32,
        /// Handed out.
        sent: u32,
    },
    /// The receiver asked to resume from a point past what was sent.
    #[error(
        "cannot resume from chunk {next_chunk}: only {sent} were sent ({acked} acknowledged); cancel and send again"
    )]
    ResumeOutOfRange {
        /// Requested.
        next_chunk: u32,
        /// Acknowledged.
        acked: u32,
        /// Handed out.
        sent: u32,
    },
    /// The receiver claims completion before every chunk was sent.
    #[error("the receiver reported completion after {sent} of {chunks} chunks; cancel the transfer")]
    CompleteTooEarly {
        /// Handed out.
        sent: u32,
        /// Chunks in the file.
        chunks: u32,
    },
    /// A control message that makes no sense in this state.
    #[error("unexpected file-transfer message: {0}")]
    UnexpectedControl(&'static str),
    /// The transfer already completed or failed.
    #[error("this file transfer is already finished")]
    Finished,
    /// The transfer was cancelled.
    #[error("this file transfer was cancelled ({0:?})")]
    Cancelled(CancelReason),
    /// Key derivation or sealing failed (a bug).
    #[error("chunk key derivation failed; this is a bug in PeerBubble, please report it")]
    KeyDerivation,
    /// The platform's random number generator failed.
    #[error("the platform's random number generator failed ({0}); retry")]
    Random(String),
}

/// Serde for fixed-size byte arrays as unpadded base64url strings (strict: exact length, canonical).
pub(crate) mod base64url {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let bytes = URL_SAFE_NO_PAD.decode(text.as_bytes()).map_err(D::Error::custom)?;
        bytes.try_into().map_err(|b: Vec<u8>| D::Error::invalid_length(b.len(), &format!("{N} bytes").as_str()))
    }
}
