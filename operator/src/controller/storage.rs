//! Storage that grows in place, as CloudNativePG does for its volumes.
//!
//! A StatefulSet cannot change its `volumeClaimTemplates`. When `storage.size` grows, the
//! operator (1) checks that every node's claim can grow (its StorageClass allows volume
//! expansion), (2) patches each claim `data-NAME-i` to the new size — the storage driver
//! grows the volume under the running pod — and (3) deletes the StatefulSet with
//! `propagationPolicy: Orphan`, so its pods keep running, and applies it again with the new
//! template (the next reconcile; the pods are adopted, not restarted, since their template
//! is unchanged). A smaller size or another StorageClass cannot be done in place: it is
//! refused with the reason (`Ready=False`, `ChildRejected`), before any request the API
//! server would refuse.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use kube::api::{DeleteParams, Patch, PatchParams, PropagationPolicy};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::context::{Context, Error};
use crate::validate::quantity_value;

/// The claim template's size and StorageClass.
fn claim_of(statefulset: &StatefulSet) -> (Option<String>, Option<String>) {
    let claim = statefulset
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.as_ref())
        .and_then(|t| t.first());
    let size = claim
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.resources.as_ref())
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage"))
        .map(|q| q.0.clone());
    let class = claim
        .and_then(|c| c.spec.as_ref())
        .and_then(|s| s.storage_class_name.clone());
    (size, class)
}

/// What a change of the claim template needs.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// The live StatefulSet's claims already match (or there is none yet).
    None,
    /// The claims grow from one size to another.
    Grow {
        /// The live size.
        from: String,
        /// The size asked for.
        to: String,
    },
    /// A change the claims cannot take in place; why.
    Impossible(String),
}

/// Compares the live StatefulSet's claim template with the desired one.
pub fn change(live: &StatefulSet, desired: &StatefulSet) -> Change {
    let (live_size, live_class) = claim_of(live);
    let (want_size, want_class) = claim_of(desired);
    if live_class != want_class {
        return Change::Impossible(format!(
            "storage.storageClassName cannot change on an existing memory ({} → {}): its \
             volumes are already provisioned",
            live_class.as_deref().unwrap_or("the default"),
            want_class.as_deref().unwrap_or("the default")
        ));
    }
    let (Some(from), Some(to)) = (live_size, want_size) else {
        return Change::None;
    };
    match (quantity_value(&from), quantity_value(&to)) {
        (Some(a), Some(b)) if b > a => Change::Grow { from, to },
        (Some(a), Some(b)) if b < a => Change::Impossible(format!(
            "storage.size can only grow ({from} → {to}): volumes do not shrink"
        )),
        _ => Change::None,
    }
}

/// Grows the claims of `live` to the desired size and deletes the StatefulSet, orphaning
/// its pods, so that it can be applied again with the new template.
///
/// # Errors
/// [`Error::Rejected`] when a claim's StorageClass does not allow expansion (nothing is
/// changed then); API errors.
pub async fn grow(
    ctx: &Context,
    namespace: &str,
    live: &StatefulSet,
    to: &str,
) -> Result<(), Error> {
    let name = live.name_any();
    let replicas = live.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let classes: Api<StorageClass> = Api::all(ctx.client.clone());
    let mut found = Vec::new();
    for ordinal in 0..replicas.max(0) {
        let claim_name = format!("data-{name}-{ordinal}");
        if let Some(claim) = claims.get_opt(&claim_name).await? {
            found.push(claim);
        }
    }
    // Every claim first: all grow, or none is touched.
    for claim in &found {
        let class = claim
            .spec
            .as_ref()
            .and_then(|s| s.storage_class_name.clone());
        let expandable = match &class {
            Some(class) => match classes.get_opt(class).await {
                Ok(found) => found
                    .and_then(|c| c.allow_volume_expansion)
                    .unwrap_or(false),
                // A namespaced install cannot read cluster-scoped StorageClasses.
                Err(kube::Error::Api(status)) if status.code == 403 => {
                    return Err(Error::Rejected {
                        child: format!("StorageClass {class}"),
                        code: 403,
                        message: format!(
                            "cannot tell whether StorageClass {class} allows volume expansion \
                             (no cluster-wide read of StorageClasses: a namespaced install); \
                             grow the claims by hand: {}",
                            status.message
                        ),
                    });
                }
                Err(error) => return Err(error.into()),
            },
            None => false,
        };
        if !expandable {
            return Err(Error::Rejected {
                child: format!("PersistentVolumeClaim {}", claim.name_any()),
                code: 422,
                message: format!(
                    "storage.size cannot grow: StorageClass {} does not allow volume expansion \
                     (allowVolumeExpansion)",
                    class.as_deref().unwrap_or("(none)")
                ),
            });
        }
    }
    for claim in &found {
        let current = claim
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref())
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get("storage"))
            .and_then(|q| quantity_value(&q.0));
        if current.zip(quantity_value(to)).is_some_and(|(c, t)| c >= t) {
            continue;
        }
        claims
            .patch(
                &claim.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"resources": {"requests": {"storage": to}}}})),
            )
            .await?;
    }
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let orphan = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    match statefulsets.delete(&name, &orphan).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(size: &str, class: Option<&str>) -> StatefulSet {
        serde_json::from_value(json!({"spec": {
            "selector": {}, "serviceName": "x", "template": {},
            "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
                "storageClassName": class,
                "resources": {"requests": {"storage": size}}}}]
        }}))
        .expect("statefulset")
    }

    #[test]
    fn growth_shrinking_and_class_changes_are_told_apart() {
        assert_eq!(
            change(&sts("1Gi", None), &sts("1024Mi", None)),
            Change::None
        );
        assert_eq!(
            change(&sts("1Gi", None), &sts("2Gi", None)),
            Change::Grow {
                from: "1Gi".into(),
                to: "2Gi".into()
            }
        );
        assert!(matches!(
            change(&sts("2Gi", None), &sts("1Gi", None)),
            Change::Impossible(why) if why.contains("only grow")
        ));
        assert!(matches!(
            change(&sts("1Gi", Some("fast")), &sts("1Gi", Some("slow"))),
            Change::Impossible(why) if why.contains("storageClassName")
        ));
    }
}
