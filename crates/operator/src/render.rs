//! What the operator makes for a Bubble: pure functions from the Bubble, its Categories and the operator's
//! settings to Kubernetes objects, so that everything it renders is covered by golden tests without a cluster.
//!
//! For a Bubble `b` in namespace `ns`: ServiceAccount `b-bubble`, Secret `b-turn` (TURN HMAC secret, generated
//! once and kept), ConfigMap `b-policy` (the category policy assembled from the Categories), Deployment `b`
//! (bubble-server: signaling + TURN), Services `b-signal` (ClusterIP), `b-turn-udp` and `b-turn-tls`,
//! NetworkPolicy `b` (unless disabled), a PodDisruptionBudget `b` when there is more than one replica, and an
//! Ingress `b-signal` when `spec.signaling.ingress` asks for one (ADR 0033).
//! Every object carries the same labels and an owner reference to the Bubble.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, HTTPGetAction,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServiceAccountTokenProjection, ServicePort, ServiceSpec, Volume,
    VolumeMount, VolumeProjection, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, IPBlock, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource as _;
use peerbubble_crd::{Bubble, Category, NetworkPolicyMode, TurnServiceType};
use serde::Serialize;

/// The signaling port inside the pod.
pub const SIGNAL_PORT: i32 = 8480;
/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "peerbubble-operator";
/// The label naming the bubble on everything made for it.
pub const BUBBLE_LABEL: &str = "peerbubble.io/bubble";
/// Key of the TURN secret in its Secret.
pub const TURN_SECRET_KEY: &str = "turn-secret";

/// The operator's settings that shape what it renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The bubble-server image.
    pub image: String,
    /// The admin API URL bubbles follow by default.
    pub admin_api_url: String,
    /// Labels of the admin API's pods and its namespace, for the egress policy.
    pub admin_api_namespace: String,
    /// The audience of the ServiceAccount token bubble-servers present to the admin API instead of the bubble
    /// credential (ADR 0032); None to mount the `<bubble>-credential` Secret.
    pub bubble_token_audience: Option<String>,
    /// The IngressClass of a bubble's Ingress when its spec names none (None: the cluster's default class).
    pub ingress_class: Option<String>,
}

/// Where the bubble-server's own signaling certificate is mounted (`spec.signaling.tls` without an Ingress).
const SIGNAL_TLS_DIR: &str = "/var/run/peerbubble/signal-tls";
/// Where TURN over TLS's certificate is mounted.
const TURN_TLS_DIR: &str = "/var/run/peerbubble/turn-tls";

/// Whether the bubble-server itself terminates TLS on its signaling listener: a certificate and no Ingress.
pub fn serves_tls(bubble: &Bubble) -> bool {
    bubble.spec.signaling.tls.is_some() && bubble.spec.signaling.ingress.is_none()
}

/// The Secret TURN over TLS serves: `turn.tls`, else the signaling certificate (the CRD's promise), else none
/// (a self-signed certificate made at start).
pub fn turn_tls_secret(bubble: &Bubble) -> Option<String> {
    let name = bubble.metadata.name.as_deref().unwrap_or_default();
    bubble.spec.turn.tls.as_ref().map(|t| t.secret_name.clone()).or_else(|| bubble.spec.signaling.tls_secret(name))
}

/// The Secrets the bubble needs and someone else provides: those its pods mount (they cannot start without
/// them), and the Ingress's certificate when it is named and not issued by cert-manager.
pub fn needed_secrets(bubble: &Bubble, settings: &Settings) -> Vec<String> {
    let name = bubble.metadata.name.as_deref().unwrap_or_default();
    let spec = &bubble.spec;
    let mut needed = Vec::new();
    if token_audience(bubble, settings).is_none() {
        needed.push(format!("{name}-credential"));
    }
    if let Some(tls) = &spec.signaling.tls
        && (serves_tls(bubble) || !spec.signaling.ingress.as_ref().is_some_and(|i| i.asks_cert_manager()))
    {
        needed.push(tls.secret_name.clone());
    }
    needed.extend(turn_tls_secret(bubble));
    needed.extend(spec.nats.iter().map(|n| n.credentials_secret.clone()));
    let mut seen = std::collections::BTreeSet::new();
    needed.retain(|s| seen.insert(s.clone()));
    needed
}

