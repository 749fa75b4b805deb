//! The Kubernetes resources of PeerBubble, group `peerbubble.io`, version `v1alpha1`:
//!
//! - [`Bubble`]: one mission's isolated signaling + TURN deployment (what the operator reconciles);
//! - [`Category`]: a category of members in a bubble and which other categories its members may see.
//!
//! Validation lives in the schema (lengths, ranges, patterns, enums, CEL rules) so that the API server refuses a
//! bad resource before the operator ever sees it. `crdgen` writes crds/*.yaml from these types; a test fails when
//! the files drift from the code.

#![forbid(unsafe_code)]
// kube's `printcolumn(...)` repeats `type_ = ...` per column, which this lint mistakes for duplicate attributes.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group.
pub const GROUP: &str = "peerbubble.io";

/// Condition types a Bubble reports.
pub mod conditions {
    /// Everything below is true.
    pub const READY: &str = "Ready";
    /// The signaling Deployment has its replicas ready.
    pub const SIGNALING_READY: &str = "SignalingReady";
    /// The TURN Services have their addresses.
    pub const TURN_READY: &str = "TurnReady";
    /// The NetworkPolicies are applied (or disabled by choice).
    pub const POLICY_APPLIED: &str = "PolicyApplied";
    /// The bubble runs the replicas its spec asks for. Informational: not part of `Ready` (a bubble held at one
    /// replica still serves its members), it says why the count differs from `spec.replicas`.
    pub const SCALED: &str = "Scaled";
}

/// Whether bubble-server replicas can share one bubble's presence, routing and commit ledger (over NATS
/// JetStream, `bubble-server --nats`). When false, the operator runs one replica whatever `spec.replicas` says and
/// reports why in the [`conditions::SCALED`] condition, because two independent replicas would split the bubble.
pub const REPLICAS_SHARE_STATE: bool = true;

/// A bubble: one mission's isolated signaling and TURN relay.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "peerbubble.io",
    version = "v1alpha1",
    kind = "Bubble",
    namespaced,
    status = "BubbleStatus",
    shortname = "bub",
    category = "peerbubble",
    derive = "PartialEq",
    doc = "A PeerBubble bubble: an isolated signaling + TURN deployment for one mission.",
    printcolumn(name = "Display", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Signaling", type_ = "string", json_path = ".status.endpoints.signaling", priority = 1),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("self.replicas <= 1 || has(self.nats)").message(
        "replicas above 1 need spec.nats: replicas share presence, routing and the commit ledger through NATS \
         JetStream, and without it two replicas would split the bubble in two"
    )
)]
pub struct BubbleSpec {
    /// Human name of the bubble, shown to its members.
    #[schemars(length(min = 1, max = 64))]
    pub display_name: String,
    /// bubble-server replicas (signaling and TURN run in the same pods). Above 1 needs `nats`.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: i32,
    /// Where members reach signaling.
    #[serde(default)]
    pub signaling: SignalingSpec,
    /// The TURN relay.
    #[serde(default)]
    pub turn: TurnSpec,
    /// Network isolation of the bubble's pods.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Compute resources of the bubble-server container (defaults suit a few hundred members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Where the bubble's directory (members' public keys, categories) comes from.
    #[serde(default)]
    pub directory: DirectorySpec,
    /// The NATS (with JetStream) that several replicas of this bubble share. Not needed with one replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats: Option<NatsSpec>,
    /// The offline mailbox: what is sent to a member with no session waits (end-to-end encrypted) until the
    /// member comes back: on a volume of the one replica, or, with `nats`, in the bubble's JetStream stream shared
    /// by its replicas (no volume; `size` and `storageClassName` unused). Absent: nothing is kept, and a message
    /// to an absent member is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<MailboxSpec>,
}

/// Where and how long the offline mailbox keeps what waits for absent members.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MailboxSpec {
    /// Size of its volume (a ReadWriteOnce PersistentVolumeClaim named `<bubble>-mailbox`).
    #[serde(default = "default_mailbox_size")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,5}(Mi|Gi)$"))]
    pub size: String,
    /// The volume's StorageClass (the cluster's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// How long an envelope waits for its recipient, in hours (at most 14 days).
    #[serde(default = "default_mailbox_ttl_hours")]
    #[schemars(range(min = 1, max = 336))]
    pub ttl_hours: u32,
}

fn default_mailbox_size() -> String {
    "1Gi".to_owned()
}

fn default_mailbox_ttl_hours() -> u32 {
    72
}

fn default_replicas() -> i32 {
    1
}

