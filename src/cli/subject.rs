//! `strongroom subject ...`: a data subject's rights. `export` writes the signed subject-access
//! export, `erase` crypto-shreds every record of the subject and writes the signed erasure
//! receipt, and `verify` checks either file offline with the public key alone.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde_json::json;

use super::{Remote, connect, read_public_key, status_text, when};
use crate::{
    api::pb,
    vault::{
        receipt::{self, SignedReceipt},
        subject::{ERASURE_FORMAT, EXPORT_FORMAT, ErasureDocument, ExportDocument},
    },
};

/// Whose records: a record id, or an indexed field's value to look up.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub(super) struct Who {
    /// A record id (repeat for several).
    #[arg(long)]
    id: Vec<String>,
    /// The subject's email address (looked up through the blind index).
    #[arg(long)]
    email: Option<String>,
    /// The subject's phone number (looked up through the blind index).
    #[arg(long)]
    phone: Option<String>,
    /// The subject's SSN (looked up through the blind index).
    #[arg(long)]
    ssn: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(super) enum SubjectCommand {
    /// Write the signed subject-access export (format strongroom.subject-export.v1) of a
    /// subject's records: every field in plaintext, its write history and access history.
    Export {
        #[command(flatten)]
        who: Who,
        /// The collection to look up in.
        #[arg(long, default_value = "customers")]
        collection: String,
        /// The file to write (mode 0600: it holds plaintext).
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        remote: Remote,
    },
    /// Crypto-shred every record of a subject; write the signed erasure receipt.
    Erase {
        #[command(flatten)]
        who: Who,
        /// The collection to look up in.
        #[arg(long, default_value = "customers")]
        collection: String,
        /// Return once the data keys are destroyed; the purges from live files follow.
        #[arg(long)]
        no_wait: bool,
        /// Write the signed erasure receipt to this file (check it with `strongroom subject
        /// verify --file FILE --public-key KEY`).
        #[arg(long)]
        receipt_out: Option<PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Verify an export or an erasure receipt offline, with the vault's public key (PEM, from
    /// `strongroom keys public`): exits non-zero, naming what failed, if a single byte differs
    /// from what the vault signed.
    Verify {
        /// The export or erasure receipt file.
        #[arg(long)]
        file: PathBuf,
        /// The vault's public key (PEM).
        #[arg(long)]
        public_key: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The request's `subject`, as the parts both requests share.
fn subject_of(who: Who, collection: String) -> (Vec<String>, Option<pb::Lookup>) {
    let lookup = |field: &str, value: String| pb::Lookup {
        collection: collection.clone(),
        field: field.to_owned(),
        value,
    };
    let Who {
        id,
        email,
        phone,
        ssn,
    } = who;
    // clap lets exactly one through.
    let found = [("email", email), ("phone", phone), ("ssn", ssn)]
        .into_iter()
        .find_map(|(field, v)| v.map(|v| lookup(field, v)));
    (id, found)
}

/// Writes `text` to a file private to this user (mode 0600, never through a symbolic link).
fn write_private(path: &std::path::Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    crate::files::create_private(path, false)?
        .write_all(text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

pub(super) async fn subject(command: SubjectCommand) -> Result<(), String> {
    match command {
        SubjectCommand::Export {
            who,
            collection,
            out,
            remote,
        } => {
            let subject = match subject_of(who, collection) {
                (_, Some(l)) => Some(pb::export_subject_request::Subject::Lookup(l)),
                (mut ids, None) if ids.len() == 1 => {
                    Some(pb::export_subject_request::Subject::RecordId(ids.remove(0)))
                }
                (ids, None) => Some(pb::export_subject_request::Subject::RecordIds(
                    pb::RecordIds { ids },
                )),
            };
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .export_subject(pb::ExportSubjectRequest { subject })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            let signed = SignedReceipt {
                document: reply.document,
                signature: reply.signature,
            };
            write_private(&out, &signed.file_text_for::<ExportDocument>())?;
            if remote.json {
                println!(
                    "{}",
                    json!({"out": out.display().to_string(), "record_ids": reply.record_ids})
                );
            } else {
                println!(
                    "signed subject export of {} record(s) written to {} ({EXPORT_FORMAT}); check \
                     it with `strongroom subject verify --file {} --public-key KEY`",
                    reply.record_ids.len(),
                    out.display(),
                    out.display()
                );
            }
        }
        SubjectCommand::Erase {
            who,
            collection,
            no_wait,
            receipt_out,
            remote,
        } => {
            let subject = match subject_of(who, collection) {
                (_, Some(l)) => Some(pb::erase_subject_request::Subject::Lookup(l)),
                (mut ids, None) if ids.len() == 1 => {
                    Some(pb::erase_subject_request::Subject::RecordId(ids.remove(0)))
                }
                (ids, None) => Some(pb::erase_subject_request::Subject::RecordIds(
                    pb::RecordIds { ids },
                )),
            };
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .erase_subject(pb::EraseSubjectRequest {
                    subject,
                    wait_for_purge: !no_wait,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if let Some(path) = &receipt_out {
                if reply.signature.is_empty() {
                    return Err(format!(
                        "{} record(s) erased, but the vault could not sign the receipt (see the \
                         server log); no receipt written to {}",
                        reply.erased.len(),
                        path.display()
                    ));
                }
                let signed = SignedReceipt {
                    document: reply.signed_document.clone(),
                    signature: reply.signature.clone(),
                };
                std::fs::write(path, signed.file_text_for::<ErasureDocument>())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            }
            if remote.json {
                let erased: Vec<_> = reply
                    .erased
                    .iter()
                    .map(|r| json!({"id": r.id, "shredded_at_unix_ms": r.shredded_at_unix_ms, "purged_at_unix_ms": r.purged_at_unix_ms, "purge_pending": r.purge_pending}))
                    .collect();
                let not_erased: Vec<_> = reply
                    .not_erased
                    .iter()
                    .map(|n| json!({"id": n.id, "reason": n.reason}))
                    .collect();
                println!(
                    "{}",
                    json!({"erased": erased, "not_erased": not_erased, "receipt_out": receipt_out.as_ref().map(|p| p.display().to_string())})
                );
            } else {
                for r in &reply.erased {
                    println!(
                        "erased record {} ({}) at {}",
                        r.id,
                        r.collection,
                        when(r.shredded_at_unix_ms)
                    );
                }
                for n in &reply.not_erased {
                    println!("NOT erased: record {}: {}", n.id, n.reason);
                }
                if let Some(path) = &receipt_out {
                    println!("signed erasure receipt written to {}", path.display());
                }
            }
            if !reply.not_erased.is_empty() {
                return Err(format!(
                    "{} record(s) not erased (listed above)",
                    reply.not_erased.len()
                ));
            }
        }
        SubjectCommand::Verify {
            file,
            public_key,
            json,
        } => verify(&file, &public_key, json)?,
    }
    Ok(())
}

fn verify(file: &std::path::Path, public_key: &std::path::Path, json: bool) -> Result<(), String> {
    let public = read_public_key(public_key)?;
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let rejected = |e: receipt::ReceiptError| format!("{} rejected: {e}", file.display());
    if receipt::format_of(&bytes, "receipt").as_deref() == Some(ERASURE_FORMAT) {
        let doc = receipt::verify_document::<ErasureDocument>(&bytes, &public).map_err(rejected)?;
        if json {
            println!(
                "{}",
                json!({"ok": true, "format": doc.format, "erased": doc.erased.iter().map(|r| &r.record_id).collect::<Vec<_>>(), "not_erased": doc.not_erased.iter().map(|n| json!({"id": n.record_id, "reason": n.reason})).collect::<Vec<_>>()})
            );
        } else {
            println!(
                "ok: erasure receipt signed by the vault's key {}",
                public.fingerprint()
            );
            for r in &doc.erased {
                let purged = r.purged_at_ms.map_or_else(
                    || "purge pending".to_owned(),
                    |t| format!("purged {}", when(t)),
                );
                println!(
                    "  erased {} ({}): shredded {}, {purged}",
                    r.record_id,
                    r.collection,
                    when(r.shredded_at_ms)
                );
            }
            for n in &doc.not_erased {
                println!("  NOT erased {}: {}", n.record_id, n.reason);
            }
        }
        return Ok(());
    }
    let doc = receipt::verify_document::<ExportDocument>(&bytes, &public).map_err(rejected)?;
    if json {
        println!(
            "{}",
            json!({"ok": true, "format": doc.format, "generated_at_ms": doc.generated_at_ms, "records": doc.records.iter().map(|r| &r.id).collect::<Vec<_>>()})
        );
    } else {
        println!(
            "ok: subject export signed by the vault's key {}, generated {}",
            public.fingerprint(),
            when(doc.generated_at_ms)
        );
        for r in &doc.records {
            println!(
                "  record {} ({}, version {}): {} fields, {} writes, {} accesses",
                r.id,
                r.collection,
                r.version,
                r.fields.len(),
                r.history.len(),
                r.accesses.len()
            );
        }
    }
    Ok(())
}
