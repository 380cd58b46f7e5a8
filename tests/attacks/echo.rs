//! What the caller sends is never echoed back (issue 8, defect 5), and repeated fields are
//! counted before anything is done per field (defect 7, input part).
//!
//! Canary values (an SSN-like string, a string of almost 1 MiB, unique markers) go as purpose,
//! collection, field names and values, record ids, subjects, roles, policy texts and comments,
//! explain questions and audit filters through every RPC that takes them, against the real
//! binary with its log captured; then every status message, every string of every audit event
//! (queried and exported) and the server's log are searched for them.

use std::time::Duration;

use strongroom::{api::pb, client::Client};
use tonic::Code;

use crate::{
    files::Serve,
    support::{self, Vault, assert_code, customer, field},
};

/// The unique part of this run's markers.
fn nonce() -> String {
    use rand::RngCore;
    format!("{:08x}", rand::thread_rng().next_u32())
}

struct Canaries {
    /// Searched for in every output; every canary contains one of these.
    needles: Vec<String>,
    /// Values that no name, id or identifier can be.
    values: Vec<String>,
    /// A value shaped like a lowercase identifier, for names the vault must know to repeat.
    identifier: String,
}

fn canaries() -> Canaries {
    let n = nonce();
    let ssn = "521-44-7863".to_owned();
    let marker = format!("ZQ-CANARY-{n}");
    // Just under the 1 MiB message limit, so that it reaches the handlers.
    let big: String = format!("{marker}|").repeat(1_040_000 / (marker.len() + 1));
    let identifier = format!("zqcanary{n}");
    Canaries {
        needles: vec![
            ssn.clone(),
            "CANARY".into(),
            identifier.clone(),
            "521447863".into(),
        ],
        values: vec![ssn, marker, big],
        identifier,
    }
}

/// What the calls answered, for the search.
#[derive(Default)]
struct Seen {
    calls: usize,
    messages: Vec<String>,
}

impl Seen {
    fn note<T>(&mut self, result: Result<T, tonic::Status>) -> Option<T> {
        self.calls += 1;
        match result {
            Ok(v) => Some(v),
            Err(status) => {
                self.messages.push(status.message().to_owned());
                self.messages
                    .push(String::from_utf8_lossy(status.details()).into_owned());
                for kv in status.metadata().iter() {
                    if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv {
                        self.messages
                            .push(format!("{}={}", k, v.to_str().unwrap_or_default()));
                    }
                }
                None
            }
        }
    }
}

fn policy_lines(c: &str) -> Vec<String> {
    vec![
        format!("p, {c}, customers.email, read, support, allow"),
        format!("p, role:support, {c}, read, support, allow"),
        format!("p, role:support, customers.{c}, read, support, allow"),
        format!("p, role:support, {c}.email, read, support, allow"),
        format!("p, role:support, customers.email, {c}, support, allow"),
        format!("p, role:support, customers.email, read, {c}, allow"),
        format!("p, role:support, customers.email, read, support, {c}"),
        format!("g, {c}, role:support"),
        format!("g, role:support, {c}"),
        format!("g, role:{c}, role:support"),
        c.to_owned(),
    ]
}

fn filter(c: &str) -> pb::EventFilter {
    pb::EventFilter {
        from_unix_ms: None,
        to_unix_ms: None,
        subject: c.into(),
        role: c.into(),
        record_id: c.into(),
        collection: c.into(),
        field: c.into(),
        purpose: c.into(),
        outcome: c.into(),
        method: c.into(),
        severity: c.into(),
        alerts_only: false,
    }
}

