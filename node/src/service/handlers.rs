//! Thin handlers: extract and check input → store → typed response.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::Deserialize;

use super::replicated::{self, Consistency};
use super::{ApiError, Node};
use crate::replication::{Command, Reply};
use phoenix_node_api::wire::{ListItem, ListPage, Root, Stored};

use crate::cleanup::{self, CleanupOptions, CleanupReport};
use crate::fault::FaultSpec;
use crate::merkle::hex_hash;

type ApiResult<T> = Result<T, ApiError>;

/// The key from the path, checked the same way for every operation (a read of a key that
/// could never be stored is a 400, not a 404).
fn key_of(node: &Node, path: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let Path(key) = path.map_err(|e| ApiError::bad_request("invalid_key", e.body_text()))?;
    let max = node.config.limits.max_key_bytes;
    if key.is_empty() || key.len() > max {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("keys must be 1 to {max} bytes long, got {}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_key",
            "keys must not contain control characters",
        ));
    }
    Ok(key)
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> ApiResult<T> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::Internal(format!("store task failed: {e}")))?
}

/// Values up to this size are written on the request's own task when nothing waits for a
/// flush (see [`write`]).
const INLINE_WRITE_BYTES: usize = 64 << 10;

/// Runs a write of `bytes` bytes: on the request's own task when it cannot wait (durability
/// periodic and a small value: the engine's insert and the Merkle update take microseconds,
/// and the hop to the blocking pool and back — two thread switches — cost more than the
/// write itself), else on the blocking pool (a sync write waits for its flush; a large value
/// takes milliseconds to chunk and insert).
async fn write<T: Send + 'static>(
    node: &Node,
    bytes: usize,
    work: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    let waits = node.store.config().durability == crate::store::Durability::Sync;
    if waits || bytes > INLINE_WRITE_BYTES {
        blocking(work).await
    } else {
        work()
    }
}

/// Query of a store.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct StoreParams {
    ttl_seconds: Option<u64>,
}

/// `PUT /v1/memories/{key}?ttlSeconds=N` with the value as the body.
pub(super) async fn store(
    State(node): State<Arc<Node>>,
    uri: Uri,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<StoreParams>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let mut laps = crate::stages::Laps::start();
    let key = key_of(&node, path)?;
    let params = query(params)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::BodyTooLarge(node.config.limits.max_body_bytes),
        _ => ApiError::bad_request("invalid_body", e.body_text()),
    })?;
    if params.ttl_seconds == Some(0) {
        return Err(ApiError::bad_request(
            "invalid_ttl",
            "ttlSeconds must be at least 1",
        ));
    }
    let ttl = params.ttl_seconds.map(Duration::from_secs);
    laps.lap(crate::stages::Stage::Extract);
    let (stored, applied) = if let Some(replica) = &node.replica {
        let request = replicated::Forwardable {
            method: Method::PUT,
            path_and_query: uri.path_and_query().map_or("", |p| p.as_str()),
            headers: &headers,
            body: body.clone(),
        };
        let make = |node: &Node| {
            node.store.check_write(key.as_bytes(), Some(&body))?;
            Ok(Command::Store {
                key: key.clone().into_bytes(),
                value: body.to_vec(),
                expires_at_ms: node.store.expiry_of(ttl)?,
            })
        };
        match replicated::write(&node, replica, make, request).await? {
            Err(forwarded) => return Ok(forwarded),
            Ok((
                Reply::Stored {
                    created,
                    expires_at_ms,
                },
                index,
            )) => (
                crate::store::Stored {
                    created,
                    expires_at_ms,
                },
                index,
            ),
            Ok((other, _)) => {
                return Err(ApiError::Internal(format!(
                    "a store was answered with {other:?}"
                )));
            }
        }
    } else {
        let store = Arc::clone(&node.store);
        let stored_key = key.clone();
        let bytes = stored_key.len() + body.len();
        let stored = write(&node, bytes, move || {
            Ok(store.store(stored_key.as_bytes(), &body, ttl)?)
        })
        .await?;
        (stored, None)
    };
    laps.lap(crate::stages::Stage::Write);
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let response = (
        status,
        Json(Stored {
            key,
            created: stored.created,
            expires_at_ms: stored.expires_at_ms,
        }),
    )
        .into_response();
    laps.lap(crate::stages::Stage::Response);
    Ok(replicated::with_applied(response, applied))
}

