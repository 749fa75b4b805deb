//! The reconcilers: a Bubble becomes everything [`crate::render`] makes, applied with server-side apply; a
//! Category gets a status that says whether it is part of its bubble's policy.
//!
//! The shape is kube-rs controller-rs's: a [`Context`] shared by reconciles, `reconcile_*` functions that take
//! the object and the context and return an [`Action`], an [`error_policy`] with per-object exponential backoff,
//! and a finalizer on Bubbles for clean deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolumeClaim, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use peerbubble_crd::{Bubble, BubbleStatus, Category, CategoryStatus, Endpoints, NetworkPolicyMode, TurnServiceType};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::metrics::Metrics;
use crate::render::{self, FIELD_MANAGER, RenderError, SIGNAL_PORT, Settings, TURN_SECRET_KEY};
use crate::status::{Judgement, conditions, is_true};
use peerbubble_crd::conditions::{POLICY_APPLIED, READY, SCALED, SIGNALING_READY, TURN_READY};

/// The finalizer on every Bubble the operator has seen.
pub const FINALIZER: &str = "peerbubble.io/cleanup";
/// Set (to any new value) on a Bubble to rotate its TURN secret.
pub const ROTATE_ANNOTATION: &str = "peerbubble.io/rotate-turn-secret";
/// On the TURN Secret: the rotation value it was generated for.
pub const ROTATION_ON_SECRET: &str = "peerbubble.io/turn-secret-rotation";
/// The key of the bubble credential in `<bubble>-credential`.
pub const CREDENTIAL_KEY: &str = "credential";

/// How long a healthy bubble waits before it is checked again (drift, readiness).
pub const RESYNC: Duration = Duration::from_secs(300);
/// How long a bubble that is not Ready yet waits before it is checked again.
pub const NOT_READY_RECHECK: Duration = Duration::from_secs(15);
/// The first retry after a failure; doubled per consecutive failure up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Why a reconcile failed (invalid specs are not failures: they become conditions).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Adding or removing the finalizer failed, or the wrapped reconcile did.
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// The reconcile took longer than allowed.
    #[error("reconcile timed out after {0:?}")]
    Timeout(Duration),
    /// The object lacks what the API server always sets.
    #[error("the object lacks {0}")]
    Incomplete(&'static str),
    /// The system's random source failed.
    #[error("no randomness for a TURN secret: {0}")]
    Random(getrandom::Error),
}

impl Error {
    /// A short, bounded label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(e) => kube_reason(e),
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(inner) | finalizer::Error::CleanupFailed(inner) => inner.reason(),
                finalizer::Error::AddFinalizer(e) | finalizer::Error::RemoveFinalizer(e) => kube_reason(e),
                finalizer::Error::UnnamedObject | finalizer::Error::InvalidFinalizer => "incomplete",
            },
            Self::Timeout(_) => "timeout",
            Self::Incomplete(_) => "incomplete",
            Self::Random(_) => "random",
        }
    }
}

fn kube_reason(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(status) => match status.code {
            409 => "conflict",
            403 => "forbidden",
            404 => "not_found",
            422 => "invalid",
            429 => "throttled",
            500..=599 => "server_error",
            _ => "api_error",
        },
        kube::Error::SerdeError(_) => "bad_response",
        _ => "transport",
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// What reconciles share.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// What shapes the rendered objects.
    pub settings: Settings,
    /// Every Category the operator sees (kept by a reflector; a Bubble's policy is assembled from it).
    pub categories: Store<Category>,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The longest a reconcile may take before it counts as failed.
    pub timeout: Duration,
    failures: Mutex<HashMap<(String, String, &'static str), u32>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("settings", &self.settings).field("timeout", &self.timeout).finish()
    }
}

impl Context {
    /// A context for reconciles; `instance` names this replica in Events.
    pub fn new(
        client: Client,
        settings: Settings,
        categories: Store<Category>,
        metrics: Arc<Metrics>,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.to_owned(), instance };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            categories,
            metrics,
            timeout: Duration::from_secs(30),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String, &'static str), u32>> {
        // A poisoned map only holds retry counts: keep using it.
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The wait before the next retry of the object, after one more failure.
    pub fn backoff(&self, controller: &'static str, namespace: &str, name: &str) -> Duration {
        let mut failures = self.failures();
        let count = failures.entry((namespace.to_owned(), name.to_owned(), controller)).or_insert(0);
        *count = count.saturating_add(1);
        let exponent = count.saturating_sub(1).min(16);
        FIRST_BACKOFF.saturating_mul(1 << exponent).min(MAX_BACKOFF)
    }

