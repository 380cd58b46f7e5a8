//! Policy administration for security admins: the live policy is versioned in the store (seeded
//! from `policies/policy.csv` on the first start; the store is the truth after that). Apply,
//! roll back, diff, dry-run, explain, history. Every change records who, when, from which
//! version, and why.
//!
//! Depends on `policy` and `storage`; knows nothing of gRPC.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::{
    audit::{Audit, Call, Event},
    domain::{InvalidInput, Principal, Schema},
    policy::{Action, DecisionChange, Explanation, PolicyEngine, PolicyError, ReplaceError},
    storage::{Batch, Keyspace, Store},
    vault::{
        Error,
        access::{Privilege, require},
        now_ms,
    },
};

const PREFIX: &[u8] = b"policy/";

/// One stored policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// Version number, from 1.
    pub version: u64,
    /// The policy text.
    pub text: String,
    /// Who applied it (a subject, or `strongroom` for the seed).
    pub applied_by: String,
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
        principals: Vec<Principal>,
    ) -> Result<Self, String> {
        let versions = load_versions(store.as_ref()).map_err(|e| e.to_string())?;
        let (text, version, seeded) = match versions.last() {
            Some(v) => (v.text.clone(), v.version, false),
            None => (seed.to_owned(), 1, true),
        };
        let engine = PolicyEngine::new(schema, model, &text, version, principals)
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
        Ok(Self {
            store,
            audit,
            engine: Arc::new(engine),
            changes: tokio::sync::Mutex::new(()),
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
        require(by, Privilege::AdministerPolicies)?;
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
        require(by, Privilege::AdministerPolicies)?;
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
        require(by, Privilege::AdministerPolicies)?;
        let current = self.engine.table();
        let (_, candidate) = self
            .engine
            .compile_candidate(text, current.version() + 1)
            .await
            .map_err(policy_input)?;
        Ok((current.version(), current.changes_to(&candidate)))
    }

    /// Applies a new policy text as the next version.
    ///
    /// # Errors
    /// `PermissionDenied`; `InvalidArgument` naming the bad line (the running policy stays);
    /// `Aborted` if `expected_version` is not the current version; `Unavailable`.
    pub async fn apply(
        &self,
        by: &Principal,
        call: &Call,
        text: &str,
        comment: &str,
        expected_version: Option<u64>,
    ) -> Result<(PolicyVersion, Vec<DecisionChange>), Error> {
        require(by, Privilege::AdministerPolicies)?;
        let _guard = self.changes.lock().await;
        let current = self.engine.text().version();
        if let Some(expected) = expected_version
            && expected != current
        {
            return Err(Error::Aborted(format!(
                "the policy is at version {current}, not the expected {expected}: another change was applied first"
            )));
        }
        let next = current + 1;
        let audit = Arc::clone(&self.audit);
        let result = self
            .engine
            .replace(text, next, |validated, changes| {
                let record = PolicyVersion {
                    version: next,
                    text: text.to_owned(),
                    applied_by: by.subject.as_str().to_owned(),
                    applied_at_ms: now_ms(),
                    comment: comment.to_owned(),
                    from_version: current,
                    rule_count: validated.rule_count() as u64,
                    decisions_changed: changes.len() as u64,
                };
                let event = Event {
                    policy_version: next,
                    // Our own text only: the applier's comment is kept with the version
                    // (ListPolicyVersions), not copied into the log.
                    detail: format!(
                        "policy version {current} -> {next}, {} decisions changed",
                        changes.len()
                    ),
                    ..call.event(by)
                };
                let changes = changes.to_vec();
                async move {
                    audit
                        .commit(version_batch(&record), vec![event])
                        .await
                        .map(|_| (record, changes))
                }
            })
            .await;
        match result {
            Ok((record, changes)) => {
                tracing::info!(by = %by.subject, from = current, to = next, changes = changes.len(), "policy applied");
                Ok((record, changes))
            }
            Err(ReplaceError::Policy(e)) => Err(policy_input(e)),
            Err(ReplaceError::Persist(e)) => Err(e.into()),
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
    ) -> Result<(PolicyVersion, Vec<DecisionChange>), Error> {
        require(by, Privilege::AdministerPolicies)?;
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
        require(by, Privilege::AdministerPolicies)?;
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
        require(by, Privilege::AdministerPolicies)?;
        let action = Action::parse(action)
            .ok_or_else(|| InvalidInput::new("action", "use read, read_masked, write or delete"))?;
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

/// The batch storing a policy version.
fn version_batch(record: &PolicyVersion) -> Batch {
    // A struct of strings and integers: serializing it to JSON cannot fail.
    #[allow(clippy::expect_used)]
    let value = serde_json::to_vec(record).expect("a policy version always serializes");
    let mut batch = Batch::new();
    batch.put(Keyspace::Meta, key(record.version), value);
    batch
}
