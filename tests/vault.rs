//! End-to-end tests of the vault: a real server on 127.0.0.1:0, a real RocksDB in a temp dir,
//! the generated gRPC clients.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

#[path = "vault/batch.rs"]
mod batch;
#[path = "vault/consent.rs"]
mod consent;
#[path = "vault/import.rs"]
mod import;
#[path = "vault/subject.rs"]
mod subject;
#[path = "vault/tokens.rs"]
mod tokens;

#[path = "vault/holds.rs"]
mod holds;

#[path = "vault/find.rs"]
mod find;
#[path = "vault/pseudonym.rs"]
mod pseudonym;
#[path = "vault/retention.rs"]
mod retention;

use strongroom::{
    api::pb::{self, Disclosure},
    storage::{Batch, Keyspace},
};
use support::*;
use tonic::Code;

#[tokio::test]
async fn every_field_type_round_trips_and_survives_a_restart() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("rt")).await;
    assert_eq!(id.len(), 32);
    let expected = [
        ("name", "Ada rt Lovelace"),
        ("email", "ada.rt@example.com"),
        ("phone", "+442079460958"),
        ("address", "12 St James's Square rt, London"),
        ("date_of_birth", "1815-12-10"),
        ("ssn", "123-45-6789"),
        ("card_number", "4242424242424242"),
        ("notes", "prefers email; ref rt"),
    ];
    let check = |resp: &pb::GetRecordResponse| {
        for (name, value) in expected {
            assert_eq!(
                value_of(resp, name),
                Some((value, Disclosure::Plain)),
                "{name}"
            );
        }
        assert_eq!(resp.fields.len(), expected.len());
    };
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(resp.version, 1);
    assert_eq!(resp.collection, "customers");
    check(&resp);

    vault.restart().await;
    let mut admin = vault.admin().await;
    let resp = get(&mut admin, &id, "legal").await.unwrap();
    check(&resp);

    // Only the requested fields come back.
    let some = admin
        .records
        .get_record(pb::GetRecordRequest {
            id: id.clone(),
            fields: vec!["email".into(), "ssn".into()],
            purpose: "support".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<_> = some.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["email", "ssn"]);
}

#[tokio::test]
async fn update_sets_clears_and_checks_the_expected_version() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("up")).await;
    let reply = admin
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("email", "new@example.org")],
            clear: vec!["notes".into()],
            expected_version: Some(1),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.version, 2);
    let stale = admin
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("email", "x@example.org")],
            clear: vec![],
            expected_version: Some(1),
        })
        .await;
    let status = assert_code(stale, Code::Aborted);
    assert!(
        status.message().contains("version 2"),
        "{}",
        status.message()
    );

    vault.restart().await;
    let mut admin = vault.admin().await;
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(resp.version, 2);
    assert_eq!(
        value_of(&resp, "email"),
        Some(("new@example.org", Disclosure::Plain))
    );
    assert_eq!(value_of(&resp, "notes"), None);
    assert_eq!(
        value_of(&resp, "ssn"),
        Some(("123-45-6789", Disclosure::Plain))
    );
}

