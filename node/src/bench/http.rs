//! `phoenix-node bench --http`: the node served in-process on loopback and driven by
//! keep-alive HTTP clients on several threads.
//!
//! - `sustained`: the engine's sustained mix (preload, then mixed operations) over HTTP,
//!   with every tenth request of each client an empty route (`GET /v1/ping`) on the same
//!   server, so the HTTP floor is measured in the same run (the `ref` columns).
//! - `durable`: concurrent stores with durable-before-acknowledge writes (group commit).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;

use super::client::Client;
use super::{BenchError, BenchOptions, Percentiles, ScenarioResult, Window, histogram, nanos};
use crate::config::{DurabilityMode, NodeConfig, NodeSettings};
use crate::service::{Node, app};
use crate::stages::Stage;
use crate::store::Store;

const WINDOWS: usize = 10;

/// A node served on 127.0.0.1 by a runtime of its own.
pub(super) struct Served {
    pub(super) url: String,
    pub(super) node: Arc<Node>,
    pub(super) runtime: tokio::runtime::Runtime,
}

/// A node with `durability` and a 256 MiB cache, served on 127.0.0.1.
pub(super) fn serve(dir: &Path, durability: DurabilityMode) -> Result<Served, BenchError> {
    let mut config = NodeConfig {
        data_dir: dir.join("db"),
        ..NodeConfig::default()
    };
    config.durability.mode = durability;
    config.cache_capacity.0 = 256 << 20;
    serve_with(config)
}

/// A node with `config`, served on 127.0.0.1.
pub(super) fn serve_with(config: NodeConfig) -> Result<Served, BenchError> {
    let store = Arc::new(Store::open(config.store_config())?);
    let node = Arc::new(
        Node::new(store, config, None).map_err(|e| BenchError::Http(format!("node: {e}")))?,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let (router, limits) = (app(Arc::clone(&node)), node.config.limits);
    // The node's own accept loop (no-delay sockets, header timeout, connection limit).
    runtime.spawn(async move {
        crate::service::accept(listener, router, limits, std::future::pending()).await
    });
    Ok(Served { url, node, runtime })
}

/// Per-window latency histograms of one client thread.
struct Windows {
    retrieve: Vec<Histogram<u64>>,
    store: Vec<Histogram<u64>>,
    ping: Vec<Histogram<u64>>,
}

impl Windows {
    fn new() -> Windows {
        let make = || (0..WINDOWS).map(|_| histogram()).collect::<Vec<_>>();
        Windows {
            retrieve: make(),
            store: make(),
            ping: make(),
        }
    }

    fn merge(&mut self, other: &Windows) {
        for i in 0..WINDOWS {
            // Histograms share bounds, so adding cannot fail.
            let _ = self.retrieve[i].add(&other.retrieve[i]);
            let _ = self.store[i].add(&other.store[i]);
            let _ = self.ping[i].add(&other.ping[i]);
        }
    }
}

/// Runs `work(t, connection)` on `concurrency` threads, each with its own keep-alive
/// connection to `url`, and merges the windows they return.
fn run_clients(
    url: &str,
    concurrency: usize,
    work: impl Fn(usize, &mut Client) -> Result<Windows, BenchError> + Sync,
) -> Result<Windows, BenchError> {
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = (0..concurrency)
            .map(|t| scope.spawn(move || work(t, &mut Client::connect(url)?)))
            .collect();
        let mut merged = Windows::new();
        for handle in handles {
            let windows = handle
                .join()
                .map_err(|_| BenchError::Http("client thread panicked".into()))??;
            merged.merge(&windows);
        }
        Ok(merged)
    })
}

/// A benchmark key (the peer bench uses the same).
pub(super) fn key(id: u64) -> String {
    format!("mem-{id:012x}")
}

/// Values of 256–1024 B, cut from one random alphanumeric block so that making a value
/// costs the client nothing measurable (sled does not compress, so repeats cost the same).
pub(super) struct Values(Vec<u8>);

impl Values {
    pub(super) fn new(seed: u64) -> Values {
        let mut rng = fastrand::Rng::with_seed(seed);
        Values((0..64 << 10).map(|_| rng.alphanumeric() as u8).collect())
    }

    pub(super) fn next(&self, rng: &mut fastrand::Rng) -> &[u8] {
        let len = rng.usize(256..=1024);
        let at = rng.usize(0..=self.0.len() - len);
        &self.0[at..at + len]
    }
}

