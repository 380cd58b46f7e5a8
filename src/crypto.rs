//! Envelope encryption. A per-record data key (DEK) seals each field on its own with
//! XChaCha20-Poly1305; the DEK is wrapped under the master key (KEK).
//!
//! The only module that names the cipher crate. Depends on `domain` for ids and names only.

mod envelope;
mod kek;
mod keys;
mod pkcs11;
mod provider;
mod subkey;

pub use envelope::{DekContext, FieldContext, open_field, seal_field, unwrap_dek, wrap_dek};
pub use kek::{EnvKekProvider, FileKekProvider, KEY_FILE_NAME, KekProvider, default_key_path};
pub use keys::{Dek, DekId, Kek, KekId, WrappedDek};
pub use pkcs11::{Pkcs11Config, Pkcs11Provider};
pub use provider::{EpochId, KeyError, KeyProvider, PublicKey, Signature, verify_signature};
pub use subkey::SubKey;

/// A crypto failure. Deliberately opaque: it says nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decryption failed")]
pub struct DecryptError;
