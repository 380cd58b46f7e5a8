//! Legal holds: a record under an active hold is kept whatever else asks for its erasure (a
//! shred, an erasure by lookup, a retention rule). Held in `meta` under `holds/<record id>`,
//! as the record's list of holds (released ones included, so that its history stays), apart
//! from the record itself: a hold is the organisation's obligation, not the customer's data.
//!
//! The use cases (place, release, list) need `holds manage`. A placement and a release each
//! commit the new list and their audit event in one batch under the record lock, the lock a
//! shred takes too: a shred never slips between a hold's placement and its own check. A hold's
//! reason (free text written by a privacy officer; it may name a case) is kept in the store
//! only: never in an audit event, an error or a log line.
//!
//! Depends on `domain`, `audit` and `storage`; knows nothing of gRPC.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{Error, Privilege, Vault, require};
use crate::{
    audit::{Call, Event},
    domain::{InvalidInput, Principal, RecordId},
    storage::{Batch, Keyspace, prefix_end},
};

/// The `meta` key prefix of the holds.
pub(super) const HOLDS_PREFIX: &[u8] = b"holds/";

/// The longest hold reason, in characters.
pub const MAX_REASON_CHARS: usize = 200;

/// The most holds one record keeps, released ones included.
pub const MAX_HOLDS_PER_RECORD: usize = 256;

