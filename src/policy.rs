//! Role- and purpose-based access policy. casbin (`policies/model.conf` + a policy text) is the
//! source of truth; each policy version is compiled into a decision table that the hot path
//! looks up, so a decision costs the same whatever the number of rules. The table is rebuilt
//! aside and swapped in whole when the policy or the set of known subjects changes.
//!
//! The only module that names casbin. Authorization is a capability: the vault decrypts only
//! under a `ReadPermit`, and only this module can make one.

mod compile;
mod explain;
mod privilege;
mod rules;

use std::{
    future::Future,
    sync::{Arc, PoisonError, RwLock},
};

use crate::domain::{Collection, Principal, Purpose, Schema};

pub use compile::{DecisionChange, DecisionTable, Escalation};
pub use explain::MatchedRule;
pub use privilege::Privilege;
pub use rules::{Action, MAX_ROLE_DEPTH, PolicyError, PolicyText};

/// What a caller may see of one field. Ordered by how much it discloses (not by variant
/// order): Denied < Pseudonym < Masked < Plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Not returned, and never decrypted.
    Denied,
    /// Returned masked by its type.
    Masked,
    /// Returned in plaintext.
    Plain,
    /// Returned as a pseudonym: a keyed token, stable within one purpose and unlinkable
    /// across purposes (a date: its year only).
    Pseudonym,
}

impl Decision {
    /// How much the decision discloses: 0 for Denied up to 3 for Plain.
    pub fn rank(self) -> u8 {
        match self {
            Self::Denied => 0,
            Self::Masked => 2,
            Self::Plain => 3,
            Self::Pseudonym => 1,
        }
    }

    /// The decision as named in explanations, diffs and audit outcomes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Denied => "denied",
            Self::Masked => "masked",
            Self::Plain => "plain",
            Self::Pseudonym => "pseudonym",
        }
    }
}

impl PartialOrd for Decision {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decision {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// The per-field decisions of one read, for one record's collection. Only the policy module can
/// make one; the vault needs one to decrypt anything.
#[derive(Debug, Clone)]
pub struct ReadPermit {
    decisions: Vec<(usize, Decision)>,
    policy_version: u64,
}

impl ReadPermit {
    /// `(field index in the collection, decision)` for each requested field, in request order.
    pub fn decisions(&self) -> &[(usize, Decision)] {
        &self.decisions
    }

    /// The policy version that decided.
    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }
}

/// Proof that a write or delete was allowed.
#[derive(Debug)]
pub struct WritePermit {
    policy_version: u64,
}

impl WritePermit {
    /// The policy version that decided.
    pub fn policy_version(&self) -> u64 {
        self.policy_version
    }
}

/// A refused write or delete: which field (or the whole record) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What was refused, e.g. `customers.ssn` or `customers.*`.
    pub object: String,
    /// The action refused.
    pub action: Action,
}

struct Current {
    text: Arc<PolicyText>,
    table: Arc<DecisionTable>,
}

/// The answer to "may S do A on F for P, and why?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// `plain`, `masked`, `pseudonym` or `denied` for reads; `allowed` or `denied` for writes
    /// and deletes.
    pub outcome: &'static str,
    /// Every rule that matched, allow and deny alike, in policy order.
    pub matched: Vec<MatchedRule>,
    /// One sentence saying why.
    pub summary: String,
    /// The policy version that answered.
    pub policy_version: u64,
}

/// A candidate policy, validated and compiled aside, beside the table it would replace.
#[derive(Debug)]
pub struct Candidate<'a> {
    /// The validated text.
    pub text: &'a PolicyText,
    /// The table serving now.
    pub before: &'a DecisionTable,
    /// The table the candidate compiles to.
    pub after: &'a DecisionTable,
    /// Every decision that would change.
    pub changes: &'a [DecisionChange],
}

