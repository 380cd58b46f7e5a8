//! The audit log end to end: one event per decision with the right outcomes, no values or
//! tokens in events, tamper detection naming the first bad event, fail-closed on audit write
//! failure, live following, verification and pruning.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

#[path = "audit/breach.rs"]
mod breach;

use std::sync::{Arc, atomic::Ordering};

use strongroom::{
    api::pb::{self, Disclosure},
    audit::{
        Audit, AuditOptions, Checkpoint, Event, EventLog, FieldOutcome, SEGMENT_BYTES, SegmentLog,
        rewrite_segments, verify_log,
    },
    crypto::{KeyProvider, Keyring},
    server::AUDIT_DIR,
    storage::{Batch, Keyspace, MemoryStore, RocksStore, Store},
};
use support::*;
use tonic::Code;

async fn events_after(client: &mut strongroom::client::Client, after: u64) -> Vec<pb::AuditEvent> {
    let mut out = Vec::new();
    let mut after = after;
    loop {
        let page = client
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: None,
                page_size: 1000,
                after_seq: after,
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(page.events);
        if page.next_after_seq == 0 {
            return out;
        }
        after = page.next_after_seq;
    }
}

async fn last_seq(client: &mut strongroom::client::Client) -> u64 {
    events_after(client, 0).await.last().map_or(0, |e| e.seq)
}

