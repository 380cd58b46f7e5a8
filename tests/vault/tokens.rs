//! Tokens that expire and are bound to purposes (issue 10, point 3), through the real server
//! with a manual clock: nothing here sleeps to make time pass.

use std::time::Duration;

use strongroom::{api::pb, client::Client, domain::Clock};
use tonic::Code;

use crate::support::{Vault, assert_code, create, customer, events, events_of, get};

/// 2027-01-15T08:00:00Z: the manual clock's start.
const T0: i64 = 1_800_000_000_000;
const HOUR: Duration = Duration::from_secs(3600);

async fn manual() -> Vault {
    Vault::start_with_clock(Clock::manual(T0)).await
}

async fn list(admin: &mut Client) -> Vec<pb::TokenInfo> {
    admin
        .tokens
        .list_tokens(pb::ListTokensRequest {})
        .await
        .unwrap()
        .into_inner()
        .tokens
}

async fn rotate(
    admin: &mut Client,
    id: &str,
    grace: &str,
) -> Result<pb::RotateTokenResponse, tonic::Status> {
    admin
        .tokens
        .rotate_token(pb::RotateTokenRequest {
            id: id.into(),
            grace: grace.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The refusal of an expired token: UNAUTHENTICATED, saying it expired.
fn assert_expired<T: std::fmt::Debug>(result: Result<T, tonic::Status>) {
    let status = assert_code(result, Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test]
async fn a_token_works_until_its_expiry_then_is_refused_as_expired_and_counted_so() {
    let mut vault = manual().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("exp")).await;
    let issued = vault
        .token_with("svc:desk", &["role:support"], "72h", &[])
        .await
        .unwrap();
    assert_eq!(issued.expires_at_unix_ms, T0 + 72 * 3600 * 1000);
    let mut desk = vault.client(&issued.token).await;
    get(&mut desk, &id, "support").await.unwrap();

    vault.clock.advance(72 * HOUR - Duration::from_millis(1));
    get(&mut desk, &id, "support").await.unwrap();
    vault.clock.advance(Duration::from_millis(1));
    assert_expired(get(&mut desk, &id, "support").await);
    // A token without an expiry is untouched by time.
    vault.clock.advance(1000 * 24 * HOUR);
    get(&mut admin, &id, "support").await.unwrap();

    // Refusals are counted by reason; the window closes at shutdown.
    vault.restart().await;
    let mut desk = vault.client(&issued.token).await;
    assert_expired(get(&mut desk, &id, "support").await);
    let mut admin = vault.admin().await;
    let refused: Vec<String> = events(
        &mut admin,
        pb::EventFilter {
            method: "Records/GetRecord".into(),
            ..Default::default()
        },
    )
    .await
    .into_iter()
    .filter(|e| e.result == "UNAUTHENTICATED")
    .map(|e| e.detail)
    .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("expired token"), "{refused:?}");
}

#[tokio::test]
async fn a_live_stream_ends_when_its_token_expires() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let issued = vault
        .token_with("svc:aud", &["role:auditor"], "1h", &[])
        .await
        .unwrap();
    let mut auditor = vault.client(&issued.token).await;
    let mut stream = auditor
        .audit
        .follow_events(pb::FollowEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    // An event committed from now on reaches the follower: the stream is open.
    list(&mut admin).await;
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the follower sees a new event")
        .unwrap()
        .unwrap();

    vault.clock.advance(HOUR);
    // A hang guard, not a timed assertion: without expiry the stream never ends.
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
    .expect("the expired caller's stream is still open after 10 s");
    let status = ended.expect("the stream ends with a status");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("expired"), "{}", status.message());
    assert_expired(
        auditor
            .audit
            .follow_events(pb::FollowEventsRequest::default())
            .await,
    );
}

#[tokio::test]
async fn a_purpose_bound_token_declares_only_its_purposes() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("pur")).await;
    // Roles that could read for billing, but a token bound to support only.
    let issued = vault
        .token_with(
            "svc:desk",
            &["role:support", "role:billing"],
            "",
            &["support"],
        )
        .await
        .unwrap();
    assert_eq!(issued.purposes, ["support"]);
    let mut desk = vault.client(&issued.token).await;
    get(&mut desk, &id, "support").await.unwrap();
    let status = assert_code(get(&mut desk, &id, "billing").await, Code::PermissionDenied);
    assert!(
        status.message().contains("purpose billing") && status.message().contains("support"),
        "{}",
        status.message()
    );
    // An undeclared purpose is refused as such, never echoed.
    let status = assert_code(
        get(&mut desk, &id, "123-45-6789").await,
        Code::InvalidArgument,
    );
    assert!(!status.message().contains("123-45-6789"));
    // The denial is audited like any other, with the purpose it declared.
    let denied: Vec<_> = events_of(&mut admin, "Records/GetRecord")
        .await
        .into_iter()
        .filter(|e| e.result == "PERMISSION_DENIED")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].subject, "svc:desk");
    assert_eq!(denied[0].purpose, "billing");

    // Only declared purposes bind a token; the error names the entry, not its text.
    let status = assert_code(
        vault
            .token_with(
                "svc:other",
                &["role:support"],
                "",
                &["support", "123-45-6789"],
            )
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("purposes[1]"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("123-45-6789"));
}

