//! The admin API over real HTTP on loopback, on SQLite and on PostgreSQL (127.0.0.1:5432; skipped with a
//! message where no PostgreSQL answers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::sync::atomic::Ordering;

use peerbubble_admin_api::control::{
    AuthError, AuthFuture, BubbleAuth, BubbleAuthenticator, BubbleCredential, BubbleRefusal, BubbleSpec, CategorySpec,
    ControlError, ControlFuture, ControlPlane, RefusalReason,
};
use peerbubble_admin_api::store::Store;
use peerbubble_proto::{IdentityKey, Purpose, enroll_message};
use reqwest::StatusCode;
use serde_json::{Value, json};

mod support;

use support::{ADMIN, Api, backends};

/// A bubble `ops` with categories medics, logistics and command (sees medics); returns its credential.
async fn setup(api: &Api) -> String {
    let (status, bubble) =
        api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "ops", "display_name": "Operations"})).await;
    assert_eq!(status, StatusCode::CREATED, "{bubble}");
    for (id, sees) in [("medics", json!([])), ("logistics", json!([])), ("command", json!(["medics"]))] {
        let (status, body) = api
            .post("/api/v1/bubbles/ops/categories", Some(ADMIN), json!({"id": id, "display_name": id, "sees": sees}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    bubble["credential"].as_str().unwrap().to_owned()
}

async fn invite(api: &Api, name: &str, categories: Value) -> String {
    let (status, body) = api
        .post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": name, "categories": categories}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let link = body["link"].as_str().unwrap();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(link, format!("http://bubble.example/enroll#ops.{token}"));
    token
}

fn enroll_body(key: &IdentityKey, bubble: &str, token: &str) -> Value {
    let pk = key.public_key();
    let signature = key.sign(Purpose::EnrollInvite, &enroll_message(bubble, token, &pk));
    json!({"invite": token, "public_key": pk.to_string(), "signature": signature.to_string()})
}

#[tokio::test]
async fn invite_enroll_directory_revoke() {
    for (backend, api) in backends(100).await {
        let credential = setup(&api).await;
        let token = invite(&api, "Ann", json!(["medics"])).await;
        let ann = IdentityKey::generate().unwrap();
        let (status, body) = api.post("/api/v1/enroll", None, enroll_body(&ann, "ops", &token)).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {body}");
        assert_eq!(body["member"], ann.public_key().member_id().to_string());
        // Single use.
        let (status, body) =
            api.post("/api/v1/enroll", None, enroll_body(&IdentityKey::generate().unwrap(), "ops", &token)).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("invite_used")), "{backend}");

        // The bubble-server's view, with its own credential only.
        let (status, doc) = api.get("/api/v1/bubbles/ops/directory", Some(&credential)).await;
        assert_eq!(status, StatusCode::OK, "{backend}");
        assert_eq!(doc["members"][0]["public_key"], ann.public_key().to_string());
        assert_eq!(doc["members"][0]["categories"], json!(["medics"]));
        assert_eq!(doc["categories"][0], json!({"id": "command", "display_name": "command", "sees": ["medics"]}));
        for wrong in [ADMIN, "nope", ""] {
            assert_eq!(
                api.get("/api/v1/bubbles/ops/directory", Some(wrong)).await.0,
                StatusCode::UNAUTHORIZED,
                "{backend}"
            );
        }
        let (_, other) =
            api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "other", "display_name": "Other"})).await;
        let other_credential = other["credential"].as_str().unwrap();
        assert_eq!(api.get("/api/v1/bubbles/ops/directory", Some(other_credential)).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(api.get("/api/v1/bubbles/other/directory", Some(other_credential)).await.1["members"], json!([]));

        // Revocation removes the member from the directory.
        let member = ann.public_key().member_id().to_string();
        let res = api
            .http
            .post(format!("{}/api/v1/bubbles/ops/members/{member}/revoke", api.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{backend}");
        assert_eq!(api.get("/api/v1/bubbles/ops/directory", Some(&credential)).await.1["members"], json!([]));
        let (_, members) = api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        assert_eq!(members[0]["status"], "revoked");

        // Audit trail of admin actions and enrollment (no tokens, no keys in it).
        let (_, events) = api.get("/api/v1/audit?bubble=ops", Some(ADMIN)).await;
        let actions: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
        for action in ["bubble.created", "category.created", "invite.created", "member.enrolled", "member.revoked"] {
            assert!(actions.contains(&action), "{backend}: {action} missing from {actions:?}");
        }
        assert!(!events.to_string().contains(&token), "{backend}: invite token in audit");
        api.finish().await;
    }
}

/// `/metrics` counts requests by route template, refusals by code, enrollments, audit writes and the pool;
/// no label or value names a member, a token or a key.
#[tokio::test]
async fn metrics_count_requests_refusals_enrollments_and_audit_writes() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let token = invite(&api, "Ann", json!(["medics"])).await;
        let ann = IdentityKey::generate().unwrap();
        assert_eq!(api.post("/api/v1/enroll", None, enroll_body(&ann, "ops", &token)).await.0, StatusCode::CREATED);
        let again = enroll_body(&IdentityKey::generate().unwrap(), "ops", &token);
        assert_eq!(api.post("/api/v1/enroll", None, again).await.0, StatusCode::CONFLICT);
        assert_eq!(api.get("/api/v1/bubbles/ops/members", None).await.0, StatusCode::UNAUTHORIZED);
        let res = api.http.get(format!("{}/metrics", api.base)).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
        let text = res.text().await.unwrap();
        let value = |series: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(series))
                .unwrap_or_else(|| panic!("{backend}: no {series} in\n{text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        assert_eq!(value("peerbubble_admin_enrollments_total "), 1.0, "{backend}");
        assert_eq!(
            value("peerbubble_admin_requests_total{route=\"/api/v1/enroll\",method=\"POST\",status=\"201\"}"),
            1.0,
            "{backend}"
        );
        assert_eq!(
            value(
                "peerbubble_admin_requests_total{route=\"/api/v1/bubbles/{bubble}/members\",method=\"GET\",status=\"401\"}"
            ),
            1.0,
            "{backend}: the route template, not the filled-in path"
        );
        assert_eq!(value("peerbubble_admin_refusals_total{reason=\"invite_used\"}"), 1.0, "{backend}");
        assert_eq!(value("peerbubble_admin_refusals_total{reason=\"unauthorized\"}"), 1.0, "{backend}");
        // The bubble, three categories, one invite and one enrollment were audited.
        assert!(value("peerbubble_admin_audit_writes_total ") >= 6.0, "{backend}:\n{text}");
        assert!(value("peerbubble_admin_db_connections{state=\"max\"}") >= 1.0, "{backend}");
        for secret in [token.clone(), ann.public_key().to_string(), ann.public_key().member_id().to_string()] {
            assert!(!text.contains(&secret), "{backend}: metrics name a member or an invite");
        }
        api.finish().await;
    }
}

