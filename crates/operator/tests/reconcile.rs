//! Reconcile scenarios against a scripted API server (tower-test, controller-rs's ApiServerVerifier shape):
//! create, update, spec shrink, delete with finalizer, API errors with requeue, invalid specs, Category changes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::watcher;
use peerbubble_crd::Bubble;
use peerbubble_operator::controller::{
    self, FINALIZER, NOT_READY_RECHECK, RESYNC, ROTATE_ANNOTATION, error_policy, reconcile_bubble, reconcile_category,
};
use peerbubble_operator::metrics::encode;
use peerbubble_operator::render::Settings;
use serde_json::{Value, json};
use support::*;

const APPS: &str = "/apis/apps/v1";
const NETPOL: &str = "/apis/networking.k8s.io/v1";
const POLICY: &str = "/apis/policy/v1";

/// What the API server knows around one apply pass.
struct World {
    existing_turn_secret: Option<Vec<u8>>,
    existing_rotation: &'static str,
    ready_replicas: i32,
    lb_ip: Option<&'static str>,
    credential_exists: bool,
    /// Other Secrets the bubble needs that do not exist (yet).
    missing: Vec<&'static str>,
    /// The operator's settings (the harness's).
    settings: Settings,
}

impl Default for World {
    fn default() -> Self {
        Self {
            existing_turn_secret: None,
            existing_rotation: "",
            ready_replicas: 0,
            lb_ip: None,
            credential_exists: false,
            missing: Vec::new(),
            settings: settings(),
        }
    }
}

/// What the reconciler wrote during one apply pass.
#[derive(Default)]
struct Written {
    secret: Value,
    policy: Value,
    deployment: Value,
    services: Vec<Value>,
    network_policy: Option<Value>,
    network_policy_deleted: bool,
    pdb: Option<Value>,
    pdb_deleted: bool,
    mailbox: Option<Value>,
    ingress: Option<Value>,
    ingress_deleted: bool,
    status: Option<Value>,
    events: Vec<(String, String, String)>,
}

fn meta_only(name: &str) -> Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
        "metadata": {"name": name, "namespace": NS}})
}

/// Answers one apply pass of `bubble` in the order the reconciler makes its calls.
async fn drive_apply(api: &mut ApiServer, bubble: &Bubble, world: &World, status_changes: bool) -> Written {
    let name = bubble.metadata.name.clone().unwrap();
    let mut written = Written::default();
    let get = api.expect("GET", &core("secrets", &format!("{name}-turn"))).await;
    match &world.existing_turn_secret {
        Some(bytes) => {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
            get.reply(
                200,
                &json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": format!("{name}-turn"), "namespace": NS,
                        "annotations": {controller::ROTATION_ON_SECRET: world.existing_rotation}},
                    "data": {"turn-secret": b64}}),
            );
        }
        None => get.not_found(),
    }
    let fresh = world.existing_turn_secret.is_none()
        || bubble.metadata.annotations.as_ref().and_then(|a| a.get(ROTATE_ANNOTATION)).map_or("", String::as_str)
            != world.existing_rotation;
    let sa = api.expect_apply(&core("serviceaccounts", &format!("{name}-bubble"))).await;
    owner_of(&sa, bubble);
    written.secret = api.expect_apply(&core("secrets", &format!("{name}-turn"))).await;
    written.policy = api.expect_apply(&core("configmaps", &format!("{name}-policy"))).await;
    for suffix in ["signal", "turn-udp", "turn-tls"] {
        let lb_ip = world.lb_ip;
        let body = api
            .expect_apply_with(&core("services", &format!("{name}-{suffix}")), |reply| {
                if let Some(ip) = lb_ip {
                    reply["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip}]}});
                }
            })
            .await;
        written.services.push(body);
    }
    let np_path = ns_path(NETPOL, &format!("networkpolicies/{name}"));
    if bubble.spec.network_policy.mode == peerbubble_crd::NetworkPolicyMode::Enforce {
        written.network_policy = Some(api.expect_apply(&np_path).await);
    } else {
        api.expect("DELETE", &np_path)
            .await
            .reply(200, &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}));
        written.network_policy_deleted = true;
    }
    let pdb_path = ns_path(POLICY, &format!("poddisruptionbudgets/{name}"));
    if peerbubble_operator::render::replicas(&bubble.spec) > 1 {
        written.pdb = Some(api.expect_apply(&pdb_path).await);
    } else {
        api.expect("DELETE", &pdb_path).await.not_found();
        written.pdb_deleted = true;
    }
    let claim_path = core("persistentvolumeclaims", &format!("{name}-mailbox"));
    if bubble.spec.mailbox.is_some() && bubble.spec.nats.is_none() {
        written.mailbox = Some(api.expect_apply(&claim_path).await);
    } else {
        api.expect("DELETE", &claim_path).await.not_found();
    }
    let ingress_path = ns_path(NETPOL, &format!("ingresses/{name}-signal"));
    if bubble.spec.signaling.ingress.is_some() {
        written.ingress = Some(api.expect_apply(&ingress_path).await);
    } else {
        api.expect("DELETE", &ingress_path).await.not_found();
        written.ingress_deleted = true;
    }
    let ready = world.ready_replicas;
    written.deployment = api
        .expect_apply_with(&ns_path(APPS, &format!("deployments/{name}")), |reply| {
            reply["status"] = json!({"readyReplicas": ready, "replicas": ready});
        })
        .await;
    if fresh {
        written.events.push(api.expect_event().await);
    }
    // Secrets someone else provides: the credential (not with ServiceAccount tokens), certificates, the NATS
    // administrator's credentials.
    for secret in peerbubble_operator::render::needed_secrets(bubble, &world.settings) {
        let call = api.expect("GET", &core("secrets", &secret)).await;
        let exists = if secret == format!("{name}-credential") {
            world.credential_exists
        } else {
            !world.missing.contains(&secret.as_str())
        };
        if exists { call.reply(200, &meta_only(&secret)) } else { call.not_found() }
    }
    if status_changes {
        let call = api.expect("PATCH", &format!("{}/status", bubbles(&name))).await;
        assert!(call.query.contains("fieldManager=peerbubble-operator"));
        written.status = Some(call.status_of(bubble));
        written.events.push(api.expect_event().await);
    }
    written
}

