//! `peerbubble-operator`: the PeerBubble Kubernetes operator.
//!
//! Every replica serves `/healthz`, `/readyz` and `/metrics`; only the one holding the Lease reconciles.
//! A replica that loses the lease exits, so that Kubernetes restarts it as a standby with fresh caches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use clap::Parser;
use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use peerbubble_operator::metrics::{Metrics, encode};
use peerbubble_operator::render::Settings;
use peerbubble_operator::telemetry;
use prometheus_client::registry::Registry;

/// The PeerBubble operator: Bubble and Category resources into isolated bubble-server deployments.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The bubble-server image.
    #[arg(long, env = "PEERBUBBLE_BUBBLE_IMAGE")]
    bubble_image: String,
    /// The admin API URL bubbles follow unless their spec names another.
    #[arg(long, env = "PEERBUBBLE_ADMIN_API_URL")]
    admin_api_url: String,
    /// The namespace of the admin API (bubble pods may reach it).
    #[arg(long, env = "PEERBUBBLE_ADMIN_API_NAMESPACE")]
    admin_api_namespace: String,
    /// The audience of the ServiceAccount tokens bubble-servers present to the admin API (the admin API's
    /// --bubble-token-audience); unset to mount each bubble's credential Secret instead.
    #[arg(long, env = "PEERBUBBLE_BUBBLE_TOKEN_AUDIENCE")]
    bubble_token_audience: Option<String>,
    /// The IngressClass of a Bubble's Ingress when `spec.signaling.ingress.className` is unset; unset for the
    /// cluster's default IngressClass.
    #[arg(long, env = "PEERBUBBLE_INGRESS_CLASS")]
    ingress_class: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "PEERBUBBLE_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    metrics_listen: SocketAddr,
    /// The Lease used for leader election.
    #[arg(long, env = "PEERBUBBLE_LEASE_NAME", default_value = "peerbubble-operator")]
    lease_name: String,
    /// The namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// This replica's name (the lease holder identity and the Events' instance).
    #[arg(long, env = "POD_NAME")]
    pod_name: String,
    /// OTLP/HTTP collector base URL for traces (e.g. http://otel-collector.observability:4318); none: no traces.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Log as JSON lines.
    #[arg(long, env = "PEERBUBBLE_LOG_JSON", default_value_t = true, action = clap::ArgAction::Set)]
    log_json: bool,
}

#[derive(Clone)]
struct Web {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

async fn metrics(State(web): State<Web>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], encode(&web.registry))
}

async fn readyz(State(web): State<Web>) -> StatusCode {
    if web.ready.load(Ordering::Relaxed) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let traces = args.otlp_endpoint.as_deref().map(telemetry::otlp_provider).transpose()?;
    telemetry::init(args.log_json, traces.as_ref())?;
    let result = operate(args).await;
    if let Some(provider) = traces
        && let Err(e) = provider.shutdown()
    {
        tracing::warn!(error = %e, "could not flush traces");
    }
    result
}

async fn operate(args: Args) -> anyhow::Result<()> {
    let mut registry = Registry::default();
    let metrics_set = Arc::new(Metrics::register(&mut registry));
    let ready = Arc::new(AtomicBool::new(false));
    let web = Web { registry: Arc::new(registry), ready: ready.clone() };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(web);
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding {}", args.metrics_listen))?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });

    let client = Client::try_default().await.context("connecting to the Kubernetes API")?;
    let lease = LeaseManagerBuilder::new(client.clone(), &args.lease_name)
        .with_namespace(&args.lease_namespace)
        .with_identity(&args.pod_name)
        .with_field_manager(peerbubble_operator::render::FIELD_MANAGER)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .context("setting up leader election")?;
    let (mut leader, lease_task) = lease.watch().await;
    // A standby is ready: it serves metrics and takes over when the leader goes.
    ready.store(true, Ordering::Relaxed);
    tracing::info!(identity = %args.pod_name, lease = %args.lease_name, "waiting for the leader lease");
    tokio::select! {
        held = leader.wait_for(|held| *held) => { held.context("leader election stopped")?; }
        _ = tokio::signal::ctrl_c() => { return Ok(()); }
    }
    metrics_set.leader.set(1);
    tracing::info!("leader: reconciling Bubbles and Categories");

    let settings = Settings {
        image: args.bubble_image,
        admin_api_url: args.admin_api_url,
        admin_api_namespace: args.admin_api_namespace,
        bubble_token_audience: args.bubble_token_audience.filter(|a| !a.trim().is_empty()),
        ingress_class: args.ingress_class.filter(|c| !c.trim().is_empty()),
    };
    let mut lost = leader.clone();
    let shutdown = async move {
        tokio::select! {
            _ = lost.wait_for(|held| !*held) => tracing::warn!("leader lease lost"),
            _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
        }
    };
    peerbubble_operator::run::run(client, settings, metrics_set.clone(), Some(args.pod_name), shutdown).await;
    metrics_set.leader.set(0);
    let still_leader = *leader.borrow();
    drop(leader);
    // Dropping the receiver stops the lease task; releasing the lease lets a standby take over at once.
    if let Ok(Ok(manager)) = lease_task.await
        && let Err(e) = manager.release().await
    {
        tracing::warn!(error = %e, "could not release the leader lease");
    }
    if still_leader {
        Ok(())
    } else {
        anyhow::bail!("lost the leader lease; exiting so that Kubernetes restarts this replica as a standby")
    }
}
