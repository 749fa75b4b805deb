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

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use openidconnect::core::{CoreClient, CoreProviderMetadata};
use openidconnect::{ClientId, ClientSecret, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, RedirectUrl};
use tokio::sync::Mutex;

use crate::error::ApiError;
use crate::principal::{Principal, Role, Scope};

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
    pub(crate) config: OidcConfig,
    pub(crate) http: reqwest::Client,
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

pub(crate) fn provider_unreachable(err: impl fmt::Display) -> ApiError {
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
    pub(crate) fn secure(&self) -> bool {
        self.config.redirect_url.starts_with("https://")
    }

    pub(crate) async fn client(&self) -> Result<Arc<Discovered>, ApiError> {
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

    pub(crate) async fn forget_metadata(&self) {
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
pub(crate) fn display_name(payload: &serde_json::Value) -> String {
    let raw = ["preferred_username", "name", "email", "sub"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(serde_json::Value::as_str))
        .unwrap_or("unknown");
    raw.chars().filter(|c| !c.is_control()).take(64).collect()
}

/// The PKCE S256 challenge of a verifier (RFC 7636): base64url(SHA-256(verifier)).
pub(crate) fn s256(verifier: &str) -> String {
    use sha2::Digest as _;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
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