fn outcomes(e: &pb::AuditEvent) -> Vec<(String, String)> {
    e.fields
        .iter()
        .map(|f| (f.field.clone(), f.outcome.clone()))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[tokio::test]
async fn exactly_one_event_per_decision_with_the_right_outcomes() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut support = vault.as_role("role:support").await;
    let mut marketing = vault.as_role("role:marketing").await;
    let mut auditor = vault.as_role("role:auditor").await;
    let start = last_seq(&mut auditor).await;

    let id = create(&mut admin, customer("aud")).await;
    get(&mut support, &id, "support").await.unwrap();
    get(&mut marketing, &id, "support").await.unwrap();
    assert_code(
        support
            .records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: vec![field("name", "Eve")],
                honeytoken: false,
            })
            .await,
        Code::PermissionDenied,
    );
    let mut raw = vault.raw_records().await;
    assert_code(
        raw.get_record(pb::GetRecordRequest {
            id: id.clone(),
            fields: vec![],
            purpose: "support".into(),
        })
        .await,
        Code::Unauthenticated,
    );
    let mut wrong = vault.client("sr_nope").await;
    assert_code(get(&mut wrong, &id, "support").await, Code::Unauthenticated);
    assert_code(
        get(&mut support, &id, "gossip").await,
        Code::InvalidArgument,
    );
    admin
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("phone", "+15555550100")],
            clear: vec!["notes".into()],
            expected_version: None,
        })
        .await
        .unwrap();
    admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: id.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap();
    assert_code(get(&mut support, &id, "support").await, Code::NotFound);

    let events: Vec<_> = events_after(&mut auditor, start)
        .await
        .into_iter()
        .filter(|e| !e.method.starts_with("Audit/"))
        .collect();
    let summary: Vec<_> = events
        .iter()
        .map(|e| (e.method.as_str(), e.subject.as_str(), e.result.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("Records/CreateRecord", "user:admin", "OK"),
            ("Records/GetRecord", "svc:support", "OK"),
            ("Records/GetRecord", "svc:marketing", "OK"),
            ("Records/CreateRecord", "svc:support", "PERMISSION_DENIED"),
            // The two unauthenticated calls are counted, and written when the window closes.
            ("Records/GetRecord", "svc:support", "INVALID_ARGUMENT"),
            ("Records/UpdateRecord", "user:admin", "OK"),
            ("Records/DeleteRecord", "user:admin", "OK"),
            // The purge after the shred, which the delete waited for.
            ("Records/Purge", "", "OK"),
            ("Records/GetRecord", "svc:support", "NOT_FOUND"),
        ]
    );
    let all = [
        "name",
        "email",
        "phone",
        "address",
        "date_of_birth",
        "ssn",
        "card_number",
        "notes",
    ];
    assert_eq!(
        outcomes(&events[0]),
        all.iter()
            .map(|f| ((*f).to_owned(), "written".to_owned()))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        outcomes(&events[1]),
        pairs(&[
            ("name", "plain"),
            ("email", "masked"),
            ("phone", "masked"),
            ("address", "masked"),
            ("date_of_birth", "withheld"),
            ("ssn", "withheld"),
            ("card_number", "withheld"),
            ("notes", "plain")
        ])
    );
    assert!(outcomes(&events[2]).iter().all(|(_, o)| o == "withheld"));
    for e in &events[1..3] {
        assert_eq!(
            (
                e.purpose.as_str(),
                e.record_id.as_str(),
                e.collection.as_str(),
                e.policy_version
            ),
            ("support", id.as_str(), "customers", 1)
        );
        assert_eq!(e.request_id.len(), 16);
    }
    assert_eq!(events[1].roles, ["role:support"]);
    assert!(
        events[3].detail.contains("customers.name"),
        "{}",
        events[3].detail
    );
    assert_eq!(
        outcomes(&events[5]),
        pairs(&[("phone", "written"), ("notes", "cleared")])
    );
    // The update cleared `notes`: seven fields were left to destroy.
    assert_eq!(outcomes(&events[6]).len(), 7);
    assert!(outcomes(&events[6]).iter().all(|(_, o)| o == "destroyed"));
    // Sequence numbers are dense and times never go back.
    for w in events.windows(2) {
        assert!(w[1].time_unix_ms >= w[0].time_unix_ms);
    }

    // Queries filter by subject, record, outcome, field, purpose, method.
    let q = |filter: pb::EventFilter| pb::QueryEventsRequest {
        filter: Some(filter),
        page_size: 100,
        after_seq: start,
    };
    let by = |f: pb::EventFilter| {
        let mut a = auditor.clone();
        async move {
            a.audit
                .query_events(q(f))
                .await
                .unwrap()
                .into_inner()
                .events
        }
    };
    assert_eq!(
        by(pb::EventFilter {
            subject: "svc:marketing".into(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        by(pb::EventFilter {
            outcome: "masked".into(),
            ..Default::default()
        })
        .await
        .len(),
        1
    );
    assert_eq!(
        by(pb::EventFilter {
            outcome: "UNAUTHENTICATED".into(),
            ..Default::default()
        })
        .await
        .len(),
        0,
        "refusals are counted until their window closes"
    );
    assert_eq!(
        by(pb::EventFilter {
            record_id: id.clone(),
            method: "Records/GetRecord".into(),
            ..Default::default()
        })
        .await
        .len(),
        4
    );
    // notes: written at create, cleared by the update (so not among the destroyed).
    assert_eq!(
        by(pb::EventFilter {
            field: "notes".into(),
            role: "role:admin".into(),
            ..Default::default()
        })
        .await
        .len(),
        2
    );
    assert_eq!(
        by(pb::EventFilter {
            purpose: "support".into(),
            ..Default::default()
        })
        .await
        .len(),
        3
    );
    let late = by(pb::EventFilter {
        from_unix_ms: Some(i64::MAX - 1),
        ..Default::default()
    })
    .await;
    assert!(late.is_empty());

    // Only auditors and admins read the log.
    assert_code(
        support
            .audit
            .query_events(q(pb::EventFilter::default()))
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        support
            .audit
            .verify_log(pb::VerifyLogRequest::default())
            .await,
        Code::PermissionDenied,
    );

    // Shutdown closes the window: one event per source, method and reason, with its count.
    drop((admin, support, marketing, auditor, raw, wrong));
    vault.restart().await;
    let mut admin = vault.admin().await;
    let refused: Vec<_> = events_after(&mut admin, start)
        .await
        .into_iter()
        .filter(|e| e.result == "UNAUTHENTICATED")
        .map(|e| {
            (
                e.method,
                e.subject,
                e.detail.split(':').next_back().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        refused,
        [
            (
                "Records/GetRecord".to_owned(),
                String::new(),
                Some(" missing authorization metadata".to_owned())
            ),
            (
                "Records/GetRecord".to_owned(),
                String::new(),
                Some(" unknown or revoked token".to_owned())
            ),
        ]
    );
}

#[tokio::test]
async fn no_value_and_no_token_ever_reaches_an_event() {
    let vault = Vault::start_shared().await;
    let mut admin = vault.admin().await;
    let support_token = vault.token("svc:helpdesk", &["role:support"]).await;
    let mut support = vault.client(&support_token).await;
    let auditor_token = vault.token("user:carol", &["role:auditor"]).await;
    let mut auditor = vault.client(&auditor_token).await;
    let mut canaries = Vec::new();
    for i in 0..10 {
        let notes = format!("zqcanary{i}notezq");
        let email = format!("canary{i}x@canary-mail.example");
        let id = create(
            &mut admin,
            vec![
                field("name", "Canary Person"),
                field("notes", &notes),
                field("email", &email),
                field("ssn", "219-09-9999"),
            ],
        )
        .await;
        get(&mut admin, &id, "support").await.unwrap();
        get(&mut support, &id, "support").await.unwrap();
        admin
            .records
            .update_record(pb::UpdateRecordRequest {
                id: id.clone(),
                set: vec![field("notes", &format!("{notes}2"))],
                clear: vec![],
                expected_version: None,
            })
            .await
            .unwrap();
        canaries.push(notes);
        canaries.push(email);
    }
    // A bad value must not be echoed into the event of the failed call either.
    let bad = "not-an-email-zqcanaryzq";
    assert_code(
        admin
            .records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: vec![field("email", bad)],
                honeytoken: false,
            })
            .await,
        Code::InvalidArgument,
    );
    canaries.extend([
        "219-09-9999".to_owned(),
        // The masked form (`***-**-9999`); a bare "9999" also turns up by
        // chance in hashes and timestamps.
        "-9999".to_owned(),
        bad.to_owned(),
        "a***@".to_owned(),
    ]);
    let tokens = [vault.admin_token.clone(), support_token, auditor_token];

    let mut haystack: Vec<u8> = vault
        .store()
        .scan_prefix(Keyspace::Audit, b"")
        .unwrap()
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("export.jsonl");
    let mut stream = auditor
        .audit
        .export_events(pb::ExportEventsRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    let mut export = String::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        export.push_str(&chunk.jsonl);
    }
    std::fs::write(&out, &export).unwrap();
    assert!(export.lines().count() > 40, "{}", export.lines().count());
    for line in export.lines() {
        let _: serde_json::Value = serde_json::from_str(line).unwrap();
    }
    haystack.extend_from_slice(export.as_bytes());
    for needle in canaries.iter().chain(tokens.iter()) {
        let found = haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes());
        assert!(!found, "{needle:?} found in the audit log");
    }
    // The scan would see them: the record ids are there.
    assert!(export.contains("\"record_id\""));
}

/// The stopped vault's audit log: its segments over its store.
fn segment_log(data: &std::path::Path) -> (Arc<dyn Store>, SegmentLog) {
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(&data.join("db")).unwrap());
    let log = SegmentLog::open(&data.join(AUDIT_DIR), Arc::clone(&store), SEGMENT_BYTES).unwrap();
    (store, log)
}

