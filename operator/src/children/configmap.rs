//! The ConfigMap holding the node's configuration file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use phoenix_node_api::config::{
    DurabilityConfig, LogFormat, NodeConfig, PeerConfig, Quantity, ReplicationConfig,
};

use super::{
    CONFIG_DIR, Inputs, NODE_PORT, PEER_PORT, PEER_TOKEN_KEY, TOKEN_DIR, TOKEN_KEY, child_meta,
    configmap_name, peer_url,
};

/// The config file's name in the ConfigMap (and under `CONFIG_DIR`).
pub const CONFIG_FILE: &str = "node.yaml";

/// The node configuration this memory asks for.
pub fn node_config(inputs: &Inputs<'_>) -> NodeConfig {
    let node = &inputs.valid.spec.node;
    NodeConfig {
        listen: SocketAddr::from(([0, 0, 0, 0], NODE_PORT as u16)),
        data_dir: PathBuf::from("/data"),
        cache_capacity: Quantity(inputs.valid.cache_capacity_bytes),
        durability: DurabilityConfig {
            mode: node.durability,
            flush_every_ms: node.flush_every_ms,
            ..DurabilityConfig::default()
        },
        default_ttl_seconds: node.default_ttl_seconds,
        admin_token_file: Some(PathBuf::from(format!("{TOKEN_DIR}/{TOKEN_KEY}"))),
        log_format: LogFormat::Json,
        replication: inputs.replicated.then(|| {
            let (name, namespace) = (inputs.name(), inputs.namespace());
            let peers = (0..u64::try_from(inputs.replicas.max(1)).unwrap_or(1))
                .map(|id| PeerConfig {
                    id,
                    url: peer_url(&name, &namespace, id),
                })
                .collect();
            ReplicationConfig {
                listen: Some(SocketAddr::from(([0, 0, 0, 0], PEER_PORT as u16))),
                ..ReplicationConfig::new(
                    peers,
                    PathBuf::from(format!("{TOKEN_DIR}/{PEER_TOKEN_KEY}")),
                )
            }
        }),
        ..NodeConfig::default()
    }
}

/// The ConfigMap with `node.yaml` (the `config` of [`node_config`]).
///
/// # Errors
/// Only if serialisation fails.
pub fn build_configmap(
    inputs: &Inputs<'_>,
    config: &NodeConfig,
) -> Result<ConfigMap, serde_yaml::Error> {
    let yaml = serde_yaml::to_string(config)?;
    Ok(ConfigMap {
        metadata: child_meta(inputs, configmap_name(&inputs.name()), "config"),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// A hash of the node configuration; the pod template carries it so a config change
/// restarts the pods. The replication peers are left out: scaling changes them, and a
/// running node learns a new member's address from the membership change that adds it
/// (only a node starting reads them), so a scale must not restart every node.
///
/// # Errors
/// Only if serialisation fails.
pub fn config_hash(config: &NodeConfig) -> Result<String, serde_yaml::Error> {
    let mut config = config.clone();
    if let Some(replication) = config.replication.as_mut() {
        replication.peers.clear();
    }
    let text = serde_yaml::to_string(&config)?;
    Ok(blake3::hash(text.as_bytes()).to_hex()[..16].to_string())
}

/// Where the pod mounts the config.
pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_FILE}")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::*;
    use crate::crd::DurabilityMode;

    #[test]
    fn the_config_file_is_a_valid_node_config_from_the_spec() {
        let memory = memory(
            serde_json::json!({"node": {"cacheCapacity": "64Mi", "durability": "Sync", "defaultTtlSeconds": 60}}),
        );
        let configmap =
            with_inputs(&memory, |i| build_configmap(i, &node_config(i))).expect("builds");
        let text = &configmap.data.as_ref().expect("data")[CONFIG_FILE];
        let parsed = NodeConfig::from_yaml(text).expect("the node accepts it");
        assert_eq!(parsed.cache_capacity, Quantity(64 << 20));
        assert_eq!(parsed.durability.mode, DurabilityMode::Sync);
        assert_eq!(parsed.default_ttl_seconds, 60);
        assert_eq!(
            parsed.admin_token_file,
            Some(PathBuf::from("/var/run/secrets/phoenix/token"))
        );
    }

    #[test]
    fn the_hash_follows_the_content() {
        let a = memory(serde_json::json!({}));
        let b = memory(serde_json::json!({"node": {"cacheCapacity": "128Mi"}}));
        let hash = |m| with_inputs(m, |i| config_hash(&node_config(i))).expect("hash");
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
    }

    #[test]
    fn replicated_memories_name_their_peers_and_a_scale_restarts_no_node() {
        let one = memory(serde_json::json!({"replicas": 1}));
        let three = memory(serde_json::json!({"replicas": 3}));
        let five = memory(serde_json::json!({"replicas": 5}));
        let config = |m| with_inputs(m, node_config);
        assert_eq!(config(&one).replication, None, "one node serves alone");
        let replication = config(&three).replication.expect("replicated");
        assert_eq!(replication.id, None, "each pod takes its ordinal");
        assert_eq!(
            replication
                .peers
                .iter()
                .map(|p| p.url.as_str())
                .collect::<Vec<_>>(),
            [
                "http://mem-0.mem-nodes.ns.svc:8081",
                "http://mem-1.mem-nodes.ns.svc:8081",
                "http://mem-2.mem-nodes.ns.svc:8081"
            ]
        );
        assert_eq!(
            replication.peer_token_file,
            PathBuf::from("/var/run/secrets/phoenix/peer-token")
        );
        assert!(!replication.bootstrap, "the operator initializes the group");
        let text = with_inputs(&three, |i| build_configmap(i, &node_config(i))).expect("cm");
        let parsed = NodeConfig::from_yaml(&text.data.expect("data")[CONFIG_FILE])
            .expect("the node accepts it");
        assert_eq!(parsed.replication.map(|r| r.peers.len()), Some(3));
        let hash = |m| with_inputs(m, |i| config_hash(&node_config(i))).expect("hash");
        assert_eq!(hash(&three), hash(&five), "scaling restarts no node");
        assert_ne!(hash(&one), hash(&three), "turning replication on restarts");
    }
}
