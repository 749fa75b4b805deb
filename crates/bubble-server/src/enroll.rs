//! Enrollment on the bubble's own origin. In a cluster a member opens the invite link on the bubble's address
//! (its Ingress, or its own TLS listener), where the browser client loads and later signals; its enrollment
//! request goes to the same origin, and the bubble-server passes it to the admin API it follows, naming the
//! bubble it serves ([`ENROLL_BUBBLE_HEADER`]) so that the admin API refuses an invite of another bubble.
//! Only `POST /api/v1/enroll` is passed on: nothing else of the admin API is reachable through a bubble.
//! The request and the answer carry public keys and an invite token only.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use peerbubble_proto::enroll::ENROLL_BUBBLE_HEADER;

/// An enrollment request is a token, a public key and a signature: far below this.
const MAX_ENROLL_BYTES: usize = 8 * 1024;
/// The admin API's answers to an enrollment are as small.
const MAX_ANSWER_BYTES: usize = 16 * 1024;

#[derive(Clone)]
struct Forward {
    client: reqwest::Client,
    url: String,
    bubble: HeaderValue,
}

/// Routes `POST /api/v1/enroll` to the admin API at `admin_api` for `bubble`.
pub fn enroll_forwarding(admin_api: &str, bubble: &str) -> Result<Router, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        // Enrollments are rare: a fresh connection each time, so that an admin API restarted elsewhere is found.
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let bubble = HeaderValue::from_str(bubble).map_err(|_| format!("bubble id {bubble:?} is not a header value"))?;
    let url = format!("{}/api/v1/enroll", admin_api.trim_end_matches('/'));
    Ok(Router::new()
        .route("/api/v1/enroll", post(forward))
        .layer(DefaultBodyLimit::max(MAX_ENROLL_BYTES))
        .with_state(Forward { client, url, bubble }))
}

fn refusal(status: StatusCode, error: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": error, "message": message });
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

async fn forward(State(forward): State<Forward>, body: Bytes) -> Response {
    let sent = forward
        .client
        .post(&forward.url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(ENROLL_BUBBLE_HEADER, forward.bubble.clone())
        .body(body)
        .send()
        .await;
    let unavailable = || {
        refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            "directory_unavailable",
            "the organisation's directory cannot be reached right now; your invite is still valid, try again in a \
             minute",
        )
    };
    let mut answer = match sent {
        Ok(answer) => answer,
        Err(err) => {
            tracing::warn!(error = %err, "enrollment not passed to the admin API");
            return unavailable();
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut bytes = Vec::new();
    loop {
        match answer.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() <= MAX_ANSWER_BYTES => bytes.extend_from_slice(&chunk),
            Ok(Some(_)) => {
                tracing::warn!("the admin API's answer to an enrollment is larger than {MAX_ANSWER_BYTES} bytes");
                return refusal(StatusCode::BAD_GATEWAY, "bad_gateway", "the directory answered something unexpected");
            }
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(error = %err, "the admin API's answer to an enrollment was cut");
                return unavailable();
            }
        }
    }
    (status, [(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes).into_response()
}
