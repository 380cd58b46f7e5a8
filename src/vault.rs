//! The use cases, in one home: the record ones here (create, read, update, crypto-shred), token
//! administration in `tokens`, policy administration in `governance`, and the role checks of
//! the privileges outside the record policy in `access`. Each checks the policy, does its
//! crypto, and commits its writes and its audit event in one synced batch. Reads decrypt only
//! what the `ReadPermit` allows, and return nothing unless their audit event is durable.
//!
//! Depends on `domain`, `crypto`, `policy`, `audit` and `storage`; knows nothing of gRPC.

mod access;
pub mod batch;
pub mod changes;
pub mod consent;
mod export;
mod find;
pub mod governance;
mod header;
pub mod holds;
mod index;
mod keystore;
pub mod limits;
mod locks;
mod purger;
pub mod receipt;
mod reconcile;
pub mod retention;
pub mod rotation;
mod sealed;
pub mod subject;
mod times;
pub mod tokens;
mod tripwire;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use zeroize::Zeroizing;

use crate::{
    audit::{Audit, AuditError, Call, Event, FieldOutcome},
    crypto::{BlindIndex, Dek, KeyProvider, Pseudonymizer},
    domain::{Clock, FieldType, FieldValue, InvalidInput, Principal, Purpose, RecordId, Schema},
    policy::{Decision, DecisionTable, PolicyEngine, ReadPermit, Refusal},
    storage::{Batch, Keyspace, Snapshot, Store, StoreError},
};
pub use access::{ADMIN_ROLE, Privilege, require, require_in};
pub use batch::{BatchOptions, Created, NewRecord, repeated};
pub use find::{FIND_LIMIT, FindQuery, Found, LOOKUP_LIMIT};
use keystore::KeyStore;
use limits::Limiter;
use locks::RecordLocks;
use purger::Purger;
pub use reconcile::Peers;
use sealed::{Loaded, field_key};
use times::Times;
pub use tripwire::HONEYTOKEN_ALERT_METHOD;

pub use export::{ExportBatch, ExportEnd, RecordExport};

/// Limits on what one request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest field value, in bytes.
    pub max_value_bytes: usize,
    /// Most fields in one request.
    pub max_fields: usize,
    /// Most records in one batch call (`BatchGetRecords`, `BatchCreateRecords`).
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_bytes: 4096,
            max_fields: 64,
            max_batch: 500,
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
    /// The record is not in a state that allows the operation (a legal hold blocks its
    /// erasure); the message names what blocks it.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The caller's request limit is spent; the message says the limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A bug or an impossible state; the detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
    /// The request is malformed.
    #[error(transparent)]
    InvalidArgument(#[from] InvalidInput),
    /// No such legal hold on a record; the message names the record and the hold.
    #[error("{0}")]
    NoSuchHold(String),
    /// No such pending policy change.
    #[error("no pending policy change {0}")]
    NoSuchProposal(u64),
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
        AuditError::from(e).into()
    }
}

impl From<AuditError> for Error {
    fn from(e: AuditError) -> Self {
        if e.is_conflict() {
            return Self::Aborted(
                "the record was changed by another call meanwhile; nothing was written: read it \
                 again and retry"
                    .into(),
            );
        }
        Self::Unavailable(e.to_string())
    }
}

/// Versions an update skips at most when other writers hold the next ones.
const MAX_VERSION_SKIPS: u64 = 8;

fn refused(principal: &Principal, r: Refusal) -> Error {
    Error::PermissionDenied(format!(
        "{} (roles {}) may not {} {}",
        principal.subject,
        principal.roles_text(),
        r.action.as_str(),
        r.object
    ))
}

/// Checks that `principal`'s token may declare `purpose` (a token bound to purposes declares
/// only those). The purpose is a declared one, so naming it echoes nothing of the caller's.
fn check_purpose(principal: &Principal, purpose: &Purpose) -> Result<(), Error> {
    if principal.may_declare(purpose) {
        return Ok(());
    }
    Err(Error::PermissionDenied(format!(
        "{}'s token is bound to purposes {}: it may not declare purpose {purpose}",
        principal.subject,
        principal.purposes_text()
    )))
}

