//! The RocksDB store: one column family per keyspace, compression off (ciphertext does not
//! compress), every batch written with sync. The only file that names `rocksdb`.

use std::path::Path;

use std::time::{Duration, Instant};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, BottommostLevelCompaction, Cache,
    ColumnFamilyDescriptor, CompactOptions, DB, DBCompressionType, DataBlockIndexType,
    FlushOptions, LiveFile, Options, ReadOptions, SnapshotWithThreadMode, WriteBatch, WriteOptions,
};

use super::{Batch, KeyValue, Keyspace, Op, Snapshot, Store, StoreError, prefix_end};

/// How long a purge waits for reads that took their snapshot before it to finish.
const SNAPSHOT_WAIT: Duration = Duration::from_secs(2);

/// RocksDB behind the `Store` trait.
pub struct RocksStore {
    db: DB,
    /// A batch with preconditions holds the stripes of its expected keys from the check to
    /// the write, so two such batches on one key never both pass; unrelated ones, and every
    /// batch without a precondition, still share fsyncs through RocksDB's group commit. A
    /// batch without a precondition is a blind write: it does not wait.
    stripes: Vec<std::sync::RwLock<()>>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn io(e: rocksdb::Error) -> StoreError {
    StoreError::Io(e.into_string())
}

/// Settings of a RocksDB store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RocksOptions {
    /// The block cache all keyspaces share (data, index and filter blocks), in bytes.
    pub block_cache_bytes: usize,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 64 << 20,
        }
    }
}

fn cf_options(cache: &Cache) -> Options {
    let mut opts = Options::default();
    opts.set_compression_type(DBCompressionType::None);
    opts.set_bottommost_compression_type(DBCompressionType::None);
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(cache);
    // Whole-key bloom filters: every read is a point lookup, and most keys of a large store
    // are not in most files.
    table.set_bloom_filter(10.0, false);
    // Index and filter blocks live in the block cache (memory stays bounded), ahead of data
    // blocks, and those of the newest files (L0, where every read looks first) stay pinned.
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // Partitioned: a file's index and filter are cut into 4 KiB blocks under a small pinned
    // top level, so a lookup in a large file loads one partition, not the whole index.
    table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
    table.set_partition_filters(true);
    table.set_metadata_block_size(4096);
    table.set_pin_top_level_index_and_filter(true);
    // A hash index in each data block: a point lookup finds its key without a binary search.
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_data_block_hash_ratio(0.75);
    opts.set_block_based_table_factory(&table);
    // A bloom filter over the memtable's keys: a read of a key flushed long ago skips the
    // skiplist search.
    opts.set_memtable_whole_key_filtering(true);
    opts.set_memtable_prefix_bloom_ratio(0.02);
    // Memory is bounded: 16 MiB memtables per keyspace, 96 MiB for all of them together (see
    // `open`), and the shared block cache.
    opts.set_write_buffer_size(16 << 20);
    opts.set_max_write_buffer_number(3);
    opts
}

