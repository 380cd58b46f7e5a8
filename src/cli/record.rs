//! `strongroom record ...`: create, read, find, update and crypto-shred records.

use clap::Subcommand;
use serde_json::json;

use super::{Remote, connect, status_text};
use crate::api::pb;

#[derive(Debug, Subcommand)]
pub(super) enum RecordCommand {
    /// Create a record: --field name=value, repeated.
    Create {
        /// Collection.
        #[arg(long, default_value = "customers")]
        collection: String,
        /// A field, as name=value (repeat).
        #[arg(long = "field", value_name = "NAME=VALUE", required = true)]
        fields: Vec<String>,
        /// A decoy record: any read of it raises a critical alert (`audit alerts`). Needs
        /// `honeytokens manage`.
        #[arg(long)]
        honeytoken: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Read a record for a declared purpose.
    Get {
        /// Record id.
        id: String,
        /// Why you read it, e.g. support, billing, marketing.
        #[arg(long)]
        purpose: String,
        /// Only these fields (repeat); all by default.
        #[arg(long = "field")]
        fields: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Find records by an indexed field's value (--email, --phone, --ssn, or --field with
    /// --value), for a declared purpose; prints each match as `record get` does.
    #[command(group(
        clap::ArgGroup::new("by")
            .required(true)
            .args(["email", "phone", "ssn", "field"])
    ))]
    Find {
        /// Find by email (any case, surrounding spaces ignored).
        #[arg(long)]
        email: Option<String>,
        /// Find by phone (any punctuation; 10 digits are a US number).
        #[arg(long)]
        phone: Option<String>,
        /// Find by SSN (with or without dashes).
        #[arg(long)]
        ssn: Option<String>,
        /// Find by this indexed field (with --value).
        #[arg(long, requires = "value")]
        field: Option<String>,
        /// The value of --field.
        #[arg(long, requires = "field")]
        value: Option<String>,
        /// Collection.
        #[arg(long, default_value = "customers")]
        collection: String,
        /// Why you search, e.g. support, subject_access.
        #[arg(long)]
        purpose: String,
        /// Only these fields of each match (repeat); all by default.
        #[arg(long = "show")]
        fields: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Set and clear fields.
    Update {
        /// Record id.
        id: String,
        /// A field to set, as name=value (repeat).
        #[arg(long = "set", value_name = "NAME=VALUE")]
        set: Vec<String>,
        /// A field to clear (repeat).
        #[arg(long = "clear")]
        clear: Vec<String>,
        /// Apply only if the record is at this version.
        #[arg(long)]
        expected_version: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Crypto-shred a record: its data key is destroyed.
    Delete {
        /// Record id.
        id: String,
        /// Return once the data key is destroyed; the purge from live files follows.
        #[arg(long)]
        no_wait: bool,
        /// Write the signed shred receipt to this file (check it with `strongroom receipt
        /// verify FILE --public-key KEY`).
        #[arg(long)]
        receipt_out: Option<std::path::PathBuf>,
        #[command(flatten)]
        remote: Remote,
    },
}

fn pairs(items: &[String], flag: &str) -> Result<Vec<pb::Field>, String> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(name, value)| pb::Field {
                    name: name.trim().to_owned(),
                    value: value.to_owned(),
                })
                .ok_or_else(|| format!("{flag} {item:?}: expected NAME=VALUE"))
        })
        .collect()
}

pub(super) fn disclosure_name(d: i32) -> &'static str {
    match pb::Disclosure::try_from(d) {
        Ok(pb::Disclosure::Plain) => "plain",
        Ok(pb::Disclosure::Masked) => "masked",
        Ok(pb::Disclosure::Withheld) => "withheld",
        Ok(pb::Disclosure::Pseudonym) => "pseudonym",
        Ok(pb::Disclosure::Unspecified) | Err(_) => "unknown",
    }
}

/// A read's answer as JSON (`record get --json`, and each match of `record find --json`).
fn record_json(reply: &pb::GetRecordResponse) -> serde_json::Value {
    let fields: Vec<_> = reply
        .fields
        .iter()
        .map(|f| json!({"name": f.name, "disclosure": disclosure_name(f.disclosure), "value": f.value, "reason": f.reason}))
        .collect();
    json!({"id": reply.id, "collection": reply.collection, "version": reply.version, "policy_version": reply.policy_version, "fields": fields})
}

/// A read's answer as text, one field a line.
fn print_record(reply: &pb::GetRecordResponse) {
    println!(
        "record {} ({}, version {}, policy version {})",
        reply.id, reply.collection, reply.version, reply.policy_version
    );
    let width = reply.fields.iter().map(|f| f.name.len()).max().unwrap_or(0);
    for f in &reply.fields {
        match pb::Disclosure::try_from(f.disclosure) {
            Ok(pb::Disclosure::Plain) => println!("  {:width$}  {}", f.name, f.value),
            Ok(pb::Disclosure::Masked) => {
                println!("  {:width$}  {}  (masked)", f.name, f.value)
            }
            Ok(pb::Disclosure::Pseudonym) => {
                println!("  {:width$}  {}  (pseudonym)", f.name, f.value)
            }
            Ok(pb::Disclosure::Withheld | pb::Disclosure::Unspecified) | Err(_) => {
                println!("  {:width$}  -  ({})", f.name, f.reason);
            }
        }
    }
}