/// What a policy change's `persist` step decided: install the new table, or keep the running
/// one (the change was stored for later, e.g. as pending approval).
#[derive(Debug)]
pub enum Commit<T> {
    /// Swap the new table in.
    Install(T),
    /// Keep the running table.
    Keep(T),
}

/// Why a policy change failed: the policy was invalid, or it could not be persisted.
#[derive(Debug)]
pub enum ReplaceError<E> {
    /// Persisting the new version failed; the running policy stays.
    Persist(E),
    /// The policy is invalid; the running policy stays.
    Policy(PolicyError),
}

/// The live policy: its text, its compiled table, and the principals it was compiled for.
pub struct PolicyEngine {
    schema: Arc<Schema>,
    model: String,
    current: RwLock<Arc<Current>>,
    /// The principals the current table is compiled for. Its lock serializes changes (policy
    /// replacements and principal sets); reads never take it.
    principals: tokio::sync::Mutex<Vec<Principal>>,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("version", &self.table().version())
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Validates and compiles `policy` (version `version`) under `model` for `principals`.
    ///
    /// # Errors
    /// `PolicyError` naming the line and problem if the model or the policy is invalid.
    pub async fn new(
        schema: Arc<Schema>,
        model: String,
        policy: &str,
        version: u64,
        principals: Vec<Principal>,
    ) -> Result<Self, PolicyError> {
        compile::check_model(&model)?;
        let text = PolicyText::parse(policy, &schema, version)?;
        let table = compile::compile(&model, &text, &schema, &principals).await?;
        Ok(Self {
            schema,
            model,
            current: RwLock::new(Arc::new(Current {
                text: Arc::new(text),
                table: Arc::new(table),
            })),
            principals: tokio::sync::Mutex::new(principals),
        })
    }

