//! What every Bubble the admin API applies gets besides its display name: the organisation's choices for its
//! missions (a host name per bubble behind an Ingress, TURN exposure, NATS, the mailbox), given once to the
//! admin API (`--bubble-template`, the chart's `adminApi.controlPlane.bubbleTemplate`) as a Bubble `spec` in
//! JSON, in which `{bubble}` stands for the bubble's id. It is checked whole at start, as the API server would
//! check it, so that a mistake is an error when the admin API starts, not a bubble that never becomes Ready.

use peerbubble_admin_api::control::ControlError;
use serde_json::{Map, Value};

/// A Bubble `spec` without its display name, `{bubble}` standing for the bubble id in any string.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BubbleTemplate(Map<String, Value>);

fn substitute(value: &Value, bubble: &str) -> Value {
    match value {
        Value::String(text) => Value::String(text.replace("{bubble}", bubble)),
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, bubble)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), substitute(v, bubble))).collect()),
        other => other.clone(),
    }
}

/// Keys of `given` that `understood` (the same document read into the Rust types and written back) lacks: a
/// misspelt field would otherwise be dropped without a word (by serde here, by the API server's pruning there).
fn unknown_keys(given: &Value, understood: &Value, path: &str, out: &mut Vec<String>) {
    let (Value::Object(given), Value::Object(understood)) = (given, understood) else { return };
    for (key, value) in given {
        let here = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        // An empty list or map is left out when written back: not a mistake.
        let empty = match value {
            Value::Null => true,
            Value::Array(items) => items.is_empty(),
            Value::Object(map) => map.is_empty(),
            _ => false,
        };
        match understood.get(key) {
            None if empty => {}
            None => out.push(here),
            Some(kept) => unknown_keys(value, kept, &here, out),
        }
    }
}

impl BubbleTemplate {
    /// Reads and checks a template: a JSON object of Bubble `spec` fields, without `displayName`.
    pub fn parse(json: &str) -> Result<Self, ControlError> {
        let bad = |why: String| ControlError(format!("bubble template: {why}"));
        let value: Value = serde_json::from_str(json).map_err(|e| bad(format!("not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(bad(
                "a Bubble spec is a JSON object, e.g. {\"signaling\": {\"host\": \"{bubble}.example.org\"}}".into(),
            ));
        };
        if map.contains_key("displayName") {
            return Err(bad("displayName comes from each bubble, not from the template".into()));
        }
        let template = Self(map);
        // Checked with a sample id, as the operator and the API server will read it.
        let spec = template.spec_for("sample", "Sample");
        let typed: peerbubble_crd::BubbleSpec = serde_json::from_value(spec.clone()).map_err(|e| bad(e.to_string()))?;
        let understood = serde_json::to_value(&typed).map_err(|e| bad(e.to_string()))?;
        let mut unknown = Vec::new();
        unknown_keys(&spec, &understood, "", &mut unknown);
        if !unknown.is_empty() {
            return Err(bad(format!("unknown field(s) {}", unknown.join(", "))));
        }
        let refused = |what: &str, e: &dyn std::fmt::Debug| bad(format!("{what}: {e:?}"));
        peerbubble_crd::BubbleSpec::validate_cel(&spec, None).map_err(|e| refused("refused", &e))?;
        if let Some(signaling) = spec.get("signaling") {
            peerbubble_crd::SignalingSpec::validate_cel(signaling, None).map_err(|e| refused("signaling", &e))?;
        }
        if let Some(turn) = spec.get("turn") {
            peerbubble_crd::TurnSpec::validate_cel(turn, None).map_err(|e| refused("turn", &e))?;
        }
        if let Some(host) = typed.signaling.host.as_deref()
            && (host.len() > 253 || !host.split('.').all(crate::is_dns_label))
        {
            return Err(bad(format!(
                "signaling.host {host:?} is not a host name (lower-case letters, digits, dashes and dots)"
            )));
        }
        if let Some(host) = typed.signaling.host.as_deref()
            && !template
                .0
                .get("signaling")
                .and_then(|s| s.get("host"))
                .is_some_and(|h| h.to_string().contains("{bubble}"))
        {
            return Err(bad(format!(
                "signaling.host {host:?} would be the same for every bubble: put {{bubble}} in it, e.g. \
                 \"{{bubble}}.chat.example.org\""
            )));
        }
        Ok(template)
    }

    /// The Bubble `spec` of `bubble`.
    pub fn spec_for(&self, bubble: &str, display_name: &str) -> Value {
        let mut spec = substitute(&Value::Object(self.0.clone()), bubble);
        spec["displayName"] = Value::String(display_name.to_owned());
        spec
    }

    /// Where the members of `bubble` open it, when the template gives bubbles a host name: `https://<host>`.
    pub fn origin(&self, bubble: &str) -> Option<String> {
        let host = self.0.get("signaling")?.get("host")?.as_str()?;
        Some(format!("https://{}", host.replace("{bubble}", bubble)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_template_gives_each_bubble_its_host_and_ingress() {
        let template = BubbleTemplate::parse(
            r#"{"signaling": {"host": "{bubble}.chat.example.org",
                "ingress": {"annotations": {"cert-manager.io/cluster-issuer": "org-pki"}}},
                "turn": {"serviceType": "LoadBalancer", "externalAddress": "turn-{bubble}.example.org"}}"#,
        )
        .unwrap();
        let spec = template.spec_for("flood", "Flood response");
        assert_eq!(spec["displayName"], "Flood response");
        assert_eq!(spec["signaling"]["host"], "flood.chat.example.org");
        assert_eq!(spec["turn"]["externalAddress"], "turn-flood.example.org");
        assert_eq!(spec["signaling"]["ingress"]["annotations"]["cert-manager.io/cluster-issuer"], "org-pki");
        assert_eq!(template.origin("flood").as_deref(), Some("https://flood.chat.example.org"));
        let kept = BubbleTemplate::parse(r#"{"networkPolicy": {"clusterCidrs": []}, "signaling": {}}"#).unwrap();
        assert_eq!(kept.spec_for("flood", "Flood")["networkPolicy"]["clusterCidrs"], serde_json::json!([]));
        let empty = BubbleTemplate::parse("{}").unwrap();
        assert_eq!(empty.spec_for("flood", "Flood"), serde_json::json!({"displayName": "Flood"}));
        assert_eq!(empty.origin("flood"), None);
    }

    #[test]
    fn a_bad_template_is_refused_at_start_with_the_reason() {
        for (template, reason) in [
            ("[]", "JSON object"),
            ("{", "not JSON"),
            (r#"{"displayName": "x"}"#, "displayName"),
            (r#"{"signalling": {"host": "{bubble}.example.org"}}"#, "unknown field(s) signalling"),
            (
                r#"{"signaling": {"host": "{bubble}.example.org", "ingres": {"className": "nginx"}}}"#,
                "signaling.ingres",
            ),
            (r#"{"signaling": {"ingress": {}}}"#, "signaling.ingress needs signaling.host"),
            (r#"{"signaling": {"host": "chat.example.org"}}"#, "same for every bubble"),
            (r#"{"replicas": 3}"#, "need spec.nats"),
            (r#"{"turn": {"udpPort": 443, "tlsPort": 443}}"#, "must differ"),
            (r#"{"signaling": {"host": "{bubble}.Example.org"}}"#, "signaling"),
        ] {
            let err = BubbleTemplate::parse(template).unwrap_err().to_string();
            assert!(err.contains(reason), "{template}: {err}");
        }
    }
}
