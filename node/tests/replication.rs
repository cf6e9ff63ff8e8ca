//! Replication with real `phoenix-node` processes on loopback: one store across three
//! nodes, the leader killed (SIGKILL) or paused (SIGSTOP) under a write load, a lost
//! volume rejoining from a snapshot, a rolling forced cleanup under load. The clients
//! follow the documented retry rule (a 503 or a refused connection: try the next node); a
//! write counts as acknowledged only on a 2xx.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const ADMIN: &str = "replication-admin-token";
const PEER: &str = "replication-peer-token";
const ELECTION_MS: u64 = 300;

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_phoenix-node")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(timeout).build()
}

/// Three (or more) node processes forming one group.
struct Cluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn start(n: usize, extra: &str) -> Cluster {
        let mut cluster = Cluster::configure(n, extra);
        for id in 0..n {
            cluster.spawn(id);
        }
        for id in 0..n {
            cluster.wait_serving(id);
        }
        cluster
    }

    /// Writes the configurations; starts nothing.
    fn configure(n: usize, extra: &str) -> Cluster {
        Cluster::configure_ports(n, extra, false)
    }

    /// As [`Cluster::configure`]; with `peer_ports`, Raft is served on a port of its own.
    fn configure_ports(n: usize, extra: &str, peer_ports: bool) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let peer_ports: Vec<Option<u16>> = (0..n).map(|_| peer_ports.then(free_port)).collect();
        std::fs::write(dir.path().join("admin"), ADMIN).expect("admin token");
        std::fs::write(dir.path().join("peer"), PEER).expect("peer token");
        let peers: String = ports
            .iter()
            .zip(&peer_ports)
            .enumerate()
            .map(|(id, (port, peer))| {
                let port = peer.unwrap_or(*port);
                format!("  - {{id: {id}, url: \"http://127.0.0.1:{port}\"}}\n")
            })
            .collect();
        // Sync unless the test says otherwise.
        let durability = if extra.contains("durability:") {
            ""
        } else {
            "durability: {mode: Sync}\n"
        };
        for (id, port) in ports.iter().enumerate() {
            let listen =
                peer_ports[id].map_or(String::new(), |p| format!("  listen: 127.0.0.1:{p}\n"));
            let config = format!(
                "listen: 127.0.0.1:{port}\ndataDir: {data}\nadminTokenFile: {admin}\n\
                 cacheCapacity: 16Mi\nshutdownTimeoutSeconds: 5\n\
                 {durability}{extra}\
                 replication:\n  id: {id}\n  peerTokenFile: {peer}\n  bootstrap: true\n  \
                 electionTimeoutMs: {ELECTION_MS}\n  heartbeatMs: 60\n  writeWaitMs: 3000\n  \
                 snapshotEveryEntries: 200\n{listen}  peers:\n{peers}",
                data = dir.path().join(format!("data-{id}")).display(),
                admin = dir.path().join("admin").display(),
                peer = dir.path().join("peer").display(),
            );
            std::fs::write(dir.path().join(format!("node-{id}.yaml")), config).expect("config");
        }
        Cluster {
            dir,
            ports,
            children: (0..n).map(|_| None).collect(),
        }
    }

    /// Node `id`'s configuration without its replication section: the same port and data
    /// directory, as a single node.
    fn single_config(&self, id: usize) -> PathBuf {
        let single = self.dir.path().join(format!("single-{id}.yaml"));
        let replicated = std::fs::read_to_string(self.dir.path().join(format!("node-{id}.yaml")))
            .expect("config");
        let (plain, _) = replicated
            .split_once("replication:")
            .expect("replication section");
        std::fs::write(&single, plain).expect("single config");
        single
    }

    fn url(&self, id: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[id])
    }

    fn urls(&self) -> Vec<String> {
        (0..self.ports.len()).map(|id| self.url(id)).collect()
    }

    fn data(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("data-{id}"))
    }

    fn spawn(&mut self, id: usize) {
        let log =
            std::fs::File::create(self.dir.path().join(format!("node-{id}.log"))).expect("log");
        let child = Command::new(binary())
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join(format!("node-{id}.yaml")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start phoenix-node serve");
        self.children[id] = Some(child);
    }

    fn wait_serving(&self, id: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if agent(Duration::from_secs(1))
                .get(&format!("{}/healthz", self.url(id)))
                .call()
                .is_ok()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {id} did not start: {}", self.log(id));
    }

    fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node-{id}.log"))).unwrap_or_default()
    }

    fn pid(&self, id: usize) -> u32 {
        self.children[id].as_ref().expect("running").id()
    }

    fn signal(&self, id: usize, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid(id).to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} node {id}");
    }

    fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.children[id].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn status(&self, id: usize) -> Option<Value> {
        agent(Duration::from_secs(1))
            .get(&format!("{}/v1/admin/raft", self.url(id)))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .call()
            .ok()?
            .into_json()
            .ok()
    }

    /// The node every one of `among` names as leader, itself among them and leading.
    fn wait_leader(&self, among: &[usize], within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let leaders: Vec<Option<u64>> = among
                .iter()
                .map(|id| self.status(*id).and_then(|s| s["leader"].as_u64()))
                .collect();
            if let Some(Some(leader)) = leaders.first()
                && leaders.iter().all(|l| *l == Some(*leader))
                && among.contains(&(*leader as usize))
                && self
                    .status(*leader as usize)
                    .is_some_and(|s| s["role"] == "leader")
            {
                return *leader as usize;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no leader agreed among {among:?} within {within:?}");
    }

    fn root(&self, id: usize) -> Option<(String, u64, Option<u64>)> {
        let root: Value = agent(Duration::from_secs(2))
            .get(&format!("{}/v1/root?consistency=local", self.url(id)))
            .call()
            .ok()?
            .into_json()
            .ok()?;
        Some((
            root["root"].as_str()?.to_owned(),
            root["keys"].as_u64()?,
            root["appliedIndex"].as_u64(),
        ))
    }

    /// Waits until every node of `among` reports the same root at the same applied index.
    fn converged(&self, among: &[usize], within: Duration) -> (String, u64, Option<u64>) {
        let deadline = Instant::now() + within;
        let mut last = Vec::new();
        while Instant::now() < deadline {
            last = among.iter().map(|id| self.root(*id)).collect::<Vec<_>>();
            if let Some(Some(first)) = last.first()
                && last.iter().all(|r| r.as_ref() == Some(first))
            {
                return first.clone();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nodes {among:?} did not converge: {last:?}");
    }

    fn metric(&self, id: usize, name: &str) -> Option<f64> {
        let text = agent(Duration::from_secs(2))
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

    fn admin_post(&self, id: usize, path: &str, body: &str) -> Result<Value, String> {
        agent(Duration::from_secs(60))
            .post(&format!("{}{path}", self.url(id)))
            .set("Authorization", &format!("Bearer {ADMIN}"))
            .set("Content-Type", "application/json")
            .send_string(body)
            .map_err(|e| match e {
                ureq::Error::Status(code, r) => {
                    format!("{code}: {}", r.into_string().unwrap_or_default())
                }
                other => other.to_string(),
            })?
            .into_json()
            .map_err(|e| e.to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for id in 0..self.children.len() {
            if let Some(child) = &self.children[id] {
                // A stopped process must be continued before it can die cleanly.
                let _ = Command::new("kill")
                    .args(["-CONT", &child.id().to_string()])
                    .status();
            }
            self.kill(id);
        }
    }
}

/// `phoenix-node serve` on a single-node configuration (output discarded).
fn serve_single(config: &std::path::Path) -> Child {
    Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start a single node")
}

/// What became of one write.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 2xx: the group has it.
    Acknowledged,
    /// No node took it before the deadline: it may or may not have taken effect.
    Unknown(String),
}

/// A client that follows the documented rule: stay with a node while it answers; on a
/// refused connection, a timeout or a 503, try the next node (pausing briefly after a full
/// round); a 2xx is an acknowledgement.
struct Client {
    urls: Vec<String>,
    next: usize,
    agent: ureq::Agent,
    retries: u64,
}

impl Client {
    fn new(urls: Vec<String>, first: usize) -> Client {
        Client {
            next: first % urls.len(),
            urls,
            agent: agent(Duration::from_secs(2)),
            retries: 0,
        }
    }

    fn put(&mut self, key: &str, value: &str, within: Duration) -> Outcome {
        let deadline = Instant::now() + within;
        let mut last = String::new();
        let mut tried = 0;
        while Instant::now() < deadline {
            let url = &self.urls[self.next];
            match self
                .agent
                .put(&format!("{url}/v1/memories/{key}"))
                .send_string(value)
            {
                Ok(_) => return Outcome::Acknowledged,
                Err(ureq::Error::Status(503, response)) => {
                    last = format!(
                        "503 from {url}: {}",
                        response.into_string().unwrap_or_default()
                    );
                }
                Err(ureq::Error::Status(code, response)) => {
                    panic!(
                        "a write was refused with {code}: {}",
                        response.into_string().unwrap_or_default()
                    )
                }
                Err(error) => last = format!("{url}: {error}"),
            }
            self.retries += 1;
            self.next = (self.next + 1) % self.urls.len();
            tried += 1;
            if tried % self.urls.len() == 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Outcome::Unknown(last)
    }
}

/// Writers putting unique keys through every node until stopped; what they saw.
struct Load {
    stop: Arc<AtomicBool>,
    acknowledged: Arc<Mutex<BTreeMap<String, String>>>,
    unknown: Arc<Mutex<Vec<(String, String)>>>,
    retries: Arc<AtomicU64>,
    writers: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(urls: &[String], writers: usize, per_write: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(BTreeMap::new()));
        let unknown = Arc::new(Mutex::new(Vec::new()));
        let retries = Arc::new(AtomicU64::new(0));
        let writers = (0..writers)
            .map(|w| {
                let (stop, acknowledged, unknown, retries) = (
                    Arc::clone(&stop),
                    Arc::clone(&acknowledged),
                    Arc::clone(&unknown),
                    Arc::clone(&retries),
                );
                let mut client = Client::new(urls.to_vec(), w);
                std::thread::spawn(move || {
                    let mut i = 0u64;
                    while !stop.load(Ordering::SeqCst) {
                        let (key, value) = (format!("w{w}-{i}"), format!("value-{w}-{i}"));
                        match client.put(&key, &value, per_write) {
                            Outcome::Acknowledged => {
                                acknowledged.lock().expect("lock").insert(key, value);
                            }
                            Outcome::Unknown(why) => unknown.lock().expect("lock").push((key, why)),
                        }
                        i += 1;
                    }
                    retries.fetch_add(client.retries, Ordering::SeqCst);
                })
            })
            .collect();
        Load {
            stop,
            acknowledged,
            unknown,
            retries,
            writers,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().expect("lock").len()
    }

    fn wait_for(&self, more: usize, within: Duration) {
        let target = self.acknowledged() + more;
        let deadline = Instant::now() + within;
        while self.acknowledged() < target {
            assert!(
                Instant::now() < deadline,
                "the load made no progress: {} acknowledged",
                self.acknowledged()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stop(self) -> (BTreeMap<String, String>, Vec<(String, String)>, u64) {
        self.stop.store(true, Ordering::SeqCst);
        for writer in self.writers {
            writer.join().expect("writer");
        }
        let acknowledged = std::mem::take(&mut *self.acknowledged.lock().expect("lock"));
        let unknown = std::mem::take(&mut *self.unknown.lock().expect("lock"));
        (acknowledged, unknown, self.retries.load(Ordering::SeqCst))
    }
}

/// Every acknowledged write reads back (linearizably) with its value from each of `nodes`.
fn assert_all_present(cluster: &Cluster, nodes: &[usize], acknowledged: &BTreeMap<String, String>) {
    let agent = agent(Duration::from_secs(10));
    for id in nodes {
        let mut missing = Vec::new();
        for (key, value) in acknowledged {
            let read = agent
                .get(&format!(
                    "{}/v1/memories/{key}?consistency=local",
                    cluster.url(*id)
                ))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok());
            if read.as_deref() != Some(value.as_str()) {
                missing.push((key.clone(), read));
            }
        }
        assert!(
            missing.is_empty(),
            "node {id} lost {} of {} acknowledged writes, e.g. {:?}",
            missing.len(),
            acknowledged.len(),
            &missing[..missing.len().min(5)]
        );
    }
}

#[test]
fn three_nodes_are_one_store_with_linearizable_and_local_reads() {
    let cluster = Cluster::start(3, "");
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let agent = agent(Duration::from_secs(10));
    // A write through a follower is forwarded; every node then reads it (linearizable).
    let stored = agent
        .put(&format!("{}/v1/memories/shared", cluster.url(follower)))
        .send_string("one store")
        .expect("store through a follower");
    assert_eq!(stored.status(), 201);
    let index: u64 = stored
        .header("x-phoenix-applied-index")
        .and_then(|v| v.parse().ok())
        .expect("the write answers with its log index");
    for id in 0..3 {
        let read = agent
            .get(&format!("{}/v1/memories/shared", cluster.url(id)))
            .call()
            .expect("linearizable read");
        let seen: u64 = read
            .header("x-phoenix-applied-index")
            .and_then(|v| v.parse().ok())
            .expect("applied index header");
        assert!(
            seen >= index,
            "node {id} read at index {seen} < write index {index}"
        );
        assert_eq!(read.into_string().expect("body"), "one store");
    }
    assert!(cluster.metric(follower, "phoenix_node_raft_forwarded_requests_total") >= Some(1.0));
    // A delete through the other follower, then equal roots at equal indexes everywhere.
    let other = (leader + 2) % 3;
    let deleted = agent
        .delete(&format!("{}/v1/memories/shared", cluster.url(other)))
        .call()
        .expect("delete through a follower");
    assert_eq!(deleted.status(), 204);
    for i in 0..20 {
        agent
            .put(&format!("{}/v1/memories/k{i}", cluster.url(i % 3)))
            .send_string(&format!("v{i}"))
            .expect("store");
    }
    let (root, keys, applied) = cluster.converged(&[0, 1, 2], Duration::from_secs(10));
    assert_eq!(keys, 20);
    assert!(applied.is_some());
    println!("3 nodes converged: root {root} over {keys} keys at index {applied:?}");
    // A proof from a follower carries the applied index and verifies.
    let proof: Value = agent
        .get(&format!("{}/v1/proof/k3", cluster.url(follower)))
        .call()
        .expect("proof")
        .into_json()
        .expect("json");
    assert!(proof["appliedIndex"].as_u64().is_some(), "{proof}");
    // Raft RPCs without the peer token are refused.
    let refused = agent
        .post(&format!("{}/v1/raft/vote", cluster.url(leader)))
        .send_bytes(b"x");
    assert!(
        matches!(refused, Err(ureq::Error::Status(401, _))),
        "{refused:?}"
    );
    let wrong = agent
        .post(&format!("{}/v1/raft/append", cluster.url(leader)))
        .set("x-phoenix-peer-token", "wrong")
        .send_bytes(b"x");
    assert!(
        matches!(wrong, Err(ureq::Error::Status(401, _))),
        "{wrong:?}"
    );
    // Bad consistency values are a clear 400.
    let bad = agent
        .get(&format!(
            "{}/v1/memories/k1?consistency=eventual",
            cluster.url(leader)
        ))
        .call();
    assert!(matches!(bad, Err(ureq::Error::Status(400, _))), "{bad:?}");
}

#[test]
fn sigkill_of_the_leader_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, "");
    let urls = cluster.urls();
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let load = Load::start(&urls, 4, Duration::from_secs(20));
    load.wait_for(200, Duration::from_secs(30));
    let killed_at = Instant::now();
    cluster.kill(leader);
    let survivors: Vec<usize> = (0..3).filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&survivors, Duration::from_secs(20));
    let elected_in = killed_at.elapsed();
    println!(
        "leader {leader} killed; node {new_leader} leads after {elected_in:?} (election timeout {ELECTION_MS}–{} ms)",
        ELECTION_MS * 3 / 2
    );
    load.wait_for(200, Duration::from_secs(30));
    cluster.spawn(leader);
    cluster.wait_serving(leader);
    load.wait_for(100, Duration::from_secs(30));
    let (acknowledged, unknown, retries) = load.stop();
    println!(
        "{} writes acknowledged, {} unknown, {retries} retries by the clients",
        acknowledged.len(),
        unknown.len()
    );
    assert!(
        unknown.is_empty(),
        "writes with no answer within 20 s: {unknown:?}"
    );
    let (root, keys, applied) = cluster.converged(&[0, 1, 2], Duration::from_secs(30));
    println!("converged after the restart: {keys} keys, root {root}, index {applied:?}");
    assert_all_present(&cluster, &[0, 1, 2], &acknowledged);
    assert_eq!(
        keys,
        acknowledged.len() as u64,
        "every key is an acknowledged write"
    );
}

/// A follower whose leader's process is gone cannot reach it, so the write never reached
/// the leader: the follower waits for the next leader (within the write wait) instead of
/// answering 503 at once (which a client must treat as an unknown outcome).
#[test]
fn a_write_to_a_follower_whose_leader_is_gone_waits_for_the_next_leader() {
    let mut cluster = Cluster::start(3, "");
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    cluster.kill(leader);
    let started = Instant::now();
    let answer = agent(Duration::from_secs(10))
        .put(&format!(
            "{}/v1/memories/during-the-failover",
            cluster.url(follower)
        ))
        .send_string("kept");
    let answer = answer.map(|r| r.status()).map_err(|e| match e {
        ureq::Error::Status(code, r) => format!("{code}: {}", r.into_string().unwrap_or_default()),
        other => other.to_string(),
    });
    println!("answered {answer:?} after {:?}", started.elapsed());
    assert_eq!(answer, Ok(201));
    let survivors: Vec<usize> = (0..3).filter(|id| *id != leader).collect();
    cluster.converged(&survivors, Duration::from_secs(10));
    let acknowledged = BTreeMap::from([("during-the-failover".to_string(), "kept".to_string())]);
    assert_all_present(&cluster, &survivors, &acknowledged);
}

/// With a peer port, the client port does not serve Raft (a NetworkPolicy can then keep
/// clients off it), and the group works through the peer ports: a write to a follower's
/// client port is forwarded to the leader's peer port.
#[test]
fn with_a_peer_port_raft_is_served_there_only() {
    let mut cluster = Cluster::configure_ports(3, "", true);
    for id in 0..3 {
        cluster.spawn(id);
    }
    for id in 0..3 {
        cluster.wait_serving(id);
    }
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let agent = agent(Duration::from_secs(5));
    let refused = agent
        .post(&format!("{}/v1/raft/vote", cluster.url(follower)))
        .set("x-phoenix-peer-token", PEER)
        .send_string("");
    assert!(
        matches!(refused, Err(ureq::Error::Status(404, _))),
        "the client port serves no Raft route: {refused:?}"
    );
    let mut client = Client::new(vec![cluster.url(follower)], 0);
    let mut acknowledged = BTreeMap::new();
    for i in 0..10 {
        let key = format!("peer-port-{i}");
        assert!(matches!(
            client.put(&key, &key, Duration::from_secs(5)),
            Outcome::Acknowledged
        ));
        acknowledged.insert(key.clone(), key);
    }
    cluster.converged(&[0, 1, 2], Duration::from_secs(20));
    assert_all_present(&cluster, &[0, 1, 2], &acknowledged);
}

/// The memory's `durability: Periodic` governs its store, never the Raft log: an entry a
/// node counts toward a commit is on its disk. Found in the sandbox: with Periodic the
/// leader acknowledged writes held only in its log's memory; killed, it came back without
/// them, won an election with the follower that had not received them, and the writes
/// were gone (and the follower that had them diverged).
#[test]
fn a_leader_killed_before_its_periodic_flush_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, "durability: {mode: Periodic, flushEveryMs: 60000}\n");
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let followers: Vec<usize> = (0..3).filter(|id| *id != leader).collect();
    let (has, lacks) = (followers[0], followers[1]);
    // Commits by the leader and `has` only.
    cluster.signal(lacks, "-STOP");
    let mut client = Client::new(vec![cluster.url(leader)], 0);
    let mut acknowledged = BTreeMap::new();
    for i in 0..20 {
        let key = format!("periodic-{i}");
        if matches!(
            client.put(&key, &key, Duration::from_secs(5)),
            Outcome::Acknowledged
        ) {
            acknowledged.insert(key.clone(), key);
        }
    }
    assert_eq!(acknowledged.len(), 20, "every write acknowledged");
    // The leader dies before any flush; the one follower holding the writes pauses; the
    // restarted leader and the follower that never saw them could elect each other.
    cluster.kill(leader);
    cluster.signal(has, "-STOP");
    cluster.signal(lacks, "-CONT");
    cluster.spawn(leader);
    cluster.wait_serving(leader);
    let new_leader = cluster.wait_leader(&[leader, lacks], Duration::from_secs(20));
    println!("node {new_leader} leads while node {has} (which holds the writes) is paused");
    cluster.signal(has, "-CONT");
    cluster.converged(&[0, 1, 2], Duration::from_secs(30));
    assert_all_present(&cluster, &[0, 1, 2], &acknowledged);
}

#[test]
fn a_paused_leader_steps_down_and_nothing_is_acknowledged_twice_or_lost() {
    let cluster = Cluster::start(3, "");
    let urls = cluster.urls();
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let load = Load::start(&urls, 3, Duration::from_secs(30));
    load.wait_for(100, Duration::from_secs(30));
    // Writes sent to the paused leader itself while it is stopped.
    let paused_url = cluster.url(leader);
    cluster.signal(leader, "-STOP");
    let stale_writes = std::thread::spawn(move || {
        let agent = agent(Duration::from_secs(15));
        (0..3)
            .map(|i| {
                let key = format!("paused-{i}");
                let answer = agent
                    .put(&format!("{paused_url}/v1/memories/{key}"))
                    .set("x-phoenix-forwarded-by", "test")
                    .send_string("sent to a paused leader");
                (key, answer.map(|r| r.status()).map_err(|e| e.to_string()))
            })
            .collect::<Vec<_>>()
    });
    let others: Vec<usize> = (0..3).filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_leader(&others, Duration::from_secs(20));
    println!("leader {leader} paused; node {new_leader} took over");
    load.wait_for(100, Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(10).saturating_sub(Duration::from_secs(2)));
    cluster.signal(leader, "-CONT");
    // It steps down: it follows the new leader within a few election timeouts.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = cluster.status(leader);
        if status
            .as_ref()
            .is_some_and(|s| s["role"] != "leader" && s["leader"].as_u64().is_some())
        {
            println!("the resumed node stepped down: {status:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the resumed node did not step down: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    load.wait_for(50, Duration::from_secs(30));
    let (acknowledged, unknown, _) = load.stop();
    assert!(unknown.is_empty(), "{unknown:?}");
    let stale = stale_writes.join().expect("stale writer");
    let (_, keys, _) = cluster.converged(&[0, 1, 2], Duration::from_secs(30));
    assert_all_present(&cluster, &[0, 1, 2], &acknowledged);
    // A write the paused leader acknowledged must be in the store; one it did not may be.
    let agent = agent(Duration::from_secs(5));
    let mut stale_present = 0;
    for (key, answer) in &stale {
        let present = agent
            .get(&format!("{}/v1/memories/{key}", cluster.url(new_leader)))
            .call()
            .is_ok();
        stale_present += u64::from(present);
        if matches!(answer, Ok(200 | 201)) {
            assert!(
                present,
                "{key} was acknowledged by the paused leader and is gone"
            );
        }
    }
    println!("writes sent to the paused leader: {stale:?}");
    assert_eq!(keys, acknowledged.len() as u64 + stale_present);
}

#[test]
fn a_follower_with_a_lost_volume_rejoins_from_a_snapshot() {
    let mut cluster = Cluster::start(3, "");
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let follower = (leader + 1) % 3;
    let agent = agent(Duration::from_secs(10));
    let mut acknowledged = BTreeMap::new();
    for i in 0..600 {
        let (key, value) = (format!("k{i}"), format!("value {i} {}", "x".repeat(i % 50)));
        agent
            .put(&format!("{}/v1/memories/{key}", cluster.url(leader)))
            .send_string(&value)
            .expect("store");
        acknowledged.insert(key, value);
    }
    cluster.converged(&[0, 1, 2], Duration::from_secs(20));
    // The log has been compacted past the start (snapshotEveryEntries is 200).
    cluster.kill(follower);
    std::fs::remove_dir_all(cluster.data(follower)).expect("lose the volume");
    cluster.spawn(follower);
    cluster.wait_serving(follower);
    let started = Instant::now();
    let (root, keys, applied) = cluster.converged(&[0, 1, 2], Duration::from_secs(30));
    println!(
        "node {follower} rejoined with an empty volume in {:?}: {keys} keys, root {root}, index {applied:?}",
        started.elapsed()
    );
    assert_eq!(keys, 600);
    assert!(
        cluster.metric(follower, "phoenix_node_raft_snapshots_installed_total") >= Some(1.0),
        "the rejoined node installed a snapshot"
    );
    assert_all_present(&cluster, &[follower], &acknowledged);
}

#[test]
fn a_rolling_forced_cleanup_under_load_fails_no_request_and_loses_nothing() {
    let cluster = Cluster::start(3, "");
    let urls = cluster.urls();
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let load = Load::start(&urls, 4, Duration::from_secs(20));
    load.wait_for(200, Duration::from_secs(30));
    // `phoenix-node cleanup`, as the CronJob runs it: followers first, leadership moved
    // away before the leader is cleaned, each node caught up before the next.
    let mut command = Command::new(binary());
    command
        .arg("cleanup")
        .arg("--token-file")
        .arg(cluster.dir.path().join("admin"))
        .arg("--force-rebuild");
    for url in &urls {
        command.arg("--node").arg(url);
    }
    let output = command.output().expect("run phoenix-node cleanup");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    println!("{printed}");
    assert!(output.status.success(), "cleanup failed: {printed}");
    let lines: Vec<&str> = printed.lines().collect();
    let leader_url = cluster.url(leader);
    let cleaned: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("cleaned in"))
        .copied()
        .collect();
    assert_eq!(cleaned.len(), 3, "{printed}");
    assert!(
        cleaned[2].starts_with(&leader_url),
        "the leader is cleaned last: {printed}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&leader_url) && l.contains("leadership moved")),
        "{printed}"
    );
    assert!(printed.contains("rebuilt true"), "{printed}");
    assert_ne!(
        cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20)),
        leader
    );
    load.wait_for(50, Duration::from_secs(30));
    let (acknowledged, unknown, retries) = load.stop();
    println!(
        "{} acknowledged during the rolling cleanup, {retries} retries",
        acknowledged.len()
    );
    assert!(
        unknown.is_empty(),
        "requests that failed for good: {unknown:?}"
    );
    let (_, keys, _) = cluster.converged(&[0, 1, 2], Duration::from_secs(30));
    assert_eq!(keys, acknowledged.len() as u64);
    assert_all_present(&cluster, &[0, 1, 2], &acknowledged);
}

