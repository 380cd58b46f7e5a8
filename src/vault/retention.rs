//! Retention: the schema's rules (`domain::Retention`) applied by a sweeper that shreds what
//! expired, through the same paths as the API: a whole record by `Vault::destroy` (data key
//! destroyed, ciphertexts deleted, tombstone, purge, audit event with the signed receipt), a
//! field by `Vault::rewrite` (the record rewritten without it under a new data key, the old key
//! destroyed and purged). If the expired fields are all the record holds, the record is shredded.
//! A record under an active legal hold is skipped, and expires at the first sweep after the hold
//! ends. The acting subject is `system:retention`: the vault's own obligation, not a caller's.
//!
//! A sweep walks the record headers in id order, a chunk at a time: one range scan of the
//! headers and one multi-get of their times per chunk, and a record is locked and loaded again
//! only if something of it expired (the check is repeated under its lock, so an update in
//! between wins). After each chunk the position reached is written to `meta`; a sweep stopped
//! (a crash, a stop, a bounded run) resumes from it, and a finished sweep removes it. Shredding
//! is idempotent (a shredded record is gone from the headers), so a crash between a shred and
//! the checkpoint shreds nothing twice and misses nothing.
//!
//! A record without times (written before they were kept) counts from the moment a sweep first
//! sees it: the sweep writes its times then, so nothing expires at once on an upgrade.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use super::{
    Error, Privilege, Shred, Vault,
    header::Header,
    outcomes, require,
    sealed::record_entry_key,
    times::{TIMES_ENTRY, Times},
};
use crate::{
    audit::{Call, Event},
    domain::{Anchor, Collection, Principal, RecordId},
    storage::{Batch, Keyspace, Snapshot},
};

/// The subject of the sweeper's audit events.
pub const SUBJECT: &str = "system:retention";
/// How often the sweeper runs unless configured (`[retention] sweep_interval`).
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// The most items a plan lists.
pub const PLAN_LIMIT: usize = 10_000;
/// Records per chunk: one scan, one multi-get, one checkpoint.
const CHUNK: usize = 256;
/// A progress line in the log every this many records examined.
const PROGRESS_EVERY: u64 = 100_000;
/// Due records expired at once: enough to fill the log's group commits, few enough that the
/// sweep does not crowd out callers' requests.
const EXPIRE_AT_ONCE: usize = 16;
/// The last header key a stopped sweep finished (in `meta`).
const CURSOR_KEY: &[u8] = b"retention/cursor";
/// When the last sweep finished (vault clock, ms, in `meta`).
const LAST_SWEEP_KEY: &[u8] = b"retention/last_sweep";

/// The sweeper's task and controls; one sweep at a time.
pub(super) struct Sweeper {
    sweeping: tokio::sync::Mutex<()>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Default for Sweeper {
    fn default() -> Self {
        Self {
            sweeping: tokio::sync::Mutex::new(()),
            stop: watch::channel(false).0,
            task: Mutex::new(None),
        }
    }
}

impl Sweeper {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Stops the scheduled sweeps; a sweep under way stops after the record it is at.
    pub(super) async fn stop(&self) {
        self.stop.send_replace(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the retention sweeper failed");
        }
    }
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Records looked at.
    pub examined: u64,
    /// Records shredded whole.
    pub shredded_records: u64,
    /// Fields shredded from records that stay.
    pub shredded_fields: u64,
    /// Records with something expired, skipped for a legal hold.
    pub held: u64,
    /// Records seen for the first time (stored before times were kept): they count from now.
    pub first_seen: u64,
    /// Records whose expiry failed (logged); retried at the next sweep.
    pub failed: u64,
    /// The sweep reached the end (else it stopped, and the next one resumes where it was).
    pub finished: bool,
}

/// One thing a plan says will expire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanItem {
    /// The record.
    pub id: RecordId,
    /// Its collection.
    pub collection: String,
    /// The field; `None`: the whole record.
    pub field: Option<String>,
    /// The rule, e.g. `card_number 18 months after last_update`.
    pub rule: String,
    /// When it expires (ms since the epoch); at or before the plan's time, it is due now.
    pub due_ms: i64,
    /// Under an active legal hold: a sweep skips it.
    pub held: bool,
}

/// A dry run of retention up to a horizon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The vault's time of the plan.
    pub now_ms: i64,
    /// Records looked at.
    pub examined: u64,
    /// Items that expire by the horizon, listed or not.
    pub due: u64,
    /// The first of them, in record id order.
    pub items: Vec<PlanItem>,
    /// More were due than listed.
    pub truncated: bool,
}

