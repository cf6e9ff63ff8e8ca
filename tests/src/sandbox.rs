//! A cluster in one process, for the observe → schedule scenarios and `phoenix-sandbox`:
//! the in-process API server, the operator's real controller, and a stand-in kubelet that
//! runs one real `phoenix-node` process per pod the StatefulSet asks for, on its own
//! loopback address (127.0.0.x), and writes each pod's IP and readiness into its status.
//!
//! What a real cluster does that this does not: schedule pods, resolve DNS, and run Jobs.
//! [`Sandbox::run_job`] runs a Job's container command as the Job controller would, with
//! the one translation DNS would otherwise make: `--statefulset/--headless-service/
//! --replicas/--port` become the pods' `--node` URLs, and the mounted token file a local one.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use phoenix_node::config::{NodeConfig, NodeSettings, ProbeSettings};
use phoenix_operator::children::{
    CONFIG_FILE, CONFIG_HASH_ANNOTATION, PEER_TOKEN_KEY, TOKEN_KEY, configmap_name, secret_name,
};

use phoenix_operator::controller::{self, PeerAddresses, Settings};
use phoenix_operator::crd::{PhoenixMemory, PhoenixMemoryStatus};
use phoenix_operator::metrics::Metrics;
use phoenix_operator::observe::Freshness;
use serde_json::json;

use crate::apiserver::ApiServer;

/// How the sandbox runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `phoenix-node` binary.
    pub node_bin: PathBuf,
    /// The operator's observe interval (and resync).
    pub observe_interval: Duration,
    /// The nodes' probe, overriding what the ConfigMap says (faster for a demo or a test).
    pub probe: ProbeSettings,
    /// Start the nodes with fault injection on.
    pub fault_injection: bool,
}

impl Options {
    /// Fast defaults: observe every second; a probe tick every 100 ms, a window of 20 ticks
    /// (1,280 samples, 2 s), 5 ticks to settle.
    pub fn new(node_bin: PathBuf) -> Options {
        Options {
            node_bin,
            observe_interval: Duration::from_secs(1),
            probe: ProbeSettings {
                interval_ms: 100,
                samples_per_tick: 64,
                window_ticks: 20,
                min_samples: 512,
                settle_ticks: 5,
            },
            fault_injection: true,
        }
    }
}

/// `phoenix-node` next to the running executable (`target/<profile>/`), or `PHOENIX_NODE_BIN`.
///
/// # Errors
/// Neither exists.
pub fn find_node_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("PHOENIX_NODE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("phoenix-node"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "phoenix-node not found at {}: run `cargo build -p phoenix-node` (same profile) or set PHOENIX_NODE_BIN",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        })
}

/// Memories a node starts with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seed {
    /// How many (`key-000000`, …).
    pub keys: usize,
    /// Bytes per value.
    pub value_len: usize,
}

/// What starting one pod's node needs.
struct PodStart<'a> {
    memory: &'a str,
    pod: &'a str,
    /// The StatefulSet's replicas (peers are named up to it).
    replicas: i32,
    config_text: &'a str,
    config_hash: Option<String>,
    seed: Seed,
}

/// One node process.
#[derive(Debug)]
struct NodeProcess {
    child: Child,
    url: String,
    ip: Ipv4Addr,
    /// The config hash of the pod template it was started from (a new one restarts it).
    config_hash: Option<String>,
}

