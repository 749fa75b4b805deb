//! Short-lived TURN credentials in the TURN REST API form that coturn and browsers understand:
//! username `<expiry unix seconds>:<member>`, password `base64(HMAC-SHA1(secret, username))`.
//!
//! The bubble-server issues them to a member over its authenticated signaling session; the relay checks them
//! without any state of its own. A rotated secret keeps the previous one valid for an overlap window, so that
//! credentials issued just before a rotation still work until they expire. A revoked member's credentials
//! stop working at once: the relay asks whether the member is still in the directory.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use sha1::Sha1;
use zeroize::Zeroizing;

/// A TURN shared secret. `Debug` never prints it; it is wiped from memory when dropped.
#[derive(Clone)]
pub struct TurnSecret(Zeroizing<Vec<u8>>);

impl TurnSecret {
    /// The shortest secret accepted.
    pub const MIN_LEN: usize = 32;

    /// Wraps a secret of at least [`Self::MIN_LEN`] bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Self, CredentialError> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < Self::MIN_LEN {
            return Err(CredentialError::WeakSecret(bytes.len()));
        }
        Ok(Self(bytes))
    }

    fn password(&self, username: &str) -> Result<Zeroizing<String>, CredentialError> {
        // HMAC takes keys of any length, so this cannot fail; if it ever did, nothing is issued or accepted.
        let mut mac = <Hmac<Sha1>>::new_from_slice(&self.0).map_err(|_| CredentialError::WeakSecret(self.0.len()))?;
        mac.update(username.as_bytes());
        Ok(Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())))
    }
}

/// Equal secrets (a file re-read with the same content is no rotation).
impl PartialEq for TurnSecret {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl Eq for TurnSecret {}

impl fmt::Debug for TurnSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TurnSecret(<redacted>)")
    }
}

/// Credentials handed to a member, with the ICE server list.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `<expiry>:<member>`.
    pub username: String,
    /// The password (`credential` in RTCIceServer).
    pub password: Zeroizing<String>,
    /// When they stop working (unix seconds); members refresh them before.
    pub expires_at: u64,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why credentials are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// The secret is too short to be a secret.
    #[error("a TURN secret needs at least 32 bytes, got {0}")]
    WeakSecret(usize),
    /// The username is not `<expiry>:<member>`.
    #[error("TURN username is not <expiry>:<member>")]
    Malformed,
    /// The credentials expired.
    #[error("TURN credentials expired at {0}")]
    Expired(u64),
    /// The member is no longer in the bubble.
    #[error("TURN credentials of a member who is no longer in the bubble")]
    Revoked,
    /// The member names contain a colon or are empty.
    #[error("member {0:?} cannot be put in a TURN username")]
    BadMember(String),
}

/// Issues credentials for `member` valid until `now + ttl_secs`.
pub fn issue(secret: &TurnSecret, member: &str, now: u64, ttl_secs: u64) -> Result<Credentials, CredentialError> {
    if member.is_empty() || member.contains(':') {
        return Err(CredentialError::BadMember(member.to_owned()));
    }
    let expires_at = now.saturating_add(ttl_secs);
    let username = format!("{expires_at}:{member}");
    let password = secret.password(&username)?;
    Ok(Credentials { username, password, expires_at })
}

/// Checks usernames and gives the passwords a relay compares MESSAGE-INTEGRITY against.
#[derive(Debug, Clone)]
pub struct Verifier {
    current: TurnSecret,
    previous: Option<(TurnSecret, u64)>,
}

impl Verifier {
    /// Checks against `current` only.
    pub fn new(current: TurnSecret) -> Self {
        Self { current, previous: None }
    }

    /// The secret new credentials are issued with.
    pub fn current(&self) -> &TurnSecret {
        &self.current
    }

    /// Rotates to `next`; the old secret stays valid until `overlap_until` (unix seconds), which should be at
    /// least the longest credential lifetime after the rotation.
    pub fn rotate(&mut self, next: TurnSecret, overlap_until: u64) {
        let old = std::mem::replace(&mut self.current, next);
        self.previous = Some((old, overlap_until));
    }

    /// The member a username names, if it is well-formed, unexpired and the member still belongs
    /// (`is_member`); and the passwords it may carry (the current secret's, and during the overlap the
    /// previous one's).
    pub fn passwords(
        &self,
        username: &str,
        now: u64,
        is_member: impl Fn(&str) -> bool,
    ) -> Result<(String, Vec<Zeroizing<String>>), CredentialError> {
        self.passwords_with(username, now, false, is_member)
    }