/// What expires of one record by a time.
enum Expiry {
    /// These fields (index, due, rule); the record keeps others.
    Fields(Vec<(usize, i64, String)>),
    /// The whole record.
    Record { due_ms: i64, rule: String },
}

/// What of a record (`manifest`, `times`) in `collection` has expired at `at_ms`.
fn expiry(collection: &Collection, manifest: u64, times: &Times, at_ms: i64) -> Option<Expiry> {
    let retention = collection.retention();
    if let Some(rule) = retention.record() {
        let anchor = match rule.after() {
            Anchor::Created => times.created_ms,
            Anchor::LastActivity | Anchor::LastUpdate => times.last_activity_ms,
        };
        let due_ms = rule.due_ms(anchor);
        if due_ms <= at_ms {
            return Some(Expiry::Record {
                due_ms,
                rule: format!("record {rule}"),
            });
        }
    }
    let mut fields = Vec::new();
    for (i, rule) in retention.fields() {
        if manifest & (1 << i) == 0 {
            continue;
        }
        let anchor = match rule.after() {
            Anchor::Created => times.created_ms,
            Anchor::LastActivity => times.last_activity_ms,
            Anchor::LastUpdate => times.field_ms(*i),
        };
        let due = rule.due_ms(anchor);
        if due <= at_ms {
            fields.push((*i, due, format!("{} {rule}", collection.fields()[*i].0)));
        }
    }
    if fields.is_empty() {
        return None;
    }
    let covered = fields.iter().fold(0u64, |m, (i, ..)| m | (1 << i));
    if covered == manifest {
        let due_ms = fields.iter().map(|f| f.1).max().unwrap_or(at_ms);
        let rules: Vec<&str> = fields.iter().map(|f| f.2.as_str()).collect();
        return Some(Expiry::Record {
            due_ms,
            rule: format!("{} (no field left: the whole record)", rules.join(", ")),
        });
    }
    Some(Expiry::Fields(fields))
}

/// A record as a chunk scan saw it.
struct Candidate {
    id: RecordId,
    header: Header,
    times: Option<Times>,
}

