//! Test-only: the one fuzzing helper every decoder harness shares (unit tests next to each
//! decoder, and `tests/attacks/fuzz.rs`, which includes this file by path).
//!
//! Inputs are arbitrary bytes or mutations of valid encodings: bit flips, byte overwrites,
//! truncations, deletions, insertions, splices of two valid encodings, a slice copied elsewhere,
//! length fields overwritten with edge values (0, 2^31, 2^32 - 1, u64::MAX, the input's own
//! length +- 1, ...) in every width and byte order, and dictionary tokens for text formats.
//!
//! `fuzz` runs a harness with proptest's runner: `PROPTEST_CASES` inputs (or the harness's
//! default), a panic is a failure shrunk to a minimal input, and a watchdog aborts the process if
//! one input runs longer than `STRONGROOM_FUZZ_HANG_SECS` (default 60 s: a hang, not a slow
//! input). Each harness prints `fuzz: <name>: <n> inputs, 0 panics, 0 hangs` when it passes;
//! `scripts/fuzz.sh` collects these lines.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use proptest::{
    prelude::*,
    sample::Index,
    test_runner::{Config, TestCaseError, TestRunner},
};

/// One fuzz input: the bytes to decode, and the valid encodings they were made from (`None`
/// for arbitrary bytes): the one mutated, and the one a splice took its tail from.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) valid: Option<Vec<u8>>,
    pub(crate) donor: Option<Vec<u8>>,
    pub(crate) bytes: Vec<u8>,
}

impl Input {
    /// Whether the mutations left one of the valid encodings whole (they may cancel out).
    pub(crate) fn unaltered(&self) -> bool {
        self.valid.as_ref() == Some(&self.bytes) || self.donor.as_ref() == Some(&self.bytes)
    }

