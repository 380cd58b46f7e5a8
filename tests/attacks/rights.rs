//! Rights follow the live credentials (issue 8, defect 1): a subject's rights are exactly those
//! of its valid tokens the moment a token is issued or revoked; a failed issue leaves nothing
//! behind; concurrent issues and revocations cannot merge rights or revoke the last admin; a
//! revoked caller's live audit stream ends.

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use strongroom::{
    api::pb::{self, Disclosure},
    client::Client,
    storage::{Keyspace, RocksStore, Store},
};
use tonic::Code;

use crate::support::{Faulty, Vault, assert_code, create, customer, get, value_of};

const SSN: &str = "123-45-6789";

async fn issue(admin: &mut Client, subject: &str, roles: &[&str]) -> Result<String, tonic::Status> {
    admin
        .tokens
        .create_token(pb::CreateTokenRequest {
            subject: subject.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..pb::CreateTokenRequest::default()
        })
        .await
        .map(|r| r.into_inner().token)
}

async fn revoke(admin: &mut Client, subject: &str) -> Result<u32, tonic::Status> {
    admin
        .tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            subject: subject.into(),
        })
        .await
        .map(|r| r.into_inner().revoked)
}

async fn live_tokens(admin: &mut Client) -> Vec<pb::TokenInfo> {
    admin
        .tokens
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens
}

