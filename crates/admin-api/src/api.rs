//! The REST API (`/api/v1`): JSON in and out, strict bodies (unknown fields refused), errors that say what was
//! wrong. Three kinds of callers: administrators (bearer admin token), the public enrollment endpoint (an invite
//! and a signature), and bubble-servers (their bubble's credential) following their directory.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use peerbubble_proto::enroll::{ENROLL_BUBBLE_HEADER, MAX_INVITE_TOKEN_BYTES};
use peerbubble_proto::health::{HealthReport, MAX_EVENTS_PER_REPORT, SessionEventKind};
use peerbubble_proto::{EnrollRequest, Enrolled};
use serde::{Deserialize, Serialize};

use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{Caller, Role, bearer};
use crate::console::{
    CreatedInvite, ONLINE_REPORT_SECS, category_applied, check_id, check_name, check_sees, control_failed, issue_invite,
};
use crate::control::{AuthError, BubbleAuth, BubbleSpec, CategorySpec};
use crate::error::{ApiError, Body, ErrorBody, MAX_BODY_BYTES};
use crate::state::{ApiState, audit_event, fresh_token};
use crate::store::{AuditEvent, BubbleRow, CategoryRow, HealthSample, InviteRefusal, MemberRow, Store, StoreError};
use crate::token::hash_token;

pub use crate::console::{HEALTH_KEEP_SECS, MAX_INVITE_SECS};

/// The OpenAPI document's frame; paths and schemas are collected from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "PeerBubble admin API",
        description = "The organisation's directory (public keys only), invites and enrollment, categories, audit \
events and health. Administrators authenticate with a bearer token or an OpenID Connect session cookie (plus \
`X-CSRF-Token` on changes); bubble-servers with their bubble credential or, in a cluster, their ServiceAccount token; enrollment is public and rate-limited.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "bubbles", description = "Bubbles and their categories"),
        (name = "members", description = "Invites, enrollment, members and revocation"),
        (name = "bubble-servers", description = "What bubble-servers fetch and report, with their bubble credential or ServiceAccount token"),
        (name = "audit", description = "Audit trail and health"),
        (name = "sign-in", description = "Administrator sign-in with OpenID Connect"),
        (name = "tokens", description = "Scoped API tokens"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::SESSION_COOKIE,
                "Administrator session from /auth/callback; changes also need the X-CSRF-Token header",
            ))),
        );
        components.add_security_scheme(
            "bubble",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The bubble credential returned when the bubble was created, or in a cluster the bubble-server's ServiceAccount token for the admin API's audience"))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document and the routes it describes, built together so they cannot drift apart.
fn documented() -> (Router<Arc<ApiState>>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(create_bubble, list_bubbles))
        .routes(routes!(delete_bubble))
        .routes(routes!(create_category, list_categories))
        .routes(routes!(crate::console::change_category, crate::console::delete_category))
        .routes(routes!(create_invite, crate::console::list_invites))
        .routes(routes!(crate::console::revoke_invite))
        .routes(routes!(list_members))
        .routes(routes!(revoke_member))
        .routes(routes!(crate::console::reinvite))
        .routes(routes!(crate::console::view_as_member))
        .routes(routes!(crate::console::export_audit))
        .routes(routes!(crate::console::info))
        .routes(routes!(crate::console::get_policy, crate::console::set_policy))
        .routes(routes!(directory))
        .routes(routes!(report_health, list_health))
        .routes(routes!(crate::console::list_audit))
        .routes(routes!(create_token))
        .routes(routes!(enroll))
        .routes(routes!(crate::sign_in::login))
        .routes(routes!(crate::sign_in::callback))
        .routes(routes!(crate::sign_in::session))
        .routes(routes!(crate::sign_in::logout))
        .routes(routes!(crate::sign_in::token_sign_in))
        .routes(routes!(crate::sign_in::methods))
        .split_for_parts()
}

/// The OpenAPI document as served at `/api/v1/openapi.json` (the console's client is generated from it).
pub fn openapi_json() -> String {
    documented().1.to_pretty_json().unwrap_or_default()
}

