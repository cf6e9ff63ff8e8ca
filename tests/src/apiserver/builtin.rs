//! What a real API server refuses or rewrites in the built-in kinds the operator writes, so
//! that a child a real cluster would refuse is refused here too (and never passes a test
//! that a cluster would fail):
//! - object names: DNS labels for Services (≤ 63), DNS subdomains elsewhere, CronJobs
//!   ≤ 52 (the Job controller appends 11 characters), Jobs ≤ 63 (their name becomes a
//!   label);
//! - `events.k8s.io` Event notes ≤ 1,024 bytes;
//! - CronJob `schedule` (a five-field cron expression) and `timeZone` (an IANA zone);
//! - container resources: requests ≤ limits, and quantities stored in canonical form
//!   (`0.5` → `500m`, `1024Mi` → `1Gi`);
//! - StatefulSet updates may change only `replicas`, `ordinals`, `template`,
//!   `updateStrategy`, `persistentVolumeClaimRetentionPolicy` and `minReadySeconds`.
//!
//! Before these rules, every built-in object is validated (and pruned) against Kubernetes'
//! own OpenAPI schema of its kind, from k8s-openapi (`check_schema`). Simplification: the
//! rules above stand for the rest of Kubernetes' validation code, only for the fields the
//! operator sets.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::resources::ResourceType;

/// Kubernetes' own OpenAPI schema of a built-in kind the operator writes (from
/// k8s-openapi, every subschema inlined as kube inlines a CRD's), by (group, plural).
fn openapi_schema(group: &str, plural: &str) -> Option<&'static Value> {
    use k8s_openapi::api;
    static SCHEMAS: OnceLock<HashMap<(&'static str, &'static str), Value>> = OnceLock::new();
    fn schema_of<T: schemars::JsonSchema>() -> Value {
        let generator = schemars::generate::SchemaSettings::openapi3()
            .with(|s| s.inline_subschemas = true)
            .into_generator();
        let mut schema =
            serde_json::to_value(generator.into_root_schema_for::<T>()).unwrap_or(Value::Null);
        // apiVersion, kind and metadata are the server's (checked elsewhere), not the body's.
        if let Some(required) = schema.get_mut("required").and_then(Value::as_array_mut) {
            required.retain(|r| !matches!(r.as_str(), Some("apiVersion" | "kind" | "metadata")));
        }
        schema
    }
    SCHEMAS
        .get_or_init(|| {
            HashMap::from([
                (("", "configmaps"), schema_of::<api::core::v1::ConfigMap>()),
                (("", "secrets"), schema_of::<api::core::v1::Secret>()),
                (("", "services"), schema_of::<api::core::v1::Service>()),
                (
                    ("", "persistentvolumeclaims"),
                    schema_of::<api::core::v1::PersistentVolumeClaim>(),
                ),
                (
                    ("apps", "statefulsets"),
                    schema_of::<api::apps::v1::StatefulSet>(),
                ),
                (
                    ("batch", "cronjobs"),
                    schema_of::<api::batch::v1::CronJob>(),
                ),
                (("batch", "jobs"), schema_of::<api::batch::v1::Job>()),
                (
                    ("policy", "poddisruptionbudgets"),
                    schema_of::<api::policy::v1::PodDisruptionBudget>(),
                ),
                (
                    ("networking.k8s.io", "networkpolicies"),
                    schema_of::<api::networking::v1::NetworkPolicy>(),
                ),
                (
                    ("events.k8s.io", "events"),
                    schema_of::<api::events::v1::Event>(),
                ),
            ])
        })
        .iter()
        .find(|((g, p), _)| *g == group && *p == plural)
        .map(|(_, schema)| schema)
        .filter(|schema| schema.is_object())
}

/// Validates (and prunes) a built-in object against Kubernetes' OpenAPI schema of its kind.
pub fn check_schema(ty: &ResourceType, object: &mut Value) -> Result<(), String> {
    let Some(schema) = openapi_schema(&ty.group, &ty.plural) else {
        return Ok(());
    };
    let errors = super::schema::validate_and_prune(schema, object);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join(", "))
    }
}

fn is_label(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn is_subdomain(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        })
}

/// A quantity's value in thousandths, with whether it was written with a binary suffix;
/// `None` for text that is not a quantity.
fn parse_quantity(text: &str) -> Option<(i128, bool)> {
    const SUFFIXES: [(&str, i128, bool); 14] = [
        ("Ki", 1 << 10, true),
        ("Mi", 1 << 20, true),
        ("Gi", 1 << 30, true),
        ("Ti", 1 << 40, true),
        ("Pi", 1 << 50, true),
        ("Ei", 1 << 60, true),
        ("m", 0, false),
        ("k", 1_000, false),
        ("M", 1_000_000, false),
        ("G", 1_000_000_000, false),
        ("T", 1_000_000_000_000, false),
        ("P", 1_000_000_000_000_000, false),
        ("E", 1_000_000_000_000_000_000, false),
        ("", 1, false),
    ];
    let (number, multiplier, binary) = SUFFIXES
        .iter()
        .find_map(|(s, m, b)| text.strip_suffix(s).map(|n| (n, *m, *b)))?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let milli_digits = format!("{whole}{:0<3}", &fraction[..fraction.len().min(3)]);
    let milli: i128 = milli_digits.parse().ok()?;
    Some(match multiplier {
        0 => (milli / 1000, binary),
        m => (milli.checked_mul(m)?, binary),
    })
}

