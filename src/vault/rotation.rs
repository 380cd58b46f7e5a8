//! Key rotation: a new epoch, every live data key rewrapped under it in the background, then
//! the older epochs destroyed. A rotation is in progress exactly while the provider holds more
//! than one epoch, so a crash at any step is resumed at the next start: the rewrap restarts from
//! its last recorded position (rewrapping is idempotent) and the destruction waits until no key
//! is left under an older epoch. The rewrap is rate-limited so reads go on. Rotation also starts
//! by itself once the current epoch is older than the shred horizon: that bounds how long any
//! old copy of the key store stays useful.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

use super::{
    Error, Privilege,
    changes::{self, Change},
    keystore::KeyStore,
    now_ms, require,
};
use crate::{
    audit::{Audit, Call, Event},
    crypto::EpochId,
    domain::Principal,
    policy::PolicyEngine,
    storage::Batch,
};

/// Where the rewrap's position is kept (in the key store's `meta`).
const CURSOR_KEY: &[u8] = b"rotation/cursor";
/// The epochs being destroyed, kept until their audit events are written.
const DESTROYING_KEY: &[u8] = b"rotation/destroying";
/// Keys rewrapped per chunk at most: one synced write each, with the position reached. The
/// store is held for the write only (the unwrapping and wrapping happen before), so new keys
/// and deletes wait for at most one write. A slower rate takes smaller chunks (about 50 ms of
/// its rate each), so the pace stays even.
const MAX_CHUNK: u32 = 1024;

/// How rotation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RotationOptions {
    /// Rotate by itself once the current epoch is this old.
    pub shred_horizon: Duration,
    /// Keys rewrapped per second at most.
    pub rewrap_per_second: u32,
}

impl Default for RotationOptions {
    fn default() -> Self {
        Self {
            shred_horizon: Duration::from_secs(24 * 3600),
            rewrap_per_second: 20_000,
        }
    }
}

/// One live epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochStatus {
    /// Its number.
    pub id: EpochId,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: i64,
    /// How many data keys it wraps.
    pub keys: u64,
}

/// The keys' state, for `keys status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    /// `file`, `env` or `pkcs11`.
    pub provider: &'static str,
    /// The live epochs, oldest first; the last is current.
    pub epochs: Vec<EpochStatus>,
    /// Whether a rotation is in progress (older epochs still live).
    pub rotating: bool,
    /// Keys rewrapped by the rotation in progress, since this process started it or took it up.
    pub rewrapped: u64,
    /// The shred horizon, in ms.
    pub shred_horizon_ms: i64,
    /// When the current epoch ends by itself (a rotation starts): ms since the Unix epoch.
    pub next_rotation_ms: i64,
}

/// The background rotation and its controls.
pub struct Rotator {
    keys: Arc<KeyStore>,
    audit: Arc<Audit>,
    options: RotationOptions,
    rewrapped: AtomicU64,
    wake: Notify,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn provider_error(e: &crate::crypto::KeyError) -> Error {
    Error::Unavailable(format!("key provider: {e}"))
}

impl Rotator {
    pub(super) fn start(
        keys: Arc<KeyStore>,
        audit: Arc<Audit>,
        options: RotationOptions,
    ) -> Arc<Self> {
        let (stop, _) = watch::channel(false);
        let rotator = Arc::new(Self {
            keys,
            audit,
            options,
            rewrapped: AtomicU64::new(0),
            wake: Notify::new(),
            stop,
            task: Mutex::new(None),
        });
        let task = tokio::spawn(Arc::clone(&rotator).run());
        *rotator.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(task);
        rotator
    }

    pub(super) async fn stop(&self) {
        // `send_replace`, not `send`: the task may not have subscribed yet (a start that
        // fails at once), and the value must be there when it does.
        self.stop.send_replace(true);
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task
            && let Err(e) = task.await
        {
            tracing::error!(error = %e, "the rotation task failed");
        }
    }

