//! The cleanup policy: a pure function from what the nodes reported (and what was decided
//! before) to the cleanup cadence, whether to run an emergency Job now, and a reason that
//! explains it. The schedule that runs at that cadence is the plan's ([`crate::plan`]).
//!
//! Rules, in order:
//! 1. **stale** — any node missing, unreadable, with too few samples or too old: keep the
//!    current plan, no Job. Missing data is never read as zero.
//! 2. **ineffective** — the last few cleanups did not lower the ratio: back off to
//!    `maxInterval`, no emergency Job, and name the likely cause.
//! 3. **emergency** — the worst ratio is above `emergencyThreshold` and no emergency Job ran
//!    within `minInterval`: one Job now (windows do not apply).
//! 4. **degraded** — at or above `degradationThreshold` (or still above `recoverThreshold`
//!    after having been degraded — hysteresis): clean every `minInterval`.
//! 5. **rising** — below the threshold but climbing: clean before the predicted crossing,
//!    never more often than `minInterval`.
//! 6. **flat** — otherwise: every `maxInterval`.

use std::time::Duration;

/// What one node reported, or why nothing usable came.
#[derive(Clone, Debug, PartialEq)]
pub enum Observation {
    /// A usable report.
    Fresh(NodeReport),
    /// No usable report.
    Stale {
        /// The node.
        node: String,
        /// Why (unreachable, too few samples, too old, no data).
        reason: String,
    },
}

impl Observation {
    /// The node it is about.
    pub fn node(&self) -> &str {
        match self {
            Observation::Fresh(report) => &report.node,
            Observation::Stale { node, .. } => node,
        }
    }
}

/// A usable report of one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Recent over baseline retrieve latency.
    pub ratio: f64,
    /// Seconds since the baseline was taken (the fresh start or the last effective cleanup).
    pub seconds_since_baseline: f64,
    /// Age of the report, seconds.
    pub age_seconds: f64,
    /// Logical bytes stored.
    pub logical_bytes: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
    /// The node's cache capacity.
    pub cache_capacity_bytes: u64,
    /// Recent median retrieve latency, seconds.
    pub recent_seconds: Option<f64>,
    /// Baseline median retrieve latency, seconds.
    pub baseline_seconds: Option<f64>,
    /// Retrieves in the probe's window.
    pub samples: u64,
    /// Memories stored.
    pub keys: u64,
    /// The node's last cleanup: when it started (Unix seconds) and the ratio before and
    /// after it against the same baseline.
    pub last_cleanup: Option<LastCleanup>,
}

/// A node's last cleanup, as it reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LastCleanup {
    /// When it started, Unix seconds.
    pub at_unix: f64,
    /// Ratio before, when the probe had data.
    pub ratio_before: Option<f64>,
    /// Ratio after, when the probe had data.
    pub ratio_after: Option<f64>,
}

impl LastCleanup {
    /// Whether the cleanup helped: `None` when there is nothing to judge (no data, or the
    /// node was not degraded — below `recover` — before it); otherwise whether it brought
    /// the ratio below `recover` or at least halved it. (A smaller cut is within what the
    /// probe's median moves by on its own under cache pressure: 2.2 → 7.8 → 9.7 between
    /// scrapes of one node in the scenario test, with nothing cleaned in between.)
    pub fn helped(&self, recover: f64) -> Option<bool> {
        let (before, after) = (self.ratio_before?, self.ratio_after?);
        if before < recover {
            return None;
        }
        Some(after < recover || after <= before / 2.0)
    }
}

/// The thresholds and bounds of the spec, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySpec {
    /// Enter `Degraded` at this ratio.
    pub degradation: f64,
    /// Leave `Degraded` below this ratio.
    pub recover: f64,
    /// Emergency Job above this ratio.
    pub emergency: f64,
    /// Shortest cadence (and the emergency rate limit).
    pub min_interval: Duration,
    /// Longest cadence.
    pub max_interval: Duration,
    /// Record decisions only; create no Job (`DryRun`, or cleanup disabled or suspended).
    pub dry_run: bool,
}

