//! Pure validation of a `PhoenixMemory` spec: what the schema and CEL rules cannot fully
//! check (quantities and durations the children need as numbers), turned into the values
//! the builders use. An invalid spec becomes `Ready=False` with these messages, never a
//! crash loop.

use std::time::Duration;

use crate::crd::{DurabilityMode, PhoenixMemorySpec};

/// A spec with every derived value checked.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// The spec as written.
    pub spec: PhoenixMemorySpec,
    /// `node.cacheCapacity` in bytes.
    pub cache_capacity_bytes: u64,
    /// `cleanup.minInterval`.
    pub min_interval: Duration,
    /// `cleanup.maxInterval`.
    pub max_interval: Duration,
}

/// Parses a duration like `15m`, `1h30m`, `90s` (units s, m, h).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let mut total = 0u64;
    let mut digits = String::new();
    if text.is_empty() {
        return Err("an empty duration".into());
    }
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            other => return Err(format!("{text:?}: unknown unit {other:?} (use s, m or h)")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{text:?}: a unit needs a number before it"))?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(format!("{text:?}: the last number has no unit"));
    }
    Ok(Duration::from_secs(total))
}

/// Checks `spec`; every problem is reported.
///
/// # Errors
/// The list of problems, each naming its field.
pub fn validate(spec: &PhoenixMemorySpec) -> Result<ValidSpec, Vec<String>> {
    let mut problems = Vec::new();
    let cleanup = &spec.cleanup;
    let cache = phoenix_node::config::parse_quantity(&spec.node.cache_capacity)
        .map_err(|e| problems.push(format!("node.cacheCapacity: {e}")))
        .unwrap_or(0);
    if cache != 0 && cache < 1 << 20 {
        problems.push(format!(
            "node.cacheCapacity: must be at least 1Mi, got {cache} bytes"
        ));
    }
    if spec.node.durability == DurabilityMode::Periodic
        && !(1..=60_000).contains(&spec.node.flush_every_ms)
    {
        problems.push(format!(
            "node.flushEveryMs: must lie in 1..=60000, got {}",
            spec.node.flush_every_ms
        ));
    }
    let min = parse_duration(&cleanup.min_interval)
        .map_err(|e| problems.push(format!("cleanup.minInterval: {e}")))
        .unwrap_or_default();
    let max = parse_duration(&cleanup.max_interval)
        .map_err(|e| problems.push(format!("cleanup.maxInterval: {e}")))
        .unwrap_or_default();
    if min > max {
        problems.push(format!(
            "cleanup.minInterval ({}) must not exceed cleanup.maxInterval ({})",
            cleanup.min_interval, cleanup.max_interval
        ));
    }
    if max > crate::build::LONGEST_INTERVAL {
        problems.push(format!(
            "cleanup.maxInterval ({}) must not exceed 168h: a cron schedule repeats evenly at most weekly",
            cleanup.max_interval
        ));
    }
    if min < Duration::from_secs(60) && min != Duration::ZERO {
        problems.push("cleanup.minInterval: must be at least 1m (the CronJob's resolution)".into());
    }
    if !(cleanup.emergency_threshold > cleanup.degradation_threshold
        && cleanup.degradation_threshold > cleanup.recover_threshold
        && cleanup.recover_threshold >= 1.0)
    {
        problems.push(format!(
            "cleanup thresholds must satisfy emergency ({}) > degradation ({}) > recover ({}) ≥ 1",
            cleanup.emergency_threshold, cleanup.degradation_threshold, cleanup.recover_threshold
        ));
    }
    for (i, window) in cleanup.windows.iter().enumerate() {
        if window.start_hour > 23 || window.end_hour > 23 {
            problems.push(format!("cleanup.windows[{i}]: hours must lie in 0..=23"));
        }
    }
    if let Some(schedule) = &cleanup.schedule
        && schedule.split_whitespace().count() != 5
    {
        problems.push(format!(
            "cleanup.schedule: {schedule:?} is not a five-field cron expression"
        ));
    }
    if !(0..=100).contains(&spec.replicas) {
        problems.push(format!(
            "replicas: must lie in 0..=100, got {}",
            spec.replicas
        ));
    }
    if problems.is_empty() {
        Ok(ValidSpec {
            spec: spec.clone(),
            cache_capacity_bytes: cache,
            min_interval: min,
            max_interval: max,
        })
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> PhoenixMemorySpec {
        serde_json::from_value(serde_json::json!({})).expect("defaults")
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn the_defaults_are_valid() {
        let valid = validate(&spec()).expect("valid");
        assert_eq!(valid.cache_capacity_bytes, 256 << 20);
        assert_eq!(valid.min_interval, Duration::from_secs(900));
        assert_eq!(valid.max_interval, Duration::from_secs(86_400));
    }

    #[test]
    fn what_cel_would_refuse_is_reported_field_by_field() {
        let mut bad = spec();
        bad.cleanup.min_interval = "48h".into();
        bad.cleanup.recover_threshold = 3.0;
        bad.node.cache_capacity = "12Qi".into();
        bad.cleanup.schedule = Some("every night".into());
        let problems = validate(&bad).expect_err("invalid");
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems.iter().any(|p| p.starts_with("node.cacheCapacity")));
        assert!(problems.iter().any(|p| p.contains("must not exceed")));
        assert!(problems.iter().any(|p| p.contains("thresholds")));
        assert!(problems.iter().any(|p| p.starts_with("cleanup.schedule")));
    }

    #[test]
    fn max_interval_is_at_most_a_week() {
        let mut week = spec();
        week.cleanup.max_interval = "168h".into();
        assert!(validate(&week).is_ok());
        let mut longer = spec();
        longer.cleanup.max_interval = "169h".into();
        let problems = validate(&longer).expect_err("invalid");
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("cleanup.maxInterval (169h)"),
            "{problems:?}"
        );
    }
}
