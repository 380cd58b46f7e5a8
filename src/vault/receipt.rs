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
//! The same mechanism signs every document the vault hands out for checking offline (the
//! subject-access export and the erasure receipt of `subject`): a `Signable` document type
//! names its format, the key its file wraps it under and its signing domain; `sign` and
//! `verify_document` do the rest, one way for all.
//!
//! Depends on `crypto` (signing through the provider) only.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

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

/// A document the vault signs: canonical JSON (a struct with a fixed field order, no maps,
/// `deny_unknown_fields`), wrapped in its file as `{"<WRAPPER>":<document>,"signature":".."}`.
pub trait Signable: Serialize + DeserializeOwned {
    /// The `format` field every document of this kind holds.
    const FORMAT: &'static str;
    /// The key its file wraps the document under.
    const WRAPPER: &'static str;
    /// Signed before the document's bytes, so a signature of one kind never verifies another.
    const DOMAIN: &'static [u8];
    /// The fingerprint of the key the document says signed it.
    fn signing_key(&self) -> &str;
}

impl Signable for ReceiptDocument {
    const FORMAT: &'static str = RECEIPT_FORMAT;
    const WRAPPER: &'static str = "receipt";
    const DOMAIN: &'static [u8] = SIGNING_DOMAIN;
    fn signing_key(&self) -> &str {
        &self.signing_key
    }
}

/// A signed document's file, read back: the document and the signature.
#[derive(Debug)]
struct SignedFile<D> {
    document: D,
    signature: String,
}

impl<D: Signable> SignedFile<D> {
    fn parse(value: serde_json::Value) -> Result<Self, ReceiptError> {
        let serde_json::Value::Object(mut map) = value else {
            return Err(ReceiptError::Malformed("not a JSON object".into()));
        };
        let document = map
            .remove(D::WRAPPER)
            .ok_or_else(|| ReceiptError::Malformed(format!("no {}", D::WRAPPER)))?;
        let Some(serde_json::Value::String(signature)) = map.remove("signature") else {
            return Err(ReceiptError::Malformed("no signature string".into()));
        };
        if let Some(key) = map.keys().next() {
            return Err(ReceiptError::Malformed(format!("unknown field {key:?}")));
        }
        let document =
            serde_json::from_value(document).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        Ok(Self {
            document,
            signature,
        })
    }
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
        self.file_text_for::<ReceiptDocument>()
    }

    /// The file of a signed document of kind `D`: one line, then a line feed.
    pub fn file_text_for<D: Signable>(&self) -> String {
        format!(
            "{{\"{}\":{},\"signature\":\"{}\"}}\n",
            D::WRAPPER,
            self.document,
            self.signature
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

fn signed_bytes<D: Signable>(document: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(D::DOMAIN.len() + document.len());
    out.extend_from_slice(D::DOMAIN);
    out.extend_from_slice(document.as_bytes());
    out
}

/// Serializes `doc` canonically and signs it with the provider's key.
///
/// # Errors
/// The provider's failure to sign, as text (it names no secret).
pub(super) fn sign<D: Signable>(
    doc: &D,
    provider: &dyn KeyProvider,
) -> Result<SignedReceipt, String> {
    let document = serde_json::to_string(doc).map_err(|e| e.to_string())?;
    let sig = provider
        .sign(&signed_bytes::<D>(&document))
        .map_err(|e| e.to_string())?;
    Ok(SignedReceipt {
        document,
        signature: hex::encode(sig.0),
    })
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
    match sign(&doc, provider) {
        Ok(signed) => receipt.signed = Some(signed),
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
    /// Another format version, or another kind of document.
    #[error("wrong format version {found:?}: this verifier reads {expected}")]
    WrongFormat {
        /// The format the file names.
        found: String,
        /// The format expected.
        expected: &'static str,
    },
}

/// Verifies a receipt file with the public key alone; returns the signed document.
///
/// # Errors
/// `Malformed`, `WrongFormat`, `NotCanonical` or `BadSignature`, naming what failed.
pub fn verify(file: &[u8], public: &PublicKey) -> Result<ReceiptDocument, ReceiptError> {
    verify_document(file, public)
}

/// The `format` a signed file's document names under `wrapper`, if any: which kind it is.
pub fn format_of(file: &[u8], wrapper: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(file).ok()?;
    value
        .get(wrapper)?
        .get("format")?
        .as_str()
        .map(str::to_owned)
}

/// Verifies the file of a signed document of kind `D` with the public key alone; returns the
/// signed document.
///
/// # Errors
/// `Malformed`, `WrongFormat`, `NotCanonical` or `BadSignature`, naming what failed.
pub fn verify_document<D: Signable>(file: &[u8], public: &PublicKey) -> Result<D, ReceiptError> {
    let value: serde_json::Value = serde_json::from_slice(file)
        .map_err(|e| ReceiptError::Malformed(format!("not JSON ({e})")))?;
    match value
        .get(D::WRAPPER)
        .and_then(|d| d.get("format"))
        .and_then(|f| f.as_str())
    {
        Some(f) if f == D::FORMAT => {}
        Some(other) => {
            return Err(ReceiptError::WrongFormat {
                found: other.to_owned(),
                expected: D::FORMAT,
            });
        }
        None => {
            return Err(ReceiptError::Malformed(format!(
                "no {}.format: not a {} file",
                D::WRAPPER,
                D::FORMAT
            )));
        }
    }
    let parsed = SignedFile::<D>::parse(value)?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(&parsed.signature, &mut sig)
        .map_err(|_| ReceiptError::Malformed("the signature is not 128 hex digits".into()))?;
    let document = serde_json::to_string(&parsed.document)
        .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    // The form the vault writes: the document as serialized, the signature in lowercase hex.
    let canonical = SignedReceipt {
        document,
        signature: hex::encode(sig),
    };
    let text = canonical.file_text_for::<D>();
    if text.as_bytes() != file {
        let at = text
            .bytes()
            .zip(file.iter())
            .position(|(a, b)| a != *b)
            .unwrap_or(text.len().min(file.len()));
        return Err(ReceiptError::NotCanonical(at));
    }
    if verify_signature(
        public,
        &signed_bytes::<D>(&canonical.document),
        &Signature(sig),
    ) {
        return Ok(parsed.document);
    }
    let hint = if parsed.document.signing_key() == public.fingerprint() {
        String::new()
    } else {
        format!(
            " (it names signing key {}; the given key is {})",
            parsed.document.signing_key(),
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
                    Err(ReceiptError::WrongFormat { .. }) => "format",
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
