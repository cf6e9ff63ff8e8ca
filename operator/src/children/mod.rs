//! The children of a memory: pure builders, a validated `PhoenixMemory` in, the objects it
//! needs out. No client here; applying happens in one place (the controller).

mod configmap;
mod cronjob;
mod networkpolicy;
mod pdb;
mod service;
mod statefulset;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, KeyToPath, PodSecurityContext, SeccompProfile, Secret,
    SecretVolumeSource, SecurityContext, Service, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

use crate::crd::PhoenixMemory;
use crate::validate::ValidSpec;

pub use configmap::{CONFIG_FILE, build_configmap, config_hash, node_config};
pub use cronjob::{EMERGENCY_COMPONENT, build_cronjob, build_emergency_job, emergency_job_name};
pub use networkpolicy::build_network_policy;
pub use pdb::build_pdb;
pub use service::{build_client_service, build_headless_service};
pub use statefulset::{CONFIG_HASH_ANNOTATION, build_statefulset};

/// The nodes' HTTP port.
pub const NODE_PORT: i32 = 8080;
/// A replicated node's peer port: Raft RPCs and requests forwarded by other nodes.
pub const PEER_PORT: i32 = 8081;
/// Key of the admin token in the Secret.
pub const TOKEN_KEY: &str = "token";
/// Where the node reads its config file.
pub const CONFIG_DIR: &str = "/etc/phoenix";
/// Where the node reads its admin token.
pub const TOKEN_DIR: &str = "/var/run/secrets/phoenix";

/// Key of the peer token (Raft RPCs between the nodes) in the Secret.
pub const PEER_TOKEN_KEY: &str = "peer-token";

/// The memory's two secrets, each generated once and kept in its Secret. No `Debug`.
#[derive(Clone)]
pub struct Tokens {
    /// Bearer token of the nodes' admin endpoints (the operator and the cleanup Jobs).
    pub admin: String,
    /// Token of the Raft RPCs between the nodes (only the nodes mount it).
    pub peer: String,
}

/// Everything the builders need besides the spec. No `Debug`: it holds the tokens.
#[derive(Clone)]
pub struct Inputs<'a> {
    /// The resource.
    pub memory: &'a PhoenixMemory,
    /// Its validated spec.
    pub valid: &'a ValidSpec,
    /// Image when the spec names none (the operator's `--default-image`).
    pub default_image: &'a str,
    /// The tokens.
    pub tokens: &'a Tokens,
    /// How many pods the StatefulSet runs: `spec.replicas`, or more while members the
    /// spec no longer wants are still leaving the Raft group (see `controller::replication`).
    pub replicas: i32,
    /// Whether the nodes form a Raft group (the StatefulSet runs two nodes or more, or a
    /// group of more than node 0 still exists).
    pub replicated: bool,
}

impl<'a> Inputs<'a> {
    /// The inputs of a memory before anything is known about its group: the StatefulSet
    /// runs `spec.replicas`, replicated from two.
    pub fn new(
        memory: &'a PhoenixMemory,
        valid: &'a ValidSpec,
        default_image: &'a str,
        tokens: &'a Tokens,
    ) -> Inputs<'a> {
        Inputs {
            memory,
            valid,
            default_image,
            tokens,
            replicas: valid.spec.replicas,
            replicated: valid.spec.replicas >= 2,
        }
    }

    /// With the StatefulSet's replica count and replication decided from the group.
    pub fn sized(mut self, replicas: i32, replicated: bool) -> Inputs<'a> {
        self.replicas = replicas;
        self.replicated = replicated;
        self
    }

    /// The admin token.
    pub fn admin_token(&self) -> &str {
        &self.tokens.admin
    }
}

impl Inputs<'_> {
    /// The resource's name.
    pub fn name(&self) -> String {
        self.memory.name_any()
    }

    /// The resource's namespace.
    pub fn namespace(&self) -> String {
        self.memory.namespace().unwrap_or_else(|| "default".into())
    }

    /// The node image.
    pub fn image(&self) -> String {
        self.valid
            .spec
            .image
            .clone()
            .unwrap_or_else(|| self.default_image.to_string())
    }
}

/// The non-root user and group of the image.
pub const RUN_AS: i64 = 65532;

/// The container security context of the "restricted" Pod Security Standard.
pub fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        privileged: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The pod security context of the "restricted" Pod Security Standard.
pub fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

