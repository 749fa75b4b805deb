//! Status conditions: built from what a reconcile found, with `lastTransitionTime` kept while a condition's
//! status does not change, so that a status patch happens only when something changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// One condition as a reconcile judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    /// Condition type.
    pub type_: &'static str,
    /// True or False.
    pub ok: bool,
    /// PascalCase reason.
    pub reason: &'static str,
    /// For people.
    pub message: String,
}

impl Judgement {
    /// A true condition.
    pub fn ok(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, ok: true, reason, message: message.into() }
    }

    /// A false condition.
    pub fn not(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, ok: false, reason, message: message.into() }
    }
}

/// The conditions for `judgements`, keeping the transition time of `old` conditions whose status is unchanged.
pub fn conditions(
    old: &[Condition],
    judgements: &[Judgement],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    judgements
        .iter()
        .map(|j| {
            let status = if j.ok { "True" } else { "False" };
            let since = old
                .iter()
                .find(|c| c.type_ == j.type_ && c.status == status)
                .map_or(Time(now), |c| c.last_transition_time.clone());
            Condition {
                type_: j.type_.to_owned(),
                status: status.to_owned(),
                reason: j.reason.to_owned(),
                message: j.message.clone(),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Whether condition `type_` is True in `conditions`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions.iter().any(|c| c.type_ == type_ && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_until_the_status_changes() {
        let t0 = Timestamp::from_second(1_000).unwrap();
        let t1 = Timestamp::from_second(2_000).unwrap();
        let first = conditions(&[], &[Judgement::not("Ready", "Pending", "waiting")], Some(1), t0);
        let same = conditions(&first, &[Judgement::not("Ready", "Pending", "still waiting")], Some(2), t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].message, "still waiting");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = conditions(&same, &[Judgement::ok("Ready", "Ready", "up")], Some(2), t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert!(is_true(&flipped, "Ready"));
        assert!(!is_true(&same, "Ready"));
    }
}
