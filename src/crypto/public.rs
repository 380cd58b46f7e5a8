//! The public key in the form auditors keep it: PEM (SubjectPublicKeyInfo, RFC 8410), as
//! `strongroom keys public` prints it and `--public-key FILE` reads it.
//!
//! Depends on `provider` only; the one place that names the PEM encoding of ed25519-dalek.

use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey, spki::der::pem::LineEnding};

use super::PublicKey;

impl PublicKey {
    /// The key as PEM text (`-----BEGIN PUBLIC KEY-----`, SubjectPublicKeyInfo), LF line ends.
    ///
    /// # Errors
    /// A message if the bytes are not a valid Ed25519 point (never for a provider's key).
    pub fn to_pem(&self) -> Result<String, String> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| "the public key is not a valid Ed25519 key".to_owned())?;
        key.to_public_key_pem(LineEnding::LF)
            .map_err(|e| format!("cannot encode the public key as PEM: {e}"))
    }

    /// Reads a key from PEM text (SubjectPublicKeyInfo of an Ed25519 key).
    ///
    /// # Errors
    /// A message naming what is wrong: not PEM, not a public key, not Ed25519.
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let key = ed25519_dalek::VerifyingKey::from_public_key_pem(text.trim()).map_err(|e| {
            format!("not an Ed25519 public key in PEM (BEGIN PUBLIC KEY) form: {e}")
        })?;
        Ok(Self(key.to_bytes()))
    }

    /// A short, stable name of the key for messages: the first 16 hex digits of its SHA-256.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(self.0)[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyProvider;

    #[test]
    fn pem_round_trips_and_rejects_other_text() {
        let ring = crate::crypto::throwaway_keyring();
        let public = ring.public_key();
        let pem = public.to_pem().unwrap_or_else(|e| panic!("{e}"));
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert_eq!(PublicKey::from_pem(&pem), Ok(public));
        assert!(PublicKey::from_pem("hello").is_err());
        let mut bad = pem.clone().into_bytes();
        bad[40] ^= 1;
        let bad = String::from_utf8(bad).unwrap_or_default();
        assert_ne!(PublicKey::from_pem(&bad), Ok(public));
    }
}
