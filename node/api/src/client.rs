//! A client of one node's HTTP API, for the operator (scrapes), the cleanup job and, later,
//! nodes talking to each other.

use std::time::Duration;

use crate::metrics::Scrape;
use crate::wire::{CleanupReport, ErrorBody, RaftStatus};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer: refused, reset, timed out, or no route.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// An answer other than success; `message` is the node's error message when it sent one.
    #[error("answered {status}{}", message.as_ref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// The HTTP status.
        status: u16,
        /// The error body's message, when it had one.
        message: Option<String>,
    },
    /// The answer's body could not be read or is not what the API sends.
    #[error("body unreadable: {0}")]
    Body(String),
}

/// One node, at `base_url` (`http://HOST:PORT`).
#[derive(Clone, Debug)]
pub struct NodeClient {
    http: reqwest::Client,
    base: String,
}

impl NodeClient {
    /// A client of the node at `base_url`, sharing `http`'s connections.
    pub fn new(http: reqwest::Client, base_url: impl Into<String>) -> NodeClient {
        NodeClient {
            http,
            base: base_url.into().trim_end_matches('/').to_string(),
        }
    }

    /// The node's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let response = request
            .send()
            .await
            .map_err(|e| ClientError::Unreachable(e.to_string()))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.bytes().await.unwrap_or_default();
        Err(refusal(status, &body))
    }

    /// `GET /readyz`: succeeds when the node serves.
    ///
    /// # Errors
    /// Not ready, or no answer within `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), ClientError> {
        self.send(
            self.http
                .get(format!("{}/readyz", self.base))
                .timeout(timeout),
        )
        .await
        .map(drop)
    }

    /// `GET /metrics` as text.
    ///
    /// # Errors
    /// No answer within `timeout`, a failure status, or an unreadable body.
    pub async fn metrics_text(&self, timeout: Duration) -> Result<String, ClientError> {
        self.send(
            self.http
                .get(format!("{}/metrics", self.base))
                .timeout(timeout),
        )
        .await?
        .text()
        .await
        .map_err(|e| ClientError::Body(e.to_string()))
    }

    /// `GET /metrics`, parsed.
    ///
    /// # Errors
    /// As [`NodeClient::metrics_text`]; text that is not the exposition format is
    /// [`ClientError::Body`].
    pub async fn scrape(&self, timeout: Duration) -> Result<Scrape, ClientError> {
        Scrape::parse(&self.metrics_text(timeout).await?).map_err(ClientError::Body)
    }

    /// `POST /v1/admin/cleanup?forceRebuild=…` with the admin `token`.
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal (403, 409 while one runs, 507, …), or a body
    /// that is not a cleanup report.
    pub async fn cleanup(
        &self,
        token: &str,
        force_rebuild: bool,
        timeout: Duration,
    ) -> Result<CleanupReport, ClientError> {
        let request = self
            .http
            .post(format!(
                "{}/v1/admin/cleanup?forceRebuild={force_rebuild}",
                self.base
            ))
            .bearer_auth(token)
            .timeout(timeout);
        json_body(self.send(request).await?).await
    }

    /// `GET /v1/admin/raft` with the admin `token`: `None` on a node without replication.
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal, or an unreadable body.
    pub async fn raft_status(
        &self,
        token: &str,
        timeout: Duration,
    ) -> Result<Option<RaftStatus>, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/admin/raft", self.base))
            .bearer_auth(token)
            .timeout(timeout);
        let body = match self.send(request).await {
            Ok(response) => response
                .bytes()
                .await
                .map_err(|e| ClientError::Body(e.to_string()))?,
            Err(ClientError::Status { status: 404, .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        serde_json::from_slice(&body)
            .map(Some)
            .map_err(|e| ClientError::Body(e.to_string()))
    }

    /// `POST /v1/admin/raft/leader` with the admin `token`: moves leadership to node `to`
    /// (any node forwards to the leader).
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal, or an unreadable body.
    pub async fn move_leader(
        &self,
        token: &str,
        to: u64,
        timeout: Duration,
    ) -> Result<RaftStatus, ClientError> {
        self.membership(token, "leader", &serde_json::json!({"id": to}), timeout)
            .await
    }

    /// `POST /v1/admin/raft/init` `{"voters": […]}`: initializes the group (idempotent: an
    /// initialized group answers with its membership).
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal, or an unreadable body.
    pub async fn init_group(
        &self,
        token: &str,
        voters: &[u64],
        timeout: Duration,
    ) -> Result<RaftStatus, ClientError> {
        self.membership(
            token,
            "init",
            &serde_json::json!({"voters": voters}),
            timeout,
        )
        .await
    }

    /// `POST /v1/admin/raft/learners` `{"id", "url"}`: node `id` at `url` joins as a learner
    /// (idempotent; any node forwards to the leader).
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal, or an unreadable body.
    pub async fn add_learner(
        &self,
        token: &str,
        id: u64,
        url: &str,
        timeout: Duration,
    ) -> Result<RaftStatus, ClientError> {
        let body = serde_json::json!({"id": id, "url": url});
        self.membership(token, "learners", &body, timeout).await
    }

    /// `POST /v1/admin/raft/promote` `{"ids": […]}`: learners become voters (idempotent).
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal, or an unreadable body.
    pub async fn promote(
        &self,
        token: &str,
        ids: &[u64],
        timeout: Duration,
    ) -> Result<RaftStatus, ClientError> {
        self.membership(token, "promote", &serde_json::json!({"ids": ids}), timeout)
            .await
    }

    /// `POST /v1/admin/raft/remove` `{"ids": […]}`: members leave the group (idempotent).
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal, or an unreadable body.
    pub async fn remove_members(
        &self,
        token: &str,
        ids: &[u64],
        timeout: Duration,
    ) -> Result<RaftStatus, ClientError> {
        self.membership(token, "remove", &serde_json::json!({"ids": ids}), timeout)
            .await
    }

    /// `POST /v1/admin/raft/rejoin`: the node exits and restarts empty (it must no longer
    /// be a member; the leader refuses with 409).
    ///
    /// # Errors
    /// No answer within `timeout`, or a refusal.
    pub async fn rejoin(&self, token: &str, timeout: Duration) -> Result<(), ClientError> {
        let request = self
            .http
            .post(format!("{}/v1/admin/raft/rejoin", self.base))
            .bearer_auth(token)
            .timeout(timeout);
        self.send(request).await.map(drop)
    }

    async fn membership(
        &self,
        token: &str,
        action: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<RaftStatus, ClientError> {
        let request = self
            .http
            .post(format!("{}/v1/admin/raft/{action}", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .timeout(timeout);
        json_body(self.send(request).await?).await
    }

    /// `GET /v1/root?consistency=local`: this replica's root, key count and applied index,
    /// read together.
    ///
    /// # Errors
    /// No answer within `timeout`, a refusal, or an unreadable body.
    pub async fn local_root(&self, timeout: Duration) -> Result<crate::wire::Root, ClientError> {
        let request = self
            .http
            .get(format!("{}/v1/root?consistency=local", self.base))
            .timeout(timeout);
        json_body(self.send(request).await?).await
    }
}

/// The body of a successful answer, as JSON.
async fn json_body<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
) -> Result<T, ClientError> {
    let body = response
        .bytes()
        .await
        .map_err(|e| ClientError::Body(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
}

/// A refusal: the status and the message of the node's JSON error body (or the status's
/// reason when the body is not one).
fn refusal(status: reqwest::StatusCode, body: &[u8]) -> ClientError {
    ClientError::Status {
        status: status.as_u16(),
        message: serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|e| e.error.message)
            .or_else(|| status.canonical_reason().map(str::to_string)),
    }
}

/// How a read is served by a replicated memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began (the default).
    #[default]
    Linearizable,
    /// The answering replica's state as it is (a read replica; may lag).
    Local,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Local => "local",
        }
    }
}

/// A value read back, with the log index the answering node had applied (replicated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The value.
    pub value: Vec<u8>,
    /// `x-phoenix-applied-index`, on a replicated memory.
    pub applied_index: Option<u64>,
}

