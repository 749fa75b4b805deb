//! A bubble-server following its directory from the admin API with its bubble credential (the Kubernetes
//! shape): members enrolled through the API can connect; the server keeps serving its last directory while the
//! admin API is down; a wrong credential gets no directory at all; `peerbubble bubble-server`, started as the
//! operator starts it, reports health and session events.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use peerbubble_admin_api::{ApiState, Store, router, system_clock, token};
use peerbubble_bubble_server::{AdminApiSource, BubbleCredential, Config, Server};
use peerbubble_peer::SignalClient;
use peerbubble_proto::limits::TokenBucket;
use peerbubble_proto::{IdentityKey, Purpose, enroll_message};
use serde_json::{Value, json};

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let res = req.send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    res.json().await.unwrap_or(Value::Null)
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    http.get(url).bearer_auth("admin").send().await.unwrap().json().await.unwrap()
}

struct Admin {
    api: String,
    credential: String,
    keys: Vec<IdentityKey>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// An admin API on loopback with bubble `ops`, the categories (id, sees) and members (name, categories)
/// enrolled through invites.
async fn admin_api(categories: &[(&str, &[&str])], members: &[(&str, &[&str])]) -> (Admin, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("a.db").display())).await.unwrap();
    let mut state = ApiState::new(store, Some(token::hash_token("admin")), "http://x".into(), system_clock());
    state.enroll_limiter = Mutex::new(TokenBucket::new(100, 100, Instant::now()));
    let state = Arc::new(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move { axum::serve(listener, router(state)).await });

    let http = reqwest::Client::new();
    let bubble =
        post(&http, format!("{api}/api/v1/bubbles"), Some("admin"), json!({"id": "ops", "display_name": "Ops"})).await;
    let credential = bubble["credential"].as_str().unwrap().to_owned();
    for (id, sees) in categories {
        post(
            &http,
            format!("{api}/api/v1/bubbles/ops/categories"),
            Some("admin"),
            json!({"id": id, "display_name": id, "sees": sees}),
        )
        .await;
    }
    let mut keys = Vec::new();
    for (name, categories) in members {
        let invite = post(
            &http,
            format!("{api}/api/v1/bubbles/ops/invites"),
            Some("admin"),
            json!({"display_name": name, "categories": categories}),
        )
        .await;
        let token = invite["token"].as_str().unwrap();
        let key = IdentityKey::generate().unwrap();
        let signature = key.sign(Purpose::EnrollInvite, &enroll_message("ops", token, &key.public_key()));
        post(
            &http,
            format!("{api}/api/v1/enroll"),
            None,
            json!({"invite": token, "public_key": key.public_key().to_string(), "signature": signature.to_string()}),
        )
        .await;
        keys.push(key);
    }
    (Admin { api, credential, keys, task }, dir)
}

