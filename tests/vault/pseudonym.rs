//! Pseudonymized disclosure and the analytics export (issue 11, item 6): keyed tokens stable
//! within a purpose and unlinkable across purposes and fields, dates as the year, the export
//! over gRPC and through the CLI, and an audit log that holds no value and no token.

use std::collections::{BTreeMap, BTreeSet};

use strongroom::{
    api::pb::{self, Disclosure},
    domain::Clock,
};
use tonic::Code;

use crate::support::*;

/// A second purpose the analyst gets pseudonyms for, and the notes field (to put the same
/// value in two fields).
const EXTRA: &str = "\
p, role:analyst, customers.email, read_pseudonym, marketing, allow\n\
p, role:analyst, customers.notes, read_pseudonym, analytics, allow\n";

fn is_token(s: &str) -> bool {
    s.len() == 35
        && s.starts_with("pn_")
        && s[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn field_of<'a>(fields: &'a [pb::FieldResult], name: &str) -> (&'a str, Disclosure) {
    let f = fields
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("no field {name}"));
    (
        f.value.as_str(),
        Disclosure::try_from(f.disclosure).unwrap(),
    )
}

async fn export(
    client: &mut strongroom::client::Client,
    purpose: &str,
) -> Result<Vec<pb::ExportedRecord>, tonic::Status> {
    let mut stream = client
        .records
        .export_records(pb::ExportRecordsRequest {
            collection: "customers".into(),
            purpose: purpose.into(),
            fields: vec![],
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        out.push(r);
    }
    Ok(out)
}

#[tokio::test]
async fn pseudonyms_are_stable_within_a_purpose_and_unlinkable_across_purposes_and_fields() {
    let vault = Vault::start_configured("", EXTRA, Clock::system()).await;
    let mut admin = vault.admin().await;
    let plain = [
        ("name", "Ada Lovelace"),
        ("email", "Ada.L@Example.com"),
        ("phone", "+44 20 7946 0958"),
        ("date_of_birth", "1987-06-05"),
        ("ssn", "123-45-6789"),
        ("address", "12 St James's Square, London"),
        ("notes", "ada.l@example.com"),
    ];
    let a = create(&mut admin, plain.iter().map(|(n, v)| field(n, v)).collect()).await;
    // Another customer with the same address spelled otherwise: the same email token.
    let b = create(
        &mut admin,
        vec![
            field("name", "Bob Byron"),
            field("email", "ada.l@example.com"),
            field("date_of_birth", "1990-01-02"),
        ],
    )
    .await;
    let mut analyst = vault.as_role("role:analyst").await;

    let first = get(&mut analyst, &a, "analytics").await.unwrap();
    let again = get(&mut analyst, &a, "analytics").await.unwrap();
    assert_eq!(view(&first), view(&again), "two reads, one purpose");
    for name in ["name", "email", "phone", "ssn", "notes"] {
        let (token, d) = field_of(&first.fields, name);
        assert_eq!(d, Disclosure::Pseudonym, "{name}");
        assert!(is_token(token), "{name}: {token}");
    }
    assert_eq!(
        field_of(&first.fields, "date_of_birth"),
        ("1987", Disclosure::Pseudonym)
    );
    assert_eq!(
        field_of(&first.fields, "address"),
        ("", Disclosure::Withheld)
    );
    assert_eq!(
        field_of(&first.fields, "card_number"),
        ("", Disclosure::Withheld)
    );
    // A token is neither the value nor holds it, in its given or its stored form.
    let stored = get(&mut admin, &a, "legal").await.unwrap();
    for (name, given) in plain {
        let (token, _) = field_of(&first.fields, name);
        let (value, d) = field_of(&stored.fields, name);
        assert_eq!(d, Disclosure::Plain);
        for v in [given, value] {
            assert_ne!(token, v, "{name}");
            assert!(!token.contains(v), "{name}");
        }
    }

    let email = field_of(&first.fields, "email").0;
    let b_view = get(&mut analyst, &b, "analytics").await.unwrap();
    assert_eq!(
        field_of(&b_view.fields, "email").0,
        email,
        "same email, same token"
    );
    assert_ne!(
        field_of(&b_view.fields, "name").0,
        field_of(&first.fields, "name").0
    );
    assert_eq!(field_of(&b_view.fields, "date_of_birth").0, "1990");
    // The same text in another field is another token: fields do not link.
    assert_ne!(field_of(&first.fields, "notes").0, email);
    // Another purpose, another key: nothing joins.
    let marketing = get(&mut analyst, &a, "marketing").await.unwrap();
    let (other, d) = field_of(&marketing.fields, "email");
    assert_eq!(d, Disclosure::Pseudonym);
    assert!(is_token(other) && other != email);
    assert_eq!(
        field_of(&marketing.fields, "name"),
        ("", Disclosure::Withheld)
    );

    // The export gives what the reads gave.
    let exported = export(&mut analyst, "analytics").await.unwrap();
    assert_eq!(exported.len(), 2);
    assert!(exported.iter().all(|r| r.total == 2));
    assert_eq!(exported.iter().map(|r| r.scanned).max(), Some(2));
    let ea = exported.iter().find(|r| r.id == a).unwrap();
    let as_tuples = |fields: &[pb::FieldResult]| -> Vec<(String, i32, String)> {
        fields
            .iter()
            .map(|f| (f.name.clone(), f.disclosure, f.value.clone()))
            .collect()
    };
    assert_eq!(as_tuples(&ea.fields), as_tuples(&first.fields));
    let eb = exported.iter().find(|r| r.id == b).unwrap();
    assert_eq!(field_of(&eb.fields, "email").0, email);
    let em = export(&mut analyst, "marketing").await.unwrap();
    assert_eq!(
        field_of(&em.iter().find(|r| r.id == a).unwrap().fields, "email").0,
        other
    );

    // The read's audit event says `pseudonym`, and holds no token.
    let events = events(
        &mut admin,
        pb::EventFilter {
            record_id: a.clone(),
            method: "Records/GetRecord".into(),
            subject: "svc:analyst".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(events.len(), 3);
    let outcome = |e: &pb::AuditEvent, f: &str| {
        e.fields
            .iter()
            .find(|o| o.field == f)
            .map(|o| o.outcome.clone())
    };
    assert_eq!(outcome(&events[0], "email").as_deref(), Some("pseudonym"));
    assert_eq!(outcome(&events[0], "address").as_deref(), Some("withheld"));
}

/// Runs `strongroom export` against the vault with `token`: (success, stdout + stderr).
async fn cli_export(
    vault: &Vault,
    token: &str,
    purpose: &str,
    out: &std::path::Path,
) -> (bool, String) {
    let (addr, token, purpose, out) = (
        vault.addr(),
        token.to_owned(),
        purpose.to_owned(),
        out.to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .args([
                "export",
                "--collection",
                "customers",
                "--purpose",
                &purpose,
                "--out",
            ])
            .arg(&out)
            .env("STRONGROOM_ADDR", addr)
            .env("STRONGROOM_TOKEN", token)
            .output()
            .unwrap();
        (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_export_writes_what_the_policy_allows_and_the_audit_holds_no_value() {
    let mut vault = Vault::start_configured("", "", Clock::system()).await;
    let mut admin = vault.admin().await;
    let x1 = create(&mut admin, customer("xa")).await;
    let x2 = create(&mut admin, customer("xb")).await;
    // Nothing of it is the analyst's to see: skipped.
    let hidden = create(
        &mut admin,
        vec![
            field("address", "1 Hidden Lane, Leeds"),
            field("notes", "hidden note"),
        ],
    )
    .await;
    let token = vault.token("svc:analyst", &["role:analyst"]).await;
    let out = vault.dir.path().join("extract.jsonl");
    let (ok, text) = cli_export(&vault, &token, "analytics", &out).await;
    assert!(ok, "{text}");
    assert!(
        text.contains("exported 2 of 3 customers records for analytics"),
        "{text}"
    );
    assert!(!out.with_extension("jsonl.partial").exists());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: BTreeSet<&str> = lines.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, BTreeSet::from([x1.as_str(), x2.as_str()]));
    assert!(!ids.contains(hidden.as_str()));
    let mut analyst = vault.client(&token).await;
    let mut tokens = Vec::new();
    for line in &lines {
        let id = line["id"].as_str().unwrap();
        assert_eq!(line["version"], 1);
        let fields = line["fields"].as_object().unwrap();
        let keys: Vec<&str> = fields.keys().map(String::as_str).collect();
        // Every field the record holds: shown or null (withheld), none else.
        assert_eq!(keys.len(), 8, "{keys:?}");
        let read = get(&mut analyst, id, "analytics").await.unwrap();
        for (name, value) in fields {
            let (want, d) = field_of(&read.fields, name);
            match d {
                Disclosure::Pseudonym => assert_eq!(value.as_str(), Some(want), "{name}"),
                Disclosure::Withheld => assert!(value.is_null(), "{name}"),
                other @ (Disclosure::Masked | Disclosure::Plain | Disclosure::Unspecified) => {
                    panic!("{name}: {other:?}")
                }
            }
        }
        for name in ["name", "email", "phone", "ssn"] {
            let t = fields[name].as_str().unwrap();
            assert!(is_token(t), "{name}");
            tokens.push(t.to_owned());
        }
        assert_eq!(fields["date_of_birth"], "1815");
        for name in ["address", "card_number", "notes"] {
            assert!(fields[name].is_null(), "{name}");
        }
    }
    // Same phone and SSN in both records: the same tokens, which is what joins an extract.
    assert_eq!(lines[0]["fields"]["ssn"], lines[1]["fields"]["ssn"]);
    assert_ne!(lines[0]["fields"]["email"], lines[1]["fields"]["email"]);

    // A role with no pseudonym, mask or read of a field gets it withheld in its export; a role
    // with nothing for the purpose is refused up front.
    let mut marketing = vault.as_role("role:marketing").await;
    let rows = export(&mut marketing, "marketing").await.unwrap();
    assert_eq!(rows.len(), 2, "the hidden record has no name or email");
    for r in &rows {
        assert_eq!(field_of(&r.fields, "email").1, Disclosure::Plain);
        assert_eq!(field_of(&r.fields, "ssn"), ("", Disclosure::Withheld));
    }
    assert_code(
        export(&mut marketing, "analytics").await,
        Code::PermissionDenied,
    );
    let mut writer = vault.as_role("role:writer").await;
    assert_code(
        export(&mut writer, "analytics").await,
        Code::PermissionDenied,
    );
    let analyst_token_for_support = cli_export(&vault, &token, "support", &out).await;
    assert!(!analyst_token_for_support.0);
    assert!(
        analyst_token_for_support.1.contains("PermissionDenied"),
        "{}",
        analyst_token_for_support.1
    );

    // One event per exported record, and a summary with the counts.
    let exports = events_of(&mut admin, "Records/ExportRecords").await;
    let analyst_events: Vec<&pb::AuditEvent> = exports
        .iter()
        .filter(|e| e.subject == "svc:analyst" && e.purpose == "analytics")
        .collect();
    let per_record: BTreeSet<&str> = analyst_events
        .iter()
        .filter(|e| !e.record_id.is_empty())
        .map(|e| e.record_id.as_str())
        .collect();
    assert_eq!(per_record, BTreeSet::from([x1.as_str(), x2.as_str()]));
    let summary: Vec<&&pb::AuditEvent> = analyst_events
        .iter()
        .filter(|e| e.record_id.is_empty() && e.result == "OK")
        .collect();
    assert_eq!(summary.len(), 1);
    assert!(
        summary[0]
            .detail
            .contains("completed: 2 records exported, 1 skipped"),
        "{}",
        summary[0].detail
    );
    assert!(
        summary[0].detail.contains("email pseudonym 2"),
        "{}",
        summary[0].detail
    );

    // The raw audit log holds no value of an exported record and no token.
    let mut needles: Vec<String> = tokens;
    for tag in ["xa", "xb"] {
        needles.extend([
            format!("Ada {tag} Lovelace"),
            format!("ada.{tag}@example.com"),
            format!("12 St James's Square {tag}, London"),
            format!("prefers email; ref {tag}"),
        ]);
    }
    needles.extend(
        [
            "+442079460958",
            "123-45-6789",
            "1815-12-10",
            "4242424242424242",
        ]
        .map(String::from),
    );
    let audit: Vec<Vec<u8>> = vault
        .audit_entries()
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    assert!(audit.len() > 10);
    let mut found = BTreeMap::new();
    for needle in &needles {
        let hits = audit
            .iter()
            .filter(|e| e.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .count();
        if hits > 0 {
            found.insert(needle.clone(), hits);
        }
    }
    assert!(
        found.is_empty(),
        "values or tokens in the audit log: {found:?}"
    );
}

/// A client that stops reading and goes away ends the export: the summary says so, and the
/// records it never read are not counted as exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_stops_when_the_client_goes_away() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    // More than the channel, the HTTP/2 window and one batch hold together.
    const N: usize = 700;
    for i in 0..N {
        // Names hold letters only: the index in base 26.
        let tag: String = [i / 676, i / 26 % 26, i % 26]
            .iter()
            .map(|d| char::from(b'a' + *d as u8))
            .collect();
        create(&mut admin, customer(&tag)).await;
    }
    let mut follow = admin
        .audit
        .follow_events(pb::FollowEventsRequest {
            filter: Some(pb::EventFilter {
                method: "Records/ExportRecords".into(),
                ..Default::default()
            }),
            after_seq: None,
        })
        .await
        .unwrap()
        .into_inner();
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
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.total, N as u64);
    assert_eq!(first.scanned, 1);
    drop(stream);
    drop(analyst);
    let summary = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            let e = follow.message().await.unwrap().unwrap();
            if e.record_id.is_empty() && e.subject == "svc:analyst" {
                return e;
            }
        }
    })
    .await
    .expect("the export's summary event");
    assert_eq!(summary.result, "CANCELLED", "{}", summary.detail);
    assert!(
        summary.detail.contains("the client went away"),
        "{}",
        summary.detail
    );
    let exported: u64 = summary
        .detail
        .split("stopped: the client went away: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(exported >= 1 && exported < N as u64, "{}", summary.detail);
}
