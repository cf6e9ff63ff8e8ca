//! Store tests against sled in a temporary directory.

use super::*;
use crate::merkle::{EMPTY_ROOT, verify_proof};
use std::collections::BTreeMap;

fn open_in(dir: &Path) -> Store {
    Store::open(StoreConfig::new(dir)).expect("open store")
}

fn with_clock(dir: &Path, clock: Arc<ManualClock>) -> Store {
    let mut config = StoreConfig::new(dir);
    config.clock = clock;
    Store::open(config).expect("open store")
}

fn contents(store: &Store) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.list(b"", after.as_deref(), 7).expect("list");
        for item in &page.items {
            let value = store
                .retrieve(&item.key)
                .expect("retrieve")
                .expect("listed key present");
            out.insert(item.key.clone(), value.as_bytes().to_vec());
        }
        match page.next_after {
            Some(next) => after = Some(next),
            None => return out,
        }
    }
}

#[test]
fn store_retrieve_overwrite_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    assert_eq!(store.root(), EMPTY_ROOT);
    assert!(store.store(b"a", b"one", None).expect("store").created);
    assert_eq!(
        store
            .retrieve(b"a")
            .expect("get")
            .expect("present")
            .as_bytes(),
        b"one"
    );
    assert!(!store.store(b"a", b"two", None).expect("overwrite").created);
    assert_eq!(
        store
            .retrieve(b"a")
            .expect("get")
            .expect("present")
            .as_bytes(),
        b"two"
    );
    let stats = store.stats().expect("stats");
    assert_eq!((stats.keys, stats.logical_bytes), (1, 4));
    assert!(store.delete(b"a").expect("delete"));
    assert!(!store.delete(b"a").expect("second delete"));
    assert!(store.retrieve(b"a").expect("get").is_none());
    assert_eq!(store.root(), EMPTY_ROOT);
    let stats = store.stats().expect("stats");
    assert_eq!((stats.keys, stats.logical_bytes), (0, 0));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.limits = Limits {
        max_key_bytes: 8,
        max_value_bytes: 16,
    };
    let store = Store::open(config).expect("open");
    store.store(b"keep", b"value", None).expect("store");
    let root = store.root();
    let cases: Vec<(&[u8], &[u8], Option<Duration>)> = vec![
        (b"", b"v", None),
        (b"123456789", b"v", None),
        (b"k", b"", None),
        (b"k", &[0u8; 17], None),
        (b"k", b"v", Some(Duration::ZERO)),
        (b"k", b"v", Some(Duration::from_secs(200 * 365 * 24 * 3600))),
    ];
    for (key, value, ttl) in cases {
        let error = store.store(key, value, ttl).expect_err("refused");
        assert!(
            matches!(
                error,
                StoreError::EmptyKey
                    | StoreError::KeyTooLong { .. }
                    | StoreError::EmptyValue
                    | StoreError::ValueTooLarge { .. }
                    | StoreError::InvalidTtl { .. }
            ),
            "unexpected {error:?}"
        );
    }
    assert!(matches!(store.delete(b""), Err(StoreError::EmptyKey)));
    assert_eq!(store.root(), root);
    assert_eq!(store.stats().expect("stats").keys, 1);
    assert!(store.verify().expect("verify").ok());
}

#[test]
fn ttl_expires_and_prune_removes_from_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = with_clock(dir.path(), Arc::clone(&clock));
    store.store(b"forever", b"x", None).expect("store");
    let root_without_ttl_keys = store.root();
    let stored = store
        .store(b"short", b"y", Some(Duration::from_secs(10)))
        .expect("store");
    assert_eq!(stored.expires_at_ms, Some(1_010_000));
    store
        .store(b"long", b"z", Some(Duration::from_secs(100)))
        .expect("store");
    // Overwriting with a new TTL moves its expiry index entry.
    store
        .store(b"long", b"z", Some(Duration::from_secs(1000)))
        .expect("store");
    assert!(store.retrieve(b"short").expect("get").is_some());
    clock.advance(Duration::from_secs(11));
    assert!(
        store.retrieve(b"short").expect("get").is_none(),
        "expired memory is not served"
    );
    assert_eq!(store.list(b"", None, 10).expect("list").items.len(), 2);
    assert_eq!(store.prune_expired().expect("prune"), 1);
    clock.advance(Duration::from_secs(200));
    assert_eq!(
        store.prune_expired().expect("prune"),
        0,
        "long was re-stored with a longer TTL"
    );
    clock.advance(Duration::from_secs(1000));
    assert_eq!(store.prune_expired().expect("prune"), 1);
    assert_eq!(store.root(), root_without_ttl_keys);
    assert!(store.verify().expect("verify").ok());
}

