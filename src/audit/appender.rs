//! The single writer of the chain: takes every pending job, numbers and chains their events,
//! adds their data writes and a checkpoint, and commits all of it in one synced batch. Many
//! concurrent requests share one fsync; the chain order is the commit order.

use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};

use super::{
    AuditError, Event, Job,
    chain::{Checkpoint, Keys, decode_stored, encode_stored},
    log::{Append, AppendFailed, Chained, EventLog},
};
use crate::storage::Batch;

/// Jobs taken into one batch at most.
const MAX_JOBS_PER_BATCH: usize = 1024;
/// Under load (others queued, or the last batch had company), a batch waits for more in steps
/// of `LINGER_STEP`, while each step brings some, up to `LINGER_STEPS` steps or `ENOUGH` jobs.
/// Against a wait of at most 4 steps for up to 48 jobs that also went on through a step that
/// brought none, this took reads with auditing on from 79.6% to 82.7% of reads without, on
/// average (BENCHMARKS.md, "Reads with auditing on: how long the appender waits for company").
const LINGER_STEP: std::time::Duration = std::time::Duration::from_micros(250);
const LINGER_STEPS: u32 = 8;
const ENOUGH: usize = 128;
/// Reloads of the head one commit makes at most when other writers keep moving it.
const MAX_RELOADS: u32 = 64;

/// Where the chain stands.
#[derive(Debug, Clone)]
pub(super) struct State {
    seq: u64,
    head: [u8; 32],
    last_time_ms: i64,
    /// The signed head as the log holds it: the next append expects it there (a log shared by
    /// several vault nodes then serializes their appends).
    signed: Option<Checkpoint>,
}

impl State {
    /// The state after the last stored event (genesis when there is none). If the signed head
    /// checkpoint is ahead of the last event, the tail was cut off: the chain continues after
    /// the checkpoint, so the gap stays visible to verification instead of being papered over.
    ///
    /// The last event and the head are two reads: on a log other vault nodes append to, one
    /// may append between them, which looks like a cut tail. A head ahead of the last event is
    /// taken for a cut only once the last event read again has not moved.
    pub(super) fn load(log: &dyn EventLog, keys: &Keys) -> Result<Self, AuditError> {
        let mut reads = 0;
        loop {
            let (state, last) = Self::read(log, keys)?;
            let Some(signed) = state.signed.as_ref().filter(|h| h.seq > last) else {
                return Ok(state);
            };
            reads += 1;
            let now = log.last()?.map_or(0, |(seq, _)| seq);
            if now == last || reads >= MAX_RELOADS {
                tracing::error!(
                    last_event = last,
                    checkpoint = signed.seq,
                    "the audit log ends before its last checkpoint: its tail was truncated"
                );
                return Ok(state);
            }
        }
    }

    /// `load`, once; also returns the last stored event's number (0: none).
    fn read(log: &dyn EventLog, keys: &Keys) -> Result<(Self, u64), AuditError> {
        let mut state = match log.last()? {
            None => Self {
                seq: 0,
                head: [0; 32],
                last_time_ms: 0,
                signed: None,
            },
            Some((seq, value)) => {
                let (event, mac) = decode_stored(&value).ok_or_else(|| {
                    AuditError::new(format!(
                        "audit event {seq} is malformed; run `strongroom audit verify`"
                    ))
                })?;
                Self {
                    seq,
                    head: mac,
                    last_time_ms: event.time_ms,
                    signed: None,
                }
            }
        };
        let head = log.head()?;
        if let Some(head) = &head
            && !head.valid(&keys.public)
        {
            return Err(AuditError::new(
                "the audit log's last checkpoint does not verify under this vault's signing key: \
                 the keys are not the ones this vault was created with (or the checkpoint was \
                 altered); refusing to start"
                    .into(),
            ));
        }
        // The head moves in the same batch as every event: a log that does not end where its
        // signed head says was changed without the signing key (the chain hashes are public),
        // and the vault must not sign over it.
        match &head {
            None if state.seq > 0 => {
                return Err(AuditError::new(
                    "the audit log holds events but no signed head (its checkpoints were \
                     removed): refusing to start; run `strongroom audit verify`"
                        .into(),
                ));
            }
            Some(h) if h.seq < state.seq => {
                return Err(AuditError::new(format!(
                    "audit events {} to {} come after the signed head: they were appended \
                     without the vault's signing key; refusing to start",
                    h.seq + 1,
                    state.seq
                )));
            }
            Some(h) if h.seq == state.seq && h.head_bytes() != Some(state.head) => {
                return Err(AuditError::new(format!(
                    "audit event {} is not the one the signed head covers: the log was \
                     rewritten; refusing to start",
                    h.seq
                )));
            }
            None | Some(_) => {}
        }
        state.signed.clone_from(&head);
        let last = state.seq;
        if let Some(head) = head
            && head.seq > state.seq
        {
            // `load_valid` returns only validly signed checkpoints, whose head decodes.
            let Some(head_mac) = head.head_bytes() else {
                return Err(AuditError::new(
                    "the audit head checkpoint is malformed".into(),
                ));
            };
            state = Self {
                seq: head.seq,
                head: head_mac,
                last_time_ms: head.time_ms.max(state.last_time_ms),
                signed: Some(head),
            };
        }
        Ok((state, last))
    }
}

