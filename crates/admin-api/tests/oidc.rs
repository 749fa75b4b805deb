//! Administrator sign-in against a real OpenID Connect provider on loopback (npm `oidc-provider`, see
//! tests/oidc/README.md), on SQLite and PostgreSQL: a full authorization-code + PKCE login, then everything that
//! must be refused (wrong issuer, audience, nonce, expired or tampered ID token, replayed or injected codes, a
//! callback in another browser), CSRF on cookie sessions, roles from the claim, sign-out and expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use peerbubble_admin_api::oidc::{ClientSecretValue, Oidc, OidcConfig};
use reqwest::header::{LOCATION, SET_COOKIE};
use reqwest::{StatusCode, Url};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};

mod support;

use support::{ADMIN, Api, databases, serve_on, sqlite_db, test_state};

const CLIENT_ID: &str = "peerbubble-admin";
const CLIENT_SECRET: &str = "test-client-secret-7f3a";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// Installs the provider's locked npm packages once (xtask does it before the suite; this covers `cargo test`).
async fn npm_ready() {
    let dir = fixture_dir();
    if dir.join("node_modules/oidc-provider/package.json").exists() {
        return;
    }
    let status = tokio::process::Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .await
        .expect("npm is needed for the OpenID provider fixture (cargo xtask test installs it)");
    assert!(status.success(), "npm ci failed in {}", dir.display());
}

struct Provider {
    _child: tokio::process::Child,
    issuer: String,
}