#[tokio::test]
async fn vendor_tokens_must_expire_within_the_limit_and_be_bound_to_a_purpose() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("ven")).await;
    let refused = |result: Result<pb::CreateTokenResponse, tonic::Status>, field: &str| {
        let status = assert_code(result, Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    };
    let support = ["support"];
    refused(
        vault
            .token_with("vendor:acme", &["role:support"], "", &support)
            .await,
        "expires_in",
    );
    refused(
        vault
            .token_with("vendor:acme", &["role:support"], "169h", &support)
            .await,
        "expires_in",
    );
    refused(
        vault
            .token_with("vendor:acme", &["role:support"], "72h", &[])
            .await,
        "purposes",
    );
    refused(
        vault
            .token_with("svc:x", &["role:support"], "soon", &[])
            .await,
        "expires_in",
    );
    refused(
        vault
            .token_with("svc:x", &["role:support"], "0s", &[])
            .await,
        "expires_in",
    );
    assert!(
        list(&mut admin)
            .await
            .iter()
            .all(|t| t.subject == "user:admin"),
        "a refused issue leaves no token"
    );
    let issued = vault
        .token_with("vendor:acme", &["role:support"], "7d", &support)
        .await
        .unwrap();
    let mut acme = vault.client(&issued.token).await;
    get(&mut acme, &id, "support").await.unwrap();
    vault.clock.advance(7 * 24 * HOUR);
    assert_expired(get(&mut acme, &id, "support").await);
}

#[tokio::test]
async fn the_longest_vendor_lifetime_is_the_configs() {
    let store: std::sync::Arc<dyn strongroom::storage::Store> =
        std::sync::Arc::new(strongroom::storage::MemoryStore::new());
    let (_dir, running, token) = Vault::start_over(store, "max_vendor_token_hours = 24\n").await;
    let mut admin = strongroom::client::connect(&format!("http://{}", running.addr), &token)
        .await
        .unwrap();
    let vendor = |expires_in: &str| pb::CreateTokenRequest {
        subject: "vendor:acme".into(),
        roles: vec!["role:support".into()],
        expires_in: expires_in.into(),
        purposes: vec!["support".into()],
    };
    let status = assert_code(
        admin.tokens.create_token(vendor("25h")).await,
        Code::InvalidArgument,
    );
    assert!(status.message().contains("24h"), "{}", status.message());
    admin.tokens.create_token(vendor("24h")).await.unwrap();
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_rotated_token_works_through_its_grace_then_only_the_new_one_does() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("rot")).await;
    let old = vault
        .token_with("svc:desk", &["role:support"], "72h", &["support"])
        .await
        .unwrap();
    let mut writer = vault.as_role("role:writer").await;
    assert_code(
        rotate(&mut writer, &old.id, "").await,
        Code::PermissionDenied,
    );
    for (bad_id, grace, field) in [
        ("ffffffff", "", "id"),
        ("nothex!!", "", "id"),
        ("", "", "id"),
        (old.id.as_str(), "8d", "grace"),
        (old.id.as_str(), "1y", "grace"),
    ] {
        let status = assert_code(
            rotate(&mut admin, bad_id, grace).await,
            Code::InvalidArgument,
        );
        assert!(status.message().starts_with(field), "{}", status.message());
    }

    vault.clock.advance(HOUR);
    let new = rotate(&mut admin, &old.id, "30m").await.unwrap();
    assert_ne!(new.id, old.id);
    assert_ne!(new.token, old.token);
    assert_eq!(new.old_id, old.id);
    assert_eq!(
        (new.subject.as_str(), new.roles.clone()),
        ("svc:desk", vec!["role:support".to_owned()])
    );
    assert_eq!(new.purposes, ["support"]);
    assert_eq!(
        new.expires_at_unix_ms, old.expires_at_unix_ms,
        "the same expiry"
    );
    assert_eq!(
        new.old_expires_at_unix_ms,
        T0 + 3600 * 1000 + 30 * 60 * 1000
    );

    let mut before = vault.client(&old.token).await;
    let mut after = vault.client(&new.token).await;
    get(&mut before, &id, "support").await.unwrap();
    get(&mut after, &id, "support").await.unwrap();
    vault.clock.advance(Duration::from_secs(1800));
    assert_expired(get(&mut before, &id, "support").await);
    get(&mut after, &id, "support").await.unwrap();
    // The same rights: still bound to its purpose, and it expires when the old one would have.
    assert_code(
        get(&mut after, &id, "billing").await,
        Code::PermissionDenied,
    );
    let status = assert_code(rotate(&mut admin, &old.id, "").await, Code::InvalidArgument);
    assert!(status.message().contains("expired"), "{}", status.message());
    vault.clock.advance(71 * HOUR - Duration::from_secs(1800));
    assert_expired(get(&mut after, &id, "support").await);

    let rotations = events_of(&mut admin, "Tokens/RotateToken").await;
    let ok: Vec<_> = rotations.iter().filter(|e| e.result == "OK").collect();
    assert_eq!(ok.len(), 1);
    assert!(
        ok[0].detail.contains(&old.id) && ok[0].detail.contains(&new.id),
        "{}",
        ok[0].detail
    );
    for e in &rotations {
        assert!(!e.detail.contains(&old.token) && !e.detail.contains(&new.token));
    }
}