impl RocksStore {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// `StoreError::Open` with the engine's message.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, RocksOptions::default())
    }

    /// Opens (or creates) the store in `dir` with `options`.
    ///
    /// # Errors
    /// `StoreError::Open` with the engine's message.
    pub fn open_with(dir: &Path, options: RocksOptions) -> Result<Self, StoreError> {
        let cache = Cache::new_lru_cache(options.block_cache_bytes);
        // (`max_manifest_space_amp_pct` has no setter: see the MANIFEST note below.)
        let mut db_opts = cf_options(&cache)
            .get_options_from_string("max_manifest_space_amp_pct=0")
            .map_err(|e| StoreError::Open {
                path: dir.display().to_string(),
                detail: e.into_string(),
            })?;
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        // Old WAL files must not be reused or archived: they hold deleted values.
        db_opts.set_recycle_log_file_num(0);
        db_opts.set_wal_ttl_seconds(0);
        db_opts.set_wal_size_limit_mb(0);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_db_write_buffer_size(96 << 20);
        // The MANIFEST records the first and last key of every file it ever listed, so keys of
        // purged files (blind-index digests are keys) stay in it until it is rewritten. At this
        // limit (and no space amplification allowed) every change of the file set starts a new
        // MANIFEST holding the live files only (a few hundred bytes per file), and the old one
        // is deleted; `purge` ends with one such change after its compactions.
        db_opts.set_max_manifest_file_size(1);
        let cfs = Keyspace::ALL
            .iter()
            .map(|ks| ColumnFamilyDescriptor::new(ks.name(), cf_options(&cache)));
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            detail: e.into_string(),
        })?;
        Ok(Self {
            db,
            stripes: (0..64).map(|_| std::sync::RwLock::new(())).collect(),
        })
    }

    fn cf(&self, ks: Keyspace) -> Result<&rocksdb::ColumnFamily, StoreError> {
        cf(&self.db, ks)
    }

    /// Waits until no snapshot older than sequence number `seq` is alive: a compaction must
    /// keep every value an open snapshot can see, deleted or not.
    fn wait_for_snapshots_before(&self, seq: u64) -> Result<(), StoreError> {
        let start = Instant::now();
        loop {
            let live = self
                .db
                .property_int_value("rocksdb.num-snapshots")
                .map_err(io)?
                .unwrap_or(0);
            let oldest = self
                .db
                .property_int_value("rocksdb.oldest-snapshot-sequence")
                .map_err(io)?
                .unwrap_or(0);
            if live == 0 || oldest >= seq {
                return Ok(());
            }
            if start.elapsed() > SNAPSHOT_WAIT {
                return Err(StoreError::Io(format!(
                    "a read snapshot older than the purge is still open after {SNAPSHOT_WAIT:?}; \
                     compacting now would keep the deleted values"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The number of an SST file (`/000123.sst` -> 123).
fn file_number(name: &str) -> Option<u64> {
    name.rsplit('/').next()?.strip_suffix(".sst")?.parse().ok()
}

/// A live file of column family `cf` that overlaps the keys starting with `prefix` and was
/// written no later than file number `flushed` (so no compaction since rewrote it), if any. A
/// file whose name or key range cannot be read counts as such a file: fail closed.
/// The `meta` key `purge` writes to end on a fresh MANIFEST.
const PURGE_MARKER: &[u8] = b"storage/last-purge";

fn unpurged<'a>(live: &'a [LiveFile], cf: &str, prefix: &[u8], flushed: u64) -> Option<&'a str> {
    let end = prefix_end(prefix);
    live.iter()
        .filter(|f| f.column_family_name == cf)
        .find(|f| {
            let overlaps = match (&f.start_key, &f.end_key) {
                (Some(start), Some(last)) => {
                    last.as_slice() >= prefix && end.as_deref().is_none_or(|e| start.as_slice() < e)
                }
                _ => true,
            };
            overlaps && file_number(&f.name).is_none_or(|n| n <= flushed)
        })
        .map(|f| f.name.as_str())
}

fn cf(db: &DB, ks: Keyspace) -> Result<&rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(ks.name())
        .ok_or_else(|| StoreError::Io(format!("column family {} is missing", ks.name())))
}

/// A RocksDB snapshot: every read goes through read options pinned to it.
struct RocksSnapshot<'a> {
    db: &'a DB,
    snapshot: SnapshotWithThreadMode<'a, DB>,
}

impl RocksSnapshot<'_> {
    fn options(&self) -> ReadOptions {
        let mut opts = ReadOptions::default();
        opts.set_snapshot(&self.snapshot);
        opts
    }
}

impl Snapshot for RocksSnapshot<'_> {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db
            .get_cf_opt(cf(self.db, ks)?, key, &self.options())
            .map_err(io)
    }

    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        self.db
            .batched_multi_get_cf_opt(cf(self.db, ks)?, keys, false, &self.options())
            .into_iter()
            .map(|r| r.map(|v| v.map(|p| p.to_vec())).map_err(io))
            .collect()
    }

    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let mut opts = self.options();
        if let Some(end) = prefix_end(prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf(self.db, ks)?, opts, mode) {
            let (key, value) = item.map_err(io)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }
}

