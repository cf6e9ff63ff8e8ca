//! `phoenix-node cleanup`: what the cleanup CronJob runs. It checks that every node of the
//! memory is healthy (and refuses to start otherwise), then cleans the nodes one at a time,
//! skipping those whose probe ratio is below the threshold, waits for each to be ready
//! again before the next, prints a report per node, and exits non-zero if any failed.
//!
//! On a replicated memory it also refuses to start unless every voter answers and agrees
//! on one leader (a cleanup takes one node's attention: the group must have a quorum to
//! spare), cleans the followers first, moves leadership away before it cleans the leader,
//! and waits after each node until it has applied what the group had committed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use phoenix_node_api::metrics::names;
use phoenix_node_api::wire::RaftStatus;
use phoenix_node_api::{ClientError, NodeClient};

use crate::service::AdminToken;

/// Exit code when a peer is unhealthy and nothing was cleaned.
pub const EXIT_REFUSED: u8 = 3;
/// Exit code when at least one cleanup failed.
pub const EXIT_FAILED: u8 = 1;

/// Flags of `phoenix-node cleanup`.
#[derive(Debug, Clone, clap::Args)]
pub struct CleanupArgs {
    /// A node's base URL (repeat for each node), e.g. `http://127.0.0.1:8080`.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Name of the StatefulSet; with `--headless-service` and `--replicas` it names the nodes
    /// `http://NAME-i.SERVICE:PORT`.
    #[arg(long, requires_all = ["headless_service", "replicas"])]
    pub statefulset: Option<String>,
    /// DNS name of the headless Service (`NAME.NAMESPACE.svc`).
    #[arg(long)]
    pub headless_service: Option<String>,
    /// Number of nodes.
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Nodes' HTTP port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// File holding the admin bearer token.
    #[arg(long, env = "PHOENIX_NODE_ADMIN_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Skip nodes whose probe ratio is below this (0: clean every node).
    #[arg(long, default_value_t = 0.0)]
    pub threshold: f64,
    /// Rebuild even when disk is compact.
    #[arg(long)]
    pub force_rebuild: bool,
    /// Longest a single node's cleanup may take, seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_seconds: u64,
}

impl CleanupArgs {
    /// The nodes' base URLs, in order.
    pub fn node_urls(&self) -> Result<Vec<String>, String> {
        let mut urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.trim_end_matches('/').to_string())
            .collect();
        if let (Some(sts), Some(service), Some(replicas)) =
            (&self.statefulset, &self.headless_service, self.replicas)
        {
            urls.extend((0..replicas).map(|i| format!("http://{sts}-{i}.{service}:{}", self.port)));
        }
        if urls.is_empty() {
            return Err("no nodes: give --node URL, or --statefulset with --headless-service and --replicas".into());
        }
        if !self.threshold.is_finite() || self.threshold < 0.0 {
            return Err(format!(
                "--threshold must be a non-negative number, got {}",
                self.threshold
            ));
        }
        Ok(urls)
    }
}

/// What the job found about one node before cleaning.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeHealth {
    /// Base URL.
    pub url: String,
    /// The probe ratio, when the node has one.
    pub ratio: Option<f64>,
}

/// How long a readiness check or a scrape may take.
const QUICK: Duration = Duration::from_secs(5);

/// Checks that `node` is ready and reads its probe ratio.
///
/// # Errors
/// The node is not ready, or its metrics cannot be read.
pub async fn check(node: &NodeClient) -> Result<NodeHealth, String> {
    let url = node.url();
    node.ready(QUICK)
        .await
        .map_err(|e| format!("{url} is not ready: {e}"))?;
    let scrape = node
        .scrape(QUICK)
        .await
        .map_err(|e| format!("{url} metrics: {e}"))?;
    Ok(NodeHealth {
        url: url.to_string(),
        ratio: scrape.get(names::PROBE_RATIO),
    })
}