#[tokio::test]
async fn each_starting_role_reads_what_its_policy_says() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("roles")).await;
    use Disclosure::{Masked as M, Plain as P, Pseudonym as N, Withheld as W};
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
    let cases: [(&str, &str, [Disclosure; 8]); 11] = [
        ("role:admin", "marketing", [P, P, P, P, P, P, P, P]),
        ("role:support", "support", [P, M, M, M, W, W, W, P]),
        ("role:support", "marketing", [W, W, W, W, W, W, W, W]),
        ("role:billing", "billing", [P, P, W, P, W, W, M, W]),
        ("role:marketing", "marketing", [P, P, W, W, W, W, W, W]),
        ("role:marketing", "support", [W, W, W, W, W, W, W, W]),
        (
            "role:privacy_officer",
            "subject_access",
            [P, P, P, P, P, P, P, P],
        ),
        ("role:analyst", "analytics", [N, N, N, W, N, N, W, W]),
        ("role:analyst", "support", [W, W, W, W, W, W, W, W]),
        ("role:writer", "support", [W, W, W, W, W, W, W, W]),
        ("role:auditor", "legal", [W, W, W, W, W, W, W, W]),
    ];
    for (role, purpose, expected) in cases {
        let mut client = if role == "role:admin" {
            vault.admin().await
        } else {
            vault.as_role(role).await
        };
        let resp = get(&mut client, &id, purpose).await.unwrap();
        for (name, want) in all.iter().zip(expected) {
            let f = resp
                .fields
                .iter()
                .find(|f| f.name == *name)
                .unwrap_or_else(|| panic!("{role} {purpose}: {name} missing"));
            assert_eq!(
                Disclosure::try_from(f.disclosure).unwrap(),
                want,
                "{role} {purpose} {name}"
            );
            match want {
                W => {
                    assert!(
                        f.value.is_empty(),
                        "{role} {name}: a withheld field has no value"
                    );
                    assert!(f.reason.contains("withheld"), "{}", f.reason);
                }
                M => assert!(f.value.contains('*'), "{role} {name}: {}", f.value),
                N if *name == "date_of_birth" => assert_eq!(f.value, "1815"),
                N => assert!(f.value.starts_with("pn_"), "{role} {name}: {}", f.value),
                P | Disclosure::Unspecified => {}
            }
        }
    }
    let mut support = vault.as_role("role:support").await;
    let resp = get(&mut support, &id, "support").await.unwrap();
    assert_eq!(value_of(&resp, "email"), Some(("a***@example.com", M)));
    assert_eq!(value_of(&resp, "phone"), Some(("+********0958", M)));
    let mut billing = vault.as_role("role:billing").await;
    let resp = get(&mut billing, &id, "billing").await.unwrap();
    assert_eq!(
        value_of(&resp, "card_number"),
        Some(("**** **** **** 4242", M))
    );

    // Writes and deletes are checked too.
    let denied = support
        .records
        .create_record(pb::CreateRecordRequest {
            collection: "customers".into(),
            fields: vec![field("name", "Eve")],
            honeytoken: false,
        })
        .await;
    assert_code(denied, Code::PermissionDenied);
    let notes_only = support
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("notes", "called back")],
            clear: vec![],
            expected_version: None,
        })
        .await;
    assert!(
        notes_only.is_ok(),
        "support may write notes: {notes_only:?}"
    );
    let ssn = support
        .records
        .update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("ssn", "123-45-6780")],
            clear: vec![],
            expected_version: None,
        })
        .await;
    assert_code(ssn, Code::PermissionDenied);
    let mut writer = vault.as_role("role:writer").await;
    assert_code(
        writer
            .records
            .delete_record(pb::DeleteRecordRequest {
                id: id.clone(),
                wait_for_purge: true,
            })
            .await,
        Code::PermissionDenied,
    );
    let mut officer = vault.as_role("role:privacy_officer").await;
    assert!(
        officer
            .records
            .delete_record(pb::DeleteRecordRequest {
                id: id.clone(),
                wait_for_purge: true
            })
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_denied_field_is_never_decrypted() {
    let mut vault = Vault::start().await;
    let support_token = vault.token("svc:helpdesk", &["role:support"]).await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("deny")).await;
    // Corrupt the SSN ciphertext at the storage layer: any attempt to open it would fail.
    vault
        .with_store(|store| {
            let mut key = id_bytes(&id);
            key.extend_from_slice(b"ssn");
            let mut ct = store.get(Keyspace::Records, &key).unwrap().unwrap();
            let last = ct.len() - 1;
            ct[last] ^= 0xff;
            let mut batch = Batch::new();
            batch.put(Keyspace::Records, key, ct);
            store.write(batch).unwrap();
        })
        .await;
    let mut support = vault.client(&support_token).await;
    let resp = get(&mut support, &id, "support").await.unwrap();
    assert_eq!(value_of(&resp, "ssn"), Some(("", Disclosure::Withheld)));
    assert_eq!(
        value_of(&resp, "name"),
        Some(("Ada deny Lovelace", Disclosure::Plain))
    );
    // The admin, who may read the SSN, hits the corruption: the field really was sealed.
    let mut admin = vault.admin().await;
    assert_code(get(&mut admin, &id, "support").await, Code::DataLoss);
}