/// The events and signed head of the stopped vault's log.
fn entries_and_head(data: &std::path::Path) -> (Vec<(u64, Vec<u8>)>, Checkpoint) {
    let (_, log) = segment_log(data);
    (
        log.scan(0, None, usize::MAX).unwrap(),
        log.head().unwrap().unwrap(),
    )
}

/// Rewrites the stopped vault's segments to hold `entries` and `head` with valid checksums, as
/// someone with write access to the data dir can.
fn rewrite(data: &std::path::Path, entries: &[(u64, Vec<u8>)], head: &Checkpoint) {
    rewrite_segments(&data.join(AUDIT_DIR), entries, head).unwrap();
}

#[tokio::test]
async fn tampering_with_stored_events_is_detected_naming_the_first_bad_one() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    for tag in ["a", "b", "c", "d", "e", "f"] {
        let id = create(&mut admin, customer(tag)).await;
        get(&mut admin, &id, "support").await.unwrap();
    }
    let report = verified(&mut admin).await;
    assert!(report.ok, "{report:?}");
    // Tamper with the files of a stopped vault, as someone with disk access would (checksums
    // recomputed), and verify with the vault's own key (verification appends nothing).
    vault.stop().await;
    let data = vault.data_dir();
    let keys: Arc<dyn KeyProvider> =
        Arc::new(Keyring::open_file(vault.keys_dir().join("keyring")).unwrap());
    let check = |case: &str| {
        let (store, log) = segment_log(&data);
        let r = verify_log(&log, store.as_ref(), Arc::clone(&keys)).unwrap();
        let (seq, problem) = r
            .problem
            .clone()
            .unwrap_or_else(|| panic!("{case}: not detected"));
        eprintln!("{case}: detected at event {seq}: {problem}");
        (seq, problem)
    };
    // 0. A byte of the vault's own segment flipped, its checksum left: the log keeps the
    // damage, goes on after it, and verification names it.
    let segment = std::fs::read_dir(data.join(AUDIT_DIR))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let pristine = std::fs::read(&segment).unwrap();
    let mut bytes = pristine.clone();
    bytes[pristine.len() / 2] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();
    let (_, problem) = check("frame damaged");
    assert!(problem.contains("damaged"), "{problem}");
    std::fs::write(&segment, &pristine).unwrap();
    let (original, head) = entries_and_head(&data);
    let n = original.len() as u64;
    assert!(n >= 15, "{n}");
    assert_eq!(original[0].0, 1);
    let restore = || rewrite(&data, &original, &head);
    restore();
    {
        let (store, log) = segment_log(&data);
        assert!(
            verify_log(&log, store.as_ref(), Arc::clone(&keys))
                .unwrap()
                .ok()
        );
    }
    let k = 5u64;
    let kv = |seq: u64| original[usize::try_from(seq - 1).unwrap()].1.clone();
    let with = |changes: &[(u64, Vec<u8>)]| -> Vec<(u64, Vec<u8>)> {
        let mut entries = original.clone();
        for (seq, v) in changes {
            entries[usize::try_from(seq - 1).unwrap()].1 = v.clone();
        }
        entries
    };

    // 1. One byte changed: in the event, and in its hash.
    for at in [10usize, kv(k).len() - 1] {
        let mut v = kv(k);
        v[at] ^= 0x01;
        rewrite(&data, &with(&[(k, v)]), &head);
        assert_eq!(check("byte changed").0, k);
    }
    // 2. One deleted.
    let mut deleted = original.clone();
    deleted.remove(usize::try_from(k - 1).unwrap());
    rewrite(&data, &deleted, &head);
    let (seq, problem) = check("deleted");
    assert!(seq == k && problem.contains("removed"), "{problem}");
    // 3. A forged one inserted, the rest shifted up.
    let forged = Event {
        seq: k,
        time_ms: 1,
        method: "Records/GetRecord".into(),
        subject: "user:mallory".into(),
        result: "OK".into(),
        ..Event::default()
    };
    let mut json = serde_json::to_vec(&forged).unwrap();
    json.extend_from_slice(&[7u8; 32]);
    let mut inserted: Vec<(u64, Vec<u8>)> = original
        .iter()
        .map(|(seq, v)| (if *seq >= k { seq + 1 } else { *seq }, v.clone()))
        .collect();
    inserted.insert(usize::try_from(k - 1).unwrap(), (k, json));
    rewrite(&data, &inserted, &head);
    assert_eq!(check("inserted").0, k);
    // 4. Two swapped.
    rewrite(&data, &with(&[(k, kv(k + 2)), (k + 2, kv(k))]), &head);
    let (seq, problem) = check("swapped");
    assert!(seq == k && problem.contains("reordered"), "{problem}");
    // 5. The chain hashes are public: an event altered and every hash after it recomputed
    // chains cleanly, and only the signed head (which needs the vault's signing key) catches it.
    let names_records = |v: &Vec<u8>| v.windows(8).any(|w| w == b"Records/");
    let target = original.iter().position(|(_, v)| names_records(v)).unwrap();
    let mut prev = [0u8; 32];
    let mut rehashed = Vec::new();
    for (n, (seq, value)) in original.iter().enumerate() {
        let mut event = value[..value.len() - 32].to_vec();
        if n == target {
            // A letter of a name changed case: the event still decodes, and says something else.
            let at = event.windows(8).position(|w| w == b"Records/").unwrap();
            event[at] ^= 0x20;
        }
        let hash: [u8; 32] = {
            use sha2::Digest;
            let mut h = sha2::Sha256::new();
            h.update(b"strongroom/audit-chain/v2");
            h.update(prev);
            h.update(seq.to_be_bytes());
            h.update(&event);
            h.finalize().into()
        };
        let mut v = event;
        v.extend_from_slice(&hash);
        rehashed.push((*seq, v));
        prev = hash;
    }
    rewrite(&data, &rehashed, &head);
    let (seq, problem) = check("altered and rehashed");
    assert!(
        seq > target as u64 && problem.contains("checkpoint"),
        "{seq}: {problem}"
    );
    // 6. The tail truncated: the signed head says where the log should end.
    rewrite(&data, &original[..original.len() - 3], &head);
    let (seq, problem) = check("truncated");
    assert!(seq == n - 2 && problem.contains("truncated"), "{problem}");
    // Untouched again, the log verifies clean: every failure above was the tampering.
    restore();
    let (store, log) = segment_log(&data);
    let clean = verify_log(&log, store.as_ref(), Arc::clone(&keys)).unwrap();
    assert!(clean.ok() && clean.checked == n, "{clean:?}");
}

