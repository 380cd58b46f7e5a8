//! `strongroom retention ...`: what the retention rules will expire (a dry run), and a sweep now.

use clap::Subcommand;
use serde_json::json;

use super::{Remote, connect, status_text, when};
use crate::api::pb;

#[derive(Debug, Subcommand)]
pub(super) enum RetentionCommand {
    /// What would expire, and when: each record or field, its rule, its due time, and whether
    /// a legal hold keeps it. Nothing is changed.
    Plan {
        /// Look this far ahead (e.g. 30d, 72h; units up to weeks); by default, what is due now.
        #[arg(long)]
        within: Option<String>,
        /// List at most this many items (default and at most 10000).
        #[arg(long)]
        limit: Option<u32>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Run a sweep now: shred what expired (records under legal hold are skipped).
    Run {
        /// Stop after shredding from this many records; the next sweep resumes there.
        #[arg(long)]
        max_records: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
}

fn item_json(i: &pb::RetentionItem) -> serde_json::Value {
    json!({
        "id": i.id, "collection": i.collection,
        "field": if i.field.is_empty() { None } else { Some(&i.field) },
        "rule": i.rule, "due_unix_ms": i.due_unix_ms, "held": i.held,
    })
}

pub(super) async fn retention(command: RetentionCommand) -> Result<(), String> {
    match command {
        RetentionCommand::Plan {
            within,
            limit,
            remote,
        } => {
            let mut c = connect(&remote).await?;
            let plan = c
                .retention
                .plan_retention(pb::PlanRetentionRequest {
                    within: within.clone().unwrap_or_default(),
                    limit: limit.unwrap_or(0),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                let items: Vec<_> = plan.items.iter().map(item_json).collect();
                println!(
                    "{}",
                    json!({
                        "now_unix_ms": plan.now_unix_ms, "examined": plan.examined,
                        "due": plan.due, "truncated": plan.truncated, "items": items,
                    })
                );
                return Ok(());
            }
            let horizon = within.map_or_else(|| "now".to_owned(), |w| format!("within {w}"));
            println!(
                "{} records examined at {}; {} items expire {horizon}{}",
                plan.examined,
                when(plan.now_unix_ms),
                plan.due,
                if plan.truncated {
                    format!(" (the first {} listed)", plan.items.len())
                } else {
                    String::new()
                }
            );
            for i in &plan.items {
                let what = if i.field.is_empty() {
                    "(whole record)"
                } else {
                    i.field.as_str()
                };
                println!(
                    "{}  {}  {:<16} {}{}",
                    when(i.due_unix_ms),
                    i.id,
                    what,
                    i.rule,
                    if i.held { "  HELD (skipped)" } else { "" }
                );
            }
        }
        RetentionCommand::Run {
            max_records,
            remote,
        } => {
            let mut c = connect(&remote).await?;
            let r = c
                .retention
                .run_retention(pb::RunRetentionRequest {
                    max_records: max_records.unwrap_or(0),
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!(
                    "{}",
                    json!({
                        "examined": r.examined, "shredded_records": r.shredded_records,
                        "shredded_fields": r.shredded_fields, "held": r.held,
                        "first_seen": r.first_seen, "failed": r.failed, "finished": r.finished,
                    })
                );
            } else {
                println!(
                    "sweep {}: {} records examined, {} records shredded, {} fields shredded, \
                     {} held (skipped), {} first seen (counted from now), {} failed",
                    if r.finished {
                        "finished"
                    } else {
                        "stopped at --max-records (the next sweep resumes there)"
                    },
                    r.examined,
                    r.shredded_records,
                    r.shredded_fields,
                    r.held,
                    r.first_seen,
                    r.failed
                );
            }
        }
    }
    Ok(())
}