/// The canonical form the API server stores a quantity in.
pub fn canonical_quantity(text: &str) -> Option<String> {
    let (milli, binary) = parse_quantity(text)?;
    if binary && milli % 1000 == 0 {
        let mut bytes = milli / 1000;
        for suffix in ["", "Ki", "Mi", "Gi", "Ti", "Pi"] {
            if bytes % 1024 != 0 || bytes == 0 {
                return Some(format!("{bytes}{suffix}"));
            }
            bytes /= 1024;
        }
        return Some(format!("{bytes}Ei"));
    }
    if milli % 1000 != 0 {
        return Some(format!("{milli}m"));
    }
    let mut value = milli / 1000;
    for suffix in ["", "k", "M", "G", "T", "P"] {
        if value % 1000 != 0 || value == 0 {
            return Some(format!("{value}{suffix}"));
        }
        value /= 1000;
    }
    Some(format!("{value}E"))
}

/// Checks the containers of a pod spec: requests ≤ limits, quantities canonicalised.
fn pod_spec(spec: &mut Value, at: &str) -> Result<(), String> {
    let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    for (i, container) in containers.iter_mut().enumerate() {
        let Some(resources) = container.get_mut("resources") else {
            continue;
        };
        for part in ["requests", "limits"] {
            if let Some(map) = resources.get_mut(part).and_then(Value::as_object_mut) {
                for (name, value) in map.iter_mut() {
                    let text = value.as_str().unwrap_or_default();
                    let canonical = canonical_quantity(text).ok_or_else(|| {
                        format!(
                            "{at}.containers[{i}].resources.{part}[{name}]: Invalid value: \
                             \"{text}\": quantities must match the regular expression"
                        )
                    })?;
                    *value = Value::String(canonical);
                }
            }
        }
        let quantity = |part: &str, name: &str| {
            resources
                .get(part)
                .and_then(|m| m.get(name))
                .and_then(Value::as_str)
                .and_then(parse_quantity)
                .map(|(milli, _)| milli)
        };
        let names: Vec<String> = resources
            .get("requests")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        for name in names {
            if let (Some(request), Some(limit)) =
                (quantity("requests", &name), quantity("limits", &name))
                && request > limit
            {
                return Err(format!(
                    "{at}.containers[{i}].resources.requests: Invalid value: must be less than \
                     or equal to {name} limit"
                ));
            }
        }
    }
    Ok(())
}