#[tokio::test]
async fn calls_without_a_valid_token_never_reach_a_handler() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("auth")).await;
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
    assert_code(
        raw.create_record(pb::CreateRecordRequest {
            collection: "customers".into(),
            fields: customer("x"),
            honeytoken: false,
        })
        .await,
        Code::Unauthenticated,
    );
    assert_code(
        raw.update_record(pb::UpdateRecordRequest {
            id: id.clone(),
            set: vec![field("name", "Eve")],
            clear: vec![],
            expected_version: None,
        })
        .await,
        Code::Unauthenticated,
    );
    assert_code(
        raw.delete_record(pb::DeleteRecordRequest {
            id: id.clone(),
            wait_for_purge: true,
        })
        .await,
        Code::Unauthenticated,
    );
    let mut tokens = strongroom::api::pb::tokens_client::TokensClient::connect(vault.addr())
        .await
        .unwrap();
    assert_code(
        tokens
            .create_token(pb::CreateTokenRequest {
                subject: "svc:x".into(),
                roles: vec!["role:admin".into()],
                ..pb::CreateTokenRequest::default()
            })
            .await,
        Code::Unauthenticated,
    );

    let mut wrong = vault
        .client("sr_0000000000000000000000000000000000000000000000000000000000000000")
        .await;
    assert_code(get(&mut wrong, &id, "support").await, Code::Unauthenticated);
    assert_code(
        wrong
            .records
            .delete_record(pb::DeleteRecordRequest {
                id: id.clone(),
                wait_for_purge: true,
            })
            .await,
        Code::Unauthenticated,
    );

    // The record is untouched by all of the above.
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(resp.version, 1);

    // A valid token without the role: PERMISSION_DENIED.
    let mut writer = vault.as_role("role:writer").await;
    let issue = writer
        .tokens
        .create_token(pb::CreateTokenRequest {
            subject: "svc:evil".into(),
            roles: vec!["role:admin".into()],
            ..pb::CreateTokenRequest::default()
        })
        .await;
    assert_code(issue, Code::PermissionDenied);
    assert_code(
        writer
            .records
            .delete_record(pb::DeleteRecordRequest {
                id,
                wait_for_purge: true,
            })
            .await,
        Code::PermissionDenied,
    );

    // Health answers without a token.
    let channel = tonic::transport::Endpoint::from_shared(vault.addr())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        reply.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn a_subject_named_like_a_role_is_refused() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let refused = admin
        .tokens
        .create_token(pb::CreateTokenRequest {
            subject: "role:admin".into(),
            roles: vec!["role:support".into()],
            ..pb::CreateTokenRequest::default()
        })
        .await;
    let status = assert_code(refused, Code::InvalidArgument);
    assert!(
        status.message().starts_with("subject:"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn reflection_lists_every_service() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let vault = Vault::start().await;
    let channel = tonic::transport::Endpoint::from_shared(vault.addr())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", vault.admin_token).parse().unwrap();
    let mut client =
        ServerReflectionClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", token.clone());
            Ok(req)
        });
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let reply = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "strongroom.v1.Records",
        "strongroom.v1.Tokens",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{names:?}");
    }
}

#[tokio::test]
async fn plaintext_never_reaches_disk() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut canaries = Vec::new();
    for i in 0..20 {
        let tag: String = format!("canary{}x{i}", rand_suffix());
        let notes = format!("zq{tag}zq");
        let email = format!("{tag}@canary-example.com");
        let mut fields = customer(&tag);
        fields.retain(|f| !matches!(f.name.as_str(), "notes" | "email" | "name"));
        fields.push(field("name", "Canary Person"));
        fields.push(field("notes", &notes));
        fields.push(field("email", &email));
        create(&mut admin, fields).await;
        canaries.push(notes);
        canaries.push(email);
    }
    vault.stop().await;
    // On PostgreSQL: every node's files, the WAL included.
    let dir = support::store_files_dir(&vault);
    assert!(
        files_under(&dir).len() > 3,
        "the scan must see the store's files"
    );
    for canary in &canaries {
        let hits = files_containing(&dir, canary.as_bytes());
        assert!(hits.is_empty(), "{canary} found in {hits:?}");
    }
    // The scan itself works: the same bytes planted in a file are found.
    let planted = tempfile::NamedTempFile::new_in(&dir).unwrap();
    std::fs::write(planted.path(), canaries[0].as_bytes()).unwrap();
    assert_eq!(files_containing(&dir, canaries[0].as_bytes()).len(), 1);
}

fn rand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{n:08x}")
}

