//! `phoenix-node bench --replicated`: three node processes of this binary on loopback (one
//! Raft group) beside a single node process, driven by the same keep-alive clients in the
//! same run; etcd beside them when it is installed (Debian's `etcd-server`).
//!
//! - `replicated-reads`: single-node retrieve vs local (replica) and linearizable reads.
//! - `replicated-durable`: durable stores, single node vs the group (writes per fsync),
//!   and etcd's puts and linearizable gets over its HTTP gateway.
//! - `replicated-sustained`: a million mixed requests through all three nodes, retrieve
//!   p50 per window.
//! - `replicated-recovery`: time to elect after the leader is killed; time for a follower
//!   100k entries behind to catch up, from the log and from a snapshot.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hdrhistogram::Histogram;

use super::{BenchError, BenchOptions, Percentiles, ScenarioResult, Window, histogram, nanos};

const ADMIN: &str = "bench-admin-token";
const WINDOWS: usize = 10;

fn http_error(e: impl std::fmt::Display) -> BenchError {
    BenchError::Http(e.to_string())
}

fn free_port() -> Result<u16, BenchError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Node processes of this binary, each on its own port and data directory.
struct Processes {
    dir: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    agent: ureq::Agent,
}

impl Processes {
    /// `n` nodes; with `replicated`, one group of them (`snapshot_every` entries between
    /// snapshots).
    fn start(
        dir: &Path,
        n: usize,
        replicated: bool,
        sync: bool,
        snapshot_every: u64,
    ) -> Result<Processes, BenchError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("admin"), ADMIN)?;
        std::fs::write(dir.join("peer"), "bench-peer-token")?;
        let ports = (0..n).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
        let peers: String = ports
            .iter()
            .enumerate()
            .map(|(id, port)| format!("  - {{id: {id}, url: \"http://127.0.0.1:{port}\"}}\n"))
            .collect();
        for (id, port) in ports.iter().enumerate() {
            let mut config = format!(
                "listen: 127.0.0.1:{port}\ndataDir: {}\nadminTokenFile: {}\ncacheCapacity: 256Mi\n\
                 durability: {{mode: {}}}\nprobe: {{intervalMs: 1000}}\nscrub: {{keysPerSecond: 0}}\n\
                 limits: {{maxConcurrentRequests: 4096}}\n",
                dir.join(format!("data-{id}")).display(),
                dir.join("admin").display(),
                if sync { "Sync" } else { "Periodic" },
            );
            if replicated {
                config.push_str(&format!(
                    "replication:\n  id: {id}\n  peerTokenFile: {}\n  bootstrap: true\n  \
                     snapshotEveryEntries: {snapshot_every}\n  peers:\n{peers}",
                    dir.join("peer").display()
                ));
            }
            std::fs::write(dir.join(format!("node-{id}.yaml")), config)?;
        }
        let mut processes = Processes {
            dir: dir.to_path_buf(),
            ports,
            children: (0..n).map(|_| None).collect(),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .max_idle_connections_per_host(64)
                .build(),
        };
        for id in 0..n {
            processes.spawn(id)?;
        }
        for id in 0..n {
            processes.wait_serving(id)?;
        }
        if replicated {
            processes.leader(Duration::from_secs(30))?;
        }
        Ok(processes)
    }

    fn url(&self, id: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[id])
    }

    fn spawn(&mut self, id: usize) -> Result<(), BenchError> {
        let log = std::fs::File::create(self.dir.join(format!("node-{id}.log")))?;
        let child = Command::new(std::env::current_exe()?)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.join(format!("node-{id}.yaml")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.children[id] = Some(child);
        Ok(())
    }

    fn wait_serving(&self, id: usize) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self
                .agent
                .get(&format!("{}/healthz", self.url(id)))
                .call()
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(BenchError::Http(format!("node {id} did not start")))
    }

    fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.children[id].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, id: usize, signal: &str) -> Result<(), BenchError> {
        let pid = self.children[id]
            .as_ref()
            .map(Child::id)
            .ok_or_else(|| http_error(format!("node {id} is not running")))?;
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        Ok(())
    }

    fn status(&self, id: usize) -> Option<serde_json::Value> {
        self.agent
            .get(&format!("{}/v1/admin/raft", self.url(id)))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .timeout(Duration::from_millis(500))
            .call()
            .ok()?
            .into_json()
            .ok()
    }

    /// The leader every running node agrees on.
    fn leader(&self, within: Duration) -> Result<usize, BenchError> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let running: Vec<usize> = (0..self.ports.len())
                .filter(|i| self.children[*i].is_some())
                .collect();
            let leaders: Vec<Option<u64>> = running
                .iter()
                .map(|id| self.status(*id).and_then(|s| s["leader"].as_u64()))
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && running.contains(&(*leader as usize))
            {
                return Ok(*leader as usize);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(http_error("no leader agreed in time"))
    }

    fn metric(&self, id: usize, name: &str) -> Option<f64> {
        let text = self
            .agent
            .get(&format!("{}/metrics", self.url(id)))
            .call()
            .ok()?
            .into_string()
            .ok()?;
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for id in 0..self.children.len() {
            if let Some(child) = &self.children[id] {
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
            }
            self.kill(id);
        }
    }
}