/// Sends `c` through every RPC and field that takes caller text.
async fn send(admin: &mut Client, id: &str, c: &str, identifier: bool, seen: &mut Seen) {
    let r = &mut admin.records;
    // Names the vault declares: collection, field names, purpose.
    seen.note(
        r.create_record(pb::CreateRecordRequest {
            collection: c.into(),
            fields: customer("echo"),
            honeytoken: false,
        })
        .await,
    );
    seen.note(
        r.create_record(pb::CreateRecordRequest {
            collection: "customers".into(),
            fields: vec![field("name", "Ada"), field(c, "x")],
            honeytoken: false,
        })
        .await,
    );
    seen.note(
        r.get_record(pb::GetRecordRequest {
            id: id.into(),
            fields: vec![],
            purpose: c.into(),
        })
        .await,
    );
    seen.note(
        r.get_record(pb::GetRecordRequest {
            id: id.into(),
            fields: vec!["email".into(), c.into()],
            purpose: "support".into(),
        })
        .await,
    );
    seen.note(
        r.update_record(pb::UpdateRecordRequest {
            id: id.into(),
            set: vec![field(c, "x")],
            clear: vec![],
            expected_version: None,
        })
        .await,
    );
    seen.note(
        r.update_record(pb::UpdateRecordRequest {
            id: id.into(),
            set: vec![],
            clear: vec![c.into()],
            expected_version: None,
        })
        .await,
    );
    if identifier {
        // An identifier-shaped value is a valid name, so it may pass as one below (a subject
        // `svc:<it>` is a real subject); it goes only where the vault must know the name.
        return;
    }
    // Values and ids.
    for name in ["email", "ssn", "phone", "date_of_birth", "name", "notes"] {
        let value = if name == "notes" {
            format!("{c}\u{7}")
        } else {
            c.to_owned()
        };
        seen.note(
            r.create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: vec![field(name, &value)],
                honeytoken: false,
            })
            .await,
        );
        seen.note(
            r.update_record(pb::UpdateRecordRequest {
                id: id.into(),
                set: vec![field(name, &value)],
                clear: vec![],
                expected_version: None,
            })
            .await,
        );
    }
    seen.note(
        r.get_record(pb::GetRecordRequest {
            id: c.into(),
            fields: vec![],
            purpose: "support".into(),
        })
        .await,
    );
    seen.note(
        r.update_record(pb::UpdateRecordRequest {
            id: c.into(),
            set: vec![field("name", "Ada")],
            clear: vec![],
            expected_version: None,
        })
        .await,
    );
    seen.note(
        r.delete_record(pb::DeleteRecordRequest {
            id: c.into(),
            wait_for_purge: false,
        })
        .await,
    );
    // Subjects and roles.
    let t = &mut admin.tokens;
    seen.note(
        t.create_token(pb::CreateTokenRequest {
            subject: c.into(),
            roles: vec!["role:support".into()],
            ..pb::CreateTokenRequest::default()
        })
        .await,
    );
    seen.note(
        t.create_token(pb::CreateTokenRequest {
            subject: "svc:echo".into(),
            roles: vec!["role:support".into(), c.into()],
            ..pb::CreateTokenRequest::default()
        })
        .await,
    );
    seen.note(
        t.revoke_tokens(pb::RevokeTokensRequest { subject: c.into() })
            .await,
    );
    // Policy texts, comments and questions.
    let p = &mut admin.policies;
    let current = p
        .get_policy(pb::GetPolicyRequest { version: None })
        .await
        .unwrap()
        .into_inner();
    let version = current.info.unwrap().version;
    for line in policy_lines(c) {
        let text = format!("{}\n{line}\n", current.text);
        seen.note(
            p.dry_run_policy(pb::DryRunPolicyRequest { text: text.clone() })
                .await,
        );
        seen.note(
            p.apply_policy(pb::ApplyPolicyRequest {
                text,
                comment: c.into(),
                expected_version: None,
            })
            .await,
        );
    }
    // Accepted changes whose comment is the canary.
    seen.note(
        p.apply_policy(pb::ApplyPolicyRequest {
            text: current.text.clone(),
            comment: c.into(),
            expected_version: None,
        })
        .await,
    );
    seen.note(
        p.rollback_policy(pb::RollbackPolicyRequest {
            to_version: version,
            comment: c.into(),
            expected_version: None,
        })
        .await,
    );
    for (principal, action, object, purpose) in [
        (c, "read", "customers.email", "support"),
        ("role:support", c, "customers.email", "support"),
        ("role:support", "read", c, "support"),
        (
            "role:support",
            "read",
            &format!("customers.{c}") as &str,
            "support",
        ),
        (
            "role:support",
            "read",
            &format!("{c}.email") as &str,
            "support",
        ),
        ("role:support", "read", "customers.email", c),
    ] {
        seen.note(
            p.explain(pb::ExplainRequest {
                principal: principal.into(),
                action: action.into(),
                object: object.into(),
                purpose: purpose.into(),
            })
            .await,
        );
    }
    // Audit filters.
    let a = &mut admin.audit;
    seen.note(
        a.query_events(pb::QueryEventsRequest {
            filter: Some(filter(c)),
            page_size: 10,
            after_seq: 0,
        })
        .await,
    );
    if let Some(resp) = seen.note(
        a.export_events(pb::ExportEventsRequest {
            filter: Some(filter(c)),
        })
        .await,
    ) {
        let mut stream = resp.into_inner();
        while let Some(chunk) = stream.message().await.unwrap_or(None) {
            seen.messages.push(chunk.jsonl);
        }
    }
    if let Some(resp) = seen.note(
        a.follow_events(pb::FollowEventsRequest {
            filter: Some(filter(c)),
            after_seq: Some(0),
        })
        .await,
    ) {
        // Nothing matches the filter: the stream stays open and sends nothing; drop it.
        let mut stream = resp.into_inner();
        if let Ok(Ok(Some(event))) =
            tokio::time::timeout(Duration::from_millis(200), stream.message()).await
        {
            seen.messages.push(format!("{event:?}"));
        }
    }
}

