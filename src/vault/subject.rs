//! Data-subject rights over record ids: the signed subject-access export (GDPR Art. 15 and 20)
//! and erasure (Art. 17). Finding a subject's records (the blind index) is not this module's
//! job: both use cases take the ids.
//!
//! The export is one canonical JSON document, `strongroom.subject-export.v1`, signed with the
//! mechanism of `receipt` (one format of signed file for every document the vault signs):
//!
//! ```text
//! {"export":{"format":"strongroom.subject-export.v1","generated_at_ms":T,"exported_by":"..",
//!   "purpose":"subject_access","audit_through_seq":N,"public_key":"<64 hex>",
//!   "signing_key":"<16 hex>","records":[{"id":"<32 hex>","collection":"..","version":V,
//!   "fields":[{"name":"..","value":".."}],
//!   "history":[{"seq":S,"time_ms":T,"method":"..","subject":"..","fields":[{"field":"..","outcome":"written|cleared"}]}],
//!   "accesses":[{"seq":S,"time_ms":T,"method":"..","subject":"..","roles":[".."],"purpose":"..",
//!     "fields":[{"field":"..","outcome":"plain|masked|withheld|.."}],"result":"OK|.."}],
//!   "consents":[{"seq":S,"kind":"consent","purpose":"..","channel":"..","granted":true,"at_ms":T,
//!     "by":"..","source":"..","evidence_sha256":".."},{"seq":S,"kind":"opt_out","flag":"..","set":true,..}],
//!   "holds":[{"id":"h1","placed_by":"..","placed_at_ms":T,"until_ms":T|null,"released_at_ms":T|null,
//!     "active":true}]}]},"signature":"<128 hex>"}
//! ```
//!
//! The erasure receipt, `strongroom-erasure-receipt/v1`, is a receipt file like a shred's
//! (`{"receipt":{..},"signature":".."}`), listing what was erased and what was not, and why.
//!
//! Depends on `audit` (its query), `crypto` through `receipt`, and the record use cases.

use serde::{Deserialize, Serialize};

use super::{Decider, Error, Vault, check_purpose, consent::LedgerEntry, now_ms, receipt};
use crate::{
    audit::{Call, Event, Filter},
    domain::{Principal, Purpose, RecordId},
    policy::Decision,
    storage::Batch,
};

/// The format name inside every subject export.
pub const EXPORT_FORMAT: &str = "strongroom.subject-export.v1";
/// The format name inside every erasure receipt.
pub const ERASURE_FORMAT: &str = "strongroom-erasure-receipt/v1";
/// The purpose an export is read for.
pub const SUBJECT_ACCESS: &str = "subject_access";

/// A field outcome in an audit event: the field's name and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedOutcome {
    /// The field name.
    pub field: String,
    /// `written`, `cleared` (history); `plain`, `masked`, `withheld`, ... (accesses).
    pub outcome: String,
}

/// One field of a record, in plaintext.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedField {
    /// The field name.
    pub name: String,
    /// The value, in plaintext.
    pub value: String,
}

impl std::fmt::Debug for ExportedField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportedField")
            .field("name", &self.name)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// A write of the record: when, by which call, which fields were written or cleared. Never the
/// values, old or new.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryEntry {
    /// The audit event's sequence number.
    pub seq: u64,
    /// When (ms since the Unix epoch).
    pub time_ms: i64,
    /// `Records/CreateRecord` or `Records/UpdateRecord`.
    pub method: String,
    /// Who wrote.
    pub subject: String,
    /// The fields written or cleared.
    pub fields: Vec<ExportedOutcome>,
}

