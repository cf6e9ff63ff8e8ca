//! Decide: from what the nodes said and what status holds, the pure policy's decision and
//! what it means for status — per-node entries (counting cleanups that did not help), the
//! history the policy reads, and the decision record.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::crd::{Decision as DecisionRecord, NodeObservation, PhoenixMemoryStatus, conditions};
use crate::policy::{self, Decision, History, Observation, Outcome, PolicySpec};
use crate::validate::ValidSpec;

/// What one decision step produced.
#[derive(Clone, Debug)]
pub struct Decided {
    /// Per-node entries for status.
    pub nodes: Vec<NodeObservation>,
    /// What was decided before.
    pub history: History,
    /// The policy's decision.
    pub decision: Decision,
    /// What it did to the cadence.
    pub outcome: Outcome,
    /// The record for `status.lastDecision`.
    pub record: DecisionRecord,
}

/// Decides for `observations`, with what `before` (the status) says was decided earlier.
pub fn decide(
    valid: &ValidSpec,
    before: &PhoenixMemoryStatus,
    observations: &[Observation],
    now: Timestamp,
) -> Decided {
    let spec = policy_spec(valid);
    let nodes = node_statuses(
        observations,
        &before.nodes,
        valid.spec.cleanup.recover_threshold,
        spec.signal,
    );
    let history = history(before, &nodes, now);
    let decision = policy::decide(observations, &spec, &history);
    let outcome = Outcome::of(&decision, &history, valid.max_interval);
    let record = record(
        &decision,
        outcome,
        observations,
        before.last_decision.as_ref(),
        now,
    );
    Decided {
        nodes,
        history,
        decision,
        outcome,
        record,
    }
}

/// The policy's view of a validated spec.
pub fn policy_spec(valid: &ValidSpec) -> PolicySpec {
    let cleanup = &valid.spec.cleanup;
    PolicySpec {
        degradation: cleanup.degradation_threshold,
        recover: cleanup.recover_threshold,
        emergency: cleanup.emergency_threshold,
        min_interval: valid.min_interval,
        max_interval: valid.max_interval,
        dry_run: crate::plan::jobs_off(valid).is_some(),
        signal: match cleanup.signal {
            crate::crd::LatencySignal::Served => policy::Signal::Served,
            crate::crd::LatencySignal::Probe => policy::Signal::Probe,
        },
        latency_floor: valid.latency_floor,
        cache: policy::CachePolicy {
            capacity_bytes: valid.cache_capacity_bytes,
            auto_max_bytes: valid.auto_cache_max_bytes,
        },
    }
}

