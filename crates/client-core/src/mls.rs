//! MLS (RFC 9420) plumbing on openmls: the ciphersuite, the member's MLS signer (its bubble identity key), the
//! provider whose storage holds every MLS secret (and can be snapshotted into the encrypted key store), and the
//! checks that bind MLS credentials to the directory's public keys.
//!
//! The MLS credential of a member is a basic credential whose identity is its 16-byte member id and whose
//! signature key is its Ed25519 identity key from the directory; a credential that does not match the directory
//! is refused, so the bubble-server cannot slip in a key of its own.

use std::collections::HashMap;
use std::sync::RwLock;

use ed25519_dalek::Signer as _;
use openmls::prelude::{
    BasicCredential, Ciphersuite, Credential, CredentialWithKey, MlsGroupCreateConfig, MlsGroupJoinConfig,
    PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, SenderRatchetConfiguration,
};
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::SignatureScheme;
use peerbubble_proto::{IdentityKey, MemberId, PublicKey};

/// The ciphersuite of every PeerBubble group: ML-KEM-768 + X25519 hybrid KEM (post-quantum confidentiality),
/// AES-128-GCM, SHA-256, Ed25519 signatures (the members' identity keys). ADR 0014.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_MLKEM768X25519_AES128GCM_SHA256_Ed25519;

/// How far a message may be reordered (between the relay path and the DataChannel) and still be read, and
/// how many generations may be skipped. Anything older than the window, or replayed, is refused.
pub fn ratchet_config() -> SenderRatchetConfiguration {
    SenderRatchetConfiguration::new(8, 5000)
}

/// Group settings when creating a group.
pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .sender_ratchet_configuration(ratchet_config())
        .max_past_epochs(2)
        .padding_size(64)
        .build()
}

/// Group settings when joining from a Welcome.
pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .sender_ratchet_configuration(ratchet_config())
        .max_past_epochs(2)
        .padding_size(64)
        .build()
}

/// The member's MLS signer: its Ed25519 identity key in this bubble.
///
/// MLS signs `SignContent` structures that begin with the length of an `"MLS 1.0 "` label (one byte below
/// 0x40), while every other PeerBubble signature signs bytes beginning with `"PeerBubble-v1-signature\0"`
/// (0x50 first): an MLS signature can never be taken for a PeerBubble one, nor the reverse.
pub struct MlsSigner {
    key: ed25519_dalek::SigningKey,
    public: PublicKey,
}

impl std::fmt::Debug for MlsSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MlsSigner").field("public", &self.public).field("secret", &"<redacted>").finish()
    }
}

impl MlsSigner {
    /// The signer for an identity key.
    pub fn new(identity: &IdentityKey) -> Self {
        let seed = identity.to_seed();
        Self { key: ed25519_dalek::SigningKey::from_bytes(&seed), public: identity.public_key() }
    }

    /// The member's public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// The member's MLS credential.
    pub fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: BasicCredential::new(self.public.member_id().as_bytes().to_vec()).into(),
            signature_key: self.public.as_bytes().to_vec().into(),
        }
    }
}

impl Signer for MlsSigner {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The openmls provider: RustCrypto, and an in-memory storage that [`Provider::snapshot`] turns into bytes for
/// the encrypted key store.
#[derive(Debug, Default)]
pub struct Provider {
    crypto: RustCrypto,
    storage: MemoryStorage,
}

impl OpenMlsProvider for Provider {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

impl Provider {
    /// Every MLS secret and group state, serialised (to be encrypted by the key store, never stored as is).
    pub fn snapshot(&self) -> Vec<u8> {
        let values = match self.storage.values.read() {
            Ok(values) => values,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut entries: Vec<_> = values.iter().collect();
        entries.sort();
        let mut out = Vec::new();
        for (k, v) in entries {
            out.extend_from_slice(&(k.len() as u32).to_be_bytes());
            out.extend_from_slice(k);
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
        out
    }

    /// A provider from a [`Provider::snapshot`].
    pub fn restore(bytes: &[u8]) -> Option<Self> {
        let mut values = HashMap::new();
        let mut rest = bytes;
        let field = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let value = rest.get(4..4 + n)?.to_vec();
            *rest = &rest[4 + n..];
            Some(value)
        };
        while !rest.is_empty() {
            let k = field(&mut rest)?;
            let v = field(&mut rest)?;
            values.insert(k, v);
        }
        Some(Self { crypto: RustCrypto::default(), storage: MemoryStorage { values: RwLock::new(values) } })
    }
}

/// The member a credential names, if its signature key is that member's key in `directory_key`.
pub fn credential_member(credential: &Credential, signature_key: &[u8], directory_key: &PublicKey) -> Option<MemberId> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    let identity: [u8; 16] = basic.identity().try_into().ok()?;
    let member = directory_key.member_id();
    (identity == *member.as_bytes() && signature_key == directory_key.as_bytes()).then_some(member)
}

/// The member id a credential claims (not yet checked against a key).
pub fn claimed_member(credential: &Credential) -> Option<[u8; 16]> {
    let basic = BasicCredential::try_from(credential.clone()).ok()?;
    basic.identity().try_into().ok()
}