#[tokio::test]
async fn a_tail_truncated_while_down_is_seen_after_restart() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    for _ in 0..3 {
        create(&mut admin, customer("tr")).await;
    }
    vault.stop().await;
    let (entries, head) = entries_and_head(&vault.data_dir());
    let last = entries.len() as u64;
    rewrite(&vault.data_dir(), &entries[..entries.len() - 2], &head);
    vault.restart().await;
    let mut admin = vault.admin().await;
    let r = verified(&mut admin).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.problem_seq, last - 1, "{r:?}");
}

#[tokio::test]
async fn an_audit_write_failure_returns_no_data_and_applies_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    // Events in the store: the store's failure is the audit log's failure.
    let (_dir, running, token) = Vault::start_over(store.clone(), "audit_log = \"store\"").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let id = create(&mut admin, customer("fail")).await;
    let before = (
        store.inner.scan_prefix(Keyspace::Deks, b"").unwrap().len(),
        store.inner.scan_prefix(Keyspace::Audit, b"").unwrap().len(),
    );

    store.fail_writes.store(true, Ordering::SeqCst);
    let status = assert_code(get(&mut admin, &id, "support").await, Code::Unavailable);
    assert!(!status.message().contains("Lovelace"));
    assert_code(
        admin
            .records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: customer("new"),
                honeytoken: false,
            })
            .await,
        Code::Unavailable,
    );
    assert_code(
        admin
            .records
            .update_record(pb::UpdateRecordRequest {
                id: id.clone(),
                set: vec![field("email", "x@example.com")],
                clear: vec![],
                expected_version: None,
            })
            .await,
        Code::Unavailable,
    );
    let after = (
        store.inner.scan_prefix(Keyspace::Deks, b"").unwrap().len(),
        store.inner.scan_prefix(Keyspace::Audit, b"").unwrap().len(),
    );
    assert_eq!(before, after, "nothing was written");

    store.fail_writes.store(false, Ordering::SeqCst);
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(resp.version, 1, "the failed update applied nothing");
    assert_eq!(value_of(&resp, "email").unwrap().1, Disclosure::Plain);
    let r = admin
        .audit
        .verify_log(pb::VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.ok,
        "the chain has no hole where the failed batches were: {r:?}"
    );
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_follower_sees_later_calls_live_in_order() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut auditor = vault.as_role("role:auditor").await;
    let filter = pb::EventFilter {
        method: String::new(),
        collection: "customers".into(),
        ..Default::default()
    };
    let mut stream = auditor
        .audit
        .follow_events(pb::FollowEventsRequest {
            filter: Some(filter),
            after_seq: None,
        })
        .await
        .unwrap()
        .into_inner();
    let id = create(&mut admin, customer("live")).await;
    get(&mut admin, &id, "billing").await.unwrap();
    admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: id.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push((e.method, e.record_id, e.seq));
    }
    let methods: Vec<_> = seen
        .iter()
        .map(|(m, r, _)| (m.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        methods,
        [
            ("Records/CreateRecord", id.as_str()),
            ("Records/GetRecord", id.as_str()),
            ("Records/DeleteRecord", id.as_str())
        ]
    );
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2));
    // A follower asking for a backlog gets the stored events first.
    let mut replay = auditor
        .audit
        .follow_events(pb::FollowEventsRequest {
            filter: Some(pb::EventFilter {
                record_id: id.clone(),
                ..Default::default()
            }),
            after_seq: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let first = replay.message().await.unwrap().unwrap();
    assert_eq!(first.method, "Records/CreateRecord");
}

#[tokio::test]
async fn pruning_keeps_the_log_verifiable_from_its_anchor() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    let keys: Arc<dyn KeyProvider> =
        Arc::new(Keyring::open_file(dir.path().join("keyring")).unwrap());
    let audit = Audit::open(
        Arc::clone(&store),
        keys,
        AuditOptions {
            retention_days: Some(1),
            checkpoint_every: 10,
            ..AuditOptions::default()
        },
    )
    .unwrap();
    for i in 0..35 {
        let e = Event {
            method: "Test/Op".into(),
            result: "OK".into(),
            detail: format!("{i}"),
            ..Event::default()
        };
        audit.commit(Batch::new(), vec![e]).await.unwrap();
    }
    assert!(audit.verify(None, None).unwrap().ok());
    // Two days later, everything up to the newest checkpoint (30) is past retention.
    let later = strongroom::vault::now_ms() + 2 * 86_400_000;
    let pruned = audit.prune(later).await.unwrap();
    assert_eq!(pruned, 30);
    let report = audit.verify(None, None).unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.anchor, 30);
    assert_eq!(report.from, 31);
    // The prune itself is an event, and the chain goes on.
    let (events, _) = audit
        .query(&strongroom::audit::Filter::default(), 0, 100)
        .unwrap();
    assert_eq!(events.first().map(|e| e.seq), Some(31));
    assert_eq!(
        events.last().map(|e| e.method.as_str()),
        Some("Audit/Prune")
    );
    // Removing the anchor breaks verification of the pruned log, and says so.
    let mut b = Batch::new();
    for (k, _) in store
        .scan_prefix(Keyspace::Meta, b"audit/checkpoint/")
        .unwrap()
    {
        b.delete(Keyspace::Meta, k);
    }
    store.write(b).unwrap();
    assert!(!audit.verify(None, None).unwrap().ok());
    let _ = FieldOutcome {
        field: String::new(),
        outcome: String::new(),
    };
}

