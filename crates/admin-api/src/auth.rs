//! Who is calling, and what they may do. A principal comes from the bootstrap token (admin of everything), a
//! scoped API token (both `Authorization: Bearer`), or an administrator's OpenID Connect session cookie. A
//! cookie is ambient authority, so every state-changing call made with one must also carry the session's CSRF
//! token in `X-CSRF-Token`; bearer tokens are never sent by a browser on its own and need none.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};

use crate::error::ApiError;
use crate::state::ApiState;
use crate::store::AdminSession;
use crate::token::{hash_token, hashes_equal, sha256_hex};

/// The administrator session cookie (HttpOnly, SameSite=Strict, Secure under TLS).
pub const SESSION_COOKIE: &str = "pb_session";
/// The header carrying the CSRF token on state-changing calls made with the session cookie.
pub const CSRF_HEADER: &str = "x-csrf-token";

pub use crate::principal::{Principal, Role, Scope, stored_principal, stored_scope};

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find_map(|(key, value)| (key == name).then_some(value))
}

/// The CSRF token of a session: derived from the session cookie, which scripts cannot read, and handed to the
/// console by `GET /auth/session` (same-origin only).
pub fn csrf_token(session_token: &str) -> String {
    sha256_hex(format!("PeerBubble-v1-csrf\0{session_token}").as_bytes())
}

/// The unexpired session behind a session cookie, or `session_expired`.
pub(crate) async fn live_session(state: &ApiState, session_token: &str) -> Result<AdminSession, ApiError> {
    state.store.session(&hash_token(session_token), (state.clock)()).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "session_expired",
            "your session has expired or was ended; sign in again at /auth/login",
        )
    })
}

/// The principal a bearer token (the bootstrap token or a scoped API token) stands for.
pub async fn token_principal(state: &ApiState, token: &str) -> Result<Principal, ApiError> {
    let hash = hash_token(token);
    if state.admin_token_hash.as_deref().is_some_and(|admin| hashes_equal(&hash, admin)) {
        return Ok(Principal { name: "bootstrap".into(), role: Role::Admin, scope: Scope::All });
    }
    let Some((name, role, bubbles)) = state.store.api_token(&hash).await? else {
        return Err(ApiError::unauthorized());
    };
    stored_principal(name, &role, &bubbles).ok_or_else(ApiError::unauthorized)
}

/// Authenticates a request: bearer token first, else the session cookie (with CSRF check unless `method` is
/// safe).
pub async fn principal(state: &ApiState, headers: &HeaderMap, method: &Method) -> Result<Principal, ApiError> {
    if let Some(token) = bearer(headers) {
        return token_principal(state, token).await;
    }
    let Some(session) = cookie(headers, SESSION_COOKIE) else { return Err(ApiError::unauthorized()) };
    let row = live_session(state, session).await?;
    if !method.is_safe() {
        let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        if !sent.is_some_and(|sent| hashes_equal(sent, &csrf_token(session))) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf_required",
                "changes made with a session cookie need the X-CSRF-Token header given by GET /auth/session",
            ));
        }
    }
    stored_principal(row.name, &row.role, &row.bubbles).ok_or_else(ApiError::unauthorized)
}

/// The authenticated caller of an administrator endpoint.
#[derive(Debug)]
pub struct Caller(pub Principal);

impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<ApiState>) -> Result<Self, Self::Rejection> {
        principal(state, &parts.headers, &parts.method).await.map(Caller)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; pb_session=abc"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "pb"), None);
        assert_ne!(csrf_token("abc"), csrf_token("abd"));
        assert_eq!(csrf_token("abc").len(), 64);
    }

    #[test]
    fn stored_principals_round_trip() {
        let p = stored_principal("x".into(), "admin", "a,b").unwrap();
        assert_eq!(p.scope, Scope::Bubbles(vec!["a".into(), "b".into()]));
        assert_eq!(stored_scope(&p.scope), "a,b");
        assert_eq!(stored_principal("x".into(), "auditor", "*").unwrap().scope, Scope::All);
        assert!(stored_principal("x".into(), "root", "*").is_none());
    }
}
