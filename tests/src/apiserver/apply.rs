//! JSON merge patch, server-side apply and `managedFields`.
//!
//! Ownership is kept per manager, operation and subresource, as the real server keeps
//! `managedFields` entries; an apply to `status` owns and removes status fields only.
//!
//! Simplification: lists are atomic (one owner for the whole list, as with
//! `x-kubernetes-list-type: atomic`); real apply merges lists of maps by key. Ownership is
//! tracked on leaf paths; a conflict is a field whose value the applier would change while
//! another manager owns it.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

/// A field path (map keys from the root).
pub type FieldPath = Vec<String>;

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(target_map) = target {
                for (key, value) in patch_map {
                    if value.is_null() {
                        target_map.remove(key);
                    } else {
                        merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Leaf paths of `value`: scalars, arrays and empty maps are leaves.
pub fn leaf_paths(value: &Value) -> BTreeSet<FieldPath> {
    fn walk(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, sub) in map {
                    path.push(key.clone());
                    walk(sub, path, out);
                    path.pop();
                }
            }
            _ => {
                if !path.is_empty() {
                    out.insert(path.clone());
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(value, &mut Vec::new(), &mut out);
    out
}

/// The fields a manager owns, excluding identity fields no one "owns".
fn owned_paths(value: &Value) -> BTreeSet<FieldPath> {
    const SERVER_SET: [&str; 8] = [
        "name",
        "namespace",
        "resourceVersion",
        "uid",
        "generation",
        "creationTimestamp",
        "managedFields",
        "deletionTimestamp",
    ];
    leaf_paths(value)
        .into_iter()
        .filter(|p| {
            let identity = matches!(p[0].as_str(), "apiVersion" | "kind");
            let server_set =
                p[0] == "metadata" && p.get(1).is_some_and(|f| SERVER_SET.contains(&f.as_str()));
            !identity && !server_set
        })
        .collect()
}

fn at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, k| v.get(k))
}

fn remove_at(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut current = value;
    for key in parents {
        match current.get_mut(key) {
            Some(next) => current = next,
            None => return,
        }
    }
    if let Some(map) = current.as_object_mut() {
        map.remove(last);
    }
}

/// Maps merge recursively; everything else is replaced by `applied`.
fn deep_merge(target: &mut Value, applied: &Value) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (key, value) in a {
                match t.get_mut(key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        t.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (target, applied) => *target = applied.clone(),
    }
}

/// Who owns fields: a manager, by operation (`Apply` or `Update`) and subresource (`""` or
/// `status`) — the real server keeps one `managedFields` entry for each such triple.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Owner {
    /// The field manager.
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `""` (the object) or a subresource.
    pub subresource: String,
}

impl Owner {
    fn new(manager: &str, operation: &str, subresource: &str) -> Owner {
        Owner {
            manager: manager.into(),
            operation: operation.into(),
            subresource: subresource.into(),
        }
    }
}

/// `managedFields` entries read from an object.
pub type Managers = BTreeMap<Owner, BTreeSet<FieldPath>>;

fn to_fields_v1(paths: &BTreeSet<FieldPath>) -> Value {
    let mut root = Map::new();
    for path in paths {
        let mut node = &mut root;
        for key in path {
            let entry = node.entry(format!("f:{key}")).or_insert_with(|| json!({}));
            node = match entry.as_object_mut() {
                Some(map) => map,
                None => break,
            };
        }
    }
    Value::Object(root)
}

fn from_fields_v1(fields: &Value) -> BTreeSet<FieldPath> {
    fn walk(value: &Value, path: &mut FieldPath, out: &mut BTreeSet<FieldPath>) {
        let map = value.as_object();
        let children: Vec<(&String, &Value)> = map
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        for (key, sub) in children {
            path.push(key[2..].to_string());
            walk(sub, path, out);
            path.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(fields, &mut Vec::new(), &mut out);
    out
}

/// Reads `metadata.managedFields`.
pub fn managers(object: &Value) -> Managers {
    managers_in(object.pointer("/metadata/managedFields"))
}

/// Reads a `managedFields` list.
pub fn managers_in(managed_fields: Option<&Value>) -> Managers {
    let mut out = Managers::new();
    for entry in managed_fields
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let manager = entry
            .get("manager")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        let operation = entry
            .get("operation")
            .and_then(Value::as_str)
            .unwrap_or("Update");
        let subresource = entry
            .get("subresource")
            .and_then(Value::as_str)
            .unwrap_or("");
        let paths = entry
            .get("fieldsV1")
            .map(from_fields_v1)
            .unwrap_or_default();
        out.entry(Owner::new(manager, operation, subresource))
            .or_default()
            .extend(paths);
    }
    out
}

/// Writes `metadata.managedFields` from `managers` (entries without fields are dropped).
pub fn set_managers(object: &mut Value, managers: &Managers, api_version: &str, now: &str) {
    let entries: Vec<Value> = managers
        .iter()
        .filter(|(_, paths)| !paths.is_empty())
        .map(|(owner, paths)| {
            let mut entry = json!({
                "manager": owner.manager, "operation": owner.operation,
                "apiVersion": api_version, "time": now, "fieldsType": "FieldsV1",
                "fieldsV1": to_fields_v1(paths),
            });
            if !owner.subresource.is_empty() {
                entry["subresource"] = json!(owner.subresource);
            }
            entry
        })
        .collect();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if entries.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert("managedFields".into(), Value::Array(entries));
        }
    }
}

