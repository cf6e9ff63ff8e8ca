//! `phoenix-node serve`: the HTTP service over the store.
//!
//! [`app`] builds the router so tests drive it without a socket; [`serve`] binds, runs the
//! probe and the scrub on their cadences, and shuts down on SIGTERM, SIGINT or SIGHUP: stop
//! accepting, drain in-flight requests, checkpoint and flush, all within
//! `shutdownTimeoutSeconds` (a final flush that hangs is abandoned and reported as an error).
//!
//! Connections are served by hyper's HTTP/1 server directly (not `axum::serve`) so that a
//! client gets `limits.headerTimeoutMs` to send its request head, at most
//! `limits.maxHeaderBytes` of it, and at most `limits.maxConnections` connections are open
//! at once (more wait in the listen backlog instead of exhausting file descriptors).

mod error;
mod handlers;
pub mod metrics;
pub mod replicated;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};

pub use error::ApiError;
use metrics::Metrics;

use crate::config::{NodeConfig, NodeSettings};
use crate::probe::{Probe, ProbeSnapshot};
use crate::store::Store;

/// The admin bearer token, kept as its hash so comparisons take constant time.
#[derive(Clone)]
pub struct AdminToken(blake3::Hash);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A token from its text (surrounding whitespace ignored).
    ///
    /// # Errors
    /// An empty token.
    pub fn new(text: &str) -> Result<AdminToken, String> {
        let token = text.trim();
        if token.is_empty() {
            return Err("the admin token is empty".into());
        }
        Ok(AdminToken(blake3::hash(token.as_bytes())))
    }

    /// Reads the token from a file (what the operator's Secret mounts).
    ///
    /// # Errors
    /// Unreadable or empty file (the message names the file, never its content).
    pub fn from_file(path: &std::path::Path) -> Result<AdminToken, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("failed to read admin token file {}: {e}", path.display()))?;
        AdminToken::new(&text).map_err(|e| format!("{e} (file {})", path.display()))
    }

    /// Constant-time comparison with a presented token.
    pub fn matches(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let presented = blake3::hash(presented.as_bytes());
        bool::from(self.0.as_bytes().ct_eq(presented.as_bytes()))
    }
}

/// Everything the handlers share.
#[derive(Debug)]
pub struct Node {
    /// The store.
    pub store: Arc<Store>,
    /// The latency probe (ticked by [`serve`]'s probe task, re-measured by cleanup).
    pub probe: Mutex<Probe>,
    /// The probe's last snapshot, for scrapes that arrive while a cleanup holds the probe.
    last_snapshot: Mutex<ProbeSnapshot>,
    /// The latency of the retrieves clients were served (ticked with the probe).
    pub served: crate::served::Served,
    /// Metrics.
    pub metrics: Metrics,
    /// The admin token; `None` disables the admin endpoints.
    pub admin_token: Option<AdminToken>,
    /// This node's part in its memory's Raft group (`None`: a single node).
    pub replica: Option<Arc<crate::replication::Replica>>,
    /// Request limits and timeouts.
    pub config: NodeConfig,
    /// False while opening and once shutdown has begun.
    accepting: AtomicBool,
    /// Held while a cleanup runs.
    cleanup_running: tokio::sync::Mutex<()>,
    /// Requests served at once, node-wide (`limits.maxConcurrentRequests`).
    requests: tokio::sync::Semaphore,
    /// Request-body KiB held at once, node-wide (`limits.maxInflightBodyBytes`).
    body_kib: tokio::sync::Semaphore,
}

impl Node {
    /// Node state around an opened store.
    ///
    /// # Errors
    /// Engine errors reading the probe baseline; metric registration errors.
    pub fn new(
        store: Arc<Store>,
        config: NodeConfig,
        admin_token: Option<AdminToken>,
    ) -> anyhow::Result<Node> {
        let mut probe = Probe::load(&store, config.probe_config())?;
        if crate::cleanup::resume_unsettled(&store, &mut probe)? {
            tracing::info!("the last cleanup had not settled before the restart: settling now");
        }
        let served = crate::served::Served::load(&store, config.served_config())?;
        Ok(Node {
            store,
            served,
            last_snapshot: Mutex::new(probe.snapshot()),
            probe: Mutex::new(probe),
            metrics: Metrics::new()?,
            admin_token,
            replica: None,
            accepting: AtomicBool::new(true),
            cleanup_running: tokio::sync::Mutex::new(()),
            requests: tokio::sync::Semaphore::new(config.limits.max_concurrent_requests),
            body_kib: tokio::sync::Semaphore::new(
                config.limits.max_inflight_body_bytes.div_ceil(1024),
            ),
            config,
        })
    }

