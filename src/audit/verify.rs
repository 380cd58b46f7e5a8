//! Verification of the chain (format in `chain`): names the first altered, removed, inserted
//! or reordered event, a broken checkpoint, or a truncated tail.
//!
//! Depends on `chain` and `storage`; `query` and the appender do not depend on it.

use super::{
    AuditError, CHECKPOINT_PREFIX, HEAD_KEY,
    chain::{
        Checkpoint, Keys, MAC_LEN, chain_mac, checkpoint_key, decode_stored, next_key,
        read_checkpoint,
    },
};
use crate::storage::{Keyspace, Store};

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

pub(super) fn verify(
    store: &dyn Store,
    keys: &Keys,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<VerifyReport, AuditError> {
    let first_stored = store
        .scan_range(Keyspace::Audit, &[], None, 1)?
        .first()
        .and_then(|(k, _)| k.as_slice().try_into().ok().map(u64::from_be_bytes));
    let from = from.unwrap_or(first_stored.unwrap_or(1)).max(1);
    let mut report = VerifyReport {
        from,
        to: from.saturating_sub(1),
        checked: 0,
        anchor: 0,
        problem: None,
    };
    let fail = |mut r: VerifyReport, seq: u64, problem: String| {
        r.problem = Some((seq, problem));
        Ok(r)
    };
    // The chain value before `from`: genesis, or a checkpoint's head.
    let (mut expected, mut prev) = (1u64, [0u8; 32]);
    if from > 1 {
        match anchor_for(store, keys, from)? {
            Some(c) => {
                report.anchor = c.seq;
                expected = c.seq + 1;
                // `anchor_for` returns only validly signed checkpoints, whose head decodes.
                let Some(head) = c.head_bytes() else {
                    return fail(
                        report,
                        c.seq,
                        "the anchor checkpoint's head is malformed".into(),
                    );
                };
                prev = head;
            }
            None if first_stored.is_some_and(|f| f > 1) => {
                return fail(
                    report,
                    from,
                    "no valid checkpoint anchors this range: the start of the log was removed"
                        .into(),
                );
            }
            None => {}
        }
    }
    let head = read_checkpoint(store, HEAD_KEY)?;
    if let Some(h) = &head
        && !h.valid(&keys.public)
    {
        return fail(
            report,
            h.seq,
            "the head checkpoint's signature is invalid".into(),
        );
    }
    let end = to.unwrap_or(u64::MAX);
    let mut cursor = expected.to_be_bytes().to_vec();
    'scan: loop {
        let chunk = store.scan_range(Keyspace::Audit, &cursor, None, 4096)?;
        let Some((last_key, _)) = chunk.last() else {
            break;
        };
        cursor = next_key(last_key);
        for (key, value) in chunk {
            let Ok(seq_bytes) = <[u8; 8]>::try_from(key.as_slice()) else {
                return fail(
                    report,
                    expected,
                    "a malformed key in the audit keyspace".into(),
                );
            };
            let seq = u64::from_be_bytes(seq_bytes);
            if seq > end {
                break 'scan;
            }
            if seq != expected {
                return fail(
                    report,
                    expected,
                    format!(
                        "event {expected} is missing (removed); the next stored event is {seq}"
                    ),
                );
            }
            let Some((event, mac)) = decode_stored(&value) else {
                return fail(report, seq, format!("event {seq} is malformed (altered)"));
            };
            if event.seq != seq {
                return fail(
                    report,
                    seq,
                    format!("event {seq} holds event {}: reordered or moved", event.seq),
                );
            }
            let json = &value[..value.len() - MAC_LEN];
            if chain_mac(&prev, seq, json) != mac {
                return fail(
                    report,
                    seq,
                    format!(
                        "event {seq} fails its chain MAC: altered, inserted, or the chain was rewritten"
                    ),
                );
            }
            if seq >= from {
                report.checked += 1;
                report.to = seq;
            }
            prev = mac;
            expected += 1;
            if let Some(c) = read_checkpoint(store, &checkpoint_key(seq))?
                && (!c.valid(&keys.public) || c.head_bytes() != Some(mac))
            {
                return fail(
                    report,
                    seq,
                    format!("the checkpoint at event {seq} does not match the chain"),
                );
            }
        }
    }
    let last_seq = expected - 1;
    if let Some(h) = head
        && to.is_none_or(|t| t >= h.seq)
    {
        if h.seq > last_seq {
            return fail(
                report,
                last_seq + 1,
                format!(
                    "the log ends at event {last_seq} but the last checkpoint covers event {}: the tail was truncated",
                    h.seq
                ),
            );
        }
        if h.seq == last_seq && h.head_bytes() != Some(prev) {
            return fail(
                report,
                last_seq,
                "the last event does not match the head checkpoint".into(),
            );
        }
    }
    Ok(report)
}