#[tokio::test]
async fn invites_refuse_expired_wrong_signature_and_wrong_keys() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let token = invite(&api, "Bob", json!(["logistics"])).await;
        let bob = IdentityKey::generate().unwrap();
        // Signed by another key than the one enrolled.
        let mut body = enroll_body(&bob, "ops", &token);
        body["public_key"] = json!(IdentityKey::generate().unwrap().public_key().to_string());
        let (status, res) = api.post("/api/v1/enroll", None, body).await;
        assert_eq!((status, res["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("bad_signature")), "{backend}");
        // Signed for another bubble.
        let (status, _) = api.post("/api/v1/enroll", None, enroll_body(&bob, "other", &token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{backend}");
        // Signed for another purpose (a signaling challenge answer).
        let mut body = enroll_body(&bob, "ops", &token);
        body["signature"] =
            json!(bob.sign(Purpose::SignalAuth, &enroll_message("ops", &token, &bob.public_key())).to_string());
        assert_eq!(api.post("/api/v1/enroll", None, body).await.0, StatusCode::UNAUTHORIZED, "{backend}");
        // Not an Ed25519 public key.
        let mut body = enroll_body(&bob, "ops", &token);
        body["public_key"] = json!("AAAA");
        let (status, res) = api.post("/api/v1/enroll", None, body).await;
        assert_eq!((status, res["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_public_key")));
        // None of that burnt the invite.
        let (status, _) = api.post("/api/v1/enroll", None, enroll_body(&bob, "ops", &token)).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}");

        // Expiry (the clock moves past it).
        let late = invite(&api, "Cat", json!([])).await;
        api.now.fetch_add(7 * 24 * 3600, Ordering::SeqCst);
        let (status, res) =
            api.post("/api/v1/enroll", None, enroll_body(&IdentityKey::generate().unwrap(), "ops", &late)).await;
        assert_eq!((status, res["error"].as_str()), (StatusCode::GONE, Some("invite_expired")), "{backend}");
        // Unknown invite.
        let (status, _) = api.post("/api/v1/enroll", None, enroll_body(&bob, "ops", "no-such-invite")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        // An invite for a category the bubble does not have.
        let (status, _) = api
            .post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": "X", "categories": ["ghosts"]}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        api.finish().await;
    }
}

#[tokio::test]
async fn admin_authentication_and_bad_input() {
    for (backend, api) in backends(100).await {
        for token in [None, Some("wrong"), Some("")] {
            let (status, body) = api.post("/api/v1/bubbles", token, json!({"id": "x", "display_name": "X"})).await;
            assert_eq!((status, body["error"].as_str()), (StatusCode::UNAUTHORIZED, Some("unauthorized")), "{backend}");
            assert_eq!(api.get("/api/v1/bubbles", token).await.0, StatusCode::UNAUTHORIZED);
        }
        setup(&api).await;
        // Unknown fields, wrong types, invalid ids: JSON errors, nothing stored.
        for body in [
            json!({"id": "y", "display_name": "Y", "extra": 1}),
            json!({"id": 5, "display_name": "Y"}),
            json!({"id": "Robert'); DROP TABLE members;--", "display_name": "Y"}),
            json!({"id": "y", "display_name": "a\u{0}b"}),
        ] {
            let (status, res) = api.post("/api/v1/bubbles", Some(ADMIN), body.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{backend}: {body}");
            assert!(res["message"].as_str().is_some_and(|m| !m.is_empty()), "{res}");
        }
        // Injection-looking text where text is allowed is just text.
        let name = "Robert'); DROP TABLE members;--";
        let token = invite(&api, name, json!([])).await;
        let key = IdentityKey::generate().unwrap();
        assert_eq!(api.post("/api/v1/enroll", None, enroll_body(&key, "ops", &token)).await.0, StatusCode::CREATED);
        let (_, members) = api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        assert_eq!(members[0]["display_name"], name, "{backend}");
        // Oversized body.
        let big = json!({"id": "z", "display_name": "x".repeat(100_000)});
        let (status, res) = api.post("/api/v1/bubbles", Some(ADMIN), big).await;
        assert_eq!((status, res["error"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("too_large")), "{backend}");
        // Duplicate.
        let (status, _) = api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "ops", "display_name": "Again"})).await;
        assert_eq!(status, StatusCode::CONFLICT);
        let bubbles = api.get("/api/v1/bubbles", Some(ADMIN)).await.1;
        assert_eq!(bubbles.as_array().map(Vec::len), Some(1), "{backend}: {bubbles}");
        api.finish().await;
    }
}

#[tokio::test]
async fn enrollment_is_rate_limited() {
    for (backend, api) in backends(3).await {
        let mut statuses = Vec::new();
        for _ in 0..6 {
            statuses.push(
                api.post("/api/v1/enroll", None, json!({"invite": "x", "public_key": "x", "signature": "x"})).await.0,
            );
        }
        assert_eq!(statuses[..3], [StatusCode::BAD_REQUEST; 3], "{backend}");
        assert!(statuses[3..].contains(&StatusCode::TOO_MANY_REQUESTS), "{backend}: {statuses:?}");
        api.finish().await;
    }
}

#[tokio::test]
async fn restart_keeps_everything_acknowledged() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let token = invite(&api, "Ann", json!(["medics"])).await;
        let key = IdentityKey::generate().unwrap();
        assert_eq!(api.post("/api/v1/enroll", None, enroll_body(&key, "ops", &token)).await.0, StatusCode::CREATED);
        api.store.pool().close().await;
        let again = api.reopen().await;
        let (_, members) = again.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        assert_eq!(members[0]["public_key"], key.public_key().to_string(), "{backend}");
        assert_eq!(
            again.get("/api/v1/bubbles/ops/categories", Some(ADMIN)).await.1.as_array().map(Vec::len),
            Some(3),
            "{backend}"
        );
        // The used invite stays used across the restart.
        let other = IdentityKey::generate().unwrap();
        let (status, body) = again.post("/api/v1/enroll", None, enroll_body(&other, "ops", &token)).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("invite_used")), "{backend}");
        again.finish().await;
        api.finish().await;
    }
}

