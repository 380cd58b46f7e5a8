//! Policy administration: the compiled decision table against an independent reference
//! evaluator (property test), namespacing and role chains, versioned apply / rollback / diff /
//! dry-run / explain through the gRPC service, concurrent applies under reads.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;
#[path = "policy/two_person.rs"]
mod two_person;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use proptest::{prelude::*, test_runner::TestRunner};
use strongroom::{
    api::pb::{self, Disclosure},
    domain::{Principal, Role, Schema, Subject},
    policy::{Decision, PolicyEngine},
};
use support::*;
use tonic::Code;

const MODEL: &str = include_str!("../policies/model.conf");
const DEFAULT_POLICY: &str = include_str!("../policies/policy.csv");

// ---------------------------------------------------------------------------------------------
// The reference evaluator: written from the model's meaning, sharing no code with the vault.

#[derive(Debug, Clone)]
struct P {
    sub: String,
    obj: String,
    act: &'static str,
    pur: String,
    allow: bool,
}

#[derive(Debug, Clone)]
struct World {
    collections: Vec<(String, Vec<String>)>,
    purposes: Vec<String>,
    grants: Vec<(String, String)>,
    rules: Vec<P>,
    /// Token principals: subject -> roles (grants the policy text does not hold).
    principals: Vec<(String, Vec<String>)>,
}

impl World {
    fn roles_of(&self, name: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::from([name.to_owned()]);
        let mut stack = vec![name.to_owned()];
        let token_grants = self
            .principals
            .iter()
            .flat_map(|(s, rs)| rs.iter().map(move |r| (s.clone(), r.clone())));
        let all: Vec<(String, String)> = self.grants.iter().cloned().chain(token_grants).collect();
        while let Some(n) = stack.pop() {
            for (m, r) in &all {
                if *m == n && seen.insert(r.clone()) {
                    stack.push(r.clone());
                }
            }
        }
        seen
    }

    fn allowed(&self, name: &str, obj: &str, act: &str, pur: &str) -> bool {
        let roles = self.roles_of(name);
        let matches = |p: &&P| {
            roles.contains(&p.sub)
                && (p.obj == obj
                    || (p.obj.ends_with(".*") && obj.starts_with(&p.obj[..p.obj.len() - 1])))
                && p.act == act
                && (p.pur == "*" || p.pur == pur)
        };
        let any_allow = self.rules.iter().filter(matches).any(|p| p.allow);
        let any_deny = self.rules.iter().filter(matches).any(|p| !p.allow);
        any_allow && !any_deny
    }

    fn read(&self, name: &str, obj: &str, pur: &str) -> Decision {
        if self.allowed(name, obj, "read", pur) {
            Decision::Plain
        } else if self.allowed(name, obj, "read_masked", pur) {
            Decision::Masked
        } else if self.allowed(name, obj, "read_pseudonym", pur) {
            Decision::Pseudonym
        } else {
            Decision::Denied
        }
    }

    fn schema_toml(&self) -> String {
        let purposes: Vec<String> = self.purposes.iter().map(|p| format!("{p:?}")).collect();
        let mut out = format!("purposes = [{}]\n", purposes.join(", "));
        for (c, fields) in &self.collections {
            let fs: Vec<String> = fields
                .iter()
                .map(|f| format!("{{ name = {f:?}, type = \"string\" }}"))
                .collect();
            out.push_str(&format!(
                "[collections.{c}]\nfields = [{}]\n",
                fs.join(", ")
            ));
        }
        out
    }

    fn policy_text(&self) -> String {
        let mut out = String::new();
        for (m, r) in &self.grants {
            out.push_str(&format!("g, {m}, {r}\n"));
        }
        for p in &self.rules {
            let eft = if p.allow { "allow" } else { "deny" };
            out.push_str(&format!(
                "p, {}, {}, {}, {}, {eft}\n",
                p.sub, p.obj, p.act, p.pur
            ));
        }
        out
    }

