//! The replicated paths of the HTTP API: writes through Raft (a follower forwards them to
//! the leader, one hop), linearizable reads (`consistency=local` reads the replica), the
//! Raft RPC routes (`/v1/raft/…`, peer token) and the membership admin routes
//! (`/v1/admin/raft/…`, admin token; forwarded to the leader where only it can act).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::{ApiError, Node};
use crate::replication::{
    APPLIED_INDEX_HEADER, Command, FORWARDED_HEADER, GroupStatus, MembershipError,
    PEER_TOKEN_HEADER, ReadIndex, Refusal, Replica, Reply,
};

type ApiResult<T> = Result<T, ApiError>;

/// The header that asks for a read's consistency (same values as the query parameter).
pub const CONSISTENCY_HEADER: &str = "x-phoenix-consistency";

/// How a read is served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Consistency {
    /// Everything committed before the read began is seen (read index via the leader).
    #[default]
    Linearizable,
    /// This replica's state as it is (it may lag the leader).
    Local,
}

/// The consistency a read asked for: the query parameter, else the header.
pub(super) fn consistency(
    param: Option<Consistency>,
    headers: &HeaderMap,
) -> ApiResult<Consistency> {
    if let Some(asked) = param {
        return Ok(asked);
    }
    match headers.get(CONSISTENCY_HEADER).map(HeaderValue::to_str) {
        None => Ok(Consistency::Linearizable),
        Some(Ok(v)) if v.eq_ignore_ascii_case("local") => Ok(Consistency::Local),
        Some(Ok(v)) if v.eq_ignore_ascii_case("linearizable") => Ok(Consistency::Linearizable),
        Some(_) => Err(ApiError::bad_request(
            "invalid_consistency",
            "consistency must be linearizable or local",
        )),
    }
}

fn refusal(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Leader { id, .. } => ApiError::Unavailable(format!(
            "node {id} leads; the request reached a node that cannot forward it"
        )),
        Refusal::Unavailable(message) => ApiError::Unavailable(message),
        Refusal::Uninitialized => ApiError::Unavailable(Refusal::Uninitialized.to_string()),
    }
}

/// Before a read on a replicated node: waits for a linearizable read's index; the applied
/// index the read sees (at least). `None` on a single node.
pub(super) async fn before_read(node: &Node, consistency: Consistency) -> ApiResult<Option<u64>> {
    let Some(replica) = &node.replica else {
        return Ok(None);
    };
    if consistency == Consistency::Linearizable {
        replica.read_index().await.map_err(refusal)?;
    }
    Ok(replica.shared().applied_index())
}

/// Adds the applied-index header to `response`.
pub(super) fn with_applied(mut response: Response, applied: Option<u64>) -> Response {
    if let Some(index) = applied {
        response
            .headers_mut()
            .insert(APPLIED_INDEX_HEADER, HeaderValue::from(index));
    }
    response
}

