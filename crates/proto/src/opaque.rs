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
        // The decoder rejects padding, foreign alphabets and non-zero trailing bits (non-canonical forms).
        let decoded = URL_SAFE_NO_PAD.decode(&text).map_err(|_| OpaqueError::Encoding)?;
        if decoded.len() > MAX_BODY_BYTES {
            return Err(OpaqueError::TooLarge);
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

    #[test]
    fn debug_hides_the_body() {
        let body = Opaque::from_bytes(b"secret canary").map(|o| format!("{o:?}")).unwrap_or_default();
        assert!(!body.contains("c2VjcmV0"), "{body}");
        assert!(body.contains("bytes"));
    }
}