/// Any other audited call naming the record: reads, exports, refused or failed attempts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEntry {
    /// The audit event's sequence number.
    pub seq: u64,
    /// When (ms since the Unix epoch).
    pub time_ms: i64,
    /// The call, e.g. `Records/GetRecord`.
    pub method: String,
    /// Who called.
    pub subject: String,
    /// With which roles.
    pub roles: Vec<String>,
    /// The declared purpose (empty if none was).
    pub purpose: String,
    /// Per field: `plain`, `masked`, `withheld`, `disclosure limit`, ...
    pub fields: Vec<ExportedOutcome>,
    /// `OK` or the gRPC status code name of a refusal or failure.
    pub result: String,
}

/// A legal hold on the record, as the subject sees it: when and by whom it was placed, its end,
/// its release. Its reason (a matter reference written by a privacy officer) is not part of
/// the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedHold {
    /// The hold's id within the record (`h1`, ...).
    pub id: String,
    /// The subject who placed it.
    pub placed_by: String,
    /// When it was placed (ms since the Unix epoch).
    pub placed_at_ms: i64,
    /// When it ends by itself; `None`: until released.
    pub until_ms: Option<i64>,
    /// When it was released; `None` while not released.
    pub released_at_ms: Option<i64>,
    /// In force when the export was made.
    pub active: bool,
}

/// One record of the subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportedRecord {
    /// The record id.
    pub id: String,
    /// Its collection.
    pub collection: String,
    /// Its current version.
    pub version: u64,
    /// Every field it holds, in plaintext, in the schema's order.
    pub fields: Vec<ExportedField>,
    /// Its creation and updates, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Every other audited call naming it, oldest first.
    pub accesses: Vec<AccessEntry>,
    /// The consent ledger, oldest first: every grant and revocation (purpose, channel) and
    /// every opt-out set or cleared, with its time, who recorded it, its source and evidence
    /// hash. The current state is the latest entry of each.
    pub consents: Vec<LedgerEntry>,
    /// Every legal hold placed on it, oldest first.
    pub holds: Vec<ExportedHold>,
}

/// The signed subject-access export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportDocument {
    /// Always `EXPORT_FORMAT`.
    pub format: String,
    /// When the vault made it (ms since the Unix epoch).
    pub generated_at_ms: i64,
    /// The subject (staff or service) that asked for it.
    pub exported_by: String,
    /// Always `subject_access`.
    pub purpose: String,
    /// The audit log up to this sequence number is covered: `history` and `accesses` hold
    /// every event naming each record up to here (this export's own reads come after).
    pub audit_through_seq: u64,
    /// The vault's Ed25519 public key, hex (the one `GetPublicKey` serves).
    pub public_key: String,
    /// Its fingerprint.
    pub signing_key: String,
    /// The subject's records, in the order asked.
    pub records: Vec<ExportedRecord>,
}

impl receipt::Signable for ExportDocument {
    const FORMAT: &'static str = EXPORT_FORMAT;
    const WRAPPER: &'static str = "export";
    const DOMAIN: &'static [u8] = b"strongroom/subject-export/v1\n";
    fn signing_key(&self) -> &str {
        &self.signing_key
    }
}

/// A record the erasure shredded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasedRecord {
    /// The record id.
    pub record_id: String,
    /// Its collection.
    pub collection: String,
    /// Field ciphertexts deleted.
    pub fields_destroyed: u32,
    /// When its shred committed (ms since the Unix epoch).
    pub shredded_at_ms: i64,
    /// When its purge from live files completed; `null` if still pending.
    pub purged_at_ms: Option<i64>,
    /// When no backup of the key store yields its data key any more; `null` if unknown.
    pub unrecoverable_after_ms: Option<i64>,
}

/// A record the erasure did not shred, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotErased {
    /// The record id.
    pub record_id: String,
    /// Why: `not found (never existed, or already shredded)`, a refusal, or a failure to retry.
    pub reason: String,
}

/// The signed erasure receipt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureDocument {
    /// Always `ERASURE_FORMAT`.
    pub format: String,
    /// When the erasure finished (ms since the Unix epoch).
    pub completed_at_ms: i64,
    /// The key epoch current at the erasure.
    pub key_epoch: u32,
    /// Every record shredded: each shred committed before it was listed here.
    pub erased: Vec<ErasedRecord>,
    /// Every record asked for and not shredded.
    pub not_erased: Vec<NotErased>,
    /// The fingerprint of the key that signed.
    pub signing_key: String,
}

