//! Observe: find the memory's pods (in the pod cache: no request) and scrape each one's
//! `/metrics` at its pod IP and `http` port. A missing, IP-less or silent node is a stale observation; an unready one is
//! scraped too (a node that found corruption is unready and says why) but never decided
//! on. Scrapes happen at most about once per observe interval (see [`observe`]).

use std::time::Instant;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::ResourceExt;

use super::context::Context;
use super::state::{Key, Observed};
use crate::children::{self, NODE_PORT};
use crate::crd::PhoenixMemory;
use crate::policy::Observation;

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn named_port(pod: &Pod, name: &str) -> Option<i32> {
    pod.spec
        .as_ref()
        .and_then(|s| {
            s.containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name))
        })
        .map(|p| p.container_port)
}

fn url(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

/// A node to scrape: its URL, and whether its pod is ready. An unready pod with an IP is
/// scraped too, so that a node that is unready because it found corruption says so; its
/// figures never reach the policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// `http://IP:PORT`.
    pub url: String,
    /// `http://IP:PEER_PORT`, when the pod has a `peer` port (a replicated node).
    pub peer_url: Option<String>,
    /// The pod's Ready condition.
    pub ready: bool,
}

/// Where to scrape each expected node (`name-0` … `name-{replicas-1}`), or why not.
pub fn targets(memory: &str, replicas: i32, pods: &[Pod]) -> Vec<(String, Result<Target, String>)> {
    (0..replicas.max(0))
        .map(|ordinal| {
            let node = format!("{memory}-{ordinal}");
            let target = match pods.iter().find(|p| p.name_any() == node) {
                None => Err("no ready pod".to_string()),
                Some(pod) => match pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()) {
                    None if !pod_ready(pod) => Err("pod not ready".to_string()),
                    None => Err("pod has no IP".to_string()),
                    Some(ip) => Ok(Target {
                        url: url(ip, named_port(pod, "http").unwrap_or(NODE_PORT)),
                        peer_url: named_port(pod, "peer").map(|port| url(ip, port)),
                        ready: pod_ready(pod),
                    }),
                },
            };
            (node, target)
        })
        .collect()
}

/// The memory's observations, scraped at most about once per observe interval: a reconcile
/// that comes sooner (woken by its own status write or a child's change) for the same
/// generation and ready replicas reuses the last ones. Without this, each status write woke
/// a reconcile that scraped figures which had moved again, and wrote again.
///
pub async fn observe(
    ctx: &Context,
    key: &Key,
    memory: &PhoenixMemory,
    statefulset: &StatefulSet,
) -> Observed {
    let status = statefulset.status.as_ref();
    let ready_replicas = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let generation = memory.metadata.generation;
    // Three quarters: a requeue after the interval must find the last observation old enough.
    let reuse_within = ctx.settings.observe_interval.mul_f64(0.75);
    let cached = ctx.memories.with(key, |state| {
        state.observed.clone().filter(|last| {
            last.at.elapsed() < reuse_within
                && last.generation == generation
                && last.ready_replicas == ready_replicas
        })
    });
    if let Some(observed) = cached {
        return observed;
    }
    let now = Timestamp::now();
    let (observations, pods) = scrape(ctx, memory).await;
    let observed = Observed {
        at: Instant::now(),
        taken: now.round(Unit::Second).unwrap_or(now),
        generation,
        ready_replicas,
        pods,
        observations,
    };
    let name = memory.name_any();
    let namespace = memory.namespace().unwrap_or_default();
    ctx.metrics.observed(&namespace, &name, observed.at);
    ctx.memories
        .with(key, |state| state.observed = Some(observed.clone()));
    observed
}

/// Nothing to observe until the StatefulSet changes: it has made no pod (`status.replicas`
/// and `readyReplicas` 0) and the pod cache holds none of the memory's. Another observation
/// would only say "no pod" again; the StatefulSet's first pod shows in its status, which
/// wakes the memory's reconcile. A memory in this state is requeued at the resync period,
/// not every observe interval: a memory whose pods a quota refuses costs nothing, and
/// thousands of new memories converging are not slowed by re-reconciles of the first ones.
pub fn nothing_to_observe(observed: &Observed, statefulset: &StatefulSet) -> bool {
    let status = statefulset.status.as_ref();
    observed.pods == 0
        && status.is_none_or(|s| s.replicas == 0 && s.ready_replicas.unwrap_or(0) == 0)
}

