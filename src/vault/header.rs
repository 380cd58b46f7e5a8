//! The record header, stored under the record id in the `headers` keyspace of the data store:
//! `0x02 | version u64 | manifest u64 | flags+len u8 | collection`. The byte before the collection
//! holds its length (collection names are identifiers of at most 64 bytes) in its low 7 bits and
//! the honeytoken flag in its top bit, so a decoy's header has the layout and size of any other
//! record's; headers written before the flag existed have it clear.
//!
//! The header itself is not secret and holds no key: the record's wrapped data key is in the
//! key store, under `record id | version`. The version, manifest, collection and honeytoken flag
//! are bound into the wrapped key's AAD, so altering any of them (clearing the flag to disable a
//! decoy's tripwire too) makes the key fail to unwrap.

const HEADER_V2: u8 = 0x02;
/// The top bit of the length byte: set for a honeytoken record.
const HONEYTOKEN_BIT: u8 = 0x80;

/// A record's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u64,
    pub(crate) manifest: u64,
    pub(crate) collection: String,
    /// A decoy record: any read of it raises an alert (`Vault::tripwire`). Updates keep it.
    pub(crate) honeytoken: bool,
}

impl Header {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let coll = self.collection.as_bytes();
        let mut out = Vec::with_capacity(1 + 8 + 8 + 1 + coll.len());
        out.push(HEADER_V2);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.manifest.to_be_bytes());
        // Collection names are identifiers of at most 64 bytes: the length fits in 7 bits.
        let len = u8::try_from(coll.len()).unwrap_or(u8::MAX) & !HONEYTOKEN_BIT;
        out.push(if self.honeytoken {
            len | HONEYTOKEN_BIT
        } else {
            len
        });
        out.extend_from_slice(coll);
        out
    }

    /// Decodes a stored header; `None` if it is malformed or of an unknown version.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != HEADER_V2 {
            return None;
        }
        let version = u64::from_be_bytes(rest.get(0..8)?.try_into().ok()?);
        let manifest = u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?);
        let flags_len = *rest.get(16)?;
        let honeytoken = flags_len & HONEYTOKEN_BIT != 0;
        let len = usize::from(flags_len & !HONEYTOKEN_BIT);
        let collection = rest.get(17..)?;
        if collection.len() != len {
            return None;
        }
        let collection = std::str::from_utf8(collection).ok()?.to_owned();
        Some(Self {
            version,
            manifest,
            collection,
            honeytoken,
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
            manifest: 0b1011,
            collection: "customers".into(),
            honeytoken: false,
        };
        let bytes = h.encode();
        assert_eq!(Header::decode(&bytes), Some(h));
        for n in 0..bytes.len() {
            assert_eq!(Header::decode(&bytes[..n]), None, "{n}");
        }
        let mut unknown = bytes.clone();
        unknown[0] = 1;
        assert_eq!(Header::decode(&unknown), None);
        let mut longer = bytes;
        longer.push(b'x');
        assert_eq!(Header::decode(&longer), None);
    }

    #[test]
    fn a_honeytoken_differs_from_a_record_by_one_bit_and_old_headers_decode() {
        let record = Header {
            version: 3,
            manifest: 0b111,
            collection: "customers".into(),
            honeytoken: false,
        };
        let decoy = Header {
            honeytoken: true,
            ..record.clone()
        };
        let (a, b) = (record.encode(), decoy.encode());
        assert_eq!(a.len(), b.len());
        let differing: u32 = a.iter().zip(&b).map(|(x, y)| (x ^ y).count_ones()).sum();
        assert_eq!(differing, 1);
        assert_eq!(Header::decode(&b), Some(decoy));
        // A header as written before the flag existed (length byte = the length).
        let mut old = vec![HEADER_V2];
        old.extend_from_slice(&3u64.to_be_bytes());
        old.extend_from_slice(&0b111u64.to_be_bytes());
        old.push(9);
        old.extend_from_slice(b"customers");
        assert_eq!(old, a);
        assert_eq!(Header::decode(&old), Some(record));
    }

    fn header() -> impl Strategy<Value = Vec<u8>> + Clone {
        (any::<u64>(), any::<u64>(), "[a-z_]{0,70}", any::<bool>()).prop_map(
            |(version, manifest, collection, honeytoken)| {
                Header {
                    version,
                    manifest,
                    collection,
                    honeytoken,
                }
                .encode()
            },
        )
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
}
