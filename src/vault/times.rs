//! A record's activity times, for retention: when it was created, its last activity (its last
//! create or update; a read is not activity), and each present field's last write. Stored in
//! the record's own entry `record id | '#times'` (`sealed::record_entry_key`) in the `records`
//! keyspace, written in the batch of the create or update itself, and deleted with the record.
//!
//! Format v1: `0x01 | created i64 | last_activity i64 | n u8 | n x (field index u8 | i64)`, times
//! big-endian ms since the epoch, fields in ascending index order. An unknown version or a
//! malformed entry decodes to nothing (the record then counts as never seen: see `retention`).

use std::collections::BTreeMap;

/// The name of the entry (`sealed::record_entry_key(id, TIMES_ENTRY)`).
pub(super) const TIMES_ENTRY: &str = "times";
const TIMES_V1: u8 = 0x01;

/// A record's activity times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Times {
    pub(super) created_ms: i64,
    pub(super) last_activity_ms: i64,
    /// Field index -> its last write, for the fields the record holds.
    pub(super) fields: BTreeMap<u8, i64>,
}

impl Times {
    /// The times of a record written (or first seen) at `now_ms` with `fields`.
    pub(super) fn new(now_ms: i64, fields: impl Iterator<Item = usize>) -> Self {
        Self {
            created_ms: now_ms,
            last_activity_ms: now_ms,
            fields: fields
                .filter_map(|i| u8::try_from(i).ok())
                .map(|i| (i, now_ms))
                .collect(),
        }
    }

    /// The times of a record whose manifest is `manifest`, first seen at `now_ms`.
    pub(super) fn first_seen(now_ms: i64, manifest: u64) -> Self {
        Self::new(now_ms, (0..64).filter(|i| manifest & (1 << i) != 0))
    }

    /// An update at `now_ms`: `written` fields get the time, `cleared` ones drop out, and the
    /// record's last activity moves.
    pub(super) fn updated(&mut self, now_ms: i64, written: &[usize], cleared: &[usize]) {
        self.last_activity_ms = now_ms;
        for &i in written {
            if let Ok(i) = u8::try_from(i) {
                self.fields.insert(i, now_ms);
            }
        }
        self.forget(cleared);
    }

    /// Fields removed without activity (a retention expiry).
    pub(super) fn forget(&mut self, cleared: &[usize]) {
        for &i in cleared {
            if let Ok(i) = u8::try_from(i) {
                self.fields.remove(&i);
            }
        }
    }

    /// The last write of field `i`; a field without one counts from the record's last
    /// activity (never earlier than its real last write).
    pub(super) fn field_ms(&self, i: usize) -> i64 {
        u8::try_from(i)
            .ok()
            .and_then(|i| self.fields.get(&i).copied())
            .unwrap_or(self.last_activity_ms)
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18 + 9 * self.fields.len());
        out.push(TIMES_V1);
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.last_activity_ms.to_be_bytes());
        // At most 64 fields (a manifest is 64 bits): the count fits in a byte.
        out.push(u8::try_from(self.fields.len()).unwrap_or(u8::MAX));
        for (&i, &t) in self.fields.iter().take(usize::from(u8::MAX)) {
            out.push(i);
            out.extend_from_slice(&t.to_be_bytes());
        }
        out
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let (&v, rest) = bytes.split_first()?;
        if v != TIMES_V1 {
            return None;
        }
        let i64_at = |at: usize| -> Option<i64> {
            Some(i64::from_be_bytes(rest.get(at..at + 8)?.try_into().ok()?))
        };
        let created_ms = i64_at(0)?;
        let last_activity_ms = i64_at(8)?;
        let n = usize::from(*rest.get(16)?);
        let body = rest.get(17..)?;
        if body.len() != n * 9 {
            return None;
        }
        let mut fields = BTreeMap::new();
        for entry in body.chunks_exact(9) {
            let (&i, t) = entry.split_first()?;
            let t = i64::from_be_bytes(t.try_into().ok()?);
            if fields.insert(i, t).is_some() || fields.keys().next_back() != Some(&i) {
                return None;
            }
        }
        Some(Self {
            created_ms,
            last_activity_ms,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_updates_and_refuses_malformed() {
        let mut t = Times::first_seen(1_000, 0b1011);
        assert_eq!(t.fields.keys().copied().collect::<Vec<_>>(), [0, 1, 3]);
        t.updated(2_000, &[1, 5], &[3]);
        assert_eq!(t.created_ms, 1_000);
        assert_eq!(t.last_activity_ms, 2_000);
        assert_eq!(
            (t.field_ms(0), t.field_ms(1), t.field_ms(5)),
            (1_000, 2_000, 2_000)
        );
        // A field without its own time counts from the last activity.
        assert_eq!(t.field_ms(3), 2_000);
        t.forget(&[0]);
        assert_eq!(t.last_activity_ms, 2_000);
        let bytes = t.encode();
        assert_eq!(Times::decode(&bytes), Some(t));
        for n in 0..bytes.len() {
            assert_eq!(Times::decode(&bytes[..n]), None, "{n}");
        }
        let mut unknown = bytes.clone();
        unknown[0] = 2;
        assert_eq!(Times::decode(&unknown), None);
        let mut longer = bytes;
        longer.push(0);
        assert_eq!(Times::decode(&longer), None);
    }

    #[test]
    fn fuzz_times() {
        let valid = (any::<i64>(), any::<i64>(), any::<u64>()).prop_map(|(c, a, m)| {
            let mut t = Times::first_seen(c, m);
            t.last_activity_ms = a;
            t.encode()
        });
        crate::testing::fuzz(
            "record times",
            256,
            crate::testing::inputs(valid, &[]),
            |input| {
                // Whatever decodes is exactly what it encodes back to.
                if let Some(t) = Times::decode(&input.bytes) {
                    prop_assert_eq!(t.encode(), input.bytes);
                }
                Ok(())
            },
        );
    }
}