    /// The keys' state.
    ///
    /// # Errors
    /// `Unavailable` if the key store fails.
    pub fn status(&self) -> Result<KeyStatus, Error> {
        let times = self.keys.epoch_times(now_ms())?;
        let counts = self.keys.counts()?;
        let epochs: Vec<EpochStatus> = times
            .iter()
            .map(|(&id, &created_ms)| EpochStatus {
                id,
                created_ms,
                keys: counts.get(&id).copied().unwrap_or(0),
            })
            .collect();
        let current_created = epochs.last().map_or(0, |e| e.created_ms);
        Ok(KeyStatus {
            provider: self.keys.provider().kind(),
            rotating: epochs.len() > 1,
            epochs,
            rewrapped: self.rewrapped.load(Ordering::Relaxed),
            shred_horizon_ms: ms(self.options.shred_horizon),
            next_rotation_ms: current_created.saturating_add(ms(self.options.shred_horizon)),
        })
    }

    /// When a key shredded now is unrecoverable from any backup of the key store: once the
    /// current epoch is destroyed, at the end of the rotation that the horizon starts.
    pub(super) fn unrecoverable_after_ms(&self) -> Option<i64> {
        let times = self.keys.epoch_times(now_ms()).ok()?;
        let (_, created) = times.iter().next_back()?;
        Some(created.saturating_add(ms(self.options.shred_horizon)))
    }

    /// Starts a rotation (a new epoch) unless one is in progress; either way returns the state.
    ///
    /// # Errors
    /// `PermissionDenied` unless `principal` is an admin; `Unavailable` if the provider fails.
    pub async fn rotate(
        &self,
        policy: &PolicyEngine,
        principal: &Principal,
        call: &Call,
    ) -> Result<KeyStatus, Error> {
        require(policy, principal, Privilege::ManageKeys)?;
        self.begin(Some((principal, call))).await?;
        self.status()
    }

