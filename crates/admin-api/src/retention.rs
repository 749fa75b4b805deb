//! Audit retention, enforced: events older than the retention period are deleted, hourly.

use std::time::Duration;

use crate::state::Clock;
use crate::store::{Store, StoreError};

/// Deletes audit events older than `retention_days` at time `now`; returns how many.
pub async fn enforce(store: &Store, now: i64, retention_days: u32) -> Result<u64, StoreError> {
    store.prune_audit(now - i64::from(retention_days) * 24 * 3600).await
}

/// Runs [`enforce`] at start and every hour, for ever.
pub fn spawn(store: Store, clock: Clock, retention_days: u32) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match enforce(&store, clock(), retention_days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, retention_days, "audit retention enforced"),
                Err(err) => tracing::warn!(error = %err, "audit retention not enforced this hour"),
            }
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    })
}
