//! `strongroom audit ...`: query, follow, verify and export the audit log (auditors, admins).

use std::{io::Write, path::PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Remote, connect, parse_time, read_public_key, status_text, when};
use crate::api::pb;

/// Filters shared by `list`, `tail` and `export`.
#[derive(Debug, Args)]
pub(super) struct EventFilterArgs {
    /// Earliest time: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, or ms since the epoch.
    #[arg(long)]
    from: Option<String>,
    /// Latest time, same forms.
    #[arg(long)]
    to: Option<String>,
    /// The caller, e.g. svc:crm.
    #[arg(long)]
    subject: Option<String>,
    /// One of the caller's roles.
    #[arg(long)]
    role: Option<String>,
    /// The record id.
    #[arg(long)]
    record: Option<String>,
    /// The collection.
    #[arg(long)]
    collection: Option<String>,
    /// A field named in the event.
    #[arg(long)]
    field: Option<String>,
    /// The declared purpose.
    #[arg(long)]
    purpose: Option<String>,
    /// A field outcome (plain, masked, withheld, written, ...) or a result (OK, PERMISSION_DENIED, ...).
    #[arg(long)]
    outcome: Option<String>,
    /// The method, e.g. Records/GetRecord.
    #[arg(long)]
    method: Option<String>,
    /// An alert's severity: warning or critical.
    #[arg(long)]
    severity: Option<String>,
    /// Only alerts (events with a severity).
    #[arg(long)]
    alerts: bool,
}

impl EventFilterArgs {
    fn to_pb(&self) -> Result<pb::EventFilter, String> {
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        Ok(pb::EventFilter {
            from_unix_ms: self.from.as_deref().map(parse_time).transpose()?,
            to_unix_ms: self.to.as_deref().map(parse_time).transpose()?,
            subject: s(&self.subject),
            role: s(&self.role),
            record_id: s(&self.record),
            collection: s(&self.collection),
            field: s(&self.field),
            purpose: s(&self.purpose),
            outcome: s(&self.outcome),
            method: s(&self.method),
            severity: s(&self.severity),
            alerts_only: self.alerts,
        })
    }
}