/// The table's answer for `subject` deleting customers (`allowed` or `denied`).
async fn explain_delete(admin: &mut Client, subject: &str) -> String {
    admin
        .policies
        .explain(pb::ExplainRequest {
            principal: subject.into(),
            action: "delete".into(),
            object: "customers.*".into(),
            purpose: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .outcome
}

/// What a marketing token may do, and nothing more: name and email for marketing, no SSN in
/// plaintext for any purpose, no shredding.
async fn assert_marketing_only(vault: &Vault, token: &str, id: &str) {
    let mut x = vault.client(token).await;
    let resp = get(&mut x, id, "marketing").await.unwrap();
    assert_eq!(value_of(&resp, "email").unwrap().1, Disclosure::Plain);
    for purpose in ["marketing", "support", "billing", "subject_access"] {
        let resp = get(&mut x, id, purpose).await.unwrap();
        for f in &resp.fields {
            let d = Disclosure::try_from(f.disclosure).unwrap();
            let marketing_field = purpose == "marketing" && (f.name == "name" || f.name == "email");
            if !marketing_field {
                assert_eq!(d, Disclosure::Withheld, "{} for {purpose}", f.name);
            }
            assert!(!f.value.contains(SSN), "{} for {purpose}", f.name);
        }
    }
    assert_code(
        x.records
            .delete_record(pb::DeleteRecordRequest {
                id: id.into(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        issue(&mut x, "svc:evil", &["role:admin"]).await,
        Code::PermissionDenied,
    );
}

#[tokio::test]
async fn revoke_and_reissue_with_fewer_roles_leaves_only_the_new_roles() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("rights")).await;

    let old = issue(&mut admin, "svc:x", &["role:admin"]).await.unwrap();
    let mut x = vault.client(&old).await;
    let resp = get(&mut x, &id, "support").await.unwrap();
    assert_eq!(value_of(&resp, "ssn").unwrap(), (SSN, Disclosure::Plain));

    assert_eq!(revoke(&mut admin, "svc:x").await.unwrap(), 1);
    assert_code(get(&mut x, &id, "support").await, Code::Unauthenticated);

    let new = issue(&mut admin, "svc:x", &["role:marketing"])
        .await
        .unwrap();
    assert_marketing_only(&vault, &new, &id).await;
    assert_eq!(explain_delete(&mut admin, "svc:x").await, "denied");

    // Across a restart: the same, from the stored tokens.
    vault.restart().await;
    assert_marketing_only(&vault, &new, &id).await;
    let mut x = vault.client(&old).await;
    assert_code(get(&mut x, &id, "support").await, Code::Unauthenticated);
    let mut admin = vault.admin().await;
    let resp = get(&mut admin, &id, "support").await.unwrap();
    assert_eq!(value_of(&resp, "ssn").unwrap(), (SSN, Disclosure::Plain));
}

#[tokio::test]
async fn a_failed_issue_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    let (_dir, running, token) = Vault::start_over(store.clone(), "").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let id = create(&mut admin, customer("failed")).await;
    let tokens_before = store.inner.scan_prefix(Keyspace::Meta, b"token/").unwrap();

    store.fail_writes.store(true, Ordering::SeqCst);
    assert_code(
        issue(&mut admin, "svc:x", &["role:admin"]).await,
        Code::Unavailable,
    );
    store.fail_writes.store(false, Ordering::SeqCst);

    let tokens_after = store.inner.scan_prefix(Keyspace::Meta, b"token/").unwrap();
    assert_eq!(tokens_before, tokens_after, "no token was stored");
    let subjects: Vec<String> = live_tokens(&mut admin)
        .await
        .into_iter()
        .map(|t| t.subject)
        .collect();
    assert_eq!(subjects, ["user:admin"]);

    // The subject can now be given other roles, and gets exactly those.
    let marketing = issue(&mut admin, "svc:x", &["role:marketing"])
        .await
        .unwrap();
    let mut x = strongroom::client::connect(&addr, &marketing)
        .await
        .unwrap();
    for purpose in ["support", "marketing"] {
        let resp = get(&mut x, &id, purpose).await.unwrap();
        assert_eq!(
            value_of(&resp, "ssn").unwrap().1,
            Disclosure::Withheld,
            "{purpose}"
        );
    }
    assert_code(
        x.records
            .delete_record(pb::DeleteRecordRequest {
                id: id.clone(),
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert_eq!(
        explain_delete(&mut admin, "svc:x").await,
        "denied",
        "the failed issue left no principal in the policy"
    );
    running.shutdown().await.unwrap();
}

/// Whether a token still works, and if so whether it reads the SSN in plaintext.
async fn probe(vault: &Vault, token: &str, id: &str) -> Option<bool> {
    let mut c = vault.client(token).await;
    match get(&mut c, id, "support").await {
        Ok(resp) => Some(value_of(&resp, "ssn").unwrap().1 == Disclosure::Plain),
        Err(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
            None
        }
    }
}

#[tokio::test]
async fn concurrent_issues_and_revocations_of_one_subject_never_merge_rights() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("storm")).await;

    // Many issues (admin or marketing) and revocations of one subject at once, round after
    // round; after each, the live tokens hold one role set and the table agrees with it.
    let rounds = 12;
    let mut issued: Vec<(String, bool)> = Vec::new();
    let mut merged_rounds = 0;
    for round in 0..rounds {
        let mut calls = tokio::task::JoinSet::new();
        for k in 0..6 {
            let mut c = vault.admin().await;
            calls.spawn(async move {
                match k % 3 {
                    0 => issue(&mut c, "svc:x", &["role:admin"])
                        .await
                        .map(|t| Some((t, true))),
                    1 => issue(&mut c, "svc:x", &["role:marketing"])
                        .await
                        .map(|t| Some((t, false))),
                    _ => revoke(&mut c, "svc:x").await.map(|_| None),
                }
            });
        }
        while let Some(done) = calls.join_next().await {
            match done.unwrap() {
                Ok(Some(t)) => issued.push(t),
                Ok(None) => {}
                Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{status:?}"),
            }
        }
        let live = live_tokens(&mut admin).await;
        let mut sets: Vec<Vec<String>> = live
            .iter()
            .filter(|t| t.subject == "svc:x")
            .map(|t| t.roles.clone())
            .collect();
        sets.sort();
        sets.dedup();
        if sets.len() > 1 {
            merged_rounds += 1;
        }
        for (token, admin_roles) in &issued {
            if let Some(plain_ssn) = probe(&vault, token, &id).await {
                assert_eq!(
                    plain_ssn, *admin_roles,
                    "round {round}: a live token reads beyond its own roles ({sets:?})"
                );
            }
        }
        let is_admin = sets.first().is_some_and(|s| s == &["role:admin"]);
        let table = explain_delete(&mut admin, "svc:x").await;
        assert_eq!(
            table == "allowed",
            is_admin && sets.len() == 1,
            "round {round}: the table says {table} for live role sets {sets:?}"
        );
    }
    assert_eq!(
        merged_rounds, 0,
        "rounds that left a subject with two role sets"
    );
}

#[tokio::test]
async fn admins_revoking_each_other_at_once_leave_one_admin() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("pair")).await;
    let rounds = 12;
    // Two admins revoke each other at once: exactly one succeeds, and an admin remains.
    let mut pair = (vault.admin_token.clone(), "user:admin".to_owned());
    let mut both_revoked = 0;
    for round in 0..rounds {
        let other_subject = format!("svc:admin{round}");
        let mut first = vault.client(&pair.0).await;
        let other = issue(&mut first, &other_subject, &["role:admin"])
            .await
            .unwrap();
        let mut a = vault.client(&pair.0).await;
        let mut b = vault.client(&other).await;
        let (a_subject, b_subject) = (pair.1.clone(), other_subject.clone());
        let (ra, rb) = tokio::join!(revoke(&mut a, &b_subject), revoke(&mut b, &a_subject));
        let a_left = probe(&vault, &pair.0, &id).await.is_some();
        let b_left = probe(&vault, &other, &id).await.is_some();
        match (ra.is_ok(), rb.is_ok()) {
            (true, false) => assert!(a_left && !b_left, "round {round}"),
            (false, true) => assert!(b_left && !a_left, "round {round}"),
            (true, true) => {
                both_revoked += 1;
                break;
            }
            (false, false) => {
                panic!("round {round}: neither revocation went through: {ra:?} {rb:?}")
            }
        }
        pair = if a_left { pair } else { (other, other_subject) };
        let mut survivor = vault.client(&pair.0).await;
        let admins = live_tokens(&mut survivor)
            .await
            .iter()
            .filter(|t| t.roles.iter().any(|r| r == "role:admin"))
            .count();
        assert_eq!(admins, 1, "round {round}");
    }
    assert_eq!(both_revoked, 0, "rounds that left no admin token");
}

#[tokio::test]
async fn a_revoked_auditors_live_stream_ends() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let token = issue(&mut admin, "svc:aud", &["role:auditor"])
        .await
        .unwrap();
    let mut auditor = vault.client(&token).await;
    let mut stream = auditor
        .audit
        .follow_events(pb::FollowEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // An event committed from now on reaches the follower: the stream is open.
    live_tokens(&mut admin).await;
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the follower sees a new event")
        .unwrap()
        .unwrap();

    let revoked_at = Instant::now();
    assert_eq!(revoke(&mut admin, "svc:aud").await.unwrap(), 1);
    // A hang guard, not a timed assertion: without the fix the stream never ends.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the revoked caller's stream is still open after 10 s");
    let how = match ended {
        Some(status) => {
            assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
            "UNAUTHENTICATED"
        }
        None => "end of stream",
    };
    eprintln!(
        "a revoked follower's stream ended ({how}) {} ms after the revocation was acknowledged",
        revoked_at.elapsed().as_millis()
    );
    // And the token opens no new one.
    assert_code(
        auditor
            .audit
            .follow_events(pb::FollowEventsRequest::default())
            .await,
        Code::Unauthenticated,
    );
}

/// A call whose headers (and token) arrive before a revocation and whose body arrives after it
/// does nothing: the handler checks the token again once the body is in. A caller could
/// otherwise open calls ahead, hold their bodies back, and use them after losing its token.
#[tokio::test]
async fn a_call_opened_before_a_revocation_and_finished_after_it_is_refused() {
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{client::Grpc, codegen::http::uri::PathAndQuery, transport::Channel};

    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("held")).await;
    let token = issue(&mut admin, "svc:x", &["role:admin"]).await.unwrap();

    let channel = Channel::from_shared(vault.addr())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = Grpc::new(channel);
    grpc.ready().await.unwrap();
    let (body, held) = tokio::sync::mpsc::channel::<pb::GetRecordRequest>(1);
    let mut request = tonic::Request::new(ReceiverStream::new(held));
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let call = tokio::spawn(async move {
        grpc.client_streaming(
            request,
            PathAndQuery::from_static("/strongroom.v1.Records/GetRecord"),
            tonic_prost::ProstCodec::<pb::GetRecordRequest, pb::GetRecordResponse>::default(),
        )
        .await
    });
    // The headers are in (the call is open) before the revocation.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(revoke(&mut admin, "svc:x").await.unwrap(), 1);
    body.send(pb::GetRecordRequest {
        id: id.clone(),
        purpose: "support".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    drop(body);
    let answer = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the held call was answered")
        .unwrap();
    assert_code(answer, Code::Unauthenticated);
}

/// A revocation whose caller gives up (a deadline, a dropped connection) while the disk is slow
/// still takes effect in full once its commit lands: the tokens deleted on disk stop working in
/// memory too. Cut between the two, they kept authenticating until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_cancelled_by_its_caller_mid_commit_still_takes_effect() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Faulty::new(RocksStore::open(dir.path()).unwrap()));
    let (_dir, running, token) = Vault::start_over(store.clone(), "").await;
    let addr = format!("http://{}", running.addr);
    let mut admin = strongroom::client::connect(&addr, &token).await.unwrap();
    let id = create(&mut admin, customer("cancel")).await;
    let x_token = issue(&mut admin, "svc:x", &["role:admin"]).await.unwrap();
    let mut x = strongroom::client::connect(&addr, &x_token).await.unwrap();
    get(&mut x, &id, "support").await.unwrap();

    store.writes.close();
    let mut request = tonic::Request::new(pb::RevokeTokensRequest {
        subject: "svc:x".into(),
    });
    request.set_timeout(Duration::from_millis(300));
    assert_code(admin.tokens.revoke_tokens(request).await, Code::Cancelled);
    store.writes.open();
    // The revocation's commit lands once the disk answers.
    let start = Instant::now();
    while store
        .inner
        .scan_prefix(Keyspace::Meta, b"token/")
        .unwrap()
        .len()
        > 1
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the revocation never landed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_code(get(&mut x, &id, "support").await, Code::Unauthenticated);
    let subjects: Vec<String> = live_tokens(&mut admin)
        .await
        .into_iter()
        .map(|t| t.subject)
        .collect();
    assert!(!subjects.contains(&"svc:x".to_owned()), "{subjects:?}");
}