async fn wait_ready(node: &NodeClient, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if node.ready(QUICK).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

fn ratio_text(ratio: Option<f64>) -> String {
    ratio.map_or_else(|| "no data".to_string(), |r| format!("{r:.2}×"))
}

/// Runs the job; prints one line per node and a summary to stdout.
pub fn run(args: &CleanupArgs) -> ExitCode {
    let urls = match args.node_urls() {
        Ok(urls) => urls,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let token = match std::fs::read_to_string(&args.token_file)
        .map_err(|e| {
            format!(
                "failed to read token file {}: {e}",
                args.token_file.display()
            )
        })
        .and_then(|text| AdminToken::new(&text).map(|_| text.trim().to_string()))
    {
        Ok(token) => token,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let http = reqwest::Client::builder()
        .connect_timeout(QUICK)
        .build()
        .unwrap_or_default();
    let nodes: Vec<NodeClient> = urls
        .into_iter()
        .map(|url| NodeClient::new(http.clone(), url))
        .collect();
    runtime.block_on(clean(args, &token, &nodes))
}

async fn clean(args: &CleanupArgs, token: &str, nodes: &[NodeClient]) -> ExitCode {
    let mut healths = Vec::with_capacity(nodes.len());
    for node in nodes {
        match check(node).await {
            Ok(health) => healths.push(health),
            Err(message) => {
                println!("refusing to clean: {message}; no node was touched");
                return ExitCode::from(EXIT_REFUSED);
            }
        }
    }
    let order = match replication_order(token, nodes).await {
        Ok(order) => order,
        Err(message) => {
            println!("refusing to clean: {message}; no node was touched");
            return ExitCode::from(EXIT_REFUSED);
        }
    };
    let timeout = Duration::from_secs(args.timeout_seconds);
    let (mut cleaned, mut skipped, mut failed) = (0, 0, 0);
    for position in order.positions {
        let (node, health) = (&nodes[position], &healths[position]);
        let url = &health.url;
        if args.threshold > 0.0 && health.ratio.is_none_or(|r| r < args.threshold) {
            println!(
                "{url}: skipped, ratio {} below threshold {:.2}",
                ratio_text(health.ratio),
                args.threshold
            );
            skipped += 1;
            continue;
        }
        if let Some(ids) = &order.ids
            && let Err(message) = hand_over_leadership(token, node, ids[position], ids).await
        {
            println!("{url}: cleanup FAILED: {message}");
            failed += 1;
            continue;
        }
        match node.cleanup(token, args.force_rebuild, timeout).await {
            Ok(report) => {
                let after = if report.settled {
                    ratio_text(report.ratio_after)
                } else {
                    "(measured once the node settles; see phoenix_node_last_cleanup_ratio_after)"
                        .to_string()
                };
                println!(
                    "{url}: cleaned in {:.2} s: ratio {} → {after}, disk {} → {} bytes, pruned {}, rebuilt {}",
                    report.seconds,
                    ratio_text(report.ratio_before),
                    report.disk_bytes_before,
                    report.disk_bytes_after,
                    report.pruned,
                    report.rebuilt
                );
                cleaned += 1;
            }
            Err(error) => {
                println!("{url}: cleanup FAILED: {error}");
                failed += 1;
            }
        }
        if !wait_ready(node, Duration::from_secs(60)).await {
            println!("{url}: not ready again within 60 s; stopping here");
            failed += 1;
            break;
        }
        if order.ids.is_some()
            && let Err(message) =
                wait_caught_up(token, nodes, position, Duration::from_secs(60)).await
        {
            println!("{url}: {message}; stopping here");
            failed += 1;
            break;
        }
    }
    println!("summary: {cleaned} cleaned, {skipped} skipped, {failed} failed");
    if failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The order to clean nodes in, and (replicated) each node's Raft id.
struct Order {
    positions: Vec<usize>,
    ids: Option<Vec<u64>>,
}

/// Single nodes: the given order. A Raft group: every node must answer with one leader
/// among them and every voter among the nodes; followers first, the leader last.
async fn replication_order(token: &str, nodes: &[NodeClient]) -> Result<Order, String> {
    let mut statuses = Vec::with_capacity(nodes.len());
    for node in nodes {
        let status = match node.raft_status(token, QUICK).await {
            Ok(status) => status,
            // A token the node refuses: the cleanup request itself then fails loudly (exit
            // 1, 401) without touching anything.
            Err(ClientError::Status {
                status: 401 | 403, ..
            }) => None,
            Err(error) => return Err(format!("{}: replication status: {error}", node.url())),
        };
        statuses.push(status);
    }
    if statuses.iter().all(Option::is_none) {
        return Ok(Order {
            positions: (0..nodes.len()).collect(),
            ids: None,
        });
    }
    let statuses: Vec<RaftStatus> = statuses
        .into_iter()
        .zip(nodes)
        .map(|(s, n)| s.ok_or_else(|| format!("{} is not replicated while others are", n.url())))
        .collect::<Result<_, _>>()?;
    let leader = statuses[0]
        .leader
        .ok_or("the group has no leader (an election is under way or there is no quorum)")?;
    if let Some(other) = statuses.iter().find(|s| s.leader != Some(leader)) {
        return Err(format!(
            "nodes disagree on the leader ({leader} and {:?}): leadership is changing",
            other.leader
        ));
    }
    let ids: Vec<u64> = statuses.iter().map(|s| s.id).collect();
    let missing: Vec<u64> = statuses[0]
        .voters
        .iter()
        .filter(|v| !ids.contains(v))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "voters {missing:?} are not among the nodes given: the group may have no quorum to spare"
        ));
    }
    if statuses[0].voters.len() < 3 && nodes.len() > 1 {
        return Err(format!(
            "the group has {} voters: cleaning one would leave no quorum",
            statuses[0].voters.len()
        ));
    }
    let mut positions: Vec<usize> = (0..nodes.len()).filter(|i| ids[*i] != leader).collect();
    positions.extend((0..nodes.len()).filter(|i| ids[*i] == leader));
    Ok(Order {
        positions,
        ids: Some(ids),
    })
}

/// Before `node` (Raft id `id`) is cleaned: if it leads, leadership moves to another node.
async fn hand_over_leadership(
    token: &str,
    node: &NodeClient,
    id: u64,
    ids: &[u64],
) -> Result<(), String> {
    let status = node
        .raft_status(token, QUICK)
        .await
        .map_err(|e| format!("replication status: {e}"))?
        .ok_or("the node is no longer replicated")?;
    if status.leader != Some(id) {
        return Ok(());
    }
    let to = ids
        .iter()
        .copied()
        .find(|other| *other != id && status.voters.contains(other))
        .ok_or("no other voter to hand leadership to")?;
    let moved = node
        .move_leader(token, to, Duration::from_secs(30))
        .await
        .map_err(|e| format!("moving leadership to node {to}: {e}"))?;
    println!(
        "{}: leadership moved to node {:?} before its cleanup",
        node.url(),
        moved.leader
    );
    Ok(())
}

/// After a cleanup: waits until node `position` has applied what the leader had
/// committed (its last log index) when the wait began.
async fn wait_caught_up(
    token: &str,
    nodes: &[NodeClient],
    position: usize,
    within: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    let mut target = None;
    while Instant::now() < deadline {
        if target.is_none() {
            for node in nodes {
                if let Ok(Some(status)) = node.raft_status(token, QUICK).await
                    && status.role == "leader"
                {
                    target = status.last_log_index;
                }
            }
        }
        if let (Some(target), Ok(Some(status))) =
            (target, nodes[position].raft_status(token, QUICK).await)
            && status.applied_index >= Some(target)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!(
        "did not catch up with the leader within {} s",
        within.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_urls_come_from_flags_or_the_statefulset() {
        let mut args = CleanupArgs {
            nodes: vec!["http://a:1/".into()],
            statefulset: Some("mem".into()),
            headless_service: Some("mem-nodes.ns.svc".into()),
            replicas: Some(2),
            port: 8080,
            token_file: PathBuf::from("/t"),
            threshold: 0.0,
            force_rebuild: false,
            timeout_seconds: 1,
        };
        assert_eq!(
            args.node_urls().expect("urls"),
            vec![
                "http://a:1".to_string(),
                "http://mem-0.mem-nodes.ns.svc:8080".into(),
                "http://mem-1.mem-nodes.ns.svc:8080".into()
            ]
        );
        args.threshold = -1.0;
        assert!(args.node_urls().is_err());
        args.nodes.clear();
        args.statefulset = None;
        args.threshold = 0.0;
        assert!(args.node_urls().is_err());
    }
}
