//! Pending policy changes: a change that escalates (a wider read of a sensitive field, or a
//! privilege a role or subject did not hold) waits here for a second policy admin. Stored in the
//! `meta` keyspace beside the versions, so they survive a restart; approved and rejected ones
//! are kept with their outcome.

use serde::{Deserialize, Serialize};

use crate::{
    storage::{Batch, Keyspace, Store},
    vault::Error,
};

const PREFIX: &[u8] = b"policy-pending/";

/// Where a proposal stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    /// Approved and applied.
    Approved {
        /// The approver.
        by: String,
        /// When (ms since the epoch).
        at_ms: i64,
        /// The version it became.
        version: u64,
    },
    /// Waiting for a second policy admin.
    Pending,
    /// Rejected, or withdrawn by its proposer.
    Rejected {
        /// Who rejected it.
        by: String,
        /// When (ms since the epoch).
        at_ms: i64,
    },
}

/// A policy change waiting for (or past) a second approver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    /// Its number, from 1.
    pub id: u64,
    /// The policy text it would apply.
    pub text: String,
    /// Why, in the proposer's words.
    pub comment: String,
    /// Who proposed it.
    pub proposed_by: String,
    /// When (ms since the epoch).
    pub proposed_at_ms: i64,
    /// The version it was proposed against; approval needs the policy still there.
    pub against_version: u64,
    /// Why it needs a second approver: each escalation, in our names only.
    pub reasons: Vec<String>,
    /// How many decisions it would change.
    pub decisions_changed: u64,
    /// Where it stands.
    #[serde(flatten)]
    pub status: Status,
}

fn key(id: u64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Every stored proposal, oldest first.
pub(super) fn load(store: &dyn Store) -> Result<Vec<Proposal>, Error> {
    store
        .scan_prefix(Keyspace::Meta, PREFIX)?
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).map_err(|_| Error::DataLoss))
        .collect()
}

/// One stored proposal.
pub(super) fn one(store: &dyn Store, id: u64) -> Result<Option<Proposal>, Error> {
    store
        .get(Keyspace::Meta, &key(id))?
        .map(|v| serde_json::from_slice(&v).map_err(|_| Error::DataLoss))
        .transpose()
}

/// The number the next proposal gets.
pub(super) fn next_id(store: &dyn Store) -> Result<u64, Error> {
    Ok(load(store)?.last().map_or(1, |p| p.id + 1))
}

/// The batch storing `p`.
pub(super) fn batch(p: &Proposal) -> Batch {
    // A struct of strings and integers: serializing it to JSON cannot fail.
    #[allow(clippy::expect_used)]
    let value = serde_json::to_vec(p).expect("a proposal always serializes");
    let mut batch = Batch::new();
    batch.put(Keyspace::Meta, key(p.id), value);
    batch
}
