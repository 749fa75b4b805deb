//! Errors every endpoint answers: a stable code and a sentence saying what was wrong and what to do, as JSON;
//! request bodies whose errors are JSON too.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::{InviteRefusal, StoreError};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The refusal code an error response carries (the `error` field of its body), for the refusals counter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal(pub(crate) &'static str);

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
    /// The stable code (`invalid_request`, `no_role`, ...).
    pub fn code(&self) -> &'static str {
        self.code
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in at /auth/login, or send `Authorization: Bearer <token>` with a valid token",
        )
    }
}

/// Every error: a stable code and a sentence saying what was wrong and what to do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable, machine-readable code (`invalid_request`, `forbidden`, `csrf_required`, `invite_used`, ...).
    pub error: String,
    /// For people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(ErrorBody { error: self.code.to_owned(), message: self.message })).into_response();
        response.extensions_mut().insert(Refusal(self.code));
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict(what) => Self::new(StatusCode::CONFLICT, "conflict", format!("{what} already exists")),
            StoreError::InUse(why) => Self::new(StatusCode::CONFLICT, "in_use", why),
            StoreError::NotFound(what) => Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found")),
            StoreError::Invite(refusal) => {
                let (status, code) = match refusal {
                    InviteRefusal::Unknown => (StatusCode::NOT_FOUND, "invite_unknown"),
                    InviteRefusal::Expired => (StatusCode::GONE, "invite_expired"),
                    InviteRefusal::Used => (StatusCode::CONFLICT, "invite_used"),
                    InviteRefusal::KeyTaken => (StatusCode::CONFLICT, "key_already_enrolled"),
                    InviteRefusal::KeyInOtherBubble => (StatusCode::CONFLICT, "key_in_other_bubble"),
                    InviteRefusal::Revoked => (StatusCode::GONE, "invite_revoked"),
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
