//! What the web console relies on, over real HTTP on SQLite and PostgreSQL: token sign-in into a cookie session
//! (with CSRF), editing and deleting categories, invites listed and withdrawn, re-inviting a member, "view as
//! member", members' last sessions, health at a glance, the audit trail filtered, paged and exported.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;

use peerbubble_proto::{IdentityKey, PublicKey, Purpose, enroll_message, key_fingerprint};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

mod support;

use support::{ADMIN, Api, backends};

/// Bubble `ops`: medics, logistics, command (sees medics); returns the bubble credential.
async fn setup(api: &Api) -> String {
    let (_, bubble) =
        api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "ops", "display_name": "Operations"})).await;
    for (id, sees) in [("medics", json!([])), ("logistics", json!([])), ("command", json!(["medics"]))] {
        let (status, body) = api
            .post("/api/v1/bubbles/ops/categories", Some(ADMIN), json!({"id": id, "display_name": id, "sees": sees}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    bubble["credential"].as_str().unwrap().to_owned()
}

/// Invites and enrolls `name` in `categories`; returns their key.
async fn member(api: &Api, name: &str, categories: Value) -> IdentityKey {
    let (status, body) = api
        .post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": name, "categories": categories}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let token = body["token"].as_str().unwrap();
    let key = IdentityKey::generate().unwrap();
    let (status, body) = api.post("/api/v1/enroll", None, enroll_body(&key, token)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    key
}

fn enroll_body(key: &IdentityKey, token: &str) -> Value {
    let pk = key.public_key();
    let signature = key.sign(Purpose::EnrollInvite, &enroll_message("ops", token, &pk));
    json!({"invite": token, "public_key": pk.to_string(), "signature": signature.to_string()})
}

fn id_of(key: &IdentityKey) -> String {
    key.public_key().member_id().to_string()
}

/// A browser: keeps cookies.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).build().unwrap()
}

#[tokio::test]
async fn a_token_opens_a_cookie_session_that_needs_csrf_for_changes() {
    for (backend, api) in backends(100).await {
        let b = browser();
        // A wrong token: refused, audited, no cookie.
        let res = b.post(format!("{}/auth/token", api.base)).json(&json!({"token": "nope"})).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{backend}");
        assert!(res.headers().get("set-cookie").is_none());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "token_unknown");
        // A cross-site form cannot sign anyone in: only a JSON body is read.
        let res = b.post(format!("{}/auth/token", api.base)).form(&[("token", ADMIN)]).send().await.unwrap();
        assert!(res.status().is_client_error() && res.headers().get("set-cookie").is_none(), "{backend}");
        assert_eq!(
            b.get(format!("{}/auth/session", api.base)).send().await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );

        let res = b.post(format!("{}/auth/token", api.base)).json(&json!({"token": ADMIN})).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT, "{backend}");
        let cookie = res.headers().get("set-cookie").unwrap().to_str().unwrap().to_owned();
        for attribute in ["pb_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{backend}: {cookie}");
        }
        assert!(!cookie.contains(ADMIN), "the token itself is never the cookie");
        let info: Value = b.get(format!("{}/auth/session", api.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!((info["name"].as_str(), info["role"].as_str()), (Some("bootstrap"), Some("admin")), "{info}");
        let csrf = info["csrf_token"].as_str().unwrap();
        // Reads work with the cookie; a change without the CSRF token does not, with it it does.
        assert_eq!(b.get(format!("{}/api/v1/bubbles", api.base)).send().await.unwrap().status(), StatusCode::OK);
        let create = |csrf: Option<&str>, id: &str| {
            let mut req = b
                .post(format!("{}/api/v1/bubbles", api.base))
                .json(&json!({"id": id, "display_name": "From the console"}));
            if let Some(csrf) = csrf {
                req = req.header("X-CSRF-Token", csrf);
            }
            req.send()
        };
        assert_eq!(create(None, "a").await.unwrap().status(), StatusCode::FORBIDDEN, "{backend}");
        assert_eq!(create(Some("0".repeat(64).as_str()), "a").await.unwrap().status(), StatusCode::FORBIDDEN);
        assert_eq!(create(Some(csrf), "a").await.unwrap().status(), StatusCode::CREATED, "{backend}");
        let (_, events) = api.get("/api/v1/audit?action=admin.", Some(ADMIN)).await;
        let text = events.to_string();
        assert!(text.contains("with=token") && text.contains("admin.sign_in_refused"), "{backend}: {text}");
        assert_eq!(api.get("/auth/methods", None).await.1, json!({"oidc": false}));
        api.finish().await;
    }
}

#[tokio::test]
async fn categories_are_edited_and_deleted_only_when_nobody_holds_them() {
    for (backend, api) in backends(100).await {
        let credential = setup(&api).await;
        let put = |path: &'static str, token: &'static str, body: Value| {
            let api = &api;
            async move { api.send(Method::PUT, path, Some(token), Some(body)).await }
        };
        // Logistics now also sees command; the bubble-servers' directory follows.
        let (status, body) = put(
            "/api/v1/bubbles/ops/categories/logistics",
            ADMIN,
            json!({"display_name": "Logistics", "sees": ["command"]}),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{backend}: {body}");
        let (_, doc) = api.get("/api/v1/bubbles/ops/directory", Some(&credential)).await;
        let logistics = doc["categories"].as_array().unwrap().iter().find(|c| c["id"] == "logistics").unwrap().clone();
        assert_eq!(logistics, json!({"id": "logistics", "display_name": "Logistics", "sees": ["command"]}));
        // Bad input and unknown categories.
        for (path, body, code) in [
            ("/api/v1/bubbles/ops/categories/nope", json!({"display_name": "N"}), StatusCode::NOT_FOUND),
            (
                "/api/v1/bubbles/ops/categories/medics",
                json!({"display_name": "M", "sees": ["Bad!"]}),
                StatusCode::BAD_REQUEST,
            ),
            (
                "/api/v1/bubbles/ops/categories/medics",
                json!({"display_name": "M", "sees": ["ghost"]}),
                StatusCode::NOT_FOUND,
            ),
            ("/api/v1/bubbles/ops/categories/medics", json!({"display_name": ""}), StatusCode::BAD_REQUEST),
            ("/api/v1/bubbles/ops/categories/medics", json!({"display_name": "M", "id": "x"}), StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(put(path, ADMIN, body.clone()).await.0, code, "{backend}: {path} {body}");
        }
        // A failed change changed nothing.
        let (_, categories) = api.get("/api/v1/bubbles/ops/categories", Some(ADMIN)).await;
        let medics = categories.as_array().unwrap().iter().find(|c| c["id"] == "medics").unwrap().clone();
        assert_eq!(medics, json!({"id": "medics", "display_name": "medics", "sees": []}), "{backend}");

        // Held by a member: refused with the reason; once the member is revoked, deleted with its relations.
        let ann = member(&api, "Ann", json!(["logistics"])).await;
        let (status, body) =
            api.send(Method::DELETE, "/api/v1/bubbles/ops/categories/logistics", Some(ADMIN), None).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::CONFLICT, Some("in_use")), "{backend}: {body}");
        assert!(body["message"].as_str().unwrap().contains("1 active member"), "{body}");
        api.post(&format!("/api/v1/bubbles/ops/members/{}/revoke", id_of(&ann)), Some(ADMIN), json!({})).await;
        // A pending invite holds it too.
        api.post(
            "/api/v1/bubbles/ops/invites",
            Some(ADMIN),
            json!({"display_name": "Bo", "categories": ["logistics"]}),
        )
        .await;
        assert_eq!(
            api.send(Method::DELETE, "/api/v1/bubbles/ops/categories/logistics", Some(ADMIN), None).await.0,
            StatusCode::CONFLICT
        );
        api.now.fetch_add(8 * 24 * 3600, Ordering::SeqCst);
        let (status, body) =
            api.send(Method::DELETE, "/api/v1/bubbles/ops/categories/logistics", Some(ADMIN), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{backend}: {body}");
        let (_, categories) = api.get("/api/v1/bubbles/ops/categories", Some(ADMIN)).await;
        let ids: Vec<&str> = categories.as_array().unwrap().iter().filter_map(|c| c["id"].as_str()).collect();
        assert_eq!(ids, ["command", "medics"], "{backend}");
        assert!(!categories.to_string().contains("logistics"), "relations to it are gone too: {categories}");
        assert_eq!(
            api.send(Method::DELETE, "/api/v1/bubbles/ops/categories/logistics", Some(ADMIN), None).await.0,
            StatusCode::NOT_FOUND
        );
        let (_, events) = api.get("/api/v1/audit?bubble=ops&action=category.", Some(ADMIN)).await;
        let actions: Vec<&str> = events.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
        assert!(actions.contains(&"category.changed") && actions.contains(&"category.deleted"), "{actions:?}");
        api.finish().await;
    }
}

#[tokio::test]
async fn invites_are_listed_without_tokens_and_withdrawn() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let (_, made) = api
            .post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": "Zoe", "categories": ["medics"]}))
            .await;
        let (token, id) = (made["token"].as_str().unwrap().to_owned(), made["id"].as_str().unwrap().to_owned());
        member(&api, "Yan", json!([])).await;
        api.post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": "Old", "expires_in_secs": 60}))
            .await;
        api.now.fetch_add(120, Ordering::SeqCst);
        let (status, list) = api.get("/api/v1/bubbles/ops/invites", Some(ADMIN)).await;
        assert_eq!(status, StatusCode::OK, "{backend}");
        assert!(!list.to_string().contains(&token), "a listed invite must not carry its token: {list}");
        let status_of = |list: &Value, name: &str| {
            list.as_array().unwrap().iter().find(|i| i["display_name"] == name).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            [status_of(&list, "Zoe"), status_of(&list, "Yan"), status_of(&list, "Old")],
            ["pending", "used", "expired"],
            "{backend}: {list}"
        );
        // Withdrawn: the link stops working and says why; a used invite cannot be withdrawn.
        let path = format!("/api/v1/bubbles/ops/invites/{id}");
        assert_eq!(api.send(Method::DELETE, &path, Some(ADMIN), None).await.0, StatusCode::NO_CONTENT, "{backend}");
        let key = IdentityKey::generate().unwrap();
        let (status, body) = api.post("/api/v1/enroll", None, enroll_body(&key, &token)).await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::GONE, Some("invite_revoked")), "{backend}: {body}");
        assert_eq!(status_of(&api.get("/api/v1/bubbles/ops/invites", Some(ADMIN)).await.1, "Zoe"), "revoked");
        assert_eq!(api.send(Method::DELETE, &path, Some(ADMIN), None).await.0, StatusCode::NOT_FOUND);
        let used = api.get("/api/v1/bubbles/ops/invites", Some(ADMIN)).await.1;
        let used_id = used.as_array().unwrap().iter().find(|i| i["display_name"] == "Yan").unwrap()["id"].clone();
        let (status, body) = api
            .send(
                Method::DELETE,
                &format!("/api/v1/bubbles/ops/invites/{}", used_id.as_str().unwrap()),
                Some(ADMIN),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{backend}");
        assert!(body["message"].as_str().unwrap().contains("revoke the member"), "{body}");
        api.finish().await;
    }
}

