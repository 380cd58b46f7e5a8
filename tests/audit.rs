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
    audit::{Audit, AuditOptions, Event, FieldOutcome},
    crypto::{KeyProvider, Keyring},
    storage::{Batch, KeyValue, Keyspace, MemoryStore, RocksStore, Store},
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

fn audit_entries(store: &RocksStore) -> Vec<KeyValue> {
    store.scan_prefix(Keyspace::Audit, b"").unwrap()
}

fn put(store: &RocksStore, key: Vec<u8>, value: Vec<u8>) {
    let mut b = Batch::new();
    b.put(Keyspace::Audit, key, value);
    store.write(b).unwrap();
}

fn delete(store: &RocksStore, key: Vec<u8>) {
    let mut b = Batch::new();
    b.delete(Keyspace::Audit, key);
    store.write(b).unwrap();
}

fn restore(store: &RocksStore, original: &[KeyValue]) {
    let mut b = Batch::new();
    for (k, v) in original {
        b.put(Keyspace::Audit, k.clone(), v.clone());
    }
    store.write(b).unwrap();
}

fn seq_key(seq: u64) -> Vec<u8> {
    seq.to_be_bytes().to_vec()
}

async fn verify(client: &mut strongroom::client::Client) -> pb::VerifyLogResponse {
    client
        .audit
        .verify_log(pb::VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn tampering_with_stored_events_is_detected_naming_the_first_bad_one() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    for tag in ["a", "b", "c", "d", "e", "f"] {
        let id = create(&mut admin, customer(tag)).await;
        get(&mut admin, &id, "support").await.unwrap();
    }
    let report = verify(&mut admin).await;
    assert!(report.ok, "{report:?}");
    // Tamper with the files of a stopped vault, as someone with disk access would, and verify
    // with the vault's own key (verification appends nothing).
    vault.stop().await;
    let keys: Arc<dyn KeyProvider> =
        Arc::new(Keyring::open_file(vault.keys_dir().join("keyring")).unwrap());
    let store = Arc::new(RocksStore::open(&vault.data_dir().join("db")).unwrap());
    let audit = Audit::open(store.clone(), keys, AuditOptions::default()).unwrap();
    let check = |case: &str| {
        let r = audit.verify(None, None).unwrap();
        let (seq, problem) = r
            .problem
            .clone()
            .unwrap_or_else(|| panic!("{case}: not detected"));
        eprintln!("{case}: detected at event {seq}: {problem}");
        (seq, problem)
    };
    let original = audit_entries(&store);
    let n = original.len() as u64;
    assert!(n >= 15, "{n}");
    assert!(audit.verify(None, None).unwrap().ok());
    let k = 5u64;
    let kv = |seq: u64| original[usize::try_from(seq - 1).unwrap()].1.clone();

    // 1. One byte changed: in the JSON, and in the MAC.
    for at in [10usize, kv(k).len() - 1] {
        let mut v = kv(k);
        v[at] ^= 0x01;
        put(&store, seq_key(k), v);
        assert_eq!(check("byte changed").0, k);
        restore(&store, &original);
    }
    // 2. One deleted.
    delete(&store, seq_key(k));
    let (seq, problem) = check("deleted");
    assert!(seq == k && problem.contains("removed"), "{problem}");
    restore(&store, &original);
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
    let mut b = Batch::new();
    for seq in k..=n {
        b.put(Keyspace::Audit, seq_key(seq + 1), kv(seq));
    }
    b.put(Keyspace::Audit, seq_key(k), json);
    store.write(b).unwrap();
    assert_eq!(check("inserted").0, k);
    delete(&store, seq_key(n + 1));
    restore(&store, &original);
    // 4. Two swapped.
    put(&store, seq_key(k), kv(k + 2));
    put(&store, seq_key(k + 2), kv(k));
    let (seq, problem) = check("swapped");
    assert!(seq == k && problem.contains("reordered"), "{problem}");
    restore(&store, &original);
    // 5. The chain hashes are public: an event altered and every hash after it recomputed
    // chains cleanly, and only the signed head (which needs the vault's signing key) catches it.
    let names_records = |v: &Vec<u8>| v.windows(8).any(|w| w == b"Records/");
    let target = original.iter().position(|(_, v)| names_records(v)).unwrap();
    let mut prev = [0u8; 32];
    let mut b = Batch::new();
    for (n, (key, value)) in original.iter().enumerate() {
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
            h.update(key);
            h.update(&event);
            h.finalize().into()
        };
        let mut v = event;
        v.extend_from_slice(&hash);
        b.put(Keyspace::Audit, key.clone(), v);
        prev = hash;
    }
    store.write(b).unwrap();
    let (seq, problem) = check("altered and rehashed");
    assert!(
        seq > target as u64 && problem.contains("checkpoint"),
        "{seq}: {problem}"
    );
    restore(&store, &original);
    // 6. The tail truncated: the signed head checkpoint says where the log should end.
    for seq in n - 2..=n {
        delete(&store, seq_key(seq));
    }
    let (seq, problem) = check("truncated");
    assert!(seq == n - 2 && problem.contains("truncated"), "{problem}");
    restore(&store, &original);
    // Untouched again, the log verifies clean: every failure above was the tampering.
    let clean = audit.verify(None, None).unwrap();
    assert!(clean.ok() && clean.checked == n, "{clean:?}");
}

