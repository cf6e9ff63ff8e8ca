//! Experiment: how much an idle node's probe ratio moves with the machine's state, and
//! whether timing a fixed in-memory reference in the same ticks (and dividing by its ratio)
//! would take that noise out without hiding real degradation.
//!
//! `cargo run --release -p phoenix-node --example probe_noise -- noise [TICK_MS] [quiet]`:
//! 100,000 keys, the default probe (32 samples a tick, 30-tick windows); windows while the
//! machine is quiet, with one and with two threads hammering a 64 MiB buffer.
//! `... -- pressure`: the cache-pressure growth of the engine bench (16 MiB cache, 10,000 →
//! 300,000 keys of 256–1,024 bytes, 500 random retrieves between ticks).
//!
//! Columns: `raw` is the probe's ratio; `refA` the ratio of 16 lookups in a private
//! 16,384-entry `BTreeMap` (pointer chasing, like a tree lookup); `refB` of hashing 1 KiB
//! (CPU only); `raw/refA` and `raw/refB` the normalised ratios. Results and the decision are
//! in `docs/bench/probe-noise.txt`.

use std::collections::BTreeMap;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use phoenix_node::probe::{Probe, ProbeConfig};
use phoenix_node::store::{Store, StoreConfig};

/// The reference workloads, timed beside the probe's samples.
struct Reference {
    map: BTreeMap<u64, u64>,
    bytes: Vec<u8>,
    rng: fastrand::Rng,
    tree_ns: Vec<u64>,
    hash_ns: Vec<u64>,
}

const SPREAD: u64 = 0x9E37_79B9_7F4A_7C15;

impl Reference {
    fn new() -> Reference {
        let mut rng = fastrand::Rng::with_seed(7);
        Reference {
            map: (0..16_384u64)
                .map(|i| (i.wrapping_mul(SPREAD), i))
                .collect(),
            bytes: (0..1024).map(|_| rng.u8(..)).collect(),
            rng,
            tree_ns: Vec::new(),
            hash_ns: Vec::new(),
        }
    }

    fn tick(&mut self, samples: usize) {
        for _ in 0..samples {
            let started = Instant::now();
            for _ in 0..16 {
                let key = self.rng.u64(0..16_384).wrapping_mul(SPREAD);
                std::hint::black_box(self.map.get(&key));
            }
            self.tree_ns.push(nanos(started.elapsed()));
            let started = Instant::now();
            std::hint::black_box(blake3::hash(std::hint::black_box(&self.bytes)));
            self.hash_ns.push(nanos(started.elapsed()));
        }
    }

    /// Medians of what was timed since the last call.
    fn take(&mut self) -> (f64, f64) {
        let medians = (median(&mut self.tree_ns), median(&mut self.hash_ns));
        self.tree_ns.clear();
        self.hash_ns.clear();
        medians
    }
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}

