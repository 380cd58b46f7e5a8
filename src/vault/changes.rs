//! What other vault nodes changed: several `strongroom serve` processes on one shared store
//! (PostgreSQL) each keep the tokens, the compiled policy and the key provider's epochs in
//! memory. Every change of one of them writes a fresh random stamp under `changes/<what>` in
//! `meta`, in the batch of the change itself; every node reads the stamps every
//! `POLL_INTERVAL` and reloads what changed.
//!
//! Polling, not PostgreSQL's LISTEN/NOTIFY: the stamps go through the `Store` trait like every
//! other write, so the same code works on any store (CockroachDB has no LISTEN/NOTIFY); a node
//! that was disconnected cannot miss a notification, because the stamp is state, not a message;
//! and the cost is one indexed read of three keys per node every quarter second. A stamp is
//! random rather than a counter, so two nodes changing at once never write the same value (a
//! node that saw the first would miss the second).

use std::{sync::Arc, time::Duration};

use rand::RngCore;

use super::{governance::Governance, tokens::TokenRegistry};
use crate::{
    crypto::KeyProvider,
    storage::{Batch, Keyspace, Snapshot, Store},
};

/// How often a node reads the stamps: a change on one node is acted on by every other within
/// this plus the reload.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A token issued, rotated or revoked.
    Tokens,
    /// A policy version applied (or rolled back to).
    Policy,
    /// A key epoch added or destroyed.
    Keys,
}

impl Change {
    const ALL: [Self; 3] = [Self::Tokens, Self::Policy, Self::Keys];

    fn key(self) -> &'static [u8] {
        match self {
            Self::Tokens => b"changes/tokens",
            Self::Policy => b"changes/policy",
            Self::Keys => b"changes/keys",
        }
    }
}

/// Adds a fresh stamp for `change` to `batch` (the nodes that read it reload); returns it.
pub(crate) fn stamp(batch: &mut Batch, change: Change) -> Vec<u8> {
    let mut value = vec![0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut value);
    batch.put(Keyspace::Meta, change.key().to_vec(), value.clone());
    value
}

/// Adds to `batch` the precondition that `change`'s stamp is still `seen`: a decision taken
/// on what was read at `seen` fails with a conflict if a node changed that kind of thing since.
pub(crate) fn expect(batch: &mut Batch, change: Change, seen: Stamp) {
    batch.expect(Keyspace::Meta, change.key().to_vec(), seen);
}

/// `change`'s stamp as `snapshot` holds it.
///
/// # Errors
/// `StoreError` if the store fails.
pub(crate) fn stamp_in(
    snapshot: &dyn Snapshot,
    change: Change,
) -> Result<Stamp, crate::storage::StoreError> {
    snapshot.get(Keyspace::Meta, change.key())
}

/// A stamp as read (`None`: never written).
pub type Stamp = Option<Vec<u8>>;

/// The stamps a node last acted on.
pub struct Watcher {
    store: Arc<dyn Store>,
    seen: Vec<Stamp>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Starts from the stamps as they are now (what is in memory was loaded after them).
    ///
    /// # Errors
    /// `StoreError` if the store fails.
    pub fn new(store: Arc<dyn Store>) -> Result<Self, crate::storage::StoreError> {
        let seen = read(store.as_ref())?;
        Ok(Self { store, seen })
    }

    /// What changed since the stamps were last marked seen, with the stamp each change is at.
    ///
    /// # Errors
    /// `StoreError` if the store fails; the changes are then reported by a later call.
    pub fn changed(&self) -> Result<Vec<(Change, Stamp)>, crate::storage::StoreError> {
        let now = read(self.store.as_ref())?;
        Ok(Change::ALL
            .iter()
            .zip(self.seen.iter().zip(now))
            .filter(|(_, (before, after))| *before != after)
            .map(|(c, (_, after))| (*c, after))
            .collect())
    }

    /// Marks `change` as acted on at `stamp`: only a reload that succeeded does, so a failed
    /// one is tried again at the next poll.
    pub fn seen(&mut self, change: Change, stamp: Stamp) {
        if let Some(i) = Change::ALL.iter().position(|c| *c == change)
            && let Some(slot) = self.seen.get_mut(i)
        {
            *slot = stamp;
        }
    }
}

/// What a node reloads when another changed it.
pub struct Followed {
    /// The token registry.
    pub tokens: Arc<TokenRegistry>,
    /// The policy.
    pub governance: Arc<Governance>,
    /// The key provider.
    pub provider: Arc<dyn KeyProvider>,
}

impl Followed {
    /// Reloads what `change` names; `false` (logged) if that failed.
    async fn reload(&self, change: Change) -> bool {
        let failed = match change {
            Change::Tokens => self
                .tokens
                .reload(&self.governance.engine())
                .await
                .err()
                .map(|e| e.to_string()),
            Change::Policy => self.governance.reload().await.err().map(|e| e.to_string()),
            Change::Keys => {
                let provider = Arc::clone(&self.provider);
                match tokio::task::spawn_blocking(move || provider.refresh()).await {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(e) => Some(e.to_string()),
                }
            }
        };
        if let Some(e) = &failed {
            tracing::error!(?change, error = %e, "reloading a change made by another vault node failed; trying again");
        }
        failed.is_none()
    }
}

/// Reads the stamps every `POLL_INTERVAL` and reloads what another node changed, until
/// aborted. A reload that fails is tried again at the next poll.
pub async fn follow(followed: Followed, watcher: Watcher) {
    let watcher = Arc::new(std::sync::Mutex::new(watcher));
    let mut every = tokio::time::interval(POLL_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let reading = Arc::clone(&watcher);
        let changed = tokio::task::spawn_blocking(move || {
            reading
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .changed()
        })
        .await;
        let changed = match changed {
            Ok(Ok(changed)) => changed,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the change stamps failed; trying again");
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the change stamps failed; trying again");
                continue;
            }
        };
        for (change, stamp) in changed {
            if followed.reload(change).await {
                watcher
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .seen(change, stamp);
            }
        }
    }
}

fn read(store: &dyn Store) -> Result<Vec<Stamp>, crate::storage::StoreError> {
    let keys: Vec<Vec<u8>> = Change::ALL.iter().map(|c| c.key().to_vec()).collect();
    store.multi_get(Keyspace::Meta, &keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[test]
    fn every_stamp_is_seen_once_even_two_at_once() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let mut watcher = Watcher::new(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}"));
        assert!(watcher.changed().unwrap_or_default().is_empty());
        for _ in 0..2 {
            let mut batch = Batch::new();
            stamp(&mut batch, Change::Tokens);
            store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut batch = Batch::new();
        stamp(&mut batch, Change::Keys);
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let changed = watcher.changed().unwrap_or_default();
        let kinds: Vec<Change> = changed.iter().map(|(c, _)| *c).collect();
        assert_eq!(kinds, [Change::Tokens, Change::Keys]);
        // Until a reload marks it seen, a change is reported again.
        let (tokens, stamp) = changed.into_iter().next().unwrap_or((Change::Tokens, None));
        watcher.seen(tokens, stamp);
        let again: Vec<Change> = watcher
            .changed()
            .unwrap_or_default()
            .iter()
            .map(|(c, _)| *c)
            .collect();
        assert_eq!(
            again,
            [Change::Keys],
            "a change not marked seen is reported again"
        );
    }
}
