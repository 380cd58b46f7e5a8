//! `strongroom consent ...`: record a customer's consent grants, revocations and opt-outs on a
//! record's ledger, and show the ledger.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Remote, connect, status_text};
use crate::api::pb;

#[derive(Debug, Subcommand)]
pub(super) enum ConsentCommand {
    /// Record that the customer granted consent for a channel, for a purpose (e.g. autodialer
    /// calls for telemarketing). Needs `consent manage`.
    Grant(ConsentArgs),
    /// Record that the customer revoked consent for a channel, for a purpose; the next read
    /// honours it.
    Revoke(ConsentArgs),
    /// Set an opt-out flag (e.g. do_not_call, do_not_sell_or_share).
    OptOut(FlagArgs),
    /// Clear an opt-out flag: the customer opted back in.
    OptIn(FlagArgs),
    /// A record's consents, opt-outs and their whole history. Needs `consent read`.
    Show {
        /// The record id.
        #[arg(long)]
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Debug, Args)]
pub(super) struct ConsentArgs {
    /// The record id.
    #[arg(long)]
    id: String,
    /// The purpose the consent is for, as the schema declares it (e.g. telemarketing).
    #[arg(long)]
    purpose: String,
    /// The channel, as the schema declares it (autodialer, call, email, prerecorded, sms).
    #[arg(long)]
    channel: String,
    #[command(flatten)]
    evidence: Evidence,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
pub(super) struct FlagArgs {
    /// The record id.
    #[arg(long)]
    id: String,
    /// The opt-out flag, as the schema declares it (do_not_call, do_not_sell_or_share).
    #[arg(long)]
    flag: String,
    #[command(flatten)]
    evidence: Evidence,
    #[command(flatten)]
    remote: Remote,
}

#[derive(Debug, Args)]
struct Evidence {
    /// Where it came from: a web form id, a call recording id, an agent (e.g. webform:8812,
    /// call:rec-4411, agent:jdoe); at most 128 printable characters.
    #[arg(long)]
    source: String,
    /// The SHA-256 of the evidence (64 hex digits).
    #[arg(long, conflicts_with = "evidence_file")]
    evidence_sha256: Option<String>,
    /// A file holding the evidence (a signed form, a recording): its SHA-256 is computed here
    /// and recorded; the file itself is not sent.
    #[arg(long)]
    evidence_file: Option<PathBuf>,
}

impl Evidence {
    /// The source and the evidence hash (hex; empty for none).
    fn resolve(self) -> Result<(String, String), String> {
        let hash = match (self.evidence_sha256, self.evidence_file) {
            (Some(hash), _) => hash,
            (None, Some(path)) => {
                let mut file = std::fs::File::open(&path)
                    .map_err(|e| format!("--evidence-file {}: {e}", path.display()))?;
                let mut hasher = Sha256::new();
                std::io::copy(&mut file, &mut hasher)
                    .map_err(|e| format!("--evidence-file {}: {e}", path.display()))?;
                hex::encode(hasher.finalize())
            }
            (None, None) => String::new(),
        };
        Ok((self.source, hash))
    }
}

/// A time for people and scripts: RFC 3339, UTC (`2027-01-15T08:00:00Z`).
fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map_or_else(|_| format!("{ms} ms since the epoch"), |t| t.to_string())
}

/// What an entry changed, in words: `autodialer consent for telemarketing: granted`.
fn change_text(change: Option<&pb::consent_entry::Change>) -> String {
    match change {
        Some(pb::consent_entry::Change::Consent(c)) => format!(
            "{} consent for {}: {}",
            c.channel,
            c.purpose,
            if c.granted { "granted" } else { "revoked" }
        ),
        Some(pb::consent_entry::Change::OptOut(o)) => format!(
            "opt-out {}: {}",
            o.flag,
            if o.set { "set" } else { "cleared" }
        ),
        None => "(unknown change)".to_owned(),
    }
}

fn entry_json(e: &pb::ConsentEntry) -> serde_json::Value {
    let change = match &e.change {
        Some(pb::consent_entry::Change::Consent(c)) => json!({
            "kind": "consent", "purpose": c.purpose, "channel": c.channel, "granted": c.granted,
        }),
        Some(pb::consent_entry::Change::OptOut(o)) => {
            json!({"kind": "opt_out", "flag": o.flag, "set": o.set})
        }
        None => serde_json::Value::Null,
    };
    json!({
        "seq": e.seq,
        "change": change,
        "at": rfc3339(e.at_unix_ms),
        "by": e.by,
        "source": e.source,
        "evidence_sha256": (!e.evidence_sha256.is_empty()).then_some(&e.evidence_sha256),
    })
}

