//! Opaque envelope bodies: bytes the server relays and cannot read (end-to-end encrypted by the members).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::limits::MAX_BODY_BYTES;

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
}

/// An envelope body, kept in its validated wire form (unpadded base64url) so that relaying it costs no
/// re-encoding. `Debug` prints only its length: bodies never reach logs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Opaque(String);

/// Base64url length of `n` bytes without padding.
const fn encoded_len(n: usize) -> usize {
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
    fn debug_hides_the_body() {
        let body = Opaque::from_bytes(b"secret canary").map(|o| format!("{o:?}")).unwrap_or_default();
        assert!(!body.contains("c2VjcmV0"), "{body}");
        assert!(body.contains("bytes"));
    }
}
