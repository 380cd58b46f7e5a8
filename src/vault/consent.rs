//! The consent ledger of a record: recording grants, revocations and opt-outs (`SetConsent`),
//! showing the ledger (`GetConsent`), and deciding on a read whether the fields a role may see
//! may be used for the declared purpose (`withheld_by_consent`). The rules are the schema's
//! (`domain::ConsentRules`); the storage is `ledger`.
//!
//! Depends on `domain`, `policy`, `audit` and `storage`.

mod ledger;

pub use ledger::{ConsentState, ConsentStatus, Ledger, LedgerChange, LedgerEntry, OptOutStatus};

use super::{Error, Privilege, Vault, require, sealed::record_entry_key};
use crate::{
    audit::{Call, Event},
    domain::{Collection, ConsentSource, EvidenceHash, Principal, PurposeRules, RecordId},
    storage::{Batch, Keyspace, Snapshot},
};

/// What a consent change targets, by the names the caller gave (checked against the schema by
/// `set_consent`, so that the errors name the input).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsentTarget {
    /// Consent for a channel, for a purpose.
    Consent {
        /// The purpose (`consent.purpose`).
        purpose: String,
        /// The channel (`consent.channel`).
        channel: String,
        /// Granted (or revoked).
        granted: bool,
    },
    /// An opt-out flag (`opt_out.flag`).
    OptOut {
        /// The flag.
        flag: String,
        /// Set (or cleared).
        set: bool,
    },
}

/// One consent change to record.
#[derive(Debug, Clone)]
pub struct ConsentChange {
    /// The record.
    pub id: RecordId,
    /// What changes.
    pub target: ConsentTarget,
    /// Where it came from.
    pub source: ConsentSource,
    /// The SHA-256 of its evidence, if any.
    pub evidence: Option<EvidenceHash>,
}

impl Vault {
    /// Appends a consent change to a record's ledger and updates its current state, in one
    /// synced batch with its audit event (`consent autodialer for telemarketing: revoked`; no
    /// source, no evidence). The next read of the record decides by it.
    ///
    /// # Errors
    /// `PermissionDenied` without `consent manage` (before the record is looked up),
    /// `InvalidArgument` for an undeclared purpose, channel or opt-out, `NotFound` for an
    /// unknown or shredded record, `DataLoss` for a malformed stored state, `Unavailable`.
    pub async fn set_consent(
        &self,
        principal: &Principal,
        call: &Call,
        change: ConsentChange,
    ) -> Result<LedgerEntry, Error> {
        require(&self.policy, principal, Privilege::ManageConsent)?;
        let ConsentChange {
            id,
            target,
            source,
            evidence,
        } = change;
        let (change, purpose) = match target {
            ConsentTarget::Consent {
                purpose,
                channel,
                granted,
            } => {
                let (_, purpose) = self.schema.purpose(&purpose, "consent.purpose")?;
                let channel = self.schema.consent().channel(&channel, "consent.channel")?;
                let change = LedgerChange::Consent {
                    purpose: purpose.as_str().to_owned(),
                    channel,
                    granted,
                };
                (change, purpose.as_str().to_owned())
            }
            ConsentTarget::OptOut { flag, set } => {
                let flag = self.schema.consent().opt_out(&flag, "opt_out.flag")?;
                let change = LedgerChange::OptOut {
                    flag: flag.name().to_owned(),
                    set,
                };
                (change, String::new())
            }
        };
        let _guard = self.locks.lock(&id).await;
        let snapshot = self.store.snapshot();
        // Under the record lock: a shred waits for this change, or this one finds it shredded.
        let loaded = self.load(snapshot.as_ref(), &id)?;
        let mut state = consent_state(snapshot.as_ref(), &id)?.unwrap_or_default();
        drop(snapshot);
        let at_ms = self.clock.now_ms();
        state.apply(&change, at_ms);
        let entry = LedgerEntry {
            seq: state.entries,
            change,
            at_ms,
            by: principal.subject.as_str().to_owned(),
            source: source.as_str().to_owned(),
            evidence_sha256: evidence.map(|e| e.as_str().to_owned()),
        };
        let json = serde_json::to_vec(&entry)
            .map_err(|e| Error::Internal(format!("a consent entry did not serialize: {e}")))?;
        let mut batch = Batch::new();
        batch.put(
            Keyspace::Records,
            record_entry_key(&id, ledger::STATE_ENTRY),
            state.encode(),
        );
        batch.put(
            Keyspace::Records,
            record_entry_key(&id, &ledger::history_entry(entry.seq)),
            json,
        );
        let event = Event {
            collection: loaded.header.collection.clone(),
            record_id: id.to_string(),
            purpose,
            policy_version: self.policy.table().version(),
            detail: entry.change.describe(),
            ..call.event(principal)
        };
        self.audit.commit(batch, vec![event]).await?;
        Ok(entry)
    }

