//! The REST API (`/api/v1`): JSON in and out, strict bodies (unknown fields refused), errors that say what was
//! wrong. Three kinds of callers: administrators (bearer admin token), the public enrollment endpoint (an invite
//! and a signature), and bubble-servers (their bubble's credential) following their directory.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use peerbubble_proto::health::{HealthReport, MAX_EVENTS_PER_REPORT, SessionEventKind};
use peerbubble_proto::limits::{TokenBucket, is_valid_display_name, is_valid_id};
use peerbubble_proto::{PublicKey, Purpose, Signature, enroll_message};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::auth::{Role, Scope, principal};
use crate::store::{AuditEvent, InviteRefusal, NewInvite, Store, StoreError};
use crate::token::{hash_token, random_token};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Longest invite lifetime an administrator may ask for.
pub const MAX_INVITE_SECS: i64 = 30 * 24 * 3600;

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
    /// SHA-256 hex of the bootstrap admin token.
    pub admin_token_hash: String,
    /// Where members open invite links (the web client's origin).
    pub public_url: String,
    /// Time.
    pub clock: Clock,
    /// Enrollment attempts across all callers.
    pub enroll_limiter: Mutex<TokenBucket>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

/// A JSON error: `{"error": "<code>", "message": "<what was wrong and what to do>"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "send `Authorization: Bearer <token>` with a valid token")
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorBody { error: self.code, message: &self.message })).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => Self::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists")),
            StoreError::NotFound(what) => Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found")),
            StoreError::Invite(refusal) => {
                let (status, code) = match refusal {
                    InviteRefusal::Unknown => (StatusCode::NOT_FOUND, "invite_unknown"),
                    InviteRefusal::Expired => (StatusCode::GONE, "invite_expired"),
                    InviteRefusal::Used => (StatusCode::CONFLICT, "invite_used"),
                    InviteRefusal::KeyTaken => (StatusCode::CONFLICT, "key_already_enrolled"),
                };
                Self::new(status, code, format!("this invite {refusal}; ask your administrator for a new one"))
            }
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the directory is unavailable; retry shortly")
            }
        }
    }
}

/// A JSON body whose errors are JSON too.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(JsonRejection::BytesRejection(_)) => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
            )),
            Err(rejection) => Err(ApiError::bad_request(rejection.body_text())),
        }
    }
}

pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn audit(
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

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/api/v1/bubbles", post(create_bubble).get(list_bubbles))
        .route("/api/v1/bubbles/{bubble}/categories", post(create_category).get(list_categories))
        .route("/api/v1/bubbles/{bubble}/invites", post(create_invite))
        .route("/api/v1/bubbles/{bubble}/members", get(list_members))
        .route("/api/v1/bubbles/{bubble}/members/{member}/revoke", post(revoke_member))
        .route("/api/v1/bubbles/{bubble}/directory", get(directory))
        .route("/api/v1/bubbles/{bubble}/health", post(report_health).get(list_health))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/tokens", post(create_token))
        .route("/api/v1/enroll", post(enroll))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<ApiState>>) -> Response {
    if state.store.ping().await {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBubble {
    id: String,
    display_name: String,
}

#[derive(Serialize)]
struct CreatedBubble {
    id: String,
    display_name: String,
    /// Shown once: the bubble-server presents it to fetch this bubble's directory.
    credential: String,
}

/// A new secret for a caller, or 503 if the system has no randomness to give.
fn fresh_token() -> Result<String, ApiError> {
    random_token()
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "no secure randomness; retry"))
}

fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{what} must be 1-64 characters of a-z, 0-9 and -")))
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if is_valid_display_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request("display_name must be 1-64 bytes without control characters"))
    }
}

