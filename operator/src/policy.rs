//! The cleanup policy: a pure function from what the nodes reported (and what was decided
//! before) to the cleanup cadence, whether to run an emergency Job now, and a reason that
//! explains it. The schedule that runs at that cadence is the plan's ([`crate::plan`]).
//!
//! Each node's ratio is its **signal**: the served ratio (what clients saw, p50 against the
//! node's own served baseline) with `signal: Served` when the node has enough traffic, else
//! the engine probe's ratio (said in the reason).
//!
//! Rules, in order:
//! 1. **stale** — any node missing, unreadable, with too few samples or too old: keep the
//!    current plan, no Job. Missing data is never read as zero.
//! 1. **floor** — every node serves p99 under `latencyFloor`: whatever the ratios, nothing
//!    to do (every `maxInterval`, not degraded, no Job).
//! 2. **ineffective** — the last few cleanups did not lower the ratio: back off to
//!    `maxInterval`, no emergency Job, and name the likely cause.
//! 3. **cache-pressure** — the worst node is degraded, past the emergency line or rising,
//!    and its figures name a cause no cleanup fixes: a hot set beyond `cacheCapacity` (with
//!    no disk bloat and no expired memories to prune). No early cleanup (every
//!    `maxInterval`); the cache is raised within `autoCache.max` when opted in, else
//!    recommended.
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
    /// What the node served to clients, when its traffic was enough to say.
    pub served: Option<ServedReport>,
    /// Expired memories not yet pruned.
    pub expired_keys: u64,
    /// The node's disk holds more than its rebuild multiple of logical bytes.
    pub rebuild_due: bool,
}

/// Served latency, as a node reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServedReport {
    /// Recent p50 over the served baseline's (none until a baseline exists).
    pub ratio: Option<f64>,
    /// Recent p50, seconds.
    pub p50_seconds: f64,
    /// Recent p99, seconds.
    pub p99_seconds: f64,
    /// Retrieves in the window.
    pub samples: u64,
}

/// Which ratio decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Signal {
    /// The served ratio, or the probe's for a node without enough traffic.
    #[default]
    Served,
    /// The engine probe's ratio.
    Probe,
}

/// The ratio a node is judged by, and which one it is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judged {
    /// The ratio.
    pub ratio: f64,
    /// Whether it is the served ratio (else the probe's).
    pub served: bool,
}

impl NodeReport {
    /// The ratio `signal` judges this node by.
    pub fn judged(&self, signal: Signal) -> Judged {
        match (signal, self.served.and_then(|s| s.ratio)) {
            (Signal::Served, Some(ratio)) => Judged {
                ratio,
                served: true,
            },
            _ => Judged {
                ratio: self.ratio,
                served: false,
            },
        }
    }

    /// Whether the node serves under `floor` (p99), when it has served figures.
    pub fn under_floor(&self, floor: Option<Duration>) -> bool {
        match (floor, self.served) {
            (Some(floor), Some(served)) => served.p99_seconds < floor.as_secs_f64(),
            _ => false,
        }
    }

    /// "4.02× in the engine, 1.38× served, p99 0.39 ms" (what is known).
    pub fn figures(&self) -> String {
        let mut text = format!("{:.2}× in the engine", self.ratio);
        if let Some(served) = self.served {
            match served.ratio {
                Some(ratio) => text.push_str(&format!(", {ratio:.2}× served")),
                None => text.push_str(", served (no baseline yet)"),
            }
            text.push_str(&format!(
                ", p99 {}",
                millis(Duration::from_secs_f64(served.p99_seconds.max(0.0)))
            ));
        } else {
            text.push_str(", too little traffic for a served figure");
        }
        text
    }
}

/// A duration in milliseconds for reasons: `0.39 ms`, `12 ms`.
pub fn millis(duration: Duration) -> String {
    let ms = duration.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

/// Why a node's latency rose, from its own figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// Disk holds more than the rebuild multiple of logical bytes: a cleanup rebuilds.
    DiskBloat,
    /// Expired memories piled up (5% of the keys or more): a cleanup prunes them.
    Expired,
    /// The data (the hot set's upper bound) is larger than the cache: more cache helps, a
    /// cleanup does not.
    CachePressure,
    /// None of these: a cleanup may still help (fragmentation the node cannot see).
    Unknown,
}

