//! Administrator sign-in with OpenID Connect (`/auth/*`): the authorization-code flow with PKCE against the
//! provider client ([`crate::oidc`]), then an HttpOnly session cookie and its CSRF token.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::CoreAuthenticationFlow;
use openidconnect::{
    AuthorizationCode, CsrfToken, Nonce, PkceCodeChallenge, PkceCodeVerifier, Scope as OidcScope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};

use crate::auth::{
    Caller, SESSION_COOKIE, Scope, cookie, csrf_token, live_session, stored_principal, stored_scope, token_principal,
};
use crate::error::{ApiError, Body};
use crate::oidc::{display_name, principal_from_claims, provider_unreachable, s256};
use crate::state::{ApiState, audit_event, fresh_token};
use crate::store::AdminSession;
use crate::token::hash_token;

/// The login-in-progress cookie: the PKCE verifier (SameSite=Lax, since the provider's redirect back is a
/// cross-site navigation).
pub const LOGIN_COOKIE: &str = "pb_login";
/// How long a login may take.
pub const LOGIN_SECS: i64 = 600;

fn cookie_header(name: &str, value: &str, same_site: &str, path: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; HttpOnly; SameSite={same_site}; Path={path}; Max-Age={max_age}{secure}");
    // Values are base64url tokens and fixed names: always a valid header.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn not_configured() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "oidc_not_configured",
        "OpenID Connect sign-in is not configured on this admin API; use the bootstrap or an API token",
    )
}

/// `GET /auth/login`: starts a sign-in and redirects to the provider.
#[utoipa::path(get, path = "/auth/login", tag = "sign-in",
    responses((status = 303, description = "Redirect to the identity provider; sets the login cookie"),
        (status = 404, description = "OpenID Connect is not configured", body = crate::error::ErrorBody),
        (status = 502, description = "The provider is unreachable", body = crate::error::ErrorBody)))]
pub async fn login(State(state): State<Arc<ApiState>>) -> Result<Response, ApiError> {
    let oidc = state.oidc.as_ref().ok_or_else(not_configured)?;
    let client = oidc.client().await?;
    let (verifier, csrf_state, nonce) = (fresh_token()?, fresh_token()?, fresh_token()?);
    // Our verifier is a 43-character base64url token, the shape PKCE requires.
    let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(verifier.clone()));
    let (state_for_url, nonce_for_url) = (csrf_state.clone(), nonce.clone());
    let mut request = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state_for_url),
            move || Nonce::new(nonce_for_url),
        )
        .set_pkce_challenge(challenge.clone());
    for scope in &oidc.config.scopes {
        request = request.add_scope(OidcScope::new(scope.clone()));
    }
    let (url, _, _) = request.url();
    let now = (state.clock)();
    state.store.begin_login(&hash_token(&csrf_state), challenge.as_str(), &nonce, now, now + LOGIN_SECS).await?;
    let location = HeaderValue::from_str(url.as_str()).map_err(provider_unreachable)?;
    let mut response = StatusCode::SEE_OTHER.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, cookie_header(LOGIN_COOKIE, &verifier, "Lax", "/auth", LOGIN_SECS, oidc.secure()));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What the provider sends back. Unknown parameters (`session_state`, `iss`, ...) are ignored.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CallbackQuery {
    /// The authorization code.
    code: Option<String>,
    /// The state sent at login.
    state: Option<String>,
    /// An error from the provider.
    error: Option<String>,
}

fn refused(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// `GET /auth/callback`: the provider's redirect back. Checks state (once), the browser binding, exchanges the
/// code with the PKCE verifier, validates the ID token and opens a session.
#[utoipa::path(get, path = "/auth/callback", tag = "sign-in", params(CallbackQuery),
    responses((status = 303, description = "Signed in: session cookie set, redirect to the console"),
        (status = 400, description = "Unknown, reused or expired state; another browser", body = crate::error::ErrorBody),
        (status = 401, description = "The provider refused, or the ID token is invalid", body = crate::error::ErrorBody),
        (status = 403, description = "The account has no PeerBubble role", body = crate::error::ErrorBody)))]
pub async fn callback(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
    // A person's browser lands here from the provider: a refusal takes them back to the console's sign-in page,
    // which says what went wrong in their language, instead of a page of JSON. API clients get the JSON error.
    let navigation =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| accept.contains("text/html"));
    let after_login = state.oidc.as_ref().map(|o| o.config.after_login.clone());
    match complete_sign_in(&state, &headers, query).await {
        Err(err) if navigation => {
            let base = after_login.unwrap_or_else(|| "/admin/".to_owned());
            let location = format!("{base}?sign_in_error={}", err.code());
            let mut response = StatusCode::SEE_OTHER.into_response();
            let value = HeaderValue::from_str(&location).unwrap_or_else(|_| HeaderValue::from_static("/admin/"));
            response.headers_mut().insert(header::LOCATION, value);
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
        other => other,
    }
}

