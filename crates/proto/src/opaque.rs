//! Opaque bytes on the wire: envelope bodies the server relays and cannot read (end-to-end encrypted by the
//! members), challenge nonces, and MLS group ids (which the server compares, never interprets).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::limits::{MAX_BODY_BYTES, MAX_GROUP_ID_BYTES, MIN_GROUP_ID_BYTES};

/// Why an envelope body was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpaqueError {
    /// The decoded body would exceed [`MAX_BODY_BYTES`].
    #[error("envelope body is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body is not canonical unpadded base64url.
    #[error("envelope body must be unpadded base64url")]
    Encoding,
    /// An envelope must carry at least one byte.
    #[error("envelope body is empty")]
    Empty,
    /// A group id is not canonical unpadded base64url of the allowed length.
    #[error("group id must be {MIN_GROUP_ID_BYTES} to {MAX_GROUP_ID_BYTES} bytes of unpadded base64url")]
    GroupId,
}

/// An envelope body, kept in its validated wire form (unpadded base64url) so that relaying it costs no
/// re-encoding. `Debug` prints only its length: bodies never reach logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Opaque(String);

/// Base64url length of `n` bytes without padding.
pub(crate) const fn encoded_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Is `text` canonical unpadded base64url? The same acceptance as the `base64` crate's strict decoder
/// (a property test holds them equal), without decoding: the server checks every relayed body this way.
fn is_canonical_base64url(text: &[u8]) -> bool {
    /// Sextet value of each byte, or 0xFF for bytes outside the base64url alphabet.
    const VALUE: [u8; 256] = {
        let mut table = [0xFFu8; 256];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut i = 0;
        while i < 64 {
            table[alphabet[i] as usize] = i as u8;
            i += 1;
        }
        table
    };
    if text.len() % 4 == 1 {
        return false;
    }
    // OR-ing the table values is branch-free; any invalid byte sets the high bit.
    let invalid = text.iter().fold(0u8, |acc, c| acc | VALUE[usize::from(*c)]);
    if invalid & 0x80 != 0 {
        return false;
    }
    // The unused low bits of the last character must be zero (2 chars -> 4 bits, 3 chars -> 2 bits).
    let last = text.last().map_or(0, |c| VALUE[usize::from(*c)]);
    match text.len() % 4 {
        2 => last & 0x0f == 0,
        3 => last & 0x03 == 0,
        _ => true,
    }
}

impl Opaque {
    /// Wraps bytes for sending.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OpaqueError> {
        if bytes.is_empty() {
            return Err(OpaqueError::Empty);
        }
        if bytes.len() > MAX_BODY_BYTES {
            return Err(OpaqueError::TooLarge);
        }
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The bytes carried.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Validated at construction; an empty vector cannot result from a valid body.
        URL_SAFE_NO_PAD.decode(&self.0).unwrap_or_default()
    }

    /// The wire (unpadded base64url) form.
    pub fn as_wire(&self) -> &str {
        &self.0
    }

    /// Length of the wire (base64url) form.
    pub fn wire_len(&self) -> usize {
        self.0.len()
    }
}

impl TryFrom<String> for Opaque {
    type Error = OpaqueError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text.is_empty() {
            return Err(OpaqueError::Empty);
        }
        // Size first, so that an oversized body is never decoded.
        if text.len() > encoded_len(MAX_BODY_BYTES) {
            return Err(OpaqueError::TooLarge);
        }
        if !is_canonical_base64url(text.as_bytes()) {
            return Err(OpaqueError::Encoding);
        }
        Ok(Self(text))
    }
}

impl From<Opaque> for String {
    fn from(body: Opaque) -> Self {
        body.0
    }
}

impl fmt::Debug for Opaque {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opaque(<{} bytes on the wire>)", self.0.len())
    }
}

/// A challenge nonce: [`crate::limits::NONCE_BYTES`] random bytes, written as unpadded base64url.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Nonce([u8; crate::limits::NONCE_BYTES]);

impl Nonce {
    /// A fresh nonce from the platform's secure random source.
    pub fn random() -> Result<Self, crate::IdentityError> {
        let mut bytes = [0u8; crate::limits::NONCE_BYTES];
        getrandom::fill(&mut bytes).map_err(|_| crate::IdentityError::Random)?;
        Ok(Self(bytes))
    }

    /// Wraps raw bytes (tests and deterministic simulations).
    pub fn from_bytes(bytes: [u8; crate::limits::NONCE_BYTES]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; crate::limits::NONCE_BYTES] {
        &self.0
    }
}

impl TryFrom<String> for Nonce {
    type Error = OpaqueError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        if text.len() != encoded_len(crate::limits::NONCE_BYTES) {
            return Err(OpaqueError::Encoding);
        }
        let bytes = URL_SAFE_NO_PAD.decode(&text).map_err(|_| OpaqueError::Encoding)?;
        Ok(Self(bytes.as_slice().try_into().map_err(|_| OpaqueError::Encoding)?))
    }
}

impl From<Nonce> for String {
    fn from(nonce: Nonce) -> Self {
        URL_SAFE_NO_PAD.encode(nonce.0)
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Nonce({})", URL_SAFE_NO_PAD.encode(self.0))
    }
}