fn median(values: &mut [u64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mid = values.len() / 2;
    *values.select_nth_unstable(mid).1 as f64
}

fn open(dir: &std::path::Path, cache: u64) -> Result<Store, Box<dyn Error>> {
    let mut config = StoreConfig::new(dir.join("db"));
    config.cache_capacity = cache;
    Ok(Store::open(config)?)
}

fn key(i: u64) -> String {
    format!("mem-{i:012x}")
}

/// One probe tick and the reference beside it.
fn tick(store: &Store, probe: &mut Probe, reference: &mut Reference) -> Result<(), Box<dyn Error>> {
    probe.tick(store)?;
    reference.tick(probe.config().samples_per_tick);
    Ok(())
}

fn noise(tick_ms: u64, quiet_only: bool) -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), 256 << 20)?;
    for i in 0..100_000u64 {
        let value = vec![(i % 251) as u8; 100 + (i % 400) as usize];
        store.store(key(i).as_bytes(), &value, None)?;
    }
    let mut probe = Probe::load(&store, ProbeConfig::default())?;
    let window = probe.config().window_ticks;
    let mut reference = Reference::new();
    // Hogs: random read-modify-writes over 64 MiB each; `mode` says how many run.
    let mode = Arc::new(AtomicU8::new(0));
    for id in 0..2u8 {
        let mode = Arc::clone(&mode);
        std::thread::spawn(move || {
            let mut buffer = vec![0u64; 8 << 20];
            let mut rng = fastrand::Rng::with_seed(u64::from(id));
            loop {
                if mode.load(Ordering::Relaxed) > id {
                    for _ in 0..10_000 {
                        let i = rng.usize(0..buffer.len());
                        buffer[i] = buffer[i].wrapping_add(1);
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        });
    }
    let pause = Duration::from_millis(tick_ms);
    while probe.baseline().is_none() {
        tick(&store, &mut probe, &mut reference)?;
        std::thread::sleep(pause);
    }
    // The references' baselines: the next window, quiet, as the probe's was.
    reference.take();
    for _ in 0..window {
        tick(&store, &mut probe, &mut reference)?;
        std::thread::sleep(pause);
    }
    let (tree_base, hash_base) = reference.take();
    let baseline = probe.baseline().map_or(f64::NAN, |b| b.latency_ns);
    println!(
        "tick {tick_ms} ms; baseline: probe {baseline:.0} ns, refA {tree_base:.0} ns, refB {hash_base:.0} ns"
    );
    println!(
        "{:<8} {:>7} {:>7} {:>7} {:>9} {:>9}",
        "phase", "raw", "refA", "refB", "raw/refA", "raw/refB"
    );
    let phases: &[(&str, u8)] = if quiet_only {
        &[("quiet", 0); 3]
    } else {
        &[
            ("quiet", 0),
            ("1 hog", 1),
            ("2 hogs", 2),
            ("quiet", 0),
            ("1 hog", 1),
            ("quiet", 0),
        ]
    };
    for &(phase, hogs) in phases {
        mode.store(hogs, Ordering::Relaxed);
        for _ in 0..3 {
            for _ in 0..window {
                tick(&store, &mut probe, &mut reference)?;
                std::thread::sleep(pause);
            }
            let raw = probe.snapshot().ratio.unwrap_or(f64::NAN);
            let (tree, hash) = reference.take();
            let (tree, hash) = (tree / tree_base, hash / hash_base);
            println!(
                "{phase:<8} {raw:>7.2} {tree:>7.2} {hash:>7.2} {:>9.2} {:>9.2}",
                raw / tree,
                raw / hash
            );
        }
    }
    Ok(())
}

fn pressure() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    let store = open(dir.path(), 16 << 20)?;
    let mut rng = fastrand::Rng::with_seed(3);
    let value = |i: u64| vec![(i % 251) as u8; 256 + (i % 768) as usize];
    let mut keys = 10_000u64;
    for i in 0..keys {
        store.store(key(i).as_bytes(), &value(i), None)?;
    }
    let mut probe = Probe::load(&store, ProbeConfig::default())?;
    let window = probe.config().window_ticks;
    let mut reference = Reference::new();
    let reads = |store: &Store, keys: u64, rng: &mut fastrand::Rng| -> Result<(), Box<dyn Error>> {
        for _ in 0..500 {
            std::hint::black_box(store.retrieve(key(rng.u64(0..keys)).as_bytes())?);
        }
        Ok(())
    };
    while probe.baseline().is_none() || probe.settling() {
        reads(&store, keys, &mut rng)?;
        tick(&store, &mut probe, &mut reference)?;
    }
    reference.take();
    for _ in 0..window {
        reads(&store, keys, &mut rng)?;
        tick(&store, &mut probe, &mut reference)?;
    }
    let (tree_base, _) = reference.take();
    let baseline = probe.baseline().map_or(f64::NAN, |b| b.latency_ns);
    println!("cache pressure; baseline: probe {baseline:.0} ns, refA {tree_base:.0} ns");
    println!("{:>8} {:>7} {:>7} {:>9}", "keys", "raw", "refA", "raw/refA");
    for _ in 0..10 {
        for _ in 0..29_000 {
            store.store(key(keys).as_bytes(), &value(keys), None)?;
            keys += 1;
        }
        for _ in 0..window {
            reads(&store, keys, &mut rng)?;
            tick(&store, &mut probe, &mut reference)?;
        }
        let raw = probe.snapshot().ratio.unwrap_or(f64::NAN);
        let tree = reference.take().0 / tree_base;
        println!("{keys:>8} {raw:>7.2} {tree:>7.2} {:>9.2}", raw / tree);
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("pressure") => pressure(),
        Some("noise") => {
            let tick_ms = match args.next() {
                Some(text) => text.parse().map_err(|e| format!("TICK_MS {text:?}: {e}"))?,
                None => 20,
            };
            noise(tick_ms, args.next().as_deref() == Some("quiet"))
        }
        _ => Err("usage: probe_noise noise [TICK_MS] [quiet] | probe_noise pressure".into()),
    }
}
