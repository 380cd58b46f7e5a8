//! Signed shred receipts: what a shred did, in a canonical JSON document signed with the key
//! provider's Ed25519 key, that anyone can check offline with the public key alone.
//!
//! Format `strongroom-shred-receipt/v1`. The receipt file is one line, exactly as `serde_json`
//! writes it, then a line feed:
//!
//! ```text
//! {"receipt":{"format":"strongroom-shred-receipt/v1","record_id":"<32 hex>","collection":"..",
//!  "fields_destroyed":N,"shredded_at_ms":T,"purged_at_ms":T1|null,"key_epoch":E,
//!  "unrecoverable_after_ms":T2|null,"signing_key":"<16 hex>","statement":".."},
//!  "signature":"<128 hex>"}
//! ```
//!
//! The signature is over `"strongroom/shred-receipt/v1\n"` followed by the `receipt` object's
//! bytes as they stand in the file. Times are ms since the Unix epoch; `signing_key` is the
//! public key's fingerprint (first 8 bytes of its SHA-256, hex). The statement says exactly:
//! erased from the live store at T1 (the purge from live files; until it ran, deleted at the
//! shred time and the purge pending); unrecoverable from any backup after the current key
//! epoch ends, its rotation scheduled by the shred horizon for T2 and the epoch destroyed when
//! that rotation completes (a `Keys/DestroyEpoch` audit event records when). Nothing more. A verifier rejects any file that differs from this form in a single byte.
//!
//! Depends on `crypto` (signing through the provider) only.

use serde::{Deserialize, Serialize};

use super::ShredReceipt;
use crate::crypto::{KeyProvider, PublicKey, Signature, verify_signature};

/// The format name inside every receipt.
pub const RECEIPT_FORMAT: &str = "strongroom-shred-receipt/v1";
const SIGNING_DOMAIN: &[u8] = b"strongroom/shred-receipt/v1\n";

/// The signed statement of a shred.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptDocument {
    /// Always `RECEIPT_FORMAT`.
    pub format: String,
    /// The shredded record.
    pub record_id: String,
    /// Its collection.
    pub collection: String,
    /// Field ciphertexts deleted.
    pub fields_destroyed: u32,
    /// When the shred committed: the data key deleted from the live key store, ciphertexts
    /// deleted (ms since the Unix epoch).
    pub shredded_at_ms: i64,
    /// T1: when the purge from the live files completed; `null` if it was still pending.
    pub purged_at_ms: Option<i64>,
    /// The key epoch current at the shred: its destruction ends every backup's use.
    pub key_epoch: u32,
    /// T2: the end of that epoch, after which no backup yields the record; `null` if unknown.
    pub unrecoverable_after_ms: Option<i64>,
    /// The fingerprint of the key that signed.
    pub signing_key: String,
    /// The same in words.
    pub statement: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiptFile {
    receipt: ReceiptDocument,
    signature: String,
}

/// A receipt's canonical document and its signature, as the API carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedReceipt {
    /// The document, canonical JSON (one line, no line feed).
    pub document: String,
    /// The Ed25519 signature, hex.
    pub signature: String,
}

impl SignedReceipt {
    /// The receipt file: what `strongroom receipt verify` checks.
    pub fn file_text(&self) -> String {
        format!(
            "{{\"receipt\":{},\"signature\":\"{}\"}}\n",
            self.document, self.signature
        )
    }
}

fn utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

/// The statement of a receipt, in words: what the README says, nothing more.
pub fn statement(doc: &ReceiptDocument) -> String {
    let erased = match doc.purged_at_ms {
        Some(t1) => format!("was erased from the live store at {}", utc(t1)),
        None => format!(
            "was deleted from the live store at {}; its erasure from the live files was still \
             pending when this receipt was signed",
            utc(doc.shredded_at_ms)
        ),
    };
    let backups = match doc.unrecoverable_after_ms {
        Some(t2) => format!(
            "It is unrecoverable from any backup after key epoch {} ends: its rotation is \
             scheduled for {}, and the epoch is destroyed when the rotation completes (a \
             Keys/DestroyEpoch audit event records when).",
            doc.key_epoch,
            utc(t2)
        ),
        None => format!(
            "It is unrecoverable from any backup once key epoch {} ends.",
            doc.key_epoch
        ),
    };
    format!(
        "Record {} of collection {} {erased}. {backups}",
        doc.record_id, doc.collection
    )
}

