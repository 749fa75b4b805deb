//! The member's segmented local key store: everything a client keeps on the device (identity keys, MLS state,
//! contacts, file keys) is a named record encrypted under a master key that exists only in memory while the
//! store is unlocked.
//!
//! The master key is HKDF-SHA256 over independent 256-bit segments — the device segment (the browser keeps it
//! behind a non-extractable WebCrypto key), the knowledge segment (Argon2id of the passphrase) and an optional
//! possession segment (WebAuthn PRF of a hardware key). Getting those bytes is the adapter's job; this module
//! only combines them, checks them against the header and encrypts records through the [`Storage`] edge.
//!
//! What it must never do: write a secret or a plaintext record to [`Storage`], print key material in `Debug`
//! or errors, or change anything stored when an unlock or an operation fails. Record *names* are stored in the
//! clear: callers use opaque names.

use std::collections::BTreeMap;
use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::files::base64url;

/// Version of the stored format; part of every key derivation and AAD.
pub const FORMAT_VERSION: u8 = 1;
/// Storage name of the header.
pub const HEADER_NAME: &str = "keystore/header";
const RECORDS_PREFIX: &str = "keystore/records/";
const MAX_RECORD_NAME: usize = 255;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bounds on Argon2 costs read from a header, so a tampered header cannot make unlock allocate without limit.
const MAX_M_COST_KIB: u32 = 1024 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 16;

/// The kinds of segment, in the fixed order in which they are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    /// Held by this device (IndexedDB, wrapped by a non-extractable WebCrypto key).
    Device,
    /// Argon2id of the member's passphrase.
    Knowledge,
    /// From a hardware key (WebAuthn PRF).
    Possession,
}

impl SegmentKind {
    fn name(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Knowledge => "knowledge",
            Self::Possession => "possession",
        }
    }
}

impl fmt::Display for SegmentKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Argon2id costs for the knowledge segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's recommendation for Argon2id: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Self { m_cost_kib: 19 * 1024, t_cost: 2, p_cost: 1 }
    }
}

impl KdfParams {
    /// The cheapest Argon2id allows. For tests only: it gives a passphrase no protection against guessing.
    pub fn insecure_fast() -> Self {
        Self { m_cost_kib: 8, t_cost: 1, p_cost: 1 }
    }

    fn argon2(&self) -> Result<argon2::Argon2<'static>, KeyStoreError> {
        if self.m_cost_kib > MAX_M_COST_KIB || self.t_cost > MAX_T_COST || self.p_cost > MAX_P_COST {
            return Err(KeyStoreError::InvalidKdfParams(format!(
                "{self:?} exceeds the limits (memory {MAX_M_COST_KIB} KiB, {MAX_T_COST} iterations, {MAX_P_COST} lanes)"
            )));
        }
        let params = argon2::Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
            .map_err(|e| KeyStoreError::InvalidKdfParams(format!("{self:?}: {e}")))?;
        Ok(argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params))
    }
}

/// How a knowledge segment is derived: Argon2id costs and a random salt. Public; kept in the header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KnowledgeKdf {
    /// Argon2id costs.
    pub params: KdfParams,
    /// Argon2id salt.
    #[serde(with = "base64url")]
    pub salt: [u8; 32],
}

impl KnowledgeKdf {
    /// New derivation settings with a fresh random salt; use when setting a passphrase.
    pub fn generate(params: KdfParams) -> Result<Self, KeyStoreError> {
        params.argon2()?;
        Ok(Self { params, salt: random()? })
    }
}

/// One independent 256-bit secret. Zeroized on drop; `Debug` shows only its kind.
#[derive(Clone)]
pub struct Segment {
    kind: SegmentKind,
    secret: Zeroizing<[u8; 32]>,
    /// For a knowledge segment, how it was derived, so that `create` records exactly that in the header.
    kdf: Option<KnowledgeKdf>,
}

impl Segment {
    /// The device segment, as the platform adapter unwrapped it.
    pub fn device(secret: Zeroizing<[u8; 32]>) -> Self {
        Self { kind: SegmentKind::Device, secret, kdf: None }
    }

