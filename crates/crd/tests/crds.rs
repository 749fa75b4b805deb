//! The CRD files in crds/ are exactly what the Rust types generate, and the schema refuses bad resources (CEL
//! rules evaluated locally with kube's CEL engine, the same rules the API server runs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::CustomResourceExt as _;
use peerbubble_crd::{Bubble, BubbleSpec, Category, CategorySpec, crd_files};
use serde_json::json;

#[test]
fn crd_files_match_the_rust_types() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let files = crd_files().unwrap();
    assert_eq!(files.len(), 4, "two CRDs, each in crds/ and in the chart");
    for (path, yaml) in files {
        let on_disk = std::fs::read_to_string(root.join(&path)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "{path} drifted from crates/crd: run `cargo run -p peerbubble-crd --bin crdgen` and commit"
        );
    }
}

#[test]
fn crds_name_group_version_scope_and_short_names() {
    let crd = Bubble::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("bubbles.peerbubble.io"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["bub".to_owned()]));
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");
    assert!(crd.spec.versions[0].subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> =
        crd.spec.versions[0].additional_printer_columns.as_ref().unwrap().iter().map(|c| c.name.clone()).collect();
    assert!(columns.contains(&"Ready".to_owned()), "{columns:?}");
    assert_eq!(Category::crd().metadata.name.as_deref(), Some("categories.peerbubble.io"));
}

#[test]
fn defaults_fill_a_minimal_bubble() {
    let spec: BubbleSpec = serde_json::from_value(json!({"displayName": "Flood response"})).unwrap();
    // One replica unless NATS is named: independent replicas would split the bubble in two.
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.nats, None);
    assert_eq!((spec.turn.udp_port, spec.turn.tls_port), (3478, 443));
    assert_eq!(spec.network_policy.mode, peerbubble_crd::NetworkPolicyMode::Enforce);
}

#[test]
fn the_schema_carries_the_validation() {
    let schema = serde_json::to_value(&Bubble::crd().spec.versions[0].schema).unwrap();
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    assert_eq!(spec["replicas"]["minimum"].as_f64(), Some(1.0));
    assert_eq!(spec["replicas"]["maximum"].as_f64(), Some(16.0));
    assert_eq!(spec["displayName"]["maxLength"], 64);
    assert_eq!(spec["turn"]["properties"]["serviceType"]["enum"], json!(["LoadBalancer", "NodePort", "ClusterIP"]));
    assert!(spec["turn"]["x-kubernetes-validations"].is_array(), "{}", spec["turn"]);
    let rules = &schema["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"];
    assert_eq!(rules[0]["rule"], "self.replicas <= 1 || has(self.nats)", "{rules}");
    assert!(rules[0]["message"].as_str().unwrap().contains("spec.nats"), "{rules}");
    // A mailbox goes with NATS too (in JetStream): no rule keeps them apart any more.
    assert_eq!(rules.as_array().map(Vec::len), Some(1), "{rules}");
    let nats = &spec["nats"]["properties"];
    assert_eq!(nats["url"]["pattern"], r"^(nats|tls)://[^\s/@]+(:[0-9]{1,5})?$");
    assert_eq!(nats["credentialsSecret"]["maxLength"], 253);
    // The offline mailbox keeps envelopes at most 14 days; its volume's size is a plain Mi/Gi quantity.
    let mailbox = &spec["mailbox"]["properties"];
    assert_eq!(mailbox["ttlHours"]["maximum"].as_f64(), Some(336.0));
    assert_eq!(mailbox["size"]["pattern"], "^[1-9][0-9]{0,5}(Mi|Gi)$");
    let with: BubbleSpec = serde_json::from_value(json!({"displayName": "F", "mailbox": {}})).unwrap();
    let m = with.mailbox.unwrap();
    assert_eq!((m.size.as_str(), m.ttl_hours, m.storage_class_name), ("1Gi", 72, None));
    let category = serde_json::to_value(&Category::crd().spec.versions[0].schema).unwrap();
    let bubble = &category["openAPIV3Schema"]["properties"]["spec"]["properties"]["bubble"];
    assert_eq!(bubble["x-kubernetes-validations"][0]["rule"], "self == oldSelf");
    // Repeats in `sees` are refused by the API server itself (a set-typed list).
    let sees = &category["openAPIV3Schema"]["properties"]["spec"]["properties"]["sees"];
    assert_eq!(sees["x-kubernetes-list-type"], "set");
    assert_eq!(sees["items"]["pattern"], "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$");
}