/// The router.
pub fn router(state: Arc<ApiState>) -> Router {
    let (router, doc) = documented();
    let json = doc.to_pretty_json().unwrap_or_default();
    let html = crate::reference::render(&doc);
    router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let json = json.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], json) }
            }),
        )
        .route(
            "/api/v1/reference",
            get(move || {
                let html = html.clone();
                async move { Html(html) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(serve_metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), track))
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

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBubble {
    id: String,
    display_name: String,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CreatedBubble {
    id: String,
    display_name: String,
    /// Shown once: the bubble-server presents it to fetch this bubble's directory.
    credential: String,
    /// Where its members open the web client, when this server serves the bubble itself at its own address (a
    /// micro-node); absent where the platform deploys it (Kubernetes).
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/bubbles", tag = "bubbles", request_body = CreateBubble,
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "Created; the credential is shown once", body = CreatedBubble),
        (status = 400, description = "Invalid id or name", body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an organisation-wide admin", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody)))]
async fn create_bubble(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Body(req): Body<CreateBubble>,
) -> Result<(StatusCode, Json<CreatedBubble>), ApiError> {
    who.organisation_admin()?;
    check_id(&req.id, "id")?;
    check_name(&req.display_name)?;
    let credential = fresh_token()?;
    state.store.create_bubble(&req.id, &req.display_name, &hash_token(&credential), (state.clock)()).await?;
    let spec = BubbleSpec {
        id: req.id.clone(),
        display_name: req.display_name.clone(),
        credential: Some(crate::control::Credential::new(credential.clone())),
    };
    let applied = state.control.bubble_created(&spec).await;
    audit_event(&state, Some(&req.id), &who.actor(), "bubble.created", format!("display_name={}", req.display_name))
        .await?;
    applied.map_err(|e| control_failed(&e))?;
    let origin = state.control.bubble_origin(&req.id);
    Ok((StatusCode::CREATED, Json(CreatedBubble { id: req.id, display_name: req.display_name, credential, origin })))
}

/// Deletes a bubble: its directory, invites, policy and health go, its bubble-servers stop serving it and its
/// members are disconnected; its audit events stay.
#[utoipa::path(delete, path = "/api/v1/bubbles/{bubble}", tag = "bubbles", params(("bubble" = String, Path, description = "Bubble id")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody),
        (status = 403, description = "Not an organisation-wide admin", body = ErrorBody),
        (status = 404, description = "No such bubble", body = ErrorBody)))]
async fn delete_bubble(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
) -> Result<StatusCode, ApiError> {
    who.organisation_admin()?;
    if !state.store.delete_bubble(&bubble).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such bubble"));
    }
    let applied = state.control.bubble_deleted(&bubble).await;
    audit_event(&state, Some(&bubble), &who.actor(), "bubble.deleted", String::new()).await?;
    applied.map_err(|e| control_failed(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// A bubble with its latest health at a glance.
#[derive(Serialize, utoipa::ToSchema)]
struct BubbleSummary {
    #[serde(flatten)]
    bubble: BubbleRow,
    /// The last report of its bubble-server, if any arrived.
    health: Option<HealthSample>,
    /// Where its members open the web client, when this server serves the bubble itself (a micro-node).
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<String>,
    /// What the platform running it reports (in a cluster: the Bubble's conditions and signaling endpoint).
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<crate::control::PlatformStatus>,
}

#[utoipa::path(get, path = "/api/v1/bubbles", tag = "bubbles", security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "The bubbles in the caller's scope", body = [BubbleSummary]), (status = 401, body = ErrorBody)))]
async fn list_bubbles(State(state): State<Arc<ApiState>>, Caller(who): Caller) -> Result<Response, ApiError> {
    let mut latest = state.store.latest_health().await?;
    let bubbles: Vec<BubbleRow> = state.store.list_bubbles().await?.into_iter().filter(|b| who.covers(&b.id)).collect();
    // Asked of the platform all at once; one that does not answer in time leaves its status out, not the list.
    let statuses = futures_util::future::join_all(bubbles.iter().map(|bubble| {
        tokio::time::timeout(std::time::Duration::from_secs(2), state.control.bubble_status(&bubble.id))
    }))
    .await;
    let visible: Vec<BubbleSummary> = bubbles
        .into_iter()
        .zip(statuses)
        .map(|(bubble, platform)| BubbleSummary {
            health: latest.remove(&bubble.id),
            origin: state.control.bubble_origin(&bubble.id),
            platform: platform.unwrap_or(None),
            bubble,
        })
        .collect();
    Ok(Json(visible).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateCategory {
    id: String,
    display_name: String,
    #[serde(default)]
    sees: Vec<String>,
}

#[utoipa::path(post, path = "/api/v1/bubbles/{bubble}/categories", tag = "bubbles", params(("bubble" = String, Path, description = "Bubble id")),
    request_body = CreateCategory, security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "Created"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "No such bubble", body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_category(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
    Body(req): Body<CreateCategory>,
) -> Result<StatusCode, ApiError> {
    who.write(&bubble)?;
    check_id(&req.id, "id")?;
    check_name(&req.display_name)?;
    check_sees(&req.sees)?;
    state.store.create_category(&bubble, &req.id, &req.display_name, &req.sees).await?;
    let spec = CategorySpec { bubble, id: req.id, display_name: req.display_name, sees: req.sees };
    category_applied(&state, &who.actor(), &spec, "category.created").await?;
    Ok(StatusCode::CREATED)
}

#[utoipa::path(get, path = "/api/v1/bubbles/{bubble}/categories", tag = "bubbles", params(("bubble" = String, Path, description = "Bubble id")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = [CategoryRow]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_categories(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
) -> Result<Response, ApiError> {
    who.read(&bubble)?;
    Ok(Json(state.store.list_categories(&bubble).await?).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateInvite {
    display_name: String,
    #[serde(default)]
    categories: Vec<String>,
    #[serde(default = "crate::console::default_invite_secs")]
    expires_in_secs: i64,
}

#[utoipa::path(post, path = "/api/v1/bubbles/{bubble}/invites", tag = "members", params(("bubble" = String, Path, description = "Bubble id")),
    request_body = CreateInvite, security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "The link (and its QR code) is shown once", body = CreatedInvite),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, description = "No such bubble or category", body = ErrorBody)))]
async fn create_invite(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
    Body(req): Body<CreateInvite>,
) -> Result<(StatusCode, Json<CreatedInvite>), ApiError> {
    who.write(&bubble)?;
    let invite = issue_invite(
        &state,
        &who.actor(),
        &bubble,
        &req.display_name,
        &req.categories,
        req.expires_in_secs,
        "invite.created",
    )
    .await?;
    Ok((StatusCode::CREATED, Json(invite)))
}

#[utoipa::path(post, path = "/api/v1/enroll", tag = "members", request_body = EnrollRequest,
    responses((status = 201, description = "Enrolled", body = Enrolled),
        (status = 400, description = "Malformed key or signature", body = ErrorBody),
        (status = 401, description = "The signature does not prove possession of the key", body = ErrorBody),
        (status = 403, description = "Forwarded by a bubble-server of another bubble than the invite's", body = ErrorBody),
        (status = 404, description = "Unknown invite", body = ErrorBody),
        (status = 409, description = "Invite already used, or key already enrolled", body = ErrorBody),
        (status = 410, description = "Invite expired", body = ErrorBody), (status = 429, description = "Rate-limited", body = ErrorBody)))]
