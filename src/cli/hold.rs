//! `strongroom hold ...`: place, release and list legal holds (privacy officers, admins).
//! Times are shown in RFC 3339, UTC.

use clap::Subcommand;
use serde_json::json;

use super::{Remote, connect, parse_time, status_text};
use crate::{api::pb, vault::holds::rfc3339};

#[derive(Debug, Subcommand)]
pub(super) enum HoldCommand {
    /// Place a legal hold on a record: its shred, erasure and retention expiry are refused
    /// until the hold is released or ends.
    Place {
        /// The record id.
        #[arg(long)]
        id: String,
        /// Why (a case or matter reference): one printable line, at most 200 characters. Kept
        /// in the vault, never in the audit log.
        #[arg(long)]
        reason: String,
        /// When the hold ends by itself: 2027-06-30T00:00:00Z, 2027-06-30 (UTC midnight), or
        /// ms since the epoch (default: until released).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Release a hold; it stays in the record's history, marked released by you.
    Release {
        /// The record id.
        #[arg(long)]
        id: String,
        /// The hold's id, as `hold list` shows it (h1, h2, ...).
        #[arg(long)]
        hold: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// The holds in force across records (with --all, released and ended ones too).
    List {
        /// Released and ended holds too.
        #[arg(long)]
        all: bool,
        /// Only this record's holds.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
}

/// A hold as JSON, times in RFC 3339 (null for none).
fn hold_json(h: &pb::LegalHold) -> serde_json::Value {
    let time = |ms: i64| (ms != 0).then(|| rfc3339(ms));
    json!({
        "record_id": h.record_id, "hold_id": h.hold_id, "reason": h.reason,
        "placed_by": h.placed_by, "placed_at": rfc3339(h.placed_at_unix_ms),
        "until": time(h.until_unix_ms),
        "released_by": (!h.released_by.is_empty()).then_some(&h.released_by),
        "released_at": time(h.released_at_unix_ms), "active": h.active,
    })
}

/// A hold in one line for people.
fn hold_line(h: &pb::LegalHold) -> String {
    let until = match h.until_unix_ms {
        0 => "until released".to_owned(),
        ms => format!("until {}", rfc3339(ms)),
    };
    let state = if !h.released_by.is_empty() {
        format!(
            "released by {} at {}",
            h.released_by,
            rfc3339(h.released_at_unix_ms)
        )
    } else if h.active {
        "in force".to_owned()
    } else {
        "ended".to_owned()
    };
    format!(
        "{} {}  {state}; placed by {} at {}, {until}; reason: {}",
        h.record_id,
        h.hold_id,
        h.placed_by,
        rfc3339(h.placed_at_unix_ms),
        h.reason
    )
}

pub(super) async fn hold(command: HoldCommand) -> Result<(), String> {
    match command {
        HoldCommand::Place {
            id,
            reason,
            until,
            remote,
        } => {
            let until_unix_ms = until.as_deref().map(parse_time).transpose()?.unwrap_or(0);
            let mut c = connect(&remote).await?;
            let h = c
                .holds
                .place_hold(pb::PlaceHoldRequest {
                    record_id: id,
                    reason,
                    until_unix_ms,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner()
                .hold
                .ok_or("the vault answered without the hold")?;
            if remote.json {
                println!("{}", hold_json(&h));
            } else {
                println!("hold {} placed on record {}", h.hold_id, h.record_id);
                println!("{}", hold_line(&h));
            }
        }
        HoldCommand::Release { id, hold, remote } => {
            let mut c = connect(&remote).await?;
            let h = c
                .holds
                .release_hold(pb::ReleaseHoldRequest {
                    record_id: id,
                    hold_id: hold,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner()
                .hold
                .ok_or("the vault answered without the hold")?;
            if remote.json {
                println!("{}", hold_json(&h));
            } else {
                println!("hold {} of record {} released", h.hold_id, h.record_id);
            }
        }
        HoldCommand::List { all, id, remote } => {
            let mut c = connect(&remote).await?;
            let mut holds = Vec::new();
            let mut after = String::new();
            loop {
                let page = c
                    .holds
                    .list_holds(pb::ListHoldsRequest {
                        record_id: id.clone().unwrap_or_default(),
                        include_inactive: all,
                        limit: 0,
                        after_record_id: after,
                    })
                    .await
                    .map_err(|s| status_text(&s))?
                    .into_inner();
                holds.extend(page.holds);
                if page.next_after_record_id.is_empty() {
                    break;
                }
                after = page.next_after_record_id;
            }
            if remote.json {
                let list: Vec<_> = holds.iter().map(hold_json).collect();
                println!("{}", json!({ "holds": list }));
            } else if holds.is_empty() {
                println!(
                    "{}",
                    if all {
                        "no legal holds"
                    } else {
                        "no legal holds in force"
                    }
                );
            } else {
                for h in &holds {
                    println!("{}", hold_line(h));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_print_their_times_in_rfc_3339() {
        let h = pb::LegalHold {
            record_id: "00".repeat(16),
            hold_id: "h2".into(),
            reason: "matter 17".into(),
            placed_by: "user:po".into(),
            placed_at_unix_ms: 1_700_000_000_000,
            until_unix_ms: 1_782_777_600_000,
            released_by: String::new(),
            released_at_unix_ms: 0,
            active: true,
        };
        let j = hold_json(&h);
        assert_eq!(j["placed_at"], "2023-11-14T22:13:20Z");
        assert_eq!(j["until"], "2026-06-30T00:00:00Z");
        assert!(j["released_at"].is_null() && j["released_by"].is_null());
        let line = hold_line(&h);
        assert!(line.contains("h2  in force; placed by user:po at 2023-11-14T22:13:20Z, until 2026-06-30T00:00:00Z"), "{line}");
        let released = pb::LegalHold {
            released_by: "user:po2".into(),
            released_at_unix_ms: 1_700_000_060_000,
            active: false,
            ..h
        };
        assert!(hold_line(&released).contains("released by user:po2 at 2023-11-14T22:14:20Z"));
        assert_eq!(hold_json(&released)["released_at"], "2023-11-14T22:14:20Z");
    }
}
