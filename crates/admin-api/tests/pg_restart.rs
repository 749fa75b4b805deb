//! PostgreSQL restarts while administrators are working: requests during the outage get a clear 503, the API
//! recovers on its own, and nothing it acknowledged is lost. Restarts this machine's local cluster
//! (`pg_ctlcluster`), so it lives alone in this test binary; skipped where there is no local cluster to restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

mod support;

use support::{ADMIN, postgres_db, serve};

/// The local cluster (`<version> main`), if this machine has one we may restart.
fn local_cluster() -> Option<String> {
    if std::env::var_os("PEERBUBBLE_TEST_POSTGRES").is_some() {
        return None; // someone else's server: never restart it
    }
    let version = std::fs::read_dir("/etc/postgresql").ok()?.filter_map(Result::ok).next()?.file_name();
    let version = version.to_str()?.to_owned();
    std::process::Command::new("pg_ctlcluster").arg("--help").output().ok()?;
    Some(version)
}

fn restart(version: &str) {
    let status = std::process::Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", "restart", "--mode", "fast"])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster restart failed");
}

#[tokio::test]
async fn a_postgresql_restart_loses_nothing_acknowledged() {
    let Some(version) = local_cluster() else {
        eprintln!("SKIPPED: no local PostgreSQL cluster to restart");
        return;
    };
    let Some(db) = postgres_db().await else { return };
    let api = serve(db, 100).await;
    let (status, body) = api.post("/api/v1/bubbles", Some(ADMIN), json!({"id": "ops", "display_name": "Ops"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let postmaster_started = || async {
        sqlx::query_scalar::<_, String>("SELECT pg_postmaster_start_time()::text").fetch_one(api.store.pool()).await
    };
    let before = postmaster_started().await.unwrap();
    let mut acknowledged = BTreeSet::new();
    let mut refused = 0;
    let mut restarted_at = None;
    let mut restarting = None;
    let started = Instant::now();
    let mut i = 0;
    // Write for a while before, during and after the restart.
    while restarted_at.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(3) || acknowledged.len() < 60) {
        assert!(started.elapsed() < Duration::from_secs(60), "the API did not recover from the restart");
        i += 1;
        let name = format!("member-{i}");
        let (status, body) =
            api.post("/api/v1/bubbles/ops/invites", Some(ADMIN), json!({"display_name": name, "categories": []})).await;
        match status {
            StatusCode::CREATED => {
                acknowledged.insert(name);
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["error"], "unavailable", "{body}");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        if restarting.is_none() && acknowledged.len() == 20 {
            // Restart while the writes go on.
            let version = version.clone();
            restarting = Some(tokio::task::spawn_blocking(move || restart(&version)));
        }
        if restarting.as_ref().is_some_and(tokio::task::JoinHandle::is_finished) && restarted_at.is_none() {
            restarting.take().unwrap().await.unwrap();
            restarted_at = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stored: BTreeSet<String> = sqlx::query_scalar("SELECT display_name FROM invites")
        .fetch_all(api.store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_ne!(postmaster_started().await.unwrap(), before, "PostgreSQL was not restarted");
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(acknowledged.len() >= 60, "{}", acknowledged.len());
    // Requests made during the outage wait for a connection (or get 503 after the pool's timeout): none fails
    // silently.
    eprintln!("{} acknowledged, {refused} answered 503 during the restart, none lost", acknowledged.len());
    assert_eq!(api.get("/readyz", None).await.0, StatusCode::OK);
    api.finish().await;
}
