//! Races, lost purges, and the smaller promises around them (issue 8, defects 3, 4 and parts
//! of 7): reads racing updates and shreds, purges that survive kill -9 and failures, rights
//! checked before a record is looked up, audit scans off the async workers, bounded pruning,
//! the bench against a running vault, and the bench-only switch that turns read auditing off.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use strongroom::{
    api::pb,
    audit::{Audit, AuditOptions, Event},
    crypto::Keyring,
    storage::{Batch, MemoryStore, RocksStore, Store},
};
use tonic::Code;

use crate::support::{
    ChildVault, Faulty, Vault, assert_code, create, customer, field, files_containing, get,
    letters, policies_dir, stored,
};

/// How long a test waits for something that must happen before calling it hung.
const HANG_GUARD: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// Defect 3: a read racing an update or a shred sees one consistent state.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Default)]
struct RaceCounts {
    pairs: AtomicU64,
    data_loss: AtomicU64,
    old_or_new: AtomicU64,
    not_found: AtomicU64,
    other: Mutex<Vec<String>>,
}

impl RaceCounts {
    fn read(&self, result: Result<pb::GetRecordResponse, tonic::Status>, shredding: bool) {
        match result {
            Ok(resp) => {
                // Whole: every field of the record, at one version.
                if resp.fields.len() == 8 {
                    self.old_or_new.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.other
                        .lock()
                        .unwrap()
                        .push(format!("a partial record: {} fields", resp.fields.len()));
                }
            }
            Err(s) if s.code() == Code::DataLoss => {
                self.data_loss.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) if shredding && s.code() == Code::NotFound => {
                self.not_found.fetch_add(1, Ordering::Relaxed);
            }
            Err(s) => self
                .other
                .lock()
                .unwrap()
                .push(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_racing_updates_and_shreds_never_report_data_loss() {
    let vault = Vault::start().await;
    let admin = vault.admin().await;
    let counts = Arc::new(RaceCounts::default());
    let in_flight = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = tokio::task::JoinSet::new();

    // 1,000 update/get pairs over 8 records (so each record is updated ~125 times while read).
    let mut hot = Vec::new();
    for i in 0..8 {
        hot.push(
            create(
                &mut admin.clone(),
                customer(&format!("hot{}", letters(i as u64))),
            )
            .await,
        );
    }
    // 200 get/shred pairs, each on its own record.
    let mut doomed = Vec::new();
    for i in 0..200 {
        doomed.push(
            create(
                &mut admin.clone(),
                customer(&format!("doomed{}", letters(i as u64))),
            )
            .await,
        );
    }
    let mut updates_failed = Vec::new();
    for n in 0..1000usize {
        let (mut a, mut b) = (admin.clone(), admin.clone());
        let (id, pair_counts, permit) = (
            hot[n % hot.len()].clone(),
            Arc::clone(&counts),
            Arc::clone(&in_flight).acquire_owned().await.unwrap(),
        );
        tasks.spawn(async move {
            let update = a.records.update_record(pb::UpdateRecordRequest {
                id: id.clone(),
                set: vec![
                    field("notes", &format!("note {n}")),
                    field("email", &format!("n{n}@example.com")),
                ],
                clear: vec![],
                expected_version: None,
            });
            let (updated, read) = tokio::join!(update, get(&mut b, &id, "support"));
            pair_counts.pairs.fetch_add(1, Ordering::Relaxed);
            pair_counts.read(read, false);
            drop(permit);
            updated.err().map(|s| format!("update: {:?}", s.code()))
        });
        if n % 5 == 0 {
            // Interleave the shreds with the updates.
            let k = n / 5;
            let (mut a, mut b) = (admin.clone(), admin.clone());
            let (id, shred_counts, permit) = (
                doomed[k].clone(),
                Arc::clone(&counts),
                Arc::clone(&in_flight).acquire_owned().await.unwrap(),
            );
            tasks.spawn(async move {
                let shred = a.records.delete_record(pb::DeleteRecordRequest {
                    id: id.clone(),
                    wait_for_purge: false,
                });
                let (read, shredded) = tokio::join!(get(&mut b, &id, "support"), shred);
                shred_counts.read(read, true);
                drop(permit);
                shredded.err().map(|s| format!("shred: {:?}", s.code()))
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Some(e) = done.unwrap() {
            updates_failed.push(e);
        }
    }
    let data_loss = counts.data_loss.load(Ordering::Relaxed);
    let whole = counts.old_or_new.load(Ordering::Relaxed);
    let not_found = counts.not_found.load(Ordering::Relaxed);
    eprintln!(
        "races: {} update/get pairs and 200 get/shred pairs: {data_loss} DATA_LOSS, {whole} whole \
         records (old or new), {not_found} NOT_FOUND (shred first)",
        counts.pairs.load(Ordering::Relaxed)
    );
    assert_eq!(data_loss, 0, "a read racing a write reported tampering");
    assert!(
        counts.other.lock().unwrap().is_empty(),
        "{:?}",
        counts.other.lock().unwrap()
    );
    assert!(updates_failed.is_empty(), "{updates_failed:?}");
    assert_eq!(whole + not_found, 1200, "every read answered");
    // Every record is whole and at its final version afterwards.
    let mut a = admin.clone();
    for id in &hot {
        assert_eq!(get(&mut a, id, "support").await.unwrap().fields.len(), 8);
    }
    for id in &doomed {
        assert_code(get(&mut a, id, "support").await, Code::NotFound);
    }
}

// ---------------------------------------------------------------------------------------------
// Defect 4: a purge owed survives kill -9; a failed purge is retried and never claimed.
// ---------------------------------------------------------------------------------------------

/// Polls the audit log until every id in `ids` has an `OK` `Records/Purge` event; returns
/// how many have one when it gives up (after `HANG_GUARD`).
async fn wait_for_purge_events(
    audit: &mut pb::audit_client::AuditClient<strongroom::client::Authed>,
    ids: &[String],
) -> usize {
    let start = std::time::Instant::now();
    loop {
        let mut purged = 0;
        for id in ids {
            let events = audit
                .query_events(pb::QueryEventsRequest {
                    filter: Some(pb::EventFilter {
                        record_id: id.clone(),
                        method: "Records/Purge".into(),
                        outcome: "OK".into(),
                        ..Default::default()
                    }),
                    page_size: 10,
                    after_seq: 0,
                })
                .await
                .unwrap()
                .into_inner()
                .events;
            purged += usize::from(!events.is_empty());
        }
        if purged == ids.len() || start.elapsed() > HANG_GUARD {
            return purged;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_queued_when_the_vault_is_killed_runs_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut vault = ChildVault::start(&data);
    let token = vault.token.clone();
    let token = token.expect("the first start prints the admin token");
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut canaries = Vec::new();
    for i in 0..12 {
        let canary = format!("kx{}q{i}canary", rand_tag());
        let mut fields = customer(&letters(i as u64));
        for f in &mut fields {
            if f.name == "notes" {
                f.value.clone_from(&canary);
            }
        }
        ids.push(create(&mut admin, fields).await);
        canaries.push(canary);
    }
    // The bytes to look for afterwards: each record's header (its wrapped DEK) and ciphertexts.
    vault.terminate();
    let secrets: Vec<Vec<u8>> = {
        let store = RocksStore::open(&data.join("db")).unwrap();
        ids.iter()
            .flat_map(|id| {
                let (header, fields) = stored(&store, id);
                std::iter::once(header).chain(fields.into_iter().map(|(_, v)| v))
            })
            .collect()
    };
    let mut vault = ChildVault::start(&data);
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    // Shreds in a quick stream: the purger runs at most one purge per interval, so the later
    // ones are still queued when the vault dies.
    let killed_at = {
        for id in &ids {
            let receipt = admin
                .records
                .delete_record(pb::DeleteRecordRequest {
                    id: id.clone(),
                    wait_for_purge: false,
                })
                .await
                .unwrap()
                .into_inner()
                .receipt
                .unwrap();
            assert!(receipt.purge_pending);
        }
        let at = std::time::Instant::now();
        vault.kill();
        at
    };
    assert!(killed_at.elapsed() < Duration::from_secs(5));
    let mut vault = ChildVault::start(&data);
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    let purged = wait_for_purge_events(&mut admin.audit, &ids).await;
    eprintln!(
        "purge after kill -9: {purged} of {} shredded records purged after the restart",
        ids.len()
    );
    assert_eq!(purged, ids.len(), "a purge owed was lost with the crash");
    for id in &ids {
        assert_code(get(&mut admin, id, "support").await, Code::NotFound);
    }
    vault.terminate();
    let mut hits = 0;
    for needle in secrets
        .iter()
        .cloned()
        .chain(canaries.iter().map(|c| c.as_bytes().to_vec()))
    {
        hits += files_containing(&data, &needle).len();
    }
    eprintln!(
        "purge after kill -9: {} needles (wrapped DEKs, ciphertexts, canaries) scanned for: {hits} hits",
        secrets.len() + canaries.len()
    );
    assert_eq!(hits, 0);
}

fn rand_tag() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    (h.finish() % 1_000_000) as u32
}

async fn purge_events(
    admin: &mut strongroom::client::Client,
    id: &str,
    outcome: &str,
) -> Vec<pb::AuditEvent> {
    admin
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: Some(pb::EventFilter {
                record_id: id.into(),
                method: "Records/Purge".into(),
                outcome: outcome.into(),
                ..Default::default()
            }),
            page_size: 100,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_purge_is_retried_reported_and_never_claimed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    store.fail_purges.store(true, Ordering::SeqCst);
    let (_dir, running, token) = Vault::start_over(store.clone(), "").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let id = create(&mut admin, customer("flaky")).await;
    let receipt = admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: id.clone(),
            wait_for_purge: true,
        })
        .await
        .expect("the shred itself succeeded: its receipt says the purge is pending")
        .into_inner()
        .receipt
        .unwrap();
    assert!(receipt.data_key_destroyed);
    assert!(receipt.purge_pending, "{receipt:?}");
    assert_eq!(
        receipt.purged_at_unix_ms, 0,
        "a failed purge is not a purge"
    );
    assert_code(get(&mut admin, &id, "support").await, Code::NotFound);
    assert!(
        purge_events(&mut admin, &id, "OK").await.is_empty(),
        "no purged event while every purge fails"
    );
    let failures = admin
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: Some(pb::EventFilter {
                method: "Records/Purge".into(),
                outcome: "UNAVAILABLE".into(),
                ..Default::default()
            }),
            page_size: 100,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(
        !failures.is_empty(),
        "the failure is reported in the audit log"
    );
    // The store recovers: the purge owed is retried (with backoff) and then recorded.
    store.fail_purges.store(false, Ordering::SeqCst);
    let purged = wait_for_purge_events(&mut admin.audit, std::slice::from_ref(&id)).await;
    assert_eq!(purged, 1, "the failed purge was never retried");
    let attempts = store.purges.load(Ordering::SeqCst);
    eprintln!(
        "failed purge: {attempts} attempts, {} failure events, then 1 purged event",
        failures.len()
    );
    assert!(attempts >= 2);
    running.shutdown().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Defect 7a: rights are checked before the record is looked up.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn callers_without_rights_cannot_tell_existing_ids_from_missing_ones() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let existing = create(&mut admin, customer("rights")).await;
    let missing = "0123456789abcdef0123456789abcdef".to_owned();
    assert_code(get(&mut admin, &missing, "support").await, Code::NotFound);
    let update = |id: &str, name: &str| pb::UpdateRecordRequest {
        id: id.into(),
        set: vec![field(name, "x@example.com")],
        clear: vec![],
        expected_version: None,
    };
    let delete = |id: &str| pb::DeleteRecordRequest {
        id: id.into(),
        wait_for_purge: false,
    };
    // marketing may write and delete nothing.
    let mut marketing = vault.as_role("role:marketing").await;
    for id in [&existing, &missing] {
        assert_code(
            marketing.records.update_record(update(id, "email")).await,
            Code::PermissionDenied,
        );
        assert_code(
            marketing
                .records
                .update_record(update(id, "no_such_field"))
                .await,
            Code::PermissionDenied,
        );
        assert_code(
            marketing.records.delete_record(delete(id)).await,
            Code::PermissionDenied,
        );
    }
    // support may write `notes` only: an email update is refused alike for both ids.
    let mut support = vault.as_role("role:support").await;
    let a = assert_code(
        support
            .records
            .update_record(update(&existing, "email"))
            .await,
        Code::PermissionDenied,
    );
    let b = assert_code(
        support
            .records
            .update_record(update(&missing, "email"))
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(a.message(), b.message());
    // The record is untouched, and rightful callers still get NOT_FOUND for a missing id.
    let resp = get(&mut admin, &existing, "support").await.unwrap();
    assert_eq!(resp.version, 1);
    assert_code(
        admin.records.update_record(update(&missing, "email")).await,
        Code::NotFound,
    );
    assert_code(
        admin.records.delete_record(delete(&missing)).await,
        Code::NotFound,
    );
}

// ---------------------------------------------------------------------------------------------
// Defect 7b: `after_seq` at its maximum, and audit scans off the async workers.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn an_audit_query_after_the_largest_sequence_number_is_empty_not_a_crash() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let resp = admin
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: None,
            page_size: 10,
            after_seq: u64::MAX,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resp.events.is_empty());
    assert_eq!(resp.next_after_seq, 0);
    // The server is still there.
    let resp = admin
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: None,
            page_size: 1,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.events.len(), 1);
}

/// Runs `call` against a vault on a one-worker runtime while its audit scans are blocked, and
/// checks that a record read is served meanwhile: a scan that held the only worker would
/// stall every other call.
async fn scan_does_not_block_other_calls(call: &'static str) {
    let store = Arc::new(Faulty::new(MemoryStore::new()));
    let gate = Arc::clone(&store.audit_scans);
    // Events in the store, so the gate on its scans holds the audit scan.
    let (_dir, running, token) = Vault::start_over(store, "audit_log = \"store\"").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let id = create(&mut admin, customer("gate")).await;
    gate.close();
    // The clients run on their own thread and runtime; this (only) worker serves the vault.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let client_thread = {
        let (addr, token, id, gate) = (addr.clone(), token.clone(), id.clone(), Arc::clone(&gate));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(async move {
                let mut c = strongroom::client::connect(&addr, &token).await.unwrap();
                let mut scanner = c.clone();
                let scan = tokio::spawn(async move {
                    match call {
                        "query" => scanner
                            .audit
                            .query_events(pb::QueryEventsRequest {
                                filter: None,
                                page_size: 10,
                                after_seq: 0,
                            })
                            .await
                            .map(|_| ()),
                        _ => match scanner
                            .audit
                            .export_events(pb::ExportEventsRequest { filter: None })
                            .await
                        {
                            Ok(stream) => {
                                let mut stream = stream.into_inner();
                                while let Some(chunk) = stream.message().await.transpose() {
                                    chunk.map(|_| ()).unwrap();
                                }
                                Ok(())
                            }
                            Err(s) => Err(s),
                        },
                    }
                });
                while gate.entered.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let read = get(&mut c, &id, "support").await;
                let _ = tx.send(format!("{:?}", read.map(|r| r.fields.len())));
                scan.await.unwrap().unwrap();
            });
        })
    };
    // Waiting happens on the blocking pool, so this worker stays free for the vault; if the
    // scan holds the worker, the read never comes and the gate opens only at the guard.
    let answer = {
        let gate = Arc::clone(&gate);
        tokio::task::spawn_blocking(move || {
            let answer = rx.recv_timeout(HANG_GUARD);
            gate.open();
            answer
        })
        .await
        .unwrap()
    };
    // Joined off this worker: the client still needs the vault to finish the scan's answer.
    tokio::task::spawn_blocking(move || client_thread.join().unwrap())
        .await
        .unwrap();
    assert_eq!(
        answer.as_deref(),
        Ok("Ok(8)"),
        "a record read was not served while an audit {call} scan ran"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn an_audit_query_scan_does_not_hold_an_async_worker() {
    scan_does_not_block_other_calls("query").await;
}

#[tokio::test(flavor = "current_thread")]
async fn an_audit_export_scan_does_not_hold_an_async_worker() {
    scan_does_not_block_other_calls("export").await;
}

// ---------------------------------------------------------------------------------------------
// Defect 7c: pruning writes bounded batches.
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn pruning_a_large_log_writes_bounded_batches() {
    let store = Arc::new(Faulty::new(MemoryStore::new()));
    let dyn_store: Arc<dyn Store> = store.clone();
    let dir = tempfile::tempdir().unwrap();
    let audit = Audit::open(
        dyn_store,
        Arc::new(Keyring::open_file(dir.path().join("keyring")).unwrap()),
        AuditOptions {
            retention_days: Some(1),
            checkpoint_every: 500,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    let events = 20_000u64;
    for chunk in 0..events / 1000 {
        let batch: Vec<Event> = (0..1000)
            .map(|i| Event {
                method: "Test/Op".into(),
                result: "OK".into(),
                detail: format!("{}", chunk * 1000 + i),
                ..Event::default()
            })
            .collect();
        audit.commit(Batch::new(), batch).await.unwrap();
    }
    // The writes above were batches of 1,000 events; count only the prune's own.
    store.largest_batch.store(0, Ordering::SeqCst);
    let later = strongroom::vault::now_ms() + 2 * 86_400_000;
    let pruned = audit.prune(later).await.unwrap();
    let largest = store.largest_batch.load(Ordering::SeqCst);
    eprintln!("prune: {pruned} events pruned; largest batch written: {largest} operations");
    assert_eq!(pruned, events, "everything up to the last checkpoint");
    assert!(largest <= 16, "a prune batch of {largest} operations");
    let report = audit.verify(None, None).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.anchor, events);
}

// ---------------------------------------------------------------------------------------------
// Defect 7d: `strongroom bench --addr` against a running vault.
// ---------------------------------------------------------------------------------------------

/// Runs `strongroom bench` with `args` against `vault` (on the blocking pool, so the vault in
/// this process keeps serving); returns (success, stdout, stderr).
async fn bench(vault: &Vault, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"));
    cmd.args(["bench", "--addr", &vault.addr(), "--no-pin", "--json"])
        .args([
            "--duration",
            "1",
            "--requests",
            "20",
            "--records",
            "40",
            "--connections",
            "1",
        ])
        .args(["--in-flight", "4", "--policies"])
        .arg(policies_dir())
        .args(args)
        .env("STRONGROOM_TOKEN", &vault.admin_token);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_workload_runs_against_a_running_vault() {
    let vault = Vault::start().await;
    for workloads in [
        "put",
        "get-full,get-masked,get-denied,update,mix,shred,shred-wait,policy",
    ] {
        let (ok, stdout, stderr) = bench(&vault, &["--workload", workloads]).await;
        assert!(!stderr.contains("panicked"), "{workloads}: {stderr}");
        assert!(ok, "{workloads}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        let rows = report["workloads"].as_array().unwrap();
        let names: Vec<&str> = rows.iter().filter_map(|r| r["workload"].as_str()).collect();
        let wanted: Vec<&str> = workloads.split(',').filter(|w| *w != "policy").collect();
        assert_eq!(names, wanted);
        for r in rows {
            assert_eq!(r["errors"], 0, "{r}");
            assert!(r["requests"].as_u64().unwrap() > 0, "{r}");
        }
    }
    // The one workload that needs a vault of the bench's own says so, and does not panic.
    let (ok, _, stderr) = bench(&vault, &["--workload", "audit-cost"]).await;
    assert!(!ok && !stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("audit-cost") && stderr.contains("--addr"),
        "{stderr}"
    );
    // So do the options that configure the vault the bench starts.
    let (ok, _, stderr) = bench(&vault, &["--block-cache-mib", "128"]).await;
    assert!(!ok && !stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("--block-cache-mib") && stderr.contains("--addr"),
        "{stderr}"
    );
    // A vault the bench starts that refuses its config says why, in the vault's own words.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args(["bench", "--no-pin", "--block-cache-mib", "1", "--policies"])
        .arg(policies_dir())
        .args(["--workload", "get-masked", "--requests", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(
        stderr.contains("block_cache_mib: must be between 8 and 1048576"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Defect 7e: read auditing off is a bench-only switch that announces itself.
// ---------------------------------------------------------------------------------------------

async fn read_audit_health(addr: &str) -> i32 {
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: strongroom::server::READ_AUDIT_HEALTH.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn a_vault_started_without_read_auditing_records_it_and_health_says_so() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // A normal vault: reads audited, health says SERVING.
    let normal = Vault::start().await;
    assert_eq!(
        read_audit_health(&normal.addr()).await,
        ServingStatus::Serving as i32
    );
    // The bench's switch.
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        strongroom::config::Config::with(&dir.path().join("data"), "127.0.0.1:0", &policies_dir())
            .unwrap();
    config.danger_disable_read_audit = true;
    let mut running = strongroom::server::start(config).await.unwrap();
    let token = running.first_admin_token.take().unwrap().to_string();
    let addr = format!("http://{}", running.addr);
    assert_eq!(
        read_audit_health(&addr).await,
        ServingStatus::NotServing as i32
    );
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let events = admin
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: Some(pb::EventFilter {
                method: "Server/DangerDisableReadAudit".into(),
                ..Default::default()
            }),
            page_size: 10,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(
        events.len(),
        1,
        "the start without read auditing is in the log"
    );
    running.shutdown().await.unwrap();
    // And it is not something an operator's config file can turn on.
    let err = strongroom::config::Config::from_toml(
        "danger_disable_read_audit = true\n",
        strongroom::config::Overrides::default(),
    )
    .unwrap_err();
    assert!(err.contains("danger_disable_read_audit"), "{err}");
}

/// A vault stopped while a purge runs releases its store when `shutdown` returns: an operator's
/// restart (or backup tool) may open the data dir at once. The purge still owed runs at the
/// next start.
#[tokio::test]
async fn a_stopped_vault_releases_its_store_even_mid_purge() {
    let mut vault = Vault::start().await;
    for round in 0..5 {
        let mut admin = vault.admin().await;
        for _ in 0..4 {
            let id = create(&mut admin, customer("stop")).await;
            admin
                .records
                .delete_record(pb::DeleteRecordRequest {
                    id,
                    wait_for_purge: false,
                })
                .await
                .unwrap();
        }
        drop(admin);
        vault.stop().await;
        let db = vault.data_dir().join("db");
        let opened = RocksStore::open(&db);
        assert!(
            opened.is_ok(),
            "round {round}: the store is still held after shutdown"
        );
        drop(opened);
        vault.restart().await;
    }
}
