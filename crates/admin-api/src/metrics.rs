//! Prometheus metrics of the admin API (`peerbubble_admin_*`), served at `/metrics` for the chart's
//! ServiceMonitor. Labels are small fixed sets — route templates (`/api/v1/bubbles/{bubble}/invites`, never a
//! filled-in path), methods, status codes, refusal codes — never a member, a name, a token or a key.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::api::ApiState;
use crate::store::Store;

/// The refusal code an error response carries (the `error` field of its body), for the refusals counter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal(pub(crate) &'static str);

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

    fn answered(&self, route: &str, method: &str, status: u16, refusal: Option<&'static str>) {
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

/// Counts every routed request (a `route_layer`, so the route template is known).
pub(crate) async fn track(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let refusal = response.extensions().get::<Refusal>().map(|r| r.0);
    state.metrics.answered(&route, &method, response.status().as_u16(), refusal);
    response
}

/// `GET /metrics`.
pub(crate) async fn serve(State(state): State<Arc<ApiState>>) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], state.metrics.encode())
        .into_response()
}

/// Counts audit writes (kept by the store, read by the collector).
#[derive(Debug, Default)]
pub(crate) struct AuditWrites(AtomicU64);

impl AuditWrites {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