/// What `expire` did to one record.
enum Outcome {
    Fields(u64),
    Held,
    Kept,
    Record,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Vault {
    /// Starts the background sweeper: a sweep every `interval`, the first at once if one was
    /// left unfinished or the last is older than `interval`. `stop` ends it.
    pub fn start_retention(self: &Arc<Self>, interval: Duration) {
        let task = tokio::spawn(schedule(
            Arc::downgrade(self),
            interval,
            self.sweeper.stop.subscribe(),
        ));
        *self
            .sweeper
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
    }

    /// A record's times, from `snapshot`; `None` if it has none (or they are unreadable).
    pub(super) fn times(
        &self,
        snapshot: &dyn Snapshot,
        id: &RecordId,
    ) -> Result<Option<Times>, Error> {
        Ok(snapshot
            .get(Keyspace::Records, &record_entry_key(id, TIMES_ENTRY))?
            .and_then(|b| Times::decode(&b)))
    }

    /// Adds a record's times to `batch`.
    pub(super) fn put_times(&self, batch: &mut Batch, id: &RecordId, times: &Times) {
        batch.put(
            Keyspace::Records,
            record_entry_key(id, TIMES_ENTRY),
            times.encode(),
        );
    }

    /// What would expire within `within` from now: a dry run, nothing changed. Lists at most
    /// `limit` items (`PLAN_LIMIT` at most), in record id order.
    ///
    /// # Errors
    /// `PermissionDenied` without `retention manage`; `Unavailable`, `DataLoss` (a record's
    /// holds unreadable).
    pub fn plan_retention(
        &self,
        principal: &Principal,
        within: Duration,
        limit: usize,
    ) -> Result<Plan, Error> {
        require(&self.policy, principal, Privilege::ManageRetention)?;
        let limit = limit.min(PLAN_LIMIT);
        let now_ms = self.clock.now_ms();
        let at = now_ms.saturating_add(ms(within));
        let mut plan = Plan {
            now_ms,
            examined: 0,
            due: 0,
            items: Vec::new(),
            truncated: false,
        };
        let mut cursor: Option<Vec<u8>> = None;
        loop {
            let (candidates, last) = self.chunk(cursor.as_deref())?;
            let Some(last) = last else { break };
            cursor = Some(last);
            for c in candidates {
                plan.examined += 1;
                let Ok(collection) = self.schema.collection(&c.header.collection, "") else {
                    continue;
                };
                let times = c
                    .times
                    .unwrap_or_else(|| Times::first_seen(now_ms, c.header.manifest));
                let Some(expiry) = expiry(collection, c.header.manifest, &times, at) else {
                    continue;
                };
                let held = self.holds_of(&c.id)?.iter().any(|h| h.is_active(now_ms));
                let item = |field: Option<String>, rule: String, due_ms: i64| PlanItem {
                    id: c.id,
                    collection: c.header.collection.clone(),
                    field,
                    rule,
                    due_ms,
                    held,
                };
                let items = match expiry {
                    Expiry::Record { due_ms, rule } => vec![item(None, rule, due_ms)],
                    Expiry::Fields(fields) => fields
                        .into_iter()
                        .map(|(i, due, rule)| {
                            item(
                                Some(collection.fields()[i].0.as_str().to_owned()),
                                rule,
                                due,
                            )
                        })
                        .collect(),
                };
                for i in items {
                    plan.due += 1;
                    if plan.items.len() < limit {
                        plan.items.push(i);
                    } else {
                        plan.truncated = true;
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Runs a sweep now, for `principal` (`retention manage`), shredding at most `max_shreds`
    /// records' data if given (a bounded run; the next sweep resumes where it stopped).
    ///
    /// # Errors
    /// `PermissionDenied` without `retention manage`; `Unavailable` if the store fails.
    pub async fn run_retention(
        &self,
        principal: &Principal,
        call: &Call,
        max_shreds: Option<u64>,
    ) -> Result<SweepReport, Error> {
        require(&self.policy, principal, Privilege::ManageRetention)?;
        self.sweep(Some((principal, call)), max_shreds).await
    }

    /// One sweep (see the module docs), resuming an unfinished one.
    async fn sweep(
        &self,
        by: Option<(&Principal, &Call)>,
        max_shreds: Option<u64>,
    ) -> Result<SweepReport, Error> {
        let _sweeping = self.sweeper.sweeping.lock().await;
        let request_id = by.map_or_else(
            || Call::new("Retention/Sweep").request_id,
            |(_, call)| call.request_id.clone(),
        );
        let mut cursor = self.store.get(Keyspace::Meta, CURSOR_KEY)?;
        let resumed = cursor.is_some();
        let mut report = SweepReport::default();
        let mut acted = 0u64;
        'sweep: loop {
            if self.sweeper.stopping() || max_shreds.is_some_and(|m| acted >= m) {
                break;
            }
            let (candidates, last) = self.chunk(cursor.as_deref())?;
            let Some(last) = last else {
                report.finished = true;
                break;
            };
            let now = self.clock.now_ms();
            let mut unseen = Vec::new();
            let mut due = Vec::new();
            for c in candidates {
                report.examined += 1;
                if report.examined % PROGRESS_EVERY == 0 {
                    tracing::info!(
                        examined = report.examined,
                        shredded_records = report.shredded_records,
                        shredded_fields = report.shredded_fields,
                        held = report.held,
                        "retention sweep in progress"
                    );
                }
                let Some(times) = c.times else {
                    unseen.push(c.id);
                    continue;
                };
                let Ok(collection) = self.schema.collection(&c.header.collection, "") else {
                    continue;
                };
                if expiry(collection, c.header.manifest, &times, now).is_some() {
                    due.push(c.id);
                }
            }
            // The due records of the chunk, `EXPIRE_AT_ONCE` at a time: their synced writes
            // share the log's group commits instead of waiting one after another.
            let mut due = due.into_iter();
            while due.len() > 0 {
                let room = max_shreds.map_or(EXPIRE_AT_ONCE, |m| {
                    usize::try_from(m.saturating_sub(acted))
                        .unwrap_or(usize::MAX)
                        .min(EXPIRE_AT_ONCE)
                });
                if self.sweeper.stopping() || room == 0 {
                    // Not checkpointed: the next sweep resumes at this chunk.
                    break 'sweep;
                }
                let wave: Vec<RecordId> = due.by_ref().take(room).collect();
                let outcomes = futures_util::future::join_all(
                    wave.iter().map(|id| self.expire(id, now, &request_id)),
                )
                .await;
                for (id, outcome) in wave.iter().zip(outcomes) {
                    match outcome {
                        Ok(Outcome::Fields(n)) => {
                            acted += 1;
                            report.shredded_fields += n;
                        }
                        Ok(Outcome::Record) => {
                            acted += 1;
                            report.shredded_records += 1;
                        }
                        Ok(Outcome::Held) => report.held += 1,
                        Ok(Outcome::Kept) => {}
                        Err(e @ Error::Unavailable(_)) => return Err(e),
                        Err(e) => {
                            report.failed += 1;
                            tracing::error!(record = %id, error = %e, "a retention expiry failed; retried at the next sweep");
                        }
                    }
                }
            }
            report.first_seen += self.first_seen(&unseen, now).await?;
            let mut checkpoint = Batch::new();
            checkpoint.put(Keyspace::Meta, CURSOR_KEY, last.clone());
            self.store.write(checkpoint)?;
            cursor = Some(last);
            // Reads and writes of callers go first between chunks.
            tokio::task::yield_now().await;
        }
        let mut batch = Batch::new();
        if report.finished {
            let forgotten = self.forget_expired_batches(self.clock.now_ms()).await?;
            if forgotten > 0 {
                tracing::info!(forgotten, "expired idempotent batch results forgotten");
            }
            batch.delete(Keyspace::Meta, CURSOR_KEY);
            batch.put(
                Keyspace::Meta,
                LAST_SWEEP_KEY,
                self.clock.now_ms().to_be_bytes().to_vec(),
            );
        }
        let r = &report;
        let detail = format!(
            "{} sweep{} {}: {} records examined, {} records shredded, {} fields shredded, {} \
             held (skipped), {} first seen (counted from now), {} failed",
            if by.is_some() {
                "requested"
            } else {
                "scheduled"
            },
            if resumed { " (resumed)" } else { "" },
            if r.finished {
                "finished"
            } else {
                "stopped before the end; the next sweep resumes from its checkpoint"
            },
            r.examined,
            r.shredded_records,
            r.shredded_fields,
            r.held,
            r.first_seen,
            r.failed
        );
        tracing::info!(
            examined = r.examined,
            shredded_records = r.shredded_records,
            shredded_fields = r.shredded_fields,
            held = r.held,
            first_seen = r.first_seen,
            failed = r.failed,
            finished = r.finished,
            "retention sweep done"
        );
        // A scheduled sweep over nothing says nothing: no event an hour on an empty vault.
        if by.is_some() || r.examined > 0 {
            let base = match by {
                Some((principal, call)) => call.event(principal),
                None => Event {
                    request_id,
                    subject: SUBJECT.into(),
                    result: "OK".into(),
                    ..Event::default()
                },
            };
            let event = Event {
                method: "Retention/Sweep".into(),
                detail,
                ..base
            };
            self.audit.commit(batch, vec![event]).await?;
        } else if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(report)
    }

    /// Up to `CHUNK` records after the header key `after` (from the first if `None`), with
    /// their times, and the last header key scanned (`None`: no more).
    fn chunk(&self, after: Option<&[u8]>) -> Result<(Vec<Candidate>, Option<Vec<u8>>), Error> {
        let from = after.map_or_else(Vec::new, |k| {
            // The least key after `k`.
            let mut next = k.to_vec();
            next.push(0);
            next
        });
        let headers = self
            .store
            .scan_range(Keyspace::Headers, &from, None, CHUNK)?;
        let last = headers.last().map(|(k, _)| k.clone());
        let mut out = Vec::with_capacity(headers.len());
        for (key, value) in headers {
            let (Ok(id), Some(header)) = (<[u8; 16]>::try_from(&key[..]), Header::decode(&value))
            else {
                tracing::error!("a malformed record header is skipped by retention");
                continue;
            };
            out.push(Candidate {
                id: RecordId::from_bytes(id),
                header,
                times: None,
            });
        }
        let keys: Vec<Vec<u8>> = out
            .iter()
            .map(|c| record_entry_key(&c.id, TIMES_ENTRY))
            .collect();
        for (c, t) in out
            .iter_mut()
            .zip(self.store.multi_get(Keyspace::Records, &keys)?)
        {
            c.times = t.and_then(|b| Times::decode(&b));
        }
        Ok((out, last))
    }

    /// Writes times for the records of `ids` that still have none (stored before times were
    /// kept): they count from `now`. Returns how many.
    async fn first_seen(&self, ids: &[RecordId], now: i64) -> Result<u64, Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        let _guards = self.locks.lock_all(ids).await;
        let snapshot = self.store.snapshot();
        let heads: Vec<Vec<u8>> = ids.iter().map(|id| id.as_bytes().to_vec()).collect();
        let headers = snapshot.multi_get(Keyspace::Headers, &heads)?;
        let mut batch = Batch::new();
        let mut n = 0;
        for (id, header) in ids.iter().zip(headers) {
            let Some(header) = header.and_then(|h| Header::decode(&h)) else {
                continue;
            };
            if self.times(snapshot.as_ref(), id)?.is_none() {
                self.put_times(&mut batch, id, &Times::first_seen(now, header.manifest));
                n += 1;
            }
        }
        drop(snapshot);
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(n)
    }

    /// Shreds what of `id` expired at `now`, checked again under its lock.
    async fn expire(&self, id: &RecordId, now: i64, request_id: &str) -> Result<Outcome, Error> {
        let _guard = self.locks.lock(id).await;
        let snapshot = self.store.snapshot();
        let loaded = match self.load(snapshot.as_ref(), id) {
            Ok(loaded) => loaded,
            // Shredded since the scan.
            Err(Error::NotFound) => return Ok(Outcome::Kept),
            Err(e) => return Err(e),
        };
        let Some(mut times) = self.times(snapshot.as_ref(), id)? else {
            return Ok(Outcome::Kept);
        };
        let Some(expiry) = expiry(loaded.collection, loaded.header.manifest, &times, now) else {
            return Ok(Outcome::Kept);
        };
        match self.refuse_if_held(id, "its retention expiry") {
            Ok(()) => {}
            Err(Error::FailedPrecondition(_)) => return Ok(Outcome::Held),
            Err(e) => return Err(e),
        }
        let base = Event {
            request_id: request_id.to_owned(),
            subject: SUBJECT.into(),
            result: "OK".into(),
            ..Event::default()
        };
        match expiry {
            Expiry::Record { rule, .. } => {
                let event = Event {
                    method: "Retention/ShredRecord".into(),
                    ..base
                };
                self.destroy(
                    snapshot,
                    id,
                    loaded,
                    Shred::Retention { event, rule },
                    false,
                )
                .await?;
                Ok(Outcome::Record)
            }
            Expiry::Fields(fields) => {
                let cleared: Vec<usize> = fields.iter().map(|f| f.0).collect();
                let rules: Vec<&str> = fields.iter().map(|f| f.2.as_str()).collect();
                times.forget(&cleared);
                let event = Event {
                    method: "Retention/ShredField".into(),
                    collection: loaded.header.collection.clone(),
                    record_id: id.to_string(),
                    fields: outcomes(loaded.collection, cleared.iter().map(|&i| (i, "destroyed"))),
                    detail: format!("retention: {}", rules.join("; ")),
                    ..base
                };
                self.rewrite(snapshot, id, &loaded, Vec::new(), &cleared, &times, event)
                    .await?;
                self.purger.fields_expired(*id);
                Ok(Outcome::Fields(
                    u64::try_from(cleared.len()).unwrap_or(u64::MAX),
                ))
            }
        }
    }

    /// How long the sweeper waits before its first sweep: none if a sweep was left unfinished
    /// or the last finished more than `interval` ago; a vault never swept starts its count now.
    fn first_wait(&self, interval: Duration) -> Result<Duration, Error> {
        if self.store.get(Keyspace::Meta, CURSOR_KEY)?.is_some() {
            return Ok(Duration::ZERO);
        }
        let now = self.clock.now_ms();
        let last = self
            .store
            .get(Keyspace::Meta, LAST_SWEEP_KEY)?
            .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map(i64::from_be_bytes);
        let Some(last) = last else {
            let mut batch = Batch::new();
            batch.put(Keyspace::Meta, LAST_SWEEP_KEY, now.to_be_bytes().to_vec());
            self.store.write(batch)?;
            return Ok(interval);
        };
        let left = last.saturating_add(ms(interval)).saturating_sub(now);
        Ok(Duration::from_millis(u64::try_from(left).unwrap_or(0)).min(interval))
    }
}

/// The sweeper's loop: holds the vault weakly, so that it never keeps a stopped vault alive.
async fn schedule(vault: Weak<Vault>, interval: Duration, mut stop: watch::Receiver<bool>) {
    let first = vault.upgrade().map(|v| v.first_wait(interval));
    let mut wait = match first {
        Some(Ok(wait)) => wait,
        Some(Err(e)) => {
            tracing::error!(error = %e, "the retention sweeper cannot read its state; it tries again after one interval");
            interval
        }
        None => return,
    };
    loop {
        if *stop.borrow() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        let Some(vault) = vault.upgrade() else { return };
        if let Err(e) = vault.sweep(None, None).await {
            tracing::error!(error = %e, "a retention sweep failed; it resumes at the next one");
        }
        drop(vault);
        wait = interval;
    }
}