/// The chain hashes are public: someone with the disk but not the signing key can append
/// well-chained events, or drop the signed statements and rewrite the log. The head moves with
/// every batch, so either leaves the log out of step with its signed head, and the vault
/// refuses to start (and to sign over it) rather than carry the forgery on.
/// With events in segments, a data write that fails after its events are durable is refused,
/// applies nothing, and the chain says so right after; reads, whose events need no data write,
/// go on.
#[tokio::test]
async fn a_data_write_failing_after_its_events_are_durable_is_named_in_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    let (_dir, running, token) = Vault::start_over(store.clone(), "").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let id = create(&mut admin, customer("fail")).await;
    let deks = || store.inner.scan_prefix(Keyspace::Deks, b"").unwrap().len();
    let before = deks();

    store.fail_writes.store(true, Ordering::SeqCst);
    let seen = last_seq(&mut admin).await;
    assert_code(
        admin
            .records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: customer("new"),
                honeytoken: false,
            })
            .await,
        Code::Unavailable,
    );
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(value_of(&resp, "email").unwrap().1, Disclosure::Plain);
    store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(deks(), before, "the failed create wrote nothing");

    let events = events_after(&mut admin, seen).await;
    let create = events
        .iter()
        .find(|e| e.method == "Records/CreateRecord")
        .unwrap();
    let note = events
        .iter()
        .find(|e| e.method == "Audit/WritesNotApplied")
        .unwrap_or_else(|| panic!("no note of the unapplied write: {events:?}"));
    assert_eq!(note.seq, create.seq + 1);
    assert!(
        note.detail
            .contains(&format!("events {} to {}", create.seq, create.seq)),
        "{}",
        note.detail
    );
    assert!(verified(&mut admin).await.ok);
    running.shutdown().await.unwrap();
}