impl NodeProcess {
    /// Stops the node as the kubelet stops a pod: SIGTERM, then SIGKILL after 10 s.
    async fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a Job run did.
#[derive(Debug)]
pub struct JobRun {
    /// The command's exit code.
    pub code: Option<i32>,
    /// Its standard output (the per-node report lines).
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// The in-process cluster.
pub struct Sandbox {
    /// The API server.
    pub server: ApiServer,
    /// A client of it.
    pub client: Client,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    options: Options,
    work: tempfile::TempDir,
    nodes: Mutex<BTreeMap<String, NodeProcess>>,
    /// Each pod's address, kept across restarts (a pod's DNS name is, in a cluster).
    addresses: Mutex<BTreeMap<String, (SocketAddr, SocketAddr)>>,
    next_ip: AtomicU8,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    operator: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The ordinal of `pod` when it is one of `memory`'s (`memory-N`).
fn ordinal(memory: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(memory)?
        .strip_prefix('-')?
        .parse()
        .ok()
        .filter(|o: &i32| *o >= 0)
}

fn free_port(ip: Ipv4Addr) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(SocketAddr::from((ip, 0)))
        .with_context(|| format!("bind {ip}:0"))?;
    Ok(listener.local_addr()?.port())
}

impl Sandbox {
    /// Starts the API server, installs the CRD and starts the operator.
    ///
    /// # Errors
    /// The server cannot start or the CRD cannot be installed.
    pub async fn start(options: Options) -> anyhow::Result<Sandbox> {
        let server = ApiServer::start().await?;
        let client = server.client()?;
        Api::<CustomResourceDefinition>::all(client.clone())
            .create(&PostParams::default(), &PhoenixMemory::crd())
            .await
            .context("install the CRD")?;
        let metrics = Arc::new(Metrics::new()?);
        let settings = Settings {
            default_image: "phoenix-memory:sandbox".into(),
            resync: options.observe_interval,
            observe_interval: options.observe_interval,
            scrape_timeout: Duration::from_secs(2),
            freshness: Freshness {
                min_samples: options.probe.min_samples as f64,
                max_age: Duration::from_secs(30),
            },
            // No DNS here: members join at their pod's address, which the stand-in kubelet
            // keeps across restarts.
            peer_addresses: PeerAddresses::PodIp,
            ..Settings::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let operator = tokio::spawn({
            let client = client.clone();
            let metrics = Arc::clone(&metrics);
            async move {
                let _ = controller::run(client, settings, metrics, async move {
                    let _ = stopped.await;
                })
                .await;
            }
        });
        Ok(Sandbox {
            server,
            client,
            metrics,
            options,
            work: tempfile::tempdir()?,
            nodes: Mutex::new(BTreeMap::new()),
            addresses: Mutex::new(BTreeMap::new()),
            next_ip: AtomicU8::new(2),
            stop: Some(stop),
            operator: Some(operator),
        })
    }

    /// The `default` namespace's API for `K`.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::default_namespaced(self.client.clone())
    }

    /// Creates a PhoenixMemory from its manifest (YAML or JSON) in `default`.
    ///
    /// # Errors
    /// The manifest does not parse or the API server refuses it.
    pub async fn create_memory(&self, manifest: &str) -> anyhow::Result<PhoenixMemory> {
        let memory: PhoenixMemory =
            serde_yaml::from_str(manifest).context("not a PhoenixMemory manifest")?;
        Ok(self
            .api::<PhoenixMemory>()
            .create(&PostParams::default(), &memory)
            .await?)
    }