/// Query of a read.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ReadParams {
    consistency: Option<Consistency>,
}

/// `GET /v1/memories/{key}`: the value's bytes.
pub(super) async fn retrieve(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Response> {
    let key = key_of(&node, path)?;
    let asked = replicated::consistency(query(params)?.consistency, &headers)?;
    let applied = replicated::before_read(&node, asked).await?;
    // One point lookup, a few µs: cheaper inline than a hop to a blocking thread.
    let value = node
        .store
        .retrieve(key.as_bytes())?
        .ok_or(ApiError::NotFound)?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(at) = value.expires_at_ms() {
        headers.insert("x-phoenix-expires-at-ms", header::HeaderValue::from(at));
    }
    let response = (headers, Bytes::copy_from_slice(value.as_bytes())).into_response();
    Ok(replicated::with_applied(response, applied))
}

/// `DELETE /v1/memories/{key}`.
pub(super) async fn delete(
    State(node): State<Arc<Node>>,
    uri: Uri,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Response> {
    let key = key_of(&node, path)?;
    let (deleted, applied) = if let Some(replica) = &node.replica {
        let request = replicated::Forwardable {
            method: Method::DELETE,
            path_and_query: uri.path_and_query().map_or("", |p| p.as_str()),
            headers: &headers,
            body: Bytes::new(),
        };
        let make = |node: &Node| {
            node.store.check_write(key.as_bytes(), None)?;
            Ok(Command::Delete {
                key: key.clone().into_bytes(),
            })
        };
        match replicated::write(&node, replica, make, request).await? {
            Err(forwarded) => return Ok(forwarded),
            Ok((Reply::Deleted(deleted), index)) => (deleted, index),
            Ok((other, _)) => {
                return Err(ApiError::Internal(format!(
                    "a delete was answered with {other:?}"
                )));
            }
        }
    } else {
        let store = Arc::clone(&node.store);
        (
            write(&node, key.len(), move || Ok(store.delete(key.as_bytes())?)).await?,
            None,
        )
    };
    if deleted {
        Ok(replicated::with_applied(
            StatusCode::NO_CONTENT.into_response(),
            applied,
        ))
    } else {
        Err(ApiError::NotFound)
    }
}

/// Query of a list.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct ListParams {
    #[serde(default)]
    prefix: String,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    consistency: Option<Consistency>,
}

/// `GET /v1/memories?prefix=&limit=&continue=`.
pub(super) async fn list(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let params = query(params)?;
    let asked = replicated::consistency(params.consistency, &headers)?;
    let max = node.config.limits.max_list_limit;
    let limit = params.limit.unwrap_or(100.min(max));
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(
            "invalid_limit",
            format!("limit must lie in 1..={max}, got {limit}"),
        ));
    }
    let after = match &params.continue_token {
        None => None,
        Some(token) => Some(URL_SAFE_NO_PAD.decode(token).map_err(|_| {
            ApiError::bad_request(
                "invalid_continue",
                "the continue token is not one this node issued",
            )
        })?),
    };
    let applied = replicated::before_read(&node, asked).await?;
    let store = Arc::clone(&node.store);
    let page =
        blocking(move || Ok(store.list(params.prefix.as_bytes(), after.as_deref(), limit)?))
            .await?;
    let page = Json(ListPage {
        items: page
            .items
            .into_iter()
            .map(|item| ListItem {
                key: String::from_utf8_lossy(&item.key).into_owned(),
                value_bytes: item.value_bytes,
                expires_at_ms: item.expires_at_ms,
            })
            .collect(),
        continue_token: page.next_after.map(|k| URL_SAFE_NO_PAD.encode(k)),
    });
    Ok(replicated::with_applied(page.into_response(), applied))
}

