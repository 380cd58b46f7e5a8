//! The export file, and its verification offline: what an auditor checks with the public key
//! alone, without a token and without the vault.
//!
//! Format `strongroom-audit-export/v1`: JSON Lines, UTF-8, one object per line, each line
//! exactly as `serde_json` writes the types below (so a line changed in any byte, even in
//! spacing, is seen), every line tagged by `type`:
//!
//! 1. `{"type":"export","format":"strongroom-audit-export/v1","exported_at_ms":..,
//!    "complete":true,"prev_hash":"<hex>"}` first: `complete` is false when the export was
//!    filtered (by subject, method, ...: then it has gaps and cannot be verified, only read);
//!    `prev_hash` is the chain hash of the event before the first one (64 zeros at the start of
//!    the log). Nothing in this line needs to be trusted: the signatures below cover it.
//! 2. `{"type":"event","seq":..,"time_ms":..,...,"hash":"<hex>"}`: an event, with the fields of
//!    `Event` (empty ones left out) and its chain hash
//!    `SHA-256("strongroom/audit-chain/v2" | previous hash | seq (u64 BE) | binary event)`.
//! 3. `{"type":"checkpoint","seq":..,"head":"<hex>","time_ms":..,"signature":"<hex>"}` right
//!    after the event it covers: the vault's Ed25519 signature over
//!    `"strongroom/audit-checkpoint/v2" | seq (u64 BE) | head | time_ms (i64 BE)`.
//! 4. `{"type":"head",...}` (same fields) last: the signed head of the log when the export
//!    started; the export runs up to it. A time-bounded export (`--to`) runs on past its end
//!    up to the next signed checkpoint, so its last event is always covered by a signature.
//!
//! Depends on `chain`, `codec` and `verify` (the chain rules, shared with the online check).

use serde::{Deserialize, Serialize};

use super::{
    AuditError, Event, Filter,
    chain::{Checkpoint, Keys, checkpoint_key, decode_stored, read_checkpoint},
    codec,
    log::EventLog,
    verify::Walk,
};
use crate::{crypto::PublicKey, storage::Store};

/// The format name in the first line of every export.
pub const EXPORT_FORMAT: &str = "strongroom-audit-export/v1";

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    format: String,
    exported_at_ms: i64,
    complete: bool,
    prev_hash: String,
}

/// An event and its chain hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct EventLine {
    #[serde(flatten)]
    event: Event,
    hash: String,
}

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Line {
    Export(Header),
    Event(Box<EventLine>),
    Checkpoint(Checkpoint),
    Head(Checkpoint),
}

fn line(l: &Line) -> String {
    // Strings, integers, booleans and lists of them: JSON serialization cannot fail, and an
    // export must never carry a blank line in place of one.
    #[allow(clippy::expect_used)]
    let mut s = serde_json::to_string(l).expect("an export line always serializes");
    s.push('\n');
    s
}

/// An export in progress: where it stands, and the head it runs to.
#[derive(Debug, Clone)]
pub struct Export {
    filter: Filter,
    complete: bool,
    head: Option<Checkpoint>,
    /// The next sequence number to read.
    next: u64,
    /// The hash of the event before `next`, while no event has been written yet.
    prev: Option<[u8; 32]>,
    header_sent: bool,
    done: bool,
    exported_at_ms: i64,
}

/// Events read per chunk.
const CHUNK_EVENTS: usize = 500;

impl Export {
    /// Starts an export of the events `filter` passes, up to the current signed head.
    pub(super) fn begin(
        log: &dyn EventLog,
        store: &dyn Store,
        keys: &Keys,
        filter: Filter,
        now_ms: i64,
    ) -> Result<Self, AuditError> {
        let head = log.head()?.filter(|c| c.valid(&keys.public));
        let complete = Filter {
            from_ms: None,
            to_ms: None,
            ..filter.clone()
        } == Filter::default();
        let first = log.first_seq()?.unwrap_or(1);
        // Before the first stored event: genesis, or the checkpoint the log was pruned at.
        let prev = if first <= 1 {
            Some([0; 32])
        } else {
            read_checkpoint(store, &checkpoint_key(first - 1))?
                .filter(|c| c.valid(&keys.public))
                .and_then(|c| c.head_bytes())
        };
        Ok(Self {
            filter,
            complete,
            next: first,
            prev,
            head,
            header_sent: false,
            done: false,
            exported_at_ms: now_ms,
        })
    }

