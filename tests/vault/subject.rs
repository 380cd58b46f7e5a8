//! Subject rights: the signed subject-access export and erasure, through the real server.

use std::collections::BTreeSet;

use strongroom::{
    api::pb,
    crypto::PublicKey,
    vault::{
        receipt::{self, SignedReceipt},
        subject::{ErasureDocument, ExportDocument},
    },
};
use tonic::Code;

use crate::support::*;

async fn export(
    client: &mut strongroom::client::Client,
    subject: pb::export_subject_request::Subject,
) -> Result<pb::ExportSubjectResponse, tonic::Status> {
    client
        .records
        .export_subject(pb::ExportSubjectRequest {
            subject: Some(subject),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn export_id(
    client: &mut strongroom::client::Client,
    id: &str,
) -> Result<pb::ExportSubjectResponse, tonic::Status> {
    export(
        client,
        pb::export_subject_request::Subject::RecordId(id.into()),
    )
    .await
}

async fn public_key(client: &mut strongroom::client::Client) -> PublicKey {
    let pem = client
        .keys
        .get_public_key(pb::GetPublicKeyRequest::default())
        .await
        .unwrap()
        .into_inner()
        .pem;
    PublicKey::from_pem(&pem).unwrap()
}

/// The export file as `strongroom subject export --out` writes it.
fn export_file(reply: &pb::ExportSubjectResponse) -> String {
    SignedReceipt {
        document: reply.document.clone(),
        signature: reply.signature.clone(),
    }
    .file_text_for::<ExportDocument>()
}

fn outcomes(fields: &[strongroom::vault::subject::ExportedOutcome]) -> BTreeSet<(String, String)> {
    fields
        .iter()
        .map(|f| (f.field.clone(), f.outcome.clone()))
        .collect()
}

fn event_outcomes(e: &pb::AuditEvent) -> BTreeSet<(String, String)> {
    e.fields
        .iter()
        .map(|f| (f.field.clone(), f.outcome.clone()))
        .collect()
}

fn record_filter(id: &str) -> pb::EventFilter {
    pb::EventFilter {
        record_id: id.into(),
        ..pb::EventFilter::default()
    }
}

#[tokio::test]
async fn an_export_holds_the_record_its_history_and_exactly_the_earlier_accesses() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut writer = vault.as_role("role:writer").await;
    let mut support = vault.as_role("role:support").await;
    let mut billing = vault.as_role("role:billing").await;
    let mut officer = vault.as_role("role:privacy_officer").await;

    let id = create(
        &mut writer,
        vec![
            field("name", "Grace Hopper"),
            field("email", "grace@example.com"),
            field("notes", "old note: call after 5pm"),
        ],
    )
    .await;
    writer
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("phone", "+12025550143")],
            clear: vec!["notes".into()],
            expected_version: None,
        })
        .await
        .unwrap();
    let masked = get(&mut support, &id, "support").await.unwrap();
    assert_eq!(
        value_of(&masked, "email").map(|(_, d)| d),
        Some(pb::Disclosure::Masked)
    );
    get(&mut billing, &id, "billing").await.unwrap();
    // Another customer's record and its read: not in this export.
    let other = create(&mut writer, customer("other")).await;
    get(&mut support, &other, "support").await.unwrap();

    let before = events(&mut admin, record_filter(&id)).await;
    let reply = export_id(&mut officer, &id).await.unwrap();
    assert_eq!(reply.record_ids, vec![id.clone()]);
    let doc: ExportDocument = serde_json::from_str(&reply.document).unwrap();
    assert_eq!(doc.format, "strongroom.subject-export.v1");
    assert_eq!(doc.purpose, "subject_access");
    assert_eq!(doc.exported_by, "svc:privacy_officer");
    assert_eq!(doc.records.len(), 1);
    let record = &doc.records[0];
    assert_eq!((record.id.as_str(), record.version), (id.as_str(), 2));
    // Exactly the fields it holds, in plaintext.
    let fields: Vec<(&str, &str)> = record
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.value.as_str()))
        .collect();
    assert_eq!(
        fields,
        [
            ("name", "Grace Hopper"),
            ("email", "grace@example.com"),
            ("phone", "+12025550143")
        ]
    );
    // The history: the creation and the update, with their times, and no old value.
    let writes: Vec<&pb::AuditEvent> = before
        .iter()
        .filter(|e| e.method != "Records/GetRecord")
        .collect();
    assert_eq!(record.history.len(), 2, "{:?}", record.history);
    for (entry, event) in record.history.iter().zip(&writes) {
        assert_eq!(
            (entry.seq, entry.time_ms, entry.method.as_str()),
            (event.seq, event.time_unix_ms, event.method.as_str())
        );
        assert_eq!(entry.subject, "svc:writer");
    }
    assert_eq!(record.history[0].method, "Records/CreateRecord");
    let set = |pairs: &[(&str, &str)]| -> BTreeSet<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    };
    assert_eq!(
        outcomes(&record.history[0].fields),
        set(&[
            ("name", "written"),
            ("email", "written"),
            ("notes", "written")
        ])
    );
    assert_eq!(record.history[1].method, "Records/UpdateRecord");
    assert_eq!(
        outcomes(&record.history[1].fields),
        set(&[("phone", "written"), ("notes", "cleared")])
    );
    assert!(!reply.document.contains("old note"), "an old value leaked");
    // Exactly the two reads made before, as the log recorded them, and no others.
    let reads: Vec<&pb::AuditEvent> = before
        .iter()
        .filter(|e| e.method == "Records/GetRecord")
        .collect();
    assert_eq!(reads.len(), 2);
    assert_eq!(record.accesses.len(), 2, "{:?}", record.accesses);
    for (access, event) in record.accesses.iter().zip(&reads) {
        assert_eq!(
            (access.seq, access.time_ms, access.result.as_str()),
            (event.seq, event.time_unix_ms, "OK")
        );
        assert_eq!(
            (&access.subject, &access.roles, &access.purpose),
            (&event.subject, &event.roles, &event.purpose)
        );
        assert_eq!(outcomes(&access.fields), event_outcomes(event));
    }
    assert_eq!(
        (
            record.accesses[0].subject.as_str(),
            record.accesses[0].purpose.as_str()
        ),
        ("svc:support", "support")
    );
    assert!(
        record.accesses[0]
            .fields
            .iter()
            .any(|f| f.field == "email" && f.outcome == "masked")
    );
    assert!(
        record.accesses[0]
            .fields
            .iter()
            .any(|f| f.field == "ssn" && f.outcome == "withheld")
    );
    assert_eq!(
        (
            record.accesses[1].subject.as_str(),
            record.accesses[1].purpose.as_str()
        ),
        ("svc:billing", "billing")
    );
    assert!(record.consents.is_empty() && record.holds.is_empty());

    // The signature verifies offline with the public key alone, and fails after one byte of
    // the document changes.
    let public = public_key(&mut support).await;
    assert_eq!(doc.signing_key, public.fingerprint());
    assert_eq!(doc.public_key, hex::encode(public.0));
    let file = export_file(&reply);
    let verified = receipt::verify_document::<ExportDocument>(file.as_bytes(), &public).unwrap();
    assert_eq!(verified, doc);
    let at = file.find("Grace Hopper").unwrap();
    let mut flipped = file.clone().into_bytes();
    flipped[at] ^= 0x20;
    assert!(matches!(
        receipt::verify_document::<ExportDocument>(&flipped, &public),
        Err(receipt::ReceiptError::BadSignature(_))
    ));
    let mut bad_sig = file.clone().into_bytes();
    let sig_at = file.rfind("\"signature\":\"").unwrap() + 14;
    bad_sig[sig_at] = if bad_sig[sig_at] == b'0' { b'1' } else { b'0' };
    assert!(receipt::verify_document::<ExportDocument>(&bad_sig, &public).is_err());
    // A receipt verifier does not take an export for a receipt.
    assert!(receipt::verify(file.as_bytes(), &public).is_err());

    // The export is itself an audited read: one event, every held field plain, for
    // subject_access; and it appears in the next export.
    let exports = events(
        &mut admin,
        pb::EventFilter {
            record_id: id.clone(),
            method: "Records/ExportSubject".into(),
            ..pb::EventFilter::default()
        },
    )
    .await;
    assert_eq!(exports.len(), 1);
    assert_eq!(exports[0].purpose, "subject_access");
    assert_eq!(exports[0].result, "OK");
    let plain: BTreeSet<String> = exports[0]
        .fields
        .iter()
        .filter(|f| f.outcome == "plain")
        .map(|f| f.field.clone())
        .collect();
    assert_eq!(plain.len(), 8, "every declared field decided plain");
    let again = export_id(&mut officer, &id).await.unwrap();
    let doc2: ExportDocument = serde_json::from_str(&again.document).unwrap();
    let accesses = &doc2.records[0].accesses;
    assert_eq!(accesses.len(), 3);
    assert_eq!(
        (accesses[2].seq, accesses[2].method.as_str()),
        (exports[0].seq, "Records/ExportSubject")
    );
}