impl Cause {
    /// The word in status.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::DiskBloat => "disk-bloat",
            Cause::Expired => "expired-memories",
            Cause::CachePressure => "cache-pressure",
            Cause::Unknown => "unknown",
        }
    }

    /// Whether a cleanup addresses it.
    pub fn cleanup_helps(self) -> bool {
        self != Cause::CachePressure
    }
}

/// Names the cause from `report`'s figures. Disk bloat and expired memories come first: a
/// cleanup fixes them even when the data is also beyond the cache.
pub fn classify(report: &NodeReport) -> Cause {
    if report.rebuild_due {
        Cause::DiskBloat
    } else if report.expired_keys > 0 && report.expired_keys.saturating_mul(20) >= report.keys {
        Cause::Expired
    } else if report.logical_bytes > report.cache_capacity_bytes {
        Cause::CachePressure
    } else {
        Cause::Unknown
    }
}

/// The cache settings the policy right-sizes within.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CachePolicy {
    /// The cache the nodes are meant to run with now, bytes.
    pub capacity_bytes: u64,
    /// `autoCache.max`: raise up to this (`None`: only recommend).
    pub auto_max_bytes: Option<u64>,
}

/// What to do about the cache when it is what slows the nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheAdvice {
    /// The cache now, bytes.
    pub current_bytes: u64,
    /// A size that would hold the data (twice the cache, or the data and a quarter more).
    pub suggested_bytes: u64,
    /// Raise to this now (opted in, below the bound, every node running the current size).
    pub raise_to: Option<u64>,
}

const MIB: u64 = 1 << 20;

/// The cache to suggest for `logical` bytes over `current`: twice the cache or the data and
/// a quarter more, whichever is larger, in whole MiB.
pub fn suggested_cache(current: u64, logical: u64) -> u64 {
    current
        .saturating_mul(2)
        .max(logical.saturating_add(logical / 4))
        .div_ceil(MIB)
        .saturating_mul(MIB)
}

/// A byte count for reasons: `31.3 MiB`, `1.2 GiB`, `640 KiB`.
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", b / f64::from(1u32 << 30))
    } else if bytes >= 1 << 20 {
        format!("{:.1} MiB", b / f64::from(1u32 << 20))
    } else {
        format!("{:.0} KiB", b / 1024.0)
    }
}

/// A byte count as a quantity (`Mi`/`Gi` when whole).
pub fn quantity(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{}Gi", bytes >> 30)
    } else if bytes.is_multiple_of(MIB) {
        format!("{}Mi", bytes >> 20)
    } else {
        bytes.to_string()
    }
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
    /// Which ratio decides.
    pub signal: Signal,
    /// No action while every node serves p99 under this.
    pub latency_floor: Option<Duration>,
    /// The cache and its opt-in bound.
    pub cache: CachePolicy,
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
    /// Every node serves under `latencyFloor`: nothing to do.
    Floor,
    /// The cause is a hot set beyond the cache: no early cleanup; raise or recommend cache.
    CachePressure,
}