/// A read whose batch also keeps a checkpoint, with the store failing that checkpoint's write:
/// the read fails closed, but no call's write was lost, so the chain says nothing of lost
/// writes, and goes on after the read's event.
#[tokio::test]
async fn a_failed_checkpoint_write_is_not_called_a_lost_data_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    let (_dir, running, token) =
        Vault::start_over(store.clone(), "audit_checkpoint_every = 1").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let id = create(&mut admin, customer("ckpt")).await;
    let seen = last_seq(&mut admin).await;
    store.fail_writes.store(true, Ordering::SeqCst);
    assert_code(get(&mut admin, &id, "support").await, Code::Unavailable);
    store.fail_writes.store(false, Ordering::SeqCst);
    let events = events_after(&mut admin, seen).await;
    assert!(
        events.iter().all(|e| e.method != "Audit/WritesNotApplied"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.method == "Records/GetRecord"));
    assert!(verified(&mut admin).await.ok);
    running.shutdown().await.unwrap();
}

/// Someone with disk access can chain events by hand but cannot sign: events past the signed
/// head, or a head that is not the vault's signature, and the vault refuses to start (and to
/// sign over them) rather than carry the forgery on.
#[tokio::test]
async fn events_past_the_signed_head_or_a_log_without_one_are_refused_not_signed() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("head")).await;
    vault.stop().await;
    // The head as it stood: then more events are appended (by the vault, standing in for a
    // forger who chains events by hand).
    let (_, old_head) = entries_and_head(&vault.data_dir());
    vault.restart().await;
    let mut admin = vault.admin().await;
    get(&mut admin, &id, "support").await.unwrap();
    drop(admin);
    vault.stop().await;
    let (entries, head) = entries_and_head(&vault.data_dir());
    assert!(head.seq > old_head.seq);
    let meta_head = {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        store.get(Keyspace::Meta, b"audit/head").unwrap().unwrap()
    };
    rewrite(&vault.data_dir(), &entries, &old_head);
    {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        put_meta(
            &store,
            b"audit/head",
            serde_json::to_vec(&old_head).unwrap(),
        );
    }
    let err = try_start(&vault.data_dir()).await.err().unwrap_or_default();
    assert!(err.contains("come after the signed head"), "{err}");
    // A head not signed by the vault.
    let forged = Checkpoint {
        signature: "00".repeat(64),
        ..head.clone()
    };
    rewrite(&vault.data_dir(), &entries, &forged);
    {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        put_meta(&store, b"audit/head", serde_json::to_vec(&forged).unwrap());
    }
    let err = try_start(&vault.data_dir()).await.err().unwrap_or_default();
    assert!(err.contains("does not verify"), "{err}");
    // The real head back.
    rewrite(&vault.data_dir(), &entries, &head);
    {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        put_meta(&store, b"audit/head", meta_head);
    }
    vault.restart().await;
    let report = verified(&mut vault.admin().await).await;
    assert!(report.ok, "{report:?}");
}

