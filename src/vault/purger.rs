//! The purge after a shred: make the deleted wrapped DEK and ciphertexts leave every live file
//! (flush, then forced bottommost compaction of their key ranges). A purge costs a flush of
//! every keyspace, so it runs off the request path, and all shreds queued while one purge runs
//! share the next, at most one every `MIN_INTERVAL`. Each purged record gets a `Records/Purge`
//! audit event saying when.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::{
    audit::{Audit, Event},
    domain::RecordId,
    storage::{Batch, Keyspace, Store},
};

/// The least time between the starts of two purges.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

struct Job {
    id: RecordId,
    collection: String,
    done: Option<oneshot::Sender<Result<i64, String>>>,
}

/// The handle shreds queue their purges on.
#[derive(Debug, Clone)]
pub(super) struct Purger {
    jobs: mpsc::UnboundedSender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Purger {
    /// Starts the purge task.
    pub(super) fn start(store: Arc<dyn Store>, audit: Arc<Audit>) -> Self {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            let mut last_start: Option<tokio::time::Instant> = None;
            while let Some(first) = rx.recv().await {
                // A purge flushes every keyspace: under a stream of shreds, run at most one per
                // interval and let it cover everything queued meanwhile.
                if let Some(at) = last_start {
                    tokio::time::sleep_until(at + MIN_INTERVAL).await;
                }
                last_start = Some(tokio::time::Instant::now());
                let mut batch = vec![first];
                while let Ok(job) = rx.try_recv() {
                    batch.push(job);
                }
                let ids: Vec<[u8; 16]> = batch.iter().map(|j| *j.id.as_bytes()).collect();
                let store = Arc::clone(&store);
                let result = tokio::task::spawn_blocking(move || {
                    let prefixes: Vec<(Keyspace, &[u8])> = ids
                        .iter()
                        .flat_map(|id| [(Keyspace::Deks, &id[..]), (Keyspace::Records, &id[..])])
                        .collect();
                    store.purge(&prefixes)
                })
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
                .map(|()| crate::vault::now_ms());
                if result.is_ok() {
                    let events = batch
                        .iter()
                        .map(|j| Event {
                            method: "Records/Purge".into(),
                                                        record_id: j.id.to_string(),
                            collection: j.collection.clone(),
                            result: "OK".into(),
                                                        detail: format!(
                                "wrapped key and ciphertexts purged from live files ({} records in this purge)",
                                batch.len()
                            ),
                            ..Event::default()
                        })
                        .collect();
                    if let Err(e) = audit.commit(Batch::new(), events).await {
                        tracing::error!(error = %e, "the purge events were not recorded");
                    }
                } else if let Err(e) = &result {
                    tracing::error!(error = %e, "purge after shred failed; it will be retried by the next one");
                }
                for job in batch {
                    if let Some(done) = job.done {
                        let _ = done.send(result.clone());
                    }
                }
            }
        });
        Self { jobs }
    }

    /// Queues the purge of a shredded record; with `wait`, returns when it completed.
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
