//! Prometheus metrics of the admin API (`peerbubble_admin_*`), served at `/metrics` for the chart's
//! ServiceMonitor. Labels are small fixed sets — route templates (`/api/v1/bubbles/{bubble}/invites`, never a
//! filled-in path), methods, status codes, refusal codes — never a member, a name, a token or a key.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::store::Store;

type Labels = Vec<(&'static str, String)>;

/// The admin API's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AdminMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    requests: Family<Labels, Counter>,
    refusals: Family<Labels, Counter>,
    enrollments: Counter,
}

impl AdminMetrics {
    /// Metrics over `store` (audit writes and the database pool are read from it at each scrape).
    pub fn new(store: Store) -> Self {
        let mut registry = Registry::with_prefix("peerbubble_admin");
        let requests = Family::<Labels, Counter>::default();
        registry.register("requests", "HTTP requests answered, by route template, method and status", requests.clone());
        let refusals = Family::<Labels, Counter>::default();
        registry.register("refusals", "Requests refused, by the error code answered", refusals.clone());
        let enrollments = Counter::default();
        registry.register(
            "enrollments",
            "Members enrolled (invites redeemed with proof of possession)",
            enrollments.clone(),
        );
        registry.register_collector(Box::new(StoreCollector(store)));
        Self { inner: Arc::new(Inner { registry, requests, refusals, enrollments }) }
    }

    pub(crate) fn answered(&self, route: &str, method: &str, status: u16, refusal: Option<&'static str>) {
        let labels = vec![("route", route.to_owned()), ("method", method.to_owned()), ("status", status.to_string())];
        self.inner.requests.get_or_create(&labels).inc();
        if let Some(reason) = refusal {
            self.inner.refusals.get_or_create(&vec![("reason", reason.to_owned())]).inc();
        }
        if route == "/api/v1/enroll" && status == 201 {
            self.inner.enrollments.inc();
        }
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }
}

/// Audit writes and the database pool, read when scraped.
#[derive(Debug)]
struct StoreCollector(Store);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let writes = ConstCounter::new(self.0.audit_writes());
        let metric = encoder.encode_descriptor(
            "audit_writes",
            "Audit events written (administrator actions, enrollments, session events)",
            None,
            writes.metric_type(),
        )?;
        writes.encode(metric)?;
        let (size, idle, max) = self.0.pool_stats();
        let mut family = encoder.encode_descriptor(
            "db_connections",
            "Database pool connections, by state (busy, idle) and the pool's maximum (max)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (state, value) in [("busy", size.saturating_sub(idle)), ("idle", idle), ("max", max)] {
            let gauge = ConstGauge::new(i64::from(value));
            gauge.encode(family.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}