/// `GET /v1/root`.
pub(super) async fn root(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Response> {
    let asked = replicated::consistency(query(params)?.consistency, &headers)?;
    replicated::before_read(&node, asked).await?;
    let worker = Arc::clone(&node);
    let ((root, keys), applied_index) = blocking(move || {
        let store = &worker.store;
        let read = || (store.root(), store.key_count());
        Ok(match &worker.replica {
            Some(replica) => replica.shared().consistent(read),
            None => (read(), None),
        })
    })
    .await?;
    let body = Json(Root {
        root: hex_hash::to_hex(&root),
        keys,
        applied_index,
    });
    Ok(replicated::with_applied(
        body.into_response(),
        applied_index,
    ))
}

/// A proof as served: the value in base64, the root in hex.
pub use phoenix_node_api::wire::ProofBody;

/// `GET /v1/proof/{key}`.
pub(super) async fn proof(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<ReadParams>, QueryRejection>,
) -> ApiResult<Response> {
    let key = key_of(&node, path)?;
    let asked = replicated::consistency(query(params)?.consistency, &headers)?;
    replicated::before_read(&node, asked).await?;
    let worker = Arc::clone(&node);
    let lookup = key.clone();
    let (proved, applied_index) = blocking(move || {
        let store = &worker.store;
        let read = || store.prove(lookup.as_bytes());
        let (proved, applied) = match &worker.replica {
            Some(replica) => replica.shared().consistent(read),
            None => (read(), None),
        };
        Ok((proved?, applied))
    })
    .await?;
    let (value, proof, root) = proved.ok_or(ApiError::NotFound)?;
    let body = Json(ProofBody {
        key,
        value: STANDARD.encode(value.as_bytes()),
        root: hex_hash::to_hex(&root),
        proof,
        applied_index,
    });
    Ok(replicated::with_applied(
        body.into_response(),
        applied_index,
    ))
}

/// Query of a cleanup.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CleanupParams {
    #[serde(default)]
    force_rebuild: bool,
}

/// The bearer token of `headers`: the scheme is matched without regard to case (RFC 9110).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

