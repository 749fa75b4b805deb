//! Administrator sign-in with OpenID Connect: authorization code flow with PKCE (S256), state and nonce, ID
//! token validated by the `openidconnect` crate (signature against the provider's published keys, issuer,
//! audience, expiry, nonce), then a server-side session behind an HttpOnly, SameSite=Strict cookie (Secure when
//! the admin API is reached over TLS). Roles come from a configurable claim.
//!
//! Nothing secret is stored for a login in progress: the PKCE verifier is the browser's own HttpOnly login
//! cookie, and the database keeps the state's hash, the (public) challenge and the nonce. So a callback only
//! completes in the browser that started the login (no login CSRF), each state works once, and any replica of
//! the admin API can finish a login another one started.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope as OidcScope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::api::{ApiError, ApiState, audit_event, fresh_token};
use crate::auth::{
    Caller, Principal, Role, SESSION_COOKIE, Scope, cookie, csrf_token, live_session, stored_principal, stored_scope,
};
use crate::store::AdminSession;
use crate::token::hash_token;

/// The login-in-progress cookie: the PKCE verifier (SameSite=Lax, since the provider's redirect back is a
/// cross-site navigation).
pub const LOGIN_COOKIE: &str = "pb_login";
/// How long a login may take.
pub const LOGIN_SECS: i64 = 600;
/// How often the provider's metadata and keys are fetched again (key rotation).
const DISCOVERY_TTL: Duration = Duration::from_secs(600);

/// A client secret: redacted in Debug, never logged.
#[derive(Clone)]
pub struct ClientSecretValue(String);

impl ClientSecretValue {
    /// Wraps a secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }
}

impl fmt::Debug for ClientSecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(redacted)")
    }
}

/// Settings for administrator sign-in.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The provider's issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// This admin API's client id at the provider.
    pub client_id: String,
    /// Its secret (confidential client), if any.
    pub client_secret: Option<ClientSecretValue>,
    /// The full URL of `/auth/callback` as registered at the provider. `https://` makes cookies Secure.
    pub redirect_url: String,
    /// The claim holding roles: a dotted path (`peerbubble_roles`, `realm_access.roles`), array or
    /// space-separated string of `admin`, `auditor`, `admin:<bubble>`, `auditor:<bubble>`.
    pub roles_claim: String,
    /// Scopes requested besides `openid` (default `profile`).
    pub scopes: Vec<String>,
    /// Session lifetime.
    pub session_secs: i64,
    /// Where the browser goes after signing in (the console).
    pub after_login: String,
}

type Discovered =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

/// The relying party: configuration, an HTTP client that never follows redirects, and the provider's metadata.
pub struct Oidc {
    config: OidcConfig,
    http: reqwest::Client,
    discovered: Mutex<Option<(Arc<Discovered>, Instant)>>,
}

impl fmt::Debug for Oidc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Oidc").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Configuration errors, found at start.
#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    /// A URL does not parse.
    #[error("{0} is not a valid URL")]
    Url(&'static str),
    /// The HTTP client cannot be built.
    #[error("HTTP client: {0}")]
    Http(String),
}

fn provider_unreachable(err: impl fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "OpenID provider unreachable");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "provider_unreachable",
        format!("the identity provider could not be reached or gave unusable metadata: {err}"),
    )
}

impl Oidc {
    /// Checks the configuration; the provider is contacted at the first sign-in (the admin API starts even when
    /// the provider is down).
    pub fn new(config: OidcConfig) -> Result<Self, OidcConfigError> {
        IssuerUrl::new(config.issuer.clone()).map_err(|_| OidcConfigError::Url("issuer"))?;
        RedirectUrl::new(config.redirect_url.clone()).map_err(|_| OidcConfigError::Url("redirect_url"))?;
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| OidcConfigError::Http(e.to_string()))?;
        Ok(Self { config, http, discovered: Mutex::new(None) })
    }

    /// Cookies are Secure when the admin API is reached over TLS.
    fn secure(&self) -> bool {
        self.config.redirect_url.starts_with("https://")
    }

    async fn client(&self) -> Result<Arc<Discovered>, ApiError> {
        let mut cached = self.discovered.lock().await;
        if let Some((client, at)) = cached.as_ref()
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(client.clone());
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(provider_unreachable)?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http).await.map_err(provider_unreachable)?;
        let redirect = RedirectUrl::new(self.config.redirect_url.clone()).map_err(provider_unreachable)?;
        let client = Arc::new(
            CoreClient::from_provider_metadata(
                metadata,
                ClientId::new(self.config.client_id.clone()),
                self.config.client_secret.as_ref().map(|s| ClientSecret::new(s.0.clone())),
            )
            .set_redirect_uri(redirect),
        );
        *cached = Some((client.clone(), Instant::now()));
        Ok(client)
    }

    async fn forget_metadata(&self) {
        *self.discovered.lock().await = None;
    }
}

/// Follows a dotted path (`realm_access.roles`) into a JSON object.
fn claim_at<'a>(payload: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(payload, |value, key| value.get(key))
}

