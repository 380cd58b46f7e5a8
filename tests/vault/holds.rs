//! Legal holds (issue 12, point 4), through the real server with a manual clock: a held record
//! refuses its shred and its erasure (FAILED_PRECONDITION naming the hold, audited), reads go
//! on, a release or the hold's end lets the shred through, and the reason never leaves the
//! vault's store.

use std::time::Duration;

use strongroom::{
    api::pb,
    client::Client,
    crypto::PublicKey,
    domain::Clock,
    storage::Keyspace,
    vault::{
        receipt::{self, SignedReceipt},
        subject::ErasureDocument,
    },
};
use tonic::Code;

use crate::support::{Vault, assert_code, create, customer, events_of, get};

/// 2027-01-15T08:00:00Z: the manual clock's start.
const T0: i64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);
/// A reason that names a case, as a privacy officer would write it.
const REASON: &str = "Litigation hold: Smith v. Acme, case 4711-ZQ";

async fn manual() -> Vault {
    Vault::start_with_clock(Clock::manual(T0)).await
}

async fn place(
    c: &mut Client,
    id: &str,
    reason: &str,
    until_unix_ms: i64,
) -> Result<pb::LegalHold, tonic::Status> {
    c.holds
        .place_hold(pb::PlaceHoldRequest {
            record_id: id.into(),
            reason: reason.into(),
            until_unix_ms,
        })
        .await
        .map(|r| r.into_inner().hold.unwrap())
}

async fn release(c: &mut Client, id: &str, hold: &str) -> Result<pb::LegalHold, tonic::Status> {
    c.holds
        .release_hold(pb::ReleaseHoldRequest {
            record_id: id.into(),
            hold_id: hold.into(),
        })
        .await
        .map(|r| r.into_inner().hold.unwrap())
}

