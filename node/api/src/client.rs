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
        let message = response
            .bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice::<ErrorBody>(&b).ok())
            .map(|e| e.error.message);
        Err(ClientError::Status {
            status: status.as_u16(),
            message: message.or_else(|| status.canonical_reason().map(str::to_string)),
        })
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
        let body = self
            .send(request)
            .await?
            .bytes()
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
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
        let request = self
            .http
            .post(format!("{}/v1/admin/raft/leader", self.base))
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(format!("{{\"id\":{to}}}"))
            .timeout(timeout);
        let body = self
            .send(request)
            .await?
            .bytes()
            .await
            .map_err(|e| ClientError::Body(e.to_string()))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Body(e.to_string()))
    }
}
