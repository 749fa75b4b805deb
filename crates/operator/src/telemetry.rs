//! Logs, and OTLP traces when an endpoint is configured (OTLP over HTTP/protobuf, batched on its own thread).
//! Every reconcile is a span (`reconcile_bubble` / `reconcile_category`, with namespace and name), so a slow or
//! failing reconcile can be followed through the API calls it made.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

/// The service name in traces.
pub const SERVICE: &str = "peerbubble-operator";

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built.
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// What failed.
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was already installed.
    #[error("tracing is already set up: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// The OTLP trace pipeline: `endpoint` is the collector's base URL (as `OTEL_EXPORTER_OTLP_ENDPOINT`:
/// `/v1/traces` is appended).
pub fn otlp_provider(endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.to_owned(), source })?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(SERVICE).build())
        .build())
}

/// Installs the global subscriber: logs (JSON lines or text) filtered by `RUST_LOG` (default `info,kube=warn`),
/// and spans to `provider` when given. Keep the provider and call `shutdown` on it at exit to flush.
pub fn init(json: bool, provider: Option<&SdkTracerProvider>) -> Result<(), TelemetryError> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let logs = if json {
        tracing_subscriber::fmt::layer().json().with_filter(filter()).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_filter(filter()).boxed()
    };
    let traces =
        provider.map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(SERVICE)).with_filter(filter()).boxed());
    tracing_subscriber::registry().with(logs).with(traces).try_init()?;
    Ok(())
}
