//! What every handler shares: the database, time, sign-in, the control plane, metrics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use peerbubble_proto::limits::TokenBucket;

use crate::control::{BubbleAuthenticator, BubbleRefusal, ControlPlane};
use crate::error::ApiError;
use crate::oidc::Oidc;
use crate::store::{AuditEvent, Store};
use crate::token::random_token;

/// Seconds since the Unix epoch; injectable so that tests control time.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64))
}

/// Shared state of the API.
pub struct ApiState {
    /// The database.
    pub store: Store,
    /// SHA-256 hex of the bootstrap admin token; none when administrators sign in with OpenID Connect.
    pub admin_token_hash: Option<String>,
    /// Where members open invite links (the web client's origin).
    pub public_url: String,
    /// Time.
    pub clock: Clock,
    /// Enrollment attempts across all callers.
    pub enroll_limiter: Mutex<TokenBucket>,
    /// Administrator sign-in, when configured.
    pub oidc: Option<Arc<Oidc>>,
    /// What else happens when bubbles and categories are created (local, or Kubernetes resources).
    pub control: Arc<dyn ControlPlane>,
    /// How bubble-servers prove which bubble they serve.
    pub bubble_auth: Arc<dyn BubbleAuthenticator>,
    /// Refused bubble-servers already audited, so that one polling every second is one event a minute.
    pub bubble_refusals: Mutex<RefusalLog>,
    /// `peerbubble_admin_*`, served at `/metrics`.
    pub metrics: crate::metrics::AdminMetrics,
    /// Days audit events are kept (shown in the console; the pruning task has its own copy).
    pub audit_retention_days: u32,
    /// How long a console session opened with a token lasts, in seconds (OpenID sessions: the provider config).
    pub session_secs: i64,
}

impl ApiState {
    /// State with the all-in-one defaults: no OpenID Connect, local control plane, 5 enrollments/s (burst 20).
    pub fn new(store: Store, admin_token_hash: Option<String>, public_url: String, clock: Clock) -> Self {
        let metrics = crate::metrics::AdminMetrics::new(store.clone());
        Self {
            metrics,
            store,
            admin_token_hash,
            public_url,
            clock,
            enroll_limiter: Mutex::new(TokenBucket::new(5, 20, Instant::now())),
            oidc: None,
            control: Arc::new(crate::control::Local),
            bubble_auth: Arc::new(crate::control::BubbleCredential),
            bubble_refusals: Mutex::new(RefusalLog::default()),
            audit_retention_days: 90,
            session_secs: 8 * 3600,
        }
    }
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

/// The same refusal (bubble, reason, subject) is audited at most once per this many seconds.
pub const REFUSAL_AUDIT_SECS: i64 = 60;
/// Refusals remembered at most; past it the log starts again (an event too many, never one too few).
const REFUSALS_KEPT: usize = 1024;

/// When each refusal was last audited and how often it was repeated since.
#[derive(Debug, Default)]
pub struct RefusalLog {
    seen: HashMap<(String, &'static str, Option<String>), (i64, u64)>,
}

impl RefusalLog {
    /// Whether to audit this refusal now, and how many like it were left out since the last event.
    pub fn note(&mut self, bubble: &str, refusal: &BubbleRefusal, now: i64) -> Option<u64> {
        let key = (bubble.to_owned(), refusal.reason.as_str(), refusal.subject.clone());
        if let Some((audited_at, repeats)) = self.seen.get_mut(&key)
            && now - *audited_at < REFUSAL_AUDIT_SECS
        {
            *repeats += 1;
            return None;
        }
        if self.seen.len() >= REFUSALS_KEPT {
            self.seen.clear();
        }
        let repeats = self.seen.insert(key, (now, 0)).map_or(0, |(_, repeats)| repeats);
        Some(repeats)
    }
}

pub(crate) async fn audit_event(
    state: &ApiState,
    bubble: Option<&str>,
    actor: &str,
    action: &str,
    detail: String,
) -> Result<(), ApiError> {
    let event = AuditEvent {
        at: (state.clock)(),
        bubble: bubble.map(str::to_owned),
        actor: actor.to_owned(),
        action: action.to_owned(),
        detail,
    };
    state.store.audit(&event).await.map_err(ApiError::from)
}

pub(crate) fn fresh_token() -> Result<String, ApiError> {
    random_token()
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no secure randomness; retry"))
}
