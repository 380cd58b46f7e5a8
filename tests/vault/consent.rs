//! Consent and opt-outs enforced on every read (issue 12, points 1 and 2), through the real
//! server with a manual clock: the TCPA matrix, the CCPA opt-out, revocation between reads, the
//! ledger's history, its audit events, its permissions and inputs, and its end at shred.

use std::time::Duration;

use strongroom::{
    api::pb::{self, Disclosure},
    client::Client,
    domain::Clock,
    storage::Keyspace,
};
use tonic::Code;

use crate::support::{
    Vault, assert_code, create, customer, events, events_of, get, id_bytes, value_of,
};

/// 2027-01-15T08:00:00Z: the manual clock's start.
const T0: i64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);
const HOUR_MS: i64 = 3_600_000;

const NO_AUTODIALER: &str = "no autodialer consent (TCPA)";
const DO_NOT_CALL: &str = "customer is on the do-not-call list (TCPA)";
const NO_SALE: &str = "customer opted out of sale/share (CCPA)";
const PHONE: &str = "+442079460958";

fn consent(purpose: &str, channel: &str, granted: bool) -> pb::set_consent_request::Change {
    pb::set_consent_request::Change::Consent(pb::ConsentChange {
        purpose: purpose.into(),
        channel: channel.into(),
        granted,
    })
}

fn opt_out(flag: &str, set: bool) -> pb::set_consent_request::Change {
    pb::set_consent_request::Change::OptOut(pb::OptOutChange {
        flag: flag.into(),
        set,
    })
}

async fn set_with(
    client: &mut Client,
    id: &str,
    change: pb::set_consent_request::Change,
    source: &str,
    evidence: &str,
) -> Result<pb::ConsentEntry, tonic::Status> {
    client
        .consent
        .set_consent(pb::SetConsentRequest {
            record_id: id.into(),
            change: Some(change),
            source: source.into(),
            evidence_sha256: evidence.into(),
        })
        .await
        .map(|r| r.into_inner().entry.unwrap())
}

async fn set(client: &mut Client, id: &str, change: pb::set_consent_request::Change) {
    set_with(client, id, change, "webform:8812", "")
        .await
        .unwrap();
}

