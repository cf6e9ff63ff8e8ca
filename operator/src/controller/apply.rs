//! Server-side apply of the children, in one documented order, under one field manager.
//!
//! Order: ConfigMap and Secret first (the pods mount them), then the Services (stable DNS
//! before pods start), the StatefulSet, the PodDisruptionBudget, and the CronJob last (it
//! cleans nodes that must exist). The live objects come from the watch caches (see
//! `caches`); a child whose live object already holds every field we would apply is not
//! written: a converged reconcile makes no request here at all.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::Value;

use super::caches::{Cached, Sighting};
use super::context::{Context, Error, FIELD_MANAGER};
use super::replication::Sizing;
use super::state::{Checked, CheckedChild, CronJobChecked, Key};
use crate::children::{self, Children, Inputs, PEER_TOKEN_KEY, TOKEN_KEY, Tokens, secret_name};
use crate::crd::PhoenixMemory;
use crate::validate::ValidSpec;

/// Whether `current` already holds every field of `desired` with the same value.
/// Quantities under `requests` and `limits` compare by value: the API server stores
/// `cpu: "0.5"` as `500m` and `memory: 1024Mi` as `1Gi`, and a textual comparison made
/// every full check re-apply the StatefulSet (and publish an `Applied` Event).
pub fn is_subset(desired: &Value, current: &Value) -> bool {
    subset(desired, current, false)
}

fn subset(desired: &Value, current: &Value, quantities: bool) -> bool {
    match (desired, current) {
        (Value::Object(d), Value::Object(c)) => d.iter().all(|(k, v)| {
            let inner = quantities || k == "requests" || k == "limits";
            v.is_null() || c.get(k).is_some_and(|cv| subset(v, cv, inner))
        }),
        (Value::Array(d), Value::Array(c)) => {
            d.len() == c.len() && d.iter().zip(c).all(|(dv, cv)| subset(dv, cv, quantities))
        }
        (Value::String(d), Value::String(c)) if quantities && d != c => {
            match (
                crate::validate::quantity_value(d),
                crate::validate::quantity_value(c),
            ) {
                (Some(a), Some(b)) => {
                    a == b || (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs())
                }
                _ => false,
            }
        }
        (d, c) => d == c,
    }
}

/// Applies `desired` in `namespace` unless its live object (from the watch cache) already
/// holds every field; returns the applied object when it wrote.
async fn apply_one<K: Cached>(
    ctx: &Context,
    namespace: &str,
    desired: &K,
) -> Result<Option<K>, Error> {
    let live = ctx.caches.get_value::<K>(namespace, &desired.name_any());
    apply_over(ctx, namespace, desired, live.as_ref()).await
}