    fn current(&self) -> Arc<Current> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current)
    }

    /// The current decision table. Readers keep the `Arc` for one request: a change in between
    /// is seen whole by the next request, never half.
    pub fn table(&self) -> Arc<DecisionTable> {
        Arc::clone(&self.current().table)
    }

    /// The current policy text.
    pub fn text(&self) -> Arc<PolicyText> {
        Arc::clone(&self.current().text)
    }

    /// Validates and compiles a candidate policy aside, against the current principals,
    /// without installing it.
    ///
    /// # Errors
    /// `PolicyError` naming the line and problem.
    pub async fn compile_candidate(
        &self,
        policy: &str,
        version: u64,
    ) -> Result<(PolicyText, DecisionTable), PolicyError> {
        let principals = self.principals.lock().await.clone();
        let text = PolicyText::parse(policy, &self.schema, version)?;
        let table = compile::compile(&self.model, &text, &self.schema, &principals).await?;
        Ok((text, table))
    }

    /// Replaces the live policy: validates and compiles `policy` aside, calls `persist` with
    /// the candidate, and only if that succeeds with `Commit::Install` swaps the new table in.
    /// Reads are never blocked: they see the old table or the new one.
    ///
    /// # Errors
    /// `ReplaceError::Policy` if the policy is invalid, `ReplaceError::Persist` if `persist`
    /// fails; in both cases the running policy stays.
    pub async fn replace<T, E, F>(
        &self,
        policy: &str,
        version: u64,
        persist: impl FnOnce(Candidate<'_>) -> F,
    ) -> Result<T, ReplaceError<E>>
    where
        F: Future<Output = Result<Commit<T>, E>>,
    {
        let principals = self.principals.lock().await;
        let text =
            PolicyText::parse(policy, &self.schema, version).map_err(ReplaceError::Policy)?;
        let table = compile::compile(&self.model, &text, &self.schema, &principals)
            .await
            .map_err(ReplaceError::Policy)?;
        let before = self.table();
        let changes = before.changes_to(&table);
        let candidate = Candidate {
            text: &text,
            before: &before,
            after: &table,
            changes: &changes,
        };
        let out = match persist(candidate).await.map_err(ReplaceError::Persist)? {
            Commit::Install(out) => out,
            Commit::Keep(out) => return Ok(out),
        };
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(Current {
            text: Arc::new(text),
            table: Arc::new(table),
        });
        Ok(out)
    }

    /// Replaces the set of principals the table is compiled for (the live token holders,
    /// from the token registry: the whole set, not an addition). Compiles the table aside,
    /// calls `commit`, and only if that succeeds swaps the new table in, so a failed change
    /// leaves the running table and principals as they were. Changes are serialized with
    /// policy replacements; reads are never blocked.
    ///
    /// # Errors
    /// `ReplaceError::Policy` if compiling fails, `ReplaceError::Persist` if `commit` fails; in
    /// both cases nothing changes here.
    pub async fn replace_principals<T, E, F>(
        &self,
        principals: Vec<Principal>,
        commit: impl FnOnce() -> F,
    ) -> Result<T, ReplaceError<E>>
    where
        F: Future<Output = Result<T, E>>,
    {
        let mut compiled_for = self.principals.lock().await;
        let text = self.text();
        // The current table is `text` compiled and checked for `compiled_for`.
        let (table, _) =
            compile::recompile(&self.model, &text, &self.schema, &principals, &compiled_for)
                .await
                .map_err(ReplaceError::Policy)?;
        let out = commit().await.map_err(ReplaceError::Persist)?;
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Arc::new(Current {
            text,
            table: Arc::new(table),
        });
        *compiled_for = principals;
        Ok(out)
    }

    /// Explains the decision for `name` (a subject or a role) doing `action` on `object`
    /// (`collection.field`, or `collection.*` for delete) for `purpose` (`*` for writes and
    /// deletes).
    ///
    /// # Errors
    /// `PolicyError::Line` (line 0) naming the malformed part of the question.
    pub async fn explain(
        &self,
        name: &str,
        action: Action,
        object: &str,
        purpose: &str,
    ) -> Result<Explanation, PolicyError> {
        let bad = |problem: String| PolicyError::Line { line: 0, problem };
        let (collection, field) = object
            .split_once('.')
            .ok_or_else(|| bad(format!("object {object:?} must be <collection>.<field>")))?;
        let coll = self
            .schema
            .collection(collection, "object")
            .map_err(|e| bad(e.problem))?;
        let field_index = match (action, field) {
            (Action::Delete, "*") => None,
            (Action::Delete, _) => return Err(bad("delete is asked of <collection>.*".into())),
            (_, f) => Some(coll.field(f, "object").map_err(|e| bad(e.problem))?.0),
        };
        let purpose = match action {
            Action::Delete | Action::Write => "*",
            Action::Find | Action::Read | Action::ReadMasked | Action::ReadPseudonym => {
                self.schema
                    .purpose(purpose, "purpose")
                    .map_err(|e| bad(e.problem))?;
                purpose
            }
        };
        let principals = self.principals.lock().await.clone();
        let current = self.current();
        let actions: &[Action] = match action {
            Action::Read | Action::ReadMasked | Action::ReadPseudonym => {
                &[Action::Read, Action::ReadMasked, Action::ReadPseudonym]
            }
            Action::Delete => &[Action::Delete],
            Action::Find => &[Action::Find],
            Action::Write => &[Action::Write],
        };
        let matched =
            explain::matching_rules(&current.text, &principals, name, actions, object, purpose);
        let outcome = match (action, field_index) {
            (Action::Read | Action::ReadMasked | Action::ReadPseudonym, Some(f)) => {
                current.table.read_by_name(name, coll, f, purpose).name()
            }
            (Action::Find, Some(f)) => {
                if current.table.find_by_name(name, coll, f, purpose) {
                    "allowed"
                } else {
                    "denied"
                }
            }
            (Action::Write, Some(f)) => {
                if current.table.write_by_name(name, coll, f) {
                    "allowed"
                } else {
                    "denied"
                }
            }
            (Action::Delete, _) | (_, None) => {
                if current.table.delete_by_name(name, coll) {
                    "allowed"
                } else {
                    "denied"
                }
            }
        };
        let summary = if matched.is_empty() {
            "no rule matched: default deny".to_owned()
        } else if matched.iter().any(|m| !m.allow && m.action == action) {
            format!("{outcome}: a deny rule matched, and deny overrides allow")
        } else {
            let lines: Vec<String> = matched.iter().map(|m| m.line.to_string()).collect();
            format!(
                "{outcome}: decided by the rule(s) on line(s) {}",
                lines.join(", ")
            )
        };
        Ok(Explanation {
            outcome,
            matched,
            summary,
            policy_version: current.table.version(),
        })
    }
}