// Issue 12: the export carries the consent ledger (consents and opt-outs, each change with
// its source and evidence hash) and the record's legal holds, without the hold's reason.
#[tokio::test]
async fn an_export_holds_the_consent_ledger_opt_outs_and_holds_without_the_hold_reason() {
    let vault = Vault::start().await;
    let mut writer = vault.as_role("role:writer").await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let id = create(
        &mut writer,
        vec![
            field("name", "Grace Hopper"),
            field("phone", "+12025550143"),
        ],
    )
    .await;
    let evidence = "ab".repeat(32);
    let changes = [
        (
            pb::set_consent_request::Change::Consent(pb::ConsentChange {
                purpose: "telemarketing".into(),
                channel: "autodialer".into(),
                granted: true,
            }),
            "webform:8812",
            evidence.as_str(),
        ),
        (
            pb::set_consent_request::Change::Consent(pb::ConsentChange {
                purpose: "telemarketing".into(),
                channel: "autodialer".into(),
                granted: false,
            }),
            "call:rec-4411",
            "",
        ),
        (
            pb::set_consent_request::Change::OptOut(pb::OptOutChange {
                flag: "do_not_sell_or_share".into(),
                set: true,
            }),
            "agent:jdoe",
            "",
        ),
    ];
    for (change, source, evidence) in changes {
        writer
            .consent
            .set_consent(pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(change),
                source: source.into(),
                evidence_sha256: evidence.into(),
            })
            .await
            .unwrap();
    }
    let reason = "Matter 2026-17 Hopper v. Acme";
    officer
        .holds
        .place_hold(pb::PlaceHoldRequest {
            record_id: id.clone(),
            reason: reason.into(),
            until_unix_ms: 0,
        })
        .await
        .unwrap();

    let reply = export_id(&mut officer, &id).await.unwrap();
    let doc: ExportDocument = serde_json::from_str(&reply.document).unwrap();
    let record = &doc.records[0];
    let ledger = serde_json::to_value(&record.consents).unwrap();
    assert_eq!(ledger.as_array().unwrap().len(), 3, "{ledger}");
    let summary: Vec<(String, String, String)> = ledger
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["source"].as_str().unwrap().to_owned(),
                e["evidence_sha256"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("consent".into(), "webform:8812".into(), evidence.clone()),
            ("consent".into(), "call:rec-4411".into(), String::new()),
            ("opt_out".into(), "agent:jdoe".into(), String::new()),
        ]
    );
    assert_eq!(
        (
            ledger[0]["granted"].as_bool(),
            ledger[1]["granted"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert_eq!(
        (ledger[2]["flag"].as_str(), ledger[2]["set"].as_bool()),
        (Some("do_not_sell_or_share"), Some(true))
    );
    assert_eq!(record.holds.len(), 1);
    let hold = &record.holds[0];
    assert_eq!(
        (
            hold.id.as_str(),
            hold.active,
            hold.until_ms,
            hold.released_at_ms
        ),
        ("h1", true, None, None)
    );
    assert!(hold.placed_by.starts_with("svc:"), "{}", hold.placed_by);
    let text = reply.document.as_str();
    assert!(!text.contains("Hopper v. Acme"), "the hold's reason leaked");
    // The whole document, ledger and holds included, is what the signature covers.
    let public = public_key(&mut officer).await;
    let file = export_file(&reply);
    receipt::verify_document::<ExportDocument>(file.as_bytes(), &public).unwrap();
    let at = file.find("call:rec-4411").unwrap();
    let mut flipped = file.into_bytes();
    flipped[at] ^= 0x01;
    assert!(receipt::verify_document::<ExportDocument>(&flipped, &public).is_err());
}

#[tokio::test]
async fn a_caller_without_plaintext_subject_access_is_refused_and_audited() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut support = vault.as_role("role:support").await;
    let id = create(&mut admin, customer("refused")).await;

    let status = assert_code(export_id(&mut support, &id).await, Code::PermissionDenied);
    assert!(
        status.message().contains("subject-access"),
        "{}",
        status.message()
    );
    // The same answer for an id that does not exist: no oracle.
    assert_code(
        export_id(&mut support, "00000000000000000000000000000000").await,
        Code::PermissionDenied,
    );
    let refused = events(
        &mut admin,
        pb::EventFilter {
            method: "Records/ExportSubject".into(),
            ..pb::EventFilter::default()
        },
    )
    .await;
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|e| e.result == "PERMISSION_DENIED"
        && e.subject == "svc:support"
        && e.purpose == "subject_access"
        && e.fields.is_empty()));
    assert_eq!(refused[0].record_id, id);

    // A privacy officer gets NOT_FOUND for an unknown id, and for a lookup matching nothing.
    let mut officer = vault.as_role("role:privacy_officer").await;
    assert_code(
        export_id(&mut officer, "00000000000000000000000000000000").await,
        Code::NotFound,
    );
    assert_code(
        export(
            &mut officer,
            pb::export_subject_request::Subject::Lookup(pb::Lookup {
                collection: "customers".into(),
                field: "email".into(),
                value: "ada.nobody@example.com".into(),
            }),
        )
        .await,
        Code::NotFound,
    );
}