/// [`apply_one`] with the live object (as JSON) already read.
async fn apply_over<K: Cached>(
    ctx: &Context,
    namespace: &str,
    desired: &K,
    live: Option<&Value>,
) -> Result<Option<K>, Error> {
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let name = desired.name_any();
    if let Some(live) = live {
        let wanted =
            serde_json::to_value(desired).map_err(|e| Error::Kube(kube::Error::SerdeError(e)))?;
        if is_subset(&wanted, live) {
            return Ok(None);
        }
    }
    let params = PatchParams::apply(FIELD_MANAGER).force();
    match api.patch(&name, &params, &Patch::Apply(desired)).await {
        Ok(applied) => Ok(Some(applied)),
        // Refusals that a retry cannot change (invalid, forbidden, malformed): say which
        // child and why, instead of retrying in silence.
        Err(kube::Error::Api(status)) if matches!(status.code, 400 | 403 | 422) => {
            Err(Error::Rejected {
                child: format!("{} {name}", K::kind(&())),
                code: status.code,
                message: status.message,
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// The memory's tokens: the ones its Secret holds, or new random ones (each key on its
/// own: a Secret from before the peer token gains one and keeps its admin token). The
/// Secret is read from the watch cache; only when the cache lacks it (a new memory, or a
/// Secret whose `managed-by` label someone removed) is it read from the API server, so
/// that an existing token is never replaced by a new one.
///
/// # Errors
/// The Secret cannot be read, or the random generator fails.
pub async fn tokens(ctx: &Context, namespace: &str, memory: &str) -> Result<Tokens, Error> {
    let name = secret_name(memory);
    let secret = match ctx.caches.get::<Secret>(namespace, &name) {
        Some(secret) => Some(secret),
        None => {
            Api::<Secret>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&name)
                .await?
        }
    };
    let data = secret.and_then(|s| s.data).unwrap_or_default();
    let kept = |key: &str| -> Result<String, Error> {
        match data
            .get(key)
            .map(|t| String::from_utf8_lossy(&t.0).into_owned())
            .filter(|t| !t.is_empty())
        {
            Some(token) => Ok(token),
            None => new_token(),
        }
    };
    Ok(Tokens {
        admin: kept(TOKEN_KEY)?,
        peer: kept(PEER_TOKEN_KEY)?,
    })
}

/// 256 bits from the operating system's cryptographic generator, as hex.
///
/// # Errors
/// The generator is unavailable (reported as a reconcile error; no weak token is made).
pub fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// A child's write: the resourceVersion the API server answered with (`None` inside when it
/// gave none), or `None` when the child was left as it was.
type Write = Option<Option<Arc<str>>>;

fn write_of<K: kube::Resource>(applied: Option<K>) -> Write {
    applied.map(|object| object.meta().resource_version.as_deref().map(Arc::from))
}

/// Applies every child but the CronJob, in order: the StatefulSet (as applied or cached),
/// and each child's kind for the `Applied` Event with its [`Write`] (in the order of
/// [`sightings`]).
async fn children(
    ctx: &Context,
    namespace: &str,
    children: &Children,
) -> Result<(StatefulSet, Vec<(&'static str, Write)>), Error> {
    let configmap = write_of(apply_one(ctx, namespace, &children.configmap).await?);
    let secret = write_of(apply_one(ctx, namespace, &children.secret).await?);
    let headless = write_of(apply_one(ctx, namespace, &children.headless_service).await?);
    let client = write_of(apply_one(ctx, namespace, &children.client_service).await?);
    let (statefulset, nodes) = statefulset(ctx, namespace, &children.statefulset).await?;
    let nodes = nodes.then(|| {
        statefulset
            .metadata
            .resource_version
            .as_deref()
            .map(Arc::from)
    });
    let pdb = write_of(apply_one(ctx, namespace, &children.pdb).await?);
    let network_policy = write_of(apply_one(ctx, namespace, &children.network_policy).await?);
    Ok((
        statefulset,
        vec![
            ("ConfigMap", configmap),
            ("Secret", secret),
            ("headless Service", headless),
            ("client Service", client),
            ("StatefulSet", nodes),
            ("PodDisruptionBudget", pdb),
            ("NetworkPolicy", network_policy),
        ],
    ))
}

/// The children as a check leaves them (see [`CheckedChild::left`]), in apply order.
fn left_by_check(
    before: &[Sighting],
    writes: &[(&'static str, Write)],
) -> Option<Vec<CheckedChild>> {
    before
        .iter()
        .zip(writes)
        .map(|(before, (_, write))| CheckedChild::left(before, write.as_ref().map(Option::as_ref)))
        .collect()
}

/// Applies the StatefulSet; a grown `storage.size` first grows the claims and replaces the
/// StatefulSet, orphaning its pods (see [`super::storage`]).
async fn statefulset(
    ctx: &Context,
    namespace: &str,
    desired: &StatefulSet,
) -> Result<(StatefulSet, bool), Error> {
    use super::storage::{self, Change};
    let api: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let name = desired.name_any();
    let live = ctx.caches.get_value::<StatefulSet>(namespace, &name);
    let current: Option<StatefulSet> = live
        .clone()
        .and_then(|value| serde_json::from_value(value).ok());
    if let Some(current) = &current {
        match storage::change(current, desired) {
            Change::None => {}
            Change::Impossible(why) => {
                return Err(Error::Rejected {
                    child: format!("StatefulSet {name}"),
                    code: 422,
                    message: why,
                });
            }
            Change::Grow { from, to } => {
                tracing::info!(statefulset = %name, %from, %to, "growing the claims in place");
                storage::grow(ctx, namespace, current, &to).await?;
                if api.get_opt(&name).await?.is_some() {
                    // Still being deleted (the orphaning takes the garbage collector a
                    // moment): apply the new one on the next try.
                    return Err(Error::Resizing(name));
                }
            }
        }
    }
    match apply_over(ctx, namespace, desired, live.as_ref()).await? {
        Some(applied) => Ok((applied, true)),
        None => Ok((current.unwrap_or_default(), false)),
    }
}

/// What the apply step found: the tokens, the StatefulSet, what it wrote. No `Debug`: it
/// holds the tokens.
pub struct Applied {
    /// The memory's tokens.
    pub tokens: Tokens,
    /// The StatefulSet as applied or cached.
    pub statefulset: StatefulSet,
    /// The kinds written, for the `Applied` Event.
    pub written: Vec<&'static str>,
}

/// What the caches last saw of `memory`'s serving children, in apply order.
fn sightings(ctx: &Context, namespace: &str, memory: &str) -> Vec<Sighting> {
    let caches = &ctx.caches;
    vec![
        caches.sighting::<ConfigMap>(namespace, &children::configmap_name(memory)),
        caches.sighting::<Secret>(namespace, &secret_name(memory)),
        caches.sighting::<Service>(namespace, &children::headless_name(memory)),
        caches.sighting::<Service>(namespace, memory),
        caches.sighting::<StatefulSet>(namespace, memory),
        caches.sighting::<PodDisruptionBudget>(namespace, memory),
        caches.sighting::<NetworkPolicy>(namespace, memory),
    ]
}

/// Applies every child but the CronJob (its schedule is planned after observing), in
/// order, each only when its cached live object differs from what is wanted: a converged
/// memory costs no request here. When neither the memory's generation, nor the cache the
/// operator raised (status, not spec) changed since the last check, and the caches show every
/// child as that check left it — as it found it, or as it wrote it (whether or not the
/// write's own watch event has arrived) — nothing is built or compared.
///
/// # Errors
/// The API server refused or failed; a child could not be built; the caches are gone.
pub async fn serving(
    ctx: &Context,
    key: &Key,
    memory: &PhoenixMemory,
    valid: &ValidSpec,
    sizing: Sizing,
) -> Result<Applied, Error> {
    // An object missing from a cache must be missing from the cluster (else a Secret's
    // token would be replaced): wait for every cache's first complete list.
    if !ctx.caches.ready().await {
        return Err(Error::CachesGone);
    }
    let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
    let name = memory.name_any();
    let sightings = sightings(ctx, &namespace, &name);
    let unchanged = ctx.memories.with(key, |state| {
        state.checked.clone().filter(|c| {
            c.generation == memory.metadata.generation
                && c.stands(&sightings)
                && c.sizing == sizing
                && c.cache_capacity_bytes == valid.cache_capacity_bytes
        })
    });
    if let Some(checked) = unchanged {
        return Ok(Applied {
            tokens: checked.tokens,
            statefulset: StatefulSet {
                status: checked.statefulset_status,
                ..StatefulSet::default()
            },
            written: Vec::new(),
        });
    }
    let tokens = tokens(ctx, &namespace, &name).await?;
    let inputs = Inputs::new(memory, valid, &ctx.settings.default_image, &tokens)
        .sized(sizing.replicas, sizing.replicated);
    let (statefulset, writes) = children(ctx, &namespace, &children::build_all(&inputs)?).await?;
    // What this check wrote it vouches for at the versions the writes got: the watch events
    // of its own writes then wake a reconcile that finds nothing to check again.
    let checked = left_by_check(&sightings, &writes).map(|children| Checked {
        generation: memory.metadata.generation,
        children,
        sizing,
        cache_capacity_bytes: valid.cache_capacity_bytes,
        tokens: tokens.clone(),
        statefulset_status: statefulset.status.clone(),
    });
    ctx.memories.with(key, |state| state.checked = checked);
    let written = writes
        .iter()
        .filter_map(|(kind, write)| write.is_some().then_some(*kind))
        .collect();
    Ok(Applied {
        tokens,
        statefulset,
        written,
    })
}

/// Applies the CronJob (last: it cleans nodes that must exist, on the planned schedule)
/// when the cached one differs — unless the same CronJob is wanted and its cache shows it as
/// the last check left it (matching, or written by that check).
///
/// # Errors
/// The API server refused or failed.
pub async fn cronjob(
    ctx: &Context,
    key: &Key,
    memory: &PhoenixMemory,
    applied: &mut Applied,
    cronjob: &CronJob,
) -> Result<(), Error> {
    let namespace = memory.namespace().ok_or(Error::NoNamespace)?;
    let sighting = ctx
        .caches
        .sighting::<CronJob>(&namespace, &cronjob.name_any());
    let wanted = blake3::hash(&serde_json::to_vec(cronjob).map_err(kube::Error::SerdeError)?);
    let stands = ctx.memories.with(key, |state| {
        state
            .cronjob
            .as_ref()
            .is_some_and(|c| c.wanted == wanted && c.child.stands(&sighting))
    });
    if stands {
        return Ok(());
    }
    let write = write_of(apply_one(ctx, &namespace, cronjob).await?);
    if write.is_some() {
        applied.written.push("CronJob");
    }
    let checked = CheckedChild::left(&sighting, write.as_ref().map(Option::as_ref))
        .map(|child| CronJobChecked { child, wanted });
    ctx.memories.with(key, |state| state.cronjob = checked);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subsets_ignore_extra_live_fields_but_not_changed_ones() {
        let desired = json!({"spec": {"replicas": 3, "ports": [{"port": 80}]}, "gone": null});
        assert!(is_subset(
            &desired,
            &json!({"spec": {"replicas": 3, "ports": [{"port": 80, "protocol": "TCP"}], "extra": 1}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 2, "ports": [{"port": 80}]}})
        ));
        assert!(!is_subset(
            &desired,
            &json!({"spec": {"replicas": 3, "ports": []}})
        ));
        assert!(!is_subset(&desired, &json!({})));
    }

    #[test]
    fn tokens_are_256_random_bits() {
        let (a, b) = (new_token().expect("token"), new_token().expect("token"));
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn quantities_the_server_rewrote_still_match() {
        let desired = json!({"resources": {"requests": {"cpu": "0.5", "memory": "1024Mi"}}});
        let stored = json!({"resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}});
        assert!(is_subset(&desired, &stored));
        let changed = json!({"resources": {"requests": {"cpu": "600m", "memory": "1Gi"}}});
        assert!(!is_subset(&desired, &changed));
        // Outside requests and limits strings compare as text.
        assert!(!is_subset(
            &json!({"label": "0.5"}),
            &json!({"label": "500m"})
        ));
    }
}