#[test]
fn default_ttl_applies_when_none_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(5_000));
    let mut config = StoreConfig::new(dir.path());
    config.clock = clock.clone();
    config.default_ttl = Some(Duration::from_secs(1));
    let store = Store::open(config).expect("open");
    let stored = store.store(b"k", b"v", None).expect("store");
    assert_eq!(stored.expires_at_ms, Some(6_000));
    clock.advance(Duration::from_secs(2));
    assert!(store.retrieve(b"k").expect("get").is_none());
}

#[test]
fn list_paginates_by_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    for i in 0..25 {
        store
            .store(format!("user/{i:02}").as_bytes(), b"v", None)
            .expect("store");
        store
            .store(format!("zz/{i:02}").as_bytes(), b"v", None)
            .expect("store");
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list(b"user/", after.as_deref(), 10).expect("list");
        assert!(page.items.len() <= 10);
        seen.extend(page.items.iter().map(|i| i.key.clone()));
        match page.next_after {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    let expected: Vec<Vec<u8>> = (0..25)
        .map(|i| format!("user/{i:02}").into_bytes())
        .collect();
    assert_eq!(seen, expected);
    assert!(
        store
            .list(b"nothing", None, 10)
            .expect("list")
            .items
            .is_empty()
    );
}

#[test]
fn proofs_from_the_store_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    for i in 0..300u32 {
        store
            .store(&i.to_be_bytes(), format!("value {i}").as_bytes(), None)
            .expect("store");
    }
    for i in (0..300u32).step_by(17) {
        let (value, proof, root) = store
            .prove(&i.to_be_bytes())
            .expect("prove")
            .expect("present");
        assert_eq!(root, store.root());
        assert!(verify_proof(
            &root,
            &i.to_be_bytes(),
            value.as_bytes(),
            &proof
        ));
        assert!(!verify_proof(&root, &i.to_be_bytes(), b"forged", &proof));
    }
    assert!(store.prove(b"absent").expect("prove").is_none());
}

#[test]
fn root_matches_a_recomputation_and_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root;
    {
        let store = open_in(dir.path());
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2000 {
            let key = rng.u32(0..500).to_be_bytes();
            if rng.u8(0..4) == 0 {
                store.delete(&key).expect("delete");
            } else {
                store
                    .store(&key, &rng.u64(..).to_le_bytes(), None)
                    .expect("store");
            }
        }
        let report = store.verify().expect("verify");
        assert!(report.ok(), "{report:?}");
        root = store.root();
        store.flush().expect("flush");
    }
    let store = open_in(dir.path());
    assert_eq!(store.root(), root);
    assert!(store.verify().expect("verify").ok());
}

#[test]
fn same_contents_in_two_orders_give_the_same_root() {
    let a_dir = tempfile::tempdir().expect("tempdir");
    let b_dir = tempfile::tempdir().expect("tempdir");
    let a = open_in(a_dir.path());
    let b = open_in(b_dir.path());
    for i in 0..200u32 {
        a.store(&i.to_be_bytes(), b"v", None).expect("store");
    }
    for i in (0..300u32).rev() {
        b.store(&i.to_be_bytes(), b"old", None).expect("store");
    }
    for i in 0..300u32 {
        if i < 200 {
            b.store(&i.to_be_bytes(), b"v", None).expect("store");
        } else {
            b.delete(&i.to_be_bytes()).expect("delete");
        }
    }
    assert_eq!(a.root(), b.root());
}

