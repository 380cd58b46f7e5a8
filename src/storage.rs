//! Storage: the `Store` trait, its keyspaces, and atomic batches. `rocks.rs` is the only file
//! that names RocksDB (the embedded default), `postgres.rs` the only one that names
//! PostgreSQL (a database replicated to standbys); `memory.rs` is a third implementation the
//! conformance tests also run.
//!
//! Knows nothing of records, keys or policies: it stores bytes.

mod memory;
mod postgres;
mod rocks;

use std::path::Path;

pub use memory::MemoryStore;
pub use postgres::{PgOptions, PgStore, pg_database, pg_with_database, redacted, valid_schema};
pub use rocks::{RocksOptions, RocksStore};

/// A named keyspace (a RocksDB column family).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyspace {
    /// Hash-chained audit events.
    Audit,
    /// Wrapped data keys, keyed `record id | version`: only in the key store (in the keys dir),
    /// never in the data store, so that a copy of the data dir holds no key.
    Deks,
    /// Record headers: collection, version, field manifest.
    Headers,
    /// Blind-index entries for lookups.
    Index,
    /// Tokens, policy versions, audit checkpoints (in the key store: epoch times, rotation).
    Meta,
    /// Field ciphertexts, keyed `record id | field name`.
    Records,
    /// Shredded record ids, so a restored backup cannot bring a record back.
    Tombstones,
}

impl Keyspace {
    /// Every keyspace.
    pub const ALL: [Self; 7] = [
        Self::Audit,
        Self::Deks,
        Self::Headers,
        Self::Index,
        Self::Meta,
        Self::Records,
        Self::Tombstones,
    ];

    /// The column family name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Deks => "deks",
            Self::Headers => "headers",
            Self::Index => "index",
            Self::Meta => "meta",
            Self::Records => "records",
            Self::Tombstones => "tombstones",
        }
    }
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Remove a key.
    Delete(Keyspace, Vec<u8>),
    /// Remove every key `from <= key < to`: one operation however many keys it covers.
    DeleteRange(Keyspace, Vec<u8>, Vec<u8>),
    /// Set a key.
    Put(Keyspace, Vec<u8>, Vec<u8>),
    /// A precondition: the key holds exactly this value (`None`: the key is absent) before any
    /// write of the batch, or nothing of the batch is applied (`StoreError::Conflict`). Checked
    /// atomically with the writes, also against writers in other processes on a shared
    /// database: the compare-and-set that keeps several vault nodes from losing an update.
    Expect(Keyspace, Vec<u8>, Option<Vec<u8>>),
}

/// Changes applied together or not at all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a put.
    pub fn put(&mut self, ks: Keyspace, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(Op::Put(ks, key.into(), value.into()));
    }

    /// Adds a delete.
    pub fn delete(&mut self, ks: Keyspace, key: impl Into<Vec<u8>>) {
        self.ops.push(Op::Delete(ks, key.into()));
    }

    /// Adds the removal of every key `from <= key < to`.
    pub fn delete_range(&mut self, ks: Keyspace, from: impl Into<Vec<u8>>, to: impl Into<Vec<u8>>) {
        self.ops.push(Op::DeleteRange(ks, from.into(), to.into()));
    }

    /// Adds a precondition: `key` holds `value` (`None`: is absent) when the batch is applied.
    pub fn expect(&mut self, ks: Keyspace, key: impl Into<Vec<u8>>, value: Option<Vec<u8>>) {
        self.ops.push(Op::Expect(ks, key.into(), value));
    }

    /// Whether the batch puts or deletes `key` itself (a range delete counts).
    pub fn writes(&self, ks: Keyspace, key: &[u8]) -> bool {
        self.ops.iter().any(|op| match op {
            Op::Put(k_ks, k, _) | Op::Delete(k_ks, k) => *k_ks == ks && k == key,
            Op::DeleteRange(k_ks, from, to) => {
                *k_ks == ks && from.as_slice() <= key && key < to.as_slice()
            }
            Op::Expect(..) => false,
        })
    }

    /// Whether the batch holds a precondition.
    pub fn is_conditional(&self) -> bool {
        self.ops.iter().any(|op| matches!(op, Op::Expect(..)))
    }

    /// Copies every change of `other` to the end of this batch.
    pub fn extend_from(&mut self, other: &Batch) {
        self.ops.extend_from_slice(&other.ops);
    }

    /// Moves every change of `other` to the end of this batch.
    pub fn append(&mut self, mut other: Batch) {
        self.ops.append(&mut other.ops);
    }

    /// The changes, in order.
    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A storage failure. The detail is for logs; clients see a generic message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening the store failed.
    #[error("cannot open the store at {path}: {detail}")]
    Open {
        /// The data dir.
        path: String,
        /// What the engine said.
        detail: String,
    },
    /// A read, write, sync or purge failed.
    #[error("storage I/O failed: {0}")]
    Io(String),
    /// A precondition of the batch (`Op::Expect`) did not hold: another writer changed the key
    /// first. Nothing of the batch was applied.
    #[error("a precondition failed in keyspace {0}: the key was changed by another writer")]
    Conflict(&'static str),
}