    fn succeeded(&self, controller: &'static str, namespace: &str, name: &str) {
        self.failures().remove(&(namespace.to_owned(), name.to_owned(), controller));
    }

    async fn event<K: Resource<DynamicType = ()>>(&self, obj: &K, type_: EventType, reason: &str, note: String) {
        let event =
            Event { type_, reason: reason.to_owned(), note: Some(note), action: "Reconcile".into(), secondary: None };
        // An Event that cannot be published must not fail the reconcile; the status says the same.
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(error = %e, reason, "could not publish an Event");
        }
    }
}

/// Requeue policy after a failed reconcile: exponential backoff per object (1 s, 2 s, 4 s … 5 min).
pub fn error_policy<K: Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let controller = controller_name::<K>();
    ctx.metrics.failed(controller, error.reason());
    let namespace = obj.meta().namespace.clone().unwrap_or_default();
    let name = obj.meta().name.clone().unwrap_or_default();
    let wait = ctx.backoff(controller, &namespace, &name);
    tracing::warn!(%error, controller, %namespace, %name, retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

fn controller_name<K: Resource<DynamicType = ()>>() -> &'static str {
    if K::kind(&()) == "Bubble" { "bubble" } else { "category" }
}

async fn timed<F: Future<Output = Result<Action, Error>>>(
    ctx: &Context,
    controller: &'static str,
    namespace: &str,
    name: &str,
    work: F,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = match tokio::time::timeout(ctx.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(Error::Timeout(ctx.timeout)),
    };
    ctx.metrics.observe(controller, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(controller, namespace, name);
    }
    result
}

/// Reconciles one Bubble: adds the finalizer, applies what it becomes, reports status; on deletion, removes
/// everything it made.
#[tracing::instrument(skip_all, fields(namespace = bubble.metadata.namespace.as_deref(), name = bubble.metadata.name.as_deref()))]
pub async fn reconcile_bubble(bubble: Arc<Bubble>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = bubble.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let name = bubble.name_any();
    let api: Api<Bubble> = Api::namespaced(ctx.client.clone(), &namespace);
    let work = async {
        finalizer(&api, FINALIZER, bubble, |event| async {
            match event {
                finalizer::Event::Apply(bubble) => apply_bubble(&bubble, &ctx).await,
                finalizer::Event::Cleanup(bubble) => cleanup_bubble(&bubble, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    };
    timed(&ctx, "bubble", &namespace, &name, work).await
}

/// What a spec asks for that the schema cannot refuse (objects stored before a schema change, or values whose
/// form a pattern cannot check).
pub fn spec_problems(bubble: &Bubble) -> Vec<String> {
    let spec = &bubble.spec;
    let mut problems = Vec::new();
    if spec.turn.udp_port == spec.turn.tls_port {
        problems.push(format!("turn.udpPort and turn.tlsPort are both {}", spec.turn.udp_port));
    }
    if spec.turn.udp_port == SIGNAL_PORT || spec.turn.tls_port == SIGNAL_PORT {
        problems.push(format!("TURN ports must differ from the signaling port {SIGNAL_PORT}"));
    }
    for cidr in &spec.network_policy.cluster_cidrs {
        if !is_cidr(cidr) {
            problems.push(format!("networkPolicy.clusterCidrs: {cidr:?} is not a CIDR such as 10.96.0.0/12"));
        }
    }
    if let Some(address) = &spec.turn.external_address
        && address.parse::<std::net::IpAddr>().is_err()
        && !is_dns_name(address)
    {
        problems.push(format!("turn.externalAddress: {address:?} is neither an IP address nor a DNS name"));
    }
    problems
}

fn is_cidr(text: &str) -> bool {
    let Some((ip, prefix)) = text.split_once('/') else { return false };
    let Ok(prefix) = prefix.parse::<u8>() else { return false };
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => prefix <= 32,
        Ok(std::net::IpAddr::V6(_)) => prefix <= 128,
        Err(_) => false,
    }
}

fn is_dns_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn categories_of(ctx: &Context, namespace: &str, bubble: &str) -> Vec<Category> {
    let mut mine: Vec<Category> = ctx
        .categories
        .state()
        .iter()
        .filter(|c| c.spec.bubble == bubble && c.namespace().as_deref() == Some(namespace))
        .map(|c| c.as_ref().clone())
        .collect();
    mine.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    mine
}

async fn apply_one<K>(api: &Api<K>, obj: &K) -> Result<K, Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = obj.meta().name.clone().ok_or(Error::Incomplete("a name"))?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(obj)).await?)
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<bool, Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Applies `wanted`, or deletes `name` when the spec no longer wants such an object (a spec shrink).
async fn apply_or_delete<K>(api: &Api<K>, wanted: Option<&K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    match wanted {
        Some(obj) => apply_one(api, obj).await.map(drop),
        None => delete_if_present(api, name).await.map(drop),
    }
}

/// The TURN secret to render: the existing one, unless the Bubble asks for a rotation (`wanted_rotation`, the
/// value of its rotation annotation) the Secret has not had yet.
async fn turn_secret(
    ctx: &Context,
    namespace: &str,
    bubble: &Bubble,
    wanted_rotation: &str,
) -> Result<(Vec<u8>, bool), Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    if let Some(existing) = api.get_opt(&format!("{}-turn", bubble.name_any())).await? {
        let rotation = existing.annotations().get(ROTATION_ON_SECRET).cloned().unwrap_or_default();
        let value = existing.data.as_ref().and_then(|d| d.get(TURN_SECRET_KEY)).map(|v| v.0.clone());
        if let Some(value) = value
            && value.len() >= 32
            && rotation == *wanted_rotation
        {
            return Ok((value, false));
        }
    }
    let mut fresh = vec![0u8; 32];
    getrandom::fill(&mut fresh).map_err(Error::Random)?;
    Ok((fresh, true))
}