#[tokio::test]
async fn a_tail_truncated_while_down_is_seen_after_restart() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    for _ in 0..3 {
        create(&mut admin, customer("tr")).await;
    }
    let last = vault
        .with_store(|s| {
            let entries = s.scan_prefix(Keyspace::Audit, b"").unwrap();
            let last = entries.len() as u64;
            let mut b = Batch::new();
            b.delete(Keyspace::Audit, seq_key(last));
            b.delete(Keyspace::Audit, seq_key(last - 1));
            s.write(b).unwrap();
            last
        })
        .await;
    let mut admin = vault.admin().await;
    let r = verify(&mut admin).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.problem_seq, last - 1, "{r:?}");
}

#[tokio::test]
async fn an_audit_write_failure_returns_no_data_and_applies_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    let (_dir, running, token) = Vault::start_over(store.clone(), "").await;
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
#[tokio::test]
async fn events_past_the_signed_head_or_a_log_without_one_are_refused_not_signed() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("head")).await;
    vault.stop().await;
    // The head as it stood: then more events are appended (by the vault, standing in for a
    // forger who chains events by hand).
    let old_head = {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        store.get(Keyspace::Meta, b"audit/head").unwrap().unwrap()
    };
    vault.restart().await;
    let mut admin = vault.admin().await;
    get(&mut admin, &id, "support").await.unwrap();
    drop(admin);
    vault.stop().await;
    let original = {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        let head = store.get(Keyspace::Meta, b"audit/head").unwrap().unwrap();
        put_meta(&store, b"audit/head", old_head.clone());
        head
    };
    let err = try_start(&vault.data_dir()).await.err().unwrap_or_default();
    assert!(err.contains("come after the signed head"), "{err}");
    // Every signed statement removed, so there is no head to be out of step with.
    {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        let mut b = Batch::new();
        for (k, _) in store.scan_prefix(Keyspace::Meta, b"audit/").unwrap() {
            b.delete(Keyspace::Meta, k);
        }
        store.write(b).unwrap();
    }
    let err = try_start(&vault.data_dir()).await.err().unwrap_or_default();
    assert!(err.contains("no signed head"), "{err}");
    // The real head back (the kept checkpoints are gone, the head alone covers the log).
    {
        let store = RocksStore::open(&vault.data_dir().join("db")).unwrap();
        put_meta(&store, b"audit/head", original);
    }
    vault.restart().await;
    let report = verify(&mut vault.admin().await).await;
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
