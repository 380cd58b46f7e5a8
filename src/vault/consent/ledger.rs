//! How a record's consent ledger is stored, beside its fields in the `Records` keyspace (so a
//! shred deletes it with them): the current state under `id|#consent`, in a compact binary
//! form read on the hot path, and the append-only history under `id|#consent/<seq>`, one JSON
//! entry per change, never overwritten. Neither holds a field value.
//!
//! Depends on `domain` only.

use serde::{Deserialize, Serialize};

use crate::{bytes::Reader, domain::RecordId};

/// The name of the current state's record entry.
pub(in crate::vault) const STATE_ENTRY: &str = "consent";

/// The record entry name of history entry `seq`: zero-padded, so that keys sort by sequence.
pub(in crate::vault) fn history_entry(seq: u64) -> String {
    format!("consent/{seq:020}")
}

/// The prefix of every history entry of `id`.
pub(in crate::vault) fn history_prefix(id: &RecordId) -> Vec<u8> {
    super::super::sealed::record_entry_key(id, "consent/")
}

/// The state's encoding version; any other fails closed.
const VERSION: u8 = 1;

/// A channel's consent for a purpose, as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsentStatus {
    /// The purpose it was given for.
    pub purpose: String,
    /// The channel.
    pub channel: String,
    /// Granted (or revoked).
    pub granted: bool,
    /// When the latest entry for it was recorded (ms since the epoch, the vault's clock).
    pub since_ms: i64,
}

/// An opt-out flag, as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OptOutStatus {
    /// The flag, e.g. `do_not_call`.
    pub flag: String,
    /// Set (or cleared).
    pub set: bool,
    /// When the latest entry for it was recorded (ms since the epoch).
    pub since_ms: i64,
}

/// A record's consent state: the latest entry of each purpose and channel and of each opt-out,
/// and how many history entries there are. Only what was ever recorded is listed: a consent
/// never recorded is not given, an opt-out never recorded is not set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConsentState {
    /// Sorted by purpose, then channel.
    pub consents: Vec<ConsentStatus>,
    /// Sorted by flag.
    pub opt_outs: Vec<OptOutStatus>,
    /// The history's last sequence number (0: no entry yet).
    pub entries: u64,
}

impl ConsentState {
    /// Whether `channel` consent for `purpose` is granted now.
    pub fn granted(&self, purpose: &str, channel: &str) -> bool {
        self.consents
            .iter()
            .any(|c| c.granted && c.purpose == purpose && c.channel == channel)
    }

    /// Whether opt-out `flag` is set now.
    pub fn opted_out(&self, flag: &str) -> bool {
        self.opt_outs.iter().any(|o| o.set && o.flag == flag)
    }

    /// Applies `change`, recorded at `at_ms`, as entry `entries + 1`.
    pub(in crate::vault) fn apply(&mut self, change: &LedgerChange, at_ms: i64) {
        match change {
            LedgerChange::Consent {
                purpose,
                channel,
                granted,
            } => {
                let at = self
                    .consents
                    .binary_search_by(|c| (&c.purpose, &c.channel).cmp(&(purpose, channel)));
                let status = ConsentStatus {
                    purpose: purpose.clone(),
                    channel: channel.clone(),
                    granted: *granted,
                    since_ms: at_ms,
                };
                match at {
                    Ok(i) => self.consents[i] = status,
                    Err(i) => self.consents.insert(i, status),
                }
            }
            LedgerChange::OptOut { flag, set } => {
                let at = self.opt_outs.binary_search_by(|o| o.flag.cmp(flag));
                let status = OptOutStatus {
                    flag: flag.clone(),
                    set: *set,
                    since_ms: at_ms,
                };
                match at {
                    Ok(i) => self.opt_outs[i] = status,
                    Err(i) => self.opt_outs.insert(i, status),
                }
            }
        }
        self.entries += 1;
    }

