//! The blind index: keyed digests (HMAC-SHA256) of normalized field values, so that a record can
//! be found by a value that is stored nowhere in plaintext. Each (collection, field) has its own
//! index key, derived by the key provider from the label `index/<collection>/<field>`: digests
//! of one field cannot be compared with another's, and nothing in the data dir can recompute
//! them without the provider.
//!
//! The only module that names `hmac`. Index keys are derived once and cached, zeroized on drop.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{KeyError, KeyProvider};

/// A blind-index digest: HMAC-SHA256 of a normalized value under its field's index key.
pub type IndexDigest = [u8; 32];

/// One field's index key. No `Clone`; its `Debug` prints no bytes.
struct IndexKey(Zeroizing<[u8; 32]>);

impl fmt::Debug for IndexKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IndexKey(<redacted>)")
    }
}

/// The provider label of a field's index key.
pub fn index_label(collection: &str, field: &str) -> String {
    format!("index/{collection}/{field}")
}

/// HMAC-SHA256 of `message` under `key`.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> IndexDigest {
    #[allow(clippy::expect_used)]
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts a key of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Computes digests, deriving each field's index key from the provider on first use.
pub struct BlindIndex {
    provider: Arc<dyn KeyProvider>,
    keys: RwLock<HashMap<String, Arc<IndexKey>>>,
}

impl fmt::Debug for BlindIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("BlindIndex")
            .field("keys_cached", &keys.len())
            .finish_non_exhaustive()
    }
}

impl BlindIndex {
    /// A blind index over `provider`'s derived keys.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            provider,
            keys: RwLock::new(HashMap::new()),
        }
    }

    fn key(&self, collection: &str, field: &str) -> Result<Arc<IndexKey>, KeyError> {
        let label = index_label(collection, field);
        if let Some(key) = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&label)
        {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(IndexKey(self.provider.derive_key(&label)?));
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(keys.entry(label).or_insert(key)))
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
        let key = self.key(collection, field)?;
        Ok(hmac_sha256(&key.0, normalized.as_bytes()))
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
            hex::encode(hmac_sha256(&key, b"ada@example.com")),
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
