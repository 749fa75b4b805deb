//! Member identity: Ed25519 keys, member ids, domain-separated signatures and safety numbers.
//!
//! A member has one identity key per bubble (DESIGN.md invariant 5), so two bubbles cannot correlate a person.
//! Every signature is made for exactly one [`Purpose`]; the purpose label is part of the signed bytes, so a
//! signature made to authenticate a signaling session can never be replayed as, say, an invite redemption.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
pub use zeroize::Zeroizing;

/// Prefix of every signed message; the version lets a future scheme never collide with this one.
const SIGNING_PREFIX: &[u8] = b"PeerBubble-v1-signature\0";
const MEMBER_ID_DOMAIN: &[u8] = b"PeerBubble-v1-member-id\0";
const SAFETY_NUMBER_DOMAIN: &[u8] = b"PeerBubble-v1-safety-number\0";
/// Iterations of SHA-512 per safety-number half, as in Signal's numeric fingerprints: makes grinding for a key
/// whose safety number collides with a victim's expensive.
const SAFETY_NUMBER_ITERATIONS: usize = 5200;

/// Errors about keys, ids and signatures. Messages say what was wrong without echoing secret material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The text is not unpadded base64url, or decodes to the wrong number of bytes.
    #[error("{what} must be {len} bytes in unpadded base64url")]
    Encoding {
        /// Which value was malformed.
        what: &'static str,
        /// The expected decoded length.
        len: usize,
    },
    /// The 32 bytes are not a valid Ed25519 public key (not a curve point, or a weak key).
    #[error("public key is not a valid Ed25519 point")]
    InvalidPublicKey,
    /// A member id must be 32 lowercase hexadecimal characters.
    #[error("member id must be 32 lowercase hexadecimal characters")]
    InvalidMemberId,
    /// The signature does not verify for this key, purpose and message.
    #[error("signature does not verify for this key and purpose")]
    BadSignature,
    /// The operating system or browser could not provide random bytes.
    #[error("no secure random source available")]
    Random,
}

/// What a signature is for. The label is signed along with the message (domain separation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Answering a bubble-server's challenge to open a signaling session.
    SignalAuth,
    /// Proving possession of the identity key when redeeming an enrollment invite.
    EnrollInvite,
}

impl Purpose {
    /// The label signed with the message. Labels never contain NUL, which terminates them.
    pub fn label(self) -> &'static str {
        match self {
            Purpose::SignalAuth => "signal-auth",
            Purpose::EnrollInvite => "enroll-invite",
        }
    }
}

fn signed_bytes(purpose: Purpose, message: &[u8]) -> Vec<u8> {
    let label = purpose.label().as_bytes();
    let mut out = Vec::with_capacity(SIGNING_PREFIX.len() + label.len() + 1 + message.len());
    out.extend_from_slice(SIGNING_PREFIX);
    out.extend_from_slice(label);
    out.push(0);
    out.extend_from_slice(message);
    out
}

/// A member's secret identity key. Zeroized on drop; `Debug` never prints it.
pub struct IdentityKey {
    signing: SigningKey,
}

impl IdentityKey {
    /// Makes a fresh key from the platform's secure random source.
    pub fn generate() -> Result<Self, IdentityError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::fill(seed.as_mut()).map_err(|_| IdentityError::Random)?;
        Ok(Self::from_seed(&seed))
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { signing: SigningKey::from_bytes(seed) }
    }

    /// The 32-byte seed, wrapped so that it is zeroized when dropped. Handle with care: this is the secret.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The seed as unpadded base64url, zeroized when dropped (the key-file format of the native peer).
    pub fn to_seed_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(URL_SAFE_NO_PAD.encode(self.to_seed().as_ref()))
    }

    /// Parses a seed written by [`IdentityKey::to_seed_base64`].
    pub fn from_seed_base64(text: &str) -> Result<Self, IdentityError> {
        let err = IdentityError::Encoding { what: "identity key seed", len: 32 };
        let bytes = Zeroizing::new(URL_SAFE_NO_PAD.decode(text.trim()).map_err(|_| err.clone())?);
        let seed: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.as_slice().try_into().map_err(|_| err)?);
        Ok(Self::from_seed(&seed))
    }

    /// The public half, safe to publish in the bubble's directory.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// Signs `message` for exactly one purpose.
    pub fn sign(&self, purpose: Purpose, message: &[u8]) -> Signature {
        Signature(self.signing.sign(&signed_bytes(purpose, message)))
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public_key().to_string())
            .field("secret", &"<redacted>")
            .finish()
    }
}

