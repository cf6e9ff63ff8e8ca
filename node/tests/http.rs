//! The HTTP API over real TCP on 127.0.0.1, against sled in a temporary directory: every
//! endpoint, and a table of malformed and hostile requests that must each get the right 4xx
//! with a JSON error and leave the stored data unchanged.

use std::sync::Arc;
use std::time::Duration;

use phoenix_node::config::{NodeConfig, NodeSettings};
use phoenix_node::merkle::{Proof, hex_hash, verify_proof};
use phoenix_node::service::{AdminToken, Node, app};
use phoenix_node::store::Store;
use phoenix_node_api::metrics::{Scrape, names};
use serde_json::Value;

const TOKEN: &str = "test-admin-token";

/// A node served in-process on an ephemeral loopback port.
struct TestNode {
    url: String,
    node: Arc<Node>,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl TestNode {
    fn start(adjust: impl FnOnce(&mut NodeConfig)) -> TestNode {
        Self::start_with_store(adjust, |_| {})
    }

    fn start_with_store(
        adjust: impl FnOnce(&mut NodeConfig),
        adjust_store: impl FnOnce(&mut phoenix_node::store::StoreConfig),
    ) -> TestNode {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = NodeConfig {
            data_dir: dir.path().join("data"),
            ..NodeConfig::default()
        };
        config.limits.max_key_bytes = 64;
        config.limits.max_value_bytes = 1024;
        config.limits.max_body_bytes = 2048;
        config.limits.max_list_limit = 50;
        adjust(&mut config);
        config.validate().expect("valid test config");
        let mut store_config = config.store_config();
        adjust_store(&mut store_config);
        let store = Arc::new(Store::open(store_config).expect("open store"));
        let token = AdminToken::new(TOKEN).expect("token");
        let node = Arc::new(Node::new(store, config, Some(token)).expect("node"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let router = app(Arc::clone(&node));
        runtime.spawn(async move { axum::serve(listener, router).await });
        TestNode {
            url,
            node,
            _runtime: runtime,
            _dir: dir,
        }
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build()
    }

    /// Sends a request and returns the status and body, whatever the status.
    fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let mut request = Self::agent().request(method, &format!("{}{path}", self.url));
        for (name, value) in headers {
            request = request.set(name, value);
        }
        let response = match request.send_bytes(body) {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(other) => panic!("{method} {path}: transport error {other}"),
        };
        let status = response.status();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes).expect("read body");
        (status, bytes)
    }

    fn json(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Value) {
        let (status, bytes) = self.send(method, path, headers, body);
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            panic!(
                "{method} {path} answered {status} with non-JSON {:?}",
                String::from_utf8_lossy(&bytes)
            )
        });
        (status, value)
    }

    fn root(&self) -> String {
        self.json("GET", "/v1/root", &[], b"").1["root"]
            .as_str()
            .expect("root")
            .to_string()
    }
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