impl receipt::Signable for ErasureDocument {
    const FORMAT: &'static str = ERASURE_FORMAT;
    const WRAPPER: &'static str = "receipt";
    const DOMAIN: &'static [u8] = b"strongroom/erasure-receipt/v1\n";
    fn signing_key(&self) -> &str {
        &self.signing_key
    }
}

/// An export's answer: the signed document and which records it holds.
#[derive(Debug)]
pub struct SubjectExport {
    /// The canonical document and its signature. The document holds plaintext.
    pub signed: receipt::SignedReceipt,
    /// The records exported.
    pub ids: Vec<RecordId>,
}

/// An erasure's answer.
#[derive(Debug)]
pub struct SubjectErasure {
    /// Each shred that committed, with its own receipt.
    pub erased: Vec<super::ShredReceipt>,
    /// Each id not erased, with the error that stopped it (for its audit event).
    pub not_erased: Vec<(RecordId, Error)>,
    /// The combined receipt, signed; `None` only if the provider failed to sign (logged: the
    /// shreds are done).
    pub signed: Option<receipt::SignedReceipt>,
}

/// Why an id was not erased, for the receipt: our words, no internal detail.
pub fn not_erased_reason(e: &Error) -> String {
    match e {
        Error::Aborted(m) => format!("aborted: {m}"),
        Error::DataLoss => "stored data failed its integrity check; not erased".into(),
        Error::FailedPrecondition(m) => format!("not erased: {m}"),
        Error::Internal(_) => "internal error; not erased, retry".into(),
        Error::InvalidArgument(i) => format!("invalid: {}: {}", i.field, i.problem),
        Error::NoSuchHold(_)
        | Error::NoSuchProposal(_)
        | Error::NoSuchVersion(_)
        | Error::NotFound => "not found (never existed, or already shredded)".into(),
        Error::PermissionDenied(m) => format!("permission denied: {m}"),
        Error::ResourceExhausted(m) => format!("not erased: {m}"),
        Error::Unavailable(_) => "storage unavailable; not erased, retry".into(),
    }
}

impl Vault {
    /// `id`'s holds as the export shows them.
    fn exported_holds(&self, id: &RecordId) -> Result<Vec<ExportedHold>, Error> {
        let now = self.clock().now_ms();
        Ok(self
            .holds_of(id)?
            .into_iter()
            .map(|h| ExportedHold {
                active: h.is_active(now),
                id: h.id,
                placed_by: h.placed_by,
                placed_at_ms: h.placed_at_ms,
                until_ms: h.until_ms,
                released_at_ms: h.released.map(|r| r.at_ms),
            })
            .collect())
    }

    /// The purpose `subject_access`, which the schema must declare.
    fn subject_access(&self) -> Result<Purpose, Error> {
        Ok(self.schema.purpose(SUBJECT_ACCESS, "purpose")?.1)
    }

    /// Refuses unless `principal` may read every field of `collection` in plaintext for
    /// `purpose`; names the first field it may not.
    fn check_reads_all_plain(
        &self,
        principal: &Principal,
        collection: &crate::domain::Collection,
        purpose: &Purpose,
    ) -> Result<(), Error> {
        let all: Vec<usize> = (0..collection.fields().len()).collect();
        let permit = self
            .policy
            .table()
            .decide_read(principal, collection, &all, purpose);
        match permit
            .decisions()
            .iter()
            .find(|(_, d)| *d != Decision::Plain)
        {
            None => Ok(()),
            Some(&(f, _)) => Err(Error::PermissionDenied(format!(
                "{} (roles {}) may not read {}.{} in plaintext for {purpose}: a subject-access \
                 export needs every field in plaintext",
                principal.subject,
                principal.roles_text(),
                collection.name(),
                collection.fields()[f].0
            ))),
        }
    }

