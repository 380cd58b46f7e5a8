//! Policy administration for security admins: the live policy is versioned in the store (seeded
//! from `policies/policy.csv` on the first start; the store is the truth after that). Apply,
//! roll back, diff, dry-run, explain, history. Every change records who, when, from which
//! version, and why.
//!
//! Depends on `policy` and `storage`; knows nothing of gRPC.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

mod proposal;

pub use proposal::{Proposal, Status};

use crate::{
    audit::{Audit, Call, Event},
    domain::{InvalidInput, Principal, Schema},
    policy::{
        Action, Candidate, Commit, DecisionChange, DecisionTable, Explanation, PolicyEngine,
        PolicyError, ReplaceError,
    },
    storage::{Batch, Keyspace, Store},
    vault::{
        Error,
        access::{ADMIN_ROLE, Privilege, require},
        changes::{self, Change},
        now_ms,
        tokens::TokenRegistry,
    },
};

const PREFIX: &[u8] = b"policy/";

/// The privilege lines equivalent to the roles that held each privilege before privileges
/// moved into the policy: appended to a stored policy that has none, so an upgraded vault
/// keeps exactly the rights it had.
const LEGACY_PRIVILEGES: &str = "\
# Privileges outside the record policy, added by strongroom when it moved them into the policy:
# the same roles hold them as before (p, <role>, <policies|tokens|keys|audit>, <manage|read>, *, allow).
p, role:admin, policies, manage, *, allow
p, role:admin, tokens, manage, *, allow
p, role:admin, keys, manage, *, allow
p, role:admin, keys, read, *, allow
p, role:admin, audit, read, *, allow
p, role:security_admin, policies, manage, *, allow
p, role:security_admin, keys, read, *, allow
p, role:auditor, audit, read, *, allow
p, role:auditor, keys, read, *, allow
";

/// One stored policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// Version number, from 1.
    pub version: u64,
    /// The policy text.
    pub text: String,
    /// Who applied it (a subject, or `strongroom` for the seed); for an approved change, who
    /// proposed it.
    pub applied_by: String,
    /// Who approved it, for a change that needed a second policy admin; empty otherwise.
    #[serde(default)]
    pub approved_by: String,
    /// When (ms since the epoch).
    pub applied_at_ms: i64,
    /// Why, in the applier's words.
    pub comment: String,
    /// The version it replaced (0 for the seed).
    pub from_version: u64,
    /// How many rules it holds.
    pub rule_count: u64,
    /// How many decisions it changed.
    pub decisions_changed: u64,
}

fn key(version: u64) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(&version.to_be_bytes());
    k
}

/// Adds to `batch` the precondition that policy `version` is still the newest: a change
/// decided on it (who holds a privilege) is refused with a conflict if a vault node applied a
/// later version meanwhile.
pub(crate) fn expect_current(batch: &mut Batch, version: u64) {
    batch.expect(Keyspace::Meta, key(version + 1), None);
}

fn policy_input(e: PolicyError) -> Error {
    Error::InvalidArgument(InvalidInput::new("policy", e.to_string()))
}

/// The policy administration use cases.
pub struct Governance {
    store: Arc<dyn Store>,
    audit: Arc<Audit>,
    engine: Arc<PolicyEngine>,
    /// Serializes changes, so `expected_version` checks and version numbers never race.
    changes: tokio::sync::Mutex<()>,
    /// The token registry, so the lockout check counts only tokens that have not expired.
    tokens: Arc<TokenRegistry>,
}

impl std::fmt::Debug for Governance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Governance")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

fn load_versions(store: &dyn Store) -> Result<Vec<PolicyVersion>, Error> {
    store
        .scan_prefix(Keyspace::Meta, PREFIX)?
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v).map_err(|_| Error::DataLoss))
        .collect()
}