/// A NATS server with JetStream, and the bubble's own credentials on it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// Where the NATS server listens, `nats://host:port` or `tls://host:port`.
    #[schemars(length(min = 1, max = 512), regex(pattern = r"^(nats|tls)://[^\s/@]+(:[0-9]{1,5})?$"))]
    pub url: String,
    /// Secret in the bubble's namespace holding this bubble's NATS credentials: key `creds` (a NATS user
    /// credentials file), or `token`, or `user` and `password`. Give each bubble its own NATS account, or a user
    /// whose permissions cover only `pb.<bubble>.>`, `$KV.pb-ledger-<bubble>.>`, `$JS.API.>` and `_INBOX.>`.
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
}

/// Signaling settings: where members open the bubble (its web client, enrollment and signaling share one
/// origin) and who terminates TLS there.
///
/// - `ingress` (with `host`): the operator makes an Ingress `<bubble>-signal` for the host; TLS ends at the
///   Ingress controller, with the Secret `tls` names, or the one cert-manager issues from the Ingress
///   annotations (`<bubble>-signal-tls` unless `tls` names another), or the controller's default certificate.
/// - `tls` without `ingress`: the bubble-server itself serves HTTPS with the Secret (a TLS passthrough in front,
///   or members inside the cluster's network); a renewed Secret is served without a restart.
/// - neither: plain HTTP on the in-cluster Service (tests, or a platform-managed proxy that terminates TLS).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    cel,
    validation = Rule::new("!has(self.ingress) || has(self.host)")
        .message("signaling.ingress needs signaling.host: the Ingress routes that host name to the bubble")
)]
pub struct SignalingSpec {
    /// Public host name members open (`https://<host>/enroll#…`); reported in `status.endpoints.signaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: Option<String>,
    /// TLS for signaling, from a Secret of type kubernetes.io/tls in the bubble's namespace: the Ingress's
    /// certificate with `ingress`, else the bubble-server's own. TURN over TLS uses it too unless `turn.tls` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// An Ingress for `host` in front of the bubble-server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
}

/// The Ingress in front of a bubble's signaling.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// The IngressClass (default: the operator's `--ingress-class`, else the cluster's default class).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// Annotations of the Ingress: for cert-manager (`cert-manager.io/cluster-issuer: <issuer>`, which then
    /// issues the certificate into the TLS Secret), or for the controller (WebSocket timeouts).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl IngressSpec {
    /// Whether cert-manager is asked to issue the certificate (an annotation of its `cert-manager.io` group).
    pub fn asks_cert_manager(&self) -> bool {
        self.annotations.keys().any(|k| k.starts_with("cert-manager.io/"))
    }
}

impl SignalingSpec {
    /// The kubernetes.io/tls Secret of the bubble's signaling certificate, if it has one: the Secret `tls`
    /// names, or the one cert-manager issues for the Ingress.
    pub fn tls_secret(&self, bubble: &str) -> Option<String> {
        match (&self.tls, &self.ingress) {
            (Some(tls), _) => Some(tls.secret_name.clone()),
            (None, Some(ingress)) if ingress.asks_cert_manager() => Some(format!("{bubble}-signal-tls")),
            (None, _) => None,
        }
    }
}

/// A TLS certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// Name of the kubernetes.io/tls Secret.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// How the TURN Services are exposed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TurnServiceType {
    /// A cloud or MetalLB load balancer address (production).
    #[default]
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Inside the cluster only (tests, or behind a platform-managed gateway).
    ClusterIP,
}

/// TURN settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel, validation = Rule::new("self.udpPort != self.tlsPort").message("udpPort and tlsPort must differ"))]
pub struct TurnSpec {
    /// How the TURN Services are exposed.
    #[serde(default)]
    pub service_type: TurnServiceType,
    /// STUN/TURN over UDP.
    #[serde(default = "default_turn_udp")]
    #[schemars(range(min = 1, max = 65535))]
    pub udp_port: i32,
    /// TURN over TCP and TLS (443 passes most firewalls).
    #[serde(default = "default_turn_tls")]
    #[schemars(range(min = 1, max = 65535))]
    pub tls_port: i32,
    /// The address clients are told to use, when the Service's own address is not reachable by them (NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub external_address: Option<String>,
    /// A kubernetes.io/tls Secret for TURN over TLS (default: the signaling certificate, else self-signed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

fn default_turn_udp() -> i32 {
    3478
}

fn default_turn_tls() -> i32 {
    443
}

impl Default for TurnSpec {
    fn default() -> Self {
        Self {
            service_type: TurnServiceType::default(),
            udp_port: default_turn_udp(),
            tls_port: default_turn_tls(),
            external_address: None,
            tls: None,
        }
    }
}

/// NetworkPolicy handling.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum NetworkPolicyMode {
    /// Ingress only to the bubble's ports; egress only to DNS, the admin API and outside the cluster.
    #[default]
    Enforce,
    /// No NetworkPolicies (a cluster without a policy engine); reported in the PolicyApplied condition.
    Disabled,
}