async fn finish(task: tokio::task::JoinHandle<Result<Action, controller::Error>>) -> Result<Action, controller::Error> {
    tokio::time::timeout(Duration::from_secs(10), task).await.expect("reconcile finished").expect("no panic")
}

fn spec() -> Value {
    json!({"displayName": "Field operations"})
}

fn crisis_categories() -> Vec<peerbubble_crd::Category> {
    vec![category("leads", "field", &["responders"]), category("responders", "field", &["leads"])]
}

#[tokio::test]
async fn a_new_bubble_gets_the_finalizer_first() {
    let mut h = harness(vec![]);
    let mut fresh = bubble("field", spec());
    fresh.metadata.finalizers = None;
    let task = tokio::spawn(reconcile_bubble(Arc::new(fresh.clone()), h.ctx.clone()));
    let call = h.api.expect("PATCH", &bubbles("field")).await;
    let patch = call.body.to_string();
    assert!(patch.contains(FINALIZER), "finalizer patch: {patch}");
    let mut with = serde_json::to_value(&fresh).unwrap();
    with["metadata"]["finalizers"] = json!([FINALIZER]);
    call.reply(200, &with);
    assert_eq!(finish(task).await.unwrap(), Action::await_change());
}

#[tokio::test]
async fn create_applies_everything_and_says_which_secret_is_missing() {
    let mut h = harness(crisis_categories());
    let b = bubble("field", spec());
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &World::default(), true).await;
    assert_eq!(finish(task).await.unwrap(), Action::requeue(NOT_READY_RECHECK));

    // A fresh 32-byte TURN secret, announced by an Event (without its value).
    let secret = decode(&written.secret["data"]["turn-secret"]);
    assert_eq!(secret.len(), 32);
    assert_ne!(secret, vec![0u8; 32]);
    assert_eq!(written.events[0].1, "TurnSecretGenerated");
    assert!(!written.events[0].2.contains(&written.secret["data"]["turn-secret"].as_str().unwrap()[..8]));
    // The policy holds both categories.
    let policy = written.policy["data"]["policy.yaml"].as_str().unwrap();
    assert!(policy.contains("id: leads") && policy.contains("id: responders"), "{policy}");
    assert_eq!(written.services.len(), 3);
    // One replica by default, so no PodDisruptionBudget (it would block every drain).
    assert!(written.network_policy.is_some() && written.pdb.is_none() && written.pdb_deleted);
    assert_eq!(written.deployment["spec"]["replicas"], 1);

    let status = written.status.unwrap();
    let signaling = condition(&status, "SignalingReady");
    assert_eq!(signaling["status"], "False");
    assert_eq!(signaling["reason"], "SecretMissing");
    assert!(signaling["message"].as_str().unwrap().contains("field-credential"));
    assert_eq!(condition(&status, "Ready")["status"], "False");
    assert_eq!(condition(&status, "Ready")["observedGeneration"], 1);
    assert_eq!(condition(&status, "TurnReady")["reason"], "AddressPending");
    assert_eq!(status["endpoints"]["signaling"], "ws://field-signal.crisis.svc:8480/v1/signal");
    assert_eq!(written.events[1].0, "Warning");
    assert_eq!(written.events[1].1, "SecretMissing");
}

