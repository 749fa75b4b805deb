//! The control plane: what else must happen when an administrator creates a bubble or a category. All-in-one
//! (`peerbubble up`), bubbles are local: the in-process bubble-server follows the database, nothing more to do.
//! In a cluster, the Kubernetes implementation creates the `Bubble` and `Category` resources that the operator
//! reconciles into per-bubble deployments; it lives with the operator (crates/crd), not here, so that the admin
//! API does not depend on Kubernetes client code.
//!
//! Likewise for how a bubble-server proves which bubble it serves ([`BubbleAuthenticator`]): the bubble
//! credential made when the bubble was created, or, in a cluster, the pod's projected service-account token
//! checked with a TokenReview (with the operator).

use std::future::Future;
use std::pin::Pin;

use crate::store::{Store, StoreError};
use crate::token::{hash_token, hashes_equal};

/// A bubble as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BubbleSpec {
    /// Id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// The credential its bubble-servers present, in clear only when the bubble is created (the store keeps its
    /// hash): a cluster's control plane puts it where the bubble-servers read it.
    pub credential: Option<Credential>,
}

/// A bubble credential in clear, on its way to where bubble-servers read it. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential(String);

impl Credential {
    /// Wraps a credential.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// The credential itself, for the one place it is written to.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// A category as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CategorySpec {
    /// Bubble id.
    pub bubble: String,
    /// Category id.
    pub id: String,
    /// Display name.
    pub display_name: String,
    /// Categories its members may see.
    pub sees: Vec<String>,
}

/// The control plane refused or could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("control plane: {0}")]
pub struct ControlError(pub String);

/// A boxed future (the trait is used as `dyn`).
pub type ControlFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ControlError>> + Send + 'a>>;

/// What the platform reports about a bubble it runs (in a cluster: the Bubble resource's status).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PlatformStatus {
    /// True when every part is ready (the `Ready` condition).
    pub ready: bool,
    /// Each condition the platform reports: Ready, SignalingReady, TurnReady, PolicyApplied, …
    pub conditions: Vec<PlatformCondition>,
    /// Where members connect for signaling, when the platform says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signaling: Option<String>,
}

/// One condition of a bubble on its platform.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct PlatformCondition {
    /// `Ready`, `SignalingReady`, `TurnReady`, `PolicyApplied`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// True or not.
    pub status: bool,
    /// A machine-readable reason (`SecretMissing`, `WaitingForReplicas`, …).
    pub reason: String,
    /// What the platform says, for people.
    pub message: String,
}

/// A boxed answer with the platform's status of a bubble (None: nothing to report, or unreachable).
pub type StatusFuture<'a> = Pin<Box<dyn Future<Output = Option<PlatformStatus>> + Send + 'a>>;

/// What the admin API asks of the platform after it stored a change.
pub trait ControlPlane: Send + Sync + std::fmt::Debug {
    /// A short name for logs (`local`, `kubernetes`).
    fn name(&self) -> &'static str;
    /// A bubble was created.
    fn bubble_created<'a>(&'a self, bubble: &'a BubbleSpec) -> ControlFuture<'a>;
    /// A category was created or changed.
    fn category_changed<'a>(&'a self, category: &'a CategorySpec) -> ControlFuture<'a>;
    /// A category was deleted.
    fn category_deleted<'a>(&'a self, bubble: &'a str, id: &'a str) -> ControlFuture<'a>;
    /// A bubble was deleted (its directory is gone from the store): stop serving it.
    fn bubble_deleted<'a>(&'a self, bubble: &'a str) -> ControlFuture<'a>;
    /// Where members of `bubble` open its web client, when the platform serves bubbles at their own addresses
    /// (a micro-node's port per bubble); None for the API's public URL.
    fn bubble_origin(&self, _bubble: &str) -> Option<String> {
        None
    }
    /// What the platform reports about the bubble it runs, if anything (the console shows it).
    fn bubble_status<'a>(&'a self, _bubble: &'a str) -> StatusFuture<'a> {
        Box::pin(async { None })
    }
}

