//! The micro-node's directory source: the embedded bubble-server reads its bubble's directory straight from
//! the admin API's store in the same process (no credential, no HTTP), checking for changes every interval.

use std::time::Duration;

use peerbubble_admin_api::Store;
use peerbubble_bubble_server::{Directory, DirectoryError, DirectorySource};

/// Follows one bubble in the store.
#[derive(Debug)]
pub struct StoreSource {
    store: Store,
    bubble: String,
    interval: Duration,
}

impl StoreSource {
    pub fn new(store: Store, bubble: String, interval: Duration) -> Self {
        Self { store, bubble, interval }
    }
}

impl DirectorySource for StoreSource {
    async fn load(&self, current: Option<&str>) -> Result<Option<Directory>, DirectoryError> {
        let read_err = |reason: String| DirectoryError::Read { path: format!("store:{}", self.bubble).into(), reason };
        // Nothing changed: one row read, not the whole directory (the store's revision, migration 0006).
        let revision = self.store.directory_revision(&self.bubble).await.map_err(|e| read_err(e.to_string()))?;
        let revision = revision.ok_or_else(|| read_err("no such bubble".into()))?;
        if current == Some(revision.as_str()) {
            return Ok(None);
        }
        let document = self.store.directory(&self.bubble).await.map_err(|e| read_err(e.to_string()))?;
        let (document, revision) = document.ok_or_else(|| read_err("no such bubble".into()))?;
        Ok(Some(Directory::compile(document, revision)?))
    }

    async fn changed(&self) {
        tokio::time::sleep(self.interval).await;
    }

    fn describe(&self) -> String {
        format!("embedded directory of bubble {}", self.bubble)
    }
}

/// The micro-node's health sink: reports go straight into the store.
#[derive(Debug)]
pub struct StoreSink {
    store: Store,
    bubble: String,
}

impl StoreSink {
    pub fn new(store: Store, bubble: String) -> Self {
        Self { store, bubble }
    }
}

impl peerbubble_bubble_server::HealthSink for StoreSink {
    async fn send(&self, report: &peerbubble_proto::health::HealthReport) -> Result<(), String> {
        let now = (peerbubble_admin_api::system_clock())();
        peerbubble_admin_api::record_health(&self.store, &self.bubble, now, report).await.map_err(|e| e.to_string())
    }
}
