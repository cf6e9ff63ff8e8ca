//! Data safety and hardening of the real binary (issue: "never delete live data, never
//! acknowledge what cannot be saved, let Kubernetes see a sick node"): a full disk on a
//! real small file system, a corrupted data file, slow and hostile connections, signals and
//! exit codes. The full-disk tests need to mount a tmpfs (root); elsewhere they print why
//! they did not run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{NodeProcess, TOKEN, agent, binary, free_port, verify};

/// A tmpfs of a fixed size, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if mounted {
            Some(Tmpfs { dir })
        } else {
            eprintln!(
                "SKIPPED: cannot mount a {size} tmpfs here (needs root); the full-disk test did not run"
            );
            None
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills `path` with `mib` MiB.
fn filler(path: &Path, mib: usize) {
    let mut file = std::fs::File::create(path).expect("filler");
    let chunk = vec![0x5a_u8; 1 << 20];
    for _ in 0..mib {
        file.write_all(&chunk).expect("write filler");
    }
    file.sync_all().expect("sync filler");
}

fn value_of(i: usize, len: usize) -> String {
    let mut value = format!("{i:08}-");
    while value.len() < len {
        value.push((b'a' + (i % 26) as u8) as char);
    }
    value
}

/// Status, headers and body of a PUT (any status).
fn put_raw(url: &str, key: &str, value: &str) -> (u16, Option<String>, String) {
    match agent()
        .put(&format!("{url}/v1/memories/{key}"))
        .send_string(value)
    {
        Ok(response) => (response.status(), None, String::new()),
        Err(ureq::Error::Status(status, response)) => {
            let retry = response.header("retry-after").map(str::to_string);
            (status, retry, response.into_string().unwrap_or_default())
        }
        Err(error) => (0, None, error.to_string()),
    }
}

fn status_of(url: &str) -> u16 {
    match agent().get(url).call() {
        Ok(response) => response.status(),
        Err(ureq::Error::Status(status, _)) => status,
        Err(_) => 0,
    }
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl NodeProcess {
    /// Starts a node whose data directory is `data`, waiting only for `/healthz`.
    fn start_at(dir: &Path, data: &Path, extra_config: &str, sync: bool) -> NodeProcess {
        let port = free_port();
        let token = dir.join("token");
        std::fs::write(&token, format!("{TOKEN}\n")).expect("token file");
        let config = dir.join("node.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{port}\ndataDir: {}\nadminTokenFile: {}\ncacheCapacity: 16Mi\nshutdownTimeoutSeconds: 5\n{extra_config}",
                data.display(),
                token.display()
            ),
        )
        .expect("config file");
        let mut command = Command::new(binary());
        command.arg("serve").arg("--config").arg(&config);
        if sync {
            command.arg("--sync");
        }
        let log = std::fs::File::create(dir.join("node.log")).expect("log file");
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start phoenix-node serve");
        let node = NodeProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data: data.to_path_buf(),
            config,
        };
        let health = format!("{}/healthz", node.url);
        let deadline = Instant::now() + Duration::from_secs(20);
        while status_of(&health) != 200 {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
                panic!("the node did not answer /healthz within 20 s; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        node
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_full_disk_is_refused_with_507_before_it_happens_and_loses_nothing() {
    let Some(fs) = Tmpfs::mount("64m") else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let data = fs.path().join("data");
    let filler_file = fs.path().join("filler");
    filler(&filler_file, 36);
    let mut node = NodeProcess::start_at(
        work.path(),
        &data,
        "durability: {mode: periodic, flushEveryMs: 500}\n\
         disk: {minFreeBytes: 8Mi}\n\
         limits: {maxValueBytes: 65536, maxBodyBytes: 65536}\n",
        false,
    );
    let mut acknowledged = Vec::new();
    let refusal = loop {
        let i = acknowledged.len();
        assert!(i < 5000, "the disk never filled");
        let (status, retry_after, body) =
            put_raw(&node.url, &format!("k{i}"), &value_of(i, 32 << 10));
        if status == 201 {
            acknowledged.push(i);
        } else {
            break (status, retry_after, body);
        }
    };
    assert_eq!(refusal.0, 507, "refused with {refusal:?}");
    assert!(refusal.1.is_some(), "507 without Retry-After: {refusal:?}");
    assert!(refusal.2.contains("insufficient_storage"), "{refusal:?}");
    assert!(
        acknowledged.len() > 50,
        "only {} writes fit",
        acknowledged.len()
    );
    // Reads and health are unaffected; writes stay refused while space is short.
    assert_eq!(node.get("k0").map(|v| v.len()), Some(32 << 10));
    assert_eq!(status_of(&format!("{}/healthz", node.url)), 200);
    assert_eq!(put_raw(&node.url, "again", "small").0, 507);

    // Space comes back: writes resume by themselves.
    std::fs::remove_file(&filler_file).expect("rm filler");
    wait_until("writes resume", Duration::from_secs(10), || {
        put_raw(&node.url, "resumed", "yes").0 == 201
    });
    let first_after = acknowledged.len();
    for i in first_after..first_after + 50 {
        let (status, _, body) = put_raw(&node.url, &format!("k{i}"), &value_of(i, 32 << 10));
        assert_eq!(status, 201, "write {i} after space returned: {body}");
        acknowledged.push(i);
    }
    // Several flush intervals, then a crash: every write older than an interval is kept.
    std::thread::sleep(Duration::from_secs(2));
    node.child.kill().expect("SIGKILL");
    node.child.wait().expect("reap");
    let (ok, report) = verify(&data);
    assert!(ok, "root does not verify:\n{report}");
    let node = NodeProcess::start_at(work.path(), &data, "", false);
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|i| node.get(&format!("k{i}")) != Some(value_of(**i, 32 << 10)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    assert_eq!(node.get("resumed").as_deref(), Some("yes"));
}

#[test]
fn without_the_guard_a_failed_flush_stops_acknowledging_fails_health_and_loses_nothing_acknowledged()
 {
    let Some(fs) = Tmpfs::mount("32m") else {
        return;
    };
    let work = tempfile::tempdir().expect("tempdir");
    let data = fs.path().join("data");
    let filler_file = fs.path().join("filler");
    filler(&filler_file, 24);
    let mut node = NodeProcess::start_at(
        work.path(),
        &data,
        "disk: {minFreeBytes: 0}\n\
         durability: {stallTimeoutMs: 1500}\n\
         limits: {maxValueBytes: 65536, maxBodyBytes: 65536, requestTimeoutMs: 5000}\n",
        true,
    );
    let mut acknowledged = Vec::new();
    let first_refusal = loop {
        let i = acknowledged.len();
        assert!(i < 5000, "the disk never filled");
        let (status, _, body) = put_raw(&node.url, &format!("k{i}"), &value_of(i, 32 << 10));
        if status == 201 {
            acknowledged.push(i);
        } else {
            break (status, body);
        }
    };
    assert!(
        [503, 507].contains(&first_refusal.0),
        "the failed write got {first_refusal:?}"
    );
    // The node stops acknowledging, even once space is back, and tells the kubelet.
    std::fs::remove_file(&filler_file).expect("rm filler");
    for attempt in 0..3 {
        let (status, _, body) = put_raw(&node.url, &format!("after{attempt}"), "small");
        assert_ne!(
            status, 201,
            "a write was acknowledged after a failed flush: {body}"
        );
    }
    let health = format!("{}/healthz", node.url);
    wait_until("/healthz fails", Duration::from_secs(10), || {
        status_of(&health) == 503
    });
    assert_eq!(status_of(&format!("{}/readyz", node.url)), 503);
    let metrics = agent()
        .get(&format!("{}/metrics", node.url))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    assert!(metrics.contains("phoenix_node_durable 0"), "{metrics}");
    // SIGTERM ends the process within shutdownTimeoutSeconds even if the final flush hangs.
    node.signal("TERM");
    let started = Instant::now();
    node.wait_exit(Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    let node = NodeProcess::start_at(work.path(), &data, "", false);
    for i in &acknowledged {
        assert_eq!(
            node.get(&format!("k{i}")),
            Some(value_of(*i, 32 << 10)),
            "acknowledged durable write k{i} lost"
        );
    }
    assert_eq!(node.get("after0"), None);
}

/// Writes `count` values of `len` bytes through a node at `data`, then stops it cleanly.
fn fill_and_stop(work: &Path, data: &Path, count: usize, len: usize) {
    let mut node = NodeProcess::start_at(
        work,
        data,
        "scrub: {keysPerSecond: 0}\nlimits: {maxValueBytes: 65536, maxBodyBytes: 65536}\n",
        false,
    );
    for i in 0..count {
        assert_eq!(
            put_raw(&node.url, &format!("k{i:05}"), &value_of(i, len)).0,
            201
        );
    }
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(20)).success());
}

/// Overwrites 4 KiB in the middle of `file` with pseudo-random bytes.
fn damage(file: &Path) {
    let mut bytes = std::fs::read(file).expect("read the data file");
    let middle = bytes.len() / 2;
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for byte in &mut bytes[middle..middle + 4096] {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        *byte = rng as u8;
    }
    std::fs::write(file, bytes).expect("damage the data file");
}

/// Starts a node on a damaged directory with a fast scrub: the running node, or the exit
/// code and error output of a node that refused to start.
fn start_damaged(work: &Path, data: &Path) -> Result<NodeProcess, (Option<i32>, String)> {
    let port = free_port();
    let config = work.join("damaged.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndataDir: {}\ncacheCapacity: 16Mi\n\
             scrub: {{keysPerSecond: 100000, periodSeconds: 1}}\n\
             limits: {{maxValueBytes: 65536, maxBodyBytes: 65536}}\n",
            data.display()
        ),
    )
    .expect("config");
    let mut child = Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Err((status.code(), stderr));
        }
        if status_of(&format!("{url}/healthz")) == 200 {
            return Ok(NodeProcess {
                child,
                url,
                data: data.to_path_buf(),
                config,
            });
        }
        assert!(Instant::now() < deadline, "neither started nor refused");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn a_database_that_lost_flushed_records_refuses_to_start_instead_of_serving_fewer() {
    // What sled's recovery does when it meets a damaged record: it keeps the log up to it
    // and drops the rest (measured with a damaged blob file before large values were
    // chunked: a ready node serving 8 of 21 memories). Here the lost tail is made exactly:
    // the database files from before the last 10 writes, with the checkpoint taken after.
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let mut node = NodeProcess::start_at(work.path(), &data, "", true);
    for i in 0..21 {
        node.put(&format!("k{i:05}"), "v").expect("put");
    }
    let before = work.path().join("gen-0-before");
    copy_dir(&data.join("gen-0"), &before);
    for i in 21..31 {
        node.put(&format!("k{i:05}"), "v").expect("put");
    }
    node.signal("TERM");
    assert!(node.wait_exit(Duration::from_secs(20)).success());
    drop(node);
    std::fs::remove_dir_all(data.join("gen-0")).expect("rm");
    copy_dir(&before, &data.join("gen-0"));
    for attempt in 0..2 {
        match start_damaged(work.path(), &data) {
            Ok(node) => {
                let served = (0..31)
                    .filter(|i| node.get(&format!("k{i:05}")).is_some())
                    .count();
                panic!("start {attempt}: the node started and serves {served} of 31 memories");
            }
            Err((code, stderr)) => {
                assert_eq!(code, Some(2), "{stderr}");
                assert!(
                    stderr.contains("lacks records it had made durable"),
                    "{stderr}"
                );
            }
        }
    }
}

#[test]
fn corruption_in_the_data_file_is_never_served_as_fewer_memories() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    fill_and_stop(work.path(), &data, 3000, 1000);
    damage(&data.join("gen-0").join("db"));
    // Depending on where the bytes land, sled cannot recover its log (the node refuses to
    // start), or it opens and the bad page is met by a read or the scrub (the node turns
    // unready and serves what it can read). Never: ready, with memories missing.
    let node = match start_damaged(work.path(), &data) {
        Err((code, stderr)) => {
            assert_eq!(code, Some(2), "{stderr}");
            assert!(
                stderr.contains("likely corrupt") || stderr.contains("lacks records"),
                "{stderr}"
            );
            eprintln!("the damaged database was refused at start: {stderr}");
            return;
        }
        Ok(node) => node,
    };
    let ready = format!("{}/readyz", node.url);
    // A full scrub pass of 3,000 records takes well under a second at this rate.
    let deadline = Instant::now() + Duration::from_secs(5);
    while status_of(&ready) == 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if status_of(&ready) == 200 {
        // The bytes hit space sled no longer uses (old page versions): then every memory
        // must be there, intact.
        let intact = (0..3000)
            .filter(|i| node.get(&format!("k{i:05}")) == Some(value_of(*i, 1000)))
            .count();
        assert_eq!(intact, 3000, "ready while memories are missing or wrong");
        eprintln!("the damage hit unused space: ready, all 3000 memories intact");
        return;
    }
    let body = match agent().get(&ready).call() {
        Err(ureq::Error::Status(_, response)) => response.into_string().unwrap_or_default(),
        other => panic!("readyz: {other:?}"),
    };
    assert!(body.contains("corruption"), "{body}");
    let metrics = agent()
        .get(&format!("{}/metrics", node.url))
        .call()
        .expect("metrics")
        .into_string()
        .expect("text");
    assert!(metrics.contains("phoenix_node_corrupted 1"), "{metrics}");
    // Still alive (a restart cannot repair it) and serving the keys it can read.
    assert_eq!(status_of(&format!("{}/healthz", node.url)), 200);
    let readable = (0..3000)
        .filter(|i| node.get(&format!("k{i:05}")) == Some(value_of(*i, 1000)))
        .count();
    assert!(readable > 2000, "only {readable} of 3000 keys readable");
}

/// Reads what the server sends until it closes or `limit` passes.
fn read_reply(stream: &mut TcpStream, limit: Duration) -> (String, bool) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(n) => out.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !out.is_empty() && out.windows(4).any(|w| w == b"\r\n\r\n") {
                    return (String::from_utf8_lossy(&out).into_owned(), false);
                }
            }
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), true),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), false)
}