/// Secrets the Bubble needs that someone else provides.
async fn missing_secrets(ctx: &Context, namespace: &str, bubble: &Bubble) -> Result<Vec<String>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let needed = render::needed_secrets(bubble, &ctx.settings);
    let mut missing = Vec::new();
    for name in needed {
        if api.get_metadata_opt(&name).await?.is_none() {
            missing.push(name);
        }
    }
    Ok(missing)
}

async fn apply_bubble(bubble: &Bubble, ctx: &Context) -> Result<Action, Error> {
    let namespace = bubble.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let name = bubble.name_any();
    let problems = spec_problems(bubble);
    if !problems.is_empty() {
        let message = problems.join("; ");
        let judgements = [Judgement::not(READY, "InvalidSpec", message.clone())];
        if set_bubble_status(ctx, bubble, &judgements, Endpoints::default(), 0).await? {
            ctx.event(bubble, EventType::Warning, "InvalidSpec", message).await;
        }
        // Nothing to retry until the spec changes.
        return Ok(Action::await_change());
    }
    let categories = categories_of(ctx, &namespace, &name);
    let rotation = bubble.annotations().get(ROTATE_ANNOTATION).cloned().unwrap_or_default();
    let (secret, fresh) = turn_secret(ctx, &namespace, bubble, &rotation).await?;
    let mut rendered = match render::render(bubble, &categories, &ctx.settings, &secret) {
        Ok(rendered) => rendered,
        Err(e @ RenderError::UnknownCategory { .. }) => {
            // The last good policy stays applied; the bubble says why it is not updated.
            let message = format!("{e}; the previous policy stays in force");
            let judgements = [Judgement::not(READY, "InvalidCategory", message.clone())];
            if set_bubble_status(ctx, bubble, &judgements, Endpoints::default(), 0).await? {
                ctx.event(bubble, EventType::Warning, "InvalidCategory", message).await;
            }
            return Ok(Action::await_change());
        }
        Err(RenderError::Incomplete(what)) => return Err(Error::Incomplete(what)),
    };
    rendered.turn_secret.annotations_mut().insert(ROTATION_ON_SECRET.to_owned(), rotation);

    let client = &ctx.client;
    apply_one(&Api::<ServiceAccount>::namespaced(client.clone(), &namespace), &rendered.service_account).await?;
    apply_one(&Api::<Secret>::namespaced(client.clone(), &namespace), &rendered.turn_secret).await?;
    apply_one(&Api::<ConfigMap>::namespaced(client.clone(), &namespace), &rendered.policy).await?;
    let services_api = Api::<Service>::namespaced(client.clone(), &namespace);
    let mut services = Vec::with_capacity(rendered.services.len());
    for service in &rendered.services {
        services.push(apply_one(&services_api, service).await?);
    }
    let network_policies = Api::<NetworkPolicy>::namespaced(client.clone(), &namespace);
    apply_or_delete(&network_policies, rendered.network_policy.as_ref(), &name).await?;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace);
    apply_or_delete(&pdbs, rendered.pdb.as_ref(), &name).await?;
    // Before the Deployment that mounts it. Removing `spec.mailbox` deletes what waited in it.
    let claims = Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace);
    apply_or_delete(&claims, rendered.mailbox.as_ref(), &render::mailbox_claim(&name)).await?;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &namespace);
    apply_or_delete(&ingresses, rendered.ingress.as_ref(), &format!("{name}-signal")).await?;
    let deployment =
        apply_one(&Api::<Deployment>::namespaced(client.clone(), &namespace), &rendered.deployment).await?;
    if fresh {
        ctx.event(bubble, EventType::Normal, "TurnSecretGenerated", format!("TURN secret {name}-turn generated")).await;
    }

    let missing = missing_secrets(ctx, &namespace, bubble).await?;
    let ready_replicas = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
    let (judgements, endpoints) = judge(bubble, &namespace, ready_replicas, &services, &missing);
    let changed = set_bubble_status(ctx, bubble, &judgements, endpoints, ready_replicas).await?;
    let ready = judgements.iter().all(|j| j.ok);
    if changed {
        if let Some(first) = judgements.iter().find(|j| !j.ok) {
            let type_ = if first.reason == "SecretMissing" { EventType::Warning } else { EventType::Normal };
            ctx.event(bubble, type_, first.reason, first.message.clone()).await;
        } else if ready {
            ctx.event(bubble, EventType::Normal, "Ready", replicas_ready(ready_replicas)).await;
        }
    }
    Ok(Action::requeue(if ready { RESYNC } else { NOT_READY_RECHECK }))
}

