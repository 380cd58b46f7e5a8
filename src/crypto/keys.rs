//! Key types. Secret keys are zeroized on drop, cannot be cloned or serialized, and print no
//! bytes in `Debug`. Their public forms (`KekId`, `DekId`, `WrappedDek`) are separate types.

use std::fmt;

use rand::{RngCore, rngs::OsRng};
use zeroize::Zeroizing;

/// The id of a master key (KEK); bound into every wrapped DEK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KekId(pub u32);

/// The id of a data key, random; bound into every field ciphertext of its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DekId(pub [u8; 16]);

/// The master key (key-encryption key).
pub struct Kek {
    id: KekId,
    key: Zeroizing<[u8; 32]>,
}

impl Kek {
    /// Wraps 32 key bytes as a KEK with an id.
    pub fn new(id: KekId, key: Zeroizing<[u8; 32]>) -> Self {
        Self { id, key }
    }

    /// A fresh random KEK from the OS CSPRNG.
    pub fn generate(id: KekId) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        Self { id, key }
    }

    /// The key's id.
    pub fn id(&self) -> KekId {
        self.id
    }

    pub(super) fn bytes(&self) -> &[u8; 32] {
        &self.key
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kek")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

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

/// A DEK sealed under a KEK: `version | nonce[24] | ciphertext+tag`. Safe to store.
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
        let kek = Kek::new(KekId(1), Zeroizing::new([0xAB; 32]));
        assert!(!format!("{kek:?}").to_lowercase().contains("ab, "));
        assert!(!format!("{kek:?}").contains("171"));
    }
}
