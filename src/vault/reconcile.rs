//! At start, before serving: make the data store and the key store agree. The key store is the
//! authority on which records exist, since a data-dir backup may be restored next to it:
//!
//! - a header whose record has no key at all, and that the key store recorded as shredded, is
//!   a shredded record (a restored copy of the data dir, or a shred interrupted between its two
//!   writes): its shred is finished (ciphertexts, index entries and header deleted, tombstone
//!   written, purge owed, audited);
//! - a header with keys, of a record the key store recorded as shredded, is a shred that lost
//!   a race with an update on another vault node and did not finish: its keys are destroyed and
//!   its shred finished;
//! - a header without any key that the key store never shredded means the key store is older
//!   than the data, or not theirs: the start is refused and nothing is changed;
//! - keys of versions older than the header's are leftovers of an update: removed. Keys of newer
//!   versions are leftovers of an update interrupted before its commit when the vault is the
//!   only writer (`Peers::None`, the embedded store): removed. On a shared database they may be
//!   another node's update in flight (`Peers::Possible`): left, and the record's next update or
//!   its shred removes them;
//! - a header whose version has no key while other versions do cannot be read (data and keys
//!   restored from different times): counted and logged, left for the operator;
//! - keys without a header are left (an interrupted or failed create, or data older than the
//!   keys): without data they reveal nothing, and deleting them could not be undone.
//!
//! A key store that is new (never used by a vault) next to a data store with records is
//! refused: starting would shred every record.
//!
//! Then the blind index is completed: records stored before their fields were indexed (a vault
//! upgraded from before the index, or a field newly marked `indexed` in the schema) get their
//! entries, so that a lookup (and an erasure by lookup) finds every record. A marker in `meta`
//! names the indexed fields it was completed for, so later starts skip the scan.

use std::collections::BTreeMap;

use super::{Error, Vault, header::Header, index, purger};
use crate::{
    audit::Event,
    domain::RecordId,
    storage::{Batch, Keyspace},
    vault::now_ms,
};

/// The `meta` key naming the indexed fields the blind index was completed for.
const INDEX_COMPLETE_KEY: &[u8] = b"index/complete";

/// What reconciling found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Records in the data store.
    pub records: u64,
    /// Records without any key, whose shred was finished now.
    pub shredded: u64,
    /// Keys of versions other than their record header names, removed (older ones only when
    /// other nodes may share the stores).
    pub stale_keys: u64,
    /// Records whose header names a version the key store has no key for, while it has others.
    pub unreadable: u64,
    /// Records with keys but no header (an interrupted create, or data older than the keys):
    /// left as they are.
    pub keys_without_data: u64,
    /// Records whose blind-index entries were added now (stored before their fields were
    /// indexed).
    pub indexed: u64,
}

/// Whether other vault nodes may write the stores while this one reconciles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peers {
    /// The stores are this process's alone (the embedded RocksDB store is locked by it).
    None,
    /// Other nodes may share the stores (a PostgreSQL database).
    Possible,
}

/// What a record header and the key store's keys of the record say.
enum Found {
    /// No key, and the key store recorded the shred.
    Shredded,
    /// Keys, and the key store recorded the shred.
    ShredUnfinished,
    /// No key, and the key store never shredded it.
    Unknown,
    /// A key of the header's version, and of these versions in all.
    Readable(Vec<u64>),
    /// Keys of other versions only.
    Unreadable,
}

impl Found {
    fn of(header: &Header, versions: Option<Vec<u64>>, shredded: bool) -> Self {
        match versions {
            None if shredded => Self::Shredded,
            None => Self::Unknown,
            Some(_) if shredded => Self::ShredUnfinished,
            Some(versions) if versions.contains(&header.version) => Self::Readable(versions),
            Some(_) => Self::Unreadable,
        }
    }
}

/// Shreds finished per audited batch.
const CHUNK: usize = 256;