/// The `Records/ExportSubject` read events of `id` that say it was disclosed (result OK).
async fn export_reads(admin: &mut strongroom::client::Client, id: &str) -> usize {
    events(admin, record_filter(id))
        .await
        .iter()
        .filter(|e| e.method == "Records/ExportSubject" && e.result == "OK")
        .count()
}

#[tokio::test]
async fn an_export_that_fails_on_a_later_record_logs_no_read_of_the_earlier_ones() {
    // Room for one customer's three sensitive fields an hour: the second record's are withheld,
    // so the export fails after the first record was read.
    let clock = strongroom::domain::Clock::manual(1_800_000_000_000);
    let config = "[rate_limits.\"svc:privacy_officer\"]\nsensitive_disclosures_per_hour = 3\n";
    let vault = Vault::start_configured(config, "", clock.clone()).await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let first = create(&mut admin, customer("first")).await;
    let second = create(&mut admin, customer("second")).await;
    let both = || {
        pb::export_subject_request::Subject::RecordIds(pb::RecordIds {
            ids: vec![first.clone(), second.clone()],
        })
    };

    let status = assert_code(export(&mut officer, both()).await, Code::PermissionDenied);
    assert!(
        status.message().contains("not disclosed in plaintext"),
        "{}",
        status.message()
    );
    // No document left, so no read is logged as a disclosure: not the first record's either.
    assert_eq!(export_reads(&mut admin, &first).await, 0);
    assert_eq!(export_reads(&mut admin, &second).await, 0);
    // The limit's alert is kept: it is about the attempt.
    let alerts = events(
        &mut admin,
        pb::EventFilter {
            method: "Limits/DisclosureLimit".into(),
            ..pb::EventFilter::default()
        },
    )
    .await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");

    // An hour on, an export within the limit succeeds and logs one read per record (the
    // third record holds no sensitive field).
    clock.advance(std::time::Duration::from_secs(3600));
    let third = create(
        &mut admin,
        vec![field("name", "Third"), field("email", "third@example.com")],
    )
    .await;
    let reply = export(
        &mut officer,
        pb::export_subject_request::Subject::RecordIds(pb::RecordIds {
            ids: vec![first.clone(), third.clone()],
        }),
    )
    .await
    .unwrap();
    assert_eq!(reply.record_ids, vec![first.clone(), third.clone()]);
    assert_eq!(export_reads(&mut admin, &first).await, 1);
    assert_eq!(export_reads(&mut admin, &third).await, 1);
    assert_eq!(export_reads(&mut admin, &second).await, 0);
}

