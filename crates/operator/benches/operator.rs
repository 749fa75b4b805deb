//! `cargo xtask bench operator`: 1 000 Bubbles with 5 Categories each, reconciled against an in-process API
//! server that answers like a real one (applies echoed, Deployments ready, load balancers assigned).
//!
//! Reports the time to reconcile all of them with the controller's concurrency, the p99 of one reconcile, and
//! the peak memory of the process (operator, caches and the fake API server's answers). The baseline, measured
//! in the same run, is the bare client cost: the same number of API calls with pre-rendered bodies and no
//! reconcile logic. Last line: `bench operator: bubbles=1000 total_s=.. p99_ms=.. rss_mb=..`.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use http::{Request, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use kube::client::Body;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::{Client, Resource as _};
use peerbubble_crd::{Bubble, BubbleSpec, Category, CategorySpec};
use peerbubble_operator::Context;
use peerbubble_operator::controller::{FINALIZER, reconcile_bubble};
use peerbubble_operator::metrics::Metrics;
use peerbubble_operator::render::Settings;
use serde_json::{Value, json};

const BUBBLES: usize = 1000;
const CATEGORIES: usize = 5;
const CONCURRENCY: usize = 16;

/// Answers like an API server that accepts everything: applies and status patches are echoed (Deployments
/// ready, Services with a load balancer address), the credential Secret exists, the TURN Secret does not yet.
/// Bubbles as stored by the fake API server, by path: a status patch is answered with the whole object.
type Stored = Arc<std::collections::HashMap<String, Value>>;

async fn answer(request: Request<Body>, calls: Arc<AtomicU64>, stored: Stored) -> Result<Response<Body>, Infallible> {
    calls.fetch_add(1, Ordering::Relaxed);
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let bytes = request.into_body().collect_bytes().await.unwrap_or_default();
    let (status, body) = match method.as_str() {
        "GET" if path.ends_with("-turn") => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "code": 404,
            "status": "Failure", "reason": "NotFound", "message": "not found"}),
        ),
        "GET" => (
            200,
            json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": path.rsplit('/').next().unwrap_or_default()}}),
        ),
        "DELETE" => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "code": 404, "status": "Failure",
            "reason": "NotFound", "message": "not found"}),
        ),
        _ => {
            let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            if let Some(object) = path.strip_suffix("/status").and_then(|p| stored.get(p)) {
                let status = body["status"].take();
                body = object.clone();
                body["status"] = status;
            } else if path.contains("/deployments/") {
                body["status"] = json!({"readyReplicas": body["spec"]["replicas"].clone()});
            } else if path.contains("/services/") {
                body["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
            }
            (200, body)
        }
    };
    let response = Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap();
    Ok(response)
}

fn client(calls: Arc<AtomicU64>, stored: Stored) -> Client {
    let service = tower::service_fn(move |request| answer(request, calls.clone(), stored.clone()));
    Client::new(service, "default")
}

fn bubble(i: usize) -> Bubble {
    let name = format!("mission-{i:04}");
    let spec: BubbleSpec = serde_json::from_value(json!({"displayName": format!("Mission {i}")})).unwrap();
    let mut bubble = Bubble::new(&name, spec);
    let meta = bubble.meta_mut();
    meta.namespace = Some(format!("ns-{}", i % 50));
    meta.uid = Some(format!("uid-{i}"));
    meta.generation = Some(1);
    meta.finalizers = Some(vec![FINALIZER.to_owned()]);
    bubble
}

