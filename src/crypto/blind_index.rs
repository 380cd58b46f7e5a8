//! The blind index: keyed digests (HMAC-SHA256) of normalized field values, so that a record can
//! be found by a value that is stored nowhere in plaintext. Each (collection, field) has its own
//! index key, derived by the key provider from the label `index/<collection>/<field>`: digests
//! of one field cannot be compared with another's, and nothing in the data dir can recompute
//! them without the provider.
//!
//! Index keys are derived once and cached, zeroized on drop.

use std::{fmt, sync::Arc};

use super::{
    KeyError, KeyProvider,
    derived::{DerivedKeys, hmac_sha256},
};

/// A blind-index digest: HMAC-SHA256 of a normalized value under its field's index key.
pub type IndexDigest = [u8; 32];

/// The provider label of a field's index key.
pub fn index_label(collection: &str, field: &str) -> String {
    format!("index/{collection}/{field}")
}

/// Computes digests, deriving each field's index key from the provider on first use.
pub struct BlindIndex {
    keys: DerivedKeys,
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlindIndex")
            .field("keys", &self.keys)
            .finish()
    }
}

impl BlindIndex {
    /// A blind index over `provider`'s derived keys.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            keys: DerivedKeys::new(provider),
        }
    }

    /// The digest of `normalized` (a value in its index form) for `collection.field`.
    ///
    /// # Errors
    /// `KeyError` if the provider cannot derive the field's index key.
    pub fn digest(
        &self,
        collection: &str,
        field: &str,
        normalized: &str,
    ) -> Result<IndexDigest, KeyError> {
        self.keyed(&index_label(collection, field), &[normalized.as_bytes()])
    }

    /// HMAC-SHA256 of the concatenation of `parts` under the provider's key for `label`: a
    /// digest of something that must not be recomputable from the data dir alone (the label
    /// keeps it apart from every index digest).
    ///
    /// # Errors
    /// `KeyError` if the provider cannot derive the key.
    pub fn keyed(&self, label: &str, parts: &[&[u8]]) -> Result<[u8; 32], KeyError> {
        let key = self.keys.key(label)?;
        Ok(hmac_sha256(key.bytes(), parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // Python: hmac.new(bytes(range(32)), b"ada@example.com", hashlib.sha256).hexdigest()
        let key: [u8; 32] = std::array::from_fn(|i| u8::try_from(i).unwrap());
        assert_eq!(
            hex::encode(hmac_sha256(&key, &[b"ada@example.com"])),
            "5c820b4a5aac8f31eb6741825bfecb8e97f00488d5edaed1ae2908c29d0b7e38"
        );
    }

    #[test]
    fn digests_are_per_field_and_stable() {
        let index = BlindIndex::new(Arc::new(crate::crypto::throwaway_keyring()));
        let a = index
            .digest("customers", "email", "ada@example.com")
            .unwrap();
        assert_eq!(
            a,
            index
                .digest("customers", "email", "ada@example.com")
                .unwrap()
        );
        assert_ne!(
            a,
            index
                .digest("customers", "phone", "ada@example.com")
                .unwrap()
        );
        assert_ne!(
            a,
            index.digest("vendors", "email", "ada@example.com").unwrap()
        );
        assert_ne!(
            a,
            index
                .digest("customers", "email", "bob@example.com")
                .unwrap()
        );
        assert!(!format!("{index:?}").contains(&hex::encode(a)));
    }
}
