//! The admin API's control plane in a cluster (issue 18, ADR 0027). Creating, changing or deleting a bubble or a
//! category through the admin API applies the matching `Bubble` and `Category` resources (server-side apply, one
//! field manager) in the namespace the organisation maps the bubble to, with the bubble's credential in the
//! Secret the operator mounts into its bubble-servers (`<bubble>-credential`): nothing is made by hand twice.
//! The admin API itself links no Kubernetes code; the `peerbubble` binary hands it this implementation.
//!
//! What it may do in a namespace is exactly [`RBAC_RULES`] ([`TOKEN_RBAC_RULES`] when bubble-servers prove who
//! they are with ServiceAccount tokens, [`TokenReviewer`], and no credential Secret is written); the chart's Role
//! is checked against it.

mod template;
mod token_review;

pub use template::BubbleTemplate;
pub use token_review::{ACCEPTED_FOR_SECS, CLUSTER_RBAC_RULES, TokenReviewer, service_account};

use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use peerbubble_admin_api::control::{
    BubbleSpec, CategorySpec, ControlError, ControlFuture, ControlPlane, PlatformCondition, PlatformStatus,
    StatusFuture,
};
use peerbubble_crd::{Bubble, Category};
use serde_json::json;

/// The field manager of everything the admin API applies.
pub const FIELD_MANAGER: &str = "peerbubble-admin-api";

/// The label naming the bubble a resource belongs to (Categories of a deleted bubble are found by it).
pub const BUBBLE_LABEL: &str = "peerbubble.io/bubble";

/// (API group, resource, verbs): what the admin API asks of the API server, and all the chart grants it.
pub const RBAC_RULES: [(&str, &str, &[&str]); 3] = [
    ("peerbubble.io", "bubbles", &["get", "create", "patch", "delete"]),
    ("peerbubble.io", "categories", &["create", "patch", "delete", "deletecollection"]),
    ("", "secrets", &["create", "patch", "delete"]),
];

/// What the admin API asks of the API server in a namespace when bubble-servers present ServiceAccount tokens:
/// no Secret at all.
pub const TOKEN_RBAC_RULES: [(&str, &str, &[&str]); 2] = [RBAC_RULES[0], RBAC_RULES[1]];

/// Where bubbles go: one namespace for all, or one per bubble from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespaces(String);

impl Namespaces {
    /// A namespace name, or a template in which `{bubble}` becomes the bubble id (`mission-{bubble}`).
    pub fn new(rule: &str) -> Result<Self, ControlError> {
        let sample = rule.replace("{bubble}", "a");
        if !is_dns_label(&sample) {
            return Err(ControlError(format!(
                "namespace {rule:?} is not a Kubernetes namespace name (lower-case letters, digits and dashes, at \
                 most 63; `{{bubble}}` stands for the bubble id)"
            )));
        }
        Ok(Self(rule.to_owned()))
    }

    /// The namespace of `bubble`.
    pub fn of(&self, bubble: &str) -> String {
        self.0.replace("{bubble}", bubble)
    }
}

/// RFC 1123 label: what names a namespace, a Bubble and a Category.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// The admin API's Kubernetes control plane.
#[derive(Clone)]
pub struct Kubernetes {
    client: Client,
    namespaces: Namespaces,
    /// Whether the bubble's credential goes into `<bubble>-credential` for its bubble-servers (not when they
    /// present ServiceAccount tokens).
    credential_secret: bool,
    /// What every Bubble gets besides its display name.
    template: BubbleTemplate,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes").field("namespaces", &self.namespaces).finish_non_exhaustive()
    }
}

fn failed(what: &str, err: &kube::Error) -> ControlError {
    match err {
        // The API server's own words (an admission webhook, a CEL rule of the CRD, RBAC) reach the administrator.
        kube::Error::Api(status) => ControlError(format!("{what}: {} ({})", status.message, status.code)),
        other => ControlError(format!("{what}: {other}")),
    }
}

fn not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

impl Kubernetes {
    pub fn new(client: Client, namespaces: Namespaces) -> Self {
        Self { client, namespaces, credential_secret: true, template: BubbleTemplate::default() }
    }

