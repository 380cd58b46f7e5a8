//! The audit log: every access decision as an event, hash-chained with SHA-256, the chain's
//! head signed (Ed25519, by the key provider) with every batch and at checkpoints; queried,
//! followed live, verified (online, or offline from an export with the public key alone),
//! exported, pruned.
//!
//! Events hold ids, names and outcomes, never field values or tokens. A single appender
//! groups concurrent requests into one append to the event log (`log`): in the embedded vault,
//! append-only segment files (`segment`, frames in `frame`), one write and one fdatasync per
//! batch, then the calls' data writes to the store; or the store itself (`StoreLog`), events and
//! data in one synced batch. Either way a read's event is durable before its data is returned,
//! and no write is applied without its event. The queue to the appender is bounded: committers
//! wait for room. Refused unauthenticated calls are counted, not queued, and written as one
//! event per source, method and reason per window (`refusals`).
//!
//! Depends on `crypto` (the MAC) and `storage`; knows nothing of gRPC.

mod appender;
mod chain;
mod codec;
mod export;
mod frame;
mod index;
mod log;
mod query;
mod refusals;
mod report;
mod segment;
mod verify;

use std::{net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{
    crypto::KeyProvider,
    storage::{Batch, Keyspace, Store, StoreError},
};

pub use chain::Checkpoint;
pub use export::{EXPORT_FORMAT, Export, ExportError, ExportReport, PinnedHead, verify_export};
pub use index::IndexKey;
pub use log::{Append, AppendFailed, Chained, EventLog, StoreLog, StoredEvents};
pub use query::Filter;
pub use refusals::UNKNOWN_METHOD;
pub use report::{DISCLOSING_OUTCOMES, FieldDisclosure, Report, SubjectReport};
pub use segment::{SEGMENT_BYTES, SegmentLog, rewrite_segments};
pub use verify::VerifyReport;

/// How one field fared in a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldOutcome {
    /// The field name.
    pub field: String,
    /// `plain`, `masked`, `withheld`, `disclosure limit` (reads); `written`, `cleared`
    /// (writes); `destroyed`.
    pub outcome: String,
}

/// One audited call or decision. Never holds a field value or a token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the chain, from 1; set by the appender.
    pub seq: u64,
    /// When it was committed (ms since the epoch, never decreasing); set by the appender.
    pub time_ms: i64,
    /// The request id (also in error messages and logs).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub request_id: String,
    /// The caller's subject; empty for an unauthenticated call.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The caller's roles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// The gRPC method, e.g. `Records/GetRecord`, or an internal operation.
    pub method: String,
    /// The collection, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub collection: String,
    /// The record id, when known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub record_id: String,
    /// Per-field outcomes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldOutcome>,
    /// The declared purpose.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// The policy version that decided (0 when no policy was consulted).
    #[serde(default)]
    pub policy_version: u64,
    /// The result: `OK` or a gRPC status code name such as `PERMISSION_DENIED`.
    pub result: String,
    /// Non-personal detail: versions changed, subjects a token was issued to, counts.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The identity (SAN URI) of the caller's client certificate, with mTLS; empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub certificate: String,
    /// Empty for an ordinary event; an alert's `warning` or `critical` (`SEVERITY_*`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub severity: String,
}

/// The severity of an alert that needs a look: a limit reached.
pub const SEVERITY_WARNING: &str = "warning";
/// The severity of an alert that needs a response now: a honeytoken touched.
pub const SEVERITY_CRITICAL: &str = "critical";

/// One call as the audit log names it: its method and request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The method, e.g. `Records/GetRecord`.
    pub method: &'static str,
    /// A fresh random id for this request, also in error messages and logs.
    pub request_id: String,
}

impl Call {
    /// A call to `method` with a fresh request id.
    pub fn new(method: &'static str) -> Self {
        use rand::RngCore;
        Self {
            method,
            request_id: format!("{:016x}", rand::thread_rng().next_u64()),
        }
    }

    /// The start of an `OK` event of this call by `principal`.
    pub fn event(&self, principal: &crate::domain::Principal) -> Event {
        Event {
            request_id: self.request_id.clone(),
            subject: principal.subject.as_str().to_owned(),
            roles: principal.role_names(),
            method: self.method.to_owned(),
            result: "OK".into(),
            certificate: principal.certificate.clone().unwrap_or_default(),
            ..Event::default()
        }
    }
}

/// The audit log could not be written or read. Callers fail closed: no data, no write.
#[derive(Debug, Clone, thiserror::Error)]
#[error("audit log unavailable: {message}")]
pub struct AuditError {
    pub(crate) message: String,
    /// A precondition of the call's own writes failed: another writer (another vault node)
    /// changed what the call read. Nothing was written; the call may be tried again.
    conflict: bool,
}