impl Vault {
    /// Reconciles the data store with the key store (see the module docs).
    ///
    /// # Errors
    /// `Unavailable` if a store fails or the key store is empty next to records.
    pub async fn reconcile(&self, peers: Peers) -> Result<Reconciled, Error> {
        self.keys.check_opens().map_err(Error::Unavailable)?;
        let mut keys = self.keys.all_versions()?;
        let headers = self.store.scan_prefix(Keyspace::Headers, b"")?;
        let mut done = Reconciled {
            records: u64::try_from(headers.len()).unwrap_or(u64::MAX),
            ..Reconciled::default()
        };
        if !self.keys.initialized()? && !headers.is_empty() {
            return Err(Error::Unavailable(format!(
                "the key store is new but the data store holds {} records: starting would \
                 shred them all. Restore the key store (the keys dir) that belongs with this data \
                 dir, or point keys_dir at it",
                headers.len()
            )));
        }
        self.keys.mark_initialized()?;
        let shredded = self.keys.shredded()?;
        let mut orphans = Vec::new();
        let mut stale = Vec::new();
        let mut unknown = 0u64;
        let mut readable = Vec::new();
        for (key, value) in &headers {
            let (Ok(id), Some(mut header)) =
                (<[u8; 16]>::try_from(&key[..]), Header::decode(value))
            else {
                tracing::error!("a malformed record header is left as it is");
                continue;
            };
            let record = RecordId::from_bytes(id);
            let mut found = Found::of(&header, keys.remove(&id), shredded.contains(&id));
            if matches!(found, Found::Unknown | Found::Unreadable) {
                // The keys were read before the headers: another vault node may have created
                // or updated the record in between. Its header again, then its keys, which a
                // writer stores before the header that names them.
                let Some(now) = self.store.get(Keyspace::Headers, key)? else {
                    continue; // Shredded meanwhile.
                };
                let Some(now) = Header::decode(&now) else {
                    tracing::error!("a malformed record header is left as it is");
                    continue;
                };
                header = now;
                let versions = self.keys.versions_of(&record)?;
                let versions = (!versions.is_empty()).then_some(versions);
                found = Found::of(&header, versions, self.keys.was_shredded(&record)?);
            }
            match found {
                Found::Shredded => orphans.push((record, header)),
                Found::Unknown => unknown += 1,
                // A shred that had begun (its keys destroyed) when an update on another node
                // wrote a new version's key, and did not finish: finished now.
                Found::ShredUnfinished => {
                    self.keys.shred(&record, now_ms()).await?;
                    orphans.push((record, header));
                }
                Found::Readable(versions) => {
                    readable.push(record);
                    // A newer key may be another vault node's update in flight (its header not
                    // yet committed): kept when there may be one. One a write left behind is
                    // never reused (an update skips a version whose key is taken), and the
                    // record's next update or its shred removes it.
                    stale.extend(
                        versions
                            .into_iter()
                            .filter(|&v| {
                                v < header.version || (v > header.version && peers == Peers::None)
                            })
                            .map(|v| (record, v)),
                    );
                }
                Found::Unreadable => {
                    tracing::error!(record = %record, version = header.version, "the key store has no key for this record's version (data and keys restored from different times?): it cannot be read");
                    done.unreadable += 1;
                }
            }
        }
        if unknown > 0 {
            return Err(Error::Unavailable(format!(
                "{unknown} records in the data dir have no data key in the key store, which \
                 never shredded them: the key store is older than the data, or belongs to \
                 another vault. Nothing was changed; start with the key store (keys dir) that \
                 belongs with this data dir"
            )));
        }
        done.keys_without_data = u64::try_from(keys.len()).unwrap_or(u64::MAX);
        for (record, v) in stale {
            self.keys.delete(&record, v..v + 1).await?;
            done.stale_keys += 1;
        }
        for chunk in orphans.chunks(CHUNK) {
            self.finish_shreds(chunk).await?;
            done.shredded += u64::try_from(chunk.len()).unwrap_or(u64::MAX);
        }
        done.indexed = self.complete_index(&readable).await?;
        if done != Reconciled::default() {
            tracing::info!(?done, "data store and key store reconciled");
        }
        Ok(done)
    }

