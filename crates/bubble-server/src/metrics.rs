//! Prometheus metrics (`peerbubble_signal_*`), via prometheus-client. Labels are fixed, small sets (reasons,
//! directions): never member ids, never content.

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::turn::TurnRelay;

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
    commits_accepted: Counter,
    commits_conflict: Counter,
    mailbox_kept: Counter,
    mailbox_lost: Counter,
    mailbox_entries: Gauge,
    mailbox_bytes: Gauge,
    mailbox_key_packages: Gauge,
    replicas: Gauge,
    forwarded: Counter,
    turn: OnceLock<Arc<TurnRelay>>,
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
        let commits = Labeled::default();
        let commits_accepted = commits.get_or_create(&vec![("result", "accepted")]).clone();
        let commits_conflict = commits.get_or_create(&vec![("result", "conflict")]).clone();
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
        registry.register("commits", "MLS commits ordered, by result", commits);
        let (mailbox_kept, mailbox_lost) = (Counter::default(), Counter::default());
        let (mailbox_entries, mailbox_bytes) = (Gauge::default(), Gauge::default());
        registry.register("mailbox_kept", "Envelopes kept for a member with no session", mailbox_kept.clone());
        registry.register("mailbox_lost", "Kept envelopes dropped past their time to live", mailbox_lost.clone());
        registry.register("mailbox_entries", "Entries waiting in the mailbox", mailbox_entries.clone());
        registry.register("mailbox_bytes", "Bytes waiting in the mailbox", mailbox_bytes.clone());
        let mailbox_key_packages = Gauge::default();
        registry.register(
            "mailbox_key_packages",
            "KeyPackages kept for adding absent members (one-time and last-resort)",
            mailbox_key_packages.clone(),
        );
        let (replicas, forwarded) = (Gauge::default(), Counter::default());
        registry.register("replicas", "Replicas of the bubble this one hears from, itself included", replicas.clone());
        registry.register("forwarded", "Envelopes forwarded to other replicas (NATS messages)", forwarded.clone());
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
                commits_accepted,
                commits_conflict,
                mailbox_kept,
                mailbox_lost,
                mailbox_entries,
                mailbox_bytes,
                mailbox_key_packages,
                replicas,
                forwarded,
                turn: OnceLock::new(),
            }),
        }
    }

    /// Replicas heard from, this one included.
    pub(crate) fn replicas(&self, n: usize) {
        self.inner.replicas.set(n as i64);
    }

    /// Envelopes forwarded to other replicas.
    pub(crate) fn forwarded(&self, n: u64) {
        self.inner.forwarded.inc_by(n);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        if let Some(turn) = self.inner.turn.get() {
            let mut registry = Registry::with_prefix("peerbubble_turn");
            registry.register_collector(Box::new(TurnCollector(turn.clone())));
            let mut more = String::new();
            let _ = encode(&mut more, &registry);
            // One exposition: the signaling families, then the relay's, then a single EOF.
            if let Some(body) = out.strip_suffix("# EOF\n") {
                out = format!("{body}{more}");
            }
        }
        out
    }

    /// Exports the relay's counters (`peerbubble_turn_*`) with the signaling metrics.
    pub fn set_turn(&self, turn: Arc<TurnRelay>) {
        let _ = self.inner.turn.set(turn);
    }

    pub(crate) fn mailbox_kept(&self, n: u64) {
        self.inner.mailbox_kept.inc_by(n);
    }
    pub(crate) fn mailbox_lost(&self, n: u64) {
        self.inner.mailbox_lost.inc_by(n);
    }
    pub(crate) fn mailbox_counts(&self, counts: crate::mailbox::MailboxCounts) {
        self.inner.mailbox_entries.set(counts.entries as i64);
        self.inner.mailbox_bytes.set(counts.bytes as i64);
        self.inner.mailbox_key_packages.set(counts.key_packages as i64);
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
    /// A commit was ordered: accepted (first for its epoch) or refused as a conflict.
    pub(crate) fn commit(&self, accepted: bool) {
        let counter = if accepted { &self.inner.commits_accepted } else { &self.inner.commits_conflict };
        counter.inc();
    }
}

/// Reads the relay's counters at scrape time; labels are the fixed reason sets of `peerbubble_turn`.
#[derive(Debug)]
struct TurnCollector(Arc<TurnRelay>);

impl Collector for TurnCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (stats, allocations) = self.0.stats();
        let gauge = ConstGauge::new(allocations as i64);
        gauge.encode(encoder.encode_descriptor("allocations", "TURN allocations alive", None, MetricType::Gauge)?)?;
        let created = ConstCounter::new(stats.allocations_created);
        created.encode(encoder.encode_descriptor(
            "allocations_created",
            "TURN allocations created",
            None,
            MetricType::Counter,
        )?)?;
        let mut packets =
            encoder.encode_descriptor("packets", "Packets relayed by direction", None, MetricType::Counter)?;
        for (direction, (count, _)) in [("to_peer", stats.to_peer), ("to_client", stats.to_client)] {
            ConstCounter::new(count).encode(packets.encode_family(&[("direction", direction)])?)?;
        }
        let mut bytes =
            encoder.encode_descriptor("bytes", "Payload bytes relayed by direction", None, MetricType::Counter)?;
        for (direction, (_, count)) in [("to_peer", stats.to_peer), ("to_client", stats.to_client)] {
            ConstCounter::new(count).encode(bytes.encode_family(&[("direction", direction)])?)?;
        }
        for (name, help, map) in [
            ("auth_failures", "Requests refused for their credentials, by reason", &stats.auth_failures),
            ("refused_peers", "Peer addresses refused by the policy, by class", &stats.refused_peers),
            ("dropped", "Packets dropped, by reason", &stats.dropped),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            let mut sorted: Vec<_> = map.iter().collect();
            sorted.sort();
            for (reason, count) in sorted {
                ConstCounter::new(*count).encode(family.encode_family(&[("reason", *reason)])?)?;
            }
        }
        Ok(())
    }
}