impl Provider {
    async fn start(redirect_uri: &str) -> Self {
        npm_ready().await;
        let accounts = json!({
            "alice": ["admin"], "ann": ["auditor"], "bob": ["admin:field", "other-app-role"], "nobody": []
        });
        let mut child = tokio::process::Command::new("node")
            .arg("provider.mjs")
            .current_dir(fixture_dir())
            .env("PORT", "0")
            .env("CLIENT_ID", CLIENT_ID)
            .env("CLIENT_SECRET", CLIENT_SECRET)
            .env("REDIRECT_URI", redirect_uri)
            .env("ACCOUNTS", accounts.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node is needed for the OpenID provider fixture");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), BufReader::new(stdout).read_line(&mut line))
            .await
            .expect("the provider did not start within 30 s")
            .unwrap();
        let issuer = line.trim().strip_prefix("listening ").expect("unexpected provider output").to_owned();
        Self { _child: child, issuer }
    }

    async fn mode(&self, mode: &str) {
        let res = reqwest::Client::new()
            .post(format!("{}/__test/mode", self.issuer))
            .json(&json!({ "mode": mode }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
    }
}

/// A browser: keeps cookies, follows nothing on its own.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn location(res: &reqwest::Response) -> Url {
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "expected a redirect from {}", res.url());
    let to = res.headers().get(LOCATION).unwrap().to_str().unwrap();
    res.url().join(to).unwrap()
}

/// Starts a sign-in at the admin API and logs in at the provider as `login`; returns the browser and the
/// callback URL the provider sent it to (not yet visited).
async fn until_callback(api: &Api, login: &str) -> (reqwest::Client, Url) {
    let b = browser();
    let res = b.get(format!("{}/auth/login", api.base)).send().await.unwrap();
    let set_cookie = res.headers().get(SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    assert!(set_cookie.starts_with("pb_login=") && set_cookie.contains("HttpOnly"), "{set_cookie}");
    let authorize = location(&res);
    let query: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    let has = |k: &str, v: Option<&str>| query.iter().any(|(qk, qv)| qk == k && v.is_none_or(|v| v == qv));
    assert!(has("code_challenge_method", Some("S256")) && has("state", None) && has("nonce", None), "{authorize}");
    let interaction = location(&b.get(authorize).send().await.unwrap());
    let form = [("prompt", "login"), ("login", login), ("password", "x")];
    let resume = location(&b.post(interaction).form(&form).send().await.unwrap());
    let callback = location(&b.get(resume).send().await.unwrap());
    assert!(callback.as_str().starts_with(&format!("{}/auth/callback?", api.base)), "{callback}");
    (b, callback)
}

fn param(url: &Url, key: &str) -> String {
    url.query_pairs().find(|(k, _)| k == key).map(|(_, v)| v.into_owned()).unwrap()
}

fn with_params(url: &Url, code: &str, state: &str) -> Url {
    let mut out = url.clone();
    out.query_pairs_mut().clear().append_pair("code", code).append_pair("state", state);
    out
}

async fn error_of(res: reqwest::Response) -> (StatusCode, String, String) {
    let status = res.status();
    let no_session = res.headers().get_all(SET_COOKIE).iter().all(|c| !c.to_str().unwrap().starts_with("pb_session="));
    assert!(no_session, "a refused sign-in set a session cookie");
    let body: Value = res.json().await.unwrap();
    (status, body["error"].as_str().unwrap_or("").to_owned(), body["message"].as_str().unwrap_or("").to_owned())
}

/// Signs in as `login`; returns the browser (with its session cookie) and the session's CSRF token.
async fn sign_in(api: &Api, login: &str) -> (reqwest::Client, String) {
    let (b, callback) = until_callback(api, login).await;
    let res = b.get(callback).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{login}: {:?}", res.text().await);
    let session = b.get(format!("{}/auth/session", api.base)).send().await.unwrap();
    assert_eq!(session.status(), StatusCode::OK);
    let info: Value = session.json().await.unwrap();
    (b, info["csrf_token"].as_str().unwrap().to_owned())
}

async fn create_bubble(api: &Api, b: &reqwest::Client, csrf: Option<&str>, id: &str) -> (StatusCode, Value) {
    let mut req = b.post(format!("{}/api/v1/bubbles", api.base)).json(&json!({"id": id, "display_name": id}));
    if let Some(csrf) = csrf {
        req = req.header("X-CSRF-Token", csrf);
    }
    let res = req.send().await.unwrap();
    (res.status(), res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn administrators_sign_in_with_openid_connect() {
    for (backend, db) in databases().await {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let redirect = format!("http://{}/auth/callback", listener.local_addr().unwrap());
        let provider = Provider::start(&redirect).await;
        let (mut state, now) = test_state(db.store.clone(), 100);
        state.oidc = Some(Arc::new(
            Oidc::new(OidcConfig {
                issuer: provider.issuer.clone(),
                client_id: CLIENT_ID.into(),
                client_secret: Some(ClientSecretValue::new(CLIENT_SECRET.into())),
                redirect_url: redirect.clone(),
                roles_claim: "peerbubble_roles".into(),
                scopes: vec!["profile".into()],
                session_secs: 8 * 3600,
                after_login: "/".into(),
            })
            .unwrap(),
        ));
        let api = serve_on(listener, Some(db), state, now);

        // A full login: redirect to "/", a session cookie HttpOnly + SameSite=Strict (no Secure over plain HTTP).
        let (alice, callback) = until_callback(&api, "alice").await;
        let res = alice.get(callback.clone()).send().await.unwrap();
        assert_eq!(location(&res).path(), "/", "{backend}");
        let cookies: Vec<String> =
            res.headers().get_all(SET_COOKIE).iter().map(|c| c.to_str().unwrap().to_owned()).collect();
        let session_cookie = cookies.iter().find(|c| c.starts_with("pb_session=")).unwrap();
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
            assert!(session_cookie.contains(attribute), "{backend}: {session_cookie}");
        }
        assert!(!session_cookie.contains("Secure"), "{backend}: {session_cookie}");
        let info: Value = alice.get(format!("{}/auth/session", api.base)).send().await.unwrap().json().await.unwrap();
        assert_eq!((info["name"].as_str(), info["role"].as_str()), (Some("alice"), Some("admin")), "{backend}");
        assert_eq!(info["bubbles"], json!(["*"]), "{backend}");
        let csrf = info["csrf_token"].as_str().unwrap().to_owned();

        // CSRF: a change with the cookie alone, or with a wrong token, is refused; with the token it works.
        let (status, body) = create_bubble(&api, &alice, None, "field").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("csrf_required")), "{backend}");
        let (status, _) = create_bubble(&api, &alice, Some(&"0".repeat(64)), "field").await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{backend}");
        assert_eq!(create_bubble(&api, &alice, Some(&csrf), "field").await.0, StatusCode::CREATED, "{backend}");
        assert_eq!(create_bubble(&api, &alice, Some(&csrf), "ops").await.0, StatusCode::CREATED, "{backend}");
        let listed = alice.get(format!("{}/api/v1/bubbles", api.base)).send().await.unwrap();
        assert_eq!(listed.status(), StatusCode::OK, "{backend}: reads need no CSRF token");

        // The same callback again (a replayed code and state), in the same or another browser: refused.
        let (status, code, _) = error_of(alice.get(callback.clone()).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "login_unknown"), "{backend}");
        let (status, code, _) = error_of(browser().get(callback.clone()).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "login_unknown"), "{backend}");