/// Network isolation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Enforce (default) or Disabled.
    #[serde(default)]
    pub mode: NetworkPolicyMode,
    /// The cluster's pod and service CIDRs: egress to them is refused, and the TURN relay refuses to relay
    /// towards them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub cluster_cidrs: Vec<String>,
}

/// Where the directory comes from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DirectorySourceKind {
    /// The admin API (members enroll with invites there); categories come from Category resources too.
    #[default]
    AdminApi,
}

/// Directory settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct DirectorySpec {
    /// The source.
    #[serde(default)]
    pub source: DirectorySourceKind,
    /// Admin API URL (default: the one the operator was installed with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = r"^https?://"))]
    pub admin_api_url: Option<String>,
}

/// What the operator reports about a Bubble.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BubbleStatus {
    /// Ready, SignalingReady, TurnReady, PolicyApplied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Where members connect.
    #[serde(default)]
    pub endpoints: Endpoints,
    /// Ready bubble-server replicas.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// A bubble's addresses.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Endpoints {
    /// `wss://host/v1/signal` (or the in-cluster Service URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signaling: Option<String>,
    /// `turn:address:port?transport=udp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_udp: Option<String>,
    /// `turns:address:port?transport=tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_tls: Option<String>,
}

/// A category of members in a bubble, and which other categories its members may see (need-to-know).
/// The category's id is its resource name.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "peerbubble.io",
    version = "v1alpha1",
    kind = "Category",
    namespaced,
    status = "CategoryStatus",
    shortname = "bubcat",
    category = "peerbubble",
    derive = "PartialEq",
    doc = "A category of members in a PeerBubble bubble and the categories its members may see.",
    printcolumn(name = "Bubble", type_ = "string", json_path = ".spec.bubble"),
    printcolumn(name = "Display", type_ = "string", json_path = ".spec.displayName"),
    printcolumn(name = "Sees", type_ = "string", json_path = ".spec.sees"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(cel)]
pub struct CategorySpec {
    /// The Bubble (in this namespace) the category belongs to. Cannot be changed.
    #[schemars(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("a category cannot move to another bubble"))]
    pub bubble: String,
    /// Human name.
    #[schemars(length(min = 1, max = 64))]
    pub display_name: String,
    /// Other categories (names of Category resources of the same bubble) whose members this category's
    /// members may see, and be seen by.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 63), regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub sees: Vec<String>,
}

/// What the operator reports about a Category.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct CategoryStatus {
    /// Ready (part of its bubble's policy), or why not (e.g. BubbleNotFound).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The CRDs as crdgen writes them: (path from the repository root, contents). `crds/*.yaml` are plain
/// manifests for `kubectl apply`; the Helm chart's copies are the same objects, installed only with
/// `crds.enabled` and kept on `helm uninstall` (`helm.sh/resource-policy: keep`), so that uninstalling the
/// operator never deletes every Bubble of every mission with it.
pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    use kube::CustomResourceExt as _;
    let header = "# Generated by `cargo run -p peerbubble-crd --bin crdgen` from crates/crd; do not edit.\n";
    let chart_header =
        "{{- /* Generated by `cargo run -p peerbubble-crd --bin crdgen` from crates/crd; do not edit. */}}\n";
    let mut files = Vec::new();
    for (name, crd) in [("bubble.yaml", Bubble::crd()), ("category.yaml", Category::crd())] {
        files.push((format!("crds/{name}"), format!("{header}{}", serde_saphyr::to_string(&crd)?)));
        let mut kept = crd;
        kept.metadata
            .annotations
            .get_or_insert_default()
            .insert("helm.sh/resource-policy".to_owned(), "keep".to_owned());
        let yaml = serde_saphyr::to_string(&kept)?;
        anyhow::ensure!(!yaml.contains("{{"), "{name} contains a Helm template delimiter");
        files.push((
            format!("charts/peerbubble/templates/crds/{name}"),
            format!("{chart_header}{{{{- if .Values.crds.enabled }}}}\n{yaml}{{{{- end }}}}\n"),
        ));
    }
    Ok(files)
}