/// One key's history, checked by stateright's linearizability tester against a register.
type History = stateright::semantics::LinearizabilityTester<
    usize,
    stateright::semantics::register::Register<Option<u64>>,
>;

fn new_history() -> History {
    History::new(stateright::semantics::register::Register(None))
}

#[test]
fn the_checker_catches_a_stale_read() {
    use stateright::semantics::ConsistencyTester;
    use stateright::semantics::register::{RegisterOp, RegisterRet};
    // write(1) completes, then a read that began afterwards sees nothing: not linearizable.
    let mut history = new_history();
    history
        .on_invoke(0, RegisterOp::Write(Some(1)))
        .expect("invoke");
    history.on_return(0, RegisterRet::WriteOk).expect("return");
    history.on_invoke(1, RegisterOp::Read).expect("invoke");
    history
        .on_return(1, RegisterRet::ReadOk(None))
        .expect("return");
    assert!(!history.is_consistent());
    // The same read overlapping the write is fine.
    let mut history = new_history();
    history
        .on_invoke(0, RegisterOp::Write(Some(1)))
        .expect("invoke");
    history.on_invoke(1, RegisterOp::Read).expect("invoke");
    history
        .on_return(1, RegisterRet::ReadOk(None))
        .expect("return");
    history.on_return(0, RegisterRet::WriteOk).expect("return");
    assert!(history.is_consistent());
}

