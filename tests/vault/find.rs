//! FindRecords: lookups through the blind index, the `find` permission, the index kept right by
//! update and shred, and audit events that never hold the searched value.

use strongroom::{
    api::pb::{self, Disclosure},
    storage::Keyspace,
};
use tonic::Code;

use crate::support::*;

async fn find(
    client: &mut strongroom::client::Client,
    field: &str,
    value: &str,
    purpose: &str,
) -> Result<pb::FindRecordsResponse, tonic::Status> {
    client
        .records
        .find_records(pb::FindRecordsRequest {
            collection: "customers".into(),
            field: field.into(),
            value: value.into(),
            purpose: purpose.into(),
            fields: vec![],
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The ids a find returns.
async fn ids(
    client: &mut strongroom::client::Client,
    field: &str,
    value: &str,
    purpose: &str,
) -> Vec<String> {
    let found = find(client, field, value, purpose)
        .await
        .unwrap_or_else(|s| panic!("find by {field}: {s:?}"));
    found.records.into_iter().map(|r| r.id).collect()
}

/// A customer with its own email, phone and SSN.
fn person(email: &str, phone: &str, ssn: &str) -> Vec<pb::Field> {
    vec![
        field("name", "Grace Hopper"),
        field("email", email),
        field("phone", phone),
        field("ssn", ssn),
        field("notes", "rear admiral"),
    ]
}

#[tokio::test]
async fn finds_by_each_indexed_field_in_any_equivalent_spelling() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(
        &mut admin,
        person(
            "Grace.Hopper@Example.COM",
            "+1 (415) 555-0100",
            "219-09-9999",
        ),
    )
    .await;
    let other = create(
        &mut admin,
        person("grace.other@example.com", "+14155550199", "219-09-9998"),
    )
    .await;
    let spellings = [
        ("email", "grace.hopper@example.com"),
        ("email", "  GRACE.HOPPER@EXAMPLE.COM "),
        ("email", "Grace.Hopper@example.com"),
        ("phone", "+14155550100"),
        ("phone", "+1 (415) 555-0100"),
        ("phone", "415-555-0100"),
        ("phone", "(415) 555 0100"),
        ("phone", "415.555.0100"),
        ("ssn", "219-09-9999"),
        ("ssn", "219099999"),
        ("ssn", " 219-09-9999 "),
    ];
    for (field, value) in spellings {
        assert_eq!(
            ids(&mut admin, field, value, "support").await,
            std::slice::from_ref(&id),
            "{field} {value:?}"
        );
    }
    assert_eq!(
        ids(&mut admin, "email", "grace.other@example.com", "support").await,
        [other]
    );
    assert!(
        ids(&mut admin, "email", "nobody@example.com", "support")
            .await
            .is_empty()
    );
    assert!(
        ids(&mut admin, "ssn", "219-09-9997", "support")
            .await
            .is_empty()
    );
    // Each match comes back as GetRecord shows it.
    let found = find(&mut admin, "email", "grace.hopper@example.com", "support")
        .await
        .unwrap();
    assert!(!found.truncated);
    let got = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(view(&found.records[0]), view(&got));
}

#[tokio::test]
async fn find_needs_the_find_permission_for_the_field_and_purpose() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let ssn = "078-05-1120";
    let id = create(
        &mut admin,
        person("ada.find@example.com", "+442079460958", ssn),
    )
    .await;
    let mut support = vault.as_role("role:support").await;
    let refused = assert_code(
        find(&mut support, "ssn", ssn, "support").await,
        Code::PermissionDenied,
    );
    let message = refused.message();
    assert!(
        message.contains("customers.ssn") && message.contains("support"),
        "{message}"
    );
    assert!(!message.contains("078") && !message.contains("1120"));
    // The right field, but for a purpose without a find rule.
    assert_code(
        find(&mut support, "email", "ada.find@example.com", "marketing").await,
        Code::PermissionDenied,
    );
    // A role with no find rule at all.
    let mut writer = vault.as_role("role:writer").await;
    assert_code(
        find(&mut writer, "email", "ada.find@example.com", "support").await,
        Code::PermissionDenied,
    );
    // The privacy officer finds by SSN for subject access.
    let mut officer = vault.as_role("role:privacy_officer").await;
    assert_eq!(ids(&mut officer, "ssn", ssn, "subject_access").await, [id]);
    // Refusals are audited, without the value.
    let denied: Vec<_> = events_of(&mut admin, "Records/FindRecords")
        .await
        .into_iter()
        .filter(|e| e.result == "PERMISSION_DENIED")
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    assert!(denied.iter().all(|e| !e.detail.contains("1120")));

    // A field that is not indexed, and a value that is not valid for the field's type.
    let status = assert_code(
        find(&mut admin, "notes", "rear admiral", "support").await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("field") && status.message().contains("not indexed"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("rear admiral"));
    let status = assert_code(
        find(&mut admin, "email", "not-an-email-zq7", "support").await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("value"), "{}", status.message());
    assert!(!status.message().contains("zq7"), "{}", status.message());
}

#[tokio::test]
async fn a_partly_visible_match_comes_back_masked_and_withheld() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(
        &mut admin,
        person("masked.match@example.com", "+14155550123", "219-09-9991"),
    )
    .await;
    let mut support = vault.as_role("role:support").await;
    let found = find(&mut support, "phone", "(415) 555-0123", "support")
        .await
        .unwrap();
    assert_eq!(found.records.len(), 1);
    let record = &found.records[0];
    assert_eq!(record.id, id);
    assert_eq!(
        value_of(record, "name"),
        Some(("Grace Hopper", Disclosure::Plain))
    );
    assert_eq!(
        value_of(record, "email"),
        Some(("m***@example.com", Disclosure::Masked))
    );
    assert_eq!(
        value_of(record, "phone"),
        Some(("+*******0123", Disclosure::Masked))
    );
    assert_eq!(value_of(record, "ssn"), Some(("", Disclosure::Withheld)));
}

#[tokio::test]
async fn update_moves_the_record_in_the_index() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(
        &mut admin,
        person("old.address@example.com", "+14155550111", "219-09-9992"),
    )
    .await;
    admin
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("email", "New.Address@example.com")],
            clear: vec!["phone".into()],
            expected_version: None,
        })
        .await
        .unwrap();
    assert!(
        ids(&mut admin, "email", "old.address@example.com", "support")
            .await
            .is_empty(),
        "the old email no longer finds the record"
    );
    assert_eq!(
        ids(&mut admin, "email", "new.address@example.com", "support").await,
        std::slice::from_ref(&id)
    );
    assert!(
        ids(&mut admin, "phone", "+14155550111", "support")
            .await
            .is_empty(),
        "a cleared phone no longer finds the record"
    );
    assert_eq!(
        ids(&mut admin, "ssn", "219099992", "support").await,
        std::slice::from_ref(&id),
        "an untouched field still finds it"
    );
}

