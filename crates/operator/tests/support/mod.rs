//! A scripted Kubernetes API server for reconcile tests, the way kube-rs's controller-rs does it: the client
//! talks to a tower-test mock, and the test answers each request in the order the reconciler must make them.
//! A call the script does not expect fails the test; a missing call leaves the reconcile waiting, and the
//! test's timeout fails it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{Request, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::client::Body;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource as _};
use peerbubble_crd::{Bubble, BubbleSpec, Category, CategorySpec};
use peerbubble_operator::Context;
use peerbubble_operator::controller::FINALIZER;
use peerbubble_operator::metrics::Metrics;
use peerbubble_operator::render::Settings;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

pub const NS: &str = "crisis";

pub fn settings() -> Settings {
    Settings {
        image: "registry.local/peerbubble:test".into(),
        admin_api_url: "http://peerbubble-admin-api.peerbubble.svc:8080".into(),
        admin_api_namespace: "peerbubble".into(),
        bubble_token_audience: None,
        ingress_class: None,
    }
}

/// A Bubble as the API server hands it out (name, namespace, uid, generation), with the finalizer already on.
pub fn bubble(name: &str, spec: Value) -> Bubble {
    let spec: BubbleSpec = serde_json::from_value(spec).unwrap();
    let mut bubble = Bubble::new(name, spec);
    bubble.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NS.into()),
        uid: Some(format!("uid-{name}")),
        generation: Some(1),
        resource_version: Some("1".into()),
        finalizers: Some(vec![FINALIZER.into()]),
        ..ObjectMeta::default()
    };
    bubble
}

pub fn category(name: &str, bubble: &str, sees: &[&str]) -> Category {
    let spec = CategorySpec {
        bubble: bubble.into(),
        display_name: format!("{name} team"),
        sees: sees.iter().map(|s| (*s).to_owned()).collect(),
    };
    let mut category = Category::new(name, spec);
    category.metadata.namespace = Some(NS.into());
    category.metadata.uid = Some(format!("uid-cat-{name}"));
    category.metadata.generation = Some(1);
    category
}

pub struct Harness {
    pub ctx: Arc<Context>,
    pub api: ApiServer,
    pub categories: reflector::store::Writer<Category>,
    pub registry: Registry,
}

pub fn harness(categories: Vec<Category>) -> Harness {
    harness_with(categories, settings())
}

/// The same with settings of one's own.
pub fn harness_with(categories: Vec<Category>, settings: Settings) -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, mut writer): (Store<Category>, _) = reflector::store();
    for category in categories {
        writer.apply_watcher_event(&watcher::Event::Apply(category));
    }
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let ctx = Arc::new(Context::new(client, settings, store, metrics, Some("operator-0".into())));
    Harness { ctx, api: ApiServer(handle), categories: writer, registry }
}

pub struct ApiServer(pub Handle<Request<Body>, Response<Body>>);

pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl ApiServer {
    pub async fn next(&mut self) -> Call {
        let (request, send) = tokio::time::timeout(Duration::from_secs(10), self.0.next_request())
            .await
            .expect("the reconciler made no further request")
            .expect("the client was dropped");
        let method = request.method().to_string();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        Call { method, path, query, body, send }
    }

    /// The next request, which must be `method path`.
    pub async fn expect(&mut self, method: &str, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(format!("{} {}", call.method, call.path), format!("{method} {path}"), "unexpected request");
        call
    }

    /// The next request must be a server-side apply of `path` by the operator's field manager; it is echoed.
    pub async fn expect_apply(&mut self, path: &str) -> Value {
        let call = self.expect("PATCH", path).await;
        assert!(call.query.contains("fieldManager=peerbubble-operator"), "not our field manager: {}", call.query);
        assert!(call.query.contains("force=true"), "apply without force: {}", call.query);
        let body = call.body.clone();
        call.echo();
        body
    }

    /// Like [`Self::expect_apply`], with the answer changed by `answer` (server-set status, say).
    pub async fn expect_apply_with(&mut self, path: &str, answer: impl FnOnce(&mut Value)) -> Value {
        let call = self.expect("PATCH", path).await;
        assert!(call.query.contains("fieldManager=peerbubble-operator"), "not our field manager: {}", call.query);
        let body = call.body.clone();
        let mut reply = body.clone();
        answer(&mut reply);
        call.reply(200, &reply);
        body
    }

    /// An Event must be published about the object (created, or a repeat counted in its series); returns
    /// (type, reason, note).
    pub async fn expect_event(&mut self) -> (String, String, String) {
        let events = format!("/apis/events.k8s.io/v1/namespaces/{NS}/events");
        let call = self.next().await;
        let created = call.method == "POST" && call.path == events;
        let repeated = call.method == "PATCH" && call.path.starts_with(&format!("{events}/"));
        assert!(created || repeated, "expected an Event, got {} {}", call.method, call.path);
        let event = call.body.clone();
        call.echo();
        let text = |key: &str| event[key].as_str().unwrap_or_default().to_owned();
        (text("type"), text("reason"), text("note"))
    }
}

impl Call {
    pub fn reply(self, status: u16, body: &Value) {
        let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(body).unwrap())).unwrap();
        self.send.send_response(response);
    }

    /// Answers with the request body (what an apply returns, give or take server fields).
    pub fn echo(self) {
        let body = self.body.clone();
        self.reply(200, &body);
    }

    /// Answers a status patch with the whole object carrying the patched status, as the API server does;
    /// returns the status.
    pub fn status_of(self, object: &impl serde::Serialize) -> Value {
        let status = self.body["status"].clone();
        let mut whole = serde_json::to_value(object).unwrap();
        whole["status"] = status.clone();
        self.reply(200, &whole);
        status
    }

    pub fn not_found(self) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
            "message": "not found", "code": 404});
        self.reply(404, &status);
    }

    pub fn fail(self, code: u16, reason: &str) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
            "message": format!("{reason} (test)"), "code": code});
        self.reply(code, &status);
    }
}

pub fn ns_path(kind_path: &str, name: &str) -> String {
    format!("{kind_path}/namespaces/{NS}/{name}")
}

pub fn core(resource: &str, name: &str) -> String {
    ns_path("/api/v1", &format!("{resource}/{name}"))
}

pub fn bubbles(name: &str) -> String {
    ns_path("/apis/peerbubble.io/v1alpha1", &format!("bubbles/{name}"))
}

pub fn categories(name: &str) -> String {
    ns_path("/apis/peerbubble.io/v1alpha1", &format!("categories/{name}"))
}

pub fn decode(b64: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(b64.as_str().unwrap()).unwrap()
}

/// The condition `type_` in a status body.
pub fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// Asserts that `object` is owned (as controller) by `bubble`.
pub fn owner_of(object: &Value, bubble: &Bubble) {
    let owner = &object["metadata"]["ownerReferences"][0];
    assert_eq!(owner["uid"], json!(bubble.meta().uid), "owner reference");
    assert_eq!(owner["controller"], json!(true));
}