/// A field value to write: where it came from (for errors), its field name and raw value.
#[derive(Debug)]
pub struct FieldInput<'a> {
    /// The request's list that carried it, e.g. `fields` or `set`.
    pub input: &'static str,
    /// Its position in that list: errors name `fields[2] (email)`. Kept as a number so that
    /// nothing is formatted per field unless the field is wrong.
    pub index: usize,
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
    /// The plaintext, masked or pseudonymized value; `None` when denied.
    pub value: Option<FieldValue>,
    /// Why the vault withheld a field the policy lets the caller read (its subject's
    /// disclosure limit is spent, or the record's consent does not allow the purpose;
    /// `decision` is then `Denied`): `None` for a field decided by the policy alone.
    pub withheld_reason: Option<String>,
    /// Whether `withheld_reason` is a consent rule's (`no autodialer consent (TCPA)`) rather
    /// than a disclosure limit's.
    pub withheld_by_consent: bool,
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
    /// When the purge from live files completed (ms since the epoch); `None` if the caller did
    /// not wait for it (a `Records/Purge` audit event records when it completes).
    pub purged_at_ms: Option<i64>,
    /// When no backup of the key store can yield the record's data key any more: the end of
    /// the current key epoch, destroyed by the rotation the shred horizon starts (a
    /// `Keys/DestroyEpoch` audit event records when it happens).
    pub unrecoverable_after_ms: Option<i64>,
    /// The receipt signed with the provider's key (`receipt`); `None` only if the provider
    /// failed to sign (logged: the shred itself is done).
    pub signed: Option<receipt::SignedReceipt>,
}

/// Who shreds a record, and so what its audit event says.
enum Shred {
    /// A caller through the API: the event of its call.
    Requested(Event),
    /// A retention rule: the sweeper's event, and the rule, as `7 years after last_activity`.
    Retention {
        /// The event's subject, method and request id.
        event: Event,
        /// The rule that expired.
        rule: String,
    },
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    crate::domain::Clock::system().now_ms()
}

/// The vault: the use cases over a data store, a key store and its key provider, a schema and
/// a policy.
pub struct Vault {
    store: Arc<dyn Store>,
    audit: Arc<Audit>,
    audit_reads: bool,
    keys: Arc<KeyStore>,
    index: BlindIndex,
    schema: Arc<Schema>,
    policy: Arc<PolicyEngine>,
    limits: Limits,
    limiter: Arc<Limiter>,
    locks: RecordLocks,
    purger: Purger,
    rotator: Arc<rotation::Rotator>,
    pseudonyms: Pseudonymizer,
    clock: Clock,
    sweeper: retention::Sweeper,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.keys)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// The vault's keys: the key store (a store of its own, apart from the data), the provider