#[test]
fn rebuild_keeps_every_key_and_the_root_and_shrinks_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.rebuild.min_disk_bytes = 0;
    config.rebuild.free_space_margin_bytes = 0;
    let store = Store::open(config).expect("open");
    let value = vec![7u8; 512];
    for round in 0..6u8 {
        for i in 0..3000u32 {
            let mut v = value.clone();
            v[0] = round;
            store.store(&i.to_be_bytes(), &v, None).expect("store");
        }
    }
    for i in 1000..3000u32 {
        store.delete(&i.to_be_bytes()).expect("delete");
    }
    store.flush().expect("flush");
    let before = contents(&store);
    let root = store.root();
    let generation = store.generation();
    let report = store.rebuild().expect("rebuild");
    assert_eq!(store.generation(), generation + 1);
    assert_eq!(store.root(), root);
    assert_eq!(contents(&store), before);
    assert!(store.verify().expect("verify").ok());
    assert!(
        report.disk_bytes_after < report.disk_bytes_before,
        "rebuild did not shrink: {report:?}"
    );
    // Only the live generation is left, and writes work on it.
    let generations: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("gen-"))
        .collect();
    assert_eq!(generations.len(), 1);
    store
        .store(b"after", b"rebuild", None)
        .expect("store after rebuild");
    drop(store);
    let reopened = open_in(dir.path());
    assert_eq!(reopened.generation(), generation + 1);
    assert_eq!(
        reopened
            .retrieve(b"after")
            .expect("get")
            .expect("present")
            .as_bytes(),
        b"rebuild"
    );
    assert!(reopened.verify().expect("verify").ok());
}

#[test]
fn rebuild_refuses_without_free_space_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.rebuild.free_space_margin_bytes = u64::MAX / 2;
    let store = Store::open(config).expect("open");
    store.store(b"k", b"v", None).expect("store");
    let root = store.root();
    assert!(matches!(
        store.rebuild(),
        Err(StoreError::InsufficientSpace { .. })
    ));
    assert_eq!(store.generation(), 0);
    assert_eq!(store.root(), root);
    store.store(b"k2", b"v", None).expect("writes still work");
}

#[test]
fn reads_continue_and_writes_are_applied_or_refused_during_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.rebuild.free_space_margin_bytes = 0;
    let store = Arc::new(Store::open(config).expect("open"));
    for i in 0..20_000u32 {
        store
            .store(&i.to_be_bytes(), &[1u8; 200], None)
            .expect("preload");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            let mut i = 0u32;
            while !stop.load(Ordering::SeqCst) {
                let value = store.retrieve(&(i % 20_000).to_be_bytes()).expect("read");
                assert!(value.is_some(), "a preloaded key vanished during rebuild");
                reads += 1;
                i += 1;
            }
            reads
        })
    };
    let writer = {
        let (store, stop) = (Arc::clone(&store), Arc::clone(&stop));
        std::thread::spawn(move || {
            let (mut acknowledged, mut refused) = (Vec::new(), 0u64);
            let mut i = 100_000u32;
            while !stop.load(Ordering::SeqCst) {
                match store.store(&i.to_be_bytes(), b"during", None) {
                    Ok(_) => acknowledged.push(i),
                    Err(StoreError::Busy { .. }) => refused += 1,
                    Err(other) => panic!("unexpected write error {other:?}"),
                }
                i += 1;
            }
            (acknowledged, refused)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    store.rebuild().expect("rebuild");
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::SeqCst);
    let reads = reader.join().expect("reader");
    let (acknowledged, _refused) = writer.join().expect("writer");
    assert!(reads > 0);
    for i in &acknowledged {
        assert!(
            store.retrieve(&i.to_be_bytes()).expect("get").is_some(),
            "acknowledged write {i} lost by the rebuild"
        );
    }
    assert!(store.verify().expect("verify").ok());
}

#[test]
fn a_crash_during_rebuild_leaves_the_old_generation_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_in(dir.path());
        store.store(b"k", b"v", None).expect("store");
        store.flush().expect("flush");
    }
    // What an interrupted rebuild leaves: a half-written next generation, CURRENT unchanged.
    std::fs::create_dir_all(dir.path().join("gen-1")).expect("mkdir");
    std::fs::write(dir.path().join("gen-1").join("garbage"), b"partial").expect("write");
    let store = open_in(dir.path());
    assert_eq!(store.generation(), 0);
    assert!(!dir.path().join("gen-1").exists());
    assert_eq!(
        store
            .retrieve(b"k")
            .expect("get")
            .expect("present")
            .as_bytes(),
        b"v"
    );
}