impl Governance {
    /// Opens the policy: the newest stored version, or on the first start `seed` (the text of
    /// `policies/policy.csv`) stored as version 1. Returns the engine that serves decisions.
    ///
    /// # Errors
    /// A message for the operator if the stored or seed policy does not compile, or the store
    /// fails.
    pub async fn open(
        store: Arc<dyn Store>,
        audit: Arc<Audit>,
        schema: Arc<Schema>,
        model: String,
        seed: &str,
        tokens: Arc<TokenRegistry>,
    ) -> Result<Self, String> {
        let versions = load_versions(store.as_ref()).map_err(|e| e.to_string())?;
        let (text, version, seeded) = match versions.last() {
            Some(v) => (v.text.clone(), v.version, false),
            None => (seed.to_owned(), 1, true),
        };
        let engine = PolicyEngine::new(schema, model, &text, version, tokens.principals())
            .await
            .map_err(|e| match seeded {
                true => format!("policies/policy.csv: {e}"),
                false => format!("stored policy version {version}: {e}"),
            })?;
        if seeded {
            let record = PolicyVersion {
                version: 1,
                rule_count: engine.text().rule_count() as u64,
                text,
                applied_by: "strongroom (seeded from policies/policy.csv)".into(),
                approved_by: String::new(),
                applied_at_ms: now_ms(),
                comment: "initial policy".into(),
                from_version: 0,
                decisions_changed: 0,
            };
            let event = Event {
                method: "Policies/Seed".into(),
                policy_version: 1,
                result: "OK".into(),
                detail: "policy version 1 seeded from policies/policy.csv".into(),
                ..Event::default()
            };
            audit
                .commit(version_batch(&record), vec![event])
                .await
                .map_err(|e| e.to_string())?;
        }
        let governance = Self {
            store,
            audit,
            engine: Arc::new(engine),
            changes: tokio::sync::Mutex::new(()),
            tokens,
        };
        if !governance.engine.text().has_privilege_rules() {
            governance
                .migrate_privileges()
                .await
                .map_err(|e| format!("adding privilege lines to the stored policy: {e}"))?;
        }
        Ok(governance)
    }