/// With ServiceAccount tokens, a bubble needs no credential Secret: without one it is Ready, and its pods
/// mount a token for the admin API's audience.
#[tokio::test]
async fn with_service_account_tokens_no_credential_secret_is_needed() {
    let settings = Settings { bubble_token_audience: Some("pb-peerbubble-admin-api.peerbubble".into()), ..settings() };
    let mut h = harness_with(crisis_categories(), settings.clone());
    let mut b = bubble("field", json!({"displayName": "Field", "signaling": {"host": "field.example.org"}}));
    let (key, value) = peerbubble_operator::render::MANAGED_BY;
    b.metadata.labels = Some([(key.to_owned(), value.to_owned())].into());
    let world = World {
        existing_turn_secret: Some(vec![7u8; 32]),
        ready_replicas: 1,
        lb_ip: Some("192.0.2.10"),
        credential_exists: false,
        settings,
        ..World::default()
    };
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    assert_eq!(finish(task).await.unwrap(), Action::requeue(RESYNC));
    let status = written.status.unwrap();
    assert_eq!(condition(&status, "SignalingReady")["status"], "True", "{status}");
    assert_eq!(condition(&status, "Ready")["status"], "True", "{status}");
    let volumes = written.deployment["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("serviceAccountToken") && !volumes.contains("field-credential"), "{volumes}");
}

#[tokio::test]
async fn a_ready_bubble_reports_endpoints_and_an_unchanged_one_writes_no_status() {
    let mut h = harness(crisis_categories());
    let mut b = bubble("field", json!({"displayName": "Field", "signaling": {"host": "field.example.org"}}));
    let world = World {
        existing_turn_secret: Some(vec![7u8; 32]),
        ready_replicas: 1,
        lb_ip: Some("192.0.2.10"),
        credential_exists: true,
        ..World::default()
    };
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    assert_eq!(finish(task).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(decode(&written.secret["data"]["turn-secret"]), vec![7u8; 32], "the existing secret is kept");
    let status = written.status.unwrap();
    for type_ in ["Ready", "SignalingReady", "TurnReady", "PolicyApplied", "Scaled"] {
        assert_eq!(condition(&status, type_)["status"], "True", "{type_}: {status}");
    }
    assert_eq!(status["readyReplicas"], 1);
    assert_eq!(status["endpoints"]["signaling"], "wss://field.example.org/v1/signal");
    assert_eq!(status["endpoints"]["turnUdp"], "turn:192.0.2.10:3478?transport=udp");
    assert_eq!(status["endpoints"]["turnTls"], "turns:192.0.2.10:443?transport=tcp");
    assert_eq!(written.events, vec![("Normal".into(), "Ready".into(), "1 replica ready".into())]);

    // The next reconcile finds the same world: everything is applied again (idempotent), no status write.
    b.status = Some(serde_json::from_value(status).unwrap());
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let again = drive_apply(&mut h.api, &b, &world, false).await;
    assert_eq!(finish(task).await.unwrap(), Action::requeue(RESYNC));
    assert!(again.status.is_none() && again.events.is_empty());
    assert_eq!(again.deployment, written.deployment, "the same spec renders the same Deployment");
}

#[tokio::test]
async fn an_update_is_applied_and_a_spec_shrink_deletes_what_is_no_longer_wanted() {
    let mut h = harness(vec![]);
    let world = World { existing_turn_secret: Some(vec![1u8; 32]), credential_exists: true, ..World::default() };
    let mut b = bubble(
        "field",
        json!({"displayName": "Field", "replicas": 3, "mailbox": {"ttlHours": 48},
            "nats": {"url": "nats://nats.peerbubble-system:4223", "credentialsSecret": "field-nats"}}),
    );
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    finish(task).await.unwrap();
    // With NATS the offline mailbox is the bubble's JetStream stream, shared by the replicas: no volume (the
    // claim is deleted), the servers told to keep it there, and pods replaced one by one.
    assert!(written.mailbox.is_none());
    {
        let pod = &written.deployment["spec"]["template"]["spec"];
        let env = pod["containers"][0]["env"].as_array().unwrap();
        let var = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
        assert_eq!(var("PEERBUBBLE_MAILBOX_JETSTREAM"), Some(json!("true")));
        assert_eq!(var("PEERBUBBLE_MAILBOX_TTL_SECS"), Some(json!("172800")));
        assert_eq!(var("PEERBUBBLE_MAILBOX"), None);
        assert!(!pod["volumes"].as_array().unwrap().iter().any(|v| v["name"] == "mailbox"));
        assert_eq!(written.deployment["spec"]["strategy"]["type"], "RollingUpdate");
    }
    // Replicas share the bubble through NATS: all three run, with a disruption budget, the NATS address and the
    // bubble's own credentials (mounted read-only), and a way out to NATS's port only.
    assert_eq!(written.deployment["spec"]["replicas"], 3);
    assert!(written.pdb.is_some());
    let status = written.status.clone().unwrap();
    let scaled = condition(&status, "Scaled");
    assert_eq!((scaled["status"].as_str(), scaled["reason"].as_str()), (Some("True"), Some("AsRequested")));
    let pod = &written.deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(var("PEERBUBBLE_NATS_URL"), Some(json!("nats://nats.peerbubble-system:4223")));
    assert_eq!(var("PEERBUBBLE_NATS_CREDENTIALS"), Some(json!("/var/run/peerbubble/nats")));
    let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "nats").unwrap().clone();
    assert_eq!(volume["secret"]["secretName"], "field-nats");
    let mount = pod["containers"][0]["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "nats").unwrap();
    assert_eq!(mount["readOnly"], true);
    let egress = written.network_policy.clone().unwrap()["spec"]["egress"].as_array().unwrap().clone();
    let to_nats: Vec<_> = egress.iter().filter(|r| r["ports"] == json!([{"protocol": "TCP", "port": 4223}])).collect();
    assert_eq!(to_nats.len(), 1, "{egress:?}");
    assert!(to_nats[0].get("to").is_none_or(|t| t.is_null()));
    let open = |r: &&Value| r.get("ports").is_none_or(Value::is_null) && r.get("to").is_none_or(Value::is_null);
    assert!(!egress.iter().any(|r| open(&r)), "no rule opens everything: {egress:?}");

    // One replica with a mailbox (no NATS).
    b.spec = serde_json::from_value(json!({"displayName": "Field", "replicas": 1,
        "mailbox": {"size": "2Gi", "ttlHours": 24}}))
    .unwrap();
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    finish(task).await.unwrap();
    assert_eq!(written.deployment["spec"]["replicas"], 1);
    assert!(written.pdb.is_none());
    // The offline mailbox: its volume, mounted, the server told where and for how long; the old pod goes before
    // the new one mounts the volume.
    let claim = written.mailbox.clone().expect("the mailbox's claim is applied");
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(claim["spec"]["accessModes"], json!(["ReadWriteOnce"]));
    let pod = &written.deployment["spec"]["template"]["spec"];
    let env = pod["containers"][0]["env"].as_array().unwrap();
    let var = |name: &str| env.iter().find(|e| e["name"] == name).map(|e| e["value"].clone());
    assert_eq!(var("PEERBUBBLE_MAILBOX_TTL_SECS"), Some(json!("86400")));
    assert_eq!(var("PEERBUBBLE_MAILBOX"), Some(json!("/var/lib/peerbubble/mailbox/mailbox.sqlite")));
    assert!(
        pod["volumes"].as_array().unwrap().iter().any(|v| v["persistentVolumeClaim"]["claimName"] == "field-mailbox")
    );
    assert_eq!(written.deployment["spec"]["strategy"]["type"], "Recreate");

    b.spec =
        serde_json::from_value(json!({"displayName": "Field", "replicas": 1, "networkPolicy": {"mode": "Disabled"},
        "turn": {"udpPort": 3479, "tlsPort": 5349}}))
        .unwrap();
    b.metadata.generation = Some(2);
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    finish(task).await.unwrap();
    assert_eq!(written.deployment["spec"]["replicas"], 1);
    assert!(written.network_policy_deleted && written.pdb_deleted);
    assert_eq!(written.services[1]["spec"]["ports"][0]["port"], 3479);
    let status = written.status.unwrap();
    assert_eq!(condition(&status, "PolicyApplied")["reason"], "DisabledBySpec");
    assert_eq!(condition(&status, "PolicyApplied")["observedGeneration"], 2);
    assert_eq!(condition(&status, "Scaled")["status"], "True");
}

/// Signaling behind an Ingress whose certificate cert-manager issues: the Ingress is applied, the bubble says
/// it waits for the certificate (which TURN over TLS serves too), then is Ready; without the Ingress in the spec
/// it is deleted.
#[tokio::test]
async fn an_ingress_is_applied_the_issued_certificate_awaited_and_the_ingress_deleted_when_no_longer_wanted() {
    let settings = Settings { ingress_class: Some("nginx".into()), ..settings() };
    let mut h = harness_with(vec![], settings.clone());
    let mut b = bubble(
        "field",
        json!({"displayName": "Field", "signaling": {"host": "field.example.org",
            "ingress": {"annotations": {"cert-manager.io/cluster-issuer": "org-pki"}}}}),
    );
    let mut world = World {
        existing_turn_secret: Some(vec![7u8; 32]),
        ready_replicas: 0,
        lb_ip: Some("192.0.2.10"),
        credential_exists: true,
        missing: vec!["field-signal-tls"],
        settings,
        ..World::default()
    };
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    assert_eq!(finish(task).await.unwrap(), Action::requeue(NOT_READY_RECHECK));
    let ingress = written.ingress.unwrap();
    assert_eq!(ingress["spec"]["ingressClassName"], "nginx");
    assert_eq!(ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"], "org-pki");
    assert_eq!(ingress["spec"]["tls"], json!([{"hosts": ["field.example.org"], "secretName": "field-signal-tls"}]));
    let status = written.status.unwrap();
    let signaling = condition(&status, "SignalingReady");
    assert_eq!(signaling["reason"], "SecretMissing");
    assert!(signaling["message"].as_str().unwrap().contains("cert-manager issues field-signal-tls"), "{signaling}");
    assert_eq!(status["endpoints"]["signaling"], "wss://field.example.org/v1/signal");

    // Issued, and the pod up: Ready.
    world.missing.clear();
    world.ready_replicas = 1;
    b.status = Some(serde_json::from_value(status).unwrap());
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    assert_eq!(finish(task).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(condition(written.status.as_ref().unwrap(), "Ready")["status"], "True");

    // No Ingress wanted any more: deleted.
    b.spec = serde_json::from_value(json!({"displayName": "Field"})).unwrap();
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &world, true).await;
    finish(task).await.unwrap();
    assert!(written.ingress_deleted && written.ingress.is_none());
}

#[tokio::test]
async fn a_rotation_annotation_replaces_the_turn_secret_once() {
    let mut h = harness(vec![]);
    let mut b = bubble("field", spec());
    b.metadata.annotations = Some([(ROTATE_ANNOTATION.to_owned(), "2026-11-22".to_owned())].into());
    let old = World { existing_turn_secret: Some(vec![9u8; 32]), credential_exists: true, ..World::default() };
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &old, true).await;
    finish(task).await.unwrap();
    let rotated = decode(&written.secret["data"]["turn-secret"]);
    assert_ne!(rotated, vec![9u8; 32]);
    assert_eq!(written.secret["metadata"]["annotations"][controller::ROTATION_ON_SECRET], "2026-11-22");

    // Once rotated, the secret stays.
    let after = World { existing_turn_secret: Some(rotated.clone()), existing_rotation: "2026-11-22", ..old };
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let written = drive_apply(&mut h.api, &b, &after, true).await;
    finish(task).await.unwrap();
    assert_eq!(decode(&written.secret["data"]["turn-secret"]), rotated);
}

#[tokio::test]
async fn deletion_removes_everything_then_the_finalizer() {
    let mut h = harness(vec![]);
    let mut b = bubble("field", spec());
    b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    ));
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Success"});
    let expected = [
        ns_path(APPS, "deployments/field"),
        ns_path(NETPOL, "ingresses/field-signal"),
        core("services", "field-signal"),
        core("services", "field-turn-udp"),
        core("services", "field-turn-tls"),
        ns_path(NETPOL, "networkpolicies/field"),
        ns_path(POLICY, "poddisruptionbudgets/field"),
        core("persistentvolumeclaims", "field-mailbox"),
        core("configmaps", "field-policy"),
        core("secrets", "field-turn"),
        core("serviceaccounts", "field-bubble"),
    ];
    for (i, path) in expected.iter().enumerate() {
        let call = h.api.expect("DELETE", path).await;
        // The Ingress and the PDB were never made (no host, one replica): a 404 is fine.
        if i == 1 || i == 6 { call.not_found() } else { call.reply(200, &gone) }
    }
    let (_, reason, note) = h.api.expect_event().await;
    // The mailbox's volume goes with the mission: what waited in it too.
    assert_eq!((reason.as_str(), note.as_str()), ("Deleted", "removed 9 objects made for the bubble"));
    let call = h.api.expect("PATCH", &bubbles("field")).await;
    assert!(call.body.to_string().contains("remove"), "finalizer removal: {}", call.body);
    let mut without = serde_json::to_value(&b).unwrap();
    without["metadata"]["finalizers"] = json!([]);
    call.reply(200, &without);
    assert_eq!(finish(task).await.unwrap(), Action::await_change());
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_requeue_with_growing_backoff() {
    let mut h = harness(vec![]);
    let b = Arc::new(bubble("field", spec()));
    for (code, reason, metric) in [(409, "Conflict", "conflict"), (500, "InternalError", "server_error")] {
        let task = tokio::spawn(reconcile_bubble(b.clone(), h.ctx.clone()));
        h.api.expect("GET", &core("secrets", "field-turn")).await.not_found();
        h.api.expect("PATCH", &core("serviceaccounts", "field-bubble")).await.fail(code, reason);
        let error = finish(task).await.unwrap_err();
        assert_eq!(error.reason(), metric, "{error}");
        assert!(error.to_string().contains(reason), "{error}");
        error_policy(b.clone(), &error, h.ctx.clone());
    }
    // Two failures in a row: the third retry waits 4 s; a success resets it.
    assert_eq!(
        error_policy(b.clone(), &controller::Error::Timeout(Duration::ZERO), h.ctx.clone()),
        Action::requeue(Duration::from_secs(4))
    );
    let metrics = encode(&h.registry);
    assert!(
        metrics.contains(r#"peerbubble_operator_reconcile_failures_total{controller="bubble",reason="conflict"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"reason="server_error"} 1"#), "{metrics}");
    assert!(metrics.contains(r#"peerbubble_operator_reconciles_total{controller="bubble"} 2"#), "{metrics}");

    let world = World { credential_exists: true, ..World::default() };
    let task = tokio::spawn(reconcile_bubble(b.clone(), h.ctx.clone()));
    drive_apply(&mut h.api, &b, &world, true).await;
    finish(task).await.unwrap();
    assert_eq!(
        error_policy(b.clone(), &controller::Error::Timeout(Duration::ZERO), h.ctx.clone()),
        Action::requeue(Duration::from_secs(1)),
        "backoff reset by the success"
    );
}

#[tokio::test(start_paused = true)]
async fn an_api_server_that_never_answers_times_the_reconcile_out() {
    let mut h = harness(vec![]);
    let b = Arc::new(bubble("field", spec()));
    let task = tokio::spawn(reconcile_bubble(b.clone(), h.ctx.clone()));
    let (request, _never_answered) = h.api.0.next_request().await.expect("a request");
    assert_eq!(request.uri().path(), core("secrets", "field-turn"));
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.reason(), "timeout");
    assert!(error.to_string().contains("timed out after 30s"), "{error}");
}

#[tokio::test]
async fn invalid_specs_become_conditions_and_nothing_is_applied() {
    let mut h = harness(vec![]);
    let b = bubble(
        "field",
        json!({"displayName": "Field", "networkPolicy": {"clusterCidrs": ["10.96.0.0/99"]},
        "turn": {"udpPort": 3478, "tlsPort": 3478, "externalAddress": "not an address"}}),
    );
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let call = h.api.expect("PATCH", &format!("{}/status", bubbles("field"))).await;
    let status = call.status_of(&b);
    let (type_, reason, note) = h.api.expect_event().await;
    assert_eq!(finish(task).await.unwrap(), Action::await_change());
    let ready = condition(&status, "Ready");
    assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("InvalidSpec")));
    let message = ready["message"].as_str().unwrap();
    for part in ["both 3478", "10.96.0.0/99", "not an address"] {
        assert!(message.contains(part), "{message}");
    }
    assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "InvalidSpec"));
    assert_eq!(note, message);
}