/// Where a bubble-server's projected ServiceAccount token is mounted.
pub const TOKEN_DIR: &str = "/var/run/peerbubble/token";
/// How long a projected token lives; the kubelet rotates it at 80 % (the shortest the API server allows).
pub const TOKEN_SECONDS: i64 = 600;

/// The label the admin API's control plane puts on the Bubbles it applies.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "peerbubble-admin-api");

/// The token audience when this bubble's servers present ServiceAccount tokens: the operator's setting, for a
/// Bubble the admin API applied (it maps the Bubble's namespace to it) that follows the default admin API. A
/// Bubble made by hand, or following an admin API elsewhere (`spec.directory.adminApiUrl`, which cannot review
/// this cluster's tokens), keeps its credential Secret.
pub fn token_audience<'a>(bubble: &Bubble, settings: &'a Settings) -> Option<&'a str> {
    let applied_by_admin_api =
        bubble.metadata.labels.as_ref().and_then(|l| l.get(MANAGED_BY.0)).is_some_and(|v| v == MANAGED_BY.1);
    settings
        .bubble_token_audience
        .as_deref()
        .filter(|_| applied_by_admin_api && bubble.spec.directory.admin_api_url.is_none())
}

/// Why a Bubble cannot be rendered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// The Bubble has no name, namespace or uid (not from the API server).
    #[error("the Bubble lacks {0}")]
    Incomplete(&'static str),
    /// A Category of this bubble sees a category that does not exist.
    #[error("category {category} sees {missing}, which is not a Category of this bubble")]
    UnknownCategory {
        /// The category.
        category: String,
        /// What it names.
        missing: String,
    },
}

/// Everything rendered for one Bubble.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rendered {
    /// ServiceAccount.
    pub service_account: ServiceAccount,
    /// TURN secret.
    pub turn_secret: Secret,
    /// Category policy.
    pub policy: ConfigMap,
    /// bubble-server.
    pub deployment: Deployment,
    /// Services: signaling, TURN UDP, TURN TCP/TLS.
    pub services: Vec<Service>,
    /// Network isolation (None when disabled).
    pub network_policy: Option<NetworkPolicy>,
    /// Kept replicas during drains (None with one replica).
    pub pdb: Option<PodDisruptionBudget>,
    /// The offline mailbox's volume (None without `spec.mailbox`).
    pub mailbox: Option<PersistentVolumeClaim>,
    /// The Ingress in front of signaling (None without `spec.signaling.ingress`).
    pub ingress: Option<Ingress>,
}

/// The replicas the bubble actually runs: what its spec asks for once replicas can share one bubble's state
/// (`peerbubble_crd::REPLICAS_SHARE_STATE`), else one, because independent replicas would split the bubble.
pub fn replicas(spec: &peerbubble_crd::BubbleSpec) -> i32 {
    if peerbubble_crd::REPLICAS_SHARE_STATE && spec.nats.is_some() { spec.replicas } else { 1 }
}

/// Where the bubble's NATS credentials Secret is mounted.
const NATS_CREDENTIALS_DIR: &str = "/var/run/peerbubble/nats";

/// The TCP port of a `nats://host:port` URL (4222 when absent).
fn nats_port(url: &str) -> i32 {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    authority.rsplit_once(':').and_then(|(_, port)| port.parse().ok()).unwrap_or(4222)
}

/// Where the offline mailbox's volume is mounted.
const MAILBOX_DIR: &str = "/var/lib/peerbubble/mailbox";

/// The name of the offline mailbox's PersistentVolumeClaim.
pub fn mailbox_claim(bubble: &str) -> String {
    format!("{bubble}-mailbox")
}

/// The labels on everything made for `bubble`.
pub fn labels(bubble: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "peerbubble-bubble".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), bubble.to_owned()),
        ("app.kubernetes.io/component".to_owned(), "bubble-server".to_owned()),
        ("app.kubernetes.io/managed-by".to_owned(), FIELD_MANAGER.to_owned()),
        (BUBBLE_LABEL.to_owned(), bubble.to_owned()),
    ])
}

fn selector(bubble: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "peerbubble-bubble".to_owned()),
        (BUBBLE_LABEL.to_owned(), bubble.to_owned()),
    ])
}

struct Ctx<'a> {
    name: &'a str,
    namespace: &'a str,
    owner: OwnerReference,
}

