//! Events on a PhoenixMemory (`events.k8s.io/v1`).
//!
//! Not kube's `Recorder`: it folds every Event with the same reason into one series and
//! keeps the first note, so a second `PlanChanged` ("900 s → 1 d") would show the first
//! one's text. Here an Event repeats (series count) only when reason *and* note repeat; a
//! new note is a new Event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;

use crate::crd::PhoenixMemory;

/// How long a repeated Event is folded into the previous one.
const SERIES_WINDOW: Duration = Duration::from_secs(600);

/// Normal or Warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Something expected happened.
    Normal,
    /// Something a person may need to look at.
    Warning,
}

/// The last Event of each memory and reason within the series window.
#[derive(Debug, Default)]
struct Recent {
    by_key: HashMap<String, Last>,
    /// When entries older than the window were last dropped (at most every tenth of the
    /// window: dropping on every publish made a thousand new memories cost a million steps).
    pruned_at: Option<Instant>,
}

#[derive(Debug)]
struct Last {
    note: String,
    name: String,
    count: i32,
    at: Instant,
}

/// Publishes Events as `reportingController` (and `reportingInstance`). Clones share the
/// memory of the last Events.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    controller: String,
    instance: String,
    last: Arc<Mutex<Recent>>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("controller", &self.controller)
            .field("instance", &self.instance)
            .finish_non_exhaustive()
    }
}

/// The longest note the API server accepts (bytes; `events.k8s.io/v1` refuses longer).
pub const MAX_NOTE_BYTES: usize = 1024;

/// `note` cut to [`MAX_NOTE_BYTES`] at a character boundary, saying how much was cut, so a
/// long note (a stale-node list of a large memory) is shortened, never refused and lost.
pub fn fit_note(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    let total = note.chars().count();
    // Room for the suffix; the count has at most 10 digits.
    let budget = MAX_NOTE_BYTES - " … (+0000000000 more characters)".len();
    let mut end = budget;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    let kept = note[..end].chars().count();
    format!("{} … (+{} more characters)", &note[..end], total - kept)
}

impl Publisher {
    /// A publisher for `controller`, this replica being `instance`.
    pub fn new(client: Client, controller: &str, instance: Option<String>) -> Publisher {
        Publisher {
            client,
            controller: controller.into(),
            instance: instance.unwrap_or_else(|| controller.into()),
            last: Arc::default(),
        }
    }

    /// Publishes one Event on `memory`; failures are logged (an Event is never worth a
    /// failed reconcile).
    pub async fn publish(&self, memory: &PhoenixMemory, kind: Kind, reason: &str, note: String) {
        if let Err(error) = self.try_publish(memory, kind, reason, fit_note(note)).await {
            tracing::warn!(%error, reason, "failed to publish an event");
        }
    }

    async fn try_publish(
        &self,
        memory: &PhoenixMemory,
        kind: Kind,
        reason: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let namespace = memory.namespace().unwrap_or_else(|| "default".into());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let key = format!(
            "{}/{}",
            memory
                .metadata
                .uid
                .clone()
                .unwrap_or_else(|| memory.name_any()),
            reason
        );
        let now = Timestamp::now();
        let repeat = {
            let mut last = self
                .last
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last
                .pruned_at
                .is_none_or(|at| at.elapsed() >= SERIES_WINDOW / 10)
            {
                last.by_key.retain(|_, l| l.at.elapsed() < SERIES_WINDOW);
                last.pruned_at = Some(Instant::now());
            }
            last.by_key
                .get_mut(&key)
                .filter(|l| l.note == note && l.at.elapsed() < SERIES_WINDOW)
                .map(|l| {
                    l.count += 1;
                    l.at = Instant::now();
                    (l.name.clone(), l.count)
                })
        };
        if let Some((name, count)) = repeat {
            let series = EventSeries {
                count,
                last_observed_time: MicroTime(now),
            };
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "series": series })),
            )
            .await?;
            return Ok(());
        }
        let name = format!("{}.{:x}", memory.name_any(), now.as_nanosecond());
        let event = Event {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            action: Some("Reconcile".into()),
            reason: Some(reason.into()),
            note: Some(note.clone()),
            type_: Some(
                match kind {
                    Kind::Normal => "Normal",
                    Kind::Warning => "Warning",
                }
                .into(),
            ),
            event_time: Some(MicroTime(now)),
            regarding: Some(memory.object_ref(&())),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            ..Event::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_key
            .insert(
                key,
                Last {
                    note,
                    name,
                    count: 1,
                    at: Instant::now(),
                },
            );
        Ok(())
    }
}

#[cfg(test)]
mod note_tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_the_api_limit_and_say_so() {
        assert_eq!(fit_note("short".into()), "short");
        let stale: Vec<String> = (0..60)
            .map(|i| format!("big-memory-{i}: unreachable: connection refused"))
            .collect();
        let note = fit_note(format!("metrics stale: {}", stale.join("; ")));
        assert!(note.len() <= MAX_NOTE_BYTES, "{} bytes", note.len());
        assert!(note.contains("more characters)"), "{note}");
        // Multi-byte characters are never split.
        let wide = fit_note("→".repeat(2000));
        assert!(wide.len() <= MAX_NOTE_BYTES);
        assert!(wide.ends_with("more characters)"));
    }
}
