//! Record ids: 128 random bits, written as 32 lowercase hex characters.

use std::fmt;

use rand::RngCore;

use super::InvalidInput;

/// A record id. Random, so ids reveal nothing about order or count.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId([u8; 16]);

impl RecordId {
    /// A fresh random id from the OS-seeded CSPRNG.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Parses the hex form; `field` names the input in the error.
    ///
    /// # Errors
    /// `InvalidInput` if `s` is not exactly 32 lowercase hex characters.
    pub fn parse(s: &str, field: &str) -> Result<Self, InvalidInput> {
        if s.is_empty() {
            return Err(InvalidInput::new(field, "is required"));
        }
        let valid = s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let mut bytes = [0u8; 16];
        if !valid || hex::decode_to_slice(s, &mut bytes).is_err() {
            return Err(InvalidInput::new(
                field,
                "must be a record id: 32 lowercase hex characters",
            ));
        }
        Ok(Self(bytes))
    }

    /// The id from its 16 stored bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_malformed() {
        let id = RecordId::random();
        assert_eq!(RecordId::parse(&id.to_string(), "id"), Ok(id));
        for bad in ["", "abc", &"g".repeat(32), &"A".repeat(32), &"0".repeat(33)] {
            assert!(RecordId::parse(bad, "id").is_err(), "{bad}");
        }
    }
}