async fn enroll(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Body(req): Body<EnrollRequest>,
) -> Result<(StatusCode, Json<Enrolled>), ApiError> {
    if let Err(retry) = state.enroll_limiter.lock().unwrap_or_else(|p| p.into_inner()).take(Instant::now()) {
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many enrollment attempts; retry in {} ms", retry.as_millis().max(1)),
        ));
    }
    let public_key =
        req.public_key().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_public_key", e.to_string()))?;
    req.signature().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_signature", e.to_string()))?;
    if req.invite.len() > MAX_INVITE_TOKEN_BYTES {
        return Err(ApiError::from(StoreError::Invite(InviteRefusal::Unknown)));
    }
    let token_hash = hash_token(&req.invite);
    let bubble = state.store.invite_bubble(&token_hash).await?.ok_or(StoreError::Invite(InviteRefusal::Unknown))?;
    // A bubble-server forwarding enrollments from its own origin names its bubble: an invite of another bubble
    // opened there would enroll a member whose client then signals to the wrong bubble-server.
    if let Some(served) = headers.get(ENROLL_BUBBLE_HEADER)
        && served.as_bytes() != bubble.as_bytes()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_bubble",
            "this invite is for another bubble than the one this address serves: open the link exactly as you \
             received it",
        ));
    }
    // Checked before the invite is used, so that a bad attempt never burns a good invite.
    req.verify(&bubble).map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", e.to_string()))?;
    let member = public_key.member_id().to_string();
    let (bubble, display_name) =
        state.store.redeem_invite(&token_hash, &member, &public_key.to_string(), (state.clock)()).await?;
    audit_event(
        &state,
        Some(&bubble),
        &format!("member:{member}"),
        "member.enrolled",
        format!("display_name={display_name}"),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(Enrolled { bubble, member, display_name })))
}