    fn principal_values(&self) -> Vec<Principal> {
        self.principals
            .iter()
            .map(|(s, rs)| {
                Principal::new(
                    Subject::parse(s, "s").unwrap(),
                    rs.iter().map(|r| Role::parse(r, "r").unwrap()).collect(),
                )
            })
            .collect()
    }

    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = (0..ROLES).map(|i| format!("role:r{i}")).collect();
        names.extend((0..SUBJECTS).map(|i| format!("svc:s{i}")));
        names.push("svc:nobody".into());
        names.push("role:unused".into());
        names
    }
}

const ROLES: usize = 6;
const SUBJECTS: usize = 4;

fn world() -> impl Strategy<Value = World> {
    let collections = prop::collection::vec(1usize..=5, 1..=2);
    let purposes = 1usize..=4;
    (collections, purposes)
        .prop_flat_map(|(fields_per, n_purposes)| {
            let collections: Vec<(String, Vec<String>)> = fields_per
                .iter()
                .enumerate()
                .map(|(c, &n)| (format!("c{c}"), (0..n).map(|f| format!("f{f}")).collect()))
                .collect();
            let purposes: Vec<String> = (0..n_purposes).map(|p| format!("p{p}")).collect();
            // Grants only from a lower role to a higher one (and from subjects): no cycles.
            let grant = (0..ROLES + SUBJECTS, 0..ROLES).prop_filter_map("acyclic", |(m, r)| {
                let member = if m < ROLES {
                    format!("role:r{m}")
                } else {
                    format!("svc:s{}", m - ROLES)
                };
                (m >= ROLES || m < r).then(|| (member, format!("role:r{r}")))
            });
            let colls = collections.clone();
            let purps = purposes.clone();
            let rule = (
                0..ROLES + SUBJECTS,
                0..colls.len(),
                0..6usize,
                0..5usize,
                0..=purps.len(),
                any::<bool>(),
                any::<u8>(),
            )
                .prop_map(move |(s, c, f, a, p, allow, allow_bias)| {
                    let sub = if s < ROLES {
                        format!("role:r{s}")
                    } else {
                        format!("svc:s{}", s - ROLES)
                    };
                    let (cname, fields) = &colls[c];
                    let act = ["read", "read_masked", "write", "delete", "read_pseudonym"][a];
                    let obj = if act == "delete" || f >= fields.len() {
                        format!("{cname}.*")
                    } else {
                        format!("{cname}.{}", fields[f])
                    };
                    let pur = if act == "write" || act == "delete" || p == purps.len() {
                        "*".to_owned()
                    } else {
                        purps[p].clone()
                    };
                    // Mostly allows, some denies: both effects and their interplay get exercised.
                    P {
                        sub,
                        obj,
                        act,
                        pur,
                        allow: allow || allow_bias < 160,
                    }
                });
            let principal = (0..ROLES).prop_map(|r| vec![format!("role:r{r}")]);
            (
                Just(collections),
                Just(purposes),
                prop::collection::vec(grant, 0..8),
                prop::collection::vec(rule, 0..24),
                prop::collection::vec(principal, 0..=1),
            )
        })
        .prop_map(|(collections, purposes, mut grants, rules, principals)| {
            grants.sort();
            grants.dedup();
            let mut seen = BTreeSet::new();
            let rules = rules
                .into_iter()
                .filter(|p| {
                    seen.insert((p.sub.clone(), p.obj.clone(), p.act, p.pur.clone(), p.allow))
                })
                .collect();
            // A token principal whose roles the policy text does not grant.
            let principals = principals
                .into_iter()
                .map(|roles| ("svc:s3".to_owned(), roles))
                .collect();
            World {
                collections,
                purposes,
                grants,
                rules,
                principals,
            }
        })
}