    /// The node with `replica` serving writes and reads through its Raft group.
    #[must_use]
    pub fn with_replica(mut self, replica: Arc<crate::replication::Replica>) -> Node {
        self.replica = Some(replica);
        self
    }

    /// Why `/readyz` says not ready, if it does: opening or stopping, swapping to a rebuilt
    /// database, corruption found, or writes that cannot be made durable.
    pub fn unready_reason(&self) -> Option<String> {
        if !self.accepting.load(Ordering::SeqCst) {
            return Some("the node is opening or stopping".into());
        }
        // A rebuild's copy serves every read (writes get 503 + Retry-After meanwhile): the
        // node stays in its Service for it, and leaves only for the swap.
        if self.store.is_swapping() {
            return Some("the store is switching to its rebuilt database".into());
        }
        let corruption = self.store.corruption();
        if corruption.detected > 0 {
            return Some(format!(
                "corruption detected ({} findings, keys {:?}); the node serves what it can \
                 read and needs repair",
                corruption.detected, corruption.keys
            ));
        }
        self.health_problem()
    }

    /// Whether `/readyz` says ready.
    pub fn ready(&self) -> bool {
        self.unready_reason().is_none()
    }

    /// Why `/healthz` fails, if it does: writes cannot be made durable (a flush failed, or
    /// none has succeeded for `durability.stallTimeoutMs`). A restart is what recovers.
    pub fn health_problem(&self) -> Option<String> {
        if let Some(replica) = &self.replica
            && let Err(fatal) = &replica.metrics().running_state
        {
            return Some(format!("replication stopped: {fatal}"));
        }
        self.store
            .flush_health()
            .refusing
            .map(|error| error.to_string())
    }

    /// Marks the node as stopping (readiness goes false first, so traffic drains away).
    pub fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// Runs one probe tick (blocking; call from a blocking thread).
    pub fn probe_tick(&self) {
        let mut probe = self.probe.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(error) = probe.tick(&self.store) {
            tracing::warn!(%error, "probe tick failed");
        }
        if let Err(error) = self.served.tick(&self.store) {
            tracing::warn!(%error, "served-latency tick failed");
        }
        if let Some(settled) = probe.take_settled() {
            match crate::cleanup::record_settled(&self.store, settled) {
                Ok(Some(report)) => tracing::info!(
                    ratio_before = ?report.ratio_before,
                    ratio_after = ?report.ratio_after,
                    baseline_reset = report.baseline_reset,
                    "cleanup settled"
                ),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "failed to record the settled cleanup"),
            }
        }
        self.remember_snapshot(&probe);
    }

    /// Keeps `probe`'s snapshot for scrapes.
    pub fn remember_snapshot(&self, probe: &Probe) {
        *self
            .last_snapshot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = probe.snapshot();
    }

    /// The probe's current snapshot, without waiting for a cleanup that holds the probe.
    pub fn probe_snapshot(&self) -> ProbeSnapshot {
        match self.probe.try_lock() {
            Ok(probe) => probe.snapshot(),
            Err(_) => *self
                .last_snapshot
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }
}

/// The operation name of a matched route, for metric labels (a fixed set).
fn operation_of(method: &axum::http::Method, path: Option<&str>) -> &'static str {
    use axum::http::Method;
    match (method, path.unwrap_or("")) {
        (&Method::PUT, "/v1/memories/{*key}") => "store",
        (&Method::GET, "/v1/memories/{*key}") => "retrieve",
        (&Method::DELETE, "/v1/memories/{*key}") => "delete",
        (&Method::GET, "/v1/memories") => "list",
        (&Method::GET, "/v1/root") => "root",
        (&Method::GET, "/v1/proof/{*key}") => "proof",
        (&Method::POST, "/v1/admin/cleanup") => "cleanup",
        (&Method::PUT | &Method::GET, "/v1/admin/faults")
        | (&Method::POST, "/v1/admin/faults/corrupt" | "/v1/admin/faults/diverge") => "faults",
        (&Method::GET, "/v1/ping") => "ping",
        _ => "other",
    }
}

/// Times every request, answers 503 past `requestTimeoutMs`, records metrics.
async fn observe(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut laps = crate::stages::Laps::start();
    let operation = operation_of(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    // A cleanup is not cut by the request timeout: a rebuild of any size runs to its end
    // and is answered with what it was (the caller's own timeout bounds its wait).
    let response = if operation == "cleanup" {
        next.run(request).await
    } else {
        let timeout = Duration::from_millis(node.config.limits.request_timeout_ms);
        match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) => ApiError::Timeout.into_response(),
        }
    };
    if operation == "store" {
        laps.lap(crate::stages::Stage::Server);
    }
    let took = started.elapsed();
    if operation == "retrieve" && response.status() == axum::http::StatusCode::OK {
        node.served.record(took);
    }
    node.metrics
        .observe_request(operation, response.status().as_u16(), took.as_secs_f64());
    response
}