    /// The next lines of the export; `None` once it is complete.
    pub(super) fn chunk(
        &mut self,
        log: &dyn EventLog,
        store: &dyn Store,
    ) -> Result<Option<String>, AuditError> {
        if self.done {
            return Ok(None);
        }
        let end = self.head.as_ref().map_or(0, |h| h.seq);
        let mut out = String::new();
        let mut taken = 0usize;
        while taken < CHUNK_EVENTS && self.next <= end {
            let chunk = log.scan(self.next, Some(end), CHUNK_EVENTS)?;
            if chunk.is_empty() {
                self.next = end + 1;
                break;
            }
            for (seq, value) in chunk {
                let (event, hash) = decode_stored(&value).ok_or_else(|| {
                    AuditError::new(format!(
                        "audit event {seq} is malformed; run `strongroom audit verify`"
                    ))
                })?;
                self.next = seq + 1;
                let before_range = self.filter.from_ms.is_some_and(|t| event.time_ms < t);
                let after_range = self.filter.to_ms.is_some_and(|t| event.time_ms > t);
                let include = if self.complete {
                    // A time range is contiguous (times never decrease along the chain); past
                    // its end, the export runs on to the next signed checkpoint.
                    !before_range
                } else {
                    self.filter.matches(&event)
                };
                if !include {
                    if !self.header_sent {
                        self.prev = Some(hash);
                    }
                    if !self.complete && after_range {
                        // Nothing later can match: times never decrease along the chain.
                        self.next = end + 1;
                        break;
                    }
                    continue;
                }
                if !self.header_sent {
                    out.push_str(&self.header());
                }
                out.push_str(&line(&Line::Event(Box::new(EventLine {
                    event,
                    hash: hex::encode(hash),
                }))));
                taken += 1;
                let checkpoint = if seq == end {
                    None
                } else {
                    read_checkpoint(store, &checkpoint_key(seq))?
                };
                let signed = checkpoint.is_some();
                if let Some(c) = checkpoint {
                    out.push_str(&line(&Line::Checkpoint(c)));
                }
                if self.complete && after_range && signed {
                    // The end of a time range, covered by a signature.
                    self.done = true;
                    return Ok(Some(out));
                }
            }
        }
        if self.next > end {
            if !self.header_sent {
                out.push_str(&self.header());
            }
            if let Some(h) = self.head.clone() {
                out.push_str(&line(&Line::Head(h)));
            }
            self.done = true;
        }
        Ok(Some(out))
    }

    fn header(&mut self) -> String {
        self.header_sent = true;
        line(&Line::Export(Header {
            format: EXPORT_FORMAT.into(),
            exported_at_ms: self.exported_at_ms,
            complete: self.complete,
            prev_hash: hex::encode(self.prev.unwrap_or([0; 32])),
        }))
    }
}

/// What an export that verified holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The first event in the file (0 when it holds none).
    pub first: u64,
    /// The last event in the file.
    pub last: u64,
    /// How many events were verified.
    pub events: u64,
    /// Whether the file starts at the start of the log (event 1 after genesis).
    pub from_genesis: bool,
    /// The signed statement that covers the last event: a checkpoint inside the file or the
    /// head of the log at export time.
    pub signed_end: Option<Checkpoint>,
    /// Whether that statement is the head of the log when the export was made.
    pub ends_at_head: bool,
    /// The checkpoints inside the file that verified.
    pub checkpoints: u64,
}

/// Why an export does not verify: the line (from 1) and what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{what}", if *.line > 0 { format!("line {}: ", .line) } else { String::new() })]
pub struct ExportError {
    /// The line, from 1 (0: the file as a whole).
    pub line: usize,
    /// What failed.
    pub what: String,
}

/// A head an auditor pinned earlier: `SEQ:HASH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedHead {
    /// The sequence number.
    pub seq: u64,
    /// The chain hash of that event.
    pub hash: [u8; 32],
}

impl std::str::FromStr for PinnedHead {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("expected SEQ:HASH (a number, a colon and 64 hex digits), got {s:?}");
        let (seq, hash) = s.split_once(':').ok_or_else(bad)?;
        let seq = seq.parse().map_err(|_| bad())?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hash, &mut out).map_err(|_| bad())?;
        Ok(Self { seq, hash: out })
    }
}

impl std::fmt::Display for PinnedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, hex::encode(self.hash))
    }
}

fn hash32(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok().map(|()| out)
}

