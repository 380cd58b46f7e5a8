//! Many records in one call (`BatchGetRecords`, `BatchCreateRecords`, `strongroom import`):
//! each record decided, checked and answered as its single call would be, with one policy
//! table, one audit commit and, for creates, one synced write (and one synced write of the
//! wrapped keys) for the whole batch.
//!
//! A bad item fails alone: an unknown or shredded id, an invalid value, a field the caller may
//! not write. A failure that concerns every item (the audit log or the store unavailable)
//! fails the whole call. Nothing is half-written: the records of a batch, each whole, go to the
//! store in one atomic write with their events made durable first.
//!
//! Idempotent creates: a batch may carry a key chosen by its caller. The results of the first
//! call with that key (by the same subject) are stored in the same write as its records, under
//! a keyed digest of subject and key, with a keyed digest of the records sent (so that no value
//! can be recovered or tested from the data dir). A repeat of the call within
//! `IDEMPOTENCY_MS` gets those results back and creates nothing; a repeat with other records is
//! refused. Calls with one key are serialized. The retention sweep forgets expired entries.

use std::collections::BTreeMap;

use super::{
    Decider, Error, FieldInput, RecordView, Vault, check_purpose, index, outcomes, refused,
    require_in, sealed, times::Times,
};
use crate::{
    audit::{Call, Event},
    bytes::Reader,
    crypto::Dek,
    domain::{Collection, FieldValue, InvalidInput, Principal, Purpose, RecordId},
    policy::{DecisionTable, Privilege},
    storage::{Batch, Keyspace},
};

/// How long the results of an idempotent batch are kept: a repeat within this time replays
/// them (7 days).
pub const IDEMPOTENCY_MS: i64 = 7 * 24 * 3600 * 1000;

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

/// Where stored batch results live in `Meta`.
const IDEMPOTENCY_PREFIX: &[u8] = b"idempotency/";

/// The provider label of the key an idempotency slot (subject and key) is computed under.
const IDEMPOTENCY_LABEL: &str = "idempotency/slot";

/// The provider label of the key the digest of a batch's records is computed under.
const RECORDS_LABEL: &str = "idempotency/records";

/// Stored batch results the sweep examines at a time.
const SWEEP_PAGE: usize = 1024;

/// One record to create.
#[derive(Debug)]
pub struct NewRecord<'a> {
    /// The collection's name.
    pub collection: &'a str,
    /// Its fields.
    pub fields: &'a [FieldInput<'a>],
    /// A decoy (`honeytokens manage`).
    pub honeytoken: bool,
}

/// How a batch of creates runs.
#[derive(Debug, Default)]
pub struct BatchOptions<'a> {
    /// A repeat with the same key (same subject, within `IDEMPOTENCY_MS`) replays the first
    /// call's results.
    pub idempotency_key: Option<&'a str>,
    /// Check every record and write nothing.
    pub validate_only: bool,
}

/// A batch of creates' answer.
#[derive(Debug)]
pub struct Created {
    /// One per record, in order: its id (`None` when only validated), or why it was not
    /// created (`InvalidArgument` or `PermissionDenied`).
    pub results: Vec<Result<Option<RecordId>, Error>>,
    /// These are the stored results of an earlier call with the same idempotency key.
    pub replayed: bool,
}

/// A record checked and ready to seal.
struct Prepared<'s> {
    id: RecordId,
    collection: &'s Collection,
    values: BTreeMap<usize, FieldValue>,
    honeytoken: bool,
    event: Event,
}

impl Vault {
    /// Counts the items of a batch call beyond the first against the caller's request limit
    /// (the authenticator counted the call itself): a batch of `n` costs `n` requests, so a
    /// limit bounds records per second however they are asked for.
    ///
    /// # Errors
    /// `ResourceExhausted` when fewer requests than items are left of this second's (the
    /// window's one alert is recorded first).
    pub async fn admit_items(
        &self,
        principal: &Principal,
        call: &Call,
        items: usize,
    ) -> Result<(), Error> {
        let extra = u64::try_from(items.saturating_sub(1)).unwrap_or(u64::MAX);
        if extra == 0 {
            return Ok(());
        }
        let Err(mut refused) = self.limiter.admit_n(principal, call.method, extra) else {
            return Ok(());
        };
        if let Some(alert) = refused.alert.take()
            && let Err(e) = self.audit.commit(Batch::new(), vec![*alert]).await
        {
            tracing::error!(error = %e, "the alert of a request limit was not recorded");
        }
        Err(Error::ResourceExhausted(format!(
            "{} (a batch counts each of its items)",
            refused.message()
        )))
    }