#[tokio::test]
async fn a_category_seeing_an_unknown_category_keeps_the_previous_policy() {
    let mut h = harness(vec![category("leads", "field", &["ghosts"])]);
    let b = bubble("field", spec());
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    h.api.expect("GET", &core("secrets", "field-turn")).await.not_found();
    let call = h.api.expect("PATCH", &format!("{}/status", bubbles("field"))).await;
    let status = call.status_of(&b);
    let (_, reason, _) = h.api.expect_event().await;
    assert_eq!(finish(task).await.unwrap(), Action::await_change());
    assert_eq!(reason, "InvalidCategory");
    let message = condition(&status, "Ready")["message"].as_str().unwrap().to_owned();
    assert!(message.contains("ghosts") && message.contains("previous policy stays"), "{message}");
}

#[tokio::test]
async fn a_category_change_re_renders_the_policy_and_rolls_the_pods() {
    let mut h = harness(crisis_categories());
    let b = bubble("field", spec());
    let world = World { existing_turn_secret: Some(vec![3u8; 32]), credential_exists: true, ..World::default() };
    let task = tokio::spawn(reconcile_bubble(Arc::new(b.clone()), h.ctx.clone()));
    let before = drive_apply(&mut h.api, &b, &world, true).await;
    finish(task).await.unwrap();

    // A new category arrives through the watch; the Category watch maps it to its bubble.
    let medics = category("medics", "field", &["leads"]);
    assert_eq!(
        peerbubble_operator::run::bubble_of(&medics),
        kube::runtime::reflector::ObjectRef::new("field").within(NS)
    );
    h.categories.apply_watcher_event(&watcher::Event::Apply(medics));
    let mut b2 = b.clone();
    b2.status = Some(serde_json::from_value(before.status.clone().unwrap()).unwrap());
    let task = tokio::spawn(reconcile_bubble(Arc::new(b2.clone()), h.ctx.clone()));
    let after = drive_apply(&mut h.api, &b2, &world, false).await;
    finish(task).await.unwrap();
    let policy = after.policy["data"]["policy.yaml"].as_str().unwrap();
    assert!(policy.contains("id: medics"), "{policy}");
    let hash = |d: &Value| d["spec"]["template"]["metadata"]["annotations"]["peerbubble.io/policy-sha256"].clone();
    assert_ne!(hash(&before.deployment), hash(&after.deployment), "a policy change rolls the pods");
}