async fn ledger(client: &mut Client, id: &str) -> Result<pb::GetConsentResponse, tonic::Status> {
    client
        .consent
        .get_consent(pb::GetConsentRequest {
            record_id: id.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `(disclosure, value, reason)` of a field of a read.
fn field(resp: &pb::GetRecordResponse, name: &str) -> (Disclosure, String, String) {
    let f = resp.fields.iter().find(|f| f.name == name).unwrap();
    (
        Disclosure::try_from(f.disclosure).unwrap(),
        f.value.clone(),
        f.reason.clone(),
    )
}

fn withheld(reason: &str) -> (Disclosure, String, String) {
    (Disclosure::Withheld, String::new(), reason.to_owned())
}

fn plain(value: &str) -> (Disclosure, String, String) {
    (Disclosure::Plain, value.to_owned(), String::new())
}

#[tokio::test]
async fn the_tcpa_matrix_withholds_the_phone_for_telemarketing_only_with_the_exact_reason() {
    let vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let mut admin = vault.admin().await;
    let mut crm = vault.as_role("role:writer").await;
    let mut dialer = vault.as_role("role:dialer").await;
    let mut support = vault.as_role("role:support").await;
    // One record per state of the ledger.
    let none = create(&mut admin, customer("none")).await;
    let granted = create(&mut admin, customer("granted")).await;
    set(
        &mut crm,
        &granted,
        consent("telemarketing", "autodialer", true),
    )
    .await;
    let revoked = create(&mut admin, customer("revoked")).await;
    set(
        &mut crm,
        &revoked,
        consent("telemarketing", "autodialer", true),
    )
    .await;
    set(
        &mut crm,
        &revoked,
        consent("telemarketing", "autodialer", false),
    )
    .await;
    let dnc = create(&mut admin, customer("dnc")).await;
    set(&mut crm, &dnc, consent("telemarketing", "autodialer", true)).await;
    set(&mut crm, &dnc, opt_out("do_not_call", true)).await;
    let dnc_only = create(&mut admin, customer("dnconly")).await;
    set(&mut crm, &dnc_only, opt_out("do_not_call", true)).await;
    // Consent for another purpose or channel is not consent for this one.
    let elsewhere = create(&mut admin, customer("elsewhere")).await;
    set(
        &mut crm,
        &elsewhere,
        consent("marketing", "autodialer", true),
    )
    .await;
    set(&mut crm, &elsewhere, consent("telemarketing", "sms", true)).await;

    let support_view = get(&mut support, &none, "support").await.unwrap();
    for (id, tag, phone) in [
        (&none, "none", withheld(NO_AUTODIALER)),
        (&granted, "granted", plain(PHONE)),
        (&revoked, "revoked", withheld(NO_AUTODIALER)),
        (&dnc, "dnc", withheld(DO_NOT_CALL)),
        (&dnc_only, "dnconly", withheld(DO_NOT_CALL)),
        (&elsewhere, "elsewhere", withheld(NO_AUTODIALER)),
    ] {
        let resp = get(&mut dialer, id, "telemarketing").await.unwrap();
        assert_eq!(field(&resp, "phone"), phone, "{tag}: telemarketing phone");
        // Other fields are unaffected by the phone's rule.
        assert_eq!(
            field(&resp, "name"),
            plain(&format!("Ada {tag} Lovelace")),
            "{tag}: name"
        );
        // Support needs no consent: its view is the same whatever the ledger says.
        let resp = get(&mut support, id, "support").await.unwrap();
        assert_eq!(
            value_of(&resp, "phone"),
            value_of(&support_view, "phone"),
            "{tag}: support phone"
        );
        assert_eq!(value_of(&resp, "phone").unwrap().1, Disclosure::Masked);
        assert_eq!(
            resp.fields.iter().map(|f| f.disclosure).collect::<Vec<_>>(),
            support_view
                .fields
                .iter()
                .map(|f| f.disclosure)
                .collect::<Vec<_>>(),
            "{tag}: support"
        );
    }
    // Clearing the do-not-call flag lets the granted consent through again.
    set(&mut crm, &dnc, opt_out("do_not_call", false)).await;
    let resp = get(&mut dialer, &dnc, "telemarketing").await.unwrap();
    assert_eq!(field(&resp, "phone"), plain(PHONE));

    // A find goes through the same decision: the admin finding by email for telemarketing gets
    // every field but the phone of a record without consent.
    let found = admin
        .records
        .find_records(pb::FindRecordsRequest {
            collection: "customers".into(),
            field: "email".into(),
            value: "ada.none@example.com".into(),
            purpose: "telemarketing".into(),
            fields: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(found.records.len(), 1);
    assert_eq!(field(&found.records[0], "phone"), withheld(NO_AUTODIALER));
    assert_eq!(field(&found.records[0], "email").0, Disclosure::Plain);
}

#[tokio::test]
async fn a_ccpa_opt_out_denies_sale_and_share_but_not_support() {
    let vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let mut admin = vault.admin().await;
    let mut desk = vault.as_role("role:support").await;
    let mut partner = vault.as_role("role:partner_sharing").await;
    let id = create(&mut admin, customer("ccpa")).await;
    for purpose in ["sale", "share"] {
        let resp = get(&mut partner, &id, purpose).await.unwrap();
        assert_eq!(field(&resp, "email"), plain("ada.ccpa@example.com"));
    }
    let before = get(&mut desk, &id, "support").await.unwrap();
    // The support desk records the customer's opt-out (support holds `consent manage`).
    set(&mut desk, &id, opt_out("do_not_sell_or_share", true)).await;
    for purpose in ["sale", "share"] {
        let resp = get(&mut partner, &id, purpose).await.unwrap();
        assert_eq!(field(&resp, "name"), withheld(NO_SALE), "{purpose}");
        assert_eq!(field(&resp, "email"), withheld(NO_SALE), "{purpose}");
        // Whoever reads: the admin's every field is withheld for sale too.
        let resp = get(&mut admin, &id, purpose).await.unwrap();
        assert!(
            resp.fields
                .iter()
                .all(|f| f.disclosure == Disclosure::Withheld as i32 && f.reason == NO_SALE),
            "{purpose}: {:?}",
            resp.fields
        );
    }
    let after = get(&mut desk, &id, "support").await.unwrap();
    assert_eq!(
        after
            .fields
            .iter()
            .map(|f| (&f.name, &f.value))
            .collect::<Vec<_>>(),
        before
            .fields
            .iter()
            .map(|f| (&f.name, &f.value))
            .collect::<Vec<_>>()
    );
    // Opting back in restores sale.
    set(&mut desk, &id, opt_out("do_not_sell_or_share", false)).await;
    let resp = get(&mut partner, &id, "sale").await.unwrap();
    assert_eq!(field(&resp, "name"), plain("Ada ccpa Lovelace"));
}

#[tokio::test]
async fn a_revocation_takes_effect_on_the_very_next_read_and_the_history_keeps_every_change() {
    let vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let mut admin = vault.admin().await;
    let mut crm = vault.as_role("role:writer").await;
    let mut dialer = vault.as_role("role:dialer").await;
    let mut auditor = vault.as_role("role:auditor").await;
    let id = create(&mut admin, customer("rev")).await;
    let evidence = "AB".repeat(32);
    let first = set_with(
        &mut crm,
        &id,
        consent("telemarketing", "autodialer", true),
        "webform:8812",
        &evidence,
    )
    .await
    .unwrap();
    assert_eq!((first.seq, first.at_unix_ms), (1, T0));
    let resp = get(&mut dialer, &id, "telemarketing").await.unwrap();
    assert_eq!(field(&resp, "phone"), plain(PHONE));

    vault.clock.advance(HOUR);
    set_with(
        &mut crm,
        &id,
        consent("telemarketing", "autodialer", false),
        "call:rec-4411",
        "",
    )
    .await
    .unwrap();
    let resp = get(&mut dialer, &id, "telemarketing").await.unwrap();
    assert_eq!(field(&resp, "phone"), withheld(NO_AUTODIALER));

    vault.clock.advance(HOUR);
    set_with(
        &mut crm,
        &id,
        consent("telemarketing", "autodialer", true),
        "agent:jdoe",
        "",
    )
    .await
    .unwrap();
    let resp = get(&mut dialer, &id, "telemarketing").await.unwrap();
    assert_eq!(field(&resp, "phone"), plain(PHONE));

    let l = ledger(&mut auditor, &id).await.unwrap();
    assert_eq!(l.record_id, id);
    let history: Vec<_> = l
        .history
        .iter()
        .map(|e| {
            let Some(pb::consent_entry::Change::Consent(c)) = &e.change else {
                panic!("a consent entry: {e:?}");
            };
            (
                e.seq,
                c.granted,
                e.at_unix_ms,
                e.by.as_str(),
                e.source.as_str(),
                e.evidence_sha256.as_str(),
            )
        })
        .collect();
    let lower = "ab".repeat(32);
    assert_eq!(
        history,
        [
            (1, true, T0, "svc:writer", "webform:8812", lower.as_str()),
            (2, false, T0 + HOUR_MS, "svc:writer", "call:rec-4411", ""),
            (3, true, T0 + 2 * HOUR_MS, "svc:writer", "agent:jdoe", ""),
        ]
    );
    assert_eq!(
        l.consents,
        [pb::ConsentStatus {
            purpose: "telemarketing".into(),
            channel: "autodialer".into(),
            granted: true,
            since_unix_ms: T0 + 2 * HOUR_MS,
        }]
    );
    // Every declared opt-out is listed, unset.
    assert_eq!(
        l.opt_outs
            .iter()
            .map(|o| (o.flag.as_str(), o.set, o.since_unix_ms))
            .collect::<Vec<_>>(),
        [
            ("do_not_call", false, 0),
            ("do_not_sell_or_share", false, 0)
        ]
    );
}

#[tokio::test]
async fn the_audit_log_keeps_the_reason_and_never_the_source_evidence_or_values() {
    let mut vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let mut admin = vault.admin().await;
    let mut crm = vault.as_role("role:writer").await;
    let mut dialer = vault.as_role("role:dialer").await;
    let id = create(&mut admin, customer("aud")).await;
    let evidence = "c0ffee".repeat(10) + "beef";
    set_with(
        &mut crm,
        &id,
        consent("telemarketing", "autodialer", true),
        "agent:secret-source-7781",
        &evidence,
    )
    .await
    .unwrap();
    set_with(
        &mut crm,
        &id,
        consent("telemarketing", "autodialer", false),
        "agent:secret-source-7781",
        "",
    )
    .await
    .unwrap();
    set(&mut crm, &id, opt_out("do_not_call", true)).await;
    get(&mut dialer, &id, "telemarketing").await.unwrap();

    let changes = events_of(&mut admin, "Consent/SetConsent").await;
    assert_eq!(
        changes
            .iter()
            .map(|e| (
                e.record_id.as_str(),
                e.purpose.as_str(),
                e.detail.as_str(),
                e.result.as_str()
            ))
            .collect::<Vec<_>>(),
        [
            (
                id.as_str(),
                "telemarketing",
                "consent autodialer for telemarketing: granted",
                "OK"
            ),
            (
                id.as_str(),
                "telemarketing",
                "consent autodialer for telemarketing: revoked",
                "OK"
            ),
            (id.as_str(), "", "opt-out do_not_call: set", "OK"),
        ]
    );
    let reads = events(
        &mut admin,
        pb::EventFilter {
            method: "Records/GetRecord".into(),
            subject: "svc:dialer".into(),
            ..pb::EventFilter::default()
        },
    )
    .await;
    assert_eq!(reads.len(), 1);
    let outcomes: Vec<_> = reads[0]
        .fields
        .iter()
        .map(|f| (f.field.as_str(), f.outcome.as_str()))
        .collect();
    // The opt-out outranks the missing consent; the role's other fields are untouched.
    assert_eq!(
        outcomes,
        [
            ("name", "plain"),
            ("email", "withheld"),
            ("phone", DO_NOT_CALL),
            ("address", "withheld"),
            ("date_of_birth", "withheld"),
            ("ssn", "withheld"),
            ("card_number", "withheld"),
            ("notes", "withheld"),
        ]
    );
    // An auditor can search by the reason.
    let by_reason = events(
        &mut admin,
        pb::EventFilter {
            outcome: DO_NOT_CALL.into(),
            ..pb::EventFilter::default()
        },
    )
    .await;
    assert_eq!(by_reason.len(), 1);

    let audit = vault.audit_entries().await;
    let raw: Vec<u8> = audit
        .into_iter()
        .flat_map(|(seq, v)| [seq.to_be_bytes().to_vec(), v].concat())
        .collect();
    for needle in [
        "secret-source-7781",
        "webform:8812",
        evidence.as_str(),
        PHONE,
        "Ada aud Lovelace",
    ] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is in the audit log"
        );
    }
}

#[tokio::test]
async fn only_holders_of_consent_manage_and_consent_read_may_change_or_see_a_ledger() {
    let vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("perm")).await;
    let unknown = "0".repeat(32);
    for role in ["role:billing", "role:dialer", "role:auditor"] {
        let mut c = vault.as_role(role).await;
        // The same refusal for an existing and an unknown record: no oracle of ids.
        for target in [&id, &unknown] {
            let status = assert_code(
                set_with(
                    &mut c,
                    target,
                    consent("telemarketing", "autodialer", true),
                    "webform:1",
                    "",
                )
                .await,
                Code::PermissionDenied,
            );
            assert!(
                status.message().contains("consent manage"),
                "{role}: {}",
                status.message()
            );
        }
    }
    for role in ["role:billing", "role:dialer", "role:writer"] {
        let mut c = vault.as_role(role).await;
        let status = assert_code(ledger(&mut c, &id).await, Code::PermissionDenied);
        assert!(status.message().contains("consent read"), "{role}");
    }
    // Nothing was recorded by the refused calls.
    assert!(ledger(&mut admin, &id).await.unwrap().history.is_empty());
    let refused = events(
        &mut admin,
        pb::EventFilter {
            method: "Consent/SetConsent".into(),
            outcome: "PERMISSION_DENIED".into(),
            ..pb::EventFilter::default()
        },
    )
    .await;
    assert_eq!(refused.len(), 6);
}

#[tokio::test]
async fn bad_inputs_are_invalid_arguments_naming_the_field_without_echoing_it() {
    let vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("bad")).await;
    let good = consent("telemarketing", "autodialer", true);
    let cases: Vec<(pb::SetConsentRequest, &str, &str)> = vec![
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(consent("telemarketing", "fax-555-0100", true)),
                source: "webform:1".into(),
                evidence_sha256: String::new(),
            },
            "consent.channel",
            "fax-555-0100",
        ),
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(consent("spam-555-0100", "sms", true)),
                source: "webform:1".into(),
                evidence_sha256: String::new(),
            },
            "consent.purpose",
            "spam-555-0100",
        ),
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(opt_out("do_not_email_555", true)),
                source: "webform:1".into(),
                evidence_sha256: String::new(),
            },
            "opt_out.flag",
            "do_not_email_555",
        ),
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(good.clone()),
                source: "webform:1".into(),
                evidence_sha256: "123-45-6789".into(),
            },
            "evidence_sha256",
            "123-45-6789",
        ),
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(good.clone()),
                source: String::new(),
                evidence_sha256: String::new(),
            },
            "source",
            "",
        ),
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(good.clone()),
                source: format!("ssn 123-45-6789 {}", "x".repeat(200)),
                evidence_sha256: String::new(),
            },
            "source",
            "123-45-6789",
        ),
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: Some(good.clone()),
                source: "agent:\n123-45-6789".into(),
                evidence_sha256: String::new(),
            },
            "source",
            "123-45-6789",
        ),
        (
            pb::SetConsentRequest {
                record_id: id.clone(),
                change: None,
                source: "webform:1".into(),
                evidence_sha256: String::new(),
            },
            "change",
            "",
        ),
        (
            pb::SetConsentRequest {
                record_id: "123-45-6789".into(),
                change: Some(good.clone()),
                source: "webform:1".into(),
                evidence_sha256: String::new(),
            },
            "record_id",
            "123-45-6789",
        ),
    ];
    for (request, named, secret) in cases {
        let status = assert_code(
            admin.consent.set_consent(request).await,
            Code::InvalidArgument,
        );
        let message = status.message();
        assert!(message.starts_with(named), "{named}: {message}");
        assert!(
            secret.is_empty() || !message.contains(secret),
            "{named}: {message}"
        );
    }
    assert!(ledger(&mut admin, &id).await.unwrap().history.is_empty());
    // An unknown record: NOT_FOUND, for a change and for a read of the ledger.
    let unknown = "0".repeat(32);
    assert_code(
        set_with(&mut admin, &unknown, good, "webform:1", "").await,
        Code::NotFound,
    );
    assert_code(ledger(&mut admin, &unknown).await, Code::NotFound);
}