/// that wraps what it holds, and how rotation runs.
pub struct Keys {
    /// The key store.
    pub store: Arc<dyn Store>,
    /// The key provider.
    pub provider: Arc<dyn KeyProvider>,
    /// Rotation settings.
    pub rotation: rotation::RotationOptions,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("provider", &self.provider)
            .field("rotation", &self.rotation)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault over its parts: the data store, its keys, the audit log, schema and policy.
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keys,
        audit: Arc<Audit>,
        schema: Arc<Schema>,
        policy: Arc<PolicyEngine>,
        limits: Limits,
    ) -> Self {
        let Keys {
            store: key_store,
            provider,
            rotation,
        } = keys;
        let purger = Purger::start(
            Arc::clone(&store),
            Arc::clone(&key_store),
            Arc::clone(&audit),
        );
        let index = BlindIndex::new(Arc::clone(&provider));
        let pseudonyms = Pseudonymizer::new(Arc::clone(&provider));
        let keys = Arc::new(KeyStore::new(key_store, provider));
        let rotator = rotation::Rotator::start(Arc::clone(&keys), Arc::clone(&audit), rotation);
        Self {
            store,
            audit,
            audit_reads: true,
            keys,
            index,
            rotator,
            schema,
            policy,
            limits,
            limiter: Arc::default(),
            locks: RecordLocks::new(256),
            purger,
            pseudonyms,
            clock: Clock::system(),
            sweeper: retention::Sweeper::default(),
        }
    }

    /// Reads time from `clock` (consent times, retention, holds; a manual one in tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// The vault's clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Turns off the audit event of reads: only for measuring what auditing costs. A vault
    /// configured so is not compliant with its own promises.
    #[must_use]
    pub fn danger_without_read_audit(mut self) -> Self {
        self.audit_reads = false;
        self
    }

    /// Holds reads to the per-subject disclosure limits of `limiter` (none by default).
    #[must_use]
    pub fn with_limiter(mut self, limiter: Arc<Limiter>) -> Self {
        self.limiter = limiter;
        self
    }

    /// Stops the vault's background work (the purge task) and waits for it to end, so that the
    /// store is released with the vault. Purges still owed run at the next start.
    pub async fn stop(&self) {
        // First the sweeper: its shreds queue purges.
        self.sweeper.stop().await;
        self.rotator.stop().await;
        self.purger.stop().await;
    }

    /// The live policy.
    pub fn policy(&self) -> &PolicyEngine {
        &self.policy
    }

    /// Key rotation and status.
    pub fn rotation(&self) -> &rotation::Rotator {
        &self.rotator
    }

    /// The key provider (for the public key).
    pub fn key_provider(&self) -> &Arc<dyn KeyProvider> {
        self.keys.provider()
    }

    /// The audit log.
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// The declared collections and purposes.
    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    /// What one request may carry; the API checks counts against it before parsing fields.
    pub fn limits(&self) -> Limits {
        self.limits
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

    /// Creates a record; returns its id and version (1). A `honeytoken` is a decoy, stored like
    /// any other record but flagged in its header: every read of it raises an alert
    /// (`tripwire`). Creating one takes `honeytokens manage`.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown collection or field or an invalid value,
    /// `PermissionDenied` if a field may not be written (or a honeytoken may not be created),
    /// `Unavailable` if the write fails.
    pub async fn create(
        &self,
        principal: &Principal,
        call: &Call,
        collection: &str,
        fields: &[FieldInput<'_>],
        honeytoken: bool,
    ) -> Result<(RecordId, u64), Error> {
        let record = NewRecord {
            collection,
            fields,
            honeytoken,
        };
        let created = self
            .create_many(principal, call, &[record], &BatchOptions::default())
            .await?;
        match created.results.into_iter().next() {
            Some(Ok(Some(id))) => Ok((id, 1)),
            Some(Err(e)) => Err(e),
            Some(Ok(None)) | None => Err(Error::Internal("a create without its result".into())),
        }
    }

    /// Reads a record: each requested field (all declared fields if `fields` is empty) is
    /// decided by the policy for `purpose`; denied fields are never decrypted.
    ///
    /// # Errors
    /// `PermissionDenied` if the caller's token is bound to other purposes,
    /// `InvalidArgument` for unknown fields, `NotFound` for an unknown or shredded id,
    /// `DataLoss` if stored data fails its integrity check.
    pub async fn get(
        &self,
        principal: &Principal,
        call: &Call,
        id: &RecordId,
        fields: &[String],
        purpose: &Purpose,
    ) -> Result<RecordView, Error> {
        check_purpose(principal, purpose)?;
        self.check_count(fields.len(), "fields")?;
        let mut decider = Decider::new(&self.policy);
        let (view, events) =
            self.read_record(principal, call, id, fields, purpose, &mut decider)?;
        if !events.is_empty() {
            // Fail closed: no data leaves unless its event is durable.
            self.audit.commit(Batch::new(), events).await?;
        }
        Ok(view)
    }

    /// A read's answer and the audit events that must be durable before it is returned (the
    /// caller commits them): `get` one record at a time, a batch or an export many in one
    /// commit. `decider` decides the fields, once per collection for a whole call.
    fn read_record(
        &self,
        principal: &Principal,
        call: &Call,
        id: &RecordId,
        fields: &[String],
        purpose: &Purpose,
        decider: &mut Decider,
    ) -> Result<(RecordView, Vec<Event>), Error> {
        let mut attempts = 0;
        // What the purpose needs of the record (`None`: nothing, and no consent work at all).
        let rules = self
            .schema
            .purpose_index(purpose.as_str())
            .and_then(|p| self.schema.consent().rules(p));
        let (loaded, permit, dek, mut ciphertexts, by_consent) = loop {
            // Header and ciphertexts come from one snapshot: a concurrent update or shred is
            // seen whole or not at all.
            let snapshot = self.store.snapshot();
            let loaded = self.load(snapshot.as_ref(), id)?;
            let permit = decider.decide(principal, loaded.collection, fields, purpose)?;
            let shown: Vec<usize> = permit
                .decisions()
                .iter()
                .filter(|(_, d)| *d != Decision::Denied)
                .map(|(f, _)| *f)
                .collect();
            if shown.is_empty() {
                break (loaded, permit, None, HashMap::new(), Vec::new());
            }
            // The consent state comes in the same snapshot and the same `multi_get` as the
            // ciphertexts, and only when a rule of the purpose covers a field to show.
            let shown_bits = shown.iter().fold(0u64, |m, &f| m | (1 << f));
            let state_key = consent::state_key(rules, loaded.collection, shown_bits, id);
            let asks_state = state_key.is_some();
            let (mut ciphertexts, state) = self.ciphertexts_and_entry(
                snapshot.as_ref(),
                id,
                &loaded,
                shown.iter().copied(),
                state_key,
            )?;
            drop(snapshot);
            let by_consent = match rules {
                Some(rules) if asks_state => consent::withheld_by_consent(
                    rules,
                    loaded.collection,
                    purpose.as_str(),
                    &shown,
                    state.as_deref(),
                    id,
                )?,
                Some(_) | None => Vec::new(),
            };
            // Withheld for lack of consent: never decrypted, like a field the policy denies.
            for (f, _) in &by_consent {
                ciphertexts.remove(f);
            }
            if by_consent.len() == shown.len() {
                break (loaded, permit, None, ciphertexts, by_consent);
            }
            if let Some(dek) = self.data_key(id, &loaded)? {
                break (loaded, permit, Some(dek), ciphertexts, by_consent);
            }
            // No key for this version: the record was updated since its header was read (read
            // again), or it is shredded (a restored copy of the data dir may still hold it).
            attempts += 1;
            let now = self
                .store
                .get(Keyspace::Headers, id.as_bytes())?
                .and_then(|b| header::Header::decode(&b));
            if attempts >= 3 || now.is_none_or(|h| h.version == loaded.header.version) {
                return Err(self.keyless(id, &loaded.header)?);
            }
        };
        let collection = loaded.collection;
        // Plaintext disclosures of sensitive fields count against the subject's limit: reserved
        // here, before anything is decrypted, so that racing reads never pass it together.
        let sensitive_plain: Vec<usize> = permit
            .decisions()
            .iter()
            .filter(|&&(f, d)| {
                d == Decision::Plain && collection.is_sensitive(f) && ciphertexts.contains_key(&f)
            })
            .map(|&(f, _)| f)
            .collect();
        let mut allowance = self
            .limiter
            .disclose(principal, call, sensitive_plain.len());
        let mut limited = Vec::new();
        let mut shown = Vec::new();
        let mut withheld = Vec::new();
        for &(field, decision) in permit.decisions() {
            let (name, ty) = &collection.fields()[field];
            if let Some((_, reason)) = by_consent.iter().find(|(f, _)| *f == field) {
                withheld.push(FieldView {
                    name: name.as_str().to_owned(),
                    decision: Decision::Denied,
                    value: None,
                    withheld_reason: Some((*reason).to_owned()),
                    withheld_by_consent: true,
                });
                continue;
            }
            if sensitive_plain.contains(&field) {
                if allowance.granted == 0 {
                    // Withheld and never decrypted, like a field the policy denies.
                    ciphertexts.remove(&field);
                    limited.push(field);
                    withheld.push(FieldView {
                        name: name.as_str().to_owned(),
                        decision: Decision::Denied,
                        value: None,
                        withheld_reason: Some(allowance.reason.clone()),
                        withheld_by_consent: false,
                    });
                    continue;
                }
                allowance.granted -= 1;
            }
            let envelope = match decision {
                Decision::Denied => {
                    withheld.push(FieldView {
                        name: name.as_str().to_owned(),
                        decision,
                        value: None,
                        withheld_reason: None,
                        withheld_by_consent: false,
                    });
                    continue;
                }
                Decision::Masked | Decision::Plain | Decision::Pseudonym => {
                    ciphertexts.remove(&field)
                }
            };
            let (Some(dek), Some(envelope)) = (&dek, envelope) else {
                continue;
            };
            let value = self.open(id, &loaded, dek, field, &envelope)?;
            let value = match decision {
                Decision::Masked => FieldValue::from_stored(Zeroizing::new(value.mask(*ty))),
                Decision::Pseudonym => self.pseudonym(collection, field, &value, purpose)?,
                Decision::Denied | Decision::Plain => value,
            };
            shown.push(FieldView {
                name: name.as_str().to_owned(),
                decision,
                value: Some(value),
                withheld_reason: None,
                withheld_by_consent: false,
            });
        }
        shown.extend(withheld);
        // The limit's one alert of the window goes with the read that tripped it.
        let mut events: Vec<Event> = allowance.alert.take().into_iter().collect();
        if self.audit_reads {
            let decided = permit.decisions().iter().map(|&(f, d)| {
                let consent = by_consent.iter().find(|(c, _)| *c == f).map(|(_, r)| *r);
                (f, read_outcome(d, limited.contains(&f), consent))
            });
            events.push(Event {
                collection: collection.name().as_str().to_owned(),
                record_id: id.to_string(),
                fields: outcomes(collection, decided),
                purpose: purpose.as_str().to_owned(),
                policy_version: permit.policy_version(),
                ..call.event(principal)
            });
        }
        // A honeytoken's alert too, whether reads are audited or not: one per record a read,
        // a find or an export touches.
        events.extend(self.tripwire(principal, call, id, &loaded, purpose));
        let view = RecordView {
            id: *id,
            collection: collection.name().as_str().to_owned(),
            version: loaded.header.version,
            fields: shown,
            policy_version: permit.policy_version(),
        };
        Ok((view, events))
    }

    /// The pseudonym of a field's value for `purpose`: a date generalized to its year, any
    /// other type a keyed token over its normalized form (an email lowercased whole, so that
    /// spellings of one address join).
    fn pseudonym(
        &self,
        collection: &crate::domain::Collection,
        field: usize,
        value: &FieldValue,
        purpose: &Purpose,
    ) -> Result<FieldValue, Error> {
        let (name, ty) = &collection.fields()[field];
        let out = match ty {
            FieldType::Date => value.expose().get(..4).unwrap_or_default().to_owned(),
            FieldType::Email => {
                let lower = Zeroizing::new(value.expose().to_lowercase());
                self.token(collection, name.as_str(), &lower, purpose)?
            }
            FieldType::Address
            | FieldType::CardNumber
            | FieldType::Name
            | FieldType::Phone
            | FieldType::Ssn
            | FieldType::String => {
                self.token(collection, name.as_str(), value.expose(), purpose)?
            }
        };
        Ok(FieldValue::from_stored(Zeroizing::new(out)))
    }

    fn token(
        &self,
        collection: &crate::domain::Collection,
        field: &str,
        value: &str,
        purpose: &Purpose,
    ) -> Result<String, Error> {
        self.pseudonyms
            .pseudonym(
                purpose.as_str(),
                collection.name().as_str(),
                field,
                value.as_bytes(),
            )
            .map_err(|e| Error::Unavailable(format!("the pseudonym key: {e}")))
    }

    /// Sets and clears fields; with `expected_version`, only if the record is at that version.
    /// Every field is resealed at the new version, so no older ciphertext can be replayed.
    ///
    /// # Errors
    /// `InvalidArgument`, `NotFound`, `PermissionDenied`, `Aborted` on a version mismatch,
    /// `FailedPrecondition` under a legal hold, `DataLoss`, `Unavailable`.
    pub async fn update(
        &self,
        principal: &Principal,
        call: &Call,
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
        self.may_update_some_record(principal, set, clear)?;
        let _guard = self.locks.lock(id).await;
        let snapshot = self.store.snapshot();
        let loaded = self.load(snapshot.as_ref(), id)?;
        let collection = loaded.collection;
        let values = self.parse_values(collection, set)?;
        let mut cleared = Vec::with_capacity(clear.len());
        for (n, name) in clear.iter().enumerate() {
            let (i, _) = collection.field(name, &format!("clear[{n}]"))?;
            if cleared.contains(&i) || values.iter().any(|(v, _)| *v == i) {
                return Err(InvalidInput::new(
                    format!("clear[{n}] ({})", collection.fields()[i].0),
                    "named more than once (in set or clear)",
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
        let permit = self
            .policy
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
        // An update destroys the old version's data key: under a hold that is spoliation.
        self.refuse_if_held(id, "its update (which destroys the old version)")?;
        let changed = values_idx(&touched, &cleared);
        let event = Event {
            collection: collection.name().as_str().to_owned(),
            record_id: id.to_string(),
            fields: outcomes(collection, changed),
            policy_version: permit.policy_version(),
            ..call.event(principal)
        };
        let now = self.clock.now_ms();
        let mut times = self
            .times(snapshot.as_ref(), id)?
            .unwrap_or_else(|| Times::first_seen(now, loaded.header.manifest));
        let written: Vec<usize> = values.iter().map(|(i, _)| *i).collect();
        times.updated(now, &written, &cleared);
        let version = self
            .rewrite(snapshot, id, &loaded, values, &cleared, &times, event)
            .await?;
        self.purger.rekeyed(*id);
        Ok(version)
    }

    /// Writes `id` at its next version under a new data key: `values` set, `cleared` removed,
    /// every other field resealed, `times` stored; the old data key is destroyed once the new
    /// version is durable, so replaced and cleared values are shredded. One path for an update
    /// and a retention expiry of fields. The caller holds the record's lock, loaded it from
    /// `snapshot`, and queues the purge; `event`'s detail (if any) is followed by the versions.
    #[allow(
        clippy::too_many_arguments,
        reason = "one internal path for update and retention: each argument is a part of the write"
    )]
    async fn rewrite(
        &self,
        snapshot: Box<dyn Snapshot + '_>,
        id: &RecordId,
        loaded: &Loaded<'_>,
        values: Vec<(usize, FieldValue)>,
        cleared: &[usize],
        times: &Times,
        event: Event,
    ) -> Result<u64, Error> {
        let collection = loaded.collection;
        let Some(dek) = self.data_key(id, loaded)? else {
            // Under the record lock the header moves only by another vault node.
            return Err(self.keyless(id, &loaded.header)?);
        };
        let mut current = BTreeMap::new();
        let envelopes =
            self.ciphertexts(snapshot.as_ref(), id, loaded, 0..collection.fields().len())?;
        let mut batch = Batch::new();
        // The old version's index entries go; the new version's are written below.
        index::delete_entries(&mut batch, snapshot.as_ref(), id, &loaded.header.collection)?;
        drop(snapshot);
        for (field, envelope) in envelopes {
            current.insert(field, self.open(id, loaded, &dek, field, &envelope)?);
        }
        let version = loaded.header.version + 1;
        for &i in cleared {
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
        // Another writer (another vault node) that read the same version loses: the record
        // must still be at the version read when the batch commits.
        batch.expect(
            Keyspace::Headers,
            id.as_bytes().to_vec(),
            Some(loaded.header.encode()),
        );
        // A new data key for the new version; the old one is destroyed once the new version is
        // durable, so replaced and cleared values are shredded too. The version is claimed in
        // the key store: one taken (by a writer whose commit lost, or never happened) is
        // skipped, so versions grow but may leave gaps.
        drop(dek);
        let dek = Dek::generate();
        let mut version = version;
        let sealed = loop {
            let mut sealed = batch.clone();
            if self
                .seal_record(
                    &mut sealed,
                    id,
                    collection,
                    &dek,
                    (version, loaded.header.honeytoken),
                    &current,
                )
                .await?
            {
                break sealed;
            }
            if version > loaded.header.version + MAX_VERSION_SKIPS {
                return Err(Error::Aborted(
                    "the record is being changed by other calls; read it again and retry".into(),
                ));
            }
            version += 1;
        };
        let mut batch = sealed;
        index::put_entries(&mut batch, &self.index, id, collection, &current)?;
        self.put_times(&mut batch, id, times);
        let versions = format!(
            "version {} -> {version}; the old version's data key destroyed",
            loaded.header.version
        );
        let event = Event {
            detail: if event.detail.is_empty() {
                versions
            } else {
                format!("{}; {versions}", event.detail)
            },
            ..event
        };
        // As in `create`, a failed commit leaves the new key: the next start keeps the one the
        // header names. One that lost to another writer is known not to be applied: its key goes.
        if let Err(e) = self.audit.commit(batch, vec![event]).await {
            if e.is_conflict() {
                self.keys.delete(id, version..version + 1).await?;
            }
            return Err(e.into());
        }
        // Left behind on a crash before this point, the old key is removed at the next start.
        self.forget_older_keys(id, version).await;
        Ok(version)
    }

    /// Crypto-shreds a record: one synced batch deletes its wrapped DEK and field ciphertexts
    /// and writes a tombstone; then the deleted data is purged from every live file.
    ///
    /// # Errors
    /// `NotFound`, `PermissionDenied`, `DataLoss` (malformed header), `Unavailable`.
    pub async fn shred(
        &self,
        principal: &Principal,
        call: &Call,
        id: &RecordId,
        wait_for_purge: bool,
    ) -> Result<ShredReceipt, Error> {
        self.may_delete_some_record(principal)?;
        let _guard = self.locks.lock(id).await;
        let snapshot = self.store.snapshot();
        let loaded = self.load(snapshot.as_ref(), id)?;
        let permit = self
            .policy
            .table()
            .check_delete(principal, loaded.collection)
            .map_err(|r| refused(principal, r))?;
        self.refuse_if_held(id, "its shred")?;
        let event = Event {
            policy_version: permit.policy_version(),
            detail: "data key destroyed and ciphertexts deleted; purge from live files queued"
                .into(),
            ..call.event(principal)
        };
        self.destroy(
            snapshot,
            id,
            loaded,
            Shred::Requested(event),
            wait_for_purge,
        )
        .await
    }

    /// Crypto-shreds `id`: its data key destroyed, then in one synced batch its ciphertexts,
    /// own entries, index entries and header deleted, its tombstone written and its purge
    /// owed, with the audit event; then the purge, and the signed receipt. One path for a
    /// requested shred and a retention expiry. The caller holds the record's lock, loaded it
    /// from `snapshot`, and checked the policy and the legal holds.
    async fn destroy(
        &self,
        snapshot: Box<dyn Snapshot + '_>,
        id: &RecordId,
        loaded: Loaded<'_>,
        by: Shred,
        wait_for_purge: bool,
    ) -> Result<ShredReceipt, Error> {
        let shredded_at_ms = now_ms();
        let (mut snapshot, mut loaded) = (snapshot, loaded);
        let mut attempts = 0;
        let mut receipt = loop {
            // Read (and the snapshot let go) before anything is awaited.
            let (batch, receipt, event) =
                self.shred_batch(snapshot, id, &loaded, &by, shredded_at_ms)?;
            // The data key goes first: from here on the record is unreadable, whatever
            // happens to the batch (a crash before it is finished at the next start).
            self.keys.shred(id, shredded_at_ms).await?;
            match self.audit.commit(batch, vec![event]).await {
                Ok(_) => break receipt,
                // Another vault node updated the record since it was read, maybe with a new
                // version's key written after the keys were destroyed. The shred has begun and
                // is finished, never undone: its keys destroyed again, what the record holds
                // now deleted.
                Err(e) if e.is_conflict() && attempts < MAX_VERSION_SKIPS => {
                    attempts += 1;
                    snapshot = self.store.snapshot();
                    loaded = self.load(snapshot.as_ref(), id)?;
                }
                Err(e) => return Err(e.into()),
            }
        };
        // The shred is durable; a purge that fails now is retried, and the receipt says it is
        // still pending.
        let purged_at_ms = match self
            .purger
            .purge(*id, receipt.collection.clone(), wait_for_purge)
            .await
        {
            Ok(at) => at,
            Err(e) => {
                tracing::error!(record = %id, error = %e, "purge after shred not done yet; it will be retried");
                None
            }
        };
        if receipt.signed.is_some() && purged_at_ms.is_none() {
            // The receipt in the event is the one returned.
            return Ok(receipt);
        }
        receipt.purged_at_ms = purged_at_ms;
        receipt.signed = None;
        Ok(receipt::signed(receipt, self.keys.provider().as_ref()))
    }
}

impl Vault {
    /// The batch of a shred of `id` as `loaded` from `snapshot`: its ciphertexts, index entries
    /// and header deleted (expecting the header read), its tombstone written and its purge
    /// owed; the receipt as of the commit, and the audit event.
    fn shred_batch(
        &self,
        snapshot: Box<dyn Snapshot + '_>,
        id: &RecordId,
        loaded: &Loaded<'_>,
        by: &Shred,
        shredded_at_ms: i64,
    ) -> Result<(Batch, ShredReceipt, Event), Error> {
        let mut batch = Batch::new();
        for (key, _) in snapshot.scan_prefix(Keyspace::Records, id.as_bytes())? {
            batch.delete(Keyspace::Records, key);
        }
        index::delete_entries(&mut batch, snapshot.as_ref(), id, &loaded.header.collection)?;
        drop(snapshot);
        // The field ciphertexts, not the record's own entries (its times, its consents).
        let fields_destroyed = loaded.header.manifest.count_ones();
        // Another vault node may have updated the record since it was read: then this batch
        // is refused, and the shred is done again on what it holds now.
        batch.expect(
            Keyspace::Headers,
            id.as_bytes().to_vec(),
            Some(loaded.header.encode()),
        );
        batch.delete(Keyspace::Headers, id.as_bytes().to_vec());
        batch.put(
            Keyspace::Tombstones,
            id.as_bytes().to_vec(),
            shredded_at_ms.to_be_bytes().to_vec(),
        );
        // The purge is owed from this batch on, across crashes and restarts.
        purger::owe(&mut batch, id, &loaded.header.collection);
        let destroyed = (0..loaded.collection.fields().len())
            .filter(|i| loaded.header.manifest & (1 << i) != 0)
            .map(|i| (i, "destroyed"));
        let fields = outcomes(loaded.collection, destroyed);
        let mut receipt = ShredReceipt {
            id: *id,
            collection: loaded.header.collection.clone(),
            shredded_at_ms,
            fields_destroyed,
            purged_at_ms: None,
            unrecoverable_after_ms: self.rotator.unrecoverable_after_ms(),
            signed: None,
        };
        let event = match by {
            Shred::Requested(event) => event.clone(),
            Shred::Retention { event, rule } => {
                // The receipt as of the commit (purge pending), signed now, goes in the event:
                // it holds no personal data, and an auditor can check it offline.
                receipt = receipt::signed(receipt, self.keys.provider().as_ref());
                let signed = receipt.signed.as_ref().map_or_else(
                    || "unsigned (the key provider failed to sign)".to_owned(),
                    |s| s.file_text().trim_end().to_owned(),
                );
                Event {
                    detail: format!("retention: {rule}; receipt: {signed}"),
                    ..event.clone()
                }
            }
        };
        let event = Event {
            collection: receipt.collection.clone(),
            record_id: id.to_string(),
            fields,
            ..event
        };
        Ok((batch, receipt, event))
    }

    /// Deletes `id`'s keys of the versions before `version`, logging a failure: the update
    /// already succeeded, and a leftover key is removed at the next start anyway.
    async fn forget_older_keys(&self, id: &RecordId, version: u64) {
        if let Err(e) = self.keys.delete(id, 0..version).await {
            tracing::warn!(record = %id, error = %e, "an unused data key stays until the next start");
        }
    }

    /// Why a record read with header `read` has no data key for its version: a header that
    /// has changed since is a record another call (another vault node) updated meanwhile
    /// (`Aborted`: retry), or shredded (`NotFound`); no key at all is a shredded record
    /// (`NotFound`, like an id that never existed); keys of other versions only is a header
    /// that does not match the key store (`DataLoss`: altered, or restored from another time).
    fn keyless(&self, id: &RecordId, read: &header::Header) -> Result<Error, Error> {
        match self.store.get(Keyspace::Headers, id.as_bytes())? {
            None => return Ok(Error::NotFound),
            Some(now) if now != read.encode() => {
                return Ok(Error::Aborted(
                    "the record was changed by another call meanwhile; read it again and retry"
                        .into(),
                ));
            }
            Some(_) => {}
        }
        if self.keys.holds_any(id)? {
            tracing::error!(record = %id, "the record header names a version the key store has no key for");
            Ok(Error::DataLoss)
        } else {
            Ok(Error::NotFound)
        }
    }

    /// Refuses an update before its record is looked up when no collection would let
    /// `principal` write the named fields, so that the answer is the same for existing and
    /// missing ids: a caller without rights learns nothing of which ids exist.
    fn may_update_some_record(
        &self,
        principal: &Principal,
        set: &[FieldInput<'_>],
        clear: &[String],
    ) -> Result<(), Error> {
        let table = self.policy.table();
        let names: Vec<&str> = set
            .iter()
            .map(|f| f.name)
            .chain(clear.iter().map(String::as_str))
            .collect();
        let mut refusal = None;
        let mut writes_any = false;
        for collection in self.schema.collections() {
            writes_any |= (0..collection.fields().len())
                .any(|f| table.check_write(principal, collection, &[f]).is_ok());
            let Some(touched) = names
                .iter()
                .map(|n| collection.field_index(n))
                .collect::<Option<Vec<usize>>>()
            else {
                continue;
            };
            match table.check_write(principal, collection, &touched) {
                Ok(_) => return Ok(()),
                Err(r) => {
                    refusal.get_or_insert(r);
                }
            }
        }
        match refusal {
            Some(r) => Err(refused(principal, r)),
            None if !writes_any => Err(Error::PermissionDenied(format!(
                "{} (roles {}) may not write any record",
                principal.subject,
                principal.roles_text()
            ))),
            // No collection declares every named field: the record's own check names it.
            None => Ok(()),
        }
    }

    /// Refuses a shred before its record is looked up when `principal` may delete records of
    /// no collection (same answer for existing and missing ids).
    fn may_delete_some_record(&self, principal: &Principal) -> Result<(), Error> {
        let table = self.policy.table();
        if self
            .schema
            .collections()
            .any(|c| table.check_delete(principal, c).is_ok())
        {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{} (roles {}) may not delete records of any collection",
                principal.subject,
                principal.roles_text()
            )))
        }
    }
}

/// The fields a read asks for, as indices (every declared field if `fields` is empty).
/// The policy's decisions for the reads of one call: one decision table (one policy version)
/// for the whole call, and each collection's requested fields decided once however many of its
/// records the call reads (a batch, a find, an export).
pub(super) struct Decider {
    table: Arc<DecisionTable>,
    decided: Vec<(String, ReadPermit)>,
}

impl Decider {
    /// Decisions under the policy's current table.
    pub(super) fn new(policy: &PolicyEngine) -> Self {
        Self {
            table: policy.table(),
            decided: Vec::new(),
        }
    }

    /// The decisions for `fields` (all of the collection's if empty) of a record of
    /// `collection` read for `purpose`.
    fn decide(
        &mut self,
        principal: &Principal,
        collection: &crate::domain::Collection,
        fields: &[String],
        purpose: &Purpose,
    ) -> Result<ReadPermit, Error> {
        let name = collection.name().as_str();
        if let Some((_, permit)) = self.decided.iter().find(|(c, _)| c == name) {
            return Ok(permit.clone());
        }
        let requested = requested_fields(collection, fields)?;
        let permit = self
            .table
            .decide_read(principal, collection, &requested, purpose);
        self.decided.push((name.to_owned(), permit.clone()));
        Ok(permit)
    }
}

fn requested_fields(
    collection: &crate::domain::Collection,
    fields: &[String],
) -> Result<Vec<usize>, Error> {
    if fields.is_empty() {
        return Ok((0..collection.fields().len()).collect());
    }
    let mut out = Vec::with_capacity(fields.len());
    for (n, name) in fields.iter().enumerate() {
        let (i, _) = collection.field(name, &format!("fields[{n}]"))?;
        if out.contains(&i) {
            // The name is the declared one (ours), not the caller's text.
            return Err(InvalidInput::new(
                format!("fields[{n}] ({})", collection.fields()[i].0),
                "requested more than once",
            )
            .into());
        }
        out.push(i);
    }
    Ok(out)
}

/// The audit outcome of a field a read decided `d`: the consent rule's reason if the record's
/// consent withheld it (`no autodialer consent (TCPA)`), `disclosure limit` if the subject's
/// disclosure limit did, else what the decision disclosed.
fn read_outcome(d: Decision, limited: bool, consent: Option<&str>) -> &str {
    if let Some(reason) = consent {
        return reason;
    }
    if limited {
        return limits::DISCLOSURE_LIMIT_OUTCOME;
    }
    match d {
        Decision::Denied => "withheld",
        Decision::Masked => "masked",
        Decision::Plain => "plain",
        Decision::Pseudonym => "pseudonym",
    }
}

/// `(field index, outcome)` pairs as named field outcomes.
fn outcomes<'a>(
    collection: &crate::domain::Collection,
    pairs: impl Iterator<Item = (usize, &'a str)>,
) -> Vec<FieldOutcome> {
    pairs
        .map(|(i, outcome)| FieldOutcome {
            field: collection.fields()[i].0.as_str().to_owned(),
            outcome: outcome.to_owned(),
        })
        .collect()
}

/// The fields an update touched: set ones `written`, cleared ones `cleared`.
fn values_idx<'a>(
    touched: &'a [usize],
    cleared: &'a [usize],
) -> impl Iterator<Item = (usize, &'static str)> + 'a {
    touched.iter().map(move |&i| {
        (
            i,
            if cleared.contains(&i) {
                "cleared"
            } else {
                "written"
            },
        )
    })
}
