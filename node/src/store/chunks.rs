//! Large values in chunks, so that `cacheCapacity` bounds memory.
//!
//! Two things in sled 0.34 make memory follow the size of a leaf page, and a leaf holds up
//! to 17 items:
//! - a page larger than a quarter of a segment (~128 KiB) is written as a separate blob,
//!   and the cache counts a page by the bytes it took in the log — for a blob, only the
//!   pointer. Pages of large values were never counted, so never evicted. Measured
//!   (`bench --scenario large-values`, 64 MiB cache, values stored whole): 800 × 1 MiB
//!   stores left 926 MiB resident, a read pass over them 1.24 GB.
//! - the cache records accesses lazily, 64 per shard in 256 shards before it counts them,
//!   so up to ~16,000 pages can be resident beyond `cacheCapacity`. Measured with a
//!   store-level read pass over 800 × 1 MiB (64 MiB cache): 4 KiB chunks (~70 KiB leaves)
//!   held 364–381 MiB, 1 KiB chunks 162 MiB, 512-byte chunks 159 MiB.
//!
//! So a value larger than [`INLINE_MAX`] is written as chunks of [`CHUNK`] bytes under keys
//! `c` + chunk-set id + index, and its record holds the length and the id instead of the
//! bytes: every leaf stays near 17 KiB, counted and evicted like any other. (Values up to
//! 1 KiB, the common case, stay inline: nothing changes for them.)
//!
//! A new value gets a new chunk-set id: its chunks are written before the record that names
//! them, and the chunks of the value it replaces are removed after. A crash in between
//! leaves chunks no record names (garbage the next rebuild does not copy), never a record
//! whose chunks are half old and half new.

use std::collections::HashSet;

use super::{RECORD_EXPIRES, RECORD_PLAIN, Result};

/// Values up to this many bytes stay inside their record.
pub(super) const INLINE_MAX: usize = 1024;
/// Bytes per chunk of a larger value.
pub(super) const CHUNK: usize = 1024;

/// Prefix of chunk keys.
pub(super) const CHUNKS: u8 = b'c';
/// A record whose value is in chunks.
pub(super) const RECORD_CHUNKED: u8 = 2;
/// A record whose value is in chunks and which expires.
pub(super) const RECORD_CHUNKED_EXPIRES: u8 = 3;

/// Where a record's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body<'a> {
    /// In the record.
    Inline(&'a [u8]),
    /// In `len.div_ceil(CHUNK)` chunks of chunk set `id`.
    Chunked { len: u64, id: u64 },
}

impl Body<'_> {
    /// The value's length in bytes.
    pub(super) fn len(&self) -> u64 {
        match self {
            Body::Inline(value) => value.len() as u64,
            Body::Chunked { len, .. } => *len,
        }
    }

    /// The chunk set, for a chunked value.
    pub(super) fn chunk_set(&self) -> Option<(u64, u64)> {
        match self {
            Body::Inline(_) => None,
            Body::Chunked { len, id } => Some((*id, *len)),
        }
    }
}

fn word(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// A record's body; `None` for a malformed record.
pub(super) fn body(record: &[u8]) -> Option<Body<'_>> {
    match *record.first()? {
        RECORD_PLAIN => Some(Body::Inline(&record[1..])),
        RECORD_EXPIRES if record.len() >= 9 => Some(Body::Inline(&record[9..])),
        RECORD_CHUNKED if record.len() == 17 => Some(Body::Chunked {
            len: word(record, 1)?,
            id: word(record, 9)?,
        }),
        RECORD_CHUNKED_EXPIRES if record.len() == 25 => Some(Body::Chunked {
            len: word(record, 9)?,
            id: word(record, 17)?,
        }),
        _ => None,
    }
}

/// The expiry of a record (unix ms), if it has one.
pub(super) fn expiry(record: &[u8]) -> Option<u64> {
    match *record.first()? {
        RECORD_EXPIRES | RECORD_CHUNKED_EXPIRES => word(record, 1),
        _ => None,
    }
}