/// Every string of every event in the log.
async fn audit_strings(admin: &mut Client) -> (usize, Vec<String>) {
    let (mut events, mut out, mut after) = (0, Vec::new(), 0);
    loop {
        let page = admin
            .audit
            .query_events(pb::QueryEventsRequest {
                filter: None,
                page_size: 1000,
                after_seq: after,
            })
            .await
            .unwrap_or_else(|s| panic!("the audit log cannot be read back: {}", s.message()))
            .into_inner();
        for e in &page.events {
            events += 1;
            out.extend([
                e.request_id.clone(),
                e.subject.clone(),
                e.method.clone(),
                e.collection.clone(),
                e.record_id.clone(),
                e.purpose.clone(),
                e.result.clone(),
                e.detail.clone(),
            ]);
            out.extend(e.roles.iter().cloned());
            for f in &e.fields {
                out.extend([f.field.clone(), f.outcome.clone()]);
            }
        }
        if page.next_after_seq == 0 {
            break;
        }
        after = page.next_after_seq;
    }
    let mut export = admin
        .audit
        .export_events(pb::ExportEventsRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    while let Some(chunk) = export.message().await.unwrap() {
        out.push(chunk.jsonl);
    }
    (events, out)
}

fn hits(needles: &[String], texts: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for t in texts {
        for n in needles {
            if t.contains(n.as_str()) {
                let at = t.find(n.as_str()).unwrap_or(0);
                let context: String = t[at..].chars().take(80).collect();
                out.push(format!("{n}: ...{context}..."));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_values_never_reach_errors_the_audit_log_or_the_server_log() {
    let tmp = tempfile::tempdir().unwrap();
    let vault = Serve::start(
        &tmp.path().join("data"),
        &[],
        &[("RUST_LOG", "debug,h2=info,hyper=info,tower=info")],
    );
    let mut admin = strongroom::client::connect(&vault.addr, vault.token.as_deref().unwrap())
        .await
        .unwrap();
    let id = support::create(&mut admin, customer("echo")).await;
    let canaries = canaries();
    let mut seen = Seen::default();
    for c in &canaries.values {
        send(&mut admin, &id, c, false, &mut seen).await;
    }
    send(&mut admin, &id, &canaries.identifier, true, &mut seen).await;

    let status_hits = hits(&canaries.needles, &seen.messages);
    assert!(
        status_hits.is_empty(),
        "{} of {} status strings hold a canary: {status_hits:#?}",
        status_hits.len(),
        seen.messages.len()
    );
    let (events, strings) = audit_strings(&mut admin).await;
    let audit_hits = hits(&canaries.needles, &strings);
    drop(admin);
    let log = vault.stop().await;
    let log_hits = hits(&canaries.needles, std::slice::from_ref(&log));
    eprintln!(
        "echo: {} calls with canaries, {} status strings, {events} audit events ({} strings), \
         {} log bytes searched; hits: status {}, audit {}, log {}",
        seen.calls,
        seen.messages.len(),
        strings.len(),
        log.len(),
        status_hits.len(),
        audit_hits.len(),
        log_hits.len()
    );
    assert!(seen.calls > 100 && events > 100, "the canaries were sent");
    assert!(audit_hits.is_empty(), "in the audit log: {audit_hits:#?}");
    assert!(log_hits.is_empty(), "in the server log: {log_hits:#?}");
}

#[tokio::test]
async fn event_details_are_bounded_and_errors_name_the_field() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = support::create(&mut admin, customer("named")).await;
    // Errors name the field by its declared name, never by the value.
    let status = assert_code(
        admin
            .records
            .create_record(pb::CreateRecordRequest {
                collection: "customers".into(),
                fields: vec![field("name", "Ada"), field("email", "123-45-6789")],
                honeytoken: false,
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status
            .message()
            .starts_with("fields[1] (email): not a valid email address"),
        "{}",
        status.message()
    );
    let status = assert_code(
        admin
            .records
            .get_record(pb::GetRecordRequest {
                id: id.clone(),
                fields: vec![],
                purpose: "123-45-6789".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status
            .message()
            .starts_with("purpose: unknown purpose; declared: "),
        "{}",
        status.message()
    );
    // A policy line far longer than any detail: the failed call's event stays short.
    let text = format!(
        "p, role:support, customers.email, read, support, {}\n",
        "x".repeat(100_000)
    );
    assert_code(
        admin
            .policies
            .apply_policy(pb::ApplyPolicyRequest {
                text,
                comment: String::new(),
                expected_version: None,
            })
            .await,
        Code::InvalidArgument,
    );
    let events = admin
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: Some(pb::EventFilter {
                outcome: "INVALID_ARGUMENT".into(),
                ..Default::default()
            }),
            page_size: 1000,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert!(events.len() >= 3);
    let longest = events.iter().map(|e| e.detail.len()).max().unwrap();
    assert!(longest <= 256, "an event detail of {longest} bytes");
}

#[tokio::test]
async fn field_counts_are_checked_before_anything_is_done_per_field() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    // 500,000 empty entries fit in a 1 MiB message (2 bytes each). The count is the first
    // thing checked: before the collection, the id, or any field is looked at.
    let many = 500_000;
    let empty_fields = || vec![pb::Field::default(); many];
    let empty_names = || vec![String::new(); many];
    let cases: Vec<(&str, Result<(), tonic::Status>)> = vec![
        (
            "fields: 500000 fields, more than the limit of 64",
            admin
                .records
                .create_record(pb::CreateRecordRequest {
                    collection: "no_such_collection".into(),
                    fields: empty_fields(),
                    honeytoken: false,
                })
                .await
                .map(drop),
        ),
        (
            "fields: 500000 fields, more than the limit of 64",
            admin
                .records
                .get_record(pb::GetRecordRequest {
                    id: "not-an-id".into(),
                    fields: empty_names(),
                    purpose: String::new(),
                })
                .await
                .map(drop),
        ),
        (
            "set: 500000 fields, more than the limit of 64",
            admin
                .records
                .update_record(pb::UpdateRecordRequest {
                    id: "not-an-id".into(),
                    set: empty_fields(),
                    clear: vec![],
                    expected_version: None,
                })
                .await
                .map(drop),
        ),
        (
            "clear: 500000 fields, more than the limit of 64",
            admin
                .records
                .update_record(pb::UpdateRecordRequest {
                    id: "not-an-id".into(),
                    set: vec![],
                    clear: empty_names(),
                    expected_version: None,
                })
                .await
                .map(drop),
        ),
        (
            "set and clear: 80 fields, more than the limit of 64",
            admin
                .records
                .update_record(pb::UpdateRecordRequest {
                    id: "not-an-id".into(),
                    set: vec![pb::Field::default(); 40],
                    clear: vec![String::new(); 40],
                    expected_version: None,
                })
                .await
                .map(drop),
        ),
    ];
    for (want, result) in cases {
        let status = assert_code(result, Code::InvalidArgument);
        assert_eq!(status.message(), want);
    }
}