/// A request as it arrived, to forward to the leader.
pub(super) struct Forwardable<'a> {
    pub method: Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Proposes `command` (built by `make` on the leader, after the leader's admission
/// check); a follower forwards the request instead. `Ok(Err(response))` is the leader's
/// answer to a forwarded request.
pub(super) async fn write(
    node: &Arc<Node>,
    replica: &Arc<Replica>,
    make: impl FnOnce(&Node) -> ApiResult<Command>,
    request: Forwardable<'_>,
) -> ApiResult<Result<(Reply, Option<u64>), Response>> {
    // A leader that cannot be reached (its process is gone) never saw the request: wait for
    // the next leader, within the write wait, instead of failing a write whose outcome is
    // known (a client would have to treat the 503 as unknown).
    let deadline = tokio::time::Instant::now() + replica.write_wait();
    let command = loop {
        if replica.is_leader() {
            break make(node)?;
        }
        let Some((leader, url)) = replica.leader_hint() else {
            break make(node)?;
        };
        match forward(replica, &url, &request).await {
            Ok(response) => return Ok(Err(response)),
            Err(error) => {
                let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                let moved = replica
                    .raft()
                    .wait(Some(remaining))
                    .metrics(|m| m.current_leader != Some(leader), "another leader")
                    .await;
                if moved.is_err() {
                    return Ok(Err(unreached(&error)));
                }
            }
        }
    };
    match replica.write(command).await {
        Ok(done) => Ok(Ok(done)),
        Err(Refusal::Leader { url, .. }) => Ok(Err(forward(replica, &url, &request)
            .await
            .unwrap_or_else(|error| unreached(&error)))),
        Err(other) => Err(refusal(other)),
    }
}

/// The answer when the leader could not be connected to (the request never reached it).
fn unreached(error: &str) -> Response {
    ApiError::Unavailable(format!(
        "the leader did not answer a forwarded request: {error}"
    ))
    .into_response()
}

/// Sends `request` to the leader at `url` and relays its answer (a 503 when its outcome is
/// unknown). A request that was already forwarded is not forwarded again (503: leadership
/// is moving). `Err`: the connection to the leader failed, the request never reached it.
async fn forward(
    replica: &Replica,
    url: &str,
    request: &Forwardable<'_>,
) -> Result<Response, String> {
    if request.headers.contains_key(FORWARDED_HEADER) {
        return Ok(ApiError::Unavailable(
            "a forwarded request reached a node that does not lead: leadership is changing".into(),
        )
        .into_response());
    }
    replica.counters().forwarded.inc();
    let mut outgoing = replica
        .http()
        .request(
            request.method.clone(),
            format!("{url}{}", request.path_and_query),
        )
        .header(FORWARDED_HEADER, replica.id)
        .timeout(replica.write_wait() * 2);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(value) = request.headers.get(&name) {
            outgoing = outgoing.header(name, value);
        }
    }
    let answer = match outgoing.body(request.body.clone()).send().await {
        Ok(answer) => answer,
        Err(error) if error.is_connect() => return Err(error.to_string()),
        Err(error) => {
            return Ok(ApiError::Unavailable(format!(
                "the leader did not answer a forwarded request: {error}"
            ))
            .into_response());
        }
    };
    let status = answer.status();
    let mut headers = HeaderMap::new();
    for (name, value) in answer.headers() {
        if name == header::CONTENT_TYPE
            || name == header::RETRY_AFTER
            || name.as_str().starts_with("x-phoenix-")
        {
            headers.insert(name.clone(), value.clone());
        }
    }
    Ok(match answer.bytes().await {
        Ok(body) => (status, headers, body).into_response(),
        Err(error) => {
            ApiError::Unavailable(format!("the leader's answer broke off: {error}")).into_response()
        }
    })
}