#[test]
fn a_concurrent_history_through_all_nodes_under_faults_is_linearizable() {
    use stateright::semantics::ConsistencyTester;
    use stateright::semantics::register::{RegisterOp, RegisterRet};
    const KEYS: usize = 8;
    const CLIENTS: usize = 12;
    let mut cluster = Cluster::start(3, "");
    let urls = cluster.urls();
    cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    let histories: Arc<Vec<Mutex<History>>> =
        Arc::new((0..KEYS).map(|_| Mutex::new(new_history())).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let alive = Arc::new(AtomicU64::new(CLIENTS as u64));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (histories, stop, completed) = (
                Arc::clone(&histories),
                Arc::clone(&stop),
                Arc::clone(&completed),
            );
            let urls = urls.clone();
            let alive = Arc::clone(&alive);
            std::thread::spawn(move || {
                let mut node = client % urls.len();
                let agent = agent(Duration::from_secs(3));
                let mut rng = fastrand::Rng::with_seed(client as u64);
                let mut written = 0u64;
                let mut unknown = Vec::new();
                // The checker's client id: a client whose write's outcome is unknown leaves
                // that operation in flight for good and goes on as a new client.
                let mut id = client;
                while !stop.load(Ordering::SeqCst) {
                    let key = rng.usize(..KEYS);
                    let write = rng.bool();
                    let value = ((client as u64) << 32) | written;
                    let op = if write {
                        written += 1;
                        RegisterOp::Write(Some(value))
                    } else {
                        RegisterOp::Read
                    };
                    histories[key]
                        .lock()
                        .expect("lock")
                        .on_invoke(id, op)
                        .expect("invoke");
                    // Retries that cannot make one operation take effect twice: a read is
                    // retried on any failure (it changes nothing); a write only when its
                    // connection was refused (it never reached a node). Any other failure
                    // of a write leaves its outcome unknown.
                    let deadline = Instant::now() + Duration::from_secs(10);
                    let answer = loop {
                        let url = &urls[node];
                        let attempt = if write {
                            agent
                                .put(&format!("{url}/v1/memories/lin-{key}"))
                                .send_string(&value.to_string())
                                .map(|_| RegisterRet::WriteOk)
                        } else {
                            match agent.get(&format!("{url}/v1/memories/lin-{key}")).call() {
                                Ok(r) => Ok(RegisterRet::ReadOk(
                                    r.into_string().ok().and_then(|v| v.parse().ok()),
                                )),
                                Err(ureq::Error::Status(404, _)) => Ok(RegisterRet::ReadOk(None)),
                                Err(e) => Err(e),
                            }
                        };
                        let retry = match &attempt {
                            Ok(_) => false,
                            Err(ureq::Error::Transport(t)) if write => {
                                t.kind() == ureq::ErrorKind::ConnectionFailed
                            }
                            Err(_) => !write,
                        };
                        if !retry || Instant::now() > deadline {
                            break attempt;
                        }
                        node = (node + 1) % urls.len();
                        std::thread::sleep(Duration::from_millis(20));
                    };
                    match answer {
                        Ok(ret) => {
                            histories[key]
                                .lock()
                                .expect("lock")
                                .on_return(id, ret)
                                .expect("return");
                            completed.fetch_add(1, Ordering::SeqCst);
                        }
                        // The outcome is unknown: the operation stays in flight (it may or
                        // may not have taken effect) and this client stops.
                        Err(ureq::Error::Status(code, response)) => {
                            unknown.push(format!(
                                "{code}: {}",
                                response.into_string().unwrap_or_default()
                            ));
                            id += CLIENTS;
                        }
                        Err(error) => {
                            unknown.push(error.to_string());
                            id += CLIENTS;
                        }
                    }
                }
                alive.fetch_sub(1, Ordering::SeqCst);
                unknown
            })
        })
        .collect();
    let progress = |n: u64| {
        let target = completed.load(Ordering::SeqCst) + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while completed.load(Ordering::SeqCst) < target
            && alive.load(Ordering::SeqCst) > 0
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    progress(150);
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    cluster.kill(leader);
    progress(150);
    cluster.spawn(leader);
    cluster.wait_serving(leader);
    let follower = (cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20)) + 1) % 3;
    cluster.signal(follower, "-STOP");
    progress(100);
    cluster.signal(follower, "-CONT");
    progress(150);
    stop.store(true, Ordering::SeqCst);
    let unknown: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client"))
        .collect();
    let total = completed.load(Ordering::SeqCst);
    println!(
        "{total} operations completed; {} writes left with an unknown outcome (in flight for \
         the checker): {unknown:?}",
        unknown.len()
    );
    assert!(total >= 300, "too few operations to judge: {total}");
    let checking = Instant::now();
    std::thread::scope(|scope| {
        for (key, history) in histories.iter().enumerate() {
            scope.spawn(move || {
                let history = history.lock().expect("lock");
                assert!(
                    history.is_consistent(),
                    "the history of key lin-{key} ({} operations) is not linearizable: {history:?}",
                    history.len()
                );
            });
        }
    });
    println!("histories checked in {:?}", checking.elapsed());
}

