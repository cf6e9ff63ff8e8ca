//! The `phoenix-operator` binary: `crd` and `plan`.

use std::process::Command;

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_phoenix-operator"))
}

fn example(name: &str) -> String {
    format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn crd_prints_what_crds_holds() {
    let output = operator().arg("crd").output().expect("run");
    assert!(output.status.success());
    let committed = std::fs::read_to_string(format!(
        "{}/../crds/phoenixmemories.phoenix.dev.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("crds file");
    assert_eq!(String::from_utf8_lossy(&output.stdout), committed);
}

#[test]
fn plan_prints_every_child_of_each_example() {
    for file in ["minimal.yaml", "production.yaml", "replicated.yaml"] {
        let output = operator()
            .args(["plan", "-f", &example(file)])
            .output()
            .expect("run");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(
            kinds,
            [
                "ConfigMap",
                "Secret",
                "Service",
                "Service",
                "StatefulSet",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "CronJob",
                "Job"
            ],
            "{file}"
        );
    }
}

#[test]
fn plan_refuses_an_invalid_spec_with_every_problem_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "apiVersion: phoenix.dev/v1alpha1\nkind: PhoenixMemory\nmetadata: {name: bad}\n\
         spec: {cleanup: {minInterval: 2h, maxInterval: 1h, recoverThreshold: 5}}\n",
    )
    .expect("write");
    let output = operator()
        .arg("plan")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("must not exceed") && stderr.contains("thresholds"),
        "{stderr}"
    );
}
