//! The key store: every record's wrapped data key, in a store of its own in the keys dir, apart
//! from the data store. A copy of the data dir therefore holds no key: restored next to the
//! live key store, it cannot bring back a record whose key was destroyed since (a shred, or an
//! update's old version). An old copy of the key store dies when the epochs its keys were
//! wrapped under are destroyed (rotation).
//!
//! Entry: key `record id | version u64`, value `0x01 | epoch u32 | manifest u64 | flags+len u8 |
//! collection | wrapped DEK`, the byte before the collection holding its length in its low 7 bits
//! and the honeytoken flag in its top bit (as in the record header; entries written before the
//! flag existed have it clear). The wrapped key's AAD binds record id, epoch, collection,
//! version, manifest and honeytoken flag (`crypto::DekContext`); reads check it against the data
//! store's header, and rotation reads it from the entry itself, so that rewrapping needs no
//! data-store read.
//!
//! Writes are synced. One lock orders them against rotation: storing a new key and deleting
//! keys share it, while a rewrap chunk and an epoch's destruction hold it alone, so a key is
//! never stored under an epoch being destroyed and a rewrap never brings a deleted key back.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, PoisonError, RwLock},
};

use super::Error;
use crate::{
    crypto::{self, Dek, DekContext, EpochId, KeyError, KeyProvider, WrappedDek},
    domain::RecordId,
    storage::{Batch, Keyspace, Store, StoreError, prefix_end},
};

const ENTRY_V1: u8 = 0x01;
/// The top bit of an entry's collection length byte: set for a honeytoken's key.
const HONEYTOKEN_BIT: u8 = 0x80;

/// Where the key store records each shredded record (in its `meta`), written in the batch that
/// deletes the record's keys: reconcile finishes a shred only for a record named here.
const SHREDDED_PREFIX: &[u8] = b"shredded/";

fn shredded_key(id: &RecordId) -> Vec<u8> {
    let mut key = SHREDDED_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// Set in the key store's `meta` by the first vault that used it.
const INITIALIZED_KEY: &[u8] = b"initialized";

/// Where the key store keeps each epoch's creation time (in its `meta`).
const EPOCH_PREFIX: &[u8] = b"epoch/";
/// The current epoch as the key store knows it (`u32` big-endian): every data key is written
/// expecting it, so a vault node whose provider still names an older epoch (another node just
/// rotated) cannot store a key under an epoch about to be destroyed. It reloads and wraps again.
const CURRENT_EPOCH_KEY: &[u8] = b"current-epoch";

/// A stored key: its epoch, the context it is bound to, and the wrapped bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) epoch: EpochId,
    pub(crate) manifest: u64,
    pub(crate) collection: String,
    pub(crate) honeytoken: bool,
    pub(crate) wrapped: WrappedDek,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        let coll = self.collection.as_bytes();
        let mut out = Vec::with_capacity(1 + 4 + 8 + 1 + coll.len() + self.wrapped.0.len());
        out.push(ENTRY_V1);
        out.extend_from_slice(&self.epoch.0.to_be_bytes());
        out.extend_from_slice(&self.manifest.to_be_bytes());
        // Collection names are identifiers of at most 64 bytes: the length fits in 7 bits.
        let len = u8::try_from(coll.len()).unwrap_or(u8::MAX) & !HONEYTOKEN_BIT;
        out.push(if self.honeytoken {
            len | HONEYTOKEN_BIT
        } else {
            len
        });
        out.extend_from_slice(coll);
        out.extend_from_slice(&self.wrapped.0);
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != ENTRY_V1 {
            return None;
        }
        let epoch = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?);
        let manifest = u64::from_be_bytes(rest.get(4..12)?.try_into().ok()?);
        let flags_len = *rest.get(12)?;
        let honeytoken = flags_len & HONEYTOKEN_BIT != 0;
        let len = usize::from(flags_len & !HONEYTOKEN_BIT);
        let collection = std::str::from_utf8(rest.get(13..13 + len)?)
            .ok()?
            .to_owned();
        let wrapped = rest.get(13 + len..)?.to_vec();
        Some(Self {
            epoch: EpochId(epoch),
            manifest,
            collection,
            honeytoken,
            wrapped: WrappedDek(wrapped),
        })
    }
}