#[test]
fn every_endpoint_round_trips() {
    let node = TestNode::start(|_| {});
    let empty_root = node.root();
    assert_eq!(empty_root, hex_hash::to_hex(&[0; 32]));

    // Store: created, then replaced.
    let (status, body) = node.json("PUT", "/v1/memories/user/1", &[], b"first");
    assert_eq!((status, body["created"].as_bool()), (201, Some(true)));
    let (status, body) = node.json("PUT", "/v1/memories/user/1", &[], b"second");
    assert_eq!((status, body["created"].as_bool()), (200, Some(false)));
    let (status, body) = node.json("PUT", "/v1/memories/user/2?ttlSeconds=3600", &[], b"ttl");
    assert_eq!(status, 201);
    assert!(body["expiresAtMs"].as_u64().is_some());
    node.json("PUT", "/v1/memories/other", &[], b"x");

    // Retrieve: bytes, the expiry header, 404 for an absent key.
    assert_eq!(
        node.send("GET", "/v1/memories/user/1", &[], b""),
        (200, b"second".to_vec())
    );
    let response = TestNode::agent()
        .get(&format!("{}/v1/memories/user/2", node.url))
        .call()
        .expect("retrieve");
    assert!(response.header("x-phoenix-expires-at-ms").is_some());
    let (status, body) = node.json("GET", "/v1/memories/absent", &[], b"");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );

    // List with a prefix and pagination.
    let (status, page) = node.json("GET", "/v1/memories?prefix=user/&limit=1", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(page["items"][0]["key"], "user/1");
    assert_eq!(page["items"][0]["valueBytes"], 6);
    let token = page["continue"]
        .as_str()
        .expect("a second page")
        .to_string();
    let (_, page) = node.json(
        "GET",
        &format!("/v1/memories?prefix=user/&limit=1&continue={token}"),
        &[],
        b"",
    );
    assert_eq!(page["items"][0]["key"], "user/2");
    assert!(page["continue"].is_null());

    // Root and a proof that verifies against it.
    let root = node.root();
    let (status, proof) = node.json("GET", "/v1/proof/user/1", &[], b"");
    assert_eq!(status, 200);
    assert_eq!(proof["root"].as_str(), Some(root.as_str()));
    let steps: Proof = serde_json::from_value(proof["proof"].clone()).expect("proof");
    let root_bytes = hex_hash::from_hex(&root).expect("hex root");
    assert!(verify_proof(&root_bytes, b"user/1", b"second", &steps));
    assert!(!verify_proof(&root_bytes, b"user/1", b"first", &steps));
    assert_eq!(node.json("GET", "/v1/proof/absent", &[], b"").0, 404);

    // Delete: 204, then 404; the root changes back when the contents do.
    assert_eq!(node.send("DELETE", "/v1/memories/other", &[], b"").0, 204);
    assert_eq!(node.json("DELETE", "/v1/memories/other", &[], b"").0, 404);
    assert_ne!(node.root(), root);

    // Admin cleanup with the token: a report.
    let (name, value) = bearer();
    let (status, report) = node.json("POST", "/v1/admin/cleanup", &[(name, &value)], b"");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["keysAfter"], 2);
    let (status, report) = node.json(
        "POST",
        "/v1/admin/cleanup?forceRebuild=true",
        &[(name, &value)],
        b"",
    );
    assert_eq!((status, report["rebuilt"].as_bool()), (200, Some(true)));
    assert_eq!(
        node.send("GET", "/v1/memories/user/1", &[], b""),
        (200, b"second".to_vec())
    );

    // Health, readiness, ping, metrics.
    assert_eq!(node.send("GET", "/healthz", &[], b"").0, 200);
    assert_eq!(node.send("GET", "/readyz", &[], b"").0, 200);
    assert_eq!(node.send("GET", "/v1/ping", &[], b"").0, 200);
    let (status, metrics) = node.send("GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).expect("utf-8");
    assert_eq!(status, 200);
    for name in [
        "phoenix_node_request_duration_seconds_bucket{operation=\"store\"",
        "phoenix_node_keys 2",
        "phoenix_node_logical_bytes",
        "phoenix_node_disk_bytes",
        "phoenix_node_cache_capacity_bytes",
        "phoenix_node_cleanups_total{outcome=\"success\"} 2",
        "phoenix_node_last_cleanup_timestamp_seconds",
        "phoenix_node_probe_samples",
        "phoenix_node_ready 1",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from metrics:\n{metrics}"
        );
    }
    // No probe data yet: the ratio is absent, never 0.
    assert!(!metrics.contains("phoenix_node_probe_ratio "), "{metrics}");

    // Stopping: not ready.
    node.node.stop_accepting();
    let (status, body) = node.json("GET", "/readyz", &[], b"");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("not_ready"))
    );
}