    /// The bytes as text (invalid UTF-8 replaced), for text decoders.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Values that break length checks, written over length fields.
const EDGES: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0x100,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_fffe,
    0xffff_ffff,
    0x1_0000_0000,
    i64::MAX as u64,
    u64::MAX,
];

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    Delete(Index, usize),
    Insert(Index, Vec<u8>),
    /// Copies `len` bytes from one place over another (repeats a field, a length, a tag).
    Copy(Index, Index, usize),
    /// The head of this input up to one point, then the tail of another valid encoding.
    Splice(Index, Index),
    /// A length-like value written at a place: an edge value, or the input's length + delta.
    Length {
        at: Index,
        value: Result<u64, i8>,
        width: u8,
        big_endian: bool,
    },
    Token(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), any::<Index>(), 1usize..32)
            .prop_map(|(a, b, n)| Mutation::Copy(a, b, n)),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Splice(a, b)),
        3 => (
            any::<Index>(),
            prop_oneof![proptest::sample::select(&EDGES[..]).prop_map(Ok), (-2i8..=2).prop_map(Err)],
            proptest::sample::select(&[1u8, 2, 4, 8][..]),
            any::<bool>(),
        )
            .prop_map(|(at, value, width, big_endian)| Mutation::Length {
                at,
                value,
                width,
                big_endian,
            }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Token(a, b)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation, other: &[u8], dict: &[&str]) {
    // Index::index panics on 0: every arm that indexes handles the empty input first.
    let len = bytes.len();
    match m {
        Mutation::FlipBit(i, bit) if len > 0 => bytes[i.index(len)] ^= 1 << bit,
        Mutation::SetByte(i, b) if len > 0 => bytes[i.index(len)] = *b,
        Mutation::Truncate(i) if len > 0 => bytes.truncate(i.index(len)),
        Mutation::Delete(i, n) if len > 0 => {
            let at = i.index(len);
            bytes.drain(at..(at + n).min(len));
        }
        Mutation::Insert(i, b) => {
            let at = i.index(len + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Copy(from, to, n) if len > 0 => {
            let from = from.index(len);
            let slice = bytes[from..(from + n).min(len)].to_vec();
            let to = to.index(len);
            let end = (to + slice.len()).min(len);
            bytes.splice(to..end, slice);
        }
        Mutation::Splice(a, b) => {
            bytes.truncate(a.index(len + 1));
            bytes.extend_from_slice(&other[b.index(other.len() + 1)..]);
        }
        Mutation::Length {
            at,
            value,
            width,
            big_endian,
        } => {
            let value = match value {
                Ok(v) => *v,
                Err(delta) => (len as u64).wrapping_add_signed(i64::from(*delta)),
            };
            let width = usize::from(*width);
            let raw = if *big_endian {
                value.to_be_bytes()[8 - width..].to_vec()
            } else {
                value.to_le_bytes()[..width].to_vec()
            };
            let at = at.index(len + 1);
            let end = (at + width).min(len);
            bytes.splice(at..end, raw);
        }
        Mutation::Token(i, t) if !dict.is_empty() => {
            let at = i.index(len + 1);
            bytes.splice(at..at, dict[t.index(dict.len())].bytes());
        }
        Mutation::FlipBit(..)
        | Mutation::SetByte(..)
        | Mutation::Truncate(..)
        | Mutation::Delete(..)
        | Mutation::Copy(..)
        | Mutation::Token(..) => {}
    }
}

/// Arbitrary bytes (a quarter of the inputs) or 1 to 6 mutations of a valid encoding from
/// `valid`, spliced with a second one where asked. `dict` holds tokens of a text format.
pub(crate) fn inputs<S>(valid: S, dict: &'static [&'static str]) -> BoxedStrategy<Input>
where
    S: Strategy<Value = Vec<u8>> + Clone + 'static,
{
    let arbitrary = proptest::collection::vec(any::<u8>(), 0..512).prop_map(|bytes| Input {
        valid: None,
        donor: None,
        bytes,
    });
    let mutated = (
        valid.clone(),
        valid,
        proptest::collection::vec(mutation(), 1..7),
    )
        .prop_map(move |(original, other, mutations)| {
            let mut bytes = original.clone();
            for m in &mutations {
                apply(&mut bytes, m, &other, dict);
            }
            Input {
                valid: Some(original),
                donor: Some(other),
                bytes,
            }
        });
    prop_oneof![1 => arbitrary, 3 => mutated].boxed()
}

/// Runs `check` on `PROPTEST_CASES` inputs (else `default_cases`), failing on the first input
/// that fails or panics (shrunk), aborting on one that hangs. Prints the count when it passes.
///
/// # Panics
/// On a failing input: this is a test.
pub(crate) fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    let ran = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let hang_secs: u64 = std::env::var("STRONGROOM_FUZZ_HANG_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let watchdog = {
        let (ran, done, name) = (Arc::clone(&ran), Arc::clone(&done), name.to_owned());
        std::thread::spawn(move || {
            let (mut last, mut still) = (u64::MAX, 0u64);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let now = ran.load(Ordering::Relaxed);
                if now == last {
                    still += 1;
                } else {
                    (last, still) = (now, 0);
                }
                if still >= hang_secs * 4 {
                    eprintln!(
                        "fuzz: {name}: HANG: input {} ran longer than {hang_secs} s",
                        now + 1
                    );
                    std::process::abort();
                }
            }
        })
    };
    let mut runner = TestRunner::new(config);
    let tenth = u64::from(cases / 10).max(1);
    let result = runner.run(&strategy, |value| {
        let out = check(value);
        let n = ran.fetch_add(1, Ordering::Relaxed) + 1;
        if cases >= 10_000 && n.is_multiple_of(tenth) {
            // Progress for long runs, so a run stopped early still says how far it got.
            eprintln!("fuzz: {name}: {n} of {cases} inputs so far");
        }
        out
    });
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    if let Err(e) = result {
        panic!("fuzz: {name}: {e}");
    }
    eprintln!(
        "fuzz: {name}: {} inputs, 0 panics, 0 hangs",
        ran.load(Ordering::Relaxed)
    );
}