/// Verifies an export file with the public key alone: every line as the vault wrote it, the
/// chain unbroken from the first event to the last, every checkpoint and the head signed by
/// the vault and matching the chain, the last event covered by a signature, and, if `pinned`,
/// the pinned head inside the file with the same hash.
///
/// # Errors
/// The first line that fails and why: malformed or altered, a removed, inserted or reordered
/// line, a forged signature, an unsigned tail, a log truncated or rewritten against the pin.
pub fn verify_export(
    text: &str,
    public: &PublicKey,
    pinned: Option<PinnedHead>,
) -> Result<ExportReport, ExportError> {
    let fail = |line: usize, what: String| ExportError { line, what };
    let mut lines = text
        .split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l));
    let Some((_, first)) = lines.next() else {
        return Err(fail(0, "the file is empty: not an audit export".into()));
    };
    let header = match serde_json::from_str::<serde_json::Value>(first) {
        Ok(v) => v,
        Err(e) => return Err(fail(1, format!("malformed: not a JSON line ({e})"))),
    };
    match header.get("format").and_then(|f| f.as_str()) {
        Some(EXPORT_FORMAT) => {}
        Some(other) => {
            return Err(fail(
                1,
                format!("wrong format version {other:?}: this verifier reads {EXPORT_FORMAT}"),
            ));
        }
        None => {
            return Err(fail(
                1,
                format!("malformed: the first line is not an export header ({EXPORT_FORMAT})"),
            ));
        }
    }
    let parse = |n: usize, raw: &str| -> Result<Line, ExportError> {
        let parsed: Line = serde_json::from_str(raw)
            .map_err(|e| fail(n, format!("malformed: not an export line ({e})")))?;
        if line(&parsed) != raw {
            return Err(fail(
                n,
                "altered: the line is not byte for byte as the vault wrote it".into(),
            ));
        }
        Ok(parsed)
    };
    let Line::Export(header) = parse(1, first)? else {
        return Err(fail(
            1,
            "malformed: the first line is not the export header".into(),
        ));
    };
    if !header.complete {
        return Err(fail(
            1,
            "the export was filtered (by subject, method, ...): it has gaps and cannot be \
             verified; export without filters (a time range is fine)"
                .into(),
        ));
    }
    let prev = hash32(&header.prev_hash)
        .ok_or_else(|| fail(1, "malformed: prev_hash is not 64 hex digits".into()))?;
    let mut walk: Option<Walk> = None;
    let mut report = ExportReport {
        first: 0,
        last: 0,
        events: 0,
        from_genesis: false,
        signed_end: None,
        ends_at_head: false,
        checkpoints: 0,
    };
    let mut pinned_seen = false;
    let mut after_head = false;
    let broken = |n: usize, (_, what): (u64, String)| fail(n, what);
    for (n, raw) in lines {
        if after_head {
            return Err(fail(
                n,
                "a line after the head: the head must be the last line".into(),
            ));
        }
        match parse(n, raw)? {
            Line::Export(_) => {
                return Err(fail(n, "a second export header: files were joined".into()));
            }
            Line::Event(line) => {
                let EventLine { event, hash } = *line;
                let hash = hash32(&hash)
                    .ok_or_else(|| fail(n, "malformed: the hash is not 64 hex digits".into()))?;
                let w = walk.get_or_insert_with(|| {
                    report.first = event.seq;
                    report.from_genesis = prev == [0; 32];
                    // From genesis, the chain starts at event 1: earlier lines cannot go.
                    let start = if report.from_genesis { 1 } else { event.seq };
                    Walk::new(*public, start, prev)
                });
                let mut encoded = Vec::with_capacity(256);
                codec::encode(&event, &mut encoded);
                w.event(event.seq, &encoded, &hash)
                    .map_err(|b| broken(n, b))?;
                report.last = event.seq;
                report.events += 1;
                if let Some(p) = pinned
                    && p.seq == event.seq
                {
                    if p.hash != hash {
                        return Err(fail(
                            n,
                            format!(
                                "event {} has hash {}, not the pinned {}: the log was rewritten after the pin",
                                p.seq,
                                hex::encode(hash),
                                hex::encode(p.hash)
                            ),
                        ));
                    }
                    pinned_seen = true;
                }
            }
            Line::Checkpoint(c) => {
                let w = walk
                    .as_ref()
                    .ok_or_else(|| fail(n, "a checkpoint before any event".into()))?;
                w.checkpoint(&c, "checkpoint").map_err(|b| broken(n, b))?;
                report.checkpoints += 1;
                report.signed_end = Some(c);
            }
            Line::Head(h) => {
                let w = walk
                    .clone()
                    .unwrap_or_else(|| Walk::new(*public, h.seq.saturating_add(1), prev));
                w.head(&h).map_err(|b| broken(n, b))?;
                if h.seq < report.last {
                    return Err(fail(
                        n,
                        format!(
                            "events after the signed head (event {}) : lines were added",
                            h.seq
                        ),
                    ));
                }
                report.signed_end = Some(h);
                report.ends_at_head = true;
                after_head = true;
            }
        }
    }
    let covered = report.signed_end.as_ref().map_or(0, |c| c.seq);
    if report.events > 0 && covered < report.last {
        let from = covered.max(report.first.saturating_sub(1)) + 1;
        return Err(fail(
            0,
            format!(
                "events {from}..={} come after the last signed statement{}: they cannot be \
                 authenticated (the head line is missing: the file was cut, or lines were added)",
                report.last,
                if covered > 0 {
                    format!(" (at event {covered})")
                } else {
                    String::new()
                }
            ),
        ));
    }
    if let Some(p) = pinned
        && !pinned_seen
    {
        let what = if report.events == 0 || p.seq > report.last {
            format!(
                "the export ends at event {} but the pinned head is event {}: the log was truncated or rolled back",
                report.last, p.seq
            )
        } else {
            format!(
                "the pinned head (event {}) is before the first event of the export ({}): export from earlier to check it",
                p.seq, report.first
            )
        };
        return Err(fail(0, what));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        audit::{Audit, AuditOptions},
        crypto::KeyProvider,
        storage::{Batch, MemoryStore},
    };

    /// A log of `n` events (a checkpoint every 10) and its full export.
    async fn exported(n: usize) -> (String, PublicKey, Arc<Audit>) {
        let ring = Arc::new(crate::crypto::throwaway_keyring());
        let public = ring.public_key();
        let audit = Arc::new(
            Audit::open(
                Arc::new(MemoryStore::new()),
                ring,
                AuditOptions {
                    checkpoint_every: 10,
                    ..AuditOptions::default()
                },
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        for i in 0..n {
            let event = Event {
                method: "Test/Commit".into(),
                result: "OK".into(),
                subject: "user:alice".into(),
                detail: format!("event {i}"),
                ..Event::default()
            };
            audit
                .commit(Batch::new(), vec![event])
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let text = export(&audit, Filter::default());
        (text, public, audit)
    }

    fn export(audit: &Audit, filter: Filter) -> String {
        let mut export = audit.begin_export(filter).unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        while let Some(chunk) = audit
            .export_chunk(&mut export)
            .unwrap_or_else(|e| panic!("{e}"))
        {
            text.push_str(&chunk);
        }
        text
    }

    fn lines(text: &str) -> Vec<String> {
        text.split_inclusive('\n').map(str::to_owned).collect()
    }

    #[tokio::test]
    async fn an_untampered_export_verifies_and_every_tampering_is_named() {
        let (text, public, _audit) = exported(35).await;
        let report = verify_export(&text, &public, None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((report.first, report.last, report.events), (1, 35, 35));
        assert!(report.from_genesis && report.ends_at_head);
        assert_eq!(report.checkpoints, 3);
        let head = report
            .signed_end
            .clone()
            .unwrap_or_else(|| panic!("a head"));
        let all = lines(&text);
        let events: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].starts_with("{\"type\":\"event\""))
            .collect();
        let checkpoints: Vec<usize> = (0..all.len())
            .filter(|&i| all[i].starts_with("{\"type\":\"checkpoint\""))
            .collect();
        let mut rejected = 0;
        let mut must_fail = |bad: Vec<String>, want: &str| {
            let err = verify_export(&bad.concat(), &public, None)
                .err()
                .unwrap_or_else(|| panic!("accepted: {want}"));
            assert!(err.to_string().contains(want), "{want}: {err}");
            rejected += 1;
        };
        for &i in &events {
            // An altered event (its detail), keeping its hash.
            let mut bad = all.clone();
            bad[i] = bad[i].replacen("\"detail\":\"event", "\"detail\":\"EVENT", 1);
            must_fail(bad, "fails its chain hash");
            // Removed.
            let mut bad = all.clone();
            bad.remove(i);
            must_fail(
                bad,
                if i == events[events.len() - 1] {
                    "truncated"
                } else {
                    "missing"
                },
            );
            // Reordered with the next event.
            if let Some(&j) = events.iter().find(|&&j| j == i + 1) {
                let mut bad = all.clone();
                bad.swap(i, j);
                must_fail(bad, "missing");
            }
            // Reformatted (a space): not as the vault wrote it.
            let mut bad = all.clone();
            bad[i] = bad[i].replacen(',', ", ", 1);
            must_fail(bad, "altered");
        }
        for &i in &checkpoints {
            // A forged signature.
            let mut bad = all.clone();
            let sig_at = bad[i].find("\"signature\":\"").unwrap_or(0) + 13;
            let mut bytes = bad[i].clone().into_bytes();
            bytes[sig_at] = if bytes[sig_at] == b'0' { b'1' } else { b'0' };
            bad[i] = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"));
            must_fail(bad, "forged or altered");
        }
        // The head: forged, removed (the tail cannot be authenticated), kept with a cut tail.
        let last = all.len() - 1;
        let mut bad = all.clone();
        bad[last] = bad[last].replacen("\"time_ms\":", "\"time_ms\":1", 1);
        must_fail(bad, "forged or altered");
        let mut bad = all.clone();
        bad.pop();
        must_fail(bad, "cannot be authenticated");
        let mut bad = all.clone();
        bad.remove(last - 1);
        must_fail(bad, "truncated");
        // A wrong format version.
        let mut bad = all.clone();
        bad[0] = bad[0].replacen("export/v1", "export/v9", 1);
        must_fail(bad, "wrong format version");
        assert!(rejected > 35 * 3);

        // Pinned heads: the real one passes; later or contradicting ones are named.
        let pin = PinnedHead {
            seq: head.seq,
            hash: head
                .head_bytes()
                .unwrap_or_else(|| panic!("the head decodes")),
        };
        assert!(verify_export(&text, &public, Some(pin)).is_ok());
        let later = PinnedHead { seq: 40, ..pin };
        let err = verify_export(&text, &public, Some(later))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("truncated or rolled back")),
            "{err:?}"
        );
        let forked = PinnedHead { seq: 20, ..pin };
        let err = verify_export(&text, &public, Some(forked))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("rewritten")),
            "{err:?}"
        );
        // Cut at a checkpoint with the head removed: the cut log verifies on its own, and only
        // the pin sees that it ends early.
        let cut_at = checkpoints[checkpoints.len() - 1];
        let cut = all[..=cut_at].concat();
        let report = verify_export(&cut, &public, None).unwrap_or_else(|e| panic!("{e}"));
        assert!(!report.ends_at_head);
        let err = verify_export(&cut, &public, Some(pin))
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("truncated or rolled back")),
            "{err:?}"
        );
        // Another vault's key.
        let other = crate::crypto::throwaway_keyring().public_key();
        assert!(verify_export(&text, &other, None).is_err());
    }

    #[tokio::test]
    async fn time_ranges_end_on_a_signature_and_filtered_exports_are_refused() {
        let (_, public, audit) = exported(25).await;
        let events = |text: &str| {
            verify_export(text, &public, None).map(|r| (r.first, r.last, r.ends_at_head))
        };
        // From a time on: everything, anchored by the header's previous hash.
        let all = export(&audit, Filter::default());
        let mid = lines(&all)
            .iter()
            .find(|l| l.contains("\"seq\":12,"))
            .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .and_then(|v| v["time_ms"].as_i64())
            .expect("the export holds event 12 with its time");
        let from = export(
            &audit,
            Filter {
                from_ms: Some(mid),
                ..Filter::default()
            },
        );
        let (first, last, at_head) = events(&from).unwrap_or_else(|e| panic!("{e}"));
        assert!(first <= 12 && last == 25 && at_head, "{first}..{last}");
        // To a time: runs on to the next signed checkpoint.
        let to = export(
            &audit,
            Filter {
                to_ms: Some(mid),
                ..Filter::default()
            },
        );
        let (first, last, _) = events(&to).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, 1);
        assert!(last >= 12, "{last}");
        // Filtered by subject: readable, not verifiable.
        let filtered = export(
            &audit,
            Filter {
                subject: Some("user:alice".into()),
                ..Filter::default()
            },
        );
        let err = events(&filtered).err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|e| e.contains("filtered")),
            "{err:?}"
        );
    }
}
