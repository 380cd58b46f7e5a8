//! The two-person rule and privileges held in the policy: an escalating change waits for a
//! second, different policy admin; privileges follow the live policy; a lockout is refused;
//! pending changes survive a restart; an old stored policy without privilege lines is migrated.

use strongroom::{
    api::pb::{self, Disclosure},
    client::Client,
    storage::{Batch, Keyspace},
};
use tonic::Code;

use super::{DEFAULT_POLICY, current};
use crate::support::*;

const SUPPORT_SSN: &str = "p, role:support, customers.ssn, read, support, allow";

async fn propose(
    client: &mut Client,
    text: &str,
) -> Result<pb::ApplyPolicyResponse, tonic::Status> {
    client
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text: text.into(),
            comment: "two-person test".into(),
            expected_version: None,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn approve(client: &mut Client, id: u64) -> Result<pb::ApplyPolicyResponse, tonic::Status> {
    client
        .policies
        .approve_policy(pb::ApprovePolicyRequest { id })
        .await
        .map(tonic::Response::into_inner)
}

async fn pending(client: &mut Client) -> Vec<pb::PendingPolicy> {
    client
        .policies
        .list_pending_policies(pb::ListPendingPoliciesRequest {})
        .await
        .unwrap()
        .into_inner()
        .pending
}

fn with(line: &str) -> String {
    format!("{DEFAULT_POLICY}{line}\n")
}

/// The pending change of a response that must be pending (and applied nothing).
fn must_pend(r: pb::ApplyPolicyResponse) -> pb::PendingPolicy {
    assert!(r.version.is_none(), "applied at once: {r:?}");
    r.pending.expect("a pending change")
}

async fn ssn_for_support(support: &mut Client, id: &str) -> Option<(String, Disclosure)> {
    let resp = get(support, id, "support").await.unwrap();
    value_of(&resp, "ssn").map(|(v, d)| (v.to_owned(), d))
}

async fn query_audit(client: &mut Client) -> Result<(), tonic::Status> {
    client
        .audit
        .query_events(pb::QueryEventsRequest {
            filter: None,
            page_size: 1,
            after_seq: 0,
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn an_escalation_waits_for_a_second_policy_admin() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("tp")).await;
    let mut support = vault.as_role("role:support").await;
    let mut sec = vault
        .client(&vault.token("user:sec", &["role:security_admin"]).await)
        .await;

    let before = ssn_for_support(&mut support, &id).await;
    assert_ne!(before.as_ref().map(|b| b.1), Some(Disclosure::Plain));

    let p = must_pend(propose(&mut admin, &with(SUPPORT_SSN)).await.unwrap());
    assert_eq!(
        (p.proposed_by.as_str(), p.against_version),
        ("user:admin", 1)
    );
    assert!(
        p.reasons
            .iter()
            .any(|r| r
                == "role:support would read sensitive customers.ssn for support: denied -> plain"),
        "{:?}",
        p.reasons
    );
    // Nothing changed: the version, and what support reads.
    assert_eq!(current(&mut admin).await.info.unwrap().version, 1);
    assert_eq!(ssn_for_support(&mut support, &id).await, before);
    let listed = pending(&mut sec).await;
    assert_eq!(listed.iter().map(|l| l.id).collect::<Vec<_>>(), [p.id]);

    // The proposer cannot approve its own change; a subject without policy rights cannot at all.
    let own = assert_code(approve(&mut admin, p.id).await, Code::PermissionDenied);
    assert!(
        own.message().contains("user:admin proposed pending change")
            && own.message().contains("second, different subject"),
        "{}",
        own.message()
    );
    let no_rights = assert_code(approve(&mut support, p.id).await, Code::PermissionDenied);
    assert!(
        no_rights.message().contains("policies manage"),
        "{}",
        no_rights.message()
    );
    assert_eq!(ssn_for_support(&mut support, &id).await, before);
    assert_code(approve(&mut sec, 99).await, Code::NotFound);

    // A second policy admin approves: applied as version 2, and the read shows the SSN.
    let applied = approve(&mut sec, p.id).await.unwrap();
    let info = applied.version.expect("applied");
    assert_eq!(
        (
            info.version,
            info.applied_by.as_str(),
            info.approved_by.as_str()
        ),
        (2, "user:admin", "user:sec")
    );
    assert_eq!(
        ssn_for_support(&mut support, &id).await,
        Some(("123-45-6789".to_owned(), Disclosure::Plain))
    );
    assert!(pending(&mut sec).await.is_empty());
    assert_code(approve(&mut sec, p.id).await, Code::Aborted);

    // Audited: the proposal, the refused self-approval, the approval.
    let proposed = events_of(&mut admin, "Policies/ApplyPolicy").await;
    assert!(
        proposed
            .iter()
            .any(|e| e.result == "OK" && e.detail.contains("pending change 1")),
        "{proposed:?}"
    );
    let approvals = events_of(&mut admin, "Policies/ApprovePolicy").await;
    assert!(
        approvals
            .iter()
            .any(|e| e.result == "PERMISSION_DENIED" && e.subject == "user:admin")
    );
    assert!(
        approvals
            .iter()
            .any(|e| e.result == "OK" && e.subject == "user:sec" && e.detail.contains("approved")),
        "{approvals:?}"
    );
}

#[tokio::test]
async fn only_escalations_wait_and_approval_needs_the_policy_unmoved() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut sec = vault
        .client(&vault.token("user:sec", &["role:security_admin"]).await)
        .await;

    // Not sensitive (email), not a privilege: applied at once.
    let email = with("p, role:support, customers.email, read, support, allow");
    let r = propose(&mut admin, &email).await.unwrap();
    assert!(r.pending.is_none());
    assert_eq!(r.version.unwrap().version, 2);
    // Narrowing a sensitive read applies at once too.
    let narrower = email.replace(
        "p, role:billing, customers.card_number, read_masked, billing, allow\n",
        "",
    );
    assert_eq!(
        propose(&mut admin, &narrower)
            .await
            .unwrap()
            .version
            .unwrap()
            .version,
        3
    );

    // Granting `policies manage` to a role, directly or through `g` inheritance: pending.
    let direct = must_pend(
        propose(
            &mut admin,
            &format!("{narrower}p, role:support, policies, manage, *, allow\n"),
        )
        .await
        .unwrap(),
    );
    assert!(
        direct
            .reasons
            .iter()
            .any(|r| r == "role:support would gain `policies manage`"),
        "{:?}",
        direct.reasons
    );
    let inherited = must_pend(
        propose(
            &mut admin,
            &format!("{narrower}g, role:support, role:auditor\n"),
        )
        .await
        .unwrap(),
    );
    assert!(
        inherited
            .reasons
            .iter()
            .any(|r| r == "role:support would gain `audit read`"),
        "{:?}",
        inherited.reasons
    );
    // Denied -> masked on a sensitive field (the billing card, withheld since version 3) waits.
    must_pend(propose(&mut admin, &email).await.unwrap());

    // The policy moves on (a non-escalating change): approving a change proposed against the
    // old version is refused; it must be proposed again.
    let moved =
        format!("{narrower}p, role:marketing, customers.phone, read_masked, marketing, allow\n");
    assert_eq!(
        propose(&mut admin, &moved)
            .await
            .unwrap()
            .version
            .unwrap()
            .version,
        4
    );
    let stale = assert_code(approve(&mut sec, direct.id).await, Code::Aborted);
    assert!(
        stale.message().contains("propose the change again"),
        "{}",
        stale.message()
    );
    assert_eq!(current(&mut admin).await.info.unwrap().version, 4);

    // Rejected (and withdrawn by its proposer) changes leave the pending list.
    let rejected = sec
        .policies
        .reject_policy(pb::RejectPolicyRequest { id: direct.id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (rejected.status.as_str(), rejected.decided_by.as_str()),
        ("rejected", "user:sec")
    );
    admin
        .policies
        .reject_policy(pb::RejectPolicyRequest { id: inherited.id })
        .await
        .unwrap();
    assert_eq!(pending(&mut sec).await.len(), 1);
    assert_code(approve(&mut sec, direct.id).await, Code::Aborted);
    let events = events_of(&mut admin, "Policies/RejectPolicy").await;
    assert!(
        events
            .iter()
            .any(|e| e.detail.contains("withdrawn by its proposer"))
    );
}

#[tokio::test]
async fn a_policy_that_locks_out_policy_administration_is_refused() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let no_admins: String = DEFAULT_POLICY
        .lines()
        .filter(|l| !l.contains("policies, manage"))
        .map(|l| format!("{l}\n"))
        .collect();
    let e = assert_code(propose(&mut admin, &no_admins).await, Code::InvalidArgument);
    assert!(
        e.message().contains("no role would hold `policies manage`"),
        "{}",
        e.message()
    );
    // Only security_admin keeps it, and no token holds that role: refused too.
    let only_sec = DEFAULT_POLICY.replace("p, role:admin, policies, manage, *, allow\n", "");
    let e = assert_code(propose(&mut admin, &only_sec).await, Code::InvalidArgument);
    assert!(e.message().contains("no token holder"), "{}", e.message());
    // An unknown privilege is an error naming the line.
    let e = assert_code(
        propose(&mut admin, "p, role:admin, audit, manage, *, allow\n").await,
        Code::InvalidArgument,
    );
    assert!(
        e.message().contains("line 1") && e.message().contains("not a privilege"),
        "{}",
        e.message()
    );
    assert_eq!(current(&mut admin).await.info.unwrap().version, 1);
}

#[tokio::test]
async fn privileges_follow_the_live_policy() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let mut sec = vault
        .client(&vault.token("user:sec", &["role:security_admin"]).await)
        .await;
    let mut reviewer = vault.as_role("role:reviewer").await;
    let mut other = vault.as_role("role:other").await;
    let mut auditor = vault.as_role("role:auditor").await;

    let e = assert_code(query_audit(&mut reviewer).await, Code::PermissionDenied);
    assert!(
        e.message().contains("role:admin or role:auditor") && e.message().contains("audit read"),
        "{}",
        e.message()
    );
    query_audit(&mut auditor).await.unwrap();

    let p = must_pend(
        propose(&mut admin, &with("p, role:reviewer, audit, read, *, allow"))
            .await
            .unwrap(),
    );
    assert_code(query_audit(&mut reviewer).await, Code::PermissionDenied);
    approve(&mut sec, p.id).await.unwrap();
    query_audit(&mut reviewer).await.unwrap();
    assert_code(query_audit(&mut other).await, Code::PermissionDenied);

    // Taking a privilege away applies at once.
    let text = current(&mut admin)
        .await
        .text
        .replace("p, role:auditor, audit, read, *, allow\n", "");
    assert!(propose(&mut admin, &text).await.unwrap().version.is_some());
    assert_code(query_audit(&mut auditor).await, Code::PermissionDenied);
    // And token management follows the policy as well: security_admin cannot issue tokens.
    let e = assert_code(
        sec.tokens
            .create_token(pb::CreateTokenRequest {
                subject: "svc:x".into(),
                roles: vec!["role:support".into()],
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );
    assert!(e.message().contains("tokens manage"), "{}", e.message());
}

#[tokio::test]
async fn pending_changes_survive_a_restart() {
    let mut vault = Vault::start().await;
    let sec_token = vault.token("user:sec", &["role:security_admin"]).await;
    let mut admin = vault.admin().await;
    let p = must_pend(propose(&mut admin, &with(SUPPORT_SSN)).await.unwrap());
    vault.restart().await;
    let mut sec = vault.client(&sec_token).await;
    let listed = pending(&mut sec).await;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].id, listed[0].reasons.clone()), (p.id, p.reasons));
    assert_eq!(
        approve(&mut sec, p.id)
            .await
            .unwrap()
            .version
            .unwrap()
            .version,
        2
    );
}

