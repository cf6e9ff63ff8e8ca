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
    /// The cache the nodes run with, bytes: `node.cacheCapacity`, or the size the operator
    /// raised it to within `node.autoCache.max` (see [`ValidSpec::with_raised_cache`]).
    pub cache_capacity_bytes: u64,
    /// `node.cacheCapacity` as written, bytes.
    pub spec_cache_capacity_bytes: u64,
    /// `node.autoCache.max`, bytes.
    pub auto_cache_max_bytes: Option<u64>,
    /// `cleanup.latencyFloor`.
    pub latency_floor: Option<Duration>,
    /// `cleanup.minInterval`.
    pub min_interval: Duration,
    /// `cleanup.maxInterval`.
    pub max_interval: Duration,
}

impl ValidSpec {
    /// The spec with the cache the operator raised (`status.cache.capacity`) in force: only
    /// with `node.autoCache`, and only within `[cacheCapacity, autoCache.max]` (a bound
    /// lowered since, or a raise the spec's own capacity overtook, falls back to the spec).
    #[must_use]
    pub fn with_raised_cache(mut self, raised: Option<&str>) -> ValidSpec {
        let raised = raised.and_then(|q| phoenix_node_api::config::parse_quantity(q).ok());
        if let (Some(raised), Some(max)) = (raised, self.auto_cache_max_bytes)
            && raised > self.spec_cache_capacity_bytes
            && raised <= max
        {
            self.cache_capacity_bytes = raised;
        }
        self
    }
}

/// Parses a duration as Kubernetes does (`metav1.Duration`, Go's `time.ParseDuration`, the
/// grammar of CEL's `duration()` in the CRD's rules): `15m`, `1h30m`, `90s`, `1.5h`.
/// Negative and empty durations are refused; so are numbers so long that the parser would
/// overflow (it panics on those rather than failing).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err("an empty duration".into());
    }
    let longest_number = text
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(str::len)
        .max()
        .unwrap_or(0);
    if text.len() > 64 || longest_number > 12 {
        return Err(format!("{text:?} is too long"));
    }
    let parsed: kube::core::Duration = text
        .parse()
        .map_err(|e| format!("{text:?} is not a duration like 15m or 1h30m: {e}"))?;
    if parsed.is_negative() {
        return Err(format!("{text:?} is negative"));
    }
    Ok(parsed.into())
}

/// The value of a Kubernetes quantity (`500m`, `1.5Gi`, `2e3`), or `None` when it is not one.
pub fn quantity_value(text: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 14] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("", 1.0),
    ];
    let text = text.trim();
    let (number, multiplier) = SUFFIXES
        .iter()
        .find_map(|(suffix, m)| text.strip_suffix(suffix).map(|n| (n, *m)))?;
    let plain = number.trim_start_matches(['+', '-']);
    if plain.is_empty() || !plain.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return None;
    }
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| v * multiplier)
}