fn key(id: u64) -> String {
    format!("mem-{id:012x}")
}

fn value(rng: &mut fastrand::Rng) -> String {
    let len = rng.usize(256..=1024);
    (0..len).map(|_| rng.alphanumeric()).collect()
}

fn ok(result: Result<ureq::Response, ureq::Error>) -> Result<(), BenchError> {
    match result {
        Ok(response) => {
            let _ = response.into_string();
            Ok(())
        }
        Err(ureq::Error::Status(404, _)) => Ok(()),
        Err(e) => Err(http_error(format!("request failed: {e}"))),
    }
}

/// Runs `op(client, i)` `total` times over `clients` threads; the latency histogram and
/// the elapsed time.
fn drive(
    clients: usize,
    total: u64,
    op: impl Fn(usize, u64, &mut fastrand::Rng) -> Result<(), BenchError> + Sync,
) -> Result<(Histogram<u64>, Duration), BenchError> {
    let next = AtomicU64::new(0);
    let started = Instant::now();
    let merged = std::thread::scope(|scope| {
        let (op, next) = (&op, &next);
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(t as u64 * 7919 + 1);
                    let mut h = histogram();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return Ok::<_, BenchError>(h);
                        }
                        let at = Instant::now();
                        op(t, i, &mut rng)?;
                        h.saturating_record(nanos(at.elapsed()));
                    }
                })
            })
            .collect();
        let mut merged = histogram();
        for handle in handles {
            let h = handle
                .join()
                .map_err(|_| http_error("client thread panicked"))??;
            let _ = merged.add(&h);
        }
        Ok::<_, BenchError>(merged)
    })?;
    Ok((merged, started.elapsed()))
}

fn us(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1e3)
}

fn describe(h: &Histogram<u64>, elapsed: Duration) -> String {
    let p = Percentiles::of(h);
    format!(
        "p50 {}, p99 {}, {:.0}/s",
        us(p.p50_ns),
        us(p.p99_ns),
        p.count as f64 / elapsed.as_secs_f64()
    )
}

fn ratio(a: &Histogram<u64>, b: &Histogram<u64>) -> f64 {
    a.value_at_quantile(0.5) as f64 / b.value_at_quantile(0.5).max(1) as f64
}

fn preload(p: &Processes, node: usize, keys: u64, clients: usize) -> Result<(), BenchError> {
    let url = p.url(node);
    drive(clients, keys, |_, i, rng| {
        ok(p.agent
            .put(&format!("{url}/v1/memories/{}", key(i)))
            .send_string(&value(rng)))
    })?;
    Ok(())
}

