//! Robustness beyond the fixes (issue 8): every request message through a real server, and a
//! crash soak of the real binary.
//!
//! - `every_request_gets_a_status_and_the_server_keeps_serving`: each RPC receives generated
//!   messages with arbitrary field contents, mutations of their encodings, and raw garbage, over
//!   real gRPC to a server on 127.0.0.1:0. Every answer must be OK or a client-error status (never
//!   UNKNOWN, INTERNAL, DATA_LOSS, UNAVAILABLE: those are what a panic, a dropped connection or a
//!   decoder bug look like), and the server must still serve a normal create and read afterwards.
//!   `PROPTEST_CASES` sets the number of inputs (default 256); `scripts/fuzz.sh` runs a million.
//! - `crash_soak`: `STRONGROOM_SOAK_CYCLES` cycles (default 3; `scripts/soak.sh` runs 1,000) of
//!   concurrent creates, updates, shreds and policy changes against the `strongroom` binary,
//!   kill -9 at a random moment, restart, and check that every acknowledged write is whole,
//!   every acknowledged shred stays NOT_FOUND, acknowledged policy versions are kept, and the
//!   audit chain verifies.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prost::{
    Message,
    bytes::{Buf, BufMut},
};
use proptest::{prelude::*, test_runner::TestCaseError};
use rand::{Rng, SeedableRng, rngs::StdRng};
use strongroom::api::pb;
use tonic::{
    Code, Status,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataValue,
    transport::Channel,
};

use crate::support::*;

#[allow(dead_code)]
#[path = "../../src/testing.rs"]
mod testing;

// ---------------------------------------------------------------------------------------------
// Every request message through the real server.

/// Sends and receives message bodies as they are: the bytes go on the wire in gRPC framing
/// without being encoded by us, so the server's decoder sees exactly what the harness made.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

#[derive(Debug)]
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Unary,
    Stream,
}

/// Every RPC of the vault: (path, kind).
const METHODS: [(&str, Kind); 18] = [
    ("/strongroom.v1.Records/CreateRecord", Kind::Unary),
    ("/strongroom.v1.Records/GetRecord", Kind::Unary),
    ("/strongroom.v1.Records/UpdateRecord", Kind::Unary),
    ("/strongroom.v1.Records/DeleteRecord", Kind::Unary),
    ("/strongroom.v1.Tokens/CreateToken", Kind::Unary),
    ("/strongroom.v1.Tokens/ListTokens", Kind::Unary),
    ("/strongroom.v1.Tokens/RevokeTokens", Kind::Unary),
    ("/strongroom.v1.Policies/GetPolicy", Kind::Unary),
    ("/strongroom.v1.Policies/ApplyPolicy", Kind::Unary),
    ("/strongroom.v1.Policies/ListPolicyVersions", Kind::Unary),
    ("/strongroom.v1.Policies/DiffPolicy", Kind::Unary),
    ("/strongroom.v1.Policies/RollbackPolicy", Kind::Unary),
    ("/strongroom.v1.Policies/DryRunPolicy", Kind::Unary),
    ("/strongroom.v1.Policies/Explain", Kind::Unary),
    ("/strongroom.v1.Audit/QueryEvents", Kind::Unary),
    ("/strongroom.v1.Audit/FollowEvents", Kind::Stream),
    ("/strongroom.v1.Audit/VerifyLog", Kind::Unary),
    ("/strongroom.v1.Audit/ExportEvents", Kind::Stream),
];