/// Bounds the requests served at once by the whole node (`limits.maxConcurrentRequests`)
/// and the request-body bytes they hold (`limits.maxInflightBodyBytes`): one pair of
/// semaphores in [`Node`], whatever the route. A request reserves its declared length (or
/// `maxBodyBytes` without one) before its body is read.
async fn limit_concurrency(
    State(node): State<Arc<Node>>,
    request: Request,
    next: Next,
) -> Response {
    let limits = node.config.limits;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let has_body = declared.is_some_and(|n| n > 0)
        || (declared.is_none()
            && request
                .headers()
                .contains_key(axum::http::header::TRANSFER_ENCODING));
    let body_bytes = if has_body {
        declared
            .unwrap_or(limits.max_body_bytes)
            .min(limits.max_body_bytes)
    } else {
        0
    };
    let kib = u32::try_from(body_bytes.div_ceil(1024)).unwrap_or(u32::MAX);
    let Ok(_request) = node.requests.acquire().await else {
        return ApiError::NotReady.into_response();
    };
    let Ok(_body) = node.body_kib.acquire_many(kib).await else {
        return ApiError::NotReady.into_response();
    };
    next.run(request).await
}

/// The body limit of Raft RPCs: a batch of up to [`crate::replication::MAX_PAYLOAD_ENTRIES`]
/// entries of the largest body, or a snapshot chunk.
fn raft_body_limit(limits: &crate::config::LimitsConfig) -> usize {
    limits
        .max_body_bytes
        .saturating_add(1024)
        .saturating_mul(crate::replication::MAX_PAYLOAD_ENTRIES as usize)
        .saturating_add(8 << 20)
}

/// Answers 413 when the declared body is over `limits.maxBodyBytes`, before any of it is
/// read (so a client sending `Expect: 100-continue` never gets `100 Continue` for it).
async fn refuse_oversized(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let max = if request.uri().path().starts_with("/v1/raft/") {
        raft_body_limit(&node.config.limits)
    } else {
        node.config.limits.max_body_bytes
    };
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > max as u64 => ApiError::BodyTooLarge(max).into_response(),
        _ => next.run(request).await,
    }
}

/// The node's router: every route.
pub fn app(node: Arc<Node>) -> Router {
    router(node, true)
}

/// The router of the client port when a separate peer port serves the Raft RPCs: every
/// route but `/v1/raft/…`.
pub fn client_app(node: Arc<Node>) -> Router {
    router(node, false)
}

fn router(node: Arc<Node>, with_raft: bool) -> Router {
    let limits = node.config.limits;
    // Admin routes check the token before anything else, the body included.
    let admin = Router::new()
        .route("/v1/admin/cleanup", post(handlers::cleanup))
        .route(
            "/v1/admin/faults",
            put(handlers::set_fault).get(handlers::get_fault),
        )
        .route("/v1/admin/faults/corrupt", post(handlers::corrupt))
        .route("/v1/admin/raft", get(replicated::status))
        .route("/v1/admin/raft/init", post(replicated::init))
        .route("/v1/admin/raft/learners", post(replicated::add_learner))
        .route("/v1/admin/raft/promote", post(replicated::promote))
        .route("/v1/admin/raft/remove", post(replicated::remove))
        .route("/v1/admin/raft/leader", post(replicated::move_leader))
        .route("/v1/admin/raft/prune", post(replicated::prune_route))
        .route("/v1/admin/raft/rejoin", post(replicated::rejoin))
        .route("/v1/admin/faults/diverge", post(handlers::diverge))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&node),
            handlers::require_admin,
        ));
    let work = Router::new()
        .route(
            "/v1/memories/{*key}",
            put(handlers::store)
                .get(handlers::retrieve)
                .delete(handlers::delete),
        )
        .route("/v1/memories", get(handlers::list))
        .route("/v1/root", get(handlers::root))
        .route("/v1/proof/{*key}", get(handlers::proof))
        .route("/v1/ping", get(handlers::ping))
        .merge(admin)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&node),
            limit_concurrency,
        ));
    // Raft RPCs: the peer token, their own body limit (a batch of entries), and not counted
    // against the client request limit (heartbeats must get through a busy node).
    let raft = Router::new()
        .route("/v1/raft/append", post(replicated::raft_append))
        .route("/v1/raft/vote", post(replicated::raft_vote))
        .route("/v1/raft/snapshot", post(replicated::raft_snapshot))
        .route("/v1/raft/read-index", post(replicated::raft_read_index))
        .route("/v1/raft/elect", post(replicated::raft_elect))
        .layer(DefaultBodyLimit::max(raft_body_limit(&limits)))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&node),
            replicated::require_peer,
        ));
    // Probes and scrapes are not counted against the limit: the kubelet must get answers
    // from a busy node.
    let probes = Router::new()
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz));
    let routes = if with_raft {
        Router::new().merge(work).merge(raft)
    } else {
        work
    };
    routes
        .merge(probes)
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&node),
            refuse_oversized,
        ))
        .layer(middleware::from_fn_with_state(Arc::clone(&node), observe))
        .with_state(node)
}