/// All-in-one: bubbles are served by this process from the database.
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl ControlPlane for Local {
    fn name(&self) -> &'static str {
        "local"
    }
    fn bubble_created<'a>(&'a self, _bubble: &'a BubbleSpec) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn category_changed<'a>(&'a self, _category: &'a CategorySpec) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn category_deleted<'a>(&'a self, _bubble: &'a str, _id: &'a str) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn bubble_deleted<'a>(&'a self, _bubble: &'a str) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
}

/// Why a bubble-server was refused: audited with the subject, and named in the 401 it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// Not the credential of this bubble (nor a token).
    UnknownCredential,
    /// A valid token of the ServiceAccount of another bubble (or of this bubble's name in another namespace).
    OtherBubble,
    /// A token that has expired.
    Expired,
    /// A token for another audience than the admin API's.
    WrongAudience,
    /// A token the platform does not recognise (bad signature, deleted ServiceAccount or pod).
    InvalidToken,
    /// A valid token of someone who is not a bubble-server's ServiceAccount.
    NotABubbleServer,
}

impl RefusalReason {
    /// The code audited and sent back.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCredential => "unknown_credential",
            Self::OtherBubble => "other_bubble",
            Self::Expired => "token_expired",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidToken => "invalid_token",
            Self::NotABubbleServer => "not_a_bubble_server",
        }
    }
}

/// A refusal: why, and whose token it was when the platform could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BubbleRefusal {
    /// Why.
    pub reason: RefusalReason,
    /// Who the token belongs to (`system:serviceaccount:<namespace>:<name>`), never the token itself.
    pub subject: Option<String>,
}

impl BubbleRefusal {
    /// A refusal without a known subject.
    pub fn new(reason: RefusalReason) -> Self {
        Self { reason, subject: None }
    }
}

/// What an authenticator decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BubbleAuth {
    /// The sender serves the bubble; `actor` names it in logs.
    Accepted {
        /// `bubble-server`, or the ServiceAccount (and pod) a token was issued to.
        actor: String,
    },
    /// It does not.
    Refused(BubbleRefusal),
}

/// Why an authenticator could not decide.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The platform that checks tokens cannot be reached or did not answer: nobody is refused for it.
    #[error("tokens cannot be checked now: {0}")]
    Unavailable(String),
}

/// A boxed answer of an authenticator.
pub type AuthFuture<'a> = Pin<Box<dyn Future<Output = Result<BubbleAuth, AuthError>> + Send + 'a>>;

/// Decides whether `presented` (the bearer token of a request) proves that its sender serves `bubble`.
pub trait BubbleAuthenticator: Send + Sync + std::fmt::Debug {
    /// Accepted when it does; an unknown bubble is refused like a wrong credential.
    fn authenticate<'a>(&'a self, store: &'a Store, bubble: &'a str, presented: &'a str) -> AuthFuture<'a>;
}

/// The bubble credential returned once when the bubble was created; only its SHA-256 is stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct BubbleCredential;

impl BubbleCredential {
    /// Checks `presented` against the stored hash of `bubble`'s credential.
    pub async fn check(store: &Store, bubble: &str, presented: &str) -> Result<BubbleAuth, AuthError> {
        let expected = store.bubble_credential_hash(bubble).await?;
        Ok(if expected.is_some_and(|expected| hashes_equal(&hash_token(presented), &expected)) {
            BubbleAuth::Accepted { actor: "bubble-server".to_owned() }
        } else {
            BubbleAuth::Refused(BubbleRefusal::new(RefusalReason::UnknownCredential))
        })
    }
}

impl BubbleAuthenticator for BubbleCredential {
    fn authenticate<'a>(&'a self, store: &'a Store, bubble: &'a str, presented: &'a str) -> AuthFuture<'a> {
        Box::pin(Self::check(store, bubble, presented))
    }
}
