//! Export of a whole collection (`Records/ExportRecords`, `strongroom export`): every live
//! record, each field decided for the caller and the declared purpose exactly as a read is
//! (plain, masked, pseudonym or withheld; disclosure limits apply to plaintext of sensitive
//! fields), in batches.
//!
//! Audit: each exported record gets the event a read of it gets (record id and per-field
//! outcomes, never a value or a token), so the record's access history and a breach report
//! find it by id; the events of a batch are committed together, one fsync per batch instead
//! of one per record, and before the batch is returned (fail closed). One summary event ends
//! the export with the counts, and says whether it completed or the client went away.
//! Records the caller may see nothing of are skipped: counted, not returned, not audited.

use std::collections::BTreeMap;

use super::{Decider, Error, RecordView, Vault, check_purpose, header::Header, requested_fields};
use crate::{
    audit::{Call, Event, FieldOutcome},
    domain::{Principal, Purpose, RecordId},
    policy::Decision,
    storage::{Batch, Keyspace},
};

/// Headers scanned per page while counting.
const COUNT_PAGE: usize = 4096;

/// An export under way: what it reads, where it is, and what it has disclosed so far.
#[derive(Debug)]
pub struct RecordExport {
    collection: String,
    fields: Vec<String>,
    purpose: Purpose,
    total: u64,
    scanned: u64,
    exported: u64,
    skipped: u64,
    /// The last header key scanned.
    after: Option<Vec<u8>>,
    /// Per field: how often each outcome was returned.
    outcomes: BTreeMap<String, BTreeMap<String, u64>>,
    policy_version: u64,
}

impl RecordExport {
    /// Live records of the collection when the export began.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Records exported so far.
    pub fn exported(&self) -> u64 {
        self.exported
    }
}

/// One batch of an export: each record with how many records had been scanned up to it.
#[derive(Debug, Default)]
pub struct ExportBatch {
    /// `(records scanned so far, this one included; the record)`.
    pub records: Vec<(u64, RecordView)>,
    /// No records are left: the export is complete.
    pub done: bool,
}

/// How an export ended, for its summary event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportEnd {
    /// Every record was scanned.
    Completed,
    /// The client went away (cancelled, disconnected) before the end.
    ClientGone,
    /// The server began shutting down.
    ServerStopping,
    /// The caller's token was revoked or expired during the export.
    TokenRevoked,
}

impl Vault {
    /// Starts an export of `collection` for `purpose`: checks the purpose, the fields (every
    /// declared field if `fields` is empty), that the caller may see at least one of them, and
    /// counts the live records.
    ///
    /// # Errors
    /// `InvalidArgument` for an unknown collection or field, `PermissionDenied` if the token
    /// may not declare the purpose or the policy lets the caller see none of the fields,
    /// `Unavailable` if the store fails.
    pub fn begin_export(
        &self,
        principal: &Principal,
        collection: &str,
        fields: &[String],
        purpose: &Purpose,
    ) -> Result<RecordExport, Error> {
        check_purpose(principal, purpose)?;
        self.check_count(fields.len(), "fields")?;
        let coll = self.schema.collection(collection, "collection")?;
        let requested = requested_fields(coll, fields)?;
        let permit = self
            .policy
            .table()
            .decide_read(principal, coll, &requested, purpose);
        if permit
            .decisions()
            .iter()
            .all(|(_, d)| *d == Decision::Denied)
        {
            return Err(Error::PermissionDenied(format!(
                "{} (roles {}) may read none of the requested fields of {} for purpose {purpose}",
                principal.subject,
                principal.roles_text(),
                coll.name()
            )));
        }
        let mut total = 0;
        let mut from = Vec::new();
        loop {
            let page = self
                .store
                .scan_range(Keyspace::Headers, &from, None, COUNT_PAGE)?;
            let Some((last, _)) = page.last() else { break };
            from = after(last);
            total += page
                .iter()
                .filter(|(_, h)| Header::decode(h).is_some_and(|h| h.collection == collection))
                .count() as u64;
            if page.len() < COUNT_PAGE {
                break;
            }
        }
        Ok(RecordExport {
            collection: coll.name().as_str().to_owned(),
            fields: fields.to_vec(),
            purpose: purpose.clone(),
            total,
            scanned: 0,
            exported: 0,
            skipped: 0,
            after: None,
            outcomes: BTreeMap::new(),
            policy_version: permit.policy_version(),
        })
    }

