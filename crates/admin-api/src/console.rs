//! What the web console asks of the API beyond creating things: editing and deleting categories, the invites of a
//! bubble and their withdrawal, re-inviting a member (never a key reset), "view as member" with the very policy
//! code the bubble-servers enforce, the audit trail filtered and exported, and what the console shows about the
//! service itself. Also the checks and the invite issuing that [`crate::api`] shares.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use peerbubble_proto::limits::{MAX_CATEGORIES_PER_MEMBER, is_valid_display_name, is_valid_id};
use peerbubble_proto::visibility::Directory;
use peerbubble_proto::{MemberId, PublicKey};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Scope};
use crate::control::CategorySpec;
use crate::error::{ApiError, Body, ErrorBody};
use crate::state::{ApiState, audit_event, fresh_token};
use crate::store::{AuditEvent, AuditFilter, InviteRow, NewInvite, StoreError};
use crate::token::hash_token;

/// Longest invite lifetime an administrator may ask for.
pub const MAX_INVITE_SECS: i64 = 30 * 24 * 3600;
/// How long health samples are kept.
pub const HEALTH_KEEP_SECS: i64 = 7 * 24 * 3600;
/// Most rows one CSV export of the audit trail holds.
pub const MAX_AUDIT_EXPORT: i64 = 100_000;
/// A member counts as online only while their bubble reported within this many seconds.
pub const ONLINE_REPORT_SECS: i64 = 60;

pub(crate) fn check_id(id: &str, what: &str) -> Result<(), ApiError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("{what} must be 1-64 characters of a-z, 0-9 and -")))
    }
}

pub(crate) fn check_name(name: &str) -> Result<(), ApiError> {
    if is_valid_display_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request("display_name must be 1-64 bytes without control characters"))
    }
}

pub(crate) fn check_sees(sees: &[String]) -> Result<(), ApiError> {
    for seen in sees {
        check_id(seen, "sees")?;
    }
    if sees.len() > 64 {
        return Err(ApiError::bad_request("a category may see at most 64 others"));
    }
    Ok(())
}

/// The answer when the directory kept a change but the platform (e.g. Kubernetes) refused it.
pub(crate) fn control_failed(err: &crate::control::ControlError) -> ApiError {
    tracing::warn!(error = %err, "control plane refused a change");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "control_plane_failed",
        format!("stored in the directory, but the platform did not accept it ({err}); retry or check the operator"),
    )
}

/// After a category was stored: the platform is told, the change audited, and a platform refusal answered.
pub(crate) async fn category_applied(
    state: &ApiState,
    actor: &str,
    spec: &CategorySpec,
    action: &str,
) -> Result<(), ApiError> {
    let applied = state.control.category_changed(spec).await;
    let detail = format!("id={} display_name={} sees={}", spec.id, spec.display_name, spec.sees.join(","));
    audit_event(state, Some(&spec.bubble), actor, action, detail).await?;
    applied.map_err(|e| control_failed(&e))
}

pub(crate) fn default_invite_secs() -> i64 {
    7 * 24 * 3600
}

/// A fresh invite: the secret shown once, as a link and a QR code.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct CreatedInvite {
    /// The secret; only its hash is stored. Shown once.
    token: String,
    /// The link to hand to the member: `<public_url>/enroll#<bubble>.<token>`. The fragment never travels in a
    /// request line, so the token stays out of proxies' and servers' logs.
    link: String,
    /// The link as a QR code (SVG), to show on a screen or print for someone enrolling from a phone.
    qr_svg: String,
    /// Names the invite in the list (the SHA-256 of the token), to withdraw it.
    id: String,
    /// Unix seconds.
    expires_at: i64,
}

/// The link as an SVG QR code (error correction M: survives a crease or a glare on a printed sheet).
fn qr_svg(link: &str) -> Result<String, ApiError> {
    let code = qrcode::QrCode::with_error_correction_level(link.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("QR code: {e}")))?;
    Ok(code.render::<qrcode::render::svg::Color<'_>>().min_dimensions(256, 256).quiet_zone(true).build())
}