#[tokio::test]
async fn shredding_removes_the_key_and_ciphertexts_from_every_live_file() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let keep = create(&mut admin, customer("keep")).await;
    let doomed = create(&mut admin, customer("doomed")).await;
    let (header, fields) = vault.with_store(|store| stored(store, &doomed)).await;
    assert_eq!(fields.len(), 8);
    // Before the shred the captured bytes are on disk (the scan can see them): the wrapped
    // DEK in the key store in the keys dir, never in the data dir.
    vault.stop().await;
    let on_postgres = support::on_postgres();
    let mut wrapped = Vec::new();
    if on_postgres {
        // In the key store's database, never in the data store's.
        let (data, keys) = support::open_stores(vault.dir.path());
        let prefix = support::id_bytes(&doomed);
        assert_eq!(keys.scan_prefix(Keyspace::Deks, &prefix).unwrap().len(), 1);
        assert!(
            data.scan_prefix(Keyspace::Deks, &prefix)
                .unwrap()
                .is_empty()
        );
    } else {
        wrapped = support::wrapped_key_of(&vault.keys_dir(), &doomed);
        assert!(
            !files_containing(&vault.keys_dir(), &wrapped).is_empty(),
            "wrapped DEK should be on disk before the shred"
        );
        assert!(files_containing(&vault.data_dir(), &wrapped).is_empty());
        assert!(!files_containing(&vault.data_dir(), &header).is_empty());
    }
    vault.restart().await;

    let mut admin = vault.admin().await;
    let receipt = admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: doomed.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(receipt.id, doomed);
    assert!(receipt.data_key_destroyed);
    assert_eq!(receipt.fields_destroyed, 8);
    assert!(receipt.purged_at_unix_ms >= receipt.shredded_at_unix_ms);

    let never = "0123456789abcdef0123456789abcdef";
    let shredded_status = assert_code(get(&mut admin, &doomed, "support").await, Code::NotFound);
    let never_status = assert_code(get(&mut admin, never, "support").await, Code::NotFound);
    assert_eq!(
        shredded_status.message(),
        never_status.message(),
        "a shredded id answers like one that never existed"
    );
    assert_code(
        admin
            .records
            .delete_record(pb::DeleteRecordRequest {
                id: doomed.clone(),
                wait_for_purge: true,
            })
            .await,
        Code::NotFound,
    );
    assert_code(
        admin
            .records
            .update_record(pb::UpdateRecordRequest {
                id: doomed.clone(),
                set: vec![field("name", "Back")],
                clear: vec![],
                expected_version: None,
            })
            .await,
        Code::NotFound,
    );

    vault.stop().await;
    if on_postgres {
        // PostgreSQL keeps a deleted row's bytes in its page's free space and in WAL segments
        // until they are overwritten (README, "Crypto-shredding on PostgreSQL"): what the
        // purge proves on this backend is that no table and no index holds them any more.
        let (data, keys) = support::open_stores(vault.dir.path());
        let prefix = support::id_bytes(&doomed);
        assert!(
            keys.scan_prefix(Keyspace::Deks, &prefix)
                .unwrap()
                .is_empty()
        );
        for ks in [Keyspace::Headers, Keyspace::Records] {
            assert!(data.scan_prefix(ks, &prefix).unwrap().is_empty(), "{ks:?}");
        }
        let all = data.scan_prefix(Keyspace::Records, b"").unwrap();
        assert!(
            fields
                .iter()
                .all(|(_, ct)| all.iter().all(|(_, v)| v != ct)),
            "no field ciphertext is left"
        );
    } else {
        let dir = vault.data_dir();
        // (The header is not secret, and a record of the same shape has the same header bytes.)
        let mut needles = Vec::new();
        for (_, ct) in &fields {
            needles.push(ct[ct.len() - 32..].to_vec());
        }
        for needle in &needles {
            let hits = files_containing(&dir, needle);
            assert!(hits.is_empty(), "shredded bytes found in {hits:?}");
        }
        for needle in [&wrapped[..], &wrapped[wrapped.len() - 40..]] {
            let hits = files_containing(&vault.keys_dir(), needle);
            assert!(
                hits.is_empty(),
                "the shredded wrapped key found in {hits:?}"
            );
        }
    }
    vault.restart().await;
    let mut admin = vault.admin().await;
    assert_code(get(&mut admin, &doomed, "support").await, Code::NotFound);
    assert!(
        get(&mut admin, &keep, "support").await.is_ok(),
        "the other record is untouched"
    );
}

#[tokio::test]
async fn a_restored_header_stays_shredded() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("restore")).await;
    let (header, fields) = vault.with_store(|store| stored(store, &id)).await;
    let mut admin = vault.admin().await;
    admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: id.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap();
    // Put the old bytes back, as a restored backup would.
    vault
        .with_store(|store| {
            let mut batch = Batch::new();
            batch.put(Keyspace::Headers, id_bytes(&id), header);
            for (k, v) in fields {
                batch.put(Keyspace::Records, k, v);
            }
            store.write(batch).unwrap();
        })
        .await;
    let mut admin = vault.admin().await;
    assert_code(get(&mut admin, &id, "support").await, Code::NotFound);
}

fn put(store: &dyn strongroom::storage::Store, ks: Keyspace, key: Vec<u8>, value: Vec<u8>) {
    let mut batch = Batch::new();
    batch.put(ks, key, value);
    store.write(batch).unwrap();
}

fn field_key(id: &str, field: &str) -> Vec<u8> {
    let mut k = id_bytes(id);
    k.extend_from_slice(field.as_bytes());
    k
}

/// Every read of `id`, for any purpose, fails with DATA_LOSS and returns nothing.
async fn assert_data_loss(vault: &Vault, id: &str, case: &str) {
    let mut admin = vault.admin().await;
    for purpose in ["support", "legal"] {
        match get(&mut admin, id, purpose).await {
            Ok(resp) => panic!(
                "{case}: a tampered record was read: {} fields",
                view(&resp).len()
            ),
            Err(status) => {
                assert_eq!(
                    status.code(),
                    Code::DataLoss,
                    "{case}: {}",
                    status.message()
                );
                assert!(
                    !status.message().contains("Lovelace"),
                    "{}",
                    status.message()
                );
            }
        }
    }
}

