//! Enrollment, the same for the CLI, the browser and the admin API: the invite link an administrator hands out
//! (`…/enroll#<bubble>.<token>`; the fragment never reaches a server in a request line), and the request by
//! which a member proves possession of the key it made to redeem it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::frame::enroll_message;
use crate::identity::{IdentityKey, PublicKey, Purpose, Signature};
use crate::limits::is_valid_id;

/// Longest invite token accepted.
pub const MAX_INVITE_TOKEN_BYTES: usize = 128;

/// The header a bubble-server adds when it forwards an enrollment made on its own origin: the bubble it
/// serves. The admin API refuses an invite of another bubble with `wrong_bubble`.
pub const ENROLL_BUBBLE_HEADER: &str = "peerbubble-bubble";

/// Why an invite link or an enrollment request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnrollError {
    /// Not `…/enroll#<bubble>.<token>` (or just `<bubble>.<token>`) with a valid bubble id and token.
    #[error("not an invite link: expected …/enroll#<bubble>.<token>")]
    NotAnInvite,
    /// `public_key` is not an Ed25519 public key in unpadded base64url.
    #[error("public_key must be an Ed25519 public key (32 bytes, unpadded base64url)")]
    PublicKey,
    /// `signature` is not 64 bytes of unpadded base64url.
    #[error("signature must be 64 bytes, unpadded base64url")]
    Signature,
    /// The signature does not prove possession of the key for this bubble and invite.
    #[error("the signature does not prove possession of this key for this invite")]
    BadSignature,
}

/// An invite as the member holds it. The token is a bearer secret until redeemed: `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    bubble: String,
    token: String,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite").field("bubble", &self.bubble).field("token", &"<redacted>").finish()
    }
}

impl Invite {
    /// Reads a link (`https://host/enroll#ops.TOKEN`) or its fragment (`ops.TOKEN`). The token is kept as is:
    /// 1 to [`MAX_INVITE_TOKEN_BYTES`] URL-safe characters.
    pub fn parse(link: &str) -> Result<Self, EnrollError> {
        let link = link.trim();
        let fragment = link.rsplit_once('#').map_or(link, |(_, fragment)| fragment);
        let (bubble, token) = fragment.split_once('.').ok_or(EnrollError::NotAnInvite)?;
        let token_ok = !token.is_empty()
            && token.len() <= MAX_INVITE_TOKEN_BYTES
            && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !is_valid_id(bubble) || !token_ok {
            return Err(EnrollError::NotAnInvite);
        }
        Ok(Self { bubble: bubble.to_owned(), token: token.to_owned() })
    }

    /// The link for a bubble's public address.
    pub fn link(&self, public_url: &str) -> String {
        format!("{}/enroll#{}.{}", public_url.trim_end_matches('/'), self.bubble, self.token)
    }

    /// The bubble it enrolls into.
    pub fn bubble(&self) -> &str {
        &self.bubble
    }

    /// The token (what the admin API stores only a hash of).
    pub fn token(&self) -> &str {
        &self.token
    }
}

/// The body of `POST /api/v1/enroll`: the invite token, the member's new public key, and a signature by that
/// key over the bubble, the token's hash and the key ([`enroll_message`]). Fields are kept as sent, so that
/// the admin API can say which one is malformed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Enroll))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The invite token (not the whole link).
    pub invite: String,
    /// The member's identity public key, unpadded base64url.
    pub public_key: String,
    /// Signature for the enrollment purpose, unpadded base64url.
    pub signature: String,
}

impl EnrollRequest {
    /// Proves possession of `key` for `invite`.
    pub fn new(invite: &Invite, key: &IdentityKey) -> Self {
        let public_key = key.public_key();
        let signature = key.sign(Purpose::EnrollInvite, &enroll_message(&invite.bubble, &invite.token, &public_key));
        Self { invite: invite.token.clone(), public_key: public_key.to_string(), signature: signature.to_string() }
    }

    /// The key, if well-formed.
    pub fn public_key(&self) -> Result<PublicKey, EnrollError> {
        self.public_key.parse().map_err(|_| EnrollError::PublicKey)
    }

    /// The signature, if well-formed.
    pub fn signature(&self) -> Result<Signature, EnrollError> {
        Signature::try_from(self.signature.clone()).map_err(|_| EnrollError::Signature)
    }

    /// Checks the proof of possession for `bubble` (the invite's, as the admin API knows it); the key.
    pub fn verify(&self, bubble: &str) -> Result<PublicKey, EnrollError> {
        let public_key = self.public_key()?;
        let signature = self.signature()?;
        public_key
            .verify(Purpose::EnrollInvite, &enroll_message(bubble, &self.invite, &public_key), &signature)
            .map_err(|_| EnrollError::BadSignature)?;
        Ok(public_key)
    }
}

/// The answer to a successful enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enrolled {
    /// The bubble.
    pub bubble: String,
    /// The new member's id.
    pub member: String,
    /// The name the administrator gave the invite.
    pub display_name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invite_links_parse_strictly() {
        let invite = Invite::parse("https://cell.example/enroll#ops.abc-_9").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((invite.bubble(), invite.token()), ("ops", "abc-_9"));
        assert_eq!(invite.link("https://cell.example/"), "https://cell.example/enroll#ops.abc-_9");
        assert_eq!(Invite::parse(" ops.abc \n").map(|i| i.token().to_owned()), Ok("abc".to_owned()));
        for bad in [
            "http://x/enroll#Ops.abc",
            "http://x/enroll#ops.",
            "http://x/enroll#.abc",
            "http://x/enroll#ops",
            "http://x/enroll#ops.ab c",
            "http://x/enroll#ops.abc%20",
            &format!("ops.{}", "a".repeat(MAX_INVITE_TOKEN_BYTES + 1)),
            "",
        ] {
            assert_eq!(Invite::parse(bad), Err(EnrollError::NotAnInvite), "{bad:?}");
        }
        assert!(!format!("{invite:?}").contains("abc-_9"), "the token is a secret");
    }

    #[test]
    fn the_request_proves_possession_for_this_bubble_and_invite_only() {
        let key = IdentityKey::from_seed(&[4; 32]);
        let invite = Invite::parse("ops.token-1").unwrap_or_else(|e| panic!("{e}"));
        let request = EnrollRequest::new(&invite, &key);
        assert_eq!(request.verify("ops"), Ok(key.public_key()));
        assert_eq!(request.verify("other-bubble"), Err(EnrollError::BadSignature));
        let other_invite = EnrollRequest { invite: "token-2".into(), ..request.clone() };
        assert_eq!(other_invite.verify("ops"), Err(EnrollError::BadSignature));
        let other_key =
            EnrollRequest { public_key: IdentityKey::from_seed(&[5; 32]).public_key().to_string(), ..request.clone() };
        assert_eq!(other_key.verify("ops"), Err(EnrollError::BadSignature));
        assert_eq!(
            EnrollRequest { public_key: "AAAA".into(), ..request.clone() }.verify("ops"),
            Err(EnrollError::PublicKey)
        );
        assert_eq!(
            EnrollRequest { signature: "AAAA".into(), ..request.clone() }.verify("ops"),
            Err(EnrollError::Signature)
        );
        // The wire form is the documented JSON, unknown fields refused.
        let json = serde_json::to_string(&request).unwrap_or_default();
        assert_eq!(serde_json::from_str::<EnrollRequest>(&json).ok(), Some(request));
        assert!(
            serde_json::from_str::<EnrollRequest>(r#"{"invite":"a","public_key":"b","signature":"c","x":1}"#).is_err()
        );
    }
}
