//! Golden tests of everything the operator renders for a few Bubble specs. `UPDATE_GOLDEN=1 cargo test -p
//! peerbubble-operator --test golden` rewrites the files after a deliberate change; review the diff.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use peerbubble_crd::{Bubble, BubbleSpec, Category, CategorySpec};
use peerbubble_operator::render::{BUBBLE_LABEL, RenderError, Settings, render};
use serde_json::json;

fn settings() -> Settings {
    Settings {
        image: "registry.example/peerbubble:0.1.0".into(),
        admin_api_url: "http://peerbubble-admin-api.peerbubble-system:8481".into(),
        admin_api_namespace: "peerbubble-system".into(),
        bubble_token_audience: None,
        ingress_class: None,
    }
}

fn bubble(name: &str, spec: serde_json::Value) -> Bubble {
    let spec: BubbleSpec = serde_json::from_value(spec).unwrap();
    let mut bubble = Bubble::new(name, spec);
    bubble.metadata.namespace = Some("missions".into());
    bubble.metadata.uid = Some(format!("uid-{name}"));
    bubble
}

fn category(name: &str, bubble: &str, sees: &[&str]) -> Category {
    Category {
        metadata: ObjectMeta { name: Some(name.into()), namespace: Some("missions".into()), ..ObjectMeta::default() },
        spec: CategorySpec {
            bubble: bubble.into(),
            display_name: format!("{name} \"team\""),
            sees: sees.iter().map(|s| (*s).to_owned()).collect(),
        },
        status: None,
    }
}

fn check_golden(case: &str, rendered: &impl serde::Serialize) {
    let yaml = serde_saphyr::to_string(rendered).unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{case}.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &yaml).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(expected == yaml, "{case}: rendering changed; if deliberate, run with UPDATE_GOLDEN=1 and review:\n{yaml}");
}

#[test]
fn default_bubble() {
    let b = bubble("flood", json!({"displayName": "Flood response"}));
    let categories =
        [category("medics", "flood", &[]), category("command", "flood", &["medics"]), category("x", "other", &[])];
    let rendered = render(&b, &categories, &settings(), b"0123456789abcdef0123456789abcdef").unwrap();
    check_golden("default", &rendered);
    // Only this bubble's categories are in its policy.
    let policy = &rendered.policy.data.as_ref().unwrap()["policy.yaml"];
    assert!(
        policy.contains("id: command") && policy.contains("sees: [medics]") && !policy.contains("id: x"),
        "{policy}"
    );
    // One replica by default: no PodDisruptionBudget.
    assert!(rendered.pdb.is_none() && rendered.network_policy.is_some());
}

/// With ServiceAccount tokens (the chart's default when the admin API makes bubbles): the pod mounts a token
/// projected for the admin API's audience, short-lived, instead of the credential Secret, and still no token for
/// the API server. A bubble that follows another admin API keeps the credential.
#[test]
fn bubble_servers_present_a_projected_token_bound_to_the_admin_apis_audience() {
    let settings = Settings { bubble_token_audience: Some("pb-peerbubble-admin-api.peerbubble".into()), ..settings() };
    let mut b = bubble("flood", json!({"displayName": "Flood response"}));
    // Made by hand: the credential.
    let rendered = render(&b, &[], &settings, b"0123456789abcdef0123456789abcdef").unwrap();
    assert!(serde_json::to_string(&rendered.deployment).unwrap().contains("flood-credential"));
    // Applied by the admin API: the token.
    let (key, value) = peerbubble_operator::render::MANAGED_BY;
    assert_eq!(value, peerbubble_control_k8s::FIELD_MANAGER, "the label the admin API puts on its Bubbles");
    b.metadata.labels = Some([(key.to_owned(), value.to_owned())].into());
    let rendered = render(&b, &[], &settings, b"0123456789abcdef0123456789abcdef").unwrap();
    check_golden("token", &rendered.deployment);
    let pod = rendered.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    // The ServiceAccount the admin API's TokenReviewer maps to this bubble.
    assert_eq!(pod.service_account_name, Some(peerbubble_control_k8s::service_account("flood")));
    let volumes = serde_json::to_value(&pod.volumes).unwrap();
    let projection = &volumes.as_array().unwrap().iter().find(|v| v["name"] == "credential").unwrap()["projected"];
    assert_eq!(
        projection["sources"][0]["serviceAccountToken"],
        json!({"audience": "pb-peerbubble-admin-api.peerbubble", "expirationSeconds": 600, "path": "token"})
    );
    assert!(!volumes.to_string().contains("flood-credential"));
    let env = serde_json::to_value(&pod.containers[0].env).unwrap().to_string();
    assert!(
        env.contains("PEERBUBBLE_BUBBLE_TOKEN_FILE") && !env.contains("PEERBUBBLE_BUBBLE_CREDENTIAL_FILE"),
        "{env}"
    );

    let mut elsewhere =
        bubble("drill", json!({"displayName": "Drill", "directory": {"adminApiUrl": "https://admin.example.org"}}));
    elsewhere.metadata.labels = b.metadata.labels.clone();
    let rendered = render(&elsewhere, &[], &settings, b"0123456789abcdef0123456789abcdef").unwrap();
    let volumes = serde_json::to_value(&rendered.deployment.spec.unwrap().template.spec.unwrap().volumes).unwrap();
    assert!(volumes.to_string().contains("drill-credential"), "{volumes}");
}