/// Records an update (create, replace, merge patch) by `manager`: it takes the fields whose
/// values changed.
pub fn record_update(
    before: Option<&Value>,
    after: &mut Value,
    manager: &str,
    subresource: &str,
    api_version: &str,
    now: &str,
) {
    let mut owners = before.map(managers).unwrap_or_default();
    let changed: BTreeSet<FieldPath> = owned_paths(after)
        .into_iter()
        .filter(|p| before.and_then(|b| at(b, p)) != at(after, p))
        .collect();
    for paths in owners.values_mut() {
        paths.retain(|p| !changed.contains(p));
    }
    // Fields that no longer exist have no owner.
    for paths in owners.values_mut() {
        paths.retain(|p| at(after, p).is_some());
    }
    owners
        .entry(Owner::new(manager, "Update", subresource))
        .or_default()
        .extend(changed);
    set_managers(after, &owners, api_version, now);
}

/// What an apply does to an object.
#[derive(Debug)]
pub enum ApplyOutcome {
    /// The merged object (managedFields updated).
    Applied(Value),
    /// Fields another manager owns would change (and `force` was not given).
    Conflict(Vec<String>),
}

/// Server-side apply of `applied` by `manager` onto `existing` (`None`: create), to the
/// object (`subresource` `""`) or to a subresource (`status`: `applied` holds only it).
/// What this manager applied there before and no longer applies is removed, unless
/// another owner shares it.
pub fn apply(
    existing: Option<&Value>,
    applied: &Value,
    manager: &str,
    subresource: &str,
    force: bool,
    api_version: &str,
    now: &str,
) -> ApplyOutcome {
    let me = Owner::new(manager, "Apply", subresource);
    let mut owners = existing.map(managers).unwrap_or_default();
    let applied_paths = owned_paths(applied);
    let mut conflicts = Vec::new();
    if let Some(current) = existing {
        for path in &applied_paths {
            if at(current, path) == at(applied, path) {
                continue;
            }
            for (other, paths) in &owners {
                if other.manager != manager && paths.contains(path) {
                    conflicts.push(format!(
                        "conflict with \"{}\": .{}",
                        other.manager,
                        path.join(".")
                    ));
                }
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return ApplyOutcome::Conflict(conflicts);
    }
    let mut merged = existing.cloned().unwrap_or_else(|| json!({}));
    // Fields this manager applied before and no longer applies go, unless someone else owns them.
    let previously = owners.get(&me).cloned().unwrap_or_default();
    for path in previously.difference(&applied_paths) {
        let shared = owners
            .iter()
            .any(|(other, paths)| *other != me && paths.contains(path));
        if !shared {
            remove_at(&mut merged, path);
            // A map left empty that the applied object no longer has goes with its last
            // field (the API server tracks the map itself as owned, `.`, and drops it):
            // otherwise a struct the manager stopped applying stayed as `{}` and read back
            // with its defaults.
            for end in (1..path.len()).rev() {
                let parent = &path[..end];
                let emptied = at(&merged, parent)
                    .and_then(Value::as_object)
                    .is_some_and(serde_json::Map::is_empty);
                let kept = at(applied, parent).is_some()
                    || owners
                        .iter()
                        .any(|(other, paths)| *other != me && paths.iter().any(|p| p == parent));
                if !emptied || kept {
                    break;
                }
                remove_at(&mut merged, parent);
            }
        }
    }
    deep_merge(&mut merged, applied);
    for (other, paths) in owners.iter_mut() {
        if other.manager != manager {
            // With force the applier takes the conflicting fields; without a conflict a
            // field applied with the same value stays shared.
            paths.retain(|p| {
                !(applied_paths.contains(p)
                    && at(existing.unwrap_or(&Value::Null), p) != at(applied, p))
            });
        }
    }
    owners.insert(me, applied_paths);
    set_managers(&mut merged, &owners, api_version, now);
    ApplyOutcome::Applied(merged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn a_map_no_longer_applied_goes_with_its_last_field() {
        let now = "2026-01-01T00:00:00Z";
        let applied = |spec: Value| json!({"metadata": {"name": "x"}, "spec": spec});
        let first = applied(json!({"keep": 1, "group": {"leader": "a", "term": 2}}));
        let ApplyOutcome::Applied(created) = apply(None, &first, "op", "", false, "v1", now) else {
            panic!("conflict")
        };
        let second = applied(json!({"keep": 1}));
        let ApplyOutcome::Applied(after) =
            apply(Some(&created), &second, "op", "", false, "v1", now)
        else {
            panic!("conflict")
        };
        assert_eq!(
            after["spec"],
            json!({"keep": 1}),
            "no empty `group: {{}}` left"
        );
        // A map another manager still has a field in stays, with that field.
        let theirs = applied(json!({"group": {"owner": "b"}}));
        let ApplyOutcome::Applied(shared) =
            apply(Some(&created), &theirs, "other", "", false, "v1", now)
        else {
            panic!("conflict")
        };
        let ApplyOutcome::Applied(after) =
            apply(Some(&shared), &second, "op", "", false, "v1", now)
        else {
            panic!("conflict")
        };
        assert_eq!(after["spec"], json!({"keep": 1, "group": {"owner": "b"}}));
    }

    #[test]
    fn apply_creates_merges_removes_and_detects_conflicts() {
        let now = "2026-01-01T00:00:00Z";
        let first = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "data": {"k": "v", "old": "o"}});
        let ApplyOutcome::Applied(created) = apply(None, &first, "op", "", false, "v1", now) else {
            panic!("conflict")
        };
        let op = Owner::new("op", "Apply", "");
        assert_eq!(managers(&created)[&op].len(), 3);
        // The same manager drops a field: it goes.
        let second = json!({"metadata": {"name": "x", "labels": {"a": "1"}}, "data": {"k": "v2"}});
        let ApplyOutcome::Applied(updated) =
            apply(Some(&created), &second, "op", "", false, "v1", now)
        else {
            panic!("conflict")
        };
        assert_eq!(updated["data"], json!({"k": "v2"}));
        // Another manager changing an owned field conflicts; force takes it.
        let other = json!({"metadata": {"name": "x"}, "data": {"k": "mine"}});
        match apply(Some(&updated), &other, "intruder", "", false, "v1", now) {
            ApplyOutcome::Conflict(c) => assert!(c[0].contains("\"op\""), "{c:?}"),
            ApplyOutcome::Applied(_) => panic!("expected a conflict"),
        }
        let ApplyOutcome::Applied(forced) =
            apply(Some(&updated), &other, "intruder", "", true, "v1", now)
        else {
            panic!()
        };
        assert_eq!(forced["data"]["k"], "mine");
        let owners = managers(&forced);
        let k = vec!["data".to_string(), "k".to_string()];
        assert!(owners[&Owner::new("intruder", "Apply", "")].contains(&k));
        assert!(!owners[&op].contains(&k));
    }
}