impl AuditError {
    /// A failure described by `message` (for logs).
    pub fn new(message: String) -> Self {
        Self {
            message,
            conflict: false,
        }
    }

    /// Whether the call's writes lost a race with another writer (nothing written).
    pub fn is_conflict(&self) -> bool {
        self.conflict
    }
}

impl From<StoreError> for AuditError {
    fn from(e: StoreError) -> Self {
        Self {
            conflict: matches!(e, StoreError::Conflict(_)),
            message: e.to_string(),
        }
    }
}

/// Settings of the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditOptions {
    /// Events older than this many days are pruned (from a checkpoint on); `None` keeps all.
    pub retention_days: Option<u32>,
    /// A durable checkpoint every this many events.
    pub checkpoint_every: u64,
    /// A segment file of the embedded log is closed at the next durable checkpoint past this
    /// size.
    pub segment_bytes: u64,
    /// Events in the data store itself (`StoreLog`) rather than in segment files.
    pub in_store: bool,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            retention_days: None,
            checkpoint_every: 1000,
            segment_bytes: SEGMENT_BYTES,
            in_store: false,
        }
    }
}

struct Job {
    batch: Batch,
    events: Vec<Event>,
    /// A durable checkpoint is written with this job even if no boundary was crossed.
    checkpoint: bool,
    reply: Option<oneshot::Sender<Result<Vec<u64>, AuditError>>>,
}

/// Jobs waiting for the appender at most; a committer past this waits for room (backpressure),
/// so a burst of callers costs bounded memory.
const QUEUE_JOBS: usize = 1024;

/// Keys under which the audit log keeps its checkpoints (in `meta`).
pub(crate) const HEAD_KEY: &[u8] = b"audit/head";
pub(crate) const CHECKPOINT_PREFIX: &[u8] = b"audit/checkpoint/";