async fn complete_sign_in(
    state: &Arc<ApiState>,
    headers: &HeaderMap,
    query: CallbackQuery,
) -> Result<Response, ApiError> {
    let state = state.clone();
    let oidc = state.oidc.as_ref().ok_or_else(not_configured)?;
    if let Some(error) = query.error {
        let error: String = error.chars().filter(char::is_ascii_graphic).take(64).collect();
        return Err(refused("provider_refused", format!("the identity provider refused the sign-in: {error}")));
    }
    let (Some(code), Some(csrf_state)) = (query.code, query.state) else {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "code and state are required"));
    };
    let now = (state.clock)();
    let Some((challenge, nonce)) = state.store.take_login(&hash_token(&csrf_state), now).await? else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "login_unknown",
            "this sign-in was already completed, has expired or was never started here; start again at /auth/login",
        ));
    };
    // The cookie is attacker-controlled: compared as a hash, never handed to code that asserts its shape.
    let verifier = cookie(headers, LOGIN_COOKIE).unwrap_or_default().to_owned();
    if !crate::token::hashes_equal(&s256(&verifier), &challenge) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "login_other_browser",
            "this sign-in was started in another browser (or its cookie was lost); start again at /auth/login",
        ));
    }
    let client = oidc.client().await?;
    let exchange = client.exchange_code(AuthorizationCode::new(code)).map_err(provider_unreachable)?;
    let tokens =
        exchange.set_pkce_verifier(PkceCodeVerifier::new(verifier)).request_async(&oidc.http).await.map_err(|err| {
            tracing::warn!(error = %err, "authorization code refused");
            refused("code_refused", format!("the identity provider did not accept the sign-in: {err}"))
        })?;
    let id_token = tokens.id_token().ok_or_else(|| refused("id_token_missing", "no ID token was returned"))?;
    let verified = id_token.claims(&client.id_token_verifier(), &Nonce::new(nonce));
    if let Err(err) = verified {
        tracing::warn!(error = %err, "ID token refused");
        // A signature failure may be a key rotation: fetch keys again for the next attempt.
        oidc.forget_metadata().await;
        return Err(refused("id_token_invalid", format!("the ID token was refused: {err}")));
    }
    // The signature over this exact token was verified above; read the role claim from its payload.
    let raw = id_token.to_string();
    let payload = raw
        .split('.')
        .nth(1)
        .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
        .ok_or_else(|| refused("id_token_invalid", "the ID token payload is not JSON"))?;
    let name = display_name(&payload);
    let Some(principal) = principal_from_claims(&payload, &oidc.config.roles_claim, name.clone()) else {
        audit_event(&state, None, &format!("oidc:{name}"), "admin.sign_in_refused", "no PeerBubble role".into())
            .await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no_role",
            format!(
                "your account has no PeerBubble role in the `{}` claim; ask for admin or auditor",
                oidc.config.roles_claim
            ),
        ));
    };
    let cookie = open_session(&state, &principal, now, oidc.config.session_secs, "oidc", oidc.secure()).await?;
    let location = HeaderValue::from_str(&oidc.config.after_login).unwrap_or_else(|_| HeaderValue::from_static("/"));
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.append(header::SET_COOKIE, cookie);
    headers.append(header::SET_COOKIE, cookie_header(LOGIN_COOKIE, "", "Lax", "/auth", 0, oidc.secure()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Stores a new administrator session for `principal` (OpenID or token sign-in alike), audits it, and returns
/// its cookie.
async fn open_session(
    state: &ApiState,
    principal: &crate::auth::Principal,
    now: i64,
    lifetime_secs: i64,
    with: &str,
    secure: bool,
) -> Result<HeaderValue, ApiError> {
    let session = fresh_token()?;
    let row = AdminSession {
        name: principal.name.clone(),
        role: principal.role.as_str().to_owned(),
        bubbles: stored_scope(&principal.scope),
        created_at: now,
        expires_at: now + lifetime_secs,
    };
    state.store.create_session(&row, &hash_token(&session)).await?;
    let detail = format!("scope={} with={with}", row.bubbles);
    audit_event(state, None, &principal.actor(), "admin.signed_in", detail).await?;
    Ok(cookie_header(SESSION_COOKIE, &session, "Strict", "/", lifetime_secs, secure))
}

/// The signed-in administrator, and the CSRF token the console sends with every change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// Who.
    name: String,
    /// `admin` or `auditor`.
    role: String,
    /// `["*"]` or bubble ids.
    bubbles: Vec<String>,
    /// Send as `X-CSRF-Token` with every POST, PUT, PATCH and DELETE.
    csrf_token: String,
    /// Unix seconds.
    expires_at: i64,
}

fn session_cookie(headers: &HeaderMap) -> Result<&str, ApiError> {
    cookie(headers, SESSION_COOKIE)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "not_signed_in", "no session: sign in at /auth/login"))
}

