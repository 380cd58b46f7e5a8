//! Per-record write locks: updates and shreds of one record are serialized (no lost update, no
//! update resurrecting a shredded record) without a global lock.

use crate::domain::RecordId;

/// Serializes writers of the same record (update vs update vs shred) without a global lock.
pub(super) struct RecordLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl RecordLocks {
    pub(super) fn new(n: usize) -> Self {
        Self {
            stripes: (0..n).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    pub(super) async fn lock(&self, id: &RecordId) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripes[self.stripe(id)].lock().await
    }

    /// Locks every record of `ids` at once: their stripes, each once, in ascending order, so
    /// that two callers of `lock_all` cannot deadlock (and a `lock` holds one stripe only).
    pub(super) async fn lock_all(&self, ids: &[RecordId]) -> Vec<tokio::sync::MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = ids.iter().map(|id| self.stripe(id)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        let mut guards = Vec::with_capacity(stripes.len());
        for i in stripes {
            guards.push(self.stripes[i].lock().await);
        }
        guards
    }

    /// Locks the stripe of a 16-byte key that is not a record id (an idempotency key's
    /// digest): callers with the same key are serialized.
    pub(super) async fn lock_key(&self, key: [u8; 16]) -> tokio::sync::MutexGuard<'_, ()> {
        self.lock(&RecordId::from_bytes(key)).await
    }

    fn stripe(&self, id: &RecordId) -> usize {
        let b = id.as_bytes();
        let n = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        // `stripes` is never empty (built with a fixed positive count).
        usize::try_from(n % self.stripes.len() as u64).unwrap_or(0)
    }
}
