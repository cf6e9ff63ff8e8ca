//! The operator's observer against a real node's `/metrics` (served in-process on loopback).

use std::sync::Arc;
use std::time::Duration;

use phoenix_node::config::{NodeConfig, NodeSettings};
use phoenix_node::service::{Node, app};
use phoenix_node::store::Store;
use phoenix_operator::controller::decision::policy_spec;
use phoenix_operator::crd::PhoenixMemorySpec;
use phoenix_operator::observe::{Freshness, scrape_all};
use phoenix_operator::policy::{History, Observation, Rule, decide};
use phoenix_operator::validate::validate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nodes_metrics_become_a_fresh_observation_and_a_dead_one_a_stale_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = NodeConfig {
        data_dir: dir.path().join("data"),
        ..NodeConfig::default()
    };
    config.probe.samples_per_tick = 50;
    config.probe.window_ticks = 4;
    config.probe.min_samples = 100;
    config.probe.settle_ticks = 0;
    let store = Arc::new(Store::open(config.store_config()).expect("store"));
    for i in 0..2000u32 {
        store
            .store(format!("k{i}").as_bytes(), b"some value", None)
            .expect("store");
    }
    let node = Arc::new(Node::new(store, config, None).expect("node"));
    for _ in 0..4 {
        let n = Arc::clone(&node);
        tokio::task::spawn_blocking(move || n.probe_tick())
            .await
            .expect("tick");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app(node)).await });
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };

    let http = reqwest::Client::new();
    let nodes = vec![("mem-0".to_string(), url), ("mem-1".to_string(), dead)];
    let freshness = Freshness {
        min_samples: 100.0,
        max_age: Duration::from_secs(60),
    };
    let observations = scrape_all(&http, &nodes, Duration::from_secs(2), &freshness).await;
    match &observations[0] {
        Observation::Fresh(report) => {
            assert!(report.ratio > 0.0 && report.ratio.is_finite(), "{report:?}");
            assert_eq!(
                report.logical_bytes,
                (0..2000u32)
                    .map(|i| format!("k{i}").len() as u64 + 10)
                    .sum::<u64>()
            );
            assert_eq!(report.cache_capacity_bytes, 256 << 20);
        }
        stale => panic!("expected a fresh observation, got {stale:?}"),
    }
    assert!(matches!(&observations[1], Observation::Stale { node, .. } if node == "mem-1"));

    // The policy (a default PhoenixMemory's) keeps the plan when any node is stale.
    let defaults: PhoenixMemorySpec = serde_json::from_str("{}").expect("defaults");
    let spec = policy_spec(&validate(&defaults).expect("valid defaults"));
    let decision = decide(&observations, &spec, &History::default());
    assert_eq!(
        (decision.rule, decision.emergency_job),
        (Rule::Stale, false)
    );
    assert!(decision.reason.contains("mem-1"));
    // With only the live node, it decides on real data.
    let decision = decide(&observations[..1], &spec, &History::default());
    assert_ne!(decision.rule, Rule::Stale);
}