#[tokio::test]
async fn no_table_can_hold_private_key_material() {
    for (backend, api) in backends(100).await {
        let columns: Vec<String> = if backend == "sqlite" {
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '\\_%' ESCAPE '\\' AND name NOT LIKE 'sqlite%'")
                    .fetch_all(api.store.pool())
                    .await
                    .unwrap();
            let mut cols = Vec::new();
            for table in tables {
                let names: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT name FROM pragma_table_info('{table}')")))
                        .fetch_all(api.store.pool())
                        .await
                        .unwrap();
                cols.extend(names.into_iter().map(|c| format!("{table}.{c}")));
            }
            cols
        } else {
            sqlx::query_scalar("SELECT table_name || '.' || column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name NOT LIKE '\\_%'")
                .fetch_all(api.store.pool())
                .await
                .unwrap()
        };
        assert!(columns.iter().any(|c| c == "members.public_key"), "{backend}: {columns:?}");
        for column in &columns {
            let column = column.rsplit('.').next().unwrap_or(column);
            for forbidden in ["private", "secret", "seed", "plaintext", "content", "message_key", "token"] {
                // Only hashes of tokens are stored, in columns named *_hash.
                if column.contains(forbidden) && !column.ends_with("_hash") {
                    panic!("{backend}: column {column} looks like it could hold {forbidden} material");
                }
            }
        }
        // No endpoint accepts a private key: an enrollment carrying one is refused and stores nothing.
        setup(&api).await;
        let token = invite(&api, "Eve", json!([])).await;
        let key = IdentityKey::generate().unwrap();
        let mut body = enroll_body(&key, "ops", &token);
        body["private_key"] = json!(key.to_seed_base64().as_str());
        let (status, res) = api.post("/api/v1/enroll", None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{backend}: {res}");
        assert!(!res.to_string().contains(key.to_seed_base64().as_str()), "the error echoes the secret");
        assert_eq!(api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await.1, json!([]));
        api.finish().await;
    }
}

#[tokio::test]
async fn audit_retention_deletes_old_events_only() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let before = api.get("/api/v1/audit", Some(ADMIN)).await.1.as_array().map_or(0, Vec::len);
        assert!(before >= 4, "{backend}");
        // 31 days later an invite is made; retention 30 days keeps only it.
        api.now.fetch_add(31 * 24 * 3600, Ordering::SeqCst);
        invite(&api, "Late", json!([])).await;
        let deleted =
            peerbubble_admin_api::retention::enforce(&api.store, api.now.load(Ordering::SeqCst), 30).await.unwrap();
        assert_eq!(deleted as usize, before, "{backend}");
        let (_, events) = api.get("/api/v1/audit", Some(ADMIN)).await;
        assert_eq!(
            events.as_array().map(|e| e.iter().map(|e| e["action"].clone()).collect::<Vec<_>>()),
            Some(vec![json!("invite.created")])
        );
        api.finish().await;
    }
}