/// The sustained mix over HTTP, with the empty route timed alongside.
pub(super) fn sustained(
    options: &BenchOptions,
    dir: &Path,
    concurrency: usize,
) -> Result<ScenarioResult, BenchError> {
    let keys = ((100_000.0 * options.scale) as u64).max(100);
    let ops = ((1_000_000.0 * options.scale) as u64).max(1000);
    let served = serve(dir, DurabilityMode::Periodic)?;
    let url = &served.url;
    let values = Values::new(options.seed);
    // Preload over HTTP too, concurrently: the bulk load.
    let next_id = AtomicU64::new(0);
    let loading = Instant::now();
    run_clients(url, concurrency, |t, client| {
        let mut rng = fastrand::Rng::with_seed(options.seed + t as u64);
        loop {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            if id >= keys {
                return Ok(Windows::new());
            }
            client.expect(
                "PUT",
                &format!("/v1/memories/{}", key(id)),
                values.next(&mut rng),
                false,
            )?;
        }
    })?;
    let bulk_rate = keys as f64 / loading.elapsed().as_secs_f64();

    let done = AtomicU64::new(0);
    let merged = run_clients(url, concurrency, |t, client| {
        let mut rng = fastrand::Rng::with_seed(options.seed ^ (1000 + t as u64));
        let mut windows = Windows::new();
        let mut own = 0u64;
        loop {
            let op = done.fetch_add(1, Ordering::Relaxed);
            if op >= ops {
                return Ok(windows);
            }
            let w = usize::try_from(op * WINDOWS as u64 / ops).unwrap_or(WINDOWS - 1);
            own += 1;
            // The live key range: ids below next_id, most of them present.
            let top = next_id.load(Ordering::Relaxed).max(1);
            let started = Instant::now();
            let slot = if own.is_multiple_of(10) {
                client.expect("GET", "/v1/ping", b"", false)?;
                &mut windows.ping[w]
            } else {
                match rng.u8(0..100) {
                    0..50 => {
                        let id = rng.u64(0..top);
                        client.expect("GET", &format!("/v1/memories/{}", key(id)), b"", true)?;
                        &mut windows.retrieve[w]
                    }
                    50..70 => {
                        let id = rng.u64(0..top);
                        client.expect(
                            "PUT",
                            &format!("/v1/memories/{}", key(id)),
                            values.next(&mut rng),
                            false,
                        )?;
                        &mut windows.store[w]
                    }
                    70..85 => {
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        client.expect(
                            "PUT",
                            &format!("/v1/memories/{}", key(id)),
                            values.next(&mut rng),
                            false,
                        )?;
                        &mut windows.store[w]
                    }
                    _ => {
                        let id = rng.u64(0..top);
                        client.expect("DELETE", &format!("/v1/memories/{}", key(id)), b"", true)?;
                        continue;
                    }
                }
            };
            slot.saturating_record(nanos(started.elapsed()));
        }
    })?;
    let windows: Vec<Window> = (0..WINDOWS)
        .map(|i| Window {
            keys: 0,
            retrieve: Percentiles::of(&merged.retrieve[i]),
            store: Percentiles::of(&merged.store[i]),
            reference: Some(Percentiles::of(&merged.ping[i])),
            probe_ratio: None,
            served_ratio: None,
        })
        .collect();
    let mut all_retrieve = histogram();
    let mut all_ping = histogram();
    for i in 0..WINDOWS {
        let _ = all_retrieve.add(&merged.retrieve[i]);
        let _ = all_ping.add(&merged.ping[i]);
    }
    let (r, p) = (Percentiles::of(&all_retrieve), Percentiles::of(&all_ping));
    crate::stages::enable(true);
    let single = single_client(url, &values, &next_id, ops / 10, options.seed);
    let stages = crate::stages::totals();
    crate::stages::enable(false);
    let single = single?;
    let engine = engine_store(
        &served.node.store,
        &values,
        &next_id,
        ops / 10,
        options.seed,
    )?;
    let store_rate = store_throughput(url, &values, &next_id, concurrency, ops / 2, options.seed)?;
    let ping_rate = ping_throughput(url, concurrency, ops / 2)?;
    let stats = served.node.store.stats()?;
    drop(served.runtime);
    Ok(ScenarioResult {
        name: "http-sustained",
        description: format!(
            "over HTTP on loopback, {concurrency} keep-alive clients: {keys} keys preloaded, then {ops} requests (every 10th per client GET /v1/ping, the ref columns; the rest 50% retrieve, 20% overwrite, 15% new, 15% delete)"
        ),
        windows,
        figures: vec![
            (
                "retrieve vs empty route".into(),
                format!(
                    "p50 {:.1} µs vs {:.1} µs → {:.2}× (target ≤ 1.5×); p99 {:.1} µs vs {:.1} µs",
                    r.p50_ns as f64 / 1e3,
                    p.p50_ns as f64 / 1e3,
                    r.p50_ns as f64 / p.p50_ns.max(1) as f64,
                    r.p99_ns as f64 / 1e3,
                    p.p99_ns as f64 / 1e3
                ),
            ),
            (
                "store vs empty route, 1 client".into(),
                format!(
                    "p50 {:.1} µs vs {:.1} µs: +{:.1} µs (target ≤ +40 µs); p99 {:.1} µs vs {:.1} µs",
                    single.0.p50_ns as f64 / 1e3,
                    single.1.p50_ns as f64 / 1e3,
                    single.0.p50_ns.saturating_sub(single.1.p50_ns) as f64 / 1e3,
                    single.0.p99_ns as f64 / 1e3,
                    single.1.p99_ns as f64 / 1e3
                ),
            ),
            (
                "a store's parts, 1 client (p50)".into(),
                format!(
                    "empty route (HTTP, routing, the response) {:.1} µs + the engine's store \
                     (validation, admission, sled insert, Merkle update, expiry index) {:.1} µs \
                     + the rest (body, key and query extraction, the write's handler) {:.1} µs \
                     = {:.1} µs",
                    single.1.p50_ns as f64 / 1e3,
                    engine.p50_ns as f64 / 1e3,
                    single
                        .0
                        .p50_ns
                        .saturating_sub(single.1.p50_ns)
                        .saturating_sub(engine.p50_ns) as f64
                        / 1e3,
                    single.0.p50_ns as f64 / 1e3
                ),
            ),
            (
                "a store's stages, 1 client (means)".into(),
                stage_breakdown(&stages, single.2, single.3),
            ),
            (
                format!("stores/s, {concurrency} clients"),
                format!(
                    "{store_rate:.0} (overwrites and new keys, 256–1024 B); the empty route \
                     {ping_rate:.0} requests/s → stores at {:.2}× its rate",
                    store_rate / ping_rate.max(1.0)
                ),
            ),
            (
                format!("bulk load, {concurrency} clients"),
                format!("{bulk_rate:.0} stores/s ({keys} new keys)"),
            ),
            ("final keys".into(), stats.keys.to_string()),
        ],
        peak_rss_bytes: super::peak_rss_bytes(),
    })
}