#[tokio::test]
async fn tampering_at_the_storage_layer_fails_closed() {
    let vault = Vault::start_shared().await;
    let store = vault.store();
    let mut admin = vault.admin().await;
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(create(&mut admin, customer("t")).await);
    }
    let [a, b, c, d, e, f, g]: [String; 7] = ids.try_into().unwrap();
    let read = |ks: Keyspace, key: Vec<u8>| store.get(ks, &key).unwrap().unwrap();

    // A field ciphertext moved to another record.
    put(
        store,
        Keyspace::Records,
        field_key(&b, "email"),
        read(Keyspace::Records, field_key(&a, "email")),
    );
    assert_data_loss(&vault, &b, "moved to another record").await;

    // A field ciphertext moved to another field of the same record.
    put(
        store,
        Keyspace::Records,
        field_key(&c, "name"),
        read(Keyspace::Records, field_key(&c, "notes")),
    );
    assert_data_loss(&vault, &c, "moved to another field").await;

    // Wrapped DEKs swapped between two records (in the key store).
    let keys = vault.key_store();
    let at_v1 = |id: &str| {
        let mut k = id_bytes(id);
        k.extend_from_slice(&1u64.to_be_bytes());
        k
    };
    let (kd, ke) = (
        keys.get(Keyspace::Deks, &at_v1(&d)).unwrap().unwrap(),
        keys.get(Keyspace::Deks, &at_v1(&e)).unwrap().unwrap(),
    );
    put(keys, Keyspace::Deks, at_v1(&d), ke);
    put(keys, Keyspace::Deks, at_v1(&e), kd);
    assert_data_loss(&vault, &d, "wrapped DEK swapped").await;
    assert_data_loss(&vault, &e, "wrapped DEK swapped").await;

    // A field removed behind the vault's back.
    let mut batch = Batch::new();
    batch.delete(Keyspace::Records, field_key(&f, "email"));
    store.write(batch).unwrap();
    assert_data_loss(&vault, &f, "field removed").await;

    // An older ciphertext of the same field replayed after an update.
    let old = read(Keyspace::Records, field_key(&g, "email"));
    let mut admin = vault.admin().await;
    admin
        .records
        .update_record(pb::UpdateRecordRequest {
            id: g.clone(),
            set: vec![field("phone", "+15555550100")],
            clear: vec![],
            expected_version: None,
        })
        .await
        .unwrap();
    put(store, Keyspace::Records, field_key(&g, "email"), old);
    assert_data_loss(&vault, &g, "old ciphertext replayed").await;

    // Every byte of a field ciphertext and of the header, flipped one at a time.
    let h = create(
        &mut admin,
        vec![field("name", "Flip Me"), field("email", "f@example.com")],
    )
    .await;
    let (header, fields) = stored(store, &h);
    let (name_key, name_ct) = fields
        .into_iter()
        .find(|(k, _)| k.ends_with(b"name"))
        .unwrap();
    let mut cases = 0;
    for i in 0..name_ct.len() {
        put(
            store,
            Keyspace::Records,
            name_key.clone(),
            flip(&name_ct, i),
        );
        assert_data_loss(&vault, &h, &format!("field byte {i} flipped")).await;
        cases += 1;
    }
    put(store, Keyspace::Records, name_key, name_ct);
    for i in 0..header.len() {
        put(store, Keyspace::Headers, id_bytes(&h), flip(&header, i));
        assert_data_loss(&vault, &h, &format!("header byte {i} flipped")).await;
        cases += 1;
    }
    put(store, Keyspace::Headers, id_bytes(&h), header);
    assert!(cases > 60, "{cases}");
    // Restored, the record reads again: the failures above were the tampering's doing.
    let resp = get(&mut admin, &h, "support").await.unwrap();
    assert_eq!(
        value_of(&resp, "name"),
        Some(("Flip Me", Disclosure::Plain))
    );
    assert!(
        get(&mut admin, &a, "support").await.is_ok(),
        "untouched records still read"
    );
}

fn flip(bytes: &[u8], i: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[i] ^= 0x5a;
    out
}

/// No record exists in the store: a refused write left nothing behind.
fn record_count(store: &dyn strongroom::storage::Store) -> (usize, usize) {
    (
        store.scan_prefix(Keyspace::Headers, b"").unwrap().len(),
        store.scan_prefix(Keyspace::Records, b"").unwrap().len(),
    )
}

