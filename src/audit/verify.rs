//! Verification of the chain (format in `chain`): names the first altered, removed, inserted
//! or reordered event, a broken checkpoint, or a truncated tail. The rules live in `Walk`, fed
//! from the store here and from an export file in `export`: one implementation of the chain
//! rules for the vault and for an auditor offline.
//!
//! Depends on `chain` and `storage`; `query` and the appender do not depend on it.

use super::{
    AuditError, CHECKPOINT_PREFIX,
    chain::{Checkpoint, Keys, MAC_LEN, chain_mac, checkpoint_key, decode_stored, read_checkpoint},
    log::EventLog,
};
use crate::{
    crypto::PublicKey,
    storage::{Keyspace, Store},
};

/// The outcome of verifying a range of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// The first event checked.
    pub from: u64,
    /// The last event checked.
    pub to: u64,
    /// How many events were checked.
    pub checked: u64,
    /// The checkpoint the chain was anchored at (0 = the start of the log).
    pub anchor: u64,
    /// The first problem: the sequence number it concerns and what is wrong.
    pub problem: Option<(u64, String)>,
}

impl VerifyReport {
    /// Whether the range verified clean.
    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// A broken rule: the sequence number it concerns and what is wrong.
pub(super) type Broken = (u64, String);

/// The chain rules, applied to events in chain order wherever they come from: each event
/// follows the previous one by number, its hash chains from the previous hash, and every
/// signed statement (a checkpoint, the head) is the vault's signature over the hash the chain
/// has at its sequence number.
#[derive(Debug, Clone)]
pub(super) struct Walk {
    public: PublicKey,
    /// The sequence number the next event must have.
    expected: u64,
    /// The hash of the event before it (32 zero bytes at the start of the log).
    prev: [u8; 32],
}

impl Walk {
    /// A walk that continues after `prev`, the hash of event `expected - 1`.
    pub(super) fn new(public: PublicKey, expected: u64, prev: [u8; 32]) -> Self {
        Self {
            public,
            expected,
            prev,
        }
    }

    /// The last event walked and its hash (`expected - 1` and the starting hash before any).
    pub(super) fn last(&self) -> (u64, [u8; 32]) {
        (self.expected.saturating_sub(1), self.prev)
    }

    /// Takes the next event: `seq` as it claims, `encoded` as `codec` encodes it, `hash` as
    /// stored or exported with it.
    ///
    /// # Errors
    /// A missing or reordered event, or one whose hash does not chain (altered).
    pub(super) fn event(
        &mut self,
        seq: u64,
        encoded: &[u8],
        hash: &[u8; 32],
    ) -> Result<(), Broken> {
        let expected = self.expected;
        if seq > expected {
            return Err((
                expected,
                format!("event {expected} is missing (removed); the next event is {seq}"),
            ));
        }
        if seq < expected {
            return Err((
                expected,
                format!(
                    "event {seq} comes where event {expected} should: reordered, repeated or moved"
                ),
            ));
        }
        if chain_mac(&self.prev, seq, encoded) != *hash {
            return Err((
                seq,
                format!(
                    "event {seq} fails its chain hash: altered, inserted, or the chain was rewritten"
                ),
            ));
        }
        self.prev = *hash;
        self.expected += 1;
        Ok(())
    }

    /// Checks a checkpoint that claims to cover the last event walked.
    ///
    /// # Errors
    /// A checkpoint for another event, a signature that is not the vault's (forged or
    /// altered), or a signed hash the chain does not have (the events before were altered).
    pub(super) fn checkpoint(&self, c: &Checkpoint, what: &str) -> Result<(), Broken> {
        let (last, hash) = self.last();
        if !c.valid(&self.public) {
            return Err((
                c.seq,
                format!(
                    "the signature of the {what} at event {} is not the vault's: forged or altered",
                    c.seq
                ),
            ));
        }
        if c.seq > last {
            return Err((
                last + 1,
                format!(
                    "event {} is missing (removed) before the {what} at event {}, or the {what} was moved",
                    last + 1,
                    c.seq
                ),
            ));
        }
        if c.seq < last {
            return Err((
                c.seq,
                format!(
                    "the {what} at event {} comes after event {last}: moved or reordered",
                    c.seq
                ),
            ));
        }
        if c.head_bytes() != Some(hash) {
            return Err((
                c.seq,
                format!(
                    "the chain at event {} is not what the {what} signed: the events up to it were altered or rewritten",
                    c.seq
                ),
            ));
        }
        Ok(())
    }