    /// Polls `name`'s status every 200 ms until `check` holds.
    ///
    /// # Errors
    /// `check` did not hold within `seconds` (the error shows the last status).
    pub async fn wait_status<F>(
        &self,
        name: &str,
        what: &str,
        seconds: u64,
        mut check: F,
    ) -> anyhow::Result<PhoenixMemoryStatus>
    where
        F: FnMut(&PhoenixMemoryStatus) -> bool,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            if let Ok(memory) = self.api::<PhoenixMemory>().get(name).await {
                let status = memory.status.unwrap_or_default();
                if check(&status) {
                    return Ok(status);
                }
                last = Some(status);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!(
            "timed out waiting for {what}; last status:\n{}",
            serde_yaml::to_string(&last).unwrap_or_default()
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, NodeProcess>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The base URL of a pod's node, if it runs.
    pub fn node_url(&self, pod: &str) -> Option<String> {
        self.lock().get(pod).map(|n| n.url.clone())
    }

    /// What the kubelet and the StatefulSet controller do together: one running, ready node
    /// per replica of `memory`'s StatefulSet, and no more. Returns the pods started.
    ///
    /// # Errors
    /// The StatefulSet, ConfigMap or Secret are not there yet; a node does not start.
    pub async fn sync_pods(&self, memory: &str) -> anyhow::Result<Vec<String>> {
        self.sync_pods_seeded(memory, Seed::default()).await
    }

    /// [`Sandbox::sync_pods`], with each new node's store filled with `seed` before the
    /// node starts, so its probe's baseline is taken on the data it will serve (a node's
    /// latency rises as its data grows from empty, which is degradation in its own right).
    ///
    /// # Errors
    /// As [`Sandbox::sync_pods`]; the store cannot be seeded.
    pub async fn sync_pods_seeded(&self, memory: &str, seed: Seed) -> anyhow::Result<Vec<String>> {
        let sts = self
            .api::<StatefulSet>()
            .get_opt(memory)
            .await?
            .ok_or_else(|| anyhow!("no StatefulSet {memory} yet"))?;
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let template = sts
            .spec
            .as_ref()
            .map(|s| s.template.clone())
            .unwrap_or_default();
        let config_text = self
            .api::<ConfigMap>()
            .get_opt(&configmap_name(memory))
            .await?
            .and_then(|c| c.data)
            .and_then(|d| d.get(CONFIG_FILE).cloned())
            .ok_or_else(|| anyhow!("no node configuration for {memory} yet"))?;
        let token = self
            .api::<Secret>()
            .get_opt(&secret_name(memory))
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get(TOKEN_KEY).cloned())
            .ok_or_else(|| anyhow!("no admin token for {memory} yet"))?;
        let token_file = self.token_file(memory);
        std::fs::write(&token_file, &token.0)?;
        if let Some(peer) = self
            .api::<Secret>()
            .get_opt(&secret_name(memory))
            .await?
            .and_then(|s| s.data)
            .and_then(|d| d.get(PEER_TOKEN_KEY).cloned())
        {
            std::fs::write(self.peer_token_file(memory), &peer.0)?;
        }
        let config_hash = template
            .metadata
            .as_ref()
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CONFIG_HASH_ANNOTATION).cloned());