impl DecisionTable {
    /// Decides a read of `fields` (indices into `collection`'s fields) for `purpose`.
    pub fn decide_read(
        &self,
        principal: &Principal,
        collection: &Collection,
        fields: &[usize],
        purpose: &Purpose,
    ) -> ReadPermit {
        let decisions = fields
            .iter()
            .map(|&f| (f, self.read(principal, collection, f, purpose)))
            .collect();
        ReadPermit {
            decisions,
            policy_version: self.version(),
        }
    }

    /// Checks that `principal` may write each of `fields` of `collection`.
    ///
    /// # Errors
    /// The first field refused.
    pub fn check_write(
        &self,
        principal: &Principal,
        collection: &Collection,
        fields: &[usize],
    ) -> Result<WritePermit, Refusal> {
        for &f in fields {
            if !self.may_write(principal, collection, f) {
                let name = collection.fields()[f].0.as_str();
                return Err(Refusal {
                    object: format!("{}.{name}", collection.name()),
                    action: Action::Write,
                });
            }
        }
        Ok(WritePermit {
            policy_version: self.version(),
        })
    }

    /// Checks that `principal` may find records of `collection` by `field` for `purpose`.
    ///
    /// # Errors
    /// A refusal naming the field.
    pub fn check_find(
        &self,
        principal: &Principal,
        collection: &Collection,
        field: usize,
        purpose: &Purpose,
    ) -> Result<WritePermit, Refusal> {
        if self.may_find(principal, collection, field, purpose) {
            Ok(WritePermit {
                policy_version: self.version(),
            })
        } else {
            let name = collection.fields()[field].0.as_str();
            Err(Refusal {
                object: format!("{}.{name}", collection.name()),
                action: Action::Find,
            })
        }
    }