/// Checks and stores an invite for `display_name` with `categories`, audited as `action`.
pub(crate) async fn issue_invite(
    state: &ApiState,
    actor: &str,
    bubble: &str,
    display_name: &str,
    categories: &[String],
    expires_in_secs: i64,
    action: &str,
) -> Result<CreatedInvite, ApiError> {
    check_name(display_name)?;
    if !(1..=MAX_INVITE_SECS).contains(&expires_in_secs) {
        return Err(ApiError::bad_request(format!("expires_in_secs must be between 1 and {MAX_INVITE_SECS}")));
    }
    if categories.len() > MAX_CATEGORIES_PER_MEMBER {
        return Err(ApiError::bad_request("too many categories"));
    }
    if state.store.bubble_credential_hash(bubble).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "bubble not found"));
    }
    let known: Vec<String> = state.store.list_categories(bubble).await?.into_iter().map(|c| c.id).collect();
    if let Some(unknown) = categories.iter().find(|c| !known.contains(c)) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("category {unknown:?} not found in this bubble"),
        ));
    }
    let token = fresh_token()?;
    let now = (state.clock)();
    let expires_at = now + expires_in_secs;
    let id = hash_token(&token);
    state
        .store
        .create_invite(&NewInvite { token_hash: &id, bubble, display_name, categories, now, expires_at })
        .await?;
    audit_event(state, Some(bubble), actor, action, format!("for={display_name} categories={}", categories.join(",")))
        .await?;
    let origin = state.control.bubble_origin(bubble).unwrap_or_else(|| state.public_url.clone());
    let link = format!("{}/enroll#{bubble}.{token}", origin.trim_end_matches('/'));
    let qr_svg = qr_svg(&link)?;
    Ok(CreatedInvite { token, link, qr_svg, id, expires_at })
}

/// What the console shows about the service itself.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ServiceInfo {
    /// The PeerBubble version.
    version: String,
    /// Days audit events are kept before they are deleted.
    audit_retention_days: u32,
    /// Seconds health samples are kept.
    health_keep_secs: i64,
    /// Longest invite lifetime, in seconds.
    max_invite_secs: i64,
    /// How administrators sign in: `oidc` or `token`.
    sign_in: String,
}

