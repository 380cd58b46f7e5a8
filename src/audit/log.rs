//! Where the chain's events live: the `EventLog` interface, and its implementation over a
//! `Store` keyspace (`StoreLog`: events and the writes they describe in one batch, for any
//! store, such as a database a scale-out deployment shares). The embedded vault keeps events in
//! append-only segment files (`segment`), which cost one write and one fdatasync per batch and
//! nothing after it.
//!
//! Every log holds events by sequence number as the chain stored them (`chain`: the event's
//! encoding and its hash) and the signed head of the last append. Checkpoints stay in the
//! store's `meta` keyspace, written with the data writes.

use super::{
    AuditError, Event, HEAD_KEY,
    chain::{Checkpoint, checkpoint_key},
    index::IndexKey,
};
use crate::storage::{Batch, Keyspace, Store};

/// An event as the appender chained it.
#[derive(Debug, Clone)]
pub struct Chained {
    /// The event, numbered and timed.
    pub event: Event,
    /// Its chain hash.
    pub mac: [u8; 32],
    /// Its stored form: the encoding followed by the hash.
    pub stored: Vec<u8>,
}

/// One append: the events of a batch, the head signed over them, and the data writes they
/// describe.
#[derive(Debug)]
pub struct Append<'a> {
    /// The events, in chain order (possibly none: a checkpoint alone).
    pub events: &'a [Chained],
    /// The signed head after them.
    pub head: &'a Checkpoint,
    /// The signed head the log is expected to hold now (`None`: none yet). A log that other
    /// writers share refuses the append, as a conflict, when it holds another.
    pub previous: Option<&'a Checkpoint>,
    /// The data writes of the calls the events describe.
    pub writes: Batch,
    /// The head is also kept as a durable checkpoint (in the store's `meta`; a segment may end
    /// here).
    pub durable: bool,
}

/// An append that failed.
#[derive(Debug, Clone)]
pub struct AppendFailed {
    /// What failed.
    pub error: AuditError,
    /// The events are durable in the log (the chain has moved on).
    pub events_durable: bool,
    /// ... and data writes they describe were not applied.
    pub writes_lost: bool,
}

impl From<AuditError> for AppendFailed {
    fn from(error: AuditError) -> Self {
        Self {
            error,
            events_durable: false,
            writes_lost: false,
        }
    }
}

/// Stored events: `(seq, stored form)`.
pub type StoredEvents = Vec<(u64, Vec<u8>)>;