/// `GET /auth/session`: the current administrator session.
#[utoipa::path(get, path = "/auth/session", tag = "sign-in",
    responses((status = 200, body = SessionInfo),
        (status = 401, description = "Not signed in, or the session expired", body = crate::error::ErrorBody)))]
pub async fn session(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Result<Response, ApiError> {
    let token = session_cookie(&headers)?;
    let row = live_session(&state, token).await?;
    let principal = stored_principal(row.name.clone(), &row.role, &row.bubbles).ok_or_else(ApiError::unauthorized)?;
    let bubbles = match principal.scope {
        Scope::All => vec!["*".to_owned()],
        Scope::Bubbles(list) => list,
    };
    let info = SessionInfo {
        name: row.name,
        role: row.role,
        bubbles,
        csrf_token: csrf_token(token),
        expires_at: row.expires_at,
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], axum::Json(info)).into_response())
}

/// `POST /auth/logout`: ends the session (CSRF token required).
#[utoipa::path(post, path = "/auth/logout", tag = "sign-in",
    responses((status = 204, description = "Signed out; cookie cleared"),
        (status = 401, description = "Not signed in", body = crate::error::ErrorBody),
        (status = 403, description = "Missing or wrong X-CSRF-Token", body = crate::error::ErrorBody)))]
pub async fn logout(
    State(state): State<Arc<ApiState>>,
    Caller(who): Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = session_cookie(&headers)?;
    state.store.delete_session(&hash_token(token)).await?;
    audit_event(&state, None, &who.actor(), "admin.signed_out", String::new()).await?;
    let secure = state.oidc.as_ref().is_some_and(|o| o.secure());
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie_header(SESSION_COOKIE, "", "Strict", "/", 0, secure));
    Ok(response)
}

/// A token typed into the console's sign-in page.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenSignIn {
    /// The bootstrap token `peerbubble up` printed, or a scoped API token.
    token: String,
}

impl std::fmt::Debug for TokenSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSignIn").field("token", &"<redacted>").finish()
    }
}

/// `POST /auth/token`: opens a console session with a token instead of the provider, so that the token itself
/// never stays in the page (scripts could read it); the console then works with the HttpOnly cookie and its CSRF
/// token like an OpenID session. A JSON body only: a cross-site form cannot send one, so nobody can be signed in
/// to someone else's session.
#[utoipa::path(post, path = "/auth/token", tag = "sign-in", request_body = TokenSignIn,
    responses((status = 204, description = "Signed in: session cookie set"),
        (status = 401, description = "Unknown token", body = crate::error::ErrorBody)))]
pub async fn token_sign_in(
    State(state): State<Arc<ApiState>>,
    Body(req): Body<TokenSignIn>,
) -> Result<Response, ApiError> {
    let principal = match token_principal(&state, req.token.trim()).await {
        Ok(principal) => principal,
        Err(_) => {
            audit_event(&state, None, "console", "admin.sign_in_refused", "unknown token".into()).await?;
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token_unknown",
                "this token is not valid here: copy the admin token `peerbubble up` printed at its last start, or \
                 ask for an API token",
            ));
        }
    };
    let secure = state.public_url.starts_with("https://");
    let cookie = open_session(&state, &principal, (state.clock)(), state.session_secs, "token", secure).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(header::SET_COOKIE, cookie);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// How administrators may sign in here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignInMethods {
    /// An OpenID Connect provider is configured (`/auth/login`).
    oidc: bool,
}

/// `GET /auth/methods`: what the console's sign-in page offers (public: it reveals only whether a provider is set).
#[utoipa::path(get, path = "/auth/methods", tag = "sign-in", responses((status = 200, body = SignInMethods)))]
pub async fn methods(State(state): State<Arc<ApiState>>) -> axum::Json<SignInMethods> {
    axum::Json(SignInMethods { oidc: state.oidc.is_some() })
}
