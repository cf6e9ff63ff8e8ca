//! `crds/` holds exactly what `phoenix-operator crd` prints. Regenerate with:
//! `cargo run -p phoenix-operator -- crd > crds/phoenixmemories.phoenix.dev.yaml`.

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
        "crds/ is stale: run `cargo run -p phoenix-operator -- crd > crds/phoenixmemories.phoenix.dev.yaml`"
    );
}