/// The audit log.
pub struct Audit {
    jobs: mpsc::Sender<Job>,
    appender: Option<std::thread::JoinHandle<()>>,
    live: broadcast::Sender<Arc<Event>>,
    log: Arc<dyn EventLog>,
    store: Arc<dyn Store>,
    keys: Arc<chain::Keys>,
    options: AuditOptions,
    refusals: refusals::Refusals,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Audit {
    /// Opens the log kept in `store` itself (`StoreLog`) and starts its appender thread. The
    /// chain continues from the last stored event.
    ///
    /// # Errors
    /// `AuditError` if the store fails or the last event is unreadable.
    pub fn open(
        store: Arc<dyn Store>,
        keys: Arc<dyn KeyProvider>,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let log = Arc::new(StoreLog::new(Arc::clone(&store)));
        Self::open_with(log, store, keys, options, Vec::new())
    }

    /// Opens the log kept in segment files in `dir` (`SegmentLog`), with data writes and
    /// checkpoints in `store`. Events written before a crash whose writes were never applied
    /// are named by an `Audit/WritesNotApplied` event first.
    ///
    /// # Errors
    /// `AuditError` if the directory or the store fails, or a segment is damaged.
    pub fn open_segments(
        dir: &std::path::Path,
        store: Arc<dyn Store>,
        keys: Arc<dyn KeyProvider>,
        options: AuditOptions,
    ) -> Result<Self, AuditError> {
        let log = SegmentLog::open(dir, Arc::clone(&store), options.segment_bytes)?;
        let initial = log
            .unapplied()
            .map(|(first, last)| {
                appender::writes_not_applied(first, last, "the vault stopped before they were")
            })
            .into_iter()
            .collect();
        Self::open_with(Arc::new(log), store, keys, options, initial)
    }

    fn open_with(
        log: Arc<dyn EventLog>,
        store: Arc<dyn Store>,
        keys: Arc<dyn KeyProvider>,
        options: AuditOptions,
        initial: Vec<Event>,
    ) -> Result<Self, AuditError> {
        let keys = Arc::new(chain::Keys::new(keys));
        let state = appender::State::load(log.as_ref(), &keys)?;
        let (jobs, rx) = mpsc::channel(QUEUE_JOBS);
        let (live, _) = broadcast::channel(4096);
        let appender = appender::Appender {
            log: Arc::clone(&log),
            keys: Arc::clone(&keys),
            live: live.clone(),
            state,
            checkpoint_every: options.checkpoint_every.max(1),
            initial,
        };
        let appender = std::thread::Builder::new()
            .name("strongroom-audit".into())
            .spawn(move || appender.run(rx))
            .map_err(|e| AuditError::new(format!("cannot start the audit appender: {e}")))?;
        Ok(Self {
            jobs,
            appender: Some(appender),
            live,
            log,
            store,
            keys,
            options,
            refusals: refusals::Refusals::default(),
        })
    }

    /// Queues `job`, waiting for room when the appender is behind.
    async fn send(&self, job: Job) -> Result<(), AuditError> {
        self.jobs
            .send(job)
            .await
            .map_err(|_| AuditError::new("the audit appender has stopped".into()))
    }

    /// Commits `batch` and `events` together, durably, in chain order; returns the events'
    /// sequence numbers. Nothing of `batch` is applied if the events cannot be written.
    ///
    /// # Errors
    /// `AuditError` if the write or its sync fails.
    pub async fn commit(&self, batch: Batch, events: Vec<Event>) -> Result<Vec<u64>, AuditError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job {
            batch,
            events,
            checkpoint: false,
            reply: Some(tx),
        })
        .await?;
        rx.await
            .map_err(|_| AuditError::new("the audit appender stopped before answering".into()))?
    }

    /// Counts a refused unauthenticated call from `source` to `method` (`None`: a method the
    /// vault does not serve), refused for `reason`. Never waits and never queues a job: the
    /// count is written by `flush_refusals`, one event per source, method and reason.
    pub fn record_refused(
        &self,
        source: Option<IpAddr>,
        method: Option<&Arc<str>>,
        reason: &'static str,
    ) {
        self.refusals
            .record(source, method, reason, appender::now_ms());
    }

    /// Closes the window of refused calls: writes one event per source, method and reason with
    /// its count (nothing when nothing was refused). Run every minute and at shutdown.
    ///
    /// # Errors
    /// `AuditError` if the write fails; the counts of that window are then lost, and logged.
    pub async fn flush_refusals(&self) -> Result<(), AuditError> {
        let events = self.refusals.take(appender::now_ms());
        if events.is_empty() {
            return Ok(());
        }
        let n = events.len();
        self.commit(Batch::new(), events).await.map(|_| ()).inspect_err(|e| {
            tracing::error!(error = %e, events = n, "the counts of refused calls were not recorded");
        })
    }

    /// Writes a durable checkpoint of the current head now (e.g. at shutdown).
    ///
    /// # Errors
    /// `AuditError` if the write fails.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        self.send(Job {
            batch: Batch::new(),
            events: Vec::new(),
            checkpoint: true,
            reply: Some(tx),
        })
        .await?;
        rx.await
            .map_err(|_| AuditError::new("the audit appender stopped before answering".into()))?
            .map(|_| ())
    }

    /// The sequence number of the last stored event (0 for an empty log).
    ///
    /// # Errors
    /// `AuditError` if the store fails.
    pub fn last_seq(&self) -> Result<u64, AuditError> {
        Ok(self.log.last()?.map_or(0, |(seq, _)| seq))
    }

    /// The files the log keeps its events in (none when it lives in the store).
    pub fn files(&self) -> Vec<std::path::PathBuf> {
        self.log.files()
    }

    /// Events committed from now on, as they are committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.live.subscribe()
    }

    /// Up to `limit` events after `after_seq` that pass `filter`, oldest first, and the
    /// sequence number to continue after (`None` at the end of the log).
    ///
    /// # Errors
    /// `AuditError` if the store fails or an event does not decode.
    pub fn query(
        &self,
        filter: &Filter,
        after_seq: u64,
        limit: usize,
    ) -> Result<(Vec<Event>, Option<u64>), AuditError> {
        query::query(self.log.as_ref(), filter, after_seq, limit)
    }

    /// Who saw what: per subject, the records and fields disclosed by successful calls among
    /// the events `filter` passes (`report`). Scans the range.
    ///
    /// # Errors
    /// `AuditError` if the store fails or an event does not decode.
    pub fn report(&self, filter: &Filter) -> Result<Report, AuditError> {
        report::report(self.log.as_ref(), filter)
    }

    /// Verifies the chain from `from` to `to` (inclusive; the whole log by default), and the
    /// tail against the last checkpoint.
    ///
    /// # Errors
    /// `AuditError` if the store fails; integrity problems are in the report.
    pub fn verify(&self, from: Option<u64>, to: Option<u64>) -> Result<VerifyReport, AuditError> {
        verify::verify(self.log.as_ref(), self.store.as_ref(), &self.keys, from, to)
    }

    /// The signed head: the last event's sequence number and chain hash, signed with every
    /// batch. `None` for an empty log or a head that does not verify.
    ///
    /// # Errors
    /// `AuditError` if the store fails.
    pub fn head(&self) -> Result<Option<Checkpoint>, AuditError> {
        Ok(self.log.head()?.filter(|c| c.valid(&self.keys.public)))
    }

    /// Starts an export (format in `export`) of the events `filter` passes, up to the signed
    /// head as it is now; `export_chunk` then yields its lines.
    ///
    /// # Errors
    /// `AuditError` if the store fails.
    pub fn begin_export(&self, filter: Filter) -> Result<Export, AuditError> {
        Export::begin(
            self.log.as_ref(),
            self.store.as_ref(),
            &self.keys,
            filter,
            appender::now_ms(),
        )
    }

    /// The next lines of `export` (whole lines), `None` once it is complete.
    ///
    /// # Errors
    /// `AuditError` if the store fails or an event does not decode.
    pub fn export_chunk(&self, export: &mut Export) -> Result<Option<String>, AuditError> {
        export.chunk(self.log.as_ref(), self.store.as_ref())
    }

    /// Deletes events older than the retention period, up to the newest durable checkpoint
    /// before the cut, so the log stays verifiable from that checkpoint on. Returns how many
    /// events were deleted.
    ///
    /// # Errors
    /// `AuditError` if the store fails.
    pub async fn prune(&self, now_ms: i64) -> Result<u64, AuditError> {
        let Some(days) = self.options.retention_days else {
            return Ok(0);
        };
        let cut = now_ms - i64::from(days) * 86_400_000;
        let Some(anchor) = chain::newest_checkpoint_before(self.store.as_ref(), &self.keys, cut)?
        else {
            return Ok(0);
        };
        let first = self.log.first_seq()?;
        let kept = self.log.prune(anchor.seq)?;
        let deleted = match (first, kept) {
            (Some(first), Some(kept)) => kept.saturating_sub(first),
            (Some(first), None) => anchor.seq.saturating_sub(first) + 1,
            (None, _) => 0,
        };
        // Checkpoints before the one the kept events start after go with the events they
        // covered.
        let start = kept.map_or(anchor.seq, |k| k.saturating_sub(1).min(anchor.seq));
        let mut writes = Batch::new();
        writes.delete_range(
            Keyspace::Meta,
            CHECKPOINT_PREFIX.to_vec(),
            chain::checkpoint_key(start),
        );
        self.store.write(writes)?;
        if deleted == 0 {
            return Ok(0);
        }
        let event = Event {
            method: "Audit/Prune".into(),
            result: "OK".into(),
            detail: format!(
                "{deleted} events up to seq {} pruned (retention {days} days); the chain is anchored at checkpoint {}",
                first.unwrap_or(0) + deleted - 1,
                anchor.seq
            ),
            ..Event::default()
        };
        self.commit(Batch::new(), vec![event]).await?;
        Ok(deleted)
    }
}

