//! `phoenix-node serve`: the HTTP service over the store.
//!
//! [`app`] builds the router so tests drive it without a socket; [`serve`] binds, runs the
//! probe on its cadence, and shuts down on SIGTERM/SIGINT: stop accepting, drain in-flight
//! requests under `shutdownTimeoutSeconds`, checkpoint and flush, return.

mod error;
mod handlers;
pub mod metrics;

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

use crate::config::NodeConfig;
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
    /// Metrics.
    pub metrics: Metrics,
    /// The admin token; `None` disables the admin endpoints.
    pub admin_token: Option<AdminToken>,
    /// Request limits and timeouts.
    pub config: NodeConfig,
    /// False while opening and once shutdown has begun.
    accepting: AtomicBool,
    /// Held while a cleanup runs.
    cleanup_running: tokio::sync::Mutex<()>,
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
        Ok(Node {
            store,
            last_snapshot: Mutex::new(probe.snapshot()),
            probe: Mutex::new(probe),
            metrics: Metrics::new()?,
            admin_token,
            config,
            accepting: AtomicBool::new(true),
            cleanup_running: tokio::sync::Mutex::new(()),
        })
    }

    /// Whether `/readyz` says ready: accepting, and not swapping to a rebuilt database.
    pub fn ready(&self) -> bool {
        self.accepting.load(Ordering::SeqCst) && !self.store.is_rebuilding()
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
        (&Method::PUT | &Method::GET, "/v1/admin/faults") => "faults",
        (&Method::GET, "/v1/ping") => "ping",
        _ => "other",
    }
}

/// Times every request, answers 503 past `requestTimeoutMs`, records metrics.
async fn observe(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let operation = operation_of(
        request.method(),
        request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str),
    );
    let timeout = Duration::from_millis(node.config.limits.request_timeout_ms);
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::Timeout.into_response(),
    };
    node.metrics.observe_request(
        operation,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The node's router.
pub fn app(node: Arc<Node>) -> Router {
    let limits = node.config.limits;
    Router::new()
        .route(
            "/v1/memories/{*key}",
            put(handlers::store)
                .get(handlers::retrieve)
                .delete(handlers::delete),
        )
        .route("/v1/memories", get(handlers::list))
        .route("/v1/root", get(handlers::root))
        .route("/v1/proof/{*key}", get(handlers::proof))
        .route("/v1/admin/cleanup", post(handlers::cleanup))
        .route(
            "/v1/admin/faults",
            put(handlers::set_fault).get(handlers::get_fault),
        )
        .route("/v1/ping", get(handlers::ping))
        .route("/metrics", get(handlers::metrics))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(Arc::clone(&node), observe))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ))
        .with_state(node)
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received, shutting down"),
        _ = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// Opens the store and serves until SIGTERM/SIGINT, then drains and closes.
///
/// # Errors
/// Bind, open and token errors at start; a failed checkpoint or flush at the end.
pub async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    use anyhow::Context;
    let admin_token = match &config.admin_token_file {
        Some(path) => Some(AdminToken::from_file(path).map_err(anyhow::Error::msg)?),
        None => {
            tracing::warn!("no adminTokenFile: admin endpoints are disabled");
            None
        }
    };
    let store_config = config.store_config();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await
        .context("store open task failed")?
        .with_context(|| format!("failed to open the store in {}", config.data_dir.display()))?;
    let store = Arc::new(store);
    let node = Arc::new(Node::new(Arc::clone(&store), config.clone(), admin_token)?);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to listen on {}", config.listen))?;
    tracing::info!(address = %listener.local_addr()?, data = %config.data_dir.display(), "serving");

    // The probe: a fixed cadence, on a blocking thread (it times blocking retrieves).
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
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

    let drain_node = Arc::clone(&node);
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(listener, app(Arc::clone(&node))).with_graceful_shutdown(async move {
        shutdown_signal().await;
        drain_node.stop_accepting();
        let _ = drained_tx.send(());
    });
    let deadline = Duration::from_secs(config.shutdown_timeout_seconds);
    let drain_deadline = async move {
        if drained_rx.await.is_ok() {
            tokio::time::sleep(deadline).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result.context("server failed")?,
        _ = drain_deadline => tracing::warn!(?deadline, "in-flight requests did not finish in time"),
    }
    let _ = stop_tx.send(true);
    let _ = probe_task.await;
    tokio::task::spawn_blocking(move || {
        store.checkpoint()?;
        store.flush()
    })
    .await
    .context("final flush task failed")?
    .context("failed to flush at shutdown")?;
    tracing::info!("flushed; bye");
    Ok(())
}