#[tokio::test]
async fn bubble_servers_report_health_and_session_events() {
    for (backend, api) in backends(100).await {
        let credential = setup(&api).await;
        let member = IdentityKey::generate().unwrap().public_key().member_id();
        let report = |online: u32, events: usize| {
            json!({
                "online_members": online, "sessions": online, "connections": online, "envelopes_relayed": 10,
                "envelopes_refused": 1, "auth_failures": 2, "turn_allocations": 0,
                "events": (0..events).map(|i| json!({"at": 1_800_000_000 + i as i64, "member": member.to_string(), "kind": if i % 2 == 0 { "opened" } else { "closed" }})).collect::<Vec<_>>(),
                "events_dropped": 0
            })
        };
        // Only with this bubble's credential.
        for token in [None, Some(ADMIN)] {
            assert_eq!(api.post("/api/v1/bubbles/ops/health", token, report(1, 0)).await.0, StatusCode::UNAUTHORIZED);
        }
        assert_eq!(
            api.post("/api/v1/bubbles/ops/health", Some(&credential), report(3, 2)).await.0,
            StatusCode::NO_CONTENT,
            "{backend}"
        );
        let (_, samples) = api.get("/api/v1/bubbles/ops/health", Some(ADMIN)).await;
        assert_eq!(samples[0]["online_members"], 3, "{backend}: {samples}");
        assert_eq!(samples[0]["envelopes_relayed"], 10);
        let (_, events) = api.get("/api/v1/audit?bubble=ops", Some(ADMIN)).await;
        let sessions: Vec<&str> = events
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["action"].as_str())
            .filter(|a| a.starts_with("session."))
            .collect();
        assert_eq!(sessions.len(), 2, "{backend}: {events}");
        // Unknown fields and oversized reports are refused.
        let mut bad = report(1, 0);
        bad["plaintext"] = json!("x");
        assert_eq!(api.post("/api/v1/bubbles/ops/health", Some(&credential), bad).await.0, StatusCode::BAD_REQUEST);
        // A week later, the old sample is gone when a new one arrives (bounded series).
        api.now.fetch_add(8 * 24 * 3600, Ordering::SeqCst);
        assert_eq!(
            api.post("/api/v1/bubbles/ops/health", Some(&credential), report(5, 0)).await.0,
            StatusCode::NO_CONTENT
        );
        let (_, samples) = api.get("/api/v1/bubbles/ops/health?since=0", Some(ADMIN)).await;
        assert_eq!(samples.as_array().map(Vec::len), Some(1), "{backend}: {samples}");
        assert_eq!(samples[0]["online_members"], 5);
        api.finish().await;
    }
}

#[tokio::test]
async fn roles_and_scopes_are_enforced() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "other", "display_name": "Other"})).await;
        let token = |role: &'static str, bubbles: Value| {
            let api = &api;
            async move {
                let (status, body) = api
                    .post("/api/v1/tokens", Some(ADMIN), json!({"name": "someone", "role": role, "bubbles": bubbles}))
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{body}");
                body["token"].as_str().unwrap().to_owned()
            }
        };
        let auditor = token("auditor", json!(["*"])).await;
        let ops_admin = token("admin", json!(["ops"])).await;

        // An auditor reads everything and changes nothing.
        assert_eq!(api.get("/api/v1/bubbles/ops/members", Some(&auditor)).await.0, StatusCode::OK, "{backend}");
        assert_eq!(api.get("/api/v1/audit", Some(&auditor)).await.0, StatusCode::OK);
        for (path, body) in [
            ("/api/v1/bubbles/ops/invites", json!({"display_name": "X"})),
            ("/api/v1/bubbles/ops/categories", json!({"id": "x", "display_name": "X"})),
            ("/api/v1/bubbles", json!({"id": "x", "display_name": "X"})),
            ("/api/v1/tokens", json!({"name": "x", "role": "admin", "bubbles": ["*"]})),
            ("/api/v1/bubbles/ops/members/00000000000000000000000000000000/revoke", json!({})),
        ] {
            let (status, res) = api.post(path, Some(&auditor), body).await;
            assert_eq!(
                (status, res["error"].as_str()),
                (StatusCode::FORBIDDEN, Some("forbidden")),
                "{backend}: auditor {path}"
            );
        }

        // An admin of one bubble cannot see another's members, nor act organisation-wide.
        assert_eq!(api.get("/api/v1/bubbles/ops/members", Some(&ops_admin)).await.0, StatusCode::OK);
        assert_eq!(
            api.get("/api/v1/bubbles/other/members", Some(&ops_admin)).await.0,
            StatusCode::FORBIDDEN,
            "{backend}"
        );
        assert_eq!(api.get("/api/v1/audit?bubble=other", Some(&ops_admin)).await.0, StatusCode::FORBIDDEN);
        assert_eq!(api.get("/api/v1/audit", Some(&ops_admin)).await.0, StatusCode::BAD_REQUEST);
        let (_, listed) = api.get("/api/v1/bubbles", Some(&ops_admin)).await;
        assert_eq!(
            listed.as_array().map(|b| b.iter().map(|b| b["id"].clone()).collect::<Vec<_>>()),
            Some(vec![json!("ops")])
        );
        let (status, _) =
            api.post("/api/v1/bubbles/other/invites", Some(&ops_admin), json!({"display_name": "X"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, _) = api.post("/api/v1/bubbles/ops/invites", Some(&ops_admin), json!({"display_name": "X"})).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}");
        let (status, _) =
            api.post("/api/v1/bubbles", Some(&ops_admin), json!({"id": "mine", "display_name": "Mine"})).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        // Their actions are attributed in the audit trail.
        let (_, events) = api.get("/api/v1/audit?bubble=ops", Some(&auditor)).await;
        assert!(events.to_string().contains("admin:someone"), "{backend}: {events}");
        // Bad role or scope.
        for body in [
            json!({"name": "x", "role": "root", "bubbles": ["*"]}),
            json!({"name": "x", "role": "admin", "bubbles": []}),
        ] {
            assert_eq!(api.post("/api/v1/tokens", Some(ADMIN), body).await.0, StatusCode::BAD_REQUEST);
        }
        api.finish().await;
    }
}