/// The node could not start (configuration, token, data directory, listen address): the
/// CLI exits 2 for these, 1 for failures after it started serving.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct CannotStart(pub anyhow::Error);

/// Resolves on SIGTERM, SIGINT or SIGHUP (all three drain, checkpoint and flush).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let (terminate, hangup) = {
        use tokio::signal::unix::{SignalKind, signal};
        let wait = |kind: SignalKind, name: &'static str| async move {
            match signal(kind) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for {name}");
                    std::future::pending::<()>().await;
                }
            }
        };
        (
            wait(SignalKind::terminate(), "SIGTERM"),
            wait(SignalKind::hangup(), "SIGHUP"),
        )
    };
    #[cfg(not(unix))]
    let (terminate, hangup) = (std::future::pending::<()>(), std::future::pending::<()>());
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
        () = hangup => tracing::info!("SIGHUP received, shutting down"),
    }
}

/// Accepts connections until `shutdown` resolves, then stops accepting and returns the
/// handle that waits for the open connections to finish.
pub(crate) async fn accept(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: crate::config::LimitsConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> hyper_util::server::graceful::GracefulShutdown {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(limits.header_timeout_ms))
        .max_header_size(limits.max_header_bytes);
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    graceful
}

/// Checks records in the background at `scrub.keysPerSecond`, a full pass every
/// `scrub.periodSeconds`.
async fn scrub(node: Arc<Node>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let settings = node.config.scrub;
    if settings.keys_per_second == 0 {
        return;
    }
    const TICKS_PER_SECOND: u64 = 10;
    let batch =
        usize::try_from(settings.keys_per_second.div_ceil(TICKS_PER_SECOND)).unwrap_or(usize::MAX);
    let mut ticker = tokio::time::interval(Duration::from_millis(1000 / TICKS_PER_SECOND));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let cursor = Arc::new(Mutex::new(crate::store::ScrubCursor::default()));
    let mut pass_started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let worker = Arc::clone(&node);
        let at = Arc::clone(&cursor);
        let step = tokio::task::spawn_blocking(move || {
            let mut cursor = at.lock().unwrap_or_else(PoisonError::into_inner);
            worker.store.scrub_step(&mut cursor, batch)
        })
        .await;
        match step {
            Ok(Ok(crate::store::ScrubStep::More)) => {}
            Ok(Ok(crate::store::ScrubStep::PassDone)) => {
                tracing::debug!(corrupted = node.store.is_corrupted(), "scrub pass done");
                let next = pass_started + Duration::from_secs(settings.period_seconds);
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    _ = stop.changed() => return,
                }
                pass_started = tokio::time::Instant::now();
            }
            Ok(Err(error)) => tracing::warn!(%error, "scrub step failed"),
            Err(_) => tracing::error!("scrub step panicked"),
        }
    }
}