async fn list(
    c: &mut Client,
    record_id: &str,
    include_inactive: bool,
    limit: u32,
    after: &str,
) -> Result<pb::ListHoldsResponse, tonic::Status> {
    c.holds
        .list_holds(pb::ListHoldsRequest {
            record_id: record_id.into(),
            include_inactive,
            limit,
            after_record_id: after.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `(record id, hold id, active, released)` of each listed hold.
fn listed(r: &pb::ListHoldsResponse) -> Vec<(String, String, bool, bool)> {
    r.holds
        .iter()
        .map(|h| {
            (
                h.record_id.clone(),
                h.hold_id.clone(),
                h.active,
                !h.released_by.is_empty(),
            )
        })
        .collect()
}

async fn delete(c: &mut Client, id: &str) -> Result<pb::DeleteRecordResponse, tonic::Status> {
    c.records
        .delete_record(pb::DeleteRecordRequest {
            id: id.into(),
            wait_for_purge: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn update_notes(
    c: &mut Client,
    id: &str,
    notes: &str,
) -> Result<pb::UpdateRecordResponse, tonic::Status> {
    c.records
        .update_record(pb::UpdateRecordRequest {
            id: id.into(),
            set: vec![crate::support::field("notes", notes)],
            clear: vec![],
            expected_version: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn erase(c: &mut Client, ids: &[&str]) -> pb::EraseSubjectResponse {
    c.records
        .erase_subject(pb::EraseSubjectRequest {
            subject: Some(pb::erase_subject_request::Subject::RecordIds(
                pb::RecordIds {
                    ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                },
            )),
            wait_for_purge: false,
        })
        .await
        .unwrap()
        .into_inner()
}

async fn public_key(c: &mut Client) -> PublicKey {
    let pem = c
        .keys
        .get_public_key(pb::GetPublicKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pem;
    PublicKey::from_pem(&pem).unwrap()
}

#[tokio::test]
async fn a_held_record_refuses_shred_and_erasure_until_released_and_the_refusals_are_audited() {
    let mut vault = manual().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let id = create(&mut admin, customer("held")).await;
    let free = create(&mut admin, customer("free")).await;

    let hold = place(&mut officer, &id, REASON, 0).await.unwrap();
    assert_eq!(hold.hold_id, "h1");
    assert_eq!(hold.record_id, id);
    assert_eq!(hold.placed_by, "svc:privacy_officer");
    assert_eq!(hold.placed_at_unix_ms, T0);
    assert_eq!(hold.until_unix_ms, 0);
    assert_eq!(hold.reason, REASON);
    assert!(hold.active);

    // DeleteRecord: refused, naming the hold, its placer and time, not its reason.
    let refused = assert_code(delete(&mut admin, &id).await, Code::FailedPrecondition);
    let msg = refused.message();
    assert!(msg.contains("legal hold h1"), "{msg}");
    assert!(msg.contains("svc:privacy_officer"), "{msg}");
    assert!(msg.contains("2027-01-15T08:00:00Z"), "{msg}");
    assert!(!msg.contains("Smith") && !msg.contains("4711"), "{msg}");
    // The privacy officer's own shred too.
    assert_code(delete(&mut officer, &id).await, Code::FailedPrecondition);
    // Reads go on; an update, which would destroy the old version's data key, is refused,
    // and the held version reads as it was.
    let before = get(&mut admin, &id, "support").await.unwrap();
    let refused = assert_code(
        update_notes(&mut admin, &id, "overwritten while held").await,
        Code::FailedPrecondition,
    );
    assert!(
        refused.message().contains("legal hold h1"),
        "{}",
        refused.message()
    );
    assert!(
        refused.message().contains("update"),
        "{}",
        refused.message()
    );
    assert!(!refused.message().contains("overwritten"));
    let after = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(after.version, before.version);
    assert_eq!(after.fields, before.fields);

    // EraseSubject: the held record is listed as not erased, with the hold named, in the
    // answer and in the signed receipt; the other record is erased.
    let public = public_key(&mut officer).await;
    let reply = erase(&mut officer, &[&id, &free]).await;
    let erased: Vec<&str> = reply.erased.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(erased, [free.as_str()]);
    assert_eq!(reply.not_erased.len(), 1);
    assert_eq!(reply.not_erased[0].id, id);
    assert!(
        reply.not_erased[0].reason.contains("legal hold h1"),
        "{}",
        reply.not_erased[0].reason
    );
    assert!(!reply.not_erased[0].reason.contains("Smith"));
    let file = SignedReceipt {
        document: reply.signed_document.clone(),
        signature: reply.signature.clone(),
    }
    .file_text_for::<ErasureDocument>();
    let doc = receipt::verify_document::<ErasureDocument>(file.as_bytes(), &public).unwrap();
    assert_eq!(doc.not_erased.len(), 1);
    assert_eq!(doc.not_erased[0].record_id, id);
    assert!(doc.not_erased[0].reason.contains("legal hold h1"));
    get(&mut admin, &id, "support").await.unwrap();

    // The refusals are in the log with their code and the hold, without the reason.
    let deletes = events_of(&mut admin, "Records/DeleteRecord").await;
    let refusals: Vec<_> = deletes
        .iter()
        .filter(|e| e.record_id == id && e.result == "FAILED_PRECONDITION")
        .collect();
    assert_eq!(refusals.len(), 2, "{deletes:?}");
    assert!(refusals.iter().all(|e| e.detail.contains("legal hold h1")));
    let erasures = events_of(&mut admin, "Records/EraseSubject").await;
    let refused: Vec<_> = erasures.iter().filter(|e| e.record_id == id).collect();
    assert_eq!(refused.len(), 1, "{erasures:?}");
    assert_eq!(refused[0].result, "FAILED_PRECONDITION");
    assert!(refused[0].detail.contains("legal hold h1"));
    let placed = events_of(&mut admin, "Holds/PlaceHold").await;
    assert_eq!(placed.len(), 1);
    assert_eq!(
        (
            placed[0].record_id.as_str(),
            placed[0].result.as_str(),
            placed[0].collection.as_str()
        ),
        (id.as_str(), "OK", "customers")
    );
    assert_eq!(placed[0].detail, "hold h1 placed, until released");

    let updates = events_of(&mut admin, "Records/UpdateRecord").await;
    assert_eq!(
        updates
            .iter()
            .map(|e| (e.record_id.as_str(), e.result.as_str()))
            .collect::<Vec<_>>(),
        [(id.as_str(), "FAILED_PRECONDITION")]
    );
    assert!(updates[0].detail.contains("legal hold h1"));

    // Released: the hold stays in the history, and the update and the shred work as usual.
    let released = release(&mut officer, &id, "h1").await.unwrap();
    assert_eq!(released.released_by, "svc:privacy_officer");
    assert_eq!(released.released_at_unix_ms, T0);
    assert!(!released.active);
    let again = assert_code(
        release(&mut officer, &id, "h1").await,
        Code::FailedPrecondition,
    );
    assert!(again.message().contains("already released"));
    assert_code(release(&mut officer, &id, "h2").await, Code::NotFound);
    update_notes(&mut admin, &id, "after the release")
        .await
        .unwrap();
    let receipt = delete(&mut admin, &id).await.unwrap().receipt.unwrap();
    assert_eq!(receipt.id, id);
    assert_code(get(&mut admin, &id, "support").await, Code::NotFound);
    let history = list(&mut officer, &id, true, 0, "").await.unwrap();
    assert_eq!(listed(&history), [(id.clone(), "h1".into(), false, true)]);
    let releases = events_of(&mut admin, "Holds/ReleaseHold").await;
    assert_eq!(
        releases
            .iter()
            .map(|e| e.result.as_str())
            .collect::<Vec<_>>(),
        ["OK", "FAILED_PRECONDITION", "NOT_FOUND"]
    );
    assert_eq!(
        releases[0].detail,
        "hold h1 released (it was until released)"
    );

    // The reason is nowhere in the log's stored bytes; it is in the holds' own entry.
    let meta = vault
        .with_store(|store| -> Vec<u8> {
            store
                .scan_prefix(Keyspace::Meta, b"")
                .unwrap()
                .into_iter()
                .flat_map(|(k, v)| k.into_iter().chain(v))
                .collect()
        })
        .await;
    let audit: Vec<u8> = vault
        .audit_entries()
        .await
        .into_iter()
        .flat_map(|(_, v)| v)
        .collect();
    let contains =
        |hay: &[u8], needle: &str| hay.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(audit.len() > 1000);
    assert!(contains(&audit, "legal hold h1"), "the refusals are logged");
    assert!(!contains(&audit, "4711-ZQ") && !contains(&audit, "Smith"));
    assert!(contains(&meta, "4711-ZQ"), "the reason is kept");
}

#[tokio::test]
async fn a_hold_placed_while_a_shred_races_either_blocks_it_or_finds_no_record() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let officer = vault.as_role("role:privacy_officer").await;
    let mut ids = Vec::new();
    for tag in b'a'..b'a' + 24 {
        let tag = format!("race{}", char::from(tag));
        ids.push(create(&mut admin, customer(&tag)).await);
    }
    let mut tasks = Vec::new();
    for id in ids {
        let (mut a, mut o) = (admin.clone(), officer.clone());
        tasks.push(tokio::spawn(async move {
            let (shred, hold) = tokio::join!(delete(&mut a, &id), place(&mut o, &id, REASON, 0));
            (shred.map_err(|s| s.code()), hold.map_err(|s| s.code()))
        }));
    }
    let (mut held, mut shredded) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            // The hold came first: the shred saw it under the record lock.
            (Err(Code::FailedPrecondition), Ok(_)) => held += 1,
            // The shred came first: there was no record left to hold.
            (Ok(_), Err(Code::NotFound)) => shredded += 1,
            other => panic!("a hold and a shred both took effect, or neither: {other:?}"),
        }
    }
    assert_eq!(held + shredded, 24);
}

#[tokio::test]
async fn a_hold_with_an_end_blocks_until_the_vault_clock_reaches_it() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let id = create(&mut admin, customer("until")).await;

    // An end not in the future is refused, naming the vault's time, not the caller's.
    for until in [T0, T0 - 1, 1] {
        let e = assert_code(
            place(&mut officer, &id, REASON, until).await,
            Code::InvalidArgument,
        );
        assert!(e.message().contains("until"), "{}", e.message());
        assert!(
            e.message().contains("2027-01-15T08:00:00Z"),
            "{}",
            e.message()
        );
    }
    let until = T0 + 3_600_000;
    let hold = place(&mut officer, &id, REASON, until).await.unwrap();
    assert_eq!(hold.until_unix_ms, until);
    let placed = events_of(&mut admin, "Holds/PlaceHold").await;
    let ok: Vec<_> = placed.iter().filter(|e| e.result == "OK").collect();
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].detail, "hold h1 placed, until 2027-01-15T09:00:00Z");

    // One millisecond before its end: still in force.
    vault.clock.advance(HOUR - Duration::from_millis(1));
    let e = assert_code(delete(&mut admin, &id).await, Code::FailedPrecondition);
    assert!(
        e.message().contains("until 2027-01-15T09:00:00Z"),
        "{}",
        e.message()
    );
    assert_eq!(
        listed(&list(&mut officer, "", false, 0, "").await.unwrap()).len(),
        1
    );
    // At its end: no longer listed as in force, listed as ended with --all, and the shred
    // goes through.
    vault.clock.advance(Duration::from_millis(1));
    assert!(
        list(&mut officer, "", false, 0, "")
            .await
            .unwrap()
            .holds
            .is_empty()
    );
    assert_eq!(
        listed(&list(&mut officer, "", true, 0, "").await.unwrap()),
        [(id.clone(), "h1".into(), false, false)]
    );
    delete(&mut admin, &id).await.unwrap();
}

#[tokio::test]
async fn list_shows_holds_in_force_and_with_include_inactive_the_released_ones_page_by_page() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let mut ids = Vec::new();
    for tag in ["lista", "listb", "listc"] {
        ids.push(create(&mut admin, customer(tag)).await);
    }
    ids.sort();
    let (a, b, c) = (ids[0].clone(), ids[1].clone(), ids[2].clone());
    place(&mut officer, &a, REASON, 0).await.unwrap();
    place(&mut officer, &b, "first matter", 0).await.unwrap();
    let second = place(&mut admin, &b, "second matter", 0).await.unwrap();
    assert_eq!(second.hold_id, "h2", "numbered within the record");
    release(&mut officer, &b, "h1").await.unwrap();
    // `c` has no hold: never listed.
    let _ = &c;

    let active = list(&mut officer, "", false, 0, "").await.unwrap();
    assert_eq!(
        listed(&active),
        [
            (a.clone(), "h1".into(), true, false),
            (b.clone(), "h2".into(), true, false)
        ]
    );
    assert!(active.next_after_record_id.is_empty());
    let all = list(&mut officer, "", true, 0, "").await.unwrap();
    assert_eq!(
        listed(&all),
        [
            (a.clone(), "h1".into(), true, false),
            (b.clone(), "h1".into(), false, true),
            (b.clone(), "h2".into(), true, false)
        ]
    );
    assert_eq!(all.holds[1].reason, "first matter");
    assert_eq!(all.holds[2].placed_by, "user:admin");
    // One record's holds.
    let of_b = list(&mut officer, &b, true, 0, "").await.unwrap();
    assert_eq!(of_b.holds.len(), 2);
    assert!(
        list(&mut officer, &c, true, 0, "")
            .await
            .unwrap()
            .holds
            .is_empty()
    );
    // A page of one record at a time walks the same list.
    let mut pages = Vec::new();
    let mut after = String::new();
    loop {
        let page = list(&mut officer, "", true, 1, &after).await.unwrap();
        pages.extend(listed(&page));
        if page.next_after_record_id.is_empty() {
            break;
        }
        after = page.next_after_record_id;
    }
    assert_eq!(pages, listed(&all));
    assert_code(
        list(&mut officer, "", true, 1001, "").await,
        Code::InvalidArgument,
    );
    // Each list is an audit event.
    let lists = events_of(&mut admin, "Holds/ListHolds").await;
    assert!(lists.iter().filter(|e| e.result == "OK").count() >= 5);
}

#[tokio::test]
async fn only_holders_of_holds_manage_place_release_or_list() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("roles")).await;
    place(&mut admin, &id, REASON, 0).await.unwrap();
    for role in ["role:support", "role:auditor", "role:writer"] {
        let mut c = vault.as_role(role).await;
        let e = assert_code(place(&mut c, &id, REASON, 0).await, Code::PermissionDenied);
        assert!(e.message().contains("holds manage"), "{}", e.message());
        assert_code(release(&mut c, &id, "h1").await, Code::PermissionDenied);
        assert_code(list(&mut c, "", false, 0, "").await, Code::PermissionDenied);
    }
    // The same answer for a record that does not exist: no probing of ids.
    let mut support = vault.as_role("role:support").await;
    assert_code(
        place(&mut support, &"0".repeat(32), REASON, 0).await,
        Code::PermissionDenied,
    );
    // Nothing changed.
    let all = list(&mut admin, "", true, 0, "").await.unwrap();
    assert_eq!(listed(&all), [(id.clone(), "h1".into(), true, false)]);
    let refused = events_of(&mut admin, "Holds/PlaceHold").await;
    assert_eq!(
        refused
            .iter()
            .filter(|e| e.result == "PERMISSION_DENIED")
            .count(),
        4
    );
}

#[tokio::test]
async fn bad_inputs_are_invalid_arguments_that_echo_nothing() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let id = create(&mut admin, customer("bad")).await;
    let long = format!("SSN 123-45-6789 {}", "x".repeat(200));
    for (record_id, reason, until, field) in [
        (id.as_str(), "", 0, "reason"),
        (id.as_str(), "   ", 0, "reason"),
        (id.as_str(), long.as_str(), 0, "reason"),
        (id.as_str(), "SSN 123-45-6789\nnext line", 0, "reason"),
        (id.as_str(), REASON, -5, "until_unix_ms"),
        ("123-45-6789", REASON, 0, "record_id"),
        ("", REASON, 0, "record_id"),
    ] {
        let e = assert_code(
            place(&mut officer, record_id, reason, until).await,
            Code::InvalidArgument,
        );
        let msg = e.message();
        assert!(msg.starts_with(field), "{msg}");
        assert!(
            !msg.contains("123-45-6789") && !msg.contains("Smith"),
            "{msg}"
        );
    }
    for (hold_id, field) in [
        ("h0", "hold_id"),
        ("123-45-6789", "hold_id"),
        ("", "hold_id"),
    ] {
        let e = assert_code(
            release(&mut officer, &id, hold_id).await,
            Code::InvalidArgument,
        );
        assert!(e.message().starts_with(field), "{}", e.message());
        assert!(!e.message().contains("123-45-6789"));
    }
    assert_code(
        list(&mut officer, "123-45-6789", false, 0, "").await,
        Code::InvalidArgument,
    );
    // Nothing placed, and none of it in the log.
    assert!(
        list(&mut officer, "", true, 0, "")
            .await
            .unwrap()
            .holds
            .is_empty()
    );
    let events = events_of(&mut admin, "Holds/PlaceHold").await;
    assert_eq!(events.len(), 7);
    for e in &events {
        assert_eq!(e.result, "INVALID_ARGUMENT");
        assert!(!e.detail.contains("123-45-6789") && !e.detail.contains("Smith"));
    }
}

#[tokio::test]
async fn holds_on_unknown_or_shredded_records_are_not_found() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let id = create(&mut admin, customer("gone")).await;
    delete(&mut admin, &id).await.unwrap();
    assert_code(place(&mut officer, &id, REASON, 0).await, Code::NotFound);
    assert_code(
        place(&mut officer, &"ab".repeat(16), REASON, 0).await,
        Code::NotFound,
    );
    assert!(
        list(&mut officer, "", true, 0, "")
            .await
            .unwrap()
            .holds
            .is_empty()
    );
}

#[tokio::test]
async fn a_hold_survives_a_restart() {
    let mut vault = manual().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("restart")).await;
    place(&mut admin, &id, REASON, 0).await.unwrap();
    vault.restart().await;
    let mut admin = vault.admin().await;
    assert_code(delete(&mut admin, &id).await, Code::FailedPrecondition);
    get(&mut admin, &id, "support").await.unwrap();
}