#[utoipa::path(get, path = "/api/v1/bubbles/{bubble}/members", tag = "members", params(("bubble" = String, Path, description = "Bubble id")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = [MemberRow]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_members(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
) -> Result<Response, ApiError> {
    who.read(&bubble)?;
    let mut members = state.store.list_members(&bubble).await?;
    let last = state.store.last_sessions(&bubble).await?;
    let now = (state.clock)();
    // Only this bubble's last minute of samples: the console asks every few seconds.
    let reporting = !state.store.list_health(&bubble, now - ONLINE_REPORT_SECS).await?.is_empty();
    for member in &mut members {
        if let Some((at, open)) = last.get(&member.member) {
            member.last_seen = Some(*at);
            member.online = *open && reporting && member.status == "active";
        }
    }
    Ok(Json(members).into_response())
}

#[utoipa::path(post, path = "/api/v1/bubbles/{bubble}/members/{member}/revoke", tag = "members",
    params(("bubble" = String, Path, description = "Bubble id"), ("member" = String, Path, description = "Member id")), security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Revoked; bubble-servers drop the member within seconds"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn revoke_member(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path((bubble, member)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    who.write(&bubble)?;
    if !state.store.revoke_member(&bubble, &member, (state.clock)()).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no active member with this id in this bubble"));
    }
    audit_event(&state, Some(&bubble), &who.actor(), "member.revoked", format!("member={member}")).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Checks that the request's bearer token proves its sender serves `bubble`. A refusal is audited (at most once a
/// minute for the same bubble, reason and subject, with how often it repeated) and named in the 401; a platform
/// that cannot check tokens now answers 503 and refuses nobody.
async fn require_bubble(state: &ApiState, headers: &HeaderMap, bubble: &str, route: &str) -> Result<(), ApiError> {
    let presented = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    let refusal = match state.bubble_auth.authenticate(&state.store, bubble, presented).await {
        Ok(BubbleAuth::Accepted { actor }) => {
            tracing::trace!(bubble, actor, route, "bubble-server authenticated");
            return Ok(());
        }
        Ok(BubbleAuth::Refused(refusal)) => refusal,
        Err(AuthError::Store(error)) => return Err(error.into()),
        Err(AuthError::Unavailable(why)) => {
            tracing::warn!(bubble, route, %why, "bubble-server tokens cannot be checked");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "bubble-server tokens cannot be checked now; retry",
            ));
        }
    };
    let now = (state.clock)();
    let repeats = state.bubble_refusals.lock().map_or(Some(0), |mut log| log.note(bubble, &refusal, now));
    if let Some(repeats) = repeats {
        let mut detail = format!("reason={} route={route}", refusal.reason.as_str());
        if let Some(subject) = &refusal.subject {
            detail.push_str(&format!(" subject={subject}"));
        }
        if repeats > 0 {
            detail.push_str(&format!(" repeats={repeats}"));
        }
        let actor = refusal.subject.as_deref().unwrap_or("bubble-server");
        audit_event(state, Some(bubble), actor, "bubble_server.refused", detail).await?;
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        format!("this bubble-server is refused for bubble {bubble}: {}", refusal.reason.as_str()),
    ))
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
#[utoipa::path(post, path = "/api/v1/bubbles/{bubble}/health", tag = "bubble-servers", params(("bubble" = String, Path, description = "Bubble id")),
    request_body = HealthReport, security(("bubble" = [])),
    responses((status = 204, description = "Stored"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, description = "Tokens cannot be checked now", body = ErrorBody)))]