/// Verifies the chain in `log` against the checkpoints in `store` and the public key of
/// `signer`, as `Audit::verify` does, without opening the log for appends: a stopped vault's
/// files, such as an investigator would check them (a log that would refuse to start, too).
///
/// # Errors
/// `AuditError` if the log or the store cannot be read; integrity problems are in the report.
pub fn verify_log(
    log: &dyn EventLog,
    store: &dyn Store,
    signer: Arc<dyn KeyProvider>,
) -> Result<VerifyReport, AuditError> {
    verify::verify(log, store, &chain::Keys::new(signer), None, None)
}

impl Drop for Audit {
    /// Stops the appender after it has committed every pending job, and waits for it, so the
    /// store is released when the last handle goes.
    fn drop(&mut self) {
        // Refusals not flushed by a graceful shutdown: queued if there is room, else logged.
        let events = self.refusals.take(appender::now_ms());
        if !events.is_empty() {
            let n = events.len();
            let job = Job {
                batch: Batch::new(),
                events,
                checkpoint: false,
                reply: None,
            };
            if self.jobs.try_send(job).is_err() {
                tracing::error!(events = n, "the counts of refused calls were not recorded");
            }
        }
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(appender) = self.appender.take()
            && appender.join().is_err()
        {
            tracing::error!("the audit appender panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{KeyValue, MemoryStore};
    use std::sync::{Condvar, Mutex};

    /// A store whose writes wait until the gate opens: a stalled disk. With `scans` armed, the
    /// next long scan of the audit keyspace (a verification's) waits there too.
    struct GatedStore {
        inner: MemoryStore,
        open: Mutex<bool>,
        opened: Condvar,
        scans: Mutex<ScanGate>,
    }

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum ScanGate {
        Armed,
        Held,
        Pass,
    }

    impl GatedStore {
        fn open_gate(&self) {
            *self.open.lock().unwrap_or_else(|e| panic!("{e}")) = true;
            self.opened.notify_all();
        }
    }

    impl Store for GatedStore {
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
            let mut gate = self.scans.lock().unwrap_or_else(|e| panic!("{e}"));
            if ks == Keyspace::Audit && limit > 1 && *gate == ScanGate::Armed {
                *gate = ScanGate::Held;
                self.opened.notify_all();
                gate = self
                    .opened
                    .wait_while(gate, |g| *g == ScanGate::Held)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            drop(gate);
            self.inner.scan_range(ks, from, to, limit)
        }
        fn last(&self, ks: Keyspace) -> Result<Option<KeyValue>, StoreError> {
            self.inner.last(ks)
        }
        fn write(&self, batch: Batch) -> Result<(), StoreError> {
            let open = self.open.lock().unwrap_or_else(|e| panic!("{e}"));
            drop(
                self.opened
                    .wait_while(open, |open| !*open)
                    .unwrap_or_else(|e| panic!("{e}")),
            );
            self.inner.write(batch)
        }
        fn purge(&self, prefixes: &[(Keyspace, &[u8])]) -> Result<(), StoreError> {
            self.inner.purge(prefixes)
        }
    }

    /// A verification that runs while events are appended must not take them for events added
    /// without the signing key (it read the head before the events: the crash soak tripped on
    /// a purge's event committed during its verification).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_verification_during_appends_still_verifies() {
        let store = Arc::new(GatedStore {
            inner: MemoryStore::new(),
            open: Mutex::new(true),
            opened: Condvar::new(),
            scans: Mutex::new(ScanGate::Pass),
        });
        let audit = Arc::new(
            Audit::open(
                Arc::clone(&store) as Arc<dyn Store>,
                Arc::new(crate::crypto::throwaway_keyring()),
                AuditOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let event = |n: u32| Event {
            method: "Test/Commit".into(),
            result: "OK".into(),
            detail: n.to_string(),
            ..Event::default()
        };
        for n in 0..3 {
            audit
                .commit(Batch::new(), vec![event(n)])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        *store.scans.lock().unwrap_or_else(|e| panic!("{e}")) = ScanGate::Armed;
        let verifying = {
            let audit = Arc::clone(&audit);
            tokio::task::spawn_blocking(move || audit.verify(None, None))
        };
        // The verification waits at its scan of the events; one more event lands meanwhile.
        drop(
            store
                .opened
                .wait_while(store.scans.lock().unwrap_or_else(|e| panic!("{e}")), |g| {
                    *g != ScanGate::Held
                })
                .unwrap_or_else(|e| panic!("{e}")),
        );
        audit
            .commit(Batch::new(), vec![event(3)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        *store.scans.lock().unwrap_or_else(|e| panic!("{e}")) = ScanGate::Pass;
        store.opened.notify_all();
        let report = verifying
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.problem, None);
        assert_eq!(report.to, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn committers_wait_for_room_while_the_disk_stalls_and_all_land_after() {
        let store = Arc::new(GatedStore {
            inner: MemoryStore::new(),
            open: Mutex::new(false),
            opened: Condvar::new(),
            scans: Mutex::new(ScanGate::Pass),
        });
        let audit = Arc::new(
            Audit::open(
                Arc::clone(&store) as Arc<dyn Store>,
                Arc::new(crate::crypto::throwaway_keyring()),
                AuditOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let n = 3 * QUEUE_JOBS;
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let audit = Arc::clone(&audit);
                tokio::spawn(async move {
                    let event = Event {
                        method: "Test/Commit".into(),
                        result: "OK".into(),
                        detail: i.to_string(),
                        ..Event::default()
                    };
                    audit.commit(Batch::new(), vec![event]).await
                })
            })
            .collect();
        // The appender is stuck in its first write; the queue fills up and stays full.
        for _ in 0..10_000 {
            if audit.jobs.capacity() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(audit.jobs.capacity(), 0, "the queue never filled");
        assert_eq!(audit.jobs.max_capacity(), QUEUE_JOBS);
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "nothing is acknowledged"
        );
        // Refusals meanwhile never wait for the queue.
        audit.record_refused(None, None, "missing authorization metadata");

        store.open_gate();
        let mut seqs = Vec::new();
        for task in tasks {
            let landed = task.await.unwrap_or_else(|e| panic!("{e}"));
            seqs.extend(landed.unwrap_or_else(|e| panic!("{e}")));
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
        audit
            .flush_refusals()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            audit.last_seq().unwrap_or_else(|e| panic!("{e}")),
            n as u64 + 1
        );
    }
}
