//! Bubble-servers' ServiceAccount tokens reviewed against a scripted API server: the TokenReview the admin API
//! sends (the token, the admin API's audience), the API server's answers it accepts (this bubble's ServiceAccount
//! in this bubble's namespace) and each it refuses, what it remembers, and what it never sends (a credential).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;
use peerbubble_admin_api::control::{AuthError, BubbleAuth, BubbleAuthenticator, BubbleRefusal, RefusalReason};
use peerbubble_admin_api::store::Store;
use peerbubble_admin_api::token::hash_token;
use peerbubble_control_k8s::{ACCEPTED_FOR_SECS, Namespaces, TokenReviewer};
use serde_json::{Value, json};

mod support;

use support::ApiServer;

const AUDIENCE: &str = "pb-peerbubble-admin-api.peerbubble";
const REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const NOW: i64 = 1_800_000_000;

/// A token as the kubelet projects one: only its shape and `exp` matter here (the API server checks it).
fn token(name: &str, exp: i64) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{}", b64(&json!({"alg": "RS256"})), b64(&json!({"exp": exp, "sub": name})), "c2ln")
}

struct Rig {
    reviewer: Arc<TokenReviewer>,
    api: ApiServer,
    now: Arc<AtomicI64>,
    store: Store,
}

async fn rig(namespaces: &str) -> Rig {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let now = Arc::new(AtomicI64::new(NOW));
    let clock = now.clone();
    let reviewer = TokenReviewer::with_clock(
        client,
        Namespaces::new(namespaces).unwrap(),
        AUDIENCE.to_owned(),
        Arc::new(move || clock.load(Ordering::SeqCst)),
    );
    let store = Store::connect("sqlite::memory:").await.unwrap();
    Rig { reviewer: Arc::new(reviewer), api: ApiServer(handle), now, store }
}

impl Rig {
    /// Asks whether `presented` serves `bubble` while the API server answers the review with `status`; returns
    /// the verdict and the review that was sent.
    async fn review(&mut self, bubble: &str, presented: &str, status: Value) -> (Result<BubbleAuth, AuthError>, Value) {
        let (reviewer, store) = (self.reviewer.clone(), self.store.clone());
        let (bubble, presented) = (bubble.to_owned(), presented.to_owned());
        let asked = tokio::spawn(async move { reviewer.authenticate(&store, &bubble, &presented).await });
        let call = self.api.expect("POST", REVIEWS).await;
        let sent = call.body.clone();
        let mut answer = sent.clone();
        answer["status"] = status;
        call.reply(201, &answer);
        (asked.await.unwrap(), sent)
    }

    /// The verdict without any request to the API server.
    async fn remembered(&mut self, bubble: &str, presented: &str) -> Result<BubbleAuth, AuthError> {
        let verdict = self.reviewer.authenticate(&self.store, bubble, presented).await;
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), self.api.0.next_request()).await.is_err(),
            "a request was made"
        );
        verdict
    }
}

fn service_account(namespace: &str, name: &str, pod: Option<&str>) -> Value {
    let mut user = json!({"username": format!("system:serviceaccount:{namespace}:{name}"),
        "uid": "4b1c", "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}")]});
    if let Some(pod) = pod {
        user["extra"] = json!({"authentication.kubernetes.io/pod-name": [pod]});
    }
    json!({"authenticated": true, "audiences": [AUDIENCE], "user": user})
}

fn refused(reason: RefusalReason, subject: Option<&str>) -> BubbleAuth {
    BubbleAuth::Refused(BubbleRefusal { reason, subject: subject.map(str::to_owned) })
}

#[tokio::test]
async fn a_bubble_servers_token_is_reviewed_for_the_admin_apis_audience_and_mapped_to_its_bubble() {
    let mut rig = rig("mission-{bubble}").await;
    let presented = token("ops", NOW + 600);
    let (verdict, sent) =
        rig.review("ops", &presented, service_account("mission-ops", "ops-bubble", Some("ops-7d9f-x2"))).await;
    assert_eq!(
        verdict.unwrap(),
        BubbleAuth::Accepted { actor: "serviceaccount:mission-ops:ops-bubble pod=ops-7d9f-x2".into() }
    );
    assert_eq!(sent["kind"], "TokenReview");
    assert_eq!(sent["spec"], json!({"token": presented, "audiences": [AUDIENCE]}));
}

#[tokio::test]
async fn tokens_of_other_bubbles_other_namespaces_and_other_users_are_refused_with_whose_they_are() {
    let mut rig = rig("mission-{bubble}").await;
    let cases = [
        (
            service_account("mission-relief", "relief-bubble", None),
            RefusalReason::OtherBubble,
            "system:serviceaccount:mission-relief:relief-bubble",
        ),
        // The right name in another namespace (someone who may create ServiceAccounts there).
        (
            service_account("default", "ops-bubble", None),
            RefusalReason::OtherBubble,
            "system:serviceaccount:default:ops-bubble",
        ),
        // Another ServiceAccount of the bubble's own namespace.
        (
            service_account("mission-ops", "default", None),
            RefusalReason::OtherBubble,
            "system:serviceaccount:mission-ops:default",
        ),
        (
            json!({"authenticated": true, "audiences": [AUDIENCE], "user": {"username": "alice@ministry.example"}}),
            RefusalReason::NotABubbleServer,
            "alice@ministry.example",
        ),
    ];
    for (i, (status, reason, subject)) in cases.into_iter().enumerate() {
        let (verdict, _) = rig.review("ops", &token(&format!("t{i}"), NOW + 600), status).await;
        assert_eq!(verdict.unwrap(), refused(reason, Some(subject)), "case {i}");
    }
}

