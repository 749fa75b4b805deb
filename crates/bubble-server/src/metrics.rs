//! Prometheus metrics (`peerbubble_signal_*`), via prometheus-client. Labels are fixed, small sets (reasons,
//! directions): never member ids, never content.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labeled = Family<Vec<(&'static str, &'static str)>, Counter>;

/// The bubble-server's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    connections: Gauge,
    sessions: Gauge,
    auth_failures: Labeled,
    envelopes_relayed: Counter,
    envelopes_refused: Labeled,
    refused_total: Counter,
    auth_failures_total: Counter,
    bytes_in: Counter,
    bytes_out: Counter,
    frame_errors: Labeled,
    security_events: Labeled,
    directory_reloads: Labeled,
    disconnects: Labeled,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("peerbubble_signal");
        let connections = Gauge::default();
        let sessions = Gauge::default();
        let auth_failures = Labeled::default();
        let envelopes_relayed = Counter::default();
        let envelopes_refused = Labeled::default();
        let (refused_total, auth_failures_total) = (Counter::default(), Counter::default());
        let bytes = Labeled::default();
        // The hot path increments these two without a label lookup.
        let bytes_in = bytes.get_or_create(&vec![("direction", "in")]).clone();
        let bytes_out = bytes.get_or_create(&vec![("direction", "out")]).clone();
        let frame_errors = Labeled::default();
        let security_events = Labeled::default();
        let directory_reloads = Labeled::default();
        let disconnects = Labeled::default();
        registry.register("connections", "Open WebSocket connections", connections.clone());
        registry.register("sessions", "Authenticated sessions", sessions.clone());
        registry.register("auth_failures", "Refused authentications by reason", auth_failures.clone());
        registry.register("envelopes_relayed", "Envelopes queued to a recipient session", envelopes_relayed.clone());
        registry.register("envelopes_refused", "Envelopes refused by reason", envelopes_refused.clone());
        registry.register("bytes", "Frame bytes by direction", bytes.clone());
        registry.register("frame_errors", "Frames refused by the codec or limits, by reason", frame_errors.clone());
        registry.register("security_events", "Security-relevant refusals by event", security_events.clone());
        registry.register("directory_reloads", "Directory loads by result", directory_reloads.clone());
        registry.register("disconnects", "Connections closed by the server, by reason", disconnects.clone());
        Self {
            inner: Arc::new(Inner {
                registry,
                connections,
                sessions,
                auth_failures,
                envelopes_relayed,
                envelopes_refused,
                refused_total,
                auth_failures_total,
                bytes_in,
                bytes_out,
                frame_errors,
                security_events,
                directory_reloads,
                disconnects,
            }),
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }

    pub(crate) fn connections(&self) -> &Gauge {
        &self.inner.connections
    }
    pub(crate) fn sessions(&self) -> &Gauge {
        &self.inner.sessions
    }
    pub(crate) fn auth_failure(&self, reason: &'static str) {
        self.inner.auth_failures.get_or_create(&vec![("reason", reason)]).inc();
        self.inner.auth_failures_total.inc();
    }
    pub(crate) fn relayed(&self, sessions: u64) {
        self.inner.envelopes_relayed.inc_by(sessions);
    }
    pub(crate) fn refused(&self, reason: &'static str) {
        self.inner.envelopes_refused.get_or_create(&vec![("reason", reason)]).inc();
        self.inner.refused_total.inc();
    }

    /// (connections, envelopes relayed, envelopes refused, auth failures) for health reports.
    pub(crate) fn counts(&self) -> (u32, u64, u64, u64) {
        (
            self.inner.connections.get().max(0) as u32,
            self.inner.envelopes_relayed.get(),
            self.inner.refused_total.get(),
            self.inner.auth_failures_total.get(),
        )
    }
    pub(crate) fn bytes_in(&self, n: usize) {
        self.inner.bytes_in.inc_by(n as u64);
    }
    pub(crate) fn bytes_out(&self, n: usize) {
        self.inner.bytes_out.inc_by(n as u64);
    }
    pub(crate) fn frame_error(&self, reason: &'static str) {
        self.inner.frame_errors.get_or_create(&vec![("reason", reason)]).inc();
    }
    pub(crate) fn security_event(&self, event: &'static str) {
        self.inner.security_events.get_or_create(&vec![("event", event)]).inc();
    }
    pub(crate) fn directory_reload(&self, result: &'static str) {
        self.inner.directory_reloads.get_or_create(&vec![("result", result)]).inc();
    }
    pub(crate) fn disconnect(&self, reason: &'static str) {
        self.inner.disconnects.get_or_create(&vec![("reason", reason)]).inc();
    }
}