/// `peerbubble bubble-server` for bubble `ops` as the operator starts it (JSON logs, following `api` with the
/// credential in `credential_file`), with `extra` flags; and the address it listens on, from its own log line (the
/// rest of the log is drained so that it never blocks).
fn bubble_server(api: &str, credential_file: &std::path::Path, extra: &[&str]) -> (std::process::Child, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_peerbubble"))
        .args(["--log-format", "json", "bubble-server", "--listen", "127.0.0.1:0", "--admin-api-url", api])
        .args(["--bubble", "ops", "--bubble-credential-file"])
        .arg(credential_file)
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("bubble-server listening") {
                let log: Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(log["fields"]["addr"].as_str().unwrap().to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the bubble-server started");
    (child, addr)
}

/// What the operator deploys, started as it starts it: `peerbubble bubble-server` following the admin API
/// reports health samples and session events with its bubble credential.
#[tokio::test]
async fn the_bubble_server_command_reports_health_and_sessions_to_the_admin_api() {
    let (admin, dir) = admin_api(&[("team", &[])], &[("Ann", &["team"]), ("Bob", &["team"])]).await;
    let credential_file = dir.path().join("credential");
    std::fs::write(&credential_file, &admin.credential).unwrap();
    let (mut child, addr) = bubble_server(&admin.api, &credential_file, &["--health-interval-ms", "200"]);
    let url = format!("ws://{addr}/v1/signal");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The directory follows the admin API: connect once it has arrived.
    let _ann = loop {
        match SignalClient::connect(&url, &admin.keys[0]).await {
            Ok(ann) => break ann,
            Err(err) => assert!(Instant::now() < deadline, "Ann cannot connect: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let http = reqwest::Client::new();
    let api = &admin.api;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = get(&http, format!("{api}/api/v1/bubbles/ops/health")).await;
        let events = get(&http, format!("{api}/api/v1/audit?bubble=ops")).await;
        let opened = events.as_array().unwrap().iter().any(|e| {
            e["action"] == "session.opened"
                && e["detail"] == format!("member={}", admin.keys[0].public_key().member_id())
        });
        if samples.as_array().is_some_and(|s| s.iter().any(|s| s["online_members"] == 1)) && opened {
            break;
        }
        assert!(Instant::now() < deadline, "no health report arrived: {samples} {events}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test]
async fn bubble_server_follows_the_admin_api_and_survives_its_outage() {
    let (admin, _dir) = admin_api(&[("team", &[])], &[("Ann", &["team"]), ("Bob", &["team"])]).await;
    let Admin { api, credential, keys, task: api_task } = admin;

    let config = Config { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Config::default() };
    // A wrong credential: the server never gets a directory and stays unready.
    let wrong =
        AdminApiSource::new(&api, "ops", BubbleCredential::new("wrong".into()), Duration::from_millis(100)).unwrap();
    let unready = Server::start(config.clone(), wrong).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(500), unready.ready()).await.is_err());
    assert!(unready.metrics_text().contains("peerbubble_signal_directory_reloads_total{result=\"error\"} 1"));
    unready.shutdown().await.unwrap();

    let source =
        AdminApiSource::new(&api, "ops", BubbleCredential::new(credential.clone()), Duration::from_millis(100))
            .unwrap();
    assert!(!format!("{source:?}").contains(&credential), "the credential is redacted");
    let server = Server::start(config, source).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.ready()).await.unwrap();
    let url = format!("ws://{}/v1/signal", server.local_addr());
    let ann = SignalClient::connect(&url, &keys[0]).await.unwrap();
    assert_eq!(ann.display_names(), ["Bob"]);

    // The admin API goes away: the bubble keeps working on its last directory.
    api_task.abort();
    let _ = api_task.await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.metrics_text().contains("peerbubble_signal_directory_reloads_total{result=\"error\"} 1") {
        assert!(Instant::now() < deadline, "the outage was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bob = SignalClient::connect(&url, &keys[1]).await.unwrap();
    assert_eq!(bob.display_names(), ["Ann"]);
    server.shutdown().await.unwrap();
}

/// A credential or token file is read again for every request, as the kubelet rotates a projected token in place
/// (an atomic rename): a server that started with a stale one gets its directory once the file holds a good one,
/// without a restart; an unreadable file is an error of that poll, and the last directory stays.
#[tokio::test]
async fn the_credential_file_is_read_again_for_every_request() {
    let (admin, dir) = admin_api(&[("team", &[])], &[("Ann", &["team"])]).await;
    let file = dir.path().join("token");
    let write = |text: &str| {
        let tmp = dir.path().join("..token.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write("stale-token\n");
    let credential = BubbleCredential::from_file(file.clone());
    assert!(!format!("{credential:?}").contains("stale"), "{credential:?}");
    let source = AdminApiSource::new(&admin.api, "ops", credential, Duration::from_millis(100)).unwrap();
    let config = Config { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Config::default() };
    let server = Server::start(config, source).await.unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(400), server.ready()).await.is_err(), "stale token accepted");

    write(&format!("{}\n", admin.credential));
    tokio::time::timeout(Duration::from_secs(10), server.ready()).await.expect("the new file was not read");
    let url = format!("ws://{}/v1/signal", server.local_addr());
    assert!(SignalClient::connect(&url, &admin.keys[0]).await.is_ok());

    // The file disappears (a broken mount): polls fail, members keep the directory they had.
    let errors = |server: &Server| -> u64 {
        let text = server.metrics_text();
        let line = text.lines().find(|l| l.starts_with("peerbubble_signal_directory_reloads_total{result=\"error\"}"));
        line.and_then(|l| l.rsplit(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
    };
    let before = errors(&server);
    assert!(before > 0, "the stale token's refusals were counted");
    std::fs::remove_file(&file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors(&server) <= before {
        assert!(Instant::now() < deadline, "the missing file was not noticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(SignalClient::connect(&url, &admin.keys[0]).await.is_ok());
    server.shutdown().await.unwrap();
}

/// In Kubernetes the categories come from Category resources: the operator's policy file is laid over the admin
/// API's document, re-read at every poll; a category the policy drops is taken from its members.
#[tokio::test]
async fn a_policy_file_decides_who_sees_whom_and_its_changes_apply_live() {
    let (admin, dir) =
        admin_api(&[("ext", &[]), ("team", &["ext"])], &[("Ann", &["team"]), ("Bob", &["team"]), ("Cy", &["ext"])])
            .await;
    // The admin API lets team and ext see each other; the policy (Category resources) does not.
    let policy = dir.path().join("policy.yaml");
    let write = |yaml: &str| {
        let tmp = dir.path().join("policy.tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &policy).unwrap();
    };
    write("bubble: ops\ncategories:\n  - id: ext\n    sees: []\n  - id: team\n    sees: []\n");
    let source = AdminApiSource::new(
        &admin.api,
        "ops",
        BubbleCredential::new(admin.credential.clone()),
        Duration::from_millis(50),
    )
    .unwrap()
    .with_policy_file(policy.clone());
    let config = Config { listen: SocketAddr::from(([127, 0, 0, 1], 0)), ..Config::default() };
    let server = Server::start(config, source).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.ready()).await.unwrap();
    let url = format!("ws://{}/v1/signal", server.local_addr());
    assert_eq!(SignalClient::connect(&url, &admin.keys[0]).await.unwrap().display_names(), ["Bob"]);

    // A Category change: team now sees ext. No admin API change, the policy alone widens the view.
    write("bubble: ops\ncategories:\n  - id: ext\n    sees: [team]\n  - id: team\n    sees: [ext]\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = SignalClient::connect(&url, &admin.keys[0]).await.unwrap().display_names();
        if seen == ["Bob", "Cy"] {
            break;
        }
        assert!(Instant::now() < deadline, "the policy change did not apply: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The ext Category is deleted: Cy keeps no category and sees nobody, nobody sees Cy.
    write("bubble: ops\ncategories:\n  - id: team\n    sees: []\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = SignalClient::connect(&url, &admin.keys[0]).await.unwrap().display_names();
        if seen == ["Bob"] {
            break;
        }
        assert!(Instant::now() < deadline, "the dropped category still counts: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(SignalClient::connect(&url, &admin.keys[2]).await.unwrap().display_names().is_empty());

    // A policy for another bubble is refused; the server keeps its last directory.
    write("bubble: other\ncategories: []\n");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.metrics_text().contains("peerbubble_signal_directory_reloads_total{result=\"error\"}") {
        assert!(Instant::now() < deadline, "a foreign policy was not refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(SignalClient::connect(&url, &admin.keys[0]).await.unwrap().display_names(), ["Bob"]);
    server.shutdown().await.unwrap();
    admin.task.abort();
}

/// A bubble's own origin in a cluster without an Ingress: `peerbubble bubble-server` serves HTTPS with the
/// mounted certificate, and passes the browser client's enrollment to its admin API for its own bubble only.
#[tokio::test]
async fn the_bubble_server_serves_tls_and_passes_on_enrollments_of_its_own_bubble_only() {
    let (admin, dir) = admin_api(&[("team", &[])], &[("Ann", &["team"])]).await;
    let http = reqwest::Client::new();
    let api = admin.api.clone();
    post(&http, format!("{api}/api/v1/bubbles"), Some("admin"), json!({"id": "other", "display_name": "Other"})).await;
    let invite = |bubble: &'static str| {
        let (http, api) = (http.clone(), api.clone());
        async move {
            let body = json!({"display_name": "Cy", "categories": []});
            let invite = post(&http, format!("{api}/api/v1/bubbles/{bubble}/invites"), Some("admin"), body).await;
            let token = invite["token"].as_str().unwrap().to_owned();
            let key = IdentityKey::generate().unwrap();
            let signature = key.sign(Purpose::EnrollInvite, &enroll_message(bubble, &token, &key.public_key()));
            json!({"invite": token, "public_key": key.public_key().to_string(), "signature": signature.to_string()})
        }
    };
    // A certificate as a mounted Secret would hold it.
    let tls_dir = dir.path().join("tls");
    let source = peerbubble_bubble_server::TlsSource::Kept { dir: tls_dir.clone(), names: vec!["localhost".into()] };
    let pin = peerbubble_tls_trust::Pin::from_bytes(
        peerbubble_bubble_server::ServerTls::load(&source, &[]).unwrap().fingerprint(),
    );
    let credential_file = dir.path().join("credential");
    std::fs::write(&credential_file, &admin.credential).unwrap();
    let (cert, key) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
    let tls_args = ["--signal-tls-cert", cert.to_str().unwrap(), "--signal-tls-key", key.to_str().unwrap()];
    let (mut child, addr) = bubble_server(&admin.api, &credential_file, &tls_args);
    let addr: SocketAddr = addr.parse().unwrap();
    let origin = format!("https://localhost:{}", addr.port());
    let pinned = reqwest::Client::builder()
        .use_preconfigured_tls(peerbubble_tls_trust::client_config(peerbubble_tls_trust::Trust::Pinned(pin)).unwrap())
        .resolve("localhost", addr)
        .build()
        .unwrap();
    let health = pinned.get(format!("{origin}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "HTTPS with the mounted certificate");
    // Plain HTTP is not served on a TLS listener.
    assert!(http.get(format!("http://{addr}/healthz")).send().await.is_err());

    // An invite of another bubble is refused before it is used: it still enrolls where it belongs.
    let foreign = invite("other").await;
    let res = pinned.post(format!("{origin}/api/v1/enroll")).json(&foreign).send().await.unwrap();
    assert_eq!(res.status(), 403);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "wrong_bubble", "{body}");
    post(&http, format!("{api}/api/v1/enroll"), None, foreign).await;

    // Its own invite enrolls through the bubble's origin.
    let own = invite("ops").await;
    let member = own["public_key"].as_str().unwrap().parse::<peerbubble_proto::PublicKey>().unwrap().member_id();
    let res = pinned.post(format!("{origin}/api/v1/enroll")).json(&own).send().await.unwrap();
    assert_eq!(res.status(), 201);
    let enrolled: Value = res.json().await.unwrap();
    assert_eq!(enrolled["bubble"], "ops");
    assert_eq!(enrolled["member"], member.to_string());
    // Replayed: the admin API's own refusal comes back as it is.
    let res = pinned.post(format!("{origin}/api/v1/enroll")).json(&own).send().await.unwrap();
    assert_eq!(res.status(), 409);
    let body: Value = res.json().await.unwrap();
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");

    // Oversized: refused by the bubble-server, never forwarded.
    let huge = json!({"invite": "x".repeat(20_000), "public_key": "k", "signature": "s"});
    let res = pinned.post(format!("{origin}/api/v1/enroll")).json(&huge).send().await.unwrap();
    assert_eq!(res.status(), 413);

    // Nothing else of the admin API is reachable through the bubble, even with an administrator's token.
    let res = pinned.get(format!("{origin}/api/v1/bubbles")).bearer_auth("admin").send().await.unwrap();
    let text = res.text().await.unwrap();
    assert!(!text.contains("\"ops\"") && !text.contains("credential"), "admin API reached through the bubble: {text}");

    // The directory down: a clear answer, the invite untouched.
    admin.task.abort();
    let _ = admin.task.await;
    let later = invite_while_down(&pinned, &origin).await;
    assert_eq!(later["error"], "directory_unavailable", "{later}");
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn invite_while_down(client: &reqwest::Client, origin: &str) -> Value {
    let body = json!({"invite": "tok", "public_key": "k", "signature": "s"});
    let res = client.post(format!("{origin}/api/v1/enroll")).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 503);
    res.json().await.unwrap()
}