/// Strings a request field may hold: arbitrary text, and values that mean something to the
/// vault (so the generated messages reach past the first check). Never `user:admin`, so the
/// harness cannot revoke its own token.
fn text(known: &[String]) -> BoxedStrategy<String> {
    let mut meaningful: Vec<String> = [
        "",
        "customers",
        "vendors",
        "name",
        "email",
        "notes",
        "ssn",
        "card_number",
        "date_of_birth",
        "support",
        "marketing",
        "*",
        "role:admin",
        "role:support",
        "role:marketing",
        "svc:fuzz",
        "user:fuzz",
        "customers.name",
        "customers.*",
        "read",
        "read_masked",
        "write",
        "delete",
        "ada@example.com",
        "+44 20 7946 0958",
        "1815-12-10",
        "123-45-6789",
        "4242 4242 4242 4242",
        "00000000000000000000000000000000",
        "\u{0}",
        "../../etc/passwd",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    meaningful.extend(known.iter().cloned());
    meaningful.push("x".repeat(70));
    meaningful.push("é".repeat(2000));
    prop_oneof![
        3 => proptest::sample::select(meaningful),
        2 => "\\PC{0,40}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn filter(t: &BoxedStrategy<String>) -> impl Strategy<Value = Option<pb::EventFilter>> + use<> {
    proptest::option::of(
        (
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<i64>()),
            proptest::collection::vec(t.clone(), 8),
        )
            .prop_map(|(from_unix_ms, to_unix_ms, s)| pb::EventFilter {
                from_unix_ms,
                to_unix_ms,
                subject: s[0].clone(),
                role: s[1].clone(),
                record_id: s[2].clone(),
                collection: s[3].clone(),
                field: s[4].clone(),
                purpose: s[5].clone(),
                outcome: s[6].clone(),
                method: s[7].clone(),
            }),
    )
}

fn version() -> impl Strategy<Value = u64> + Clone {
    prop_oneof![0u64..4, any::<u64>()]
}

fn enc<M: Message>(m: &M) -> Vec<u8> {
    m.encode_to_vec()
}

/// A generated message for method `m` with arbitrary field contents, encoded.
fn message(m: usize, t: &BoxedStrategy<String>, policy: &str) -> BoxedStrategy<Vec<u8>> {
    let fields = || {
        proptest::collection::vec(
            (t.clone(), t.clone()).prop_map(|(name, value)| pb::Field { name, value }),
            0..10,
        )
    };
    let strings = || proptest::collection::vec(t.clone(), 0..6);
    let policy_text = prop_oneof![
        Just(policy.to_owned()),
        t.clone(),
        proptest::sample::subsequence(
            policy.lines().map(str::to_owned).collect::<Vec<_>>(),
            0..=policy.lines().count()
        )
        .prop_map(|l| l.join("\n")),
    ];
    match m {
        0 => (t.clone(), fields())
            .prop_map(move |(collection, fields)| {
                enc(&pb::CreateRecordRequest { collection, fields })
            })
            .boxed(),
        1 => (t.clone(), strings(), t.clone())
            .prop_map(move |(id, fields, purpose)| {
                enc(&pb::GetRecordRequest {
                    id,
                    fields,
                    purpose,
                })
            })
            .boxed(),
        2 => (
            t.clone(),
            fields(),
            strings(),
            proptest::option::of(version()),
        )
            .prop_map(move |(id, set, clear, expected_version)| {
                enc(&pb::UpdateRecordRequest {
                    id,
                    set,
                    clear,
                    expected_version,
                })
            })
            .boxed(),
        3 => (t.clone(), any::<bool>())
            .prop_map(move |(id, wait_for_purge)| {
                enc(&pb::DeleteRecordRequest { id, wait_for_purge })
            })
            .boxed(),
        4 => (t.clone(), strings())
            .prop_map(move |(subject, roles)| enc(&pb::CreateTokenRequest { subject, roles }))
            .boxed(),
        5 | 9 => Just(Vec::new()).boxed(),
        6 => t
            .clone()
            .prop_filter("never the harness's own subject", |s| s != "user:admin")
            .prop_map(move |subject| enc(&pb::RevokeTokensRequest { subject }))
            .boxed(),
        7 => proptest::option::of(version())
            .prop_map(move |version| enc(&pb::GetPolicyRequest { version }))
            .boxed(),
        8 => (policy_text, t.clone(), proptest::option::of(version()))
            .prop_map(move |(text, comment, expected_version)| {
                enc(&pb::ApplyPolicyRequest {
                    text,
                    comment,
                    expected_version,
                })
            })
            .boxed(),
        10 => (version(), version())
            .prop_map(move |(from_version, to_version)| {
                enc(&pb::DiffPolicyRequest {
                    from_version,
                    to_version,
                })
            })
            .boxed(),
        11 => (version(), t.clone(), proptest::option::of(version()))
            .prop_map(move |(to_version, comment, expected_version)| {
                enc(&pb::RollbackPolicyRequest {
                    to_version,
                    comment,
                    expected_version,
                })
            })
            .boxed(),
        12 => policy_text
            .prop_map(move |text| enc(&pb::DryRunPolicyRequest { text }))
            .boxed(),
        13 => proptest::collection::vec(t.clone(), 4)
            .prop_map(move |s| {
                enc(&pb::ExplainRequest {
                    principal: s[0].clone(),
                    action: s[1].clone(),
                    object: s[2].clone(),
                    purpose: s[3].clone(),
                })
            })
            .boxed(),
        14 => (filter(t), any::<u32>(), version())
            .prop_map(move |(filter, page_size, after_seq)| {
                enc(&pb::QueryEventsRequest {
                    filter,
                    page_size,
                    after_seq,
                })
            })
            .boxed(),
        15 => (filter(t), proptest::option::of(version()))
            .prop_map(move |(filter, after_seq)| {
                enc(&pb::FollowEventsRequest { filter, after_seq })
            })
            .boxed(),
        16 => (
            proptest::option::of(version()),
            proptest::option::of(version()),
        )
            .prop_map(move |(from_seq, to_seq)| enc(&pb::VerifyLogRequest { from_seq, to_seq }))
            .boxed(),
        _ => filter(t)
            .prop_map(move |filter| enc(&pb::ExportEventsRequest { filter }))
            .boxed(),
    }
}

/// Protobuf tokens that make length and tag tweaks bite.
const PROTO: &[&str] = &[
    "\u{8}", "\u{a}", "\u{12}", "\u{1a}", "\u{22}", "\u{ff}", "\u{80}\u{80}\u{80}\u{80}\u{10}",
];

/// A call: which method, which body bytes, and whether it carries the admin token or garbage.
#[derive(Debug, Clone)]
struct Call {
    method: usize,
    body: Vec<u8>,
    token: Option<String>,
}

fn calls(t: &BoxedStrategy<String>, policy: &str) -> BoxedStrategy<Call> {
    let per_method: Vec<_> = (0..METHODS.len())
        .map(|m| {
            let typed = message(m, t, policy);
            let body = prop_oneof![
                2 => typed.clone(),
                3 => testing::inputs(typed, PROTO).prop_map(|i| i.bytes),
            ];
            let token = prop_oneof![
                15 => Just(None),
                1 => "[ -~]{0,80}".prop_map(Some),
            ];
            (body, token)
                .prop_map(move |(body, token)| Call {
                    method: m,
                    body,
                    token,
                })
                .boxed()
        })
        .collect();
    proptest::strategy::Union::new(per_method).boxed()
}

/// Statuses a client may get for its own mistakes or missing rights. Anything else (UNKNOWN,
/// INTERNAL, DATA_LOSS, UNAVAILABLE, CANCELLED, ...) is a server fault.
const CLIENT_CODES: [Code; 10] = [
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::FailedPrecondition,
    Code::Aborted,
    Code::OutOfRange,
    Code::ResourceExhausted,
    Code::Unauthenticated,
    Code::Unimplemented,
];

async fn send(channel: &Channel, admin: &str, call: &Call) -> Result<(), Status> {
    let (path, kind) = METHODS[call.method];
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let mut request = tonic::Request::new(call.body.clone());
    let bearer = format!("Bearer {}", call.token.as_deref().unwrap_or(admin));
    if let Ok(value) = bearer.parse::<MetadataValue<tonic::metadata::Ascii>>() {
        request.metadata_mut().insert("authorization", value);
    }
    let path = http::uri::PathAndQuery::from_static(path);
    match kind {
        Kind::Unary => grpc.unary(request, path, RawCodec).await.map(|_| ()),
        Kind::Stream => {
            let mut stream = grpc
                .server_streaming(request, path, RawCodec)
                .await?
                .into_inner();
            // An export ends by itself; a follow streams forever: read a little and hang up.
            for _ in 0..64 {
                match tokio::time::timeout(Duration::from_millis(20), stream.message()).await {
                    Ok(Ok(Some(_))) => {}
                    Ok(Ok(None)) | Err(_) => break,
                    Ok(Err(status)) => return Err(status),
                }
            }
            Ok(())
        }
    }
}

#[test]
fn every_request_gets_a_status_and_the_server_keeps_serving() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let vault = rt.block_on(Vault::start());
    let admin_token = vault.admin_token.clone();
    let (channel, ids) = rt.block_on(async {
        let mut admin = vault.admin().await;
        let mut ids = Vec::new();
        for i in 0..4 {
            ids.push(create(&mut admin, customer(&format!("f{}", "z".repeat(i + 1)))).await);
        }
        let channel = tonic::transport::Endpoint::from_shared(vault.addr())
            .unwrap()
            .connect()
            .await
            .unwrap();
        (channel, ids)
    });
    let policy = std::fs::read_to_string(policies_dir().join("policy.csv")).unwrap();
    let strategy = calls(&text(&ids), &policy);
    let counts: Mutex<HashMap<&str, u64>> = Mutex::default();
    testing::fuzz("server: request messages", 256, strategy, |call| {
        let answer = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                send(&channel, &admin_token, &call),
            )
            .await
        });
        let Ok(answer) = answer else {
            return Err(TestCaseError::fail("no answer within 60 s (a hang)"));
        };
        if let Err(status) = &answer {
            prop_assert!(
                CLIENT_CODES.contains(&status.code()),
                "{}: {:?} {}",
                METHODS[call.method].0,
                status.code(),
                status.message()
            );
        }
        *counts
            .lock()
            .unwrap()
            .entry(METHODS[call.method].0)
            .or_default() += 1;
        Ok(())
    });
    eprintln!("fuzz: server: inputs per method: {:?}", counts.lock().unwrap());
    // The server still serves: with the starting policy back (the harness may have applied one
    // that takes the admin's record rights away), a normal create and read back.
    rt.block_on(async {
        let mut admin = vault.admin().await;
        admin
            .policies
            .apply_policy(pb::ApplyPolicyRequest {
                text: policy.clone(),
                comment: "after fuzzing".into(),
                expected_version: None,
            })
            .await
            .unwrap();
        let id = create(&mut admin, customer("after")).await;
        let back = get(&mut admin, &id, "support").await.unwrap();
        assert_eq!(
            value_of(&back, "name").map(|(v, _)| v.to_owned()),
            Some("Ada after Lovelace".to_owned())
        );
    });
    drop(vault);
}

