//! Which `gen-N` directory is live, decided so that start-up never deletes live data.
//!
//! A database lives in `DATA_DIR/gen-N`. `DATA_DIR/CURRENT` names the live generation and
//! each generation that holds a whole database carries a `COMPLETE` marker. The protocol:
//!
//! 1. A new directory: sled creates `gen-0`, then `gen-0/COMPLETE`, then `CURRENT` = 0.
//! 2. A rebuild copies the live `gen-N` into `gen-(N+1)` while writes are refused, flushes
//!    it, writes `gen-(N+1)/COMPLETE`, then switches `CURRENT` (write a temporary file,
//!    fsync, rename, fsync the directory) and only then deletes `gen-N`. If anything fails
//!    after the marker and before the switch, the copy is removed before writes resume
//!    (and if even that fails, the store refuses writes: see `Store::rebuild`).
//!
//! So a complete generation newer than the one `CURRENT` names holds everything the older
//! one ever acknowledged: it is a finished rebuild whose switch was interrupted (or a
//! `CURRENT` edited by hand), and the store rolls forward to it. At open:
//!
//! | `CURRENT` | outcome |
//! |---|---|
//! | missing, no generation | a new store (`gen-0`) |
//! | missing, generations | the newest complete generation, `CURRENT` rewritten; none complete → error |
//! | empty, garbage, negative | error, nothing touched |
//! | names a missing generation | error, nothing touched |
//! | names an incomplete generation | error, nothing touched |
//! | names N, a newer complete M exists | roll forward to M |
//! | names the newest complete N | N |
//!
//! Only then is anything deleted, and only generations provably not live: those older than
//! the live one (the live one is complete and newer, so it holds all of their data) and
//! unfinished copies newer than it. A left-over `CURRENT.tmp` is ignored and replaced.
//!
//! Directories written before markers existed have none: the generation `CURRENT` names is
//! taken as complete when no other generation carries a marker (the older code switched
//! `CURRENT` only to flushed copies).

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Result, StoreError, io};

const CURRENT: &str = "CURRENT";
const CURRENT_TMP: &str = "CURRENT.tmp";
const COMPLETE: &str = "COMPLETE";

/// The directory of generation `generation`.
pub(super) fn dir_of(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("gen-{generation}"))
}

/// What `CURRENT` says.
#[derive(Debug, PartialEq)]
enum Current {
    Missing,
    Names(u64),
}