/// A record for `value` (inline) or for a chunked value of `len` bytes in set `id`.
pub(super) fn encode(expires_at: u64, body: Body<'_>) -> Vec<u8> {
    let mut record = Vec::with_capacity(25 + body.len().min(INLINE_MAX as u64) as usize);
    let (plain, expiring) = match body {
        Body::Inline(_) => (RECORD_PLAIN, RECORD_EXPIRES),
        Body::Chunked { .. } => (RECORD_CHUNKED, RECORD_CHUNKED_EXPIRES),
    };
    if expires_at == 0 {
        record.push(plain);
    } else {
        record.push(expiring);
        record.extend_from_slice(&expires_at.to_be_bytes());
    }
    match body {
        Body::Inline(value) => record.extend_from_slice(value),
        Body::Chunked { len, id } => {
            record.extend_from_slice(&len.to_be_bytes());
            record.extend_from_slice(&id.to_be_bytes());
        }
    }
    record
}

fn key(id: u64, index: u32) -> [u8; 13] {
    let mut key = [0u8; 13];
    key[0] = CHUNKS;
    key[1..9].copy_from_slice(&id.to_be_bytes());
    key[9..].copy_from_slice(&index.to_be_bytes());
    key
}

fn count(len: u64) -> u32 {
    u32::try_from(len.div_ceil(CHUNK as u64)).unwrap_or(u32::MAX)
}

/// Writes `value` as a new chunk set; returns its id.
pub(super) fn write(db: &sled::Db, value: &[u8]) -> Result<u64> {
    let id = loop {
        let id = fastrand::u64(..);
        if db.get(key(id, 0))?.is_none() {
            break id;
        }
    };
    for (index, chunk) in value.chunks(CHUNK).enumerate() {
        let index = u32::try_from(index).unwrap_or(u32::MAX);
        db.insert(key(id, index), chunk)?;
    }
    Ok(id)
}

/// Reads chunk set `id` of `len` bytes; `None` when a chunk is missing or the wrong size
/// (corruption).
pub(super) fn read(db: &sled::Db, id: u64, len: u64) -> Result<Option<Vec<u8>>> {
    let total = usize::try_from(len).unwrap_or(usize::MAX);
    let mut value = Vec::with_capacity(total.min(64 << 20));
    let chunks = count(len);
    for entry in db.range(key(id, 0)..key(id, chunks)) {
        let (_, chunk) = entry?;
        value.extend_from_slice(&chunk);
    }
    Ok((value.len() == total).then_some(value))
}

/// Removes chunk set `id` of `len` bytes.
pub(super) fn remove(db: &sled::Db, id: u64, len: u64) -> Result<()> {
    for index in 0..count(len) {
        db.remove(key(id, index))?;
    }
    Ok(())
}

/// Whether `db_key` is a chunk of a set not in `live` (left by a crash between a value's
/// chunks and its record).
pub(super) fn is_orphan(db_key: &[u8], live: &HashSet<u64>) -> bool {
    db_key.first() == Some(&CHUNKS) && word(db_key, 1).is_some_and(|id| !live.contains(&id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_garbage_does_not_decode() {
        for expires in [0, 1_700_000_000_000] {
            let inline = encode(expires, Body::Inline(b"value"));
            assert_eq!(body(&inline), Some(Body::Inline(b"value")));
            let chunked = encode(expires, Body::Chunked { len: 9000, id: 7 });
            assert_eq!(body(&chunked), Some(Body::Chunked { len: 9000, id: 7 }));
            let expect = (expires != 0).then_some(expires);
            assert_eq!((expiry(&inline), expiry(&chunked)), (expect, expect));
        }
        for garbage in [
            &[][..],
            &[9, 9],
            &[RECORD_CHUNKED, 1, 2],
            &[RECORD_EXPIRES, 1],
        ] {
            assert_eq!(body(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn chunk_sets_are_written_read_and_removed_whole() {
        let db = sled::Config::new().temporary(true).open().expect("db");
        let value: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let id = write(&db, &value).expect("write");
        assert_eq!(
            read(&db, id, value.len() as u64).expect("read"),
            Some(value.clone())
        );
        db.remove(key(id, 1)).expect("lose a chunk");
        assert_eq!(read(&db, id, value.len() as u64).expect("read"), None);
        remove(&db, id, value.len() as u64).expect("remove");
        assert_eq!(db.len(), 0);
        assert!(is_orphan(&key(5, 0), &HashSet::from([6])));
        assert!(!is_orphan(&key(5, 0), &HashSet::from([5])));
    }
}
