//! An in-memory store with the same semantics as RocksDB's (atomic batches, ordered keys,
//! snapshots). Used by the storage conformance tests and by unit tests that need no disk.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError, Weak},
};

use super::{Batch, KeyValue, Keyspace, Op, Snapshot, Store, StoreError};

/// A store held in memory. The map is shared copy-on-write with its snapshots: taking one is
/// O(1), and the first write while one lives copies the map.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Arc<Entries>>,
    /// Maps replaced by a write while a snapshot shared them: they may hold deleted values
    /// for as long as the snapshot lives.
    retired: Mutex<Vec<Weak<Entries>>>,
}

type Entries = BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn current(&self) -> Arc<Entries> {
        Arc::clone(&self.data.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn get(data: &Entries, ks: Keyspace, key: &[u8]) -> Option<Vec<u8>> {
    data.get(&(ks, key.to_vec())).cloned()
}

fn multi_get(data: &Entries, ks: Keyspace, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
    keys.iter()
        .map(|k| data.get(&(ks, k.clone())).cloned())
        .collect()
}

fn scan_prefix(data: &Entries, ks: Keyspace, prefix: &[u8]) -> Vec<KeyValue> {
    data.range((ks, prefix.to_vec())..)
        .take_while(|((k_ks, key), _)| *k_ks == ks && key.starts_with(prefix))
        .map(|((_, key), value)| (key.clone(), value.clone()))
        .collect()
}

/// A snapshot: the map as it was, shared until the store next writes.
struct MemorySnapshot(Arc<Entries>);

impl Snapshot for MemorySnapshot {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(get(&self.0, ks, key))
    }

    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(multi_get(&self.0, ks, keys))
    }

    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        Ok(scan_prefix(&self.0, ks, prefix))
    }
}

impl Store for MemoryStore {
    fn snapshot(&self) -> Box<dyn Snapshot + '_> {
        Box::new(MemorySnapshot(self.current()))
    }

    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(get(&self.current(), ks, key))
    }

    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(multi_get(&self.current(), ks, keys))
    }

    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        Ok(scan_prefix(&self.current(), ks, prefix))
    }

    fn scan_range(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let data = self.current();
        Ok(data
            .range((ks, from.to_vec())..)
            .take_while(|((k_ks, key), _)| *k_ks == ks && to.is_none_or(|to| key.as_slice() < to))
            .take(limit)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError> {
        let data = self.current();
        Ok(data
            .range((ks, Vec::new())..)
            .take_while(|((k_ks, _), _)| *k_ks == ks)
            .last()
            .map(|((_, key), value)| (key.clone(), value.clone())))
    }

    fn shared(&self) -> bool {
        false
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut guard = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        super::check_expected(&batch, |ks, key| {
            Ok(guard.get(&(ks, key.to_vec())).cloned())
        })?;
        if Arc::strong_count(&guard) > 1 {
            self.retired
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::downgrade(&guard));
        }
        // Copies the map only if a snapshot shares it.
        let data = Arc::make_mut(&mut guard);
        for op in batch.ops() {
            match op {
                Op::Delete(ks, key) => {
                    data.remove(&(*ks, key.clone()));
                }
                Op::DeleteRange(ks, from, to) if from < to => {
                    let doomed: Vec<_> = data
                        .range((*ks, from.clone())..(*ks, to.clone()))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in doomed {
                        data.remove(&key);
                    }
                }
                Op::DeleteRange(..) | Op::Expect(..) => {}
                Op::Put(ks, key, value) => {
                    data.insert((*ks, key.clone()), value.clone());
                }
            }
        }
        Ok(())
    }

    fn purge(&self, _prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError> {
        // Deleted entries leave memory as soon as the batch is applied, unless a snapshot
        // still shares the map that holds them.
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        retired.retain(|map| map.strong_count() > 0);
        if retired.is_empty() {
            Ok(())
        } else {
            Err(StoreError::Io(
                "a read snapshot older than the purge still holds the deleted values".into(),
            ))
        }
    }
}
