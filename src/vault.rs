//! The use cases: create, read, update and crypto-shred records. Each checks the policy, does
//! its crypto, and commits one synced batch. Reads decrypt only what the `ReadPermit` allows.
//!
//! Depends on `domain`, `crypto`, `policy` and `storage`; knows nothing of gRPC.

mod header;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use zeroize::Zeroizing;

use crate::{
    crypto::{self, Dek, DekContext, FieldContext, Kek},
    domain::{Collection, FieldValue, InvalidInput, Principal, Purpose, RecordId, Schema},
    policy::{Decision, PolicyEngine, Refusal},
    storage::{Batch, Keyspace, Store, StoreError},
};
use header::Header;

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest field value, in bytes.
    pub max_value_bytes: usize,
    /// Most fields in one request.
    pub max_fields: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 4096,
            max_fields: 64,
        }
    }
}

/// Why a use case failed. Mapped to one gRPC status in `api::status`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A precondition (expected version) did not hold.
    #[error("aborted: {0}")]
    Aborted(String),
    /// Stored data failed an integrity check: tampered, moved, or corrupted.
    #[error("stored data failed its integrity check")]
    DataLoss,
    /// A bug or an impossible state; the detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request is malformed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidInput),
    /// No such policy version.
    #[error("no policy version {0}")]
    NoSuchVersion(u64),
    /// No such record (never existed or shredded: the two are indistinguishable).
    #[error("record not found")]
    NotFound,
    /// The policy refuses the operation.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Storage failed; nothing was acknowledged.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

fn refused(principal: &Principal, r: Refusal) -> Error {
    Error::PermissionDenied(format!(
        "{} (roles {}) may not {} {}",
        principal.subject,
        principal.roles_text(),
        r.action.as_str(),
        r.object
    ))
}

/// A field value to write: `(input name for errors, field name, raw value)`.
#[derive(Debug)]
pub struct FieldInput<'a> {
    /// Where the value came from in the request, e.g. `fields[2]`.
    pub input: String,
    /// The field name.
    pub name: &'a str,
    /// The raw value. Not printed by `Debug` of the API types that carry it.
    pub value: &'a str,
}

/// One field of a read's answer.
#[derive(Debug)]
pub struct FieldView {
    /// The field name.
    pub name: String,
    /// How it is disclosed.
    pub decision: Decision,
    /// The plaintext or masked value; `None` when denied.
    pub value: Option<FieldValue>,
}

/// A read's answer.
#[derive(Debug)]
pub struct RecordView {
    /// The record id.
    pub id: RecordId,
    /// Its collection.
    pub collection: String,
    /// Its version.
    pub version: u64,
    /// Present fields that may be shown, then every denied requested field.
    pub fields: Vec<FieldView>,
    /// The policy version that decided.
    pub policy_version: u64,
}

/// What a shred destroyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShredReceipt {
    /// The record id.
    pub id: RecordId,
    /// Its collection.
    pub collection: String,
    /// When the shred batch committed (ms since the epoch).
    pub shredded_at_ms: i64,
    /// How many field ciphertexts were deleted.
    pub fields_destroyed: u32,
    /// When the purge from live files completed (ms since the epoch).
    pub purged_at_ms: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn field_key(id: &RecordId, field: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(16 + field.len());
    key.extend_from_slice(id.as_bytes());
    key.extend_from_slice(field.as_bytes());
    key
}

/// Serializes writers of the same record (update vs update vs shred) without a global lock.
struct RecordLocks {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl RecordLocks {
    fn new(n: usize) -> Self {
        Self {
            stripes: (0..n).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    async fn lock(&self, id: &RecordId) -> tokio::sync::MutexGuard<'_, ()> {
        let b = id.as_bytes();
        let n = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        // `stripes` is never empty (built with a fixed positive count).
        let i = usize::try_from(n % self.stripes.len() as u64).unwrap_or(0);
        self.stripes[i].lock().await
    }
}

/// The vault: the use cases over a store, a master key, a schema and a policy.
pub struct Vault {
    store: Arc<dyn Store>,
    kek: Kek,
    schema: Arc<Schema>,
    policy: Arc<PolicyEngine>,
    limits: Limits,
    locks: RecordLocks,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("kek", &self.kek)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A record's header, parsed, with its collection resolved.
struct Loaded<'s> {
    header: Header,
    collection: &'s Collection,
}

impl Vault {
    /// A vault over its parts.
    pub fn new(
        store: Arc<dyn Store>,
        kek: Kek,
        schema: Arc<Schema>,
        policy: Arc<PolicyEngine>,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            kek,
            schema,
            policy,
            limits,
            locks: RecordLocks::new(256),
        }
    }