    /// Every Bubble applied from now on is made from `template` (its host, Ingress, TURN exposure…), and its
    /// members are sent to its own host when the template gives it one.
    #[must_use]
    pub fn with_template(mut self, template: BubbleTemplate) -> Self {
        self.template = template;
        self
    }

    /// Bubble-servers present their ServiceAccount token ([`TokenReviewer`]): no credential Secret is written
    /// or deleted (the credential is still shown once, for a bubble-server outside the cluster).
    pub fn with_service_account_tokens(mut self) -> Self {
        self.credential_secret = false;
        self
    }

    /// What this control plane asks of the API server in a namespace.
    pub fn rbac_rules(&self) -> &'static [(&'static str, &'static str, &'static [&'static str])] {
        if self.credential_secret { &RBAC_RULES } else { &TOKEN_RBAC_RULES }
    }

    /// The client and namespaces, for a [`TokenReviewer`] beside this control plane.
    pub fn token_reviewer(&self, audience: String) -> TokenReviewer {
        TokenReviewer::new(self.client.clone(), self.namespaces.clone(), audience)
    }

    /// With the pod's ServiceAccount in a cluster (or the local kubeconfig elsewhere).
    pub async fn connect(namespaces: Namespaces) -> Result<Self, ControlError> {
        let client = Client::try_default().await.map_err(|e| {
            ControlError(format!("no credentials for the Kubernetes API (in-cluster or kubeconfig): {e}"))
        })?;
        Ok(Self::new(client, namespaces))
    }

    fn checked(&self, bubble: &str, kind: &str, name: &str) -> Result<String, ControlError> {
        if !is_dns_label(name) {
            return Err(ControlError(format!(
                "{kind} {name:?} cannot name a Kubernetes resource (at most 63 characters, starting and ending with a \
                 letter or digit): choose another id"
            )));
        }
        let namespace = self.namespaces.of(bubble);
        if !is_dns_label(&namespace) {
            return Err(ControlError(format!("bubble {bubble:?} maps to namespace {namespace:?}, which is too long")));
        }
        Ok(namespace)
    }

    fn labels(bubble: &str) -> serde_json::Value {
        json!({ BUBBLE_LABEL: bubble, "app.kubernetes.io/managed-by": FIELD_MANAGER })
    }

