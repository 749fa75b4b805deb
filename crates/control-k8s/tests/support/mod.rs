//! A scripted Kubernetes API server (tower-test, as the operator's reconcile tests): each request the client makes
//! is checked and answered in turn.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

pub struct ApiServer(pub Handle<Request<Body>, Response<Body>>);

pub struct Call {
    pub path: String,
    pub query: String,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl ApiServer {
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .expect("no further request")
            .expect("the client was dropped");
        let method_seen = request.method().to_string();
        let path_seen = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        assert_eq!(format!("{method_seen} {path_seen}"), format!("{method} {path}"), "unexpected request");
        Call { path: path_seen, query, body, send }
    }

    /// A server-side apply by the admin API's field manager; answers with what was applied.
    pub async fn expect_apply(&mut self, path: &str) -> Value {
        let call = self.expect("PATCH", path).await;
        assert!(call.query.contains("fieldManager=peerbubble-admin-api"), "{}: {}", call.path, call.query);
        assert!(call.query.contains("force=true"), "{}", call.query);
        let body = call.body.clone();
        call.reply(200, &body);
        body
    }
}

impl Call {
    pub fn reply(self, status: u16, body: &Value) {
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap();
        self.send.send_response(response);
    }

    pub fn refuse(self, code: u16, message: &str) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
            "reason": "Invalid", "code": code});
        self.reply(code, &status);
    }
}
