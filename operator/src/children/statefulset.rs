//! The StatefulSet of nodes: one PVC each, probes, restricted pod security, a config hash
//! that restarts pods when the ConfigMap changes, PVC retention from `retainOnDelete`.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction,
    ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use phoenix_node_api::config::POD_NAME_ENV;

use super::configmap::config_path;
use super::{
    CONFIG_DIR, Inputs, NODE_PORT, PEER_PORT, child_meta, configmap_name, headless_name, labels,
    restricted_container, restricted_pod, selector_labels, token_mount, token_volume,
};

/// Annotation on the pod template carrying the config hash.
pub const CONFIG_HASH_ANNOTATION: &str = "phoenix.dev/config-hash";
/// Seconds a node gets to drain and flush after SIGTERM (its own deadline is 20 s).
pub const TERMINATION_GRACE_SECONDS: i64 = 30;

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

/// The node container's resources: the spec's, or (when it sets none) derived from
/// `cacheCapacity`. Measured (`phoenix-node bench --scenario large-values`, 64 MiB cache,
/// 1 MiB values, docs/bench/large-values.txt): resident memory peaked at 342 MiB during 200
/// concurrent 1 MiB stores, i.e. the cache plus sled's lazily counted pages (up to ~280 MiB)
/// plus request bodies (`maxInflightBodyBytes`, 64 MiB); the Merkle tree adds ~150 bytes per
/// key (150 MiB at a million keys). So: request `cacheCapacity + 128Mi` (what a node
/// usually holds), limit `2 × cacheCapacity + 512Mi` (the worst measured, a million keys'
/// tree, and headroom).
///
/// A cache the operator raised (`node.autoCache`) raises the spec's own memory request and
/// limit by as much as the cache grew (the derived ones follow the cache anyway).
pub fn node_resources(inputs: &Inputs<'_>) -> ResourceRequirements {
    if let Some(resources) = &inputs.valid.spec.resources {
        let grown = inputs
            .valid
            .cache_capacity_bytes
            .saturating_sub(inputs.valid.spec_cache_capacity_bytes);
        let mut resources = resources.clone();
        if grown > 0 {
            for map in [resources.requests.as_mut(), resources.limits.as_mut()]
                .into_iter()
                .flatten()
            {
                if let Some(memory) = map.get_mut("memory")
                    && let Some(bytes) = crate::validate::quantity_value(&memory.0)
                {
                    let raised = (bytes as u64).saturating_add(grown).div_ceil(1 << 20);
                    *memory = Quantity(format!("{raised}Mi"));
                }
            }
        }
        return resources;
    }
    let cache_mi = inputs.valid.cache_capacity_bytes.div_ceil(1 << 20);
    let mi = |n: u64| Quantity(format!("{n}Mi"));
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("100m".into())),
            ("memory".to_string(), mi(cache_mi + 128)),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            mi(2 * cache_mi + 512),
        )])),
        ..ResourceRequirements::default()
    }
}

