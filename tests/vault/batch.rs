//! BatchGetRecords and BatchCreateRecords: each item answered as its single call would be, one
//! bad item failing alone, nothing half-written, idempotent repeats, and the audit trail of
//! every item.

use std::sync::{Arc, atomic::Ordering};

use strongroom::{
    api::pb::{self, batch_create_result, batch_get_result},
    domain::Clock,
    storage::{Keyspace, RocksStore, Store},
};
use tonic::Code;

use crate::support::*;

fn new_record(fields: Vec<pb::Field>) -> pb::CreateRecordRequest {
    pb::CreateRecordRequest {
        collection: "customers".into(),
        fields,
        honeytoken: false,
    }
}

async fn batch_create(
    client: &mut strongroom::client::Client,
    records: Vec<pb::CreateRecordRequest>,
    key: &str,
    validate_only: bool,
) -> Result<pb::BatchCreateRecordsResponse, tonic::Status> {
    client
        .records
        .batch_create_records(pb::BatchCreateRecordsRequest {
            records,
            idempotency_key: key.into(),
            validate_only,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn batch_get(
    client: &mut strongroom::client::Client,
    ids: &[&str],
    purpose: &str,
) -> Result<pb::BatchGetRecordsResponse, tonic::Status> {
    client
        .records
        .batch_get_records(pb::BatchGetRecordsRequest {
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            fields: vec![],
            purpose: purpose.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The id created, or the item's error.
fn created(r: &pb::BatchCreateResult) -> Result<&str, &pb::ItemError> {
    match r.result.as_ref().unwrap() {
        batch_create_result::Result::Created(c) => Ok(&c.id),
        batch_create_result::Result::Error(e) => Err(e),
    }
}

fn headers(store: &dyn Store) -> usize {
    store.scan_prefix(Keyspace::Headers, b"").unwrap().len()
}

#[tokio::test]
async fn batch_get_answers_each_id_as_get_does_and_fails_bad_ids_alone() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut support = vault.as_role("role:support").await;
    let mut auditor = vault.as_role("role:auditor").await;
    let a = create(&mut admin, customer("a")).await;
    let b = create(&mut admin, customer("b")).await;
    let gone = create(&mut admin, customer("gone")).await;
    admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: gone.clone(),
            wait_for_purge: false,
        })
        .await
        .unwrap();
    let unknown = "0123456789abcdef0123456789abcdef";
    let bad = "not-an-id 123-45-6789";

    let got = batch_get(&mut support, &[&a, bad, &gone, &b, unknown], "support")
        .await
        .unwrap();
    assert_eq!(got.results.len(), 5);
    for (i, id) in [(0, &a), (3, &b)] {
        let batch_get_result::Result::Record(r) = got.results[i].result.as_ref().unwrap() else {
            panic!("item {i}: {:?}", got.results[i]);
        };
        let single = get(&mut support, id, "support").await.unwrap();
        assert_eq!(r.id, *id);
        assert_eq!(view(r), view(&single), "item {i} reads as GetRecord does");
        assert_eq!(r.policy_version, single.policy_version);
    }
    for (i, code) in [
        (1, Code::InvalidArgument),
        (2, Code::NotFound),
        (4, Code::NotFound),
    ] {
        let batch_get_result::Result::Error(e) = got.results[i].result.as_ref().unwrap() else {
            panic!("item {i}: {:?}", got.results[i]);
        };
        assert_eq!(e.code, code as i32, "item {i}: {}", e.message);
        assert!(!e.message.contains("123-45-6789"), "{}", e.message);
    }
    let batch_get_result::Result::Error(e) = got.results[1].result.as_ref().unwrap() else {
        unreachable!()
    };
    assert!(e.message.starts_with("ids[1]"), "{}", e.message);

    // One read event per record read, and the failure of each id that failed, all under the
    // batch's method.
    let events = events_of(&mut auditor, "Records/BatchGetRecords").await;
    let ok: Vec<&str> = events
        .iter()
        .filter(|e| e.result == "OK")
        .map(|e| e.record_id.as_str())
        .collect();
    assert_eq!(ok, [a.as_str(), b.as_str()]);
    let failed: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.result != "OK")
        .map(|e| (e.record_id.as_str(), e.result.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            ("", "INVALID_ARGUMENT"),
            (gone.as_str(), "NOT_FOUND"),
            (unknown, "NOT_FOUND")
        ]
    );
    assert!(events.iter().all(|e| e.purpose == "support"));
}

#[tokio::test]
async fn batch_get_refuses_what_concerns_every_id() {
    let vault = Vault::start_configured("max_batch = 3\n", "", Clock::system()).await;
    let mut admin = vault.admin().await;
    let mut support = vault.as_role("role:support").await;
    let a = create(&mut admin, customer("a")).await;
    let status = assert_code(
        batch_get(&mut support, &[&a, &a, &a, &a], "support").await,
        Code::InvalidArgument,
    );
    assert_eq!(status.message(), "ids: 4 items, more than the limit of 3");
    let status = assert_code(
        batch_get(&mut support, &[&a, &a], "support").await,
        Code::InvalidArgument,
    );
    assert_eq!(status.message(), "ids[1]: given more than once");
    assert_code(
        batch_get(&mut support, &[&a], "no such purpose").await,
        Code::InvalidArgument,
    );
    let token = vault
        .token_with("svc:bound", &["role:support"], "", &["billing"])
        .await
        .unwrap()
        .token;
    let mut bound = vault.client(&token).await;
    assert_code(
        batch_get(&mut bound, &[&a], "support").await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn batch_create_writes_good_records_whole_and_refuses_bad_ones_alone() {
    let vault = Vault::start_shared().await;
    let mut writer = vault.as_role("role:writer").await;
    let mut support = vault.as_role("role:support").await;
    let mut auditor = vault.as_role("role:auditor").await;
    let before = headers(vault.store());
    let mut bad_email = customer("bad");
    bad_email[1].value = "123-45-6789 is no email".into();
    let mut honeytoken = new_record(customer("decoy"));
    honeytoken.honeytoken = true;
    let records = vec![
        new_record(customer("one")),
        new_record(bad_email),
        new_record(vec![
            field("name", "Unknown Field"),
            field("shoe_size", "9"),
        ]),
        honeytoken,
        new_record(customer("two")),
    ];
    let resp = batch_create(&mut writer, records, "", false).await.unwrap();
    assert!(!resp.replayed);
    let results: Vec<_> = resp.results.iter().map(created).collect();
    let one = results[0].unwrap().to_owned();
    let two = results[4].unwrap().to_owned();
    let e = results[1].unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(
        e.message.starts_with("records[1].fields[1] (email)"),
        "{}",
        e.message
    );
    assert!(!e.message.contains("123-45-6789"), "{}", e.message);
    let e = results[2].unwrap_err();
    assert_eq!(e.code, Code::InvalidArgument as i32);
    assert!(
        e.message.starts_with("records[2].fields[1]"),
        "{}",
        e.message
    );
    // Decoys take `honeytokens manage`, which writers lack: that record alone is refused.
    assert_eq!(results[3].unwrap_err().code, Code::PermissionDenied as i32);

    // Exactly the two good records were written, each whole.
    assert_eq!(headers(vault.store()), before + 2);
    for (id, tag) in [(&one, "one"), (&two, "two")] {
        let r = get(&mut support, id, "support").await.unwrap();
        assert_eq!(r.version, 1);
        assert_eq!(
            value_of(&r, "name").unwrap(),
            (
                format!("Ada {tag} Lovelace").as_str(),
                pb::Disclosure::Plain
            )
        );
        assert_eq!(stored(vault.store(), id).1.len(), 8, "every field stored");
    }
    let events = events_of(&mut auditor, "Records/BatchCreateRecords").await;
    let written: Vec<&str> = events
        .iter()
        .filter(|e| e.result == "OK")
        .map(|e| e.record_id.as_str())
        .collect();
    assert_eq!(written, [one.as_str(), two.as_str()]);
    let refused: Vec<&str> = events
        .iter()
        .filter(|e| e.result != "OK")
        .map(|e| e.result.as_str())
        .collect();
    assert_eq!(
        refused,
        ["INVALID_ARGUMENT", "INVALID_ARGUMENT", "PERMISSION_DENIED"]
    );
    assert!(events.iter().all(|e| !e.detail.contains("123-45-6789")));
}

#[tokio::test]
async fn validate_only_checks_every_record_and_writes_nothing() {
    let vault = Vault::start_shared().await;
    let mut writer = vault.as_role("role:writer").await;
    let before = headers(vault.store());
    let deks = || {
        vault
            .key_store()
            .scan_prefix(Keyspace::Deks, b"")
            .unwrap()
            .len()
    };
    let keys_before = deks();
    let mut bad = customer("bad");
    bad[4].value = "1815-13-45".into();
    let resp = batch_create(
        &mut writer,
        vec![new_record(customer("ok")), new_record(bad)],
        "",
        true,
    )
    .await
    .unwrap();
    let ok = resp.results[0].result.as_ref().unwrap();
    assert_eq!(
        *ok,
        batch_create_result::Result::Created(pb::CreateRecordResponse {
            id: String::new(),
            version: 0
        })
    );
    let e = created(&resp.results[1]).unwrap_err();
    assert!(
        e.message
            .starts_with("records[1].fields[4] (date_of_birth)"),
        "{}",
        e.message
    );
    assert_eq!(headers(vault.store()), before);
    assert_eq!(deks(), keys_before);
}

#[tokio::test]
async fn a_repeated_idempotent_batch_returns_the_first_results_and_creates_nothing() {
    let vault = Vault::start_shared().await;
    let mut writer = vault.as_role("role:writer").await;
    let other = vault.token("svc:other", &["role:writer"]).await;
    let mut other = vault.client(&other).await;
    let records = || {
        let mut bad = customer("bad");
        bad[1].value = "nope".into();
        vec![
            new_record(customer("one")),
            new_record(bad),
            new_record(customer("two")),
        ]
    };
    let first = batch_create(&mut writer, records(), "import:abc:0", false)
        .await
        .unwrap();
    let count = headers(vault.store());
    let again = batch_create(&mut writer, records(), "import:abc:0", false)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.results, first.results);
    assert_eq!(headers(vault.store()), count, "the repeat created nothing");

    // The same key with other records is refused, and creates nothing.
    let status = assert_code(
        batch_create(
            &mut writer,
            vec![new_record(customer("three"))],
            "import:abc:0",
            false,
        )
        .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("idempotency_key"));
    assert_eq!(headers(vault.store()), count);

    // Keys are the caller's own: another subject with the same key creates its records.
    let theirs = batch_create(&mut other, records(), "import:abc:0", false)
        .await
        .unwrap();
    assert!(!theirs.replayed);
    assert_ne!(created(&theirs.results[0]), created(&first.results[0]));
    assert_eq!(headers(vault.store()), count + 2);

    assert_code(
        batch_create(&mut writer, records(), "no spaces allowed", false).await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn the_repeat_of_a_batch_cut_off_by_a_restart_replays_it() {
    let mut vault = Vault::start().await;
    let token = vault.token("svc:importer", &["role:writer"]).await;
    let mut writer = vault.client(&token).await;
    let records = || vec![new_record(customer("one")), new_record(customer("two"))];
    let first = batch_create(&mut writer, records(), "import:f00d:0", false)
        .await
        .unwrap();
    // Restarted as after a crash of the importer's connection or of the vault.
    let count = vault.with_store(headers).await;
    let mut writer = vault.client(&token).await;
    let again = batch_create(&mut writer, records(), "import:f00d:0", false)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(again.results, first.results);
    assert_eq!(vault.with_store(headers).await, count);
}

#[tokio::test]
async fn a_batch_whose_write_fails_writes_none_of_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    let (_dir, running, token) = Vault::start_over(store.clone(), "").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let before = headers(&store.inner);
    store.fail_writes.store(true, Ordering::SeqCst);
    let records = (0..20)
        .map(|i| new_record(customer(&char::from(b'a' + i).to_string())))
        .collect();
    assert_code(
        batch_create(&mut admin, records, "", false).await,
        Code::Unavailable,
    );
    store.fail_writes.store(false, Ordering::SeqCst);
    assert_eq!(headers(&store.inner), before);
    assert!(
        store
            .inner
            .scan_prefix(Keyspace::Records, b"")
            .unwrap()
            .is_empty()
    );
    running.shutdown().await.unwrap();
}

/// Stored results go back only to a caller still allowed to create the records: the same
/// subject with a token of fewer roles gets PERMISSION_DENIED, not the first call's ids.
#[tokio::test]
async fn a_replay_is_refused_to_a_caller_who_may_no_longer_create_the_records() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let token = vault.token("svc:crm", &["role:writer"]).await;
    let mut writer = vault.client(&token).await;
    let records = || vec![new_record(customer("one"))];
    let first = batch_create(&mut writer, records(), "k1", false)
        .await
        .unwrap();
    assert!(created(&first.results[0]).is_ok());
    admin
        .tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            subject: "svc:crm".into(),
        })
        .await
        .unwrap();
    let token = vault.token("svc:crm", &["role:support"]).await;
    let mut support = vault.client(&token).await;
    let status = assert_code(
        batch_create(&mut support, records(), "k1", false).await,
        Code::PermissionDenied,
    );
    assert!(
        status.message().contains("not replayed"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_duplicate_id_is_named_by_its_place_in_the_request() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut support = vault.as_role("role:support").await;
    let a = create(&mut admin, customer("a")).await;
    let status = assert_code(
        batch_get(&mut support, &["nope", &a, &a], "support").await,
        Code::InvalidArgument,
    );
    assert_eq!(status.message(), "ids[2]: given more than once");
}

/// After seven days the retention sweep forgets a key's results: the same key then creates
/// anew.
#[tokio::test]
async fn the_retention_sweep_forgets_idempotency_keys_after_seven_days() {
    const T0: i64 = 1_800_000_000_000;
    let mut vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let stored = |s: &dyn Store| {
        s.scan_prefix(Keyspace::Meta, b"idempotency/")
            .unwrap()
            .len()
    };
    let mut admin = vault.admin().await;
    let mut writer = vault.as_role("role:writer").await;
    let records = || vec![new_record(customer("one"))];
    let first = batch_create(&mut writer, records(), "k7", false)
        .await
        .unwrap();
    let sweep = |admin: &mut strongroom::client::Client| {
        let mut admin = admin.clone();
        async move {
            admin
                .retention
                .run_retention(pb::RunRetentionRequest::default())
                .await
                .unwrap();
        }
    };
    // Six days on, the sweep keeps it and a repeat replays.
    vault
        .clock
        .advance(std::time::Duration::from_secs(6 * 86_400));
    sweep(&mut admin).await;
    let again = batch_create(&mut writer, records(), "k7", false)
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(vault.with_store(stored).await, 1);
    // Past seven days the sweep forgets it, and the same key creates a new record.
    let mut admin = vault.admin().await;
    vault
        .clock
        .advance(std::time::Duration::from_secs(2 * 86_400));
    sweep(&mut admin).await;
    assert_eq!(vault.with_store(stored).await, 0, "the sweep forgot it");
    let mut writer = vault.as_role("role:writer").await;
    let late = batch_create(&mut writer, records(), "k7", false)
        .await
        .unwrap();
    assert!(!late.replayed);
    assert_ne!(created(&late.results[0]), created(&first.results[0]));
}

/// A request limit bounds records per second however they are asked for: a batch costs one
/// request per item.
#[tokio::test]
async fn a_batch_counts_each_item_against_the_request_limit() {
    let vault = Vault::start_configured(
        "[rate_limits.\"svc:bulk\"]\nrequests_per_second = 10\n",
        "",
        Clock::system(),
    )
    .await;
    let mut admin = vault.admin().await;
    let token = vault.token("svc:bulk", &["role:support"]).await;
    let mut bulk = vault.client(&token).await;
    let mut ids = Vec::new();
    for tag in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"] {
        ids.push(create(&mut admin, customer(tag)).await);
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let status = assert_code(
        batch_get(&mut bulk, &ids, "support").await,
        Code::ResourceExhausted,
    );
    assert!(
        status
            .message()
            .contains("a batch counts each of its items"),
        "{}",
        status.message()
    );
    // A batch within the limit passes (in a later second if this one is spent).
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let got = batch_get(&mut bulk, &ids[..5], "support").await.unwrap();
    assert_eq!(got.results.len(), 5);
}