// ---------------------------------------------------------------------------------------------
// Crash soak.

/// What a record holds, as far as the soak knows.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Live {
        version: u64,
        name: String,
        notes: String,
    },
    Shredded,
}

/// One record a writer made: its last acknowledged state, and the state of an operation that
/// was in flight when the vault died (it may or may not have been applied).
#[derive(Debug, Clone)]
struct Rec {
    id: String,
    acked: State,
    in_doubt: Option<State>,
    touched: bool,
}

#[derive(Debug, Default)]
struct Tally {
    creates: u64,
    updates: u64,
    shreds: u64,
    policy_changes: u64,
    checked: u64,
    in_doubt_applied: u64,
    in_doubt_not_applied: u64,
}

fn letters(n: u64) -> String {
    n.to_string()
        .bytes()
        .map(|b| char::from(b'a' + (b - b'0')))
        .collect()
}

fn soak_fields(n: u64) -> (String, String) {
    (
        format!("Ada {} Lovelace", letters(n)),
        format!("ref {}", letters(n)),
    )
}

/// Codes a call gets when the vault is killed under it.
fn died(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal
    )
}

/// One writer: creates, updates and shreds its own records until stopped or the vault dies.
async fn writer(
    mut c: strongroom::client::Client,
    mut recs: Vec<Rec>,
    mut rng: StdRng,
    mut n: u64,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
) -> (Vec<Rec>, u64, [u64; 3]) {
    let mut acked = [0u64; 3];
    let live: fn(&Rec) -> bool = |r| matches!(r.acked, State::Live { .. });
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let (name, notes) = soak_fields(n);
        let live_count = recs.iter().filter(|r| live(r)).count();
        let op = if live_count == 0 {
            0
        } else {
            rng.gen_range(0..10)
        };
        let result = match op {
            0..=5 => {
                let mut fields = customer("x");
                fields[0].value.clone_from(&name);
                fields[7].value.clone_from(&notes);
                match c
                    .records
                    .create_record(pb::CreateRecordRequest {
                        collection: "customers".into(),
                        fields,
                    })
                    .await
                {
                    Ok(r) => {
                        let r = r.into_inner();
                        recs.push(Rec {
                            id: r.id,
                            acked: State::Live {
                                version: r.version,
                                name,
                                notes,
                            },
                            in_doubt: None,
                            touched: true,
                        });
                        acked[0] += 1;
                        Ok(())
                    }
                    // A create in flight has no id: nothing to check.
                    Err(s) => Err(s),
                }
            }
            6..=8 => {
                let pick = rng.gen_range(0..live_count);
                let rec = recs.iter_mut().filter(|r| live(r)).nth(pick).unwrap();
                let State::Live { version, .. } = rec.acked else {
                    unreachable!()
                };
                rec.touched = true;
                let attempt = State::Live {
                    version: version + 1,
                    name: name.clone(),
                    notes: notes.clone(),
                };
                match c
                    .records
                    .update_record(pb::UpdateRecordRequest {
                        id: rec.id.clone(),
                        set: vec![field("name", &name), field("notes", &notes)],
                        clear: vec![],
                        expected_version: Some(version),
                    })
                    .await
                {
                    Ok(r) => {
                        assert_eq!(r.into_inner().version, version + 1, "{}", rec.id);
                        rec.acked = attempt;
                        acked[1] += 1;
                        Ok(())
                    }
                    Err(s) => {
                        rec.in_doubt = Some(attempt);
                        Err(s)
                    }
                }
            }
            _ => {
                let pick = rng.gen_range(0..live_count);
                let rec = recs.iter_mut().filter(|r| live(r)).nth(pick).unwrap();
                rec.touched = true;
                match c
                    .records
                    .delete_record(pb::DeleteRecordRequest {
                        id: rec.id.clone(),
                        wait_for_purge: false,
                    })
                    .await
                {
                    Ok(_) => {
                        rec.acked = State::Shredded;
                        acked[2] += 1;
                        Ok(())
                    }
                    Err(s) => {
                        rec.in_doubt = Some(State::Shredded);
                        Err(s)
                    }
                }
            }
        };
        if let Err(status) = result {
            // Before the kill, no call may fail; after it, only as a dead server makes it fail.
            assert!(
                killed.load(Ordering::SeqCst) && died(&status),
                "a call failed while the vault was up: {:?} {}",
                status.code(),
                status.message()
            );
            break;
        }
    }
    (recs, n, acked)
}

