//! `strongroom receipt verify`: checks a shred receipt offline, with the public key alone (no
//! token, no vault).

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::json;

use super::{read_public_key, when};
use crate::vault::receipt;

#[derive(Debug, Subcommand)]
pub(super) enum ReceiptCommand {
    /// Verify a receipt file (from `record delete --receipt-out`): exits non-zero, naming
    /// what failed, if a single byte differs from what the vault signed.
    Verify {
        /// The receipt file.
        file: PathBuf,
        /// The vault's public key (PEM, from `strongroom keys public`).
        #[arg(long)]
        public_key: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn receipt(command: ReceiptCommand) -> Result<(), String> {
    let ReceiptCommand::Verify {
        file,
        public_key,
        json,
    } = command;
    let public = read_public_key(&public_key)?;
    let bytes = std::fs::read(&file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let doc = receipt::verify(&bytes, &public)
        .map_err(|e| format!("receipt {} rejected: {e}", file.display()))?;
    if json {
        println!(
            "{}",
            json!({"ok": true, "record_id": doc.record_id, "collection": doc.collection,
                   "shredded_at_ms": doc.shredded_at_ms, "purged_at_ms": doc.purged_at_ms,
                   "unrecoverable_after_ms": doc.unrecoverable_after_ms,
                   "key_epoch": doc.key_epoch, "statement": doc.statement})
        );
    } else {
        println!("ok: signed by the vault's key {}", public.fingerprint());
        println!("{}", doc.statement);
        println!(
            "(shredded {}, {} field ciphertexts destroyed)",
            when(doc.shredded_at_ms),
            doc.fields_destroyed
        );
    }
    Ok(())
}
