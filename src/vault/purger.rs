//! The purge after a shred: make the deleted wrapped DEK (in the key store) and the header,
//! ciphertexts and blind-index entries (in the data store) leave every live file (flush, then
//! forced bottommost compaction of their key ranges). An update's replaced data key is purged
//! from the key store the same way, sharing the next purge, without an event of its own (the
//! update's event says the old key was destroyed). A purge costs a flush of every keyspace, so
//! it runs off the request path, and all shreds queued while one purge runs share the next: at
//! most one every `MIN_INTERVAL`, after an idle time of `IDLE_PER_PURGE` times the last one's.
//!
//! A purge owed is durable: the shred's own batch writes a pending-purge key (`owe`), and the
//! batch that records the purge's `Records/Purge` audit event removes it, so a purge queued
//! when the vault crashes or stops is found again at the next start. A purge that fails is
//! logged, recorded as a failed `Records/Purge` event, and retried with a growing delay; the
//! `OK` event (and a receipt's `purged_at_ms`) is written only once the store reported the
//! purge done and the record's keys read back absent.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    task::JoinHandle,
};

use crate::{
    audit::{Audit, Event},
    domain::RecordId,
    storage::{Batch, Keyspace, Store},
};

/// The least time between the starts of two purges.
const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// A purge's compactions take at most about a quarter of the time: the next starts no sooner
/// than this many times the last one's length after it ended. Under a stream of shreds (a
/// retention sweep) the purges grow and cover more records each, instead of compacting back
/// to back on the core that serves reads.
const IDLE_PER_PURGE: u32 = 3;
/// The least time between two purges owed only for updates' replaced keys: each compacts the
/// whole key store, and the replaced keys are already deleted (unreadable through the vault).
const REKEY_INTERVAL: Duration = Duration::from_secs(30);
/// The first delay before retrying a failed purge; it doubles per failure up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Where pending purges are kept (in `meta`), followed by the record id.
const PENDING_PREFIX: &[u8] = b"purge/pending/";