#[test]
fn compiled_decisions_match_an_independent_reference_evaluator() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 160,
        ..ProptestConfig::default()
    });
    let compared = std::cell::Cell::new(0usize);
    runner
        .run(&world(), |w| {
            let schema = Arc::new(Schema::parse(&w.schema_toml()).unwrap());
            let engine = rt
                .block_on(PolicyEngine::new(
                    Arc::clone(&schema),
                    MODEL.into(),
                    &w.policy_text(),
                    1,
                    w.principal_values(),
                ))
                .unwrap_or_else(|e| panic!("{e}\n{}", w.policy_text()));
            let table = engine.table();
            for name in w.names() {
                for (cname, fields) in &w.collections {
                    let coll = schema.collection(cname, "c").unwrap();
                    for (i, f) in fields.iter().enumerate() {
                        let obj = format!("{cname}.{f}");
                        for pur in &w.purposes {
                            prop_assert_eq!(
                                table.read_by_name(&name, coll, i, pur),
                                w.read(&name, &obj, pur),
                                "{} read {} for {}",
                                name,
                                obj,
                                pur
                            );
                            compared.set(compared.get() + 1);
                        }
                        prop_assert_eq!(
                            table.write_by_name(&name, coll, i),
                            w.allowed(&name, &obj, "write", "*"),
                            "{} write {}",
                            name,
                            obj
                        );
                        compared.set(compared.get() + 1);
                    }
                    prop_assert_eq!(
                        table.delete_by_name(&name, coll),
                        w.allowed(&name, &format!("{cname}.*"), "delete", "*"),
                        "{} delete {}",
                        name,
                        cname
                    );
                    compared.set(compared.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    assert!(
        compared.get() >= 10_000,
        "only {} decisions compared",
        compared.get()
    );
    eprintln!("{} decisions compared, 0 disagreements", compared.get());
}

fn default_schema() -> Arc<Schema> {
    Arc::new(Schema::parse(include_str!("../policies/schema.toml")).unwrap())
}

async fn engine(policy: &str, principals: Vec<Principal>) -> PolicyEngine {
    PolicyEngine::new(default_schema(), MODEL.into(), policy, 1, principals)
        .await
        .unwrap()
}

fn principal(subject: &str, roles: &[&str]) -> Principal {
    Principal::new(
        Subject::parse(subject, "s").unwrap(),
        roles.iter().map(|r| Role::parse(r, "r").unwrap()).collect(),
    )
}

#[tokio::test]
async fn an_empty_policy_denies_everything() {
    let schema = default_schema();
    let e = engine("# nothing\n", vec![principal("svc:crm", &["role:admin"])]).await;
    let table = e.table();
    let coll = schema.collection("customers", "c").unwrap();
    for name in ["svc:crm", "role:admin", "svc:nobody", ""] {
        for f in 0..coll.fields().len() {
            for p in schema.purposes() {
                assert_eq!(
                    table.read_by_name(name, coll, f, p.as_str()),
                    Decision::Denied
                );
            }
            assert!(!table.write_by_name(name, coll, f));
        }
        assert!(!table.delete_by_name(name, coll));
    }
}

#[tokio::test]
async fn subjects_named_like_roles_gain_nothing_and_role_chains_work() {
    let schema = default_schema();
    let coll = schema.collection("customers", "c").unwrap();
    let email = coll.field_index("email").unwrap();
    // svc:admin holds role:writer; it must not pick up role:admin's rules by its name.
    let e = engine(
        DEFAULT_POLICY,
        vec![
            principal("svc:admin", &["role:writer"]),
            principal("user:role", &["role:support"]),
        ],
    )
    .await;
    let t = e.table();
    assert_eq!(
        t.read_by_name("svc:admin", coll, email, "support"),
        Decision::Denied
    );
    assert_eq!(
        t.read_by_name("role:admin", coll, email, "support"),
        Decision::Plain
    );
    assert_eq!(
        t.read_by_name("user:role", coll, email, "support"),
        Decision::Masked
    );
    assert!(!t.delete_by_name("svc:admin", coll));
    // Un-namespaced names are refused, in the policy and as token subjects.
    for bad in [
        "g, admin, role:admin",
        "p, admin, customers.*, read, *, allow",
        "g, svc:x, admin",
    ] {
        let err = PolicyEngine::new(default_schema(), MODEL.into(), bad, 1, vec![])
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
    assert!(Subject::parse("role:admin", "s").is_err());

    // A chain of 8 grants reaches a rule; a cycle is rejected at validation.
    let mut chain: String = (0..8)
        .map(|i| format!("g, role:c{i}, role:c{}\n", i + 1))
        .collect();
    chain.push_str("p, role:c8, customers.email, read, support, allow\n");
    let e = engine(&chain, vec![principal("svc:deep", &["role:c0"])]).await;
    assert_eq!(
        e.table().read_by_name("svc:deep", coll, email, "support"),
        Decision::Plain
    );
    assert_eq!(
        e.table().read_by_name("svc:deep", coll, email, "billing"),
        Decision::Denied
    );
    let cycle = "g, role:a, role:b\ng, role:b, role:a\n";
    let err = PolicyEngine::new(default_schema(), MODEL.into(), cycle, 1, vec![])
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("cycle"), "{err}");
}

#[tokio::test]
async fn a_model_that_allows_by_default_is_refused() {
    let open = MODEL.replace(
        "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
        "!some(where (p.eft == deny))",
    );
    let err = PolicyEngine::new(default_schema(), open, DEFAULT_POLICY, 1, vec![])
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("model"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Through the gRPC service.

fn email_plain_for_support() -> String {
    DEFAULT_POLICY.replace(
        "p, role:support, customers.email, read_masked, support, allow",
        "p, role:support, customers.email, read, support, allow",
    )
}

async fn apply(
    client: &mut strongroom::client::Client,
    text: &str,
    expected: Option<u64>,
) -> Result<pb::ApplyPolicyResponse, tonic::Status> {
    client
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text: text.into(),
            comment: "test".into(),
            expected_version: expected,
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn current(client: &mut strongroom::client::Client) -> pb::PolicyVersion {
    client
        .policies
        .get_policy(pb::GetPolicyRequest { version: None })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn apply_dry_run_diff_rollback_and_history() {
    let mut vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("pol")).await;
    let mut support = vault.as_role("role:support").await;
    let email = |r: &pb::GetRecordResponse| value_of(r, "email").map(|(v, d)| (v.to_owned(), d));

    let v1 = current(&mut admin).await;
    assert_eq!(v1.info.as_ref().unwrap().version, 1);
    assert!(v1.info.as_ref().unwrap().applied_by.contains("seeded"));
    assert_eq!(v1.text, DEFAULT_POLICY);

    let candidate = email_plain_for_support();
    let dry = admin
        .policies
        .dry_run_policy(pb::DryRunPolicyRequest {
            text: candidate.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(dry.against_version, 1);
    // The role changes, and so does the subject holding it.
    let changes: Vec<_> = dry
        .changes
        .iter()
        .map(|c| {
            (
                c.principal.as_str(),
                c.object.as_str(),
                c.purpose.as_str(),
                c.before.as_str(),
                c.after.as_str(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "role:support",
                "customers.email",
                "support",
                "masked",
                "plain"
            ),
            (
                "svc:support",
                "customers.email",
                "support",
                "masked",
                "plain"
            )
        ]
    );
    // A dry run changes nothing.
    assert_eq!(
        email(&get(&mut support, &id, "support").await.unwrap())
            .unwrap()
            .1,
        Disclosure::Masked
    );

    let applied = apply(&mut admin, &candidate, Some(1)).await.unwrap();
    assert_eq!(applied.version.as_ref().unwrap().version, 2);
    assert_eq!(applied.changes.len(), 2);
    let resp = get(&mut support, &id, "support").await.unwrap();
    assert_eq!(resp.policy_version, 2);
    assert_eq!(
        email(&resp),
        Some(("ada.pol@example.com".into(), Disclosure::Plain))
    );

    // Two admins: the second, still expecting version 1, is refused.
    assert_code(
        apply(&mut admin, DEFAULT_POLICY, Some(1)).await,
        Code::Aborted,
    );

    let diff = admin
        .policies
        .diff_policy(pb::DiffPolicyRequest {
            from_version: 1,
            to_version: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        diff.removed_rules,
        ["p, role:support, customers.email, read_masked, support, allow"]
    );
    assert_eq!(
        diff.added_rules,
        ["p, role:support, customers.email, read, support, allow"]
    );
    assert_eq!(diff.changes.len(), 2);

    // Rollback restores exactly the decisions of version 1, as version 3.
    let rolled = admin
        .policies
        .rollback_policy(pb::RollbackPolicyRequest {
            to_version: 1,
            comment: "too open".into(),
            expected_version: Some(2),
        })
        .await
        .unwrap()
        .into_inner();
    let info = rolled.version.unwrap();
    assert_eq!((info.version, info.from_version), (3, 2));
    assert!(
        info.comment.contains("rollback to version 1") && info.comment.contains("too open"),
        "{}",
        info.comment
    );
    let same = admin
        .policies
        .diff_policy(pb::DiffPolicyRequest {
            from_version: 1,
            to_version: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        same.changes.is_empty() && same.added_rules.is_empty() && same.removed_rules.is_empty()
    );
    let dry = admin
        .policies
        .dry_run_policy(pb::DryRunPolicyRequest {
            text: DEFAULT_POLICY.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(dry.changes.is_empty());
    assert_eq!(
        email(&get(&mut support, &id, "support").await.unwrap())
            .unwrap()
            .1,
        Disclosure::Masked
    );

    let history = admin
        .policies
        .list_policy_versions(pb::ListPolicyVersionsRequest {})
        .await
        .unwrap()
        .into_inner();
    let versions: Vec<_> = history
        .versions
        .iter()
        .map(|v| (v.version, v.from_version, v.applied_by.as_str()))
        .collect();
    assert_eq!(versions[1..], [(2, 1, "user:admin"), (3, 2, "user:admin")]);

    // The store is the truth after the first start: a restart keeps version 3.
    vault.restart().await;
    let mut admin = vault.admin().await;
    let now = current(&mut admin).await;
    assert_eq!(now.info.unwrap().version, 3);
    let old = admin
        .policies
        .get_policy(pb::GetPolicyRequest { version: Some(2) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(old.text, candidate);
    assert_code(
        admin
            .policies
            .get_policy(pb::GetPolicyRequest { version: Some(99) })
            .await,
        Code::NotFound,
    );
}

#[tokio::test]
async fn rejected_policies_name_the_line_and_change_nothing() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("rej")).await;
    let mut support = vault.as_role("role:support").await;
    let before = view(&get(&mut support, &id, "support").await.unwrap());
    let cases = [
        (
            "p, role:support, customers.email, read, support\n",
            "line 1",
        ),
        (
            "# ok\np, role:support, customers.shoe_size, read, support, allow\n",
            "line 2",
        ),
        (
            "p, role:support, vendors.email, read, support, allow\n",
            "unknown collection",
        ),
        (
            "p, role:support, customers.email, peek, support, allow\n",
            "unknown action",
        ),
        (
            "p, role:support, customers.email, read, gossip, allow\n",
            "unknown purpose",
        ),
        ("g, role:a, role:b\ng, role:b, role:a\n", "cycle"),
        (
            "p, role:support, customers.email, read, support, perhaps\n",
            "unknown effect",
        ),
        (
            "p, support, customers.email, read, support, allow\n",
            "subject",
        ),
        ("garbage\n", "line 1"),
    ];
    for (text, want) in cases {
        let status = assert_code(apply(&mut admin, text, None).await, Code::InvalidArgument);
        assert!(
            status.message().contains(want),
            "{want:?} not in {:?}",
            status.message()
        );
        assert!(
            status.message().starts_with("policy: "),
            "{}",
            status.message()
        );
        let dry = admin
            .policies
            .dry_run_policy(pb::DryRunPolicyRequest { text: text.into() })
            .await;
        assert_code(dry, Code::InvalidArgument);
    }
    assert_eq!(current(&mut admin).await.info.unwrap().version, 1);
    assert_eq!(
        view(&get(&mut support, &id, "support").await.unwrap()),
        before
    );
}

#[tokio::test]
async fn only_policy_admins_administer_policies() {
    let vault = Vault::start().await;
    let mut support = vault.as_role("role:support").await;
    assert_code(
        support
            .policies
            .get_policy(pb::GetPolicyRequest { version: None })
            .await,
        Code::PermissionDenied,
    );
    assert_code(
        apply(&mut support, DEFAULT_POLICY, None).await,
        Code::PermissionDenied,
    );
    let mut secadmin = vault.as_role("role:security_admin").await;
    assert_eq!(current(&mut secadmin).await.info.unwrap().version, 1);
}

#[tokio::test]
async fn explain_says_which_rules_decide_and_why() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    vault.token("svc:helpdesk", &["role:support"]).await;
    let ask = |principal: &str, action: &str, object: &str, purpose: &str| pb::ExplainRequest {
        principal: principal.into(),
        action: action.into(),
        object: object.into(),
        purpose: purpose.into(),
    };
    let e = admin
        .policies
        .explain(ask("svc:helpdesk", "read", "customers.email", "support"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.outcome, "masked");
    assert_eq!(e.matched.len(), 1);
    assert_eq!(
        e.matched[0].rule,
        "p, role:support, customers.email, read_masked, support, allow"
    );
    assert_eq!(e.matched[0].via, ["svc:helpdesk", "role:support"]);
    let line = DEFAULT_POLICY
        .lines()
        .position(|l| l.contains("customers.email, read_masked, support"))
        .unwrap()
        + 1;
    assert_eq!(e.matched[0].line as usize, line);

    let e = admin
        .policies
        .explain(ask("role:support", "read", "customers.ssn", "support"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.outcome, "denied");
    assert_eq!(e.summary, "no rule matched: default deny");
    let e = admin
        .policies
        .explain(ask("role:privacy_officer", "delete", "customers.*", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.outcome, "allowed");
    let e = admin
        .policies
        .explain(ask("role:admin", "write", "customers.ssn", ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.outcome, "allowed");

    // A deny rule overrides an allow, and explain says so.
    let text = format!("{DEFAULT_POLICY}p, role:admin, customers.ssn, read, *, deny\n");
    apply(&mut admin, &text, None).await.unwrap();
    let e = admin
        .policies
        .explain(ask("role:admin", "read", "customers.ssn", "legal"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.outcome, "denied");
    assert!(e.summary.contains("deny overrides"), "{}", e.summary);
    assert_eq!(e.matched.iter().filter(|m| !m.allow).count(), 1);

    for bad in [
        ask("role:support", "peek", "customers.email", "support"),
        ask("role:support", "read", "customers.nope", "support"),
        ask("role:support", "read", "customers.email", "gossip"),
    ] {
        assert_code(admin.policies.explain(bad).await, Code::InvalidArgument);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_during_applies_see_the_old_or_the_new_policy_never_a_mix() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let id = create(&mut admin, customer("conc")).await;
    let token = vault.token("svc:helpdesk", &["role:support"]).await;
    let open = email_plain_for_support();
    // Version v: odd versions are the default (email masked), even ones the open policy.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut client = vault.client(&token).await;
        let (id, stop) = (id.clone(), Arc::clone(&stop));
        readers.push(tokio::spawn(async move {
            let mut seen: HashMap<u64, usize> = HashMap::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let resp = get(&mut client, &id, "support").await.unwrap();
                let (value, d) = value_of(&resp, "email").unwrap();
                let want = if resp.policy_version % 2 == 1 {
                    Disclosure::Masked
                } else {
                    Disclosure::Plain
                };
                assert_eq!(
                    d, want,
                    "version {} gave {d:?} ({value})",
                    resp.policy_version
                );
                assert_eq!(value_of(&resp, "ssn").unwrap().1, Disclosure::Withheld);
                *seen.entry(resp.policy_version).or_default() += 1;
            }
            seen
        }));
    }
    for i in 0..8 {
        let text = if i % 2 == 0 {
            open.as_str()
        } else {
            DEFAULT_POLICY
        };
        apply(&mut admin, text, Some(i + 1)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut versions = BTreeSet::new();
    for r in readers {
        versions.extend(r.await.unwrap().into_keys());
    }
    assert!(
        versions.len() >= 3,
        "reads saw too few versions to mean anything: {versions:?}"
    );
}
