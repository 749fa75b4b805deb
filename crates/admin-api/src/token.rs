//! Secrets the admin API hands out (admin token, bubble credentials, invite tokens): 256 random bits, shown once,
//! stored only as SHA-256.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest as _, Sha256};

/// A fresh 256-bit token, unpadded base64url.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    bytes
        .iter()
        .flat_map(|b| [char::from(DIGITS[usize::from(b >> 4)]), char::from(DIGITS[usize::from(b & 0x0f)])])
        .collect()
}

/// SHA-256 of `bytes`, hex (content versions, ETags).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a token, hex: what is stored and compared.
pub fn hash_token(token: &str) -> String {
    sha256_hex(token.as_bytes())
}

/// Compares two hashes without an early exit.
pub fn hashes_equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hashes_compare() -> Result<(), getrandom::Error> {
        let (a, b) = (random_token()?, random_token()?);
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(hashes_equal(&hash_token(&a), &hash_token(&a)));
        assert!(!hashes_equal(&hash_token(&a), &hash_token(&b)));
        assert_eq!(hash_token("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        Ok(())
    }
}