#[tokio::test]
async fn a_shredded_records_ledger_is_gone_with_it() {
    let mut vault = Vault::start_with_clock(Clock::manual(T0)).await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("gone")).await;
    let other = create(&mut admin, customer("stays")).await;
    for record in [&id, &other] {
        set(
            &mut admin,
            record,
            consent("telemarketing", "autodialer", true),
        )
        .await;
        set(&mut admin, record, opt_out("do_not_call", true)).await;
    }
    let receipt = admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: id.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    // Field ciphertexts only: the ledger's entries are not counted as fields.
    assert_eq!(receipt.fields_destroyed, 8);
    assert_code(ledger(&mut admin, &id).await, Code::NotFound);
    assert_code(
        set_with(
            &mut admin,
            &id,
            consent("telemarketing", "autodialer", false),
            "webform:1",
            "",
        )
        .await,
        Code::NotFound,
    );
    assert_eq!(ledger(&mut admin, &other).await.unwrap().history.len(), 2);
    let (gone, stays) = vault
        .with_store(|store| {
            (
                store
                    .scan_prefix(Keyspace::Records, &id_bytes(&id))
                    .unwrap(),
                store
                    .scan_prefix(Keyspace::Records, &id_bytes(&other))
                    .unwrap(),
            )
        })
        .await;
    assert!(gone.is_empty(), "{} entries left", gone.len());
    // 8 fields, the retention times, the consent state and 2 history entries.
    assert_eq!(stays.len(), 12);
}
