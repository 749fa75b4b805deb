//! A bubble's policy: what its administrators require of every member's client. Set in the console, carried in
//! the directory document, handed to each member in `welcome` and pushed in a `policy` frame when it changes.
//! Clients enforce it (client-core refuses what it forbids) and show it; the server cannot, since it never
//! sees content (DESIGN.md), and a modified client only harms its own member's copy of the rules.

use serde::{Deserialize, Serialize};

/// Largest file size a policy may allow (1 TiB).
pub const MAX_POLICY_FILE_BYTES: u64 = 1 << 40;
/// Longest disappearing timer a policy may require (one year).
pub const MAX_POLICY_DISAPPEAR_SECS: u32 = 365 * 24 * 3600;

/// What a bubble requires. The default requires nothing: today's behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, default)]
pub struct BubblePolicy {
    /// Conversations open masked (a tap reveals one message); members cannot turn masking off.
    pub masked_by_default: bool,
    /// When not 0: every message disappears at the latest this many seconds after it was sent; members may
    /// choose a shorter timer, never a longer one or none.
    pub disappear_within_secs: u32,
    /// Files may be sent at all.
    pub files_allowed: bool,
    /// Largest file a member may send, in bytes.
    pub max_file_bytes: u64,
    /// Audio and video calls may be made.
    pub calls_allowed: bool,
    /// No direct peer connection: media and data go through the bubble's TURN relay, so that members' network
    /// addresses are not revealed to each other.
    pub relay_only: bool,
}

impl Default for BubblePolicy {
    fn default() -> Self {
        Self {
            masked_by_default: false,
            disappear_within_secs: 0,
            files_allowed: true,
            max_file_bytes: 4 << 30,
            calls_allowed: true,
            relay_only: false,
        }
    }
}

impl BubblePolicy {
    /// Checks the bounds; the error says which value is out of range.
    pub fn check(&self) -> Result<(), String> {
        if self.disappear_within_secs > MAX_POLICY_DISAPPEAR_SECS {
            return Err(format!("disappear_within_secs is at most {MAX_POLICY_DISAPPEAR_SECS} (one year)"));
        }
        if self.max_file_bytes == 0 || self.max_file_bytes > MAX_POLICY_FILE_BYTES {
            return Err(format!("max_file_bytes must be between 1 and {MAX_POLICY_FILE_BYTES}"));
        }
        Ok(())
    }

    /// The disappearing timer a conversation really gets when a member asks for `wanted` (None: keep
    /// messages): the shorter of the two when the policy requires one.
    pub fn timer(&self, wanted: Option<u32>) -> Option<u32> {
        match (self.disappear_within_secs, wanted) {
            (0, wanted) => wanted,
            (limit, Some(wanted)) => Some(wanted.min(limit)),
            (limit, None) => Some(limit),
        }
    }

    /// Whether a file of `size` bytes may be sent.
    pub fn allows_file(&self, size: u64) -> bool {
        self.files_allowed && size <= self.max_file_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_require_nothing_and_bounds_are_checked() {
        let p = BubblePolicy::default();
        assert_eq!(p.check(), Ok(()));
        assert_eq!(p.timer(None), None);
        assert_eq!(p.timer(Some(60)), Some(60));
        assert!(p.allows_file(1 << 30));
        let strict = BubblePolicy { disappear_within_secs: 3600, files_allowed: true, max_file_bytes: 10, ..p };
        assert_eq!(strict.timer(None), Some(3600));
        assert_eq!(strict.timer(Some(60)), Some(60));
        assert_eq!(strict.timer(Some(86_400)), Some(3600));
        assert!(strict.allows_file(10) && !strict.allows_file(11));
        assert!(!BubblePolicy { files_allowed: false, ..p }.allows_file(1));
        assert!(BubblePolicy { max_file_bytes: 0, ..p }.check().is_err());
        assert!(BubblePolicy { disappear_within_secs: MAX_POLICY_DISAPPEAR_SECS + 1, ..p }.check().is_err());
        // Unknown fields are refused; missing ones take the defaults.
        assert!(serde_json::from_str::<BubblePolicy>(r#"{"masked_by_default":true,"x":1}"#).is_err());
        let partial: BubblePolicy = serde_json::from_str(r#"{"relay_only":true}"#).unwrap_or_default();
        assert!(partial.relay_only && partial.files_allowed);
    }
}