    /// The possession segment, e.g. the output of a WebAuthn PRF.
    pub fn possession(secret: Zeroizing<[u8; 32]>) -> Self {
        Self { kind: SegmentKind::Possession, secret, kdf: None }
    }

    /// The knowledge segment: Argon2id of `passphrase` under `kdf`. Use [`KeyStore::knowledge_segment`] to
    /// unlock an existing store, [`KnowledgeKdf::generate`] to set a new passphrase.
    pub fn knowledge(passphrase: &[u8], kdf: &KnowledgeKdf) -> Result<Self, KeyStoreError> {
        if passphrase.is_empty() {
            return Err(KeyStoreError::EmptyPassphrase);
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        kdf.params
            .argon2()?
            .hash_password_into(passphrase, &kdf.salt, secret.as_mut())
            .map_err(|e| KeyStoreError::InvalidKdfParams(e.to_string()))?;
        Ok(Self { kind: SegmentKind::Knowledge, secret, kdf: Some(kdf.clone()) })
    }

    /// Which kind of segment this is.
    pub fn kind(&self) -> SegmentKind {
        self.kind
    }
}

impl fmt::Debug for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Segment({}, redacted)", self.kind)
    }
}

/// HKDF-SHA256 of the segments; lives only in memory. Zeroized on drop; `Debug` is redacted.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl MasterKey {
    /// Combines segments (any order, one of each kind) the way [`KeyStore::unlock`] does: the segments are
    /// concatenated in [`SegmentKind`] order, `salt` is the header's salt, and the info string names the format
    /// version and the kinds present.
    pub fn derive(segments: &[Segment], salt: &[u8; 32]) -> Result<Self, KeyStoreError> {
        let sorted = sorted_segments(segments)?;
        let mut ikm = Zeroizing::new(Vec::with_capacity(32 * sorted.len()));
        for segment in &sorted {
            ikm.extend_from_slice(segment.secret.as_ref());
        }
        let kinds: Vec<_> = sorted.iter().map(|s| s.kind).collect();
        let info = format!("PeerBubble keystore v{FORMAT_VERSION} master {}", kinds_label(&kinds));
        let mut okm = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(Some(salt), &ikm)
            .expand(info.as_bytes(), okm.as_mut())
            .map_err(|_| KeyStoreError::KeyDerivation)?;
        Ok(Self(okm))
    }

    fn subkey(&self, label: &str) -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
        expand(&self.0, &format!("PeerBubble keystore v{FORMAT_VERSION} {label}"))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(redacted)")
    }
}

/// A failure of the storage edge (IndexedDB, files).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("local storage failed: {0}; check that the browser or disk allows storing data and has space, then retry")]
pub struct StorageError(pub String);

/// Where encrypted records and the header are kept. The edge: IndexedDB in the browser, files natively.
/// A single `put` must be atomic (all of the value or nothing); the store never relies on more than that.
pub trait Storage {
    /// The value stored under `name`, if any.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// Stores `value` under `name`, replacing any previous value.
    fn put(&mut self, name: &str, value: Vec<u8>) -> Result<(), StorageError>;
    /// Removes `name`; removing an absent name is not an error.
    fn delete(&mut self, name: &str) -> Result<(), StorageError>;
    /// All names starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError>;
}

/// [`Storage`] in memory, for tests and for platforms that persist a snapshot themselves.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MemoryStorage(pub BTreeMap<String, Vec<u8>>);

impl Storage for MemoryStorage {
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.0.get(name).cloned())
    }
    fn put(&mut self, name: &str, value: Vec<u8>) -> Result<(), StorageError> {
        self.0.insert(name.to_owned(), value);
        Ok(())
    }
    fn delete(&mut self, name: &str) -> Result<(), StorageError> {
        self.0.remove(name);
        Ok(())
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        Ok(self.0.range(prefix.to_owned()..).map(|(k, _)| k).take_while(|k| k.starts_with(prefix)).cloned().collect())
    }
}

impl fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter().map(|(k, v)| (k, format!("{} bytes", v.len())))).finish()
    }
}