fn email_lookup(value: &str) -> pb::Lookup {
    pb::Lookup {
        collection: "customers".into(),
        field: "email".into(),
        value: value.into(),
    }
}

#[tokio::test]
async fn export_and_erasure_by_lookup_act_on_every_matching_record() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let a = create(&mut admin, customer("twin")).await;
    let b = create(&mut admin, customer("twin")).await;
    let other = create(&mut admin, customer("other")).await;
    let public = public_key(&mut officer).await;
    let mut both = [a.clone(), b.clone()];
    both.sort();

    // Another spelling of the address finds both records, and only them.
    let reply = export(
        &mut officer,
        pb::export_subject_request::Subject::Lookup(email_lookup("  ADA.Twin@Example.COM ")),
    )
    .await
    .unwrap();
    let mut exported = reply.record_ids.clone();
    exported.sort();
    assert_eq!(exported, both);
    let doc = receipt::verify_document::<ExportDocument>(export_file(&reply).as_bytes(), &public)
        .unwrap();
    assert_eq!(doc.records.len(), 2);

    // Support may not look a subject up for subject access (no `find` for it).
    let mut support = vault.as_role("role:support").await;
    assert_code(
        export(
            &mut support,
            pb::export_subject_request::Subject::Lookup(email_lookup("ada.twin@example.com")),
        )
        .await,
        Code::PermissionDenied,
    );

    let reply = officer
        .records
        .erase_subject(pb::EraseSubjectRequest {
            subject: Some(pb::erase_subject_request::Subject::Lookup(email_lookup(
                "ada.twin@example.com",
            ))),
            wait_for_purge: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.not_erased.is_empty(), "{:?}", reply.not_erased);
    let mut erased: Vec<String> = reply.erased.iter().map(|r| r.id.clone()).collect();
    erased.sort();
    assert_eq!(erased, both);
    let doc = receipt::verify_document::<ErasureDocument>(erasure_file(&reply).as_bytes(), &public)
        .unwrap();
    assert_eq!(doc.erased.len(), 2);
    for id in [&a, &b] {
        assert_code(get(&mut admin, id, "support").await, Code::NotFound);
    }
    get(&mut admin, &other, "support").await.unwrap();
    // Nothing of the subject is left to find.
    assert_code(
        export(
            &mut officer,
            pb::export_subject_request::Subject::Lookup(email_lookup("ada.twin@example.com")),
        )
        .await,
        Code::NotFound,
    );
}