#[tokio::test]
async fn reinvite_revokes_the_old_key_and_keeps_name_and_categories() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let ann = member(&api, "Ann", json!(["medics", "logistics"])).await;
        let (status, made) =
            api.post(&format!("/api/v1/bubbles/ops/members/{}/reinvite", id_of(&ann)), Some(ADMIN), json!({})).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {made}");
        assert!(made["qr_svg"].as_str().unwrap().contains("<svg"));
        let (_, members) = api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        assert_eq!(members[0]["status"], "revoked", "{backend}: {members}");
        // The new device enrolls with the same name and categories, and a new key.
        let device = IdentityKey::generate().unwrap();
        let (status, body) =
            api.post("/api/v1/enroll", None, enroll_body(&device, made["token"].as_str().unwrap())).await;
        assert_eq!(status, StatusCode::CREATED, "{backend}: {body}");
        let (_, members) = api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        let fresh = members.as_array().unwrap().iter().find(|m| m["member"] == id_of(&device)).unwrap();
        assert_eq!(
            (fresh["display_name"].clone(), fresh["categories"].clone()),
            (json!("Ann"), json!(["logistics", "medics"]))
        );
        assert_eq!(
            api.post("/api/v1/bubbles/ops/members/00000000000000000000000000000000/reinvite", Some(ADMIN), json!({}))
                .await
                .0,
            StatusCode::NOT_FOUND
        );
        api.finish().await;
    }
}