    /// The signed subject-access export of the records `ids`: every field in plaintext, the
    /// history of writes and the access history from the audit log. Each record is read for
    /// purpose `subject_access` as the ordinary read does; the reads' audit events (method
    /// `call.method`) are committed together once the whole document is made and signed, and
    /// are durable before it is returned. An export that fails logs no read (only alerts).
    ///
    /// # Errors
    /// `PermissionDenied` unless the caller may read every field of each record in plaintext
    /// for `subject_access` (checked before any record is read), `NotFound` for an unknown or
    /// shredded id, `InvalidArgument` for no ids, `Internal` if the document cannot be signed,
    /// and the errors of a read.
    pub async fn export_subject(
        &self,
        principal: &Principal,
        call: &Call,
        ids: &[RecordId],
    ) -> Result<SubjectExport, Error> {
        let purpose = self.subject_access()?;
        check_purpose(principal, &purpose)?;
        if ids.is_empty() {
            return Err(crate::domain::InvalidInput::new("subject", "no records to export").into());
        }
        self.check_count(ids.len(), "subject")?;
        // The same answer for existing and missing ids to a caller who may export nothing.
        if !self
            .schema
            .collections()
            .any(|c| self.check_reads_all_plain(principal, c, &purpose).is_ok())
        {
            return Err(Error::PermissionDenied(format!(
                "{} (roles {}) may not read every field of any collection in plaintext for \
                 {purpose}, as a subject-access export needs",
                principal.subject,
                principal.roles_text()
            )));
        }
        // Every record is checked before any is read: a refusal reads nothing.
        {
            let snapshot = self.store.snapshot();
            for id in ids {
                let loaded = self.load(snapshot.as_ref(), id)?;
                self.check_reads_all_plain(principal, loaded.collection, &purpose)?;
            }
        }
        let through = self.audit.last_seq()?;
        let mut events = Vec::new();
        match self.make_export(principal, call, ids, &purpose, through, &mut events) {
            Ok(export) => {
                // Fail closed: no document leaves unless every read's event is durable; none
                // is logged before the whole document is made.
                if !events.is_empty() {
                    self.audit.commit(Batch::new(), events).await?;
                }
                Ok(export)
            }
            Err(e) => {
                // Nothing was disclosed, so no read event; but an alert (a honeytoken touched,
                // the disclosure limit reached) is kept: it is about the attempt.
                let alerts: Vec<Event> = events
                    .into_iter()
                    .filter(|a| !a.severity.is_empty())
                    .collect();
                if !alerts.is_empty()
                    && let Err(c) = self.audit.commit(Batch::new(), alerts).await
                {
                    tracing::error!(request_id = %call.request_id, error = %c, "the alerts of a failed subject export were not recorded");
                }
                Err(e)
            }
        }
    }