#[test]
fn the_probe_ratio_appears_once_there_are_samples() {
    let node = TestNode::start(|c| {
        c.probe.samples_per_tick = 16;
        c.probe.window_ticks = 4;
        c.probe.min_samples = 32;
        c.probe.settle_ticks = 0;
    });
    for i in 0..100 {
        node.json("PUT", &format!("/v1/memories/k{i}"), &[], b"value");
    }
    // No settle ticks here: the baseline is the first whole window of four.
    for _ in 0..4 {
        node.node.probe_tick();
    }
    let metrics = String::from_utf8(node.send("GET", "/metrics", &[], b"").1).expect("utf-8");
    assert!(metrics.contains("phoenix_node_probe_ratio 1"), "{metrics}");
    assert!(
        metrics.contains("phoenix_node_probe_baseline_seconds"),
        "{metrics}"
    );
}

#[test]
fn served_latency_comes_from_real_retrieves_and_is_absent_without_them() {
    let node = TestNode::start(|c| {
        c.probe.samples_per_tick = 16;
        c.probe.window_ticks = 4;
        c.probe.min_samples = 32;
        c.probe.settle_ticks = 0;
        c.fault_injection = true;
    });
    for i in 0..100 {
        node.json("PUT", &format!("/v1/memories/k{i}"), &[], b"value");
    }
    // The probe ticks, but no client retrieved anything: no served figures, never 0.
    for _ in 0..4 {
        node.node.probe_tick();
    }
    let metrics = String::from_utf8(node.send("GET", "/metrics", &[], b"").1).expect("utf-8");
    assert!(
        metrics.contains("phoenix_node_served_samples 0"),
        "{metrics}"
    );
    for absent in [
        "phoenix_node_served_p50_seconds ",
        "phoenix_node_served_ratio ",
    ] {
        assert!(!metrics.contains(absent), "{absent}: {metrics}");
    }
    // 50 retrieves (and 50 misses, which are not served latency) per tick for a window.
    let serve_window = |node: &TestNode| {
        for _ in 0..4 {
            for i in 0..50 {
                assert_eq!(
                    node.send("GET", &format!("/v1/memories/k{i}"), &[], b"").0,
                    200
                );
                assert_eq!(
                    node.send("GET", &format!("/v1/memories/missing{i}"), &[], b"")
                        .0,
                    404
                );
            }
            node.node.probe_tick();
        }
    };
    serve_window(&node);
    let scrape = |node: &TestNode| {
        phoenix_node_api::metrics::Scrape::parse(
            &String::from_utf8(node.send("GET", "/metrics", &[], b"").1).expect("utf-8"),
        )
        .expect("metrics")
    };
    use phoenix_node_api::metrics::names;
    let first = scrape(&node);
    assert_eq!(first.get(names::SERVED_SAMPLES), Some(200.0));
    // The baseline was taken as soon as the window held enough retrieves (half of it).
    let ratio = first.get(names::SERVED_RATIO).expect("a ratio");
    assert!(
        (0.5..2.0).contains(&ratio),
        "ratio {ratio} against the first window"
    );
    let p50 = first.get(names::SERVED_P50_SECONDS).expect("p50");
    let p99 = first.get(names::SERVED_P99_SECONDS).expect("p99");
    assert!(p50 > 0.0 && p99 >= p50, "p50 {p50}, p99 {p99}");
    assert!(first.get(names::SERVED_BASELINE_SECONDS).is_some());
    // Every engine retrieve 100× slower (the fault hook): the served ratio rises with it.
    let fault = br#"{"retrieveSlowdown": 100}"#;
    let (status, body) = node.json(
        "PUT",
        "/v1/admin/faults",
        &[(bearer().0, &bearer().1)],
        fault,
    );
    assert_eq!(status, 200, "{body}");
    serve_window(&node);
    let slow = scrape(&node);
    let ratio = slow.get(names::SERVED_RATIO).expect("ratio");
    assert!(
        ratio > 2.0,
        "served ratio {ratio} with the engine 100× slower"
    );
    assert_eq!(
        slow.get(names::SERVED_BASELINE_SECONDS),
        first.get(names::SERVED_BASELINE_SECONDS)
    );
}

