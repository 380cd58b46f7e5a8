//! Keys the provider derives (`KeyProvider::derive_key`), cached by label for the hot path, and
//! the one HMAC-SHA256 they key: blind-index digests, pseudonyms, and the derivation itself in
//! the keyring providers. Depends on nothing above `crypto`.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, PoisonError, RwLock},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::{KeyError, KeyProvider};

/// HMAC-SHA256 under `key` of the concatenation of `parts`.
pub(super) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts a key of any length: `new_from_slice` cannot refuse one.
    #[allow(clippy::expect_used)]
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// One derived key. No `Clone`; its `Debug` prints no bytes.
pub(super) struct DerivedKey(Zeroizing<[u8; 32]>);

impl DerivedKey {
    /// The key bytes, for `hmac_sha256`.
    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for DerivedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DerivedKey(<redacted>)")
    }
}

/// The provider's derived keys, each derived once on first use and kept (zeroized on drop).
pub(super) struct DerivedKeys {
    provider: Arc<dyn KeyProvider>,
    keys: RwLock<HashMap<String, Arc<DerivedKey>>>,
}

impl fmt::Debug for DerivedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("DerivedKeys")
            .field("cached", &n)
            .finish_non_exhaustive()
    }
}

impl DerivedKeys {
    /// Derived keys of `provider`.
    pub(super) fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            provider,
            keys: RwLock::default(),
        }
    }

    /// The key for `label`.
    pub(super) fn key(&self, label: &str) -> Result<Arc<DerivedKey>, KeyError> {
        if let Some(key) = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(label)
        {
            return Ok(Arc::clone(key));
        }
        let key = Arc::new(DerivedKey(self.provider.derive_key(label)?));
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        Ok(Arc::clone(keys.entry(label.to_owned()).or_insert(key)))
    }
}