async fn create_bubble(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Body(req): Body<CreateBubble>,
) -> Result<(StatusCode, Json<CreatedBubble>), ApiError> {
    let who = principal(&state, &headers).await?;
    who.organisation_admin()?;
    check_id(&req.id, "id")?;
    check_name(&req.display_name)?;
    let credential = fresh_token()?;
    state.store.create_bubble(&req.id, &req.display_name, &hash_token(&credential), (state.clock)()).await?;
    audit(&state, Some(&req.id), &who.actor(), "bubble.created", format!("display_name={}", req.display_name)).await?;
    Ok((StatusCode::CREATED, Json(CreatedBubble { id: req.id, display_name: req.display_name, credential })))
}

async fn list_bubbles(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    let visible: Vec<_> = state.store.list_bubbles().await?.into_iter().filter(|b| who.covers(&b.id)).collect();
    Ok(Json(visible).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCategory {
    id: String,
    display_name: String,
    #[serde(default)]
    sees: Vec<String>,
}

async fn create_category(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
    Body(req): Body<CreateCategory>,
) -> Result<StatusCode, ApiError> {
    let who = principal(&state, &headers).await?;
    who.write(&bubble)?;
    check_id(&req.id, "id")?;
    check_name(&req.display_name)?;
    for seen in &req.sees {
        check_id(seen, "sees")?;
    }
    if req.sees.len() > 64 {
        return Err(ApiError::bad_request("a category may see at most 64 others"));
    }
    state.store.create_category(&bubble, &req.id, &req.display_name, &req.sees).await?;
    audit(
        &state,
        Some(&bubble),
        &who.actor(),
        "category.created",
        format!("id={} sees={}", req.id, req.sees.join(",")),
    )
    .await?;
    Ok(StatusCode::CREATED)
}

async fn list_categories(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
) -> Result<Response, ApiError> {
    principal(&state, &headers).await?.read(&bubble)?;
    Ok(Json(state.store.list_categories(&bubble).await?).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateInvite {
    display_name: String,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default = "default_invite_secs")]
    expires_in_secs: i64,
}

fn default_invite_secs() -> i64 {
    7 * 24 * 3600
}

#[derive(Serialize)]
struct CreatedInvite {
    /// The secret; only its hash is stored. Shown once.
    token: String,
    /// The link to hand to the member: `<public_url>/enroll#<bubble>.<token>`. The fragment never travels in a
    /// request line, so the token stays out of proxies' and servers' logs.
    link: String,
    expires_at: i64,
}

async fn create_invite(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
    Body(req): Body<CreateInvite>,
) -> Result<(StatusCode, Json<CreatedInvite>), ApiError> {
    let who = principal(&state, &headers).await?;
    who.write(&bubble)?;
    check_name(&req.display_name)?;
    if !(1..=MAX_INVITE_SECS).contains(&req.expires_in_secs) {
        return Err(ApiError::bad_request(format!("expires_in_secs must be between 1 and {MAX_INVITE_SECS}")));
    }
    if req.categories.len() > peerbubble_proto::limits::MAX_CATEGORIES_PER_MEMBER {
        return Err(ApiError::bad_request("too many categories"));
    }
    if state.store.bubble_credential_hash(&bubble).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "bubble not found"));
    }
    let known: Vec<String> = state.store.list_categories(&bubble).await?.into_iter().map(|c| c.id).collect();
    if let Some(unknown) = req.categories.iter().find(|c| !known.contains(c)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("category {unknown:?} not found in this bubble"),
        ));
    }
    let token = fresh_token()?;
    let now = (state.clock)();
    let expires_at = now + req.expires_in_secs;
    state
        .store
        .create_invite(&NewInvite {
            token_hash: &hash_token(&token),
            bubble: &bubble,
            display_name: &req.display_name,
            categories: &req.categories,
            now,
            expires_at,
        })
        .await?;
    audit(
        &state,
        Some(&bubble),
        &who.actor(),
        "invite.created",
        format!("for={} categories={}", req.display_name, req.categories.join(",")),
    )
    .await?;
    let link = format!("{}/enroll#{bubble}.{token}", state.public_url.trim_end_matches('/'));
    Ok((StatusCode::CREATED, Json(CreatedInvite { token, link, expires_at })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Enroll {
    invite: String,
    public_key: String,
    signature: String,
}

#[derive(Serialize)]
struct Enrolled {
    bubble: String,
    member: String,
    display_name: String,
}

async fn enroll(
    State(state): State<Arc<ApiState>>,
    Body(req): Body<Enroll>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    if let Err(retry) = state.enroll_limiter.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many enrollment attempts; retry in {} ms", retry.as_millis().max(1)),
        ));
    }
    let public_key: PublicKey = req.public_key.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_public_key",
            "public_key must be an Ed25519 public key (32 bytes, unpadded base64url)",
        )
    })?;
    let signature = Signature::try_from(req.signature).map_err(|_| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", "signature must be 64 bytes, unpadded base64url")
    })?;
    if req.invite.len() > 128 {
        return Err(ApiError::from(StoreError::Invite(InviteRefusal::Unknown)));
    }
    let token_hash = hash_token(&req.invite);
    let bubble = state.store.invite_bubble(&token_hash).await?.ok_or(StoreError::Invite(InviteRefusal::Unknown))?;
    // Checked before the invite is used, so that a bad attempt never burns a good invite.
    if public_key.verify(Purpose::EnrollInvite, &enroll_message(&bubble, &req.invite, &public_key), &signature).is_err()
    {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "bad_signature",
            "the signature does not prove possession of this key for this invite",
        ));
    }
    let member = public_key.member_id().to_string();
    let (bubble, display_name) =
        state.store.redeem_invite(&token_hash, &member, &public_key.to_string(), (state.clock)()).await?;
    audit(
        &state,
        Some(&bubble),
        &format!("member:{member}"),
        "member.enrolled",
        format!("display_name={display_name}"),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Enrolled { bubble, member, display_name })))
}