// `SigningKey` zeroizes itself on drop (ed25519-dalek's `zeroize` feature); this type adds no other secret.

/// An Ed25519 public key, written as unpadded base64url (43 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// Parses 32 raw bytes, refusing non-points and weak (small-order) keys.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, IdentityError> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| IdentityError::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(IdentityError::InvalidPublicKey);
        }
        Ok(Self(key))
    }

    /// The member id this key stands for in its bubble.
    pub fn member_id(&self) -> MemberId {
        let digest = Sha256::new().chain_update(MEMBER_ID_DOMAIN).chain_update(self.as_bytes()).finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        MemberId(id)
    }

    /// Verifies a signature made with [`IdentityKey::sign`] for `purpose`. Strict verification: rejects
    /// malleable and non-canonical signatures.
    pub fn verify(&self, purpose: Purpose, message: &[u8], signature: &Signature) -> Result<(), IdentityError> {
        self.0.verify_strict(&signed_bytes(purpose, message), &signature.0).map_err(|_| IdentityError::BadSignature)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = IdentityError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes: [u8; 32] = decode_fixed(text, "public key")?;
        Self::from_bytes(&bytes)
    }
}

impl TryFrom<String> for PublicKey {
    type Error = IdentityError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<PublicKey> for String {
    fn from(key: PublicKey) -> Self {
        key.to_string()
    }
}

fn decode_fixed<const N: usize>(text: &str, what: &'static str) -> Result<[u8; N], IdentityError> {
    let err = IdentityError::Encoding { what, len: N };
    // Reject before decoding anything larger than the value can be.
    if text.len() != (N * 4).div_ceil(3) {
        return Err(err);
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| err.clone())?;
    bytes.as_slice().try_into().map_err(|_| err)
}

/// An Ed25519 signature, written as unpadded base64url (86 characters).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Signature(ed25519_dalek::Signature);

impl Signature {
    /// The raw 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0.to_bytes()
    }

    /// Wraps 64 raw bytes (validity is only known when verifying).
    pub fn from_bytes(bytes: &[u8; 64]) -> Self {
        Self(ed25519_dalek::Signature::from_bytes(bytes))
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.to_bytes()))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl TryFrom<String> for Signature {
    type Error = IdentityError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        Ok(Self::from_bytes(&decode_fixed::<64>(&text, "signature")?))
    }
}

impl From<Signature> for String {
    fn from(sig: Signature) -> Self {
        sig.to_string()
    }
}

/// A member's id within a bubble: the first 16 bytes of a domain-separated SHA-256 of the public key, written
/// as 32 lowercase hex characters. Short enough to show, long enough that nobody can grind a collision.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MemberId([u8; 16]);