#[test]
fn sync_durability_groups_concurrent_writers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.durability = Durability::Sync;
    let store = Arc::new(Store::open(config).expect("open"));
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 0..100u32 {
                    store
                        .store(&(t * 1000 + i).to_be_bytes(), b"durable", None)
                        .expect("store");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("writer");
    }
    let flushes = store.durable_flushes();
    assert!(
        flushes > 0 && flushes <= 400,
        "{flushes} flushes for 400 writes"
    );
    assert_eq!(store.stats().expect("stats").keys, 400);
}

#[test]
fn sample_follows_inserts_and_refills_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_in(dir.path());
        for i in 0..10_000u32 {
            store.store(&i.to_be_bytes(), b"v", None).expect("store");
        }
        assert_eq!(store.sample_len(), SAMPLE_CAPACITY);
        let mut rng = fastrand::Rng::with_seed(1);
        let keys = store.sample_keys(32, &mut rng);
        assert_eq!(keys.len(), 32);
        for key in &keys {
            assert!(store.retrieve(key).expect("get").is_some());
        }
        store.forget_sample(&keys[0]);
        assert_eq!(store.sample_len(), SAMPLE_CAPACITY - 1);
    }
    let store = open_in(dir.path());
    assert_eq!(store.sample_len(), 0, "the sample is not rebuilt at open");
    assert_eq!(store.refill_sample().expect("refill"), SAMPLE_CAPACITY);
}

#[test]
fn meta_records_survive_reopen_and_rebuild() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.rebuild.free_space_margin_bytes = 0;
    {
        let store = Store::open(config.clone()).expect("open");
        store
            .set_meta("probe.baseline", b"{\"ns\":1200}")
            .expect("meta");
        store.store(b"k", b"v", None).expect("store");
        store.rebuild().expect("rebuild");
    }
    let store = Store::open(config).expect("reopen");
    assert_eq!(
        store.meta("probe.baseline").expect("meta").as_deref(),
        Some(&b"{\"ns\":1200}"[..])
    );
    assert_eq!(store.meta("absent").expect("meta"), None);
}

#[test]
fn a_foreign_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_in(dir.path());
        let engine = store.engine.load();
        engine
            .db
            .insert(META_FORMAT, &b"something-else"[..])
            .expect("insert");
        engine.db.flush().expect("flush");
    }
    assert!(matches!(
        Store::open(StoreConfig::new(dir.path())),
        Err(StoreError::Corrupt(_))
    ));
}

#[test]
fn a_clean_close_reopens_from_the_checkpoint_and_a_later_write_invalidates_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root;
    {
        let store = open_in(dir.path());
        for i in 0..1000u32 {
            store.store(&i.to_be_bytes(), b"v", None).expect("store");
        }
        store.checkpoint().expect("checkpoint");
        root = store.root();
    }
    {
        let store = open_in(dir.path());
        assert!(
            store.write.lock().expect("lock").checkpointed,
            "opened from the checkpoint"
        );
        assert_eq!(store.root(), root);
        assert_eq!(store.stats().expect("stats").keys, 1000);
        // A write after the checkpoint, and no new checkpoint: a crash looks like this.
        store.delete(&5u32.to_be_bytes()).expect("delete");
        store.flush().expect("flush");
    }
    let store = open_in(dir.path());
    assert_ne!(store.root(), root, "the stale checkpoint was not used");
    assert_eq!(store.stats().expect("stats").keys, 999);
    assert!(store.verify().expect("verify").ok());
}

#[test]
fn a_missing_checkpoint_file_falls_back_to_a_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root;
    {
        let store = open_in(dir.path());
        for i in 0..100u32 {
            store.store(&i.to_be_bytes(), b"v", None).expect("store");
        }
        store.checkpoint().expect("checkpoint");
        root = store.root();
    }
    std::fs::remove_file(dir.path().join("tree.checkpoint")).expect("remove");
    let store = open_in(dir.path());
    assert_eq!(store.root(), root);
    assert!(store.verify().expect("verify").ok());
}

