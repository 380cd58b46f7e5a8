//! Issue 8, defect 2: unauthenticated floods must cost bounded memory and log space, name no
//! method the vault does not serve, and leave authorized callers served.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use http::uri::PathAndQuery;
use strongroom::{api::pb, client::Client};
use tonic::{Code, Status, client::Grpc, transport::Channel};

use crate::support::{ChildVault, Vault, assert_code, create, customer, get};

/// A token-less unary call to `path` with an empty message.
async fn call_raw(channel: Channel, path: &str) -> Result<(), Status> {
    let path = PathAndQuery::try_from(path).map_err(|e| Status::internal(e.to_string()))?;
    let mut grpc = Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(tonic::Request::new(()), path, codec)
        .await
        .map(|_| ())
}

/// One connection of its own (a `Channel` multiplexes calls over one HTTP/2 connection).
async fn connection(addr: &str) -> Channel {
    Channel::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Every event after `after`, oldest first, read in small pages (15 KiB events must fit in a
/// response); stops early once `keep` has accepted more than `cap` events.
async fn events_after(
    client: &mut Client,
    after: u64,
    filter: pb::EventFilter,
    keep: impl Fn(&pb::AuditEvent) -> bool,
    cap: usize,
) -> (Vec<pb::AuditEvent>, u64) {
    let (mut kept, mut seen, mut next) = (Vec::new(), 0u64, after);
    loop {
        let page = client
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: Some(filter.clone()),
                page_size: 50,
                after_seq: next,
            })
            .await
            .unwrap()
            .into_inner();
        seen += page.events.len() as u64;
        kept.extend(page.events.into_iter().filter(|e| keep(e)));
        if page.next_after_seq == 0 || kept.len() > cap {
            return (kept, seen);
        }
        next = page.next_after_seq;
    }
}

/// The sequence number of the last event.
async fn last_seq(client: &mut Client) -> u64 {
    let (events, _) =
        events_after(client, 0, pb::EventFilter::default(), |_| true, usize::MAX).await;
    events.last().map_or(0, |e| e.seq)
}

/// How many events of each (method, result).
fn by_method(events: &[pb::AuditEvent]) -> std::collections::BTreeMap<(String, String), usize> {
    let mut counts = std::collections::BTreeMap::new();
    for e in events {
        *counts
            .entry((e.method.chars().take(40).collect(), e.result.clone()))
            .or_insert(0) += 1;
    }
    counts
}