/// An MLS group id (RFC 9420 `group_id`): [`MIN_GROUP_ID_BYTES`]..=[`MAX_GROUP_ID_BYTES`] opaque bytes, chosen by
/// the group's creator (randomly, as MLS recommends), written as canonical unpadded base64url. The server uses
/// it only as the key of its commit ledger.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct GroupId {
    len: u8,
    // Zero beyond `len`, so that the derived `Eq` and `Hash` compare the id alone.
    bytes: [u8; MAX_GROUP_ID_BYTES],
}

impl GroupId {
    /// Wraps the bytes of an MLS group id.
    pub fn from_bytes(id: &[u8]) -> Result<Self, OpaqueError> {
        if !(MIN_GROUP_ID_BYTES..=MAX_GROUP_ID_BYTES).contains(&id.len()) {
            return Err(OpaqueError::GroupId);
        }
        let mut bytes = [0u8; MAX_GROUP_ID_BYTES];
        bytes[..id.len()].copy_from_slice(id);
        Ok(Self { len: id.len() as u8, bytes })
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl TryFrom<String> for GroupId {
    type Error = OpaqueError;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        // Length first, so that nothing oversized is decoded; the decoder refuses padding, the standard
        // alphabet and non-zero trailing bits.
        if !(encoded_len(MIN_GROUP_ID_BYTES)..=encoded_len(MAX_GROUP_ID_BYTES)).contains(&text.len()) {
            return Err(OpaqueError::GroupId);
        }
        let bytes = URL_SAFE_NO_PAD.decode(&text).map_err(|_| OpaqueError::GroupId)?;
        Self::from_bytes(&bytes)
    }
}

impl From<GroupId> for String {
    fn from(id: GroupId) -> Self {
        URL_SAFE_NO_PAD.encode(id.as_bytes())
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&URL_SAFE_NO_PAD.encode(self.as_bytes()))
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_limits() {
        let body = Opaque::from_bytes(b"sealed").map(|o| o.to_bytes());
        assert_eq!(body, Ok(b"sealed".to_vec()));
        assert_eq!(Opaque::from_bytes(&[]), Err(OpaqueError::Empty));
        assert_eq!(Opaque::from_bytes(&vec![0; MAX_BODY_BYTES + 1]), Err(OpaqueError::TooLarge));
        assert!(Opaque::from_bytes(&vec![0; MAX_BODY_BYTES]).is_ok());
    }

    #[test]
    fn strict_wire_form() {
        assert_eq!(Opaque::try_from("AAE=".to_owned()), Err(OpaqueError::Encoding));
        assert_eq!(Opaque::try_from("AA+/".to_owned()), Err(OpaqueError::Encoding));
        // "AB" decodes with non-zero trailing bits: not canonical.
        assert_eq!(Opaque::try_from("AB".to_owned()), Err(OpaqueError::Encoding));
        assert_eq!(Opaque::try_from("A".repeat(encoded_len(MAX_BODY_BYTES) + 4)), Err(OpaqueError::TooLarge));
    }

    proptest::proptest! {
        #[test]
        fn validation_matches_the_strict_decoder(text in "[A-Za-z0-9_=+/-]{0,16}") {
            let strict = URL_SAFE_NO_PAD.decode(&text).is_ok();
            proptest::prop_assert_eq!(is_canonical_base64url(text.as_bytes()), strict, "{}", text);
        }
    }

    #[test]
    fn group_ids_are_strict() {
        let id = GroupId::from_bytes(&[7; 16]).map(String::from);
        assert_eq!(id.as_deref(), Ok("BwcHBwcHBwcHBwcHBwcHBw"));
        for bytes in [MIN_GROUP_ID_BYTES, 20, MAX_GROUP_ID_BYTES] {
            let id = GroupId::from_bytes(&vec![0xA5; bytes]).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(id.as_bytes().len(), bytes);
            assert_eq!(GroupId::try_from(String::from(id)), Ok(id));
        }
        assert_eq!(GroupId::from_bytes(&[1; MIN_GROUP_ID_BYTES - 1]), Err(OpaqueError::GroupId));
        assert_eq!(GroupId::from_bytes(&[1; MAX_GROUP_ID_BYTES + 1]), Err(OpaqueError::GroupId));
        for bad in [
            "",
            "BwcHBwcHBwcHBwcHBwcHBw==",                       // padding
            "BwcHBwcHBwcHBwcHBwcHBx",                         // non-zero trailing bits
            "BwcHBwcHBwcHBwcHBwcH+w",                         // standard alphabet
            "BwcHBwcHBwcHBwcHBwcHB",                          // 15.75 bytes
            "BwcHBwcHBwcHBwcHBwcH",                           // 15 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", // 34 bytes
        ] {
            assert_eq!(GroupId::try_from(bad.to_owned()), Err(OpaqueError::GroupId), "{bad}");
        }
        // Ids that differ only in length are different ids.
        let short = GroupId::from_bytes(&[0; 16]);
        assert_ne!(short, GroupId::from_bytes(&[0; 17]));
    }

    #[test]
    fn debug_hides_the_body() {
        let body = Opaque::from_bytes(b"secret canary").map(|o| format!("{o:?}")).unwrap_or_default();
        assert!(!body.contains("c2VjcmV0"), "{body}");
        assert!(body.contains("bytes"));
    }
}
