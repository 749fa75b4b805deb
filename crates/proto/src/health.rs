//! What a bubble-server reports about itself to the admin API: counts and session events, never content,
//! never keys (the auditor's view: health, availability and connection events).

use serde::{Deserialize, Serialize};

use crate::identity::MemberId;

/// Most session events in one report (a report stays well inside the admin API's 64 KiB body limit); the
/// rest wait for the next report.
pub const MAX_EVENTS_PER_REPORT: usize = 400;

/// A periodic report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    /// Members with at least one session now.
    pub online_members: u32,
    /// Authenticated sessions now.
    pub sessions: u32,
    /// WebSocket connections now (authenticated or not).
    pub connections: u32,
    /// Envelopes relayed since the server started.
    pub envelopes_relayed: u64,
    /// Envelopes refused since the server started.
    pub envelopes_refused: u64,
    /// Refused authentications since the server started.
    pub auth_failures: u64,
    /// TURN allocations now (0 until the bubble runs TURN).
    pub turn_allocations: u32,
    /// Bytes the TURN relay carried (both ways) since the server started; absent from older servers.
    #[serde(default)]
    pub turn_bytes_relayed: u64,
    /// Sessions opened and closed since the last report.
    pub events: Vec<SessionEvent>,
    /// Events not reported because the buffer was full.
    pub events_dropped: u64,
}

/// A session opened or closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SessionEvent {
    /// Unix seconds.
    pub at: i64,
    /// The member.
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "3f6c0a9e5b2d4c1e8a7f6b5c4d3e2f1a"))]
    pub member: MemberId,
    /// `opened` or `closed`.
    pub kind: SessionEventKind,
}

/// The kind of a session event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SessionEventKind {
    /// A session was authenticated.
    Opened,
    /// A session ended.
    Closed,
}