#[tokio::test]
async fn the_openapi_document_and_reference_describe_every_route() {
    let api = support::sqlite(100).await;
    let (status, doc) = api.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    let expected = [
        ("/api/v1/bubbles", "post"),
        ("/api/v1/bubbles", "get"),
        ("/api/v1/bubbles/{bubble}/categories", "post"),
        ("/api/v1/bubbles/{bubble}/categories", "get"),
        ("/api/v1/bubbles/{bubble}/invites", "post"),
        ("/api/v1/bubbles/{bubble}/members", "get"),
        ("/api/v1/bubbles/{bubble}/members/{member}/revoke", "post"),
        ("/api/v1/bubbles/{bubble}/directory", "get"),
        ("/api/v1/bubbles/{bubble}", "delete"),
        ("/api/v1/bubbles/{bubble}/health", "post"),
        ("/api/v1/bubbles/{bubble}/health", "get"),
        ("/api/v1/audit", "get"),
        ("/api/v1/tokens", "post"),
        ("/api/v1/enroll", "post"),
        ("/auth/login", "get"),
        ("/auth/callback", "get"),
        ("/auth/session", "get"),
        ("/auth/logout", "post"),
        ("/auth/token", "post"),
        ("/auth/methods", "get"),
        ("/api/v1/info", "get"),
        ("/api/v1/audit.csv", "get"),
        ("/api/v1/bubbles/{bubble}/categories/{category}", "put"),
        ("/api/v1/bubbles/{bubble}/categories/{category}", "delete"),
        ("/api/v1/bubbles/{bubble}/invites", "get"),
        ("/api/v1/bubbles/{bubble}/invites/{invite}", "delete"),
        ("/api/v1/bubbles/{bubble}/members/{member}/reinvite", "post"),
        ("/api/v1/bubbles/{bubble}/members/{member}/view", "get"),
        ("/api/v1/bubbles/{bubble}/policy", "get"),
        ("/api/v1/bubbles/{bubble}/policy", "put"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let documented: usize = paths.values().map(|item| item.as_object().unwrap().len()).sum();
    assert_eq!(documented, expected.len(), "{:?}", paths.keys().collect::<Vec<_>>());
    for (path, method) in expected {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not documented");
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path} has no responses");
        // Every documented route answers (not 404/405 from the router) without credentials.
        let url = format!(
            "{}{}",
            api.base,
            path.replace("{bubble}", "ops")
                .replace("{member}", "m")
                .replace("{category}", "c")
                .replace("{invite}", "i")
        );
        let res = match method {
            "get" => api.http.get(&url).send().await.unwrap(),
            "put" => api.http.put(&url).json(&json!({})).send().await.unwrap(),
            "delete" => api.http.delete(&url).send().await.unwrap(),
            _ => api.http.post(&url).json(&json!({})).send().await.unwrap(),
        };
        assert_ne!(res.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if !["/auth/login", "/auth/callback", "/api/v1/enroll", "/auth/methods"].contains(&path) {
            assert!(res.status().is_client_error(), "{method} {path}: {}", res.status());
        }
    }
    for schema in [
        "CreateInvite",
        "CreatedInvite",
        "ErrorBody",
        "HealthReport",
        "BubbleFile",
        "SessionInfo",
        "BubbleSummary",
        "MemberView",
        "InviteRow",
        "ServiceInfo",
    ] {
        assert!(doc["components"]["schemas"][schema].is_object(), "schema {schema} missing");
    }
    assert!(doc["components"]["securitySchemes"]["session"].is_object());

    // The rendered reference: every route, and nothing fetched from elsewhere (air-gapped networks).
    let res = api.http.get(format!("{}/api/v1/reference", api.base)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = res.text().await.unwrap();
    for (path, _) in expected {
        assert!(html.contains(&format!("<code>{path}</code>")), "{path} missing from the reference");
    }
    assert!(!html.contains("<script"), "the reference must work without scripts");
    for external in ["src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(external), "the reference loads something from elsewhere: {external}");
    }
    api.finish().await;
}

#[tokio::test]
async fn invites_come_with_a_qr_code_of_their_link() {
    let api = support::sqlite(100).await;
    setup(&api).await;
    let (status, body) = api
        .post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": "Zoe", "categories": ["medics"]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let svg = body["qr_svg"].as_str().unwrap();
    assert!(svg.contains("<svg") && svg.contains("</svg>"), "{svg}");
    // A QR code of the link: a different link gives a different code.
    let (_, other) =
        api.post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": "Yan", "categories": []})).await;
    assert_ne!(other["qr_svg"], body["qr_svg"]);
    api.finish().await;
}

/// A platform that refuses every change (a Kubernetes API server saying no).
#[derive(Debug)]
struct RefusingPlatform;

impl ControlPlane for RefusingPlatform {
    fn name(&self) -> &'static str {
        "refusing"
    }
    fn bubble_created<'a>(&'a self, _: &'a BubbleSpec) -> ControlFuture<'a> {
        Box::pin(async { Err(ControlError("admission webhook denied the request".into())) })
    }
    fn category_changed<'a>(&'a self, _: &'a CategorySpec) -> ControlFuture<'a> {
        Box::pin(async { Err(ControlError("admission webhook denied the request".into())) })
    }
    fn category_deleted<'a>(&'a self, _: &'a str, _: &'a str) -> ControlFuture<'a> {
        Box::pin(async { Err(ControlError("admission webhook denied the request".into())) })
    }
    fn bubble_deleted<'a>(&'a self, _: &'a str) -> ControlFuture<'a> {
        Box::pin(async { Err(ControlError("admission webhook denied the request".into())) })
    }
}

#[tokio::test]
async fn a_refusing_control_plane_is_reported_and_the_change_kept() {
    let db = support::sqlite_db().await;
    let (mut state, now) = support::test_state(db.store.clone(), 100);
    state.control = std::sync::Arc::new(RefusingPlatform);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = support::serve_on(listener, Some(db), state, now);
    let (status, body) = api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "ops", "display_name": "Ops"})).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_GATEWAY, Some("control_plane_failed")), "{body}");
    assert!(body["message"].as_str().unwrap().contains("admission webhook denied"), "{body}");
    // Stored and audited all the same: a retry of the platform side finds it.
    assert_eq!(api.get("/api/v1/bubbles", Some(ADMIN)).await.1[0]["id"], "ops");
    let (status, body) = api
        .post("/api/v1/bubbles/ops/categories", Some(ADMIN), json!({"id": "medics", "display_name": "Medics"}))
        .await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_GATEWAY, Some("control_plane_failed")), "{body}");
    assert_eq!(api.get("/api/v1/bubbles/ops/categories", Some(ADMIN)).await.1.as_array().map(Vec::len), Some(1));
    api.finish().await;
}