fn container(inputs: &Inputs<'_>) -> Container {
    Container {
        name: "node".into(),
        image: Some(inputs.image()),
        args: Some(vec!["serve".into(), "--config".into(), config_path()]),
        // A replicated node's Raft id is its ordinal, read from its pod's name.
        env: Some(vec![EnvVar {
            name: POD_NAME_ENV.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(
            std::iter::once(("http", NODE_PORT))
                .chain(inputs.replicated.then_some(("peer", PEER_PORT)))
                .map(|(name, port)| ContainerPort {
                    name: Some(name.into()),
                    container_port: port,
                    protocol: Some("TCP".into()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 6)),
        startup_probe: Some(probe("/healthz", 2, 150)),
        resources: Some(node_resources(inputs)),
        security_context: Some(restricted_container()),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "config".into(),
                mount_path: CONFIG_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            token_mount(),
        ]),
        ..Container::default()
    }
}

/// The StatefulSet, its pod template carrying `config_hash`.
pub fn build_statefulset(inputs: &Inputs<'_>, config_hash: &str) -> StatefulSet {
    let name = inputs.name();
    let storage = &inputs.valid.spec.storage;
    let retention = if storage.retain_on_delete {
        "Retain"
    } else {
        "Delete"
    };
    let pod_labels = labels(&name, "node");
    StatefulSet {
        metadata: child_meta(inputs, name.clone(), "node"),
        spec: Some(StatefulSetSpec {
            replicas: Some(inputs.replicas),
            service_name: Some(headless_name(&name)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                ..LabelSelector::default()
            },
            pod_management_policy: Some("Parallel".into()),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some(retention.into()),
                    when_scaled: Some(retention.into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container(inputs)],
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
                    automount_service_account_token: Some(false),
                    security_context: Some(restricted_pod()),
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: configmap_name(&name),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        token_volume(&name, false),
                    ]),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("data".into()),
                    labels: Some(selector_labels(&name)),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;

    #[test]
    fn the_statefulset_has_the_shape_the_design_asks_for() {
        let memory = memory(serde_json::json!({
            "replicas": 3,
            "storage": {"size": "5Gi", "storageClassName": "fast", "retainOnDelete": false},
            "resources": {"limits": {"memory": "1Gi"}}
        }));
        let sts = with_inputs(&memory, |i| build_statefulset(i, "abc"));
        let spec = sts.spec.expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.service_name.as_deref(), Some("mem-nodes"));
        let retention = spec
            .persistent_volume_claim_retention_policy
            .expect("retention");
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        let claim = &spec.volume_claim_templates.expect("claims")[0];
        let claim_spec = claim.spec.as_ref().expect("claim spec");
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .map(|r| r["storage"].0.clone()),
            Some("5Gi".into())
        );
        let template = spec.template;
        assert_eq!(
            template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .map(|a| a[CONFIG_HASH_ANNOTATION].clone()),
            Some("abc".into())
        );
        let pod = template.spec.expect("pod");
        assert_eq!(pod.termination_grace_period_seconds, Some(30));
        let security = pod.security_context.expect("pod security");
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.seccomp_profile.map(|s| s.type_),
            Some("RuntimeDefault".into())
        );
        let container = &pod.containers[0];
        assert_eq!(container.image.as_deref(), Some("phoenix-memory:test"));
        let sc = container
            .security_context
            .as_ref()
            .expect("container security");
        assert_eq!(
            (
                sc.allow_privilege_escalation,
                sc.read_only_root_filesystem,
                sc.privileged
            ),
            (Some(false), Some(true), Some(false))
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()])
        );
        assert_eq!(
            container
                .readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone()),
            Some("/readyz".into())
        );
        assert_eq!(
            container
                .liveness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.clone()),
            Some("/healthz".into())
        );
        assert!(container.resources.is_some());
        assert_eq!(
            container.args.as_ref().map(|a| a[0].as_str()),
            Some("serve")
        );
    }

    #[test]
    fn a_raised_cache_raises_the_memory_with_it() {
        let derived = memory(serde_json::json!({
            "node": {"cacheCapacity": "64Mi", "autoCache": {"max": "1Gi"}},
        }));
        let with = |raised: Option<&str>, memory: &crate::crd::PhoenixMemory| {
            let valid = crate::validate::validate(&memory.spec)
                .expect("valid")
                .with_raised_cache(raised);
            let tokens = crate::children::Tokens {
                admin: "admin".into(),
                peer: "peer".into(),
            };
            let inputs = Inputs::new(memory, &valid, "phoenix-memory:test", &tokens);
            node_resources(&inputs)
        };
        let limit = |r: ResourceRequirements| r.limits.and_then(|l| l.get("memory").cloned());
        assert_eq!(limit(with(None, &derived)), Some(Quantity("640Mi".into())));
        assert_eq!(
            limit(with(Some("256Mi"), &derived)),
            Some(Quantity("1024Mi".into()))
        );
        // Beyond the bound, or without the opt-in, the spec's cache stands.
        assert_eq!(
            limit(with(Some("2Gi"), &derived)),
            Some(Quantity("640Mi".into()))
        );
        let set = memory(serde_json::json!({
            "node": {"cacheCapacity": "64Mi", "autoCache": {"max": "1Gi"}},
            "resources": {"requests": {"memory": "256Mi"}, "limits": {"memory": "1Gi"}}
        }));
        let raised = with(Some("192Mi"), &set);
        assert_eq!(limit(raised.clone()), Some(Quantity("1152Mi".into())));
        assert_eq!(
            raised.requests.and_then(|r| r.get("memory").cloned()),
            Some(Quantity("384Mi".into()))
        );
    }

    #[test]
    fn memory_is_derived_from_the_cache_unless_resources_are_set() {
        let resources_of = |spec: serde_json::Value| {
            let memory = memory(spec);
            with_inputs(&memory, |i| build_statefulset(i, "x"))
                .spec
                .and_then(|s| s.template.spec)
                .and_then(|p| p.containers.into_iter().next())
                .and_then(|c| c.resources)
                .expect("resources")
        };
        let resources = resources_of(serde_json::json!({"node": {"cacheCapacity": "64Mi"}}));
        let memory_of =
            |map: Option<BTreeMap<String, Quantity>>| map.and_then(|m| m.get("memory").cloned());
        assert_eq!(
            memory_of(resources.requests),
            Some(Quantity("192Mi".into()))
        );
        assert_eq!(memory_of(resources.limits), Some(Quantity("640Mi".into())));
        let resources =
            resources_of(serde_json::json!({"resources": {"limits": {"memory": "1Gi"}}}));
        assert_eq!(memory_of(resources.limits), Some(Quantity("1Gi".into())));
        assert_eq!(
            resources.requests, None,
            "the spec's resources are kept as written"
        );
    }

    #[test]
    fn retention_defaults_to_retain() {
        let memory = memory(serde_json::json!({}));
        let sts = with_inputs(&memory, |i| build_statefulset(i, "x"));
        let retention = sts
            .spec
            .and_then(|s| s.persistent_volume_claim_retention_policy)
            .expect("retention");
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
    }
}