/// The key of a record's key at `version`.
pub(crate) fn entry_key(id: &RecordId, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(24);
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// The first entry key after every version of `id`'s keys.
fn record_end(id: &RecordId) -> Vec<u8> {
    // A 16-byte id of all 0xff has no prefix end; every entry key of it is 24 bytes.
    prefix_end(id.as_bytes()).unwrap_or_else(|| vec![0xff; 25])
}

/// The record id and version of an entry key.
pub(crate) fn parse_entry_key(key: &[u8]) -> Option<([u8; 16], u64)> {
    let id: [u8; 16] = key.get(..16)?.try_into().ok()?;
    let version = u64::from_be_bytes(key.get(16..24)?.try_into().ok()?);
    (key.len() == 24).then_some((id, version))
}

fn key_error(id: &RecordId, e: &KeyError) -> Error {
    match e {
        KeyError::Decrypt => {
            tracing::error!(record = %id, "data key failed to unwrap");
            Error::DataLoss
        }
        KeyError::UnknownEpoch(epoch) => {
            // The epoch is destroyed: the key is gone for good, as after a shred.
            tracing::warn!(record = %id, epoch = epoch.0, "data key wrapped under a destroyed epoch");
            Error::NotFound
        }
        KeyError::Provider(message) => Error::Unavailable(format!("key provider: {message}")),
    }
}

/// What one pass of rewrapping did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Rewrapped {
    /// Keys moved to the current epoch.
    pub(crate) moved: u64,
    /// Where the next chunk starts; `None` at the end of the store.
    pub(crate) next: Option<Vec<u8>>,
}

/// The wrapped data keys and the provider that wraps them.
pub(crate) struct KeyStore {
    store: Arc<dyn Store>,
    keys: Arc<dyn KeyProvider>,
    gate: Arc<RwLock<()>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    pub(crate) fn new(store: Arc<dyn Store>, keys: Arc<dyn KeyProvider>) -> Self {
        Self {
            store,
            keys,
            gate: Arc::new(RwLock::new(())),
        }
    }

    pub(crate) fn provider(&self) -> &Arc<dyn KeyProvider> {
        &self.keys
    }

    /// Wraps `dek` under the current epoch and stores it for `id` at `ctx.record_version`,
    /// synced, unless a key is stored there already: then returns `false` and writes nothing.
    /// The version a writer claims this way is its own, whichever vault node it runs on.
    pub(crate) async fn put_new(
        &self,
        id: &RecordId,
        ctx: &DekContext<'_>,
        dek: &Dek,
    ) -> Result<bool, Error> {
        self.write_keys(&[(id, ctx, dek)], true).await
    }

