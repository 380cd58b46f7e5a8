//! Envelope encryption. A per-record data key (DEK) seals each field on its own with
//! XChaCha20-Poly1305; the DEK is wrapped under a key epoch of the key provider, the one door
//! to key material (`KeyProvider`: a keyring file, a keyring sealed under a key from the
//! environment, or a PKCS#11 HSM), which also signs.
//!
//! The only module that names the cipher crate. Depends on `domain` for ids and names only.

mod blind_index;
mod derived;
mod envelope;
mod keyring;
mod keys;
mod pkcs11;
mod provider;
mod pseudonym;
mod public;

pub use blind_index::{BlindIndex, IndexDigest, index_label};
pub use envelope::{DekContext, FieldContext, open_field, seal_field, unwrap_dek, wrap_dek};
#[cfg(test)]
pub(crate) use keyring::throwaway as throwaway_keyring;
pub use keyring::{KEYRING_FILE_NAME, Keyring, default_keyring_path};
pub use keys::{Dek, DekId, WrappedDek};
pub use pkcs11::{Pkcs11Config, Pkcs11Provider};
pub use provider::{EpochId, KeyError, KeyProvider, PublicKey, Signature, verify_signature};
pub use pseudonym::{PSEUDONYM_PREFIX, Pseudonymizer};

/// A crypto failure. Deliberately opaque: it says nothing about which check failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("decryption failed")]
pub struct DecryptError;
