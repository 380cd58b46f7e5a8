//! Honeytokens: decoy records, flagged in their header and otherwise like any other. Every
//! request that touches one (a read, a find hit, an analytics or subject export) writes one alert
//! event in the same commit as its own event, and logs a warning: the breach-response tripwire
//! an insider or a stolen token scanning the vault trips. The answer to the caller is the same
//! as for any record; only holders of `audit read` see the alert.
//!
//! Depends on `domain` and `audit`; knows nothing of gRPC.

use super::{Vault, sealed::Loaded};
use crate::{
    audit::{Call, Event, SEVERITY_CRITICAL},
    domain::{Principal, Purpose, RecordId},
};

/// The audit method of the alert of a touched honeytoken.
pub const HONEYTOKEN_ALERT_METHOD: &str = "Alerts/Honeytoken";

impl Vault {
    /// The alert to commit with `call`'s own event when the record `id` it touched (as
    /// `loaded`) is a honeytoken, for `purpose`; `None` for any other record. Call it once per
    /// record per request: one alert each.
    pub(super) fn tripwire(
        &self,
        principal: &Principal,
        call: &Call,
        id: &RecordId,
        loaded: &Loaded<'_>,
        purpose: &Purpose,
    ) -> Option<Event> {
        if !loaded.header.honeytoken {
            return None;
        }
        // Ids only: no field value, and the subject is a name, not a secret.
        tracing::warn!(
            record = %id,
            subject = %principal.subject,
            method = call.method,
            request_id = %call.request_id,
            "honeytoken record touched: a decoy no application reads; see `strongroom audit alerts`"
        );
        Some(Event {
            method: HONEYTOKEN_ALERT_METHOD.to_owned(),
            collection: loaded.header.collection.clone(),
            record_id: id.to_string(),
            purpose: purpose.as_str().to_owned(),
            detail: format!("honeytoken record touched by {}", call.method),
            severity: SEVERITY_CRITICAL.to_owned(),
            ..call.event(principal)
        })
    }
}
