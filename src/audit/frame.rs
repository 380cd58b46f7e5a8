//! The on-disk form of one append in a segment (`segment`): a frame holding a batch of events
//! and the head signed over them, checksummed as a whole.
//!
//! ```text
//! magic u32 | payload length u32 | crc32 u32 | first seq u64 | count u32 | flags u8 | payload
//! ```
//!
//! (little-endian; the CRC covers everything after itself). The payload is compact: the names
//! an event repeats (subject, roles, method, collection, purpose, field names, outcomes) are
//! written once per frame in a string table and referred to by index, ids in lowercase hex are
//! stored as their bytes, integers as varints, and the batch's time once. What is hashed into
//! the chain does not change: each event decodes back to exactly the encoding `codec` gives it,
//! followed by its stored chain hash. An event whose stored bytes are not that encoding (kept
//! from elsewhere as they were) is written as they were.

use std::collections::HashMap;

use super::{
    Event, FieldOutcome,
    chain::{Checkpoint, MAC_LEN, decode_stored, encode_stored_with_mac},
};
use crate::bytes::Reader;

/// Marks the start of every frame ("SRA1").
pub(super) const MAGIC: u32 = 0x5352_4131;
/// Bytes before the payload.
pub(super) const HEADER: usize = 25;
/// The largest payload a reader accepts (a batch is at most 1,024 jobs of a few events).
pub(super) const MAX_PAYLOAD: u32 = 256 << 20;

/// The frame's calls wrote data (their writes follow the frame in the store).
pub(super) const FLAG_WRITES: u8 = 1;
/// The frame's head is also a durable checkpoint (a segment may end after it).
pub(super) const FLAG_DURABLE: u8 = 2;

const EVENT_COMPACT: u8 = 0;
const EVENT_AS_STORED: u8 = 1;

/// A frame's fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Header {
    pub(super) len: u32,
    pub(super) crc: u32,
    pub(super) first_seq: u64,
    pub(super) count: u32,
    pub(super) flags: u8,
}

