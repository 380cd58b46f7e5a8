//! Robustness beyond the fixes (issue 8): every request message through a real server, and a
//! crash soak of the real binary.
//!
//! - `every_request_gets_a_status_and_the_server_keeps_serving`: each RPC receives generated
//!   messages with arbitrary field contents, mutations of their encodings, and raw garbage, over
//!   real gRPC to a server on 127.0.0.1:0. Every answer must be OK or a client-error status (never
//!   UNKNOWN, INTERNAL, DATA_LOSS, UNAVAILABLE: those are what a panic, a dropped connection or a
//!   decoder bug look like), and the server must still serve a normal create and read afterwards.
//!   `PROPTEST_CASES` sets the number of inputs (default 256); `scripts/fuzz.sh` runs a million.
//! - `soak::crash_soak` (in `soak.rs`): kill -9 of the real binary under writers, updates,
//!   shreds and policy changes, cycle after cycle.
//!
//! The decoders of bytes from disk have their harnesses next to them (`fuzz_*` unit tests), all
//! built on the one mutation strategy in `src/testing.rs`, which this file includes by path.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use proptest::{prelude::*, test_runner::TestCaseError};
use prost::{
    Message,
    bytes::{Buf, BufMut},
};
use strongroom::api::pb;
use tonic::{
    Code, Status,
    client::Grpc,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

use crate::support::*;

#[path = "soak.rs"]
mod soak;

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
    Bidi,
}

/// Every RPC of the vault, health and reflection included: (path, kind).
const METHODS: [(&str, Kind); 25] = [
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
    ("/grpc.health.v1.Health/Check", Kind::Unary),
    ("/grpc.health.v1.Health/Watch", Kind::Stream),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        Kind::Bidi,
    ),
    ("/strongroom.v1.Tokens/RotateToken", Kind::Unary),
    ("/strongroom.v1.Holds/PlaceHold", Kind::Unary),
    ("/strongroom.v1.Holds/ReleaseHold", Kind::Unary),
    ("/strongroom.v1.Holds/ListHolds", Kind::Unary),
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
                ..Default::default()
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
                enc(&pb::CreateRecordRequest {
                    collection,
                    fields,
                    honeytoken: false,
                })
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
            .prop_map(move |(subject, roles)| {
                enc(&pb::CreateTokenRequest {
                    subject,
                    roles,
                    ..Default::default()
                })
            })
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
        17 => filter(t)
            .prop_map(move |filter| enc(&pb::ExportEventsRequest { filter }))
            .boxed(),
        18 | 19 => t
            .clone()
            .prop_map(|service| enc(&tonic_health::pb::HealthCheckRequest { service }))
            .boxed(),
        21 => (t.clone(), t.clone())
            .prop_map(|(id, grace)| enc(&pb::RotateTokenRequest { id, grace }))
            .boxed(),
        _ => (t.clone(), 0..5u8, t.clone())
            .prop_map(|(host, which, name)| {
                use tonic_reflection::pb::v1::{
                    ServerReflectionRequest, server_reflection_request::MessageRequest,
                };
                let message_request = match which {
                    0 => MessageRequest::FileByFilename(name),
                    1 => MessageRequest::FileContainingSymbol(name),
                    2 => MessageRequest::AllExtensionNumbersOfType(name),
                    3 => MessageRequest::ListServices(name),
                    _ => MessageRequest::FileContainingExtension(Default::default()),
                };
                enc(&ServerReflectionRequest {
                    host,
                    message_request: Some(message_request),
                })
            })
            .boxed(),
    }
}

/// Protobuf tokens that make length and tag tweaks bite.
const PROTO: &[&str] = &[
    "\u{8}",
    "\u{a}",
    "\u{12}",
    "\u{1a}",
    "\u{22}",
    "\u{ff}",
    "\u{80}\u{80}\u{80}\u{80}\u{10}",
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

fn with_auth<T>(body: T, bearer: Option<&MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    if let Some(value) = bearer {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

async fn send(channel: &Channel, admin: &str, call: &Call) -> Result<(), Status> {
    let (path, kind) = METHODS[call.method];
    let mut grpc = Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("not ready: {e}")))?;
    let bearer = format!("Bearer {}", call.token.as_deref().unwrap_or(admin))
        .parse::<MetadataValue<Ascii>>()
        .ok();
    let (body, bearer) = (call.body.clone(), bearer.as_ref());
    let path = http::uri::PathAndQuery::from_static(path);
    let mut stream = match kind {
        Kind::Unary => {
            return grpc
                .unary(with_auth(body, bearer), path, RawCodec)
                .await
                .map(|_| ());
        }
        Kind::Stream => {
            grpc.server_streaming(with_auth(body, bearer), path, RawCodec)
                .await?
        }
        Kind::Bidi => {
            let once = tokio_stream::once(body);
            grpc.streaming(with_auth(once, bearer), path, RawCodec)
                .await?
        }
    }
    .into_inner();
    // An export ends by itself; a follow or watch streams forever: read a little and hang up.
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(20), stream.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Err(_) => break,
            Ok(Err(status)) => return Err(status),
        }
    }
    Ok(())
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
    // A second policy admin, made before the fuzzed policies: restoring the starting policy may
    // count as an escalation of the fuzzed one, and then waits for a second approver.
    let second_admin = rt.block_on(vault.token("user:admin2", &["role:admin"]));
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
            tokio::time::timeout(Duration::from_secs(60), send(&channel, &admin_token, &call)).await
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
    eprintln!(
        "fuzz: server: inputs per method: {:?}",
        counts.lock().unwrap()
    );
    // The server still serves: with the starting policy back (the harness may have applied one
    // that takes the admin's record rights away), a normal create and read back.
    rt.block_on(async {
        let mut admin = vault.admin().await;
        let applied = admin
            .policies
            .apply_policy(pb::ApplyPolicyRequest {
                text: policy.clone(),
                comment: "after fuzzing".into(),
                expected_version: None,
            })
            .await
            .unwrap()
            .into_inner();
        if let Some(pending) = applied.pending {
            vault
                .client(&second_admin)
                .await
                .policies
                .approve_policy(pb::ApprovePolicyRequest { id: pending.id })
                .await
                .unwrap();
        }
        let id = create(&mut admin, customer("after")).await;
        let back = get(&mut admin, &id, "support").await.unwrap();
        assert_eq!(
            value_of(&back, "name").map(|(v, _)| v.to_owned()),
            Some("Ada after Lovelace".to_owned())
        );
    });
    drop(vault);
}