/// A platform's verdicts on bubble-server tokens, by token: what a TokenReview would say (crates/control-k8s
/// tests the review itself against a scripted API server); anything else is a bubble credential.
#[derive(Debug)]
struct Reviewing;

impl BubbleAuthenticator for Reviewing {
    fn authenticate<'a>(&'a self, store: &'a Store, bubble: &'a str, presented: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let refused = |reason, subject: Option<&str>| {
                Ok(BubbleAuth::Refused(BubbleRefusal { reason, subject: subject.map(str::to_owned) }))
            };
            match presented {
                "token-of-relief" => {
                    refused(RefusalReason::OtherBubble, Some("system:serviceaccount:missions:relief-bubble"))
                }
                "expired-token" => refused(RefusalReason::Expired, None),
                "token-for-vault" => {
                    refused(RefusalReason::WrongAudience, Some("system:serviceaccount:missions:ops-bubble"))
                }
                "api-server-down" => Err(AuthError::Unavailable("connection refused".into())),
                "token-of-ops" => Ok(BubbleAuth::Accepted { actor: "serviceaccount:missions:ops-bubble".into() }),
                other => BubbleCredential::check(store, bubble, other).await,
            }
        })
    }
}

/// Every refusal of a bubble-server is audited with its reason and, for a token, whose it was (never the token),
/// once a minute for the same bubble, reason and subject however often it polls, with how often it repeated;
/// the 401 names the reason. A platform that cannot check tokens answers 503 and audits nothing: nobody is
/// refused for it. The bubble credential still works beside tokens.
#[tokio::test]
async fn refused_bubble_servers_are_audited_with_the_reason() {
    let db = support::sqlite_db().await;
    let (mut state, now) = support::test_state(db.store.clone(), 100);
    state.bubble_auth = std::sync::Arc::new(Reviewing);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = support::serve_on(listener, Some(db), state, now.clone());
    let credential = setup(&api).await;
    async fn refused(api: &Api) -> Vec<(String, String)> {
        let (_, events) = api.get("/api/v1/audit?bubble=ops", Some(ADMIN)).await;
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "bubble_server.refused")
            .map(|e| (e["actor"].as_str().unwrap().to_owned(), e["detail"].as_str().unwrap().to_owned()))
            .collect()
    }

    for (presented, reason) in [
        ("token-of-relief", "other_bubble"),
        ("expired-token", "token_expired"),
        ("token-for-vault", "wrong_audience"),
        ("not-the-credential", "unknown_credential"),
    ] {
        for _ in 0..3 {
            let (status, body) = api.get("/api/v1/bubbles/ops/directory", Some(presented)).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{presented}: {body}");
            assert!(body["message"].as_str().unwrap().ends_with(reason), "{presented}: {body}");
        }
    }
    let report = json!({"online_members": 0, "sessions": 0, "connections": 0, "envelopes_relayed": 0,
        "envelopes_refused": 0, "auth_failures": 0, "turn_allocations": 0, "events": [], "events_dropped": 0});
    let (status, body) = api.post("/api/v1/bubbles/ops/health", Some("expired-token"), report).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let mut events = refused(&api).await;
    events.sort();
    let mut wanted = vec![
        ("bubble-server".to_owned(), "reason=token_expired route=directory".to_owned()),
        ("bubble-server".to_owned(), "reason=unknown_credential route=directory".to_owned()),
        (
            "system:serviceaccount:missions:ops-bubble".to_owned(),
            "reason=wrong_audience route=directory subject=system:serviceaccount:missions:ops-bubble".to_owned(),
        ),
        (
            "system:serviceaccount:missions:relief-bubble".to_owned(),
            "reason=other_bubble route=directory subject=system:serviceaccount:missions:relief-bubble".to_owned(),
        ),
    ];
    wanted.sort();
    assert_eq!(events, wanted, "one event per refusal a minute, whatever the route");
    assert!(!format!("{events:?}").contains("token-of") && !format!("{events:?}").contains("not-the-credential"));

    // A minute later the same refusal is audited again, with the repeats it stood for.
    now.fetch_add(61, Ordering::SeqCst);
    let (status, _) = api.get("/api/v1/bubbles/ops/directory", Some("expired-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let events = refused(&api).await;
    assert!(events.iter().any(|(_, detail)| detail == "reason=token_expired route=directory repeats=3"), "{events:?}");

    // The platform cannot check tokens: 503, nothing audited.
    let before = refused(&api).await.len();
    let (status, body) = api.get("/api/v1/bubbles/ops/directory", Some("api-server-down")).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")), "{body}");
    assert_eq!(refused(&api).await.len(), before);

    // The bubble's own ServiceAccount token and its credential are both accepted.
    assert_eq!(api.get("/api/v1/bubbles/ops/directory", Some("token-of-ops")).await.0, StatusCode::OK);
    assert_eq!(api.get("/api/v1/bubbles/ops/directory", Some(&credential)).await.0, StatusCode::OK);
    assert_eq!(refused(&api).await.len(), before);
    api.finish().await;
}

/// A bubble-server's poll that finds nothing changed gets `304` and no body; every write to what the directory
/// holds (a category created, changed or deleted, an enrollment, a revocation, the policy) changes the ETag in
/// the same transaction, and writes the directory does not hold (invites) leave it alone.
#[tokio::test]
async fn directory_polls_answer_not_modified_until_the_directory_changes() {
    use reqwest::Method;
    for (backend, api) in backends(100).await {
        let credential = setup(&api).await;
        // (status, ETag, body) of a poll that says which version it has.
        let poll = |etag: Option<String>| {
            let (api, credential) = (&api, &credential);
            async move {
                let mut req =
                    api.http.get(format!("{}/api/v1/bubbles/ops/directory", api.base)).bearer_auth(credential);
                if let Some(etag) = etag {
                    req = req.header(reqwest::header::IF_NONE_MATCH, etag);
                }
                let res = req.send().await.unwrap();
                let etag = res.headers()[reqwest::header::ETAG].to_str().unwrap().to_owned();
                (res.status(), etag, res.bytes().await.unwrap())
            }
        };
        let (status, mut etag, _) = poll(None).await;
        assert_eq!(status, StatusCode::OK, "{backend}");
        let mut seen = vec![etag.clone()];
        // Unchanged: 304 with no body, as often as asked; a stale or foreign ETag gets the document.
        for _ in 0..2 {
            let (status, again, body) = poll(Some(etag.clone())).await;
            assert_eq!((status, again.as_str(), body.len()), (StatusCode::NOT_MODIFIED, etag.as_str(), 0), "{backend}");
        }
        let (status, again, body) = poll(Some("\"not-a-revision\"".into())).await;
        assert_eq!((status, again), (StatusCode::OK, etag.clone()), "{backend}");
        assert!(serde_json::from_slice::<Value>(&body).unwrap()["categories"].is_array());
        // Not the directory's business: still unchanged.
        let token = invite(&api, "Ann", json!(["medics"])).await;
        assert_eq!(poll(Some(etag.clone())).await.0, StatusCode::NOT_MODIFIED, "{backend}: an invite is not a change");

        let ann = IdentityKey::generate().unwrap();
        let member = ann.public_key().member_id().to_string();
        let policy = json!({"masked_by_default": true, "disappear_within_secs": 0, "files_allowed": true,
            "max_file_bytes": 1048576, "calls_allowed": true, "relay_only": false});
        type Change = (&'static str, Method, String, Option<Value>);
        let changes: Vec<Change> = vec![
            ("enroll", Method::POST, "/api/v1/enroll".into(), Some(enroll_body(&ann, "ops", &token))),
            (
                "category created",
                Method::POST,
                "/api/v1/bubbles/ops/categories".into(),
                Some(json!({"id": "drivers", "display_name": "Drivers", "sees": []})),
            ),
            (
                "category changed",
                Method::PUT,
                "/api/v1/bubbles/ops/categories/drivers".into(),
                Some(json!({"display_name": "Drivers", "sees": ["logistics"]})),
            ),
            ("category deleted", Method::DELETE, "/api/v1/bubbles/ops/categories/drivers".into(), None),
            ("policy", Method::PUT, "/api/v1/bubbles/ops/policy".into(), Some(policy)),
            ("revoke", Method::POST, format!("/api/v1/bubbles/ops/members/{member}/revoke"), None),
        ];
        for (what, method, path, body) in changes {
            let token = (path != "/api/v1/enroll").then_some(ADMIN);
            let (status, answer) = api.send(method, &path, token, body).await;
            assert!(status.is_success(), "{backend}: {what}: {status} {answer}");
            let (status, next, body) = poll(Some(etag.clone())).await;
            assert_eq!(status, StatusCode::OK, "{backend}: {what} did not change the directory's ETag");
            assert!(!seen.contains(&next), "{backend}: {what} reused an ETag");
            let doc: Value = serde_json::from_slice(&body).unwrap();
            match what {
                "enroll" => assert_eq!(doc["members"][0]["public_key"], ann.public_key().to_string()),
                "category created" | "category changed" => assert!(doc.to_string().contains("Drivers")),
                "category deleted" => assert!(!doc.to_string().contains("Drivers")),
                "policy" => assert_eq!(doc["policy"]["masked_by_default"], true),
                _ => assert_eq!(doc["members"], json!([])),
            }
            assert_eq!(poll(Some(next.clone())).await.0, StatusCode::NOT_MODIFIED, "{backend}: after {what}");
            seen.push(next.clone());
            etag = next;
        }
        api.finish().await;
    }
}

/// Deleting a bubble removes its directory, invites and policy and stops its credential working; its audit trail
/// stays. Only an organisation-wide administrator may; the same key cannot be a member of two bubbles.
#[tokio::test]
async fn bubbles_are_deleted_whole_and_keys_stay_in_one_bubble() {
    use reqwest::Method;
    for (backend, api) in backends(100).await {
        let credential = setup(&api).await;
        let ann = IdentityKey::generate().unwrap();
        let token = invite(&api, "Ann", json!(["medics"])).await;
        assert_eq!(api.post("/api/v1/enroll", None, enroll_body(&ann, "ops", &token)).await.0, StatusCode::CREATED);
        let _pending = invite(&api, "Bob", json!(["logistics"])).await;

        // A second bubble: Ann's key from ops is refused there (one identity per bubble), a new key is welcome.
        let (status, _) =
            api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "relief", "display_name": "Relief"})).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}");
        let (_, created) = api
            .post("/api/v1/bubbles/relief/invites", Some(ADMIN), json!({"display_name": "Ann again", "categories": []}))
            .await;
        let relief_token = created["token"].as_str().unwrap().to_owned();
        let (status, body) = api.post("/api/v1/enroll", None, enroll_body(&ann, "relief", &relief_token)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::CONFLICT, Some("key_in_other_bubble")),
            "{backend}: {body}"
        );
        assert!(!body.to_string().contains("ops"), "{backend}: the refusal names the other bubble: {body}");
        let fresh = IdentityKey::generate().unwrap();
        let (status, body) = api.post("/api/v1/enroll", None, enroll_body(&fresh, "relief", &relief_token)).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: the refused attempt used the invite up: {body}");

        // A bubble-scoped token may not delete; an unknown bubble is 404.
        let (_, scoped) = api
            .post("/api/v1/tokens", Some(ADMIN), json!({"name": "ops admin", "role": "admin", "bubbles": ["ops"]}))
            .await;
        let scoped = scoped["token"].as_str().unwrap().to_owned();
        assert_eq!(api.send(Method::DELETE, "/api/v1/bubbles/ops", Some(&scoped), None).await.0, StatusCode::FORBIDDEN);
        assert_eq!(api.send(Method::DELETE, "/api/v1/bubbles/nope", Some(ADMIN), None).await.0, StatusCode::NOT_FOUND);

        assert_eq!(api.send(Method::DELETE, "/api/v1/bubbles/ops", Some(ADMIN), None).await.0, StatusCode::NO_CONTENT);
        assert_eq!(api.send(Method::DELETE, "/api/v1/bubbles/ops", Some(ADMIN), None).await.0, StatusCode::NOT_FOUND);
        // Its credential no longer reads anything; nothing of it is listed; the other bubble is untouched.
        assert_eq!(api.get("/api/v1/bubbles/ops/directory", Some(&credential)).await.0, StatusCode::UNAUTHORIZED);
        let (_, bubbles) = api.get("/api/v1/bubbles", Some(ADMIN)).await;
        let ids: Vec<&str> = bubbles.as_array().unwrap().iter().filter_map(|b| b["id"].as_str()).collect();
        assert_eq!(ids, ["relief"], "{backend}");
        assert_eq!(api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await.1, json!([]), "{backend}");
        assert_eq!(api.get("/api/v1/bubbles/ops/categories", Some(ADMIN)).await.1, json!([]), "{backend}");
        assert_eq!(api.get("/api/v1/bubbles/relief/members", Some(ADMIN)).await.1.as_array().map(Vec::len), Some(1));
        // The pending invite died with it.
        let (status, _) =
            api.post("/api/v1/enroll", None, enroll_body(&IdentityKey::generate().unwrap(), "ops", &_pending)).await;
        assert_ne!(status, StatusCode::CREATED, "{backend}");
        // With ops gone, Ann's key may join relief.
        let (_, again) = api
            .post("/api/v1/bubbles/relief/invites", Some(ADMIN), json!({"display_name": "Ann", "categories": []}))
            .await;
        let (status, body) =
            api.post("/api/v1/enroll", None, enroll_body(&ann, "relief", again["token"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {body}");
        // The trail stays.
        let (_, events) = api.get("/api/v1/audit?bubble=ops", Some(ADMIN)).await;
        let actions: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
        assert!(actions.contains(&"bubble.deleted") && actions.contains(&"member.enrolled"), "{backend}: {actions:?}");
        api.finish().await;
    }
}

/// A platform that reports a status for `ops` and never answers for `slow`.
#[derive(Debug)]
struct ReportingPlatform;

impl ControlPlane for ReportingPlatform {
    fn name(&self) -> &'static str {
        "reporting"
    }
    fn bubble_created<'a>(&'a self, _: &'a BubbleSpec) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn category_changed<'a>(&'a self, _: &'a CategorySpec) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn category_deleted<'a>(&'a self, _: &'a str, _: &'a str) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn bubble_deleted<'a>(&'a self, _: &'a str) -> ControlFuture<'a> {
        Box::pin(async { Ok(()) })
    }
    fn bubble_status<'a>(&'a self, bubble: &'a str) -> peerbubble_admin_api::control::StatusFuture<'a> {
        use peerbubble_admin_api::control::{PlatformCondition, PlatformStatus};
        Box::pin(async move {
            if bubble == "slow" {
                std::future::pending::<()>().await;
            }
            Some(PlatformStatus {
                ready: false,
                conditions: vec![PlatformCondition {
                    kind: "SignalingReady".into(),
                    status: false,
                    reason: "SecretMissing".into(),
                    message: "Secret ops-credential is missing".into(),
                }],
                signaling: Some("wss://ops.example/v1/signal".into()),
            })
        })
    }
}

