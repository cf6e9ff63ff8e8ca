//! `phoenix-node cleanup`: what the cleanup CronJob runs. It checks that every node of the
//! memory is healthy (and refuses to start otherwise), then cleans the nodes one at a time,
//! skipping those whose probe ratio is below the threshold, waits for each to be ready
//! again before the next, prints a report per node, and exits non-zero if any failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use phoenix_node_api::NodeClient;
use phoenix_node_api::metrics::names;

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
    let timeout = Duration::from_secs(args.timeout_seconds);
    let (mut cleaned, mut skipped, mut failed) = (0, 0, 0);
    for (node, health) in nodes.iter().zip(&healths) {
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
    }
    println!("summary: {cleaned} cleaned, {skipped} skipped, {failed} failed");
    if failed > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
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
