//! The ConfigMap holding the node's configuration file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::ConfigMap;
use phoenix_node_api::config::{DurabilityConfig, LogFormat, NodeConfig, Quantity};

use super::{CONFIG_DIR, Inputs, NODE_PORT, TOKEN_DIR, TOKEN_KEY, child_meta, configmap_name};

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
        ..NodeConfig::default()
    }
}

/// The ConfigMap with `node.yaml`.
///
/// # Errors
/// Only if serialisation fails.
pub fn build_configmap(inputs: &Inputs<'_>) -> Result<ConfigMap, serde_yaml::Error> {
    let yaml = serde_yaml::to_string(&node_config(inputs))?;
    Ok(ConfigMap {
        metadata: child_meta(inputs, configmap_name(&inputs.name()), "config"),
        data: Some(BTreeMap::from([(CONFIG_FILE.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}

/// A hash of the ConfigMap's data; the pod template carries it so a config change restarts
/// the pods.
pub fn config_hash(configmap: &ConfigMap) -> String {
    let mut hasher = blake3::Hasher::new();
    for (key, value) in configmap.data.iter().flatten() {
        hasher.update(key.as_bytes());
        hasher.update(&[0]);
        hasher.update(value.as_bytes());
        hasher.update(&[0]);
    }
    hasher.finalize().to_hex()[..16].to_string()
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
        let configmap = with_inputs(&memory, build_configmap).expect("builds");
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
        let ha = config_hash(&with_inputs(&a, build_configmap).expect("a"));
        let ha2 = config_hash(&with_inputs(&a, build_configmap).expect("a"));
        let hb = config_hash(&with_inputs(&b, build_configmap).expect("b"));
        assert_eq!(ha, ha2);
        assert_ne!(ha, hb);
    }
}