    async fn begin(&self, by: Option<(&Principal, &Call)>) -> Result<(), Error> {
        let provider = Arc::clone(self.keys.provider());
        if provider.epochs().len() > 1 {
            self.wake.notify_one();
            if let Some((principal, call)) = by {
                let event = Event {
                    result: "OK".into(),
                    detail: format!(
                        "a rotation to epoch {} is already in progress: nothing started",
                        provider.current()
                    ),
                    ..call.event(principal)
                };
                self.audit.commit(Batch::new(), vec![event]).await?;
            }
            return Ok(());
        }
        let from = provider.current();
        let to = tokio::task::spawn_blocking(move || provider.add_epoch())
            .await
            .map_err(|e| Error::Internal(format!("rotation task failed: {e}")))?
            .map_err(|e| provider_error(&e))?;
        // Every node wraps under the new epoch from here on, before any key is rewrapped.
        self.keys.fence_epoch()?;
        self.keys.epoch_times(now_ms())?;
        self.keys.set_meta(CURSOR_KEY, None)?;
        let keys = self.keys.counts()?.values().sum::<u64>();
        let base = match by {
            Some((principal, call)) => call.event(principal),
            None => Event {
                method: "Keys/Rotate".into(),
                subject: "system:rotation".into(),
                ..Event::default()
            },
        };
        let why = if by.is_some() {
            "requested"
        } else {
            "shred horizon reached"
        };
        let event = Event {
            result: "OK".into(),
            detail: format!(
                "rotation started ({why}): epoch {to} created; {keys} data keys under epoch {from} to rewrap"
            ),
            ..base
        };
        let mut batch = Batch::new();
        changes::stamp(&mut batch, Change::Keys);
        self.audit.commit(batch, vec![event]).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Writes the events of a destruction that a crash interrupted after the epochs went.
    async fn finish_interrupted(&self) -> Result<(), Error> {
        let Some(marker) = self.keys.meta(DESTROYING_KEY)? else {
            return Ok(());
        };
        let live = self.keys.provider().epochs();
        let destroyed: Vec<EpochId> = marker
            .chunks_exact(4)
            .filter_map(|b| b.try_into().ok().map(u32::from_be_bytes).map(EpochId))
            .filter(|e| !live.contains(e))
            .collect();
        if live.len() > 1 {
            // Not all of them went: the rotation resumes and destroys them again.
            return Ok(());
        }
        self.finished(&destroyed, 0, Duration::ZERO).await
    }

    async fn run(self: Arc<Self>) {
        let mut stopped = self.stop.subscribe();
        if let Err(e) = self.finish_interrupted().await {
            tracing::error!(error = %e, "the events of an interrupted epoch destruction are not written yet");
        }
        loop {
            if *stopped.borrow() {
                return;
            }
            if self.keys.provider().epochs().len() > 1 {
                match self.rewrap_all(&mut stopped).await {
                    Ok(true) => continue,
                    Ok(false) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "key rotation failed; retrying in 10 s");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(10)) => {}
                            _ = stopped.wait_for(|s| *s) => return,
                        }
                        continue;
                    }
                }
            }
            let due = self
                .unrecoverable_after_ms()
                .map_or(Duration::from_secs(60), |at| {
                    Duration::from_millis(u64::try_from(at.saturating_sub(now_ms())).unwrap_or(0))
                });
            if due.is_zero() {
                if let Err(e) = self.begin(None).await {
                    tracing::error!(error = %e, "the periodic key rotation could not start; retrying in 60 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                }
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(due.min(Duration::from_secs(3600))) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    }

    /// Rewraps every key under an older epoch, then destroys the older epochs. `Ok(false)` if
    /// stopped meanwhile (the position is kept for the next start).
    async fn rewrap_all(&self, stopped: &mut watch::Receiver<bool>) -> Result<bool, Error> {
        let started = std::time::Instant::now();
        let mut cursor = self.keys.meta(CURSOR_KEY)?.unwrap_or_default();
        let rate = self.options.rewrap_per_second.max(1);
        let chunk = (rate / 20).clamp(16, MAX_CHUNK);
        let per_chunk = Duration::from_secs_f64(f64::from(chunk) / f64::from(rate));
        let chunk = usize::try_from(chunk).unwrap_or(16);
        let mut total = 0u64;
        loop {
            let chunk_started = tokio::time::Instant::now();
            let keys = Arc::clone(&self.keys);
            let from = cursor.clone();
            let done =
                tokio::task::spawn_blocking(move || keys.rewrap_chunk(&from, chunk, CURSOR_KEY))
                    .await
                    .map_err(|e| Error::Internal(format!("rewrap task failed: {e}")))??;
            total += done.moved;
            self.rewrapped.fetch_add(done.moved, Ordering::Relaxed);
            match done.next {
                Some(next) => cursor = next,
                None => {
                    let keys = Arc::clone(&self.keys);
                    let destroyed = tokio::task::spawn_blocking(move || {
                        keys.destroy_older_epochs(DESTROYING_KEY)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("rotation task failed: {e}")))??;
                    let Some(destroyed) = destroyed else {
                        // Keys stored under an older epoch while the pass ran: one more pass.
                        cursor.clear();
                        continue;
                    };
                    self.finished(&destroyed, total, started.elapsed()).await?;
                    return Ok(true);
                }
            }
            tokio::select! {
                () = tokio::time::sleep_until(chunk_started + per_chunk) => {}
                _ = stopped.wait_for(|s| *s) => return Ok(false),
            }
        }
    }

    async fn finished(
        &self,
        destroyed: &[EpochId],
        moved: u64,
        took: Duration,
    ) -> Result<(), Error> {
        let times = self.keys.epoch_times(now_ms())?;
        let current = self.keys.provider().current();
        let until = times.get(&current).copied().unwrap_or_else(now_ms);
        let mut events: Vec<Event> = destroyed
            .iter()
            .map(|epoch| Event {
                method: "Keys/DestroyEpoch".into(),
                subject: "system:rotation".into(),
                result: "OK".into(),
                detail: format!(
                    "epoch {epoch} destroyed: every data key shredded before {until} (ms) is now \
                     unrecoverable from any backup of the key store"
                ),
                ..Event::default()
            })
            .collect();
        events.push(Event {
            method: "Keys/Rotate".into(),
            subject: "system:rotation".into(),
            result: "OK".into(),
            detail: if took.is_zero() {
                format!("rotation to epoch {current} completed (recorded after a restart)")
            } else {
                format!(
                    "rotation to epoch {current} completed: {moved} data keys rewrapped in {} ms",
                    took.as_millis()
                )
            },
            ..Event::default()
        });
        let mut batch = Batch::new();
        changes::stamp(&mut batch, Change::Keys);
        self.audit.commit(batch, events).await?;
        self.keys.set_meta(DESTROYING_KEY, None)?;
        self.keys.set_meta(CURSOR_KEY, None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::{AuditOptions, Filter},
        crypto::{KeyProvider, Keyring},
        storage::{MemoryStore, Store},
    };

    #[tokio::test]
    async fn an_epoch_destroyed_just_before_a_crash_still_gets_its_events() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ring: Arc<dyn KeyProvider> = Arc::new(
            Keyring::open_file(dir.path().join("keyring")).unwrap_or_else(|e| panic!("{e}")),
        );
        ring.add_epoch().unwrap_or_else(|e| panic!("{e}"));
        let keys = Arc::new(KeyStore::new(
            Arc::new(MemoryStore::new()),
            Arc::clone(&ring),
        ));
        // The crash: the marker written and epoch 1 destroyed, its events not written.
        let destroyed = keys.destroy_older_epochs(DESTROYING_KEY);
        assert_eq!(destroyed.ok().flatten(), Some(vec![EpochId(1)]));
        let data: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let audit = Arc::new(
            Audit::open(data, ring, AuditOptions::default()).unwrap_or_else(|e| panic!("{e}")),
        );
        let rotator = Rotator::start(
            Arc::clone(&keys),
            Arc::clone(&audit),
            RotationOptions::default(),
        );
        let mut methods = Vec::new();
        for _ in 0..200 {
            let (events, _) = audit
                .query(&Filter::default(), 0, 100)
                .unwrap_or_else(|e| panic!("{e}"));
            methods = events.into_iter().map(|e| (e.method, e.detail)).collect();
            if !methods.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rotator.stop().await;
        assert_eq!(methods.len(), 2, "{methods:?}");
        assert_eq!(methods[0].0, "Keys/DestroyEpoch");
        assert!(methods[0].1.starts_with("epoch 1 destroyed"), "{methods:?}");
        assert!(
            methods[1].1.contains("recorded after a restart"),
            "{methods:?}"
        );
        assert_eq!(keys.meta(DESTROYING_KEY).ok().flatten(), None);
    }

    #[tokio::test]
    async fn the_shred_horizon_starts_a_rotation_by_itself() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ring: Arc<dyn KeyProvider> = Arc::new(
            Keyring::open_file(dir.path().join("keyring")).unwrap_or_else(|e| panic!("{e}")),
        );
        let keys = Arc::new(KeyStore::new(
            Arc::new(MemoryStore::new()),
            Arc::clone(&ring),
        ));
        let data: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let audit = Arc::new(
            Audit::open(data, Arc::clone(&ring), AuditOptions::default())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let options = RotationOptions {
            shred_horizon: Duration::from_millis(200),
            ..RotationOptions::default()
        };
        let rotator = Rotator::start(Arc::clone(&keys), Arc::clone(&audit), options);
        let mut details = Vec::new();
        for _ in 0..500 {
            let (events, _) = audit
                .query(&Filter::default(), 0, 100)
                .unwrap_or_else(|e| panic!("{e}"));
            details = events.into_iter().map(|e| e.detail).collect::<Vec<_>>();
            if details.iter().any(|d| d.contains("completed")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rotator.stop().await;
        assert!(
            details.iter().any(|d| d.contains("shred horizon reached")),
            "{details:?}"
        );
        assert!(
            details.iter().any(|d| d.contains("epoch 1 destroyed")),
            "{details:?}"
        );
        assert!(!ring.epochs().contains(&EpochId(1)));
    }
}