/// What went wrong in the key store. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// The storage edge failed; nothing was changed by this operation unless the operation says otherwise.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// There is no key store in this storage.
    #[error("no key store found in this storage; create one (enrol this device) first")]
    NotFound,
    /// `create` found an existing key store.
    #[error("this storage already holds a key store; open and unlock it instead of creating a new one")]
    AlreadyExists,
    /// The header cannot be read.
    #[error("the key store header is damaged ({0}); restore it from a backup or enrol this device again")]
    CorruptHeader(String),
    /// The header was written by a newer format.
    #[error("the key store uses format version {0}, this client reads version {FORMAT_VERSION}; update the client")]
    UnsupportedVersion(u8),
    /// The segments do not open this store (wrong passphrase, device or security key).
    #[error(
        "the key store did not open: the passphrase, this device's key or the security key is wrong; check them and retry"
    )]
    WrongSegments,
    /// A segment the store needs was not given.
    #[error("the {0} segment is missing; this key store needs it to unlock")]
    MissingSegment(SegmentKind),
    /// A segment the store does not use was given.
    #[error("a {0} segment was given, but this key store does not use one; leave it out")]
    UnexpectedSegment(SegmentKind),
    /// Two segments of the same kind were given.
    #[error("two {0} segments were given; give one of each kind")]
    DuplicateSegment(SegmentKind),
    /// No segment at all.
    #[error("no segments were given; a key store needs at least one")]
    NoSegments,
    /// A knowledge segment without its derivation settings (cannot happen with [`Segment::knowledge`]).
    #[error("the knowledge segment carries no derivation settings; derive it with Segment::knowledge")]
    KnowledgeWithoutKdf,
    /// The store has no knowledge segment, so no passphrase to derive.
    #[error("this key store does not use a passphrase")]
    NoPassphrase,
    /// The passphrase is empty.
    #[error("the passphrase is empty; enter a passphrase")]
    EmptyPassphrase,
    /// Argon2 parameters out of bounds.
    #[error("invalid passphrase hashing parameters: {0}")]
    InvalidKdfParams(String),
    /// HKDF refused an output length (a bug).
    #[error("key derivation failed; this is a bug in PeerBubble, please report it")]
    KeyDerivation,
    /// The platform's random number generator failed.
    #[error("the platform's random number generator failed ({0}); retry, or use a browser with WebCrypto")]
    Random(String),
    /// The store is locked.
    #[error("the key store is locked; unlock it first")]
    Locked,
    /// A record name is empty, too long, or has control characters.
    #[error("invalid record name {0:?}: use 1 to 255 bytes without control characters")]
    InvalidName(String),
    /// A record failed authentication: it was altered, or moved from another name. Nothing was changed.
    #[error("the record {0:?} is damaged or was tampered with; restore it from a backup")]
    Corrupt(String),
    /// `change_segments` switched to the new segments, but some records encrypted under the old ones could
    /// not be deleted.
    #[error("the new segments are in effect, but old encrypted records remain ({0}); call purge_stale to retry")]
    OldRecordsRemain(StorageError),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    version: u8,
    /// Sorted, unique.
    kinds: Vec<SegmentKind>,
    #[serde(with = "base64url")]
    salt: [u8; 32],
    knowledge: Option<KnowledgeKdf>,
    /// Records live under `RECORDS_PREFIX{generation}/`; `change_segments` writes a new generation, then
    /// switches the header to it in one `put`.
    generation: u64,
    #[serde(with = "base64url")]
    nonce: [u8; NONCE_LEN],
    /// The root secret (stable across segment changes; subkeys derive from it) sealed under the master key.
    /// Opening it is what verifies the segments.
    #[serde(with = "base64url")]
    wrapped_root: [u8; 32 + TAG_LEN],
}

impl Header {
    /// Binds every header field to the wrapped root, so a tampered header fails like wrong segments.
    fn aad(&self) -> Vec<u8> {
        let mut aad = format!("PeerBubble keystore v{} header {}", self.version, kinds_label(&self.kinds)).into_bytes();
        aad.push(0);
        aad.extend_from_slice(&self.salt);
        if let Some(kdf) = &self.knowledge {
            aad.extend_from_slice(&kdf.salt);
            for n in [kdf.params.m_cost_kib, kdf.params.t_cost, kdf.params.p_cost] {
                aad.extend_from_slice(&n.to_be_bytes());
            }
        }
        aad.extend_from_slice(&self.generation.to_be_bytes());
        aad
    }

