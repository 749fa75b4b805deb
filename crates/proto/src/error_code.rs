//! Error codes a bubble-server sends in `error` frames. Each is documented in `docs/protocol.md`; a test there
//! keeps the two in step.

use serde::{Deserialize, Serialize};

/// Why the server refused something. Fatal codes are followed by the server closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON of a known frame type, has unknown or duplicate fields, or trailing data.
    MalformedFrame,
    /// The frame exceeds `max_frame_bytes`. Fatal.
    FrameTooLarge,
    /// A field exceeds its limit or has an invalid form (e.g. body over `max_body_bytes`, bad member id).
    InvalidField,
    /// A binary WebSocket message was sent; v1 uses text frames only.
    BinaryFrame,
    /// A frame other than `auth` arrived before authentication. Fatal.
    NotAuthenticated,
    /// `auth` was sent on a session that is already authenticated.
    AlreadyAuthenticated,
    /// The public key is not a member of this bubble (or was removed). Fatal.
    UnknownMember,
    /// The signature does not verify for this key, bubble and nonce. Fatal.
    BadSignature,
    /// The challenge's lifetime passed before `auth` arrived. Fatal.
    ChallengeExpired,
    /// `auth` answered a nonce that was not the one issued on this connection. Fatal.
    ChallengeMismatch,
    /// `auth` answered a nonce that was already used. Fatal.
    ChallengeReplayed,
    /// The member already holds `max_sessions_per_member` sessions. Fatal.
    TooManySessions,
    /// The recipient does not exist or is not visible to the sender (need-to-know). Nothing was sent.
    RecipientNotVisible,
    /// The recipient is visible but has no session (or not the named one). Nothing was sent.
    RecipientOffline,
    /// The recipient's session is not reading fast enough; nothing was sent to it. Retry later.
    RecipientCongested,
    /// The recipient has no session and what the bubble keeps for it reached its quota; nothing was stored.
    MailboxFull,
    /// The frame names a sender other than the authenticated member. Nothing was sent.
    SpoofedSender,
    /// Too many frames; retry after `retry_after_ms`. Repeated flooding is fatal.
    RateLimited,
    /// Another commit already took this epoch of the group (or the group is past it). Nothing was sent; process
    /// the winning commit, then commit again from the new epoch.
    CommitConflict,
    /// Nothing was received within `idle_timeout_ms`. Fatal.
    IdleTimeout,
    /// This session did not read its frames fast enough and fell behind. Fatal; reconnect.
    SlowConsumer,
    /// The member was removed from the bubble (or revoked). Fatal; do not reconnect.
    MemberRemoved,
    /// The server is shutting down or restarting. Fatal; reconnect after `retry_after_ms`.
    ServerShutdown,
    /// Something failed on the server; nothing was changed. Retry later.
    Internal,
}

impl ErrorCode {
    /// Every code, in documentation order.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::MalformedFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::InvalidField,
        ErrorCode::BinaryFrame,
        ErrorCode::NotAuthenticated,
        ErrorCode::AlreadyAuthenticated,
        ErrorCode::UnknownMember,
        ErrorCode::BadSignature,
        ErrorCode::ChallengeExpired,
        ErrorCode::ChallengeMismatch,
        ErrorCode::ChallengeReplayed,
        ErrorCode::TooManySessions,
        ErrorCode::RecipientNotVisible,
        ErrorCode::RecipientOffline,
        ErrorCode::RecipientCongested,
        ErrorCode::MailboxFull,
        ErrorCode::SpoofedSender,
        ErrorCode::RateLimited,
        ErrorCode::CommitConflict,
        ErrorCode::IdleTimeout,
        ErrorCode::SlowConsumer,
        ErrorCode::MemberRemoved,
        ErrorCode::ServerShutdown,
        ErrorCode::Internal,
    ];

    /// The wire name, e.g. `bad_signature`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::AlreadyAuthenticated => "already_authenticated",
            ErrorCode::UnknownMember => "unknown_member",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::ChallengeExpired => "challenge_expired",
            ErrorCode::ChallengeMismatch => "challenge_mismatch",
            ErrorCode::ChallengeReplayed => "challenge_replayed",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::RecipientNotVisible => "recipient_not_visible",
            ErrorCode::RecipientOffline => "recipient_offline",
            ErrorCode::RecipientCongested => "recipient_congested",
            ErrorCode::MailboxFull => "mailbox_full",
            ErrorCode::SpoofedSender => "spoofed_sender",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::CommitConflict => "commit_conflict",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::MemberRemoved => "member_removed",
            ErrorCode::ServerShutdown => "server_shutdown",
            ErrorCode::Internal => "internal",
        }
    }

    /// Does the server close the connection after sending this code?
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::FrameTooLarge
                | ErrorCode::NotAuthenticated
                | ErrorCode::UnknownMember
                | ErrorCode::BadSignature
                | ErrorCode::ChallengeExpired
                | ErrorCode::ChallengeMismatch
                | ErrorCode::ChallengeReplayed
                | ErrorCode::TooManySessions
                | ErrorCode::IdleTimeout
                | ErrorCode::SlowConsumer
                | ErrorCode::MemberRemoved
                | ErrorCode::ServerShutdown
        )
    }

    /// Did authentication fail (counted by reason, refused before a session exists)?
    pub fn is_auth_failure(self) -> bool {
        matches!(
            self,
            ErrorCode::NotAuthenticated
                | ErrorCode::UnknownMember
                | ErrorCode::BadSignature
                | ErrorCode::ChallengeExpired
                | ErrorCode::ChallengeMismatch
                | ErrorCode::ChallengeReplayed
        )
    }

    /// Is the refusal security-relevant (logged as a security event, never with content)?
    pub fn is_security_event(self) -> bool {
        self.is_auth_failure()
            || matches!(
                self,
                ErrorCode::RecipientNotVisible
                    | ErrorCode::SpoofedSender
                    | ErrorCode::TooManySessions
                    | ErrorCode::FrameTooLarge
                    | ErrorCode::RateLimited
            )
    }

    /// Was the frame itself refused by the codec or a size limit?
    pub fn is_frame_error(self) -> bool {
        matches!(
            self,
            ErrorCode::MalformedFrame | ErrorCode::FrameTooLarge | ErrorCode::InvalidField | ErrorCode::BinaryFrame
        )
    }

    /// The WebSocket close code the server uses after a fatal error.
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::FrameTooLarge => 1009,
            ErrorCode::ServerShutdown => 1012,
            ErrorCode::IdleTimeout | ErrorCode::SlowConsumer => 4000,
            ErrorCode::MemberRemoved => 4001,
            _ => 1008,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_string(&code).ok(), Some(format!("\"{}\"", code.as_str())));
        }
        let distinct: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(distinct.len(), ErrorCode::ALL.len());
    }

    #[test]
    fn commit_conflict_is_an_answer_not_an_ending() {
        let code = ErrorCode::CommitConflict;
        assert!(!code.is_fatal() && !code.is_security_event() && !code.is_frame_error() && !code.is_auth_failure());
    }
}