#[tokio::test]
async fn bad_input_gets_a_clear_status_naming_the_field_and_changes_nothing() {
    let vault = Vault::start_shared().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("bad")).await;
    let before = record_count(vault.store());

    let mut create_err = async |collection: &str, fields: Vec<pb::Field>| {
        admin
            .records
            .create_record(pb::CreateRecordRequest {
                collection: collection.into(),
                fields,
                honeytoken: false,
            })
            .await
            .map(|r| r.into_inner().id)
    };
    let cases: Vec<(&str, Vec<pb::Field>, Code, &str)> = vec![
        (
            "vendors",
            customer("x"),
            Code::InvalidArgument,
            "collection: unknown collection",
        ),
        (
            "",
            customer("x"),
            Code::InvalidArgument,
            "collection: collection is required",
        ),
        (
            "customers",
            vec![],
            Code::InvalidArgument,
            "fields: a record needs at least one field",
        ),
        (
            "customers",
            vec![field("name", "Ada"), field("shoe_size", "9")],
            Code::InvalidArgument,
            "fields[1].name: unknown field",
        ),
        (
            "customers",
            vec![field("email", "not-an-email")],
            Code::InvalidArgument,
            "fields[0] (email): not a valid email",
        ),
        (
            "customers",
            vec![field("name", "Ada"), field("ssn", "000-12-3456")],
            Code::InvalidArgument,
            "fields[1] (ssn): not a valid SSN",
        ),
        (
            "customers",
            vec![field("card_number", "4242 4242 4242 4241")],
            Code::InvalidArgument,
            "fields[0] (card_number): not a valid card number",
        ),
        (
            "customers",
            vec![field("date_of_birth", "1999-02-30")],
            Code::InvalidArgument,
            "fields[0] (date_of_birth): not a valid date",
        ),
        (
            "customers",
            vec![field("phone", "12")],
            Code::InvalidArgument,
            "fields[0] (phone): not a valid phone",
        ),
        (
            "customers",
            vec![field("name", "   ")],
            Code::InvalidArgument,
            "fields[0] (name): value must not be empty",
        ),
        (
            "customers",
            vec![field("notes", &"x".repeat(5000))],
            Code::InvalidArgument,
            "fields[0] (notes): value is 5000 bytes",
        ),
        (
            "customers",
            vec![field("notes", "a\u{7}b")],
            Code::InvalidArgument,
            "fields[0] (notes): value must not contain control",
        ),
        (
            "customers",
            vec![field("name", "Ada"), field("name", "Bob")],
            Code::InvalidArgument,
            "fields[1] (name): given more than once",
        ),
        (
            "customers",
            vec![field("Name", "Ada")],
            Code::InvalidArgument,
            "fields[0].name: field name must be",
        ),
        (
            "customers",
            (0..65).map(|_| field("name", "Ada")).collect(),
            Code::InvalidArgument,
            "fields: 65 fields",
        ),
    ];
    for (collection, fields, code, message) in cases {
        let status = assert_code(create_err(collection, fields).await, code);
        assert!(
            status.message().starts_with(message),
            "want {message:?}, got {:?}",
            status.message()
        );
        assert!(
            !status.message().contains("4241") && !status.message().contains("not-an-email"),
            "errors never echo values: {}",
            status.message()
        );
    }

    let mut admin = vault.admin().await;
    let get_err = |id: &str, fields: Vec<String>, purpose: &str| pb::GetRecordRequest {
        id: id.into(),
        fields,
        purpose: purpose.into(),
    };
    let reads: Vec<(pb::GetRecordRequest, &str)> = vec![
        (get_err("", vec![], "support"), "id: is required"),
        (get_err("xyz", vec![], "support"), "id: must be a record id"),
        (
            get_err(&id.to_uppercase(), vec![], "support"),
            "id: must be a record id",
        ),
        (
            get_err(&id, vec![], ""),
            "purpose: a declared purpose is required",
        ),
        (
            get_err(&id, vec![], "curiosity"),
            "purpose: unknown purpose",
        ),
        (
            get_err(&id, vec!["shoe_size".into()], "support"),
            "fields[0]: unknown field",
        ),
        (
            get_err(&id, vec!["email".into(), "email".into()], "support"),
            "fields[1] (email): requested more than once",
        ),
        (
            get_err(
                &id,
                (0..10_000).map(|i| format!("f{i}")).collect(),
                "support",
            ),
            "fields: 10000 fields",
        ),
    ];
    for (request, message) in reads {
        let status = assert_code(
            admin.records.get_record(request).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().starts_with(message),
            "want {message:?}, got {:?}",
            status.message()
        );
    }

    let update = |set: Vec<pb::Field>, clear: Vec<&str>| pb::UpdateRecordRequest {
        id: id.clone(),
        set,
        clear: clear.into_iter().map(str::to_owned).collect(),
        expected_version: None,
    };
    let updates: Vec<(pb::UpdateRecordRequest, &str)> = vec![
        (update(vec![], vec![]), "set: nothing to update"),
        (
            update(vec![field("email", "nope")], vec![]),
            "set[0] (email): not a valid email",
        ),
        (
            update(vec![field("email", "a@example.com")], vec!["email"]),
            "clear[0] (email): named more than once",
        ),
        (update(vec![], vec!["shoe_size"]), "clear[0]: unknown field"),
        (
            update(
                vec![],
                vec![
                    "name",
                    "email",
                    "phone",
                    "address",
                    "date_of_birth",
                    "ssn",
                    "card_number",
                    "notes",
                ],
            ),
            "clear: an update may not clear every field",
        ),
    ];
    for (request, message) in updates {
        let status = assert_code(
            admin.records.update_record(request).await,
            Code::InvalidArgument,
        );
        assert!(
            status.message().starts_with(message),
            "want {message:?}, got {:?}",
            status.message()
        );
    }
    assert_code(
        admin
            .records
            .delete_record(pb::DeleteRecordRequest {
                id: "nope".into(),
                wait_for_purge: true,
            })
            .await,
        Code::InvalidArgument,
    );

    // An oversized message: RESOURCE_EXHAUSTED, before any handler.
    let huge = vec![field("notes", &"y".repeat(2 << 20))];
    let status = assert_code(
        admin
            .records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: huge,
                honeytoken: false,
            })
            .await,
        Code::ResourceExhausted,
    );
    assert!(
        status.message().contains("too large"),
        "{}",
        status.message()
    );

    // Nothing above wrote anything, and the record is unchanged.
    assert_eq!(record_count(vault.store()), before);
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(resp.version, 1);
    assert_eq!(
        value_of(&resp, "email"),
        Some(("ada.bad@example.com", Disclosure::Plain))
    );
}