    fn seal(
        kinds: Vec<SegmentKind>,
        salt: [u8; 32],
        knowledge: Option<KnowledgeKdf>,
        generation: u64,
        master: &MasterKey,
        root: &[u8; 32],
    ) -> Result<Self, KeyStoreError> {
        let mut header = Header {
            version: FORMAT_VERSION,
            kinds,
            salt,
            knowledge,
            generation,
            nonce: random()?,
            wrapped_root: [0; 32 + TAG_LEN],
        };
        let sealed = xchacha(&*master.subkey("header")?)
            .encrypt(XNonce::from_slice(&header.nonce), Payload { msg: root, aad: &header.aad() })
            .map_err(|_| KeyStoreError::KeyDerivation)?;
        header.wrapped_root = sealed.try_into().map_err(|_| KeyStoreError::KeyDerivation)?;
        Ok(header)
    }

    fn open_root(&self, master: &MasterKey) -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
        let payload = Payload { msg: &self.wrapped_root, aad: &self.aad() };
        let plain = Zeroizing::new(
            xchacha(&*master.subkey("header")?)
                .decrypt(XNonce::from_slice(&self.nonce), payload)
                .map_err(|_| KeyStoreError::WrongSegments)?,
        );
        let mut root = Zeroizing::new([0u8; 32]);
        if plain.len() != 32 {
            return Err(KeyStoreError::WrongSegments);
        }
        root.copy_from_slice(&plain);
        Ok(root)
    }

    fn parse(bytes: &[u8]) -> Result<Self, KeyStoreError> {
        #[derive(Deserialize)]
        struct Version {
            version: u8,
        }
        let version: Version =
            serde_json::from_slice(bytes).map_err(|e| KeyStoreError::CorruptHeader(e.to_string()))?;
        if version.version != FORMAT_VERSION {
            return Err(KeyStoreError::UnsupportedVersion(version.version));
        }
        let header: Header = serde_json::from_slice(bytes).map_err(|e| KeyStoreError::CorruptHeader(e.to_string()))?;
        if header.kinds.is_empty() || !header.kinds.windows(2).all(|w| w[0] < w[1]) {
            return Err(KeyStoreError::CorruptHeader("segment kinds not sorted and unique".into()));
        }
        if header.kinds.contains(&SegmentKind::Knowledge) != header.knowledge.is_some() {
            return Err(KeyStoreError::CorruptHeader("passphrase settings do not match the segment kinds".into()));
        }
        if let Some(kdf) = &header.knowledge {
            kdf.params.argon2()?;
        }
        Ok(header)
    }

    fn records_prefix(&self) -> String {
        format!("{RECORDS_PREFIX}{}/", self.generation)
    }
}

struct Unlocked {
    master: MasterKey,
    root: Zeroizing<[u8; 32]>,
}

/// The segmented key store over a [`Storage`]. Starts locked after [`open`](Self::open); every record
/// operation needs it unlocked. `Debug` shows no key material.
pub struct KeyStore<S: Storage> {
    storage: S,
    header: Header,
    unlocked: Option<Unlocked>,
}

impl<S: Storage> fmt::Debug for KeyStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field("kinds", &self.header.kinds)
            .field("generation", &self.header.generation)
            .field("unlocked", &self.unlocked.is_some())
            .field("keys", &"redacted")
            .finish_non_exhaustive()
    }
}

impl<S: Storage> KeyStore<S> {
    /// Creates a key store in empty `storage`, protected by `segments` (one per kind used; a knowledge segment
    /// brings its Argon2 settings). The new store is unlocked.
    pub fn create(mut storage: S, segments: &[Segment]) -> Result<Self, KeyStoreError> {
        if storage.get(HEADER_NAME)?.is_some() || !storage.list(RECORDS_PREFIX)?.is_empty() {
            return Err(KeyStoreError::AlreadyExists);
        }
        let mut root = Zeroizing::new([0u8; 32]);
        getrandom::fill(root.as_mut()).map_err(|e| KeyStoreError::Random(e.to_string()))?;
        let (header, unlocked) = Self::seal_header(segments, 1, root)?;
        storage.put(HEADER_NAME, header_bytes(&header)?)?;
        Ok(Self { storage, header, unlocked: Some(unlocked) })
    }