    /// Wraps each key under the current epoch and stores them all in one synced write (a
    /// batch of creates pays for one sync). For new records: their ids are fresh.
    pub(crate) async fn put_many(
        &self,
        keys: &[(&RecordId, &DekContext<'_>, &Dek)],
    ) -> Result<(), Error> {
        self.write_keys(keys, false).await.map(|_| ())
    }

    /// Wraps and writes `keys`; with `new_only`, only where no key is stored yet (`false`:
    /// one was, and nothing was written).
    async fn write_keys(
        &self,
        keys: &[(&RecordId, &DekContext<'_>, &Dek)],
        new_only: bool,
    ) -> Result<bool, Error> {
        loop {
            let epoch = self.keys.current();
            let mut batch = Batch::new();
            for &(id, ctx, dek) in keys {
                let wrapped = crypto::wrap_dek(self.keys.as_ref(), epoch, dek, ctx)
                    .map_err(|e| key_error(id, &e))?;
                let entry = Entry {
                    epoch,
                    manifest: ctx.manifest,
                    collection: ctx.collection.to_owned(),
                    honeytoken: ctx.honeytoken,
                    wrapped,
                };
                let key = entry_key(id, ctx.record_version);
                if new_only {
                    // A new version's key: its slot free, and the record never shredded (a
                    // shred on another vault node may have begun after the update read it).
                    batch.expect(Keyspace::Deks, key.clone(), None);
                    batch.expect(Keyspace::Meta, shredded_key(id), None);
                }
                batch.put(Keyspace::Deks, key, entry.encode());
            }
            batch.expect(
                Keyspace::Meta,
                CURRENT_EPOCH_KEY.to_vec(),
                Some(epoch.0.to_be_bytes().to_vec()),
            );
            let store = Arc::clone(&self.store);
            let provider = Arc::clone(&self.keys);
            let gate = Arc::clone(&self.gate);
            let stored = tokio::task::spawn_blocking(move || {
                let _shared = gate.read().unwrap_or_else(PoisonError::into_inner);
                // Under the shared lock an epoch cannot be destroyed: if it is still live now,
                // the rotation's final check will see these keys.
                if !provider.epochs().contains(&epoch) {
                    return Ok(None);
                }
                match store.write(batch) {
                    Ok(()) => Ok(Some(true)),
                    Err(StoreError::Conflict(_)) => Ok(Some(false)),
                    Err(e) => Err(e),
                }
            })
            .await
            .map_err(|e| Error::Internal(format!("key store write task failed: {e}")))??;
            match stored {
                Some(true) => return Ok(true),
                // The current epoch moved (or was never recorded): catch up, wrap again.
                Some(false) if !self.sync_current_epoch(epoch).await? => {}
                // The epoch stands: a slot was taken, unless the epoch was only recorded
                // meanwhile (then the write is tried again). Without `new_only` no slot is
                // expected, so only the latter can be.
                Some(false) if new_only => {
                    for &(id, _, _) in keys {
                        if self.was_shredded(id)? {
                            tracing::info!(record = %id, "an update lost to a shred on another vault node");
                            return Err(Error::NotFound);
                        }
                    }
                    let slots: Vec<Vec<u8>> = keys
                        .iter()
                        .map(|(id, ctx, _)| entry_key(id, ctx.record_version))
                        .collect();
                    let taken = self.store.multi_get(Keyspace::Deks, &slots)?;
                    if taken.iter().any(Option::is_some) {
                        return Ok(false);
                    }
                }
                Some(false) => {}
                None => {}
            }
        }
    }

    /// After a conflict on a key write under `epoch`: `true` if the key store's current epoch
    /// is `epoch` (the conflict was on a data key's slot). Otherwise reloads the provider's
    /// epochs, records the provider's current epoch if the key store's is older or missing,
    /// and returns `false` (wrap again under the provider's current epoch).
    ///
    /// # Errors
    /// `Unavailable` if the key store names a newer epoch than this node's provider holds (the
    /// nodes do not share one keyring or HSM token), or if a store or the provider fails.
    async fn sync_current_epoch(&self, epoch: EpochId) -> Result<bool, Error> {
        let recorded = self.recorded_epoch()?;
        if recorded == Some(epoch) {
            return Ok(true);
        }
        let keys = Arc::clone(&self.keys);
        tokio::task::spawn_blocking(move || keys.refresh())
            .await
            .map_err(|e| Error::Internal(format!("key provider task failed: {e}")))?
            .map_err(|e| Error::Unavailable(format!("key provider: {e}")))?;
        let current = self.keys.current();
        match recorded {
            Some(r) if r > current => Err(Error::Unavailable(format!(
                "the key store's current epoch is {r}, and this node's key provider holds only                  up to {current}: every vault node must share one keyring file (the same keys                  dir) or one HSM token"
            ))),
            Some(r) if r == current => Ok(false),
            _ => {
                self.record_current_epoch(recorded, current)?;
                Ok(false)
            }
        }
    }

    fn recorded_epoch(&self) -> Result<Option<EpochId>, Error> {
        Ok(self
            .meta(CURRENT_EPOCH_KEY)?
            .and_then(|v| <[u8; 4]>::try_from(v.as_slice()).ok())
            .map(|b| EpochId(u32::from_be_bytes(b))))
    }

    /// Records `current` as the key store's current epoch, if it still is `was` (another node
    /// may have recorded a newer one meanwhile: then that one stays).
    fn record_current_epoch(&self, was: Option<EpochId>, current: EpochId) -> Result<(), Error> {
        let mut batch = Batch::new();
        batch.expect(
            Keyspace::Meta,
            CURRENT_EPOCH_KEY.to_vec(),
            was.map(|e| e.0.to_be_bytes().to_vec()),
        );
        batch.put(
            Keyspace::Meta,
            CURRENT_EPOCH_KEY.to_vec(),
            current.0.to_be_bytes().to_vec(),
        );
        match self.store.write(batch) {
            Ok(()) => Ok(()),
            // Another node recorded one meanwhile, or the database kept aborting the write for
            // other writers: only a recorded epoch at least as new fences the older ones.
            Err(StoreError::Conflict(_)) => match self.recorded_epoch()? {
                Some(r) if r >= current => Ok(()),
                Some(_) | None => Err(Error::Unavailable(
                    "recording the current key epoch kept losing to other writers; try again"
                        .into(),
                )),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Records the provider's current epoch as the key store's (after a rotation added it):
    /// from then on no vault node stores a key under an older one.
    ///
    /// # Errors
    /// `Unavailable` if the store fails.
    pub(crate) fn fence_epoch(&self) -> Result<(), Error> {
        let current = self.keys.current();
        let recorded = self.recorded_epoch()?;
        if recorded.is_none_or(|r| r < current) {
            self.record_current_epoch(recorded, current)?;
        }
        Ok(())
    }

    /// The data key of `id` at `ctx.record_version`; `None` if the store holds none (the record
    /// was shredded, or updated since the caller read its header).
    pub(crate) fn get(&self, id: &RecordId, ctx: &DekContext<'_>) -> Result<Option<Dek>, Error> {
        let key = entry_key(id, ctx.record_version);
        let mut retried = false;
        loop {
            let Some(bytes) = self.store.get(Keyspace::Deks, &key)? else {
                return Ok(None);
            };
            let entry = Entry::decode(&bytes).ok_or_else(|| {
                tracing::error!(record = %id, "stored data key is malformed");
                Error::DataLoss
            })?;
            match crypto::unwrap_dek(self.keys.as_ref(), entry.epoch, &entry.wrapped, ctx) {
                Ok(dek) => return Ok(Some(dek)),
                // Rewrapped and its old epoch destroyed between the read and the unwrap.
                Err(KeyError::UnknownEpoch(_)) if !retried => retried = true,
                Err(e) => return Err(key_error(id, &e)),
            }
        }
    }

    /// Whether a vault has used this key store before (a new one holds no keys for old data).
    pub(crate) fn initialized(&self) -> Result<bool, Error> {
        Ok(self.meta(INITIALIZED_KEY)?.is_some())
    }

    /// Marks the key store as used (synced).
    pub(crate) fn mark_initialized(&self) -> Result<(), Error> {
        if self.initialized()? {
            return Ok(());
        }
        self.set_meta(
            INITIALIZED_KEY,
            Some(crate::vault::now_ms().to_be_bytes().to_vec()),
        )
    }

    /// Shreds `id`'s keys: deletes every version and records the shred, in one synced batch.
    pub(crate) async fn shred(&self, id: &RecordId, at_ms: i64) -> Result<(), Error> {
        let mut batch = Batch::new();
        batch.put(
            Keyspace::Meta,
            shredded_key(id),
            at_ms.to_be_bytes().to_vec(),
        );
        self.delete_entries(entry_key(id, 0), record_end(id), batch)
            .await
    }

    /// Whether this key store recorded `id` as shredded.
    pub(crate) fn was_shredded(&self, id: &RecordId) -> Result<bool, Error> {
        Ok(self.meta(&shredded_key(id))?.is_some())
    }

    /// Every record this key store recorded as shredded.
    pub(crate) fn shredded(&self) -> Result<HashSet<[u8; 16]>, Error> {
        Ok(self
            .store
            .scan_prefix(Keyspace::Meta, SHREDDED_PREFIX)?
            .into_iter()
            .filter_map(|(k, _)| <[u8; 16]>::try_from(&k[SHREDDED_PREFIX.len()..]).ok())
            .collect())
    }

    /// Whether the store holds a key of any version for `id`.
    pub(crate) fn holds_any(&self, id: &RecordId) -> Result<bool, Error> {
        let end = record_end(id);
        Ok(!self
            .store
            .scan_range(Keyspace::Deks, id.as_bytes(), Some(&end), 1)?
            .is_empty())
    }

    /// Deletes `id`'s keys of the versions in `versions`, synced.
    pub(crate) async fn delete(
        &self,
        id: &RecordId,
        versions: std::ops::Range<u64>,
    ) -> Result<(), Error> {
        self.delete_entries(
            entry_key(id, versions.start),
            entry_key(id, versions.end),
            Batch::new(),
        )
        .await
    }

    /// Deletes the key entries in `from..to` with `batch`, in one synced write. The entries
    /// are listed and deleted one by one on a blocking thread, under the shared side of the
    /// gate: never between a rewrap chunk's check and its write, nor during an epoch's
    /// destruction, nor between the listing and the delete. A range tombstone instead would
    /// make every read of the key store's memtable fragment all of them until its next flush,
    /// and a retention sweep or an update-heavy load leaves thousands.
    async fn delete_entries(
        &self,
        from: Vec<u8>,
        to: Vec<u8>,
        mut batch: Batch,
    ) -> Result<(), Error> {
        let store = Arc::clone(&self.store);
        let gate = Arc::clone(&self.gate);
        tokio::task::spawn_blocking(move || {
            let _shared = gate.read().unwrap_or_else(PoisonError::into_inner);
            for (key, _) in store.scan_range(Keyspace::Deks, &from, Some(&to), usize::MAX)? {
                batch.delete(Keyspace::Deks, key);
            }
            store.write(batch)
        })
        .await
        .map_err(|e| Error::Internal(format!("key store write task failed: {e}")))??;
        Ok(())
    }

    /// Checks that the provider opens the first stored key (if any): a keyring that is not the
    /// one the key store was written under is refused at start, rather than answering
    /// DATA_LOSS on every read.
    pub(crate) fn check_opens(&self) -> Result<(), String> {
        let Some((key, value)) = self
            .store
            .scan_range(Keyspace::Deks, &[], None, 1)
            .map_err(|e| e.to_string())?
            .into_iter()
            .next()
        else {
            return Ok(());
        };
        let (Some((id, version)), Some(entry)) = (parse_entry_key(&key), Entry::decode(&value))
        else {
            return Err("the key store's first entry is malformed".into());
        };
        let ctx = DekContext {
            record_id: &id,
            collection: &entry.collection,
            record_version: version,
            manifest: entry.manifest,
            honeytoken: entry.honeytoken,
        };
        match crypto::unwrap_dek(self.keys.as_ref(), entry.epoch, &entry.wrapped, &ctx) {
            Ok(_) => {
                // Every epoch the store names must be live: keys under a destroyed one are an
                // old copy of the store (taken before a rotation finished).
                let live = self.keys.epochs();
                let counts = self.counts().map_err(|e| e.to_string())?;
                match counts.iter().find(|(e, _)| !live.contains(e)) {
                    None => Ok(()),
                    Some((epoch, n)) => Err(format!(
                        "the key store holds {n} keys wrapped under epoch {epoch}, which the {} \
                         provider does not have (destroyed by a rotation: is this an old copy of \
                         the key store?)",
                        self.keys.kind()
                    )),
                }
            }
            Err(KeyError::UnknownEpoch(epoch)) => Err(format!(
                "the key store holds keys wrapped under epoch {epoch}, which the {} provider \
                 does not have (destroyed by a rotation: is this an old copy of the key store?, \
                 or another keyring)",
                self.keys.kind()
            )),
            Err(KeyError::Decrypt) => Err(format!(
                "the {} provider's keys do not open the key store's keys: this is not the \
                 keyring they were written under",
                self.keys.kind()
            )),
            Err(KeyError::Provider(e)) => Err(e),
        }
    }

    /// How many keys each epoch wraps (epochs that wrap none are absent).
    pub(crate) fn counts(&self) -> Result<BTreeMap<EpochId, u64>, Error> {
        let mut counts = BTreeMap::new();
        let mut cursor = Vec::new();
        loop {
            let chunk = self.store.scan_range(Keyspace::Deks, &cursor, None, 4096)?;
            let Some((last, _)) = chunk.last() else {
                return Ok(counts);
            };
            cursor = next_key(last);
            for (_, value) in &chunk {
                let epoch = Entry::decode(value).map_or(EpochId(0), |e| e.epoch);
                *counts.entry(epoch).or_insert(0) += 1;
            }
        }
    }

    /// Moves up to `limit` keys from `from` on that are wrapped under an older epoch than the
    /// current one to the current one. Holds the store to itself while it writes, so that no
    /// key deleted meanwhile comes back.
    /// The position after the chunk is written to `cursor_key` (in `meta`) in the same synced
    /// batch, so a restart resumes after the last chunk written.
    pub(crate) fn rewrap_chunk(
        &self,
        from: &[u8],
        limit: usize,
        cursor_key: &[u8],
    ) -> Result<Rewrapped, Error> {
        // A rotation resumed after a crash may not have recorded its epoch yet.
        self.fence_epoch()?;
        let chunk = self.store.scan_range(Keyspace::Deks, from, None, limit)?;
        let next = chunk.last().map(|(k, _)| next_key(k));
        let current = self.keys.current();
        let mut moved = Vec::new();
        for (key, value) in &chunk {
            let Some(entry) = Entry::decode(value) else {
                tracing::error!("a malformed entry in the key store is left as it is");
                continue;
            };
            if entry.epoch >= current {
                continue;
            }
            let Some((id, version)) = parse_entry_key(key) else {
                continue;
            };
            let ctx = DekContext {
                record_id: &id,
                collection: &entry.collection,
                record_version: version,
                manifest: entry.manifest,
                honeytoken: entry.honeytoken,
            };
            let record = RecordId::from_bytes(id);
            let dek = crypto::unwrap_dek(self.keys.as_ref(), entry.epoch, &entry.wrapped, &ctx)
                .map_err(|e| key_error(&record, &e))?;
            let wrapped = crypto::wrap_dek(self.keys.as_ref(), current, &dek, &ctx)
                .map_err(|e| key_error(&record, &e))?;
            let rewrapped = Entry {
                epoch: current,
                wrapped,
                ..entry
            };
            moved.push((key.clone(), value.clone(), rewrapped.encode()));
        }
        if moved.is_empty() {
            return Ok(Rewrapped { moved: 0, next });
        }
        let _alone = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let keys: Vec<Vec<u8>> = moved.iter().map(|(k, _, _)| k.clone()).collect();
        let now = self.store.multi_get(Keyspace::Deks, &keys)?;
        let mut batch = Batch::new();
        if let Some(next) = &next {
            batch.put(Keyspace::Meta, cursor_key.to_vec(), next.clone());
        }
        let mut count = 0;
        for ((key, before, after), now) in moved.into_iter().zip(now) {
            // Deleted (shred, update) or changed since the scan: leave it as it is. Another
            // vault node may delete it between this read and the write: the write expects it
            // unchanged, so a shredded key never comes back.
            if now.as_ref() == Some(&before) {
                batch.expect(Keyspace::Deks, key.clone(), Some(before));
                batch.put(Keyspace::Deks, key, after);
                count += 1;
            }
        }
        batch.expect(
            Keyspace::Meta,
            CURRENT_EPOCH_KEY.to_vec(),
            Some(current.0.to_be_bytes().to_vec()),
        );
        match self.store.write(batch) {
            Ok(()) => Ok(Rewrapped { moved: count, next }),
            // Another writer changed a key of the chunk, or the epoch moved on: the chunk is
            // read again (a key under the current epoch is skipped).
            Err(StoreError::Conflict(_)) => {
                // Another node may have moved the epoch on: read the provider's again.
                self.keys
                    .refresh()
                    .map_err(|e| Error::Unavailable(format!("key provider: {e}")))?;
                self.fence_epoch()?;
                Ok(Rewrapped {
                    moved: 0,
                    next: Some(from.to_vec()),
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Destroys every epoch older than the current one, once no stored key is wrapped under
    /// one: returns the epochs destroyed, or `None` if keys under an older epoch remain.
    /// The epochs about to be destroyed are first written to `marker_key` (in `meta`, synced),
    /// so that their audit events are still written if the process dies right after.
    pub(crate) fn destroy_older_epochs(
        &self,
        marker_key: &[u8],
    ) -> Result<Option<Vec<EpochId>>, Error> {
        let _alone = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        let current = self.keys.current();
        if self.counts()?.keys().any(|&e| e < current) {
            return Ok(None);
        }
        let older: Vec<u8> = self
            .keys
            .epochs()
            .into_iter()
            .filter(|&e| e < current)
            .flat_map(|e| e.0.to_be_bytes())
            .collect();
        self.set_meta(marker_key, Some(older))?;
        let mut destroyed = Vec::new();
        for epoch in self.keys.epochs() {
            if epoch < current {
                self.keys
                    .destroy_epoch(epoch)
                    .map_err(|e| Error::Unavailable(format!("key provider: {e}")))?;
                destroyed.push(epoch);
            }
        }
        Ok(Some(destroyed))
    }

    /// When each live epoch was created (ms since the Unix epoch), recording `now_ms` for an
    /// epoch seen for the first time.
    pub(crate) fn epoch_times(&self, now_ms: i64) -> Result<BTreeMap<EpochId, i64>, Error> {
        let mut times = BTreeMap::new();
        let mut batch = Batch::new();
        for epoch in self.keys.epochs() {
            let key = epoch_key(epoch);
            let created = match self.store.get(Keyspace::Meta, &key)? {
                Some(bytes) => bytes
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(now_ms, i64::from_be_bytes),
                None => {
                    batch.put(Keyspace::Meta, key, now_ms.to_be_bytes().to_vec());
                    now_ms
                }
            };
            times.insert(epoch, created);
        }
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(times)
    }

    /// Reads a value of the key store's own `meta` (rotation state).
    pub(crate) fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.store.get(Keyspace::Meta, key)?)
    }

    /// Writes (or with `None` deletes) a value of the key store's `meta`, synced.
    pub(crate) fn set_meta(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), Error> {
        let mut batch = Batch::new();
        match value {
            Some(v) => batch.put(Keyspace::Meta, key.to_vec(), v),
            None => batch.delete(Keyspace::Meta, key.to_vec()),
        }
        Ok(self.store.write(batch)?)
    }

    /// The versions `id` has a key of.
    pub(crate) fn versions_of(&self, id: &RecordId) -> Result<Vec<u64>, Error> {
        let end = record_end(id);
        Ok(self
            .store
            .scan_range(Keyspace::Deks, id.as_bytes(), Some(&end), usize::MAX)?
            .iter()
            .filter_map(|(key, _)| parse_entry_key(key).map(|(_, version)| version))
            .collect())
    }

    /// Every stored entry's record id and version.
    pub(crate) fn all_versions(&self) -> Result<BTreeMap<[u8; 16], Vec<u64>>, Error> {
        let mut out: BTreeMap<[u8; 16], Vec<u64>> = BTreeMap::new();
        let mut cursor = Vec::new();
        loop {
            let chunk = self.store.scan_range(Keyspace::Deks, &cursor, None, 4096)?;
            let Some((last, _)) = chunk.last() else {
                return Ok(out);
            };
            cursor = next_key(last);
            for (key, _) in &chunk {
                if let Some((id, version)) = parse_entry_key(key) {
                    out.entry(id).or_default().push(version);
                }
            }
        }
    }
}

fn epoch_key(epoch: EpochId) -> Vec<u8> {
    let mut key = EPOCH_PREFIX.to_vec();
    key.extend_from_slice(&epoch.0.to_be_bytes());
    key
}

fn next_key(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entries() -> impl Strategy<Value = Vec<u8>> + Clone {
        (
            any::<u32>(),
            any::<u64>(),
            "[a-z_]{0,70}",
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|(epoch, manifest, collection, honeytoken, wrapped)| {
                Entry {
                    epoch: EpochId(epoch),
                    manifest,
                    collection,
                    honeytoken,
                    wrapped: WrappedDek(wrapped),
                }
                .encode()
            })
    }

    #[test]
    fn fuzz_key_store_entry() {
        let strategy = crate::testing::inputs(entries(), &[]);
        crate::testing::fuzz("key store entry", 256, strategy, |input| {
            // Whatever decodes is exactly what it encodes back to: no two readings of one entry.
            if let Some(entry) = Entry::decode(&input.bytes) {
                prop_assert_eq!(entry.encode(), input.bytes);
            }
            Ok(())
        });
    }

    #[test]
    fn a_honeytokens_entry_differs_by_one_bit_and_old_entries_decode() {
        let record = Entry {
            epoch: EpochId(2),
            manifest: 0b101,
            collection: "customers".into(),
            honeytoken: false,
            wrapped: WrappedDek(vec![7; 5]),
        };
        let decoy = Entry {
            honeytoken: true,
            ..record.clone()
        };
        // An entry as written before the flag existed (length byte = the length).
        let mut old = vec![ENTRY_V1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0b101, 9];
        old.extend_from_slice(b"customers");
        old.extend_from_slice(&[7; 5]);
        assert_eq!(record.encode(), old);
        assert_eq!(Entry::decode(&old), Some(record));
        let flagged = decoy.encode();
        old[13] |= HONEYTOKEN_BIT;
        assert_eq!(flagged, old);
        assert_eq!(Entry::decode(&flagged), Some(decoy));
    }

    #[tokio::test]
    async fn a_rewrap_keeps_a_honeytokens_key_bound_to_its_flag() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ring = crate::crypto::Keyring::open_file(dir.path().join("keyring"))
            .unwrap_or_else(|e| panic!("{e}"));
        let ring = Arc::new(ring);
        let keys = KeyStore::new(
            Arc::new(crate::storage::MemoryStore::new()),
            Arc::clone(&ring) as Arc<dyn KeyProvider>,
        );
        let (decoy, record) = (RecordId::from_bytes([1; 16]), RecordId::from_bytes([2; 16]));
        let ctx = |id: &'static [u8; 16], honeytoken| DekContext {
            record_id: id,
            collection: "customers",
            record_version: 1,
            manifest: 0b11,
            honeytoken,
        };
        let (decoy_ctx, record_ctx) = (ctx(&[1; 16], true), ctx(&[2; 16], false));
        let (dek, other) = (Dek::generate(), Dek::generate());
        keys.put_many(&[(&decoy, &decoy_ctx, &dek), (&record, &record_ctx, &other)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        // A version already stored is not overwritten: another writer claimed it.
        assert!(
            !keys
                .put_new(&record, &record_ctx, &Dek::generate())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        );
        assert!(
            keys.get(&record, &record_ctx)
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some_and(|k| k.id() == other.id()),
            "the first writer's key stays"
        );
        let old = ring.current();
        let new = ring.add_epoch().unwrap_or_else(|e| panic!("{e}"));
        let done = keys
            .rewrap_chunk(&[], 10, b"cursor")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(done.moved, 2);
        assert_eq!(keys.counts().ok(), Some(BTreeMap::from([(new, 2)])));
        assert!(new > old);
        // Under the new epoch, still bound to the flag: it opens only as what it was written as.
        let id_of = |k: Result<Option<Dek>, Error>| k.ok().flatten().map(|d| d.id());
        assert_eq!(id_of(keys.get(&decoy, &decoy_ctx)), Some(dek.id()));
        assert_eq!(id_of(keys.get(&record, &record_ctx)), Some(other.id()));
        let cleared = DekContext {
            honeytoken: false,
            ..decoy_ctx
        };
        let set = DekContext {
            honeytoken: true,
            ..record_ctx
        };
        assert!(matches!(keys.get(&decoy, &cleared), Err(Error::DataLoss)));
        assert!(matches!(keys.get(&record, &set), Err(Error::DataLoss)));
    }

    use crate::storage::KeyValue;

    /// A memory store that keeps every written batch's operations.
    #[derive(Default)]
    struct Recording {
        inner: crate::storage::MemoryStore,
        written: std::sync::Mutex<Vec<crate::storage::Op>>,
    }

    impl Store for Recording {
        fn shared(&self) -> bool {
            self.inner.shared()
        }
        fn snapshot(&self) -> Box<dyn crate::storage::Snapshot + '_> {
            self.inner.snapshot()
        }
        fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(ks, key)
        }
        fn multi_get(
            &self,
            ks: Keyspace,
            keys: &[Vec<u8>],
        ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
            self.inner.multi_get(ks, keys)
        }
        fn scan_prefix(&self, ks: Keyspace, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
            self.inner.scan_prefix(ks, prefix)
        }
        fn scan_range(
            &self,
            ks: Keyspace,
            from: &[u8],
            to: Option<&[u8]>,
            limit: usize,
        ) -> Result<Vec<KeyValue>, StoreError> {
            self.inner.scan_range(ks, from, to, limit)
        }
        fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError> {
            self.inner.last(ks)
        }
        fn write(&self, batch: Batch) -> Result<(), StoreError> {
            self.written
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(batch.ops().iter().cloned());
            self.inner.write(batch)
        }
        fn purge(&self, prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError> {
            self.inner.purge(prefixes)
        }
    }

    /// A range tombstone in the key store made every later read of its memtable re-fragment
    /// all of them until the next flush: a sweep's thousands of shreds slowed every read.
    #[tokio::test]
    async fn deletes_and_shreds_delete_entries_one_by_one_without_range_tombstones() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ring = crate::crypto::Keyring::open_file(dir.path().join("keyring"))
            .unwrap_or_else(|e| panic!("{e}"));
        let store = Arc::new(Recording::default());
        let keys = KeyStore::new(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::new(ring) as Arc<dyn KeyProvider>,
        );
        let (id, other) = (RecordId::from_bytes([3; 16]), RecordId::from_bytes([4; 16]));
        for (rid, bytes, version) in [
            (&id, &[3; 16], 1),
            (&id, &[3; 16], 2),
            (&id, &[3; 16], 3),
            (&other, &[4; 16], 1),
        ] {
            let ctx = DekContext {
                record_id: bytes,
                collection: "customers",
                record_version: version,
                manifest: 0b1,
                honeytoken: false,
            };
            assert!(
                keys.put_new(rid, &ctx, &Dek::generate())
                    .await
                    .unwrap_or_else(|e| panic!("{e}"))
            );
        }
        let versions = |rid: &RecordId| -> Vec<u64> {
            store
                .scan_prefix(Keyspace::Deks, rid.as_bytes())
                .unwrap_or_else(|e| panic!("{e}"))
                .iter()
                .filter_map(|(k, _)| parse_entry_key(k).map(|(_, v)| v))
                .collect()
        };
        keys.delete(&id, 1..3)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(versions(&id), [3]);
        keys.shred(&id, 1).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(versions(&id).is_empty());
        assert_eq!(versions(&other), [1]);
        assert!(keys.was_shredded(&id).unwrap_or_else(|e| panic!("{e}")));
        let written = store.written.lock().unwrap_or_else(PoisonError::into_inner);
        assert!(
            !written
                .iter()
                .any(|op| matches!(op, crate::storage::Op::DeleteRange(..))),
            "a range tombstone was written"
        );
        assert_eq!(
            written
                .iter()
                .filter(|op| matches!(op, crate::storage::Op::Delete(Keyspace::Deks, _)))
                .count(),
            3
        );
    }

    #[test]
    fn entry_keys_round_trip_and_reject_other_lengths() {
        let id = RecordId::from_bytes([9; 16]);
        let key = entry_key(&id, 7);
        assert_eq!(parse_entry_key(&key), Some(([9; 16], 7)));
        assert_eq!(parse_entry_key(&key[..23]), None);
        let mut longer = key;
        longer.push(0);
        assert_eq!(parse_entry_key(&longer), None);
    }
}