#[test]
fn a_single_node_upgraded_to_three_keeps_its_memories_and_shares_them() {
    let mut cluster = Cluster::configure(3, "");
    // Node 0 first runs alone, without replication, on the same data directory.
    let single = cluster.single_config(0);
    let child = serve_single(&single);
    cluster.children[0] = Some(child);
    cluster.wait_serving(0);
    let agent = agent(Duration::from_secs(10));
    for i in 0..50 {
        agent
            .put(&format!("{}/v1/memories/old-{i}", cluster.url(0)))
            .send_string(&format!("written alone {i}"))
            .expect("store on the single node");
    }
    cluster.signal(0, "-TERM");
    if let Some(mut child) = cluster.children[0].take() {
        child.wait().expect("the single node stops");
    }
    // The same directory, now the lowest id of a three-node group.
    for id in 0..3 {
        cluster.spawn(id);
    }
    for id in 0..3 {
        cluster.wait_serving(id);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let voters = cluster.status(0).map(|s| s["voters"].clone());
        if voters == Some(serde_json::json!([0, 1, 2])) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not grow to three voters: {voters:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent
        .put(&format!("{}/v1/memories/new", cluster.url(2)))
        .send_string("written replicated")
        .expect("store through the group");
    let (_, keys, _) = cluster.converged(&[0, 1, 2], Duration::from_secs(30));
    assert_eq!(keys, 51);
    for id in 0..3 {
        let read = agent
            .get(&format!(
                "{}/v1/memories/old-7?consistency=local",
                cluster.url(id)
            ))
            .call()
            .expect("an old memory on every node")
            .into_string()
            .expect("body");
        assert_eq!(read, "written alone 7");
    }
}

#[test]
fn a_node_holding_unreplicated_memories_refuses_to_join_someone_elses_group() {
    let mut cluster = Cluster::configure(3, "");
    let single = cluster.single_config(1);
    let mut child = serve_single(&single);
    cluster.children[1] = None;
    let url = cluster.url(1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while agent(Duration::from_secs(1))
        .get(&format!("{url}/healthz"))
        .call()
        .is_err()
    {
        assert!(Instant::now() < deadline, "the single node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent(Duration::from_secs(5))
        .put(&format!("{url}/v1/memories/precious"))
        .send_string("must not be dropped")
        .expect("store");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().expect("stops");
    // Node 1 is not the group's initializer: it refuses to start, touching nothing.
    let output = Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(cluster.dir.path().join("node-1.yaml"))
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("written without replication"), "{stderr}");
    // Its memory is still there when it runs alone again.
    let mut child = serve_single(&single);
    let deadline = Instant::now() + Duration::from_secs(20);
    let read = loop {
        if let Ok(r) = agent(Duration::from_secs(1))
            .get(&format!("{url}/v1/memories/precious"))
            .call()
        {
            break r.into_string().expect("body");
        }
        assert!(
            Instant::now() < deadline,
            "the single node did not serve again"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(read, "must not be dropped");
}

#[test]
fn membership_is_changed_through_idempotent_admin_calls() {
    let mut cluster = Cluster::configure(4, "");
    for id in 0..4 {
        let path = cluster.dir.path().join(format!("node-{id}.yaml"));
        let config = std::fs::read_to_string(&path).expect("config");
        std::fs::write(&path, config.replace("bootstrap: true", "bootstrap: false"))
            .expect("config");
        cluster.spawn(id);
    }
    for id in 0..4 {
        cluster.wait_serving(id);
    }
    // Not initialized: writes are refused with a clear 503.
    let refused = agent(Duration::from_secs(10))
        .put(&format!("{}/v1/memories/early", cluster.url(0)))
        .send_string("x");
    match refused {
        Err(ureq::Error::Status(503, r)) => {
            let body = r.into_string().unwrap_or_default();
            assert!(body.contains("not been initialized"), "{body}");
        }
        other => panic!("expected 503, got {other:?}"),
    }
    let voters = |s: &Value| s["voters"].clone();
    let init = cluster
        .admin_post(1, "/v1/admin/raft/init", r#"{"voters": [0, 1, 2]}"#)
        .expect("init");
    assert_eq!(voters(&init), serde_json::json!([0, 1, 2]));
    let again = cluster
        .admin_post(2, "/v1/admin/raft/init", r#"{"voters": [0, 1, 2]}"#)
        .expect("init again");
    assert_eq!(voters(&again), serde_json::json!([0, 1, 2]), "{again}");
    cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    agent(Duration::from_secs(10))
        .put(&format!("{}/v1/memories/k", cluster.url(3)))
        .send_string("v")
        .map(drop)
        .expect_err("node 3 is no member: it knows no leader to forward to");
    // Any node takes membership calls (a follower forwards them to the leader).
    for _ in 0..2 {
        let added = cluster
            .admin_post(0, "/v1/admin/raft/learners", r#"{"id": 3}"#)
            .expect("add learner");
        assert_eq!(added["learners"], serde_json::json!([3]), "{added}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster
        .status(3)
        .and_then(|s| s["appliedIndex"].as_u64())
        .is_none()
    {
        assert!(Instant::now() < deadline, "the learner did not catch up");
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..2 {
        let promoted = cluster
            .admin_post(2, "/v1/admin/raft/promote", r#"{"ids": [3]}"#)
            .expect("promote");
        assert_eq!(
            voters(&promoted),
            serde_json::json!([0, 1, 2, 3]),
            "{promoted}"
        );
    }
    agent(Duration::from_secs(10))
        .put(&format!("{}/v1/memories/k", cluster.url(3)))
        .send_string("v")
        .expect("node 3 is a voter now and forwards");
    for _ in 0..2 {
        let removed = cluster
            .admin_post(1, "/v1/admin/raft/remove", r#"{"ids": [3]}"#)
            .expect("remove");
        assert_eq!(voters(&removed), serde_json::json!([0, 1, 2]), "{removed}");
        assert_eq!(removed["learners"], serde_json::json!([]), "{removed}");
    }
    let bad = cluster.admin_post(0, "/v1/admin/raft/promote", r#"{"ids": "three"}"#);
    assert!(bad.as_ref().is_err_and(|e| e.starts_with("400")), "{bad:?}");
    let unknown = cluster.admin_post(0, "/v1/admin/raft/learners", r#"{"id": 9}"#);
    assert!(
        unknown
            .as_ref()
            .is_err_and(|e| e.contains("not a configured peer")),
        "{unknown:?}"
    );
    cluster.kill(3);
}

#[test]
fn the_client_follows_the_retry_rule_and_verifies_proofs() {
    use phoenix_node_api::{Consistency, MemoryClient};
    let mut cluster = Cluster::start(3, "");
    let leader = cluster.wait_leader(&[0, 1, 2], Duration::from_secs(20));
    // The first node the client tries is down: it moves on to the next at once.
    let down = (leader + 1) % 3;
    cluster.kill(down);
    let mut urls = vec![cluster.url(down)];
    urls.extend((0..3).filter(|id| *id != down).map(|id| cluster.url(id)));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let client =
            MemoryClient::new(reqwest::Client::new(), urls).give_up_after(Duration::from_secs(20));
        let stored = client
            .store("notes/a b", b"kept by the group", Some(3600))
            .await
            .expect("store");
        assert!(
            stored.created && stored.expires_at_ms.is_some(),
            "{stored:?}"
        );
        let read = client
            .retrieve("notes/a b", Consistency::Linearizable)
            .await
            .expect("read")
            .expect("present");
        assert_eq!(read.value, b"kept by the group");
        assert!(read.applied_index.is_some());
        let proven = client
            .proven("notes/a b")
            .await
            .expect("proof")
            .expect("present");
        assert_eq!(proven.value, b"kept by the group");
        let root = client.root(Consistency::Local).await.expect("root");
        assert_eq!(root.keys, 1);
        assert!(client.delete("notes/a b").await.expect("delete"));
        assert!(!client.delete("notes/a b").await.expect("delete again"));
        let gone = client
            .retrieve("notes/a b", Consistency::Linearizable)
            .await
            .expect("read");
        assert!(gone.is_none(), "{gone:?}");
        // A refusal is final, not retried: an empty value is the caller's to fix.
        let refused = client.store("k", b"", None).await.expect_err("empty value");
        assert!(
            matches!(
                refused,
                phoenix_node_api::ClientError::Status { status: 400, .. }
            ),
            "{refused:?}"
        );
    });
    // With every node down it gives up after its limit, naming the last failure.
    let all_down = MemoryClient::new(reqwest::Client::new(), [cluster.url(down)])
        .give_up_after(Duration::from_millis(300));
    let error = runtime
        .block_on(all_down.store("k", b"v", None))
        .expect_err("nobody answers");
    assert!(error.to_string().contains("no node answered"), "{error}");
}