/// Maps the role claim to a principal. Recognised values: `admin`, `auditor`, `admin:<bubble>`,
/// `auditor:<bubble>`; others (roles of other applications) are ignored. The strongest grant wins: admin of
/// everything, else admin of the named bubbles, else auditor of everything, else auditor of the named bubbles.
/// None when no value is recognised.
pub fn principal_from_claims(payload: &serde_json::Value, roles_claim: &str, name: String) -> Option<Principal> {
    let values: Vec<&str> = match claim_at(payload, roles_claim)? {
        serde_json::Value::Array(items) => items.iter().filter_map(serde_json::Value::as_str).collect(),
        serde_json::Value::String(text) => text.split([' ', ',']).filter(|v| !v.is_empty()).collect(),
        _ => return None,
    };
    let mut grants: [(bool, Vec<String>); 2] = [(false, Vec::new()), (false, Vec::new())];
    for value in values {
        let (role, bubble) = value.split_once(':').map_or((value, None), |(r, b)| (r, Some(b)));
        let slot = match Role::parse(role) {
            Some(Role::Admin) => 0,
            Some(Role::Auditor) => 1,
            None => continue,
        };
        match bubble {
            None => grants[slot].0 = true,
            Some(b) if peerbubble_proto::limits::is_valid_id(b) => grants[slot].1.push(b.to_owned()),
            Some(_) => {}
        }
    }
    for (slot, role) in [(0, Role::Admin), (1, Role::Auditor)] {
        let (all, bubbles) = &mut grants[slot];
        if *all {
            return Some(Principal { name, role, scope: Scope::All });
        }
        if !bubbles.is_empty() {
            bubbles.sort();
            bubbles.dedup();
            return Some(Principal { name, role, scope: Scope::Bubbles(std::mem::take(bubbles)) });
        }
    }
    None
}

/// A display name for the audit trail: `preferred_username`, `name`, `email` or `sub`, cleaned and bounded.
fn display_name(payload: &serde_json::Value) -> String {
    let raw = ["preferred_username", "name", "email", "sub"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(serde_json::Value::as_str))
        .unwrap_or("unknown");
    raw.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn cookie_header(name: &str, value: &str, same_site: &str, path: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!("{name}={value}; HttpOnly; SameSite={same_site}; Path={path}; Max-Age={max_age}{secure}");
    // Values are base64url tokens and fixed names: always a valid header.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The PKCE S256 challenge of a verifier (RFC 7636): base64url(SHA-256(verifier)).
fn s256(verifier: &str) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
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
        (status = 404, description = "OpenID Connect is not configured", body = crate::api::ErrorBody),
        (status = 502, description = "The provider is unreachable", body = crate::api::ErrorBody)))]
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
        (status = 400, description = "Unknown, reused or expired state; another browser", body = crate::api::ErrorBody),
        (status = 401, description = "The provider refused, or the ID token is invalid", body = crate::api::ErrorBody),
        (status = 403, description = "The account has no PeerBubble role", body = crate::api::ErrorBody)))]
pub async fn callback(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Result<Response, ApiError> {
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
    let verifier = cookie(&headers, LOGIN_COOKIE).unwrap_or_default().to_owned();
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
    let session = fresh_token()?;
    let row = AdminSession {
        name: principal.name.clone(),
        role: principal.role.as_str().to_owned(),
        bubbles: stored_scope(&principal.scope),
        created_at: now,
        expires_at: now + oidc.config.session_secs,
    };
    state.store.create_session(&row, &hash_token(&session)).await?;
    audit_event(&state, None, &principal.actor(), "admin.signed_in", format!("scope={}", row.bubbles)).await?;
    let location = HeaderValue::from_str(&oidc.config.after_login).unwrap_or_else(|_| HeaderValue::from_static("/"));
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, &session, "Strict", "/", oidc.config.session_secs, oidc.secure()),
    );
    headers.append(header::SET_COOKIE, cookie_header(LOGIN_COOKIE, "", "Lax", "/auth", 0, oidc.secure()));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
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
        (status = 401, description = "Not signed in, or the session expired", body = crate::api::ErrorBody)))]
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
        (status = 401, description = "Not signed in", body = crate::api::ErrorBody),
        (status = 403, description = "Missing or wrong X-CSRF-Token", body = crate::api::ErrorBody)))]
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map(claims: serde_json::Value, claim: &str) -> Option<(Role, Scope)> {
        principal_from_claims(&claims, claim, "n".into()).map(|p| (p.role, p.scope))
    }

    #[test]
    fn roles_map_to_the_strongest_grant() {
        let c = "peerbubble_roles";
        assert_eq!(map(json!({c: ["admin"]}), c), Some((Role::Admin, Scope::All)));
        assert_eq!(
            map(json!({c: ["auditor", "admin:ops", "admin:ops"]}), c),
            Some((Role::Admin, Scope::Bubbles(vec!["ops".into()])))
        );
        assert_eq!(map(json!({c: "auditor other-app"}), c), Some((Role::Auditor, Scope::All)));
        assert_eq!(
            map(json!({c: ["auditor:b", "auditor:a"]}), c),
            Some((Role::Auditor, Scope::Bubbles(vec!["a".into(), "b".into()])))
        );
        assert_eq!(
            map(json!({"realm_access": {"roles": ["admin"]}}), "realm_access.roles"),
            Some((Role::Admin, Scope::All))
        );
        assert_eq!(map(json!({c: ["root", "admin:Not Valid"]}), c), None);
        assert_eq!(map(json!({c: 1}), c), None);
        assert_eq!(map(json!({}), c), None);
    }

    #[test]
    fn names_are_bounded_and_clean() {
        assert_eq!(display_name(&json!({"sub": "s", "name": "A\u{7}B"})), "AB");
        assert_eq!(display_name(&json!({"preferred_username": "x".repeat(100)})).len(), 64);
        assert_eq!(display_name(&json!({})), "unknown");
    }

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn secrets_are_redacted() {
        assert!(!format!("{:?}", ClientSecretValue::new("hunter2".into())).contains("hunter2"));
    }
}