impl MemberId {
    /// The raw 16 bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The id with these raw bytes (as carried in an MLS credential). Says nothing about whose it is: check
    /// it against [`PublicKey::member_id`] of a directory key before trusting it.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

impl MemberId {
    /// The 32 lowercase hex characters, without allocating (ids are written into every relayed frame).
    pub fn to_hex(&self) -> [u8; 32] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (i, byte) in self.0.iter().enumerate() {
            out[2 * i] = HEX[usize::from(byte >> 4)];
            out[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
        }
        out
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.to_hex();
        // Always ASCII.
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({self})")
    }
}

impl FromStr for MemberId {
    type Err = IdentityError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let raw = text.as_bytes();
        if raw.len() != 32 {
            return Err(IdentityError::InvalidMemberId);
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(IdentityError::InvalidMemberId),
        };
        let mut id = [0u8; 16];
        for (i, pair) in raw.chunks_exact(2).enumerate() {
            id[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Ok(Self(id))
    }
}

impl TryFrom<String> for MemberId {
    type Error = IdentityError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<MemberId> for String {
    fn from(id: MemberId) -> Self {
        id.to_string()
    }
}

fn safety_half(key: &PublicKey) -> String {
    let member = key.member_id();
    let mut hash: Vec<u8> = Sha512::new()
        .chain_update(SAFETY_NUMBER_DOMAIN)
        .chain_update(key.as_bytes())
        .chain_update(member.as_bytes())
        .finalize()
        .to_vec();
    for _ in 1..SAFETY_NUMBER_ITERATIONS {
        hash = Sha512::new().chain_update(&hash).chain_update(key.as_bytes()).finalize().to_vec();
    }
    // Six groups of five digits from 5-byte big-endian chunks, as Signal does.
    hash.chunks_exact(5)
        .take(6)
        .map(|chunk| {
            let value = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", value % 100_000)
        })
        .collect()
}

/// The 60-digit safety number two members compare in person (or by QR) to detect a substituted key.
/// Both members compute the same number: the halves are ordered, not the arguments.
pub fn safety_number(a: &PublicKey, b: &PublicKey) -> String {
    let (mut first, mut second) = (safety_half(a), safety_half(b));
    if second < first {
        std::mem::swap(&mut first, &mut second);
    }
    first + &second
}

/// A member's half of every safety number they compute (30 digits), from their public key alone: what an
/// administrator's console can show and the member's device can show too, to check a key without a second member.
pub fn key_fingerprint(key: &PublicKey) -> String {
    safety_half(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> IdentityKey {
        IdentityKey::from_seed(&[seed; 32])
    }

    #[test]
    fn signature_verifies_only_for_its_purpose() {
        let k = key(1);
        let sig = k.sign(Purpose::SignalAuth, b"nonce");
        assert_eq!(k.public_key().verify(Purpose::SignalAuth, b"nonce", &sig), Ok(()));
        assert_eq!(k.public_key().verify(Purpose::EnrollInvite, b"nonce", &sig), Err(IdentityError::BadSignature));
        assert_eq!(k.public_key().verify(Purpose::SignalAuth, b"nonce2", &sig), Err(IdentityError::BadSignature));
        assert_eq!(key(2).public_key().verify(Purpose::SignalAuth, b"nonce", &sig), Err(IdentityError::BadSignature));
    }

    #[test]
    fn debug_never_prints_the_secret() {
        let k = key(7);
        let seed = k.to_seed_base64();
        let debug = format!("{k:?}");
        assert!(debug.contains("<redacted>"));
        assert!(!debug.contains(seed.as_str()), "{debug}");
    }

    #[test]
    fn seed_roundtrip_and_strict_parsing() {
        let k = key(3);
        let back = IdentityKey::from_seed_base64(&k.to_seed_base64()).map(|k| k.public_key());
        assert_eq!(back, Ok(k.public_key()));
        assert!(IdentityKey::from_seed_base64("short").is_err());
    }

    #[test]
    fn member_id_text_roundtrip_and_strictness() {
        let id = key(4).public_key().member_id();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<MemberId>(), Ok(id));
        assert!(text.to_uppercase().parse::<MemberId>().is_err());
        assert!(text[..30].parse::<MemberId>().is_err());
        assert_ne!(key(5).public_key().member_id(), id);
    }

    #[test]
    fn public_key_parsing_rejects_bad_forms() {
        let pk = key(6).public_key();
        assert_eq!(pk.to_string().parse::<PublicKey>(), Ok(pk));
        // Padded, wrong length, wrong alphabet.
        assert!(format!("{pk}=").parse::<PublicKey>().is_err());
        assert!(pk.to_string()[1..].parse::<PublicKey>().is_err());
        assert!(pk.to_string().replace(|c: char| c.is_ascii_alphanumeric(), "+").parse::<PublicKey>().is_err());
        // The identity point is a weak key.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(PublicKey::from_bytes(&identity), Err(IdentityError::InvalidPublicKey));
    }

    #[test]
    fn safety_number_is_symmetric_and_key_bound() {
        let (a, b, c) = (key(8).public_key(), key(9).public_key(), key(10).public_key());
        let ab = safety_number(&a, &b);
        assert_eq!(ab.len(), 60);
        assert!(ab.chars().all(|c| c.is_ascii_digit()));
        assert_eq!(ab, safety_number(&b, &a));
        assert_ne!(ab, safety_number(&a, &c));
    }
}
