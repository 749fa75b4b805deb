//! Health reports: every interval the server sends its counts and the session events since the last report to a
//! sink (the admin API over HTTP, or the store in the micro-node). Events that cannot be delivered are kept
//! (bounded) for the next attempt.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use peerbubble_proto::health::HealthReport;

use crate::admin_source::BubbleCredential;
use crate::server::HealthHandle;

/// Where reports go.
pub trait HealthSink: Send + Sync + 'static {
    /// Delivers one report.
    fn send(&self, report: &HealthReport) -> impl Future<Output = Result<(), String>> + Send;
}

/// Sends a report every `interval`, for ever.
pub fn spawn_reporter<S: HealthSink>(health: HealthHandle, sink: S, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let report = health.report();
            if let Err(err) = sink.send(&report).await {
                tracing::warn!(error = %err, "health report not delivered; keeping its events for the next one");
                health.restore(report);
            }
        }
    })
}

/// Posts reports to `POST {admin}/api/v1/bubbles/{bubble}/health` with the bubble's credential.
#[derive(Debug, Clone)]
pub struct AdminApiReporter {
    client: reqwest::Client,
    url: String,
    credential: Arc<BubbleCredential>,
}

impl AdminApiReporter {
    /// Reports for `bubble` to the admin API at `base`.
    pub fn new(base: &str, bubble: &str, credential: BubbleCredential) -> Self {
        Self {
            client: reqwest::Client::new(),
            url: format!("{}/api/v1/bubbles/{bubble}/health", base.trim_end_matches('/')),
            credential: Arc::new(credential),
        }
    }
}

impl HealthSink for AdminApiReporter {
    async fn send(&self, report: &HealthReport) -> Result<(), String> {
        let bearer = self.credential.bearer().await?;
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(bearer)
            .timeout(Duration::from_secs(10))
            .json(report)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() { Ok(()) } else { Err(crate::admin_source::refusal(response).await) }
    }
}