async fn list_members(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
) -> Result<Response, ApiError> {
    principal(&state, &headers).await?.read(&bubble)?;
    Ok(Json(state.store.list_members(&bubble).await?).into_response())
}

async fn revoke_member(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path((bubble, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let who = principal(&state, &headers).await?;
    who.write(&bubble)?;
    if !state.store.revoke_member(&bubble, &member, (state.clock)()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no active member with this id in this bubble"));
    }
    audit(&state, Some(&bubble), &who.actor(), "member.revoked", format!("member={member}")).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    bubble: Option<String>,
    limit: Option<i64>,
}

async fn list_audit(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let who = principal(&state, &headers).await?;
    match query.bubble.as_deref() {
        Some(bubble) => who.read(bubble)?,
        None if who.scope == Scope::All => {}
        None => {
            return Err(ApiError::bad_request("name a bubble (?bubble=...): your scope is limited to some bubbles"));
        }
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(state.store.list_audit(query.bubble.as_deref(), limit).await?).into_response())
}

/// How long health samples are kept.
pub const HEALTH_KEEP_SECS: i64 = 7 * 24 * 3600;

async fn require_bubble(state: &ApiState, headers: &HeaderMap, bubble: &str) -> Result<(), ApiError> {
    let Some(expected) = state.store.bubble_credential_hash(bubble).await? else {
        return Err(ApiError::unauthorized());
    };
    match bearer(headers) {
        Some(token) if crate::token::hashes_equal(&hash_token(token), &expected) => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

/// Stores a health report: counts into the bounded time series, session events into the audit trail.
pub async fn record_health(store: &Store, bubble: &str, now: i64, report: &HealthReport) -> Result<(), StoreError> {
    store.add_health(bubble, now, report, now - HEALTH_KEEP_SECS).await?;
    for event in &report.events {
        let action = match event.kind {
            SessionEventKind::Opened => "session.opened",
            SessionEventKind::Closed => "session.closed",
        };
        let audit_event = AuditEvent {
            at: event.at,
            bubble: Some(bubble.to_owned()),
            actor: "bubble-server".into(),
            action: action.into(),
            detail: format!("member={}", event.member),
        };
        store.audit(&audit_event).await?;
    }
    if report.events_dropped > 0 {
        let dropped = AuditEvent {
            at: now,
            bubble: Some(bubble.to_owned()),
            actor: "bubble-server".into(),
            action: "session.events_dropped".into(),
            detail: format!("count={}", report.events_dropped),
        };
        store.audit(&dropped).await?;
    }
    Ok(())
}

/// A bubble-server reports its health and session events (its own bubble only, with its credential). Events
/// become audit events; counts become a bounded time series.
async fn report_health(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
    Body(report): Body<HealthReport>,
) -> Result<StatusCode, ApiError> {
    require_bubble(&state, &headers, &bubble).await?;
    if report.events.len() > MAX_EVENTS_PER_REPORT {
        return Err(ApiError::bad_request(format!("at most {MAX_EVENTS_PER_REPORT} events per report")));
    }
    record_health(&state.store, &bubble, (state.clock)(), &report).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthQuery {
    since: Option<i64>,
}

async fn list_health(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
    Query(query): Query<HealthQuery>,
) -> Result<Response, ApiError> {
    principal(&state, &headers).await?.read(&bubble)?;
    let since = query.since.unwrap_or_else(|| (state.clock)() - 24 * 3600);
    Ok(Json(state.store.list_health(&bubble, since).await?).into_response())
}

/// A bubble-server follows its own bubble's directory, and only its own, with its bubble credential.
/// Conditional requests (`If-None-Match`) cost no body when nothing changed.
async fn directory(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
) -> Result<Response, ApiError> {
    let Some(expected) = state.store.bubble_credential_hash(&bubble).await? else {
        return Err(ApiError::unauthorized());
    };
    match bearer(&headers) {
        Some(token) if crate::token::hashes_equal(&hash_token(token), &expected) => {}
        _ => return Err(ApiError::unauthorized()),
    }
    let document = state.store.directory(&bubble).await?.ok_or_else(ApiError::unauthorized)?;
    let body = serde_json::to_vec(&document)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "encoding failed"))?;
    let etag = format!("\"{}\"", crate::token::sha256_hex(&body));
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    Ok((StatusCode::OK, [(header::ETAG, etag), (header::CONTENT_TYPE, "application/json".to_owned())], body)
        .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: String,
    /// `["*"]` for every bubble, else bubble ids.
    bubbles: Vec<String>,
}

#[derive(Serialize)]
struct CreatedToken {
    /// Shown once; only its hash is stored.
    token: String,
}

/// Issues a scoped token for an administrator of some bubbles, or an auditor.
async fn create_token(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Body(req): Body<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let who = principal(&state, &headers).await?;
    who.organisation_admin()?;
    check_name(&req.name)?;
    let role = match req.role.as_str() {
        "admin" => Role::Admin,
        "auditor" => Role::Auditor,
        _ => return Err(ApiError::bad_request("role must be admin or auditor")),
    };
    let bubbles = if req.bubbles == ["*"] {
        "*".to_owned()
    } else {
        if req.bubbles.is_empty() || req.bubbles.len() > 256 {
            return Err(ApiError::bad_request("bubbles must be [\"*\"] or 1-256 bubble ids"));
        }
        for bubble in &req.bubbles {
            check_id(bubble, "bubbles")?;
        }
        req.bubbles.join(",")
    };
    let token = fresh_token()?;
    state.store.create_api_token(&hash_token(&token), &req.name, role.as_str(), &bubbles, (state.clock)()).await?;
    audit(
        &state,
        None,
        &who.actor(),
        "token.created",
        format!("name={} role={} bubbles={bubbles}", req.name, role.as_str()),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token })))
}
