//! Role- and purpose-based access policy. casbin (`policies/model.conf` + a policy text) is the
//! source of truth; each policy version is compiled into a decision table that the hot path
//! looks up, so a decision costs the same whatever the number of rules. The table is rebuilt
//! aside and swapped in whole when the policy or the set of known subjects changes.
//!
//! The only module that names casbin. Authorization is a capability: the vault decrypts only
//! under a `ReadPermit`, and only this module can make one.

mod compile;
mod rules;

use std::sync::{Arc, PoisonError, RwLock};

use crate::domain::{Collection, Principal, Purpose, Schema};

pub use compile::DecisionTable;
pub use rules::{Action, PolicyError, PolicyText};

/// What a caller may see of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Decision {
    /// Not returned, and never decrypted.
    Denied,
    /// Returned masked by its type.
    Masked,
    /// Returned in plaintext.
    Plain,
}

/// The per-field decisions of one read, for one record's collection. Only the policy module can
/// make one; the vault needs one to decrypt anything.
#[derive(Debug)]
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
    text: PolicyText,
    table: Arc<DecisionTable>,
}

/// The live policy: its text, its compiled table, and the principals it was compiled for.
pub struct PolicyEngine {
    schema: Arc<Schema>,
    model: String,
    current: RwLock<Arc<Current>>,
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
        let text = PolicyText::parse(policy, &schema, version)?;
        let table = compile::compile(&model, &text, &schema, &principals).await?;
        Ok(Self {
            schema,
            model,
            current: RwLock::new(Arc::new(Current {
                text,
                table: Arc::new(table),
            })),
            principals: tokio::sync::Mutex::new(principals),
        })
    }

    /// The current decision table. Readers keep the `Arc` for one request: a change in between
    /// is seen whole by the next request, never half.
    pub fn table(&self) -> Arc<DecisionTable> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&current.table)
    }

    /// Adds a principal (e.g. for a newly issued token) and recompiles the table for it.
    ///
    /// # Errors
    /// `PolicyError` if compiling fails; the running table stays.
    pub async fn add_principal(&self, principal: Principal) -> Result<(), PolicyError> {
        let mut principals = self.principals.lock().await;
        if principals.contains(&principal) {
            return Ok(());
        }
        principals.push(principal);
        let text = {
            let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
            current.text.clone()
        };
        let table = compile::compile(&self.model, &text, &self.schema, &principals).await;
        match table {
            Ok(table) => {
                let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
                *current = Arc::new(Current {
                    text,
                    table: Arc::new(table),
                });
                Ok(())
            }
            Err(e) => {
                principals.pop();
                Err(e)
            }
        }
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