#[tokio::test]
async fn view_as_member_shows_exactly_the_slice_and_the_key_fingerprint() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let ann = member(&api, "Ann", json!(["medics"])).await;
        let bob = member(&api, "Bob", json!(["medics", "logistics"])).await;
        member(&api, "Cat", json!(["logistics"])).await;
        member(&api, "Dan", json!(["command"])).await;
        let (status, view) = api.get(&format!("/api/v1/bubbles/ops/members/{}/view", id_of(&ann)), Some(ADMIN)).await;
        assert_eq!(status, StatusCode::OK, "{backend}: {view}");
        let names: Vec<&str> =
            view["sees"].as_array().unwrap().iter().filter_map(|e| e["display_name"].as_str()).collect();
        assert_eq!(names, ["Bob", "Dan"], "{backend}: Ann sees her category and command, which sees medics");
        // Ann must not learn that Bob is in logistics too: the slice names only what she may know.
        assert_eq!(view["sees"][0]["categories"], json!(["medics"]));
        assert_eq!(view["sees"][0]["member"], id_of(&bob));
        let pk: PublicKey = ann.public_key();
        let digits = key_fingerprint(&pk);
        assert_eq!(view["fingerprint"].as_str().unwrap().replace(' ', ""), digits);
        assert_eq!(view["fingerprint"].as_str().unwrap().split(' ').count(), 6);
        // Revoked: no directory at all.
        api.post(&format!("/api/v1/bubbles/ops/members/{}/revoke", id_of(&ann)), Some(ADMIN), json!({})).await;
        let (_, view) = api.get(&format!("/api/v1/bubbles/ops/members/{}/view", id_of(&ann)), Some(ADMIN)).await;
        assert_eq!((view["status"].as_str(), view["sees"].clone()), (Some("revoked"), json!([])), "{backend}");
        assert_eq!(
            api.get("/api/v1/bubbles/ops/members/00000000000000000000000000000000/view", Some(ADMIN)).await.0,
            StatusCode::NOT_FOUND
        );
        api.finish().await;
    }
}

