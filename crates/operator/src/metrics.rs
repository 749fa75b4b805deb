//! The operator's Prometheus metrics: reconciles, failures by reason, duration, leadership.

use std::sync::atomic::AtomicI64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Which controller a sample belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabel {
    /// `bubble` or `category`.
    pub controller: &'static str,
}

/// A failure's controller and reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// `bubble` or `category`.
    pub controller: &'static str,
    /// A short, bounded reason (see [`crate::Error::reason`]).
    pub reason: &'static str,
}

/// The metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles started.
    pub reconciles: Family<ControllerLabel, Counter>,
    /// Reconciles that failed, by reason.
    pub failures: Family<FailureLabels, Counter>,
    /// Reconcile duration.
    pub duration: Family<ControllerLabel, Histogram>,
    /// 1 while this replica holds the lease.
    pub leader: Gauge<i64, AtomicI64>,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            duration: Family::new_with_constructor(|| {
                Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
            }),
            leader: Gauge::default(),
        };
        let sub = registry.sub_registry_with_prefix("peerbubble_operator");
        sub.register("reconciles", "Reconciles started", metrics.reconciles.clone());
        sub.register("reconcile_failures", "Reconciles that failed, by reason", metrics.failures.clone());
        sub.register("reconcile_duration_seconds", "Reconcile duration", metrics.duration.clone());
        sub.register("leader", "1 while this replica holds the leader lease", metrics.leader.clone());
        metrics
    }

    /// Records a finished reconcile.
    pub fn observe(&self, controller: &'static str, took: Duration) {
        self.reconciles.get_or_create(&ControllerLabel { controller }).inc();
        self.duration.get_or_create(&ControllerLabel { controller }).observe(took.as_secs_f64());
    }

    /// Records a failure.
    pub fn failed(&self, controller: &'static str, reason: &'static str) {
        self.failures.get_or_create(&FailureLabels { controller, reason }).inc();
    }
}

/// The text exposition of `registry`.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}