/// What was decided before (kept in status).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// The cadence in force.
    pub interval: Option<Duration>,
    /// Whether the memory was `Degraded`.
    pub degraded: bool,
    /// Seconds since the last emergency Job, if one ran.
    pub seconds_since_emergency: Option<f64>,
    /// Consecutive cleanups that did not lower the ratio.
    pub ineffective_cleanups: u32,
}

/// A rise from the baseline smaller than this fraction of the way to `degradation` is noise.
pub const RISING_FRACTION: f64 = 0.25;

/// Cleanups in a row that must fail to help before automatic cleanup backs off.
pub const INEFFECTIVE_LIMIT: u32 = 3;

/// The rule that decided, in the order they are tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// A node's data is missing or too old: keep the plan, no Job.
    Stale,
    /// Cleanups stopped helping: back off to `maxInterval`.
    Ineffective,
    /// Past the emergency line: one Job now.
    Emergency,
    /// Degraded (with hysteresis): every `minInterval`.
    Degraded,
    /// Climbing toward the threshold: before the predicted crossing.
    Rising,
    /// Otherwise: every `maxInterval`.
    Flat,
}

impl Rule {
    /// Every rule (for metric labels).
    pub const ALL: [Rule; 6] = [
        Rule::Stale,
        Rule::Ineffective,
        Rule::Emergency,
        Rule::Degraded,
        Rule::Rising,
        Rule::Flat,
    ];

    /// The word in status, metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Stale => "stale",
            Rule::Ineffective => "ineffective",
            Rule::Emergency => "emergency",
            Rule::Degraded => "degraded",
            Rule::Rising => "rising",
            Rule::Flat => "flat",
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a decision did to the cadence in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The cadence stays.
    Keep,
    /// Cleanups come more often.
    Tighten,
    /// Cleanups come less often.
    Relax,
    /// An emergency Job runs now.
    EmergencyJob,
}

impl Outcome {
    /// The word in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Keep => "keep",
            Outcome::Tighten => "tighten",
            Outcome::Relax => "relax",
            Outcome::EmergencyJob => "emergency-job",
        }
    }

    /// How `decision` changed the cadence in force before (`history`; `max` when none was).
    pub fn of(decision: &Decision, history: &History, max: Duration) -> Outcome {
        let before = history.interval.unwrap_or(max);
        if decision.emergency_job {
            Outcome::EmergencyJob
        } else if decision.rule == Rule::Stale || decision.interval == before {
            Outcome::Keep
        } else if decision.interval < before {
            Outcome::Tighten
        } else {
            Outcome::Relax
        }
    }
}

/// The policy's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The cadence to schedule.
    pub interval: Duration,
    /// Run one cleanup Job now.
    pub emergency_job: bool,
    /// Whether the memory is `Degraded` now.
    pub degraded: bool,
    /// Seconds until the worst node is predicted to cross `degradation`, if it is rising.
    pub predicted_breach_seconds: Option<f64>,
    /// The rule that decided.
    pub rule: Rule,
    /// A sentence for status and Events.
    pub reason: String,
    /// The worst ratio decided on.
    pub worst_ratio: Option<f64>,
    /// Age of the oldest report used, seconds.
    pub data_age_seconds: Option<f64>,
}

fn clamp(interval: Duration, spec: &PolicySpec) -> Duration {
    interval.clamp(spec.min_interval, spec.max_interval)
}

/// The likely cause when cleanups do not help, from the worst node's sizes.
pub fn ineffective_cause(report: &NodeReport) -> String {
    if report.logical_bytes > report.cache_capacity_bytes {
        format!(
            "hot set exceeds cacheCapacity ({} logical bytes, cache {} bytes): raise cacheCapacity",
            report.logical_bytes, report.cache_capacity_bytes
        )
    } else if report.disk_bytes > 4 * report.logical_bytes.max(1) {
        format!(
            "disk is {}× logical bytes: the rebuild did not run (check free disk space)",
            report.disk_bytes / report.logical_bytes.max(1)
        )
    } else {
        "latency rose for a reason cleanup does not address (load, noisy neighbours, CPU limits)"
            .into()
    }
}