    /// The declared collections and purposes.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// The request limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Runs a blocking store call off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, Error> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| Error::Internal(format!("storage task failed: {e}")))?
            .map_err(Error::from)
    }

    fn check_count(&self, n: usize, input: &str) -> Result<(), Error> {
        if n > self.limits.max_fields {
            return Err(InvalidInput::new(
                input,
                format!(
                    "{n} fields, more than the limit of {}",
                    self.limits.max_fields
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Parses and validates field values against `collection`: known, unique, valid by type.
    fn parse_values(
        &self,
        collection: &Collection,
        inputs: &[FieldInput<'_>],
    ) -> Result<Vec<(usize, FieldValue)>, Error> {
        let mut out: Vec<(usize, FieldValue)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let (idx, ty) = collection.field(input.name, &format!("{}.name", input.input))?;
            if out.iter().any(|(i, _)| *i == idx) {
                return Err(InvalidInput::new(
                    format!("{}.name", input.input),
                    format!("field {:?} given more than once", input.name),
                )
                .into());
            }
            let value = FieldValue::parse(
                input.value,
                ty,
                self.limits.max_value_bytes,
                &format!("{}.value", input.input),
            )?;
            out.push((idx, value));
        }
        Ok(out)
    }

    fn load(&self, id: &RecordId) -> Result<Loaded<'_>, Error> {
        let Some(bytes) = self.store.get(Keyspace::Deks, id.as_bytes())? else {
            return Err(Error::NotFound);
        };
        if self
            .store
            .get(Keyspace::Tombstones, id.as_bytes())?
            .is_some()
        {
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

    fn unwrap(&self, id: &RecordId, loaded: &Loaded<'_>) -> Result<Dek, Error> {
        if loaded.header.kek_id != self.kek.id() {
            tracing::error!(record = %id, kek = loaded.header.kek_id.0, "record is wrapped by an unknown master key");
            return Err(Error::DataLoss);
        }
        let ctx = DekContext {
            record_id: id.as_bytes(),
            collection: &loaded.header.collection,
            record_version: loaded.header.version,
            manifest: loaded.header.manifest,
        };
        crypto::unwrap_dek(&self.kek, &loaded.header.wrapped, &ctx).map_err(|_| {
            tracing::error!(record = %id, "data key failed to unwrap");
            Error::DataLoss
        })
    }

    /// Reads the field ciphertexts of a record, checked against the header's manifest.
    fn ciphertexts(
        &self,
        id: &RecordId,
        loaded: &Loaded<'_>,
    ) -> Result<HashMap<usize, Vec<u8>>, Error> {
        let mut out = HashMap::new();
        for (key, value) in self.store.scan_prefix(Keyspace::Records, id.as_bytes())? {
            let name = std::str::from_utf8(&key[16..]).unwrap_or_default();
            match loaded.collection.field_index(name) {
                Some(i) if loaded.header.manifest & (1 << i) != 0 => {
                    out.insert(i, value);
                }
                Some(_) | None => {
                    tracing::error!(record = %id, "a field ciphertext is not in the record's manifest");
                    return Err(Error::DataLoss);
                }
            }
        }
        if out.len() != usize::try_from(loaded.header.manifest.count_ones()).unwrap_or(usize::MAX) {
            tracing::error!(record = %id, "a field ciphertext named in the manifest is missing");
            return Err(Error::DataLoss);
        }
        Ok(out)
    }

    fn open(
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

    /// Seals every value and wraps the DEK at `version`, adding the writes to `batch`.
    fn seal_record(
        &self,
        batch: &mut Batch,
        id: &RecordId,
        collection: &Collection,
        dek: &Dek,
        version: u64,
        values: &BTreeMap<usize, FieldValue>,
    ) {
        let manifest = values.keys().fold(0u64, |m, i| m | (1 << i));
        let name = collection.name().as_str();
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
        let ctx = DekContext {
            record_id: id.as_bytes(),
            collection: name,
            record_version: version,
            manifest,
        };
        let header = Header {
            version,
            kek_id: self.kek.id(),
            manifest,
            collection: name.to_owned(),
            wrapped: crypto::wrap_dek(&self.kek, dek, &ctx),
        };
        batch.put(Keyspace::Deks, id.as_bytes().to_vec(), header.encode());
    }

    /// Creates a record; returns its id and version (1).
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown collection or field or an invalid value,
    /// `PermissionDenied` if a field may not be written, `Unavailable` if the write fails.
    pub async fn create(
        &self,
        principal: &Principal,
        collection: &str,
        fields: &[FieldInput<'_>],
    ) -> Result<(RecordId, u64), Error> {
        let collection = self.schema.collection(collection, "collection")?;
        if fields.is_empty() {
            return Err(InvalidInput::new("fields", "a record needs at least one field").into());
        }
        self.check_count(fields.len(), "fields")?;
        let values = self.parse_values(collection, fields)?;
        let indices: Vec<usize> = values.iter().map(|(i, _)| *i).collect();
        self.policy
            .table()
            .check_write(principal, collection, &indices)
            .map_err(|r| refused(principal, r))?;
        let id = RecordId::random();
        let dek = Dek::generate();
        let mut batch = Batch::new();
        self.seal_record(
            &mut batch,
            &id,
            collection,
            &dek,
            1,
            &values.into_iter().collect(),
        );
        self.blocking(move |s| s.write(batch)).await?;
        Ok((id, 1))
    }

    /// Reads a record: each requested field (all declared fields if `fields` is empty) is
    /// decided by the policy for `purpose`; denied fields are never decrypted.
    ///
    /// # Errors
    /// `InvalidArgument` for unknown fields, `NotFound` for an unknown or shredded id,
    /// `DataLoss` if stored data fails its integrity check.
    pub fn get(
        &self,
        principal: &Principal,
        id: &RecordId,
        fields: &[String],
        purpose: &Purpose,
    ) -> Result<RecordView, Error> {
        self.check_count(fields.len(), "fields")?;
        let loaded = self.load(id)?;
        let collection = loaded.collection;
        let requested: Vec<usize> = if fields.is_empty() {
            (0..collection.fields().len()).collect()
        } else {
            let mut out = Vec::with_capacity(fields.len());
            for (n, name) in fields.iter().enumerate() {
                let (i, _) = collection.field(name, &format!("fields[{n}]"))?;
                if out.contains(&i) {
                    return Err(InvalidInput::new(
                        format!("fields[{n}]"),
                        format!("field {name:?} requested more than once"),
                    )
                    .into());
                }
                out.push(i);
            }
            out
        };
        let permit = self
            .policy
            .table()
            .decide_read(principal, collection, &requested, purpose);
        let mut shown = Vec::new();
        let mut withheld = Vec::new();
        let needs_key = permit
            .decisions()
            .iter()
            .any(|(_, d)| *d != Decision::Denied);
        let (dek, mut ciphertexts) = if needs_key {
            (
                Some(self.unwrap(id, &loaded)?),
                self.ciphertexts(id, &loaded)?,
            )
        } else {
            (None, HashMap::new())
        };
        for &(field, decision) in permit.decisions() {
            let (name, ty) = &collection.fields()[field];
            let envelope = match decision {
                Decision::Denied => {
                    withheld.push(FieldView {
                        name: name.as_str().to_owned(),
                        decision,
                        value: None,
                    });
                    continue;
                }
                Decision::Masked | Decision::Plain => ciphertexts.remove(&field),
            };
            let (Some(dek), Some(envelope)) = (&dek, envelope) else {
                continue;
            };
            let value = self.open(id, &loaded, dek, field, &envelope)?;
            let value = match decision {
                Decision::Masked => FieldValue::from_stored(Zeroizing::new(value.mask(*ty))),
                Decision::Denied | Decision::Plain => value,
            };
            shown.push(FieldView {
                name: name.as_str().to_owned(),
                decision,
                value: Some(value),
            });
        }
        shown.extend(withheld);
        Ok(RecordView {
            id: *id,
            collection: collection.name().as_str().to_owned(),
            version: loaded.header.version,
            fields: shown,
            policy_version: permit.policy_version(),
        })
    }

    /// Sets and clears fields; with `expected_version`, only if the record is at that version.
    /// Every field is resealed at the new version, so no older ciphertext can be replayed.
    ///
    /// # Errors
    /// `InvalidArgument`, `NotFound`, `PermissionDenied`, `Aborted` on a version mismatch,
    /// `DataLoss`, `Unavailable`.
    pub async fn update(
        &self,
        principal: &Principal,
        id: &RecordId,
        set: &[FieldInput<'_>],
        clear: &[String],
        expected_version: Option<u64>,
    ) -> Result<u64, Error> {
        if set.is_empty() && clear.is_empty() {
            return Err(
                InvalidInput::new("set", "nothing to update: give fields to set or clear").into(),
            );
        }
        self.check_count(set.len() + clear.len(), "set")?;
        let _guard = self.locks.lock(id).await;
        let loaded = self.load(id)?;
        let collection = loaded.collection;
        let values = self.parse_values(collection, set)?;
        let mut cleared = Vec::with_capacity(clear.len());
        for (n, name) in clear.iter().enumerate() {
            let (i, _) = collection.field(name, &format!("clear[{n}]"))?;
            if cleared.contains(&i) || values.iter().any(|(v, _)| *v == i) {
                return Err(InvalidInput::new(
                    format!("clear[{n}]"),
                    format!("field {name:?} is named more than once"),
                )
                .into());
            }
            cleared.push(i);
        }
        let touched: Vec<usize> = values
            .iter()
            .map(|(i, _)| *i)
            .chain(cleared.iter().copied())
            .collect();
        self.policy
            .table()
            .check_write(principal, collection, &touched)
            .map_err(|r| refused(principal, r))?;
        if let Some(expected) = expected_version
            && expected != loaded.header.version
        {
            return Err(Error::Aborted(format!(
                "record is at version {}, not the expected {expected}",
                loaded.header.version
            )));
        }
        let dek = self.unwrap(id, &loaded)?;
        let mut current = BTreeMap::new();
        for (field, envelope) in self.ciphertexts(id, &loaded)? {
            current.insert(field, self.open(id, &loaded, &dek, field, &envelope)?);
        }
        let version = loaded.header.version + 1;
        let mut batch = Batch::new();
        for &i in &cleared {
            if current.remove(&i).is_some() {
                batch.delete(
                    Keyspace::Records,
                    field_key(id, collection.fields()[i].0.as_str()),
                );
            }
        }
        current.extend(values);
        if current.is_empty() {
            return Err(InvalidInput::new(
                "clear",
                "an update may not clear every field; delete the record instead",
            )
            .into());
        }
        self.seal_record(&mut batch, id, collection, &dek, version, &current);
        self.blocking(move |s| s.write(batch)).await?;
        Ok(version)
    }

    /// Crypto-shreds a record: one synced batch deletes its wrapped DEK and field ciphertexts
    /// and writes a tombstone; then the deleted data is purged from every live file.
    ///
    /// # Errors
    /// `NotFound`, `PermissionDenied`, `DataLoss` (malformed header), `Unavailable`.
    pub async fn shred(&self, principal: &Principal, id: &RecordId) -> Result<ShredReceipt, Error> {
        let _guard = self.locks.lock(id).await;
        let loaded = self.load(id)?;
        self.policy
            .table()
            .check_delete(principal, loaded.collection)
            .map_err(|r| refused(principal, r))?;
        let keys: Vec<Vec<u8>> = self
            .store
            .scan_prefix(Keyspace::Records, id.as_bytes())?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let fields_destroyed = u32::try_from(keys.len()).unwrap_or(u32::MAX);
        let shredded_at_ms = now_ms();
        let mut batch = Batch::new();
        for key in keys {
            batch.delete(Keyspace::Records, key);
        }
        batch.delete(Keyspace::Deks, id.as_bytes().to_vec());
        batch.put(
            Keyspace::Tombstones,
            id.as_bytes().to_vec(),
            shredded_at_ms.to_be_bytes().to_vec(),
        );
        let key = *id.as_bytes();
        self.blocking(move |s| {
            s.write(batch)?;
            s.purge(&[(Keyspace::Deks, &key), (Keyspace::Records, &key)])
        })
        .await?;
        Ok(ShredReceipt {
            id: *id,
            collection: loaded.header.collection,
            shredded_at_ms,
            fields_destroyed,
            purged_at_ms: now_ms(),
        })
    }
}