pub(super) async fn consent(command: ConsentCommand) -> Result<(), String> {
    let (id, change, evidence, remote) = match command {
        ConsentCommand::Show { id, remote } => return show(id, &remote).await,
        ConsentCommand::Grant(a) => (
            a.id,
            pb::set_consent_request::Change::Consent(pb::ConsentChange {
                purpose: a.purpose,
                channel: a.channel,
                granted: true,
            }),
            a.evidence,
            a.remote,
        ),
        ConsentCommand::Revoke(a) => (
            a.id,
            pb::set_consent_request::Change::Consent(pb::ConsentChange {
                purpose: a.purpose,
                channel: a.channel,
                granted: false,
            }),
            a.evidence,
            a.remote,
        ),
        ConsentCommand::OptOut(a) => (
            a.id,
            pb::set_consent_request::Change::OptOut(pb::OptOutChange {
                flag: a.flag,
                set: true,
            }),
            a.evidence,
            a.remote,
        ),
        ConsentCommand::OptIn(a) => (
            a.id,
            pb::set_consent_request::Change::OptOut(pb::OptOutChange {
                flag: a.flag,
                set: false,
            }),
            a.evidence,
            a.remote,
        ),
    };
    let (source, evidence_sha256) = evidence.resolve()?;
    let mut client = connect(&remote).await?;
    let reply = client
        .consent
        .set_consent(pb::SetConsentRequest {
            record_id: id.clone(),
            change: Some(change),
            source,
            evidence_sha256,
        })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    let entry = reply
        .entry
        .ok_or_else(|| "the server returned no ledger entry".to_owned())?;
    if remote.json {
        println!("{}", entry_json(&entry));
    } else {
        println!(
            "record {id}: {} (entry {}, {})",
            change_text(entry.change.as_ref()),
            entry.seq,
            rfc3339(entry.at_unix_ms)
        );
    }
    Ok(())
}

async fn show(id: String, remote: &Remote) -> Result<(), String> {
    let mut client = connect(remote).await?;
    let ledger = client
        .consent
        .get_consent(pb::GetConsentRequest { record_id: id })
        .await
        .map_err(|s| status_text(&s))?
        .into_inner();
    if remote.json {
        let consents: Vec<_> = ledger
            .consents
            .iter()
            .map(|c| {
                json!({
                    "purpose": c.purpose, "channel": c.channel, "granted": c.granted,
                    "since": rfc3339(c.since_unix_ms),
                })
            })
            .collect();
        let opt_outs: Vec<_> = ledger
            .opt_outs
            .iter()
            .map(|o| {
                json!({
                    "flag": o.flag, "set": o.set,
                    "since": (o.since_unix_ms != 0).then(|| rfc3339(o.since_unix_ms)),
                })
            })
            .collect();
        let history: Vec<_> = ledger.history.iter().map(entry_json).collect();
        println!(
            "{}",
            json!({
                "record_id": ledger.record_id, "consents": consents, "opt_outs": opt_outs,
                "history": history,
            })
        );
        return Ok(());
    }
    println!("record {}", ledger.record_id);
    println!("consents:");
    if ledger.consents.is_empty() {
        println!("  none recorded");
    }
    for c in &ledger.consents {
        println!(
            "  {:<20} {:<12} {:<8} since {}",
            c.purpose,
            c.channel,
            if c.granted { "granted" } else { "revoked" },
            rfc3339(c.since_unix_ms)
        );
    }
    println!("opt-outs:");
    for o in &ledger.opt_outs {
        if o.since_unix_ms == 0 {
            println!("  {:<22} not set", o.flag);
        } else {
            println!(
                "  {:<22} {:<7} since {}",
                o.flag,
                if o.set { "set" } else { "not set" },
                rfc3339(o.since_unix_ms)
            );
        }
    }
    println!("history:");
    for e in &ledger.history {
        let evidence = if e.evidence_sha256.is_empty() {
            String::new()
        } else {
            format!(", evidence sha256 {}", e.evidence_sha256)
        };
        println!(
            "  {:>3}  {}  {}  by {}, source {}{evidence}",
            e.seq,
            rfc3339(e.at_unix_ms),
            change_text(e.change.as_ref()),
            e.by,
            e.source
        );
    }
    Ok(())
}