    /// Fails `InvalidArgument` naming `input` if a batch has more than `max_batch` items.
    fn check_batch(&self, n: usize, input: &str) -> Result<(), Error> {
        if n > self.limits.max_batch {
            return Err(InvalidInput::new(
                input,
                format!(
                    "{n} items, more than the limit of {}",
                    self.limits.max_batch
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Reads each of `ids` as `get` reads one, all under one policy version, and commits the
    /// events of all of them at once before anything is returned. One result per id, in order.
    ///
    /// # Errors
    /// For the whole call: `InvalidArgument` for too many ids or fields, or an id given twice;
    /// `PermissionDenied` if the token may not declare `purpose`; `Unavailable` if the events
    /// cannot be made durable. Per id: what `get` would fail with.
    pub async fn get_many(
        &self,
        principal: &Principal,
        call: &Call,
        ids: &[RecordId],
        fields: &[String],
        purpose: &Purpose,
    ) -> Result<Vec<Result<RecordView, Error>>, Error> {
        check_purpose(principal, purpose)?;
        self.check_count(fields.len(), "fields")?;
        self.check_batch(ids.len(), "ids")?;
        if let Some(twice) = repeated(ids.iter().copied().map(Some)) {
            return Err(InvalidInput::new(format!("ids[{twice}]"), "given more than once").into());
        }
        let mut decider = Decider::new(&self.policy);
        let mut events = Vec::with_capacity(ids.len());
        let results = ids
            .iter()
            .map(|id| {
                let (view, owed) =
                    self.read_record(principal, call, id, fields, purpose, &mut decider)?;
                events.extend(owed);
                Ok(view)
            })
            .collect();
        if !events.is_empty() {
            // Fail closed: no record leaves unless every event of the batch is durable.
            self.audit.commit(Batch::new(), events).await?;
        }
        Ok(results)
    }

    /// Creates each record as `create` creates one, in one synced write with all their events.
    /// One result per record, in order.
    ///
    /// # Errors
    /// For the whole call: `InvalidArgument` for too many records or a malformed idempotency
    /// key; `FailedPrecondition` for an idempotency key used with other records;
    /// `Unavailable` if the keys, the records or the events cannot be written (then none of
    /// the records is). Per record: `InvalidArgument`, `PermissionDenied` as `create`.
    pub async fn create_many(
        &self,
        principal: &Principal,
        call: &Call,
        records: &[NewRecord<'_>],
        options: &BatchOptions<'_>,
    ) -> Result<Created, Error> {
        self.check_batch(records.len(), "records")?;
        let Some(key) = options.idempotency_key.filter(|_| !options.validate_only) else {
            return self
                .create_now(principal, call, records, options, None)
                .await;
        };
        check_idempotency_key(key)?;
        let slot = self.idempotency_slot(principal, key)?;
        let sent = self.records_digest(records)?;
        let _serialized = self.locks.lock_key(first_16(&slot)).await;
        let now = self.clock.now_ms();
        if let Some(stored) = self
            .store
            .get(Keyspace::Meta, &slot)?
            .and_then(|b| Stored::decode(&b))
            .filter(|s| now.saturating_sub(s.created_ms) < IDEMPOTENCY_MS)
        {
            if stored.digest != sent {
                return Err(Error::FailedPrecondition(
                    "idempotency_key was used before with other records; use a new key".into(),
                ));
            }
            // The caller must still be allowed what it is given back: a token with fewer
            // roles for the same subject gets no ids of records it may not create now.
            let table = self.policy.table();
            for (record, item) in records.iter().zip(&stored.results) {
                if !matches!(item, StoredItem::Created(_)) {
                    continue;
                }
                if let Err(Error::PermissionDenied(msg)) = self
                    .prepare_create(&table, principal, call, record)
                    .map(|_| ())
                {
                    return Err(Error::PermissionDenied(format!(
                        "{msg}; the earlier results of this idempotency_key are not replayed"
                    )));
                }
            }
            let n = stored.results.len();
            let event = Event {
                detail: format!(
                    "replayed the results of an earlier call with the same idempotency key \
                     ({n} records); nothing written"
                ),
                ..call.event(principal)
            };
            self.audit.commit(Batch::new(), vec![event]).await?;
            return Ok(Created {
                results: stored
                    .results
                    .into_iter()
                    .map(StoredItem::into_result)
                    .collect(),
                replayed: true,
            });
        }
        self.create_now(principal, call, records, options, Some((slot, sent)))
            .await
    }

    /// Checks and (unless validating only) creates `records`; with `remember`, stores the
    /// results under that idempotency slot with the records' digest, in the same write.
    async fn create_now(
        &self,
        principal: &Principal,
        call: &Call,
        records: &[NewRecord<'_>],
        options: &BatchOptions<'_>,
        remember: Option<(Vec<u8>, [u8; 32])>,
    ) -> Result<Created, Error> {
        let mut prepared = Vec::with_capacity(records.len());
        let mut results: Vec<Result<Option<RecordId>, Error>> = Vec::with_capacity(records.len());
        // Every record of the call is decided under one policy version.
        let table = self.policy.table();
        // What a repeat with the same idempotency key gets back.
        let mut to_store = Vec::with_capacity(records.len());
        for record in records {
            match self.prepare_create(&table, principal, call, record) {
                Ok(p) => {
                    results.push(Ok((!options.validate_only).then_some(p.id)));
                    to_store.push(StoredItem::Created(p.id));
                    prepared.push(p);
                }
                Err(Error::InvalidArgument(e)) => {
                    to_store.push(StoredItem::Invalid {
                        input: e.field.clone(),
                        problem: e.problem.clone(),
                    });
                    results.push(Err(Error::InvalidArgument(e)));
                }
                Err(Error::PermissionDenied(msg)) => {
                    to_store.push(StoredItem::Denied(msg.clone()));
                    results.push(Err(Error::PermissionDenied(msg)));
                }
                Err(e) => return Err(e),
            }
        }
        if options.validate_only {
            let invalid = results.iter().filter(|r| r.is_err()).count();
            let event = Event {
                detail: format!(
                    "validated {} records, {invalid} invalid; nothing written",
                    results.len()
                ),
                ..call.event(principal)
            };
            self.audit.commit(Batch::new(), vec![event]).await?;
            return Ok(Created {
                results,
                replayed: false,
            });
        }
        if prepared.is_empty() {
            // Nothing valid: nothing written and nothing remembered (a repeat fails the same
            // way); the API records each record's refusal.
            return Ok(Created {
                results,
                replayed: false,
            });
        }
        let mut batch = Batch::new();
        let mut keys = Vec::with_capacity(prepared.len());
        let mut events = Vec::with_capacity(prepared.len());
        let now = self.clock.now_ms();
        for p in prepared {
            let dek = Dek::generate();
            let header = sealed::seal_values(
                &mut batch,
                &p.id,
                p.collection,
                &dek,
                (1, p.honeytoken),
                &p.values,
            );
            self.put_times(
                &mut batch,
                &p.id,
                &Times::new(now, p.values.keys().copied()),
            );
            index::put_entries(&mut batch, &self.index, &p.id, p.collection, &p.values)?;
            keys.push((p.id, header, dek));
            events.push(p.event);
        }
        if let Some((slot, digest)) = remember {
            let stored = Stored {
                created_ms: now,
                digest,
                results: to_store,
            };
            batch.put(Keyspace::Meta, slot, stored.encode());
        }
        let contexts: Vec<_> = keys
            .iter()
            .map(|(id, header, _)| sealed::dek_context(id, header))
            .collect();
        let entries: Vec<_> = keys
            .iter()
            .zip(&contexts)
            .map(|((id, _, dek), ctx)| (id, ctx, dek))
            .collect();
        // The keys first: a crash before the records leaves unused keys (removed at the next
        // start), never a record without its key.
        self.keys.put_many(&entries).await?;
        // On an error the batch may still have reached the disk (an fsync that failed after
        // the write): the keys stay, and the next start removes any no header names.
        self.audit.commit(batch, events).await?;
        Ok(Created {
            results,
            replayed: false,
        })
    }

    /// Checks one record as `create` does, under the policy version `table` was compiled
    /// from, and gives it an id and its event.
    fn prepare_create<'s>(
        &'s self,
        table: &DecisionTable,
        principal: &Principal,
        call: &Call,
        record: &NewRecord<'_>,
    ) -> Result<Prepared<'s>, Error> {
        if record.honeytoken {
            require_in(table, principal, Privilege::ManageHoneytokens)?;
        }
        let collection = self.schema.collection(record.collection, "collection")?;
        if record.fields.is_empty() {
            return Err(InvalidInput::new("fields", "a record needs at least one field").into());
        }
        self.check_count(record.fields.len(), "fields")?;
        let values = self.parse_values(collection, record.fields)?;
        let indices: Vec<usize> = values.iter().map(|(i, _)| *i).collect();
        let permit = table
            .check_write(principal, collection, &indices)
            .map_err(|r| refused(principal, r))?;
        let id = RecordId::random();
        let event = Event {
            collection: collection.name().as_str().to_owned(),
            record_id: id.to_string(),
            fields: outcomes(collection, indices.iter().map(|&i| (i, "written"))),
            policy_version: permit.policy_version(),
            // Seen only by holders of `audit read`, like every event.
            detail: if record.honeytoken {
                "honeytoken: a decoy record; every read of it raises an alert".into()
            } else {
                String::new()
            },
            ..call.event(principal)
        };
        Ok(Prepared {
            id,
            collection,
            values: values.into_iter().collect(),
            honeytoken: record.honeytoken,
            event,
        })
    }

    /// Where the results of `principal`'s batch with idempotency `key` are stored.
    fn idempotency_slot(&self, principal: &Principal, key: &str) -> Result<Vec<u8>, Error> {
        let digest = self
            .index
            .keyed(
                IDEMPOTENCY_LABEL,
                &[principal.subject.as_str().as_bytes(), b"\0", key.as_bytes()],
            )
            .map_err(|e| Error::Unavailable(format!("the idempotency key: {e}")))?;
        let mut slot = IDEMPOTENCY_PREFIX.to_vec();
        slot.extend_from_slice(&digest);
        Ok(slot)
    }

    /// A keyed digest of everything a batch sends, to tell a repeat from another batch under
    /// the same key without storing anything a value could be tested against. Every part is
    /// length-prefixed, so no two batches encode alike.
    fn records_digest(&self, records: &[NewRecord<'_>]) -> Result<[u8; 32], Error> {
        let mut encoded = zeroize::Zeroizing::new(Vec::new());
        let mut part = |bytes: &[u8]| {
            encoded.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            encoded.extend_from_slice(bytes);
        };
        for r in records {
            part(r.collection.as_bytes());
            part(if r.honeytoken { b"\x01" } else { b"\x00" });
            part(&(r.fields.len() as u64).to_be_bytes());
            for f in r.fields {
                part(f.name.as_bytes());
                part(f.value.as_bytes());
            }
        }
        self.index
            .keyed(RECORDS_LABEL, &[&encoded])
            .map_err(|e| Error::Unavailable(format!("the idempotency key: {e}")))
    }

    /// Deletes the stored results of idempotent batches older than `IDEMPOTENCY_MS`; returns
    /// how many. Run by the retention sweep, a page at a time; each entry is read again under
    /// its key's lock, so an entry a batch has just stored again is kept.
    pub(super) async fn forget_expired_batches(&self, now_ms: i64) -> Result<usize, Error> {
        let expired = |value: Option<&[u8]>| {
            value.is_some_and(|v| {
                Stored::decode(v)
                    .is_none_or(|s| now_ms.saturating_sub(s.created_ms) >= IDEMPOTENCY_MS)
            })
        };
        let end = prefix_end(IDEMPOTENCY_PREFIX);
        let mut from = IDEMPOTENCY_PREFIX.to_vec();
        let mut forgotten = 0;
        loop {
            let page = self
                .store
                .scan_range(Keyspace::Meta, &from, Some(&end), SWEEP_PAGE)?;
            for (key, value) in &page {
                if !expired(Some(value)) {
                    continue;
                }
                let _serialized = self.locks.lock_key(first_16(key)).await;
                if expired(self.store.get(Keyspace::Meta, key)?.as_deref()) {
                    let mut batch = Batch::new();
                    batch.delete(Keyspace::Meta, key.clone());
                    self.store.write(batch)?;
                    forgotten += 1;
                }
            }
            let Some((last, _)) = page.last().filter(|_| page.len() == SWEEP_PAGE) else {
                return Ok(forgotten);
            };
            from = last.clone();
            from.push(0);
        }
    }
}

/// The first key past every key that starts with `prefix` (whose last byte is not 0xff).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// Fails `InvalidArgument` unless `key` is 1 to `MAX_IDEMPOTENCY_KEY` bytes of
/// `[A-Za-z0-9._:-]`.
fn check_idempotency_key(key: &str) -> Result<(), Error> {
    let ok = !key.is_empty()
        && key.len() <= MAX_IDEMPOTENCY_KEY
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        return Ok(());
    }
    Err(InvalidInput::new(
        "idempotency_key",
        format!("must be 1 to {MAX_IDEMPOTENCY_KEY} characters of A-Z a-z 0-9 . _ : -"),
    )
    .into())
}

/// Where the first id given a second time is among `ids` (`None` entries, ids that did not
/// parse, keep their places).
pub fn repeated(ids: impl IntoIterator<Item = Option<RecordId>>) -> Option<usize> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter()
        .position(|id| id.is_some_and(|id| !seen.insert(id)))
}

fn first_16(slot: &[u8]) -> [u8; 16] {
    let tail = &slot[IDEMPOTENCY_PREFIX.len()..];
    std::array::from_fn(|i| tail.get(i).copied().unwrap_or(0))
}

/// The stored results of an idempotent batch.
#[derive(Debug, PartialEq)]
struct Stored {
    created_ms: i64,
    digest: [u8; 32],
    results: Vec<StoredItem>,
}

/// One stored result: what the first call answered for the record.
#[derive(Debug, PartialEq)]
enum StoredItem {
    Created(RecordId),
    Invalid { input: String, problem: String },
    Denied(String),
}

const STORED_VERSION: u8 = 1;

impl StoredItem {
    fn into_result(self) -> Result<Option<RecordId>, Error> {
        match self {
            Self::Created(id) => Ok(Some(id)),
            Self::Invalid { input, problem } => Err(InvalidInput::new(input, problem).into()),
            Self::Denied(msg) => Err(Error::PermissionDenied(msg)),
        }
    }
}

impl Stored {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(45 + 17 * self.results.len());
        out.push(STORED_VERSION);
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.digest);
        out.extend_from_slice(
            &u32::try_from(self.results.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        let text = |out: &mut Vec<u8>, s: &str| {
            let s = &s.as_bytes()[..s.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&u16::try_from(s.len()).unwrap_or(u16::MAX).to_be_bytes());
            out.extend_from_slice(s);
        };
        for item in &self.results {
            match item {
                StoredItem::Created(id) => {
                    out.push(0);
                    out.extend_from_slice(id.as_bytes());
                }
                StoredItem::Invalid { input, problem } => {
                    out.push(1);
                    text(&mut out, input);
                    text(&mut out, problem);
                }
                StoredItem::Denied(msg) => {
                    out.push(2);
                    text(&mut out, msg);
                }
            }
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.byte()? != STORED_VERSION {
            return None;
        }
        let created_ms = r.i64()?;
        let digest: [u8; 32] = r.array()?;
        let n = r.u32()?;
        let mut results = Vec::new();
        for _ in 0..n {
            let item = match r.byte()? {
                0 => StoredItem::Created(RecordId::from_bytes(r.array()?)),
                1 => StoredItem::Invalid {
                    input: text(&mut r)?,
                    problem: text(&mut r)?,
                },
                2 => StoredItem::Denied(text(&mut r)?),
                _ => return None,
            };
            results.push(item);
        }
        r.is_empty().then_some(Self {
            created_ms,
            digest,
            results,
        })
    }
}

/// A `u16`-prefixed text of the stored results.
fn text(r: &mut Reader<'_>) -> Option<String> {
    let n = r.u16()?;
    r.utf8(usize::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_results_round_trip_and_reject_garbage() {
        let stored = Stored {
            created_ms: 1_700_000_000_000,
            digest: [7; 32],
            results: vec![
                StoredItem::Created(RecordId::random()),
                StoredItem::Invalid {
                    input: "fields[1] (email)".into(),
                    problem: "not a valid email address".into(),
                },
                StoredItem::Denied("no rule allows it".into()),
            ],
        };
        let bytes = stored.encode();
        assert_eq!(Stored::decode(&bytes), Some(stored));
        for cut in 0..bytes.len() {
            assert_eq!(Stored::decode(&bytes[..cut]), None, "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Stored::decode(&longer), None);
    }

    #[test]
    fn idempotency_keys_are_checked() {
        for ok in ["import:ab12:1", "a", &"k".repeat(128)] {
            assert!(check_idempotency_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "é", &"k".repeat(129), "x/y"] {
            assert!(check_idempotency_key(bad).is_err(), "{bad}");
        }
    }
}