#[test]
fn small_bubble_without_network_policy_on_node_ports() {
    let b = bubble(
        "drill",
        json!({
            "displayName": "Drill", "replicas": 1,
            "turn": {"serviceType": "NodePort", "udpPort": 3478, "tlsPort": 5349, "externalAddress": "203.0.113.7"},
            "networkPolicy": {"mode": "Disabled"},
            "signaling": {"host": "drill.example.org", "tls": {"secretName": "drill-tls"}},
            "resources": {"limits": {"memory": "128Mi"}},
            "directory": {"adminApiUrl": "https://admin.example.org"},
            "mailbox": {"storageClassName": "local-path"}
        }),
    );
    let rendered = render(&b, &[], &settings(), b"secret").unwrap();
    check_golden("small", &rendered);
    assert!(rendered.pdb.is_none() && rendered.network_policy.is_none());
    // The mailbox's defaults: 1 GiB, 72 hours.
    let claim = rendered.mailbox.as_ref().unwrap().spec.as_ref().unwrap();
    assert_eq!(claim.storage_class_name.as_deref(), Some("local-path"));
    assert_eq!(claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0, "1Gi");
    let pod = rendered.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let env = pod.containers[0].env.as_ref().unwrap();
    let ttl = env.iter().find(|e| e.name == "PEERBUBBLE_MAILBOX_TTL_SECS").and_then(|e| e.value.clone());
    assert_eq!(ttl.as_deref(), Some("259200"));
}

#[test]
fn every_object_is_labelled_and_owned() {
    let b = bubble("flood", json!({"displayName": "Flood", "networkPolicy": {"clusterCidrs": ["10.96.0.0/12"]}}));
    let rendered = render(&b, &[], &settings(), b"s").unwrap();
    let value = serde_json::to_value(&rendered).unwrap();
    let mut metas = vec![];
    for (key, object) in value.as_object().unwrap() {
        match object {
            serde_json::Value::Array(items) => metas.extend(items.iter().map(|o| (key.clone(), o["metadata"].clone()))),
            serde_json::Value::Null => {}
            object => metas.push((key.clone(), object["metadata"].clone())),
        }
    }
    // ServiceAccount, TURN Secret, policy ConfigMap, Deployment, three Services, NetworkPolicy; no
    // PodDisruptionBudget with one replica (it would block every drain).
    assert_eq!(metas.len(), 8);
    for (key, meta) in metas {
        assert_eq!(meta["labels"][BUBBLE_LABEL], "flood", "{key}");
        assert_eq!(meta["namespace"], "missions", "{key}");
        let owner = &meta["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].as_str(), owner["controller"].as_bool()),
            (Some("Bubble"), Some("uid-flood"), Some(true)),
            "{key}"
        );
    }
    // The egress policy keeps the cluster's own ranges out of "outside the cluster".
    let np = serde_json::to_string(&rendered.network_policy).unwrap();
    assert!(np.contains("10.96.0.0/12"), "{np}");
}

#[test]
fn a_category_seeing_a_missing_category_is_an_error() {
    let b = bubble("flood", json!({"displayName": "Flood"}));
    let err = render(&b, &[category("medics", "flood", &["ghosts"])], &settings(), b"s").unwrap_err();
    assert_eq!(err, RenderError::UnknownCategory { category: "medics".into(), missing: "ghosts".into() });
    let mut incomplete = b.clone();
    incomplete.metadata.uid = None;
    assert_eq!(render(&incomplete, &[], &settings(), b"s").unwrap_err(), RenderError::Incomplete("a uid"));
}