/// Reads: a single node's HTTP retrieve beside the group's local and linearizable reads.
pub(super) fn reads(
    options: &BenchOptions,
    dir: &Path,
    clients: usize,
) -> Result<ScenarioResult, BenchError> {
    let keys = ((20_000.0 * options.scale) as u64).max(100);
    let reads = ((100_000.0 * options.scale) as u64).max(1000);
    let single = Processes::start(&dir.join("single"), 1, false, true, 0)?;
    let group = Processes::start(&dir.join("group"), 3, true, true, 1_000_000)?;
    let leader = group.leader(Duration::from_secs(10))?;
    let follower = (leader + 1) % 3;
    preload(&single, 0, keys, clients)?;
    preload(&group, leader, keys, clients)?;
    let read = |p: &Processes, node: usize, query: &'static str| {
        let url = p.url(node);
        drive(clients, reads, move |_, _, rng| {
            ok(p.agent
                .get(&format!(
                    "{url}/v1/memories/{}{query}",
                    key(rng.u64(0..keys))
                ))
                .call())
        })
    };
    // Interleaved rounds so that machine noise falls on every variant alike.
    let mut sets: Vec<(Histogram<u64>, Duration)> =
        (0..5).map(|_| (histogram(), Duration::ZERO)).collect();
    for _round in 0..3 {
        let runs = [
            read(&single, 0, "")?,
            read(&group, follower, "?consistency=local")?,
            read(&group, leader, "?consistency=local")?,
            read(&group, leader, "")?,
            read(&group, follower, "")?,
        ];
        for (set, (h, t)) in sets.iter_mut().zip(runs) {
            let _ = set.0.add(&h);
            set.1 += t;
        }
    }
    let [single_h, local_f, local_l, lin_l, lin_f] = [0, 1, 2, 3, 4].map(|i| &sets[i]);
    let figures = vec![
        (
            "single-node retrieve".into(),
            describe(&single_h.0, single_h.1),
        ),
        (
            "local read, follower".into(),
            format!(
                "{} → {:.2}× single (target ≤ 1.1×)",
                describe(&local_f.0, local_f.1),
                ratio(&local_f.0, &single_h.0)
            ),
        ),
        (
            "local read, leader".into(),
            format!(
                "{} → {:.2}× single",
                describe(&local_l.0, local_l.1),
                ratio(&local_l.0, &single_h.0)
            ),
        ),
        (
            "linearizable read, leader".into(),
            format!(
                "{} → {:.2}× single (target ≤ 2×)",
                describe(&lin_l.0, lin_l.1),
                ratio(&lin_l.0, &single_h.0)
            ),
        ),
        (
            "linearizable read, follower (read index from the leader)".into(),
            format!(
                "{} → {:.2}× single",
                describe(&lin_f.0, lin_f.1),
                ratio(&lin_f.0, &single_h.0)
            ),
        ),
    ];
    Ok(ScenarioResult {
        name: "replicated-reads",
        description: format!(
            "{clients} keep-alive clients, {keys} keys of 256–1024 B, 3 rounds of {reads} reads per variant, interleaved; single node and 3-node group as processes on loopback"
        ),
        windows: Vec::new(),
        figures,
        peak_rss_bytes: None,
    })
}

/// A single etcd on loopback, when the binary is installed (stopped on drop).
struct Etcd {
    _child: super::KillOnDrop,
    url: String,
}