fn categories(bubble: &Bubble) -> Vec<Category> {
    let name = bubble.metadata.name.clone().unwrap();
    let names: Vec<String> = (0..CATEGORIES).map(|c| format!("{name}-cat-{c}")).collect();
    names
        .iter()
        .enumerate()
        .map(|(c, id)| {
            let sees = vec![names[(c + 1) % CATEGORIES].clone()];
            let mut category = Category::new(id, CategorySpec { bubble: name.clone(), display_name: id.clone(), sees });
            category.metadata.namespace = bubble.metadata.namespace.clone();
            category
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let bubbles: Vec<Arc<Bubble>> = (0..BUBBLES).map(|i| Arc::new(bubble(i))).collect();
    let (store, mut writer) = reflector::store::<Category>();
    for bubble in &bubbles {
        for category in categories(bubble) {
            writer.apply_watcher_event(&watcher::Event::Apply(category));
        }
    }
    let settings = Settings {
        image: "registry.local/peerbubble/peerbubble:bench".into(),
        admin_api_url: "http://admin.peerbubble.svc:8481".into(),
        admin_api_namespace: "peerbubble".into(),
        bubble_token_audience: None,
        ingress_class: None,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let calls = Arc::new(AtomicU64::new(0));
    let stored: Stored = Arc::new(
        bubbles
            .iter()
            .map(|b| {
                let path = format!(
                    "/apis/peerbubble.io/v1alpha1/namespaces/{}/bubbles/{}",
                    b.metadata.namespace.as_deref().unwrap_or_default(),
                    b.metadata.name.as_deref().unwrap_or_default()
                );
                (path, serde_json::to_value(b.as_ref()).unwrap())
            })
            .collect(),
    );
    let ctx = Arc::new(Context::new(client(calls.clone(), stored.clone()), settings, store, metrics, None));

    // The operator: every Bubble reconciled, CONCURRENCY at a time (the controller's setting).
    let started = Instant::now();
    let mut durations: Vec<Duration> = futures_util::stream::iter(bubbles.iter().cloned())
        .map(|bubble| {
            let ctx = ctx.clone();
            async move {
                let t = Instant::now();
                reconcile_bubble(bubble, ctx).await.expect("reconcile succeeds");
                t.elapsed()
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let total = started.elapsed();
    let rss = peak_rss_mb();
    durations.sort();
    let operator_calls = calls.load(Ordering::Relaxed);

    // The baseline: as many API calls, bodies rendered beforehand, no reconcile logic.
    let body = ConfigMap {
        metadata: kube::api::ObjectMeta { name: Some("x".into()), ..Default::default() },
        data: Some([("policy.yaml".to_owned(), "categories: []\n".repeat(20))].into()),
        ..ConfigMap::default()
    };
    let baseline_client = client(Arc::new(AtomicU64::new(0)), stored);
    let params = PatchParams::apply("bench").force();
    let per_bubble = operator_calls / BUBBLES as u64;
    let started = Instant::now();
    futures_util::stream::iter(0..BUBBLES)
        .map(|i| {
            let api: Api<ConfigMap> = Api::namespaced(baseline_client.clone(), &format!("ns-{}", i % 50));
            let (body, params) = (body.clone(), params.clone());
            async move {
                for _ in 0..per_bubble {
                    api.patch("x", &params, &Patch::Apply(&body)).await.expect("baseline call");
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<()>>()
        .await;
    let baseline = started.elapsed();

    println!(
        "operator: {BUBBLES} bubbles x {CATEGORIES} categories, {operator_calls} API calls ({per_bubble} per reconcile), \
         concurrency {CONCURRENCY}"
    );
    println!(
        "p50_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        percentile(&durations, 0.50).as_secs_f64() * 1e3,
        percentile(&durations, 0.99).as_secs_f64() * 1e3,
        durations.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!(
        "baseline (same calls, no reconcile logic): total_s={:.3}; operator/baseline = {:.2}x",
        baseline.as_secs_f64(),
        total.as_secs_f64() / baseline.as_secs_f64()
    );
    println!("targets: all reconciled within 10 s, under 64 MB");
    println!(
        "bench operator: bubbles={BUBBLES} total_s={:.3} p99_ms={:.2} rss_mb={:.1}",
        total.as_secs_f64(),
        percentile(&durations, 0.99).as_secs_f64() * 1e3,
        rss
    );
}