/// Signaling behind an Ingress whose certificate cert-manager issues: the whole host goes to the bubble-server
/// (web client, enrollment and signaling on one origin), TLS ends at the Ingress, and TURN over TLS serves the
/// same certificate unless the Bubble names its own.
#[test]
fn an_ingress_fronts_signaling_and_turn_over_tls_falls_back_to_its_certificate() {
    let settings = Settings { ingress_class: Some("nginx".into()), ..settings() };
    let b = bubble(
        "flood",
        json!({"displayName": "Flood", "signaling": {"host": "flood.example.org",
            "ingress": {"annotations": {"cert-manager.io/cluster-issuer": "org-pki"}}}}),
    );
    let rendered = render(&b, &[], &settings, b"s").unwrap();
    check_golden("ingress", &rendered.ingress);
    let ingress = serde_json::to_value(rendered.ingress.as_ref().unwrap()).unwrap();
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(ingress["spec"]["rules"][0]["http"]["paths"][0]["path"], "/");
    assert_eq!(ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"], "flood-signal");
    let pod = rendered.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let env = serde_json::to_value(&pod.containers[0].env).unwrap().to_string();
    assert!(env.contains("PEERBUBBLE_TURN_TLS_CERT") && !env.contains("PEERBUBBLE_SIGNAL_TLS_CERT"), "{env}");
    let probe = serde_json::to_value(&pod.containers[0].readiness_probe).unwrap();
    assert!(probe["httpGet"].get("scheme").is_none(), "plain HTTP behind the Ingress: {probe}");
    let volumes = serde_json::to_value(&pod.volumes).unwrap();
    let turn_tls = volumes.as_array().unwrap().iter().find(|v| v["name"] == "turn-tls").unwrap();
    assert_eq!(turn_tls["secret"]["secretName"], "flood-signal-tls");
    assert_eq!(
        peerbubble_operator::render::needed_secrets(&b, &settings),
        vec!["flood-credential".to_owned(), "flood-signal-tls".to_owned()]
    );

    // The Bubble's own class wins over the operator's; TURN's own certificate over the signaling one, and then
    // the issued certificate is the Ingress's business only.
    let b = bubble(
        "flood",
        json!({"displayName": "Flood", "signaling": {"host": "flood.example.org",
            "ingress": {"className": "traefik", "annotations": {"cert-manager.io/issuer": "local"}}},
            "turn": {"tls": {"secretName": "turn-cert"}}}),
    );
    let rendered = render(&b, &[], &settings, b"s").unwrap();
    let ingress = serde_json::to_value(rendered.ingress.as_ref().unwrap()).unwrap();
    assert_eq!(ingress["spec"]["ingressClassName"], "traefik");
    let volumes = serde_json::to_value(&rendered.deployment.spec.unwrap().template.spec.unwrap().volumes).unwrap();
    let turn_tls = volumes.as_array().unwrap().iter().find(|v| v["name"] == "turn-tls").unwrap();
    assert_eq!(turn_tls["secret"]["secretName"], "turn-cert");
    assert_eq!(
        peerbubble_operator::render::needed_secrets(&b, &settings),
        vec!["flood-credential".to_owned(), "turn-cert".to_owned()]
    );

    // An Ingress without a certificate of its own serves the controller's default one: no TLS section.
    let b = bubble("flood", json!({"displayName": "Flood", "signaling": {"host": "flood.example.org", "ingress": {}}}));
    let rendered = render(&b, &[], &settings, b"s").unwrap();
    assert!(rendered.ingress.unwrap().spec.unwrap().tls.is_none());
}

/// A certificate and no Ingress: the bubble-server serves HTTPS itself (probes too), with the Secret mounted
/// whole so that a renewal reaches it; TURN over TLS serves the same certificate.
#[test]
fn without_an_ingress_the_bubble_server_serves_its_own_certificate() {
    let b = bubble("flood", json!({"displayName": "Flood", "signaling": {"tls": {"secretName": "flood-cert"}}}));
    let rendered = render(&b, &[], &settings(), b"s").unwrap();
    assert!(rendered.ingress.is_none());
    let pod = rendered.deployment.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let container = serde_json::to_value(&pod.containers[0]).unwrap();
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(container["livenessProbe"]["httpGet"]["scheme"], "HTTPS");
    let env = container["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(var("PEERBUBBLE_SIGNAL_TLS_CERT"), Some(json!("/var/run/peerbubble/signal-tls/tls.crt")));
    assert_eq!(var("PEERBUBBLE_TURN_TLS_KEY"), Some(json!("/var/run/peerbubble/turn-tls/tls.key")));
    let mount = container["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "signal-tls").unwrap();
    assert!(mount.get("subPath").is_none() && mount["readOnly"] == true, "{mount}");
    let volumes = serde_json::to_value(&pod.volumes).unwrap();
    for name in ["signal-tls", "turn-tls"] {
        let volume = volumes.as_array().unwrap().iter().find(|v| v["name"] == name).unwrap();
        assert_eq!(volume["secret"]["secretName"], "flood-cert", "{name}");
    }
    assert_eq!(
        peerbubble_operator::render::needed_secrets(&b, &settings()),
        vec!["flood-credential".to_owned(), "flood-cert".to_owned()]
    );
}