    /// The compact form: version 1, the entry count (u64), then the consents (u16 count; each
    /// purpose and channel as a length byte and its bytes, granted 0/1, since as i64) and the
    /// opt-outs (u16 count; each flag, set 0/1, since), big-endian.
    pub(in crate::vault) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 40 * (self.consents.len() + self.opt_outs.len()));
        out.push(VERSION);
        out.extend_from_slice(&self.entries.to_be_bytes());
        put_count(&mut out, self.consents.len());
        for c in &self.consents {
            put_name(&mut out, &c.purpose);
            put_name(&mut out, &c.channel);
            out.push(u8::from(c.granted));
            out.extend_from_slice(&c.since_ms.to_be_bytes());
        }
        put_count(&mut out, self.opt_outs.len());
        for o in &self.opt_outs {
            put_name(&mut out, &o.flag);
            out.push(u8::from(o.set));
            out.extend_from_slice(&o.since_ms.to_be_bytes());
        }
        out
    }

    /// Parses `encode`'s form; `None` for anything else (another version, a cut or padded
    /// buffer, a name that is not UTF-8, a flag byte other than 0 or 1).
    pub(in crate::vault) fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::new(bytes);
        if r.byte()? != VERSION {
            return None;
        }
        let entries = u64::from_be_bytes(r.array()?);
        let mut consents = Vec::new();
        for _ in 0..r.count()? {
            consents.push(ConsentStatus {
                purpose: r.name()?,
                channel: r.name()?,
                granted: r.flag()?,
                since_ms: i64::from_be_bytes(r.array()?),
            });
        }
        let mut opt_outs = Vec::new();
        for _ in 0..r.count()? {
            opt_outs.push(OptOutStatus {
                flag: r.name()?,
                set: r.flag()?,
                since_ms: i64::from_be_bytes(r.array()?),
            });
        }
        r.is_empty().then_some(Self {
            consents,
            opt_outs,
            entries,
        })
    }
}

/// Names are declared identifiers (at most 64 bytes): one length byte is enough.
fn put_name(out: &mut Vec<u8>, name: &str) {
    let bytes = &name.as_bytes()[..name.len().min(usize::from(u8::MAX))];
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

/// A ledger lists declared purposes x channels and opt-outs: far fewer than 65536.
fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

/// The entry encoding's counts (`u16`), flags (0 or 1) and names (`u8` prefixed).
trait Entries {
    fn count(&mut self) -> Option<u16>;
    fn flag(&mut self) -> Option<bool>;
    fn name(&mut self) -> Option<String>;
}

impl Entries for Reader<'_> {
    fn count(&mut self) -> Option<u16> {
        self.u16()
    }

    fn flag(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn name(&mut self) -> Option<String> {
        let n = self.byte()?;
        self.utf8(usize::from(n))
    }
}

/// What one ledger entry changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LedgerChange {
    /// A channel's consent for a purpose, granted or revoked.
    Consent {
        /// The purpose.
        purpose: String,
        /// The channel.
        channel: String,
        /// Granted (or revoked).
        granted: bool,
    },
    /// An opt-out flag, set or cleared.
    OptOut {
        /// The flag.
        flag: String,
        /// Set (or cleared).
        set: bool,
    },
}

impl LedgerChange {
    /// The change for an audit event's detail: `consent autodialer for telemarketing: revoked`
    /// or `opt-out do_not_call: set` (declared names only).
    pub fn describe(&self) -> String {
        match self {
            Self::Consent {
                purpose,
                channel,
                granted,
            } => format!(
                "consent {channel} for {purpose}: {}",
                if *granted { "granted" } else { "revoked" }
            ),
            Self::OptOut { flag, set } => {
                format!("opt-out {flag}: {}", if *set { "set" } else { "cleared" })
            }
        }
    }
}

