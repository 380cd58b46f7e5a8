//! The segment log's index by record id and by caller subject: where, in each segment, the
//! frames that hold an event naming a record or a subject start. A query by record or subject
//! reads only those frames instead of the whole log.
//!
//! An entry is a key's hash (FNV-1a over a tag and the name) and a frame's byte offset. The
//! segment being written keeps its entries in memory; a closed segment's entries go, sorted, to
//! a file beside it (`<first>.idx`: magic, the segment's length, the entry count, the entries,
//! and a SHA-256 of all of it), written through a temporary file renamed into place. The index
//! is derived from the log: a missing or damaged file is rebuilt from the segment, and until
//! then that segment is scanned whole. A hash shared by two names only makes a query read a
//! frame it did not need (every event read is matched against the filter); an entry removed by
//! someone with disk access would hide events from queries, so `audit verify` rebuilds every
//! index file from its segment and names one that differs.

use std::{
    fs::File,
    hash::Hasher as _,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use sha2::{Digest as _, Sha256};

use super::Event;

/// What the index finds frames by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKey<'a> {
    /// A record id.
    Record(&'a str),
    /// The caller's subject.
    Subject(&'a str),
}

impl IndexKey<'_> {
    /// The key's hash, as entries hold it (stable across versions and machines).
    pub fn hash(self) -> u64 {
        let (tag, name) = match self {
            IndexKey::Record(r) => (b'r', r),
            IndexKey::Subject(s) => (b's', s),
        };
        let mut h = fnv::FnvHasher::default();
        h.write(&[tag]);
        h.write(name.as_bytes());
        h.finish()
    }
}

/// A key's hash and the byte offset of a frame that names it.
pub(super) type Entry = (u64, u32);

/// The hashes of the keys `events` name (record ids and subjects), each once, sorted.
pub(super) fn keys_of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Vec<u64> {
    let mut hashes = Vec::new();
    for e in events {
        if !e.record_id.is_empty() {
            hashes.push(IndexKey::Record(&e.record_id).hash());
        }
        if !e.subject.is_empty() {
            hashes.push(IndexKey::Subject(&e.subject).hash());
        }
    }
    hashes.sort_unstable();
    hashes.dedup();
    hashes
}

/// Entries kept in memory (the segment being written, or one whose file is being written), in
/// chunks, so a reader copies a list of chunks, not the entries.
#[derive(Debug, Default)]
pub(super) struct Memory {
    chunks: Vec<Arc<[Entry]>>,
    open: Vec<Entry>,
    /// A frame lies past what an entry can hold, or could not be read: the segment is not
    /// indexed (queries read it through, and meet what is wrong with it).
    unindexed: bool,
}

/// Entries per chunk of a `Memory`.
const CHUNK: usize = 4096;

impl Memory {
    /// Adds the keys `hashes` of the frame at byte `offset`.
    pub(super) fn add(&mut self, offset: u64, hashes: &[u64]) {
        let Ok(offset) = u32::try_from(offset) else {
            self.give_up();
            return;
        };
        self.open.extend(hashes.iter().map(|&h| (h, offset)));
        if self.open.len() >= CHUNK {
            self.chunks.push(std::mem::take(&mut self.open).into());
        }
    }

    /// Gives up indexing the segment: a frame of it could not be read, or lies past what an
    /// entry can hold.
    pub(super) fn give_up(&mut self) {
        self.unindexed = true;
    }

    /// The entries as they are now (`None` if the segment cannot be indexed).
    pub(super) fn view(&self) -> Option<View> {
        (!self.unindexed).then(|| {
            let mut chunks = self.chunks.clone();
            chunks.push(self.open.as_slice().into());
            View(chunks)
        })
    }
}

/// The entries of a `Memory` at one moment.
#[derive(Debug, Clone)]
pub(super) struct View(Vec<Arc<[Entry]>>);

impl View {
    /// The offsets of the frames that name a key hashing to `hash`, ascending.
    pub(super) fn lookup(&self, hash: u64) -> Vec<u32> {
        self.0
            .iter()
            .flat_map(|c| c.iter())
            .filter(|(h, _)| *h == hash)
            .map(|&(_, offset)| offset)
            .collect()
    }

    /// Every entry.
    pub(super) fn entries(&self) -> Vec<Entry> {
        self.0.iter().flat_map(|c| c.iter().copied()).collect()
    }
}

const MAGIC: &[u8; 8] = b"SRAIDX01";
const PREFIX: usize = 24;
const ENTRY: usize = 12;
const DIGEST: usize = 32;

/// The index file of the segment at `segment`.
pub(super) fn path_of(segment: &Path) -> PathBuf {
    segment.with_extension("idx")
}

/// The bytes of the index file of a segment `segment_len` long whose frames hold `entries`
/// (sorted here).
pub(super) fn encode(segment_len: u64, mut entries: Vec<Entry>) -> Vec<u8> {
    entries.sort_unstable();
    entries.dedup();
    let mut bytes = Vec::with_capacity(PREFIX + entries.len() * ENTRY + DIGEST);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&segment_len.to_be_bytes());
    bytes.extend_from_slice(&(entries.len() as u64).to_be_bytes());
    for (hash, offset) in entries {
        bytes.extend_from_slice(&hash.to_be_bytes());
        bytes.extend_from_slice(&offset.to_be_bytes());
    }
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    bytes
}

