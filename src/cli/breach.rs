//! `strongroom audit alerts` and `strongroom audit report`: breach response. Alerts are the
//! events with a severity (a honeytoken touched, a limit reached), listed through `QueryEvents`;
//! the report of who saw what is computed by the vault (`Audit/Report`), so a remote vault's
//! log is not downloaded.

use serde_json::json;

use super::{Remote, connect, parse_time, status_text, when};
use crate::api::pb;

/// `audit alerts`: every alert since `since`, oldest first (newest last).
pub(super) async fn alerts(since: Option<&str>, remote: &Remote) -> Result<(), String> {
    let filter = pb::EventFilter {
        from_unix_ms: since.map(parse_time).transpose()?,
        alerts_only: true,
        ..pb::EventFilter::default()
    };
    let mut c = connect(remote).await?;
    let mut after = 0;
    let mut shown = 0usize;
    loop {
        let page = c
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: Some(filter.clone()),
                page_size: 1000,
                after_seq: after,
            })
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        for e in &page.events {
            shown += 1;
            if remote.json {
                println!(
                    "{}",
                    json!({"seq": e.seq, "time_ms": e.time_unix_ms, "severity": e.severity,
                           "method": e.method, "subject": e.subject, "roles": e.roles,
                           "collection": e.collection, "record_id": e.record_id,
                           "purpose": e.purpose, "result": e.result, "detail": e.detail})
                );
            } else {
                let dash = |s: &str| {
                    if s.is_empty() {
                        "-".to_owned()
                    } else {
                        s.to_owned()
                    }
                };
                println!(
                    "{}  {:<8}  {:<22}  {:<20}  record={}  purpose={}  {}",
                    when(e.time_unix_ms),
                    e.severity,
                    e.method,
                    dash(&e.subject),
                    dash(&e.record_id),
                    dash(&e.purpose),
                    e.detail
                );
            }
        }
        if page.next_after_seq == 0 {
            break;
        }
        after = page.next_after_seq;
    }
    if shown == 0 && !remote.json {
        println!("no alerts");
    }
    Ok(())
}

/// What `audit report` selects.
pub(super) struct ReportArgs<'a> {
    pub(super) since: &'a str,
    pub(super) until: Option<&'a str>,
    pub(super) subject: Option<String>,
    pub(super) field: Option<String>,
}

/// `audit report`: per subject, the records and fields disclosed since `since`.
pub(super) async fn report(args: ReportArgs<'_>, remote: &Remote) -> Result<(), String> {
    let request = pb::ReportRequest {
        from_unix_ms: Some(parse_time(args.since)?),
        to_unix_ms: args.until.map(parse_time).transpose()?,
        subject: args.subject.unwrap_or_default(),
        field: args.field.unwrap_or_default(),
    };
    let (from, to) = (request.from_unix_ms, request.to_unix_ms);
    let mut c = connect(remote).await?;
    let r = c
        .audit
        .report(request)
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    if remote.json {
        let subjects: Vec<_> = r
            .subjects
            .iter()
            .map(|s| {
                let by = |outcome: &str| {
                    s.fields
                        .iter()
                        .filter(|f| f.outcome == outcome)
                        .map(|f| (f.field.clone(), json!(f.records)))
                        .collect::<serde_json::Map<_, _>>()
                };
                json!({"subject": s.subject, "records": s.records, "calls": s.calls,
                       "plain": by("plain"), "masked": by("masked"), "pseudonym": by("pseudonym"),
                       "purposes": s.purposes, "first_ms": s.first_unix_ms,
                       "last_ms": s.last_unix_ms})
            })
            .collect();
        println!(
            "{}",
            json!({"from_ms": from, "to_ms": to, "events_matched": r.events_matched,
                   "subjects": subjects})
        );
        return Ok(());
    }
    if r.subjects.is_empty() {
        println!(
            "nothing disclosed in the range ({} events matched)",
            r.events_matched
        );
        return Ok(());
    }
    println!(
        "{:<24} {:>8} {:>7}  {:<36} {:<36} pseudonym",
        "subject", "records", "calls", "plain (field:records)", "masked (field:records)"
    );
    for s in &r.subjects {
        let list = |outcome: &str| {
            let v: Vec<String> = s
                .fields
                .iter()
                .filter(|f| f.outcome == outcome)
                .map(|f| format!("{}:{}", f.field, f.records))
                .collect();
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        };
        println!(
            "{:<24} {:>8} {:>7}  {:<36} {:<36} {}",
            s.subject,
            s.records,
            s.calls,
            list("plain"),
            list("masked"),
            list("pseudonym")
        );
    }
    Ok(())
}