    async fn create_bubble(&self, spec: &BubbleSpec) -> Result<(), ControlError> {
        let namespace = self.checked(&spec.id, "bubble", &spec.id)?;
        let apply = PatchParams::apply(FIELD_MANAGER).force();
        if let Some(credential) = spec.credential.as_ref().filter(|_| self.credential_secret) {
            // First the credential, so that the bubble-servers the operator starts find it.
            let name = format!("{}-credential", spec.id);
            let secret = json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": { "name": name, "labels": Self::labels(&spec.id) },
                "type": "Opaque",
                "stringData": { "credential": credential.expose() },
            });
            Api::<Secret>::namespaced(self.client.clone(), &namespace)
                .patch(&name, &apply, &Patch::Apply(&secret))
                .await
                .map_err(|e| failed("the bubble's credential Secret", &e))?;
        }
        let bubble = json!({
            "apiVersion": "peerbubble.io/v1alpha1",
            "kind": "Bubble",
            "metadata": { "name": spec.id, "labels": Self::labels(&spec.id) },
            "spec": self.template.spec_for(&spec.id, &spec.display_name),
        });
        Api::<Bubble>::namespaced(self.client.clone(), &namespace)
            .patch(&spec.id, &apply, &Patch::Apply(&bubble))
            .await
            .map_err(|e| failed("the Bubble", &e))?;
        tracing::info!(bubble = %spec.id, %namespace, "Bubble applied");
        Ok(())
    }

    /// The Bubble's status as the operator wrote it; None when it is absent or the API server does not answer.
    async fn status(&self, bubble: &str) -> Option<PlatformStatus> {
        let namespace = self.checked(bubble, "bubble", bubble).ok()?;
        let found = match Api::<Bubble>::namespaced(self.client.clone(), &namespace).get_opt(bubble).await {
            Ok(found) => found?,
            Err(err) => {
                tracing::warn!(%bubble, error = %err, "cannot read the Bubble's status");
                return None;
            }
        };
        let status = found.status.unwrap_or_default();
        let conditions: Vec<PlatformCondition> = status
            .conditions
            .iter()
            .map(|c| PlatformCondition {
                kind: c.type_.clone(),
                status: c.status == "True",
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect();
        let ready = conditions.iter().any(|c| c.kind == "Ready" && c.status);
        Some(PlatformStatus { ready, conditions, signaling: status.endpoints.signaling })
    }

    async fn apply_category(&self, spec: &CategorySpec) -> Result<(), ControlError> {
        let namespace = self.checked(&spec.bubble, "category", &spec.id)?;
        let category = json!({
            "apiVersion": "peerbubble.io/v1alpha1",
            "kind": "Category",
            "metadata": { "name": spec.id, "labels": Self::labels(&spec.bubble) },
            "spec": { "bubble": spec.bubble, "displayName": spec.display_name, "sees": spec.sees },
        });
        Api::<Category>::namespaced(self.client.clone(), &namespace)
            .patch(&spec.id, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&category))
            .await
            .map_err(|e| failed("the Category", &e))?;
        Ok(())
    }

    async fn delete_category(&self, bubble: &str, id: &str) -> Result<(), ControlError> {
        let namespace = self.checked(bubble, "category", id)?;
        match Api::<Category>::namespaced(self.client.clone(), &namespace).delete(id, &DeleteParams::default()).await {
            Err(e) if !not_found(&e) => Err(failed("the Category", &e)),
            _ => Ok(()),
        }
    }

    async fn delete_bubble(&self, bubble: &str) -> Result<(), ControlError> {
        let namespace = self.checked(bubble, "bubble", bubble)?;
        let gone =
            |what: &'static str| move |e: kube::Error| if not_found(&e) { Ok(()) } else { Err(failed(what, &e)) };
        // The Bubble first: its members are cut off when the operator removes its bubble-servers.
        Api::<Bubble>::namespaced(self.client.clone(), &namespace)
            .delete(bubble, &DeleteParams::default())
            .await
            .map(drop)
            .or_else(gone("the Bubble"))?;
        Api::<Category>::namespaced(self.client.clone(), &namespace)
            .delete_collection(
                &DeleteParams::default(),
                &ListParams::default().labels(&format!("{BUBBLE_LABEL}={bubble}")),
            )
            .await
            .map(drop)
            .or_else(gone("the bubble's Categories"))?;
        if self.credential_secret {
            Api::<Secret>::namespaced(self.client.clone(), &namespace)
                .delete(&format!("{bubble}-credential"), &DeleteParams::default())
                .await
                .map(drop)
                .or_else(gone("the bubble's credential Secret"))?;
        }
        tracing::info!(%bubble, %namespace, "Bubble deleted");
        Ok(())
    }
}

impl ControlPlane for Kubernetes {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn bubble_created<'a>(&'a self, bubble: &'a BubbleSpec) -> ControlFuture<'a> {
        Box::pin(self.create_bubble(bubble))
    }

    fn category_changed<'a>(&'a self, category: &'a CategorySpec) -> ControlFuture<'a> {
        Box::pin(self.apply_category(category))
    }

    fn category_deleted<'a>(&'a self, bubble: &'a str, id: &'a str) -> ControlFuture<'a> {
        Box::pin(self.delete_category(bubble, id))
    }

    fn bubble_deleted<'a>(&'a self, bubble: &'a str) -> ControlFuture<'a> {
        Box::pin(self.delete_bubble(bubble))
    }

    fn bubble_status<'a>(&'a self, bubble: &'a str) -> StatusFuture<'a> {
        Box::pin(self.status(bubble))
    }

    /// The bubble's own host when the template gives it one: the web client, enrollment and signaling are
    /// served there (the bubble-server passes enrollments on to this admin API).
    fn bubble_origin(&self, bubble: &str) -> Option<String> {
        self.template.origin(bubble)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_checked_and_templated() {
        assert_eq!(Namespaces::new("missions").unwrap().of("ops"), "missions");
        assert_eq!(Namespaces::new("mission-{bubble}").unwrap().of("ops"), "mission-ops");
        for bad in ["", "Missions", "-x", "x-", &"n".repeat(64), "a_b"] {
            assert!(Namespaces::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