#[tokio::test]
async fn token_list_shows_expiry_and_purposes_and_they_survive_a_restart() {
    let mut vault = manual().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("lst")).await;
    let short = vault
        .token_with("svc:short", &["role:support"], "1h", &[])
        .await
        .unwrap();
    let bound = vault
        .token_with(
            "vendor:acme",
            &["role:support", "role:billing"],
            "48h",
            &["support", "billing"],
        )
        .await
        .unwrap();
    let info = |tokens: &[pb::TokenInfo], id: &str| {
        let t = tokens.iter().find(|t| t.id == id).unwrap();
        (t.expires_at_unix_ms, t.expired, t.purposes.clone())
    };
    let tokens = list(&mut admin).await;
    assert_eq!(info(&tokens, &short.id), (T0 + 3600 * 1000, false, vec![]));
    let purposes = vec!["billing".to_owned(), "support".to_owned()];
    assert_eq!(
        info(&tokens, &bound.id),
        (T0 + 48 * 3600 * 1000, false, purposes.clone())
    );
    let root = tokens.iter().find(|t| t.subject == "user:admin").unwrap();
    assert_eq!((root.expires_at_unix_ms, root.expired), (0, false));

    vault.clock.advance(HOUR);
    assert!(
        info(&list(&mut admin).await, &short.id).1,
        "listed as expired"
    );
    vault.restart().await;
    let mut admin = vault.admin().await;
    let tokens = list(&mut admin).await;
    assert_eq!(info(&tokens, &short.id), (T0 + 3600 * 1000, true, vec![]));
    assert_eq!(
        info(&tokens, &bound.id),
        (T0 + 48 * 3600 * 1000, false, purposes)
    );
    // Still refused, still bound, still expiring, from the stored tokens.
    let mut short_client = vault.client(&short.token).await;
    assert_expired(get(&mut short_client, &id, "support").await);
    let mut acme = vault.client(&bound.token).await;
    get(&mut acme, &id, "billing").await.unwrap();
    assert_code(
        get(&mut acme, &id, "marketing").await,
        Code::PermissionDenied,
    );
    vault.clock.advance(47 * HOUR);
    assert_expired(get(&mut acme, &id, "billing").await);
}

