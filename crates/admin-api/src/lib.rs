//! The admin API: the organisation's directory (members' public keys, categories, bubbles), one-time invites and
//! enrollment, audit events. It must be safe to lose to an attacker: it never holds a private key, a message
//! key or message content, and it accepts a public key only with a signature proving possession.
//!
//! Administrators sign in with OpenID Connect ([`oidc`]) or a bearer token ([`auth`]); the OpenAPI document is
//! built from the handlers themselves and served with an offline reference page ([`reference`]).

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod control;
pub mod oidc;
pub mod reference;
pub mod retention;
pub mod store;
pub mod token;

pub use api::{ApiState, Clock, record_health, router, system_clock};
pub use store::{Store, StoreError};

/// Splits an invite link (`…/enroll#<bubble>.<token>`) or its fragment into bubble and token.
pub fn parse_invite(link: &str) -> Option<(&str, &str)> {
    let fragment = link.rsplit_once('#').map_or(link, |(_, f)| f);
    let (bubble, token) = fragment.split_once('.')?;
    (peerbubble_proto::limits::is_valid_id(bubble) && !token.is_empty() && token.len() <= 128)
        .then_some((bubble, token))
}

#[cfg(test)]
mod tests {
    #[test]
    fn invite_links_parse() {
        assert_eq!(super::parse_invite("http://x/enroll#ops.abc-_9"), Some(("ops", "abc-_9")));
        assert_eq!(super::parse_invite("ops.abc"), Some(("ops", "abc")));
        assert_eq!(super::parse_invite("http://x/enroll#Ops.abc"), None);
        assert_eq!(super::parse_invite("http://x/enroll#ops."), None);
    }
}