    /// Appends the privilege lines of `LEGACY_PRIVILEGES` to a current policy that has none,
    /// as a new version applied by strongroom, audited. Rights do not change: they are the
    /// roles that held each privilege when it was hard-coded.
    async fn migrate_privileges(&self) -> Result<(), Error> {
        let current = self.engine.text().version();
        let old = self.version(current)?;
        let text = format!("{}\n\n{LEGACY_PRIVILEGES}", old.text.trim_end());
        let next = current + 1;
        let audit = &self.audit;
        let result = self
            .engine
            .replace(&text, next, |c: Candidate<'_>| {
                let record = PolicyVersion {
                    version: next,
                    text: text.clone(),
                    applied_by: "strongroom (migration)".into(),
                    approved_by: String::new(),
                    applied_at_ms: now_ms(),
                    comment: "privileges moved into the policy: appended the lines that give \
                              the same roles the same privileges as before"
                        .into(),
                    from_version: current,
                    rule_count: c.text.rule_count() as u64,
                    decisions_changed: c.changes.len() as u64,
                };
                let event = Event {
                    method: "Policies/Migrate".into(),
                    policy_version: next,
                    result: "OK".into(),
                    detail: format!(
                        "policy version {current} -> {next}: privilege lines added (the roles that held each privilege before)"
                    ),
                    ..Event::default()
                };
                async move {
                    audit
                        .commit(version_batch(&record), vec![event])
                        .await
                        .map(Commit::Install)
                }
            })
            .await;
        match result {
            Ok(_) => {
                tracing::warn!(
                    from = current,
                    to = next,
                    "privilege lines added to the stored policy"
                );
                Ok(())
            }
            Err(ReplaceError::Policy(e)) => Err(policy_input(e)),
            Err(ReplaceError::Persist(e)) => Err(e.into()),
        }
    }

    /// Installs the newest stored policy version if it is not the running one (another vault
    /// node applied it). Serialized with this node's own changes.
    ///
    /// # Errors
    /// `Unavailable` if the store fails, `DataLoss` if the stored version is malformed or does
    /// not compile (the running policy stays).
    pub async fn reload(&self) -> Result<(), Error> {
        let _change = self.changes.lock().await;
        let versions = load_versions(self.store.as_ref())?;
        let Some(newest) = versions.last() else {
            return Ok(());
        };
        if newest.version == self.engine.text().version() {
            return Ok(());
        }
        self.engine
            .replace(&newest.text, newest.version, |_| async {
                Ok::<_, std::convert::Infallible>(Commit::Install(()))
            })
            .await
            .map_err(|e| match e {
                ReplaceError::Policy(e) => {
                    tracing::error!(version = newest.version, error = %e, "a stored policy version does not compile");
                    Error::DataLoss
                }
                ReplaceError::Persist(never) => match never {},
            })
    }

    /// The audit log policy changes are recorded in.
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The engine serving decisions.
    pub fn engine(&self) -> Arc<PolicyEngine> {
        Arc::clone(&self.engine)
    }

    /// A stored version, or the current one.
    ///
    /// # Errors
    /// `PermissionDenied`, `NoSuchVersion`, `Unavailable`.
    pub fn show(&self, by: &Principal, version: Option<u64>) -> Result<PolicyVersion, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let v = version.unwrap_or_else(|| self.engine.text().version());
        self.version(v)
    }

    fn version(&self, v: u64) -> Result<PolicyVersion, Error> {
        let bytes = self
            .store
            .get(Keyspace::Meta, &key(v))?
            .ok_or(Error::NoSuchVersion(v))?;
        serde_json::from_slice(&bytes).map_err(|_| Error::DataLoss)
    }

    /// Every version, oldest first.
    ///
    /// # Errors
    /// `PermissionDenied`, `Unavailable`.
    pub fn history(&self, by: &Principal) -> Result<Vec<PolicyVersion>, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        load_versions(self.store.as_ref())
    }

    /// Every decision that `text` would change against the current version, without applying.
    ///
    /// # Errors
    /// `PermissionDenied`, `InvalidArgument` naming the bad line.
    pub async fn dry_run(
        &self,
        by: &Principal,
        text: &str,
    ) -> Result<(u64, Vec<DecisionChange>), Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let current = self.engine.table();
        let (_, candidate) = self
            .engine
            .compile_candidate(text, current.version() + 1)
            .await
            .map_err(policy_input)?;
        Ok((current.version(), current.changes_to(&candidate)))
    }

    /// Applies a new policy text as the next version, or, if it escalates (see
    /// `proposal`), stores it as a pending change that a second policy admin must approve.
    ///
    /// # Errors
    /// `PermissionDenied`; `InvalidArgument` naming the bad line, or the lockout it would cause
    /// (the running policy stays); `Aborted` if `expected_version` is not the current version;
    /// `Unavailable`.
    pub async fn apply(
        &self,
        by: &Principal,
        call: &Call,
        text: &str,
        comment: &str,
        expected_version: Option<u64>,
    ) -> Result<Outcome, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let _guard = self.changes.lock().await;
        let current = self.engine.text().version();
        if let Some(expected) = expected_version
            && expected != current
        {
            return Err(Error::Aborted(format!(
                "the policy is at version {current}, not the expected {expected}: another change was applied first"
            )));
        }
        self.change(by, call, text, comment, current, None).await
    }

    /// Applies `text` as version `current + 1` (the caller holds `changes`): as a pending
    /// proposal if it escalates and is not an approval, else at once.
    async fn change(
        &self,
        by: &Principal,
        call: &Call,
        text: &str,
        comment: &str,
        current: u64,
        approving: Option<&Proposal>,
    ) -> Result<Outcome, Error> {
        let next = current + 1;
        let next_id = match approving {
            Some(_) => 0,
            None => proposal::next_id(self.store.as_ref())?,
        };
        let audit = &self.audit;
        // The token holders and the stamp they are at: the version is refused if a node
        // changed the tokens meanwhile (a revocation decided on the running policy could
        // otherwise leave, together with this version, nobody holding `tokens manage`).
        let (live, tokens_seen) = self.tokens.live_principals_at(&self.engine).await?;
        let result = self
            .engine
            .replace(text, next, |c: Candidate<'_>| {
                let lockout = lockout(c.after, &live);
                let escalations: Vec<String> = c
                    .before
                    .escalations_to(c.after, c.changes)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                let changes = c.changes.to_vec();
                let rule_count = c.text.rule_count() as u64;
                let tokens_seen = tokens_seen.clone();
                async move {
                    if let Some(problem) = lockout {
                        return Err(Error::InvalidArgument(InvalidInput::new("policy", problem)));
                    }
                    if approving.is_none() && !escalations.is_empty() {
                        let p = Proposal {
                            id: next_id,
                            text: text.to_owned(),
                            comment: comment.to_owned(),
                            proposed_by: by.subject.as_str().to_owned(),
                            proposed_at_ms: now_ms(),
                            against_version: current,
                            reasons: escalations,
                            decisions_changed: changes.len() as u64,
                            status: Status::Pending,
                        };
                        let event = Event {
                            policy_version: current,
                            detail: format!(
                                "policy change proposed as pending change {next_id} against version {current}: {} escalation(s), needs a second policy admin",
                                p.reasons.len()
                            ),
                            ..call.event(by)
                        };
                        audit.commit(proposal::batch(&p), vec![event]).await?;
                        return Ok(Commit::Keep(Outcome::Pending(p, changes)));
                    }
                    let (applied_by, approved_by) = match approving {
                        Some(p) => (p.proposed_by.clone(), by.subject.as_str().to_owned()),
                        None => (by.subject.as_str().to_owned(), String::new()),
                    };
                    let record = PolicyVersion {
                        version: next,
                        text: text.to_owned(),
                        applied_by,
                        approved_by,
                        applied_at_ms: now_ms(),
                        comment: comment.to_owned(),
                        from_version: current,
                        rule_count,
                        decisions_changed: changes.len() as u64,
                    };
                    let mut batch = version_batch(&record);
                    changes::expect(&mut batch, Change::Tokens, tokens_seen);
                    // Our own text only: the applier's comment is kept with the version
                    // (ListPolicyVersions), not copied into the log.
                    let detail = match approving {
                        Some(p) => {
                            let done = Proposal {
                                status: Status::Approved {
                                    by: by.subject.as_str().to_owned(),
                                    at_ms: record.applied_at_ms,
                                    version: next,
                                },
                                ..p.clone()
                            };
                            batch.append(proposal::batch(&done));
                            format!(
                                "pending change {} (proposed by {}) approved: policy version {current} -> {next}, {} decisions changed",
                                p.id,
                                p.proposed_by,
                                changes.len()
                            )
                        }
                        None => format!(
                            "policy version {current} -> {next}, {} decisions changed",
                            changes.len()
                        ),
                    };
                    let event = Event {
                        policy_version: next,
                        detail,
                        ..call.event(by)
                    };
                    audit.commit(batch, vec![event]).await.map_err(|e| {
                        if e.is_conflict() {
                            Error::Aborted(format!(
                                "another vault node applied a policy version or changed the \
                                 tokens meanwhile; version {next} was not applied: read the \
                                 policy again and retry"
                            ))
                        } else {
                            e.into()
                        }
                    })?;
                    Ok(Commit::Install(Outcome::Applied(record, changes)))
                }
            })
            .await;
        match result {
            Ok(outcome) => {
                match &outcome {
                    Outcome::Applied(record, changes) => {
                        tracing::info!(by = %by.subject, from = current, to = record.version, changes = changes.len(), "policy applied");
                    }
                    Outcome::Pending(p, _) => {
                        tracing::info!(by = %by.subject, pending = p.id, against = current, "policy change pending approval");
                    }
                }
                Ok(outcome)
            }
            Err(ReplaceError::Policy(e)) => Err(policy_input(e)),
            Err(ReplaceError::Persist(e)) => Err(e),
        }
    }

    /// Approves pending change `id` and applies it as the next version. The approver must hold
    /// `policies manage` and be another subject than the proposer; the policy must still be at
    /// the version the change was proposed against (else it is refused: propose it again, so
    /// the approver never approves decisions nobody reviewed).
    ///
    /// # Errors
    /// `PermissionDenied` (also for the proposer's own change); `NoSuchProposal`; `Aborted` if
    /// the change is no longer pending or the policy moved on; `InvalidArgument` if it no
    /// longer validates; `Unavailable`.
    pub async fn approve(&self, by: &Principal, call: &Call, id: u64) -> Result<Outcome, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let _guard = self.changes.lock().await;
        let p = self.open_proposal(id)?;
        if p.proposed_by == by.subject.as_str() {
            return Err(Error::PermissionDenied(format!(
                "{} proposed pending change {id}: a second, different subject with `policies manage` must approve it",
                by.subject
            )));
        }
        let current = self.engine.text().version();
        if current != p.against_version {
            return Err(Error::Aborted(format!(
                "pending change {id} was proposed against policy version {}, and the policy is now at version {current}: reject it and propose the change again",
                p.against_version
            )));
        }
        self.change(by, call, &p.text, &p.comment, current, Some(&p))
            .await
    }

    /// Rejects pending change `id` (or withdraws it, when its proposer does).
    ///
    /// # Errors
    /// `PermissionDenied`; `NoSuchProposal`; `Aborted` if it is no longer pending;
    /// `Unavailable`.
    pub async fn reject(&self, by: &Principal, call: &Call, id: u64) -> Result<Proposal, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let _guard = self.changes.lock().await;
        let p = self.open_proposal(id)?;
        let done = Proposal {
            status: Status::Rejected {
                by: by.subject.as_str().to_owned(),
                at_ms: now_ms(),
            },
            ..p
        };
        let how = if done.proposed_by == by.subject.as_str() {
            "withdrawn by its proposer"
        } else {
            "rejected"
        };
        let event = Event {
            policy_version: self.engine.text().version(),
            detail: format!(
                "pending change {id} (proposed by {}) {how}",
                done.proposed_by
            ),
            ..call.event(by)
        };
        self.audit
            .commit(proposal::batch(&done), vec![event])
            .await?;
        Ok(done)
    }

    /// The changes waiting for a second approver, oldest first.
    ///
    /// # Errors
    /// `PermissionDenied`, `Unavailable`, `DataLoss` if a stored one is malformed.
    pub fn pending(&self, by: &Principal) -> Result<Vec<Proposal>, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        Ok(proposal::load(self.store.as_ref())?
            .into_iter()
            .filter(|p| p.status == Status::Pending)
            .collect())
    }

    fn open_proposal(&self, id: u64) -> Result<Proposal, Error> {
        let p = proposal::one(self.store.as_ref(), id)?.ok_or(Error::NoSuchProposal(id))?;
        match &p.status {
            Status::Pending => Ok(p),
            Status::Approved { by, version, .. } => Err(Error::Aborted(format!(
                "pending change {id} was already approved by {by} as version {version}"
            ))),
            Status::Rejected { by, .. } => Err(Error::Aborted(format!(
                "pending change {id} was already rejected by {by}"
            ))),
        }
    }

    /// Re-applies an earlier version's text as a new version.
    ///
    /// # Errors
    /// As `apply`, and `NoSuchVersion`.
    pub async fn rollback(
        &self,
        by: &Principal,
        call: &Call,
        to: u64,
        comment: &str,
        expected_version: Option<u64>,
    ) -> Result<Outcome, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let earlier = self.version(to)?;
        let comment = if comment.is_empty() {
            format!("rollback to version {to}")
        } else {
            format!("rollback to version {to}: {comment}")
        };
        self.apply(by, call, &earlier.text, &comment, expected_version)
            .await
    }

    /// The rules removed and added from version `from` to version `to`, and the decisions
    /// that changed.
    ///
    /// # Errors
    /// `PermissionDenied`, `NoSuchVersion`, `InvalidArgument` if an old version no longer
    /// compiles against the schema.
    pub async fn diff(
        &self,
        by: &Principal,
        from: u64,
        to: u64,
    ) -> Result<(Vec<String>, Vec<String>, Vec<DecisionChange>), Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let (a, b) = (self.version(from)?, self.version(to)?);
        let (ta, table_a) = self
            .engine
            .compile_candidate(&a.text, from)
            .await
            .map_err(policy_input)?;
        let (tb, table_b) = self
            .engine
            .compile_candidate(&b.text, to)
            .await
            .map_err(policy_input)?;
        let (la, lb) = (ta.canonical_lines(), tb.canonical_lines());
        let removed = la.iter().filter(|l| !lb.contains(l)).cloned().collect();
        let added = lb.iter().filter(|l| !la.contains(l)).cloned().collect();
        Ok((removed, added, table_a.changes_to(&table_b)))
    }

    /// Explains a decision for a subject or role.
    ///
    /// # Errors
    /// `PermissionDenied`, `InvalidArgument` naming the malformed part of the question.
    pub async fn explain(
        &self,
        by: &Principal,
        name: &str,
        action: &str,
        object: &str,
        purpose: &str,
    ) -> Result<Explanation, Error> {
        require(&self.engine, by, Privilege::AdministerPolicies)?;
        let action = Action::parse(action).ok_or_else(|| {
            InvalidInput::new(
                "action",
                "use read, read_masked, read_pseudonym, write or delete",
            )
        })?;
        self.engine
            .explain(name, action, object, purpose)
            .await
            .map_err(|e| match e {
                PolicyError::Line { problem, .. } => {
                    Error::InvalidArgument(InvalidInput::new("question", problem))
                }
                PolicyError::Model(m) => Error::Internal(m),
            })
    }
}