impl Header {
    /// Parses a header; `None` if the magic is not there or the length is out of bounds.
    pub(super) fn parse(bytes: &[u8; HEADER]) -> Option<Self> {
        let u32_at = |at: usize| {
            bytes
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes)
        };
        if u32_at(0)? != MAGIC {
            return None;
        }
        let len = u32_at(4)?;
        (len <= MAX_PAYLOAD).then_some(())?;
        Some(Self {
            len,
            crc: u32_at(8)?,
            first_seq: u64::from_le_bytes(bytes.get(12..20)?.try_into().ok()?),
            count: u32_at(20)?,
            flags: *bytes.get(24)?,
        })
    }

    /// The sequence number after the frame's last event.
    pub(super) fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(u64::from(self.count))
    }

    /// Whether `payload` is the one this header was written with.
    pub(super) fn checks(&self, header: &[u8; HEADER], payload: &[u8]) -> bool {
        if payload.len() != self.len as usize {
            return false;
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&header[12..]);
        crc.update(payload);
        crc.finalize() == self.crc
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn is_packed_hex(s: &str) -> bool {
    !s.is_empty()
        && s.len().is_multiple_of(2)
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The strings of one frame, each written once.
#[derive(Default)]
struct Table<'a> {
    index: HashMap<&'a str, u64>,
    bytes: Vec<u8>,
}

impl<'a> Table<'a> {
    fn put(&mut self, s: &'a str) -> u64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.index.len() as u64;
        self.index.insert(s, i);
        if is_packed_hex(s) {
            put_varint(&mut self.bytes, ((s.len() as u64 / 2) << 1) | 1);
            let start = self.bytes.len();
            self.bytes.resize(start + s.len() / 2, 0);
            // Checked by `is_packed_hex`: the decode cannot fail.
            let _ = hex::decode_to_slice(s, &mut self.bytes[start..]);
        } else {
            put_varint(&mut self.bytes, (s.len() as u64) << 1);
            self.bytes.extend_from_slice(s.as_bytes());
        }
        i
    }
}

fn strings(e: &Event) -> [&str; 10] {
    [
        &e.request_id,
        &e.subject,
        &e.method,
        &e.collection,
        &e.record_id,
        &e.purpose,
        &e.result,
        &e.detail,
        &e.certificate,
        &e.severity,
    ]
}

/// One event to frame: its stored form, and the event it decodes to when that stored form is
/// the event's own encoding (the appender's events always are).
pub(super) struct ToFrame<'a> {
    pub(super) stored: &'a [u8],
    pub(super) event: Option<(&'a Event, [u8; 32])>,
}

/// Encodes a frame of `events` (consecutive, from `first_seq`) and `head`.
pub(super) fn encode(
    first_seq: u64,
    events: &[ToFrame<'_>],
    head: &Checkpoint,
    flags: u8,
) -> Vec<u8> {
    let time = events
        .iter()
        .find_map(|e| e.event.map(|(ev, _)| ev.time_ms))
        .unwrap_or(head.time_ms);
    let mut table = Table::default();
    let mut body = Vec::with_capacity(events.len() * 96);
    for e in events {
        let Some((event, mac)) = e.event else {
            body.push(EVENT_AS_STORED);
            put_varint(&mut body, e.stored.len() as u64);
            body.extend_from_slice(e.stored);
            continue;
        };
        body.push(EVENT_COMPACT);
        put_varint(&mut body, zigzag(event.time_ms.wrapping_sub(time)));
        put_varint(&mut body, event.policy_version);
        for s in strings(event) {
            let i = table.put(s);
            put_varint(&mut body, i);
        }
        put_varint(&mut body, event.roles.len() as u64);
        for r in &event.roles {
            let i = table.put(r);
            put_varint(&mut body, i);
        }
        put_varint(&mut body, event.fields.len() as u64);
        for f in &event.fields {
            let i = table.put(&f.field);
            put_varint(&mut body, i);
            let i = table.put(&f.outcome);
            put_varint(&mut body, i);
        }
        body.extend_from_slice(&mac);
    }
    let mut payload = Vec::with_capacity(table.bytes.len() + body.len() + 160);
    put_varint(&mut payload, zigzag(time));
    put_varint(&mut payload, table.index.len() as u64);
    payload.extend_from_slice(&table.bytes);
    payload.extend_from_slice(&body);
    put_checkpoint(&mut payload, head);

    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(&MAGIC.to_le_bytes());
    // A payload is far below `MAX_PAYLOAD`: at most 1,024 jobs' events.
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&first_seq.to_le_bytes());
    out.extend_from_slice(
        &u32::try_from(events.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.push(flags);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[12..]);
    crc.update(&payload);
    out[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn put_checkpoint(out: &mut Vec<u8>, c: &Checkpoint) {
    put_varint(out, c.seq);
    out.extend_from_slice(&c.head_bytes().unwrap_or([0; 32]));
    put_varint(out, zigzag(c.time_ms));
    let mut sig = [0u8; 64];
    // A checkpoint the appender signed always has a 64-byte hex signature.
    let _ = hex::decode_to_slice(&c.signature, &mut sig);
    out.extend_from_slice(&sig);
}

/// The frame's lengths and counts: varints.
trait Lengths {
    fn len(&mut self) -> Option<usize>;
}

impl Lengths for Reader<'_> {
    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }
}

/// A decoded frame: its events' stored forms (the chain's bytes) and its head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Frame {
    pub(super) events: Vec<(u64, Vec<u8>)>,
    pub(super) head: Checkpoint,
}

/// Decodes the payload of a frame whose header is `header`; `None` if it is not well-formed.
pub(super) fn decode(header: &Header, payload: &[u8]) -> Option<Frame> {
    let mut r = Reader::new(payload);
    let time = unzigzag(r.varint()?);
    let n_strings = r.len()?;
    // Each string takes at least a byte: a count above what is left is damage.
    (n_strings <= payload.len()).then_some(())?;
    let mut table = Vec::with_capacity(n_strings);
    for _ in 0..n_strings {
        let tag = r.varint()?;
        let n = usize::try_from(tag >> 1).ok()?;
        let bytes = r.take(n)?;
        table.push(if tag & 1 == 1 {
            hex::encode(bytes)
        } else {
            String::from_utf8(bytes.to_vec()).ok()?
        });
    }
    let string = |r: &mut Reader<'_>| table.get(r.len()?).cloned();
    let count = usize::try_from(header.count).ok()?;
    (count <= payload.len()).then_some(())?;
    let mut events = Vec::with_capacity(count);
    for i in 0..header.count {
        let seq = header.first_seq.checked_add(u64::from(i))?;
        match r.byte()? {
            EVENT_AS_STORED => {
                let n = r.len()?;
                events.push((seq, r.take(n)?.to_vec()));
            }
            EVENT_COMPACT => {
                let time_ms = time.wrapping_add(unzigzag(r.varint()?));
                let policy_version = r.varint()?;
                let mut s: [String; 10] = Default::default();
                for x in &mut s {
                    *x = string(&mut r)?;
                }
                let n_roles = r.len()?;
                (n_roles <= payload.len()).then_some(())?;
                let roles = (0..n_roles)
                    .map(|_| string(&mut r))
                    .collect::<Option<Vec<_>>>()?;
                let n_fields = r.len()?;
                (n_fields <= payload.len()).then_some(())?;
                let fields = (0..n_fields)
                    .map(|_| {
                        Some(FieldOutcome {
                            field: string(&mut r)?,
                            outcome: string(&mut r)?,
                        })
                    })
                    .collect::<Option<Vec<_>>>()?;
                let mac: [u8; MAC_LEN] = r.array()?;
                let [
                    request_id,
                    subject,
                    method,
                    collection,
                    record_id,
                    purpose,
                    result,
                    detail,
                    certificate,
                    severity,
                ] = s;
                let event = Event {
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
                };
                events.push((seq, encode_stored_with_mac(&event, &mac)));
            }
            _ => return None,
        }
    }
    let head = Checkpoint {
        seq: r.varint()?,
        head: hex::encode(r.take(32)?),
        time_ms: unzigzag(r.varint()?),
        signature: hex::encode(r.take(64)?),
    };
    r.is_empty().then_some(Frame { events, head })
}

/// What to frame for `stored` at `seq`: compact when it decodes to an event whose encoding it
/// is, else as it is.
pub(super) fn parse_stored(stored: &[u8]) -> Option<(Event, [u8; 32])> {
    let (event, mac) = decode_stored(stored)?;
    (encode_stored_with_mac(&event, &mac) == stored).then_some((event, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> Checkpoint {
        Checkpoint {
            seq: 9,
            head: hex::encode([3u8; 32]),
            time_ms: 1_700_000_000_123,
            signature: hex::encode([4u8; 64]),
        }
    }

    fn read_event(seq: u64, record: &str) -> Event {
        Event {
            seq,
            time_ms: 1_700_000_000_123,
            request_id: "0123456789abcdef".into(),
            subject: "app:support-desk".into(),
            roles: vec!["support".into()],
            method: "Records/GetRecord".into(),
            collection: "customers".into(),
            record_id: record.into(),
            fields: [
                "name",
                "email",
                "phone",
                "ssn",
                "card_number",
                "address",
                "dob",
                "notes",
            ]
            .iter()
            .map(|f| FieldOutcome {
                field: (*f).into(),
                outcome: "masked".into(),
            })
            .collect(),
            purpose: "support".into(),
            policy_version: 3,
            result: "OK".into(),
            ..Event::default()
        }
    }

    #[test]
    fn frames_round_trip_to_the_chains_bytes_and_read_events_stay_under_200_bytes() {
        let events: Vec<Event> = (0..16u64)
            .map(|i| read_event(10 + i, &format!("{:032x}", i * 7919 + 1)))
            .collect();
        let stored: Vec<(Vec<u8>, [u8; 32])> = events
            .iter()
            .map(|e| {
                let mac = [e.seq as u8; 32];
                (encode_stored_with_mac(e, &mac), mac)
            })
            .collect();
        let mut to_frame: Vec<ToFrame<'_>> = events
            .iter()
            .zip(&stored)
            .map(|(e, (s, mac))| ToFrame {
                stored: s,
                event: Some((e, *mac)),
            })
            .collect();
        // One kept as it was stored: bytes that are not an event's own encoding.
        let odd = b"not an event, but stored".to_vec();
        to_frame.push(ToFrame {
            stored: &odd,
            event: None,
        });
        let bytes = encode(10, &to_frame, &head(), FLAG_WRITES);
        let header_bytes: [u8; HEADER] = bytes[..HEADER].try_into().unwrap_or_else(|_| panic!());
        let header = Header::parse(&header_bytes).unwrap_or_else(|| panic!("header"));
        assert_eq!((header.first_seq, header.count, header.flags), (10, 17, 1));
        assert!(header.checks(&header_bytes, &bytes[HEADER..]));
        let frame = decode(&header, &bytes[HEADER..]).unwrap_or_else(|| panic!("decodes"));
        assert_eq!(frame.head, head());
        for (i, (seq, s)) in frame.events.iter().enumerate() {
            assert_eq!(*seq, 10 + i as u64);
            let expected = stored.get(i).map_or(&odd, |(s, _)| s);
            assert_eq!(s, expected, "event {seq} decodes to the chain's bytes");
        }
        // The canonical form of such a read is about 400 bytes; framed, under 200 each.
        let per_event = (bytes.len() - odd.len()) / 16;
        eprintln!(
            "a read event: {} bytes as the chain hashes it, {per_event} framed",
            stored[0].0.len()
        );
        assert!(per_event <= 200, "{per_event} bytes per read event");
        assert!(stored[0].0.len() > 2 * per_event, "{}", stored[0].0.len());
        // Any changed byte of the payload fails the checksum.
        for at in [HEADER, bytes.len() / 2, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 1;
            assert!(!header.checks(&header_bytes, &bad[HEADER..]), "{at}");
        }
    }

    #[test]
    fn fuzz_frames() {
        use crate::testing::{fuzz, inputs};
        use proptest::prelude::*;
        let valid = (0u64..1000, 0usize..5).prop_map(|(first, n)| {
            let events: Vec<Event> = (0..n as u64).map(|i| read_event(first + i, "ab")).collect();
            let stored: Vec<Vec<u8>> = events
                .iter()
                .map(|e| encode_stored_with_mac(e, &[1; 32]))
                .collect();
            let frames: Vec<ToFrame<'_>> = events
                .iter()
                .zip(&stored)
                .map(|(e, s)| ToFrame {
                    stored: s,
                    event: Some((e, [1; 32])),
                })
                .collect();
            encode(first, &frames, &head(), 0)
        });
        fuzz("audit segment frame", 256, inputs(valid, &[]), |input| {
            let Some(header_bytes) = input.bytes.get(..HEADER) else {
                return Ok(());
            };
            let header_bytes: [u8; HEADER] = header_bytes.try_into().unwrap_or([0; HEADER]);
            let Some(header) = Header::parse(&header_bytes) else {
                return Ok(());
            };
            let payload = &input.bytes[HEADER..];
            // Never a panic on any bytes; and no altered frame passes its checksum (the odds of
            // a CRC-32 collision over these few inputs are negligible).
            let decoded = decode(&header, payload);
            if header.checks(&header_bytes, payload) {
                prop_assert!(input.unaltered(), "an altered frame passed its checksum");
                let frame = decoded.unwrap_or_else(|| panic!("an unaltered frame decodes"));
                prop_assert_eq!(frame.events.len() as u64, u64::from(header.count));
            }
            Ok(())
        });
    }
}
