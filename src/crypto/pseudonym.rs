//! Pseudonyms for analytics: a field value disclosed as a keyed token instead of its plaintext.
//!
//! `pn_` + hex of the first 16 bytes of HMAC-SHA256, under a key per purpose, over
//! `len(collection) | collection | len(field) | field | normalized value`. The same value gives
//! the same token in every read and export under one purpose (extracts join on it); another
//! purpose has another key, so tokens handed to two purposes cannot be joined; the collection
//! and field are bound in, so the same value in two fields does not link either. Without the
//! key a token cannot be checked against a guessed value.
//!
//! Keys come from `KeyProvider::derive_key("pseudonym/<purpose>")` (a provider secret that does
//! not rotate with epochs: tokens stay stable across key rotations) and are cached, zeroized
//! on drop. Depends on nothing above `crypto`.

use std::{fmt, sync::Arc};

use super::{
    KeyError, KeyProvider,
    derived::{DerivedKeys, hmac_sha256},
};

/// The prefix of every pseudonym.
pub const PSEUDONYM_PREFIX: &str = "pn_";

/// Derives, caches and applies the per-purpose pseudonym keys.
pub struct Pseudonymizer {
    keys: DerivedKeys,
}

impl fmt::Debug for Pseudonymizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pseudonymizer")
            .field("keys", &self.keys)
            .finish()
    }
}

impl Pseudonymizer {
    /// Pseudonyms under keys from `provider`.
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self {
            keys: DerivedKeys::new(provider),
        }
    }

    /// The pseudonym of `value` (already normalized) of `collection.field` for `purpose`.
    ///
    /// # Errors
    /// The provider's error if the purpose key cannot be derived.
    pub fn pseudonym(
        &self,
        purpose: &str,
        collection: &str,
        field: &str,
        value: &[u8],
    ) -> Result<String, KeyError> {
        let key = self.keys.key(&format!("pseudonym/{purpose}"))?;
        Ok(token(key.bytes(), collection, field, value))
    }
}

fn token(key: &[u8; 32], collection: &str, field: &str, value: &[u8]) -> String {
    // Collection and field names are identifiers of at most 64 bytes: one length byte each.
    let len = |s: &str| [u8::try_from(s.len()).unwrap_or(u8::MAX)];
    let tag = hmac_sha256(
        key,
        &[
            &len(collection),
            collection.as_bytes(),
            &len(field),
            field.as_bytes(),
            value,
        ],
    );
    format!("{PSEUDONYM_PREFIX}{}", hex::encode(&tag[..16]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // Python: hmac.new(bytes(range(32)), b"\x09customers\x05emailada@example.com",
        // hashlib.sha256).digest()[:16].hex()
        let key: [u8; 32] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            token(&key, "customers", "email", b"ada@example.com"),
            "pn_f8701d7711884a76d7c4a5bf6f27aab5"
        );
    }

    #[test]
    fn purpose_field_and_value_each_change_the_token() {
        let p = Pseudonymizer::new(Arc::new(crate::crypto::throwaway_keyring()));
        let t = |purpose, field, value: &[u8]| {
            p.pseudonym(purpose, "customers", field, value)
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let base = t("analytics", "email", b"ada@example.com");
        assert_eq!(base, t("analytics", "email", b"ada@example.com"));
        assert_eq!(base.len(), 3 + 32);
        assert!(base.starts_with(PSEUDONYM_PREFIX));
        assert_ne!(base, t("marketing", "email", b"ada@example.com"));
        assert_ne!(base, t("analytics", "notes", b"ada@example.com"));
        assert_ne!(base, t("analytics", "email", b"bob@example.com"));
        // The length prefixes keep `collection|field|value` splits apart.
        assert_ne!(
            p.pseudonym("analytics", "customers", "ab", b"c").ok(),
            p.pseudonym("analytics", "customers", "a", b"bc").ok()
        );
        assert!(!format!("{p:?}").contains(&base[3..]));
    }
}