#[tokio::test]
async fn a_find_is_audited_with_the_field_and_count_never_the_value() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(
        &mut admin,
        person("audit.needle@example.com", "+14155550177", "219-09-9993"),
    )
    .await;
    let searched = "  Audit.Needle@EXAMPLE.com";
    assert_eq!(
        ids(&mut admin, "email", searched, "support").await,
        std::slice::from_ref(&id)
    );
    let bad = "zz-not-an-email-qq";
    assert_code(
        find(&mut admin, "email", bad, "support").await,
        Code::InvalidArgument,
    );
    let events = events_of(&mut admin, "Records/FindRecords").await;
    let summary: Vec<_> = events
        .iter()
        .filter(|e| e.record_id.is_empty() && e.result == "OK")
        .collect();
    assert_eq!(summary.len(), 1, "{events:?}");
    let fields: Vec<(&str, &str)> = summary[0]
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.outcome.as_str()))
        .collect();
    assert_eq!(fields, [("email", "searched")]);
    assert_eq!(summary[0].detail, "1 matches");
    assert_eq!(summary[0].purpose, "support");
    // The read of the match is audited as a GetRecord is.
    let reads: Vec<_> = events.iter().filter(|e| e.record_id == id).collect();
    assert_eq!(reads.len(), 1);
    assert!(reads[0].fields.iter().any(|f| f.field == "ssn"));

    let raw: Vec<Vec<u8>> = vault
        .audit_entries()
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(raw.len() > 3);
    for needle in [
        "audit.needle",
        "Audit.Needle",
        "AUDIT.NEEDLE",
        "zz-not-an-email",
        "5550177",
    ] {
        assert!(
            !raw.iter()
                .any(|e| e.windows(needle.len()).any(|w| w == needle.as_bytes())),
            "{needle} in the audit log"
        );
    }
}