#[test]
fn a_restart_after_a_rebuild_agrees_with_the_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.rebuild.free_space_margin_bytes = 0;
    {
        let store = Store::open(config.clone()).expect("open");
        for i in 0..100u32 {
            store.store(&i.to_be_bytes(), b"v", None).expect("store");
        }
        for i in 0..30u32 {
            store.delete(&i.to_be_bytes()).expect("delete");
        }
        store.checkpoint().expect("checkpoint before the rebuild");
        store.rebuild().expect("rebuild");
        assert!(store.verify().expect("verify").ok());
    }
    let store = Store::open(config).expect("reopen");
    assert!(
        store.write.lock().expect("lock").checkpointed,
        "the rebuild re-took the checkpoint"
    );
    let stats = store.stats().expect("stats");
    assert_eq!(stats.keys, 70);
    assert!(store.verify().expect("verify").ok());
}

/// A store rebuilt twice (live generation 2) holding `k0..k49`, closed.
fn rebuilt_twice(dir: &Path) -> Hash {
    let store = open_in(dir);
    for i in 0..50 {
        store
            .store(format!("k{i}").as_bytes(), b"value", None)
            .expect("store");
    }
    store.rebuild().expect("rebuild 1");
    store.rebuild().expect("rebuild 2");
    assert_eq!(store.generation(), 2);
    let root = store.root();
    store.close().expect("close");
    root
}

/// Every file under `dir` with its contents, to show that a refused open touched nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

#[test]
fn a_missing_current_after_a_rebuild_opens_the_live_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = rebuilt_twice(dir.path());
    std::fs::remove_file(dir.path().join("CURRENT")).expect("rm CURRENT");
    let store = open_in(dir.path());
    assert_eq!(store.generation(), 2);
    assert_eq!(store.key_count(), 50);
    assert_eq!(store.root(), root);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("CURRENT")).expect("CURRENT rewritten"),
        "2\n"
    );
}

#[test]
fn a_current_that_cannot_be_trusted_is_refused_and_touches_nothing() {
    for text in ["7\n", "", "garbage", "-1", "1\n"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = rebuilt_twice(dir.path());
        std::fs::write(dir.path().join("CURRENT"), text).expect("write CURRENT");
        let before = snapshot(dir.path());
        let error = Store::open(StoreConfig::new(dir.path()))
            .expect_err(&format!("CURRENT {text:?} refused"))
            .to_string();
        assert!(error.contains("refusing to start"), "{text:?}: {error}");
        assert_eq!(
            snapshot(dir.path()),
            before,
            "{text:?}: the directory changed"
        );
        // Put the right generation back: everything is there.
        std::fs::write(dir.path().join("CURRENT"), "2\n").expect("repair");
        let store = open_in(dir.path());
        assert_eq!(store.root(), root, "{text:?}");
        assert_eq!(store.key_count(), 50);
    }
}

#[test]
fn an_older_current_next_to_a_newer_complete_generation_rolls_forward() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = rebuilt_twice(dir.path());
    // What an interrupted switch (or a hand edit) leaves: the old generation still there
    // and CURRENT naming it.
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read") {
            let entry = entry.expect("entry");
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
            }
        }
    };
    let store = open_in(dir.path());
    store.store(b"newest", b"write", None).expect("store");
    store.close().expect("close");
    copy(&dir.path().join("gen-2"), &dir.path().join("gen-1"));
    std::fs::remove_file(dir.path().join("gen-2").join("COMPLETE")).expect("unmark");
    std::fs::write(dir.path().join("gen-2").join("COMPLETE"), "2\n").expect("mark");
    std::fs::write(dir.path().join("CURRENT"), "1\n").expect("older CURRENT");
    let store = open_in(dir.path());
    assert_eq!(store.generation(), 2);
    assert!(store.retrieve(b"newest").expect("get").is_some());
    assert_ne!(store.root(), root);
    assert!(!dir.path().join("gen-1").exists());
}