/// The most records one page of `list_holds` scans, and its default.
pub const MAX_LIST_LIMIT: usize = 1000;
/// The records a page of `list_holds` scans when the caller names no limit.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// The `meta` key of `id`'s holds.
pub(super) fn holds_key(id: &RecordId) -> Vec<u8> {
    let mut key = HOLDS_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// An instant for people, RFC 3339 in UTC: `2027-06-30T00:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

/// Why a hold is placed: required, printable, at most `MAX_REASON_CHARS` characters. Its
/// `Debug` does not print it.
#[derive(Clone, PartialEq, Eq)]
pub struct HoldReason(String);

impl HoldReason {
    /// Checks a reason given for `field`. Errors never quote it.
    ///
    /// # Errors
    /// `InvalidInput` if it is empty (or blank), too long, or holds a control character.
    pub fn parse(s: &str, field: &str) -> Result<Self, InvalidInput> {
        if s.trim().is_empty() {
            return Err(InvalidInput::new(
                field,
                "is required: say why the record is held (a case or matter reference)",
            ));
        }
        if s.chars().count() > MAX_REASON_CHARS {
            return Err(InvalidInput::new(
                field,
                format!("is longer than {MAX_REASON_CHARS} characters"),
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidInput::new(
                field,
                "holds a control character (a line break, a tab, ...): give one printable line",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The reason's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for HoldReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HoldReason(<not shown>)")
    }
}

/// Checks a hold id given for `field`: `h` and a number from 1 (`h1`, `h2`, ...), as the
/// vault numbers the holds of a record.
///
/// # Errors
/// `InvalidInput` (not quoting it) for anything else.
pub fn parse_hold_id(s: &str, field: &str) -> Result<String, InvalidInput> {
    if s.is_empty() {
        return Err(InvalidInput::new(field, "is required"));
    }
    let digits = s.strip_prefix('h').unwrap_or_default();
    let valid = (1..=6).contains(&digits.len())
        && !digits.starts_with('0')
        && digits.bytes().all(|b| b.is_ascii_digit());
    if !valid {
        return Err(InvalidInput::new(
            field,
            "must be a hold id: `h` and a number, as `strongroom hold list` shows (h1, h2, ...)",
        ));
    }
    Ok(s.to_owned())
}

/// Who released a hold, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The subject who released it.
    pub by: String,
    /// When (ms since the epoch, by the vault's clock).
    pub at_ms: i64,
}

/// One legal hold on a record. Its `Debug` leaves the reason out.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    /// The hold's id, unique within its record (`h1`, `h2`, ...).
    pub id: String,
    /// Why it was placed (a case or matter reference, written by a privacy officer).
    pub reason: String,
    /// The subject who placed it.
    pub placed_by: String,
    /// When it was placed (ms since the epoch).
    pub placed_at_ms: i64,
    /// When it ends by itself (ms since the epoch); `None`: until released.
    pub until_ms: Option<i64>,
    /// Who released it, and when; `None` while not released.
    pub released: Option<Release>,
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold")
            .field("id", &self.id)
            .field("placed_by", &self.placed_by)
            .field("placed_at_ms", &self.placed_at_ms)
            .field("until_ms", &self.until_ms)
            .field("released", &self.released)
            .finish_non_exhaustive()
    }
}

impl Hold {
    /// Whether the hold is in force at `now_ms`: not released and not past its end (a hold
    /// ending at `until` blocks up to, not including, that instant).
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.released.is_none() && self.until_ms.is_none_or(|until| now_ms < until)
    }

    /// The hold in words for a refusal: its id, who placed it and when, and its end; never
    /// its reason.
    fn described(&self) -> String {
        let until = self
            .until_ms
            .map(|u| format!(", until {}", rfc3339(u)))
            .unwrap_or_default();
        format!(
            "legal hold {} (placed by {} at {}{until})",
            self.id,
            self.placed_by,
            rfc3339(self.placed_at_ms)
        )
    }
}

/// Which holds `list_holds` returns.
#[derive(Debug, Clone, Default)]
pub struct HoldFilter {
    /// Only this record's holds (then `after` and `limit` do not apply).
    pub record: Option<RecordId>,
    /// Released and ended holds too, not only those in force.
    pub include_inactive: bool,
    /// Records scanned in this page, at most `MAX_LIST_LIMIT`; 0: `DEFAULT_LIST_LIMIT`.
    pub limit: usize,
    /// Start after this record (the previous page's `next_after`).
    pub after: Option<RecordId>,
}

/// A page of holds.
#[derive(Debug, Default)]
pub struct HoldList {
    /// Each hold with its record, in record id order, then oldest first.
    pub holds: Vec<(RecordId, Hold)>,
    /// More records may hold holds after this one: pass it as `after` for the next page.
    pub next_after: Option<RecordId>,
    /// The vault's time the page was decided at (ms since the epoch).
    pub now_ms: i64,
}

impl Vault {
    /// Every hold ever placed on `id`, active or not, oldest first.
    ///
    /// # Errors
    /// `Unavailable` if the store fails, `DataLoss` if the stored list is malformed.
    pub(super) fn holds_of(&self, id: &RecordId) -> Result<Vec<Hold>, Error> {
        let Some(bytes) = self.store.get(Keyspace::Meta, &holds_key(id))? else {
            return Ok(Vec::new());
        };
        decode(id, &bytes)
    }

    /// Refuses `what` (a shred, an erasure, a retention expiry) of `id` while a hold on it is in
    /// force: `FailedPrecondition` naming the hold (not its reason).
    ///
    /// # Errors
    /// `FailedPrecondition` for a held record; the errors of `holds_of`.
    pub(super) fn refuse_if_held(&self, id: &RecordId, what: &str) -> Result<(), Error> {
        let now = self.clock.now_ms();
        match self.holds_of(id)?.into_iter().find(|h| h.is_active(now)) {
            None => Ok(()),
            Some(hold) => Err(Error::FailedPrecondition(format!(
                "record {id} is under {}: {what} refused until it is released or ends",
                hold.described()
            ))),
        }
    }

    /// Places a legal hold on `id` for `reason`, until released or until `until_ms` (which
    /// must be in the future by the vault's clock). Returns the new hold.
    ///
    /// # Errors
    /// `PermissionDenied` without `holds manage`, `NotFound` for an unknown or shredded record,
    /// `InvalidArgument` for an `until` not in the future, `FailedPrecondition` if the record
    /// already keeps `MAX_HOLDS_PER_RECORD` holds, `DataLoss`, `Unavailable`.
    pub async fn place_hold(
        &self,
        principal: &Principal,
        call: &Call,
        id: &RecordId,
        reason: HoldReason,
        until_ms: Option<i64>,
    ) -> Result<Hold, Error> {
        require(&self.policy, principal, Privilege::ManageHolds)?;
        let _guard = self.locks.lock(id).await;
        let collection = {
            let snapshot = self.store.snapshot();
            self.load(snapshot.as_ref(), id)?.header.collection
        };
        let now = self.clock.now_ms();
        if let Some(until) = until_ms
            && until <= now
        {
            return Err(InvalidInput::new(
                "until",
                format!(
                    "must be in the future: the vault's clock reads {}",
                    rfc3339(now)
                ),
            )
            .into());
        }
        let mut holds = self.holds_of(id)?;
        if holds.len() >= MAX_HOLDS_PER_RECORD {
            return Err(Error::FailedPrecondition(format!(
                "record {id} keeps {MAX_HOLDS_PER_RECORD} holds, the most a record keeps"
            )));
        }
        let hold = Hold {
            id: format!("h{}", holds.len() + 1),
            reason: reason.0,
            placed_by: principal.subject.as_str().to_owned(),
            placed_at_ms: now,
            until_ms,
            released: None,
        };
        holds.push(hold.clone());
        let until = until_ms.map_or_else(|| "released".to_owned(), rfc3339);
        let event = Event {
            collection,
            record_id: id.to_string(),
            detail: format!("hold {} placed, until {until}", hold.id),
            ..call.event(principal)
        };
        self.commit_holds(id, &holds, event).await?;
        Ok(hold)
    }

    /// Releases hold `hold_id` of `id`: it is marked released by `principal` now, and kept in
    /// the record's history. Returns the released hold.
    ///
    /// # Errors
    /// `PermissionDenied` without `holds manage`, `NoSuchHold` if the record has no such hold,
    /// `FailedPrecondition` if it is already released, `DataLoss`, `Unavailable`.
    pub async fn release_hold(
        &self,
        principal: &Principal,
        call: &Call,
        id: &RecordId,
        hold_id: &str,
    ) -> Result<Hold, Error> {
        require(&self.policy, principal, Privilege::ManageHolds)?;
        let _guard = self.locks.lock(id).await;
        let mut holds = self.holds_of(id)?;
        let Some(hold) = holds.iter_mut().find(|h| h.id == hold_id) else {
            // The id is checked (`parse_hold_id`): `h` and digits, safe to name.
            return Err(Error::NoSuchHold(format!(
                "record {id} has no legal hold {hold_id}"
            )));
        };
        if let Some(released) = &hold.released {
            return Err(Error::FailedPrecondition(format!(
                "hold {hold_id} of record {id} was already released by {} at {}",
                released.by,
                rfc3339(released.at_ms)
            )));
        }
        let now = self.clock.now_ms();
        hold.released = Some(Release {
            by: principal.subject.as_str().to_owned(),
            at_ms: now,
        });
        let released = hold.clone();
        // A shredded record's holds stay (their history); its collection is then unknown.
        let collection = {
            let snapshot = self.store.snapshot();
            match self.load(snapshot.as_ref(), id) {
                Ok(loaded) => loaded.header.collection,
                Err(Error::NotFound) => String::new(),
                Err(e) => return Err(e),
            }
        };
        let until = released
            .until_ms
            .map_or_else(|| "released".to_owned(), rfc3339);
        let event = Event {
            collection,
            record_id: id.to_string(),
            detail: format!("hold {hold_id} released (it was until {until})"),
            ..call.event(principal)
        };
        self.commit_holds(id, &holds, event).await?;
        Ok(released)
    }

    /// The holds `filter` selects: by default those in force, across records, a page of at most
    /// `filter.limit` records at a time.
    ///
    /// # Errors
    /// `PermissionDenied` without `holds manage`, `InvalidArgument` for a limit above
    /// `MAX_LIST_LIMIT`, `DataLoss`, `Unavailable`.
    pub fn list_holds(
        &self,
        principal: &Principal,
        filter: &HoldFilter,
    ) -> Result<HoldList, Error> {
        require(&self.policy, principal, Privilege::ManageHolds)?;
        if filter.limit > MAX_LIST_LIMIT {
            return Err(InvalidInput::new(
                "limit",
                format!("at most {MAX_LIST_LIMIT} records a page"),
            )
            .into());
        }
        let now = self.clock.now_ms();
        let keep = |h: &Hold| filter.include_inactive || h.is_active(now);
        if let Some(id) = &filter.record {
            let holds = self
                .holds_of(id)?
                .into_iter()
                .filter(keep)
                .map(|h| (*id, h))
                .collect();
            return Ok(HoldList {
                holds,
                next_after: None,
                now_ms: now,
            });
        }
        let limit = if filter.limit == 0 {
            DEFAULT_LIST_LIMIT
        } else {
            filter.limit
        };
        let from = match &filter.after {
            // Strictly after: the smallest key greater than the previous page's last.
            Some(after) => {
                let mut key = holds_key(after);
                key.push(0);
                key
            }
            None => HOLDS_PREFIX.to_vec(),
        };
        let end = prefix_end(HOLDS_PREFIX);
        let rows = self
            .store
            .scan_range(Keyspace::Meta, &from, end.as_deref(), limit)?;
        let full = rows.len() == limit;
        let mut out = HoldList {
            now_ms: now,
            ..HoldList::default()
        };
        for (key, value) in rows {
            let id = key
                .strip_prefix(HOLDS_PREFIX)
                .and_then(|b| <[u8; 16]>::try_from(b).ok())
                .map(RecordId::from_bytes)
                .ok_or_else(|| {
                    tracing::error!("a legal-hold key does not name a record id");
                    Error::DataLoss
                })?;
            out.holds.extend(
                decode(&id, &value)?
                    .into_iter()
                    .filter(keep)
                    .map(|h| (id, h)),
            );
            out.next_after = full.then_some(id);
        }
        Ok(out)
    }

    /// Writes `id`'s holds with `event`, in one batch.
    async fn commit_holds(&self, id: &RecordId, holds: &[Hold], event: Event) -> Result<(), Error> {
        let bytes = serde_json::to_vec(holds)
            .map_err(|e| Error::Internal(format!("cannot encode legal holds: {e}")))?;
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, holds_key(id), bytes);
        self.audit.commit(batch, vec![event]).await?;
        Ok(())
    }
}