fn pending_key(id: &RecordId) -> Vec<u8> {
    let mut key = PENDING_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// Adds to a shred's batch the durable note that the record's purge is owed.
pub(super) fn owe(batch: &mut Batch, id: &RecordId, collection: &str) {
    batch.put(
        Keyspace::Meta,
        pending_key(id),
        collection.as_bytes().to_vec(),
    );
}

type Reply = oneshot::Sender<Result<i64, String>>;

struct Job {
    id: RecordId,
    collection: String,
    done: Option<Reply>,
    /// An update's replaced key: purge the key store's range only, no event.
    rekey: bool,
    /// Fields expired by retention: with the replaced key, purge the record's own ranges in
    /// the data store, so the expired ciphertexts leave the live files too.
    fields_expired: bool,
}

/// The handle shreds queue their purges on.
#[derive(Debug)]
pub(super) struct Purger {
    jobs: mpsc::UnboundedSender<Job>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The purges owed, by record id (a job queued twice is one purge).
type Owed = BTreeMap<[u8; 16], (String, Vec<Reply>)>;

fn add(owed: &mut Owed, rekeyed: &mut Vec<([u8; 16], bool)>, job: Job) {
    if job.rekey {
        rekeyed.push((*job.id.as_bytes(), job.fields_expired));
        return;
    }
    let entry = owed
        .entry(*job.id.as_bytes())
        .or_insert_with(|| (job.collection, Vec::new()));
    entry.1.extend(job.done);
}

/// The purges left pending by an earlier run (a crash, or a stop before they ran).
fn pending(store: &dyn Store) -> Result<Owed, String> {
    let mut owed = Owed::new();
    for (key, value) in store
        .scan_prefix(Keyspace::Meta, PENDING_PREFIX)
        .map_err(|e| e.to_string())?
    {
        let Ok(id) = <[u8; 16]>::try_from(&key[PENDING_PREFIX.len()..]) else {
            tracing::error!("a malformed pending-purge key is ignored");
            continue;
        };
        let collection = String::from_utf8_lossy(&value).into_owned();
        owed.insert(id, (collection, Vec::new()));
    }
    Ok(owed)
}

/// Purges the shredded `ids` from both stores and the key store ranges of `rekeyed`, and
/// checks that none of the shredded records' keys reads back.
fn purge_now(
    store: &dyn Store,
    keys: &dyn Store,
    ids: &[[u8; 16]],
    rekeyed: &[([u8; 16], bool)],
) -> Result<(), String> {
    let mut prefixes: Vec<(Keyspace, &[u8])> = ids
        .iter()
        .chain(rekeyed.iter().filter(|(_, f)| *f).map(|(id, _)| id))
        .flat_map(|id| [(Keyspace::Headers, &id[..]), (Keyspace::Records, &id[..])])
        .collect();
    // A shredded record's forward index entries are spread over the keyspace by their digests
    // (and after a restart the digests are no longer known): the whole index keyspace is
    // compacted, once per purge whatever the number of records.
    if !ids.is_empty() {
        prefixes.push((Keyspace::Index, &[][..]));
    }
    if !prefixes.is_empty() {
        store.purge(&prefixes).map_err(|e| e.to_string())?;
    }
    // The key store is small (about 110 bytes a record): one compaction of all of it costs
    // less than one per record, and covers every shred and update queued meanwhile.
    if !ids.is_empty() || !rekeyed.is_empty() {
        keys.purge(&[(Keyspace::Deks, &[][..])])
            .map_err(|e| e.to_string())?;
    }
    for id in ids {
        let header = store
            .get(Keyspace::Headers, id)
            .map_err(|e| e.to_string())?;
        let fields = store
            .scan_prefix(Keyspace::Records, id)
            .map_err(|e| e.to_string())?;
        let wrapped = keys
            .scan_prefix(Keyspace::Deks, id)
            .map_err(|e| e.to_string())?;
        let indexed = store
            .scan_prefix(Keyspace::Index, &super::index::reverse_prefix(id))
            .map_err(|e| e.to_string())?;
        if header.is_some() || !fields.is_empty() || !wrapped.is_empty() || !indexed.is_empty() {
            return Err("a shredded record's keys are still readable after the purge".into());
        }
    }
    Ok(())
}

impl Purger {
    /// Starts the purge task; it first takes up the purges an earlier run left pending.
    pub(super) fn start(store: Arc<dyn Store>, keys: Arc<dyn Store>, audit: Arc<Audit>) -> Self {
        let (jobs, rx) = mpsc::unbounded_channel::<Job>();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store, keys, audit, rx, stopped));
        Self {
            jobs,
            stop,
            task: Mutex::new(Some(task)),
        }
    }

    /// Stops the purge task and waits for it (and a purge it is running) to end, so that the
    /// store is released when the vault is. What is still owed stays in the store for the next
    /// start.
    pub(super) async fn stop(&self) {
        let _ = self.stop.send(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the purge task failed");
        }
    }

    /// Queues the purge of an update's replaced data key from the key store.
    pub(super) fn rekeyed(&self, id: RecordId) {
        let job = Job {
            id,
            collection: String::new(),
            done: None,
            rekey: true,
            fields_expired: false,
        };
        if self.jobs.send(job).is_err() {
            tracing::warn!(record = %id, "the purge task has stopped: a replaced key waits for compaction");
        }
    }

    /// Queues the purge of fields that retention expired: the replaced key from the key store
    /// and the record's old ciphertexts from the data store, with the next purge (no event: the
    /// expiry's event says what was destroyed).
    pub(super) fn fields_expired(&self, id: RecordId) {
        let job = Job {
            id,
            collection: String::new(),
            done: None,
            rekey: true,
            fields_expired: true,
        };
        if self.jobs.send(job).is_err() {
            tracing::warn!(record = %id, "the purge task has stopped: expired fields wait for compaction");
        }
    }

    /// Queues the purge of a shredded record; with `wait`, returns when it completed.
    ///
    /// # Errors
    /// A message if the purge task stopped, or (with `wait`) if this attempt failed: the purge
    /// stays owed and is retried.
    pub(super) async fn purge(
        &self,
        id: RecordId,
        collection: String,
        wait: bool,
    ) -> Result<Option<i64>, String> {
        let (tx, rx) = oneshot::channel();
        let done = wait.then_some(tx);
        self.jobs
            .send(Job {
                id,
                collection,
                done,
                rekey: false,
                fields_expired: false,
            })
            .map_err(|_| "the purge task has stopped".to_owned())?;
        if !wait {
            return Ok(None);
        }
        rx.await
            .map_err(|_| "the purge task stopped before the purge".to_owned())?
            .map(Some)
    }
}