impl Ctx<'_> {
    fn meta(&self, name: String) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.to_owned()),
            labels: Some(labels(self.name)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// The category policy as the bubble-server reads it: categories of this bubble, sorted, with what each sees.
pub fn policy_yaml(bubble: &str, categories: &[Category]) -> Result<String, RenderError> {
    let mut mine: Vec<&Category> = categories.iter().filter(|c| c.spec.bubble == bubble).collect();
    mine.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let names: Vec<&str> = mine.iter().filter_map(|c| c.metadata.name.as_deref()).collect();
    let mut entries = String::new();
    for category in &mine {
        let id = category.metadata.name.as_deref().unwrap_or_default();
        for seen in &category.spec.sees {
            if !names.contains(&seen.as_str()) {
                return Err(RenderError::UnknownCategory { category: id.to_owned(), missing: seen.clone() });
            }
        }
        let mut sees = category.spec.sees.clone();
        sees.sort();
        // Ids are DNS labels (schema-validated); display names are quoted as JSON strings, which YAML reads.
        let display = serde_json::to_string(&category.spec.display_name).unwrap_or_default();
        entries += &format!("  - id: {id}\n    display_name: {display}\n    sees: [{}]\n", sees.join(", "));
    }
    let out = if entries.is_empty() {
        format!("bubble: {bubble}\ncategories: []\n")
    } else {
        format!("bubble: {bubble}\ncategories:\n{entries}")
    };
    Ok(out)
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("100m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_owned(), Quantity("256Mi".to_owned()))])),
        ..ResourceRequirements::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.into()), ..EnvVar::default() }
}

