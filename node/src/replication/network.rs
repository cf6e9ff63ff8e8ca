//! Raft RPCs over HTTP: `POST /v1/raft/{append,vote,snapshot}` on the peer's URL with the
//! peer token, bodies and answers in postcard. An unreachable peer is backed off (openraft
//! retries); a peer's Raft error comes back as a remote error.

use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::metrics::Counters;
use super::{NodeId, PEER_TOKEN_HEADER, TypeConfig};

/// Makes a client per peer; they share one connection pool.
#[derive(Clone)]
pub struct Network {
    http: reqwest::Client,
    token: Arc<str>,
    counters: Arc<Counters>,
}

impl Network {
    /// A network presenting `token` to peers.
    pub fn new(http: reqwest::Client, token: Arc<str>, counters: Arc<Counters>) -> Network {
        Network {
            http,
            token,
            counters,
        }
    }
}

/// The client of one peer.
pub struct Peer {
    target: NodeId,
    url: String,
    network: Network,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            target,
            url: node.addr.trim_end_matches('/').to_owned(),
            network: self.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Failure(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = postcard::to_stdvec(request).map_err(|e| NetworkError::new(&e))?;
        let response = self
            .network
            .http
            .post(format!("{}/v1/raft/{path}", self.url))
            .header(PEER_TOKEN_HEADER, &*self.network.token)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .timeout(timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| Unreachable::new(&e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| Unreachable::new(&e))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(NetworkError::new(&Failure(format!(
                "peer {} answered {status} to {path}: {text}",
                self.target
            )))
            .into());
        }
        let answer: Result<Resp, RaftError<NodeId, E>> =
            postcard::from_bytes(&bytes).map_err(|e| NetworkError::new(&e))?;
        answer.map_err(|e| RemoteError::new(self.target, e).into())
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("append", &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        if rpc.offset == 0 {
            self.network.counters.snapshots_sent.inc();
        }
        self.call("snapshot", &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("vote", &rpc, option.hard_ttl()).await
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}
