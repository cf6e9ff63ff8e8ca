//! The node's configuration: the file format is the contract in
//! [`phoenix_node_api::config`] (re-exported here); this module turns it into the settings
//! of the store and the probe.

use std::time::Duration;

pub use phoenix_node_api::config::*;

use crate::probe::ProbeConfig;
use crate::store::{Durability, Limits, RebuildPolicy, StoreConfig};

/// The node's own settings from its configuration file.
pub trait NodeSettings {
    /// The store configuration this node config describes.
    fn store_config(&self) -> StoreConfig;
    /// The probe configuration.
    fn probe_config(&self) -> ProbeConfig;
    /// The served-latency tracker's settings (the probe's window and settling).
    fn served_config(&self) -> crate::served::ServedConfig;
}

impl NodeSettings for NodeConfig {
    fn store_config(&self) -> StoreConfig {
        let mut store = StoreConfig::new(&self.data_dir);
        store.cache_capacity = self.cache_capacity.0;
        store.durability = match self.durability.mode {
            DurabilityMode::Periodic => Durability::Periodic {
                flush_every_ms: self.durability.flush_every_ms,
            },
            DurabilityMode::Sync => Durability::Sync,
        };
        store.min_free_bytes = self.disk.min_free_bytes.0;
        store.stall_after = Duration::from_millis(self.durability.stall_timeout_ms);
        store.default_ttl =
            (self.default_ttl_seconds > 0).then(|| Duration::from_secs(self.default_ttl_seconds));
        store.limits = Limits {
            max_key_bytes: self.limits.max_key_bytes,
            max_value_bytes: self.limits.max_value_bytes,
        };
        store.rebuild = RebuildPolicy {
            disk_ratio: self.rebuild.disk_ratio,
            min_disk_bytes: self.rebuild.min_disk_bytes,
            free_space_margin_bytes: self.rebuild.free_space_margin_bytes,
        };
        store
    }

    fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            samples_per_tick: self.probe.samples_per_tick,
            window_ticks: self.probe.window_ticks,
            min_samples: self.probe.min_samples,
            settle_ticks: self.probe.settle_ticks,
            ..ProbeConfig::default()
        }
    }

    fn served_config(&self) -> crate::served::ServedConfig {
        crate::served::ServedConfig {
            window_ticks: self.probe.window_ticks,
            settle_ticks: self.probe.settle_ticks,
            ..crate::served::ServedConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_becomes_the_store_and_probe_settings_and_defaults_agree() {
        let config = NodeConfig::from_yaml(
            "dataDir: /tmp/x\ncacheCapacity: 64Mi\ndurability: {mode: sync}\ndefaultTtlSeconds: 60\n",
        )
        .expect("valid");
        let store = config.store_config();
        assert_eq!(store.durability, Durability::Sync);
        assert_eq!(store.cache_capacity, 64 << 20);
        assert_eq!(store.default_ttl, Some(Duration::from_secs(60)));
        // The file's defaults are the engine's defaults.
        let defaults = NodeConfig::default();
        assert_eq!(defaults.store_config().rebuild, RebuildPolicy::default());
        let probe = ProbeConfig::default();
        let from_file = defaults.probe_config();
        assert_eq!(
            (
                from_file.samples_per_tick,
                from_file.window_ticks,
                from_file.min_samples,
                from_file.settle_ticks
            ),
            (
                probe.samples_per_tick,
                probe.window_ticks,
                probe.min_samples,
                probe.settle_ticks
            )
        );
    }
}
