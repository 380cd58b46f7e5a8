//! The record header, stored under the record id in the `deks` keyspace:
//! `0x01 | version u64 | kek id u32 | manifest u64 | collection len u8 | collection | wrapped DEK`.
//!
//! The header itself is not secret. Its version, manifest and collection are bound into the
//! wrapped DEK's AAD, so altering any of them makes the DEK fail to unwrap.

use crate::crypto::{KekId, WrappedDek};

const HEADER_V1: u8 = 0x01;

/// A record's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u64,
    pub(crate) kek_id: KekId,
    pub(crate) manifest: u64,
    pub(crate) collection: String,
    pub(crate) wrapped: WrappedDek,
}

impl Header {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let coll = self.collection.as_bytes();
        let mut out = Vec::with_capacity(1 + 8 + 4 + 8 + 1 + coll.len() + self.wrapped.0.len());
        out.push(HEADER_V1);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.kek_id.0.to_be_bytes());
        out.extend_from_slice(&self.manifest.to_be_bytes());
        // Collection names are identifiers of at most 64 bytes.
        out.push(u8::try_from(coll.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(coll);
        out.extend_from_slice(&self.wrapped.0);
        out
    }

    /// Decodes a stored header; `None` if it is malformed or of an unknown version.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != HEADER_V1 {
            return None;
        }
        let version = u64::from_be_bytes(rest.get(0..8)?.try_into().ok()?);
        let kek_id = u32::from_be_bytes(rest.get(8..12)?.try_into().ok()?);
        let manifest = u64::from_be_bytes(rest.get(12..20)?.try_into().ok()?);
        let len = usize::from(*rest.get(20)?);
        let collection = std::str::from_utf8(rest.get(21..21 + len)?)
            .ok()?
            .to_owned();
        let wrapped = rest.get(21 + len..)?.to_vec();
        Some(Self {
            version,
            kek_id: KekId(kek_id),
            manifest,
            collection,
            wrapped: WrappedDek(wrapped),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_rejects_truncation() {
        let h = Header {
            version: 7,
            kek_id: KekId(2),
            manifest: 0b1011,
            collection: "customers".into(),
            wrapped: WrappedDek(vec![9; 89]),
        };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Some(h));
        for n in 0..22 {
            assert_eq!(Header::decode(&bytes[..n]), None, "{n}");
        }
        let mut unknown = bytes.clone();
        unknown[0] = 2;
        assert_eq!(Header::decode(&unknown), None);
    }

    fn header() -> impl Strategy<Value = Vec<u8>> + Clone {
        (
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            "[a-z_]{0,70}",
            proptest::collection::vec(any::<u8>(), 0..100),
        )
            .prop_map(|(version, kek, manifest, collection, wrapped)| {
                Header {
                    version,
                    kek_id: KekId(kek),
                    manifest,
                    collection,
                    wrapped: WrappedDek(wrapped),
                }
                .encode()
            })
    }

    #[test]
    fn fuzz_record_header() {
        let strategy = crate::testing::inputs(header(), &[]);
        crate::testing::fuzz("record header", 256, strategy, |input| {
            // Whatever decodes is exactly what it encodes back to: no two readings of one header.
            if let Some(h) = Header::decode(&input.bytes) {
                prop_assert_eq!(h.encode(), input.bytes);
            }
            Ok(())
        });
    }

    #[test]
    fn a_collection_length_past_the_end_does_not_decode() {
        let mut bytes = Header {
            version: 1,
            kek_id: KekId(1),
            manifest: 1,
            collection: "customers".into(),
            wrapped: WrappedDek(vec![]),
        }
        .encode();
        bytes[21] = 0xff;
        assert_eq!(Header::decode(&bytes), None);
    }
}