/// The stage breakdown of a store from the server's laps (`totals`) and the client's mean
/// round trips (store, empty route), microseconds per store.
fn stage_breakdown(totals: &[(Stage, u64, u64)], store_mean_ns: f64, ping_mean_ns: f64) -> String {
    let stores = totals
        .iter()
        .find(|t| t.0 == Stage::Server)
        .map_or(0, |t| t.2)
        .max(1) as f64;
    let us = |stage: Stage| {
        totals
            .iter()
            .find(|t| t.0 == stage)
            .map_or(0.0, |t| t.1 as f64 / stores / 1e3)
    };
    let engine: Vec<String> = Stage::ALL[4..]
        .iter()
        .map(|&stage| format!("{} {:.2}", stage.name(), us(stage)))
        .collect();
    let server = us(Stage::Server);
    let handler = us(Stage::Extract) + us(Stage::Write) + us(Stage::Response);
    format!(
        "client round trip {:.1} µs (the empty route's {:.1}) = outside the router (client, \
         kernel, hyper's parsing and writing) {:.1} + in the router {server:.1} [middleware and \
         routing {:.1}, extract {:.1}, write {:.1} (engine: {}; the rest is admission and the \
         task), response {:.1}]; {stores:.0} stores",
        store_mean_ns / 1e3,
        ping_mean_ns / 1e3,
        store_mean_ns / 1e3 - server,
        server - handler,
        us(Stage::Extract),
        us(Stage::Write),
        engine.join(", "),
        us(Stage::Response),
    )
}

/// One client alternating a store of a new key and the empty route: each one's latency
/// percentiles and means (nanoseconds).
fn single_client(
    url: &str,
    values: &Values,
    next_id: &AtomicU64,
    rounds: u64,
    seed: u64,
) -> Result<(Percentiles, Percentiles, f64, f64), BenchError> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x51);
    let mut client = Client::connect(url)?;
    let (mut stores, mut pings) = (histogram(), histogram());
    for _ in 0..rounds.max(100) {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let body = values.next(&mut rng);
        let at = Instant::now();
        client.expect("PUT", &format!("/v1/memories/{}", key(id)), body, false)?;
        stores.saturating_record(nanos(at.elapsed()));
        let at = Instant::now();
        client.expect("GET", "/v1/ping", b"", false)?;
        pings.saturating_record(nanos(at.elapsed()));
    }
    Ok((
        Percentiles::of(&stores),
        Percentiles::of(&pings),
        stores.mean(),
        pings.mean(),
    ))
}