        // A used code smuggled into a fresh login's state: the provider refuses it.
        let (mallory, fresh) = until_callback(&api, "alice").await;
        let smuggled = with_params(&fresh, &param(&callback, "code"), &param(&fresh, "state"));
        let (status, code, _) = error_of(mallory.get(smuggled).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "code_refused"), "{backend}");

        // Someone else's unused code with my state: bound to their PKCE verifier, refused.
        let (_victim, victim_callback) = until_callback(&api, "alice").await;
        let (attacker, attacker_callback) = until_callback(&api, "nobody").await;
        let injected =
            with_params(&attacker_callback, &param(&victim_callback, "code"), &param(&attacker_callback, "state"));
        let (status, code, _) = error_of(attacker.get(injected).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "code_refused"), "{backend}");

        // A callback delivered to another browser than the one that started the login (login CSRF): refused.
        let (_started_here, elsewhere) = until_callback(&api, "alice").await;
        let (status, code, _) = error_of(browser().get(elsewhere).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::BAD_REQUEST, "login_other_browser"), "{backend}");

        // ID tokens wrong in one property each: refused with a message that says which.
        for (mode, says) in [
            ("wrong-issuer", "issuer"),
            ("wrong-audience", "audience"),
            ("expired", "Expired"),
            ("tampered", "Signature"),
            ("wrong-nonce", "nonce"),
            ("no-nonce", "nonce"),
        ] {
            provider.mode(mode).await;
            let (b, callback) = until_callback(&api, "alice").await;
            let (status, code, message) = error_of(b.get(callback).send().await.unwrap()).await;
            assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "id_token_invalid"), "{backend} {mode}");
            assert!(message.contains(says), "{backend} {mode}: {message}");
        }
        provider.mode("normal").await;

        // No recognised role: refused, and the refusal is audited.
        let (b, callback) = until_callback(&api, "nobody").await;
        let (status, code, _) = error_of(b.get(callback).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::FORBIDDEN, "no_role"), "{backend}");

        // An auditor reads but cannot change anything, even with a valid CSRF token.
        let (ann, ann_csrf) = sign_in(&api, "ann").await;
        let (status, body) = create_bubble(&api, &ann, Some(&ann_csrf), "mine").await;
        assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{backend}");
        assert_eq!(ann.get(format!("{}/api/v1/audit", api.base)).send().await.unwrap().status(), StatusCode::OK);

        // An admin of one bubble (admin:field) manages it and cannot see another's members.
        let (bob, bob_csrf) = sign_in(&api, "bob").await;
        let members =
            |b: &reqwest::Client, bubble: &str| b.get(format!("{}/api/v1/bubbles/{bubble}/members", api.base)).send();
        assert_eq!(members(&bob, "field").await.unwrap().status(), StatusCode::OK, "{backend}");
        assert_eq!(members(&bob, "ops").await.unwrap().status(), StatusCode::FORBIDDEN, "{backend}");
        let category = bob
            .post(format!("{}/api/v1/bubbles/field/categories", api.base))
            .header("X-CSRF-Token", &bob_csrf)
            .json(&json!({"id": "medics", "display_name": "Medics"}))
            .send()
            .await
            .unwrap();
        assert_eq!(category.status(), StatusCode::CREATED, "{backend}");
        assert_eq!(create_bubble(&api, &bob, Some(&bob_csrf), "bobs").await.0, StatusCode::FORBIDDEN, "{backend}");

        // The audit trail names who signed in, and who was refused.
        let (_, audit) = api.get("/api/v1/audit?limit=1000", Some(ADMIN)).await;
        let actions: Vec<(String, String)> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["actor"].as_str().unwrap().to_owned(), e["action"].as_str().unwrap().to_owned()))
            .collect();
        assert!(actions.contains(&("admin:alice".into(), "admin.signed_in".into())), "{backend}: {actions:?}");
        assert!(actions.contains(&("admin:alice".into(), "bubble.created".into())), "{backend}: {actions:?}");
        assert!(actions.contains(&("oidc:nobody".into(), "admin.sign_in_refused".into())), "{backend}: {actions:?}");

        // Sign-out needs the CSRF token, ends the session server-side and clears the cookie.
        let logout = |csrf: Option<&str>| {
            let mut req = alice.post(format!("{}/auth/logout", api.base));
            if let Some(csrf) = csrf {
                req = req.header("X-CSRF-Token", csrf);
            }
            req.send()
        };
        assert_eq!(logout(None).await.unwrap().status(), StatusCode::FORBIDDEN, "{backend}");
        assert_eq!(logout(Some(&csrf)).await.unwrap().status(), StatusCode::NO_CONTENT, "{backend}");
        let after = alice.get(format!("{}/api/v1/bubbles", api.base)).send().await.unwrap();
        assert_eq!(after.status(), StatusCode::UNAUTHORIZED, "{backend}");

        // Sessions expire.
        api.now.fetch_add(8 * 3600 + 1, Ordering::SeqCst);
        let (status, code, _) = error_of(ann.get(format!("{}/api/v1/audit", api.base)).send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (StatusCode::UNAUTHORIZED, "session_expired"), "{backend}");

        api.finish().await;
    }
}

