//! Resident memory before and after a forced rebuild (issue 18): `cargo run --release -p
//! phoenix-node --example rebuild_rss -- 200000`.

use std::time::Duration;

use phoenix_node::store::{Store, StoreConfig};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let keys: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.cache_capacity = 256 << 20;
    let store = Store::open(config).expect("open");
    let value = vec![b'v'; 640];
    for i in 0..keys {
        store
            .store(format!("key-{i:010}").as_bytes(), &value, None)
            .expect("store");
    }
    store.flush().expect("flush");
    std::thread::sleep(Duration::from_secs(2));
    println!("{keys} keys: RSS before the rebuild {:.0} MiB", rss_mib());
    let report = store.rebuild().expect("rebuild");
    println!(
        "rebuild took {:.2} s: RSS right after {:.0} MiB",
        report.seconds,
        rss_mib()
    );
    for s in [1, 3, 6] {
        std::thread::sleep(Duration::from_secs(if s == 1 { 1 } else { s / 2 }));
        println!("  +{s} s: {:.0} MiB", rss_mib());
    }
    for i in 0..keys.min(50_000) {
        let _ = store.retrieve(format!("key-{:010}", (i * 7919) % keys).as_bytes());
    }
    println!("after 50k reads: {:.0} MiB", rss_mib());
}