/// Opens the store and serves until SIGTERM/SIGINT/SIGHUP, then drains and closes.
///
/// # Errors
/// [`CannotStart`] for bind, open and token errors; a drain, checkpoint or flush that
/// fails or does not finish within `shutdownTimeoutSeconds` at the end.
pub async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let start = async {
        let admin_token = match &config.admin_token_file {
            Some(path) => Some(AdminToken::from_file(path).map_err(anyhow::Error::msg)?),
            None => {
                tracing::warn!("no adminTokenFile: admin endpoints are disabled");
                None
            }
        };
        let store_config = config.store_config();
        let data_dir = config.data_dir.clone();
        let opened = tokio::task::spawn_blocking(move || Store::open(store_config)).await;
        let store = match opened {
            Ok(store) => store
                .with_context(|| format!("failed to open the store in {}", data_dir.display()))?,
            Err(panicked) => anyhow::bail!(
                "failed to open the store in {}: the database engine panicked ({panicked}); \
                 its files are likely corrupt. This node changed nothing; `phoenix-node verify \
                 --data DIR` checks a copy offline",
                data_dir.display()
            ),
        };
        let store = Arc::new(store);
        let mut node = Node::new(Arc::clone(&store), config.clone(), admin_token)?;
        if let Some(replication) = &config.replication {
            if let Some(cleared) =
                crate::replication::reset_if_asked(&store).context("failed to reset")?
            {
                tracing::warn!(
                    cleared,
                    "rejoining the group from scratch: memories, log and applied index deleted"
                );
            }
            // The Raft log is always flushed before an entry counts; `durability` governs
            // the store (which the log replays after a crash).
            let replica = crate::replication::Replica::start(replication, Arc::clone(&store))
                .await
                .context("failed to start replication")?;
            tracing::info!(
                id = replica.id,
                peers = replication.peers.len(),
                "replication started"
            );
            let replica = Arc::new(replica);
            Arc::clone(&replica).bootstrap(replication).await;
            node = node.with_replica(replica);
        } else if crate::replication::leave_group(&store).context("failed to leave the group")? {
            tracing::warn!(
                "the data directory held a Raft log but replication is off: this node now \
                 serves alone with the data it had applied (the log was removed)"
            );
        }
        let node = Arc::new(node);
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        let peer_listener = match config.replication.as_ref().and_then(|r| r.listen) {
            Some(address) => Some(
                tokio::net::TcpListener::bind(address)
                    .await
                    .with_context(|| format!("failed to listen on {address} (peers)"))?,
            ),
            None => None,
        };
        anyhow::Ok((store, node, listener, peer_listener))
    };
    let (store, node, listener, peer_listener) = start.await.map_err(CannotStart)?;
    tracing::info!(address = %listener.local_addr()?, data = %config.data_dir.display(), "serving");
    // One signal stops every listener.
    let (stopping_tx, stopping_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stopping_tx.send(true);
    });
    let stopped = move || {
        let mut rx = stopping_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let peers = match peer_listener {
        Some(peer_listener) => {
            tracing::info!(address = %peer_listener.local_addr()?, "serving the peers");
            let (node, limits, stopped) = (Arc::clone(&node), config.limits, stopped());
            Some(tokio::spawn(async move {
                accept(peer_listener, app(node), limits, stopped).await
            }))
        }
        None => None,
    };
    let client_router = if peers.is_some() {
        client_app(Arc::clone(&node))
    } else {
        app(Arc::clone(&node))
    };

    // The probe: a fixed cadence, on a blocking thread (it times blocking retrieves).
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let scrub_task = tokio::spawn(scrub(Arc::clone(&node), stop_tx.subscribe()));
    let probe_node = Arc::clone(&node);
    let interval = Duration::from_millis(config.probe.interval_ms);
    let probe_task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    let node = Arc::clone(&probe_node);
                    if tokio::task::spawn_blocking(move || node.probe_tick()).await.is_err() {
                        tracing::error!("probe tick panicked");
                    }
                }
                _ = stop_rx.changed() => break,
            }
        }
    });

    let graceful = accept(listener, client_router, config.limits, stopped()).await;
    let peer_graceful = match peers {
        Some(task) => task.await.ok(),
        None => None,
    };
    node.stop_accepting();
    // One budget for the whole shutdown (the pod's grace period is longer): the drain may
    // use three quarters of it, the checkpoint and flush what is left.
    let budget = Duration::from_secs(config.shutdown_timeout_seconds);
    let stopping = tokio::time::Instant::now();
    let deadline = stopping + budget;
    let drained = async {
        graceful.shutdown().await;
        if let Some(peer_graceful) = peer_graceful {
            peer_graceful.shutdown().await;
        }
    };
    if tokio::time::timeout_at(stopping + budget * 3 / 4, drained)
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time");
    }
    let _ = stop_tx.send(true);
    let _ = probe_task.await;
    let _ = scrub_task.await;
    if let Some(replica) = &node.replica {
        let _ = tokio::time::timeout_at(deadline, replica.shutdown()).await;
    }
    let closing = tokio::task::spawn_blocking(move || {
        store.checkpoint()?;
        store.flush()
    });
    match tokio::time::timeout_at(deadline, closing).await {
        Ok(joined) => joined
            .context("final flush task failed")?
            .context("failed to flush at shutdown")?,
        Err(_) => anyhow::bail!(
            "the final checkpoint and flush did not finish within shutdownTimeoutSeconds ({} s); \
             writes acknowledged since the last successful flush may be lost",
            config.shutdown_timeout_seconds
        ),
    }
    tracing::info!("flushed; bye");
    Ok(())
}
