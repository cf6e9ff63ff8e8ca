//! Against a real cluster: the operator's controller (from this build, in the test process)
//! with the cluster of the current kubeconfig. Ignored by default — no cluster runs on our
//! development machines. Run it with
//! `PHOENIX_REAL_CLUSTER=1 cargo nextest run -p phoenix-tests --run-ignored only real_cluster::`
//! (kind or k3d is enough; the node image need not be pullable: the test checks what the
//! operator creates and reports, not the pods).

use std::time::Duration;

use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, CustomResourceExt};
use phoenix_operator::controller::{self, Settings};
use phoenix_operator::crd::PhoenixMemory;
use phoenix_operator::metrics::Metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Kubernetes cluster: PHOENIX_REAL_CLUSTER=1 … --run-ignored all"]
async fn a_memory_on_a_real_cluster_gets_its_children_and_a_plan() {
    assert_eq!(
        std::env::var("PHOENIX_REAL_CLUSTER").as_deref(),
        Ok("1"),
        "set PHOENIX_REAL_CLUSTER=1 to confirm the current kubeconfig context may be used"
    );
    let client = Client::try_default().await.expect("a kubeconfig");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "phoenixmemories.phoenix.dev",
        &PatchParams::apply("phoenix-e2e").force(),
        &Patch::Apply(PhoenixMemory::crd()),
    )
    .await
    .expect("install the CRD");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let namespace = format!("phoenix-e2e-{:06x}", fastrand::u32(..0xff_ffff));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}}))
            .expect("namespace");
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create the namespace");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        namespace: Some(namespace.clone()),
        observe_interval: Duration::from_secs(5),
        ..Settings::default()
    };
    let metrics = std::sync::Arc::new(Metrics::new().expect("metrics"));
    let operator = tokio::spawn(controller::run(
        client.clone(),
        settings,
        metrics,
        async move {
            let _ = stopped.await;
        },
    ));

    let memories: Api<PhoenixMemory> = Api::namespaced(client.clone(), &namespace);
    let memory: PhoenixMemory =
        serde_yaml::from_str(include_str!("../../../examples/minimal.yaml")).expect("example");
    memories
        .create(&PostParams::default(), &memory)
        .await
        .expect("create the memory");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status = memories
            .get("minimal")
            .await
            .expect("get")
            .status
            .unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready && status.plan.is_some() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not Ready with a plan in 120 s: {status:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let cronjob = Api::<CronJob>::namespaced(client.clone(), &namespace)
        .get("minimal-cleanup")
        .await
        .expect("the CronJob");
    assert_eq!(
        cronjob.spec.map(|s| s.schedule),
        status.plan.map(|p| p.schedule)
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    let _ = namespaces
        .delete(&namespace, &DeleteParams::default())
        .await;
}