#[tokio::test]
async fn too_many_matches_are_truncated_and_say_so() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let limit = strongroom::vault::FIND_LIMIT;
    for i in 0..=limit {
        create(
            &mut admin,
            vec![
                field("name", "Shared Ssn"),
                field("ssn", "219-09-9994"),
                field("email", &format!("shared{i}@example.com")),
            ],
        )
        .await;
    }
    let found = find(&mut admin, "ssn", "219099994", "support")
        .await
        .unwrap();
    assert_eq!(found.records.len(), limit);
    assert!(found.truncated);
    let found = find(&mut admin, "email", "shared7@example.com", "support")
        .await
        .unwrap();
    assert_eq!(found.records.len(), 1);
    assert!(!found.truncated);
}

#[tokio::test]
async fn shred_and_purge_remove_the_index_entries_from_every_live_file() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let email = "doomed.index@example.com";
    let keep = create(
        &mut admin,
        person("kept.index@example.com", "+14155550155", "219-09-9995"),
    )
    .await;
    let doomed = create(&mut admin, person(email, "+14155550166", "219-09-9996")).await;
    // The record's digests, as stored in its reverse entries (`'r' | id | field`).
    let doomed_bytes = id_bytes(&doomed);
    let entries = vault
        .with_store(|store| store.scan_prefix(Keyspace::Index, b"").unwrap())
        .await;
    let digests: Vec<Vec<u8>> = entries
        .iter()
        .filter(|(k, _)| k[0] == b'r' && k[1..17] == doomed_bytes[..])
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(digests.len(), 3, "email, phone and ssn are indexed");
    let forward = entries
        .iter()
        .filter(|(k, _)| k[0] == b'f' && k.ends_with(&doomed_bytes))
        .count();
    assert_eq!(forward, 3);
    vault.stop().await;
    // On PostgreSQL the purge proves that no table holds the entries (a deleted row's bytes
    // stay in free page space and WAL until overwritten: README); on RocksDB, no live file.
    let on_postgres = on_postgres();
    for digest in digests.iter().filter(|_| !on_postgres) {
        assert!(
            !files_containing(&vault.data_dir(), digest).is_empty(),
            "the digest should be on disk before the shred"
        );
    }
    vault.restart().await;
    let mut admin = vault.admin().await;
    assert_eq!(
        ids(&mut admin, "email", email, "support").await,
        std::slice::from_ref(&doomed)
    );
    admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: doomed.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap();
    assert!(ids(&mut admin, "email", email, "support").await.is_empty());
    assert!(
        ids(&mut admin, "ssn", "219-09-9996", "support")
            .await
            .is_empty()
    );
    if on_postgres {
        let left = vault
            .with_store(|store| store.scan_prefix(Keyspace::Index, b"").unwrap())
            .await;
        assert!(
            left.iter().all(
                |(k, v)| !k.windows(doomed_bytes.len()).any(|w| w == doomed_bytes)
                    && !digests.contains(v)
            ),
            "no index entry of the shredded record is left"
        );
    } else {
        vault.stop().await;
        for digest in &digests {
            let hits = files_containing(&vault.data_dir(), digest);
            assert!(hits.is_empty(), "a shredded index digest found in {hits:?}");
        }
        let hits = files_containing(&vault.data_dir(), email.as_bytes());
        assert!(hits.is_empty(), "the email found in {hits:?}");
        vault.restart().await;
    }
    let mut admin = vault.admin().await;
    assert_eq!(
        ids(&mut admin, "email", "kept.index@example.com", "support").await,
        [keep],
        "the other record stays findable"
    );
}

