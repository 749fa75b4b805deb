//! The admin API served over real HTTP on loopback, on SQLite and on PostgreSQL (127.0.0.1:5432; a test
//! reports itself skipped where no PostgreSQL answers).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use peerbubble_admin_api::{ApiState, Store, router, token};
use peerbubble_proto::limits::TokenBucket;
use reqwest::StatusCode;
use serde_json::Value;

pub const ADMIN: &str = "test-admin-token";

/// A database made for one test.
pub struct Db {
    pub store: Store,
    dir: Option<tempfile::TempDir>,
    /// The PostgreSQL server and the database made for this test, dropped by `Api::finish`.
    pg: Option<(sqlx::AnyPool, String)>,
    /// Its URL.
    pub url: String,
}

/// A fresh SQLite database in a temporary directory.
pub async fn sqlite_db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("admin.db").display());
    Db { store: Store::connect(&url).await.unwrap(), dir: Some(dir), pg: None, url }
}

/// A fresh database on the local PostgreSQL, or None (reported as skipped) when none answers.
pub async fn postgres_db() -> Option<Db> {
    let admin_url = std::env::var("PEERBUBBLE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    sqlx::any::install_default_drivers();
    let Ok(admin) = sqlx::AnyPool::connect(&admin_url).await else {
        eprintln!("SKIPPED: no PostgreSQL at {admin_url} (set PEERBUBBLE_TEST_POSTGRES)");
        return None;
    };
    let name =
        format!("pb_test_{}", token::random_token().unwrap().to_lowercase().replace(['-', '_'], "")[..16].to_owned());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await.unwrap();
    let url = admin_url.rsplit_once('/').map(|(base, _)| format!("{base}/{name}")).unwrap();
    Some(Db { store: Store::connect(&url).await.unwrap(), dir: None, pg: Some((admin, name)), url })
}

/// SQLite, and PostgreSQL where it answers.
pub async fn databases() -> Vec<(&'static str, Db)> {
    let mut out = vec![("sqlite", sqlite_db().await)];
    if let Some(pg) = postgres_db().await {
        out.push(("postgres", pg));
    }
    out
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub now: Arc<AtomicI64>,
    pub store: Store,
    /// The database this API owns (None for a reopened one).
    db: Option<Db>,
    url: String,
}

impl Api {
    /// Stops using the database and drops it if this test created one.
    pub async fn finish(self) {
        self.store.pool().close().await;
        if let Some(db) = self.db {
            db.store.pool().close().await;
            if let Some((admin, name)) = db.pg {
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&admin)
                    .await
                    .unwrap();
            }
        }
    }

    /// A second admin API process on the same database (as after a restart).
    pub async fn reopen(&self) -> Api {
        let store = Store::connect(&self.url).await.unwrap();
        let (state, now) = test_state(store, 100);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut api = serve_on(listener, None, state, now);
        api.url = self.url.clone();
        api
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Any method with an optional JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }
}

/// The state the tests use: bootstrap token `ADMIN`, a clock the test moves, the given enrollment burst.
pub fn test_state(store: Store, enroll_burst: u32) -> (ApiState, Arc<AtomicI64>) {
    let now = Arc::new(AtomicI64::new(1_800_000_000));
    let clock_now = now.clone();
    let mut state = ApiState::new(
        store,
        Some(token::hash_token(ADMIN)),
        "http://bubble.example".into(),
        Arc::new(move || clock_now.load(Ordering::SeqCst)),
    );
    state.enroll_limiter = Mutex::new(TokenBucket::new(1, enroll_burst, Instant::now()));
    (state, now)
}

/// Serves `state` on an already bound loopback listener.
pub fn serve_on(listener: tokio::net::TcpListener, db: Option<Db>, state: ApiState, now: Arc<AtomicI64>) -> Api {
    let base = format!("http://{}", listener.local_addr().unwrap());
    let store = state.store.clone();
    let url = db.as_ref().map(|d| d.url.clone()).unwrap_or_default();
    tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await });
    Api { base, http: reqwest::Client::new(), now, store, db, url }
}

pub async fn serve(db: Db, enroll_burst: u32) -> Api {
    let (state, now) = test_state(db.store.clone(), enroll_burst);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, Some(db), state, now)
}

pub async fn sqlite(enroll_burst: u32) -> Api {
    serve(sqlite_db().await, enroll_burst).await
}

pub async fn backends(enroll_burst: u32) -> Vec<(&'static str, Api)> {
    let mut out = Vec::new();
    for (name, db) in databases().await {
        out.push((name, serve(db, enroll_burst).await));
    }
    out
}
