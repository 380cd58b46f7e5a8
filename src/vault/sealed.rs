//! The record at rest: loading and checking a header, fetching its DEK from the key store,
//! reading and opening its field ciphertexts, and sealing a record's fields at a new version.

use std::collections::{BTreeMap, HashMap};

use super::{Error, FieldInput, Vault, header::Header};
use crate::{
    crypto::{self, Dek, DekContext, FieldContext},
    domain::{Collection, FieldValue, InvalidInput, RecordId},
    storage::{Batch, Keyspace, Snapshot},
};

/// A record's header, parsed, with its collection resolved.
pub(super) struct Loaded<'s> {
    pub(super) header: Header,
    pub(super) collection: &'s Collection,
}

/// Field ciphertexts by field index.
pub(super) type Ciphertexts = HashMap<usize, Vec<u8>>;

/// The key of a field ciphertext: `record id | field name`.
pub(super) fn field_key(id: &RecordId, field: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + field.len());
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(field.as_bytes());
    key
}

/// The key of one of a record's own entries that is not a field ciphertext (its consent ledger,
/// its activity times): `record id | '#' | name`. Field names are identifiers, so no field key
/// has `#` after the id; and like the fields, these keys sit under the record id, so a shred
/// (and the reconcile and purge after it) deletes them with the record.
pub(super) fn record_entry_key(id: &RecordId, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(17 + name.len());
    key.extend_from_slice(id.as_bytes());
    key.push(b'#');
    key.extend_from_slice(name.as_bytes());
    key
}

impl Vault {
    /// Parses and validates field values against `collection`: known, unique, valid by type.
    pub(super) fn parse_values(
        &self,
        collection: &Collection,
        inputs: &[FieldInput<'_>],
    ) -> Result<Vec<(usize, FieldValue)>, Error> {
        let mut out: Vec<(usize, FieldValue)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            // Errors name the input by position and, once it is known to be declared, by its
            // declared name (`fields[2] (email)`); the caller's text is never repeated. Labels
            // are only formatted for a field that is wrong.
            let at = || format!("{}[{}]", input.input, input.index);
            let (idx, ty) = collection
                .field(input.name, "")
                .map_err(|e| InvalidInput::new(format!("{}.name", at()), e.problem))?;
            let named = || format!("{} ({})", at(), collection.fields()[idx].0);
            if out.iter().any(|(i, _)| *i == idx) {
                return Err(InvalidInput::new(named(), "given more than once").into());
            }
            let value = FieldValue::parse(input.value, ty, self.limits.max_value_bytes, "")
                .map_err(|e| InvalidInput::new(named(), e.problem))?;
            out.push((idx, value));
        }
        Ok(out)
    }

