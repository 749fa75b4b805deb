//! The Kubernetes control plane against a scripted API server (tower-test, as the operator's reconcile tests): the
//! requests it makes for each admin API change, in order, with their field manager and bodies; the API server's
//! refusals reaching the administrator in its own words; ids that cannot name a resource refused before any call.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use peerbubble_admin_api::control::{BubbleSpec, CategorySpec, ControlPlane, Credential};
use peerbubble_control_k8s::{Kubernetes, Namespaces};
use serde_json::json;

mod support;

use support::ApiServer;

fn control(namespaces: &str) -> (Kubernetes, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    (Kubernetes::new(client, Namespaces::new(namespaces).unwrap()), ApiServer(handle))
}

const CRD: &str = "/apis/peerbubble.io/v1alpha1/namespaces/missions";

/// When bubble-servers present ServiceAccount tokens, no credential Secret is written or deleted (the admin
/// API's Role has no Secret rule then): only the Bubble and its Categories.
#[tokio::test]
async fn with_service_account_tokens_a_bubble_is_applied_and_deleted_without_a_credential_secret() {
    let (control, mut api) = control("missions");
    let control = control.with_service_account_tokens();
    assert_eq!(control.rbac_rules(), &peerbubble_control_k8s::TOKEN_RBAC_RULES[..]);
    let spec = BubbleSpec {
        id: "ops".into(),
        display_name: "Operations".into(),
        credential: Some(Credential::new("s3cret-credential".into())),
    };
    let created = tokio::spawn(async move {
        let result = control.bubble_created(&spec).await;
        (control, result)
    });
    let bubble = api.expect_apply(&format!("{CRD}/bubbles/ops")).await;
    assert_eq!(bubble["kind"], "Bubble", "the Bubble comes first: no Secret before it");
    let (control, result) = created.await.unwrap();
    result.unwrap();
    let gone = tokio::spawn(async move { control.bubble_deleted("ops").await });
    api.expect("DELETE", &format!("{CRD}/bubbles/ops"))
        .await
        .reply(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
    api.expect("DELETE", &format!("{CRD}/categories"))
        .await
        .reply(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
    gone.await.unwrap().unwrap();
    assert!(api.0.next_request().await.is_none(), "a request after the Categories (a Secret?)");
}

#[tokio::test]
async fn a_bubble_and_its_categories_are_applied_then_deleted_with_their_secret() {
    let (control, mut api) = control("missions");
    let spec = BubbleSpec {
        id: "ops".into(),
        display_name: "Operations".into(),
        credential: Some(Credential::new("s3cret-credential".into())),
    };
    assert!(!format!("{spec:?}").contains("s3cret"), "the credential shows in Debug: {spec:?}");
    let created = tokio::spawn(async move {
        let result = control.bubble_created(&spec).await;
        (control, result)
    });
    let secret = api.expect_apply("/api/v1/namespaces/missions/secrets/ops-credential").await;
    assert_eq!(secret["stringData"]["credential"], "s3cret-credential");
    assert_eq!(secret["metadata"]["labels"]["peerbubble.io/bubble"], "ops");
    let bubble = api.expect_apply(&format!("{CRD}/bubbles/ops")).await;
    assert_eq!(bubble["spec"], json!({"displayName": "Operations"}));
    assert_eq!(bubble["kind"], "Bubble");
    let (control, result) = created.await.unwrap();
    result.unwrap();

    let category = CategorySpec {
        bubble: "ops".into(),
        id: "command".into(),
        display_name: "Command".into(),
        sees: vec!["medics".into()],
    };
    let changed = tokio::spawn(async move {
        let result = control.category_changed(&category).await;
        (control, result)
    });
    let applied = api.expect_apply(&format!("{CRD}/categories/command")).await;
    assert_eq!(applied["spec"], json!({"bubble": "ops", "displayName": "Command", "sees": ["medics"]}));
    let (control, result) = changed.await.unwrap();
    result.unwrap();

    // Deleting a category the cluster never had is done, not an error.
    let deleted = tokio::spawn(async move {
        let result = control.category_deleted("ops", "medics").await;
        (control, result)
    });
    api.expect("DELETE", &format!("{CRD}/categories/medics")).await.refuse(404, "categories \"medics\" not found");
    let (control, result) = deleted.await.unwrap();
    result.unwrap();

    // The bubble: its Bubble, then its Categories by label, then its credential.
    let gone = tokio::spawn(async move { control.bubble_deleted("ops").await });
    let call = api.expect("DELETE", &format!("{CRD}/bubbles/ops")).await;
    call.reply(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
    let call = api.expect("DELETE", &format!("{CRD}/categories")).await;
    assert!(call.query.contains("labelSelector=peerbubble.io%2Fbubble%3Dops"), "{}", call.query);
    call.reply(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
    api.expect("DELETE", "/api/v1/namespaces/missions/secrets/ops-credential").await.refuse(404, "not found");
    gone.await.unwrap().unwrap();
}

#[tokio::test]
async fn refusals_reach_the_administrator_in_the_api_servers_words() {
    let (control, mut api) = control("mission-{bubble}");
    let spec = BubbleSpec { id: "relief".into(), display_name: "Relief".into(), credential: None };
    let created = tokio::spawn(async move { control.bubble_created(&spec).await });
    // No credential (a bubble-server outside the cluster keeps its own): only the Bubble, in its own namespace.
    let call = api.expect("PATCH", "/apis/peerbubble.io/v1alpha1/namespaces/mission-relief/bubbles/relief").await;
    call.refuse(422, "admission webhook \"policy.example\" denied the request: bubbles need an owner label");
    let err = created.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("denied the request: bubbles need an owner label"), "{err}");
}

#[tokio::test]
async fn ids_that_cannot_name_a_resource_are_refused_before_any_request() {
    let (control, mut api) = control("missions");
    let long = "a".repeat(64);
    let spec = BubbleSpec { id: long.clone(), display_name: "Long".into(), credential: None };
    let err = control.bubble_created(&spec).await.unwrap_err();
    assert!(err.to_string().contains("cannot name a Kubernetes resource"), "{err}");
    let category = CategorySpec { bubble: "ops".into(), id: "-x".into(), display_name: "X".into(), sees: vec![] };
    assert!(control.category_changed(&category).await.is_err());
    drop(control);
    assert!(api.0.next_request().await.is_none(), "a request was made for an invalid name");
}

#[tokio::test]
async fn the_bubbles_conditions_and_endpoint_come_back_from_its_status() {
    let (control, mut api) = control("missions");
    let read = tokio::spawn(async move {
        let status = control.bubble_status("ops").await;
        let missing = control.bubble_status("gone").await;
        (status, missing)
    });
    let condition = |kind: &str, status: &str, reason: &str, message: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-12-05T10:00:00Z"})
    };
    let bubble = json!({
        "apiVersion": "peerbubble.io/v1alpha1", "kind": "Bubble",
        "metadata": {"name": "ops", "namespace": "missions"},
        "spec": {"displayName": "Operations"},
        "status": {
            "conditions": [
                condition("Ready", "False", "SecretMissing", "Secret ops-credential is missing"),
                condition("SignalingReady", "False", "SecretMissing", "Secret ops-credential is missing"),
                condition("TurnReady", "True", "Assigned", "TURN at 203.0.113.7"),
            ],
            "endpoints": {"signaling": "wss://ops.example/v1/signal"},
            "readyReplicas": 0,
        },
    });
    api.expect("GET", &format!("{CRD}/bubbles/ops")).await.reply(200, &bubble);
    api.expect("GET", &format!("{CRD}/bubbles/gone")).await.refuse(404, "bubbles.peerbubble.io \"gone\" not found");
    let (status, missing) = read.await.unwrap();
    let status = status.expect("a status");
    assert!(!status.ready);
    assert_eq!(status.signaling.as_deref(), Some("wss://ops.example/v1/signal"));
    let signaling = status.conditions.iter().find(|c| c.kind == "SignalingReady").unwrap();
    assert_eq!((signaling.status, signaling.reason.as_str()), (false, "SecretMissing"));
    assert!(status.conditions.iter().any(|c| c.kind == "TurnReady" && c.status));
    assert_eq!(missing, None, "a Bubble the cluster does not have has no status");
}
