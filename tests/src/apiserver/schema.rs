//! Validation of custom resources against their CRD's OpenAPI v3 schema, and pruning of
//! fields the schema does not know (as the real API server does).
//!
//! Simplification: CEL rules (`x-kubernetes-validations`), `pattern` and `format` are not
//! evaluated; the operator re-checks what CEL would reject and reports it in status.

use serde_json::Value;

/// Validates `object` (its fields other than apiVersion, kind and metadata) and prunes
/// unknown fields in place. Returns every violation as `path: message`.
pub fn validate_and_prune(schema: &Value, object: &mut Value) -> Vec<String> {
    let Some(map) = object.as_object_mut() else {
        return vec!["<root>: must be an object".into()];
    };
    // apiVersion, kind and metadata are the server's, not the schema's: set them aside.
    let identity: Vec<(String, Value)> = ["apiVersion", "kind", "metadata"]
        .into_iter()
        .filter_map(|k| map.remove(k).map(|v| (k.to_string(), v)))
        .collect();
    let mut errors = Vec::new();
    check(schema, object, "", &mut errors);
    if let Some(map) = object.as_object_mut() {
        map.extend(identity);
    }
    errors
}

/// `path.key`, or `key` at the root.
fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_matches(expected: &str, value: &Value) -> bool {
    match expected {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        _ => true,
    }
}

fn check(schema: &Value, value: &mut Value, path: &str, errors: &mut Vec<String>) {
    if value.is_null() {
        if schema.get("nullable") != Some(&Value::Bool(true)) {
            errors.push(format!("{path}: Invalid value: null: must not be null"));
        }
        return;
    }
    let int_or_string = schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true));
    if let Some(expected) = schema.get("type").and_then(Value::as_str)
        && !(int_or_string && (value.is_string() || value.is_i64() || value.is_u64()))
        && !type_matches(expected, value)
    {
        errors.push(format!(
            "{path}: Invalid value: {value}: must be of type {expected}"
        ));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.contains(value)
    {
        let allowed: Vec<String> = options.iter().map(Value::to_string).collect();
        errors.push(format!(
            "{path}: Unsupported value: {value}: supported values: {}",
            allowed.join(", ")
        ));
    }
    if let Some(n) = value.as_f64() {
        if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
            let exclusive = schema.get("exclusiveMinimum") == Some(&Value::Bool(true));
            if n < min || (exclusive && n <= min) {
                errors.push(format!("{path}: Invalid value: {value}: {path} in body should be greater than or equal to {min}"));
            }
        }
        if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
            let exclusive = schema.get("exclusiveMaximum") == Some(&Value::Bool(true));
            if n > max || (exclusive && n >= max) {
                errors.push(format!("{path}: Invalid value: {value}: {path} in body should be less than or equal to {max}"));
            }
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if schema
            .get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            errors.push(format!(
                "{path}: Invalid value: {value}: {path} in body is too short"
            ));
        }
        if schema
            .get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            errors.push(format!("{path}: Too long: {path} in body is too long"));
        }
    }
    match value {
        Value::Array(items) => {
            let len = items.len() as u64;
            if schema
                .get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len < m)
            {
                errors.push(format!(
                    "{path}: Invalid value: {path} in body should have at least the minimum items"
                ));
            }
            if schema
                .get("maxItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| len > m)
            {
                errors.push(format!(
                    "{path}: Too many: {path} in body should have at most the maximum items"
                ));
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(map) => {
            let required: Vec<&str> = schema
                .get("required")
                .and_then(Value::as_array)
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            for field in required {
                if !map.contains_key(field) {
                    errors.push(format!("{}: Required value", join(path, field)));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let preserve =
                schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                let sub_path = join(path, &key);
                if let Some(sub) = properties.and_then(|p| p.get(&key)) {
                    if let Some(v) = map.get_mut(&key) {
                        check(sub, v, &sub_path, errors);
                    }
                } else if let Some(sub) = additional.filter(|a| a.is_object()) {
                    if let Some(v) = map.get_mut(&key) {
                        check(sub, v, &sub_path, errors);
                    }
                } else if !preserve
                    && additional != Some(&Value::Bool(true))
                    && properties.is_some()
                {
                    map.remove(&key);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["replicas"],
                    "properties": {
                        "replicas": {"type": "integer", "minimum": 0, "maximum": 100},
                        "mode": {"type": "string", "enum": ["Enforce", "DryRun"]},
                        "size": {"x-kubernetes-int-or-string": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    }
                },
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
            }
        })
    }

    #[test]
    fn a_valid_object_passes_and_unknown_fields_are_pruned() {
        let mut object = json!({
            "apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"},
            "spec": {"replicas": 3, "mode": "DryRun", "size": "1Gi", "unknown": 1, "labels": {"a": "b"}},
            "status": {"anything": {"goes": true}},
            "extra": true
        });
        assert_eq!(
            validate_and_prune(&schema(), &mut object),
            Vec::<String>::new()
        );
        assert!(object.pointer("/spec/unknown").is_none());
        assert!(object.get("extra").is_none());
        assert_eq!(object.pointer("/status/anything/goes"), Some(&json!(true)));
        assert_eq!(object.pointer("/metadata/name"), Some(&json!("a")));
    }

    #[test]
    fn violations_are_reported_with_their_path() {
        let mut object = json!({"spec": {"replicas": -1, "mode": "Sometimes", "labels": {"a": 1}}});
        let errors = validate_and_prune(&schema(), &mut object);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors[0].starts_with("spec.labels.a")
                || errors.iter().any(|e| e.starts_with("spec.replicas"))
        );
        let mut missing = json!({"spec": {}});
        assert_eq!(
            validate_and_prune(&schema(), &mut missing),
            vec!["spec.replicas: Required value"]
        );
        let mut wrong_type = json!({"spec": {"replicas": "three"}});
        assert!(
            validate_and_prune(&schema(), &mut wrong_type)[0].contains("must be of type integer")
        );
    }
}