/// Applies a policy with one extra marketing rule, then rolls back, over and over. Admin rights
/// are never touched, so the writers and the checks keep theirs.
async fn policy_changer(
    mut c: strongroom::client::Client,
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    last_acked: Arc<Mutex<u64>>,
) -> u64 {
    let base = std::fs::read_to_string(policies_dir().join("policy.csv")).unwrap();
    let with_rule = format!("{base}\np, role:marketing, customers.phone, read_masked, marketing, allow\n");
    let mut changes = 0;
    while !stop.load(Ordering::Relaxed) {
        let current = match c
            .policies
            .get_policy(pb::GetPolicyRequest { version: None })
            .await
        {
            Ok(p) => p.into_inner(),
            Err(s) => {
                assert!(killed.load(Ordering::SeqCst) && died(&s), "{s:?}");
                break;
            }
        };
        let info = current.info.unwrap_or_default();
        let result = if current.text.contains("customers.phone, read_masked, marketing") {
            c.policies
                .rollback_policy(pb::RollbackPolicyRequest {
                    to_version: info.from_version.max(1),
                    comment: "soak rollback".into(),
                    expected_version: Some(info.version),
                })
                .await
        } else {
            c.policies
                .apply_policy(pb::ApplyPolicyRequest {
                    text: with_rule.clone(),
                    comment: "soak apply".into(),
                    expected_version: Some(info.version),
                })
                .await
        };
        match result {
            Ok(r) => {
                let v = r.into_inner().version.unwrap_or_default().version;
                *last_acked.lock().unwrap() = v;
                changes += 1;
            }
            Err(s) => {
                assert!(killed.load(Ordering::SeqCst) && died(&s), "{s:?}");
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    changes
}

/// Reads `rec` back as admin and settles it: the acknowledged state, or the in-doubt one.
async fn check(admin: &mut strongroom::client::Client, rec: &mut Rec, tally: &mut Tally) {
    let observed = match get(admin, &rec.id, "support").await {
        Ok(resp) => {
            assert_eq!(
                resp.fields.len(),
                8,
                "record {} is partial: {:?}",
                rec.id,
                view(&resp)
            );
            State::Live {
                version: resp.version,
                name: value_of(&resp, "name").unwrap().0.to_owned(),
                notes: value_of(&resp, "notes").unwrap().0.to_owned(),
            }
        }
        Err(s) if s.code() == Code::NotFound => State::Shredded,
        Err(s) => panic!("record {}: {:?} {}", rec.id, s.code(), s.message()),
    };
    tally.checked += 1;
    if observed == rec.acked {
        if rec.in_doubt.take().is_some() {
            tally.in_doubt_not_applied += 1;
        }
    } else if rec.in_doubt.as_ref() == Some(&observed) {
        tally.in_doubt_applied += 1;
        rec.acked = observed;
        rec.in_doubt = None;
    } else if rec.acked == State::Shredded {
        panic!(
            "REVIVED: record {} was shredded (acknowledged) and reads back as {observed:?}",
            rec.id
        );
    } else {
        panic!(
            "LOST: record {} was acknowledged as {:?} (in doubt: {:?}) and reads back as {observed:?}",
            rec.id, rec.acked, rec.in_doubt
        );
    }
    rec.touched = false;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_soak() {
    const WRITERS: u64 = 6;
    let cycles: u64 = std::env::var("STRONGROOM_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let seed: u64 = std::env::var("STRONGROOM_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("soak: {cycles} cycles, seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut vault = ChildVault::start(&data);
    let token = vault.token.clone().expect("the first start prints the token");
    let mut recs: Vec<Vec<Rec>> = vec![Vec::new(); WRITERS as usize];
    let mut counters: Vec<u64> = (0..WRITERS).map(|w| w * 1_000_000_000).collect();
    let mut tally = Tally::default();
    let last_policy = Arc::new(Mutex::new(0u64));
    for cycle in 0..cycles {
        let client = strongroom::client::connect(&vault.addr, &token)
            .await
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS as usize)
            .map(|w| {
                tokio::spawn(writer(
                    client.clone(),
                    std::mem::take(&mut recs[w]),
                    StdRng::seed_from_u64(rng.r#gen()),
                    counters[w],
                    stop.clone(),
                    killed.clone(),
                ))
            })
            .collect();
        let changer = tokio::spawn(policy_changer(
            client.clone(),
            stop.clone(),
            killed.clone(),
            last_policy.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(50..600))).await;
        killed.store(true, Ordering::SeqCst);
        vault.kill();
        stop.store(true, Ordering::SeqCst);
        for (w, task) in writers.into_iter().enumerate() {
            let (r, n, acked) = task.await.unwrap();
            recs[w] = r;
            counters[w] = n;
            tally.creates += acked[0];
            tally.updates += acked[1];
            tally.shreds += acked[2];
        }
        tally.policy_changes += changer.await.unwrap();
        drop(client);

        vault = ChildVault::start(&data);
        let mut admin = strongroom::client::connect(&vault.addr, &token)
            .await
            .unwrap();
        // Every record written or in doubt this cycle, and a sample of the older ones.
        for writer_recs in &mut recs {
            let old: Vec<usize> = (0..writer_recs.len())
                .filter(|&i| !writer_recs[i].touched)
                .collect();
            let sample: Vec<usize> = (0..old.len().min(20))
                .map(|_| old[rng.gen_range(0..old.len())])
                .collect();
            for i in 0..writer_recs.len() {
                if writer_recs[i].touched || sample.contains(&i) {
                    check(&mut admin, &mut writer_recs[i], &mut tally).await;
                }
            }
            // Keep what each cycle samples bounded: forget the oldest records (each was read
            // back after at least one restart).
            if writer_recs.len() > 2000 {
                writer_recs.drain(..writer_recs.len() - 2000);
            }
        }
        let policy = admin
            .policies
            .get_policy(pb::GetPolicyRequest { version: None })
            .await
            .unwrap()
            .into_inner();
        let current = policy.info.unwrap_or_default().version;
        let acked_policy = *last_policy.lock().unwrap();
        assert!(
            current >= acked_policy,
            "policy version {acked_policy} was acknowledged; after the restart the vault is at {current}"
        );
        let report = admin
            .audit
            .verify_log(pb::VerifyLogRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(report.ok, "cycle {cycle}: the audit chain fails: {report:?}");
        eprintln!(
            "soak: cycle {} done: creates {} updates {} shreds {} policy changes {} acknowledged; \
             {} reads checked (in doubt: {} applied, {} not); lost 0, revived 0; audit verified ({} events)",
            cycle + 1,
            tally.creates,
            tally.updates,
            tally.shreds,
            tally.policy_changes,
            tally.checked,
            tally.in_doubt_applied,
            tally.in_doubt_not_applied,
            report.checked
        );
    }
    assert!(tally.creates > 0, "no write was acknowledged");
    eprintln!("soak: {cycles} cycles, {tally:?}, lost 0, revived 0, verify failures 0");
}
