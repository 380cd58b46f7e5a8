//! The `audit-query` workload: an auditor's queries by record and by subject in a large audit
//! log. It needs no server: it appends `--audit-events` read events (default 10 million) to a
//! segment log of its own on this disk, as the vault's appender does (frames of
//! `EVENTS_PER_FRAME`, one write and fdatasync each, checkpoints in a RocksDB store), then runs
//! the queries `QueryAudit` runs, through the same code: by the record of a random one of a
//! million customers, by a subject seen once in ten thousand events, by a subject seen in every
//! frame; and, for comparison, how fast a query the index cannot answer scans the log.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use rand::Rng as _;

use super::{CUSTOMER_FIELDS, Row, load::drive};
use crate::{
    audit::{Audit, AuditOptions, Event, FieldOutcome, Filter},
    storage::{RocksStore, Store},
};

/// Events per frame: what a busy vault's appender writes per batch at 64 requests in flight.
const EVENTS_PER_FRAME: usize = 128;
/// Distinct records read.
const RECORDS: u64 = 1_000_000;
/// Callers: a few services, and a person seen rarely.
const SERVICES: u64 = 20;
const RARE_SUBJECT: &str = "user:auditor";
const RARE_EVERY: u64 = 10_000;
/// Queries per kind, and events asked for per query (a page).
const QUERIES: u64 = 200;
const PAGE: usize = 100;

/// What the workload measured.
pub(super) struct Figures {
    events: u64,
    append_per_second: f64,
    log_bytes: u64,
    index_bytes: u64,
    scan_per_second: f64,
    rows: Vec<Row>,
}

impl Figures {
    pub(super) fn rows(&self) -> Vec<Row> {
        self.rows.clone()
    }

    pub(super) fn notes(&self) -> Vec<String> {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        vec![format!(
            "audit-query: {} events appended at {:.0} events/s in frames of {EVENTS_PER_FRAME}; \
             log {:.0} MiB ({:.0} B/event), index {:.0} MiB ({:.1} B/event); a query the index \
             cannot answer scans {:.0} events/s, so the whole log in {:.1} s",
            self.events,
            self.append_per_second,
            mib(self.log_bytes),
            self.log_bytes as f64 / self.events.max(1) as f64,
            mib(self.index_bytes),
            self.index_bytes as f64 / self.events.max(1) as f64,
            self.scan_per_second,
            self.events as f64 / self.scan_per_second.max(1e-9),
        )]
    }
}

fn record_id(n: u64) -> String {
    // Spread like the vault's random ids, reproducible from `n`.
    format!(
        "{:032x}",
        u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
    )
}

fn read_event(seq: u64, record: u64) -> Event {
    let subject = if seq.is_multiple_of(RARE_EVERY) {
        RARE_SUBJECT.to_owned()
    } else {
        format!("svc:app{}", seq % SERVICES)
    };
    Event {
        method: "Records/GetRecord".into(),
        result: "OK".into(),
        subject,
        roles: vec!["role:support".into()],
        record_id: record_id(record),
        collection: "customers".into(),
        purpose: "support".into(),
        fields: CUSTOMER_FIELDS
            .iter()
            .zip([
                "plain", "masked", "masked", "withheld", "withheld", "withheld", "masked", "plain",
            ])
            .map(|((field, _), outcome)| FieldOutcome {
                field: (*field).into(),
                outcome: outcome.into(),
            })
            .collect(),
        ..Event::default()
    }
}

/// The files in `dir` named `*.extension`.
fn files_of(dir: &Path, extension: &str) -> Vec<std::fs::DirEntry> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == extension))
        .collect()
}

fn count_of(dir: &Path, extension: &str) -> usize {
    files_of(dir, extension).len()
}