fn is_dns_label(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn is_dns_subdomain(text: &str) -> bool {
    text.len() <= 253
        && text.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// The longest memory name: its CronJob `NAME-cleanup` must stay within 52 characters (the
/// Job controller appends 11), and every other child name within 63.
pub const LONGEST_NAME: usize = 52 - "-cleanup".len();

/// [`validate`] plus what the memory's name must satisfy so that every child name is one
/// the API server accepts: a DNS label (Services need one: lowercase letters, digits and
/// '-', starting with a letter) of at most [`LONGEST_NAME`] characters.
///
/// # Errors
/// The list of problems, each naming its field.
pub fn validate_named(name: &str, spec: &PhoenixMemorySpec) -> Result<ValidSpec, Vec<String>> {
    let named = if is_dns_label(name, LONGEST_NAME) {
        Ok(())
    } else {
        Err(format!(
            "metadata.name: {name:?} must be at most {LONGEST_NAME} characters of lowercase \
             letters, digits and '-', starting with a letter and ending with a letter or digit \
             (its children are named NAME-nodes, NAME-cleanup, …)"
        ))
    };
    match (named, validate(spec)) {
        (Ok(()), result) => result,
        (Err(problem), Ok(_)) => Err(vec![problem]),
        (Err(problem), Err(mut problems)) => {
            problems.insert(0, problem);
            Err(problems)
        }
    }
}

/// Checks `spec`; every problem is reported.
///
/// # Errors
/// The list of problems, each naming its field.
pub fn validate(spec: &PhoenixMemorySpec) -> Result<ValidSpec, Vec<String>> {
    let mut problems = Vec::new();
    let cleanup = &spec.cleanup;
    let cache = phoenix_node_api::config::parse_quantity(&spec.node.cache_capacity)
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
    if max > crate::cron::LONGEST_INTERVAL {
        problems.push(format!(
            "cleanup.maxInterval ({}) must not exceed 168h: a cron schedule repeats evenly at most weekly",
            cleanup.max_interval
        ));
    }
    if min < Duration::from_secs(60) {
        problems.push(format!(
            "cleanup.minInterval: must be at least 1m (the CronJob's resolution), got {:?}",
            cleanup.min_interval
        ));
    }
    if cleanup.time_zone.is_empty() || jiff::tz::TimeZone::get(&cleanup.time_zone).is_err() {
        problems.push(format!(
            "cleanup.timeZone: {:?} is not a time zone of the IANA database (e.g. Etc/UTC, Europe/Berlin)",
            cleanup.time_zone
        ));
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
    if let Some(schedule) = &cleanup.schedule {
        if schedule.split_whitespace().count() != 5 {
            problems.push(format!(
                "cleanup.schedule: {schedule:?} is not a five-field cron expression"
            ));
        } else if let Err(error) = schedule.parse::<croner::Cron>() {
            problems.push(format!(
                "cleanup.schedule: {schedule:?} is not a valid cron schedule: {error}"
            ));
        }
    }
    if let Some(class) = &spec.storage.storage_class_name
        && !is_dns_subdomain(class)
    {
        problems.push(format!(
            "storage.storageClassName: {class:?} must be a DNS subdomain (lowercase letters, digits, '-' and '.', at most 253)"
        ));
    }
    if let Some(resources) = &spec.resources {
        for (name, request) in resources.requests.iter().flatten() {
            let limit = resources.limits.as_ref().and_then(|l| l.get(name));
            let values = (
                quantity_value(&request.0),
                limit.map(|l| quantity_value(&l.0)),
            );
            match values {
                (None, _) | (_, Some(None)) => problems.push(format!(
                    "resources: {name} {:?}/{:?} is not a Kubernetes quantity",
                    request.0,
                    limit.map(|l| l.0.as_str())
                )),
                (Some(request_value), Some(Some(limit_value))) if request_value > limit_value => {
                    problems.push(format!(
                        "resources.requests.{name} ({}) must not exceed resources.limits.{name} ({})",
                        request.0,
                        limit.map_or("", |l| l.0.as_str())
                    ));
                }
                _ => {}
            }
        }
    }
    if !(0..=100).contains(&spec.replicas) {
        problems.push(format!(
            "replicas: must lie in 0..=100, got {}",
            spec.replicas
        ));
    }
    let auto_cache_max = spec.node.auto_cache.as_ref().and_then(|auto| {
        match phoenix_node_api::config::parse_quantity(&auto.max) {
            Ok(max) if max >= cache => Some(max),
            Ok(max) => {
                problems.push(format!(
                    "node.autoCache.max ({}, {max} bytes) must be at least node.cacheCapacity ({}, {cache} bytes)",
                    auto.max, spec.node.cache_capacity
                ));
                None
            }
            Err(e) => {
                problems.push(format!("node.autoCache.max: {e}"));
                None
            }
        }
    });
    let latency_floor = cleanup.latency_floor.as_ref().and_then(|floor| {
        parse_duration(floor)
            .map_err(|e| problems.push(format!("cleanup.latencyFloor: {e}")))
            .ok()
    });
    if latency_floor.is_some_and(|f| f.is_zero()) {
        problems.push("cleanup.latencyFloor: must be above 0 (leave it unset for no floor)".into());
    }
    if problems.is_empty() {
        Ok(ValidSpec {
            spec: spec.clone(),
            cache_capacity_bytes: cache,
            spec_cache_capacity_bytes: cache,
            auto_cache_max_bytes: auto_cache_max,
            latency_floor,
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
    fn a_latency_floor_and_an_auto_cache_bound_are_checked() {
        let mut good = spec();
        good.cleanup.latency_floor = Some("500us".into());
        good.node.cache_capacity = "64Mi".into();
        good.node.auto_cache = Some(crate::crd::AutoCache { max: "1Gi".into() });
        let valid = validate(&good).expect("valid");
        assert_eq!(valid.latency_floor, Some(Duration::from_micros(500)));
        assert_eq!(valid.auto_cache_max_bytes, Some(1 << 30));
        let raised = valid.clone().with_raised_cache(Some("256Mi"));
        assert_eq!(raised.cache_capacity_bytes, 256 << 20);
        assert_eq!(raised.spec_cache_capacity_bytes, 64 << 20);
        for beyond in ["2Gi", "32Mi", "garbage"] {
            assert_eq!(
                valid
                    .clone()
                    .with_raised_cache(Some(beyond))
                    .cache_capacity_bytes,
                64 << 20,
                "{beyond}"
            );
        }
        let mut bad = good.clone();
        bad.node.auto_cache = Some(crate::crd::AutoCache { max: "32Mi".into() });
        bad.cleanup.latency_floor = Some("0ms".into());
        let problems = validate(&bad).expect_err("invalid");
        assert!(
            problems.iter().any(|p| p.contains("node.autoCache.max")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("cleanup.latencyFloor")),
            "{problems:?}"
        );
        // Without the opt-in a raise in status is ignored.
        good.node.auto_cache = None;
        let plain = validate(&good)
            .expect("valid")
            .with_raised_cache(Some("256Mi"));
        assert_eq!(plain.cache_capacity_bytes, 64 << 20);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
        // Go's grammar, as CEL's duration() reads it.
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("-15m").is_err());
        assert!(parse_duration(&"1h".repeat(40)).is_err());
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
    fn what_a_real_api_server_would_refuse_in_a_child_is_refused_here() {
        let refused = |change: &dyn Fn(&mut PhoenixMemorySpec), field: &str| {
            let mut bad = spec();
            change(&mut bad);
            let problems = validate(&bad).expect_err(field);
            assert!(
                problems.iter().any(|p| p.starts_with(field)),
                "{field}: {problems:?}"
            );
        };
        refused(
            &|s| s.cleanup.time_zone = "Mars/Olympus_Mons".into(),
            "cleanup.timeZone",
        );
        refused(&|s| s.cleanup.time_zone = String::new(), "cleanup.timeZone");
        refused(
            &|s| s.cleanup.schedule = Some("61 25 * * *".into()),
            "cleanup.schedule",
        );
        refused(
            &|s| s.cleanup.schedule = Some(format!("{} * * * *", "9".repeat(300))),
            "cleanup.schedule",
        );
        refused(
            &|s| s.cleanup.min_interval = "0s".into(),
            "cleanup.minInterval",
        );
        refused(
            &|s| s.storage.storage_class_name = Some("Fast_SSD!".into()),
            "storage.storageClassName",
        );
        refused(
            &|s| {
                s.resources = serde_json::from_value(serde_json::json!({
                    "requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}
                }))
                .expect("resources");
            },
            "resources.requests.memory",
        );
        let mut fine = spec();
        fine.cleanup.time_zone = "Europe/Berlin".into();
        fine.cleanup.schedule = Some("23 3 * * 0,6".into());
        fine.storage.storage_class_name = Some("fast-ssd.example.com".into());
        fine.resources = serde_json::from_value(serde_json::json!({
            "requests": {"cpu": "0.5", "memory": "1024Mi"}, "limits": {"cpu": "500m", "memory": "1Gi"}
        }))
        .expect("resources");
        assert!(validate(&fine).is_ok(), "{:?}", validate(&fine).err());
    }

    #[test]
    fn names_whose_children_the_api_server_would_refuse_are_refused() {
        assert!(validate_named("mem", &spec()).is_ok());
        assert!(validate_named(&"a".repeat(LONGEST_NAME), &spec()).is_ok());
        for bad in [
            "a".repeat(LONGEST_NAME + 1),
            "a".repeat(58),
            "my.memory".into(),
            "Memory".into(),
            "9lives".into(),
            "trailing-".into(),
        ] {
            let problems = validate_named(&bad, &spec()).expect_err(&bad);
            assert!(
                problems[0].starts_with("metadata.name"),
                "{bad}: {problems:?}"
            );
        }
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("1Gi"), quantity_value("1024Mi"));
        assert_eq!(quantity_value("2e3"), Some(2000.0));
        assert_eq!(quantity_value("Mi"), None);
        assert_eq!(quantity_value("ten"), None);
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