#[test]
fn a_failed_flush_refuses_writes_and_keeps_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(dir.path());
    config.durability = Durability::Sync;
    let store = Store::open(config).expect("open");
    store.store(b"kept", b"v", None).expect("store");
    store.flusher.fail(FlushError::Failed {
        message: "No space left on device (os error 28)".into(),
        no_space: true,
    });
    let error = store.store(b"lost", b"v", None).expect_err("refused");
    assert!(matches!(error, StoreError::NotDurable(_)), "{error}");
    assert!(store.delete(b"kept").is_err());
    assert!(store.rebuild().is_err());
    assert!(store.retrieve(b"lost").expect("read").is_none());
    assert!(store.retrieve(b"kept").expect("read").is_some());
    assert!(!store.flush_health().ok());
}

#[derive(Debug)]
struct FixedSpace(AtomicU64);

impl FreeSpace for FixedSpace {
    fn available(&self, _: &Path) -> std::io::Result<u64> {
        Ok(self.0.load(Ordering::SeqCst))
    }
}

#[test]
fn a_volume_below_the_reserve_refuses_stores_but_not_reads_or_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let space = Arc::new(FixedSpace(AtomicU64::new(1 << 30)));
    let mut config = StoreConfig::new(dir.path());
    config.min_free_bytes = 64 << 20;
    config.free_space = space.clone();
    let store = Store::open(config).expect("open");
    store.store(b"a", b"1", None).expect("store");
    store.store(b"b", b"2", None).expect("store");
    space.0.store(10 << 20, Ordering::SeqCst);
    // The budget granted at 1 GiB free may still cover a write or two: spend it.
    let mut refused = None;
    for i in 0..100_000 {
        if let Err(error) = store.store(format!("x{i}").as_bytes(), &[7u8; 4096], None) {
            refused = Some(error);
            break;
        }
    }
    let refused = refused.expect("a write is refused below the reserve");
    assert!(matches!(refused, StoreError::NoSpace(_)), "{refused}");
    assert!(store.retrieve(b"a").expect("read").is_some());
    assert!(store.delete(b"b").expect("delete frees space"));
    space.0.store(1 << 30, Ordering::SeqCst);
    store.store(b"c", b"3", None).expect("writes resume");
}

#[test]
fn the_scrub_finds_a_record_that_does_not_match_its_leaf_and_reads_record_bad_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    for i in 0..300 {
        store
            .store(format!("k{i:03}").as_bytes(), b"value", None)
            .expect("store");
    }
    let mut cursor = ScrubCursor::default();
    while store.scrub_step(&mut cursor, 64).expect("scrub") == ScrubStep::More {}
    assert!(!store.is_corrupted(), "a clean store scrubs clean");
    // Bytes changed under the store (what bit rot or a bad disk does).
    let engine = store.engine.load();
    engine
        .db
        .insert(
            prefixed(DATA, b"k123"),
            chunks::encode(0, chunks::Body::Inline(b"VALUE")),
        )
        .expect("tamper");
    engine
        .db
        .insert(prefixed(DATA, b"k200"), &[9u8, 9, 9][..])
        .expect("tamper");
    drop(engine);
    let mut steps = 0;
    while store.scrub_step(&mut cursor, 64).expect("scrub") == ScrubStep::More {
        steps += 1;
    }
    assert_eq!(steps, 4, "300 records in batches of 64");
    let corruption = store.corruption();
    assert_eq!(corruption.detected, 2);
    assert!(corruption.keys.contains("k123") && corruption.keys.contains("k200"));
    // Reads of what is intact keep working; the undecodable record is an error.
    assert!(store.retrieve(b"k001").expect("read").is_some());
    assert!(store.retrieve(b"k200").is_err());
    assert_eq!(store.corruption().detected, 3);
}

