//! How a bubble-server in a cluster proves which bubble it serves: the projected ServiceAccount token the kubelet
//! mounts into its pod (bound to the admin API's audience, short-lived, rotated), checked by the API server
//! (TokenReview). No shared credential Secret is needed: the operator runs each bubble's pods as the
//! ServiceAccount `<bubble>-bubble` in the bubble's namespace, and only that ServiceAccount's token serves that
//! bubble. A bubble-server outside the cluster still presents the bubble credential, checked against its stored
//! hash and never sent to the API server.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::Client;
use kube::api::{Api, PostParams};
use peerbubble_admin_api::control::{
    AuthError, AuthFuture, BubbleAuth, BubbleAuthenticator, BubbleCredential, BubbleRefusal, RefusalReason,
};
use peerbubble_admin_api::state::{Clock, system_clock};
use peerbubble_admin_api::store::Store;
use peerbubble_admin_api::token::hash_token;

use crate::Namespaces;

/// (API group, resource, verbs) the admin API needs cluster-wide to review tokens (TokenReview is not namespaced),
/// and all the chart's ClusterRole grants it.
pub const CLUSTER_RBAC_RULES: [(&str, &str, &[&str]); 1] = [("authentication.k8s.io", "tokenreviews", &["create"])];

/// An accepted token is not reviewed again for this long (nor past its own expiry): a bubble-server polls its
/// directory every second.
pub const ACCEPTED_FOR_SECS: i64 = 60;
/// Accepted tokens remembered at most (a few per bubble-server: the kubelet rotates them).
const CACHED: usize = 4096;

/// The ServiceAccount the operator runs `bubble`'s bubble-servers as.
pub fn service_account(bubble: &str) -> String {
    format!("{bubble}-bubble")
}

/// Checks bubble-servers' tokens with TokenReview, and bubble credentials in the store.
pub struct TokenReviewer {
    client: Client,
    namespaces: Namespaces,
    audience: String,
    clock: Clock,
    /// SHA-256 of accepted tokens: (bubble, actor, until when).
    accepted: Mutex<HashMap<String, (String, String, i64)>>,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("namespaces", &self.namespaces)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Whether `presented` has the shape of a JSON Web Token (three base64url parts, a JSON header): only those are
/// sent for review, so that a bubble credential never leaves the admin API.
fn is_jwt(presented: &str) -> bool {
    let parts: Vec<&str> = presented.split('.').collect();
    parts.len() == 3
        && presented.starts_with("eyJ")
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

/// The `exp` claim of a JWT the API server accepted (its signature is the API server's business).
fn expiry(token: &str) -> Option<i64> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?.get("exp")?.as_i64()
}

impl TokenReviewer {
    /// Reviews tokens for `audience` with `client`; `namespaces` maps bubbles to their namespace.
    pub fn new(client: Client, namespaces: Namespaces, audience: String) -> Self {
        Self::with_clock(client, namespaces, audience, system_clock())
    }

    /// The same with a clock of one's own (tests).
    pub fn with_clock(client: Client, namespaces: Namespaces, audience: String, clock: Clock) -> Self {
        Self { client, namespaces, audience, clock, accepted: Mutex::new(HashMap::new()) }
    }

    /// The audience tokens must be bound to.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    async fn review(&self, bubble: &str, token: &str) -> Result<BubbleAuth, AuthError> {
        let now = (self.clock)();
        let key = hash_token(token);
        if let Ok(mut accepted) = self.accepted.lock() {
            match accepted.get(&key) {
                Some((for_bubble, actor, until)) if *until > now && for_bubble == bubble => {
                    return Ok(BubbleAuth::Accepted { actor: actor.clone() });
                }
                Some((_, _, until)) if *until <= now => {
                    accepted.remove(&key);
                }
                _ => {}
            }
        }
        let review = TokenReview {
            spec: TokenReviewSpec { audiences: Some(vec![self.audience.clone()]), token: Some(token.to_owned()) },
            ..TokenReview::default()
        };
        let answer = Api::<TokenReview>::all(self.client.clone())
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| match e {
                kube::Error::Api(status) => AuthError::Unavailable(format!(
                    "the API server refused the TokenReview: {} ({}); does the admin API's ClusterRole allow \
                     creating tokenreviews?",
                    status.message, status.code
                )),
                other => AuthError::Unavailable(format!("TokenReview: {other}")),
            })?;
        let verdict = self.decide(bubble, answer.status.unwrap_or_default());
        if let BubbleAuth::Accepted { actor } = &verdict {
            let until = expiry(token).map_or(now + ACCEPTED_FOR_SECS, |exp| exp.min(now + ACCEPTED_FOR_SECS));
            if let Ok(mut accepted) = self.accepted.lock() {
                if accepted.len() >= CACHED {
                    accepted.retain(|_, (_, _, until)| *until > now);
                    if accepted.len() >= CACHED {
                        accepted.clear();
                    }
                }
                accepted.insert(key, (bubble.to_owned(), actor.clone(), until));
            }
        }
        Ok(verdict)
    }

    /// What the API server's answer means for `bubble`.
    fn decide(&self, bubble: &str, status: TokenReviewStatus) -> BubbleAuth {
        let refuse = |reason, subject: Option<&str>| {
            BubbleAuth::Refused(BubbleRefusal { reason, subject: subject.map(str::to_owned) })
        };
        if status.authenticated != Some(true) {
            let error = status.error.unwrap_or_default().to_ascii_lowercase();
            let reason = if error.contains("expired") {
                RefusalReason::Expired
            } else if error.contains("audience") {
                RefusalReason::WrongAudience
            } else {
                RefusalReason::InvalidToken
            };
            return refuse(reason, None);
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        if !status.audiences.unwrap_or_default().contains(&self.audience) {
            return refuse(RefusalReason::WrongAudience, Some(&username));
        }
        let Some((namespace, account)) =
            username.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':'))
        else {
            return refuse(RefusalReason::NotABubbleServer, Some(&username));
        };
        if namespace != self.namespaces.of(bubble) || account != service_account(bubble) {
            return refuse(RefusalReason::OtherBubble, Some(&username));
        }
        let pod = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get("authentication.kubernetes.io/pod-name"))
            .and_then(|names| names.first());
        let actor = match pod {
            Some(pod) => format!("serviceaccount:{namespace}:{account} pod={pod}"),
            None => format!("serviceaccount:{namespace}:{account}"),
        };
        BubbleAuth::Accepted { actor }
    }
}

impl BubbleAuthenticator for TokenReviewer {
    fn authenticate<'a>(&'a self, store: &'a Store, bubble: &'a str, presented: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            if is_jwt(presented) {
                self.review(bubble, presented).await
            } else {
                BubbleCredential::check(store, bubble, presented).await
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_tokens_shaped_as_jwts_are_sent_for_review() {
        let token = "eyJhbGciOiJSUzI1NiJ9.eyJleHAiOjE4MDAwMDAwMDB9.c2lnbmF0dXJl";
        assert!(is_jwt(token));
        assert_eq!(expiry(token), Some(1_800_000_000));
        // A bubble credential (43 base64url characters), and things that merely contain dots.
        assert!(!is_jwt("Hq3v0Yb2-8sKpLx1c9dE4fGhIjKlMnOpQrStUvWxYz0"));
        assert!(!is_jwt("eyJ.a.b.c"));
        assert!(!is_jwt("eyJa..c"));
        assert!(!is_jwt("eyJa.b c.d"));
        assert_eq!(expiry("eyJa.bm90IGpzb24.c"), None);
    }
}