    /// Opens the key store kept in `storage`, locked.
    pub fn open(storage: S) -> Result<Self, KeyStoreError> {
        let bytes = storage.get(HEADER_NAME)?.ok_or(KeyStoreError::NotFound)?;
        let header = Header::parse(&bytes)?;
        Ok(Self { storage, header, unlocked: None })
    }

    /// The segment kinds this store needs to unlock, in order.
    pub fn required_kinds(&self) -> &[SegmentKind] {
        &self.header.kinds
    }

    /// How this store derives its knowledge segment, if it uses one.
    pub fn knowledge_kdf(&self) -> Option<&KnowledgeKdf> {
        self.header.knowledge.as_ref()
    }

    /// The knowledge segment for `passphrase` under this store's settings (runs Argon2id).
    pub fn knowledge_segment(&self, passphrase: &[u8]) -> Result<Segment, KeyStoreError> {
        Segment::knowledge(passphrase, self.knowledge_kdf().ok_or(KeyStoreError::NoPassphrase)?)
    }

    /// Unlocks with one segment of each required kind, in any order. On failure nothing is stored or changed
    /// and the store stays as it was.
    pub fn unlock(&mut self, segments: &[Segment]) -> Result<(), KeyStoreError> {
        let (master, root) = self.open_with(segments)?;
        self.unlocked = Some(Unlocked { master, root });
        Ok(())
    }

    /// Whether `segments` are the ones this store is protected by (as [`unlock`](Self::unlock) checks them),
    /// without unlocking anything or changing the store: asked before a change of passphrase or security key,
    /// so that an unattended unlocked screen is not enough to change them.
    pub fn check(&self, segments: &[Segment]) -> Result<(), KeyStoreError> {
        self.open_with(segments).map(drop)
    }

    fn open_with(&self, segments: &[Segment]) -> Result<(MasterKey, Zeroizing<[u8; 32]>), KeyStoreError> {
        if segments.is_empty() {
            let first = self.header.kinds.first().copied().unwrap_or(SegmentKind::Device);
            return Err(KeyStoreError::MissingSegment(first));
        }
        let given: Vec<_> = sorted_segments(segments)?.iter().map(|s| s.kind).collect();
        if let Some(kind) = given.iter().find(|k| !self.header.kinds.contains(k)) {
            return Err(KeyStoreError::UnexpectedSegment(*kind));
        }
        if let Some(kind) = self.header.kinds.iter().find(|k| !given.contains(k)) {
            return Err(KeyStoreError::MissingSegment(*kind));
        }
        let master = MasterKey::derive(segments, &self.header.salt)?;
        let root = self.header.open_root(&master)?;
        Ok((master, root))
    }

    /// Drops the master key and everything derived from it (zeroized).
    pub fn lock(&mut self) {
        self.unlocked = None;
    }

    /// Whether the master key is in memory.
    pub fn is_unlocked(&self) -> bool {
        self.unlocked.is_some()
    }

    /// Encrypts `plaintext` and stores it under `name`, replacing any previous record.
    pub fn put(&mut self, name: &str, plaintext: &[u8]) -> Result<(), KeyStoreError> {
        let unlocked = self.unlocked.as_ref().ok_or(KeyStoreError::Locked)?;
        check_name(name)?;
        let value = seal_record(&unlocked.master, name, plaintext)?;
        self.storage.put(&self.record_key(name), value)?;
        Ok(())
    }

    /// The decrypted record `name`, or `None` if there is none.
    pub fn get(&self, name: &str) -> Result<Option<Zeroizing<Vec<u8>>>, KeyStoreError> {
        let unlocked = self.unlocked.as_ref().ok_or(KeyStoreError::Locked)?;
        check_name(name)?;
        match self.storage.get(&self.record_key(name))? {
            None => Ok(None),
            Some(value) => open_record(&unlocked.master, name, &value).map(Some),
        }
    }