fn turn_address(bubble: &Bubble, service: Option<&Service>) -> Option<String> {
    if let Some(address) = &bubble.spec.turn.external_address {
        return Some(address.clone());
    }
    let service = service?;
    match bubble.spec.turn.service_type {
        TurnServiceType::LoadBalancer => {
            let ingress = service.status.as_ref()?.load_balancer.as_ref()?.ingress.as_ref()?.first()?;
            ingress.ip.clone().or_else(|| ingress.hostname.clone())
        }
        TurnServiceType::NodePort | TurnServiceType::ClusterIP => Some(format!(
            "{}.{}.svc",
            service.metadata.name.as_deref().unwrap_or_default(),
            service.metadata.namespace.as_deref().unwrap_or_default()
        )),
    }
}

/// "1 replica ready", "2 replicas ready".
fn replicas_ready(n: i32) -> String {
    if n == 1 { "1 replica ready".to_owned() } else { format!("{n} replicas ready") }
}

fn judge(
    bubble: &Bubble,
    namespace: &str,
    ready_replicas: i32,
    services: &[Service],
    missing: &[String],
) -> (Vec<Judgement>, Endpoints) {
    let name = bubble.name_any();
    let spec = &bubble.spec;
    // A host is reached over TLS (its Ingress, a passthrough to the bubble-server's own certificate, or a proxy
    // of the platform); without one, the in-cluster Service, over TLS when the bubble-server has a certificate.
    let signaling = match (&spec.signaling.host, render::serves_tls(bubble)) {
        (Some(host), _) => format!("wss://{host}/v1/signal"),
        (None, true) => format!("wss://{name}-signal.{namespace}.svc:{SIGNAL_PORT}/v1/signal"),
        (None, false) => format!("ws://{name}-signal.{namespace}.svc:{SIGNAL_PORT}/v1/signal"),
    };
    let find = |suffix: &str| services.iter().find(|s| s.metadata.name.as_deref() == Some(&format!("{name}-{suffix}")));
    let address = turn_address(bubble, find("turn-udp"));
    let endpoints = Endpoints {
        signaling: Some(signaling),
        turn_udp: address.as_ref().map(|a| format!("turn:{a}:{}?transport=udp", spec.turn.udp_port)),
        turn_tls: address.as_ref().map(|a| format!("turns:{a}:{}?transport=tcp", spec.turn.tls_port)),
    };
    let running = render::replicas(spec);
    let scaled = if running == spec.replicas {
        Judgement::ok(SCALED, "AsRequested", format!("{running} replica(s) as requested"))
    } else {
        Judgement::not(
            SCALED,
            "NatsMissing",
            format!(
                "running 1 replica instead of {}: replicas share presence, routing and the commit ledger through \
                 NATS, and this Bubble names none (spec.nats); independent replicas would split the bubble in two",
                spec.replicas
            ),
        )
    };
    let issued =
        spec.signaling.ingress.as_ref().filter(|i| i.asks_cert_manager()).and(spec.signaling.tls_secret(&name));
    let signaling_ready = if !missing.is_empty() {
        let pending_issue = match &issued {
            Some(secret) if missing.contains(secret) => format!(
                "; cert-manager issues {secret} from the Ingress's annotations (`kubectl -n {namespace} describe \
                 certificate {secret}`)"
            ),
            _ => String::new(),
        };
        Judgement::not(
            SIGNALING_READY,
            "SecretMissing",
            format!(
                "Secret {} not found in namespace {namespace}; the bubble cannot serve without it \
                 (the bubble credential comes from `peerbubble` bubble creation on the admin API){pending_issue}",
                missing.join(", ")
            ),
        )
    } else if ready_replicas >= 1 {
        Judgement::ok(SIGNALING_READY, "ReplicasReady", format!("{ready_replicas}/{running} replicas ready"))
    } else {
        Judgement::not(SIGNALING_READY, "WaitingForReplicas", format!("0/{running} replicas ready"))
    };
    let turn_ready = if address.is_some() {
        Judgement::ok(TURN_READY, "AddressAssigned", "TURN Services have an address")
    } else {
        Judgement::not(TURN_READY, "AddressPending", "waiting for the load balancer to assign the TURN address")
    };
    let policy = match spec.network_policy.mode {
        NetworkPolicyMode::Enforce => Judgement::ok(POLICY_APPLIED, "Enforced", "NetworkPolicy applied"),
        NetworkPolicyMode::Disabled => {
            Judgement::ok(POLICY_APPLIED, "DisabledBySpec", "NetworkPolicies disabled by spec.networkPolicy.mode")
        }
    };
    let parts = [signaling_ready, turn_ready, policy];
    let ready = match parts.iter().find(|j| !j.ok) {
        None => Judgement::ok(READY, "Ready", "signaling, TURN and network policy are ready"),
        Some(first) => Judgement::not(READY, first.reason, first.message.clone()),
    };
    let mut all = vec![ready];
    all.extend(parts);
    // Not part of Ready: a bubble held at one replica serves its members.
    all.push(scaled);
    (all, endpoints)
}