/// What a policy change did: applied at once, or stored for a second approver.
#[derive(Debug)]
pub enum Outcome {
    /// Applied as the next version, with the decisions it changed.
    Applied(PolicyVersion, Vec<DecisionChange>),
    /// Stored as a pending change, with the decisions it would change.
    Pending(Proposal, Vec<DecisionChange>),
}

/// Why `after` would lock the vault's policy or token administration, if it would. Tokens
/// count too: with nobody holding `tokens manage`, no stolen token could be revoked, and giving
/// it back is an escalation needing a second policy admin whom nobody could mint.
/// `live`: the principals whose tokens have not expired.
fn lockout(after: &DecisionTable, live: &[Principal]) -> Option<String> {
    [
        (Privilege::AdministerPolicies, "administer policies"),
        (Privilege::ManageTokens, "issue or revoke tokens"),
    ]
    .into_iter()
    .find_map(|(p, what)| {
        if after.holders(p).is_empty() {
            Some(format!(
                "no role would hold `{}`: nobody could {what} again (keep a line such as `p, {ADMIN_ROLE}, {}, {}, *, allow`)",
                p.name(),
                p.object(),
                p.action()
            ))
        } else if !live.iter().any(|l| after.holds(l, p)) {
            Some(format!(
                "no token holder would hold `{}` (held by {}): nobody could {what} again",
                p.name(),
                after.holders(p).join(", ")
            ))
        } else {
            None
        }
    })
}

/// The batch storing a policy version.
fn version_batch(record: &PolicyVersion) -> Batch {
    // A struct of strings and integers: serializing it to JSON cannot fail.
    #[allow(clippy::expect_used)]
    let value = serde_json::to_vec(record).expect("a policy version always serializes");
    let mut batch = Batch::new();
    // Another vault node that applied a version first took this number: this one is refused
    // (ABORTED), rather than writing over it.
    batch.expect(Keyspace::Meta, key(record.version), None);
    batch.put(Keyspace::Meta, key(record.version), value);
    changes::stamp(&mut batch, Change::Policy);
    batch
}