/// A Unix time in seconds as a status time (whole seconds).
fn unix_time(seconds: f64) -> Option<Time> {
    Timestamp::from_second(seconds as i64).ok().map(Time)
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// Status entries for the observations, counting cleanups that did not help: a node's count
/// goes up by one for each new cleanup (a new `lastCleanup` time) that did not lower its
/// ratio, and back to zero after one that did.
pub fn node_statuses(
    observations: &[Observation],
    previous: &[NodeObservation],
    recover: f64,
    signal: policy::Signal,
) -> Vec<NodeObservation> {
    observations
        .iter()
        .map(|observation| {
            let before = previous.iter().find(|p| p.name == observation.node());
            let carried = |name: &str| NodeObservation {
                name: name.to_string(),
                last_cleanup: before.and_then(|b| b.last_cleanup.clone()),
                last_cleanup_effect: before.and_then(|b| b.last_cleanup_effect.clone()),
                ineffective_cleanups: before.map_or(0, |b| b.ineffective_cleanups),
                ..NodeObservation::default()
            };
            match observation {
                Observation::Stale { node, reason } => NodeObservation {
                    stale_reason: Some(reason.clone()),
                    corrupted: reason.contains(crate::observe::CORRUPTED),
                    ..carried(node)
                },
                Observation::Fresh(report) => {
                    let mut out = NodeObservation {
                        ratio: Some(round(report.ratio, 2)),
                        recent_seconds: report.recent_seconds,
                        baseline_seconds: report.baseline_seconds,
                        samples: report.samples,
                        keys: report.keys,
                        logical_bytes: report.logical_bytes,
                        disk_bytes: report.disk_bytes,
                        cache_capacity_bytes: report.cache_capacity_bytes,
                        served_ratio: report.served.and_then(|s| s.ratio).map(|r| round(r, 2)),
                        served_p50_seconds: report.served.map(|s| s.p50_seconds),
                        served_p99_seconds: report.served.map(|s| s.p99_seconds),
                        signal: Some(
                            if report.judged(signal).served {
                                "served"
                            } else {
                                "probe"
                            }
                            .into(),
                        ),
                        ..carried(&report.node)
                    };
                    if let Some(cleanup) = report.last_cleanup {
                        // A node reports the ratio after a cleanup once it has settled, so
                        // a cleanup is judged when its effect first appears.
                        let at = unix_time(cleanup.at_unix);
                        let effect = match (cleanup.ratio_before, cleanup.ratio_after) {
                            (Some(b), Some(a)) => Some(format!("{b:.2}→{a:.2}")),
                            _ => None,
                        };
                        let unjudged = out.last_cleanup != at || out.last_cleanup_effect.is_none();
                        if unjudged && effect.is_some() {
                            out.ineffective_cleanups = match cleanup.helped(recover) {
                                Some(true) => 0,
                                Some(false) => out.ineffective_cleanups.saturating_add(1),
                                None => out.ineffective_cleanups,
                            };
                        }
                        out.last_cleanup = at;
                        out.last_cleanup_effect = effect;
                    }
                    out
                }
            }
        })
        .collect()
}

/// What was decided before, from status.
pub fn history(status: &PhoenixMemoryStatus, nodes: &[NodeObservation], now: Timestamp) -> History {
    History {
        interval: status
            .plan
            .as_ref()
            .map(|p| Duration::from_secs(p.interval_seconds)),
        degraded: status
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::DEGRADED && c.status == "True"),
        seconds_since_emergency: status
            .last_emergency_job
            .as_ref()
            .map(|j| now.duration_since(j.time.0).as_secs_f64().max(0.0)),
        ineffective_cleanups: nodes
            .iter()
            .map(|n| n.ineffective_cleanups)
            .max()
            .unwrap_or(0),
    }
}