/// Patches the Bubble's status when it changed; returns whether it did.
async fn set_bubble_status(
    ctx: &Context,
    bubble: &Bubble,
    judgements: &[Judgement],
    endpoints: Endpoints,
    ready_replicas: i32,
) -> Result<bool, Error> {
    let old = bubble.status.clone().unwrap_or_default();
    let generation = bubble.metadata.generation;
    let status = BubbleStatus {
        conditions: conditions(&old.conditions, judgements, generation, Timestamp::now()),
        observed_generation: generation,
        endpoints,
        ready_replicas,
    };
    if status == old {
        return Ok(false);
    }
    let namespace = bubble.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let api: Api<Bubble> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = json!({ "apiVersion": "peerbubble.io/v1alpha1", "kind": "Bubble", "status": status });
    api.patch_status(&bubble.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
    Ok(true)
}

/// Deletes everything made for the Bubble, so that nothing of a deleted mission keeps running even when the
/// Bubble was deleted with `--cascade=orphan` (owner references alone would leave the relay up).
async fn cleanup_bubble(bubble: &Bubble, ctx: &Context) -> Result<Action, Error> {
    let namespace = bubble.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let name = bubble.name_any();
    let client = &ctx.client;
    let mut removed = 0;
    removed += u32::from(delete_if_present(&Api::<Deployment>::namespaced(client.clone(), &namespace), &name).await?);
    removed += u32::from(
        delete_if_present(&Api::<Ingress>::namespaced(client.clone(), &namespace), &format!("{name}-signal")).await?,
    );
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    for suffix in ["signal", "turn-udp", "turn-tls"] {
        removed += u32::from(delete_if_present(&services, &format!("{name}-{suffix}")).await?);
    }
    removed +=
        u32::from(delete_if_present(&Api::<NetworkPolicy>::namespaced(client.clone(), &namespace), &name).await?);
    removed +=
        u32::from(delete_if_present(&Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace), &name).await?);
    removed += u32::from(
        delete_if_present(
            &Api::<PersistentVolumeClaim>::namespaced(client.clone(), &namespace),
            &render::mailbox_claim(&name),
        )
        .await?,
    );
    removed += u32::from(
        delete_if_present(&Api::<ConfigMap>::namespaced(client.clone(), &namespace), &format!("{name}-policy")).await?,
    );
    removed += u32::from(
        delete_if_present(&Api::<Secret>::namespaced(client.clone(), &namespace), &format!("{name}-turn")).await?,
    );
    removed += u32::from(
        delete_if_present(&Api::<ServiceAccount>::namespaced(client.clone(), &namespace), &format!("{name}-bubble"))
            .await?,
    );
    ctx.event(bubble, EventType::Normal, "Deleted", format!("removed {removed} objects made for the bubble")).await;
    Ok(Action::await_change())
}