#[tokio::test]
async fn concurrent_updates_of_one_record_lose_nothing() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("cc")).await;
    let mut tasks = Vec::new();
    for i in 0..16 {
        let mut client = vault.admin().await;
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            client
                .records
                .update_record(pb::UpdateRecordRequest {
                    id,
                    set: vec![field("notes", &format!("note {i}"))],
                    clear: vec![],
                    expected_version: None,
                })
                .await
                .unwrap()
                .into_inner()
                .version
        }));
    }
    let mut versions = Vec::new();
    for t in tasks {
        versions.push(t.await.unwrap());
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (2..=17).collect::<Vec<_>>(),
        "each update got its own version"
    );
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(resp.version, 17);
}

/// A `CreateRecordRequest` whose `collection` (field 1) is raw bytes, to send invalid UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreate {
    #[prost(bytes = "vec", tag = "1")]
    collection: Vec<u8>,
}

#[tokio::test]
async fn invalid_utf8_is_invalid_argument() {
    let vault = Vault::start_shared().await;
    let channel = tonic::transport::Endpoint::from_shared(vault.addr())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(RawCreate {
        collection: vec![b'c', 0xff, 0xfe],
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", vault.admin_token).parse().unwrap(),
    );
    let codec = tonic_prost::ProstCodec::<RawCreate, pb::CreateRecordResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/strongroom.v1.Records/CreateRecord");
    let status = assert_code(
        grpc.unary(request, path, codec).await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("collection"),
        "{}",
        status.message()
    );
    assert_eq!(record_count(vault.store()), (0, 0));
}

#[tokio::test]
async fn a_shred_without_waiting_returns_at_once_and_the_purge_follows() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("async")).await;
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
    assert!(receipt.purge_pending && receipt.data_key_destroyed);
    assert_eq!(receipt.purged_at_unix_ms, 0);
    // The record is gone at once: its key is destroyed.
    assert_code(get(&mut admin, &id, "support").await, Code::NotFound);
    // The purge completes off the request path, and says so in the audit log.
    let filter = pb::EventFilter {
        record_id: id.clone(),
        method: "Records/Purge".into(),
        ..Default::default()
    };
    let mut purged = Vec::new();
    for _ in 0..100 {
        purged = admin
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: Some(filter.clone()),
                page_size: 10,
                after_seq: 0,
            })
            .await
            .unwrap()
            .into_inner()
            .events;
        if !purged.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(purged.len(), 1, "one purge event for the record");
    assert!(purged[0].time_unix_ms >= receipt.shredded_at_unix_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9_and_no_record_is_partial() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut vault = ChildVault::start(&data);
    let token = vault
        .token
        .clone()
        .expect("the first start prints the admin token");
    let acked: std::sync::Arc<std::sync::Mutex<Vec<(String, u64)>>> = Default::default();
    let mut next = 0u64;
    for cycle in 0..4u64 {
        let client = strongroom::client::connect(&vault.addr, &token)
            .await
            .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..32u64 {
            let (mut c, acked, stop) = (client.clone(), acked.clone(), stop.clone());
            let base = next + w * 1_000_000;
            writers.push(tokio::spawn(async move {
                let mut n = base;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tag: String = n
                        .to_string()
                        .bytes()
                        .map(|b| char::from(b'a' + (b - b'0')))
                        .collect();
                    let fields = customer(&tag);
                    match c
                        .records
                        .create_record(pb::CreateRecordRequest {
                            collection: "customers".into(),
                            fields,
                            honeytoken: false,
                        })
                        .await
                    {
                        Ok(r) => acked.lock().unwrap().push((r.into_inner().id, n)),
                        Err(_) => break,
                    }
                    n += 1;
                }
            }));
        }
        next += 32 * 1_000_000;
        tokio::time::sleep(std::time::Duration::from_millis(150 + 100 * cycle)).await;
        vault.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            let _ = w.await;
        }
        vault = ChildVault::start(&data);
        let mut admin = strongroom::client::connect(&vault.addr, &token)
            .await
            .unwrap();
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            !acked_now.is_empty(),
            "cycle {cycle}: no write was acknowledged"
        );
        for (id, n) in &acked_now {
            let tag: String = n
                .to_string()
                .bytes()
                .map(|b| char::from(b'a' + (b - b'0')))
                .collect();
            let resp = get(&mut admin, id, "support")
                .await
                .unwrap_or_else(|s| panic!("cycle {cycle}: acknowledged record {id} lost: {s:?}"));
            assert_eq!(resp.fields.len(), 8, "record {id} is partial");
            assert_eq!(
                value_of(&resp, "name").map(|(v, _)| v.to_owned()),
                Some(format!("Ada {tag} Lovelace"))
            );
            assert_eq!(
                value_of(&resp, "notes").map(|(v, _)| v.to_owned()),
                Some(format!("prefers email; ref {tag}"))
            );
        }
        // The audit chain survived the crash too.
        let report = admin
            .audit
            .verify_log(pb::VerifyLogRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(report.ok, "cycle {cycle}: {report:?}");
        eprintln!(
            "cycle {cycle}: {} acknowledged writes so far, all present and whole; audit chain verifies",
            acked_now.len()
        );
    }
}

