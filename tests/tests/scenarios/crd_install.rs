//! The generated CRD installs into the in-process API server, the `examples/` validate
//! against it, and a bad resource is refused with 422.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use phoenix_operator::crd::PhoenixMemory;
use phoenix_tests::apiserver::ApiServer;

fn example(name: &str) -> PhoenixMemory {
    let path = format!("{}/../examples/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{path} is not a PhoenixMemory: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_crd_installs_and_the_examples_validate() {
    let server = ApiServer::start().await.expect("server");
    let client = server.client().expect("client");
    let crd_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/phoenixmemories.phoenix.dev.yaml"
    ))
    .expect("crds/ file");
    let crd: CustomResourceDefinition = serde_yaml::from_str(&crd_text).expect("a CRD");
    Api::<CustomResourceDefinition>::all(client.clone())
        .create(&PostParams::default(), &crd)
        .await
        .expect("install the CRD");
    let memories: Api<PhoenixMemory> = Api::default_namespaced(client);
    for name in ["minimal.yaml", "production.yaml", "replicated.yaml"] {
        let created = memories
            .create(&PostParams::default(), &example(name))
            .await
            .unwrap_or_else(|e| panic!("{name} refused: {e}"));
        assert_eq!(created.metadata.generation, Some(1));
    }
    let stored = memories.get("agents").await.expect("get");
    assert_eq!(stored.spec.replicas, 3);
    assert_eq!(stored.spec.cleanup.windows.len(), 2);

    let mut bad = example("minimal.yaml");
    bad.metadata.name = Some("bad".into());
    bad.spec.replicas = -1;
    bad.spec.cleanup.degradation_threshold = 0.5;
    match memories.create(&PostParams::default(), &bad).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("spec.replicas"),
                "{}",
                status.message
            );
            assert!(
                status.message.contains("degradationThreshold"),
                "{}",
                status.message
            );
        }
        other => panic!("expected 422, got {other:?}"),
    }
}
