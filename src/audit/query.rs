//! Queries over the log: filters and paging by sequence number; by record id or subject through
//! the log's index, when it has one.

use super::{AuditError, Event, chain::decode_stored, index::IndexKey, log::EventLog};

/// What an event must match; empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Earliest time (ms since the epoch), inclusive.
    pub from_ms: Option<i64>,
    /// Latest time (ms since the epoch), inclusive.
    pub to_ms: Option<i64>,
    /// The caller's subject.
    pub subject: Option<String>,
    /// One of the caller's roles.
    pub role: Option<String>,
    /// The record id.
    pub record_id: Option<String>,
    /// The collection.
    pub collection: Option<String>,
    /// A field named in the event.
    pub field: Option<String>,
    /// The declared purpose.
    pub purpose: Option<String>,
    /// A field outcome (`plain`, `masked`, `withheld`, ...) or a result (`OK`,
    /// `PERMISSION_DENIED`, ...).
    pub outcome: Option<String>,
    /// The method, e.g. `Records/GetRecord`.
    pub method: Option<String>,
    /// The severity of an alert (`warning`, `critical`).
    pub severity: Option<String>,
    /// Alerts only: events with a severity.
    pub alerts_only: bool,
}

impl Filter {
    /// Whether `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        self.from_ms.is_none_or(|t| e.time_ms >= t)
            && self.to_ms.is_none_or(|t| e.time_ms <= t)
            && eq(&self.subject, &e.subject)
            && self
                .role
                .as_deref()
                .is_none_or(|r| e.roles.iter().any(|x| x == r))
            && eq(&self.record_id, &e.record_id)
            && eq(&self.collection, &e.collection)
            && self
                .field
                .as_deref()
                .is_none_or(|f| e.fields.iter().any(|x| x.field == f))
            && eq(&self.purpose, &e.purpose)
            && self
                .outcome
                .as_deref()
                .is_none_or(|o| e.result == o || e.fields.iter().any(|x| x.outcome == o))
            && eq(&self.method, &e.method)
            && eq(&self.severity, &e.severity)
            && (!self.alerts_only || !e.severity.is_empty())
    }
}

/// Events scanned per page at most, so one query cannot hold the store for long.
const MAX_SCAN: usize = 200_000;

pub(super) fn query(
    log: &dyn EventLog,
    filter: &Filter,
    after_seq: u64,
    limit: usize,
) -> Result<(Vec<Event>, Option<u64>), AuditError> {
    let mut out = Vec::new();
    // Nothing comes after the largest sequence number (and `after_seq + 1` would overflow).
    let Some(mut cursor) = after_seq.checked_add(1) else {
        return Ok((out, None));
    };
    let mut scanned = 0usize;
    // A record id or a subject is looked up in the log's index when it has one.
    // (An empty name is not indexed: events without one are found by a scan.)
    fn named(name: &Option<String>) -> Option<&str> {
        name.as_deref().filter(|n| !n.is_empty())
    }
    let key = match (named(&filter.record_id), named(&filter.subject)) {
        (Some(record), _) => Some(IndexKey::Record(record)),
        (None, Some(subject)) => Some(IndexKey::Subject(subject)),
        (None, None) => None,
    };
    loop {
        let indexed = match key {
            Some(key) => log.scan_key(key, cursor, 1024)?,
            None => None,
        };
        let chunk = match indexed {
            Some(chunk) => chunk,
            None => log.scan(cursor, None, 1024)?,
        };
        let Some(&(last, _)) = chunk.last() else {
            return Ok((out, None));
        };
        cursor = last.saturating_add(1);
        for (seq, value) in chunk {
            let (event, _) = decode_stored(&value).ok_or_else(|| {
                AuditError::new(format!(
                    "audit event {seq} is malformed; run `strongroom audit verify`"
                ))
            })?;
            if filter.to_ms.is_some_and(|t| event.time_ms > t) {
                // Times never decrease along the chain: nothing later can match.
                return Ok((out, None));
            }
            scanned += 1;
            if filter.matches(&event) {
                out.push(event);
                if out.len() >= limit {
                    return Ok((out, Some(seq)));
                }
            }
            if scanned >= MAX_SCAN {
                return Ok((out, Some(seq)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::log::StoreLog,
        storage::{Batch, Keyspace, MemoryStore, Store},
    };

    #[test]
    fn a_query_after_the_last_possible_sequence_number_is_empty() {
        let store = std::sync::Arc::new(MemoryStore::new());
        let mut batch = Batch::new();
        batch.put(Keyspace::Audit, 1u64.to_be_bytes().to_vec(), b"x".to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let log = StoreLog::new(store);
        let (events, next) = query(&log, &Filter::default(), u64::MAX, 10)
            .unwrap_or_else(|e| panic!("{}", e.message));
        assert!(events.is_empty());
        assert_eq!(next, None);
    }
}