/// One entry of a record's consent history.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Its place in the history, from 1.
    pub seq: u64,
    /// What it changed.
    #[serde(flatten)]
    pub change: LedgerChange,
    /// When it was recorded (ms since the epoch, the vault's clock).
    pub at_ms: i64,
    /// The subject who recorded it.
    pub by: String,
    /// Where it came from (`webform:8812`, `call:rec-4411`, `agent:jdoe`).
    pub source: String,
    /// The SHA-256 of its evidence, 64 lowercase hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_sha256: Option<String>,
}

impl std::fmt::Debug for LedgerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The source may name a person: not printed.
        f.debug_struct("LedgerEntry")
            .field("seq", &self.seq)
            .field("change", &self.change)
            .field("at_ms", &self.at_ms)
            .field("by", &self.by)
            .field("source", &"<redacted>")
            .field("evidence_sha256", &self.evidence_sha256)
            .finish()
    }
}

/// A record's consent ledger: its state and its whole history, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Ledger {
    /// The current state.
    pub state: ConsentState,
    /// Every entry, oldest first.
    pub history: Vec<LedgerEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConsentState {
        let mut state = ConsentState::default();
        let grant = |purpose: &str, channel: &str, granted| LedgerChange::Consent {
            purpose: purpose.into(),
            channel: channel.into(),
            granted,
        };
        state.apply(&grant("telemarketing", "autodialer", true), 10);
        state.apply(&grant("marketing", "sms", true), 20);
        state.apply(
            &LedgerChange::OptOut {
                flag: "do_not_call".into(),
                set: true,
            },
            30,
        );
        state.apply(&grant("telemarketing", "autodialer", false), 40);
        state
    }

    #[test]
    fn the_state_round_trips_and_answers_from_the_latest_entry() {
        let state = sample();
        assert_eq!(state.entries, 4);
        assert!(!state.granted("telemarketing", "autodialer"));
        assert!(state.granted("marketing", "sms"));
        assert!(!state.granted("marketing", "call"));
        assert!(state.opted_out("do_not_call"));
        assert!(!state.opted_out("do_not_sell_or_share"));
        assert_eq!(
            state
                .consents
                .iter()
                .map(|c| c.since_ms)
                .collect::<Vec<_>>(),
            [20, 40],
            "sorted by purpose, each with its latest time"
        );
        let bytes = state.encode();
        assert_eq!(ConsentState::decode(&bytes), Some(state));
        let empty = ConsentState::default();
        assert_eq!(ConsentState::decode(&empty.encode()), Some(empty));
    }

    #[test]
    fn a_malformed_state_is_refused_not_a_panic() {
        let bytes = sample().encode();
        // Every cut, every padding, every other version and every flipped byte either fails to
        // decode or decodes to something (never a panic); cuts and padding always fail.
        for n in 0..bytes.len() {
            assert_eq!(ConsentState::decode(&bytes[..n]), None, "cut at {n}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(ConsentState::decode(&padded), None);
        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(ConsentState::decode(&other), None);
        for i in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut b = bytes.clone();
                b[i] ^= flip;
                let _ = ConsentState::decode(&b);
            }
        }
        use proptest::prelude::*;
        proptest!(|(junk in proptest::collection::vec(any::<u8>(), 0..200))| {
            let _ = ConsentState::decode(&junk);
        });
    }

    #[test]
    fn history_keys_sort_by_sequence_and_entries_hide_their_source() {
        assert!(history_entry(9) < history_entry(10));
        assert_eq!(history_entry(1), "consent/00000000000000000001");
        let entry = LedgerEntry {
            seq: 1,
            change: LedgerChange::OptOut {
                flag: "do_not_call".into(),
                set: true,
            },
            at_ms: 5,
            by: "svc:crm".into(),
            source: "agent:jdoe".into(),
            evidence_sha256: None,
        };
        assert!(!format!("{entry:?}").contains("jdoe"));
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(serde_json::from_str::<LedgerEntry>(&json).unwrap(), entry);
        assert_eq!(entry.change.describe(), "opt-out do_not_call: set");
    }
}
