//! The two controllers wired to their watches.
//!
//! Bubbles are reconciled when they change, when what they own changes (Deployments, Services, ConfigMaps,
//! NetworkPolicies, PodDisruptionBudgets carrying the operator's label) and when one of their
//! Categories changes, so a Category edit re-renders the bubble's policy within the watch latency (about a
//! second). Categories are reconciled when they or their Bubble change.
//!
//! Secrets are not watched, so that the operator needs no right to list or watch Secrets cluster-wide: a
//! deleted TURN Secret is made again at the next periodic check (5 minutes), or at once on any other change.
//!
//! The Bubble controller starts only once the Category cache is complete: a policy assembled from a partial
//! cache would drop categories and cut members off from each other.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, ResourceExt};
use peerbubble_crd::{Bubble, Category};

use crate::controller::{Context, error_policy, reconcile_bubble, reconcile_category};
use crate::metrics::Metrics;
use crate::render::{FIELD_MANAGER, Settings};

/// Concurrent reconciles per controller.
pub const CONCURRENCY: u16 = 16;

/// The Bubble a Category belongs to (the Category watch's mapping).
pub fn bubble_of(category: &Category) -> ObjectRef<Bubble> {
    ObjectRef::new(&category.spec.bubble).within(&category.namespace().unwrap_or_default())
}

/// Runs both controllers until `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    instance: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    let bubbles = Api::<Bubble>::all(client.clone());
    let categories = Api::<Category>::all(client.clone());
    let config = watcher::Config::default().any_semantic();
    let owned = watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));

    let category_controller = Controller::new(categories.clone(), config.clone());
    let store = category_controller.store();
    let ctx = Arc::new(Context::new(client.clone(), settings, store.clone(), metrics, instance));
    let lookup = store.clone();
    let category_run = category_controller
        .watches(bubbles.clone(), config.clone(), move |bubble: Bubble| {
            let (name, namespace) = (bubble.name_any(), bubble.namespace());
            lookup
                .state()
                .into_iter()
                .filter(|c| c.spec.bubble == name && c.namespace() == namespace)
                .map(|c| ObjectRef::from_obj(c.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile_category, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "category controller");
            }
        });
    let category_task = tokio::spawn(category_run);

    if store.wait_until_ready().await.is_err() {
        tracing::error!("the Category cache never became ready");
        return;
    }
    let bubble_run = Controller::new(bubbles, config.clone())
        .owns(Api::<Deployment>::all(client.clone()), owned.clone())
        .owns(Api::<Service>::all(client.clone()), owned.clone())
        .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
        .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
        .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned.clone())
        .owns(Api::<k8s_openapi::api::networking::v1::Ingress>::all(client.clone()), owned.clone())
        .owns(Api::<k8s_openapi::api::core::v1::PersistentVolumeClaim>::all(client.clone()), owned)
        .watches(categories, config, |category: Category| Some(bubble_of(&category)))
        .with_config(kube::runtime::controller::Config::default().concurrency(CONCURRENCY))
        .graceful_shutdown_on(shutdown)
        .run(reconcile_bubble, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "bubble controller");
            }
        });
    bubble_run.await;
    let _ = category_task.await;
}
