//! The API calls the operator makes, as RBAC rules: the one list the chart's ClusterRole (or
//! Role) is checked against (`phoenix-operator rbac` prints it).

use serde::Serialize;

/// One RBAC rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// API groups ("" is core).
    pub api_groups: &'static [&'static str],
    /// Resources (with `/status` for subresources).
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// Watching and reading: the controller's watches.
const READ: &[&str] = &["get", "list", "watch"];
/// A child: watched into a cache (what the no-write check before an apply reads; never a
/// GET), and server-side applied (`create` for the first apply of an absent object).
const APPLY: &[&str] = &["list", "watch", "create", "patch"];

/// Every rule the operator needs, nothing more.
pub const RULES: &[Rule] = &[
    Rule {
        api_groups: &["phoenix.dev"],
        resources: &["phoenixmemories"],
        verbs: READ,
    },
    Rule {
        api_groups: &["phoenix.dev"],
        resources: &["phoenixmemories/status"],
        verbs: &["patch"],
    },
    // Children carry an owner reference with `blockOwnerDeletion`; where the
    // OwnerReferencesPermissionEnforcement admission plugin is on (OpenShift), setting it
    // needs `update` on the owner's finalizers, or every child create is refused (403).
    Rule {
        api_groups: &["phoenix.dev"],
        resources: &["phoenixmemories/finalizers"],
        verbs: &["update"],
    },
    Rule {
        api_groups: &[""],
        resources: &["configmaps", "services"],
        verbs: APPLY,
    },
    // `get`: a Secret missing from the cache is looked up before a new token is made.
    Rule {
        api_groups: &[""],
        resources: &["secrets"],
        verbs: &["get", "list", "watch", "create", "patch"],
    },
    // `delete`: replaced (pods orphaned, not deleted) when its claims grow; `get`: whether
    // the replaced one is gone yet.
    Rule {
        api_groups: &["apps"],
        resources: &["statefulsets"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
    },
    // Each node's claim grows in place with `storage.size`.
    Rule {
        api_groups: &[""],
        resources: &["persistentvolumeclaims"],
        verbs: &["get", "patch"],
    },
    // Whether a claim's StorageClass allows volume expansion.
    Rule {
        api_groups: &["storage.k8s.io"],
        resources: &["storageclasses"],
        verbs: &["get"],
    },
    Rule {
        api_groups: &["policy"],
        resources: &["poddisruptionbudgets"],
        verbs: APPLY,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: APPLY,
    },
    Rule {
        api_groups: &["batch"],
        resources: &["cronjobs"],
        verbs: APPLY,
    },
    // The pod cache of the nodes (observing reads it).
    Rule {
        api_groups: &[""],
        resources: &["pods"],
        verbs: &["list", "watch"],
    },
    Rule {
        api_groups: &["batch"],
        resources: &["jobs"],
        verbs: &["get", "list", "create"],
    },
    Rule {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
    },
];

/// Rules for the leader-election Lease (in the operator's own namespace).
pub const LEASE_RULES: &[Rule] = &[Rule {
    api_groups: &["coordination.k8s.io"],
    resources: &["leases"],
    verbs: &["get", "create", "patch", "update"],
}];

/// Whether `verb` on `group`/`resource` is allowed by `rules`.
pub fn allows(rules: &[Rule], group: &str, resource: &str, verb: &str) -> bool {
    rules.iter().any(|r| {
        r.api_groups.contains(&group) && r.resources.contains(&resource) && r.verbs.contains(&verb)
    })
}

/// The rules as YAML (`phoenix-operator rbac`).
///
/// # Errors
/// Only if serialisation fails.
pub fn rules_yaml() -> Result<String, serde_yaml::Error> {
    #[derive(Serialize)]
    struct All {
        rules: &'static [Rule],
        #[serde(rename = "leaseRules")]
        lease_rules: &'static [Rule],
    }
    serde_yaml::to_string(&All {
        rules: RULES,
        lease_rules: LEASE_RULES,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_allow_what_the_operator_does_and_not_more() {
        assert!(allows(RULES, "apps", "statefulsets", "patch"));
        // OwnerReferencesPermissionEnforcement: blockOwnerDeletion needs this.
        assert!(allows(
            RULES,
            "phoenix.dev",
            "phoenixmemories/finalizers",
            "update"
        ));
        assert!(allows(
            RULES,
            "phoenix.dev",
            "phoenixmemories/status",
            "patch"
        ));
        assert!(
            !allows(RULES, "phoenix.dev", "phoenixmemories", "patch"),
            "the spec belongs to users"
        );
        assert!(
            !allows(RULES, "", "secrets", "delete"),
            "children go by garbage collection"
        );
        assert!(
            allows(RULES, "", "pods", "list") && allows(RULES, "", "pods", "watch"),
            "observe reads the nodes from the pod cache"
        );
        assert!(
            !allows(RULES, "", "configmaps", "get") && !allows(RULES, "", "services", "get"),
            "children are read from the watch caches"
        );
        assert!(
            !allows(RULES, "", "pods", "get") && !allows(RULES, "", "pods", "delete"),
            "nothing else on pods"
        );
        assert!(allows(RULES, "batch", "jobs", "create"), "emergency Jobs");
        assert!(!allows(RULES, "batch", "jobs", "delete"));
        assert!(allows(
            LEASE_RULES,
            "coordination.k8s.io",
            "leases",
            "patch"
        ));
    }
}