/// The decision record for status: the stored one is kept (with its time) while the rule,
/// the cadence and the stale nodes stay the same and nothing new was done, so a steady
/// state does not rewrite status and `tighten`/`relax` stay visible until the next change.
pub fn record(
    decision: &Decision,
    outcome: Outcome,
    observations: &[Observation],
    previous: Option<&DecisionRecord>,
    now: Timestamp,
) -> DecisionRecord {
    let fresh = observations
        .iter()
        .filter(|o| matches!(o, Observation::Fresh(_)))
        .count();
    let new = DecisionRecord {
        time: Time(now),
        rule: decision.rule.as_str().into(),
        outcome: outcome.as_str().into(),
        reason: decision.reason.clone(),
        worst_ratio: decision.worst_ratio.map(|r| round(r, 2)),
        data_age_seconds: decision.data_age_seconds.map(|a| round(a, 1)),
        interval_seconds: decision.interval.as_secs(),
        fresh_nodes: u32::try_from(fresh).unwrap_or(u32::MAX),
        stale_nodes: u32::try_from(observations.len() - fresh).unwrap_or(u32::MAX),
        cause: decision.cause.map(|c| c.as_str().to_string()),
    };
    match previous {
        Some(old)
            if old.rule == new.rule
                && old.cause == new.cause
                && old.interval_seconds == new.interval_seconds
                && old.stale_nodes == new.stale_nodes
                && (outcome == Outcome::Keep || new.outcome == old.outcome)
                && outcome != Outcome::EmergencyJob =>
        {
            old.clone()
        }
        _ => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{LastCleanup, NodeReport, Rule};

    fn fresh(node: &str, ratio: f64, cleanup: Option<(f64, f64, f64)>) -> Observation {
        Observation::Fresh(NodeReport {
            node: node.into(),
            ratio,
            last_cleanup: cleanup.map(|(at, before, after)| LastCleanup {
                at_unix: at,
                ratio_before: Some(before),
                ratio_after: Some(after),
            }),
            ..NodeReport::default()
        })
    }

    #[test]
    fn each_new_cleanup_that_did_not_help_is_counted_once() {
        let first = node_statuses(
            &[fresh("m-0", 6.0, Some((100.0, 6.0, 5.9)))],
            &[],
            1.5,
            policy::Signal::Served,
        );
        assert_eq!(first[0].ineffective_cleanups, 1);
        assert_eq!(first[0].last_cleanup_effect.as_deref(), Some("6.00→5.90"));
        // The same cleanup seen again is not counted again.
        let again = node_statuses(
            &[fresh("m-0", 6.0, Some((100.0, 6.0, 5.9)))],
            &first,
            1.5,
            policy::Signal::Served,
        );
        assert_eq!(again[0].ineffective_cleanups, 1);
        let second = node_statuses(
            &[fresh("m-0", 6.0, Some((200.0, 6.0, 6.1)))],
            &again,
            1.5,
            policy::Signal::Served,
        );
        assert_eq!(second[0].ineffective_cleanups, 2);
        // A stale scrape keeps the count and shows no ratio.
        let stale = node_statuses(
            &[Observation::Stale {
                node: "m-0".into(),
                reason: "unreachable".into(),
            }],
            &second,
            1.5,
            policy::Signal::Served,
        );
        assert_eq!((stale[0].ineffective_cleanups, stale[0].ratio), (2, None));
        // A cleanup whose effect is not in yet (the node is settling) is judged when it is.
        let settling = node_statuses(
            &[Observation::Fresh(NodeReport {
                node: "m-0".into(),
                ratio: 6.0,
                last_cleanup: Some(LastCleanup {
                    at_unix: 300.0,
                    ratio_before: Some(6.0),
                    ratio_after: None,
                }),
                ..NodeReport::default()
            })],
            &stale,
            1.5,
            policy::Signal::Served,
        );
        assert_eq!(
            (
                settling[0].ineffective_cleanups,
                &settling[0].last_cleanup_effect
            ),
            (2, &None)
        );
        let helped = node_statuses(
            &[fresh("m-0", 1.1, Some((300.0, 6.0, 1.1)))],
            &settling,
            1.5,
            policy::Signal::Served,
        );
        assert_eq!(helped[0].ineffective_cleanups, 0);
        let history = history(
            &PhoenixMemoryStatus::default(),
            &second,
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(history.ineffective_cleanups, 2);
    }

    #[test]
    fn a_steady_decision_keeps_its_record_and_a_change_replaces_it() {
        let decision = Decision {
            interval: Duration::from_secs(900),
            emergency_job: false,
            degraded: true,
            predicted_breach_seconds: None,
            rule: Rule::Degraded,
            reason: "m-0 at 2.5×".into(),
            worst_ratio: Some(2.5),
            data_age_seconds: Some(1.0),
            cause: None,
            cache: None,
        };
        let obs = [fresh("m-0", 2.5, None)];
        let at = |s: i64| Timestamp::from_second(s).expect("time");
        let first = record(&decision, Outcome::Tighten, &obs, None, at(1000));
        let later = record(&decision, Outcome::Tighten, &obs, Some(&first), at(2000));
        assert_eq!(later, first);
        let kept = record(&decision, Outcome::Keep, &obs, Some(&first), at(2500));
        assert_eq!(
            kept.outcome, "tighten",
            "a later keep does not hide the change"
        );
        let flat = Decision {
            rule: Rule::Flat,
            interval: Duration::from_secs(86_400),
            ..decision.clone()
        };
        let relaxed = record(&flat, Outcome::Relax, &obs, Some(&first), at(3000));
        assert_ne!(relaxed.time, first.time);
    }
}