#[tokio::test]
async fn members_show_last_sessions_and_bubbles_their_latest_health() {
    for (backend, api) in backends(100).await {
        let credential = setup(&api).await;
        let ann = member(&api, "Ann", json!(["medics"])).await;
        let bob = member(&api, "Bob", json!(["medics"])).await;
        let now = api.now.load(Ordering::SeqCst);
        let event = |key: &IdentityKey, at: i64, kind: &str| json!({"at": at, "member": id_of(key), "kind": kind});
        let report = json!({
            "online_members": 1, "sessions": 1, "connections": 1, "envelopes_relayed": 7, "envelopes_refused": 0,
            "auth_failures": 0, "turn_allocations": 2, "turn_bytes_relayed": 123456, "events_dropped": 0,
            "events": [event(&ann, now - 30, "opened"), event(&bob, now - 20, "opened"), event(&bob, now - 10, "closed")],
        });
        assert_eq!(api.post("/api/v1/bubbles/ops/health", Some(&credential), report).await.0, StatusCode::NO_CONTENT);
        let (_, members) = api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        let by_name =
            |name: &str| members.as_array().unwrap().iter().find(|m| m["display_name"] == name).unwrap().clone();
        assert_eq!(
            (by_name("Ann")["online"].clone(), by_name("Ann")["last_seen"].clone()),
            (json!(true), json!(now - 30)),
            "{backend}"
        );
        assert_eq!(
            (by_name("Bob")["online"].clone(), by_name("Bob")["last_seen"].clone()),
            (json!(false), json!(now - 10))
        );
        let (_, bubbles) = api.get("/api/v1/bubbles", Some(ADMIN)).await;
        assert_eq!(bubbles[0]["id"], "ops");
        assert_eq!(
            (bubbles[0]["health"]["turn_allocations"].clone(), bubbles[0]["health"]["at"].clone()),
            (json!(2), json!(now))
        );
        assert_eq!(bubbles[0]["health"]["turn_bytes_relayed"], 123_456, "{backend}");
        // A bubble-server that stopped reporting cannot vouch for anyone being online.
        api.now.fetch_add(300, Ordering::SeqCst);
        let (_, members) = api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        assert!(members.as_array().unwrap().iter().all(|m| m["online"] == false), "{backend}: {members}");
        // A revoked member is never shown online.
        api.post("/api/v1/bubbles/ops/health", Some(&credential), json!({"online_members": 1, "sessions": 1, "connections": 1, "envelopes_relayed": 7, "envelopes_refused": 0, "auth_failures": 0, "turn_allocations": 0, "events_dropped": 0, "events": []})).await;
        api.post(&format!("/api/v1/bubbles/ops/members/{}/revoke", id_of(&ann)), Some(ADMIN), json!({})).await;
        let (_, members) = api.get("/api/v1/bubbles/ops/members", Some(ADMIN)).await;
        assert!(members.as_array().unwrap().iter().all(|m| m["online"] == false), "{backend}: {members}");
        // A report from an older bubble-server, without the relayed bytes, is read as 0.
        let (_, bubbles) = api.get("/api/v1/bubbles", Some(ADMIN)).await;
        assert_eq!(bubbles[0]["health"]["turn_bytes_relayed"], 0, "{backend}");
        let (_, info) = api.get("/api/v1/info", Some(ADMIN)).await;
        assert_eq!(
            (info["audit_retention_days"].clone(), info["sign_in"].clone()),
            (json!(90), json!("token")),
            "{info}"
        );
        api.finish().await;
    }
}

