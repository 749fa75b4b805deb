//! What every handler shares: the database, time, sign-in, the control plane, metrics.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::StatusCode;
use peerbubble_proto::limits::TokenBucket;

use crate::control::{BubbleAuthenticator, ControlPlane};
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