/// Scrapes every expected node of `memory` now, finding its pods in the pod cache: the
/// observations, and how many of its pods the cache held.
async fn scrape(ctx: &Context, memory: &PhoenixMemory) -> (Vec<Observation>, usize) {
    let replicas = memory.spec.replicas;
    if replicas <= 0 {
        return (Vec::new(), 0);
    }
    let name = memory.name_any();
    let namespace = memory.namespace().unwrap_or_default();
    // Unready pods are scraped too: a node that found corruption is unready and must say why.
    let listed: Vec<Pod> = (0..replicas)
        .filter_map(|ordinal| {
            ctx.caches
                .get::<Pod>(&namespace, &format!("{name}-{ordinal}"))
        })
        .filter(|pod| pod.labels().get(children::INSTANCE_LABEL) == Some(&name))
        .collect();
    let mut observations = Vec::new();
    let mut scrape = Vec::new();
    let mut unready = std::collections::BTreeSet::new();
    for (node, target) in targets(&name, replicas, &listed) {
        match target {
            Ok(target) => {
                if !target.ready {
                    unready.insert(node.clone());
                }
                scrape.push((node, target.url));
            }
            Err(reason) => observations.push(Observation::Stale { node, reason }),
        }
    }
    let scraped = crate::observe::scrape_all(
        &ctx.http,
        &scrape,
        ctx.settings.scrape_timeout,
        &ctx.settings.freshness,
    )
    .await;
    observations.extend(scraped.into_iter().map(|observation| match observation {
        Observation::Fresh(report) if unready.contains(&report.node) => Observation::Stale {
            node: report.node,
            reason: "pod not ready".into(),
        },
        Observation::Stale { node, reason } if unready.contains(&node) => Observation::Stale {
            reason: format!("pod not ready: {reason}"),
            node,
        },
        other => other,
    }));
    observations.sort_by(|a, b| a.node().cmp(b.node()));
    for observation in &observations {
        ctx.metrics.scraped(match observation {
            Observation::Fresh(_) => "fresh",
            Observation::Stale { .. } => "stale",
        });
    }
    (observations, listed.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_ip_less_pods_are_not_scraped_and_unready_ones_are_marked() {
        let pod = |name: &str, ready: bool, ip: Option<&str>| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"containers": [{"name": "node", "ports": [{"name": "http", "containerPort": 9999}]}]},
                "status": {
                    "podIP": ip,
                    "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]
                }
            }))
            .expect("pod")
        };
        let pods = [
            pod("m-0", true, Some("127.0.0.2")),
            pod("m-1", false, Some("127.0.0.3")),
            pod("m-2", true, None),
            pod("m-9", true, Some("127.0.0.9")),
        ];
        let targets = targets("m", 4, &pods);
        let target = |url: &str, ready| {
            Ok(Target {
                url: url.into(),
                peer_url: None,
                ready,
            })
        };
        assert_eq!(targets[0].1, target("http://127.0.0.2:9999", true));
        // Scraped so that it can say why it is unready; never decided on.
        assert_eq!(targets[1].1, target("http://127.0.0.3:9999", false));
        assert_eq!(targets[2].1, Err("pod has no IP".into()));
        assert_eq!(targets[3].1, Err("no ready pod".into()));
        assert_eq!(targets.len(), 4, "m-9 is not one of the 4 replicas");
    }

    #[test]
    fn only_a_memory_without_pods_or_pods_on_the_way_has_nothing_to_observe() {
        let observed = |pods| Observed {
            at: Instant::now(),
            taken: Timestamp::UNIX_EPOCH,
            generation: Some(1),
            ready_replicas: 0,
            pods,
            observations: Vec::new(),
        };
        let statefulset = |status: serde_json::Value| -> StatefulSet {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "m"}, "status": status}))
                .expect("statefulset")
        };
        let no_status: StatefulSet =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "m"}})).expect("sts");
        assert!(nothing_to_observe(&observed(0), &no_status));
        assert!(nothing_to_observe(
            &observed(0),
            &statefulset(serde_json::json!({"replicas": 0}))
        ));
        // A pod made (not yet in the cache, or without an IP yet), a pod ready, a pod in the
        // cache: observed every interval (an unready node may be saying why).
        assert!(!nothing_to_observe(
            &observed(0),
            &statefulset(serde_json::json!({"replicas": 1}))
        ));
        assert!(!nothing_to_observe(
            &observed(0),
            &statefulset(serde_json::json!({"replicas": 0, "readyReplicas": 1}))
        ));
        assert!(!nothing_to_observe(&observed(1), &no_status));
    }
}