fn start_etcd(dir: &Path) -> Result<Option<Etcd>, BenchError> {
    let Some(binary) = super::which("etcd") else {
        return Ok(None);
    };
    let (client, peer) = (free_port()?, free_port()?);
    let url = format!("http://127.0.0.1:{client}");
    let child = Command::new(binary)
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-advertise-peer-urls",
            &format!("http://127.0.0.1:{peer}"),
            "--initial-cluster",
            &format!("bench=http://127.0.0.1:{peer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let etcd = Etcd {
        _child: super::KillOnDrop(child),
        url,
    };
    let agent = ureq::agent();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if agent.get(&format!("{}/health", etcd.url)).call().is_ok() {
            return Ok(Some(etcd));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(http_error("etcd did not become healthy"))
}

/// Durable stores: single node vs group; etcd's puts and gets beside them.
pub(super) fn durable(
    options: &BenchOptions,
    dir: &Path,
    clients: usize,
) -> Result<ScenarioResult, BenchError> {
    let writes = ((20_000.0 * options.scale) as u64).max(500);
    let single = Processes::start(&dir.join("single"), 1, false, true, 0)?;
    let group = Processes::start(&dir.join("group"), 3, true, true, 1_000_000)?;
    let leader = group.leader(Duration::from_secs(10))?;
    let put = |p: &Processes, node: usize, offset: u64| {
        let url = p.url(node);
        drive(clients, writes, move |_, i, rng| {
            ok(p.agent
                .put(&format!("{url}/v1/memories/{}", key(offset + i)))
                .send_string(&value(rng)))
        })
    };
    let flushes_before = group
        .metric(leader, "phoenix_node_raft_log_flushes_total")
        .unwrap_or(0.0);
    let appends_before = group
        .metric(leader, "phoenix_node_raft_log_flushed_appends_total")
        .unwrap_or(0.0);
    let (single_h, single_t) = put(&single, 0, 0)?;
    let (group_h, group_t) = put(&group, leader, 0)?;
    let flushes = group
        .metric(leader, "phoenix_node_raft_log_flushes_total")
        .unwrap_or(0.0)
        - flushes_before;
    let appends = group
        .metric(leader, "phoenix_node_raft_log_flushed_appends_total")
        .unwrap_or(0.0)
        - appends_before;
    let group_rate = writes as f64 / group_t.as_secs_f64();
    let mut figures = vec![
        (
            "single-node durable store".into(),
            describe(&single_h, single_t),
        ),
        (
            "replicated durable store (leader)".into(),
            format!(
                "{} → p50 {:.2}× single (target ≤ 3×)",
                describe(&group_h, group_t),
                ratio(&group_h, &single_h)
            ),
        ),
        (
            "leader's log group commit".into(),
            format!(
                "{writes} writes in {flushes:.0} fsyncs ({:.1} writes per fsync; {appends:.0} appends)",
                writes as f64 / flushes.max(1.0)
            ),
        ),
    ];
    // Linearizable reads of the group, for the etcd comparison.
    let url = group.url(leader);
    let (read_h, read_t) = drive(clients, writes, |_, _, rng| {
        ok(group
            .agent
            .get(&format!("{url}/v1/memories/{}", key(rng.u64(0..writes))))
            .call())
    })?;
    let read_rate = writes as f64 / read_t.as_secs_f64();
    figures.push((
        "replicated linearizable read (leader)".into(),
        describe(&read_h, read_t),
    ));
    match start_etcd(dir)? {
        None => figures.push((
            "etcd".into(),
            "not installed (apt-get install etcd-server): comparison skipped".into(),
        )),
        Some(etcd) => {
            let agent = ureq::AgentBuilder::new()
                .max_idle_connections_per_host(64)
                .build();
            let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let (put_h, put_t) = drive(clients, writes, |_, i, rng| {
                let body = serde_json::json!({"key": b64(&key(i)), "value": b64(&value(rng))});
                ok(agent
                    .post(&format!("{}/v3/kv/put", etcd.url))
                    .send_json(body))
            })?;
            let (get_h, get_t) = drive(clients, writes, |_, _, rng| {
                let body = serde_json::json!({"key": b64(&key(rng.u64(0..writes)))});
                ok(agent
                    .post(&format!("{}/v3/kv/range", etcd.url))
                    .send_json(body))
            })?;
            let put_rate = writes as f64 / put_t.as_secs_f64();
            let get_rate = writes as f64 / get_t.as_secs_f64();
            figures.push((
                "etcd put (HTTP gateway, one member)".into(),
                describe(&put_h, put_t),
            ));
            figures.push(("etcd linearizable get".into(), describe(&get_h, get_t)));
            figures.push((
                "durable store throughput vs etcd".into(),
                format!(
                    "{group_rate:.0}/s vs {put_rate:.0}/s → {:.2}× (target ≥ 2×)",
                    group_rate / put_rate
                ),
            ));
            figures.push((
                "linearizable read throughput vs etcd".into(),
                format!(
                    "{read_rate:.0}/s vs {get_rate:.0}/s → {:.2}× (target ≥ 5×)",
                    read_rate / get_rate
                ),
            ));
        }
    }
    Ok(ScenarioResult {
        name: "replicated-durable",
        description: format!(
            "{clients} clients, {writes} new keys of 256–1024 B each durable before acknowledged (durability Sync; the group: committed by a majority with the log fsynced)"
        ),
        windows: Vec::new(),
        figures,
        peak_rss_bytes: None,
    })
}

/// A million mixed requests through all three nodes (each client sticks to one node).
pub(super) fn sustained(
    options: &BenchOptions,
    dir: &Path,
    clients: usize,
) -> Result<ScenarioResult, BenchError> {
    let keys = ((100_000.0 * options.scale) as u64).max(100);
    let ops = ((1_000_000.0 * options.scale) as u64).max(1000);
    let group = Processes::start(&dir.join("group"), 3, true, false, 50_000)?;
    let leader = group.leader(Duration::from_secs(10))?;
    preload(&group, leader, keys, clients)?;
    let next_id = AtomicU64::new(keys);
    let done = AtomicU64::new(0);
    let urls: Vec<String> = (0..3).map(|i| group.url(i)).collect();
    let windows = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|t| {
                let (urls, next_id, done, agent) = (&urls, &next_id, &done, &group.agent);
                scope.spawn(move || {
                    let url = &urls[t % urls.len()];
                    let mut rng = fastrand::Rng::with_seed(1000 + t as u64);
                    let mut retrieve: Vec<Histogram<u64>> =
                        (0..WINDOWS).map(|_| histogram()).collect();
                    let mut store: Vec<Histogram<u64>> =
                        (0..WINDOWS).map(|_| histogram()).collect();
                    loop {
                        let op = done.fetch_add(1, Ordering::Relaxed);
                        if op >= ops {
                            return Ok::<_, BenchError>((retrieve, store));
                        }
                        let w = usize::try_from(op * WINDOWS as u64 / ops).unwrap_or(WINDOWS - 1);
                        let top = next_id.load(Ordering::Relaxed);
                        let at = Instant::now();
                        match rng.u8(0..100) {
                            0..50 => {
                                ok(agent
                                    .get(&format!("{url}/v1/memories/{}", key(rng.u64(0..top))))
                                    .call())?;
                                retrieve[w].saturating_record(nanos(at.elapsed()));
                            }
                            50..70 => {
                                ok(agent
                                    .put(&format!("{url}/v1/memories/{}", key(rng.u64(0..top))))
                                    .send_string(&value(&mut rng)))?;
                                store[w].saturating_record(nanos(at.elapsed()));
                            }
                            70..85 => {
                                let id = next_id.fetch_add(1, Ordering::Relaxed);
                                ok(agent
                                    .put(&format!("{url}/v1/memories/{}", key(id)))
                                    .send_string(&value(&mut rng)))?;
                                store[w].saturating_record(nanos(at.elapsed()));
                            }
                            _ => ok(agent
                                .delete(&format!("{url}/v1/memories/{}", key(rng.u64(0..top))))
                                .call())?,
                        }
                    }
                })
            })
            .collect();
        let mut retrieve: Vec<Histogram<u64>> = (0..WINDOWS).map(|_| histogram()).collect();
        let mut store: Vec<Histogram<u64>> = (0..WINDOWS).map(|_| histogram()).collect();
        for handle in handles {
            let (r, s) = handle
                .join()
                .map_err(|_| http_error("client thread panicked"))??;
            for i in 0..WINDOWS {
                let _ = retrieve[i].add(&r[i]);
                let _ = store[i].add(&s[i]);
            }
        }
        Ok::<_, BenchError>(
            (0..WINDOWS)
                .map(|i| Window {
                    retrieve: Percentiles::of(&retrieve[i]),
                    store: Percentiles::of(&store[i]),
                    ..Window::default()
                })
                .collect::<Vec<_>>(),
        )
    })?;
    // Then a forced cleanup of every node (followers first, the leader last), and its disk
    // against its logical bytes with the Raft log counted.
    let mut order: Vec<usize> = (0..3).filter(|id| *id != leader).collect();
    order.push(leader);
    let mut disk = Vec::new();
    for id in order {
        group
            .agent
            .post(&format!(
                "{}/v1/admin/cleanup?forceRebuild=true",
                group.url(id)
            ))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .timeout(Duration::from_secs(600))
            .call()
            .map_err(http_error)?;
        let logical = group
            .metric(id, "phoenix_node_logical_bytes")
            .unwrap_or(0.0);
        let bytes = group.metric(id, "phoenix_node_disk_bytes").unwrap_or(0.0);
        disk.push(format!(
            "node {id}: {:.1} MiB on disk (store + Raft log) / {:.1} MiB logical = {:.2}×",
            bytes / 1048576.0,
            logical / 1048576.0,
            bytes / logical.max(1.0)
        ));
    }
    let roots: Vec<String> = (0..3)
        .filter_map(|i| {
            group
                .agent
                .get(&format!("{}/v1/root?consistency=local", group.url(i)))
                .call()
                .ok()?
                .into_string()
                .ok()
        })
        .collect();
    Ok(ScenarioResult {
        name: "replicated-sustained",
        description: format!(
            "3-node group (durability Periodic), {clients} clients each on one node: {keys} keys preloaded, then {ops} requests (50% linearizable retrieve, 20% overwrite, 15% new, 15% delete); target retrieve p50 last/first ≤ 1.2×"
        ),
        windows,
        figures: vec![
            ("roots at the end".into(), roots.join(" | ")),
            (
                "disk after a forced cleanup of each node (target ≤ 2× logical)".into(),
                disk.join("; "),
            ),
        ],
        peak_rss_bytes: None,
    })
}

