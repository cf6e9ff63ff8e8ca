//! The real `phoenix-node` binary: crash safety under SIGKILL with durable writes, graceful
//! shutdown on SIGTERM, and the `cleanup` job against several node processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TOKEN: &str = "process-test-token";

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_phoenix-node")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build()
}

/// A `phoenix-node serve` process with its own data directory and port.
struct NodeProcess {
    child: Child,
    url: String,
    data: PathBuf,
    config: PathBuf,
}

impl NodeProcess {
    fn start(dir: &Path, name: &str, extra_config: &str, sync: bool) -> NodeProcess {
        let port = free_port();
        let data = dir.join(name);
        let token = dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
        let config = dir.join(format!("{name}.yaml"));
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ndataDir: {}\nadminTokenFile: {}\ncacheCapacity: 16Mi\nshutdownTimeoutSeconds: 5\n{extra_config}",
                data.display(),
                token.display()
            ),
        )
        .expect("config file");
        Self::spawn(config, data, port, sync)
    }

    fn spawn(config: PathBuf, data: PathBuf, port: u16, sync: bool) -> NodeProcess {
        let mut command = Command::new(binary());
        command.arg("serve").arg("--config").arg(&config);
        if sync {
            command.arg("--sync");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start phoenix-node serve");
        let node = NodeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data,
            config,
        };
        node.wait_ready();
        node
    }

    fn restart(self) -> NodeProcess {
        let port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let (config, data) = (self.config.clone(), self.data.clone());
        drop(self);
        Self::spawn(config, data, port, false)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if agent().get(&format!("{}/readyz", self.url)).call().is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{} did not become ready", self.url);
    }

    fn put(&self, key: &str, value: &str) -> Result<(), String> {
        agent()
            .put(&format!("{}/v1/memories/{key}", self.url))
            .send_string(value)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn get(&self, key: &str) -> Option<String> {
        agent()
            .get(&format!("{}/v1/memories/{key}", self.url))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
    }

    fn sigterm(&mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 20 s of SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn verify(data: &Path) -> (bool, String) {
    let output = Command::new(binary())
        .arg("verify")
        .arg("--data")
        .arg(data)
        .output()
        .expect("run verify");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn sigkill_mid_stream_loses_no_acknowledged_durable_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(dir.path(), "crash", "", true);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (url, stop) = (node.url.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                let mut i = 0u32;
                while !stop.load(Ordering::SeqCst) {
                    let key = format!("w{w}-{i}");
                    let sent = agent()
                        .put(&format!("{url}/v1/memories/{key}"))
                        .send_string(&format!("value of {key}"));
                    match sent {
                        Ok(_) => acknowledged.push(key),
                        Err(_) => break, // the process is gone
                    }
                    i += 1;
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    node.child.kill().expect("SIGKILL");
    node.child.wait().expect("reap");
    stop.store(true, Ordering::SeqCst);
    let acknowledged: Vec<String> = writers
        .into_iter()
        .flat_map(|w| w.join().expect("writer"))
        .collect();
    assert!(
        acknowledged.len() > 20,
        "only {} writes before the kill",
        acknowledged.len()
    );

    let (ok, report) = verify(&node.data);
    assert!(ok, "root does not verify after the crash:\n{report}");
    let node = node.restart();
    for key in &acknowledged {
        assert_eq!(
            node.get(key).as_deref(),
            Some(format!("value of {key}").as_str()),
            "acknowledged write {key} lost"
        );
    }
}

#[test]
fn sigterm_drains_flushes_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = NodeProcess::start(
        dir.path(),
        "term",
        "durability: {mode: periodic, flushEveryMs: 60000}\n",
        false,
    );
    for i in 0..200 {
        node.put(&format!("k{i}"), &format!("v{i}")).expect("store");
    }
    let status = node.sigterm();
    assert!(status.success(), "exit status {status:?}");
    let (ok, report) = verify(&node.data);
    assert!(ok && report.contains("keys: 200"), "{report}");
    let node = node.restart();
    for i in 0..200 {
        assert_eq!(node.get(&format!("k{i}")), Some(format!("v{i}")));
    }
}

fn cleanup(args: &[&str], token_file: &Path) -> (i32, String) {
    let output = Command::new(binary())
        .arg("cleanup")
        .arg("--token-file")
        .arg(token_file)
        .args(args)
        .output()
        .expect("run cleanup");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn the_cleanup_job_refuses_with_a_peer_down_then_cleans_and_skips_by_threshold() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fast_probe =
        "probe: {intervalMs: 20, samplesPerTick: 16, windowTicks: 4, minSamples: 32}\n";
    let busy = NodeProcess::start(dir.path(), "busy", fast_probe, false);
    let idle = NodeProcess::start(dir.path(), "idle", fast_probe, false);
    for i in 0..300 {
        busy.put(&format!("k{i}"), "some value").expect("store");
    }
    // Wait until the busy node's probe has a ratio; the idle (empty) node never will.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = agent()
            .get(&format!("{}/metrics", busy.url))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default();
        if metrics.contains("phoenix_node_probe_ratio ") {
            break;
        }
        assert!(Instant::now() < deadline, "no probe ratio:\n{metrics}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token = dir.path().join("token");
    let down = format!("http://127.0.0.1:{}", free_port());

    let (code, text) = cleanup(
        &["--node", &busy.url, "--node", &idle.url, "--node", &down],
        &token,
    );
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("refusing to clean"), "{text}");
    assert!(busy.get("k1").is_some());

    let (code, text) = cleanup(
        &[
            "--node",
            &busy.url,
            "--node",
            &idle.url,
            "--threshold",
            "0.1",
            "--force-rebuild",
        ],
        &token,
    );
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("{}: cleaned", busy.url)), "{text}");
    assert!(
        text.contains(&format!("{}: skipped, ratio no data", idle.url)),
        "{text}"
    );
    assert!(
        text.contains("summary: 1 cleaned, 1 skipped, 0 failed"),
        "{text}"
    );
    for i in 0..300 {
        assert_eq!(busy.get(&format!("k{i}")).as_deref(), Some("some value"));
    }

    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token").expect("write");
    let (code, text) = cleanup(&["--node", &busy.url], &wrong);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("cleanup FAILED") && text.contains("401"),
        "{text}"
    );
}

#[path = "process/safety.rs"]
mod safety;