    /// Deletes the record `name` (absent is fine).
    pub fn delete(&mut self, name: &str) -> Result<(), KeyStoreError> {
        self.unlocked.as_ref().ok_or(KeyStoreError::Locked)?;
        check_name(name)?;
        self.storage.delete(&self.record_key(name))?;
        Ok(())
    }

    /// The names of the records starting with `prefix`, sorted.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>, KeyStoreError> {
        self.unlocked.as_ref().ok_or(KeyStoreError::Locked)?;
        let base = self.header.records_prefix();
        let names = self.storage.list(&format!("{base}{prefix}"))?;
        Ok(names.into_iter().filter_map(|n| n.strip_prefix(&base).map(str::to_owned)).collect())
    }

    /// A 32-byte key for another module (e.g. files kept encrypted at rest), named by `label`. Stable for the
    /// life of the store, including across [`change_segments`](Self::change_segments).
    pub fn subkey(&self, label: &str) -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
        let unlocked = self.unlocked.as_ref().ok_or(KeyStoreError::Locked)?;
        if label.is_empty() {
            return Err(KeyStoreError::InvalidName(label.to_owned()));
        }
        expand(&unlocked.root, &format!("PeerBubble keystore v{FORMAT_VERSION} subkey {label}"))
    }

    /// Replaces the segments (a new passphrase, a new device, adding or removing a security key) and
    /// re-encrypts every record. All or nothing: every record is decrypted and re-encrypted in memory first,
    /// written under a new generation, and the header switch is a single `put`; until then the old store is
    /// untouched and any failure leaves it in effect.
    pub fn change_segments(&mut self, segments: &[Segment]) -> Result<(), KeyStoreError> {
        let unlocked = self.unlocked.as_ref().ok_or(KeyStoreError::Locked)?;
        let generation = self.header.generation + 1;
        let (header, new_unlocked) = Self::seal_header(segments, generation, unlocked.root.clone())?;
        let old_prefix = self.header.records_prefix();
        let new_prefix = header.records_prefix();
        let mut writes = Vec::new();
        for key in self.storage.list(&old_prefix)? {
            let Some(name) = key.strip_prefix(&old_prefix) else { continue };
            let value = self.storage.get(&key)?.ok_or_else(|| KeyStoreError::Corrupt(name.to_owned()))?;
            let plain = open_record(&unlocked.master, name, &value)?;
            writes.push((format!("{new_prefix}{name}"), seal_record(&new_unlocked.master, name, &plain)?));
        }
        let header_value = header_bytes(&header)?;
        // Leftovers of an earlier failed attempt at this generation must not show up as records.
        self.purge_except(&old_prefix)?;
        let mut written = Vec::with_capacity(writes.len());
        let result = writes
            .into_iter()
            .try_for_each(|(key, value)| {
                self.storage.put(&key, value)?;
                written.push(key);
                Ok(())
            })
            .and_then(|()| self.storage.put(HEADER_NAME, header_value));
        if let Err(e) = result {
            for key in written {
                let _ = self.storage.delete(&key);
            }
            return Err(KeyStoreError::Storage(e));
        }
        self.header = header;
        self.unlocked = Some(new_unlocked);
        self.purge_stale().map_err(|e| match e {
            KeyStoreError::Storage(e) => KeyStoreError::OldRecordsRemain(e),
            e => e,
        })
    }

    /// Deletes records left from earlier generations (after an interrupted [`change_segments`]).
    pub fn purge_stale(&mut self) -> Result<(), KeyStoreError> {
        self.unlocked.as_ref().ok_or(KeyStoreError::Locked)?;
        let keep = self.header.records_prefix();
        self.purge_except(&keep)
    }

    /// The storage, e.g. to persist it.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, for an edge that tracks what changed (records stay encrypted; changing them behind the store's
    /// back only makes later reads fail).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back, dropping (and zeroizing) any key in memory.
    pub fn into_storage(self) -> S {
        self.storage
    }

    fn purge_except(&mut self, keep: &str) -> Result<(), KeyStoreError> {
        for key in self.storage.list(RECORDS_PREFIX)? {
            if !key.starts_with(keep) {
                self.storage.delete(&key)?;
            }
        }
        Ok(())
    }

    fn seal_header(
        segments: &[Segment],
        generation: u64,
        root: Zeroizing<[u8; 32]>,
    ) -> Result<(Header, Unlocked), KeyStoreError> {
        let sorted = sorted_segments(segments)?;
        let knowledge = match sorted.iter().find(|s| s.kind == SegmentKind::Knowledge) {
            Some(s) => Some(s.kdf.clone().ok_or(KeyStoreError::KnowledgeWithoutKdf)?),
            None => None,
        };
        let salt = random()?;
        let master = MasterKey::derive(segments, &salt)?;
        let kinds = sorted.iter().map(|s| s.kind).collect();
        let header = Header::seal(kinds, salt, knowledge, generation, &master, &root)?;
        Ok((header, Unlocked { master, root }))
    }

    fn record_key(&self, name: &str) -> String {
        format!("{}{name}", self.header.records_prefix())
    }
}