/// The peer-token check of the `/v1/raft/` routes (404 on a node without replication).
pub(super) async fn require_peer(
    State(node): State<Arc<Node>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(replica) = &node.replica else {
        return ApiError::NoRoute(format!("{} (replication is off)", request.uri().path()))
            .into_response();
    };
    let presented = request
        .headers()
        .get(PEER_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if replica.peer_token_matches(presented) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

fn replica_of(node: &Node) -> ApiResult<&Arc<Replica>> {
    node.replica
        .as_ref()
        .ok_or_else(|| ApiError::NoRoute("replication is off on this node".into()))
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    postcard::from_bytes(body)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not a Raft message: {e}")))
}

fn encode<T: Serialize>(answer: &T) -> ApiResult<Response> {
    let bytes = postcard::to_stdvec(answer)
        .map_err(|e| ApiError::Internal(format!("encoding a Raft answer: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `POST /v1/raft/append`.
pub(super) async fn raft_append(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Response> {
    let replica = replica_of(&node)?;
    let answer = replica.raft().append_entries(decode(&body)?).await;
    encode(&answer)
}

/// `POST /v1/raft/vote`.
pub(super) async fn raft_vote(State(node): State<Arc<Node>>, body: Bytes) -> ApiResult<Response> {
    let replica = replica_of(&node)?;
    let answer = replica.raft().vote(decode(&body)?).await;
    encode(&answer)
}

/// `POST /v1/raft/snapshot` (one chunk).
pub(super) async fn raft_snapshot(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> ApiResult<Response> {
    let replica = replica_of(&node)?;
    let answer = replica.raft().install_snapshot(decode(&body)?).await;
    encode(&answer)
}

/// `POST /v1/raft/read-index`: on the leader, the index a follower's linearizable read
/// must wait for.
pub(super) async fn raft_read_index(State(node): State<Arc<Node>>) -> ApiResult<Json<ReadIndex>> {
    let replica = replica_of(&node)?;
    let index = replica.leader_read_index().await.map_err(refusal)?;
    Ok(Json(ReadIndex { index }))
}

fn membership_error(error: MembershipError) -> ApiError {
    match error {
        MembershipError::NotLeader(_) => ApiError::Unavailable(error.to_string()),
        other => ApiError::Membership(other.to_string()),
    }
}

/// Runs a membership change here if this node leads, else forwards the request to the
/// leader.
async fn on_leader(
    node: &Arc<Node>,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
    change: impl AsyncFnOnce(&Replica) -> Result<GroupStatus, MembershipError>,
) -> ApiResult<Response> {
    let replica = replica_of(node)?;
    if !replica.is_leader()
        && let Some((_, url)) = replica.leader_hint()
    {
        let request = Forwardable {
            method: Method::POST,
            path_and_query: path,
            headers,
            body,
        };
        return Ok(forward(replica, &url, &request)
            .await
            .unwrap_or_else(|error| unreached(&error)));
    }
    let status = change(replica).await.map_err(membership_error)?;
    Ok(Json(status).into_response())
}

fn json<T: serde::de::DeserializeOwned + Default>(body: &Bytes) -> ApiResult<T> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))
}

/// `GET /v1/admin/raft`: membership and progress.
pub(super) async fn status(State(node): State<Arc<Node>>) -> ApiResult<Json<GroupStatus>> {
    Ok(Json(replica_of(&node)?.status()))
}

/// Body of `POST /v1/admin/raft/init`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InitBody {
    voters: Option<BTreeSet<u64>>,
}

/// `POST /v1/admin/raft/init` `{"voters": [0, 1, 2]}` (default: every configured peer).
/// Idempotent: an initialized group answers with its membership.
pub(super) async fn init(
    State(node): State<Arc<Node>>,
    body: Bytes,
) -> ApiResult<Json<GroupStatus>> {
    let body: InitBody = json(&body)?;
    let replica = replica_of(&node)?;
    replica
        .initialize(body.voters)
        .await
        .map(Json)
        .map_err(membership_error)
}

/// Body of `POST /v1/admin/raft/learners`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LearnerBody {
    id: u64,
    url: Option<String>,
}

/// `POST /v1/admin/raft/learners` `{"id": 3, "url": "http://…"}` (url defaults to the
/// configured peer's). Idempotent.
pub(super) async fn add_learner(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let parsed: LearnerBody = json(&body)?;
    on_leader(
        &node,
        "/v1/admin/raft/learners",
        &headers,
        body,
        async |r: &Replica| r.add_learner(parsed.id, parsed.url).await,
    )
    .await
}

/// Body naming nodes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IdsBody {
    ids: BTreeSet<u64>,
}

/// `POST /v1/admin/raft/promote` `{"ids": [3]}`: learners become voters. Idempotent.
pub(super) async fn promote(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let parsed: IdsBody = json(&body)?;
    on_leader(
        &node,
        "/v1/admin/raft/promote",
        &headers,
        body,
        async |r: &Replica| r.promote(parsed.ids).await,
    )
    .await
}

/// `POST /v1/admin/raft/remove` `{"ids": [2]}`: members leave the group. Idempotent.
pub(super) async fn remove(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let parsed: IdsBody = json(&body)?;
    on_leader(
        &node,
        "/v1/admin/raft/remove",
        &headers,
        body,
        async |r: &Replica| r.remove(parsed.ids).await,
    )
    .await
}

/// Body of `POST /v1/admin/raft/leader`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LeaderBody {
    id: u64,
}

/// `POST /v1/admin/raft/leader` `{"id": 1}`: moves leadership to node 1 (it catches up,
/// then stands for election; openraft 0.9 has no transfer). Idempotent.
pub(super) async fn move_leader(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let parsed: LeaderBody = json(&body)?;
    on_leader(
        &node,
        "/v1/admin/raft/leader",
        &headers,
        body,
        async |r: &Replica| r.move_leader(parsed.id).await,
    )
    .await
}

/// `POST /v1/raft/elect` (peer token): this node stands for election now.
pub(super) async fn raft_elect(State(node): State<Arc<Node>>) -> ApiResult<Json<GroupStatus>> {
    replica_of(&node)?
        .elect()
        .await
        .map(Json)
        .map_err(membership_error)
}

/// `POST /v1/admin/raft/rejoin` (admin token): this node leaves a marker and exits; at its
/// next start (its supervisor restarts it) it deletes its memories, its log and its applied
/// index and comes back empty, to be added again as a learner and sent the group's data.
/// For a replica that diverged or was removed: the operator calls it only on a node the
/// membership no longer holds. Refused on the leader (409).
pub(super) async fn rejoin(State(node): State<Arc<Node>>) -> ApiResult<StatusCode> {
    let replica = replica_of(&node)?;
    if replica.is_leader() {
        return Err(ApiError::Membership(
            "this node leads the group: move leadership and remove it from the membership \
             before it rejoins from scratch"
                .into(),
        ));
    }
    crate::replication::ask_rejoin(&node.store)
        .map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    tracing::warn!("asked to rejoin the group from scratch: exiting to restart empty");
    tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        std::process::exit(0);
    });
    Ok(StatusCode::ACCEPTED)
}