#[derive(Debug, Subcommand)]
pub(super) enum AuditCommand {
    /// Events matching the filters, oldest first.
    List {
        #[command(flatten)]
        filter: EventFilterArgs,
        /// At most this many events.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Follow events live as they are committed (Ctrl-C to stop).
    Tail {
        #[command(flatten)]
        filter: EventFilterArgs,
        /// First replay the stored events after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Verify the chain (exits non-zero on any inconsistency, naming the first bad event):
    /// on the server, or offline with `--file EXPORT.jsonl --public-key KEY` (no token, no
    /// vault).
    Verify {
        /// First sequence number (on the server).
        #[arg(long, conflicts_with = "file")]
        from: Option<u64>,
        /// Last sequence number (on the server).
        #[arg(long, conflicts_with = "file")]
        to: Option<u64>,
        /// An export (`audit export --out`) to verify offline instead of the server's log.
        #[arg(long, requires = "public_key")]
        file: Option<PathBuf>,
        /// The vault's public key (PEM, from `strongroom keys public`).
        #[arg(long, requires = "file")]
        public_key: Option<PathBuf>,
        /// A head pinned earlier (`audit head`): the export must contain event SEQ with this
        /// hash, so a truncated or rolled-back log is caught.
        #[arg(long, value_name = "SEQ:HASH", requires = "file")]
        expect_head: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// The signed head of the log as SEQ:HASH, for pinning (`verify --expect-head`).
    Head {
        /// Check the head's signature with this public key (PEM) before printing it.
        #[arg(long)]
        public_key: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Alerts (a honeytoken touched: critical; a limit reached: warning), newest last.
    Alerts {
        /// Only alerts since this time: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ, or ms since the epoch.
        #[arg(long)]
        since: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Who saw what: per caller subject, the distinct records and the fields disclosed in
    /// plaintext, masked or pseudonymized by successful calls (computed by the vault).
    Report {
        /// Start of the range, same forms as --since of `alerts`.
        #[arg(long)]
        since: String,
        /// End of the range (default: now).
        #[arg(long)]
        until: Option<String>,
        /// Only this caller, e.g. svc:crm.
        #[arg(long)]
        subject: Option<String>,
        /// Only disclosures of this field.
        #[arg(long)]
        field: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Write the matching events to a file as JSON Lines.
    Export {
        /// The output file.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        filter: EventFilterArgs,
        #[command(flatten)]
        remote: Remote,
    },
}

fn event_json(e: &pb::AuditEvent) -> serde_json::Value {
    let fields: Vec<_> = e
        .fields
        .iter()
        .map(|f| json!({"field": f.field, "outcome": f.outcome}))
        .collect();
    json!({
        "seq": e.seq, "time_ms": e.time_unix_ms, "request_id": e.request_id, "subject": e.subject,
        "roles": e.roles, "method": e.method, "collection": e.collection, "record_id": e.record_id,
        "fields": fields, "purpose": e.purpose, "policy_version": e.policy_version,
        "result": e.result, "detail": e.detail, "severity": e.severity,
    })
}

fn print_event(e: &pb::AuditEvent, as_json: bool) {
    if as_json {
        println!("{}", event_json(e));
        return;
    }
    let who = match (e.subject.is_empty(), e.result.as_str()) {
        (true, "UNAUTHENTICATED") => "(unauthenticated)".to_owned(),
        (true, _) => "(vault)".to_owned(),
        (false, _) => format!("{} [{}]", e.subject, e.roles.join(",")),
    };
    let mut line = format!(
        "#{} {} {who} {} {}",
        e.seq,
        when(e.time_unix_ms),
        e.method,
        e.result
    );
    if !e.severity.is_empty() {
        line.push_str(&format!(" severity={}", e.severity));
    }
    if !e.record_id.is_empty() {
        line.push_str(&format!(" {}/{}", e.collection, e.record_id));
    }
    if !e.purpose.is_empty() {
        line.push_str(&format!(" purpose={}", e.purpose));
    }
    if e.policy_version > 0 {
        line.push_str(&format!(" policy=v{}", e.policy_version));
    }
    for f in &e.fields {
        line.push_str(&format!(" {}={}", f.field, f.outcome));
    }
    if !e.detail.is_empty() {
        line.push_str(&format!("  ({})", e.detail));
    }
    println!("{line}");
}

pub(super) async fn audit(command: AuditCommand) -> Result<(), String> {
    match command {
        AuditCommand::List {
            filter,
            limit,
            after,
            remote,
        } => {
            let filter = filter.to_pb()?;
            let mut c = connect(&remote).await?;
            let (mut after, mut shown) = (after, 0usize);
            while shown < limit {
                let page = c
                    .audit
                    .query_events(pb::QueryEventsRequest {
                        filter: Some(filter.clone()),
                        page_size: u32::try_from((limit - shown).min(1000)).unwrap_or(1000),
                        after_seq: after,
                    })
                    .await
                    .map_err(|s| status_text(&s))?
                    .into_inner();
                for e in &page.events {
                    print_event(e, remote.json);
                }
                shown += page.events.len();
                if page.next_after_seq == 0 {
                    break;
                }
                after = page.next_after_seq;
            }
        }
        AuditCommand::Tail {
            filter,
            after,
            remote,
        } => {
            let filter = filter.to_pb()?;
            let mut c = connect(&remote).await?;
            let mut stream = c
                .audit
                .follow_events(pb::FollowEventsRequest {
                    filter: Some(filter),
                    after_seq: after,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            while let Some(e) = stream.message().await.map_err(|s| status_text(&s))? {
                print_event(&e, remote.json);
            }
        }
        AuditCommand::Verify {
            file: Some(file),
            public_key,
            expect_head,
            remote,
            ..
        } => {
            let public_key = public_key.ok_or_else(|| "--file needs --public-key".to_owned())?;
            verify_file(&file, &public_key, expect_head.as_deref(), remote.json)?;
        }
        AuditCommand::Head { public_key, remote } => {
            let mut c = connect(&remote).await?;
            let h = c
                .audit
                .get_head(pb::GetHeadRequest {})
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if let Some(path) = public_key {
                let public = read_public_key(&path)?;
                let checkpoint = crate::audit::Checkpoint {
                    seq: h.seq,
                    head: h.hash.clone(),
                    time_ms: h.time_unix_ms,
                    signature: h.signature.clone(),
                };
                if !checkpoint.valid(&public) {
                    return Err(format!(
                        "the head's signature does not verify with the public key in {}",
                        path.display()
                    ));
                }
            }
            if remote.json {
                println!(
                    "{}",
                    json!({"seq": h.seq, "hash": h.hash, "time_ms": h.time_unix_ms, "signature": h.signature, "pin": format!("{}:{}", h.seq, h.hash)})
                );
            } else {
                println!("{}:{}", h.seq, h.hash);
            }
        }
        AuditCommand::Verify {
            from,
            to,
            remote,
            file: None,
            ..
        } => {
            let mut c = connect(&remote).await?;
            let r = c
                .audit
                .verify_log(pb::VerifyLogRequest {
                    from_seq: from,
                    to_seq: to,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!(
                    "{}",
                    json!({"ok": r.ok, "from": r.from_seq, "to": r.to_seq, "checked": r.checked,
                           "anchor": r.anchor_seq, "problem_seq": r.problem_seq, "problem": r.problem})
                );
            } else if r.ok {
                let anchor = if r.anchor_seq > 0 {
                    format!(", anchored at checkpoint {}", r.anchor_seq)
                } else {
                    String::new()
                };
                println!(
                    "ok: events {}..={} verified ({} events{anchor})",
                    r.from_seq, r.to_seq, r.checked
                );
            }
            if !r.ok {
                return Err(format!(
                    "audit log inconsistent at event {}: {}",
                    r.problem_seq, r.problem
                ));
            }
        }
        AuditCommand::Alerts { since, remote } => {
            super::breach::alerts(since.as_deref(), &remote).await?;
        }
        AuditCommand::Report {
            since,
            until,
            subject,
            field,
            remote,
        } => {
            let args = super::breach::ReportArgs {
                since: &since,
                until: until.as_deref(),
                subject,
                field,
            };
            super::breach::report(args, &remote).await?;
        }
        AuditCommand::Export {
            out,
            filter,
            remote,
        } => {
            let filter = filter.to_pb()?;
            let mut c = connect(&remote).await?;
            let mut stream = c
                .audit
                .export_events(pb::ExportEventsRequest {
                    filter: Some(filter),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            let mut file = std::fs::File::create(&out)
                .map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            let mut lines = 0usize;
            while let Some(chunk) = stream.message().await.map_err(|s| status_text(&s))? {
                lines += chunk
                    .jsonl
                    .lines()
                    .filter(|l| l.starts_with("{\"type\":\"event\""))
                    .count();
                file.write_all(chunk.jsonl.as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            }
            file.sync_all()
                .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            if remote.json {
                println!(
                    "{}",
                    json!({"out": out.display().to_string(), "events": lines})
                );
            } else {
                println!("exported {lines} events to {}", out.display());
            }
        }
    }
    Ok(())
}

/// `audit verify --file`: the export checked offline with the public key alone.
fn verify_file(
    file: &std::path::Path,
    public_key: &std::path::Path,
    expect_head: Option<&str>,
    as_json: bool,
) -> Result<(), String> {
    let public = read_public_key(public_key)?;
    let pinned = expect_head
        .map(str::parse::<crate::audit::PinnedHead>)
        .transpose()
        .map_err(|e| format!("--expect-head: {e}"))?;
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let r = crate::audit::verify_export(&text, &public, pinned)
        .map_err(|e| format!("export {} rejected: {e}", file.display()))?;
    let end = r.signed_end.as_ref();
    if as_json {
        println!(
            "{}",
            json!({"ok": true, "first": r.first, "last": r.last, "events": r.events,
                   "checkpoints": r.checkpoints, "from_genesis": r.from_genesis,
                   "ends_at_head": r.ends_at_head,
                   "head": end.map(|c| format!("{}:{}", c.seq, c.head)),
                   "signed_at_ms": end.map(|c| c.time_ms),
                   "pinned_head_found": pinned.is_some()})
        );
        return Ok(());
    }
    if r.events == 0 {
        println!("ok: the export holds no events");
        return Ok(());
    }
    let start = if r.from_genesis {
        "from the start of the log".to_owned()
    } else {
        format!(
            "starting at event {} (earlier events are not in this export)",
            r.first
        )
    };
    println!(
        "ok: events {}..={} verified ({} events, {start}; {} signed checkpoints inside)",
        r.first, r.last, r.events, r.checkpoints
    );
    if let Some(c) = end {
        let what = if r.ends_at_head {
            "the vault's signed head at export time"
        } else {
            "a signed checkpoint (the export stops before the head)"
        };
        println!(
            "the last event is covered by {what}, signed {}",
            when(c.time_ms)
        );
        println!("head: {}:{}", c.seq, c.head);
    }
    if let Some(p) = pinned {
        println!("the pinned head {p} is in the export, unchanged");
    }
    Ok(())
}