#[tokio::test]
async fn expired_tokens_tokens_for_another_audience_and_forged_ones_are_refused() {
    let mut rig = rig("missions").await;
    let (verdict, _) = rig
        .review(
            "ops",
            &token("a", NOW - 5),
            json!({"authenticated": false,
            "error": "[invalid bearer token, service account token has expired]"}),
        )
        .await;
    assert_eq!(verdict.unwrap(), refused(RefusalReason::Expired, None));
    let (verdict, _) = rig
        .review("ops", &token("b", NOW + 600), json!({"authenticated": false,
            "error": "[invalid bearer token, token audiences [\"https://kubernetes.default.svc\"] is invalid for the target audiences [\"pb-peerbubble-admin-api.peerbubble\"]]"}))
        .await;
    assert_eq!(verdict.unwrap(), refused(RefusalReason::WrongAudience, None));
    // Authenticated, but not for our audience (an API server that ignores the requested audiences).
    let mut other = service_account("missions", "ops-bubble", None);
    other["audiences"] = json!(["https://kubernetes.default.svc"]);
    let (verdict, _) = rig.review("ops", &token("c", NOW + 600), other).await;
    assert_eq!(
        verdict.unwrap(),
        refused(RefusalReason::WrongAudience, Some("system:serviceaccount:missions:ops-bubble"))
    );
    let (verdict, _) = rig
        .review(
            "ops",
            &token("d", NOW + 600),
            json!({"authenticated": false,
            "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}),
        )
        .await;
    assert_eq!(verdict.unwrap(), refused(RefusalReason::InvalidToken, None));
    // Refusals are not remembered: the same token is reviewed again.
    let (verdict, _) = rig.review("ops", &token("d", NOW + 600), service_account("missions", "ops-bubble", None)).await;
    assert!(matches!(verdict.unwrap(), BubbleAuth::Accepted { .. }));
}

#[tokio::test]
async fn an_accepted_token_is_remembered_for_a_minute_never_past_its_expiry_and_only_for_its_bubble() {
    let mut rig = rig("missions").await;
    let presented = token("ops", NOW + 600);
    let (verdict, _) = rig.review("ops", &presented, service_account("missions", "ops-bubble", None)).await;
    assert!(matches!(verdict.unwrap(), BubbleAuth::Accepted { .. }));
    // Polls within the minute cost no review.
    rig.now.store(NOW + ACCEPTED_FOR_SECS - 1, Ordering::SeqCst);
    assert!(matches!(rig.remembered("ops", &presented).await.unwrap(), BubbleAuth::Accepted { .. }));
    // For another bubble it is reviewed (and refused).
    let (verdict, _) = rig.review("relief", &presented, service_account("missions", "ops-bubble", None)).await;
    assert_eq!(
        verdict.unwrap(),
        refused(RefusalReason::OtherBubble, Some("system:serviceaccount:missions:ops-bubble"))
    );
    // After a minute it is reviewed again: a deleted pod's token stops working within a minute.
    rig.now.store(NOW + ACCEPTED_FOR_SECS, Ordering::SeqCst);
    let (verdict, _) = rig
        .review(
            "ops",
            &presented,
            json!({"authenticated": false, "error": "[invalid bearer token, pod \"ops-1\" not found]"}),
        )
        .await;
    assert_eq!(verdict.unwrap(), refused(RefusalReason::InvalidToken, None));

    // A token that expires sooner than a minute is remembered only until then.
    let short = token("short", NOW + ACCEPTED_FOR_SECS + 10);
    let (verdict, _) = rig.review("ops", &short, service_account("missions", "ops-bubble", None)).await;
    assert!(matches!(verdict.unwrap(), BubbleAuth::Accepted { .. }));
    rig.now.store(NOW + ACCEPTED_FOR_SECS + 10, Ordering::SeqCst);
    let (verdict, _) =
        rig.review("ops", &short, json!({"authenticated": false, "error": "service account token has expired"})).await;
    assert_eq!(verdict.unwrap(), refused(RefusalReason::Expired, None));
}

#[tokio::test]
async fn an_api_server_that_cannot_review_is_unavailable_not_a_refusal() {
    let mut rig = rig("missions").await;
    let (reviewer, store) = (rig.reviewer.clone(), rig.store.clone());
    let presented = token("ops", NOW + 600);
    let asked = tokio::spawn(async move { reviewer.authenticate(&store, "ops", &presented).await });
    rig.api.expect("POST", REVIEWS).await.refuse(403, "tokenreviews.authentication.k8s.io is forbidden");
    match asked.await.unwrap() {
        Err(AuthError::Unavailable(why)) => assert!(why.contains("forbidden") && why.contains("ClusterRole"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_bubble_credential_is_checked_in_the_store_and_never_sent_for_review() {
    let mut rig = rig("missions").await;
    let credential = "Hq3v0Yb2-8sKpLx1c9dE4fGhIjKlMnOpQrStUvWxYz0";
    rig.store.create_bubble("ops", "Operations", &hash_token(credential), NOW).await.unwrap();
    let verdict = rig.remembered("ops", credential).await;
    assert_eq!(verdict.unwrap(), BubbleAuth::Accepted { actor: "bubble-server".into() });
    // Another bubble's credential, and a wrong one: refused without any request either.
    assert_eq!(rig.remembered("relief", credential).await.unwrap(), refused(RefusalReason::UnknownCredential, None));
    let verdict = rig.remembered("ops", "Xq3v0Yb2-8sKpLx1c9dE4fGhIjKlMnOpQrStUvWxYz0").await;
    assert_eq!(verdict.unwrap(), refused(RefusalReason::UnknownCredential, None));
    drop(rig.reviewer);
    assert!(rig.api.0.next_request().await.is_none());
}