fn authorize(node: &Node, headers: &HeaderMap) -> ApiResult<()> {
    let token = node.admin_token.as_ref().ok_or(ApiError::AdminDisabled)?;
    let presented = bearer(headers).ok_or(ApiError::Unauthorized)?;
    if token.matches(presented) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Middleware of the admin routes: the token is checked before the handler runs, so no
/// body is read for a request without it.
pub(super) async fn require_admin(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match authorize(&node, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

/// `POST /v1/admin/cleanup?forceRebuild=true` (bearer token): the cleanup report.
pub(super) async fn cleanup(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    params: Result<Query<CleanupParams>, QueryRejection>,
) -> ApiResult<Json<CleanupReport>> {
    let params = query(params)?;
    let Ok(_running) = node.cleanup_running.try_lock() else {
        node.metrics.count_cleanup("refused");
        return Err(ApiError::CleanupRunning);
    };
    // A replicated node prunes through the log, so every replica deletes the same
    // memories (a local prune would make the roots differ).
    let pruned_by_group = match &node.replica {
        Some(_) => Some(replicated::prune(&node, &headers).await?),
        None => None,
    };
    let worker = Arc::clone(&node);
    let result = blocking(move || {
        let mut probe = worker
            .probe
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let report = cleanup::run(
            &worker.store,
            &mut probe,
            CleanupOptions {
                force_rebuild: params.force_rebuild,
                pruned_by_group,
            },
        );
        worker.remember_snapshot(&probe);
        if report.is_ok() {
            worker.served.begin_after_cleanup();
        }
        Ok(report?)
    })
    .await;
    node.metrics
        .count_cleanup(if result.is_ok() { "success" } else { "failure" });
    let report = result?;
    if let Some(replica) = &node.replica {
        // The cleanup also compacts the Raft log (snapshot, then purge up to it).
        replica.compact().await;
    }
    Ok(Json(report))
}

fn faults_enabled(node: &Node) -> ApiResult<()> {
    if node.config.fault_injection {
        Ok(())
    } else {
        Err(ApiError::FaultInjectionDisabled)
    }
}

/// `GET /v1/admin/faults` (bearer token, `faultInjection` on): the fault in force.
pub(super) async fn get_fault(State(node): State<Arc<Node>>) -> ApiResult<Json<FaultSpec>> {
    faults_enabled(&node)?;
    Ok(Json(node.store.fault().get()))
}

/// `PUT /v1/admin/faults` (bearer token, `faultInjection` on): sets the retrieve fault.
pub(super) async fn set_fault(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> ApiResult<Json<FaultSpec>> {
    faults_enabled(&node)?;
    let spec: FaultSpec = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not a fault: {e}")))?;
    node.store
        .fault()
        .set(spec)
        .map_err(|e| ApiError::bad_request("invalid_fault", e))?;
    tracing::warn!(
        slowdown = spec.retrieve_slowdown,
        cleared_by_cleanup = spec.cleared_by_cleanup,
        "fault injected"
    );
    Ok(Json(node.store.fault().get()))
}

/// Body of `POST /v1/admin/faults/corrupt`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct CorruptBody {
    key: String,
}

/// `POST /v1/admin/faults/corrupt` `{"key": K}` (bearer token, `faultInjection` on):
/// damages the stored record of K under the store, as a bad disk would; 404 when absent.
pub(super) async fn corrupt(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<StatusCode> {
    faults_enabled(&node)?;
    let CorruptBody { key } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not {{\"key\": …}}: {e}")))?;
    let worker = Arc::clone(&node);
    let damaged = blocking(move || Ok(worker.store.damage_record(key.as_bytes())?)).await?;
    if damaged {
        tracing::warn!("fault injected: a stored record was damaged");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}

/// `POST /v1/admin/faults/diverge` `{"key": K}` (bearer token, `faultInjection` on):
/// stores K on this node's store alone, bypassing the group's log — what a replica that
/// diverged would hold (its root differs from its peers' at the same applied index).
pub(super) async fn diverge(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<StatusCode> {
    faults_enabled(&node)?;
    let CorruptBody { key } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not {{\"key\": …}}: {e}")))?;
    let worker = Arc::clone(&node);
    blocking(move || {
        worker
            .store
            .store(key.as_bytes(), b"written outside the group's log", None)?;
        Ok(())
    })
    .await?;
    tracing::warn!("fault injected: a memory written outside the group's log");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/ping`: an empty route, the floor for HTTP latency.
pub(super) async fn ping() -> StatusCode {
    StatusCode::OK
}

/// `GET /metrics`.
pub(super) async fn metrics(State(node): State<Arc<Node>>) -> Response {
    let mut stats = node.store.stats().ok();
    // Whether a cleanup would rebuild is judged on the store's own files (before the log).
    let rebuild_due = stats.as_ref().map(|s| node.store.rebuild_due(s));
    if let (Some(stats), Some(replica)) = (stats.as_mut(), &node.replica) {
        // The Raft log is part of what the node keeps on disk.
        stats.disk_bytes += replica.log_disk_bytes();
    }
    let probe = node.probe_snapshot();
    let last = crate::cleanup::last_report(&node.store).ok().flatten();
    let safety = super::metrics::Safety {
        flush: node.store.flush_health(),
        corruption: node.store.corruption().detected,
        resident_bytes: super::metrics::resident_memory_bytes(),
        expired_keys: node.store.expired_keys(super::metrics::EXPIRED_CAP).ok(),
        rebuild_due,
    };
    let mut text = node.metrics.render(
        stats.as_ref(),
        &probe,
        &node.served.snapshot(),
        last.as_ref(),
        node.ready(),
        &safety,
    );
    if let Some(replica) = &node.replica {
        text.push_str(&replica.render_metrics());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `GET /healthz`: the process serves, the store answers and writes can be made durable
/// (a failed or hung flush fails it, so the kubelet restarts the node).
pub(super) async fn healthz(State(node): State<Arc<Node>>) -> ApiResult<&'static str> {
    node.store.stats()?;
    match node.health_problem() {
        None => Ok("ok"),
        Some(problem) => Err(ApiError::Unhealthy(problem)),
    }
}

/// `GET /readyz`: ready for traffic (not opening, rebuilding or stopping, no corruption
/// found, writes durable); the body says why not.
pub(super) async fn readyz(State(node): State<Arc<Node>>) -> ApiResult<&'static str> {
    match node.unready_reason() {
        None => Ok("ready"),
        Some(reason) => Err(ApiError::Unready(reason)),
    }
}

/// Unknown routes.
pub(super) async fn no_route(uri: Uri) -> ApiError {
    ApiError::NoRoute(uri.path().chars().take(200).collect())
}

/// Known routes with the wrong method.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