#[tokio::test]
async fn the_admin_token_that_never_expires_cannot_be_revoked_while_others_expire() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let ops = vault
        .token_with("user:ops", &["role:admin"], "8h", &[])
        .await
        .unwrap();
    let mut ops = vault.client(&ops.token).await;
    let status = assert_code(
        ops.tokens
            .revoke_tokens(pb::RevokeTokensRequest {
                subject: "user:admin".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("never expires"),
        "{}",
        status.message()
    );
    vault.clock.advance(8 * HOUR);
    // Once the temporary admin has expired, the vault is still administrable.
    assert_expired(ops.tokens.list_tokens(pb::ListTokensRequest {}).await);
    list(&mut admin).await;
}

/// Issues a token as `by`, returning the whole response.
async fn issue_as(
    by: &mut Client,
    subject: &str,
    roles: &[&str],
    expires_in: &str,
    purposes: &[&str],
) -> Result<pb::CreateTokenResponse, tonic::Status> {
    by.tokens
        .create_token(pb::CreateTokenRequest {
            subject: subject.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            expires_in: expires_in.into(),
            purposes: purposes.iter().map(|p| (*p).to_owned()).collect(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The id `token list` shows for the first admin's token.
async fn admin_token_id(admin: &mut Client) -> String {
    list(admin)
        .await
        .into_iter()
        .find(|t| t.subject == "user:admin")
        .unwrap()
        .id
}

// Review finding: `tokens manage` alone let its holder mint (or rotate into) a token with any
// role, so a token desk could make itself role:admin, or a second policy admin, without the
// two-person rule ever seeing it: keeping `tokens manage` and `policies manage` apart (as the
// README advises) did not help.
#[tokio::test]
async fn a_token_manager_cannot_issue_or_rotate_into_privileges_it_lacks() {
    let vault = Vault::start_configured(
        "",
        "p, role:token_desk, tokens, manage, *, allow\n",
        Clock::manual(T0),
    )
    .await;
    let mut admin = vault.admin().await;
    let desk = vault.token("user:desk", &["role:token_desk"]).await;
    let mut desk = vault.client(&desk).await;
    // Its job: tokens for roles that hold no privilege it lacks.
    issue_as(&mut desk, "svc:billing", &["role:billing"], "", &[])
        .await
        .unwrap();
    // role:support records consent (`consent manage`), which the desk does not hold.
    for role in [
        "role:admin",
        "role:security_admin",
        "role:auditor",
        "role:support",
    ] {
        let status = assert_code(
            issue_as(&mut desk, "user:mallory", &[role], "", &[]).await,
            Code::PermissionDenied,
        );
        assert!(
            status.message().contains("user:desk"),
            "{}",
            status.message()
        );
    }
    let admin_id = admin_token_id(&mut admin).await;
    assert_code(
        rotate(&mut desk, &admin_id, "").await,
        Code::PermissionDenied,
    );
    assert!(
        list(&mut admin)
            .await
            .iter()
            .all(|t| t.subject != "user:mallory"),
        "no token was minted"
    );
}

// Review finding: a token that expires, or is bound to purposes (a vendor's, say), could issue
// or rotate into tokens that never expire and declare any purpose: access given for a weekend
// lasted forever through a token it minted.
#[tokio::test]
async fn an_expiring_purpose_bound_issuer_cannot_issue_or_rotate_past_its_own_bounds() {
    let vault = manual().await;
    let mut admin = vault.admin().await;
    let acme = vault
        .token_with("vendor:acme", &["role:admin"], "72h", &["support"])
        .await
        .unwrap();
    let mut acme = vault.client(&acme.token).await;
    for (expires_in, purposes) in [
        ("", &["support"][..]),
        ("100h", &["support"][..]),
        ("24h", &[][..]),
        ("24h", &["support", "billing"][..]),
    ] {
        assert_code(
            issue_as(
                &mut acme,
                "svc:backdoor",
                &["role:support"],
                expires_in,
                purposes,
            )
            .await,
            Code::PermissionDenied,
        );
    }
    let admin_id = admin_token_id(&mut admin).await;
    assert_code(
        rotate(&mut acme, &admin_id, "").await,
        Code::PermissionDenied,
    );
    // Within its own bounds it may still issue.
    issue_as(
        &mut acme,
        "svc:helper",
        &["role:support"],
        "24h",
        &["support"],
    )
    .await
    .unwrap();
    assert!(
        list(&mut admin)
            .await
            .iter()
            .all(|t| t.subject != "svc:backdoor"
                && (t.subject == "user:admin" || t.expires_at_unix_ms != 0)),
        "no unbounded token was minted"
    );
}

// Review finding: the "last admin" guard counted tokens with role:admin, not the holders of
// `tokens manage` in the live policy, so once the policy moved token management to another
// role, its last holder could be revoked and nobody could issue or revoke tokens again
// (re-granting it needs a second policy admin, whom nobody can now mint).
#[tokio::test]
async fn the_last_token_manager_that_never_expires_cannot_be_revoked() {
    let vault = Vault::start_configured(
        "",
        "p, role:token_desk, tokens, manage, *, allow\n",
        Clock::manual(T0),
    )
    .await;
    let mut admin = vault.admin().await;
    let desk = vault.token("user:desk", &["role:token_desk"]).await;
    let mut desk = vault.client(&desk).await;
    // Narrowing: role:admin no longer manages tokens (applied at once).
    let text = admin
        .policies
        .get_policy(pb::GetPolicyRequest { version: None })
        .await
        .unwrap()
        .into_inner()
        .text
        .replace("p, role:admin, tokens, manage, *, allow\n", "");
    let applied = admin
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text,
            comment: "token desk only".into(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.version.is_some(), "{applied:?}");
    let status = assert_code(
        desk.tokens
            .revoke_tokens(pb::RevokeTokensRequest {
                subject: "user:desk".into(),
            })
            .await,
        Code::InvalidArgument,
    );
    assert!(
        status.message().contains("tokens manage"),
        "{}",
        status.message()
    );
    list(&mut desk).await;
}