/// `id`'s stored list of holds.
fn decode(id: &RecordId, bytes: &[u8]) -> Result<Vec<Hold>, Error> {
    serde_json::from_slice(bytes).map_err(|_| {
        tracing::error!(record = %id, "a record's legal holds are malformed");
        Error::DataLoss
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(until_ms: Option<i64>, released: Option<i64>) -> Hold {
        Hold {
            id: "h1".into(),
            reason: "matter 2026-17".into(),
            placed_by: "alice".into(),
            placed_at_ms: 1_000,
            until_ms,
            released: released.map(|at_ms| Release {
                by: "bob".into(),
                at_ms,
            }),
        }
    }

    #[test]
    fn a_hold_is_active_until_released_or_until_its_end_and_not_at_it() {
        let open = hold(None, None);
        assert!(open.is_active(1_000));
        assert!(open.is_active(i64::MAX));
        let ending = hold(Some(5_000), None);
        assert!(ending.is_active(1_000));
        assert!(ending.is_active(4_999));
        assert!(!ending.is_active(5_000), "ends at its `until`");
        assert!(!ending.is_active(5_001));
        // Released: not active, whatever the end or the time (even before the release).
        assert!(!hold(None, Some(2_000)).is_active(1_500));
        assert!(!hold(None, Some(2_000)).is_active(3_000));
        assert!(!hold(Some(9_000), Some(2_000)).is_active(3_000));
    }

    #[test]
    fn debug_and_descriptions_leave_the_reason_out() {
        let h = hold(Some(1_782_777_600_000), None);
        assert!(!format!("{h:?}").contains("matter"));
        let d = h.described();
        assert_eq!(
            d,
            "legal hold h1 (placed by alice at 1970-01-01T00:00:01Z, until 2026-06-30T00:00:00Z)"
        );
        let r = HoldReason::parse("matter 2026-17", "reason").unwrap();
        assert!(!format!("{r:?}").contains("matter"));
    }

    #[test]
    fn reasons_are_required_printable_and_bounded_and_never_quoted() {
        assert!(HoldReason::parse("Case 17 (litigation, Smith v. Acme)", "reason").is_ok());
        assert!(HoldReason::parse(&"é".repeat(MAX_REASON_CHARS), "reason").is_ok());
        for bad in [
            String::new(),
            "   ".into(),
            "x".repeat(MAX_REASON_CHARS + 1),
            "case 17\nsecret".into(),
            "case\t17".into(),
        ] {
            let e = HoldReason::parse(&bad, "reason").unwrap_err();
            assert_eq!(e.field, "reason");
            assert!(bad.trim().is_empty() || !e.problem.contains(bad.trim()));
            assert!(!e.problem.contains("secret"));
        }
    }

    #[test]
    fn hold_ids_are_h_and_a_number() {
        for good in ["h1", "h2", "h256", "h999999"] {
            assert_eq!(parse_hold_id(good, "hold_id").unwrap(), good);
        }
        let fixed = parse_hold_id("h0", "hold_id").unwrap_err().problem;
        for bad in [
            "h",
            "h01",
            "1",
            "H1",
            "h1x",
            "h1234567",
            "hold-1",
            "123-45-6789",
        ] {
            // One fixed text, whatever was given: nothing of it is repeated.
            assert_eq!(parse_hold_id(bad, "hold_id").unwrap_err().problem, fixed);
        }
        assert_eq!(
            parse_hold_id("", "hold_id").unwrap_err().problem,
            "is required"
        );
    }
}