/// The engine's own store of a new key, called directly (no HTTP): its latency.
fn engine_store(
    store: &Store,
    values: &Values,
    next_id: &AtomicU64,
    rounds: u64,
    seed: u64,
) -> Result<Percentiles, BenchError> {
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xE5);
    let mut stores = histogram();
    for _ in 0..rounds.max(100) {
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let body = values.next(&mut rng);
        let at = Instant::now();
        store.store(key(id).as_bytes(), body, None)?;
        stores.saturating_record(nanos(at.elapsed()));
    }
    Ok(Percentiles::of(&stores))
}

/// `concurrency` clients storing only (half overwrites, half new keys): stores a second.
fn store_throughput(
    url: &str,
    values: &Values,
    next_id: &AtomicU64,
    concurrency: usize,
    ops: u64,
    seed: u64,
) -> Result<f64, BenchError> {
    let done = AtomicU64::new(0);
    let started = Instant::now();
    run_clients(url, concurrency, |t, client| {
        let mut rng = fastrand::Rng::with_seed(seed ^ (2000 + t as u64));
        while done.fetch_add(1, Ordering::Relaxed) < ops {
            let top = next_id.load(Ordering::Relaxed).max(1);
            let id = if rng.bool() {
                rng.u64(0..top)
            } else {
                next_id.fetch_add(1, Ordering::Relaxed)
            };
            client.expect(
                "PUT",
                &format!("/v1/memories/{}", key(id)),
                values.next(&mut rng),
                false,
            )?;
        }
        Ok(Windows::new())
    })?;
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

/// `concurrency` clients calling the empty route: requests a second.
fn ping_throughput(url: &str, concurrency: usize, ops: u64) -> Result<f64, BenchError> {
    let done = AtomicU64::new(0);
    let started = Instant::now();
    run_clients(url, concurrency, |_, client| {
        while done.fetch_add(1, Ordering::Relaxed) < ops {
            client.expect("GET", "/v1/ping", b"", false)?;
        }
        Ok(Windows::new())
    })?;
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

/// Concurrent durable stores (group commit).
pub(super) fn durable(
    options: &BenchOptions,
    dir: &Path,
    concurrency: usize,
) -> Result<ScenarioResult, BenchError> {
    let ops = ((100_000.0 * options.scale) as u64).max(1000);
    let served = serve(dir, DurabilityMode::Sync)?;
    let url = &served.url;
    let values = Values::new(options.seed);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    let merged = run_clients(url, concurrency, |t, client| {
        let mut rng = fastrand::Rng::with_seed(options.seed + 7 * t as u64);
        let mut windows = Windows::new();
        loop {
            let op = done.fetch_add(1, Ordering::Relaxed);
            if op >= ops {
                return Ok(windows);
            }
            let w = usize::try_from(op * WINDOWS as u64 / ops).unwrap_or(WINDOWS - 1);
            let at = Instant::now();
            client.expect(
                "PUT",
                &format!("/v1/memories/{}", key(op)),
                values.next(&mut rng),
                false,
            )?;
            windows.store[w].saturating_record(nanos(at.elapsed()));
        }
    })?;
    let elapsed = started.elapsed();
    let flushes = served.node.store.durable_flushes();
    let mut all = histogram();
    for h in &merged.store {
        let _ = all.add(h);
    }
    let all = Percentiles::of(&all);
    drop(served.runtime);
    Ok(ScenarioResult {
        name: "http-durable",
        description: format!(
            "over HTTP on loopback, {concurrency} clients storing {ops} new keys, each durable before it is acknowledged"
        ),
        windows: (0..WINDOWS)
            .map(|i| Window {
                store: Percentiles::of(&merged.store[i]),
                ..Window::default()
            })
            .collect(),
        figures: vec![
            (
                "durable store".into(),
                format!(
                    "p50 {:.2} ms, p99 {:.2} ms (target p99 ≤ 5 ms)",
                    all.p50_ns as f64 / 1e6,
                    all.p99_ns as f64 / 1e6
                ),
            ),
            (
                "group commit".into(),
                format!(
                    "{ops} writes shared {flushes} flushes ({:.1} writes per flush), {:.0} writes/s",
                    ops as f64 / flushes.max(1) as f64,
                    ops as f64 / elapsed.as_secs_f64()
                ),
            ),
        ],
        peak_rss_bytes: super::peak_rss_bytes(),
    })
}