#[tokio::test]
async fn a_category_of_a_missing_bubble_says_so() {
    let mut h = harness(vec![]);
    let orphan = category("leads", "ghost", &[]);
    let task = tokio::spawn(reconcile_category(Arc::new(orphan.clone()), h.ctx.clone()));
    h.api.expect("GET", &bubbles("ghost")).await.not_found();
    let call = h.api.expect("PATCH", &format!("{}/status", categories("leads"))).await;
    let status = call.status_of(&orphan);
    let (type_, reason, note) = h.api.expect_event().await;
    finish(task).await.unwrap();
    assert_eq!(condition(&status, "Ready")["reason"], "BubbleNotFound");
    assert_eq!((type_.as_str(), reason.as_str()), ("Warning", "BubbleNotFound"));
    assert!(note.contains("Bubble ghost does not exist in namespace crisis"), "{note}");
}

#[tokio::test]
async fn a_category_of_an_existing_bubble_is_in_its_policy() {
    let cats = crisis_categories();
    let mut h = harness(cats.clone());
    let task = tokio::spawn(reconcile_category(Arc::new(cats[0].clone()), h.ctx.clone()));
    h.api.expect("GET", &bubbles("field")).await.reply(
        200,
        &json!({"apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata", "metadata": {"name": "field", "namespace": NS}}),
    );
    let call = h.api.expect("PATCH", &format!("{}/status", categories("leads"))).await;
    let status = call.status_of(&cats[0]);
    assert_eq!(finish(task).await.unwrap(), Action::requeue(RESYNC));
    assert_eq!(condition(&status, "Ready")["status"], "True");
    assert_eq!(condition(&status, "Ready")["reason"], "InPolicy");
}
