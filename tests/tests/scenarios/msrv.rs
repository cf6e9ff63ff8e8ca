//! The workspace's `rust-version` is true: at least every dependency's own `rust-version`
//! (kube 5 needs 1.89; the manifest said 1.85 while nothing built with it).

#[test]
fn the_declared_rust_version_covers_every_dependency() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(root)
        .output()
        .expect("run cargo metadata");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("metadata is JSON");
    let version = |text: &str| -> [u32; 3] {
        let mut parts = text.split('.').map(|p| p.parse().unwrap_or(0));
        [0; 3].map(|_: u32| parts.next().unwrap_or(0))
    };
    let packages = metadata["packages"].as_array().expect("packages");
    let ours: Vec<&str> = ["phoenix-operator", "phoenix-node", "phoenix-tests"].to_vec();
    let declared = packages
        .iter()
        .find(|p| p["name"] == "phoenix-operator")
        .and_then(|p| p["rust_version"].as_str())
        .expect("the workspace declares a rust-version");
    let needed = packages
        .iter()
        .filter(|p| !ours.contains(&p["name"].as_str().unwrap_or("")))
        .filter_map(|p| Some((p["rust_version"].as_str()?, p["name"].as_str()?)))
        .max_by_key(|(v, _)| version(v))
        .expect("dependencies declare rust versions");
    assert!(
        version(declared) >= version(needed.0),
        "rust-version {declared} is older than {} needs ({})",
        needed.1,
        needed.0
    );
}
