//! The `phoenix-node` binary end to end: the benchmark at a small scale, and `verify`.

use std::process::Command;

use phoenix_node::store::{Store, StoreConfig};

fn node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phoenix-node"))
}

#[test]
fn bench_runs_every_scenario_and_writes_json_and_plots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("results.json");
    let plots = dir.path().join("plots");
    let output = node()
        .args(["bench", "--scale", "0.01", "--no-progress", "--dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plots)
        .output()
        .expect("run phoenix-node bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for name in ["sustained", "growth", "cache-pressure", "churn"] {
        assert!(
            stdout.contains(&format!("== {name}:")),
            "no {name} table in:\n{stdout}"
        );
        let svg = std::fs::read_to_string(plots.join(format!("{name}.svg"))).expect("plot written");
        assert!(
            svg.starts_with("<svg") && svg.contains("retrieve p50"),
            "{name}.svg is not a plot"
        );
    }
    assert!(stdout.contains("retrieve p50 last/first window"));
    assert!(stdout.contains("peak RSS"));
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid json");
    let scenarios = results.as_array().expect("an array of scenarios");
    assert_eq!(scenarios.len(), 4);
    let growth = &scenarios[1];
    assert_eq!(growth["name"], "growth");
    let windows = growth["windows"].as_array().expect("windows");
    assert_eq!(windows.len(), 10);
    assert!(
        windows
            .iter()
            .all(|w| w["retrieve"]["count"].as_u64() > Some(0))
    );
    assert!(
        windows
            .iter()
            .all(|w| w["reference"]["p50_ns"].as_u64() > Some(0))
    );
    // The benchmark cleans up its databases.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("phoenix-bench-")
        })
        .collect();
    assert!(left.is_empty(), "benchmark left {left:?}");
}

#[test]
fn bench_rejects_a_bad_scale_with_a_clear_message() {
    let output = node()
        .args(["bench", "--scale", "0"])
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("scale must lie in"));
}

#[test]
fn verify_accepts_a_consistent_directory_and_refuses_a_foreign_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    {
        let store = Store::open(StoreConfig::new(&data)).expect("open");
        for i in 0..500u32 {
            store
                .store(&i.to_be_bytes(), b"value", None)
                .expect("store");
        }
        store.checkpoint().expect("checkpoint");
    }
    let output = node()
        .arg("verify")
        .arg("--data")
        .arg(&data)
        .output()
        .expect("run verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("keys: 500") && stdout.trim_end().ends_with("ok"),
        "{stdout}"
    );

    let output = node()
        .arg("verify")
        .arg("--data")
        .arg(dir.path())
        .output()
        .expect("run verify");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("not a phoenix-node data directory"));
}
