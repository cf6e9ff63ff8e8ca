//! `crds/` holds exactly what `phoenix-operator crd` prints. Regenerate with:
//! `scripts/regenerate` (crds/ and the chart copy).

#[test]
fn the_committed_crd_matches_the_generated_one() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/phoenixmemories.phoenix.dev.yaml"
    );
    let committed =
        std::fs::read_to_string(path).expect("crds/phoenixmemories.phoenix.dev.yaml exists");
    let generated = phoenix_operator::crd_yaml().expect("renders");
    assert!(
        committed == generated,
        "crds/ is stale: run scripts/regenerate"
    );
}

#[test]
fn the_charts_crd_copy_matches_too() {
    let root = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/phoenixmemories.phoenix.dev.yaml"
    );
    let chart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/phoenix-operator/crds/phoenixmemories.phoenix.dev.yaml"
    );
    let generated = phoenix_operator::crd_yaml().expect("renders");
    assert!(
        std::fs::read_to_string(chart).expect("chart copy exists") == generated,
        "the chart's CRD is stale: run scripts/regenerate"
    );
    assert!(std::fs::read_to_string(root).expect("crds/") == generated);
}