async fn report_health(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
    Body(report): Body<HealthReport>,
) -> Result<StatusCode, ApiError> {
    require_bubble(&state, &headers, &bubble, "health").await?;
    if report.events.len() > MAX_EVENTS_PER_REPORT {
        return Err(ApiError::bad_request(format!("at most {MAX_EVENTS_PER_REPORT} events per report")));
    }
    record_health(&state.store, &bubble, (state.clock)(), &report).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HealthQuery {
    since: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/bubbles/{bubble}/health", tag = "audit", params(("bubble" = String, Path, description = "Bubble id"), HealthQuery),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "Oldest first", body = [HealthSample]), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_health(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
    Query(query): Query<HealthQuery>,
) -> Result<Response, ApiError> {
    who.read(&bubble)?;
    let since = query.since.unwrap_or_else(|| (state.clock)() - 24 * 3600);
    Ok(Json(state.store.list_health(&bubble, since).await?).into_response())
}

/// A bubble-server follows its own bubble's directory, and only its own, with its bubble credential.
/// Conditional requests (`If-None-Match`) cost no body when nothing changed.
#[utoipa::path(get, path = "/api/v1/bubbles/{bubble}/directory", tag = "bubble-servers", params(("bubble" = String, Path, description = "Bubble id")),
    security(("bubble" = [])),
    responses((status = 200, description = "The bubble's directory (public keys only); ETag set",
        body = peerbubble_proto::directory::BubbleFile), (status = 304, description = "Unchanged (If-None-Match)"),
        (status = 401, body = ErrorBody), (status = 503, description = "Tokens cannot be checked now", body = ErrorBody)))]
async fn directory(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Path(bubble): Path<String>,
) -> Result<Response, ApiError> {
    require_bubble(&state, &headers, &bubble, "directory").await?;
    let etag = |revision: &str| format!("\"{revision}\"");
    let asked = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    if let Some(asked) = asked {
        // Nothing changed: one row read, no members, no encoding (migration 0006).
        let revision = state.store.directory_revision(&bubble).await?.ok_or_else(ApiError::unauthorized)?;
        if asked == etag(&revision) {
            return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag(&revision))]).into_response());
        }
    }
    let (document, revision) = state.store.directory(&bubble).await?.ok_or_else(ApiError::unauthorized)?;
    let body = serde_json::to_vec(&document)
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "encoding failed"))?;
    Ok((StatusCode::OK, [(header::ETAG, etag(&revision)), (header::CONTENT_TYPE, "application/json".to_owned())], body)
        .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    name: String,
    role: String,
    /// `["*"]` for every bubble, else bubble ids.
    bubbles: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct CreatedToken {
    /// Shown once; only its hash is stored.
    token: String,
}

/// Issues a scoped token for an administrator of some bubbles, or an auditor.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "The token is shown once", body = CreatedToken), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn create_token(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Body(req): Body<CreateToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    who.organisation_admin()?;
    check_name(&req.name)?;
    let role = Role::parse(&req.role).ok_or_else(|| ApiError::bad_request("role must be admin or auditor"))?;
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
    audit_event(
        &state,
        None,
        &who.actor(),
        "token.created",
        format!("name={} role={} bubbles={bubbles}", req.name, role.as_str()),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token })))
}

/// Counts every routed request (a `route_layer`, so the route template is known).
async fn track(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let refusal = response.extensions().get::<crate::error::Refusal>().map(|r| r.0);
    state.metrics.answered(&route, &method, response.status().as_u16(), refusal);
    response
}

/// `GET /metrics`.
async fn serve_metrics(State(state): State<Arc<ApiState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}