/// Method, path, headers, body, expected status, expected error code.
type Case = (
    &'static str,
    String,
    Vec<(&'static str, String)>,
    Vec<u8>,
    u16,
    &'static str,
);

#[test]
fn malformed_and_hostile_requests_get_a_json_4xx_and_change_nothing() {
    let node = TestNode::start(|_| {});
    node.json("PUT", "/v1/memories/keep", &[], b"kept value");
    let root = node.root();
    let (auth, good) = bearer();
    let long_key = "k".repeat(65);
    let big_value = vec![b'v'; 1025];
    let huge_body = vec![b'v'; 4096];
    let cases: Vec<Case> = vec![
        (
            "PUT",
            format!("/v1/memories/{long_key}"),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/v1/memories/k".into(),
            vec![],
            Vec::new(),
            400,
            "invalid_value",
        ),
        (
            "PUT",
            "/v1/memories/k".into(),
            vec![],
            big_value,
            413,
            "value_too_large",
        ),
        (
            "PUT",
            "/v1/memories/k".into(),
            vec![],
            huge_body,
            413,
            "body_too_large",
        ),
        (
            "PUT",
            "/v1/memories/k?ttlSeconds=-5".into(),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_query",
        ),
        (
            "PUT",
            "/v1/memories/k?ttlSeconds=0".into(),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_ttl",
        ),
        (
            "PUT",
            "/v1/memories/k?ttlSeconds=abc".into(),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_query",
        ),
        (
            "PUT",
            "/v1/memories/k?ttlSeconds=99999999999999".into(),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_ttl",
        ),
        (
            "PUT",
            "/v1/memories/k?unknown=1".into(),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_query",
        ),
        (
            "PUT",
            "/v1/memories/bad%01key".into(),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "PUT",
            "/v1/memories/bad%FFkey".into(),
            vec![],
            b"v".to_vec(),
            400,
            "invalid_key",
        ),
        (
            "GET",
            "/v1/memories?limit=0".into(),
            vec![],
            Vec::new(),
            400,
            "invalid_limit",
        ),
        (
            "GET",
            "/v1/memories?limit=1000000".into(),
            vec![],
            Vec::new(),
            400,
            "invalid_limit",
        ),
        (
            "GET",
            "/v1/memories?limit=-1".into(),
            vec![],
            Vec::new(),
            400,
            "invalid_query",
        ),
        (
            "GET",
            "/v1/memories?continue=!!notbase64".into(),
            vec![],
            Vec::new(),
            400,
            "invalid_continue",
        ),
        (
            "GET",
            "/v1/nothing-here".into(),
            vec![],
            Vec::new(),
            404,
            "no_route",
        ),
        (
            "GET",
            "/../../etc/passwd".into(),
            vec![],
            Vec::new(),
            404,
            "no_route",
        ),
        (
            "PATCH",
            "/v1/memories/keep".into(),
            vec![],
            b"v".to_vec(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/root".into(),
            vec![],
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "GET",
            "/v1/admin/cleanup".into(),
            vec![],
            Vec::new(),
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/v1/admin/cleanup".into(),
            vec![],
            Vec::new(),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/admin/cleanup".into(),
            vec![(auth, "Bearer wrong".into())],
            Vec::new(),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/admin/cleanup".into(),
            vec![(auth, TOKEN.into())],
            Vec::new(),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/admin/cleanup".into(),
            vec![(auth, "Basic dXNlcjpwYXNz".into())],
            Vec::new(),
            401,
            "unauthorized",
        ),
        (
            "POST",
            "/v1/admin/cleanup?forceRebuild=maybe".into(),
            vec![(auth, good.clone())],
            Vec::new(),
            400,
            "invalid_query",
        ),
        (
            "DELETE",
            format!("/v1/memories/{long_key}"),
            vec![],
            Vec::new(),
            400,
            "invalid_key",
        ),
        (
            "GET",
            format!("/v1/proof/{long_key}"),
            vec![],
            Vec::new(),
            400,
            "invalid_key",
        ),
    ];
    assert!(cases.len() >= 20);
    for (method, path, headers, body, status, code) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (got, value) = node.json(method, path, &headers, body);
        assert_eq!(
            (got, value["error"]["code"].as_str()),
            (*status, Some(*code)),
            "{method} {path}: {value}"
        );
        assert!(
            value["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(
            !value.to_string().contains(TOKEN),
            "the token leaked in {value}"
        );
    }
    assert_eq!(node.root(), root, "a refused request changed the data");
    assert_eq!(
        node.send("GET", "/v1/memories/keep", &[], b""),
        (200, b"kept value".to_vec())
    );
}

#[test]
fn admin_endpoints_are_off_without_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = NodeConfig {
        data_dir: dir.path().join("data"),
        ..NodeConfig::default()
    };
    let store = Arc::new(Store::open(config.store_config()).expect("open"));
    let node = Arc::new(Node::new(store, config, None).expect("node"));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    runtime.spawn(async move { axum::serve(listener, app(node)).await });
    let response = ureq::post(&format!("{url}/v1/admin/cleanup"))
        .set("Authorization", "Bearer anything")
        .call();
    match response {
        Err(ureq::Error::Status(403, body)) => {
            let value: Value = body.into_json().expect("json");
            assert_eq!(value["error"]["code"], "admin_disabled");
        }
        other => panic!("expected 403, got {other:?}"),
    }
}

#[test]
fn injected_slowdown_raises_the_ratio_and_a_cleanup_clears_a_transient_one() {
    let probe = |c: &mut NodeConfig| {
        c.probe.samples_per_tick = 64;
        c.probe.window_ticks = 4;
        c.probe.min_samples = 64;
        c.probe.settle_ticks = 1;
    };
    let off = TestNode::start(probe);
    let fault = br#"{"retrieveSlowdown": 20, "clearedByCleanup": true}"#;
    let (status, body) = off.json(
        "PUT",
        "/v1/admin/faults",
        &[(bearer().0, &bearer().1)],
        fault,
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("fault_injection_disabled"))
    );

    let node = TestNode::start(|c| {
        probe(c);
        c.fault_injection = true;
    });
    for i in 0..500 {
        node.json("PUT", &format!("/v1/memories/k{i}"), &[], b"value");
    }
    // One tick to settle, a window of four.
    for _ in 0..5 {
        node.node.probe_tick();
    }
    let ratio = |node: &TestNode| {
        let text = String::from_utf8(node.send("GET", "/metrics", &[], b"").1).expect("utf-8");
        Scrape::parse(&text)
            .expect("metrics parse")
            .get(names::PROBE_RATIO)
            .expect("ratio")
    };
    let before = ratio(&node);
    let (status, _) = node.json("PUT", "/v1/admin/faults", &[], fault);
    assert_eq!(status, 401, "the fault endpoint needs the token");
    for bad in [
        &br#"{"retrieveSlowdown": 0.5}"#[..],
        br#"{"retrieveSlowdown": 2, "extra": 1}"#,
        b"not json",
    ] {
        let (status, body) =
            node.json("PUT", "/v1/admin/faults", &[(bearer().0, &bearer().1)], bad);
        assert_eq!(status, 400, "{body}");
    }
    let (status, body) = node.json(
        "PUT",
        "/v1/admin/faults",
        &[(bearer().0, &bearer().1)],
        fault,
    );
    assert_eq!(
        (status, body["retrieveSlowdown"].as_f64()),
        (200, Some(20.0))
    );
    for _ in 0..4 {
        node.node.probe_tick();
    }
    let slowed = ratio(&node);
    assert!(
        slowed > before * 5.0,
        "ratio {before:.2} → {slowed:.2} under a 20× slowdown"
    );
    let (status, report) = node.json(
        "POST",
        "/v1/admin/cleanup",
        &[(bearer().0, &bearer().1)],
        b"",
    );
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["settled"], false,
        "the after figures come once settled"
    );
    // The settle ticks, then a window.
    for _ in 0..(node.node.config.probe.settle_ticks + 4) {
        node.node.probe_tick();
    }
    let after = ratio(&node);
    let text = String::from_utf8(node.send("GET", "/metrics", &[], b"").1).expect("utf-8");
    let ratio_after = Scrape::parse(&text)
        .expect("metrics parse")
        .get(names::LAST_CLEANUP_RATIO_AFTER)
        .expect("the settled cleanup's ratio");
    assert!(ratio_after < slowed / 3.0, "{ratio_after}");
    assert!(
        after < slowed / 3.0,
        "cleanup cleared it: {slowed:.2} → {after:.2}"
    );
    let (_, fault_now) = node.json("GET", "/v1/admin/faults", &[(bearer().0, &bearer().1)], b"");
    assert_eq!(fault_now["retrieveSlowdown"].as_f64(), Some(1.0));
}