/// Writes the index file of the segment at `segment` (`segment_len` bytes, frames holding
/// `entries`) whole, through a temporary file renamed into place.
///
/// # Errors
/// The I/O error if it cannot be written.
pub(super) fn write(segment: &Path, segment_len: u64, entries: Vec<Entry>) -> std::io::Result<()> {
    crate::files::write_whole(
        &segment.with_extension("idx.new"),
        &path_of(segment),
        &encode(segment_len, entries),
    )
}

/// The length of an index file of `count` entries.
fn size_of(count: u64) -> Option<u64> {
    (PREFIX as u64)
        .checked_add(count.checked_mul(ENTRY as u64)?)?
        .checked_add(DIGEST as u64)
}

/// Whether the index file of the segment at `segment` could be one of a segment `segment_len`
/// long (not longer than its entries allow): read whole only then.
pub(super) fn plausible_size(segment: &Path, segment_len: u64) -> bool {
    let longest = size_of(segment_len).unwrap_or(u64::MAX);
    std::fs::metadata(path_of(segment)).is_ok_and(|m| m.len() <= longest)
}

/// An index file, opened for lookups.
pub(super) struct IndexFile {
    file: File,
    count: u64,
}

impl IndexFile {
    /// The index file of the segment at `segment`, if there is one for its `segment_len`
    /// bytes, whole (its length and, when `check` is set, its digest: a lookup reads only a few
    /// entries, so the digest is checked once per file and process).
    pub(super) fn open(segment: &Path, segment_len: u64, check: bool) -> Option<Self> {
        let file = File::open(path_of(segment)).ok()?;
        let mut prefix = [0u8; PREFIX];
        file.read_exact_at(&mut prefix, 0).ok()?;
        let (magic, rest) = prefix.split_first_chunk::<8>()?;
        let (len, count) = rest.split_first_chunk::<8>()?;
        let count = u64::from_be_bytes(count.try_into().ok()?);
        if magic != MAGIC || u64::from_be_bytes(*len) != segment_len {
            return None;
        }
        // Every entry stands for at least one byte of its segment.
        if count > segment_len || file.metadata().ok()?.len() != size_of(count)? {
            return None;
        }
        if check {
            // Hashed a block at a time: a large file costs time, not memory.
            let mut hasher = Sha256::new();
            let mut block = vec![0u8; 1 << 16];
            let body = size_of(count)? - DIGEST as u64;
            let mut at = 0;
            while at < body {
                let n = usize::try_from((body - at).min(block.len() as u64)).ok()?;
                file.read_exact_at(&mut block[..n], at).ok()?;
                hasher.update(&block[..n]);
                at += n as u64;
            }
            let mut digest = [0u8; DIGEST];
            file.read_exact_at(&mut digest, body).ok()?;
            if hasher.finalize().as_slice() != digest {
                return None;
            }
        }
        Some(Self { file, count })
    }

    fn entry(&self, i: u64) -> std::io::Result<Entry> {
        let mut bytes = [0u8; ENTRY];
        self.file
            .read_exact_at(&mut bytes, PREFIX as u64 + i * ENTRY as u64)?;
        let [h0, h1, h2, h3, h4, h5, h6, h7, o0, o1, o2, o3] = bytes;
        Ok((
            u64::from_be_bytes([h0, h1, h2, h3, h4, h5, h6, h7]),
            u32::from_be_bytes([o0, o1, o2, o3]),
        ))
    }

    /// The offsets of the frames whose events name a key hashing to `hash`, ascending.
    ///
    /// # Errors
    /// The I/O error if the file cannot be read.
    pub(super) fn lookup(&self, hash: u64) -> std::io::Result<Vec<u32>> {
        // The first entry with a hash at least `hash`, by bisection.
        let (mut lo, mut hi) = (0, self.count);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.entry(mid)?.0 < hash {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let mut offsets = Vec::new();
        for i in lo..self.count {
            let (h, offset) = self.entry(i)?;
            if h != hash {
                break;
            }
            offsets.push(offset);
        }
        Ok(offsets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_every_frame_of_a_key_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let segment = dir.path().join("00000000000000000001.seg");
        let (a, b) = (IndexKey::Record("a").hash(), IndexKey::Subject("a").hash());
        assert_ne!(
            a, b,
            "a record and a subject of one name are different keys"
        );
        let mut entries: Vec<Entry> = (0..1000u32).map(|i| (u64::from(i % 7), i * 10)).collect();
        entries.extend([(a, 5), (a, 3), (b, 4), (a, 3)]);
        write(&segment, 10_000, entries).unwrap_or_else(|e| panic!("{e}"));

        let file = IndexFile::open(&segment, 10_000, true).unwrap_or_else(|| panic!("opens"));
        let lookup = |hash| file.lookup(hash).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(lookup(a), vec![3, 5]);
        assert_eq!(lookup(b), vec![4]);
        let threes = lookup(3);
        assert_eq!(threes.len(), 143);
        assert!(threes.windows(2).all(|w| w[0] < w[1]));
        assert!(lookup(u64::MAX).is_empty());

        // Another segment length, a flipped byte or a cut file: not this segment's index.
        assert!(IndexFile::open(&segment, 10_001, true).is_none());
        let path = path_of(&segment);
        let mut bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        bytes[PREFIX + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{e}"));
        assert!(IndexFile::open(&segment, 10_000, true).is_none());
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap_or_else(|e| panic!("{e}"));
        assert!(IndexFile::open(&segment, 10_000, false).is_none());
    }
}