/// The events of the chain, by sequence number, and its signed head.
pub trait EventLog: Send + Sync {
    /// Makes the events and the head durable, then applies the writes (and keeps the head as
    /// a checkpoint when `durable`). Never applies a write whose event is not durable.
    ///
    /// # Errors
    /// `AppendFailed` if the log or the store cannot be written; it says whether the events
    /// were already durable (their writes then were not applied).
    fn append(&self, append: Append<'_>) -> Result<(), AppendFailed>;

    /// The first stored event's sequence number (`None` for an empty log).
    ///
    /// # Errors
    /// `AuditError` if the log cannot be read.
    fn first_seq(&self) -> Result<Option<u64>, AuditError>;

    /// The last stored event.
    ///
    /// # Errors
    /// `AuditError` if the log cannot be read.
    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError>;

    /// Up to `limit` stored events from `from` on (and up to `to`, inclusive), oldest first.
    ///
    /// # Errors
    /// `AuditError` if the log cannot be read or is damaged.
    fn scan(&self, from: u64, to: Option<u64>, limit: usize) -> Result<StoredEvents, AuditError>;

    /// The head signed with the last append, as stored (not yet checked).
    ///
    /// # Errors
    /// `AuditError` if the log cannot be read.
    fn head(&self) -> Result<Option<Checkpoint>, AuditError>;

    /// Removes the events up to `through` (inclusive) that can be removed (whole segments of a
    /// segment log, each ending at a durable checkpoint); returns the first event kept.
    ///
    /// # Errors
    /// `AuditError` if the log cannot be written.
    fn prune(&self, through: u64) -> Result<Option<u64>, AuditError>;

    /// Up to `limit` stored events from `from` on, oldest first, among which are all the
    /// events that name `key` (others may come with them: the caller matches each), or `None`
    /// if the log has no index (then only a scan finds them).
    ///
    /// # Errors
    /// `AuditError` if the log cannot be read or is damaged.
    fn scan_key(
        &self,
        key: IndexKey<'_>,
        from: u64,
        limit: usize,
    ) -> Result<Option<StoredEvents>, AuditError> {
        let _ = (key, from, limit);
        Ok(None)
    }

    /// The first index of the log, from the part holding `from` on, that does not match the
    /// events it indexes: where it starts and what is wrong.
    ///
    /// # Errors
    /// `AuditError` if the log cannot be read.
    fn check_index(&self, from: u64) -> Result<Option<(u64, String)>, AuditError> {
        let _ = from;
        Ok(None)
    }

    /// The segment files, for a log kept in files (to tell where its bytes are).
    fn files(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
}

fn seq_of(key: &[u8]) -> Result<u64, AuditError> {
    <[u8; 8]>::try_from(key)
        .map(u64::from_be_bytes)
        .map_err(|_| AuditError::new("a malformed key in the audit keyspace".into()))
}

/// Events in the store's `audit` keyspace under their big-endian sequence numbers, and the head
/// in `meta`: the events, the head and the data writes commit in one batch.
pub struct StoreLog {
    store: std::sync::Arc<dyn Store>,
}

impl StoreLog {
    /// The log kept in `store`.
    pub fn new(store: std::sync::Arc<dyn Store>) -> Self {
        Self { store }
    }
}

impl EventLog for StoreLog {
    fn append(&self, append: Append<'_>) -> Result<(), AppendFailed> {
        let mut batch = append.writes;
        for c in append.events {
            batch.put(
                Keyspace::Audit,
                c.event.seq.to_be_bytes().to_vec(),
                c.stored.clone(),
            );
        }
        // The database serializes the appends of every node: an append made after another
        // writer moved the head is refused whole, and the appender chains it after that head.
        batch.expect(
            Keyspace::Meta,
            HEAD_KEY.to_vec(),
            append.previous.map(Checkpoint::encode),
        );
        batch.put(Keyspace::Meta, HEAD_KEY.to_vec(), append.head.encode());
        if append.durable {
            batch.put(
                Keyspace::Meta,
                checkpoint_key(append.head.seq),
                append.head.encode(),
            );
        }
        self.store
            .write(batch)
            .map_err(|e| AppendFailed::from(AuditError::from(e)))
    }

    fn first_seq(&self) -> Result<Option<u64>, AuditError> {
        self.store
            .scan_range(Keyspace::Audit, &[], None, 1)?
            .first()
            .map(|(k, _)| seq_of(k))
            .transpose()
    }

    fn last(&self) -> Result<Option<(u64, Vec<u8>)>, AuditError> {
        self.store
            .last(Keyspace::Audit)?
            .map(|(k, v)| Ok((seq_of(&k)?, v)))
            .transpose()
    }

    fn scan(&self, from: u64, to: Option<u64>, limit: usize) -> Result<StoredEvents, AuditError> {
        let end = to.and_then(|t| t.checked_add(1)).map(u64::to_be_bytes);
        self.store
            .scan_range(
                Keyspace::Audit,
                &from.to_be_bytes(),
                end.as_ref().map(<[u8; 8]>::as_slice),
                limit,
            )?
            .into_iter()
            .map(|(k, v)| Ok((seq_of(&k)?, v)))
            .collect()
    }

    fn head(&self) -> Result<Option<Checkpoint>, AuditError> {
        Checkpoint::load(self.store.as_ref(), HEAD_KEY)
    }

    fn prune(&self, through: u64) -> Result<Option<u64>, AuditError> {
        // One range deletion, however many events it covers: the log is cut in one step.
        let mut writes = Batch::new();
        writes.delete_range(
            Keyspace::Audit,
            0u64.to_be_bytes().to_vec(),
            through.saturating_add(1).to_be_bytes().to_vec(),
        );
        self.store.write(writes)?;
        self.first_seq()
    }
}