async fn erase(
    client: &mut strongroom::client::Client,
    ids: &[&str],
) -> Result<pb::EraseSubjectResponse, tonic::Status> {
    client
        .records
        .erase_subject(pb::EraseSubjectRequest {
            subject: Some(pb::erase_subject_request::Subject::RecordIds(
                pb::RecordIds {
                    ids: ids.iter().map(|s| (*s).to_owned()).collect(),
                },
            )),
            wait_for_purge: true,
        })
        .await
        .map(tonic::Response::into_inner)
}

fn erasure_file(reply: &pb::EraseSubjectResponse) -> String {
    SignedReceipt {
        document: reply.signed_document.clone(),
        signature: reply.signature.clone(),
    }
    .file_text_for::<ErasureDocument>()
}

#[tokio::test]
async fn erasure_shreds_every_record_and_signs_one_receipt_naming_each() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let a = create(&mut admin, customer("erase-a")).await;
    let b = create(&mut admin, customer("erase-b")).await;
    let public = public_key(&mut officer).await;

    let reply = erase(&mut officer, &[&a, &b]).await.unwrap();
    assert!(reply.not_erased.is_empty(), "{:?}", reply.not_erased);
    let erased: Vec<&str> = reply.erased.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(erased, [a.as_str(), b.as_str()]);
    for id in [&a, &b] {
        assert_code(get(&mut admin, id, "support").await, Code::NotFound);
    }
    let file = erasure_file(&reply);
    let doc = receipt::verify_document::<ErasureDocument>(file.as_bytes(), &public).unwrap();
    assert_eq!(doc.format, "strongroom-erasure-receipt/v1");
    let listed: Vec<&str> = doc.erased.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(listed, [a.as_str(), b.as_str()]);
    for (r, shred) in doc.erased.iter().zip(&reply.erased) {
        assert_eq!(r.shredded_at_ms, shred.shredded_at_unix_ms);
        assert_eq!(r.purged_at_ms, Some(shred.purged_at_unix_ms));
        assert!(r.purged_at_ms >= Some(r.shredded_at_ms));
        assert_eq!(r.fields_destroyed, 8);
    }
    assert!(doc.not_erased.is_empty());
    // Each record went through the ordinary shred: its own event and signed receipt.
    let shreds = events_of(&mut admin, "Records/EraseSubject").await;
    let shredded: Vec<&str> = shreds
        .iter()
        .filter(|e| e.result == "OK")
        .map(|e| e.record_id.as_str())
        .collect();
    assert_eq!(shredded, [a.as_str(), b.as_str()]);
    for shred in &reply.erased {
        let one = SignedReceipt {
            document: shred.signed_document.clone(),
            signature: shred.signature.clone(),
        };
        receipt::verify(one.file_text().as_bytes(), &public).unwrap();
    }
    // One byte changed: rejected. A shred receipt is not an erasure receipt.
    let mut flipped = file.clone().into_bytes();
    let at = file.find(&a).unwrap();
    flipped[at] = if flipped[at] == b'a' { b'b' } else { b'a' };
    assert!(receipt::verify_document::<ErasureDocument>(&flipped, &public).is_err());
    assert!(receipt::verify(file.as_bytes(), &public).is_err());
}