    /// As [`Self::passwords`], but with `allow_expired` an expired username is still checked: a relay keeps an
    /// existing allocation alive (Refresh, permissions, channels) for the member it was made with, while new
    /// allocations need unexpired credentials. Revocation applies either way.
    pub fn passwords_with(
        &self,
        username: &str,
        now: u64,
        allow_expired: bool,
        is_member: impl Fn(&str) -> bool,
    ) -> Result<(String, Vec<Zeroizing<String>>), CredentialError> {
        let (expiry, member) = username.split_once(':').ok_or(CredentialError::Malformed)?;
        if expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) || member.is_empty() || member.contains(':')
        {
            return Err(CredentialError::Malformed);
        }
        let expiry: u64 = expiry.parse().map_err(|_| CredentialError::Malformed)?;
        if expiry <= now && !allow_expired {
            return Err(CredentialError::Expired(expiry));
        }
        if !is_member(member) {
            return Err(CredentialError::Revoked);
        }
        let mut passwords = vec![self.current.password(username)?];
        if let Some((old, until)) = &self.previous
            && now < *until
        {
            passwords.push(old.password(username)?);
        }
        Ok((member.to_owned(), passwords))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(text: &str) -> TurnSecret {
        let mut bytes = text.as_bytes().to_vec();
        bytes.resize(32, b'.');
        TurnSecret::new(bytes).unwrap()
    }

    #[test]
    fn passwords_match_an_independent_hmac() {
        // python3: base64(hmac.new(b"north-secret" + b"." * 20, b"1700000600:m-alice", sha1).digest())
        let creds = issue(&secret("north-secret"), "m-alice", 1_700_000_000, 600).unwrap();
        assert_eq!(creds.username, "1700000600:m-alice");
        assert_eq!(creds.password.as_str(), "5gfrLSTmkGSchQWIXvxXw3Mq5vs=");
        assert_eq!(creds.expires_at, 1_700_000_600);
        assert!(!format!("{creds:?}").contains(creds.password.as_str()));
        assert!(!format!("{:?}", secret("north-secret")).contains("north"));
    }

    #[test]
    fn expired_malformed_revoked_and_forged_credentials_fail() {
        let key = secret("north-secret");
        let verifier = Verifier::new(key.clone());
        let creds = issue(&key, "m-alice", 1_000, 600).unwrap();
        let all = |_: &str| true;
        let (member, passwords) = verifier.passwords(&creds.username, 1_500, all).unwrap();
        assert_eq!(member, "m-alice");
        assert_eq!(passwords, vec![creds.password.clone()]);
        assert_eq!(verifier.passwords(&creds.username, 1_600, all), Err(CredentialError::Expired(1_600)));
        assert_eq!(verifier.passwords(&creds.username, 1_500, |m| m != "m-alice"), Err(CredentialError::Revoked));
        for bad in ["m-alice", ":m-alice", "16x0:m-alice", "1600:", "1600:a:b", "-5:m-alice"] {
            assert_eq!(verifier.passwords(bad, 1_500, all), Err(CredentialError::Malformed), "{bad}");
        }
        // Credentials from another secret never match.
        let forged = issue(&secret("south-secret"), "m-alice", 1_000, 600).unwrap();
        let (_, passwords) = verifier.passwords(&forged.username, 1_500, all).unwrap();
        assert!(!passwords.contains(&forged.password));
        assert!(issue(&key, "a:b", 0, 1).is_err() && issue(&key, "", 0, 1).is_err());
        assert_eq!(TurnSecret::new(vec![1; 31]).unwrap_err(), CredentialError::WeakSecret(31));
    }

    #[test]
    fn rotation_keeps_old_credentials_for_the_overlap_only() {
        let (old, new) = (secret("old-secret"), secret("new-secret"));
        let mut verifier = Verifier::new(old.clone());
        let issued_before = issue(&old, "m-bob", 1_000, 3_600).unwrap();
        verifier.rotate(new.clone(), 2_000);
        let issued_after = issue(&new, "m-bob", 1_000, 3_600).unwrap();
        let all = |_: &str| true;
        let (_, during) = verifier.passwords(&issued_before.username, 1_500, all).unwrap();
        assert!(during.contains(&issued_before.password) && during.contains(&issued_after.password));
        let (_, after) = verifier.passwords(&issued_before.username, 2_500, all).unwrap();
        assert!(!after.contains(&issued_before.password), "the old secret is gone after the overlap");
        assert!(after.contains(&issued_after.password));
    }
}