async fn try_start(data: &std::path::Path) -> Result<(), String> {
    let config = strongroom::config::Config::with(data, "127.0.0.1:0", &policies_dir()).unwrap();
    let running = strongroom::server::start(config)
        .await
        .map_err(|e| e.to_string())?;
    running.shutdown().await.map_err(|e| e.to_string())
}

fn put_meta(store: &RocksStore, key: &[u8], value: Vec<u8>) {
    let mut b = Batch::new();
    b.put(Keyspace::Meta, key.to_vec(), value);
    store.write(b).unwrap();
}

/// The audit log under kill -9: readers and writers in flight, the process killed at a random
/// moment, restarted three times. Every read and create that was answered has its event after
/// the restart (a read's event is durable before its data leaves), a torn tail is cut, and the
/// chain verifies end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_appends_loses_no_acknowledged_event() {
    use rand::Rng;
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut vault = ChildVault::start(&data);
    let token = vault.token.clone().unwrap();
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    let mut ids = Vec::new();
    for i in 0u8..64 {
        let tag: String = [b'a' + i / 26, b'a' + i % 26]
            .map(char::from)
            .iter()
            .collect();
        ids.push(create(&mut admin, customer(&tag)).await);
    }
    let ids = Arc::new(ids);
    // Per record id, the reads answered; and the records created and answered.
    let mut acked_reads: HashMap<String, u64> = HashMap::new();
    let mut acked_creates: Vec<String> = Vec::new();
    for round in 0..3 {
        let client = strongroom::client::connect(&vault.addr, &token)
            .await
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (mut client, ids, stop) = (client.clone(), Arc::clone(&ids), Arc::clone(&stop));
                tokio::spawn(async move {
                    let (mut reads, mut creates) = (Vec::new(), Vec::new());
                    let mut n = t;
                    while !stop.load(Ordering::SeqCst) {
                        n += 1;
                        if t == 0 && n % 4 == 0 {
                            let created = client
                                .records
                                .create_record(pb::CreateRecordRequest {
                                    collection: "customers".into(),
                                    fields: customer("killed"),
                                    honeytoken: false,
                                })
                                .await;
                            match created {
                                Ok(r) => creates.push(r.into_inner().id),
                                Err(_) => break,
                            }
                            continue;
                        }
                        let id = &ids[n % ids.len()];
                        match get(&mut client, id, "support").await {
                            Ok(_) => reads.push(id.clone()),
                            Err(_) => break,
                        }
                    }
                    (reads, creates)
                })
            })
            .collect();
        let wait = rand::thread_rng().gen_range(300..900);
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
        vault.kill();
        stop.store(true, Ordering::SeqCst);
        for task in tasks {
            let (reads, creates) = task.await.unwrap();
            for id in reads {
                *acked_reads.entry(id).or_default() += 1;
            }
            acked_creates.extend(creates);
        }
        vault = ChildVault::start(&data);
        let total: u64 = acked_reads.values().sum();
        eprintln!(
            "round {round}: {total} reads and {} creates acknowledged so far",
            acked_creates.len()
        );
    }
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    let events = events_after(&mut admin, 0).await;
    let mut logged: HashMap<String, u64> = HashMap::new();
    for e in events
        .iter()
        .filter(|e| e.method == "Records/GetRecord" && e.result == "OK")
    {
        *logged.entry(e.record_id.clone()).or_default() += 1;
    }
    assert!(
        acked_reads.values().sum::<u64>() > 100,
        "too few reads to mean anything"
    );
    for (id, n) in &acked_reads {
        let have = logged.get(id).copied().unwrap_or(0);
        assert!(
            have >= *n,
            "record {id}: {n} reads answered, {have} in the log"
        );
        // A query by record (through the index, rebuilt at each start) finds every one.
        let mut found = 0;
        let mut after = 0;
        loop {
            let page = admin
                .audit
                .query_events(pb::QueryEventsRequest {
                    filter: Some(pb::EventFilter {
                        record_id: id.clone(),
                        method: "Records/GetRecord".into(),
                        outcome: "OK".into(),
                        ..Default::default()
                    }),
                    page_size: 1000,
                    after_seq: after,
                })
                .await
                .unwrap()
                .into_inner();
            found += page.events.len() as u64;
            if page.next_after_seq == 0 {
                break;
            }
            after = page.next_after_seq;
        }
        assert_eq!(
            found, have,
            "record {id}: the query by record finds {found} of {have}"
        );
    }
    for id in &acked_creates {
        assert!(
            events
                .iter()
                .any(|e| e.method == "Records/CreateRecord" && e.record_id == *id),
            "the create of {id} was answered but is not in the log"
        );
        get(&mut admin, id, "support").await.unwrap();
    }
    let report = verified(&mut admin).await;
    assert!(report.ok, "{report:?}");
}