/// Election after a leader kill, and a follower's catch-up from the log and a snapshot.
pub(super) fn recovery(
    options: &BenchOptions,
    dir: &Path,
    clients: usize,
) -> Result<ScenarioResult, BenchError> {
    let behind = ((100_000.0 * options.scale) as u64).max(1000);
    let mut figures = Vec::new();
    let mut group = Processes::start(&dir.join("elect"), 3, true, true, 1_000_000)?;
    let mut elections = Vec::new();
    for _ in 0..5 {
        let leader = group.leader(Duration::from_secs(10))?;
        let killed = Instant::now();
        group.kill(leader);
        group.leader(Duration::from_secs(30))?;
        elections.push(killed.elapsed());
        group.spawn(leader)?;
        group.wait_serving(leader)?;
    }
    drop(group);
    figures.push((
        "new leader after SIGKILL of the leader (5 runs; default election timeout 500–750 ms)"
            .into(),
        elections
            .iter()
            .map(|d| format!("{} ms", d.as_millis()))
            .collect::<Vec<_>>()
            .join(", "),
    ));
    for (how, snapshot_every) in [
        ("from the log", 10_000_000),
        ("from a snapshot", behind / 10),
    ] {
        let group = Processes::start(
            &dir.join(format!("catchup-{snapshot_every}")),
            3,
            true,
            false,
            snapshot_every,
        )?;
        let leader = group.leader(Duration::from_secs(10))?;
        let follower = (leader + 1) % 3;
        group.signal(follower, "-STOP")?;
        preload(&group, leader, behind, clients)?;
        let last = group
            .status(leader)
            .and_then(|s| s["lastLogIndex"].as_u64())
            .ok_or_else(|| http_error("no leader status"))?;
        let resumed = Instant::now();
        group.signal(follower, "-CONT")?;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let applied = group
                .status(follower)
                .and_then(|s| s["appliedIndex"].as_u64());
            if applied >= Some(last) {
                break;
            }
            if Instant::now() > deadline {
                return Err(http_error(format!("the follower did not catch up {how}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = resumed.elapsed();
        let installed = group
            .metric(follower, "phoenix_node_raft_snapshots_installed_total")
            .unwrap_or(0.0);
        figures.push((
            format!("follower {behind} entries behind caught up {how}"),
            format!("{} ms (snapshots installed: {installed})", took.as_millis()),
        ));
    }
    Ok(ScenarioResult {
        name: "replicated-recovery",
        description: "3-node groups on loopback: leader kills, and a follower stopped (SIGSTOP) while the others take writes".into(),
        windows: Vec::new(),
        figures,
        peak_rss_bytes: None,
    })
}