#[tokio::test]
async fn sign_in_without_a_provider_says_so() {
    let db = sqlite_db().await;
    let (state, now) = test_state(db.store.clone(), 100);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = serve_on(listener, Some(db), state, now);
    let res = browser().get(format!("{}/auth/login", api.base)).send().await.unwrap();
    let (status, code, _) = error_of(res).await;
    assert_eq!((status, code.as_str()), (StatusCode::NOT_FOUND, "oidc_not_configured"));
    api.finish().await;
}

#[tokio::test]
async fn an_unreachable_provider_is_a_clear_error() {
    let db = sqlite_db().await;
    let (mut state, now) = test_state(db.store.clone(), 100);
    // A port nothing listens on (bound, then closed).
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    state.oidc = Some(Arc::new(
        Oidc::new(OidcConfig {
            issuer: format!("http://{closed}"),
            client_id: CLIENT_ID.into(),
            client_secret: None,
            redirect_url: "http://127.0.0.1:1/auth/callback".into(),
            roles_claim: "peerbubble_roles".into(),
            scopes: vec![],
            session_secs: 3600,
            after_login: "/".into(),
        })
        .unwrap(),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = serve_on(listener, Some(db), state, now);
    let res = browser().get(format!("{}/auth/login", api.base)).send().await.unwrap();
    let (status, code, _) = error_of(res).await;
    assert_eq!((status, code.as_str()), (StatusCode::BAD_GATEWAY, "provider_unreachable"));
    // Bearer tokens keep working while the provider is down.
    assert_eq!(api.get("/api/v1/bubbles", Some(ADMIN)).await.0, StatusCode::OK);
    api.finish().await;
}