impl Rule {
    /// Every rule (for metric labels).
    pub const ALL: [Rule; 8] = [
        Rule::Stale,
        Rule::Ineffective,
        Rule::Emergency,
        Rule::Degraded,
        Rule::Rising,
        Rule::Flat,
        Rule::Floor,
        Rule::CachePressure,
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
            Rule::Floor => "under-floor",
            Rule::CachePressure => "cache-pressure",
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
    /// The cause named for the worst node, when it was judged degraded, past the emergency
    /// line or rising.
    pub cause: Option<Cause>,
    /// What to do about the cache (cache pressure only).
    pub cache: Option<CacheAdvice>,
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
    let reports: Vec<&NodeReport> = observations
        .iter()
        .filter_map(|o| match o {
            Observation::Fresh(r) => Some(r),
            Observation::Stale { .. } => None,
        })
        .collect();
    let stale = stale_nodes(observations);
    if reports.is_empty() || !stale.is_empty() {
        // The schedule is kept and no Job made, but what the fresh nodes say is shown.
        let fresh_worst = reports
            .iter()
            .map(|r| r.judged(spec.signal).ratio)
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
            cause: None,
            cache: None,
        };
    }
    let data_age = reports.iter().map(|r| r.age_seconds).fold(0.0, f64::max);
    let by_ratio = |a: &&&NodeReport, b: &&&NodeReport| {
        a.judged(spec.signal)
            .ratio
            .total_cmp(&b.judged(spec.signal).ratio)
    };
    // Nodes that serve under the floor are fine whatever their ratios.
    let above_floor: Vec<&NodeReport> = reports
        .iter()
        .copied()
        .filter(|r| !r.under_floor(spec.latency_floor))
        .collect();
    let Some(worst) = above_floor.iter().max_by(by_ratio).copied() else {
        let worst = reports
            .iter()
            .max_by(by_ratio)
            .copied()
            .unwrap_or(reports[0]);
        let floor = millis(spec.latency_floor.unwrap_or_default());
        return Decision {
            interval: spec.max_interval,
            emergency_job: false,
            degraded: false,
            predicted_breach_seconds: None,
            rule: Rule::Floor,
            reason: format!(
                "{}: {} < floor {floor}: nothing to do{}",
                worst.node,
                worst.figures(),
                if reports.len() > 1 {
                    " (every node serves under the floor)"
                } else {
                    ""
                }
            ),
            worst_ratio: Some(worst.judged(spec.signal).ratio),
            data_age_seconds: Some(data_age),
            cause: None,
            cache: None,
        };
    };
    let judged = worst.judged(spec.signal);
    let ratio = judged.ratio;
    let signal = if judged.served {
        "served"
    } else if spec.signal == Signal::Served {
        "engine probe; too little traffic for a served ratio"
    } else {
        "engine probe"
    };
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
        cause: None,
        cache: None,
    };
    if history.ineffective_cleanups >= INEFFECTIVE_LIMIT {
        return base(
            spec.max_interval,
            false,
            Rule::Ineffective,
            format!(
                "{} cleanups in a row did not lower {}'s ratio ({ratio:.2}, {signal}); backing off to maxInterval: {}",
                history.ineffective_cleanups,
                worst.node,
                ineffective_cause(worst)
            ),
            None,
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
    let rising = rise >= threshold && rise > 0.0;
    let cause = (degraded || ratio >= spec.emergency || rising).then(|| classify(worst));
    if cause == Some(Cause::CachePressure) {
        let advice = cache_advice(worst, &reports, spec, degraded);
        let action = match (spec.cache.auto_max_bytes, advice.raise_to) {
            (_, Some(to)) => format!(
                "raising cacheCapacity to {} (autoCache.max {}), one node at a time",
                quantity(to),
                quantity(spec.cache.auto_max_bytes.unwrap_or(to))
            ),
            (Some(max), None) if advice.current_bytes >= max => format!(
                "cacheCapacity is at autoCache.max {}: raise the bound or the memory's resources",
                quantity(max)
            ),
            (Some(_), None) if !degraded => format!(
                "cacheCapacity would be raised to {} if it degrades",
                quantity(advice.suggested_bytes)
            ),
            (Some(_), None) if spec.dry_run => format!(
                "would raise cacheCapacity to {} (DryRun, disabled or suspended)",
                quantity(advice.suggested_bytes)
            ),
            (Some(_), None) => format!(
                "waiting for every node to run with cacheCapacity {}",
                quantity(advice.current_bytes)
            ),
            (None, None) => format!(
                "raise cacheCapacity to about {} (or set node.autoCache)",
                quantity(advice.suggested_bytes)
            ),
        };
        let mut decision = base(
            spec.max_interval,
            false,
            Rule::CachePressure,
            format!(
                "{} at {ratio:.2}× ({signal}; {}): its {} of data exceed cacheCapacity {} — a cleanup cannot help, so none is run early; {action}",
                worst.node,
                worst.figures(),
                human_bytes(worst.logical_bytes),
                human_bytes(worst.cache_capacity_bytes),
            ),
            None,
        );
        decision.cause = cause;
        decision.cache = Some(advice);
        return decision;
    }
    let because = cause.map_or_else(String::new, |c| format!("; cause: {}", c.as_str()));
    let emergency_allowed = history
        .seconds_since_emergency
        .is_none_or(|s| s >= spec.min_interval.as_secs_f64());
    let mut decision = if ratio >= spec.emergency {
        let job = emergency_allowed && !spec.dry_run;
        let reason = if !emergency_allowed {
            format!(
                "{} at {ratio:.2}× ({signal}) is past the emergency line {:.2}× but an emergency cleanup ran within minInterval{because}",
                worst.node, spec.emergency
            )
        } else if spec.dry_run {
            format!(
                "{} at {ratio:.2}× ({signal}) is past the emergency line {:.2}×; no Job (DryRun, disabled or suspended){because}",
                worst.node, spec.emergency
            )
        } else {
            format!(
                "{} at {ratio:.2}× ({signal}) is past the emergency line {:.2}×: cleaning now{because}",
                worst.node, spec.emergency
            )
        };
        base(spec.min_interval, job, Rule::Emergency, reason, Some(0.0))
    } else if degraded {
        base(
            spec.min_interval,
            false,
            Rule::Degraded,
            format!(
                "{} at {ratio:.2}× ({signal}; degraded at {:.2}×, recovers below {:.2}×): cleaning every minInterval{because}",
                worst.node, spec.degradation, spec.recover
            ),
            Some(0.0),
        )
    } else if rising {
        let per_second = rise / since;
        let to_breach = ((spec.degradation - ratio) / per_second).max(0.0);
        // Clean at half the predicted time, so the cleanup lands before the crossing.
        let interval = clamp(Duration::from_secs_f64((to_breach / 2.0).min(1e9)), spec);
        base(
            interval,
            false,
            Rule::Rising,
            format!(
                "{} rose to {ratio:.2}× ({signal}) in {:.0} s; predicted to cross {:.2}× in {:.0} s: cleaning every {} s{because}",
                worst.node,
                since,
                spec.degradation,
                to_breach,
                interval.as_secs()
            ),
            Some(to_breach),
        )
    } else {
        base(
            spec.max_interval,
            false,
            Rule::Flat,
            format!("worst ratio {ratio:.2}× ({signal}) is flat: cleaning every maxInterval"),
            None,
        )
    };
    decision.cause = cause;
    decision
}

/// The cache advice for `worst` under cache pressure: raise (opted in, degraded, jobs on,
/// below the bound, and every node already runs the cache in force — a raise is not
/// stacked on one still rolling out), else the size to suggest.
fn cache_advice(
    worst: &NodeReport,
    reports: &[&NodeReport],
    spec: &PolicySpec,
    degraded: bool,
) -> CacheAdvice {
    let current = spec.cache.capacity_bytes.max(worst.cache_capacity_bytes);
    let suggested = suggested_cache(current, worst.logical_bytes);
    let rolled_out = reports
        .iter()
        .all(|r| r.cache_capacity_bytes >= spec.cache.capacity_bytes);
    let raise_to = spec
        .cache
        .auto_max_bytes
        .filter(|&max| degraded && !spec.dry_run && rolled_out && current < max)
        .map(|max| suggested.min(max));
    CacheAdvice {
        current_bytes: current,
        suggested_bytes: spec
            .cache
            .auto_max_bytes
            .map_or(suggested, |max| suggested.min(max.max(current))),
        raise_to,
    }
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
            signal: Signal::Served,
            latency_floor: None,
            cache: CachePolicy {
                capacity_bytes: 1 << 28,
                auto_max_bytes: None,
            },
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

    fn served(probe: f64, served_ratio: f64, p99_ms: f64) -> NodeReport {
        NodeReport {
            node: "mem-0".into(),
            ratio: probe,
            seconds_since_baseline: 600.0,
            age_seconds: 1.0,
            logical_bytes: 1 << 20,
            disk_bytes: 1 << 21,
            cache_capacity_bytes: 1 << 28,
            keys: 1000,
            served: Some(ServedReport {
                ratio: Some(served_ratio),
                p50_seconds: p99_ms / 4000.0,
                p99_seconds: p99_ms / 1000.0,
                samples: 900,
            }),
            ..NodeReport::default()
        }
    }

    #[test]
    fn the_served_ratio_decides_with_traffic_and_the_probe_without() {
        // The engine says 4×, clients see 1.1×: flat on the served signal.
        let d = decide(
            &[Observation::Fresh(served(4.0, 1.1, 0.4))],
            &spec(),
            &History::default(),
        );
        assert_eq!((d.rule, d.worst_ratio), (Rule::Flat, Some(1.1)));
        assert!(d.reason.contains("(served)"), "{}", d.reason);
        // `signal: Probe` decides on the engine.
        let probe = PolicySpec {
            signal: Signal::Probe,
            ..spec()
        };
        let d = decide(
            &[Observation::Fresh(served(4.0, 1.1, 0.4))],
            &probe,
            &History::default(),
        );
        assert_eq!((d.rule, d.worst_ratio), (Rule::Degraded, Some(4.0)));
        // Thin traffic: the probe, and the reason says why.
        let thin = NodeReport {
            served: None,
            ..served(4.0, 1.1, 0.4)
        };
        let d = decide(&[Observation::Fresh(thin)], &spec(), &History::default());
        assert_eq!(d.rule, Rule::Degraded);
        assert!(d.reason.contains("too little traffic"), "{}", d.reason);
    }

    #[test]
    fn under_the_floor_nothing_is_done_whatever_the_ratios() {
        let floor = PolicySpec {
            latency_floor: Some(Duration::from_millis(1)),
            ..spec()
        };
        // The figures: 4.0× in the engine, 1.38× served, p99 0.39 ms, floor 1 ms.
        let d = decide(
            &[Observation::Fresh(served(4.0, 1.38, 0.39))],
            &floor,
            &History {
                degraded: true,
                interval: Some(Duration::from_secs(900)),
                ..History::default()
            },
        );
        assert_eq!(
            (d.rule, d.interval, d.degraded, d.emergency_job),
            (Rule::Floor, spec().max_interval, false, false)
        );
        assert_eq!(
            d.reason,
            "mem-0: 4.00× in the engine, 1.38× served, p99 0.39 ms < floor 1.00 ms: nothing to do"
        );
        // Even past the emergency line.
        let d = decide(
            &[Observation::Fresh(served(20.0, 12.0, 0.9))],
            &floor,
            &History::default(),
        );
        assert!(!d.emergency_job && d.rule == Rule::Floor);
        // A node over the floor is judged as before; one without traffic is never under it.
        let over = decide(
            &[Observation::Fresh(served(4.0, 3.0, 2.5))],
            &floor,
            &History::default(),
        );
        assert_eq!(over.rule, Rule::Degraded);
        let thin = NodeReport {
            served: None,
            ..served(4.0, 1.0, 0.1)
        };
        assert_eq!(
            decide(&[Observation::Fresh(thin)], &floor, &History::default()).rule,
            Rule::Degraded
        );
    }

    fn beyond_cache() -> NodeReport {
        NodeReport {
            served: None,
            logical_bytes: 400 << 20,
            cache_capacity_bytes: 256 << 20,
            ..served(4.0, 1.0, 1.0)
        }
    }

    #[test]
    fn a_hot_set_beyond_the_cache_gets_no_cleanup_but_a_cache_recommendation() {
        let d = decide(
            &[Observation::Fresh(beyond_cache())],
            &PolicySpec {
                cache: CachePolicy {
                    capacity_bytes: 256 << 20,
                    auto_max_bytes: None,
                },
                ..spec()
            },
            &History::default(),
        );
        assert_eq!(
            (d.rule, d.interval, d.emergency_job, d.degraded, d.cause),
            (
                Rule::CachePressure,
                spec().max_interval,
                false,
                true,
                Some(Cause::CachePressure)
            )
        );
        let advice = d.cache.expect("advice");
        assert_eq!((advice.suggested_bytes, advice.raise_to), (512 << 20, None));
        assert!(
            d.reason.contains("raise cacheCapacity to about 512Mi"),
            "{}",
            d.reason
        );
        // Past the emergency line too: more cache, not an emergency cleanup.
        let worse = NodeReport {
            ratio: 20.0,
            ..beyond_cache()
        };
        let d = decide(&[Observation::Fresh(worse)], &spec(), &History::default());
        assert_eq!((d.rule, d.emergency_job), (Rule::CachePressure, false));
    }

    #[test]
    fn auto_cache_raises_within_the_bound_once_the_last_raise_rolled_out() {
        let auto = |current: u64, max: u64| PolicySpec {
            cache: CachePolicy {
                capacity_bytes: current,
                auto_max_bytes: Some(max),
            },
            ..spec()
        };
        let d = decide(
            &[Observation::Fresh(beyond_cache())],
            &auto(256 << 20, 2 << 30),
            &History::default(),
        );
        assert_eq!(d.cache.and_then(|c| c.raise_to), Some(512 << 20));
        assert!(
            d.reason.contains("raising cacheCapacity to 512Mi"),
            "{}",
            d.reason
        );
        // The bound caps it.
        let d = decide(
            &[Observation::Fresh(beyond_cache())],
            &auto(256 << 20, 300 << 20),
            &History::default(),
        );
        assert_eq!(d.cache.and_then(|c| c.raise_to), Some(300 << 20));
        // At the bound: nothing more, and the reason says so.
        let at = NodeReport {
            cache_capacity_bytes: 300 << 20,
            ..beyond_cache()
        };
        let d = decide(
            &[Observation::Fresh(at)],
            &auto(300 << 20, 300 << 20),
            &History::default(),
        );
        assert_eq!(d.cache.and_then(|c| c.raise_to), None);
        assert!(d.reason.contains("at autoCache.max 300Mi"), "{}", d.reason);
        // A node still running the old size: no second raise stacked on the first.
        let d = decide(
            &[Observation::Fresh(beyond_cache())],
            &auto(512 << 20, 2 << 30),
            &History::default(),
        );
        assert_eq!(d.cache.and_then(|c| c.raise_to), None);
        assert!(d.reason.contains("waiting for every node"), "{}", d.reason);
        // DryRun records, never raises.
        let d = decide(
            &[Observation::Fresh(beyond_cache())],
            &PolicySpec {
                dry_run: true,
                ..auto(256 << 20, 2 << 30)
            },
            &History::default(),
        );
        assert_eq!(d.cache.and_then(|c| c.raise_to), None);
    }

    #[test]
    fn bloat_or_expired_memories_are_cleaned_even_beyond_the_cache() {
        let bloated = NodeReport {
            rebuild_due: true,
            ..beyond_cache()
        };
        let d = decide(&[Observation::Fresh(bloated)], &spec(), &History::default());
        assert_eq!((d.rule, d.cause), (Rule::Degraded, Some(Cause::DiskBloat)));
        let expired = NodeReport {
            expired_keys: 100,
            ..beyond_cache()
        };
        assert_eq!(classify(&expired), Cause::Expired);
        let few = NodeReport {
            expired_keys: 10,
            ..beyond_cache()
        };
        assert_eq!(
            classify(&few),
            Cause::CachePressure,
            "1% expired is not the cause"
        );
        let small = NodeReport {
            logical_bytes: 1 << 20,
            ..beyond_cache()
        };
        assert_eq!(classify(&small), Cause::Unknown);
        let d = decide(&[Observation::Fresh(small)], &spec(), &History::default());
        assert_eq!((d.rule, d.cause), (Rule::Degraded, Some(Cause::Unknown)));
    }

    fn arb_report() -> impl Strategy<Value = NodeReport> {
        (
            0.5f64..50.0,
            1.0f64..1e6,
            proptest::option::of((proptest::option::of(0.5f64..50.0), 0.01f64..50.0)),
            (0u64..4096, 1u64..2048, any::<bool>(), 0u64..2000),
        )
            .prop_map(
                |(ratio, since, served, (logical_mi, cache_mi, rebuild_due, expired))| NodeReport {
                    node: "mem-0".into(),
                    ratio,
                    seconds_since_baseline: since,
                    age_seconds: 1.0,
                    logical_bytes: logical_mi << 20,
                    disk_bytes: logical_mi << 21,
                    cache_capacity_bytes: cache_mi << 20,
                    keys: 10_000,
                    expired_keys: expired,
                    rebuild_due,
                    served: served.map(|(ratio, p99_ms)| ServedReport {
                        ratio,
                        p50_seconds: p99_ms / 4000.0,
                        p99_seconds: p99_ms / 1000.0,
                        samples: 500,
                    }),
                    ..NodeReport::default()
                },
            )
    }

    fn arb_full_spec() -> impl Strategy<Value = PolicySpec> {
        (
            arb_spec(),
            any::<bool>(),
            proptest::option::of(0.05f64..20.0),
            1u64..2048,
            proptest::option::of(0u64..4096),
        )
            .prop_map(|(spec, probe, floor_ms, cache_mi, extra_mi)| PolicySpec {
                signal: if probe { Signal::Probe } else { Signal::Served },
                latency_floor: floor_ms.map(|ms| Duration::from_secs_f64(ms / 1000.0)),
                cache: CachePolicy {
                    capacity_bytes: cache_mi << 20,
                    auto_max_bytes: extra_mi.map(|extra| (cache_mi + extra) << 20),
                },
                ..spec
            })
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
                signal: Signal::Served,
                latency_floor: None,
                cache: CachePolicy {
                    capacity_bytes: 1 << 28,
                    auto_max_bytes: None,
                },
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
        fn under_the_floor_nothing_is_degraded_tightened_or_cleaned(
            reports in proptest::collection::vec(arb_report(), 1..4), spec in arb_full_spec(), history in arb_history()
        ) {
            let floor = spec.latency_floor.unwrap_or(Duration::from_millis(1));
            let spec = PolicySpec { latency_floor: Some(floor), ..spec };
            let all_under = reports.iter().all(|r| r.under_floor(Some(floor)));
            let obs: Vec<Observation> = reports.into_iter().map(Observation::Fresh).collect();
            let d = decide(&obs, &spec, &history);
            if all_under {
                prop_assert_eq!(d.rule, Rule::Floor);
                prop_assert!(!d.degraded && !d.emergency_job);
                prop_assert_eq!(d.interval, spec.max_interval);
            } else {
                prop_assert!(d.rule != Rule::Floor);
            }
        }

        #[test]
        fn cache_pressure_never_cleans_early_and_raises_only_within_the_bound(
            reports in proptest::collection::vec(arb_report(), 1..4), spec in arb_full_spec(), history in arb_history()
        ) {
            let obs: Vec<Observation> = reports.into_iter().map(Observation::Fresh).collect();
            let d = decide(&obs, &spec, &history);
            if d.rule == Rule::CachePressure {
                prop_assert!(!d.emergency_job);
                prop_assert_eq!(d.interval, spec.max_interval);
                prop_assert_eq!(d.cause, Some(Cause::CachePressure));
            } else {
                prop_assert!(d.cache.is_none());
            }
            if let Some(to) = d.cache.and_then(|c| c.raise_to) {
                let max = spec.cache.auto_max_bytes;
                prop_assert!(max.is_some_and(|max| to <= max), "{to} over {max:?}");
                prop_assert!(to > spec.cache.capacity_bytes);
                prop_assert!(d.degraded && !spec.dry_run);
            }
            // A cause a cleanup fixes is never answered with cache advice.
            if d.cause.is_some_and(Cause::cleanup_helps) {
                prop_assert!(d.rule != Rule::CachePressure);
            }
        }

        #[test]
        fn with_served_figures_the_probe_ratio_alone_changes_nothing(
            report in arb_report(), other in 0.5f64..50.0, served_ratio in 0.5f64..50.0, p99_ms in 0.01f64..50.0, spec in arb_full_spec(), history in arb_history()
        ) {
            let spec = PolicySpec { signal: Signal::Served, ..spec };
            let report = NodeReport {
                served: Some(ServedReport { ratio: Some(served_ratio), p50_seconds: p99_ms / 4000.0, p99_seconds: p99_ms / 1000.0, samples: 500 }),
                ..report
            };
            let a = decide(&[Observation::Fresh(report.clone())], &spec, &history);
            let b = decide(&[Observation::Fresh(NodeReport { ratio: other, ..report })], &spec, &history);
            prop_assert_eq!((a.rule, a.interval, a.emergency_job, a.degraded), (b.rule, b.interval, b.emergency_job, b.degraded));
        }

        #[test]
        fn dry_run_never_creates_a_job(obs in arb_observations(), spec in arb_spec(), history in arb_history()) {
            let dry = PolicySpec { dry_run: true, ..spec };
            prop_assert!(!decide(&obs, &dry, &history).emergency_job);
        }
    }
}
