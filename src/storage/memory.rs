//! An in-memory store with the same semantics as RocksDB's (atomic batches, ordered keys).
//! Used by the storage conformance tests and by unit tests that need no disk.

use std::{
    collections::BTreeMap,
    sync::{Mutex, PoisonError},
};

use super::{Batch, KeyValue, Keyspace, Op, Store, StoreError};

/// A store held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    data: Mutex<Entries>,
}

type Entries = BTreeMap<(Keyspace, Vec<u8>), Vec<u8>>;

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data.get(&(ks, key.to_vec())).cloned())
    }

    fn multi_get(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(keys
            .iter()
            .map(|k| data.get(&(ks, k.clone())).cloned())
            .collect())
    }

    fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data
            .range((ks, prefix.to_vec())..)
            .take_while(|((k_ks, key), _)| *k_ks == ks && key.starts_with(prefix))
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn scan_range(
        &self,
        ks: Keyspace,
        from: &[u8],
        to: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data
            .range((ks, from.to_vec())..)
            .take_while(|((k_ks, key), _)| *k_ks == ks && to.is_none_or(|to| key.as_slice() < to))
            .take(limit)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }

    fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError> {
        let data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(data
            .range((ks, Vec::new())..)
            .take_while(|((k_ks, _), _)| *k_ks == ks)
            .last()
            .map(|((_, key), value)| (key.clone(), value.clone())))
    }

    fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        for op in batch.ops() {
            match op {
                Op::Delete(ks, key) => {
                    data.remove(&(*ks, key.clone()));
                }
                Op::Put(ks, key, value) => {
                    data.insert((*ks, key.clone()), value.clone());
                }
            }
        }
        Ok(())
    }

    fn purge(&self, _prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError> {
        // Deleted entries are gone from memory as soon as the batch is applied.
        Ok(())
    }
}