impl Store for RocksStore {
    fn snapshot(&self) -> Box<dyn Snapshot + '_> {
        Box::new(RocksSnapshot {
            db: &self.db,
            snapshot: self.db.snapshot(),
        })
    }

    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get_cf(self.cf(ks)?, key).map_err(io)
    }

    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let cf = self.cf(ks)?;
        self.db
            .batched_multi_get_cf(cf, keys, false)
            .into_iter()
            .map(|r| r.map(|v| v.map(|p| p.to_vec())).map_err(io))
            .collect()
    }

    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let cf = self.cf(ks)?;
        let mut out = Vec::new();
        let mode = rocksdb::IteratorMode::From(prefix, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(cf, mode) {
            let (key, value) = item.map_err(io)?;
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }

    fn scan_range(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let cf = self.cf(ks)?;
        let mut out = Vec::new();
        let mode = rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(cf, mode) {
            if out.len() >= limit {
                break;
            }
            let (key, value) = item.map_err(io)?;
            if to.is_some_and(|to| *key >= *to) {
                break;
            }
            out.push((key.into_vec(), value.into_vec()));
        }
        Ok(out)
    }

    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError> {
        let cf = self.cf(ks)?;
        match self.db.iterator_cf(cf, rocksdb::IteratorMode::End).next() {
            Some(item) => {
                let (key, value) = item.map_err(io)?;
                Ok(Some((key.into_vec(), value.into_vec())))
            }
            None => Ok(None),
        }
    }

    fn shared(&self) -> bool {
        false
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        // Taken in ascending order, so two batches never wait for each other: exclusively for
        // a key the batch writes, shared for one it only expects.
        let mut stripes: Vec<(usize, bool)> = batch
            .ops()
            .iter()
            .filter_map(|op| match op {
                Op::Expect(ks, key, _) => {
                    let mut h = std::hash::DefaultHasher::new();
                    std::hash::Hash::hash(&(ks, key), &mut h);
                    let n = std::hash::Hasher::finish(&h) % self.stripes.len() as u64;
                    Some((usize::try_from(n).ok()?, batch.writes(*ks, key)))
                }
                Op::Delete(..) | Op::DeleteRange(..) | Op::Put(..) => None,
            })
            .collect();
        // Exclusive first for each stripe, and each stripe once.
        stripes.sort_unstable_by_key(|&(i, exclusive)| (i, !exclusive));
        stripes.dedup_by_key(|&mut (i, _)| i);
        #[allow(dead_code, reason = "held for what their drop does: unlock")]
        enum Held<'a> {
            Shared(std::sync::RwLockReadGuard<'a, ()>),
            Alone(std::sync::RwLockWriteGuard<'a, ()>),
        }
        use std::sync::PoisonError;
        let _held: Vec<Held<'_>> = stripes
            .iter()
            .filter_map(|&(i, exclusive)| {
                let stripe = self.stripes.get(i)?;
                Some(match exclusive {
                    true => Held::Alone(stripe.write().unwrap_or_else(PoisonError::into_inner)),
                    false => Held::Shared(stripe.read().unwrap_or_else(PoisonError::into_inner)),
                })
            })
            .collect();
        super::check_expected(&batch, |ks, key| self.get(ks, key))?;
        let mut wb = WriteBatch::default();
        for op in batch.ops() {
            match op {
                Op::Delete(ks, key) => wb.delete_cf(self.cf(*ks)?, key),
                Op::DeleteRange(ks, from, to) => wb.delete_range_cf(self.cf(*ks)?, from, to),
                Op::Put(ks, key, value) => wb.put_cf(self.cf(*ks)?, key, value),
                Op::Expect(..) => {}
            }
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(wb, &opts).map_err(io)
    }

    fn purge(&self, prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError> {
        // Every deletion to purge was written before this point; a snapshot older than it can
        // still see the deleted values, and a compaction keeps what a snapshot can see.
        let deleted_by = self.db.latest_sequence_number();
        self.wait_for_snapshots_before(deleted_by)?;
        let mut flush = FlushOptions::default();
        flush.set_wait(true);
        let cfs = Keyspace::ALL
            .iter()
            .map(|ks| self.cf(*ks))
            .collect::<Result<Vec<_>, _>>()?;
        self.db.flush_cfs_opt(&cfs, &flush).map_err(io)?;
        // Every file that may hold a purged value now exists; the compactions below must
        // rewrite each one that overlaps a purged range.
        let flushed = self
            .db
            .live_files()
            .map_err(io)?
            .iter()
            .filter_map(|f| file_number(&f.name))
            .max()
            .unwrap_or(0);
        let mut compact = CompactOptions::default();
        compact.set_bottommost_level_compaction(BottommostLevelCompaction::Force);
        compact.set_exclusive_manual_compaction(false);
        for (ks, prefix) in prefixes {
            let end = prefix_end(prefix);
            self.db
                .compact_range_cf_opt(self.cf(*ks)?, Some(*prefix), end.as_deref(), &compact);
        }
        // RocksDB's C API drops the status of a manual compaction: check its effect instead.
        let live = self.db.live_files().map_err(io)?;
        for (ks, prefix) in prefixes {
            if let Some(file) = unpurged(&live, ks.name(), prefix, flushed) {
                return Err(StoreError::Io(format!(
                    "the purge compaction left {file} (written before it) over a purged range of {}",
                    ks.name()
                )));
            }
        }
        // One more change of the file set (a marker flushed to `meta`) starts a MANIFEST that
        // lists only the files live after the compactions, and retires the one that still
        // named the purged files' boundary keys.
        let meta = self.cf(Keyspace::Meta)?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        self.db
            .put_cf_opt(meta, PURGE_MARKER, deleted_by.to_be_bytes(), &sync)
            .map_err(io)?;
        self.db.flush_cf_opt(meta, &flush).map_err(io)?;
        // A snapshot opened since the check above is newer than every deletion purged: it
        // cannot hold the deleted values back.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(cf: &str, name: &str, keys: Option<(&[u8], &[u8])>) -> LiveFile {
        LiveFile {
            column_family_name: cf.into(),
            name: name.into(),
            size: 1,
            level: 6,
            start_key: keys.map(|(s, _)| s.to_vec()),
            end_key: keys.map(|(_, e)| e.to_vec()),
            num_entries: 1,
            num_deletions: 0,
        }
    }

    #[test]
    fn a_purge_is_proven_only_when_every_old_file_over_its_range_was_rewritten() {
        let range: Option<(&[u8], &[u8])> = Some((b"a", b"z"));
        // Rewritten by the compaction (newer than the flush), or elsewhere: purged.
        let clean = [
            file("deks", "/000012.sst", range),
            file("records", "/000003.sst", range),
            file("deks", "/000002.sst", Some((b"q", b"z"))),
        ];
        assert_eq!(unpurged(&clean, "deks", b"k", 10), None);
        // Written before the compaction, over the range: not purged, named.
        let stale = [file("deks", "/000007.sst", range)];
        assert_eq!(unpurged(&stale, "deks", b"k", 10), Some("/000007.sst"));
        // A file whose range or name cannot be read fails closed.
        let unknown = [file("deks", "/000007.sst", None), file("deks", "x", range)];
        assert_eq!(
            unpurged(&unknown[..1], "deks", b"k", 10),
            Some("/000007.sst")
        );
        assert_eq!(unpurged(&unknown[1..], "deks", b"k", 10), Some("x"));
        assert_eq!(file_number("/000123.sst"), Some(123));
    }
}
