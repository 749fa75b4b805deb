//! Running the admin API service (alone, or inside `peerbubble up`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use peerbubble_admin_api::{ApiState, Store, router, system_clock, token};
use peerbubble_proto::limits::TokenBucket;

/// Admin API settings.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// Address of the admin API.
    #[arg(long, env = "PEERBUBBLE_ADMIN_LISTEN", default_value = "127.0.0.1:8481")]
    pub admin_listen: SocketAddr,
    /// Database: `sqlite://path` (default: admin.db in the data dir) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where members open invite links (the bubble's web address).
    #[arg(long, env = "PEERBUBBLE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Days audit events are kept.
    #[arg(long, env = "PEERBUBBLE_AUDIT_RETENTION_DAYS", default_value_t = 90)]
    pub audit_retention_days: u32,
}

/// A running admin API.
pub struct RunningAdmin {
    pub addr: SocketAddr,
    /// Printed once; valid until the process stops.
    pub bootstrap_token: String,
    pub store: Store,
}

/// Connects the store, starts retention and serves the API. Without an OpenID provider (not built yet) the
/// administrator signs in with a bootstrap token made at each start and printed once.
pub async fn start(args: &AdminArgs, default_db: String, public_url: String) -> anyhow::Result<RunningAdmin> {
    let url = args.database_url.clone().unwrap_or(default_db);
    let store = Store::connect(&url).await.context("cannot open the admin database")?;
    let bootstrap_token = token::random_token().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let clock = system_clock();
    peerbubble_admin_api::retention::spawn(store.clone(), clock.clone(), args.audit_retention_days);
    let state = Arc::new(ApiState {
        store: store.clone(),
        admin_token_hash: token::hash_token(&bootstrap_token),
        public_url: args.public_url.clone().unwrap_or(public_url),
        clock,
        enroll_limiter: Mutex::new(TokenBucket::new(5, 20, Instant::now())),
    });
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_listen))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %err, "admin API stopped");
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(RunningAdmin { addr, bootstrap_token, store })
}
