//! Data key types. A DEK is zeroized on drop, cannot be cloned or serialized, and prints no
//! bytes in `Debug`. Its public forms (`DekId`, `WrappedDek`) are separate types. Epoch keys and
//! the signing key never leave their provider (`provider`, `keyring`).

use std::fmt;

use rand::{RngCore, rngs::OsRng};
use zeroize::Zeroizing;

/// The id of a data key, random; bound into every field ciphertext of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DekId(pub [u8; 16]);

/// A record's data key.
pub struct Dek {
    id: DekId,
    key: Zeroizing<[u8; 32]>,
}

impl Dek {
    /// A fresh random DEK (key and id) from the OS CSPRNG.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        let mut id = [0u8; 16];
        OsRng.fill_bytes(&mut id);
        Self { id: DekId(id), key }
    }

    pub(super) fn from_parts(id: DekId, key: Zeroizing<[u8; 32]>) -> Self {
        Self { id, key }
    }

    /// The key's id.
    pub fn id(&self) -> DekId {
        self.id
    }

    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A DEK sealed by the key provider under a key epoch. Safe to store.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedDek(pub Vec<u8>);

impl fmt::Debug for WrappedDek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappedDek({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_no_key_bytes() {
        let dek = Dek::generate();
        let text = format!("{dek:?}");
        assert!(!text.contains("key"), "{text}");
    }
}