fn sorted_segments(segments: &[Segment]) -> Result<Vec<&Segment>, KeyStoreError> {
    let mut sorted: Vec<&Segment> = segments.iter().collect();
    sorted.sort_by_key(|s| s.kind);
    if sorted.is_empty() {
        return Err(KeyStoreError::NoSegments);
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0].kind == w[1].kind) {
        return Err(KeyStoreError::DuplicateSegment(w[0].kind));
    }
    Ok(sorted)
}

fn kinds_label(kinds: &[SegmentKind]) -> String {
    kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join("+")
}

fn check_name(name: &str) -> Result<(), KeyStoreError> {
    if name.is_empty() || name.len() > MAX_RECORD_NAME || name.chars().any(char::is_control) {
        return Err(KeyStoreError::InvalidName(name.to_owned()));
    }
    Ok(())
}

fn record_aad(name: &str) -> Vec<u8> {
    let mut aad = format!("PeerBubble keystore v{FORMAT_VERSION} record ").into_bytes();
    aad.extend_from_slice(name.as_bytes());
    aad
}

/// `version || nonce || ciphertext+tag`
fn seal_record(master: &MasterKey, name: &str, plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
    let nonce: [u8; NONCE_LEN] = random()?;
    let sealed = xchacha(&*master.subkey("records")?)
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: &record_aad(name) })
        .map_err(|_| KeyStoreError::KeyDerivation)?;
    let mut value = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    value.push(FORMAT_VERSION);
    value.extend_from_slice(&nonce);
    value.extend_from_slice(&sealed);
    Ok(value)
}

fn open_record(master: &MasterKey, name: &str, value: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
    let corrupt = || KeyStoreError::Corrupt(name.to_owned());
    let (version, rest) = value.split_first().ok_or_else(corrupt)?;
    if *version != FORMAT_VERSION || rest.len() < NONCE_LEN + TAG_LEN {
        return Err(corrupt());
    }
    let (nonce, sealed) = rest.split_at(NONCE_LEN);
    xchacha(&*master.subkey("records")?)
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad: &record_aad(name) })
        .map(Zeroizing::new)
        .map_err(|_| corrupt())
}

fn header_bytes(header: &Header) -> Result<Vec<u8>, KeyStoreError> {
    serde_json::to_vec(header).map_err(|e| KeyStoreError::CorruptHeader(e.to_string()))
}

fn xchacha(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(key.into())
}

fn expand(prk: &[u8; 32], info: &str) -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
    let mut out = Zeroizing::new([0u8; 32]);
    let hkdf = Hkdf::<Sha256>::from_prk(prk).map_err(|_| KeyStoreError::KeyDerivation)?;
    hkdf.expand(info.as_bytes(), out.as_mut()).map_err(|_| KeyStoreError::KeyDerivation)?;
    Ok(out)
}

fn random<const N: usize>() -> Result<[u8; N], KeyStoreError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| KeyStoreError::Random(e.to_string()))?;
    Ok(bytes)
}