/// Checks a batch's preconditions against the current values (`get`): the first that fails is
/// a `Conflict`. For stores that check under a lock of their own (memory, RocksDB).
pub(crate) fn check_expected(
    batch: &Batch,
    mut get: impl FnMut(Keyspace, &[u8]) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<(), StoreError> {
    for op in batch.ops() {
        if let Op::Expect(ks, key, value) = op
            && get(*ks, key)? != *value
        {
            return Err(StoreError::Conflict(ks.name()));
        }
    }
    Ok(())
}

/// A consistent view of the store at one moment: every read through it sees every batch
/// written before the snapshot was taken and none written after, so a use case that reads
/// several keys (a record's header, its wrapped DEK and its ciphertexts) never mixes two
/// versions. Keep it short-lived: while it lives, the engine keeps the data it sees, deleted
/// or not (a purge waits for older snapshots to go).
pub trait Snapshot: Send + Sync {
    /// Reads one key.
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The values of `keys`, in order (`None` where a key is absent).
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn multi_get(&self, ks: Keyspace, keys: &[Vec<u8>])
    -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Every key/value whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;
}

/// The storage engine behind the vault.
///
/// Every write is durable (synced) when `write` returns `Ok`; concurrent writers share syncs.
pub trait Store: Send + Sync + 'static {
    /// A consistent read view of the store as it is now.
    fn snapshot(&self) -> Box<dyn Snapshot + '_>;

    /// Reads one key.
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// The values of `keys`, in order (`None` where a key is absent).
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn multi_get(&self, ks: Keyspace, keys: &[Vec<u8>])
    -> Result<Vec<Option<Vec<u8>>>, StoreError>;

    /// Every key/value whose key starts with `prefix`, in key order.
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError>;

    /// Up to `limit` key/values with `from <= key < to` (no upper bound if `to` is `None`), in
    /// key order.
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn scan_range(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;

    /// The last key/value of a keyspace, in key order.
    ///
    /// # Errors
    /// `StoreError::Io` if the engine fails.
    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError>;

    /// Whether other processes may write the store at the same time (a database several vault
    /// nodes share): what a node read at its start may be changed by another since.
    fn shared(&self) -> bool;

    /// Applies a batch atomically and durably.
    ///
    /// # Errors
    /// `StoreError::Io` if the write or its sync fails; then nothing of the batch is applied.
    fn write(&self, batch: Batch) -> Result<(), StoreError>;

    /// Makes deleted data under the given key prefixes leave every live file: flush all
    /// keyspaces (so the write-ahead log holding the old values becomes obsolete), then compact
    /// the prefixes' ranges down to and including the bottommost level. `Ok` means every step
    /// that can report a failure reported none; RocksDB's manual compaction reports nothing,
    /// so what it did is proven only by scanning the files (the shred tests do).
    ///
    /// # Errors
    /// `StoreError::Io` if a flush fails, or if a snapshot older than the purge still lives
    /// (it would keep the deleted values alive through the compaction): the purge did not
    /// happen and must be retried.
    fn purge(&self, prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError>;
}

/// Opens the RocksDB store in `dir`, creating it and its keyspaces if needed.
///
/// # Errors
/// `StoreError::Open` with the engine's message.
pub fn open_rocks(dir: &Path, options: RocksOptions) -> Result<RocksStore, StoreError> {
    RocksStore::open_with(dir, options)
}

/// The smallest key greater than every key starting with `prefix`, if any.
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// One conformance suite, run against every `Store` implementation.
#[cfg(test)]
mod conformance {
    use super::*;

    fn suite(store: &dyn Store) {
        let mut batch = Batch::new();
        batch.put(Keyspace::Records, b"ab1".to_vec(), b"one".to_vec());
        batch.put(Keyspace::Records, b"ab2".to_vec(), b"two".to_vec());
        batch.put(Keyspace::Records, b"ac1".to_vec(), b"other".to_vec());
        batch.put(Keyspace::Deks, b"ab1".to_vec(), b"elsewhere".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let get = |ks, k: &[u8]| store.get(ks, k).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(Keyspace::Records, b"ab1").as_deref(), Some(&b"one"[..]));
        assert_eq!(
            get(Keyspace::Deks, b"ab1").as_deref(),
            Some(&b"elsewhere"[..])
        );
        assert_eq!(get(Keyspace::Meta, b"ab1"), None);
        let many = store
            .multi_get(
                Keyspace::Records,
                &[b"ab2".to_vec(), b"zz".to_vec(), b"ab1".to_vec()],
            )
            .unwrap_or_default();
        assert_eq!(many, [Some(b"two".to_vec()), None, Some(b"one".to_vec())]);
        let scan = store
            .scan_prefix(Keyspace::Records, b"ab")
            .unwrap_or_default();
        let keys: Vec<&[u8]> = scan.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(
            keys,
            [&b"ab1"[..], &b"ab2"[..]],
            "prefix scan is ordered and bounded"
        );
        assert!(
            store
                .scan_prefix(Keyspace::Index, b"")
                .unwrap_or_default()
                .is_empty()
        );

        // A batch is applied in order: a put then a delete of the same key leaves nothing.
        let mut batch = Batch::new();
        batch.put(Keyspace::Records, b"ab3".to_vec(), b"three".to_vec());
        batch.delete(Keyspace::Records, b"ab3".to_vec());
        batch.delete(Keyspace::Records, b"ab1".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(get(Keyspace::Records, b"ab3"), None);
        assert_eq!(get(Keyspace::Records, b"ab1"), None);
        assert_eq!(get(Keyspace::Records, b"ab2").as_deref(), Some(&b"two"[..]));
        store
            .purge(&[(Keyspace::Records, b"ab")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            get(Keyspace::Records, b"ab2").as_deref(),
            Some(&b"two"[..]),
            "purge keeps live data"
        );
        assert_eq!(
            get(Keyspace::Records, b"ac1").as_deref(),
            Some(&b"other"[..])
        );
        snapshots(store);
        ranges(store);
        preconditions(store);
    }

    /// A precondition that does not hold applies nothing of its batch; one that holds applies
    /// all of it; and compare-and-set from several threads at once loses no increment.
    fn preconditions(store: &dyn Store) {
        let get = |k: &[u8]| {
            store
                .get(Keyspace::Meta, k)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let mut batch = Batch::new();
        batch.expect(Keyspace::Meta, b"p/head".to_vec(), None);
        batch.put(Keyspace::Meta, b"p/head".to_vec(), b"1".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        // Expected absent, but present: nothing of the batch is applied.
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, b"p/other".to_vec(), b"x".to_vec());
        batch.expect(Keyspace::Meta, b"p/head".to_vec(), None);
        batch.put(Keyspace::Meta, b"p/head".to_vec(), b"9".to_vec());
        assert!(matches!(
            store.write(batch),
            Err(StoreError::Conflict("meta"))
        ));
        // Expected another value: the same.
        let mut batch = Batch::new();
        batch.expect(Keyspace::Meta, b"p/head".to_vec(), Some(b"0".to_vec()));
        batch.put(Keyspace::Meta, b"p/other".to_vec(), b"x".to_vec());
        assert!(matches!(
            store.write(batch),
            Err(StoreError::Conflict("meta"))
        ));
        assert_eq!(
            get(b"p/other"),
            None,
            "a failed precondition applies nothing"
        );
        assert_eq!(get(b"p/head").as_deref(), Some(&b"1"[..]));

        let threads = 4;
        let each = 25;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    for _ in 0..each {
                        loop {
                            let now = get(b"p/head");
                            let n: u64 = now
                                .as_deref()
                                .map(|v| String::from_utf8_lossy(v).parse().unwrap_or(0))
                                .unwrap_or(0);
                            let mut batch = Batch::new();
                            batch.expect(Keyspace::Meta, b"p/head".to_vec(), now);
                            batch.put(
                                Keyspace::Meta,
                                b"p/head".to_vec(),
                                (n + 1).to_string().into_bytes(),
                            );
                            match store.write(batch) {
                                Ok(()) => break,
                                Err(StoreError::Conflict(_)) => {}
                                Err(e) => panic!("{e}"),
                            }
                        }
                    }
                });
            }
        });
        assert_eq!(
            get(b"p/head"),
            Some((1 + threads * each).to_string().into_bytes()),
            "compare-and-set lost an update"
        );
    }

    /// A snapshot sees the store as it was when taken, through every read, and a purge refuses
    /// to run while a snapshot older than it could keep deleted values alive.
    fn snapshots(store: &dyn Store) {
        let mut batch = Batch::new();
        batch.put(Keyspace::Deks, b"s1".to_vec(), b"header-1".to_vec());
        batch.put(Keyspace::Records, b"s1a".to_vec(), b"old-a".to_vec());
        batch.put(Keyspace::Records, b"s1b".to_vec(), b"old-b".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let snap = store.snapshot();
        let mut batch = Batch::new();
        batch.put(Keyspace::Deks, b"s1".to_vec(), b"header-2".to_vec());
        batch.put(Keyspace::Records, b"s1a".to_vec(), b"new-a".to_vec());
        batch.delete(Keyspace::Records, b"s1b".to_vec());
        batch.put(Keyspace::Records, b"s1c".to_vec(), b"new-c".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let old = |ks, k: &[u8]| snap.get(ks, k).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            old(Keyspace::Deks, b"s1").as_deref(),
            Some(&b"header-1"[..])
        );
        assert_eq!(old(Keyspace::Records, b"s1c"), None);
        let many = snap
            .multi_get(
                Keyspace::Records,
                &[b"s1a".to_vec(), b"s1b".to_vec(), b"s1c".to_vec()],
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            many,
            [Some(b"old-a".to_vec()), Some(b"old-b".to_vec()), None]
        );
        let scan = snap
            .scan_prefix(Keyspace::Records, b"s1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            scan,
            [
                (b"s1a".to_vec(), b"old-a".to_vec()),
                (b"s1b".to_vec(), b"old-b".to_vec())
            ]
        );
        // The store itself moved on.
        let now = store
            .scan_prefix(Keyspace::Records, b"s1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            now,
            [
                (b"s1a".to_vec(), b"new-a".to_vec()),
                (b"s1c".to_vec(), b"new-c".to_vec())
            ]
        );
        // The snapshot still holds the deleted `s1b`: a purge now would leave it in the files.
        assert!(
            store.purge(&[(Keyspace::Records, b"s1b")]).is_err(),
            "a purge must not report success while an older snapshot keeps deleted data"
        );
        drop(snap);
        store
            .purge(&[(Keyspace::Records, b"s1b")])
            .unwrap_or_else(|e| panic!("{e}"));
        // A snapshot taken now sees the new state.
        let snap = store.snapshot();
        assert_eq!(
            snap.get(Keyspace::Deks, b"s1")
                .unwrap_or_else(|e| panic!("{e}"))
                .as_deref(),
            Some(&b"header-2"[..])
        );
    }

    /// A range delete removes exactly `from <= key < to`, in the batch's order.
    fn ranges(store: &dyn Store) {
        let mut batch = Batch::new();
        for k in [&b"r1"[..], b"r2", b"r3", b"r4"] {
            batch.put(Keyspace::Audit, k.to_vec(), b"v".to_vec());
        }
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let mut batch = Batch::new();
        batch.delete_range(Keyspace::Audit, b"r2".to_vec(), b"r4".to_vec());
        batch.put(Keyspace::Audit, b"r5".to_vec(), b"v".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let keys: Vec<Vec<u8>> = store
            .scan_prefix(Keyspace::Audit, b"r")
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, [b"r1".to_vec(), b"r4".to_vec(), b"r5".to_vec()]);
        assert_eq!(
            store
                .get(Keyspace::Records, b"ab2")
                .unwrap_or_else(|e| panic!("{e}"))
                .as_deref(),
            Some(&b"two"[..]),
            "a range delete touches only its keyspace"
        );
    }

    #[test]
    fn memory_store_conforms() {
        suite(&MemoryStore::new());
    }

    #[test]
    fn rocks_store_conforms() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        suite(&RocksStore::open(dir.path()).unwrap_or_else(|e| panic!("{e}")));
    }

    /// Against the test cluster `make test` starts (`scripts/pg-cluster.sh`), in a schema of
    /// its own.
    #[test]
    fn postgres_store_conforms() {
        let store = PgStore::open(&postgres::test_options("conformance", 2))
            .unwrap_or_else(|e| panic!("{e}"));
        suite(&store);
    }

    #[test]
    fn prefix_end_is_the_next_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
