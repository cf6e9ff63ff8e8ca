//! The kinds the server knows: built-in ones and those registered by applying a CRD; request
//! paths parsed against them; discovery documents.

use serde_json::{Value, json};

/// Where a custom resource keeps its replica count and selector (`scale` subresource).
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleSpec {
    /// JSON path of the desired replicas, e.g. `.spec.replicas`.
    pub spec_replicas_path: String,
    /// JSON path of the observed replicas.
    pub status_replicas_path: String,
    /// JSON path of the label selector string, if any.
    pub label_selector_path: Option<String>,
}

/// One served resource (group, version, plural).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceType {
    /// API group ("" for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural name used in paths.
    pub plural: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Has a `status` subresource (status writes only through it).
    pub status: bool,
    /// Has a `scale` subresource.
    pub scale: Option<ScaleSpec>,
    /// The OpenAPI v3 schema of a custom resource version (shared: every request carries
    /// its type, and copying a schema per request took a third of the server's time at
    /// 10,000 memories).
    pub schema: Option<std::sync::Arc<Value>>,
    /// Short names for discovery.
    pub short_names: Vec<String>,
}

impl ResourceType {
    fn builtin(
        group: &str,
        version: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
    ) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            kind: kind.into(),
            namespaced,
            status,
            scale: None,
            schema: None,
            short_names: Vec::new(),
        }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural` or `plural.group`, as in messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// The kinds the operator uses, served from the start.
pub fn builtins() -> Vec<ResourceType> {
    use ResourceType as R;
    vec![
        R::builtin("", "v1", "namespaces", "Namespace", false, true),
        R::builtin("", "v1", "pods", "Pod", true, true),
        R::builtin("", "v1", "services", "Service", true, true),
        R::builtin("", "v1", "configmaps", "ConfigMap", true, false),
        R::builtin("", "v1", "secrets", "Secret", true, false),
        R::builtin("", "v1", "events", "Event", true, false),
        R::builtin(
            "",
            "v1",
            "persistentvolumeclaims",
            "PersistentVolumeClaim",
            true,
            true,
        ),
        R::builtin("apps", "v1", "statefulsets", "StatefulSet", true, true),
        R::builtin("batch", "v1", "cronjobs", "CronJob", true, true),
        R::builtin("batch", "v1", "jobs", "Job", true, true),
        R::builtin(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
            true,
            true,
        ),
        R::builtin(
            "networking.k8s.io",
            "v1",
            "networkpolicies",
            "NetworkPolicy",
            true,
            false,
        ),
        R::builtin("coordination.k8s.io", "v1", "leases", "Lease", true, false),
        R::builtin(
            "storage.k8s.io",
            "v1",
            "storageclasses",
            "StorageClass",
            false,
            false,
        ),
        R::builtin("events.k8s.io", "v1", "events", "Event", true, false),
        R::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
            true,
        ),
    ]
}

/// The resource types a CustomResourceDefinition object declares (one per served version).
pub fn from_crd(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = crd.get("spec").ok_or("a CRD needs a spec")?;
    let text = |v: Option<&Value>, what: &str| -> Result<String, String> {
        v.and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("spec.{what} is required"))
    };
    let group = text(spec.get("group"), "group")?;
    let names = spec.get("names").ok_or("spec.names is required")?;
    let plural = text(names.get("plural"), "names.plural")?;
    let kind = text(names.get("kind"), "names.kind")?;
    let short_names: Vec<String> = names
        .get("shortNames")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions = spec
        .get("versions")
        .and_then(Value::as_array)
        .ok_or("spec.versions is required")?;
    let mut out = Vec::new();
    for version in versions {
        if version.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let subresources = version.get("subresources");
        let scale = subresources
            .and_then(|s| s.get("scale"))
            .map(|scale| ScaleSpec {
                spec_replicas_path: scale
                    .get("specReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".spec.replicas")
                    .to_string(),
                status_replicas_path: scale
                    .get("statusReplicasPath")
                    .and_then(Value::as_str)
                    .unwrap_or(".status.replicas")
                    .to_string(),
                label_selector_path: scale
                    .get("labelSelectorPath")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            });
        out.push(ResourceType {
            group: group.clone(),
            version: text(version.get("name"), "versions[].name")?,
            plural: plural.clone(),
            kind: kind.clone(),
            namespaced,
            status: subresources.and_then(|s| s.get("status")).is_some(),
            scale,
            schema: version
                .pointer("/schema/openAPIV3Schema")
                .cloned()
                .map(std::sync::Arc::new),
            short_names: short_names.clone(),
        });
    }
    Ok(out)
}

/// A request path, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `/api`, `/apis`, `/api/v1`, `/apis/g/v`, `/version`.
    Discovery(DiscoveryDoc),
    /// A collection or an object, possibly a subresource.
    Resource {
        /// Group.
        group: String,
        /// Version.
        version: String,
        /// Plural.
        plural: String,
        /// Namespace from the path ("" when absent).
        namespace: String,
        /// Object name, when the path names one.
        name: Option<String>,
        /// `status` or `scale`.
        subresource: Option<String>,
    },
}

/// Which discovery document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoveryDoc {
    /// `/api`.
    CoreVersions,
    /// `/apis`.
    Groups,
    /// `/api/v1` or `/apis/g/v`.
    Resources {
        /// Group.
        group: String,
        /// Version.
        version: String,
    },
    /// `/version`.
    Version,
}

/// Parses a request path against the known `plurals` (needed to tell
/// `/api/v1/namespaces/NS/PLURAL` from `/api/v1/namespaces/NAME/status`).
pub fn parse_path(path: &str, is_namespaced_plural: impl Fn(&str, &str) -> bool) -> Option<Target> {
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segments.as_slice() {
        ["version"] => return Some(Target::Discovery(DiscoveryDoc::Version)),
        ["api"] => return Some(Target::Discovery(DiscoveryDoc::CoreVersions)),
        ["apis"] => return Some(Target::Discovery(DiscoveryDoc::Groups)),
        ["api", version] => {
            return Some(Target::Discovery(DiscoveryDoc::Resources {
                group: String::new(),
                version: (*version).to_string(),
            }));
        }
        ["apis", group, version] => {
            return Some(Target::Discovery(DiscoveryDoc::Resources {
                group: (*group).to_string(),
                version: (*version).to_string(),
            }));
        }
        ["api", version, rest @ ..] => (String::new(), (*version).to_string(), rest),
        ["apis", group, version, rest @ ..] => ((*group).to_string(), (*version).to_string(), rest),
        _ => return None,
    };
    let resource =
        |plural: &str, namespace: &str, name: Option<&str>, sub: Option<&str>| Target::Resource {
            group: group.clone(),
            version: version.clone(),
            plural: plural.to_string(),
            namespace: namespace.to_string(),
            name: name.map(str::to_string),
            subresource: sub.map(str::to_string),
        };
    match rest {
        ["namespaces", ns, plural, tail @ ..] if is_namespaced_plural(&group, plural) => match tail
        {
            [] => Some(resource(plural, ns, None, None)),
            [name] => Some(resource(plural, ns, Some(name), None)),
            [name, sub] => Some(resource(plural, ns, Some(name), Some(sub))),
            _ => None,
        },
        [plural] => Some(resource(plural, "", None, None)),
        [plural, name] => Some(resource(plural, "", Some(name), None)),
        [plural, name, sub] => Some(resource(plural, "", Some(name), Some(sub))),
        _ => None,
    }
}

/// The discovery document for `doc`.
pub fn discovery(doc: &DiscoveryDoc, types: &[ResourceType]) -> Option<Value> {
    match doc {
        DiscoveryDoc::Version => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-phoenix-inprocess",
            "platform": "linux/amd64"
        })),
        DiscoveryDoc::CoreVersions => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]
        })),
        DiscoveryDoc::Groups => {
            let mut groups: Vec<(String, Vec<String>)> = Vec::new();
            for t in types.iter().filter(|t| !t.group.is_empty()) {
                match groups.iter_mut().find(|(g, _)| *g == t.group) {
                    Some((_, versions)) if !versions.contains(&t.version) => {
                        versions.push(t.version.clone())
                    }
                    Some(_) => {}
                    None => groups.push((t.group.clone(), vec![t.version.clone()])),
                }
            }
            let groups: Vec<Value> = groups
                .into_iter()
                .map(|(name, versions)| {
                    let listed: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
                        .collect();
                    json!({"name": name, "versions": listed, "preferredVersion": listed[0]})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        DiscoveryDoc::Resources { group, version } => {
            let mut resources = Vec::new();
            for t in types
                .iter()
                .filter(|t| &t.group == group && &t.version == version)
            {
                resources.push(json!({
                    "name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                    "kind": t.kind, "shortNames": t.short_names,
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }));
                if t.status {
                    resources.push(json!({
                        "name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                        "kind": t.kind, "verbs": ["get", "patch", "update"],
                    }));
                }
                if t.scale.is_some() {
                    resources.push(json!({
                        "name": format!("{}/scale", t.plural), "singularName": "", "namespaced": t.namespaced,
                        "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
                    }));
                }
            }
            if resources.is_empty() {
                return None;
            }
            let group_version = if group.is_empty() {
                version.clone()
            } else {
                format!("{group}/{version}")
            };
            Some(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_against_known_plurals() {
        let ns = |g: &str, p: &str| g.is_empty() && p == "configmaps";
        assert_eq!(
            parse_path("/api/v1/namespaces/default/configmaps/x", ns),
            Some(Target::Resource {
                group: String::new(),
                version: "v1".into(),
                plural: "configmaps".into(),
                namespace: "default".into(),
                name: Some("x".into()),
                subresource: None
            })
        );
        // `status` is not a namespaced plural: this is the namespace's status subresource.
        assert_eq!(
            parse_path("/api/v1/namespaces/default/status", ns),
            Some(Target::Resource {
                group: String::new(),
                version: "v1".into(),
                plural: "namespaces".into(),
                namespace: String::new(),
                name: Some("default".into()),
                subresource: Some("status".into())
            })
        );
        assert_eq!(
            parse_path("/apis", ns),
            Some(Target::Discovery(DiscoveryDoc::Groups))
        );
        assert_eq!(parse_path("/nothing", ns), None);
    }
}