fn bytes_of(dir: &Path, extension: &str) -> u64 {
    files_of(dir, extension)
        .iter()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Times `QUERIES` queries, one at a time, each for the filter `filter(n)`: the row `name`.
async fn time_queries(
    audit: &Arc<Audit>,
    name: String,
    filter: impl Fn(u64) -> Filter + Clone + Send + Sync + 'static,
) -> Row {
    let audit = Arc::clone(audit);
    let stats = drive(1, Duration::from_secs(3600), Some(QUERIES), move |n| {
        let (audit, filter) = (Arc::clone(&audit), filter(n));
        async move {
            tokio::task::spawn_blocking(move || audit.query(&filter, 0, PAGE))
                .await
                .map_err(|e| e.to_string())?
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    })
    .await;
    Row {
        name,
        stats,
        server_cpu_us: None,
    }
}

/// Appends `events` events in `dir` and times the queries.
///
/// # Errors
/// A message if the log cannot be written or a query fails.
pub(super) async fn run(dir: &Path, events: u64) -> Result<Figures, String> {
    crate::files::private_dir(dir, "audit-query directory")?;
    let store: Arc<dyn Store> =
        Arc::new(RocksStore::open(&dir.join("store")).map_err(|e| e.to_string())?);
    let keys = Arc::new(crate::crypto::Keyring::open_file(dir.join("keyring"))?);
    let audit_dir = dir.join("audit");
    let audit = Arc::new(
        Audit::open_segments(&audit_dir, store, keys, AuditOptions::default())
            .map_err(|e| e.to_string())?,
    );
    let progress = indicatif::ProgressBar::new(events)
        .with_message("appending audit events")
        .with_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {pos}/{len} {per_sec} eta {eta}",
            )
            .map_err(|e| e.to_string())?,
        );
    let started = Instant::now();
    let mut rng = rand::thread_rng();
    let mut seq = 0u64;
    while seq < events {
        let n = (EVENTS_PER_FRAME as u64).min(events - seq);
        let frame = (seq..seq + n)
            .map(|s| read_event(s + 1, rng.gen_range(0..RECORDS)))
            .collect();
        audit
            .commit(crate::storage::Batch::new(), frame)
            .await
            .map_err(|e| e.to_string())?;
        seq += n;
        progress.set_position(seq);
    }
    let append_per_second = events as f64 / started.elapsed().as_secs_f64().max(1e-9);
    progress.finish_and_clear();

    // Closed segments are indexed in the background: the queries start once they all are.
    let waiting = Instant::now();
    while count_of(&audit_dir, "idx") + 1 < count_of(&audit_dir, "seg") {
        if waiting.elapsed() > Duration::from_secs(600) {
            return Err("the closed audit segments were not all indexed in 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let rows = vec![
        time_queries(
            &audit,
            format!("audit-query by record ({events} events)"),
            |_| Filter {
                record_id: Some(record_id(rand::thread_rng().gen_range(0..RECORDS))),
                ..Filter::default()
            },
        )
        .await,
        time_queries(
            &audit,
            format!("audit-query by subject, 1 in {RARE_EVERY}"),
            |_| Filter {
                subject: Some(RARE_SUBJECT.into()),
                ..Filter::default()
            },
        )
        .await,
        time_queries(&audit, "audit-query by subject, every frame".into(), |n| {
            Filter {
                subject: Some(format!("svc:app{}", n % SERVICES)),
                ..Filter::default()
            }
        })
        .await,
    ];
    if let Some((row, e)) = rows
        .iter()
        .find_map(|r| r.stats.first_error.as_ref().map(|e| (&r.name, e)))
    {
        return Err(format!("{row}: {e}"));
    }

    // A filter on the purpose alone is not indexed: one page of the scan, timed.
    let scan = Filter {
        purpose: Some("no such purpose".into()),
        ..Filter::default()
    };
    let audit_scan = Arc::clone(&audit);
    let started = Instant::now();
    let (_, next) = tokio::task::spawn_blocking(move || audit_scan.query(&scan, 0, PAGE))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let scanned = next.unwrap_or(events);
    let scan_per_second = scanned as f64 / started.elapsed().as_secs_f64().max(1e-9);

    Ok(Figures {
        events,
        append_per_second,
        log_bytes: bytes_of(&audit_dir, "seg"),
        index_bytes: bytes_of(&audit_dir, "idx"),
        scan_per_second,
        rows,
    })
}