/// A value whose inclusion proof verified against the root it came with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The value.
    pub value: Vec<u8>,
    /// The root it is proven under.
    pub root: crate::proof::Hash,
    /// The log index applied when the proof was made (replicated).
    pub applied_index: Option<u64>,
}

/// A client of one memory's nodes that follows the documented retry rule:
///
/// - it sends to the node that answered last (any node takes writes: a follower forwards
///   them to the leader);
/// - a refused connection, a timeout or a 503 (an election, a rebuild swap, a node
///   stopping) moves it to the next node at once; after a full round without an answer it
///   waits the shortest `Retry-After` it was given (at most one second) and goes on, until
///   `give_up_after` has passed;
/// - any other answer is final (a 4xx is the caller's to fix).
///
/// A write whose answer was lost may still have taken effect: repeating a store is safe (it
/// writes the same value); a repeated delete may answer "absent".
#[derive(Debug)]
pub struct MemoryClient {
    http: reqwest::Client,
    nodes: Vec<String>,
    current: std::sync::atomic::AtomicUsize,
    give_up_after: Duration,
    request_timeout: Duration,
}

/// Percent-encodes a key for the request path (`/` is kept: keys may hold it).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                out.push(char::from(byte));
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

impl MemoryClient {
    /// A client of the nodes at `nodes` (base URLs), giving up after 30 s.
    pub fn new(
        http: reqwest::Client,
        nodes: impl IntoIterator<Item = impl Into<String>>,
    ) -> MemoryClient {
        MemoryClient {
            http,
            nodes: nodes
                .into_iter()
                .map(|n| n.into().trim_end_matches('/').to_string())
                .collect(),
            current: std::sync::atomic::AtomicUsize::new(0),
            give_up_after: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }

    /// How long to keep trying other nodes before an error.
    #[must_use]
    pub fn give_up_after(mut self, limit: Duration) -> MemoryClient {
        self.give_up_after = limit;
        self
    }

    /// How long one attempt may take.
    #[must_use]
    pub fn request_timeout(mut self, limit: Duration) -> MemoryClient {
        self.request_timeout = limit;
        self
    }

    /// Sends `build(base_url)` under the retry rule; a final answer (2xx or not 503).
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        use std::sync::atomic::Ordering;
        if self.nodes.is_empty() {
            return Err(ClientError::Unreachable("no nodes given".into()));
        }
        let deadline = tokio::time::Instant::now() + self.give_up_after;
        let mut failures_in_round = 0;
        let mut wait = Duration::from_secs(1);
        let mut last;
        loop {
            let at = self.current.load(Ordering::Relaxed) % self.nodes.len();
            let url = &self.nodes[at];
            match build(url).timeout(self.request_timeout).send().await {
                Ok(response) if response.status().as_u16() != 503 => return Ok(response),
                Ok(response) => {
                    let after = response
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())
                        .map_or(Duration::from_secs(1), Duration::from_secs);
                    wait = wait.min(after);
                    last = format!("{url} answered 503");
                }
                Err(error) => last = format!("{url}: {error}"),
            }
            let _ = self.current.compare_exchange(
                at,
                (at + 1) % self.nodes.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            failures_in_round += 1;
            if tokio::time::Instant::now() >= deadline {
                return Err(ClientError::Unreachable(format!(
                    "no node answered within {:?}; last: {last}",
                    self.give_up_after
                )));
            }
            if failures_in_round >= self.nodes.len() {
                failures_in_round = 0;
                tokio::time::sleep(wait.min(Duration::from_secs(1))).await;
                wait = Duration::from_secs(1);
            }
        }
    }

