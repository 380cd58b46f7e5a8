//! The blind index at rest, in the `index` keyspace of the data store:
//!
//! ```text
//! forward  'f' | len u8 | collection | len u8 | field | digest[32] | record id[16]  ->  (empty)
//! reverse  'r' | record id[16] | field                                             ->  digest[32]
//! ```
//!
//! A lookup scans the forward prefix up to the digest; the reverse entries let an update or a
//! shred remove a record's forward entries without decrypting anything (the digest is not
//! invertible without the index key, which is not in the data dir). Create and update write a
//! record's entries in the record's own batch, shred deletes them in its batch, and the purge
//! after a shred compacts the keyspace so the digests leave the live files.

use std::collections::BTreeMap;

use super::Error;
use crate::{
    crypto::{BlindIndex, IndexDigest},
    domain::{Collection, FieldValue, RecordId},
    storage::{Batch, Keyspace, Snapshot, Store, prefix_end},
};

const FORWARD: u8 = b'f';
const REVERSE: u8 = b'r';
const DIGEST_LEN: usize = 32;
const ID_LEN: usize = 16;

/// The forward prefix of `collection.field` and a digest: every record id with that value
/// follows it.
pub(super) fn forward_prefix(collection: &str, field: &str, digest: &IndexDigest) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + collection.len() + field.len() + DIGEST_LEN + ID_LEN);
    key.push(FORWARD);
    // Collection and field names are identifiers of at most 64 bytes.
    key.push(u8::try_from(collection.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(collection.as_bytes());
    key.push(u8::try_from(field.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(field.as_bytes());
    key.extend_from_slice(digest);
    key
}

fn forward_key(collection: &str, field: &str, digest: &IndexDigest, id: &RecordId) -> Vec<u8> {
    let mut key = forward_prefix(collection, field, digest);
    key.extend_from_slice(id.as_bytes());
    key
}

/// The prefix of every reverse entry of a record.
pub(super) fn reverse_prefix(id: &[u8; 16]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + ID_LEN);
    key.push(REVERSE);
    key.extend_from_slice(id);
    key
}

fn reverse_key(id: &RecordId, field: &str) -> Vec<u8> {
    let mut key = reverse_prefix(id.as_bytes());
    key.extend_from_slice(field.as_bytes());
    key
}

/// The digest of `value` for the indexed field `field` of `collection`; `None` if the field is
/// not indexed or its type has no index form.
///
/// # Errors
/// `Unavailable` if the provider cannot derive the index key.
pub(super) fn digest_of(
    index: &BlindIndex,
    collection: &Collection,
    field: usize,
    value: &FieldValue,
) -> Result<Option<IndexDigest>, Error> {
    if !collection.is_indexed(field) {
        return Ok(None);
    }
    let (name, ty) = &collection.fields()[field];
    let Some(form) = value.index_form(*ty) else {
        return Ok(None);
    };
    index
        .digest(collection.name().as_str(), name.as_str(), &form)
        .map(Some)
        .map_err(|e| Error::Unavailable(format!("the blind index key is unavailable: {e}")))
}

/// Adds to `batch` the index entries of a record holding `values` (every field it holds).
pub(super) fn put_entries(
    batch: &mut Batch,
    index: &BlindIndex,
    id: &RecordId,
    collection: &Collection,
    values: &BTreeMap<usize, FieldValue>,
) -> Result<(), Error> {
    let name = collection.name().as_str();
    for (&i, value) in values {
        let Some(digest) = digest_of(index, collection, i, value)? else {
            continue;
        };
        let field = collection.fields()[i].0.as_str();
        batch.put(
            Keyspace::Index,
            forward_key(name, field, &digest, id),
            Vec::new(),
        );
        batch.put(Keyspace::Index, reverse_key(id, field), digest.to_vec());
    }
    Ok(())
}

/// Adds to `batch` the removal of every index entry of record `id` of `collection`, found
/// through its reverse entries in `snapshot`.
pub(super) fn delete_entries(
    batch: &mut Batch,
    snapshot: &dyn Snapshot,
    id: &RecordId,
    collection: &str,
) -> Result<(), Error> {
    let prefix = reverse_prefix(id.as_bytes());
    for (key, digest) in snapshot.scan_prefix(Keyspace::Index, &prefix)? {
        let field = std::str::from_utf8(&key[prefix.len()..]).ok();
        let digest = <IndexDigest>::try_from(digest.as_slice()).ok();
        if let (Some(field), Some(digest)) = (field, digest) {
            batch.delete(Keyspace::Index, forward_key(collection, field, &digest, id));
        } else {
            tracing::error!(record = %id, "a malformed reverse index entry is removed alone");
        }
        batch.delete(Keyspace::Index, key);
    }
    Ok(())
}

/// The ids of up to `limit` records whose `collection.field` has `digest`, in key order, and
/// whether more matched. Reads at most `limit + 1` entries, however many records match.
pub(super) fn lookup(
    store: &dyn Store,
    collection: &str,
    field: &str,
    digest: &IndexDigest,
    limit: usize,
) -> Result<(Vec<RecordId>, bool), Error> {
    let prefix = forward_prefix(collection, field, digest);
    let end = prefix_end(&prefix);
    let entries = store.scan_range(Keyspace::Index, &prefix, end.as_deref(), limit + 1)?;
    let truncated = entries.len() > limit;
    let mut ids = Vec::with_capacity(entries.len().min(limit));
    for (key, _) in entries.into_iter().take(limit) {
        let Ok(id) = <[u8; ID_LEN]>::try_from(&key[prefix.len()..]) else {
            tracing::error!("a malformed forward index entry is ignored");
            continue;
        };
        ids.push(RecordId::from_bytes(id));
    }
    Ok((ids, truncated))
}