async fn run(
    store: Arc<dyn Store>,
    keys: Arc<dyn Store>,
    audit: Arc<Audit>,
    mut rx: mpsc::UnboundedReceiver<Job>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut owed = {
        let store = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || pending(store.as_ref())).await {
            Ok(Ok(owed)) => owed,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the pending purges; they wait for the next start");
                Owed::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "reading the pending purges failed");
                Owed::new()
            }
        }
    };
    if !owed.is_empty() {
        tracing::info!(
            records = owed.len(),
            "purges left pending by the last run are taken up"
        );
    }
    let mut rekeyed: Vec<([u8; 16], bool)> = Vec::new();
    let mut last_start: Option<tokio::time::Instant> = None;
    // When the last purge ended and how long it took.
    let mut last_end = tokio::time::Instant::now();
    let mut last_took = Duration::ZERO;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut failures = 0u32;
    loop {
        if owed.is_empty() && rekeyed.is_empty() {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => add(&mut owed, &mut rekeyed, job),
                    None => return,
                },
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
        // A purge flushes every keyspace: under a stream of shreds, run at most one per
        // interval (or per backoff delay after a failure) and let it cover everything queued
        // meanwhile.
        // (Recomputed as jobs arrive: a shred queued behind replaced keys waits the short
        // interval, not theirs.)
        loop {
            let next = match (last_start, retry_at) {
                (_, Some(at)) => at,
                (Some(at), None) if owed.is_empty() => at + REKEY_INTERVAL,
                (Some(at), None) => (at + MIN_INTERVAL).max(last_end + last_took * IDLE_PER_PURGE),
                (None, None) => break,
            };
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                job = rx.recv() => match job {
                    Some(job) => add(&mut owed, &mut rekeyed, job),
                    // The vault stopped: what is owed stays in the store for the next start.
                    None => return,
                },
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
        while let Ok(job) = rx.try_recv() {
            add(&mut owed, &mut rekeyed, job);
        }
        last_start = Some(tokio::time::Instant::now());
        let ids: Vec<[u8; 16]> = owed.keys().copied().collect();
        let rekeys = std::mem::take(&mut rekeyed);
        let result = {
            let (store, keys, ids) = (Arc::clone(&store), Arc::clone(&keys), ids.clone());
            let rekeys = rekeys.clone();
            tokio::task::spawn_blocking(move || {
                purge_now(store.as_ref(), keys.as_ref(), &ids, &rekeys)
            })
            .await
            .map_err(|e| format!("the purge task failed: {e}"))
            .and_then(|r| r)
        };
        last_end = tokio::time::Instant::now();
        last_took = last_start.map_or(Duration::ZERO, |at| last_end - at);
        let result = match result {
            Ok(()) if owed.is_empty() => Ok(crate::vault::now_ms()),
            Ok(()) => record_success(&audit, &owed).await,
            Err(e) => {
                // Replaced keys are retried with the next purge.
                rekeyed.extend(rekeys);
                Err(e)
            }
        };
        match result {
            Ok(at) => {
                failures = 0;
                retry_at = None;
                for (_, (_, replies)) in std::mem::take(&mut owed) {
                    for reply in replies {
                        let _ = reply.send(Ok(at));
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                let delay = FIRST_BACKOFF
                    .saturating_mul(1 << (failures - 1).min(6))
                    .min(MAX_BACKOFF);
                retry_at = Some(tokio::time::Instant::now() + delay);
                tracing::error!(
                    error = %e,
                    records = owed.len(),
                    attempt = failures,
                    retry_in_s = delay.as_secs(),
                    "purge after shred failed; it stays owed and will be retried"
                );
                record_failure(&audit, &owed, failures, delay).await;
                // A caller waiting for this purge gets its answer now (the purge pending);
                // later attempts need no one to wait.
                for (_, replies) in owed.values_mut() {
                    for reply in replies.drain(..) {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

/// Records the `OK` event of each purged record and drops their pending keys, in one batch.
async fn record_success(audit: &Audit, owed: &Owed) -> Result<i64, String> {
    let at = crate::vault::now_ms();
    let mut batch = Batch::new();
    let mut events = Vec::with_capacity(owed.len());
    for (id, (collection, _)) in owed {
        let id = RecordId::from_bytes(*id);
        batch.delete(Keyspace::Meta, pending_key(&id));
        events.push(Event {
            method: "Records/Purge".into(),
            record_id: id.to_string(),
            collection: collection.clone(),
            result: "OK".into(),
            detail: format!(
                "wrapped key, ciphertexts and index entries purged from live files ({} records in this purge)",
                owed.len()
            ),
            ..Event::default()
        });
    }
    audit
        .commit(batch, events)
        .await
        .map_err(|e| format!("the purge events were not recorded: {e}"))?;
    Ok(at)
}

/// Records that a purge attempt failed: one event per attempt, however many records it
/// covered (the delay between attempts bounds how many).
async fn record_failure(audit: &Audit, owed: &Owed, attempt: u32, delay: Duration) {
    let event = Event {
        method: "Records/Purge".into(),
        result: "UNAVAILABLE".into(),
        detail: format!(
            "purge attempt {attempt} of {} shredded records failed; retrying in {} s",
            owed.len(),
            delay.as_secs()
        ),
        ..Event::default()
    };
    if let Err(e) = audit.commit(Batch::new(), vec![event]).await {
        tracing::error!(error = %e, "the failed purge could not be recorded in the audit log");
    }
}