/// Proposes a prune of every memory expired at the leader's clock (a cleanup on a
/// replicated node does this instead of pruning locally); how many were pruned.
pub(super) async fn prune(node: &Arc<Node>, headers: &HeaderMap) -> ApiResult<u64> {
    let replica = replica_of(node)?;
    let request = Forwardable {
        method: Method::POST,
        path_and_query: "/v1/admin/raft/prune",
        headers,
        body: Bytes::new(),
    };
    let make = |node: &Node| {
        Ok(Command::Prune {
            now_ms: node.store.config().clock.now_ms(),
        })
    };
    match write(node, replica, make, request).await? {
        Ok((Reply::Pruned(n), _)) => Ok(n),
        Ok((other, _)) => Err(ApiError::Internal(format!(
            "a prune was answered with {other:?}"
        ))),
        Err(response) if response.status() == StatusCode::OK => {
            let body = axum::body::to_bytes(response.into_body(), 1 << 16)
                .await
                .map_err(|e| ApiError::Unavailable(format!("the leader's prune answer: {e}")))?;
            let pruned: Pruned = serde_json::from_slice(&body)
                .map_err(|e| ApiError::Unavailable(format!("the leader's prune answer: {e}")))?;
            Ok(pruned.pruned)
        }
        Err(response) => Err(ApiError::Unavailable(format!(
            "the leader refused the prune with {}",
            response.status()
        ))),
    }
}

/// Answer of `POST /v1/admin/raft/prune`.
#[derive(Debug, Serialize, Deserialize)]
struct Pruned {
    pruned: u64,
}

/// `POST /v1/admin/raft/prune`: prunes expired memories on every replica.
pub(super) async fn prune_route(
    State(node): State<Arc<Node>>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let pruned = prune(&node, &headers).await?;
    Ok(Json(Pruned { pruned }).into_response())
}
