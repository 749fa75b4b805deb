//! The directory from the admin API: this bubble's document only, fetched with this bubble's credential,
//! followed with conditional requests. While the admin API is unreachable the server keeps its last directory
//! (the follower keeps the previous one on any error).

use std::sync::Mutex;
use std::time::Duration;

use peerbubble_proto::directory::BubbleFile;
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};

use crate::directory::{Directory, DirectoryError, DirectorySource};

/// A bubble's credential for the admin API. `Debug` never prints it.
#[derive(Clone)]
pub struct BubbleCredential(String);

impl BubbleCredential {
    /// Wraps the credential the admin API issued when the bubble was created.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    pub(crate) fn secret(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for BubbleCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BubbleCredential(<redacted>)")
    }
}

/// Follows `GET {admin}/api/v1/bubbles/{bubble}/directory`.
#[derive(Debug)]
pub struct AdminApiSource {
    client: reqwest::Client,
    url: String,
    credential: BubbleCredential,
    interval: Duration,
    etag: Mutex<Option<String>>,
}

impl AdminApiSource {
    /// Follows `bubble`'s directory on the admin API at `base` (e.g. `http://127.0.0.1:8481`).
    pub fn new(
        base: &str,
        bubble: &str,
        credential: BubbleCredential,
        interval: Duration,
    ) -> Result<Self, DirectoryError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| DirectoryError::Read { path: base.into(), reason: e.to_string() })?;
        let url = format!("{}/api/v1/bubbles/{bubble}/directory", base.trim_end_matches('/'));
        Ok(Self { client, url, credential, interval, etag: Mutex::new(None) })
    }

    fn error(&self, reason: impl Into<String>) -> DirectoryError {
        DirectoryError::Read { path: self.url.clone().into(), reason: reason.into() }
    }
}

impl DirectorySource for AdminApiSource {
    async fn load(&self, current: Option<&str>) -> Result<Option<Directory>, DirectoryError> {
        let mut request = self.client.get(&self.url).bearer_auth(self.credential.secret());
        let known = self.etag.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let (Some(etag), Some(_)) = (&known, current) {
            request = request.header(IF_NONE_MATCH, etag);
        }
        let response = request.send().await.map_err(|e| self.error(format!("admin API unreachable: {e}")))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => return Ok(None),
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED => return Err(self.error("the admin API refused this bubble's credential")),
            other => return Err(self.error(format!("admin API answered {other}"))),
        }
        let etag = response.headers().get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await.map_err(|e| self.error(e.to_string()))?;
        if bytes.len() > crate::directory::MAX_BUBBLE_FILE_BYTES {
            return Err(self.error("directory document too large"));
        }
        let file: BubbleFile = serde_json::from_slice(&bytes).map_err(|e| DirectoryError::Parse(e.to_string()))?;
        let version = etag.clone().unwrap_or_default();
        let directory = Directory::compile(file, version)?;
        *self.etag.lock().unwrap_or_else(|p| p.into_inner()) = etag;
        Ok(Some(directory))
    }

    async fn changed(&self) {
        tokio::time::sleep(self.interval).await;
    }

    fn describe(&self) -> String {
        format!("admin API {}", self.url)
    }
}