/// `node: reason` for each stale observation.
pub fn stale_nodes(observations: &[Observation]) -> Vec<String> {
    observations
        .iter()
        .filter_map(|o| match o {
            Observation::Stale { node, reason } => Some(format!("{node}: {reason}")),
            Observation::Fresh(_) => None,
        })
        .collect()
}

/// Decides. Pure: same inputs, same decision.
pub fn decide(observations: &[Observation], spec: &PolicySpec, history: &History) -> Decision {
    let keep = history
        .interval
        .map_or(spec.max_interval, |i| clamp(i, spec));
    let stale = stale_nodes(observations);
    if observations.is_empty() || !stale.is_empty() {
        // The schedule is kept and no Job made, but what the fresh nodes say is shown.
        let fresh_worst = observations
            .iter()
            .filter_map(|o| match o {
                Observation::Fresh(r) => Some(r.ratio),
                Observation::Stale { .. } => None,
            })
            .max_by(f64::total_cmp);
        return Decision {
            interval: keep,
            emergency_job: false,
            degraded: history.degraded || fresh_worst.is_some_and(|r| r >= spec.degradation),
            predicted_breach_seconds: None,
            rule: Rule::Stale,
            reason: if observations.is_empty() {
                "no node reported; keeping the current schedule".into()
            } else {
                format!(
                    "metrics stale ({}); keeping the current schedule{}",
                    stale.join("; "),
                    fresh_worst.map_or_else(String::new, |r| format!(
                        "; the fresh nodes' worst ratio is {r:.2}×"
                    ))
                )
            },
            worst_ratio: fresh_worst,
            data_age_seconds: None,
        };
    }
    let reports: Vec<&NodeReport> = observations
        .iter()
        .filter_map(|o| match o {
            Observation::Fresh(r) => Some(r),
            Observation::Stale { .. } => None,
        })
        .collect();
    let worst = reports
        .iter()
        .copied()
        .max_by(|a, b| a.ratio.total_cmp(&b.ratio))
        .unwrap_or(reports[0]);
    let data_age = reports.iter().map(|r| r.age_seconds).fold(0.0, f64::max);
    let ratio = worst.ratio;
    let degraded = ratio >= spec.degradation || (history.degraded && ratio >= spec.recover);
    let base = |interval, emergency_job, rule, reason: String, breach| Decision {
        interval,
        emergency_job,
        degraded,
        predicted_breach_seconds: breach,
        rule,
        reason,
        worst_ratio: Some(ratio),
        data_age_seconds: Some(data_age),
    };
    if history.ineffective_cleanups >= INEFFECTIVE_LIMIT {
        return base(
            spec.max_interval,
            false,
            Rule::Ineffective,
            format!(
                "{} cleanups in a row did not lower {}'s ratio ({ratio:.2}); backing off to maxInterval: {}",
                history.ineffective_cleanups,
                worst.node,
                ineffective_cause(worst)
            ),
            None,
        );
    }
    let emergency_allowed = history
        .seconds_since_emergency
        .is_none_or(|s| s >= spec.min_interval.as_secs_f64());
    if ratio >= spec.emergency {
        let job = emergency_allowed && !spec.dry_run;
        let reason = if !emergency_allowed {
            format!(
                "{} at {ratio:.2}× is past the emergency line {:.2}× but an emergency cleanup ran within minInterval",
                worst.node, spec.emergency
            )
        } else if spec.dry_run {
            format!(
                "{} at {ratio:.2}× is past the emergency line {:.2}×; no Job (DryRun, disabled or suspended)",
                worst.node, spec.emergency
            )
        } else {
            format!(
                "{} at {ratio:.2}× is past the emergency line {:.2}×: cleaning now",
                worst.node, spec.emergency
            )
        };
        return base(spec.min_interval, job, Rule::Emergency, reason, Some(0.0));
    }
    if degraded {
        return base(
            spec.min_interval,
            false,
            Rule::Degraded,
            format!(
                "{} at {ratio:.2}× (degraded at {:.2}×, recovers below {:.2}×): cleaning every minInterval",
                worst.node, spec.degradation, spec.recover
            ),
            Some(0.0),
        );
    }
    // Rising: the ratio grew from 1.0 at the baseline to `ratio` in `since` seconds. Below
    // a quarter of the way to the threshold it is read as noise, not a trend; once the
    // plan was tightened for a rise, it relaxes only below half of that (hysteresis, so a
    // ratio moving around the line does not flip the schedule on every scrape).
    let rise = ratio - 1.0;
    let since = worst.seconds_since_baseline.max(1.0);
    let tightened = history.interval.is_some_and(|i| i < spec.max_interval);
    let entry = RISING_FRACTION * (spec.degradation - 1.0);
    let threshold = if tightened { entry / 2.0 } else { entry };
    if rise >= threshold && rise > 0.0 {
        let per_second = rise / since;
        let to_breach = ((spec.degradation - ratio) / per_second).max(0.0);
        // Clean at half the predicted time, so the cleanup lands before the crossing.
        let interval = clamp(Duration::from_secs_f64((to_breach / 2.0).min(1e9)), spec);
        return base(
            interval,
            false,
            Rule::Rising,
            format!(
                "{} rose to {ratio:.2}× in {:.0} s; predicted to cross {:.2}× in {:.0} s: cleaning every {} s",
                worst.node,
                since,
                spec.degradation,
                to_breach,
                interval.as_secs()
            ),
            Some(to_breach),
        );
    }
    base(
        spec.max_interval,
        false,
        Rule::Flat,
        format!("worst ratio {ratio:.2}× is flat: cleaning every maxInterval"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec() -> PolicySpec {
        PolicySpec {
            degradation: 2.0,
            recover: 1.5,
            emergency: 8.0,
            min_interval: Duration::from_secs(900),
            max_interval: Duration::from_secs(86_400),
            dry_run: false,
        }
    }

    fn report(ratio: f64, since: f64) -> Observation {
        Observation::Fresh(NodeReport {
            node: "mem-0".into(),
            ratio,
            seconds_since_baseline: since,
            age_seconds: 5.0,
            logical_bytes: 1 << 20,
            disk_bytes: 1 << 21,
            cache_capacity_bytes: 1 << 28,
            ..NodeReport::default()
        })
    }

    #[test]
    fn flat_latency_cleans_every_max_interval() {
        let d = decide(&[report(1.01, 3600.0)], &spec(), &History::default());
        assert_eq!(
            (d.rule, d.interval, d.emergency_job),
            (Rule::Flat, spec().max_interval, false)
        );
    }

    #[test]
    fn rising_latency_cleans_before_the_predicted_crossing() {
        // From 1.0 to 1.5 in an hour: 2.0 in another hour; clean every half hour.
        let d = decide(&[report(1.5, 3600.0)], &spec(), &History::default());
        assert_eq!(d.rule, Rule::Rising);
        assert_eq!(d.interval, Duration::from_secs(1800));
        assert!((d.predicted_breach_seconds.expect("breach") - 3600.0).abs() < 1.0);
    }

    #[test]
    fn a_small_rise_is_noise_not_a_trend() {
        // 1.2 is a fifth of the way from 1.0 to 2.0: flat, even right after the baseline.
        let d = decide(&[report(1.2, 5.0)], &spec(), &History::default());
        assert_eq!(d.rule, Rule::Flat);
        assert_eq!(
            decide(&[report(1.3, 5.0)], &spec(), &History::default()).rule,
            Rule::Rising
        );
    }

    #[test]
    fn a_tightened_plan_relaxes_only_well_below_the_rising_line() {
        let tightened = History {
            interval: Some(Duration::from_secs(1800)),
            ..History::default()
        };
        // 1.2 would not enter "rising" (see above) but does not leave it either.
        assert_eq!(
            decide(&[report(1.2, 600.0)], &spec(), &tightened).rule,
            Rule::Rising
        );
        assert_eq!(
            decide(&[report(1.1, 600.0)], &spec(), &tightened).rule,
            Rule::Flat
        );
    }

    #[test]
    fn a_cleanup_helps_when_it_recovers_or_cuts_the_ratio() {
        let judge = |before, after| {
            LastCleanup {
                at_unix: 0.0,
                ratio_before: before,
                ratio_after: after,
            }
            .helped(1.5)
        };
        assert_eq!(judge(Some(6.0), Some(1.1)), Some(true));
        assert_eq!(judge(Some(6.0), Some(3.0)), Some(true), "halved");
        assert_eq!(judge(Some(6.0), Some(4.0)), Some(false), "a third is noise");
        assert_eq!(judge(Some(6.0), Some(5.5)), Some(false));
        assert_eq!(judge(Some(1.2), Some(1.2)), None, "nothing to fix");
        assert_eq!(judge(None, Some(1.0)), None, "no data before");
        assert_eq!(judge(Some(3.0), None), None, "no data after");
    }

    #[test]
    fn degradation_uses_hysteresis() {
        let entered = decide(&[report(2.1, 600.0)], &spec(), &History::default());
        assert!(entered.degraded);
        assert_eq!(entered.interval, spec().min_interval);
        let held = decide(
            &[report(1.7, 600.0)],
            &spec(),
            &History {
                degraded: true,
                ..History::default()
            },
        );
        assert!(held.degraded, "1.7 is above recover 1.5: still degraded");
        let left = decide(
            &[report(1.4, 600.0)],
            &spec(),
            &History {
                degraded: true,
                ..History::default()
            },
        );
        assert!(!left.degraded);
    }

    #[test]
    fn an_emergency_runs_once_per_min_interval_and_never_in_dry_run() {
        let d = decide(&[report(9.0, 60.0)], &spec(), &History::default());
        assert!(d.emergency_job);
        let again = decide(
            &[report(9.0, 60.0)],
            &spec(),
            &History {
                seconds_since_emergency: Some(60.0),
                ..History::default()
            },
        );
        assert!(!again.emergency_job);
        let dry = decide(
            &[report(9.0, 60.0)],
            &PolicySpec {
                dry_run: true,
                ..spec()
            },
            &History::default(),
        );
        assert!(!dry.emergency_job);
    }

    #[test]
    fn stale_data_keeps_the_plan_and_names_the_nodes() {
        let history = History {
            interval: Some(Duration::from_secs(3600)),
            ..History::default()
        };
        let d = decide(
            &[
                report(9.0, 60.0),
                Observation::Stale {
                    node: "mem-1".into(),
                    reason: "unreachable".into(),
                },
            ],
            &spec(),
            &history,
        );
        assert_eq!(
            (d.rule, d.interval, d.emergency_job),
            (Rule::Stale, Duration::from_secs(3600), false)
        );
        assert!(d.reason.contains("mem-1: unreachable"));
        assert_eq!(decide(&[], &spec(), &history).rule, Rule::Stale);
    }

    #[test]
    fn ineffective_cleanups_back_off_with_a_cause() {
        let mut hot = NodeReport {
            node: "mem-0".into(),
            ratio: 6.0,
            seconds_since_baseline: 60.0,
            age_seconds: 1.0,
            logical_bytes: 1 << 30,
            disk_bytes: 1 << 30,
            cache_capacity_bytes: 1 << 24,
            ..NodeReport::default()
        };
        let history = History {
            ineffective_cleanups: 3,
            ..History::default()
        };
        let d = decide(&[Observation::Fresh(hot.clone())], &spec(), &history);
        assert_eq!(
            (d.rule, d.interval, d.emergency_job),
            (Rule::Ineffective, spec().max_interval, false)
        );
        assert!(d.reason.contains("raise cacheCapacity"), "{}", d.reason);
        hot.cache_capacity_bytes = 1 << 31;
        hot.disk_bytes = 1 << 33;
        assert!(ineffective_cause(&hot).contains("rebuild did not run"));
    }

    fn arb_spec() -> impl Strategy<Value = PolicySpec> {
        (
            1.0f64..3.0,
            0.1f64..3.0,
            0.1f64..10.0,
            60u64..7200,
            0u64..200_000,
            any::<bool>(),
        )
            .prop_map(|(recover, d_gap, e_gap, min, extra, dry_run)| PolicySpec {
                recover,
                degradation: recover + d_gap,
                emergency: recover + d_gap + e_gap,
                min_interval: Duration::from_secs(min),
                max_interval: Duration::from_secs(min + extra),
                dry_run,
            })
    }

    fn arb_history() -> impl Strategy<Value = History> {
        (
            proptest::option::of(1u64..1_000_000),
            any::<bool>(),
            proptest::option::of(0.0f64..1e6),
            0u32..6,
        )
            .prop_map(|(interval, degraded, since, ineffective)| History {
                interval: interval.map(Duration::from_secs),
                degraded,
                seconds_since_emergency: since,
                ineffective_cleanups: ineffective,
            })
    }

    fn arb_observations() -> impl Strategy<Value = Vec<Observation>> {
        proptest::collection::vec(
            prop_oneof![
                4 => (0.5f64..50.0, 1.0f64..1e6).prop_map(|(r, s)| report(r, s)),
                1 => Just(Observation::Stale { node: "x".into(), reason: "unreachable".into() }),
            ],
            0..5,
        )
    }

    proptest! {
        #[test]
        fn the_cadence_always_lies_within_the_bounds(obs in arb_observations(), spec in arb_spec(), history in arb_history()) {
            let d = decide(&obs, &spec, &history);
            prop_assert!(d.interval >= spec.min_interval && d.interval <= spec.max_interval, "{d:?}");
        }

        #[test]
        fn stale_input_never_changes_the_plan_or_creates_a_job(obs in arb_observations(), spec in arb_spec(), history in arb_history()) {
            let mut obs = obs;
            obs.push(Observation::Stale { node: "late".into(), reason: "too old".into() });
            let d = decide(&obs, &spec, &history);
            prop_assert!(!d.emergency_job);
            prop_assert_eq!(d.interval, history.interval.map_or(spec.max_interval, |i| i.clamp(spec.min_interval, spec.max_interval)));
            prop_assert_eq!(d.rule, Rule::Stale);
            // What the fresh nodes say stays visible.
            let fresh = obs.iter().filter_map(|o| match o {
                Observation::Fresh(r) => Some(r.ratio),
                Observation::Stale { .. } => None,
            }).max_by(f64::total_cmp);
            prop_assert_eq!(d.worst_ratio, fresh);
        }

        #[test]
        fn more_degradation_never_gives_a_longer_cadence(
            a in 0.5f64..50.0, b in 0.5f64..50.0, since in 1.0f64..1e6, spec in arb_spec(), history in arb_history()
        ) {
            let (low, high) = if a <= b { (a, b) } else { (b, a) };
            let d_low = decide(&[report(low, since)], &spec, &history);
            let d_high = decide(&[report(high, since)], &spec, &history);
            prop_assert!(d_high.interval <= d_low.interval, "{low} → {:?}, {high} → {:?}", d_low, d_high);
        }

        #[test]
        fn no_emergency_job_within_min_interval_of_the_last(
            obs in arb_observations(), spec in arb_spec(), history in arb_history(), fraction in 0.0f64..1.0
        ) {
            let recent = History { seconds_since_emergency: Some(spec.min_interval.as_secs_f64() * fraction * 0.999), ..history };
            prop_assert!(!decide(&obs, &spec, &recent).emergency_job);
        }

        #[test]
        fn dry_run_never_creates_a_job(obs in arb_observations(), spec in arb_spec(), history in arb_history()) {
            let dry = PolicySpec { dry_run: true, ..spec };
            prop_assert!(!decide(&obs, &dry, &history).emergency_job);
        }
    }
}