#[tokio::test]
async fn a_partial_erasure_names_what_was_not_erased_and_why() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let live = create(&mut admin, customer("live")).await;
    let gone = create(&mut admin, customer("gone")).await;
    admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: gone.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap();
    let unknown = "0123456789abcdef0123456789abcdef";
    let public = public_key(&mut officer).await;

    let reply = erase(&mut officer, &[&gone, &live, unknown]).await.unwrap();
    let erased: Vec<&str> = reply.erased.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(erased, [live.as_str()]);
    let not: Vec<(&str, &str)> = reply
        .not_erased
        .iter()
        .map(|n| (n.id.as_str(), n.reason.as_str()))
        .collect();
    let reason = "not found (never existed, or already shredded)";
    assert_eq!(not, [(gone.as_str(), reason), (unknown, reason)]);
    assert_code(get(&mut admin, &live, "support").await, Code::NotFound);

    let doc = receipt::verify_document::<ErasureDocument>(erasure_file(&reply).as_bytes(), &public)
        .unwrap();
    let listed: Vec<&str> = doc.erased.iter().map(|r| r.record_id.as_str()).collect();
    assert_eq!(listed, [live.as_str()]);
    let not_listed: Vec<(&str, &str)> = doc
        .not_erased
        .iter()
        .map(|n| (n.record_id.as_str(), n.reason.as_str()))
        .collect();
    assert_eq!(not_listed, not);
    // Each id not erased has the event of a failed call.
    let failed: Vec<String> = events_of(&mut admin, "Records/EraseSubject")
        .await
        .into_iter()
        .filter(|e| e.result == "NOT_FOUND")
        .map(|e| e.record_id)
        .collect();
    assert_eq!(failed, [gone.clone(), unknown.to_owned()]);

    // A caller who may delete nothing is refused outright, and nothing is shredded.
    let mut support = vault.as_role("role:support").await;
    let kept = create(&mut admin, customer("kept")).await;
    assert_code(erase(&mut support, &[&kept]).await, Code::PermissionDenied);
    get(&mut admin, &kept, "support").await.unwrap();
}

/// A record created by `BatchCreateRecords` (as `strongroom import` creates them) has its
/// creation in the history, not among the accesses.
#[tokio::test]
async fn a_record_created_in_a_batch_has_its_creation_in_the_history() {
    let vault = Vault::start().await;
    let mut writer = vault.as_role("role:writer").await;
    let mut officer = vault.as_role("role:privacy_officer").await;
    let resp = writer
        .records
        .batch_create_records(pb::BatchCreateRecordsRequest {
            records: vec![pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: vec![
                    field("name", "Grace Hopper"),
                    field("email", "grace@example.com"),
                ],
                honeytoken: false,
            }],
            ..pb::BatchCreateRecordsRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let Some(pb::batch_create_result::Result::Created(created)) = &resp.results[0].result else {
        panic!("{resp:?}");
    };
    let reply = export_id(&mut officer, &created.id).await.unwrap();
    let doc: ExportDocument = serde_json::from_str(&reply.document).unwrap();
    let record = &doc.records[0];
    assert_eq!(record.history.len(), 1, "{:?}", record.history);
    assert_eq!(record.history[0].method, "Records/BatchCreateRecords");
    assert!(
        record
            .accesses
            .iter()
            .all(|a| a.method != "Records/BatchCreateRecords"),
        "{:?}",
        record.accesses
    );
}
