//! Size limits of the signaling protocol. A frame or field over its limit is refused before it is parsed
//! further (DESIGN.md invariant 6). Servers announce their effective limits in `welcome`; these are the
//! protocol's ceilings, which no server may raise.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Largest WebSocket message (one frame) either side may send, in bytes.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;
/// Largest decoded envelope body, in bytes. Base64url makes it ~43.7 KiB on the wire, inside a frame.
pub const MAX_BODY_BYTES: usize = 32 * 1024;
/// Longest display name, in bytes of UTF-8.
pub const MAX_DISPLAY_NAME_BYTES: usize = 64;
/// Longest category or bubble id, in bytes (ASCII `[a-z0-9-]`).
pub const MAX_ID_BYTES: usize = 64;
/// Most categories one member may belong to.
pub const MAX_CATEGORIES_PER_MEMBER: usize = 32;
/// Length of a challenge nonce, in bytes.
pub const NONCE_BYTES: usize = 32;
/// Shortest MLS group id a `commit` may name, in bytes: group ids share one ledger per bubble, so they must be
/// unguessable (random, as MLS recommends) for one group's epochs not to be claimable by outsiders.
pub const MIN_GROUP_ID_BYTES: usize = 16;
/// Longest MLS group id a `commit` may name, in bytes.
pub const MAX_GROUP_ID_BYTES: usize = 32;
/// Largest KeyPackage a member may publish, in bytes (an X-Wing KeyPackage is about 2.6 KB).
pub const MAX_KEY_PACKAGE_BYTES: usize = 8 * 1024;
/// One-time KeyPackages a bubble keeps per member (besides one last-resort KeyPackage); older ones are dropped
/// when a member publishes more.
pub const KEY_PACKAGES_KEPT: usize = 4;
/// Most recipients one `commit` may name. A protocol constant rather than a field of [`Limits`]: clients
/// decode `welcome.limits` strictly, so a new field there would break every client already deployed.
pub const MAX_COMMIT_RECIPIENTS: usize = 256;

/// The limits a server enforces on a session, sent to the client in `welcome` so that it can stay inside them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest frame the server accepts, in bytes.
    pub max_frame_bytes: u32,
    /// Largest decoded envelope body, in bytes.
    pub max_body_bytes: u32,
    /// Sustained frames per second allowed on one connection.
    pub frames_per_second: u32,
    /// Frames a connection may send in a burst above the sustained rate.
    pub frame_burst: u32,
    /// Sustained frames per second allowed for one member across all its sessions.
    pub member_frames_per_second: u32,
    /// Simultaneous sessions (tabs, devices) one member may hold.
    pub max_sessions_per_member: u32,
    /// A session that sends nothing for this long is closed; clients ping at about a third of it.
    pub idle_timeout_ms: u64,
}

/// Is `id` a valid bubble or category id: 1..=64 bytes of `[a-z0-9-]`, not starting with `-`?
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && !id.starts_with('-')
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Is `name` a valid display name: 1..=64 bytes of UTF-8 without control characters?
pub fn is_valid_display_name(name: &str) -> bool {
    !name.trim().is_empty() && name.len() <= MAX_DISPLAY_NAME_BYTES && !name.chars().any(char::is_control)
}

/// A token bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        Self { rate: f64::from(rate), burst: f64::from(burst), tokens: f64::from(burst), last: now }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        self.take_n(1, now)
    }

    /// Takes `n` tokens at once (at most the whole burst, so that any `n` can pass from a full bucket), or
    /// says how long until they are available; takes nothing when refused.
    pub fn take_n(&mut self, n: u32, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let cost = f64::from(n.max(1)).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names() {
        assert!(is_valid_id("crisis-cell-1"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("-x"));
        assert!(!is_valid_id("Upper"));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(is_valid_display_name("Émilie Durand"));
        assert!(!is_valid_display_name("  "));
        assert!(!is_valid_display_name("a\u{0}b"));
        assert!(!is_valid_display_name(&"é".repeat(33)));
    }

    #[test]
    fn bucket_takes_several_tokens_at_most_a_burst() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(10, 20, now);
        assert_eq!(bucket.take_n(15, now), Ok(()));
        assert!(bucket.take_n(6, now).is_err(), "5 tokens left");
        assert_eq!(bucket.take_n(5, now), Ok(()), "a refusal took nothing");
        // More than the burst costs the whole burst: possible from a full bucket, two seconds later.
        let later = now + Duration::from_secs(2);
        assert_eq!(bucket.take_n(1000, later), Ok(()));
        assert!(bucket.take(later).is_err());
    }
}