    /// The export's document, signed, and in `events` the audit events its reads owe (not
    /// committed: the caller commits them once the whole document is made).
    fn make_export(
        &self,
        principal: &Principal,
        call: &Call,
        ids: &[RecordId],
        purpose: &Purpose,
        through: u64,
        events: &mut Vec<Event>,
    ) -> Result<SubjectExport, Error> {
        let mut records = Vec::with_capacity(ids.len());
        let mut decider = Decider::new(&self.policy);
        for id in ids {
            let (view, owed) = self.read_record(principal, call, id, &[], purpose, &mut decider)?;
            events.extend(owed);
            let mut fields = Vec::with_capacity(view.fields.len());
            for f in view.fields {
                match (f.decision, f.value) {
                    (Decision::Plain, Some(value)) => fields.push(ExportedField {
                        name: f.name,
                        value: value.expose().to_owned(),
                    }),
                    // A declared field the record does not hold.
                    (Decision::Plain, None) => {}
                    (Decision::Denied | Decision::Masked | Decision::Pseudonym, _) => {
                        return Err(Error::PermissionDenied(format!(
                            "field {} of record {id} was not disclosed in plaintext ({}); the \
                             export is incomplete and was not made",
                            f.name,
                            f.withheld_reason
                                .as_deref()
                                .unwrap_or("the policy changed during the export")
                        )));
                    }
                }
            }
            let (history, accesses) = self.record_events(id, through)?;
            records.push(ExportedRecord {
                id: id.to_string(),
                collection: view.collection,
                version: view.version,
                fields,
                history,
                accesses,
                consents: self.consent_ledger(id)?.history,
                holds: self.exported_holds(id)?,
            });
        }
        let provider = self.keys.provider();
        let public = provider.public_key();
        let doc = ExportDocument {
            format: EXPORT_FORMAT.into(),
            generated_at_ms: now_ms(),
            exported_by: principal.subject.as_str().to_owned(),
            purpose: purpose.as_str().to_owned(),
            audit_through_seq: through,
            public_key: hex::encode(public.0),
            signing_key: public.fingerprint(),
            records,
        };
        let signed = receipt::sign(&doc, provider.as_ref())
            .map_err(|e| Error::Internal(format!("the subject export could not be signed: {e}")))?;
        Ok(SubjectExport {
            signed,
            ids: ids.to_vec(),
        })
    }

    /// The audit events naming `id` up to sequence number `through`, selected by the log's own
    /// query: successful writes as history, everything else as accesses.
    fn record_events(
        &self,
        id: &RecordId,
        through: u64,
    ) -> Result<(Vec<HistoryEntry>, Vec<AccessEntry>), Error> {
        let filter = Filter {
            record_id: Some(id.to_string()),
            ..Filter::default()
        };
        let mut history = Vec::new();
        let mut accesses = Vec::new();
        let mut after = 0;
        loop {
            let (events, next) = self.audit.query(&filter, after, 1000)?;
            for event in events.into_iter().filter(|e| e.seq <= through) {
                place(event, &mut history, &mut accesses);
            }
            match next {
                Some(seq) if seq < through => after = seq,
                Some(_) | None => return Ok((history, accesses)),
            }
        }
    }

    /// Erases the records `ids` through the ordinary shred, one by one, and signs one receipt
    /// listing each id erased (its shred committed) and each not erased, and why.
    ///
    /// # Errors
    /// `PermissionDenied` if the caller may delete records of no collection, `InvalidArgument`
    /// for no ids or too many; the failure of one id is reported in the answer, not as an error.
    pub async fn erase_subject(
        &self,
        principal: &Principal,
        call: &Call,
        ids: &[RecordId],
        wait_for_purge: bool,
    ) -> Result<SubjectErasure, Error> {
        if ids.is_empty() {
            return Err(crate::domain::InvalidInput::new("subject", "no records to erase").into());
        }
        self.check_count(ids.len(), "subject")?;
        self.may_delete_some_record(principal)?;
        let mut erased = Vec::new();
        let mut not_erased = Vec::new();
        for id in ids {
            if erased.iter().any(|r: &super::ShredReceipt| r.id == *id)
                || not_erased.iter().any(|(n, _)| n == id)
            {
                continue;
            }
            match self.shred(principal, call, id, wait_for_purge).await {
                Ok(receipt) => erased.push(receipt),
                Err(e) => not_erased.push((*id, e)),
            }
        }
        let provider = self.keys.provider();
        let doc = ErasureDocument {
            format: ERASURE_FORMAT.into(),
            completed_at_ms: now_ms(),
            key_epoch: provider.current().0,
            erased: erased
                .iter()
                .map(|r| ErasedRecord {
                    record_id: r.id.to_string(),
                    collection: r.collection.clone(),
                    fields_destroyed: r.fields_destroyed,
                    shredded_at_ms: r.shredded_at_ms,
                    purged_at_ms: r.purged_at_ms,
                    unrecoverable_after_ms: r.unrecoverable_after_ms,
                })
                .collect(),
            not_erased: not_erased
                .iter()
                .map(|(id, e)| NotErased {
                    record_id: id.to_string(),
                    reason: not_erased_reason(e),
                })
                .collect(),
            signing_key: provider.public_key().fingerprint(),
        };
        let signed = match receipt::sign(&doc, provider.as_ref()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(request_id = %call.request_id, error = %e, "the erasure is done but its receipt could not be signed");
                None
            }
        };
        Ok(SubjectErasure {
            erased,
            not_erased,
            signed,
        })
    }
}