    /// Checks that `principal` may delete (shred) records of `collection`.
    ///
    /// # Errors
    /// A refusal naming the collection.
    pub fn check_delete(
        &self,
        principal: &Principal,
        collection: &Collection,
    ) -> Result<WritePermit, Refusal> {
        if self.may_delete(principal, collection) {
            Ok(WritePermit {
                policy_version: self.version(),
            })
        } else {
            Err(Refusal {
                object: format!("{}.*", collection.name()),
                action: Action::Delete,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Role, Subject};

    fn principal(subject: &str, roles: &[&str]) -> Principal {
        Principal::new(
            Subject::parse(subject, "s").unwrap_or_else(|e| panic!("{e}")),
            roles
                .iter()
                .map(|r| Role::parse(r, "r").unwrap_or_else(|e| panic!("{e}")))
                .collect(),
        )
    }

    async fn engine(principals: Vec<Principal>) -> (Arc<Schema>, PolicyEngine) {
        let schema = Arc::new(
            Schema::parse(include_str!("../policies/schema.toml"))
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let engine = PolicyEngine::new(
            Arc::clone(&schema),
            include_str!("../policies/model.conf").into(),
            include_str!("../policies/policy.csv"),
            1,
            principals,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        (schema, engine)
    }

    /// A table compiled for a subject's old roles grants a principal with other roles nothing,
    /// even where the other roles would grant something.
    #[tokio::test]
    async fn a_row_answers_only_the_roles_it_was_compiled_for() {
        let (schema, engine) = engine(vec![principal("svc:x", &["role:admin"])]).await;
        let coll = schema
            .collection("customers", "c")
            .unwrap_or_else(|e| panic!("{e}"));
        let fields: Vec<usize> = (0..coll.fields().len()).collect();
        let table = engine.table();
        let admin = principal("svc:x", &["role:admin"]);
        for p in schema.purposes() {
            let permit = table.decide_read(&admin, coll, &fields, p);
            assert!(
                permit
                    .decisions()
                    .iter()
                    .all(|(_, d)| *d == Decision::Plain)
            );
        }
        assert!(table.check_delete(&admin, coll).is_ok());
        assert!(table.check_write(&admin, coll, &fields).is_ok());

        for stale in [
            principal("svc:x", &["role:marketing"]),
            principal("svc:x", &["role:admin", "role:marketing"]),
            principal("svc:y", &["role:admin"]),
        ] {
            for p in schema.purposes() {
                let permit = table.decide_read(&stale, coll, &fields, p);
                assert!(
                    permit
                        .decisions()
                        .iter()
                        .all(|(_, d)| *d == Decision::Denied),
                    "{stale:?} for {p:?}"
                );
            }
            assert!(table.check_delete(&stale, coll).is_err());
            assert!(table.check_write(&stale, coll, &fields).is_err());
        }

        // Replacing the set (not adding to it) drops the old roles: the same subject with
        // fewer roles gets exactly those.
        let marketing = principal("svc:x", &["role:marketing"]);
        engine
            .replace_principals(vec![marketing.clone()], || async { Ok::<(), ()>(()) })
            .await
            .unwrap_or_else(|_| panic!("recompile"));
        let table = engine.table();
        let (_, purpose) = schema
            .purpose("marketing", "p")
            .unwrap_or_else(|e| panic!("{e}"));
        let ssn = coll.field_index("ssn").unwrap_or_else(|| panic!("ssn"));
        let email = coll.field_index("email").unwrap_or_else(|| panic!("email"));
        let permit = table.decide_read(&marketing, coll, &[email, ssn], &purpose);
        assert_eq!(
            permit.decisions(),
            [(email, Decision::Plain), (ssn, Decision::Denied)]
        );
        assert!(table.check_delete(&marketing, coll).is_err());
        assert!(table.check_delete(&admin, coll).is_err());
        assert!(!table.delete_by_name("svc:x", coll));

        // A failed commit leaves the running table.
        let failed = engine
            .replace_principals(vec![admin.clone()], || async { Err::<(), ()>(()) })
            .await;
        assert!(matches!(failed, Err(ReplaceError::Persist(()))));
        assert!(engine.table().check_delete(&admin, coll).is_err());
    }

    /// A subject given with two role sets (two tokens racing in, or a store written by an
    /// older version) matches no principal: never the union of both.
    #[tokio::test]
    async fn a_subject_with_two_role_sets_is_denied() {
        let (schema, engine) = engine(vec![
            principal("svc:x", &["role:marketing"]),
            principal("svc:x", &["role:admin"]),
        ])
        .await;
        let coll = schema
            .collection("customers", "c")
            .unwrap_or_else(|e| panic!("{e}"));
        let table = engine.table();
        for roles in [&["role:marketing"][..], &["role:admin"]] {
            let p = principal("svc:x", roles);
            assert!(table.check_delete(&p, coll).is_err());
            let (_, purpose) = schema
                .purpose("marketing", "p")
                .unwrap_or_else(|e| panic!("{e}"));
            let permit = table.decide_read(&p, coll, &[0], &purpose);
            assert_eq!(permit.decisions(), [(0, Decision::Denied)]);
        }
    }
}