/// The memory's Secret as a volume (owner-read only): every token for the nodes, only the
/// admin token for the cleanup Jobs (`admin_only`), which never speak Raft.
pub fn token_volume(memory: &str, admin_only: bool) -> Volume {
    Volume {
        name: "admin-token".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret_name(memory)),
            default_mode: Some(0o400),
            items: admin_only.then(|| {
                vec![KeyToPath {
                    key: TOKEN_KEY.into(),
                    path: TOKEN_KEY.into(),
                    mode: None,
                }]
            }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The URL a node's peers reach it at: `http://NAME-i.NAME-nodes.NAMESPACE.svc:8081` (the
/// headless Service publishes not-ready pods, so peers resolve during start-up).
pub fn peer_url(memory: &str, namespace: &str, ordinal: u64) -> String {
    format!(
        "http://{memory}-{ordinal}.{}.{namespace}.svc:{PEER_PORT}",
        headless_name(memory)
    )
}

/// Where the admin token is mounted.
pub fn token_mount() -> VolumeMount {
    VolumeMount {
        name: "admin-token".into(),
        mount_path: TOKEN_DIR.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// Name of the headless Service (stable DNS per node).
pub fn headless_name(memory: &str) -> String {
    format!("{memory}-nodes")
}

/// Name of the Secret holding the admin token.
pub fn secret_name(memory: &str) -> String {
    format!("{memory}-admin")
}

/// Name of the ConfigMap holding the node configuration.
pub fn configmap_name(memory: &str) -> String {
    format!("{memory}-config")
}

/// Name of the cleanup CronJob.
pub fn cronjob_name(memory: &str) -> String {
    format!("{memory}-cleanup")
}

/// The label naming the memory a child or node belongs to.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";

/// The selector of every memory's nodes (the operator's pod cache watches these).
pub const NODES_SELECTOR: &str = "app.kubernetes.io/name=phoenix-memory";

/// Labels that select one memory's nodes.
pub fn selector_labels(memory: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "phoenix-memory".to_string(),
        ),
        (INSTANCE_LABEL.to_string(), memory.to_string()),
    ])
}

/// Labels on every child.
pub fn labels(memory: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(memory);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "phoenix-operator".into(),
    );
    labels.insert("app.kubernetes.io/component".into(), component.into());
    labels
}

/// Labels of cleanup Job pods: their own `app.kubernetes.io/name`, so that no selector of
/// the nodes (the Services, the PodDisruptionBudget, the StatefulSet) ever matches them — a
/// finished Job pod in the PDB blocked every eviction of the nodes, and a running one was
/// a ready endpoint of the client Service.
pub fn job_pod_labels(memory: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = labels(memory, component);
    labels.insert(
        "app.kubernetes.io/name".into(),
        "phoenix-memory-cleanup".into(),
    );
    labels
}

