//! The one door to key material: a `KeyProvider` seals and opens data keys under key epochs,
//! creates and destroys epochs, and signs. The vault, the audit log and the rest of `crypto`
//! reach keys only through it, so nothing outside a provider ever holds an epoch key's or the
//! signing key's bytes (with `pkcs11`, not even the provider: they stay in the HSM).
//!
//! Providers: `Keyring` in a file (`file`, the default) or in a file sealed under a key from
//! the environment (`env`), and `Pkcs11Provider` (an HSM). Like age's Recipient/Identity or
//! TiKV's master-key backends, a provider is a small capability, not a policy: when to rotate,
//! what to rewrap and when an epoch may go are the vault's decisions.

use std::fmt;

use zeroize::Zeroizing;

/// A key epoch: every wrapped data key names the epoch it was sealed under. Numbered from 1,
/// increasing; the highest live one is current.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EpochId(pub u32);

impl fmt::Display for EpochId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An Ed25519 public key: what auditors verify signatures with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(&self.0[..8]))
    }
}

/// Why a provider call failed. Messages are for operators and never hold key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The epoch is not live here: never created, or destroyed.
    #[error("key epoch {0} is not live (never created, or destroyed)")]
    UnknownEpoch(EpochId),
    /// A sealed key failed to open: altered, or sealed for another context. Deliberately opaque.
    #[error("decryption failed")]
    Decrypt,
    /// The provider itself failed (file, environment, HSM): the message says what.
    #[error("{0}")]
    Provider(String),
}

/// A source of epoch keys and of the signing key.
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// `file`, `env` or `pkcs11`: for status output and audit events.
    fn kind(&self) -> &'static str;

    /// The live epochs, oldest first; the last one is current. Never empty.
    fn epochs(&self) -> Vec<EpochId>;

    /// The current epoch: what new data keys are sealed under.
    fn current(&self) -> EpochId {
        self.epochs().last().copied().unwrap_or(EpochId(0))
    }

    /// Seals `plaintext` (a data key) under `epoch`, bound to `aad`. The output is opaque and
    /// self-describing for this provider (format version, nonce or IV, ciphertext and tag).
    ///
    /// # Errors
    /// `UnknownEpoch` if the epoch is not live; `Provider` if the key store failed.
    fn seal(&self, epoch: EpochId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError>;

    /// Opens what `seal` produced under the same epoch and `aad`.
    ///
    /// # Errors
    /// `UnknownEpoch` if the epoch is not live (destroyed: the key is gone for good), `Decrypt`
    /// if the sealed bytes were altered or bound to another `aad`, `Provider` otherwise.
    fn open(
        &self,
        epoch: EpochId,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError>;

    /// Creates a new epoch, durably, and makes it current. Returns it.
    ///
    /// # Errors
    /// `Provider` if the new key cannot be made durable; then nothing changed.
    fn add_epoch(&self) -> Result<EpochId, KeyError>;

    /// Destroys `epoch` durably: afterwards nothing sealed under it can be opened, by this
    /// process or from any copy of the provider's own storage made from now on. The current
    /// epoch cannot be destroyed.
    ///
    /// # Errors
    /// `UnknownEpoch`, or `Provider` if it is the current epoch or the store failed.
    fn destroy_epoch(&self, epoch: EpochId) -> Result<(), KeyError>;

    /// Reads the epochs again from the provider's own storage: another process sharing it (a
    /// second vault node with the same keyring file or HSM token) added or destroyed one.
    ///
    /// # Errors
    /// `Provider` if the storage cannot be read; the epochs known before stay.
    fn refresh(&self) -> Result<(), KeyError>;

    /// Signs `message` with the vault's Ed25519 signing key.
    ///
    /// # Errors
    /// `Provider` if the signer failed.
    fn sign(&self, message: &[u8]) -> Result<Signature, KeyError>;

    /// The signing key's public half.
    fn public_key(&self) -> PublicKey;

    /// A 256-bit key for `label` (such as `index/customers/email` or `pseudonym/analytics`):
    /// HMAC-SHA256 of `derivation_message(label)` under a derivation secret of the provider,
    /// which is made once and never rotates with the epochs, so blind-index digests and
    /// pseudonyms stay stable for the provider's lifetime. Different labels give unrelated
    /// keys. The derived key is returned (it keys HMACs on the hot path); the secret it comes
    /// from never leaves the provider (with `pkcs11`, never leaves the HSM).
    ///
    /// # Errors
    /// `Provider` if the provider failed.
    fn derive_key(&self, label: &str) -> Result<Zeroizing<[u8; 32]>, KeyError>;
}

/// What a provider's derivation secret signs (HMAC-SHA256) to derive the key for `label`:
/// a domain-separated, versioned message, the same for every provider.
pub(super) fn derivation_message(label: &str) -> Vec<u8> {
    const DOMAIN: &[u8] = b"strongroom/derive-key/v1\0";
    let mut message = Vec::with_capacity(DOMAIN.len() + label.len());
    message.extend_from_slice(DOMAIN);
    message.extend_from_slice(label.as_bytes());
    message
}

/// HMAC-SHA256 of `derivation_message(label)` under `secret`: how the keyring providers derive.
pub(super) fn derive_with(secret: &[u8; 32], label: &str) -> Zeroizing<[u8; 32]> {
    Zeroizing::new(super::derived::hmac_sha256(
        secret,
        &[&derivation_message(label)],
    ))
}

/// Checks an Ed25519 signature: what an auditor runs, offline, with the public key alone.
pub fn verify_signature(public: &PublicKey, message: &[u8], signature: &Signature) -> bool {
    let Ok(key) = ed25519_dalek::VerifyingKey::from_bytes(&public.0) else {
        return false;
    };
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(&signature.0))
        .is_ok()
}