    /// Adds the blind-index entries every readable record lacks, unless the index was already
    /// completed for the indexed fields the schema declares now. Returns how many records got
    /// entries.
    async fn complete_index(&self, readable: &[RecordId]) -> Result<u64, Error> {
        let indexed: Vec<String> = self
            .schema
            .collections()
            .flat_map(|c| {
                (0..c.fields().len())
                    .filter(|&i| c.is_indexed(i))
                    .map(move |i| format!("{}.{}", c.name(), c.fields()[i].0))
            })
            .collect();
        let signature = indexed.join(",").into_bytes();
        if self
            .store
            .get(Keyspace::Meta, INDEX_COMPLETE_KEY)?
            .as_deref()
            == Some(&signature[..])
        {
            return Ok(0);
        }
        let mut added = 0u64;
        for chunk in readable.chunks(CHUNK) {
            let mut batch = Batch::new();
            let mut n = 0u64;
            for id in chunk {
                let snapshot = self.store.snapshot();
                let loaded = self.load(snapshot.as_ref(), id)?;
                let collection = loaded.collection;
                let fields: Vec<usize> = (0..collection.fields().len())
                    .filter(|&i| collection.is_indexed(i) && loaded.header.manifest & (1 << i) != 0)
                    .collect();
                let entries = snapshot
                    .scan_prefix(Keyspace::Index, &index::reverse_prefix(id.as_bytes()))?
                    .len();
                if fields.is_empty() || entries == fields.len() {
                    continue;
                }
                let Some(dek) = self.data_key(id, &loaded)? else {
                    continue;
                };
                let mut values = BTreeMap::new();
                for (field, envelope) in
                    self.ciphertexts(snapshot.as_ref(), id, &loaded, fields.into_iter())?
                {
                    values.insert(field, self.open(id, &loaded, &dek, field, &envelope)?);
                }
                index::delete_entries(
                    &mut batch,
                    snapshot.as_ref(),
                    id,
                    collection.name().as_str(),
                )?;
                index::put_entries(&mut batch, &self.index, id, collection, &values)?;
                n += 1;
            }
            if n > 0 {
                let event = Event {
                    method: "Records/IndexBackfill".into(),
                    result: "OK".into(),
                    detail: format!(
                        "{n} records stored before their fields were indexed got blind-index entries"
                    ),
                    ..Event::default()
                };
                self.audit.commit(batch, vec![event]).await?;
                added += n;
            }
        }
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, INDEX_COMPLETE_KEY.to_vec(), signature);
        self.store.write(batch)?;
        if added > 0 {
            tracing::info!(
                records = added,
                "blind index completed for records stored before it"
            );
        }
        Ok(added)
    }

    async fn finish_shreds(&self, records: &[(RecordId, Header)]) -> Result<(), Error> {
        let at = now_ms();
        let mut batch = Batch::new();
        let mut events = Vec::with_capacity(records.len());
        for (id, header) in records {
            for (key, _) in self.store.scan_prefix(Keyspace::Records, id.as_bytes())? {
                batch.delete(Keyspace::Records, key);
            }
            let snapshot = self.store.snapshot();
            index::delete_entries(&mut batch, snapshot.as_ref(), id, &header.collection)?;
            drop(snapshot);
            batch.delete(Keyspace::Headers, id.as_bytes().to_vec());
            batch.put(
                Keyspace::Tombstones,
                id.as_bytes().to_vec(),
                at.to_be_bytes().to_vec(),
            );
            purger::owe(&mut batch, id, &header.collection);
            events.push(Event {
                method: "Records/Reconcile".into(),
                collection: header.collection.clone(),
                record_id: id.to_string(),
                result: "OK".into(),
                detail: "the key store holds no data key for this record (shredded; a restored \
                         copy of the data dir, or an interrupted shred): ciphertexts and index \
                         entries deleted, purge queued"
                    .into(),
                ..Event::default()
            });
        }
        self.audit.commit(batch, events).await?;
        for (id, header) in records {
            if let Err(e) = self
                .purger
                .purge(*id, header.collection.clone(), false)
                .await
            {
                tracing::warn!(record = %id, error = %e, "purge queued for the next start");
            }
        }
        Ok(())
    }
}