/// The `key=value,…` form of the selector (status.selector, for `kubectl scale`).
pub fn selector_string(memory: &str) -> String {
    selector_labels(memory)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The controller owner reference to the memory, so deletion cascades.
pub fn owner_reference(memory: &PhoenixMemory) -> OwnerReference {
    OwnerReference {
        api_version: PhoenixMemory::api_version(&()).into_owned(),
        kind: PhoenixMemory::kind(&()).into_owned(),
        name: memory.name_any(),
        uid: memory.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Metadata of a child: name, namespace, labels, owner.
pub fn child_meta(inputs: &Inputs<'_>, name: String, component: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(inputs.namespace()),
        labels: Some(labels(&inputs.name(), component)),
        owner_references: Some(vec![owner_reference(inputs.memory)]),
        ..ObjectMeta::default()
    }
}

/// The Secret with the admin and peer tokens.
pub fn build_secret(inputs: &Inputs<'_>) -> Secret {
    Secret {
        metadata: child_meta(inputs, secret_name(&inputs.name()), "admin-token"),
        type_: Some("Opaque".into()),
        string_data: None,
        data: Some(BTreeMap::from([
            (
                TOKEN_KEY.to_string(),
                k8s_openapi::ByteString(inputs.tokens.admin.as_bytes().to_vec()),
            ),
            (
                PEER_TOKEN_KEY.to_string(),
                k8s_openapi::ByteString(inputs.tokens.peer.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

/// Every child but the CronJob (built from the plan once the nodes are observed: see
/// [`build_cronjob`]), in apply order.
#[derive(Clone, Debug, PartialEq)]
pub struct Children {
    /// Node configuration.
    pub configmap: ConfigMap,
    /// Admin token.
    pub secret: Secret,
    /// Stable per-node DNS.
    pub headless_service: Service,
    /// Client traffic.
    pub client_service: Service,
    /// The nodes.
    pub statefulset: StatefulSet,
    /// Disruption budget.
    pub pdb: PodDisruptionBudget,
    /// Who may reach the nodes.
    pub network_policy: NetworkPolicy,
}

/// Builds every child but the CronJob.
///
/// # Errors
/// Only if the node configuration cannot be serialised (a programming error).
pub fn build_all(inputs: &Inputs<'_>) -> Result<Children, serde_yaml::Error> {
    let config = node_config(inputs);
    let hash = config_hash(&config)?;
    let configmap = build_configmap(inputs, &config)?;
    Ok(Children {
        secret: build_secret(inputs),
        headless_service: build_headless_service(inputs),
        client_service: build_client_service(inputs),
        statefulset: build_statefulset(inputs, &hash),
        pdb: build_pdb(inputs),
        network_policy: build_network_policy(inputs),
        configmap,
    })
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::crd::PhoenixMemorySpec;

    /// A memory named `mem` in `ns` with the given spec JSON.
    pub fn memory(spec: serde_json::Value) -> PhoenixMemory {
        let spec: PhoenixMemorySpec = serde_json::from_value(spec).expect("spec");
        let mut memory = PhoenixMemory::new("mem", spec);
        memory.metadata.namespace = Some("ns".into());
        memory.metadata.uid = Some("uid-1".into());
        memory
    }

    /// Runs `f` with inputs for `memory`.
    pub fn with_inputs<T>(memory: &PhoenixMemory, f: impl FnOnce(&Inputs<'_>) -> T) -> T {
        let valid = crate::validate::validate(&memory.spec).expect("valid spec");
        let tokens = Tokens {
            admin: "secret-token".into(),
            peer: "peer-secret".into(),
        };
        f(&Inputs::new(memory, &valid, "phoenix-memory:test", &tokens))
    }

    /// The schedule at `maxInterval` (before any observation).
    pub fn schedule_of(inputs: &Inputs<'_>) -> crate::plan::Schedule {
        crate::plan::schedule(
            inputs.valid,
            &inputs.namespace(),
            &inputs.name(),
            inputs.valid.max_interval,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    #[test]
    fn no_selector_of_the_nodes_matches_a_cleanup_pod() {
        let memory = memory(serde_json::json!({"replicas": 3}));
        let children = with_inputs(&memory, build_all).expect("builds");
        let cronjob = with_inputs(&memory, |i| build_cronjob(i, &schedule_of(i)));
        let emergency = with_inputs(&memory, |i| {
            build_emergency_job(i, &cronjob, "mem-emergency-1".into(), 2.0)
        });
        let pod_labels = |template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>| {
            template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.clone())
                .expect("pod labels")
        };
        let scheduled = pod_labels(
            cronjob
                .spec
                .as_ref()
                .and_then(|s| s.job_template.spec.as_ref())
                .map(|j| &j.template),
        );
        let urgent = pod_labels(emergency.spec.as_ref().map(|j| &j.template));
        let matches = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
            selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        let selectors = [
            children
                .client_service
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone()),
            children
                .headless_service
                .spec
                .as_ref()
                .and_then(|s| s.selector.clone()),
            children
                .pdb
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.clone()),
            children
                .statefulset
                .spec
                .as_ref()
                .and_then(|s| s.selector.match_labels.clone()),
        ];
        let node_pod = pod_labels(children.statefulset.spec.as_ref().map(|s| &s.template));
        for selector in selectors {
            let selector = selector.expect("a selector");
            assert!(matches(&selector, &node_pod), "the nodes are selected");
            assert!(
                !matches(&selector, &scheduled),
                "{selector:?} selects cleanup pods"
            );
            assert!(
                !matches(&selector, &urgent),
                "{selector:?} selects emergency pods"
            );
        }
    }

    #[test]
    fn every_child_is_owned_labelled_and_namespaced() {
        let memory = memory(serde_json::json!({"replicas": 3}));
        let children = with_inputs(&memory, build_all).expect("builds");
        let cronjob = with_inputs(&memory, |i| build_cronjob(i, &schedule_of(i)));
        let metas = [
            &children.configmap.metadata,
            &children.secret.metadata,
            &children.headless_service.metadata,
            &children.client_service.metadata,
            &children.statefulset.metadata,
            &children.pdb.metadata,
            &cronjob.metadata,
        ];
        for meta in metas {
            assert_eq!(meta.namespace.as_deref(), Some("ns"));
            let owner = &meta.owner_references.as_ref().expect("owned")[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("PhoenixMemory", "uid-1", Some(true))
            );
            assert_eq!(
                meta.labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/instance"))
                    .map(String::as_str),
                Some("mem")
            );
        }
        assert_eq!(
            selector_string("mem"),
            "app.kubernetes.io/instance=mem,app.kubernetes.io/name=phoenix-memory"
        );
    }

    #[test]
    fn the_secret_holds_the_token_it_was_given() {
        let memory = memory(serde_json::json!({}));
        let secret = with_inputs(&memory, build_secret);
        let data = secret.data.expect("data");
        assert_eq!(data[TOKEN_KEY].0, b"secret-token");
        assert_eq!(data[PEER_TOKEN_KEY].0, b"peer-secret");
        assert_eq!(secret.metadata.name.as_deref(), Some("mem-admin"));
    }
}