pub(super) async fn record(command: RecordCommand) -> Result<(), String> {
    match command {
        RecordCommand::Create {
            collection,
            fields,
            honeytoken,
            remote,
        } => {
            let fields = pairs(&fields, "--field")?;
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .create_record(pb::CreateRecordRequest {
                    collection,
                    fields,
                    honeytoken,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", json!({"id": reply.id, "version": reply.version}));
            } else {
                println!("created record {} (version {})", reply.id, reply.version);
            }
        }
        RecordCommand::Get {
            id,
            purpose,
            fields,
            remote,
        } => {
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .get_record(pb::GetRecordRequest {
                    id,
                    fields,
                    purpose,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", record_json(&reply));
            } else {
                print_record(&reply);
            }
        }
        RecordCommand::Find {
            email,
            phone,
            ssn,
            field,
            value,
            collection,
            purpose,
            fields,
            remote,
        } => {
            let (field, value) = match (email, phone, ssn, field, value) {
                (Some(v), ..) => ("email".to_owned(), v),
                (_, Some(v), ..) => ("phone".to_owned(), v),
                (_, _, Some(v), ..) => ("ssn".to_owned(), v),
                (_, _, _, Some(f), Some(v)) => (f, v),
                _ => return Err("give --email, --phone, --ssn, or --field with --value".into()),
            };
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .find_records(pb::FindRecordsRequest {
                    collection,
                    field,
                    value,
                    purpose,
                    fields,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                let records: Vec<_> = reply.records.iter().map(record_json).collect();
                println!(
                    "{}",
                    json!({"records": records, "truncated": reply.truncated})
                );
            } else {
                println!(
                    "{} record{} found{}",
                    reply.records.len(),
                    if reply.records.len() == 1 { "" } else { "s" },
                    if reply.truncated {
                        " (more matched; only these are shown)"
                    } else {
                        ""
                    }
                );
                for r in &reply.records {
                    print_record(r);
                }
            }
        }
        RecordCommand::Update {
            id,
            set,
            clear,
            expected_version,
            remote,
        } => {
            let set = pairs(&set, "--set")?;
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .update_record(pb::UpdateRecordRequest {
                    id,
                    set,
                    clear,
                    expected_version,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            if remote.json {
                println!("{}", json!({"id": reply.id, "version": reply.version}));
            } else {
                println!(
                    "updated record {} (now version {})",
                    reply.id, reply.version
                );
            }
        }
        RecordCommand::Delete {
            id,
            no_wait,
            receipt_out,
            remote,
        } => {
            let mut client = connect(&remote).await?;
            let reply = client
                .records
                .delete_record(pb::DeleteRecordRequest {
                    id,
                    wait_for_purge: !no_wait,
                })
                .await
                .map_err(|s| status_text(&s))?
                .into_inner();
            let r = reply.receipt.unwrap_or_default();
            if let Some(path) = &receipt_out {
                if r.signature.is_empty() {
                    return Err(format!(
                        "record {} was shredded, but the vault could not sign its receipt (see \
                         the server log); no receipt written to {}",
                        r.id,
                        path.display()
                    ));
                }
                let signed = crate::vault::receipt::SignedReceipt {
                    document: r.signed_document.clone(),
                    signature: r.signature.clone(),
                };
                std::fs::write(path, signed.file_text()).map_err(|e| {
                    format!(
                        "record {} was shredded, but its receipt could not be written to {}: {e}",
                        r.id,
                        path.display()
                    )
                })?;
            }
            if remote.json {
                println!(
                    "{}",
                    json!({"id": r.id, "collection": r.collection, "shredded_at_unix_ms": r.shredded_at_unix_ms, "data_key_destroyed": r.data_key_destroyed, "fields_destroyed": r.fields_destroyed, "purged_at_unix_ms": r.purged_at_unix_ms, "purge_pending": r.purge_pending, "unrecoverable_after_unix_ms": r.unrecoverable_after_unix_ms, "receipt_out": receipt_out.as_ref().map(|p| p.display().to_string())})
                );
            } else {
                let purge = if r.purge_pending {
                    "purge from live files queued (see the Records/Purge audit event)".to_owned()
                } else {
                    format!(
                        "purged from live files at {}",
                        super::when(r.purged_at_unix_ms)
                    )
                };
                println!(
                    "shredded record {} ({}): data key destroyed, {} field ciphertexts deleted, {purge}",
                    r.id, r.collection, r.fields_destroyed
                );
                if r.unrecoverable_after_unix_ms > 0 {
                    println!(
                        "unrecoverable from any backup after {} (the end of the current key epoch)",
                        super::when(r.unrecoverable_after_unix_ms)
                    );
                }
                if let Some(path) = &receipt_out {
                    println!("signed receipt written to {}", path.display());
                }
            }
        }
    }
    Ok(())
}