#[test]
fn the_scrub_finds_records_missing_from_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    for i in 0..100 {
        store
            .store(format!("k{i:03}").as_bytes(), b"value", None)
            .expect("store");
    }
    // A record lost under the store (a truncated log, a bad sector).
    store
        .engine
        .load()
        .db
        .remove(prefixed(DATA, b"k042"))
        .expect("lose a record");
    let mut cursor = ScrubCursor::default();
    while store.scrub_step(&mut cursor, 30).expect("scrub") == ScrubStep::More {}
    let corruption = store.corruption();
    assert_eq!(corruption.detected, 1, "{corruption:?}");
    assert!(
        corruption
            .last_message
            .as_deref()
            .is_some_and(|m| m.contains("99 records but the Merkle tree 100")),
        "{corruption:?}"
    );
}

#[test]
fn large_values_are_chunked_round_trip_and_leave_no_chunks_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(1_000_000));
    let store = with_clock(dir.path(), clock.clone());
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let chunk_records =
        |store: &Store| store.engine.load().db.scan_prefix([chunks::CHUNKS]).count();
    store.store(b"big", &big, None).expect("store big");
    assert_eq!(
        store
            .retrieve(b"big")
            .expect("get")
            .expect("present")
            .as_bytes(),
        &big[..]
    );
    assert_eq!(chunk_records(&store), 300_000usize.div_ceil(chunks::CHUNK));
    let page = store.list(b"", None, 10).expect("list");
    assert_eq!(page.items[0].value_bytes, 300_000);
    // Large → small → large again: the old chunks go each time.
    store.store(b"big", b"small", None).expect("small");
    assert_eq!(chunk_records(&store), 0);
    let bigger: Vec<u8> = big
        .iter()
        .rev()
        .copied()
        .chain(big.iter().copied())
        .collect();
    store.store(b"big", &bigger, None).expect("bigger");
    assert_eq!(
        store
            .retrieve(b"big")
            .expect("get")
            .expect("present")
            .as_bytes(),
        &bigger[..]
    );
    // A large value that expires, pruned with its chunks.
    store
        .store(b"brief", &big, Some(Duration::from_secs(1)))
        .expect("brief");
    let root = store.root();
    assert!(store.verify().expect("verify").ok());
    store.close().expect("close");
    let store = with_clock(dir.path(), clock.clone());
    assert_eq!(store.root(), root, "the root survives a reopen");
    // Without the checkpoint the tree is rebuilt by reading the chunks.
    std::fs::remove_file(dir.path().join("tree.checkpoint")).expect("rm checkpoint");
    drop(store);
    let store = with_clock(dir.path(), clock.clone());
    assert_eq!(store.root(), root, "the scan hashes chunked values whole");
    clock.advance(Duration::from_secs(2));
    assert_eq!(store.prune_expired().expect("prune"), 1);
    assert!(store.delete(b"big").expect("delete"));
    assert_eq!(chunk_records(&store), 0);
    assert_eq!(store.key_count(), 0);
}

#[test]
fn a_rebuild_drops_chunks_no_record_names_and_the_scrub_finds_missing_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    let big = vec![7u8; 50_000];
    store.store(b"kept", &big, None).expect("store");
    // What a crash between a value's chunks and its record leaves.
    let engine = store.engine.load();
    let orphan = chunks::write(&engine.db, &big).expect("orphan chunks");
    drop(engine);
    store.rebuild().expect("rebuild");
    let engine = store.engine.load();
    assert_eq!(
        chunks::read(&engine.db, orphan, big.len() as u64).expect("read"),
        None,
        "orphan chunks are not copied"
    );
    assert_eq!(
        store
            .retrieve(b"kept")
            .expect("get")
            .expect("present")
            .as_bytes(),
        &big[..]
    );
    // Lose one chunk of the live value: the scrub and a read both say so.
    let (_, record) = engine
        .db
        .scan_prefix([DATA])
        .next()
        .expect("a record")
        .expect("read");
    let (id, _) = chunks::body(&record)
        .and_then(|b| b.chunk_set())
        .expect("chunked");
    let first = engine
        .db
        .scan_prefix([chunks::CHUNKS])
        .keys()
        .find(|k| k.as_ref().is_ok_and(|k| k[1..9] == id.to_be_bytes()))
        .expect("a chunk")
        .expect("key");
    engine.db.remove(first).expect("lose a chunk");
    drop(engine);
    let mut cursor = ScrubCursor::default();
    while store.scrub_step(&mut cursor, 10).expect("scrub") == ScrubStep::More {}
    assert!(store.is_corrupted());
    assert!(store.retrieve(b"kept").is_err());
}