/// Reconciles one Category: its status says whether it is part of its bubble's policy, and if not, why.
#[tracing::instrument(skip_all, fields(namespace = category.metadata.namespace.as_deref(), name = category.metadata.name.as_deref()))]
pub async fn reconcile_category(category: Arc<Category>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = category.namespace().ok_or(Error::Incomplete("a namespace"))?;
    let name = category.name_any();
    let work = async {
        let bubbles: Api<Bubble> = Api::namespaced(ctx.client.clone(), &namespace);
        let bubble = category.spec.bubble.clone();
        let judgement = if bubbles.get_metadata_opt(&bubble).await?.is_none() {
            Judgement::not(READY, "BubbleNotFound", format!("Bubble {bubble} does not exist in namespace {namespace}"))
        } else {
            let siblings: Vec<String> =
                categories_of(&ctx, &namespace, &bubble).iter().map(ResourceExt::name_any).collect();
            let unknown: Vec<&String> = category.spec.sees.iter().filter(|s| !siblings.contains(s)).collect();
            if unknown.is_empty() {
                Judgement::ok(READY, "InPolicy", format!("part of bubble {bubble}'s policy"))
            } else {
                let unknown: Vec<&str> = unknown.iter().map(|s| s.as_str()).collect();
                Judgement::not(
                    READY,
                    "UnknownCategory",
                    format!("sees {}, which is not a Category of bubble {bubble}", unknown.join(", ")),
                )
            }
        };
        let old = category.status.clone().unwrap_or_default();
        let generation = category.metadata.generation;
        let status = CategoryStatus {
            conditions: conditions(&old.conditions, std::slice::from_ref(&judgement), generation, Timestamp::now()),
            observed_generation: generation,
        };
        if status != old {
            let api: Api<Category> = Api::namespaced(ctx.client.clone(), &namespace);
            let patch = json!({ "apiVersion": "peerbubble.io/v1alpha1", "kind": "Category", "status": status });
            api.patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(patch)).await?;
            if !judgement.ok {
                ctx.event(category.as_ref(), EventType::Warning, judgement.reason, judgement.message.clone()).await;
            }
        }
        Ok(if is_true(&status.conditions, READY) {
            Action::requeue(RESYNC)
        } else {
            Action::requeue(NOT_READY_RECHECK)
        })
    };
    timed(&ctx, "category", &namespace, &name, work).await
}