#[tokio::test]
async fn a_stored_policy_without_privilege_lines_is_migrated() {
    let mut vault = Vault::start().await;
    let auditor_token = vault.token("svc:auditor", &["role:auditor"]).await;
    let sec_token = vault.token("user:sec", &["role:security_admin"]).await;
    // A data dir written before privileges moved into the policy: its current version holds
    // record rules only.
    let old: String = DEFAULT_POLICY
        .lines()
        .filter(|l| {
            ![
                "policies,",
                "tokens,",
                "keys,",
                "audit,",
                "consent,",
                "holds,",
                "retention,",
            ]
            .iter()
            .any(|o| l.starts_with("p,") && l.contains(o))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        !old.lines()
            .any(|l| l.starts_with("p,") && l.contains("manage"))
    );
    vault
        .with_store(|store| {
            let v = serde_json::json!({
                "version": 2, "text": old, "applied_by": "user:admin", "applied_at_ms": 0,
                "comment": "written by an older strongroom", "from_version": 1,
                "rule_count": 0, "decisions_changed": 0,
            });
            let mut key = b"policy/".to_vec();
            key.extend_from_slice(&2u64.to_be_bytes());
            let mut batch = Batch::new();
            batch.put(Keyspace::Meta, key, serde_json::to_vec(&v).unwrap());
            store.write(batch).unwrap();
        })
        .await;
    let mut admin = vault.admin().await;
    let now = current(&mut admin).await;
    let info = now.info.unwrap();
    assert_eq!(
        (info.version, info.from_version, info.applied_by.as_str()),
        (3, 2, "strongroom (migration)")
    );
    assert!(now.text.starts_with(old.trim_end()));
    assert!(
        now.text
            .contains("p, role:security_admin, policies, manage, *, allow")
    );
    // The same roles hold the same privileges as before.
    query_audit(&mut vault.client(&auditor_token).await)
        .await
        .unwrap();
    let mut sec = vault.client(&sec_token).await;
    pending(&mut sec).await;
    assert_code(query_audit(&mut sec).await, Code::PermissionDenied);
    let migrated = events_of(&mut admin, "Policies/Migrate").await;
    assert_eq!(migrated.len(), 1, "{migrated:?}");
    assert_eq!(migrated[0].policy_version, 3);
    // Once only: a restart finds privilege lines and adds nothing.
    vault.restart().await;
    let mut admin = vault.admin().await;
    assert_eq!(current(&mut admin).await.info.unwrap().version, 3);
}

// Review finding: the lockout check covered `policies manage` only. A narrowing (applied at
// once, no second admin) could take `tokens manage` from every token holder: from then on no
// stolen token can be revoked, and giving the privilege back is an escalation that needs a
// second policy admin whom nobody can mint any more.
#[tokio::test]
async fn a_policy_that_leaves_nobody_managing_tokens_is_refused() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let no_tokens = DEFAULT_POLICY.replace("p, role:admin, tokens, manage, *, allow\n", "");
    assert_ne!(no_tokens, DEFAULT_POLICY);
    let e = assert_code(propose(&mut admin, &no_tokens).await, Code::InvalidArgument);
    assert!(e.message().contains("tokens manage"), "{}", e.message());
    assert_eq!(current(&mut admin).await.info.unwrap().version, 1);
    // The admin can still revoke a token.
    let x = vault.token("svc:x", &["role:support"]).await;
    admin
        .tokens
        .revoke_tokens(pb::RevokeTokensRequest {
            subject: "svc:x".into(),
        })
        .await
        .unwrap();
    assert_code(
        get(
            &mut vault.client(&x).await,
            "00000000000000000000000000000000",
            "support",
        )
        .await,
        Code::Unauthenticated,
    );
}

// Review finding: the lockout check counted every principal the table was compiled for,
// expired tokens included, so a change could leave `policies manage` only with a subject whose
// token had expired: nobody live could administer policies again (and, as a token manager may
// not mint a privilege it lacks, nobody could mint a new policy admin either).
#[tokio::test]
async fn an_expired_token_does_not_keep_policy_administration_alive() {
    let vault = Vault::start_with_clock(strongroom::domain::Clock::manual(1_800_000_000_000)).await;
    let mut admin = vault.admin().await;
    vault
        .token_with("user:sec", &["role:security_admin"], "1h", &[])
        .await
        .unwrap();
    vault
        .clock
        .advance(std::time::Duration::from_secs(2 * 3600));
    let only_sec = DEFAULT_POLICY.replace("p, role:admin, policies, manage, *, allow\n", "");
    let e = assert_code(propose(&mut admin, &only_sec).await, Code::InvalidArgument);
    assert!(e.message().contains("no token holder"), "{}", e.message());
    assert_eq!(current(&mut admin).await.info.unwrap().version, 1);
}