fn probe(path: &str, period: i32, tls: bool) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("signal".to_owned()),
            scheme: tls.then(|| "HTTPS".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

fn deployment(ctx: &Ctx<'_>, bubble: &Bubble, settings: &Settings, policy_hash: &str) -> Deployment {
    let spec = &bubble.spec;
    let admin_api = spec.directory.admin_api_url.clone().unwrap_or_else(|| settings.admin_api_url.clone());
    let mut pod_labels = labels(ctx.name);
    pod_labels.retain(|k, _| k != "app.kubernetes.io/managed-by");
    let mut container = Container {
        name: "bubble-server".to_owned(),
        image: Some(settings.image.clone()),
        args: Some(vec!["bubble-server".to_owned()]),
        env: Some(vec![
            env("PEERBUBBLE_LISTEN", format!("0.0.0.0:{SIGNAL_PORT}")),
            env("PEERBUBBLE_ADMIN_API_URL", admin_api),
            env("PEERBUBBLE_BUBBLE", ctx.name),
            match token_audience(bubble, settings) {
                Some(_) => env("PEERBUBBLE_BUBBLE_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
                None => env("PEERBUBBLE_BUBBLE_CREDENTIAL_FILE", "/var/run/peerbubble/credential/credential"),
            },
            env("PEERBUBBLE_POLICY_FILE", "/etc/peerbubble/policy/policy.yaml"),
            env("PEERBUBBLE_TURN_SECRET_FILE", format!("/var/run/peerbubble/turn/{TURN_SECRET_KEY}")),
            env("PEERBUBBLE_TURN_UDP_PORT", spec.turn.udp_port.to_string()),
            env("PEERBUBBLE_TURN_TLS_PORT", spec.turn.tls_port.to_string()),
            env("PEERBUBBLE_CLUSTER_CIDRS", spec.network_policy.cluster_cidrs.join(",")),
            env("PEERBUBBLE_LOG_FORMAT", "json"),
        ]),
        ports: Some(vec![
            ContainerPort { name: Some("signal".into()), container_port: SIGNAL_PORT, ..ContainerPort::default() },
            ContainerPort {
                name: Some("turn-udp".into()),
                container_port: spec.turn.udp_port,
                protocol: Some("UDP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("turn-tls".into()),
                container_port: spec.turn.tls_port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5, serves_tls(bubble))),
        liveness_probe: Some(probe("/healthz", 10, serves_tls(bubble))),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Capabilities::default() }),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..SeccompProfile::default() }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "credential".into(),
                mount_path: match token_audience(bubble, settings) {
                    Some(_) => TOKEN_DIR.into(),
                    None => "/var/run/peerbubble/credential".into(),
                },
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "turn".into(),
                mount_path: "/var/run/peerbubble/turn".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "policy".into(),
                mount_path: "/etc/peerbubble/policy".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    // Members are told the external address in their TURN URLs; a TLS Secret replaces the self-signed
    // certificate of TURN over TLS, and without an Ingress the signaling certificate is the bubble-server's own.
    // Secrets are mounted whole (no subPath), so that a renewal reaches the running pod.
    if let (Some(address), Some(env_vars)) = (&spec.turn.external_address, container.env.as_mut()) {
        env_vars.push(env("PEERBUBBLE_TURN_PUBLIC_HOST", address.clone()));
    }
    let turn_tls = turn_tls_secret(bubble);
    let signal_tls = spec.signaling.tls.as_ref().filter(|_| serves_tls(bubble)).map(|t| t.secret_name.clone());
    for (dir, volume, cert_env, key_env, wanted) in [
        (TURN_TLS_DIR, "turn-tls", "PEERBUBBLE_TURN_TLS_CERT", "PEERBUBBLE_TURN_TLS_KEY", turn_tls.is_some()),
        (SIGNAL_TLS_DIR, "signal-tls", "PEERBUBBLE_SIGNAL_TLS_CERT", "PEERBUBBLE_SIGNAL_TLS_KEY", signal_tls.is_some()),
    ] {
        if let (true, Some(env_vars), Some(mounts)) = (wanted, container.env.as_mut(), container.volume_mounts.as_mut())
        {
            env_vars.push(env(cert_env, format!("{dir}/tls.crt")));
            env_vars.push(env(key_env, format!("{dir}/tls.key")));
            mounts.push(VolumeMount {
                name: volume.into(),
                mount_path: dir.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
    }
    let secret_volume = |name: &str, secret: String| Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut volumes = vec![
        match token_audience(bubble, settings) {
            // Bound to the admin API's audience: useless against the API server, and the pod mounts no other token.
            Some(audience) => Volume {
                name: "credential".into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(vec![VolumeProjection {
                        service_account_token: Some(ServiceAccountTokenProjection {
                            audience: Some(audience.to_owned()),
                            expiration_seconds: Some(TOKEN_SECONDS),
                            path: "token".into(),
                        }),
                        ..VolumeProjection::default()
                    }]),
                    default_mode: Some(0o440),
                }),
                ..Volume::default()
            },
            None => secret_volume("credential", format!("{}-credential", ctx.name)),
        },
        secret_volume("turn", format!("{}-turn", ctx.name)),
        Volume {
            name: "policy".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: format!("{}-policy", ctx.name),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    if let Some(secret) = turn_tls {
        volumes.push(secret_volume("turn-tls", secret));
    }
    if let Some(secret) = signal_tls {
        volumes.push(secret_volume("signal-tls", secret));
    }
    // The offline mailbox in the bubble's JetStream stream, shared by the replicas, when they share NATS.
    if let (Some(mailbox), Some(_), Some(env_vars)) = (&spec.mailbox, &spec.nats, container.env.as_mut()) {
        env_vars.push(env("PEERBUBBLE_MAILBOX_JETSTREAM", "true"));
        env_vars.push(env("PEERBUBBLE_MAILBOX_TTL_SECS", (u64::from(mailbox.ttl_hours) * 3600).to_string()));
    }
    // Otherwise on its own volume, the only writable path of the pod.
    if let (Some(mailbox), None, Some(env_vars), Some(mounts)) =
        (&spec.mailbox, &spec.nats, container.env.as_mut(), container.volume_mounts.as_mut())
    {
        env_vars.push(env("PEERBUBBLE_MAILBOX", format!("{MAILBOX_DIR}/mailbox.sqlite")));
        env_vars.push(env("PEERBUBBLE_MAILBOX_TTL_SECS", (u64::from(mailbox.ttl_hours) * 3600).to_string()));
        mounts.push(VolumeMount { name: "mailbox".into(), mount_path: MAILBOX_DIR.into(), ..VolumeMount::default() });
        volumes.push(Volume {
            name: "mailbox".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: mailbox_claim(ctx.name),
                read_only: Some(false),
            }),
            ..Volume::default()
        });
    }
    // Replicas share presence, routing and the commit ledger through NATS, with this bubble's own credentials.
    if let (Some(nats), Some(env_vars), Some(mounts)) =
        (&spec.nats, container.env.as_mut(), container.volume_mounts.as_mut())
    {
        env_vars.push(env("PEERBUBBLE_NATS_URL", nats.url.clone()));
        env_vars.push(env("PEERBUBBLE_NATS_CREDENTIALS", NATS_CREDENTIALS_DIR));
        mounts.push(VolumeMount {
            name: "nats".into(),
            mount_path: NATS_CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(secret_volume("nats", nats.credentials_secret.clone()));
    }
    // A ReadWriteOnce volume cannot be attached to a second pod on another node: the old pod goes first.
    let strategy = match (&spec.mailbox, &spec.nats) {
        (Some(_), None) => DeploymentStrategy { type_: Some("Recreate".into()), rolling_update: None },
        _ => DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_unavailable: Some(IntOrString::Int(0)),
                max_surge: Some(IntOrString::Int(1)),
            }),
        },
    };
    Deployment {
        metadata: ctx.meta(ctx.name.to_owned()),
        spec: Some(DeploymentSpec {
            replicas: Some(replicas(spec)),
            selector: LabelSelector { match_labels: Some(selector(ctx.name)), ..LabelSelector::default() },
            strategy: Some(strategy),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    // A policy change rolls the pods (the ConfigMap is also re-read live).
                    annotations: Some(BTreeMap::from([(
                        "peerbubble.io/policy-sha256".to_owned(),
                        policy_hash.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(format!("{}-bubble", ctx.name)),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(65532),
                        run_as_group: Some(65532),
                        fs_group: Some(65532),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn services(ctx: &Ctx<'_>, bubble: &Bubble) -> Vec<Service> {
    let turn = &bubble.spec.turn;
    let service_type = match turn.service_type {
        TurnServiceType::LoadBalancer => "LoadBalancer",
        TurnServiceType::NodePort => "NodePort",
        TurnServiceType::ClusterIP => "ClusterIP",
    };
    let external = turn.service_type != TurnServiceType::ClusterIP;
    let service = |suffix: &str, kind: &str, port: i32, protocol: &str, target: &str| Service {
        metadata: ctx.meta(format!("{}-{suffix}", ctx.name)),
        spec: Some(ServiceSpec {
            type_: Some(kind.to_owned()),
            selector: Some(selector(ctx.name)),
            ports: Some(vec![ServicePort {
                name: Some(target.to_owned()),
                port,
                protocol: Some(protocol.to_owned()),
                target_port: Some(IntOrString::String(target.to_owned())),
                ..ServicePort::default()
            }]),
            // TURN relays must see clients' real addresses (permissions, quotas).
            external_traffic_policy: (external && kind != "ClusterIP").then(|| "Local".to_owned()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    vec![
        service("signal", "ClusterIP", SIGNAL_PORT, "TCP", "signal"),
        service("turn-udp", service_type, turn.udp_port, "UDP", "turn-udp"),
        service("turn-tls", service_type, turn.tls_port, "TCP", "turn-tls"),
    ]
}

/// The Ingress for `spec.signaling.host`: everything on that host goes to the bubble-server, which serves the
/// web client, passes enrollments to the admin API and speaks signaling on one origin.
fn ingress(ctx: &Ctx<'_>, bubble: &Bubble, settings: &Settings) -> Option<Ingress> {
    let signaling = &bubble.spec.signaling;
    let (wanted, host) = (signaling.ingress.as_ref()?, signaling.host.clone()?);
    let mut metadata = ctx.meta(format!("{}-signal", ctx.name));
    if !wanted.annotations.is_empty() {
        metadata.annotations = Some(wanted.annotations.clone());
    }
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: wanted.class_name.clone().or_else(|| settings.ingress_class.clone()),
            tls: signaling
                .tls_secret(ctx.name)
                .map(|secret| vec![IngressTLS { hosts: Some(vec![host.clone()]), secret_name: Some(secret) }]),
            rules: Some(vec![IngressRule {
                host: Some(host),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".into()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: format!("{}-signal", ctx.name),
                                port: Some(ServiceBackendPort { name: Some("signal".into()), number: None }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            default_backend: None,
        }),
        ..Ingress::default()
    })
}

fn network_policy(ctx: &Ctx<'_>, bubble: &Bubble, settings: &Settings) -> Option<NetworkPolicy> {
    if bubble.spec.network_policy.mode == NetworkPolicyMode::Disabled {
        return None;
    }
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    };
    let turn = &bubble.spec.turn;
    let namespace = |name: &str| LabelSelector {
        match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), name.to_owned())])),
        ..LabelSelector::default()
    };
    // Outside the cluster: everything but private ranges and the cluster's own CIDRs (relayed media and peers).
    let mut except: Vec<String> = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    except.extend(bubble.spec.network_policy.cluster_cidrs.iter().cloned());
    let mut egress = vec![
        // DNS.
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(namespace("kube-system")),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([("k8s-app".to_owned(), "kube-dns".to_owned())])),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        },
        // The admin API.
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(namespace(&settings.admin_api_namespace)),
                pod_selector: Some(LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_owned(),
                        "peerbubble-admin-api".to_owned(),
                    )])),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: None,
        },
        // Outside the cluster.
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                ip_block: Some(IPBlock { cidr: "0.0.0.0/0".into(), except: Some(except) }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: None,
        },
        // Other pods of the same bubble (relay-to-relay between replicas).
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(selector(ctx.name)),
                    ..LabelSelector::default()
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: None,
        },
    ];
    // The NATS the replicas share (its address is a host name: the port is what can be pinned).
    if let Some(nats) = &bubble.spec.nats {
        egress.push(NetworkPolicyEgressRule { to: None, ports: Some(vec![port("TCP", nats_port(&nats.url))]) });
    }
    Some(NetworkPolicy {
        metadata: ctx.meta(ctx.name.to_owned()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector { match_labels: Some(selector(ctx.name)), ..LabelSelector::default() }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            // Only the bubble's own ports, from anywhere; nothing else (no traffic from other bubbles' pods
            // to other ports).
            ingress: Some(vec![NetworkPolicyIngressRule {
                ports: Some(vec![port("TCP", SIGNAL_PORT), port("UDP", turn.udp_port), port("TCP", turn.tls_port)]),
                ..NetworkPolicyIngressRule::default()
            }]),
            egress: Some(egress),
        }),
    })
}

