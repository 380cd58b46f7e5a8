//! The breach report: who saw what. Per caller subject, over a time range, the distinct records
//! and the fields disclosed in plaintext, masked or pseudonymized by successful calls, computed
//! over the log with the query filters (a scan of the range, for now).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use super::{AuditError, Event, Filter, log::EventLog, query};

/// The field outcomes that disclose something (in the order the report lists them).
pub const DISCLOSING_OUTCOMES: [&str; 3] = ["plain", "masked", "pseudonym"];

/// Events read per page of the scan.
const PAGE: usize = 10_000;

/// How many distinct records had one field disclosed one way to one subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDisclosure {
    /// The field name.
    pub field: String,
    /// `plain`, `masked` or `pseudonym`.
    pub outcome: String,
    /// Distinct records.
    pub records: u64,
}

/// What one subject was shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectReport {
    /// The caller's subject.
    pub subject: String,
    /// Distinct records of which something was disclosed.
    pub records: u64,
    /// Successful calls that disclosed something.
    pub calls: u64,
    /// Per field and outcome, sorted by field then outcome.
    pub fields: Vec<FieldDisclosure>,
    /// The purposes declared, sorted.
    pub purposes: Vec<String>,
    /// The first and last disclosing call (ms since the epoch).
    pub first_ms: i64,
    /// See `first_ms`.
    pub last_ms: i64,
}

/// The report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Per subject, sorted by subject.
    pub subjects: Vec<SubjectReport>,
    /// Events that passed the range and filters (successful calls), disclosing or not.
    pub events_matched: u64,
}

#[derive(Default)]
struct Tally {
    records: HashSet<String>,
    calls: u64,
    fields: BTreeMap<(String, &'static str), HashSet<String>>,
    purposes: BTreeSet<String>,
    first_ms: i64,
    last_ms: i64,
}

/// The report over the events `filter` passes (its time range, subject and field are used;
/// with a field, only that field's disclosures count). Only successful calls that name a record
/// count, and of those only the outcomes that disclosed something.
pub(super) fn report(log: &dyn EventLog, filter: &Filter) -> Result<Report, AuditError> {
    let filter = Filter {
        outcome: Some("OK".into()),
        ..filter.clone()
    };
    let mut tallies: BTreeMap<String, Tally> = BTreeMap::new();
    let mut matched = 0u64;
    let mut after = 0;
    loop {
        let (events, next) = query::query(log, &filter, after, PAGE)?;
        for e in &events {
            if e.result != "OK" {
                // An outcome filter also passes an event with a field outcome `OK`: not a result.
                continue;
            }
            matched += 1;
            add(&mut tallies, &filter, e);
        }
        match next {
            Some(n) => after = n,
            None => break,
        }
    }
    let subjects = tallies
        .into_iter()
        .map(|(subject, t)| SubjectReport {
            subject,
            records: t.records.len() as u64,
            calls: t.calls,
            fields: t
                .fields
                .into_iter()
                .map(|((field, outcome), records)| FieldDisclosure {
                    field,
                    outcome: outcome.to_owned(),
                    records: records.len() as u64,
                })
                .collect(),
            purposes: t.purposes.into_iter().collect(),
            first_ms: t.first_ms,
            last_ms: t.last_ms,
        })
        .collect();
    Ok(Report {
        subjects,
        events_matched: matched,
    })
}

fn add(tallies: &mut BTreeMap<String, Tally>, filter: &Filter, e: &Event) {
    if e.record_id.is_empty() {
        return;
    }
    let disclosed: Vec<(&str, &'static str)> = e
        .fields
        .iter()
        .filter(|f| filter.field.as_deref().is_none_or(|w| w == f.field))
        .filter_map(|f| {
            DISCLOSING_OUTCOMES
                .into_iter()
                .find(|o| *o == f.outcome)
                .map(|o| (f.field.as_str(), o))
        })
        .collect();
    if disclosed.is_empty() {
        return;
    }
    let t = tallies.entry(e.subject.clone()).or_default();
    if t.calls == 0 {
        t.first_ms = e.time_ms;
    }
    t.calls += 1;
    t.last_ms = e.time_ms;
    t.records.insert(e.record_id.clone());
    if !e.purpose.is_empty() {
        t.purposes.insert(e.purpose.clone());
    }
    for (field, outcome) in disclosed {
        t.fields
            .entry((field.to_owned(), outcome))
            .or_default()
            .insert(e.record_id.clone());
    }
}
