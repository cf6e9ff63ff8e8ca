//! Leader election on a `coordination.k8s.io/v1` Lease: of several operator replicas only
//! the holder reconciles, and it stops when it loses the Lease.

use std::sync::Arc;

use kube::Client;

use super::context::Settings;
use super::runner::run_controller;
use crate::metrics::Metrics;

/// Runs until `shutdown` resolves, then lets running reconciles finish. With leader election
/// it reconciles only while it holds the Lease, and stops reconciling when it loses it.
///
/// # Errors
/// The lease manager cannot be set up.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), kube_lease_manager::LeaseManagerError> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let Some(election) = settings.leader_election.clone() else {
        let mut stop = stop_rx.clone();
        metrics.leader.set(1);
        metrics.health.set_leading(true);
        run_controller(client, settings, Arc::clone(&metrics), async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
        metrics.leader.set(0);
        metrics.health.set_leading(false);
        return Ok(());
    };
    let manager =
        kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &election.lease_name)
            .with_namespace(&election.namespace)
            .with_identity(&election.identity)
            .with_duration(election.lease_seconds)
            .with_grace(election.renew_margin_seconds)
            .build()
            .await?;
    let (mut leading, lease_task) = manager.watch().await;
    let mut stop = stop_rx.clone();
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            changed = leading.wait_for(|l| *l) => {
                if changed.is_err() {
                    break;
                }
            }
        }
        tracing::info!(identity = %election.identity, "leading: reconciling");
        let mut lost = leading.clone();
        let mut stop_inner = stop_rx.clone();
        metrics.leader.set(1);
        metrics.health.set_leading(true);
        run_controller(client.clone(), settings.clone(), Arc::clone(&metrics), async move {
            tokio::select! {
                _ = lost.wait_for(|l| !*l) => tracing::warn!("lost the lease: stopping reconciles"),
                _ = stop_inner.wait_for(|s| *s) => {}
            }
                })
        .await;
        metrics.leader.set(0);
        metrics.health.set_leading(false);
        if *stop.borrow() {
            break;
        }
    }
    // Closing the channel ends the lease task; it releases the lease for the next replica.
    drop(leading);
    if let Ok(Ok(manager)) = lease_task.await {
        let _ = manager.release().await;
    }
    Ok(())
}