    /// Reads the next batch of up to `max` records of the export, commits their audit events
    /// (one commit for the batch) and returns them. A record shredded since the scan, or one
    /// the caller may see nothing of, is skipped.
    ///
    /// # Errors
    /// `DataLoss` if a record fails its integrity check, `Unavailable` if the store or the
    /// audit log fails: then nothing of the batch is returned.
    pub async fn export_batch(
        &self,
        principal: &Principal,
        call: &Call,
        export: &mut RecordExport,
        max: usize,
    ) -> Result<ExportBatch, Error> {
        let from = export.after.as_deref().map(after).unwrap_or_default();
        let page = self
            .store
            .scan_range(Keyspace::Headers, &from, None, max.max(1))?;
        let done = page.len() < max.max(1);
        let mut out = ExportBatch {
            records: Vec::with_capacity(page.len()),
            done,
        };
        let mut events = Vec::with_capacity(page.len());
        // A policy change reaches a running export at its next batch.
        let mut decider = Decider::new(&self.policy);
        for (key, header) in &page {
            if Header::decode(header).is_none_or(|h| h.collection != export.collection) {
                continue;
            }
            let Ok(bytes) = <[u8; 16]>::try_from(key.as_slice()) else {
                continue;
            };
            let id = RecordId::from_bytes(bytes);
            export.scanned += 1;
            let (view, record_events) = match self.read_record(
                principal,
                call,
                &id,
                &export.fields,
                &export.purpose,
                &mut decider,
            ) {
                Ok(read) => read,
                // Shredded since the scan.
                Err(Error::NotFound) => {
                    export.skipped += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if view.fields.iter().all(|f| f.value.is_none()) {
                // Nothing to show: neither the record nor its id leaves, so no disclosure to
                // audit (a disclosure-limit alert among the events still goes).
                export.skipped += 1;
                events.extend(
                    record_events
                        .into_iter()
                        .filter(|e| e.method != call.method),
                );
                continue;
            }
            events.extend(record_events);
            out.records.push((export.scanned, view));
        }
        if let Some((last, _)) = page.last() {
            export.after = Some(last.clone());
        }
        if !events.is_empty() {
            // Fail closed: no record of the batch leaves unless its event is durable.
            self.audit.commit(Batch::new(), events).await?;
        }
        for (_, view) in &out.records {
            for f in &view.fields {
                let consent = f
                    .withheld_reason
                    .as_deref()
                    .filter(|_| f.withheld_by_consent);
                let limited = f.withheld_reason.is_some() && !f.withheld_by_consent;
                let outcome = super::read_outcome(f.decision, limited, consent);
                let counts = export.outcomes.entry(f.name.clone()).or_default();
                match counts.get_mut(outcome) {
                    Some(n) => *n += 1,
                    None => {
                        counts.insert(outcome.to_owned(), 1);
                    }
                }
            }
        }
        export.exported += out.records.len() as u64;
        Ok(out)
    }

    /// Records the export's summary event: counts per field and outcome, and how it ended.
    ///
    /// # Errors
    /// `Unavailable` if the audit log fails.
    pub async fn finish_export(
        &self,
        principal: &Principal,
        call: &Call,
        export: &RecordExport,
        end: ExportEnd,
    ) -> Result<(), Error> {
        let (result, how) = match end {
            ExportEnd::ClientGone => ("CANCELLED", "stopped: the client went away"),
            ExportEnd::Completed => ("OK", "completed"),
            ExportEnd::ServerStopping => ("UNAVAILABLE", "stopped: the server is shutting down"),
            ExportEnd::TokenRevoked => ("UNAUTHENTICATED", "stopped: the token was revoked"),
        };
        let counts: Vec<String> = export
            .outcomes
            .iter()
            .map(|(field, by)| {
                let by: Vec<String> = by.iter().map(|(o, n)| format!("{o} {n}")).collect();
                format!("{field} {}", by.join(" "))
            })
            .collect();
        let event = Event {
            collection: export.collection.clone(),
            purpose: export.purpose.as_str().to_owned(),
            policy_version: export.policy_version,
            fields: export
                .outcomes
                .keys()
                .map(|f| FieldOutcome {
                    field: f.clone(),
                    outcome: "exported".into(),
                })
                .collect(),
            result: result.into(),
            detail: format!(
                "export {how}: {} records exported, {} skipped (nothing to show, or shredded meanwhile), {} scanned of {} at the start; {}",
                export.exported,
                export.skipped,
                export.scanned,
                export.total,
                counts.join("; ")
            ),
            ..call.event(principal)
        };
        self.audit.commit(Batch::new(), vec![event]).await?;
        Ok(())
    }
}

/// The smallest key after `key` (record ids are all 16 bytes: nothing lies between).
fn after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}