    async fn body(
        response: reqwest::Response,
    ) -> Result<(reqwest::StatusCode, Option<u64>, Vec<u8>), ClientError> {
        let status = response.status();
        let applied = response
            .headers()
            .get("x-phoenix-applied-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?;
        Ok((status, applied, bytes.to_vec()))
    }

    /// Stores `value` under `key` (optionally expiring after `ttl_seconds`).
    ///
    /// # Errors
    /// No node answered in time, or a refusal (400, 413, 507, …).
    pub async fn store(
        &self,
        key: &str,
        value: &[u8],
        ttl_seconds: Option<u64>,
    ) -> Result<crate::wire::Stored, ClientError> {
        let path = match ttl_seconds {
            Some(ttl) => format!("/v1/memories/{}?ttlSeconds={ttl}", encode_key(key)),
            None => format!("/v1/memories/{}", encode_key(key)),
        };
        let response = self
            .send(|url| self.http.put(format!("{url}{path}")).body(value.to_vec()))
            .await?;
        let (status, _, body) = Self::body(response).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// The value under `key`, or `None`.
    ///
    /// # Errors
    /// No node answered in time, or a refusal.
    pub async fn retrieve(
        &self,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Read>, ClientError> {
        let path = format!(
            "/v1/memories/{}?consistency={}",
            encode_key(key),
            consistency.as_str()
        );
        let response = self
            .send(|url| self.http.get(format!("{url}{path}")))
            .await?;
        let (status, applied_index, value) = Self::body(response).await?;
        match status.as_u16() {
            200 => Ok(Some(Read {
                value,
                applied_index,
            })),
            404 => Ok(None),
            _ => Err(refusal(status, &value)),
        }
    }

    /// Deletes `key`; false when it was absent.
    ///
    /// # Errors
    /// No node answered in time, or a refusal.
    pub async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        let path = format!("/v1/memories/{}", encode_key(key));
        let response = self
            .send(|url| self.http.delete(format!("{url}{path}")))
            .await?;
        let (status, _, body) = Self::body(response).await?;
        match status.as_u16() {
            204 => Ok(true),
            404 => Ok(false),
            _ => Err(refusal(status, &body)),
        }
    }

    /// The Merkle root (with the applied index on a replicated memory).
    ///
    /// # Errors
    /// No node answered in time, or a refusal.
    pub async fn root(&self, consistency: Consistency) -> Result<crate::wire::Root, ClientError> {
        let path = format!("/v1/root?consistency={}", consistency.as_str());
        let response = self
            .send(|url| self.http.get(format!("{url}{path}")))
            .await?;
        let (status, _, body) = Self::body(response).await?;
        if !status.is_success() {
            return Err(refusal(status, &body));
        }
        serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
    }

    /// The value under `key` with its inclusion proof, verified with
    /// [`crate::proof::verify_proof`] against the root it came with.
    ///
    /// # Errors
    /// No node answered in time, a refusal, or a proof that does not verify
    /// ([`ClientError::Body`]).
    pub async fn proven(&self, key: &str) -> Result<Option<Verified>, ClientError> {
        use base64::Engine as _;
        let path = format!("/v1/proof/{}", encode_key(key));
        let response = self
            .send(|url| self.http.get(format!("{url}{path}")))
            .await?;
        let (status, _, body) = Self::body(response).await?;
        match status.as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(refusal(status, &body)),
        }
        let proof: crate::wire::ProofBody =
            serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))?;
        let value = base64::engine::general_purpose::STANDARD
            .decode(&proof.value)
            .map_err(|e| ClientError::Body(format!("the proven value is not base64: {e}")))?;
        let root = crate::proof::hex_hash::from_hex(&proof.root)
            .ok_or_else(|| ClientError::Body("the proof's root is not 64 hex digits".into()))?;
        if !crate::proof::verify_proof(&root, key.as_bytes(), &value, &proof.proof) {
            return Err(ClientError::Body(format!(
                "the proof of {key:?} does not verify against root {}",
                proof.root
            )));
        }
        Ok(Some(Verified {
            value,
            root,
            applied_index: proof.applied_index,
        }))
    }
}