fn connect(url: &str) -> TcpStream {
    TcpStream::connect(url.trim_start_matches("http://")).expect("connect")
}

#[test]
fn slow_and_oversized_request_heads_are_cut_off_and_new_clients_still_get_in() {
    let work = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start_at(
        work.path(),
        &work.path().join("data"),
        "limits: {headerTimeoutMs: 500, maxConnections: 8}\n",
        false,
    );
    // Eight connections that never finish their headers take every connection slot.
    let mut slow: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut stream = connect(&node.url);
            stream
                .write_all(b"GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .expect("partial head");
            stream
        })
        .collect();
    let started = Instant::now();
    assert_eq!(status_of(&format!("{}/v1/ping", node.url)), 200);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "a new client waited {:?}",
        started.elapsed()
    );
    for stream in &mut slow {
        let (_, closed) = read_reply(stream, Duration::from_secs(3));
        assert!(closed, "a connection with an unfinished head was kept open");
    }
    // A head larger than maxHeaderBytes (16 KiB by default) is refused, not buffered.
    let mut big = connect(&node.url);
    let head = format!(
        "GET /v1/ping HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let _ = big.write_all(head.as_bytes());
    let (reply, _) = read_reply(&mut big, Duration::from_secs(3));
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 431"),
        "an oversized head got {reply:?}"
    );
}