/// Checks (and canonicalises) a built-in object as a real API server would on create and
/// update; the message is the server's.
pub fn check(ty: &ResourceType, object: &mut Value) -> Result<(), String> {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let named = match (ty.group.as_str(), ty.plural.as_str()) {
        ("", "services") => is_label(&name, 63),
        ("batch", "cronjobs") => is_subdomain(&name, 52),
        ("batch", "jobs") => is_subdomain(&name, 63),
        _ => is_subdomain(&name, 253),
    };
    if !named && !name.is_empty() {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be no more than {} characters \
             of a lowercase RFC 1123 {}",
            match ty.plural.as_str() {
                "services" => 63,
                "cronjobs" => 52,
                "jobs" => 63,
                _ => 253,
            },
            if ty.plural == "services" {
                "label"
            } else {
                "subdomain"
            }
        ));
    }
    match (ty.group.as_str(), ty.plural.as_str()) {
        ("events.k8s.io", "events") => {
            let note = object.get("note").and_then(Value::as_str).unwrap_or("");
            if note.len() > 1024 {
                return Err(format!(
                    "note: Too long: may not be more than 1024 bytes (got {})",
                    note.len()
                ));
            }
        }
        ("batch", "cronjobs") => {
            let schedule = object
                .pointer("/spec/schedule")
                .and_then(Value::as_str)
                .unwrap_or("");
            if schedule.split_whitespace().count() != 5 || schedule.parse::<croner::Cron>().is_err()
            {
                return Err(format!(
                    "spec.schedule: Invalid value: \"{schedule}\": not a valid cron expression"
                ));
            }
            if let Some(zone) = object.pointer("/spec/timeZone").and_then(Value::as_str)
                && jiff::tz::TimeZone::get(zone).is_err()
            {
                return Err(format!(
                    "spec.timeZone: Invalid value: \"{zone}\": unknown time zone {zone}"
                ));
            }
            if let Some(spec) = object.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                pod_spec(spec, "spec.jobTemplate.spec.template.spec")?;
            }
        }
        ("batch", "jobs") => {
            if let Some(spec) = object.pointer_mut("/spec/template/spec") {
                pod_spec(spec, "spec.template.spec")?;
            }
        }
        ("apps", "statefulsets") => {
            if let Some(spec) = object.pointer_mut("/spec/template/spec") {
                pod_spec(spec, "spec.template.spec")?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Refuses changes a real API server forbids between `old` and `new` of one object.
pub fn check_update(ty: &ResourceType, old: &Value, new: &Value) -> Result<(), String> {
    if (ty.group.as_str(), ty.plural.as_str()) != ("apps", "statefulsets") {
        return Ok(());
    }
    const MUTABLE: [&str; 6] = [
        "replicas",
        "ordinals",
        "template",
        "updateStrategy",
        "persistentVolumeClaimRetentionPolicy",
        "minReadySeconds",
    ];
    let frozen = |spec: Option<&Value>| -> serde_json::Map<String, Value> {
        spec.and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !MUTABLE.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if frozen(old.get("spec")) != frozen(new.get("spec")) {
        return Err(
            "spec: Forbidden: updates to statefulset spec for fields other than 'replicas', \
             'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' \
             and 'minReadySeconds' are forbidden"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_objects_are_checked_against_kubernetes_schemas() {
        let ty = ResourceType {
            group: "apps".into(),
            plural: "statefulsets".into(),
            ..ResourceType::default()
        };
        let mut fine = serde_json::json!({"metadata": {"name": "s"}, "spec": {
            "replicas": 3, "serviceName": "s-nodes", "selector": {"matchLabels": {"a": "b"}},
            "template": {"spec": {"containers": [{"name": "node", "image": "x"}]}},
            "surprise": true}});
        assert_eq!(check_schema(&ty, &mut fine), Ok(()));
        assert!(
            fine["spec"].get("surprise").is_none(),
            "unknown fields are pruned"
        );
        let mut wrong = serde_json::json!({"metadata": {"name": "s"}, "spec": {
            "replicas": "three", "selector": {},
            "template": {"spec": {"containers": [{"image": "x"}]}}}});
        let error = check_schema(&ty, &mut wrong).expect_err("refused");
        assert!(error.contains("spec.replicas"), "{error}");
        assert!(error.contains("name"), "a container needs a name: {error}");
    }

    #[test]
    fn quantities_are_stored_canonically() {
        for (given, stored) in [
            ("0.5", "500m"),
            ("1024Mi", "1Gi"),
            ("1536Mi", "1536Mi"),
            ("1000", "1k"),
            ("1500m", "1500m"),
            ("2", "2"),
            ("64Mi", "64Mi"),
            ("0", "0"),
        ] {
            assert_eq!(
                canonical_quantity(given).as_deref(),
                Some(stored),
                "{given}"
            );
        }
        assert_eq!(canonical_quantity("ten"), None);
        assert_eq!(canonical_quantity("Mi"), None);
    }

    #[test]
    fn names_notes_schedules_and_resources_a_server_refuses() {
        let ty = |group: &str, plural: &str| ResourceType {
            group: group.into(),
            plural: plural.into(),
            ..ResourceType::default()
        };
        let long = "m".repeat(45);
        let mut cronjob = serde_json::json!({"metadata": {"name": format!("{long}-cleanup")},
            "spec": {"schedule": "0 * * * *"}});
        assert!(check(&ty("batch", "cronjobs"), &mut cronjob).is_err());
        let mut service = serde_json::json!({"metadata": {"name": "my.memory"}});
        assert!(check(&ty("", "services"), &mut service).is_err());
        let mut event = serde_json::json!({"metadata": {"name": "e"}, "note": "x".repeat(1025)});
        assert!(check(&ty("events.k8s.io", "events"), &mut event).is_err());
        for (schedule, zone) in [
            ("61 25 * * *", "Etc/UTC"),
            ("0 * * * *", "Mars/Olympus_Mons"),
        ] {
            let mut cronjob = serde_json::json!({"metadata": {"name": "c"},
                "spec": {"schedule": schedule, "timeZone": zone}});
            assert!(
                check(&ty("batch", "cronjobs"), &mut cronjob).is_err(),
                "{schedule} {zone}"
            );
        }
        let mut sts = serde_json::json!({"metadata": {"name": "s"}, "spec": {"template": {"spec": {
            "containers": [{"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}}]}}}});
        assert!(check(&ty("apps", "statefulsets"), &mut sts).is_err());
        let old =
            serde_json::json!({"spec": {"replicas": 1, "volumeClaimTemplates": [{"size": "1Gi"}]}});
        let grown =
            serde_json::json!({"spec": {"replicas": 1, "volumeClaimTemplates": [{"size": "2Gi"}]}});
        let scaled =
            serde_json::json!({"spec": {"replicas": 3, "volumeClaimTemplates": [{"size": "1Gi"}]}});
        assert!(check_update(&ty("apps", "statefulsets"), &old, &grown).is_err());
        assert!(check_update(&ty("apps", "statefulsets"), &old, &scaled).is_ok());
    }
}