#[tokio::test]
async fn the_audit_trail_is_filtered_paged_and_exported() {
    for (backend, api) in backends(100).await {
        setup(&api).await;
        let start = api.now.load(Ordering::SeqCst);
        for (i, name) in ["=cmd|' /C calc'!A0", "Ann, the medic", "Bob \"B\""].iter().enumerate() {
            api.now.store(start + 100 * (i as i64 + 1), Ordering::SeqCst);
            api.post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": name})).await;
        }
        let count = |q: &'static str| {
            let api = &api;
            async move {
                let (status, events) = api.get(&format!("/api/v1/audit?{q}"), Some(ADMIN)).await;
                assert_eq!(status, StatusCode::OK, "{q}: {events}");
                events.as_array().unwrap().len()
            }
        };
        assert_eq!(count("action=invite.").await, 3, "{backend}");
        assert_eq!(count("action=invite.&bubble=ops").await, 3);
        assert_eq!(count("actor=bootstrap&action=category.").await, 3);
        assert_eq!(count("actor=nobody").await, 0);
        // Wildcards are taken literally.
        assert_eq!(count("action=%25").await, 0, "{backend}");
        assert_eq!(count("action=_").await, 0);
        let t = |d: i64| start + d;
        assert_eq!(
            count(Box::leak(format!("action=invite.&since={}&until={}", t(200), t(300)).into_boxed_str())).await,
            1
        );
        // Pages, newest first.
        let (_, first) = api.get("/api/v1/audit?action=invite.&limit=2", Some(ADMIN)).await;
        let (_, second) = api.get("/api/v1/audit?action=invite.&limit=2&offset=2", Some(ADMIN)).await;
        assert_eq!((first.as_array().unwrap().len(), second.as_array().unwrap().len()), (2, 1));
        assert!(
            first[0]["at"].as_i64() > first[1]["at"].as_i64() && first[1]["at"].as_i64() > second[0]["at"].as_i64()
        );
        assert_eq!(api.get("/api/v1/audit?actor=".to_owned().as_str(), Some(ADMIN)).await.0, StatusCode::OK);
        let long = format!("/api/v1/audit?actor={}", "a".repeat(200));
        assert_eq!(api.get(&long, Some(ADMIN)).await.0, StatusCode::BAD_REQUEST);
        assert_eq!(api.get("/api/v1/audit?colour=red", Some(ADMIN)).await.0, StatusCode::BAD_REQUEST);

        // CSV: a header, one line per event, quoting, and no formula a spreadsheet would run.
        let res = api
            .http
            .get(format!("{}/api/v1/audit.csv?action=invite.", api.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{backend}");
        assert!(res.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
        assert!(res.headers()["content-disposition"].to_str().unwrap().contains("attachment"));
        let csv = res.text().await.unwrap();
        let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], "at_utc,at_unix,bubble,actor,action,detail");
        assert_eq!(lines.len(), 4, "{csv}");
        assert!(lines[1].contains("\"for=Bob \"\"B\"\" categories=\""), "{csv}");
        assert!(lines[2].contains("\"for=Ann, the medic categories=\""), "{csv}");
        assert!(lines.iter().all(|l| !l.contains(",=")), "{csv}");
        assert!(lines[1].starts_with("20") && lines[1].contains("Z,"), "{csv}");
        assert_eq!(api.get("/api/v1/audit.csv", None).await.0, StatusCode::UNAUTHORIZED);
        api.finish().await;
    }
}