#[test]
fn bodies_are_refused_before_they_are_read_and_the_limit_is_per_node() {
    let work = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start_at(
        work.path(),
        &work.path().join("data"),
        "limits: {maxConcurrentRequests: 1}\n",
        false,
    );
    // A declared 10 GiB body with Expect: 100-continue gets 413, never 100 Continue.
    let mut stream = connect(&node.url);
    stream
        .write_all(
            b"PUT /v1/memories/big HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\
              Expect: 100-continue\r\n\r\n",
        )
        .expect("head");
    let (reply, _) = read_reply(&mut stream, Duration::from_secs(3));
    assert!(reply.starts_with("HTTP/1.1 413"), "got {reply:?}");
    // The admin token is checked before the body is read: 401 at once.
    let mut stream = connect(&node.url);
    stream
        .write_all(b"PUT /v1/admin/faults HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .expect("head");
    let (reply, _) = read_reply(&mut stream, Duration::from_secs(3));
    assert!(reply.starts_with("HTTP/1.1 401"), "got {reply:?}");
    // The scheme is case-insensitive: an authorised request reaches the (disabled) faults.
    let lower = agent()
        .get(&format!("{}/v1/admin/faults", node.url))
        .set("Authorization", &format!("bearer {TOKEN}"))
        .call();
    assert!(
        matches!(lower, Err(ureq::Error::Status(403, _))),
        "lower-case bearer: {lower:?}"
    );

    // One request at a time for the whole node: a store whose body is still coming holds
    // the only slot, so a read of another route waits; probes do not.
    let mut holder = connect(&node.url);
    holder
        .write_all(b"PUT /v1/memories/a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
        .expect("partial body");
    std::thread::sleep(Duration::from_millis(200));
    let mut waiter = connect(&node.url);
    waiter
        .write_all(b"GET /v1/root HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("request");
    let (early, _) = read_reply(&mut waiter, Duration::from_millis(700));
    assert!(
        early.is_empty(),
        "a second request ran beside the first: {early:?}"
    );
    assert_eq!(status_of(&format!("{}/healthz", node.url)), 200);
    holder.write_all(b"67890").expect("rest of the body");
    let (stored, _) = read_reply(&mut holder, Duration::from_secs(3));
    assert!(stored.starts_with("HTTP/1.1 201"), "got {stored:?}");
    let (root, _) = read_reply(&mut waiter, Duration::from_secs(3));
    assert!(root.starts_with("HTTP/1.1 200"), "got {root:?}");
}

#[test]
fn sighup_drains_and_flushes_like_sigterm() {
    let work = tempfile::tempdir().expect("tempdir");
    let data = work.path().join("data");
    let mut node = NodeProcess::start_at(work.path(), &data, "", false);
    for i in 0..100 {
        node.put(&format!("k{i}"), "v").expect("put");
    }
    node.signal("HUP");
    assert!(node.wait_exit(Duration::from_secs(10)).success());
    drop(node);
    let node = NodeProcess::start_at(work.path(), &data, "", false);
    assert!((0..100).all(|i| node.get(&format!("k{i}")).as_deref() == Some("v")));
}

fn start_failure(dir: &Path, config: &str) -> (Option<i32>, String) {
    let path = dir.join("bad.yaml");
    std::fs::write(&path, config).expect("config");
    let output = Command::new(binary())
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("run");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_cannot_start_failure_exits_2() {
    let work = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let file: PathBuf = work.path().join("a-file");
    std::fs::write(&file, "not a directory").expect("file");
    let data = work.path().join("data");
    for (config, expect) in [
        (
            format!("listen: 127.0.0.1:{port}\ndataDir: {}\n", data.display()),
            "failed to listen",
        ),
        (
            format!("listen: 127.0.0.1:0\ndataDir: {}\n", file.display()),
            "data directory",
        ),
        ("cacheCapacity: 1\n".to_string(), "cacheCapacity"),
        (
            format!(
                "listen: 127.0.0.1:0\ndataDir: {}\nadminTokenFile: /nonexistent/token\n",
                data.display()
            ),
            "admin token file",
        ),
    ] {
        let (code, stderr) = start_failure(work.path(), &config);
        assert_eq!(code, Some(2), "{config}: {stderr}");
        assert!(stderr.contains(expect), "{config}: {stderr}");
    }
}