/// Renders everything for `bubble`. `turn_secret` is the existing secret value if the Secret exists (kept
/// across reconciles), else a fresh one the caller generated.
pub fn render(
    bubble: &Bubble,
    categories: &[Category],
    settings: &Settings,
    turn_secret: &[u8],
) -> Result<Rendered, RenderError> {
    let name = bubble.metadata.name.as_deref().ok_or(RenderError::Incomplete("a name"))?;
    let namespace = bubble.metadata.namespace.as_deref().ok_or(RenderError::Incomplete("a namespace"))?;
    let owner = bubble.controller_owner_ref(&()).ok_or(RenderError::Incomplete("a uid"))?;
    let ctx = Ctx { name, namespace, owner };
    let policy = policy_yaml(name, categories)?;
    let policy_hash = {
        use sha2::Digest as _;
        sha2::Sha256::digest(policy.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    // A volume only for the one replica's file: with NATS the mailbox is in JetStream.
    let mailbox = bubble.spec.mailbox.as_ref().filter(|_| bubble.spec.nats.is_none()).map(|m| PersistentVolumeClaim {
        metadata: ctx.meta(mailbox_claim(name)),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: m.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([("storage".to_owned(), Quantity(m.size.clone()))])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    });
    let pdb = (replicas(&bubble.spec) > 1).then(|| PodDisruptionBudget {
        metadata: ctx.meta(name.to_owned()),
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector { match_labels: Some(selector(name)), ..LabelSelector::default() }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    });
    Ok(Rendered {
        service_account: ServiceAccount {
            metadata: ctx.meta(format!("{name}-bubble")),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        turn_secret: Secret {
            metadata: ctx.meta(format!("{name}-turn")),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(TURN_SECRET_KEY.to_owned(), ByteString(turn_secret.to_vec()))])),
            ..Secret::default()
        },
        policy: ConfigMap {
            metadata: ctx.meta(format!("{name}-policy")),
            data: Some(BTreeMap::from([("policy.yaml".to_owned(), policy)])),
            ..ConfigMap::default()
        },
        deployment: deployment(&ctx, bubble, settings, &policy_hash),
        services: services(&ctx, bubble),
        network_policy: network_policy(&ctx, bubble, settings),
        pdb,
        mailbox,
        ingress: ingress(&ctx, bubble, settings),
    })
}