/// The bubble list carries what the platform reports of each bubble; a platform that does not answer in time
/// leaves that bubble's status out, not the list.
#[tokio::test]
async fn the_platforms_status_of_each_bubble_is_listed_and_a_silent_one_left_out() {
    let db = support::sqlite_db().await;
    let (mut state, now) = support::test_state(db.store.clone(), 100);
    state.control = std::sync::Arc::new(ReportingPlatform);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = support::serve_on(listener, Some(db), state, now);
    for id in ["ops", "slow"] {
        let (status, body) = api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": id, "display_name": id})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let started = std::time::Instant::now();
    let (status, list) = api.get("/api/v1/bubbles", Some(ADMIN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "the list waited for a silent platform");
    let ops = list.as_array().unwrap().iter().find(|b| b["id"] == "ops").unwrap();
    assert_eq!(ops["platform"]["ready"], false);
    assert_eq!(ops["platform"]["signaling"], "wss://ops.example/v1/signal");
    assert_eq!(ops["platform"]["conditions"][0]["type"], "SignalingReady");
    assert_eq!(ops["platform"]["conditions"][0]["reason"], "SecretMissing");
    let slow = list.as_array().unwrap().iter().find(|b| b["id"] == "slow").unwrap();
    assert!(slow.get("platform").is_none(), "{slow}");
    api.finish().await;
}