#[test]
fn a_scrub_batch_of_large_values_stops_after_about_a_mebibyte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    let big = vec![3u8; 300_000];
    for i in 0..10 {
        store
            .store(format!("big{i}").as_bytes(), &big, None)
            .expect("store");
    }
    let mut cursor = ScrubCursor::default();
    assert_eq!(
        store.scrub_step(&mut cursor, 1000).expect("scrub"),
        ScrubStep::More
    );
    assert_eq!(cursor.checked, 4, "1 MiB of 300 kB values is four records");
    while store.scrub_step(&mut cursor, 1000).expect("scrub") == ScrubStep::More {}
    assert!(!store.is_corrupted());
}

#[test]
fn an_inline_only_database_opens_and_is_marked_for_chunked_values() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = open_in(dir.path());
        store.store(b"k", b"v", None).expect("store");
        let engine = store.engine.load();
        engine
            .db
            .insert(META_FORMAT, FORMAT_INLINE_ONLY)
            .expect("an older node's format");
        engine.db.flush().expect("flush");
    }
    let store = open_in(dir.path());
    assert!(store.retrieve(b"k").expect("get").is_some());
    let format = store.engine.load().db.get(META_FORMAT).expect("get");
    assert_eq!(format.as_deref(), Some(FORMAT_VERSION));
}

/// Writers on the same keys at once (tree updates applied by whichever writer holds the
/// tree, in engine order), with a reader of the root and of proofs among them: the tree ends
/// equal to one built from the records, and a reopen agrees.
#[test]
fn concurrent_writers_on_shared_keys_keep_the_tree_in_step_with_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (store, stop) = (&store, &stop);
        let reader = scope.spawn(move || {
            let mut proofs = 0;
            while !stop.load(Ordering::Relaxed) {
                let _ = store.root();
                if let Some((value, proof, root)) = store.prove(b"k7").expect("prove") {
                    assert!(verify_proof(&root, b"k7", value.as_bytes(), &proof));
                    proofs += 1;
                }
            }
            proofs
        });
        let writers: Vec<_> = (0..4u8)
            .map(|t| {
                scope.spawn(move || {
                    let mut rng = fastrand::Rng::with_seed(u64::from(t));
                    for i in 0..8_000u32 {
                        let key = format!("k{}", rng.u32(0..8));
                        if rng.u8(0..10) == 0 {
                            store.delete(key.as_bytes()).expect("delete");
                        } else {
                            let value = format!("{t}-{i}");
                            store
                                .store(key.as_bytes(), value.as_bytes(), None)
                                .expect("store");
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("writer");
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0, "the reader saw k7");
    });
    let report = store.verify().expect("verify");
    assert!(report.ok(), "{report:?}");
    let expected = Tree::from_leaves(
        contents(&store)
            .iter()
            .map(|(k, v)| (merkle::key_path(k), merkle::leaf_hash(k, v)))
            .collect(),
    );
    let root = store.root();
    assert_eq!(root, expected.root());
    store.close().expect("close");
    let reopened = open_in(dir.path());
    assert_eq!(reopened.root(), root);
    assert!(reopened.verify().expect("verify").ok());
}

/// Pending tree updates are applied in the order the engine took them: the last write of a
/// key is the leaf that stays.
#[test]
fn pending_tree_updates_apply_in_engine_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_in(dir.path());
    store.store(b"k", b"first", None).expect("store");
    // Leave two updates of the same key pending: the tree's thread waits for the tree
    // (taken with everything so far applied).
    let tree = store.lock_tree();
    store.store(b"k", b"second", None).expect("store");
    store.store(b"k", b"third", None).expect("store");
    assert_eq!(store.tree.pending(), 2);
    drop(tree);
    let path = merkle::key_path(b"k");
    assert_eq!(
        store.lock_tree().leaf(&path),
        Some(merkle::leaf_hash(b"k", b"third"))
    );
    assert_eq!(store.tree.pending(), 0);
    assert!(store.verify().expect("verify").ok());
}