#[test]
fn a_rebuild_longer_than_the_request_timeout_stays_ready_and_is_reported_as_its_success() {
    // Requests time out after 300 ms; the rebuild's copy takes at least 1.5 s.
    let node = TestNode::start_with_store(
        |c| c.limits.request_timeout_ms = 300,
        |s| s.rebuild_pause = Duration::from_millis(1500),
    );
    for i in 0..20 {
        let (status, _) = node.send("PUT", &format!("/v1/memories/k{i}"), &[], b"value");
        assert_eq!(status, 201);
    }
    let auth = format!("Bearer {TOKEN}");
    let url = node.url.clone();
    let cleanup = std::thread::spawn(move || {
        let response = TestNode::agent()
            .post(&format!("{url}/v1/admin/cleanup?forceRebuild=true"))
            .set("Authorization", &auth)
            .call();
        match response {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    });
    // While the copy runs: ready, reads served, writes refused with 503 + Retry-After.
    let deadline = std::time::Instant::now() + Duration::from_millis(1000);
    std::thread::sleep(Duration::from_millis(200));
    let mut checks = 0;
    while std::time::Instant::now() < deadline {
        assert!(
            node.node.store.is_rebuilding(),
            "the rebuild is still copying"
        );
        let (ready, body) = node.send("GET", "/readyz", &[], b"");
        assert_eq!(
            ready,
            200,
            "unready during the copy: {}",
            String::from_utf8_lossy(&body)
        );
        let (read, value) = node.send("GET", "/v1/memories/k3", &[], b"");
        assert_eq!((read, value.as_slice()), (200, &b"value"[..]));
        let (write, _) = node.send("PUT", "/v1/memories/during", &[], b"x");
        assert_eq!(write, 503, "writes wait for the swap");
        checks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(checks >= 5);
    let (status, body) = cleanup.join().expect("cleanup thread");
    assert_eq!(
        status, 200,
        "the cleanup outlives the request timeout: {body}"
    );
    let report: Value = serde_json::from_str(&body).expect("a cleanup report");
    assert_eq!(report["rebuilt"], true, "{report}");
    let (_, metrics) = node.send("GET", "/metrics", &[], b"");
    let scrape = Scrape::parse(&String::from_utf8_lossy(&metrics)).expect("metrics");
    let text = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        text.lines()
            .any(|l| l.starts_with(names::CLEANUPS) && l.contains("success") && l.ends_with(" 1")),
        "{text}"
    );
    assert_eq!(scrape.get(names::READY), Some(1.0));
    let (status, _) = node.send("GET", "/v1/memories/k19", &[], b"");
    assert_eq!(status, 200);
}