    /// A record's consent ledger (current state and whole history), for a holder of `consent
    /// read`; the read is audited (record id only) before the ledger is returned.
    ///
    /// # Errors
    /// `PermissionDenied` without `consent read` (before the record is looked up), `NotFound`
    /// for an unknown or shredded record, `DataLoss` for a malformed stored ledger,
    /// `Unavailable`.
    pub async fn consent(
        &self,
        principal: &Principal,
        call: &Call,
        id: &RecordId,
    ) -> Result<Ledger, Error> {
        require(&self.policy, principal, Privilege::ReadConsent)?;
        let snapshot = self.store.snapshot();
        let loaded = self.load(snapshot.as_ref(), id)?;
        let ledger = ledger_in(snapshot.as_ref(), id)?;
        drop(snapshot);
        let event = Event {
            collection: loaded.header.collection.clone(),
            record_id: id.to_string(),
            policy_version: self.policy.table().version(),
            detail: format!("consent ledger read: {} entries", ledger.history.len()),
            ..call.event(principal)
        };
        // Fail closed: the ledger leaves only once its read is durable.
        self.audit.commit(Batch::new(), vec![event]).await?;
        Ok(ledger)
    }

    /// A record's consent ledger as stored, with no permission check and no audit event: for
    /// the subject-access export, which checks and audits the whole export itself. Empty for a
    /// record without one (or an unknown id).
    ///
    /// # Errors
    /// `DataLoss` for a malformed stored ledger, `Unavailable`.
    pub(crate) fn consent_ledger(&self, id: &RecordId) -> Result<Ledger, Error> {
        ledger_in(self.store.snapshot().as_ref(), id)
    }
}

/// The keys a read adds to its field `multi_get` when `rules` cover some of the `shown` fields
/// of `collection` (a bit set): the record's consent state, or nothing at all.
pub(super) fn state_key(
    rules: Option<&PurposeRules>,
    collection: &Collection,
    shown: u64,
    id: &RecordId,
) -> Option<Vec<u8>> {
    let rules = rules?;
    (rules.mask(collection) & shown != 0).then(|| record_entry_key(id, ledger::STATE_ENTRY))
}

/// The fields among `shown` that `rules` withhold for `purpose` given the stored consent state
/// `state` (`None`: nothing recorded), with the reason of each.
///
/// # Errors
/// `DataLoss` for a malformed state.
pub(super) fn withheld_by_consent<'r>(
    rules: &'r PurposeRules,
    collection: &Collection,
    purpose: &str,
    shown: &[usize],
    state: Option<&[u8]>,
    id: &RecordId,
) -> Result<Vec<(usize, &'r str)>, Error> {
    let state = match state {
        Some(bytes) => decode_state(bytes, id)?,
        None => ConsentState::default(),
    };
    let mask = rules.mask(collection);
    Ok(shown
        .iter()
        .filter(|&&f| mask & (1 << f) != 0)
        .filter_map(|&f| {
            rules
                .withheld(
                    collection,
                    f,
                    |channel| state.granted(purpose, channel),
                    |flag| state.opted_out(flag),
                )
                .map(|reason| (f, reason))
        })
        .collect())
}

fn decode_state(bytes: &[u8], id: &RecordId) -> Result<ConsentState, Error> {
    ConsentState::decode(bytes).ok_or_else(|| {
        tracing::error!(record = %id, "a record's consent state is malformed");
        Error::DataLoss
    })
}

/// The stored consent state of `id`, if any.
fn consent_state(snapshot: &dyn Snapshot, id: &RecordId) -> Result<Option<ConsentState>, Error> {
    snapshot
        .get(
            Keyspace::Records,
            &record_entry_key(id, ledger::STATE_ENTRY),
        )?
        .map(|bytes| decode_state(&bytes, id))
        .transpose()
}

/// The state and history of `id` from one snapshot.
fn ledger_in(snapshot: &dyn Snapshot, id: &RecordId) -> Result<Ledger, Error> {
    let state = consent_state(snapshot, id)?.unwrap_or_default();
    let history = snapshot
        .scan_prefix(Keyspace::Records, &ledger::history_prefix(id))?
        .into_iter()
        .map(|(_, bytes)| {
            serde_json::from_slice::<LedgerEntry>(&bytes).map_err(|_| {
                tracing::error!(record = %id, "a record's consent history entry is malformed");
                Error::DataLoss
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if u64::try_from(history.len()).ok() != Some(state.entries) {
        tracing::error!(record = %id, "a record's consent history does not match its state");
        return Err(Error::DataLoss);
    }
    Ok(Ledger { state, history })
}