/// The number of refused calls an aggregated event states (`<n> call(s) refused from ...`).
fn refused_count(event: &pb::AuditEvent) -> Option<u64> {
    let (count, rest) = event.detail.split_once(' ')?;
    if rest.starts_with("call refused from ") || rest.starts_with("calls refused from ") {
        count.parse().ok()
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_calls_are_counted_per_source_method_and_reason_never_echoed() {
    let mut vault = Vault::start().await;
    let channel = connection(&vault.addr()).await;
    // A method we serve, a method we do not (carrying a caller's secret), and a wrong token.
    let (missing_known, missing_unknown, wrong_token) = (40u64, 30u64, 20u64);
    for _ in 0..missing_known {
        let r = call_raw(channel.clone(), "/strongroom.v1.Records/GetRecord").await;
        assert_code(r, Code::Unauthenticated);
    }
    for _ in 0..missing_unknown {
        let r = call_raw(channel.clone(), "/strongroom.v1.Records/123-45-6789").await;
        assert_code(r, Code::Unauthenticated);
    }
    let mut stranger = vault.client("sr_not-a-token").await;
    for _ in 0..wrong_token {
        let r = get(&mut stranger, "00000000000000000000000000000000", "support").await;
        assert_code(r, Code::Unauthenticated);
    }
    drop((channel, stranger));
    // The window is written at shutdown (and every minute).
    vault.restart().await;
    let mut admin = vault.admin().await;
    let filter = pb::EventFilter {
        outcome: "UNAUTHENTICATED".into(),
        ..Default::default()
    };
    let (events, _) = events_after(&mut admin, 0, filter, |_| true, 1000).await;
    let echoed: Vec<_> = events
        .iter()
        .filter(|e| e.method.contains("123-45") || e.detail.contains("123-45"))
        .collect();
    assert!(
        echoed.is_empty(),
        "the caller's text was written: {echoed:?}"
    );
    let mut seen: Vec<(String, Option<u64>, bool)> = events
        .iter()
        .map(|e| {
            assert!(e.detail.contains("127.0.0.1"), "no source: {}", e.detail);
            (
                e.method.clone(),
                refused_count(e),
                e.detail.contains("unknown or revoked token"),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("(unknown)".to_owned(), Some(missing_unknown), false),
            ("Records/GetRecord".to_owned(), Some(wrong_token), true),
            ("Records/GetRecord".to_owned(), Some(missing_known), false),
        ],
        "one event per source, method and reason, with the exact count"
    );
    assert!(
        admin
            .audit
            .verify_log(pb::VerifyLogRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_15_kib_path_is_refused_before_any_service_and_writes_nothing() {
    let mut vault = Vault::start().await;
    let channel = connection(&vault.addr()).await;
    let path = format!("/strongroom.v1.Records/{}", "A".repeat(15 * 1024));
    let mut admin = vault.admin().await;
    let before = last_seq(&mut admin).await;
    for _ in 0..3 {
        let status = call_raw(channel.clone(), &path).await.unwrap_err();
        assert_ne!(
            status.code(),
            Code::Unauthenticated,
            "a 15 KiB path reached the authenticator: {status:?}"
        );
    }
    // The connection (or a new one) still serves well-formed calls.
    let r = call_raw(channel.clone(), "/strongroom.v1.Records/GetRecord").await;
    assert_code(r, Code::Unauthenticated);
    drop((channel, admin));
    vault.restart().await;
    let mut admin = vault.admin().await;
    let (events, _) = events_after(&mut admin, before, Default::default(), |_| true, 100).await;
    let long: Vec<_> = events
        .iter()
        .filter(|e| e.method.len() > 100 || e.detail.contains("AAAAAAAA"))
        .collect();
    assert!(long.is_empty(), "{} events hold the long path", long.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_is_served_and_watch_cannot_hold_a_stream() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let vault = Vault::start().await;
    let mut health = HealthClient::new(connection(&vault.addr()).await);
    let request = || HealthCheckRequest {
        service: "strongroom.v1.Records".into(),
    };
    let serving = health.check(request()).await.unwrap().into_inner();
    assert_eq!(serving.status, 1, "SERVING");
    // Without a token, Watch would hold a stream (and its connection) open for ever.
    let watch = tokio::time::timeout(Duration::from_secs(20), health.watch(request()))
        .await
        .expect("Watch answers at once");
    assert_code(watch.map(|_| ()), Code::Unimplemented);
}

/// How long the flood runs: `STRONGROOM_FLOOD_SECS`, 30 s by default.
fn flood_duration() -> Duration {
    let secs = std::env::var("STRONGROOM_FLOOD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    Duration::from_secs(secs)
}

#[derive(Default)]
struct Tally {
    unauthenticated: AtomicU64,
    other_errors: AtomicU64,
}

/// Token-less calls to `path` over one connection, `in_flight` at a time, until `stop`.
async fn flood(addr: String, path: String, in_flight: usize, stop: Arc<AtomicBool>) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let channel = connection(&addr).await;
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (channel, path, stop, tally) =
            (channel.clone(), path.clone(), stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match call_raw(channel.clone(), &path).await {
                    Ok(()) => panic!("a token-less call was served"),
                    Err(s) if s.code() == Code::Unauthenticated => &tally.unauthenticated,
                    Err(_) => &tally.other_errors,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

/// The attacker's pass of issue 8: token-less calls with 15 KiB paths from 8 connections (and
/// short token-less calls from 2 more, which do reach the authenticator) while an authorized
/// reader keeps reading. Audit events and the vault's memory stay bounded, every refusal that
/// reached the authenticator is counted exactly, and the reader is served throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_less_flood_costs_bounded_log_and_memory_and_readers_are_served() {
    let duration = flood_duration();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut vault = ChildVault::start(&data);
    let token = vault.token.clone().expect("a first start prints the token");
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    let id = create(&mut admin, customer("flood")).await;
    for _ in 0..200 {
        get(&mut admin, &id, "support").await.unwrap();
    }
    let before_seq = last_seq(&mut admin).await;
    let rss_before = vault.rss_kib();

    let stop = Arc::new(AtomicBool::new(false));
    let long_path = format!("/strongroom.v1.Records/{}", "A".repeat(15 * 1024));
    let mut floods = Vec::new();
    for _ in 0..8 {
        floods.push(tokio::spawn(flood(
            vault.addr.clone(),
            long_path.clone(),
            16,
            stop.clone(),
        )));
    }
    let mut short = Vec::new();
    for path in [
        "/strongroom.v1.Records/GetRecord",
        "/strongroom.v1.Records/Nope",
    ] {
        short.push(tokio::spawn(flood(
            vault.addr.clone(),
            path.to_owned(),
            8,
            stop.clone(),
        )));
    }
    let reader = {
        let (mut client, id, stop) = (admin.clone(), id.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                match get(&mut client, &id, "support").await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
            }
            (ok, failed)
        })
    };
    let mut rss_peak = rss_before;
    let started = std::time::Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_peak = rss_peak.max(vault.rss_kib());
    }
    stop.store(true, Ordering::Relaxed);
    let (mut long_refused, mut long_reached) = (0, 0);
    for f in floods {
        let tally = f.await.unwrap();
        long_refused += tally.other_errors.load(Ordering::Relaxed);
        long_reached += tally.unauthenticated.load(Ordering::Relaxed);
    }
    let (mut short_refused, mut short_errors) = (0, 0);
    for f in short {
        let tally = f.await.unwrap();
        short_refused += tally.unauthenticated.load(Ordering::Relaxed);
        short_errors += tally.other_errors.load(Ordering::Relaxed);
    }
    let (reads_ok, reads_failed) = reader.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = vault.rss_kib();

    // Stop cleanly (the last window of refusals is written), start again, and read the log.
    drop(admin);
    vault.terminate();
    let vault = ChildVault::start(&data);
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    let is_read = |e: &pb::AuditEvent| e.subject == "user:admin" && e.method == "Records/GetRecord";
    let (others, added) = events_after(
        &mut admin,
        before_seq,
        Default::default(),
        // Not the reader's reads, nor this query's own pages (one event each, so their number
        // grows with the reads the reader got through).
        |e| !is_read(e) && e.method != "Audit/QueryEvents",
        1000,
    )
    .await;
    let refusals: Vec<_> = others
        .iter()
        .filter(|e| e.result == "UNAUTHENTICATED")
        .collect();
    let counted: u64 = refusals.iter().filter_map(|e| refused_count(e)).sum();
    eprintln!(
        "flood of {}s: 15 KiB-path calls refused by HTTP/2 {long_refused}, reaching the \
         authenticator {long_reached}; short token-less calls {short_refused} (other errors \
         {short_errors}); audit events added {added} ({} not reads by the reader, {} refusal \
         events counting {counted} calls); RSS {rss_before} KiB before, {rss_peak} KiB peak, \
         {rss_after} KiB after; GetRecord {reads_ok} ok, {reads_failed} failed; the others: {:?}",
        duration.as_secs(),
        others.len(),
        refusals.len(),
        by_method(&others),
    );

    assert!(
        long_refused + long_reached > 0 && short_refused > 0,
        "the flood ran"
    );
    assert!(
        others.len() <= 40,
        "{} audit events besides the reader's reads (flood: {} calls)",
        others.len(),
        long_refused + long_reached + short_refused
    );
    assert_eq!(
        short_errors, 0,
        "short token-less calls are answered UNAUTHENTICATED"
    );
    assert_eq!(
        counted,
        short_refused + long_reached,
        "every refusal the authenticator made is counted, exactly"
    );
    let growth_kib = rss_peak
        .saturating_sub(rss_before)
        .max(rss_after.saturating_sub(rss_before));
    assert!(
        growth_kib < 64 * 1024,
        "the vault's RSS grew by {growth_kib} KiB"
    );
    assert_eq!(
        reads_failed, 0,
        "the authorized reader was refused during the flood"
    );
    assert!(
        reads_ok >= duration.as_secs(),
        "the authorized reader was starved: {reads_ok} reads"
    );
    assert!(
        admin
            .audit
            .verify_log(pb::VerifyLogRequest::default())
            .await
            .unwrap()
            .into_inner()
            .ok
    );
}

/// At `max_connections`, a new connection is served only once another closes: a flood of
/// connections costs bounded file descriptors and memory, and the vault keeps serving those it
/// holds.
#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let store = Arc::new(strongroom::storage::MemoryStore::new());
    let (_dir, running, _token) = Vault::start_over(store, "max_connections = 4\n").await;
    let addr = format!("http://{}", running.addr);
    let check = |channel: Channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
    };
    let mut held = Vec::new();
    for _ in 0..4 {
        let channel = connection(&addr).await;
        check(channel.clone()).await.unwrap();
        held.push(channel);
    }
    // The fifth connects (the kernel accepts it) but is not served while the four stay open.
    let fifth = tokio::spawn({
        let addr = addr.clone();
        async move { check(connection(&addr).await).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !fifth.is_finished(),
        "a fifth connection was served past the limit of 4"
    );
    // The four held ones are still served.
    for channel in &held {
        check(channel.clone()).await.unwrap();
    }
    held.pop();
    tokio::time::timeout(Duration::from_secs(30), fifth)
        .await
        .expect("the fifth connection is served once one closes")
        .unwrap()
        .unwrap();
}
