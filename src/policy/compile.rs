//! Compiles a policy version into a decision table with casbin, once per change, so that the
//! hot path never runs casbin: a decision is two hash lookups and an index.

use std::collections::HashMap;

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};

use super::{Action, Decision, PolicyError, PolicyText};
use crate::domain::{Collection, Principal, Purpose, Schema};

/// The only effect we accept: allowed by some rule and denied by none. `!some(where (p.eft ==
/// deny))` alone would allow everything no rule mentions.
const DENY_OVERRIDES: &str = "some(where (p.eft == allow)) && !some(where (p.eft == deny))";

/// Every decision of one policy version, for every known subject and role.
#[derive(Debug)]
pub struct DecisionTable {
    version: u64,
    rows: HashMap<String, usize>,
    collections: HashMap<String, (usize, usize)>,
    purposes: HashMap<String, usize>,
    n_fields: usize,
    reads: Vec<Decision>,
    writes: Vec<bool>,
    deletes: Vec<bool>,
}

impl DecisionTable {
    /// The policy version this table was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn field_slot(&self, row: usize, collection: &Collection, field: usize) -> Option<usize> {
        let (_, base) = self.collections.get(collection.name().as_str())?;
        Some(row * self.n_fields + base + field)
    }

    /// The read decision for a subject or role name; unknown names, fields and purposes deny.
    pub fn read_by_name(
        &self,
        name: &str,
        collection: &Collection,
        field: usize,
        purpose: &Purpose,
    ) -> Decision {
        let n_purposes = self.purposes.len();
        self.rows
            .get(name)
            .and_then(|&row| self.field_slot(row, collection, field))
            .zip(self.purposes.get(purpose.as_str()))
            .and_then(|(slot, &p)| self.reads.get(slot * n_purposes + p).copied())
            .unwrap_or(Decision::Denied)
    }

    pub(super) fn read(
        &self,
        principal: &Principal,
        collection: &Collection,
        field: usize,
        purpose: &Purpose,
    ) -> Decision {
        self.read_by_name(principal.subject.as_str(), collection, field, purpose)
    }

    pub(super) fn may_write(
        &self,
        principal: &Principal,
        collection: &Collection,
        field: usize,
    ) -> bool {
        self.rows
            .get(principal.subject.as_str())
            .and_then(|&row| self.field_slot(row, collection, field))
            .and_then(|slot| self.writes.get(slot).copied())
            .unwrap_or(false)
    }

    pub(super) fn may_delete(&self, principal: &Principal, collection: &Collection) -> bool {
        let n_collections = self.collections.len();
        self.rows
            .get(principal.subject.as_str())
            .zip(self.collections.get(collection.name().as_str()))
            .and_then(|(&row, &(c, _))| self.deletes.get(row * n_collections + c).copied())
            .unwrap_or(false)
    }
}

/// Builds the decision table for `text` under `model`, with a row for every role the policy
/// names and every principal (whose roles are added as grants).
pub(super) async fn compile(
    model: &str,
    text: &PolicyText,
    schema: &Schema,
    principals: &[Principal],
) -> Result<DecisionTable, PolicyError> {
    let effect_ok = model.lines().any(|l| {
        l.split_once('=')
            .is_some_and(|(k, v)| k.trim() == "e" && v.trim() == DENY_OVERRIDES)
    });
    if !effect_ok {
        return Err(PolicyError::Model(format!(
            "the policy effect must be `e = {DENY_OVERRIDES}`"
        )));
    }
    let mut csv = text.to_casbin_csv();
    for p in principals {
        for role in &p.roles {
            csv.push_str(&format!("g, {}, {}\n", p.subject, role));
        }
    }
    let model = DefaultModel::from_str(model)
        .await
        .map_err(|e| PolicyError::Model(e.to_string()))?;
    let enforcer = Enforcer::new(model, StringAdapter::new(csv))
        .await
        .map_err(|e| PolicyError::Model(e.to_string()))?;

    let mut rows: HashMap<String, usize> = HashMap::new();
    let names = text
        .roles()
        .into_iter()
        .map(str::to_owned)
        .chain(principals.iter().map(|p| p.subject.as_str().to_owned()));
    for name in names {
        let next = rows.len();
        rows.entry(name).or_insert(next);
    }
    let mut collections = HashMap::new();
    let mut objects = Vec::new();
    for (c, coll) in schema.collections().enumerate() {
        collections.insert(coll.name().as_str().to_owned(), (c, objects.len()));
        objects.extend(
            coll.fields()
                .iter()
                .map(|(f, _)| format!("{}.{f}", coll.name())),
        );
    }
    let purposes: HashMap<String, usize> = schema
        .purposes()
        .iter()
        .enumerate()
        .map(|(i, p)| (p.as_str().to_owned(), i))
        .collect();
    let n_fields = objects.len();
    let n_purposes = purposes.len();
    let mut reads = vec![Decision::Denied; rows.len() * n_fields * n_purposes];
    let mut writes = vec![false; rows.len() * n_fields];
    let mut deletes = vec![false; rows.len() * collections.len()];

    // An evaluation error is a deny, never an allow.
    let allowed = |sub: &str, obj: &str, act: Action, pur: &str| {
        enforcer
            .enforce((sub, obj, act.as_str(), pur))
            .unwrap_or(false)
    };
    for (name, &row) in &rows {
        for (f, object) in objects.iter().enumerate() {
            let slot = row * n_fields + f;
            for purpose in schema.purposes() {
                let p = purposes.get(purpose.as_str()).copied().unwrap_or(0);
                let decision = if allowed(name, object, Action::Read, purpose.as_str()) {
                    Decision::Plain
                } else if allowed(name, object, Action::ReadMasked, purpose.as_str()) {
                    Decision::Masked
                } else {
                    Decision::Denied
                };
                reads[slot * n_purposes + p] = decision;
            }
            writes[slot] = allowed(name, object, Action::Write, "*");
        }
        for coll in schema.collections() {
            if let Some(&(c, _)) = collections.get(coll.name().as_str()) {
                let object = format!("{}.*", coll.name());
                deletes[row * collections.len() + c] = allowed(name, &object, Action::Delete, "*");
            }
        }
    }
    Ok(DecisionTable {
        version: text.version(),
        rows,
        collections,
        purposes,
        n_fields,
        reads,
        writes,
        deletes,
    })
}