#[tokio::test]
async fn the_bubble_policy_is_set_checked_and_served_to_bubble_servers() {
    for (backend, api) in backends(100).await {
        let credential = setup(&api).await;
        let (status, policy) = api.get("/api/v1/bubbles/ops/policy", Some(ADMIN)).await;
        assert_eq!(status, StatusCode::OK, "{backend}");
        assert_eq!((policy["masked_by_default"].clone(), policy["files_allowed"].clone()), (json!(false), json!(true)));
        // Nothing required: the directory document carries no policy at all.
        assert!(api.get("/api/v1/bubbles/ops/directory", Some(&credential)).await.1.get("policy").is_none());
        let strict = json!({"masked_by_default": true, "disappear_within_secs": 86400, "files_allowed": true,
            "max_file_bytes": 1048576, "calls_allowed": false, "relay_only": true});
        let (status, body) =
            api.send(Method::PUT, "/api/v1/bubbles/ops/policy", Some(ADMIN), Some(strict.clone())).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{backend}: {body}");
        assert_eq!(api.get("/api/v1/bubbles/ops/policy", Some(ADMIN)).await.1, strict, "{backend}");
        // What the bubble-servers follow, and hand to members in welcome.
        let (_, doc) = api.get("/api/v1/bubbles/ops/directory", Some(&credential)).await;
        assert_eq!(doc["policy"], strict, "{backend}");
        // Out of bounds, unknown fields, other bubbles: refused, and the policy in force is unchanged.
        for (body, code) in [
            (json!({"max_file_bytes": 0}), StatusCode::BAD_REQUEST),
            (json!({"disappear_within_secs": 400 * 86400}), StatusCode::BAD_REQUEST),
            (json!({"relay_only": true, "record_messages": true}), StatusCode::BAD_REQUEST),
        ] {
            let (status, res) =
                api.send(Method::PUT, "/api/v1/bubbles/ops/policy", Some(ADMIN), Some(body.clone())).await;
            assert_eq!(status, code, "{backend}: {body} -> {res}");
        }
        assert_eq!(
            api.send(Method::PUT, "/api/v1/bubbles/ghost/policy", Some(ADMIN), Some(json!({}))).await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(api.get("/api/v1/bubbles/ops/policy", Some(ADMIN)).await.1, strict);
        // An auditor reads it and cannot change it.
        let (_, made) =
            api.post("/api/v1/tokens", Some(ADMIN), json!({"name": "ines", "role": "auditor", "bubbles": ["*"]})).await;
        let auditor = made["token"].as_str().unwrap();
        assert_eq!(api.get("/api/v1/bubbles/ops/policy", Some(auditor)).await.0, StatusCode::OK);
        assert_eq!(
            api.send(Method::PUT, "/api/v1/bubbles/ops/policy", Some(auditor), Some(json!({}))).await.0,
            StatusCode::FORBIDDEN
        );
        let (_, events) = api.get("/api/v1/audit?action=policy.", Some(ADMIN)).await;
        assert_eq!(events.as_array().unwrap().len(), 1, "{backend}: {events}");
        assert!(events[0]["detail"].as_str().unwrap().contains("relay_only=true"));
        api.finish().await;
    }
}