fn signed_bytes(document: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNING_DOMAIN.len() + document.len());
    out.extend_from_slice(SIGNING_DOMAIN);
    out.extend_from_slice(document.as_bytes());
    out
}

/// `receipt` with its signed form. The shred is done whatever happens here: if the provider
/// cannot sign, the failure is logged and the receipt goes out unsigned (`signed: None`).
pub(super) fn signed(mut receipt: ShredReceipt, provider: &dyn KeyProvider) -> ShredReceipt {
    let public = provider.public_key();
    let mut doc = ReceiptDocument {
        format: RECEIPT_FORMAT.into(),
        record_id: receipt.id.to_string(),
        collection: receipt.collection.clone(),
        fields_destroyed: receipt.fields_destroyed,
        shredded_at_ms: receipt.shredded_at_ms,
        purged_at_ms: receipt.purged_at_ms,
        key_epoch: provider.current().0,
        unrecoverable_after_ms: receipt.unrecoverable_after_ms,
        signing_key: public.fingerprint(),
        statement: String::new(),
    };
    doc.statement = statement(&doc);
    // Strings and integers: JSON serialization cannot fail.
    #[allow(clippy::expect_used)]
    let document = serde_json::to_string(&doc).expect("a receipt always serializes");
    match provider.sign(&signed_bytes(&document)) {
        Ok(sig) => {
            receipt.signed = Some(SignedReceipt {
                document,
                signature: hex::encode(sig.0),
            });
        }
        Err(e) => {
            tracing::error!(record = %receipt.id, error = %e, "the shred is done but its receipt could not be signed");
        }
    }
    receipt
}

/// Why a receipt file does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Changed after signing (any byte of the document), or signed by another key.
    #[error(
        "bad signature: the receipt was altered after it was signed, or not signed by this key{0}"
    )]
    BadSignature(String),
    /// Not byte for byte as the vault wrote it.
    #[error(
        "altered: the file differs from the form the vault writes (first difference at byte {0})"
    )]
    NotCanonical(usize),
    /// Not a receipt file at all.
    #[error("malformed receipt file: {0}")]
    Malformed(String),
    /// Another format version.
    #[error("wrong format version {0:?}: this verifier reads {RECEIPT_FORMAT}")]
    WrongFormat(String),
}