    /// Checks the signed head against a walk that has reached the end of the log.
    ///
    /// # Errors
    /// A head signature that is not the vault's, a tail cut off before the head, or a last
    /// event that is not the one the head signed.
    pub(super) fn head(&self, h: &Checkpoint) -> Result<(), Broken> {
        let (last, _) = self.last();
        if !h.valid(&self.public) {
            return Err((
                h.seq,
                "the head checkpoint's signature is not the vault's: forged or altered".into(),
            ));
        }
        if h.seq > last {
            return Err((
                last + 1,
                format!(
                    "the log ends at event {last} but the signed head covers event {}: the tail was truncated",
                    h.seq
                ),
            ));
        }
        if h.seq < last {
            // The head moves with every appended batch: events past it were added by someone
            // without the signing key (the chain hashes alone are public).
            return Err((
                h.seq + 1,
                format!(
                    "events {} to {last} come after the signed head (event {}): appended without \
                     the vault's signing key",
                    h.seq + 1,
                    h.seq
                ),
            ));
        }
        self.checkpoint(h, "head checkpoint")
    }
}

/// The durable checkpoint to start verifying `from` at: the newest one before `from`.
fn anchor_for(store: &dyn Store, keys: &Keys, from: u64) -> Result<Option<Checkpoint>, AuditError> {
    let mut best = None;
    for (_, bytes) in store.scan_range(
        Keyspace::Meta,
        CHECKPOINT_PREFIX,
        Some(&checkpoint_key(from)),
        usize::MAX,
    )? {
        if let Ok(c) = serde_json::from_slice::<Checkpoint>(&bytes)
            && c.valid(&keys.public)
            && c.seq < from
        {
            best = Some(c);
        }
    }
    Ok(best)
}

/// How many times `verify` reads on after appends that committed while it scanned.
const MAX_CATCH_UP_ROUNDS: u32 = 8;

pub(super) fn verify(
    log: &dyn EventLog,
    store: &dyn Store,
    keys: &Keys,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<VerifyReport, AuditError> {
    let first_stored = log.first_seq()?;
    let from = from.unwrap_or(first_stored.unwrap_or(1)).max(1);
    let mut report = VerifyReport {
        from,
        to: from.saturating_sub(1),
        checked: 0,
        anchor: 0,
        problem: None,
    };
    let fail = |mut r: VerifyReport, (seq, problem): Broken| {
        r.problem = Some((seq, problem));
        Ok(r)
    };
    // The chain value before `from`: genesis, or a checkpoint's head.
    let mut walk = Walk::new(keys.public, 1, [0u8; 32]);
    if from > 1 {
        match anchor_for(store, keys, from)? {
            Some(c) => {
                report.anchor = c.seq;
                // `anchor_for` returns only validly signed checkpoints, whose head decodes.
                let Some(head) = c.head_bytes() else {
                    return fail(
                        report,
                        (c.seq, "the anchor checkpoint's head is malformed".into()),
                    );
                };
                walk = Walk::new(keys.public, c.seq + 1, head);
            }
            None if first_stored.is_some_and(|f| f > 1) => {
                return fail(
                    report,
                    (
                        from,
                        "no valid checkpoint anchors this range: the start of the log was removed"
                            .into(),
                    ),
                );
            }
            None => {}
        }
    }
    let end = to.unwrap_or(u64::MAX);
    let mut cursor = walk.last().0.saturating_add(1);
    // The head is read after the events: it moves in the batch of every append, so a head read
    // later covers every event the scan saw, and one ahead of the scan means events were
    // appended meanwhile (scanned in another round). Read before, a concurrent append would
    // look like events added without the signing key.
    let mut rounds = 0;
    let head = loop {
        'scan: loop {
            // Damage the log itself finds (a frame that fails its checksum) is a problem at
            // the next event, like any other alteration.
            let chunk = match log.scan(cursor, None, 4096) {
                Ok(chunk) => chunk,
                Err(e) => return fail(report, (walk.last().0 + 1, e.message)),
            };
            let Some(&(last, _)) = chunk.last() else {
                break;
            };
            cursor = last.saturating_add(1);
            for (seq, value) in chunk {
                if seq > end {
                    break 'scan;
                }
                let expected = walk.last().0 + 1;
                if seq != expected {
                    return fail(
                        report,
                        (
                            expected,
                            format!(
                                "event {expected} is missing (removed); the next stored event is {seq}"
                            ),
                        ),
                    );
                }
                let Some((event, mac)) = decode_stored(&value) else {
                    return fail(report, (seq, format!("event {seq} is malformed (altered)")));
                };
                if event.seq != seq {
                    return fail(
                        report,
                        (
                            seq,
                            format!("event {seq} holds event {}: reordered or moved", event.seq),
                        ),
                    );
                }
                if let Err(broken) = walk.event(seq, &value[..value.len() - MAC_LEN], &mac) {
                    return fail(report, broken);
                }
                if seq >= from {
                    report.checked += 1;
                    report.to = seq;
                }
                if let Some(c) = read_checkpoint(store, &checkpoint_key(seq))?
                    && walk.checkpoint(&c, "checkpoint").is_err()
                {
                    return fail(
                        report,
                        (
                            seq,
                            format!("the checkpoint at event {seq} does not match the chain"),
                        ),
                    );
                }
            }
        }
        let head = log.head()?;
        match &head {
            Some(h) if !h.valid(&keys.public) => {
                return fail(
                    report,
                    (h.seq, "the head checkpoint's signature is invalid".into()),
                );
            }
            Some(h) if to.is_none() && h.seq > walk.last().0 && rounds < MAX_CATCH_UP_ROUNDS => {
                rounds += 1;
            }
            _ => break head,
        }
    };
    match head {
        Some(h) => {
            if to.is_none_or(|t| t >= h.seq)
                && let Err(broken) = walk.head(&h)
            {
                return fail(report, broken);
            }
        }
        None if walk.last().0 > 0 => {
            return fail(
                report,
                (
                    1,
                    "the log holds events but no signed head: its checkpoints were removed".into(),
                ),
            );
        }
        None => {}
    }
    // The index answers queries by record and subject: one that lost entries would hide
    // events from them while the chain verifies.
    if to.is_none()
        && let Some(broken) = log.check_index(from)?
    {
        return fail(report, broken);
    }
    Ok(report)
}