/// Sorts one event of a record into its history (a committed create or update) or its
/// accesses (anything else).
fn place(event: Event, history: &mut Vec<HistoryEntry>, accesses: &mut Vec<AccessEntry>) {
    // An alert is not an access (the access it is about is there on its own), and naming a
    // honeytoken's alerts would mark the decoy to a caller without `audit read`.
    if !event.severity.is_empty() {
        return;
    }
    let fields = event
        .fields
        .into_iter()
        .map(|f| ExportedOutcome {
            field: f.field,
            outcome: f.outcome,
        })
        .collect();
    let write = matches!(
        event.method.as_str(),
        "Records/CreateRecord" | "Records/BatchCreateRecords" | "Records/UpdateRecord"
    );
    if write && event.result == "OK" {
        history.push(HistoryEntry {
            seq: event.seq,
            time_ms: event.time_ms,
            method: event.method,
            subject: event.subject,
            fields,
        });
    } else {
        accesses.push(AccessEntry {
            seq: event.seq,
            time_ms: event.time_ms,
            method: event.method,
            subject: event.subject,
            roles: event.roles,
            purpose: event.purpose,
            fields,
            result: event.result,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{KeyProvider, throwaway_keyring};

    fn document(value: &str, signing_key: String) -> ExportDocument {
        ExportDocument {
            format: EXPORT_FORMAT.into(),
            generated_at_ms: 1_700_000_000_000,
            exported_by: "user:dpo".into(),
            purpose: SUBJECT_ACCESS.into(),
            audit_through_seq: 7,
            public_key: String::new(),
            signing_key,
            records: vec![ExportedRecord {
                id: "00".repeat(16),
                collection: "customers".into(),
                version: 1,
                fields: vec![ExportedField {
                    name: "notes".into(),
                    value: value.into(),
                }],
                history: Vec::new(),
                accesses: Vec::new(),
                consents: Vec::new(),
                holds: Vec::new(),
            }],
        }
    }

    #[test]
    fn any_plaintext_round_trips_byte_for_byte_and_any_change_is_rejected() {
        let ring = throwaway_keyring();
        let public = ring.public_key();
        for value in [
            "plain",
            "quote \" backslash \\ slash / tab \t newline \n nul \u{0} del \u{7f}",
            "Zoë Ørsted, 東京, 🎉, \u{2028}",
        ] {
            let doc = document(value, public.fingerprint());
            let signed = receipt::sign(&doc, &ring).unwrap_or_else(|e| panic!("{e}"));
            let file = signed.file_text_for::<ExportDocument>().into_bytes();
            let back = receipt::verify_document::<ExportDocument>(&file, &public)
                .unwrap_or_else(|e| panic!("{value:?}: {e}"));
            assert_eq!(back, doc);
            for i in 0..file.len() {
                let mut bad = file.clone();
                bad[i] ^= 0x01;
                assert!(
                    receipt::verify_document::<ExportDocument>(&bad, &public).is_err(),
                    "byte {i} of {value:?}"
                );
            }
            // An export signature does not make an erasure receipt, nor a shred receipt.
            let as_receipt = signed.file_text();
            assert!(receipt::verify(as_receipt.as_bytes(), &public).is_err());
        }
    }
}
