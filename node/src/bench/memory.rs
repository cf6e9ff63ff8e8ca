//! `large-values`: where a node's memory goes with large values, and whether it comes back.
//!
//! A node served in-process on loopback (`cacheCapacity` 64 MiB, 1 MiB values allowed) and
//! driven over HTTP, as the report that found it unbounded did: 200 concurrent 1 MiB
//! stores, the same keys overwritten with 5-byte values, 800 × 1 MiB stores, then the
//! store reopened and a read pass over the 800. The process's resident memory (`VmRSS`) is
//! printed after each phase, with its peak, next to the targets:
//! - after the write bursts: within `cacheCapacity` + 64 MiB + 150 bytes per key;
//! - the read pass: below 3 × `cacheCapacity` + 100 MiB.
//!
//! Which allocator the binary uses is printed too (`--features jemalloc` or `mimalloc`
//! builds swap glibc's out), so builds can be compared side by side.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::http::{Served, serve_with};
use super::{BenchError, BenchOptions, ScenarioResult, peak_rss_bytes, reset_peak_rss};
use crate::config::NodeConfig;

const DEFAULT_CACHE: u64 = 64 << 20;
const MIB: usize = 1 << 20;

/// The cache the scenario runs with: 64 MiB, or `PHOENIX_BENCH_CACHE_MIB` to see how the
/// figures follow it.
fn cache() -> u64 {
    std::env::var("PHOENIX_BENCH_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(DEFAULT_CACHE, |mib| mib << 20)
}

fn rss() -> u64 {
    crate::service::metrics::resident_memory_bytes().unwrap_or(0)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / MIB as f64)
}

/// The allocator this build uses.
pub fn allocator() -> &'static str {
    if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else {
        "system (glibc)"
    }
}

fn serve(dir: &Path) -> Result<Served, BenchError> {
    let mut config = NodeConfig {
        data_dir: dir.join("db"),
        ..NodeConfig::default()
    };
    config.cache_capacity.0 = cache();
    config.limits.max_value_bytes = MIB;
    config.limits.max_body_bytes = MIB + 4096;
    config.disk.min_free_bytes.0 = 0;
    serve_with(config)
}

fn put(agent: &ureq::Agent, url: &str, key: &str, value: &[u8]) -> Result<(), BenchError> {
    agent
        .put(&format!("{url}/v1/memories/{key}"))
        .send_bytes(value)
        .map(drop)
        .map_err(|e| BenchError::Http(format!("store {key}: {e}")))
}

/// RSS once allocator background work (decay, purge) has had a moment.
fn settled_rss() -> u64 {
    std::thread::sleep(Duration::from_secs(2));
    rss()
}

/// Runs the scenario.
///
/// # Errors
/// The store or a request failed.
pub fn large_values(_options: &BenchOptions, dir: &Path) -> Result<ScenarioResult, BenchError> {
    let mut figures = Vec::new();
    let mut record = |name: &str, value: String| figures.push((name.to_string(), value));
    record("allocator", allocator().to_string());
    record("cacheCapacity", mib(cache()));
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(60))
        .build();
    let served = serve(dir)?;
    let url = served.url.clone();
    let start = settled_rss();
    record("RSS at start", mib(start));

    // 200 concurrent 1 MiB stores.
    reset_peak_rss();
    let value: Vec<u8> = (0..MIB).map(|i| b'a' + (i % 26) as u8).collect();
    std::thread::scope(|scope| -> Result<(), BenchError> {
        let handles: Vec<_> = (0..200)
            .map(|i| {
                let (agent, url, value) = (agent.clone(), &url, &value);
                scope.spawn(move || put(&agent, url, &format!("burst-{i:03}"), value))
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| BenchError::Http("client panicked".into()))??;
        }
        Ok(())
    })?;
    record(
        "200 concurrent 1 MiB stores: peak RSS",
        peak_rss_bytes().map_or_else(|| "-".into(), mib),
    );
    record("  RSS after", mib(settled_rss()));

    // The same keys overwritten with 5-byte values.
    for i in 0..200 {
        put(&agent, &url, &format!("burst-{i:03}"), b"small")?;
    }
    let after_overwrite = settled_rss();
    let keys = served.node.store.key_count();
    let target = cache() + (64 << 20) + 150 * keys;
    record(
        "overwritten with 5-byte values: RSS",
        format!(
            "{} (target ≤ cacheCapacity + 64 MiB + 150 B/key = {})",
            mib(after_overwrite),
            mib(target)
        ),
    );

    // 800 × 1 MiB stores.
    reset_peak_rss();
    for i in 0..800 {
        put(&agent, &url, &format!("large-{i:03}"), &value)?;
    }
    record(
        "800 × 1 MiB stores: peak RSS",
        peak_rss_bytes().map_or_else(|| "-".into(), mib),
    );
    let after_writes = settled_rss();
    let keys = served.node.store.key_count();
    record(
        "  RSS after",
        format!(
            "{} (target ≤ {})",
            mib(after_writes),
            mib(cache() + (64 << 20) + 150 * keys)
        ),
    );

    // Reopen, then read all 800.
    let Served { runtime, node, .. } = served;
    runtime.shutdown_timeout(Duration::from_secs(5));
    let store = Arc::clone(&node.store);
    drop(node);
    match Arc::try_unwrap(store) {
        Ok(store) => store.close()?,
        Err(_) => return Err(BenchError::Http("the store is still shared".into())),
    }
    let served = serve(dir)?;
    let url = served.url.clone();
    let reopened = settled_rss();
    record("reopened: RSS", mib(reopened));
    reset_peak_rss();
    for i in 0..800 {
        let response = agent
            .get(&format!("{url}/v1/memories/large-{i:03}"))
            .call()
            .map_err(|e| BenchError::Http(format!("read: {e}")))?;
        let mut body = Vec::with_capacity(MIB);
        std::io::Read::read_to_end(&mut response.into_reader(), &mut body)?;
        if body.len() != MIB {
            return Err(BenchError::Http(format!(
                "large-{i:03}: {} bytes",
                body.len()
            )));
        }
    }
    let read_peak = peak_rss_bytes().unwrap_or(0);
    record(
        "read pass over 800 × 1 MiB: peak RSS",
        format!(
            "{} (target < 3 × cacheCapacity + 100 MiB = {})",
            mib(read_peak),
            mib(3 * cache() + (100 << 20))
        ),
    );
    record("  RSS after", mib(settled_rss()));
    drop(served);
    Ok(ScenarioResult {
        name: "large-values",
        description: format!(
            "memory with 1 MiB values over HTTP, cacheCapacity 64 MiB, allocator {}",
            allocator()
        ),
        windows: Vec::new(),
        figures,
        peak_rss_bytes: peak_rss_bytes(),
    })
}
