//! The stored form of an event: a compact, versioned binary encoding (cheaper than JSON on the
//! hot path of every read; JSON is produced only for export). Strings are length-prefixed, so
//! no value can be confused with a delimiter. An unknown version does not decode.
//!
//! Version 2 is version 1 followed by the client certificate's identity; an event without one
//! is written as version 1, so that events written before it keep their bytes and chain hashes,
//! and each event has exactly one encoding. Version 3, for alerts only, is version 1 followed by
//! the certificate (possibly empty) and the severity (never empty): an event without a severity
//! keeps its version 1 or 2 encoding.

use super::{Event, FieldOutcome};
use crate::bytes::Reader;

const EVENT_V1: u8 = 0x01;
const EVENT_V2: u8 = 0x02;
const EVENT_V3: u8 = 0x03;

fn put_str(out: &mut Vec<u8>, s: &str) {
    // Event strings are names, ids and short messages: far below 4 GiB.
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Encodes an event.
pub(super) fn encode(e: &Event, out: &mut Vec<u8>) {
    out.push(if !e.severity.is_empty() {
        EVENT_V3
    } else if e.certificate.is_empty() {
        EVENT_V1
    } else {
        EVENT_V2
    });
    out.extend_from_slice(&e.seq.to_be_bytes());
    out.extend_from_slice(&e.time_ms.to_be_bytes());
    out.extend_from_slice(&e.policy_version.to_be_bytes());
    for s in [
        &e.request_id,
        &e.subject,
        &e.method,
        &e.collection,
        &e.record_id,
        &e.purpose,
        &e.result,
        &e.detail,
    ] {
        put_str(out, s);
    }
    out.extend_from_slice(
        &u32::try_from(e.roles.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for r in &e.roles {
        put_str(out, r);
    }
    out.extend_from_slice(
        &u32::try_from(e.fields.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for f in &e.fields {
        put_str(out, &f.field);
        put_str(out, &f.outcome);
    }
    if !e.severity.is_empty() {
        put_str(out, &e.certificate);
        put_str(out, &e.severity);
    } else if !e.certificate.is_empty() {
        put_str(out, &e.certificate);
    }
}

/// The event encoding's strings and counts: `u32` prefixed.
trait Strings {
    fn string(&mut self) -> Option<String>;
    fn count(&mut self) -> Option<usize>;
}

impl Strings for Reader<'_> {
    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.u32()?).ok()?;
        self.utf8(n)
    }

    fn count(&mut self) -> Option<usize> {
        let n = usize::try_from(self.u32()?).ok()?;
        // Each element takes at least 4 bytes: a count larger than what is left is corrupt.
        (n <= self.remaining() / 4).then_some(n)
    }
}

/// Decodes an event; `None` if the bytes are not exactly one event of a known version.
pub(super) fn decode(bytes: &[u8]) -> Option<Event> {
    let mut r = Reader::new(bytes);
    let version = r.byte()?;
    if ![EVENT_V1, EVENT_V2, EVENT_V3].contains(&version) {
        return None;
    }
    let seq = r.u64()?;
    let time_ms = r.i64()?;
    let policy_version = r.u64()?;
    let mut strings: [String; 8] = Default::default();
    for s in &mut strings {
        *s = r.string()?;
    }
    let [
        request_id,
        subject,
        method,
        collection,
        record_id,
        purpose,
        result,
        detail,
    ] = strings;
    let n_roles = r.count()?;
    let roles = (0..n_roles)
        .map(|_| r.string())
        .collect::<Option<Vec<_>>>()?;
    let n_fields = r.count()?;
    let fields = (0..n_fields)
        .map(|_| {
            Some(FieldOutcome {
                field: r.string()?,
                outcome: r.string()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let (certificate, severity) = match version {
        // Written only when there is one: an empty one is not this event's encoding.
        EVENT_V2 => (Some(r.string()?).filter(|c| !c.is_empty())?, String::new()),
        // Likewise the severity of version 3; its certificate may be empty.
        EVENT_V3 => (r.string()?, Some(r.string()?).filter(|s| !s.is_empty())?),
        _ => (String::new(), String::new()),
    };
    if !r.is_empty() {
        return None;
    }
    Some(Event {
        seq,
        time_ms,
        request_id,
        subject,
        roles,
        method,
        collection,
        record_id,
        fields,
        purpose,
        policy_version,
        result,
        detail,
        certificate,
        severity,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Encoded events with random contents.
    pub(in crate::audit) fn events() -> impl Strategy<Value = Vec<u8>> + Clone {
        (
            any::<(u64, i64, u64)>(),
            proptest::collection::vec("\\PC{0,12}", 10),
            proptest::collection::vec("[a-z:]{0,12}", 0..4),
            proptest::collection::vec(("[a-z_]{1,12}", "[a-z]{1,9}"), 0..9),
        )
            .prop_map(|((seq, time_ms, policy_version), s, roles, fields)| {
                let e = Event {
                    seq,
                    time_ms,
                    policy_version,
                    request_id: s[0].clone(),
                    subject: s[1].clone(),
                    method: s[2].clone(),
                    collection: s[3].clone(),
                    record_id: s[4].clone(),
                    purpose: s[5].clone(),
                    result: s[6].clone(),
                    detail: s[7].clone(),
                    certificate: s[8].clone(),
                    severity: s[9].clone(),
                    roles,
                    fields: fields
                        .into_iter()
                        .map(|(field, outcome)| FieldOutcome { field, outcome })
                        .collect(),
                };
                let mut bytes = Vec::new();
                encode(&e, &mut bytes);
                bytes
            })
    }

    #[test]
    fn fuzz_audit_codec() {
        let strategy = crate::testing::inputs(events(), &[]);
        crate::testing::fuzz("audit event codec", 256, strategy, |input| {
            // Whatever decodes encodes back to the same bytes: one reading per stored event.
            if let Some(e) = decode(&input.bytes) {
                let mut again = Vec::new();
                encode(&e, &mut again);
                prop_assert_eq!(again, input.bytes);
            }
            Ok(())
        });
    }

    #[test]
    fn an_event_without_a_certificate_keeps_the_first_encoding() {
        let plain = Event {
            subject: "svc:crm".into(),
            ..Event::default()
        };
        let mut v1 = Vec::new();
        encode(&plain, &mut v1);
        assert_eq!(v1.first(), Some(&EVENT_V1));
        let with = Event {
            certificate: "spiffe://strongroom/svc/crm".into(),
            ..plain.clone()
        };
        let mut v2 = Vec::new();
        encode(&with, &mut v2);
        assert_eq!(v2.first(), Some(&EVENT_V2));
        assert_eq!(decode(&v2), Some(with));
        // Version 2 with an empty certificate is not an encoding of any event.
        let mut empty = v1.clone();
        empty[0] = EVENT_V2;
        empty.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode(&empty), None);
        // Version 1 bytes with a certificate appended do not decode either.
        let mut tail = v2.clone();
        tail[0] = EVENT_V1;
        assert_eq!(decode(&tail), None);
    }

    #[test]
    fn only_an_alert_takes_the_third_encoding() {
        let plain = Event {
            subject: "svc:crm".into(),
            method: "Records/GetRecord".into(),
            ..Event::default()
        };
        let mut v1 = Vec::new();
        encode(&plain, &mut v1);
        let alert = Event {
            severity: "critical".into(),
            ..plain.clone()
        };
        let mut v3 = Vec::new();
        encode(&alert, &mut v3);
        assert_eq!(v3.first(), Some(&EVENT_V3));
        // Version 1's bytes, then an empty certificate and the severity.
        let mut expected = v1.clone();
        expected[0] = EVENT_V3;
        expected.extend_from_slice(&0u32.to_be_bytes());
        expected.extend_from_slice(&8u32.to_be_bytes());
        expected.extend_from_slice(b"critical");
        assert_eq!(v3, expected);
        assert_eq!(decode(&v3), Some(alert.clone()));
        let with_cert = Event {
            certificate: "spiffe://strongroom/svc/crm".into(),
            ..alert
        };
        let mut both = Vec::new();
        encode(&with_cert, &mut both);
        assert_eq!(decode(&both), Some(with_cert));
        // Version 3 with an empty severity is not an encoding of any event.
        let mut empty = v1;
        empty[0] = EVENT_V3;
        empty.extend_from_slice(&0u32.to_be_bytes());
        empty.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(decode(&empty), None);
    }

    #[test]
    fn huge_lengths_and_counts_are_refused_before_allocating() {
        let mut bytes = Vec::new();
        encode(&Event::default(), &mut bytes);
        // The first string's length (after version, seq, time and policy version), then the
        // role count (the last 8 bytes are the two counts).
        let first_len = 1 + 8 + 8 + 8;
        let roles_count = bytes.len() - 8;
        for (at, value) in [
            (first_len, u32::MAX),
            (first_len, 1 << 31),
            (roles_count, u32::MAX),
        ] {
            let mut huge = bytes.clone();
            huge[at..at + 4].copy_from_slice(&value.to_be_bytes());
            assert_eq!(decode(&huge), None, "{at} {value}");
        }
        // A count that fits the bytes left but whose elements do not: refused element by element.
        let mut many = bytes.clone();
        many.truncate(roles_count);
        many.extend_from_slice(&1000u32.to_be_bytes());
        many.extend_from_slice(&[0u8; 4000]);
        assert_eq!(decode(&many), None);
    }

    proptest! {
        #[test]
        fn round_trips(
            seq in any::<u64>(), time in any::<i64>(), v in any::<u64>(),
            strings in proptest::collection::vec("\\PC{0,20}", 10),
            roles in proptest::collection::vec("[a-z:]{0,12}", 0..4),
            fields in proptest::collection::vec(("[a-z_]{1,12}", "[a-z]{1,9}"), 0..9),
        ) {
            let e = Event {
                seq, time_ms: time, policy_version: v,
                request_id: strings[0].clone(), subject: strings[1].clone(), method: strings[2].clone(),
                collection: strings[3].clone(), record_id: strings[4].clone(), purpose: strings[5].clone(),
                result: strings[6].clone(), detail: strings[7].clone(),
                certificate: strings[8].clone(), severity: strings[9].clone(), roles,
                fields: fields.into_iter().map(|(field, outcome)| FieldOutcome { field, outcome }).collect(),
            };
            let mut bytes = Vec::new();
            encode(&e, &mut bytes);
            prop_assert_eq!(decode(&bytes), Some(e));
            // Truncated or extended, it does not decode.
            prop_assert_eq!(decode(&bytes[..bytes.len() - 1]), None);
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(decode(&longer), None);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }
    }
}
