//! Legal holds: a record under an active hold is kept whatever else asks for its erasure (a
//! shred, an erasure by lookup, a retention rule). Held in `meta` under `holds/<record id>`,
//! as the record's list of holds (released ones included, so that its history stays), apart
//! from the record itself: a hold is the organisation's obligation, not the customer's data.

use serde::{Deserialize, Serialize};

use super::{Error, Vault};
use crate::{domain::RecordId, storage::Keyspace};

/// The `meta` key prefix of the holds.
pub(super) const HOLDS_PREFIX: &[u8] = b"holds/";

/// The `meta` key of `id`'s holds.
pub(super) fn holds_key(id: &RecordId) -> Vec<u8> {
    let mut key = HOLDS_PREFIX.to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// One legal hold on a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Who released it, and when (ms since the epoch); `None` while not released.
    pub released: Option<(String, i64)>,
}

impl Hold {
    /// Whether the hold is in force at `now_ms`: not released and not past its end.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.released.is_none() && self.until_ms.is_none_or(|until| now_ms < until)
    }
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
        serde_json::from_slice(&bytes).map_err(|_| {
            tracing::error!(record = %id, "a record's legal holds are malformed");
            Error::DataLoss
        })
    }

    /// Refuses `what` (a shred, an erasure, a retention expiry) of `id` while a hold on it is in
    /// force: `FailedPrecondition` naming the hold.
    ///
    /// # Errors
    /// `FailedPrecondition` for a held record; the errors of `holds_of`.
    pub(super) fn refuse_if_held(&self, id: &RecordId, what: &str) -> Result<(), Error> {
        let now = self.clock.now_ms();
        match self.holds_of(id)?.into_iter().find(|h| h.is_active(now)) {
            None => Ok(()),
            Some(hold) => Err(Error::FailedPrecondition(format!(
                "record {id} is under legal hold {} (placed by {} at {} ms{}): {what} refused until it is released",
                hold.id,
                hold.placed_by,
                hold.placed_at_ms,
                hold.until_ms
                    .map(|u| format!(", until {u} ms"))
                    .unwrap_or_default()
            ))),
        }
    }
}