#[test]
fn cel_rules_refuse_what_they_should() {
    // The same rule texts the API server evaluates, run locally.
    let turn = json!({"serviceType": "LoadBalancer", "udpPort": 3478, "tlsPort": 3478});
    assert!(peerbubble_crd::TurnSpec::validate_cel(&turn, None).is_err());
    let turn_ok = json!({"serviceType": "LoadBalancer", "udpPort": 3478, "tlsPort": 443});
    assert!(peerbubble_crd::TurnSpec::validate_cel(&turn_ok, None).is_ok());

    let old = json!({"bubble": "flood", "displayName": "Medics", "sees": []});
    let moved = json!({"bubble": "fire", "displayName": "Medics", "sees": []});
    assert!(CategorySpec::validate_cel(&moved, Some(&old)).is_err());
    let renamed = json!({"bubble": "flood", "displayName": "Medics team", "sees": ["command"]});
    assert!(CategorySpec::validate_cel(&renamed, Some(&old)).is_ok());

    // Two replicas without NATS would split the bubble in two: refused, with the reason.
    let split = json!({"displayName": "Flood", "replicas": 2});
    let refused = BubbleSpec::validate_cel(&split, None).unwrap_err();
    assert!(format!("{refused:?}").contains("spec.nats"), "{refused:?}");
    let one = json!({"displayName": "Flood", "replicas": 1});
    assert!(BubbleSpec::validate_cel(&one, None).is_ok());
    let shared = json!({"displayName": "Flood", "replicas": 2,
        "nats": {"url": "nats://nats:4222", "credentialsSecret": "flood-nats"}});
    assert!(BubbleSpec::validate_cel(&shared, None).is_ok());
    // With NATS the mailbox lives in JetStream, shared by the replicas: allowed.
    let both = json!({"displayName": "Flood", "replicas": 2, "mailbox": {},
        "nats": {"url": "nats://nats:4222", "credentialsSecret": "flood-nats"}});
    assert!(BubbleSpec::validate_cel(&both, None).is_ok());
    assert!(BubbleSpec::validate_cel(&json!({"displayName": "Flood", "mailbox": {}}), None).is_ok());
    // An Ingress routes a host name: none, refused with the reason.
    let nameless = json!({"ingress": {"className": "nginx"}});
    let refused = peerbubble_crd::SignalingSpec::validate_cel(&nameless, None).unwrap_err();
    assert!(format!("{refused:?}").contains("signaling.ingress needs signaling.host"), "{refused:?}");
    let named = json!({"host": "flood.example.org", "ingress": {}});
    assert!(peerbubble_crd::SignalingSpec::validate_cel(&named, None).is_ok());
}

#[test]
fn the_signaling_certificate_is_the_named_secret_or_the_one_cert_manager_issues() {
    let spec = |v: serde_json::Value| serde_json::from_value::<peerbubble_crd::SignalingSpec>(v).unwrap();
    assert_eq!(spec(json!({})).tls_secret("flood"), None);
    assert_eq!(spec(json!({"host": "f.example.org", "ingress": {}})).tls_secret("flood"), None);
    let issued =
        spec(json!({"host": "f.example.org", "ingress": {"annotations": {"cert-manager.io/cluster-issuer": "pki"}}}));
    assert_eq!(issued.tls_secret("flood").as_deref(), Some("flood-signal-tls"));
    let named = spec(json!({"host": "f.example.org", "tls": {"secretName": "wildcard"},
        "ingress": {"annotations": {"cert-manager.io/cluster-issuer": "pki"}}}));
    assert_eq!(named.tls_secret("flood").as_deref(), Some("wildcard"));
    assert_eq!(spec(json!({"tls": {"secretName": "own"}})).tls_secret("flood").as_deref(), Some("own"));
}
