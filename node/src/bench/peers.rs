//! `phoenix-node bench --http --peers`: the node against a store users already know, driven
//! the same way. When `redis-server` is on the `PATH` (Debian: `apt-get install
//! redis-server`; or `PHOENIX_REDIS_SERVER`), one is started on loopback with AOF
//! `appendfsync everysec` (the closest match to the node's periodic durability) and both
//! are measured by one procedure: a bulk load of new keys by `concurrency` clients, one
//! client's get and set latency, and `concurrency` clients' gets and sets per second, over
//! keep-alive connections (HTTP/1.1 for the node, RESP for Redis; each request in one
//! write), values 256–1024 B.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::http::{Values, key};
use super::{BenchError, BenchOptions, Percentiles, ScenarioResult, histogram, nanos};
use crate::config::DurabilityMode;

/// One connection to a store under test.
trait Connection {
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), BenchError>;
    fn get(&mut self, key: &str) -> Result<(), BenchError>;
}

/// The node over HTTP: one keep-alive connection, each request in one write (as the
/// Redis client sends each command).
struct Http(super::client::Client);

impl Connection for Http {
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), BenchError> {
        self.0
            .expect("PUT", &format!("/v1/memories/{key}"), value, false)
    }

    fn get(&mut self, key: &str) -> Result<(), BenchError> {
        self.0
            .expect("GET", &format!("/v1/memories/{key}"), b"", true)
    }
}

/// Redis over RESP.
struct Resp {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl Resp {
    fn connect(port: u16) -> Result<Resp, BenchError> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            line: String::new(),
            body: Vec::new(),
        })
    }

    fn command(&mut self, parts: &[&[u8]]) -> Result<(), BenchError> {
        let mut request = format!("*{}\r\n", parts.len()).into_bytes();
        for part in parts {
            request.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
            request.extend_from_slice(part);
            request.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&request)?;
        self.line.clear();
        self.reader.read_line(&mut self.line)?;
        match self.line.as_bytes().first() {
            Some(b'+' | b':') => Ok(()),
            Some(b'$') => {
                let len: i64 = self.line[1..]
                    .trim()
                    .parse()
                    .map_err(|_| BenchError::Http(format!("redis: bad reply {:?}", self.line)))?;
                if let Ok(len) = usize::try_from(len) {
                    self.body.resize(len + 2, 0);
                    std::io::Read::read_exact(&mut self.reader, &mut self.body)?;
                }
                Ok(())
            }
            _ => Err(BenchError::Http(format!("redis answered {:?}", self.line))),
        }
    }
}

impl Connection for Resp {
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), BenchError> {
        self.command(&[b"SET", key.as_bytes(), value])
    }

    fn get(&mut self, key: &str) -> Result<(), BenchError> {
        self.command(&[b"GET", key.as_bytes()])
    }
}

/// A `redis-server` child, stopped on drop.
struct RedisServer {
    _child: super::KillOnDrop,
    port: u16,
}

/// `redis-server` on the `PATH` or at `PHOENIX_REDIS_SERVER`, if there is one.
pub fn redis_server() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PHOENIX_REDIS_SERVER") {
        return Some(PathBuf::from(path));
    }
    super::which("redis-server")
}