#[tokio::test]
async fn the_master_key_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let config = dir.path().join("strongroom.toml");
    std::fs::write(&config, "master_key_env = \"STRONGROOM_TEST_KEK\"\n").unwrap();
    let config = config.to_str().unwrap();
    let key = "7".repeat(64);
    let mut vault = ChildVault::start_with(
        &data,
        &["--config", config],
        &[("STRONGROOM_TEST_KEK", &key)],
    );
    let token = vault.token.clone().unwrap();
    // The keyring is sealed under the key from the environment: no key in clear on disk.
    let keyring = std::fs::read(dir.path().join("keys").join("keyring")).unwrap();
    assert!(!String::from_utf8_lossy(&keyring).contains("strongroom-keyring"));
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    let id = create(&mut admin, customer("env")).await;
    vault.kill();

    // The same key reads the record back; another key reads nothing.
    let mut vault = ChildVault::start_with(
        &data,
        &["--config", config],
        &[("STRONGROOM_TEST_KEK", &key)],
    );
    let mut admin = strongroom::client::connect(&vault.addr, &token)
        .await
        .unwrap();
    assert_eq!(
        get(&mut admin, &id, "support").await.unwrap().fields.len(),
        8
    );
    vault.kill();
    // Another key: the vault refuses to start rather than serve noise or fork the audit chain.
    let other = "8".repeat(64);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config,
            "--data-dir",
        ])
        .arg(&data)
        .arg("--policies")
        .arg(policies_dir())
        .env("STRONGROOM_TEST_KEK", &other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not open with the key in the environment"),
        "{stderr}"
    );
    assert!(!stderr.contains(&other), "the key is never printed");
}

#[tokio::test]
async fn revoked_tokens_stop_working_and_the_last_admin_cannot_be_revoked() {
    let mut vault = Vault::start().await;
    let token = vault.token("svc:crm", &["role:writer"]).await;
    let mut crm = vault.client(&token).await;
    create(&mut crm, customer("rev")).await;
    let mut admin = vault.admin().await;
    let list = admin
        .tokens
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens;
    let subjects: Vec<_> = list.iter().map(|t| t.subject.as_str()).collect();
    assert_eq!(subjects, ["user:admin", "svc:crm"]);
    assert!(
        list.iter()
            .all(|t| t.id.len() == 8 && !token.contains(&t.id)),
        "ids are hash prefixes, not token parts"
    );

    let revoked = admin
        .tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            subject: "svc:crm".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    assert_code(
        crm.records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: customer("x"),
                honeytoken: false,
            })
            .await,
        Code::Unauthenticated,
    );
    // Revocation is durable.
    vault.restart().await;
    let mut crm = vault.client(&token).await;
    assert_code(
        crm.records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: customer("y"),
                honeytoken: false,
            })
            .await,
        Code::Unauthenticated,
    );
    let mut admin = vault.admin().await;
    let last = admin
        .tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            subject: "user:admin".into(),
        })
        .await;
    let status = assert_code(last, Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("no token that holds `tokens manage`"),
        "{}",
        status.message()
    );
    let mut writer = vault.as_role("role:writer").await;
    assert_code(
        writer.tokens.list_tokens(pb::ListTokensRequest {}).await,
        Code::PermissionDenied,
    );
    // Both the issue and the revocation are in the audit log.
    let events = admin
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: Some(pb::EventFilter {
                method: "Tokens/RevokeTokens".into(),
                ..Default::default()
            }),
            page_size: 10,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    let results: Vec<_> = events.iter().map(|e| e.result.as_str()).collect();
    assert_eq!(results, ["OK", "INVALID_ARGUMENT"]);
    assert!(events[0].detail.contains("1 token(s) of svc:crm revoked"));
}