fn read_current(dir: &Path) -> Result<Current> {
    match std::fs::read_to_string(dir.join(CURRENT)) {
        Ok(text) => text.trim().parse().map(Current::Names).map_err(|_| {
            StoreError::Corrupt(format!(
                "{} holds {text:?}, not a generation number; refusing to start \
                 (nothing was changed: write the live generation's number into it)",
                dir.join(CURRENT).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Current::Missing),
        Err(source) => Err(StoreError::Io {
            action: "read CURRENT",
            source,
        }),
    }
}

/// One `gen-N` directory found at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Found {
    generation: u64,
    complete: bool,
}

fn scan(dir: &Path) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io("read the data directory"))? {
        let entry = entry.map_err(io("read the data directory"))?;
        let name = entry.file_name();
        let Some(generation) = name
            .to_str()
            .and_then(|n| n.strip_prefix("gen-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        if !entry.path().is_dir() {
            continue;
        }
        found.push(Found {
            generation,
            complete: entry.path().join(COMPLETE).exists(),
        });
    }
    found.sort();
    Ok(found)
}

/// What [`choose`] decided.
#[derive(Debug, PartialEq)]
pub(super) struct Opening {
    /// The live generation.
    pub(super) live: u64,
    /// No generation exists yet: create `live` (0) and mark it complete.
    pub(super) fresh: bool,
    /// `CURRENT` must be (re)written to name `live` once it is open.
    pub(super) rewrite_current: bool,
    /// `live` predates markers: mark it complete once it is open.
    pub(super) mark_complete: bool,
    /// Generations provably not live, to delete once `live` is open.
    pub(super) stale: Vec<u64>,
}

/// Decides the live generation of `dir` without changing anything.
///
/// # Errors
/// [`StoreError::Corrupt`] for a `CURRENT` that is not a number, names a generation that
/// does not exist or is unfinished, and for a directory with generations but neither a
/// `CURRENT` nor a complete generation. Each message says what was found.
pub(super) fn choose(dir: &Path) -> Result<Opening> {
    let current = read_current(dir)?;
    let found = scan(dir)?;
    let listing = || {
        if found.is_empty() {
            "none".to_string()
        } else {
            found
                .iter()
                .map(|f| {
                    format!(
                        "gen-{}{}",
                        f.generation,
                        if f.complete { "" } else { " (unfinished)" }
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let refuse = |why: String| {
        StoreError::Corrupt(format!(
            "{why} in {} (generations: {}); refusing to start, nothing was changed",
            dir.display(),
            listing()
        ))
    };
    let legacy = !found.iter().any(|f| f.complete);
    let newest_complete = found
        .iter()
        .rev()
        .find(|f| f.complete)
        .map(|f| f.generation);
    let (live, fresh, rewrite_current, mark_complete) = match current {
        Current::Missing if found.is_empty() => (0, true, true, true),
        Current::Missing => match newest_complete {
            Some(newest) => {
                tracing::warn!(
                    generation = newest,
                    "CURRENT is missing: the newest complete generation is live"
                );
                (newest, false, true, false)
            }
            None => {
                return Err(refuse(
                    "CURRENT is missing and no generation is marked complete".into(),
                ));
            }
        },
        Current::Names(named) => {
            let Some(entry) = found.iter().find(|f| f.generation == named) else {
                return Err(refuse(format!(
                    "CURRENT names gen-{named}, which does not exist"
                )));
            };
            if !entry.complete && !legacy {
                return Err(refuse(format!(
                    "CURRENT names gen-{named}, an unfinished rebuild copy"
                )));
            }
            match newest_complete.filter(|newest| *newest > named) {
                Some(newest) => {
                    tracing::warn!(
                        named,
                        generation = newest,
                        "CURRENT names an older generation than the newest complete one: \
                         rolling forward (an interrupted rebuild switch)"
                    );
                    (newest, false, true, false)
                }
                None => (named, false, false, !entry.complete),
            }
        }
    };
    let stale = found
        .iter()
        .filter(|f| f.generation < live || (f.generation > live && !f.complete))
        .map(|f| f.generation)
        .collect();
    Ok(Opening {
        live,
        fresh,
        rewrite_current,
        mark_complete,
        stale,
    })
}

/// Marks generation `generation` as holding a whole database (durably).
pub(super) fn mark_complete(dir: &Path, generation: u64) -> Result<()> {
    let gen_dir = dir_of(dir, generation);
    let mut file =
        std::fs::File::create(gen_dir.join(COMPLETE)).map_err(io("create a COMPLETE marker"))?;
    writeln!(file, "{generation}").map_err(io("write a COMPLETE marker"))?;
    file.sync_all().map_err(io("sync a COMPLETE marker"))?;
    sync_dir(&gen_dir)
}

/// Atomically points `CURRENT` at `generation`: temporary file, fsync, rename, fsync the
/// directory.
pub(super) fn write_current(dir: &Path, generation: u64) -> Result<()> {
    let tmp = dir.join(CURRENT_TMP);
    let mut file = std::fs::File::create(&tmp).map_err(io("create CURRENT.tmp"))?;
    writeln!(file, "{generation}").map_err(io("write CURRENT.tmp"))?;
    file.sync_all().map_err(io("sync CURRENT.tmp"))?;
    std::fs::rename(&tmp, dir.join(CURRENT)).map_err(io("replace CURRENT"))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the data directory"))
}

/// Deletes the generations [`choose`] found stale.
pub(super) fn remove(dir: &Path, stale: &[u64]) -> Result<()> {
    for generation in stale {
        tracing::info!(generation, "removing a generation that is not live");
        std::fs::remove_dir_all(dir_of(dir, *generation))
            .map_err(io("remove a stale generation"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generation(dir: &Path, n: u64, complete: bool) {
        std::fs::create_dir_all(dir_of(dir, n)).expect("mkdir");
        std::fs::write(dir_of(dir, n).join("db"), b"data").expect("write");
        if complete {
            mark_complete(dir, n).expect("mark");
        }
    }

    fn current(dir: &Path, text: &str) {
        std::fs::write(dir.join(CURRENT), text).expect("write CURRENT");
    }

    #[test]
    fn a_new_directory_starts_at_generation_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opening = choose(dir.path()).expect("choose");
        assert_eq!(opening.live, 0);
        assert!(opening.fresh && opening.rewrite_current && opening.mark_complete);
    }

    #[test]
    fn missing_current_picks_the_newest_complete_generation_and_deletes_nothing_newer() {
        let dir = tempfile::tempdir().expect("tempdir");
        generation(dir.path(), 2, true);
        generation(dir.path(), 3, false);
        let opening = choose(dir.path()).expect("choose");
        assert_eq!(opening.live, 2);
        assert!(opening.rewrite_current && !opening.fresh);
        assert_eq!(opening.stale, vec![3]);
    }

    #[test]
    fn missing_current_without_a_complete_generation_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        generation(dir.path(), 1, false);
        let error = choose(dir.path()).expect_err("refused").to_string();
        assert!(
            error.contains("no generation is marked complete"),
            "{error}"
        );
    }

    #[test]
    fn unreadable_current_is_refused() {
        for text in ["", "\n", "garbage", "-1", "1.5", "99999999999999999999999"] {
            let dir = tempfile::tempdir().expect("tempdir");
            generation(dir.path(), 1, true);
            current(dir.path(), text);
            let error = choose(dir.path()).expect_err(text).to_string();
            assert!(
                error.contains("not a generation number"),
                "{text:?}: {error}"
            );
        }
    }

    #[test]
    fn current_naming_a_missing_or_unfinished_generation_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        generation(dir.path(), 1, true);
        generation(dir.path(), 2, false);
        current(dir.path(), "7\n");
        let error = choose(dir.path()).expect_err("missing").to_string();
        assert!(error.contains("gen-7, which does not exist"), "{error}");
        assert!(error.contains("gen-1, gen-2 (unfinished)"), "{error}");
        current(dir.path(), "2\n");
        let error = choose(dir.path()).expect_err("unfinished").to_string();
        assert!(error.contains("unfinished rebuild copy"), "{error}");
    }

    #[test]
    fn an_older_current_rolls_forward_to_the_newest_complete_generation() {
        let dir = tempfile::tempdir().expect("tempdir");
        generation(dir.path(), 1, true);
        generation(dir.path(), 2, true);
        generation(dir.path(), 3, false);
        current(dir.path(), "1\n");
        let opening = choose(dir.path()).expect("choose");
        assert_eq!(opening.live, 2);
        assert!(opening.rewrite_current);
        assert_eq!(opening.stale, vec![1, 3]);
    }

    #[test]
    fn legacy_directories_without_markers_keep_their_current() {
        let dir = tempfile::tempdir().expect("tempdir");
        generation(dir.path(), 4, false);
        generation(dir.path(), 5, false);
        current(dir.path(), "4\n");
        let opening = choose(dir.path()).expect("choose");
        assert_eq!(opening.live, 4);
        assert!(opening.mark_complete && !opening.rewrite_current);
        assert_eq!(opening.stale, vec![5]);
    }

    #[test]
    fn a_torn_temporary_current_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        generation(dir.path(), 1, true);
        current(dir.path(), "1\n");
        std::fs::write(dir.path().join(CURRENT_TMP), "2").expect("tmp");
        let opening = choose(dir.path()).expect("choose");
        assert_eq!(opening.live, 1);
        assert!(opening.stale.is_empty());
        write_current(dir.path(), 1).expect("rewrite");
        assert!(!dir.path().join(CURRENT_TMP).exists());
    }
}