    /// Loads a record's header from `snapshot`; read its ciphertexts from the same snapshot, so
    /// that a concurrent update or shred is seen whole or not at all.
    pub(super) fn load(&self, snapshot: &dyn Snapshot, id: &RecordId) -> Result<Loaded<'_>, Error> {
        let Some(bytes) = snapshot.get(Keyspace::Headers, id.as_bytes())? else {
            return Err(Error::NotFound);
        };
        if snapshot.get(Keyspace::Tombstones, id.as_bytes())?.is_some() {
            // A shredded record brought back (e.g. from a backup) stays shredded.
            return Err(Error::NotFound);
        }
        let header = Header::decode(&bytes).ok_or_else(|| {
            tracing::error!(record = %id, "record header is malformed");
            Error::DataLoss
        })?;
        let collection = self
            .schema
            .collection(&header.collection, "collection")
            .map_err(|_| {
                tracing::error!(record = %id, "record header names an undeclared collection");
                Error::DataLoss
            })?;
        Ok(Loaded { header, collection })
    }

    /// The record's data key at the loaded version; `None` if the key store holds none (the
    /// record was shredded, or updated since its header was read).
    pub(super) fn data_key(
        &self,
        id: &RecordId,
        loaded: &Loaded<'_>,
    ) -> Result<Option<Dek>, Error> {
        self.keys.get(id, &dek_context(id, &loaded.header))
    }

    /// Reads the ciphertexts of `fields` (indices into the collection) that the header's
    /// manifest says the record holds, with point reads (bloom-filtered, no iterator), from the
    /// snapshot the header came from. A field in the manifest without its ciphertext is an
    /// integrity failure.
    pub(super) fn ciphertexts(
        &self,
        snapshot: &dyn Snapshot,
        id: &RecordId,
        loaded: &Loaded<'_>,
        fields: impl Iterator<Item = usize>,
    ) -> Result<HashMap<usize, Vec<u8>>, Error> {
        self.ciphertexts_and_entry(snapshot, id, loaded, fields, None)
            .map(|(out, _)| out)
    }

    /// `ciphertexts`, and with `entry` (a record entry key, such as its consent state) that
    /// entry's value too, in the same `multi_get`: one round to the store, one snapshot.
    pub(super) fn ciphertexts_and_entry(
        &self,
        snapshot: &dyn Snapshot,
        id: &RecordId,
        loaded: &Loaded<'_>,
        fields: impl Iterator<Item = usize>,
        entry: Option<Vec<u8>>,
    ) -> Result<(Ciphertexts, Option<Vec<u8>>), Error> {
        let present: Vec<usize> = fields
            .filter(|&i| loaded.header.manifest & (1 << i) != 0)
            .collect();
        let mut keys: Vec<Vec<u8>> = present
            .iter()
            .map(|&i| field_key(id, loaded.collection.fields()[i].0.as_str()))
            .collect();
        let asks_entry = entry.is_some();
        keys.extend(entry);
        let mut values = snapshot.multi_get(Keyspace::Records, &keys)?;
        let entry = if asks_entry {
            values.pop().flatten()
        } else {
            None
        };
        let mut out = HashMap::with_capacity(present.len());
        for (i, value) in present.into_iter().zip(values) {
            let Some(value) = value else {
                tracing::error!(record = %id, "a field ciphertext named in the manifest is missing");
                return Err(Error::DataLoss);
            };
            out.insert(i, value);
        }
        Ok((out, entry))
    }

    pub(super) fn open(
        &self,
        id: &RecordId,
        loaded: &Loaded<'_>,
        dek: &Dek,
        field: usize,
        envelope: &[u8],
    ) -> Result<FieldValue, Error> {
        let ctx = FieldContext {
            collection: &loaded.header.collection,
            record_id: id.as_bytes(),
            field: loaded.collection.fields()[field].0.as_str(),
            record_version: loaded.header.version,
        };
        crypto::open_field(dek, &ctx, envelope)
            .map(FieldValue::from_stored)
            .map_err(|_| {
                tracing::error!(record = %id, field = ctx.field, "field ciphertext failed to open");
                Error::DataLoss
            })
    }

    /// Stores `dek`, wrapped, in the key store for `version` (synced), then seals every value
    /// and adds the header (with the `honeytoken` flag) and ciphertexts to `batch`. The key is
    /// stored first: a crash before the batch leaves an unused key, never a record without its
    /// key. `false` if a key is stored for `version` already (another writer, on this vault
    /// node or another, claimed it, or a write that never committed left it): nothing stored.
    pub(super) async fn seal_record(
        &self,
        batch: &mut Batch,
        id: &RecordId,
        collection: &Collection,
        dek: &Dek,
        version: (u64, bool),
        values: &BTreeMap<usize, FieldValue>,
    ) -> Result<bool, Error> {
        let header = seal_values(batch, id, collection, dek, version, values);
        self.keys.put_new(id, &dek_context(id, &header), dek).await
    }
}

/// Seals every value under `dek` at `version` and adds the ciphertexts and the header (with
/// the `honeytoken` flag) to `batch`; returns the header. The caller stores the key (wrapped)
/// before it writes the batch.
pub(super) fn seal_values(
    batch: &mut Batch,
    id: &RecordId,
    collection: &Collection,
    dek: &Dek,
    (version, honeytoken): (u64, bool),
    values: &BTreeMap<usize, FieldValue>,
) -> Header {
    let manifest = values.keys().fold(0u64, |m, i| m | (1 << i));
    let name = collection.name().as_str();
    let header = Header {
        version,
        manifest,
        collection: name.to_owned(),
        honeytoken,
    };
    for (&i, value) in values {
        let field = collection.fields()[i].0.as_str();
        let ctx = FieldContext {
            collection: name,
            record_id: id.as_bytes(),
            field,
            record_version: version,
        };
        batch.put(
            Keyspace::Records,
            field_key(id, field),
            crypto::seal_field(dek, &ctx, value.expose()),
        );
    }
    batch.put(Keyspace::Headers, id.as_bytes().to_vec(), header.encode());
    header
}

/// What a record's wrapped key is bound to, from its header.
pub(super) fn dek_context<'a>(id: &'a RecordId, header: &'a Header) -> DekContext<'a> {
    DekContext {
        record_id: id.as_bytes(),
        collection: &header.collection,
        record_version: header.version,
        manifest: header.manifest,
        honeytoken: header.honeytoken,
    }
}
