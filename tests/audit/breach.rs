//! Breach response (issue 11, points 4 and 5): honeytoken records trip one critical alert per
//! touching read, in the read's own commit, while answering like any record; alerts carry a
//! severity, are listed by `audit alerts` and keep the chain verifiable (online and offline);
//! `audit report` says per subject which records and fields were disclosed, plain or masked.

use std::collections::BTreeMap;

use strongroom::{api::pb, client::Client, crypto::PublicKey, domain::Clock};
use tonic::Code;

use crate::support::{Vault, assert_code, create, customer, events, field, get};

/// Creates a honeytoken in `customers` as `client`.
async fn honeytoken(
    client: &mut Client,
    fields: Vec<pb::Field>,
) -> Result<pb::CreateRecordResponse, tonic::Status> {
    client
        .records
        .create_record(pb::CreateRecordRequest {
            collection: "customers".into(),
            fields,
            honeytoken: true,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn alerts(client: &mut Client, severity: &str) -> Vec<pb::AuditEvent> {
    events(
        client,
        pb::EventFilter {
            alerts_only: true,
            severity: severity.into(),
            ..pb::EventFilter::default()
        },
    )
    .await
}

/// A read's answer with its id blanked: what must not tell a decoy from a record.
fn shape(mut resp: pb::GetRecordResponse) -> pb::GetRecordResponse {
    resp.id.clear();
    resp
}

/// Runs the `strongroom` binary against `vault` with `token`; its stdout. On a blocking thread:
/// the test's runtime also serves the vault.
async fn cli(vault: &Vault, token: &str, args: &[&str]) -> String {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"));
    cmd.args(args)
        .env("STRONGROOM_ADDR", vault.addr())
        .env("STRONGROOM_TOKEN", token);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
async fn a_honeytoken_read_raises_one_critical_alert_and_answers_like_any_record() {
    // svc:bulk may make one call a second: its second call trips the request limit (warning).
    let vault = Vault::start_configured(
        "[rate_limits.\"svc:bulk\"]\nrequests_per_second = 1\n",
        "",
        Clock::manual(1_800_000_000_000),
    )
    .await;
    let mut admin = vault.admin().await;
    let normal = create(&mut admin, customer("same")).await;
    let decoy = honeytoken(&mut admin, customer("same")).await.unwrap();
    assert_eq!(decoy.version, 1);
    assert_eq!(decoy.id.len(), normal.len(), "the same id format");
    let decoy = decoy.id;

    // Without `honeytokens manage`: refused, naming the privilege, and nothing stored.
    for role in ["role:writer", "role:auditor", "role:support"] {
        let mut c = vault.as_role(role).await;
        let refused = honeytoken(&mut c, customer("x")).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{role}");
        assert!(
            refused.message().contains("honeytokens manage"),
            "{role}: {}",
            refused.message()
        );
    }

    let mut support = vault.as_role("role:support").await;
    let mut auditor = vault.as_role("role:auditor").await;
    assert!(alerts(&mut auditor, "").await.is_empty());

    // A normal read: no alert.
    let plain = get(&mut support, &normal, "support").await.unwrap();
    assert!(alerts(&mut auditor, "").await.is_empty());

    // The decoy's answer is the normal one's, apart from the id: no flag, same fields, same
    // disclosures and reasons, same version.
    let tripped = get(&mut support, &decoy, "support").await.unwrap();
    assert_eq!(shape(tripped), shape(plain.clone()));
    assert!(!format!("{plain:?}").contains("honeytoken"));

    let found = alerts(&mut auditor, "").await;
    assert_eq!(found.len(), 1, "{found:?}");
    let alert = &found[0];
    assert_eq!(alert.method, "Alerts/Honeytoken");
    assert_eq!(alert.severity, "critical");
    assert_eq!(alert.record_id, decoy);
    assert_eq!(alert.subject, "svc:support");
    assert_eq!(alert.roles, vec!["role:support".to_owned()]);
    assert_eq!(alert.purpose, "support");
    assert!(
        alert.fields.is_empty(),
        "an alert carries no field outcomes"
    );
    // In the read's own commit: the read event just before it, with the same request id.
    let read = events(
        &mut auditor,
        pb::EventFilter {
            method: "Records/GetRecord".into(),
            record_id: decoy.clone(),
            ..pb::EventFilter::default()
        },
    )
    .await;
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].request_id, alert.request_id);
    assert_eq!(read[0].seq + 1, alert.seq);
    assert_eq!(read[0].severity, "", "the read event itself is ordinary");

    // One alert per touching request: a read of chosen fields, a read by another role that
    // sees nothing of it, an update (the flag stays), then a read after it.
    support
        .records
        .get_record(pb::GetRecordRequest {
            id: decoy.clone(),
            fields: vec!["name".into()],
            purpose: "support".into(),
        })
        .await
        .unwrap();
    let mut marketing = vault.as_role("role:marketing").await;
    get(&mut marketing, &decoy, "support").await.unwrap();
    admin
        .records
        .update_record(pb::UpdateRecordRequest {
            id: decoy.clone(),
            set: vec![field("notes", "changed")],
            ..Default::default()
        })
        .await
        .unwrap();
    let after = get(&mut support, &decoy, "support").await.unwrap();
    assert_eq!(after.version, 2);
    let found = alerts(&mut auditor, "critical").await;
    assert_eq!(found.len(), 4, "{found:?}");
    assert_eq!(found[2].subject, "svc:marketing");
    assert!(found.iter().all(|a| a.record_id == decoy));
    // The normal record, read again: still none for it.
    get(&mut support, &normal, "support").await.unwrap();
    assert!(
        alerts(&mut auditor, "")
            .await
            .iter()
            .all(|a| a.record_id != normal)
    );

    // A limit alert is a warning.
    let mut bulk = vault
        .client(&vault.token("svc:bulk", &["role:support"]).await)
        .await;
    get(&mut bulk, &normal, "support").await.unwrap();
    assert_code(
        get(&mut bulk, &normal, "support").await,
        Code::ResourceExhausted,
    );
    let warnings = alerts(&mut auditor, "warning").await;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].method, "Limits/RequestLimit");
    assert_eq!(warnings[0].subject, "svc:bulk");
    let every = alerts(&mut auditor, "").await;
    assert_eq!(every.len(), 5);
    assert!(every.windows(2).all(|w| w[0].seq < w[1].seq), "newest last");
    // Non-alert events are not listed, whatever their method.
    assert!(every.iter().all(|e| !e.severity.is_empty()));

    // `audit alerts` on the command line, as an auditor: both kinds, with their severities.
    let text = cli(
        &vault,
        &vault.token("user:ann", &["role:auditor"]).await,
        &["audit", "alerts", "--json"],
    )
    .await;
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(lines[0]["severity"], "critical");
    assert_eq!(lines[0]["method"], "Alerts/Honeytoken");
    assert_eq!(lines[0]["record_id"], decoy.as_str());
    assert_eq!(lines[4]["severity"], "warning");
    assert_eq!(lines[4]["method"], "Limits/RequestLimit");
    let since_last = cli(
        &vault,
        &vault.admin_token,
        &[
            "audit",
            "alerts",
            "--since",
            &every[4].time_unix_ms.to_string(),
        ],
    )
    .await;
    assert!(since_last.contains("Limits/RequestLimit"), "{since_last}");
    // A reader of records may not list alerts.
    assert_code(
        support
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: Some(pb::EventFilter {
                    alerts_only: true,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );

    // The chain verifies with alerts in it, on the server and offline from an export.
    let verified = auditor
        .audit
        .verify_log(pb::VerifyLogRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(verified.ok, "{verified:?}");
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
    assert!(export.contains("\"severity\":\"critical\""));
    assert!(export.contains("\"severity\":\"warning\""));
    let pem = auditor
        .keys
        .get_public_key(pb::GetPublicKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .pem;
    let public = PublicKey::from_pem(&pem).unwrap();
    let report = strongroom::audit::verify_export(&export, &public, None).unwrap();
    assert!(report.from_genesis && report.ends_at_head, "{report:?}");
    // An alert's severity is covered by its chain hash: changed, the export fails.
    let forged = export.replacen("\"severity\":\"critical\"", "\"severity\":\"warning\"", 1);
    assert!(strongroom::audit::verify_export(&forged, &public, None).is_err());
}

/// `(records, {(field, outcome): records})` of one subject in a report.
type Seen = (u64, BTreeMap<(String, String), u64>);

fn seen(r: &pb::ReportResponse) -> BTreeMap<String, Seen> {
    r.subjects
        .iter()
        .map(|s| {
            let fields = s
                .fields
                .iter()
                .map(|f| ((f.field.clone(), f.outcome.clone()), f.records))
                .collect();
            (s.subject.clone(), (s.records, fields))
        })
        .collect()
}

fn expect(records: u64, fields: &[(&str, &str, u64)]) -> Seen {
    (
        records,
        fields
            .iter()
            .map(|(f, o, n)| (((*f).to_owned(), (*o).to_owned()), *n))
            .collect(),
    )
}

async fn report(client: &mut Client, request: pb::ReportRequest) -> pb::ReportResponse {
    client.audit.report(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn the_breach_report_says_who_saw_which_fields_of_how_many_records() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let ids = [
        create(&mut admin, customer("a")).await,
        create(&mut admin, customer("b")).await,
        create(&mut admin, customer("c")).await,
    ];
    let mut support = vault.as_role("role:support").await;
    let mut billing = vault.as_role("role:billing").await;
    let mut auditor = vault.as_role("role:auditor").await;

    // support: records 0 and 1 (name and notes plain; email, phone, address masked), record 0
    // twice; a read for a purpose it has no rules for discloses nothing, a missing id fails.
    for id in [&ids[0], &ids[1], &ids[0]] {
        get(&mut support, id, "support").await.unwrap();
    }
    get(&mut support, &ids[2], "billing").await.unwrap();
    assert_code(
        get(&mut support, "00000000000000000000000000000000", "support").await,
        Code::NotFound,
    );
    let support_last = events(
        &mut auditor,
        pb::EventFilter {
            subject: "svc:support".into(),
            ..Default::default()
        },
    )
    .await
    .last()
    .unwrap()
    .time_unix_ms;
    // The next events must carry a later time than support's last (times are whole ms): wait
    // for the clock to pass it rather than for a fixed time.
    while strongroom::vault::now_ms() <= support_last {
        tokio::task::yield_now().await;
    }
    // billing: records 0 and 2 (name, email, address plain; card masked), record 0 twice, and
    // one read of the email alone.
    for id in [&ids[0], &ids[2], &ids[0]] {
        get(&mut billing, id, "billing").await.unwrap();
    }
    billing
        .records
        .get_record(pb::GetRecordRequest {
            id: ids[1].clone(),
            fields: vec!["email".into()],
            purpose: "billing".into(),
        })
        .await
        .unwrap();

    let support_saw = expect(
        2,
        &[
            ("address", "masked", 2),
            ("email", "masked", 2),
            ("name", "plain", 2),
            ("notes", "plain", 2),
            ("phone", "masked", 2),
        ],
    );
    let billing_saw = expect(
        3,
        &[
            ("address", "plain", 2),
            ("card_number", "masked", 2),
            ("email", "plain", 3),
            ("name", "plain", 2),
        ],
    );
    let all = report(&mut auditor, pb::ReportRequest::default()).await;
    assert_eq!(
        seen(&all),
        BTreeMap::from([
            ("svc:billing".to_owned(), billing_saw.clone()),
            ("svc:support".to_owned(), support_saw.clone()),
        ]),
        "{all:?}"
    );
    let calls: BTreeMap<_, _> = all
        .subjects
        .iter()
        .map(|s| (s.subject.as_str(), (s.calls, s.purposes.clone())))
        .collect();
    assert_eq!(calls["svc:support"], (3, vec!["support".to_owned()]));
    assert_eq!(calls["svc:billing"], (4, vec!["billing".to_owned()]));

    // --subject
    let one = report(
        &mut auditor,
        pb::ReportRequest {
            subject: "svc:billing".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seen(&one),
        BTreeMap::from([("svc:billing".to_owned(), billing_saw.clone())])
    );
    // --field: only that field's disclosures, and only the records it was disclosed of.
    let email = report(
        &mut auditor,
        pb::ReportRequest {
            field: "email".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seen(&email),
        BTreeMap::from([
            (
                "svc:billing".to_owned(),
                expect(3, &[("email", "plain", 3)])
            ),
            (
                "svc:support".to_owned(),
                expect(2, &[("email", "masked", 2)])
            ),
        ])
    );
    let notes = report(
        &mut auditor,
        pb::ReportRequest {
            field: "notes".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seen(&notes),
        BTreeMap::from([(
            "svc:support".to_owned(),
            expect(2, &[("notes", "plain", 2)])
        )])
    );
    // A field only ever withheld was disclosed to no one.
    let ssn = report(
        &mut auditor,
        pb::ReportRequest {
            field: "ssn".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(ssn.subjects.is_empty(), "{ssn:?}");
    // The time range: up to support's last event, then after it.
    let before = report(
        &mut auditor,
        pb::ReportRequest {
            to_unix_ms: Some(support_last),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seen(&before),
        BTreeMap::from([("svc:support".to_owned(), support_saw)])
    );
    let later = report(
        &mut auditor,
        pb::ReportRequest {
            from_unix_ms: Some(support_last + 1),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seen(&later),
        BTreeMap::from([("svc:billing".to_owned(), billing_saw)])
    );

    // The command line, as JSON and as a table.
    let auditor_token = vault.token("user:ann", &["role:auditor"]).await;
    let json: serde_json::Value = serde_json::from_str(
        &cli(
            &vault,
            &auditor_token,
            &[
                "audit",
                "report",
                "--since",
                "0",
                "--subject",
                "svc:support",
                "--json",
            ],
        )
        .await,
    )
    .unwrap();
    let subjects = json["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1, "{json}");
    assert_eq!(subjects[0]["subject"], "svc:support");
    assert_eq!(subjects[0]["records"], 2);
    assert_eq!(subjects[0]["plain"]["name"], 2);
    assert_eq!(subjects[0]["masked"]["email"], 2);
    assert!(subjects[0]["plain"].get("email").is_none());
    let table = cli(
        &vault,
        &auditor_token,
        &["audit", "report", "--since", "0", "--field", "email"],
    )
    .await;
    assert!(table.contains("svc:billing"), "{table}");
    assert!(table.contains("email:3"), "{table}");
    assert!(table.contains("email:2"), "{table}");

    // Only `audit read` may ask.
    assert_code(
        support.audit.report(pb::ReportRequest::default()).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn granting_honeytokens_manage_waits_for_a_second_policy_admin() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let text = admin
        .policies
        .get_policy(pb::GetPolicyRequest { version: None })
        .await
        .unwrap()
        .into_inner()
        .text;
    let grant = format!("{text}p, role:writer, honeytokens, manage, *, allow\n");
    let r = admin
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text: grant,
            comment: "writers plant decoys".into(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.version.is_none(), "applied at once: {r:?}");
    let pending = r.pending.unwrap();
    assert_eq!(
        pending.reasons,
        vec!["role:writer would gain `honeytokens manage`".to_owned()]
    );
    // Not in force until approved.
    let mut writer = vault.as_role("role:writer").await;
    assert_code(
        honeytoken(&mut writer, customer("w")).await,
        Code::PermissionDenied,
    );
    // A misspelt privilege is refused naming the closed set.
    let bad = admin
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text: format!("{text}p, role:writer, honeytokens, read, *, allow\n"),
            comment: String::new(),
            expected_version: None,
        })
        .await
        .unwrap_err();
    assert!(
        bad.message().contains("honeytokens manage"),
        "{}",
        bad.message()
    );
}

#[tokio::test]
async fn a_find_hit_an_export_and_a_subject_export_of_a_honeytoken_each_raise_one_alert() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut decoy_fields = customer("decoy");
    decoy_fields.retain(|f| f.name != "email");
    decoy_fields.push(field("email", "canary@example.com"));
    let decoy = honeytoken(&mut admin, decoy_fields).await.unwrap().id;
    let normal = create(&mut admin, customer("real")).await;
    let mut auditor = vault.as_role("role:auditor").await;

    // A find that hits the decoy (support may find by email): one alert; the hit looks like
    // any record. A find that hits only the normal record: none.
    let mut support = vault.as_role("role:support").await;
    let find = |value: &str| pb::FindRecordsRequest {
        collection: "customers".into(),
        field: "email".into(),
        value: value.into(),
        purpose: "support".into(),
        fields: vec![],
    };
    let hit = support
        .records
        .find_records(find(" CANARY@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hit.records.len(), 1);
    assert_eq!(hit.records[0].id, decoy);
    let other = support
        .records
        .find_records(find("ada.real@example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(other.records.len(), 1);
    assert_eq!(
        shape(other.records[0].clone()).fields.len(),
        hit.records[0].fields.len()
    );
    let found = alerts(&mut auditor, "critical").await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].record_id, decoy);
    assert_eq!(found[0].purpose, "support");

    // An analytics export touches every record: one alert, for the decoy only.
    let mut analyst = vault.as_role("role:analyst").await;
    let mut stream = analyst
        .records
        .export_records(pb::ExportRecordsRequest {
            collection: "customers".into(),
            purpose: "analytics".into(),
            fields: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut exported = Vec::new();
    while let Some(r) = stream.message().await.unwrap() {
        exported.push(r.id);
    }
    exported.sort();
    let mut both = vec![decoy.clone(), normal.clone()];
    both.sort();
    assert_eq!(exported, both);
    let found = alerts(&mut auditor, "critical").await;
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[1].record_id, decoy);
    assert_eq!(found[1].subject, "svc:analyst");
    assert_eq!(found[1].purpose, "analytics");
    // The breach report counts the export's pseudonyms per record.
    let analytics = report(
        &mut auditor,
        pb::ReportRequest {
            subject: "svc:analyst".into(),
            field: "email".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seen(&analytics),
        BTreeMap::from([(
            "svc:analyst".to_owned(),
            expect(2, &[("email", "pseudonym", 2)])
        )])
    );

    // A subject-access export of the decoy: one alert, and the document's access history does
    // not list the alerts (the privacy officer has no `audit read`).
    let mut dpo = vault.as_role("role:privacy_officer").await;
    let doc = dpo
        .records
        .export_subject(pb::ExportSubjectRequest {
            subject: Some(pb::export_subject_request::Subject::RecordId(decoy.clone())),
        })
        .await
        .unwrap()
        .into_inner()
        .document;
    assert!(!doc.contains("Alerts/"), "{doc}");
    assert!(!doc.contains("honeytoken"), "{doc}");
    assert!(
        doc.contains("Records/FindRecords"),
        "the accesses are there: {doc}"
    );
    let found = alerts(&mut auditor, "critical").await;
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(found[2].subject, "svc:privacy_officer");
}

#[tokio::test]
async fn clearing_the_honeytoken_flag_in_the_data_dir_makes_the_decoy_unreadable_not_silent() {
    use strongroom::storage::{Batch, Keyspace};

    use crate::support::id_bytes;

    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let normal = create(&mut admin, customer("plain")).await;
    let decoy = honeytoken(&mut admin, customer("decoy")).await.unwrap().id;
    let mut support = vault.as_role("role:support").await;
    get(&mut support, &decoy, "support").await.unwrap();
    let mut auditor = vault.as_role("role:auditor").await;
    assert_eq!(alerts(&mut auditor, "critical").await.len(), 1);

    // With the vault stopped, someone who can write the data dir clears the decoy's flag (the
    // top bit of the byte before the collection) and sets it on the normal record.
    const FLAG_BYTE: usize = 1 + 8 + 8;
    let flip = |store: &dyn strongroom::storage::Store, id: &str| {
        let header = store
            .get(Keyspace::Headers, &id_bytes(id))
            .unwrap()
            .unwrap();
        let mut changed = header.clone();
        changed[FLAG_BYTE] ^= 0x80;
        let mut batch = Batch::new();
        batch.put(Keyspace::Headers, id_bytes(id), changed);
        store.write(batch).unwrap();
        header
    };
    let (decoy_header, normal_header) = vault
        .with_store(|store| (flip(store, &decoy), flip(store, &normal)))
        .await;
    assert_ne!(decoy_header[FLAG_BYTE] & 0x80, 0, "the decoy had the flag");
    assert_eq!(normal_header[FLAG_BYTE] & 0x80, 0, "the record had none");

    // Neither reads: the flag is bound into the data key's AAD. Without that binding the decoy
    // would read as an ordinary record, with no alert.
    let mut support = vault.as_role("role:support").await;
    assert_code(get(&mut support, &decoy, "support").await, Code::DataLoss);
    assert_code(get(&mut support, &normal, "support").await, Code::DataLoss);
    let mut auditor = vault.as_role("role:auditor").await;
    assert_eq!(alerts(&mut auditor, "critical").await.len(), 1);

    // Restored, both read again and the decoy alerts again: the failures were the tampering's.
    vault
        .with_store(|store| {
            let mut batch = Batch::new();
            batch.put(Keyspace::Headers, id_bytes(&decoy), decoy_header);
            batch.put(Keyspace::Headers, id_bytes(&normal), normal_header);
            store.write(batch).unwrap();
        })
        .await;
    let mut support = vault.as_role("role:support").await;
    get(&mut support, &normal, "support").await.unwrap();
    get(&mut support, &decoy, "support").await.unwrap();
    let mut auditor = vault.as_role("role:auditor").await;
    assert_eq!(alerts(&mut auditor, "critical").await.len(), 2);
}