fn start_redis(binary: &Path, dir: &Path) -> Result<RedisServer, BenchError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = Command::new(binary)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--appendonly", "yes", "--appendfsync", "everysec"])
        .args(["--save", "", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = RedisServer {
        _child: super::KillOnDrop(child),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut probe) = Resp::connect(port)
            && probe.command(&[b"PING"]).is_ok()
        {
            return Ok(server);
        }
        if Instant::now() > deadline {
            return Err(BenchError::Http(
                "redis-server did not answer within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one store did under the common procedure.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    bulk_per_second: f64,
    get: Percentiles,
    set: Percentiles,
    gets_per_second: f64,
    sets_per_second: f64,
}

/// Runs `work(connection, thread)` on `concurrency` threads; operations a second.
fn rate<C: Connection>(
    concurrency: usize,
    ops: u64,
    connect: &(dyn Fn() -> Result<C, BenchError> + Sync),
    work: &(dyn Fn(&mut C, &mut fastrand::Rng, u64) -> Result<(), BenchError> + Sync),
    seed: u64,
) -> Result<f64, BenchError> {
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..concurrency)
            .map(|t| {
                let done = &done;
                scope.spawn(move || -> Result<(), BenchError> {
                    let mut connection = connect()?;
                    let mut rng = fastrand::Rng::with_seed(seed ^ ((t as u64 + 1) * 0x9E37));
                    loop {
                        let op = done.fetch_add(1, Ordering::Relaxed);
                        if op >= ops {
                            return Ok(());
                        }
                        work(&mut connection, &mut rng, op)?;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| BenchError::Http("client thread panicked".into()))??;
        }
        Ok::<(), BenchError>(())
    })?;
    Ok(ops as f64 / started.elapsed().as_secs_f64())
}

/// The common procedure against one store.
fn measure<C: Connection>(
    keys: u64,
    ops: u64,
    concurrency: usize,
    seed: u64,
    connect: &(dyn Fn() -> Result<C, BenchError> + Sync),
) -> Result<Figures, BenchError> {
    let values = Values::new(seed);
    let bulk_per_second = rate(
        concurrency,
        keys,
        connect,
        &|c, rng, op| c.set(&key(op), values.next(rng)),
        seed,
    )?;
    let mut one = connect()?;
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x51);
    let (mut gets, mut sets) = (histogram(), histogram());
    for _ in 0..ops / 4 {
        let id = rng.u64(0..keys);
        let at = Instant::now();
        one.get(&key(id))?;
        gets.saturating_record(nanos(at.elapsed()));
        let body = values.next(&mut rng);
        let id = rng.u64(0..keys);
        let at = Instant::now();
        one.set(&key(id), body)?;
        sets.saturating_record(nanos(at.elapsed()));
    }
    let gets_per_second = rate(
        concurrency,
        ops,
        connect,
        &|c, rng, _| c.get(&key(rng.u64(0..keys))),
        seed ^ 0x6E7,
    )?;
    let sets_per_second = rate(
        concurrency,
        ops,
        connect,
        &|c, rng, _| {
            let body = values.next(rng);
            c.set(&key(rng.u64(0..keys)), body)
        },
        seed ^ 0x5E7,
    )?;
    Ok(Figures {
        bulk_per_second,
        get: Percentiles::of(&gets),
        set: Percentiles::of(&sets),
        gets_per_second,
        sets_per_second,
    })
}

/// A figure's name, padded so the table's columns line up.
fn label(name: &str) -> String {
    format!("{name:<22}")
}

fn row(f: &Figures) -> String {
    format!(
        "{:>9.1} {:>9.1} {:>9.0} {:>9.0} {:>9.0}",
        f.get.p50_ns as f64 / 1e3,
        f.set.p50_ns as f64 / 1e3,
        f.gets_per_second,
        f.sets_per_second,
        f.bulk_per_second
    )
}

/// The node (periodic durability) and Redis (AOF everysec) under the same procedure.
///
/// # Errors
/// The node or Redis failed, or a request did.
pub(super) fn peers(
    options: &BenchOptions,
    dir: &Path,
    concurrency: usize,
) -> Result<ScenarioResult, BenchError> {
    let keys = ((100_000.0 * options.scale) as u64).max(1000);
    let ops = ((200_000.0 * options.scale) as u64).max(1000);
    let served = super::http::serve(dir, DurabilityMode::Periodic)?;
    let url = served.url.clone();
    let connect_http = || Ok(Http(super::client::Client::connect(&url)?));
    let phoenix = measure(keys, ops, concurrency, options.seed, &connect_http)?;
    drop(served.runtime);
    let header = format!(
        "{:>9} {:>9} {:>9} {:>9} {:>9}",
        "GET p50µs", "SET p50µs", "GET/s", "SET/s", "bulk/s"
    );
    let mut figures = vec![
        (label("store"), header),
        (label("phoenix-node, periodic"), row(&phoenix)),
    ];
    match redis_server() {
        None => figures.push((
            label("Redis"),
            "redis-server is not installed (Debian: apt-get install redis-server; or set \
             PHOENIX_REDIS_SERVER): no peer figures"
                .into(),
        )),
        Some(binary) => {
            let redis_dir = dir.join("redis");
            std::fs::create_dir_all(&redis_dir)?;
            let server = start_redis(&binary, &redis_dir)?;
            let port = server.port;
            let redis = measure(keys, ops, concurrency, options.seed, &|| {
                Resp::connect(port)
            })?;
            drop(server);
            figures.push((label("Redis, AOF everysec"), row(&redis)));
            let times = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
            figures.push((
                label("phoenix / Redis"),
                format!(
                    "{:>8.2}× {:>8.2}× {:>8.2}× {:>8.2}× {:>8.2}×",
                    times(phoenix.get.p50_ns as f64, redis.get.p50_ns as f64),
                    times(phoenix.set.p50_ns as f64, redis.set.p50_ns as f64),
                    times(phoenix.gets_per_second, redis.gets_per_second),
                    times(phoenix.sets_per_second, redis.sets_per_second),
                    times(phoenix.bulk_per_second, redis.bulk_per_second),
                ),
            ));
        }
    }
    Ok(ScenarioResult {
        name: "http-peers",
        description: format!(
            "the node and Redis driven alike on loopback: {keys} keys bulk-loaded by {concurrency} clients, {} gets and {} sets by one client, {ops} gets and {ops} sets by {concurrency} clients (values 256–1024 B, keep-alive)",
            ops / 4,
            ops / 4
        ),
        windows: Vec::new(),
        figures,
        peak_rss_bytes: super::peak_rss_bytes(),
    })
}