/// Verifies a receipt file with the public key alone; returns the signed document.
///
/// # Errors
/// `Malformed`, `WrongFormat`, `NotCanonical` or `BadSignature`, naming what failed.
pub fn verify(file: &[u8], public: &PublicKey) -> Result<ReceiptDocument, ReceiptError> {
    let value: serde_json::Value = serde_json::from_slice(file)
        .map_err(|e| ReceiptError::Malformed(format!("not JSON ({e})")))?;
    match value.pointer("/receipt/format").and_then(|f| f.as_str()) {
        Some(RECEIPT_FORMAT) => {}
        Some(other) => return Err(ReceiptError::WrongFormat(other.to_owned())),
        None => {
            return Err(ReceiptError::Malformed(
                "no receipt.format: not a shred receipt".into(),
            ));
        }
    }
    let parsed: ReceiptFile =
        serde_json::from_value(value).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&parsed.signature, &mut sig)
        .map_err(|_| ReceiptError::Malformed("the signature is not 128 hex digits".into()))?;
    let document = serde_json::to_string(&parsed.receipt)
        .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    // The form the vault writes: the document as serialized, the signature in lowercase hex.
    let canonical = SignedReceipt {
        document,
        signature: hex::encode(sig),
    };
    let text = canonical.file_text();
    if text.as_bytes() != file {
        let at = text
            .bytes()
            .zip(file.iter())
            .position(|(a, b)| a != *b)
            .unwrap_or(text.len().min(file.len()));
        return Err(ReceiptError::NotCanonical(at));
    }
    if verify_signature(public, &signed_bytes(&canonical.document), &Signature(sig)) {
        return Ok(parsed.receipt);
    }
    let hint = if parsed.receipt.signing_key == public.fingerprint() {
        String::new()
    } else {
        format!(
            " (it names signing key {}; the given key is {})",
            parsed.receipt.signing_key,
            public.fingerprint()
        )
    };
    Err(ReceiptError::BadSignature(hint))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{crypto::Keyring, domain::RecordId};

    fn receipt(purged: Option<i64>) -> ShredReceipt {
        ShredReceipt {
            id: RecordId::random(),
            collection: "customers".into(),
            shredded_at_ms: 1_700_000_000_000,
            fields_destroyed: 3,
            purged_at_ms: purged,
            unrecoverable_after_ms: Some(1_700_086_400_000),
            signed: None,
        }
    }

    fn new_ring() -> (tempfile::TempDir, Keyring) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ring = Keyring::open_file(dir.path().join("keyring")).unwrap_or_else(|e| panic!("{e}"));
        (dir, ring)
    }

    #[test]
    fn a_signed_receipt_verifies_and_says_both_times() {
        let (_dir, ring) = new_ring();
        let r = signed(receipt(Some(1_700_000_000_500)), &ring);
        let file = r
            .signed
            .as_ref()
            .map(SignedReceipt::file_text)
            .unwrap_or_default();
        let doc = verify(file.as_bytes(), &ring.public_key()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc.record_id, r.id.to_string());
        assert_eq!(
            doc.statement,
            format!(
                "Record {} of collection customers was erased from the live store at \
                 2023-11-14T22:13:20.5Z. It is unrecoverable from any backup after key epoch \
                 1 ends: its rotation is scheduled for 2023-11-15T22:13:20Z, and the epoch is \
                 destroyed when the rotation completes (a Keys/DestroyEpoch audit event records \
                 when).",
                r.id
            )
        );
        let pending = signed(receipt(None), &ring);
        let file = pending.signed.map(|s| s.file_text()).unwrap_or_default();
        let doc = verify(file.as_bytes(), &ring.public_key()).unwrap_or_else(|e| panic!("{e}"));
        assert!(doc.statement.contains("still pending"), "{}", doc.statement);
    }

    #[test]
    fn every_single_byte_change_is_rejected() {
        let (_dir, ring) = new_ring();
        let public = ring.public_key();
        let file = signed(receipt(Some(1_700_000_000_500)), &ring)
            .signed
            .map(|s| s.file_text())
            .unwrap_or_default()
            .into_bytes();
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for i in 0..file.len() {
            for flip in [0x01u8, 0x20, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= flip;
                let kind = match verify(&bad, &public) {
                    Ok(doc) => panic!("byte {i} ^ {flip:#x} accepted: {doc:?}"),
                    Err(ReceiptError::BadSignature(_)) => "signature",
                    Err(ReceiptError::NotCanonical(_)) => "canonical",
                    Err(ReceiptError::Malformed(_)) => "malformed",
                    Err(ReceiptError::WrongFormat(_)) => "format",
                };
                *kinds.entry(kind).or_default() += 1;
            }
        }
        // Every kind of failure is reached: the checks are all live.
        assert_eq!(kinds.len(), 4, "{kinds:?}");
        // Truncation and a missing line feed too.
        assert!(verify(&file[..file.len() - 1], &public).is_err());
        assert!(verify(&file[..file.len() / 2], &public).is_err());
        // Another vault's key.
        let (_other_dir, other) = new_ring();
        assert!(matches!(
            verify(&file, &other.public_key()),
            Err(ReceiptError::BadSignature(hint)) if hint.contains("signing key")
        ));
    }
}