        let pods = self.api::<Pod>();
        let mut started = Vec::new();
        for ordinal in 0..replicas.max(0) {
            let name = format!("{memory}-{ordinal}");
            // A process that exited is restarted (restartPolicy Always).
            let exited = self
                .lock()
                .get_mut(&name)
                .is_some_and(|p| matches!(p.child.try_wait(), Ok(Some(_))));
            if exited {
                self.lock().remove(&name);
            }
            let running = self.lock().get(&name).map(|p| p.config_hash.clone());
            match running {
                Some(hash) if hash == config_hash => continue,
                // A rolling update: the StatefulSet controller replaces the pod, and the
                // kubelet stops it as it stops any pod (SIGTERM, then the grace period).
                Some(_) => {
                    let old = self.lock().remove(&name);
                    if let Some(old) = old {
                        old.terminate().await;
                    }
                }
                None => {}
            }
            let node = PodStart {
                memory,
                pod: &name,
                replicas,
                config_text: &config_text,
                config_hash: config_hash.clone(),
                seed,
            };
            let process = self.start_node(node).await?;
            let (http, peer) = self.address_of(&name)?;
            let mut pod_template = serde_json::to_value(&template)?;
            pod_template["metadata"]["name"] = json!(name);
            // The template's ports, at the ports this pod's process listens on.
            let ports: Vec<serde_json::Value> = pod_template["spec"]["containers"][0]["ports"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(|mut port| {
                    let local = if port["name"] == "peer" {
                        peer.port()
                    } else {
                        http.port()
                    };
                    port["containerPort"] = json!(local);
                    port
                })
                .collect();
            pod_template["spec"]["containers"][0]["ports"] = json!(ports);
            let pod: Pod = serde_json::from_value(pod_template)?;
            if pods.get_opt(&name).await?.is_none() {
                pods.create(&PostParams::default(), &pod).await?;
            }
            pods.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "phase": "Running",
                    "podIP": process.ip.to_string(),
                    "conditions": [{"type": "Ready", "status": "True"}],
                }})),
            )
            .await?;
            self.lock().insert(name.clone(), process);
            started.push(name);
        }
        // Scale down: stop and delete pods past the replica count.
        let extra: Vec<String> = self
            .lock()
            .keys()
            .filter(|k| ordinal(memory, k).is_some_and(|o| o >= replicas))
            .cloned()
            .collect();
        for name in extra {
            self.lock().remove(&name);
            let _ = pods.delete(&name, &DeleteParams::default()).await;
        }
        // The StatefulSet controller's part: how many pods run and are ready.
        let running = i32::try_from(
            self.lock()
                .keys()
                .filter(|k| ordinal(memory, k).is_some())
                .count(),
        )
        .unwrap_or(i32::MAX);
        let status = json!({"status": {
            "replicas": running, "readyReplicas": running, "availableReplicas": running,
            "currentReplicas": running, "updatedReplicas": running,
            "observedGeneration": sts.metadata.generation,
        }});
        if sts.status.as_ref().and_then(|s| s.ready_replicas) != Some(running) {
            self.api::<StatefulSet>()
                .patch_status(memory, &PatchParams::default(), &Patch::Merge(status))
                .await?;
        }
        Ok(started)
    }

    /// The memory's admin token (as the kubelet mounted it).
    ///
    /// # Errors
    /// No pod of the memory has started yet.
    pub fn token(&self, memory: &str) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(self.token_file(memory))?
            .trim()
            .to_string())
    }

    fn token_file(&self, memory: &str) -> PathBuf {
        self.work.path().join(format!("{memory}.token"))
    }

    fn peer_token_file(&self, memory: &str) -> PathBuf {
        self.work.path().join(format!("{memory}.peer-token"))
    }

    /// The pod's HTTP and peer addresses: the ones it had, or a new loopback address and two
    /// free ports.
    fn address_of(&self, pod: &str) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        let mut addresses = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(address) = addresses.get(pod) {
            return Ok(*address);
        }
        let ip = Ipv4Addr::new(
            127,
            0,
            0,
            self.next_ip.fetch_add(1, Ordering::Relaxed).max(2),
        );
        let address = (
            SocketAddr::from((ip, free_port(ip)?)),
            SocketAddr::from((ip, free_port(ip)?)),
        );
        addresses.insert(pod.to_string(), address);
        Ok(address)
    }

    async fn start_node(&self, start: PodStart<'_>) -> anyhow::Result<NodeProcess> {
        let PodStart {
            memory,
            pod,
            replicas,
            config_text,
            config_hash,
            seed,
        } = start;
        let (listen, peer_listen) = self.address_of(pod)?;
        let ip = match listen.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => bail!("the sandbox's addresses are IPv4"),
        };
        let port = listen.port();
        let mut config = NodeConfig::from_yaml(config_text)?;
        config.listen = listen;
        config.data_dir = self.work.path().join(pod);
        config.admin_token_file = Some(self.token_file(memory));
        // What DNS and the downward API do in a cluster: each peer's name becomes its pod's
        // address, the pod's ordinal its id, the mounted peer token a local file.
        if let Some(replication) = config.replication.as_mut() {
            let count = u64::try_from(replicas.max(1)).unwrap_or(1);
            let ids: std::collections::BTreeSet<u64> = replication
                .peers
                .iter()
                .map(|p| p.id)
                .chain(0..count)
                .collect();
            let separate = replication.listen.is_some();
            replication.peers = ids
                .into_iter()
                .map(|id| {
                    let (http, peer) = self.address_of(&format!("{memory}-{id}"))?;
                    let address = if separate { peer } else { http };
                    Ok(phoenix_node::config::PeerConfig {
                        id,
                        url: format!("http://{address}"),
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            if separate {
                replication.listen = Some(peer_listen);
            }
            replication.id = ordinal(memory, pod).and_then(|o| u64::try_from(o).ok());
            replication.peer_token_file = self.peer_token_file(memory);
        }
        config.probe = self.options.probe;
        // A scrub pass every second, so damage shows within seconds, not within the hour.
        config.scrub = phoenix_node::config::ScrubSettings {
            keys_per_second: 50_000,
            period_seconds: 1,
        };
        config.fault_injection = self.options.fault_injection;
        config.shutdown_timeout_seconds = 2;
        // A new volume is seeded; a restarted pod keeps what its volume holds.
        if seed.keys > 0 && !config.data_dir.exists() {
            let store = phoenix_node::store::Store::open(config.store_config())?;
            let value = vec![b'v'; seed.value_len.max(1)];
            for i in 0..seed.keys {
                store.store(format!("key-{i:06}").as_bytes(), &value, None)?;
            }
            store.flush()?;
        }
        let config_path = self.work.path().join(format!("{pod}.yaml"));
        std::fs::write(&config_path, serde_yaml::to_string(&config)?)?;
        let log = std::fs::File::create(self.work.path().join(format!("{pod}.log")))?;
        let child = Command::new(&self.options.node_bin)
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", self.options.node_bin.display()))?;
        let process = NodeProcess {
            child,
            url: format!("http://{ip}:{port}"),
            ip,
            config_hash,
        };
        let http = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(response) = http.get(format!("{}/readyz", process.url)).send().await
                && response.status().is_success()
            {
                return Ok(process);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{pod} did not become ready at {}", process.url)
    }

    /// Kills a pod's node process (SIGKILL) without telling the API server: its pod still
    /// says Ready, its metrics endpoint is gone.
    pub fn kill_node(&self, pod: &str) -> bool {
        self.lock().remove(pod).is_some()
    }

    /// Stores `count` memories of `value_len` bytes on a node.
    ///
    /// # Errors
    /// The node is not running or refuses.
    pub async fn load(&self, pod: &str, count: usize, value_len: usize) -> anyhow::Result<()> {
        let url = self
            .node_url(pod)
            .ok_or_else(|| anyhow!("{pod} is not running"))?;
        let http = reqwest::Client::new();
        let value = vec![b'v'; value_len];
        for i in 0..count {
            let response = http
                .put(format!("{url}/v1/memories/key-{i:06}"))
                .body(value.clone())
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("{pod}: store answered {}", response.status());
            }
        }
        Ok(())
    }

    /// Sets the node's injected retrieve slowdown (see `phoenix_node::fault`).
    ///
    /// # Errors
    /// The node is not running or refuses.
    pub async fn set_fault(
        &self,
        memory: &str,
        pod: &str,
        slowdown: f64,
        cleared_by_cleanup: bool,
    ) -> anyhow::Result<()> {
        let url = self
            .node_url(pod)
            .ok_or_else(|| anyhow!("{pod} is not running"))?;
        let token = self.token(memory)?;
        let response = reqwest::Client::new()
            .put(format!("{url}/v1/admin/faults"))
            .bearer_auth(token)
            .body(
                json!({"retrieveSlowdown": slowdown, "clearedByCleanup": cleared_by_cleanup})
                    .to_string(),
            )
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("{pod}: fault answered {}", response.status());
        }
        Ok(())
    }

    /// Damages the stored record of `key` on a node, as a bad disk would (fault injection).
    ///
    /// # Errors
    /// The node is not running, or refuses.
    pub async fn corrupt(&self, memory: &str, pod: &str, key: &str) -> anyhow::Result<()> {
        let url = self
            .node_url(pod)
            .ok_or_else(|| anyhow!("{pod} is not running"))?;
        let response = reqwest::Client::new()
            .post(format!("{url}/v1/admin/faults/corrupt"))
            .bearer_auth(self.token(memory)?)
            .body(json!({ "key": key }).to_string())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("{pod}: corrupt answered {}", response.status());
        }
        Ok(())
    }

    /// The kubelet's readiness probe: asks each running node of `memory` for `/readyz` and
    /// writes the answer into its pod's Ready condition and the StatefulSet's ready count.
    ///
    /// # Errors
    /// API server errors.
    pub async fn probe_readiness(&self, memory: &str) -> anyhow::Result<()> {
        let nodes: Vec<(String, String)> = self
            .lock()
            .iter()
            .filter(|(pod, _)| ordinal(memory, pod).is_some())
            .map(|(pod, process)| (pod.clone(), process.url.clone()))
            .collect();
        let http = reqwest::Client::new();
        let pods = self.api::<Pod>();
        let mut ready = 0;
        for (pod, url) in &nodes {
            let is_ready = http
                .get(format!("{url}/readyz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            ready += i32::from(is_ready);
            let status = if is_ready { "True" } else { "False" };
            pods.patch_status(
                pod,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"conditions": [{"type": "Ready", "status": status}]}}),
                ),
            )
            .await?;
        }
        self.api::<StatefulSet>()
            .patch_status(
                memory,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"status": {"readyReplicas": ready, "availableReplicas": ready}}),
                ),
            )
            .await?;
        Ok(())
    }

    /// The node's injected retrieve slowdown (1 = none), if the node answers.
    pub async fn fault(&self, memory: &str, pod: &str) -> Option<f64> {
        let url = self.node_url(pod)?;
        let token = self.token(memory).ok()?;
        let text = reqwest::Client::new()
            .get(format!("{url}/v1/admin/faults"))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        serde_json::from_str::<serde_json::Value>(&text).ok()?["retrieveSlowdown"].as_f64()
    }

    /// The command line of a Job's container, made to run here (see the module docs).
    ///
    /// # Errors
    /// The Job has no container args.
    pub fn local_command(&self, memory: &str, job: &Job) -> anyhow::Result<Vec<String>> {
        let args = job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.args.clone())
            .ok_or_else(|| anyhow!("the Job has no container args"))?;
        let mut out = Vec::new();
        let mut iter = args.into_iter();
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--statefulset" | "--headless-service" | "--replicas" | "--port" => {
                    iter.next();
                }
                "--token-file" => {
                    iter.next();
                    out.push(arg);
                    out.push(self.token_file(memory).display().to_string());
                }
                _ => out.push(arg),
            }
        }
        for (pod, node) in self.lock().iter() {
            if ordinal(memory, pod).is_some() {
                out.push("--node".into());
                out.push(node.url.clone());
            }
        }
        Ok(out)
    }

    /// Runs a Job's command against the nodes, as the Job controller would run its pod.
    ///
    /// # Errors
    /// The command cannot start.
    pub async fn run_job(&self, memory: &str, job: &Job) -> anyhow::Result<JobRun> {
        let args = self.local_command(memory, job)?;
        let output = tokio::process::Command::new(&self.options.node_bin)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .await?;
        Ok(JobRun {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs one scheduled run of `memory`'s CronJob now (its Job template).
    ///
    /// # Errors
    /// No CronJob; the command cannot start.
    pub async fn run_cronjob(&self, memory: &str) -> anyhow::Result<JobRun> {
        let name = phoenix_operator::children::cronjob_name(memory);
        let cronjob = self
            .api::<CronJob>()
            .get_opt(&name)
            .await?
            .ok_or_else(|| anyhow!("no CronJob {name}"))?;
        let template = cronjob.spec.map(|s| s.job_template).unwrap_or_default();
        let job = Job {
            spec: template.spec,
            ..Job::default()
        };
        self.run_job(memory, &job).await
    }

    /// Emergency Jobs of `memory`, oldest first.
    ///
    /// # Errors
    /// The list fails.
    pub async fn emergency_jobs(&self, memory: &str) -> anyhow::Result<Vec<Job>> {
        let selector = format!(
            "app.kubernetes.io/instance={memory},app.kubernetes.io/component={}",
            phoenix_operator::children::EMERGENCY_COMPONENT
        );
        let mut jobs = self
            .api::<Job>()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone());
        Ok(jobs)
    }

    /// Marks a Job succeeded or failed, as the Job controller would.
    ///
    /// # Errors
    /// The API server refuses.
    pub async fn finish_job(&self, job: &Job, succeeded: bool) -> anyhow::Result<()> {
        let status = if succeeded {
            json!({"status": {"succeeded": 1}})
        } else {
            json!({"status": {"failed": 1}})
        };
        self.api::<Job>()
            .patch_status(
                &job.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await?;
        Ok(())
    }

    /// Stops (SIGKILL) every node process; the pods stay as they were.
    pub fn stop_nodes(&self) {
        self.lock().clear();
    }

    /// Stops the operator, then every node process.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.operator.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.lock().clear();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(task) = self.operator.take() {
            task.abort();
        }
        self.lock().clear();
    }
}