pub(super) struct Appender {
    pub(super) log: Arc<dyn EventLog>,
    pub(super) keys: Arc<Keys>,
    pub(super) live: broadcast::Sender<Arc<Event>>,
    pub(super) state: State,
    pub(super) checkpoint_every: u64,
    /// Events to append before the first job (what the log found at open).
    pub(super) initial: Vec<Event>,
}

pub(super) fn now_ms() -> i64 {
    crate::domain::Clock::system().now_ms()
}

impl Appender {
    /// Runs until every sender is gone (on its own thread: it blocks on the queue).
    pub(super) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let drain = |jobs: &mut mpsc::Receiver<Job>, taken: &mut Vec<Job>| {
            while taken.len() < MAX_JOBS_PER_BATCH {
                match jobs.try_recv() {
                    Ok(job) => taken.push(job),
                    Err(_) => break,
                }
            }
        };
        let initial = std::mem::take(&mut self.initial);
        if !initial.is_empty() {
            self.commit(vec![Job {
                batch: Batch::new(),
                events: initial,
                checkpoint: false,
                reply: None,
            }]);
        }
        // Whether the last batch had company: the load that made it is likely still there.
        let mut busy = false;
        while let Some(first) = jobs.blocking_recv() {
            let mut taken = vec![first];
            drain(&mut jobs, &mut taken);
            // Under concurrent load, wait a moment for more: on this VM an fsync costs far more
            // CPU than an event (interrupts and context switches; see BENCHMARKS.md). The wait
            // goes on while each step brings more jobs; a lone caller never waits, or one step
            // right after a busy batch.
            if taken.len() > 1 || busy {
                for _ in 0..LINGER_STEPS {
                    if taken.len() >= ENOUGH {
                        break;
                    }
                    std::thread::sleep(LINGER_STEP);
                    let before = taken.len();
                    drain(&mut jobs, &mut taken);
                    if taken.len() == before {
                        break;
                    }
                }
            }
            busy = taken.len() > 1;
            self.commit(taken);
        }
    }

    /// Commits `jobs` in one append. When the log's head is not where this appender left it
    /// (another vault node appended to a shared log, or a commit whose answer was lost was
    /// applied after all), nothing was written: the appender reloads the head and chains the
    /// same jobs after it. A job whose own writes' precondition failed is answered with that
    /// conflict, and the others are committed without it.
    fn commit(&mut self, jobs: Vec<Job>) {
        let mut pending = vec![jobs];
        let mut reloads = 0;
        while let Some(jobs) = pending.pop() {
            let Err((jobs, e)) = self.try_commit(jobs) else {
                // Progress: the budget is for reloads in a row without any.
                reloads = 0;
                continue;
            };
            let expected = self.state.signed.clone();
            let reloaded = if e.is_conflict() && reloads < MAX_RELOADS {
                reloads += 1;
                State::load(self.log.as_ref(), &self.keys)
            } else {
                Err(e.clone())
            };
            match reloaded {
                Ok(state) if state.signed != expected => {
                    // Another writer moved the head: the same jobs, after it.
                    self.state = state;
                    pending.push(jobs);
                }
                Ok(_) if jobs.len() > 1 => {
                    // The head is where it was: a job's own precondition failed. Alone, each
                    // job finds out whether it was its own.
                    pending.extend(jobs.into_iter().rev().map(|job| vec![job]));
                }
                Ok(_) | Err(_) => fail(jobs, &e),
            }
        }
    }

    /// One append of `jobs`; on failure, gives the jobs back when nothing was written and the
    /// failure was a conflict (they may be tried again), and answers them otherwise.
    fn try_commit(&mut self, mut jobs: Vec<Job>) -> Result<(), (Vec<Job>, AuditError)> {
        let mut next = self.state.clone();
        let time = now_ms().max(next.last_time_ms);
        let mut writes = Batch::new();
        let mut seqs: Vec<Vec<u64>> = Vec::with_capacity(jobs.len());
        let mut force_checkpoint = false;
        let mut chained: Vec<Chained> = Vec::new();
        for job in &mut jobs {
            // Kept in the job: a conflict tries it again.
            writes.extend_from(&job.batch);
            force_checkpoint |= job.checkpoint;
            let mut job_seqs = Vec::with_capacity(job.events.len());
            for event in &job.events {
                let mut event = event.clone();
                next.seq += 1;
                event.seq = next.seq;
                event.time_ms = time;
                let (stored, mac) = encode_stored(&event, &next.head);
                next.head = mac;
                job_seqs.push(next.seq);
                chained.push(Chained { event, mac, stored });
            }
            seqs.push(job_seqs);
        }
        next.last_time_ms = time;
        if next.seq == self.state.seq && !force_checkpoint && writes.is_empty() {
            for job in jobs {
                if let Some(reply) = job.reply {
                    let _ = reply.send(Ok(Vec::new()));
                }
            }
            return Ok(());
        }
        let head = match Checkpoint::sign(&self.keys, next.seq, next.head, time) {
            Ok(checkpoint) => checkpoint,
            Err(e) => {
                fail(jobs, &e);
                return Ok(());
            }
        };
        let crossed = next.seq / self.checkpoint_every > self.state.seq / self.checkpoint_every;
        let durable = crossed || force_checkpoint;
        let appended = self.log.append(Append {
            events: &chained,
            head: &head,
            previous: self.state.signed.as_ref(),
            writes,
            durable,
        });
        match appended {
            Ok(()) => {
                next.signed = Some(head);
                self.state = next;
                if self.live.receiver_count() > 0 {
                    for c in chained {
                        // No receiver is fine: nobody is following.
                        let _ = self.live.send(Arc::new(c.event));
                    }
                }
                for (job, seqs) in jobs.into_iter().zip(seqs) {
                    if let Some(reply) = job.reply {
                        let _ = reply.send(Ok(seqs));
                    }
                }
                Ok(())
            }
            Err(AppendFailed {
                error,
                events_durable: false,
                writes_lost: false,
            }) if error.is_conflict() => Err((jobs, error)),
            Err(AppendFailed {
                error,
                events_durable,
                writes_lost,
            }) => {
                fail(jobs, &error);
                let last = next.seq;
                if events_durable {
                    // The events are in the chain: it goes on after them.
                    next.signed = Some(head);
                    self.state = next;
                }
                if writes_lost {
                    // Their writes are not: say so in the chain.
                    let first = chained.first().map_or(last, |c| c.event.seq);
                    self.commit(vec![Job {
                        batch: Batch::new(),
                        events: vec![writes_not_applied(first, last, "the data write failed")],
                        checkpoint: false,
                        reply: None,
                    }]);
                }
                Ok(())
            }
        }
    }
}

/// Answers `jobs` with `e`: their calls fail closed.
fn fail(jobs: Vec<Job>, e: &AuditError) {
    tracing::error!(error = %e, "audit batch failed; its requests fail closed");
    for job in jobs {
        if let Some(reply) = job.reply {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

/// The event that says events `first` to `last` describe calls whose writes were not applied
/// (and which were answered with an error, or not at all).
pub(super) fn writes_not_applied(first: u64, last: u64, why: &str) -> Event {
    Event {
        method: "Audit/WritesNotApplied".into(),
        result: "OK".into(),
        detail: format!(
            "events {first} to {last} were recorded but the writes of their calls were not \
             applied ({why}); those calls were not acknowledged"
        ),
        ..Event::default()
    }
}