#[utoipa::path(get, path = "/api/v1/info", tag = "audit", security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = ServiceInfo), (status = 401, body = ErrorBody)))]
pub(crate) async fn info(State(state): State<Arc<ApiState>>, Caller(_who): Caller) -> Json<ServiceInfo> {
    Json(ServiceInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        audit_retention_days: state.audit_retention_days,
        health_keep_secs: HEALTH_KEEP_SECS,
        max_invite_secs: MAX_INVITE_SECS,
        sign_in: if state.oidc.is_some() { "oidc" } else { "token" }.to_owned(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ChangeCategory {
    display_name: String,
    /// The whole new list (replaces the old one).
    #[serde(default)]
    sees: Vec<String>,
}

#[utoipa::path(put, path = "/api/v1/bubbles/{bubble}/categories/{category}", tag = "bubbles",
    params(("bubble" = String, Path, description = "Bubble id"), ("category" = String, Path, description = "Category id")),
    request_body = ChangeCategory, security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Changed; bubble-servers apply it within seconds"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn change_category(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path((bubble, category)): Path<(String, String)>,
    Body(req): Body<ChangeCategory>,
) -> Result<StatusCode, ApiError> {
    who.write(&bubble)?;
    check_name(&req.display_name)?;
    check_sees(&req.sees)?;
    state.store.update_category(&bubble, &category, &req.display_name, &req.sees).await?;
    let spec = CategorySpec { bubble, id: category, display_name: req.display_name, sees: req.sees };
    category_applied(&state, &who.actor(), &spec, "category.changed").await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/v1/bubbles/{bubble}/categories/{category}", tag = "bubbles",
    params(("bubble" = String, Path, description = "Bubble id"), ("category" = String, Path, description = "Category id")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Deleted"), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, description = "Members or pending invites still hold it", body = ErrorBody)))]
pub(crate) async fn delete_category(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path((bubble, category)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    who.write(&bubble)?;
    state.store.delete_category(&bubble, &category, (state.clock)()).await?;
    let applied = state.control.category_deleted(&bubble, &category).await;
    audit_event(&state, Some(&bubble), &who.actor(), "category.deleted", format!("id={category}")).await?;
    applied.map_err(|e| control_failed(&e))?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/bubbles/{bubble}/invites", tag = "members", params(("bubble" = String, Path, description = "Bubble id")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "Newest first; never a token", body = [InviteRow]), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub(crate) async fn list_invites(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
) -> Result<Json<Vec<InviteRow>>, ApiError> {
    who.read(&bubble)?;
    Ok(Json(state.store.list_invites(&bubble, (state.clock)()).await?))
}

#[utoipa::path(delete, path = "/api/v1/bubbles/{bubble}/invites/{invite}", tag = "members",
    params(("bubble" = String, Path, description = "Bubble id"), ("invite" = String, Path, description = "Invite id (from the list)")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Withdrawn: the link no longer enrolls anyone"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, description = "No unused invite with this id", body = ErrorBody)))]
pub(crate) async fn revoke_invite(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path((bubble, invite)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    who.write(&bubble)?;
    let name = state.store.revoke_invite(&bubble, &invite, (state.clock)()).await.map_err(|err| match err {
        StoreError::Invite(_) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no unused invite with this id in this bubble (used invites cannot be withdrawn: revoke the member)",
        ),
        other => other.into(),
    })?;
    audit_event(&state, Some(&bubble), &who.actor(), "invite.revoked", format!("for={name}")).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Reinvite {
    #[serde(default = "default_invite_secs")]
    expires_in_secs: i64,
}

/// A member who lost their device (or whose key may be compromised) is revoked and invited again with the same
/// name and categories: they enroll a new key, and everyone sees a new safety number. There is no key reset.
#[utoipa::path(post, path = "/api/v1/bubbles/{bubble}/members/{member}/reinvite", tag = "members",
    params(("bubble" = String, Path, description = "Bubble id"), ("member" = String, Path, description = "Member id")),
    request_body = Reinvite, security(("bearer" = []), ("session" = [])),
    responses((status = 201, description = "The member is revoked (if still active) and a new invite made", body = CreatedInvite),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn reinvite(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path((bubble, member)): Path<(String, String)>,
    Body(req): Body<Reinvite>,
) -> Result<(StatusCode, Json<CreatedInvite>), ApiError> {
    who.write(&bubble)?;
    let (name, categories, status) =
        state.store.member_profile(&bubble, &member).await?.ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no member with this id in this bubble")
        })?;
    if status == "active" && state.store.revoke_member(&bubble, &member, (state.clock)()).await? {
        audit_event(&state, Some(&bubble), &who.actor(), "member.revoked", format!("member={member} (re-invite)"))
            .await?;
    }
    let invite =
        issue_invite(&state, &who.actor(), &bubble, &name, &categories, req.expires_in_secs, "member.reinvited")
            .await?;
    Ok((StatusCode::CREATED, Json(invite)))
}

/// One member as another member's slice shows them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SliceEntry {
    member: String,
    display_name: String,
    /// Only the categories the viewing member may know about.
    categories: Vec<String>,
}

/// A member's key fingerprint and exactly what their directory slice holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct MemberView {
    member: String,
    display_name: String,
    /// `active` or `revoked`.
    status: String,
    /// 30 digits in groups of five: the member's half of every safety number they compare, derived from their
    /// public key only.
    fingerprint: String,
    /// Who this member sees and may reach, as the bubble-server tells them (empty once revoked).
    sees: Vec<SliceEntry>,
}

#[utoipa::path(get, path = "/api/v1/bubbles/{bubble}/members/{member}/view", tag = "members",
    params(("bubble" = String, Path, description = "Bubble id"), ("member" = String, Path, description = "Member id")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = MemberView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn view_as_member(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path((bubble, member)): Path<(String, String)>,
) -> Result<Json<MemberView>, ApiError> {
    who.read(&bubble)?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "not_found", "no member with this id in this bubble");
    let row =
        state.store.list_members(&bubble).await?.into_iter().find(|m| m.member == member).ok_or_else(not_found)?;
    let key: PublicKey = row.public_key.parse().map_err(|_| not_found())?;
    let (document, revision) = state.store.directory(&bubble).await?.ok_or_else(not_found)?;
    let directory = Directory::compile(document, revision).map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "directory_invalid",
            format!("the bubble's directory does not compile: {e}"),
        )
    })?;
    let id: MemberId = key.member_id();
    let sees = directory
        .slice(&id, |_| false)
        .into_iter()
        .map(|e| SliceEntry { member: e.member.to_string(), display_name: e.display_name, categories: e.categories })
        .collect();
    let digits = peerbubble_proto::key_fingerprint(&key);
    let fingerprint = digits.as_bytes().chunks(5).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>();
    Ok(Json(MemberView {
        member: row.member,
        display_name: row.display_name,
        status: row.status,
        fingerprint: fingerprint.join(" "),
        sees,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// One bubble (required for an administrator scoped to some bubbles).
    bubble: Option<String>,
    /// Actors whose name contains this text.
    actor: Option<String>,
    /// Actions starting with this text, e.g. `member.`.
    action: Option<String>,
    /// From this Unix second.
    since: Option<i64>,
    /// Until this Unix second (excluded).
    until: Option<i64>,
    /// Page size (1-1000, default 100).
    limit: Option<i64>,
    /// Events to skip (paging).
    offset: Option<i64>,
}

impl AuditQuery {
    fn filter(&self, who: &crate::auth::Principal) -> Result<AuditFilter, ApiError> {
        match self.bubble.as_deref() {
            Some(bubble) => who.read(bubble)?,
            None if who.scope == Scope::All => {}
            None => {
                return Err(ApiError::bad_request(
                    "name a bubble (?bubble=...): your scope is limited to some bubbles",
                ));
            }
        }
        let short = |text: &Option<String>, what: &str| match text {
            Some(t) if t.len() > 128 => Err(ApiError::bad_request(format!("{what} is limited to 128 bytes"))),
            Some(t) if t.is_empty() => Ok(None),
            other => Ok(other.clone()),
        };
        Ok(AuditFilter {
            bubble: self.bubble.clone(),
            actor: short(&self.actor, "actor")?,
            action: short(&self.action, "action")?,
            since: self.since,
            until: self.until,
        })
    }
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", params(AuditQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "Newest first", body = [AuditEvent]), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn list_audit(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEvent>>, ApiError> {
    let filter = query.filter(&who)?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let offset = query.offset.unwrap_or(0).max(0);
    Ok(Json(state.store.search_audit(&filter, limit, offset).await?))
}

/// A CSV field: quoted when needed; a leading `=`, `+`, `-` or `@` is defused so that a spreadsheet never runs it.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

#[utoipa::path(get, path = "/api/v1/audit.csv", tag = "audit", params(AuditQuery), security(("bearer" = []), ("session" = [])),
    responses((status = 200, description = "The filtered trail as CSV (at most 100 000 rows, newest first)", content_type = "text/csv"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub(crate) async fn export_audit(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let filter = query.filter(&who)?;
    let events = state.store.search_audit(&filter, MAX_AUDIT_EXPORT, 0).await?;
    let mut csv = String::from("at_utc,at_unix,bubble,actor,action,detail\r\n");
    for e in &events {
        let when = crate::token::utc_timestamp(e.at);
        let fields = [when, e.at.to_string(), e.bubble.clone().unwrap_or_default(), e.actor.clone(), e.action.clone()];
        for field in &fields {
            csv.push_str(&csv_field(field));
            csv.push(',');
        }
        csv.push_str(&csv_field(&e.detail));
        csv.push_str("\r\n");
    }
    let mut response = csv.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    headers
        .insert(header::CONTENT_DISPOSITION, HeaderValue::from_static("attachment; filename=\"peerbubble-audit.csv\""));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_field("-1"), "'-1");
    }
}

#[utoipa::path(get, path = "/api/v1/bubbles/{bubble}/policy", tag = "bubbles", params(("bubble" = String, Path, description = "Bubble id")),
    security(("bearer" = []), ("session" = [])),
    responses((status = 200, body = peerbubble_proto::BubblePolicy), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn get_policy(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
) -> Result<Json<peerbubble_proto::BubblePolicy>, ApiError> {
    who.read(&bubble)?;
    if state.store.bubble_credential_hash(&bubble).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "bubble not found"));
    }
    Ok(Json(state.store.policy(&bubble).await?))
}

/// Sets what the bubble requires of its members' clients. It reaches them in `welcome`, and connected members at
/// once in a `policy` frame when their bubble-server picks up the directory (within seconds).
#[utoipa::path(put, path = "/api/v1/bubbles/{bubble}/policy", tag = "bubbles", params(("bubble" = String, Path, description = "Bubble id")),
    request_body = peerbubble_proto::BubblePolicy, security(("bearer" = []), ("session" = [])),
    responses((status = 204, description = "Set; members' clients apply it within seconds"), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_policy(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    Path(bubble): Path<String>,
    Body(policy): Body<peerbubble_proto::BubblePolicy>,
) -> Result<StatusCode, ApiError> {
    who.write(&bubble)?;
    policy.check().map_err(ApiError::bad_request)?;
    if state.store.bubble_credential_hash(&bubble).await?.is_none() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "bubble not found"));
    }
    state.store.set_policy(&bubble, &policy).await?;
    let detail = format!(
        "masked_by_default={} disappear_within_secs={} files_allowed={} max_file_bytes={} calls_allowed={} relay_only={}",
        policy.masked_by_default,
        policy.disappear_within_secs,
        policy.files_allowed,
        policy.max_file_bytes,
        policy.calls_allowed,
        policy.relay_only
    );
    audit_event(&state, Some(&bubble), &who.actor(), "policy.changed", detail).await?;
    Ok(StatusCode::NO_CONTENT)
}