#[test]
fn the_debug_of_a_find_request_does_not_print_the_value() {
    let request = pb::FindRecordsRequest {
        collection: "customers".into(),
        field: "email".into(),
        value: "secret.person@example.com".into(),
        purpose: "support".into(),
        fields: vec![],
    };
    let printed = format!("{request:?}");
    assert!(!printed.contains("secret.person"), "{printed}");
    assert!(printed.contains("email"));
}

#[tokio::test]
async fn index_entries_cost_a_fixed_number_of_bytes_per_record() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let records = 20;
    for i in 0..records {
        let tag: String = format!("{i:02}")
            .bytes()
            .map(|b| char::from(b'a' + (b - b'0')))
            .collect();
        create(&mut admin, customer(&tag)).await;
    }
    let entries = vault
        .with_store(|store| store.scan_prefix(Keyspace::Index, b"").unwrap())
        .await;
    assert_eq!(
        entries.len(),
        records * 6,
        "a forward and a reverse entry per field"
    );
    let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
    // Per record: forward keys `f|9|customers|len|field|digest|id` (60 + field name bytes:
    // 65 + 65 + 63), reverse keys `r|id|field` (22 + 22 + 20) holding a 32-byte digest each.
    assert_eq!(bytes / records, 193 + 64 + 96);
    eprintln!(
        "blind index: {} key+value bytes per record",
        bytes / records
    );
}

/// Records stored before their fields were indexed (a vault upgraded from before the blind
/// index) get their entries at the next start, so that a lookup, and an erasure by lookup,
/// misses none of them.
#[tokio::test]
async fn records_stored_before_the_index_are_indexed_at_start() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(
        &mut admin,
        person("old.timer@example.com", "+1 415 555 0199", "078-05-1120"),
    )
    .await;
    assert_eq!(
        ids(&mut admin, "email", "old.timer@example.com", "support").await,
        std::slice::from_ref(&id)
    );
    // As the data dir of a vault from before the index: no entries, no completion marker.
    let removed = vault
        .with_store(|store| {
            let mut batch = strongroom::storage::Batch::new();
            let entries = store.scan_prefix(Keyspace::Index, b"").unwrap();
            for (key, _) in &entries {
                batch.delete(Keyspace::Index, key.clone());
            }
            batch.delete(Keyspace::Meta, b"index/complete".to_vec());
            store.write(batch).unwrap();
            entries.len()
        })
        .await;
    assert_eq!(
        removed, 6,
        "3 indexed fields: a forward and a reverse entry each"
    );
    let mut admin = vault.admin().await;
    for (field, value) in [
        ("email", "OLD.TIMER@example.com"),
        ("phone", "+14155550199"),
    ] {
        assert_eq!(
            ids(&mut admin, field, value, "support").await,
            std::slice::from_ref(&id)
        );
    }
    let mut officer = vault.as_role("role:privacy_officer").await;
    assert_eq!(
        ids(&mut officer, "ssn", "078-05-1120", "subject_access").await,
        std::slice::from_ref(&id)
    );
    let backfills = events_of(&mut admin, "Records/IndexBackfill").await;
    assert_eq!(backfills.len(), 1, "{backfills:?}");
    // Completed once: the next start adds nothing.
    vault.restart().await;
    let mut admin = vault.admin().await;
    assert_eq!(
        events_of(&mut admin, "Records/IndexBackfill").await.len(),
        1
    );
    assert_eq!(
        ids(&mut admin, "email", "old.timer@example.com", "support").await,
        [id]
    );
}
