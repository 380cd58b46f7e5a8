//! Compiles a policy version into a decision table, once per change, so that the hot path never
//! evaluates rules: a decision is two hash lookups and an index, whatever the rule count.
//!
//! The compiler implements exactly the model in `policies/model.conf` (checked on load), in time
//! linear in the rules. casbin stays the source of truth: every compiled table is checked
//! against casbin's own `enforce` (every cell for small policies, a spread sample for large
//! ones), and a table that disagrees is refused.

use std::collections::{HashMap, HashSet, VecDeque};

use casbin::{CoreApi, DefaultModel, Enforcer, StringAdapter};

use super::{
    Action, Decision, PolicyError, PolicyText, Privilege,
    privilege::Privileges,
    rules::{Rule, grant_graph},
};
use crate::domain::{Collection, Principal, Purpose, Role, Schema};

/// The model the compiler implements. `policies/model.conf` must say the same (comments and
/// spacing aside): a different matcher or effect would make the table lie.
const SUPPORTED_MODEL: &str = "
[request_definition]
r = sub, obj, act, pur
[policy_definition]
p = sub, obj, act, pur, eft
[role_definition]
g = _, _
[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))
[matchers]
m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj) && r.act == p.act && (p.pur == \"*\" || p.pur == r.pur)
";

/// Above this many table cells, casbin checks a sample of cells instead of all of them.
const FULL_CHECK_CELLS: usize = 4096;
/// How many cells the sample holds.
const SAMPLE_CELLS: usize = 48;
/// Blocks of per-cell allow/deny marks in a row's scratch: one per action that has cells
/// (read, read_masked, write, delete's unused block, read_pseudonym, find); the per-collection
/// delete marks follow them.
const ACTION_BLOCKS: usize = 6;

fn normalized(model: &str) -> Vec<String> {
    model
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .map(|l| l.chars().filter(|c| !c.is_whitespace()).collect::<String>())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Checks that `model` is the model the compiler implements.
///
/// # Errors
/// `PolicyError::Model` naming the first line that differs.
pub(super) fn check_model(model: &str) -> Result<(), PolicyError> {
    let want = normalized(SUPPORTED_MODEL);
    let got = normalized(model);
    if let Some((w, g)) = want.iter().zip(&got).find(|(w, g)| w != g) {
        return Err(PolicyError::Model(format!(
            "model.conf says `{g}` where this vault evaluates `{w}`; the decision table implements only the deny-overrides RBAC model shipped in policies/model.conf"
        )));
    }
    if want.len() != got.len() {
        return Err(PolicyError::Model(
            "model.conf has more or fewer lines than the supported model".into(),
        ));
    }
    Ok(())
}

/// Every decision of one policy version, for every role and subject it names and every subject
/// holding a token.
///
/// A row answers a presented principal only if it was compiled for exactly that principal's
/// roles: a table compiled before a subject's roles changed denies the subject everything
/// rather than grant the old roles' rights (fail closed).
#[derive(Debug)]
pub struct DecisionTable {
    version: u64,
    names: Vec<String>,
    rows: HashMap<String, usize>,
    /// Per row: the token roles it was compiled for. `None` for a role, for a subject the policy
    /// names but no principal holds, and for a subject given with two different role sets: no
    /// presented principal matches such a row.
    row_roles: Vec<Option<Vec<Role>>>,
    /// collection name -> (collection index, offset of its first field in `objects`).
    collections: HashMap<String, (usize, usize)>,
    collection_names: Vec<String>,
    /// `collection.field` of each field, in schema order.
    objects: Vec<String>,
    purposes: Vec<String>,
    purpose_index: HashMap<String, usize>,
    reads: Vec<Decision>,
    writes: Vec<bool>,
    deletes: Vec<bool>,
    /// Per (row, field, purpose), like `reads`: may the row find records by the field.
    finds: Vec<bool>,
    /// `collection.field` of each field the schema marks sensitive.
    sensitive: HashSet<String>,
    /// Who holds which privilege outside the record policy.
    privileges: Privileges,
}

/// A change that needs a second approver: a role or subject that would gain a privilege, or
/// a wider read of a sensitive field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Escalation {
    /// `principal` would hold `privilege`, which it does not hold now.
    Privilege {
        /// The role or subject.
        principal: String,
        /// The privilege it would gain.
        privilege: Privilege,
    },
    /// A read of a sensitive field would move up Denied -> Pseudonym -> Masked -> Plain.
    SensitiveRead(DecisionChange),
}

impl std::fmt::Display for Escalation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Privilege {
                principal,
                privilege,
            } => write!(f, "{principal} would gain `{}`", privilege.name()),
            Self::SensitiveRead(c) => write!(
                f,
                "{} would read sensitive {} for {}: {} -> {}",
                c.principal, c.object, c.purpose, c.before, c.after
            ),
        }
    }
}

/// One decision that differs between two tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionChange {
    /// The role or subject.
    pub principal: String,
    /// `collection.field` (or `collection.*` for deletes).
    pub object: String,
    /// The action: `read` (plain/masked/pseudonym/denied), `write`, `delete` or `find`
    /// (allowed/denied).
    pub action: Action,
    /// The purpose, `*` for writes and deletes.
    pub purpose: String,
    /// The decision before.
    pub before: &'static str,
    /// The decision after.
    pub after: &'static str,
}

fn decision_name(d: Decision) -> &'static str {
    d.name()
}

/// How much a read decision named in a `DecisionChange` discloses (`Decision::rank`); write and
/// delete names rank 0.
fn rank_of_name(name: &str) -> u8 {
    [
        Decision::Denied,
        Decision::Masked,
        Decision::Plain,
        Decision::Pseudonym,
    ]
    .into_iter()
    .find(|d| d.name() == name)
    .map_or(0, Decision::rank)
}

fn allowed_name(b: bool) -> &'static str {
    if b { "allowed" } else { "denied" }
}

impl DecisionTable {
    /// The policy version this table was compiled from.
    pub fn version(&self) -> u64 {
        self.version
    }

    fn row(&self, name: &str) -> Option<usize> {
        self.rows.get(name).copied()
    }

    /// The row of `principal`'s subject, if it was compiled for exactly `principal`'s roles.
    fn principal_row(&self, principal: &Principal) -> Option<usize> {
        let row = self.row(principal.subject.as_str())?;
        let compiled_for = self.row_roles.get(row)?.as_deref()?;
        (compiled_for == principal.roles.as_slice()).then_some(row)
    }

    fn field_slot(&self, row: usize, collection: &Collection, field: usize) -> Option<usize> {
        let (_, base) = self.collections.get(collection.name().as_str())?;
        (field < collection.fields().len()).then(|| row * self.objects.len() + base + field)
    }

    fn read_row(
        &self,
        row: Option<usize>,
        collection: &Collection,
        field: usize,
        purpose: &str,
    ) -> Decision {
        let n_purposes = self.purposes.len();
        row.and_then(|row| self.field_slot(row, collection, field))
            .zip(self.purpose_index.get(purpose))
            .and_then(|(slot, &p)| self.reads.get(slot * n_purposes + p).copied())
            .unwrap_or(Decision::Denied)
    }

    fn write_row(&self, row: Option<usize>, collection: &Collection, field: usize) -> bool {
        row.and_then(|row| self.field_slot(row, collection, field))
            .and_then(|slot| self.writes.get(slot).copied())
            .unwrap_or(false)
    }

    fn find_row(
        &self,
        row: Option<usize>,
        collection: &Collection,
        field: usize,
        purpose: &str,
    ) -> bool {
        let n_purposes = self.purposes.len();
        row.and_then(|row| self.field_slot(row, collection, field))
            .zip(self.purpose_index.get(purpose))
            .and_then(|(slot, &p)| self.finds.get(slot * n_purposes + p).copied())
            .unwrap_or(false)
    }

    /// Whether a subject or role may find records by a field for a purpose; unknown names,
    /// fields and purposes deny.
    pub fn find_by_name(
        &self,
        name: &str,
        collection: &Collection,
        field: usize,
        purpose: &str,
    ) -> bool {
        self.find_row(self.row(name), collection, field, purpose)
    }

    pub(super) fn may_find(
        &self,
        principal: &Principal,
        collection: &Collection,
        field: usize,
        purpose: &Purpose,
    ) -> bool {
        self.find_row(
            self.principal_row(principal),
            collection,
            field,
            purpose.as_str(),
        )
    }

    fn delete_row(&self, row: Option<usize>, collection: &Collection) -> bool {
        let n = self.collection_names.len();
        row.zip(self.collections.get(collection.name().as_str()))
            .and_then(|(row, &(c, _))| self.deletes.get(row * n + c).copied())
            .unwrap_or(false)
    }

    /// The read decision for a subject or role name; unknown names, fields and purposes deny.
    pub fn read_by_name(
        &self,
        name: &str,
        collection: &Collection,
        field: usize,
        purpose: &str,
    ) -> Decision {
        self.read_row(self.row(name), collection, field, purpose)
    }

    /// Whether a subject or role may write a field; unknown names deny.
    pub fn write_by_name(&self, name: &str, collection: &Collection, field: usize) -> bool {
        self.write_row(self.row(name), collection, field)
    }

    /// Whether a subject or role may delete records of a collection; unknown names deny.
    pub fn delete_by_name(&self, name: &str, collection: &Collection) -> bool {
        self.delete_row(self.row(name), collection)
    }

    /// The read decision for a presented principal: denied unless its subject's row was
    /// compiled for exactly its roles.
    pub(super) fn read(
        &self,
        principal: &Principal,
        collection: &Collection,
        field: usize,
        purpose: &Purpose,
    ) -> Decision {
        self.read_row(
            self.principal_row(principal),
            collection,
            field,
            purpose.as_str(),
        )
    }

    pub(super) fn may_write(
        &self,
        principal: &Principal,
        collection: &Collection,
        field: usize,
    ) -> bool {
        self.write_row(self.principal_row(principal), collection, field)
    }

    pub(super) fn may_delete(&self, principal: &Principal, collection: &Collection) -> bool {
        self.delete_row(self.principal_row(principal), collection)
    }

    /// Whether `principal` (its subject and its token's roles) holds `privilege`.
    pub fn holds(&self, principal: &Principal, privilege: Privilege) -> bool {
        self.privileges.holds(principal, privilege)
    }

    /// The roles that hold `privilege`, sorted.
    pub fn holders(&self, privilege: Privilege) -> Vec<String> {
        self.privileges.role_holders(privilege)
    }

    /// What moving from `self` to `after` would escalate: every privilege a role, subject or
    /// token holder would gain, and every read of a sensitive field that would widen among
    /// `changes` (`self.changes_to(after)`, which the caller has already worked out). Both
    /// tables must come from the same schema and principals.
    pub fn escalations_to(&self, after: &Self, changes: &[DecisionChange]) -> Vec<Escalation> {
        let mut out = Vec::new();
        for (name, roles) in after.names.iter().zip(&after.row_roles) {
            let roles: Vec<&str> = roles.iter().flatten().map(Role::as_str).collect();
            for privilege in Privilege::ALL {
                if after.privileges.holds_with(name, &roles, privilege)
                    && !self.privileges.holds_with(name, &roles, privilege)
                {
                    out.push(Escalation::Privilege {
                        principal: name.clone(),
                        privilege,
                    });
                }
            }
        }
        out.extend(
            changes
                .iter()
                .filter(|c| {
                    c.action == Action::Read
                        && after.sensitive.contains(&c.object)
                        && rank_of_name(c.after) > rank_of_name(c.before)
                })
                .cloned()
                .map(Escalation::SensitiveRead),
        );
        // Finding records by a sensitive field (an SSN) tells who is a customer: a new grant
        // of it is a widening like a read.
        out.extend(
            changes
                .iter()
                .filter(|c| {
                    c.action == Action::Find
                        && after.sensitive.contains(&c.object)
                        && c.after == "allowed"
                })
                .cloned()
                .map(Escalation::SensitiveRead),
        );
        out
    }

    /// The decisions of one row by cell, for comparisons: reads, then writes, then deletes.
    fn cells(&self, name: &str) -> Vec<(String, Action, String, &'static str)> {
        let row = self.row(name);
        let mut out = Vec::new();
        let n_purposes = self.purposes.len();
        for (f, object) in self.objects.iter().enumerate() {
            for (p, purpose) in self.purposes.iter().enumerate() {
                let d = row
                    .and_then(|r| {
                        self.reads
                            .get((r * self.objects.len() + f) * n_purposes + p)
                    })
                    .copied()
                    .unwrap_or(Decision::Denied);
                out.push((
                    object.clone(),
                    Action::Read,
                    purpose.clone(),
                    decision_name(d),
                ));
            }
        }
        for (f, object) in self.objects.iter().enumerate() {
            let w = row
                .and_then(|r| self.writes.get(r * self.objects.len() + f))
                .copied()
                .unwrap_or(false);
            out.push((object.clone(), Action::Write, "*".into(), allowed_name(w)));
        }
        for (f, object) in self.objects.iter().enumerate() {
            for (p, purpose) in self.purposes.iter().enumerate() {
                let allowed = row
                    .and_then(|r| {
                        self.finds
                            .get((r * self.objects.len() + f) * n_purposes + p)
                    })
                    .copied()
                    .unwrap_or(false);
                out.push((
                    object.clone(),
                    Action::Find,
                    purpose.clone(),
                    allowed_name(allowed),
                ));
            }
        }
        let n = self.collection_names.len();
        for (c, coll) in self.collection_names.iter().enumerate() {
            let d = row
                .and_then(|r| self.deletes.get(r * n + c))
                .copied()
                .unwrap_or(false);
            out.push((
                format!("{coll}.*"),
                Action::Delete,
                "*".into(),
                allowed_name(d),
            ));
        }
        out
    }

    /// Every decision that differs from `self` to `after`, over every role and subject either
    /// table knows. Both tables must come from the same schema.
    pub fn changes_to(&self, after: &Self) -> Vec<DecisionChange> {
        let mut names: Vec<&String> = self.names.iter().chain(after.names.iter()).collect();
        names.sort();
        names.dedup();
        let mut out = Vec::new();
        for name in names {
            let before = self.cells(name);
            let now = after.cells(name);
            for (b, a) in before.into_iter().zip(now) {
                if b.3 != a.3 {
                    out.push(DecisionChange {
                        principal: name.clone(),
                        object: a.0,
                        action: a.1,
                        purpose: a.2,
                        before: b.3,
                        after: a.3,
                    });
                }
            }
        }
        out
    }
}

/// Every name `start` stands for: itself and every role it reaches through grants, with the
/// chain of grants that reaches it (breadth-first: the shortest chain).
pub(super) fn reachable<'a>(
    start: &'a str,
    edges: &HashMap<&'a str, Vec<&'a str>>,
) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = vec![(start, vec![start])];
    let mut queue: VecDeque<usize> = VecDeque::from([0]);
    while let Some(i) = queue.pop_front() {
        let (node, path) = (out[i].0, out[i].1.clone());
        for &role in edges.get(node).map(Vec::as_slice).unwrap_or_default() {
            if out.iter().all(|(n, _)| *n != role) {
                let mut p = path.clone();
                p.push(role);
                out.push((role, p));
                queue.push_back(out.len() - 1);
            }
        }
    }
    out
}

/// Whether a rule's object pattern covers `object` (casbin's keyMatch on our object forms).
pub(super) fn object_matches(pattern: &str, object: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => object.starts_with(prefix),
        None => pattern == object,
    }
}

/// Builds the decision table for `text`, with a row for every role the policy names and every
/// principal (whose token roles are added as grants), and checks it against casbin. `principals`
/// is the whole set the table is for (the live token holders), not an addition.
pub(super) async fn compile(
    model: &str,
    text: &PolicyText,
    schema: &Schema,
    principals: &[Principal],
) -> Result<DecisionTable, PolicyError> {
    check_model(model)?;
    let table = build(text, schema, principals);
    cross_check(model, text, principals, &table, None).await?;
    Ok(table)
}

/// Compiles `text` for `principals`, where a table for `text` and the principals `before` was
/// compiled and checked already (a token issued, rotated or revoked): the table is built whole,
/// but only the rows of subjects whose grants differ from `before`'s are checked against
/// casbin. Every other row is built by the same code from the same rules and grants as the
/// checked table's. Returns the table and how many rows were checked.
///
/// # Errors
/// As `compile`.
pub(super) async fn recompile(
    model: &str,
    text: &PolicyText,
    schema: &Schema,
    principals: &[Principal],
    before: &[Principal],
) -> Result<(DecisionTable, usize), PolicyError> {
    check_model(model)?;
    let table = build(text, schema, principals);
    let grants = |set: &[Principal]| {
        let mut by_subject: HashMap<String, Vec<Vec<Role>>> = HashMap::new();
        for p in set {
            by_subject
                .entry(p.subject.as_str().to_owned())
                .or_default()
                .push(p.roles.clone());
        }
        for roles in by_subject.values_mut() {
            roles.sort();
            roles.dedup();
        }
        by_subject
    };
    let (now, then) = (grants(principals), grants(before));
    // Both ways: a subject the policy names keeps its row when its last token goes.
    let changed: HashSet<&str> = now
        .iter()
        .filter(|(subject, roles)| then.get(*subject) != Some(*roles))
        .chain(
            then.iter()
                .filter(|(subject, _)| !now.contains_key(*subject)),
        )
        .map(|(subject, _)| subject.as_str())
        .collect();
    let checked = cross_check(model, text, principals, &table, Some(&changed)).await?;
    Ok((table, checked))
}

fn build(text: &PolicyText, schema: &Schema, principals: &[Principal]) -> DecisionTable {
    let mut names: Vec<String> = text.names().into_iter().map(str::to_owned).collect();
    let mut row_roles: Vec<Option<Vec<Role>>> = vec![None; names.len()];
    // A subject given twice with different roles matches no principal: its rights would be
    // the union of two role sets, which no single token holds.
    let mut conflicting: Vec<&str> = Vec::new();
    for p in principals {
        match names.iter().position(|n| n == p.subject.as_str()) {
            None => {
                names.push(p.subject.as_str().to_owned());
                row_roles.push(Some(p.roles.clone()));
            }
            Some(row) => {
                let subject = p.subject.as_str();
                if row_roles[row].as_ref().is_some_and(|r| *r != p.roles) {
                    conflicting.push(subject);
                    row_roles[row] = None;
                } else if !conflicting.contains(&subject) {
                    row_roles[row] = Some(p.roles.clone());
                }
            }
        }
    }
    let rows: HashMap<String, usize> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i))
        .collect();
    let mut collections = HashMap::new();
    let mut collection_names = Vec::new();
    let mut objects = Vec::new();
    let mut sensitive = HashSet::new();
    for (c, coll) in schema.collections().enumerate() {
        for (i, (f, _)) in coll.fields().iter().enumerate() {
            if coll.is_sensitive(i) {
                sensitive.insert(format!("{}.{f}", coll.name()));
            }
        }
        collections.insert(coll.name().as_str().to_owned(), (c, objects.len()));
        collection_names.push(coll.name().as_str().to_owned());
        objects.extend(
            coll.fields()
                .iter()
                .map(|(f, _)| format!("{}.{f}", coll.name())),
        );
    }
    let purposes: Vec<String> = schema
        .purposes()
        .iter()
        .map(|p| p.as_str().to_owned())
        .collect();
    let purpose_index: HashMap<String, usize> = purposes
        .iter()
        .enumerate()
        .map(|(i, p)| (p.clone(), i))
        .collect();
    let (n_objects, n_purposes, n_collections) =
        (objects.len(), purposes.len(), collection_names.len());

    // Rules by the subject or role they name, for the per-row walk below.
    let mut by_subject: HashMap<&str, Vec<&Rule>> = HashMap::new();
    for rule in text.rules() {
        if let Rule::Permission { subject, .. } = rule {
            by_subject.entry(subject.as_str()).or_default().push(rule);
        }
    }
    let extra = principals.iter().flat_map(|p| {
        p.roles
            .iter()
            .map(move |r| (p.subject.as_str(), r.as_str()))
    });
    let edges = grant_graph(text.rules(), extra);

    let mut reads = vec![Decision::Denied; names.len() * n_objects * n_purposes];
    let mut writes = vec![false; names.len() * n_objects];
    let mut deletes = vec![false; names.len() * n_collections];
    let mut finds = vec![false; names.len() * n_objects * n_purposes];
    // Per row: allow and deny marks per (action, object, purpose) cell.
    let cells = n_objects * n_purposes;
    for (row, name) in names.iter().enumerate() {
        let mut allow = vec![false; ACTION_BLOCKS * cells + n_collections * 2];
        let mut deny = allow.clone();
        let act_index = |a: Action| match a {
            Action::Read => 0,
            Action::ReadMasked => 1,
            Action::Write => 2,
            Action::Delete => 3,
            Action::ReadPseudonym => 4,
            Action::Find => 5,
        };
        for (member, _) in reachable(name, &edges) {
            for rule in by_subject
                .get(member)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let Rule::Permission {
                    object,
                    action,
                    purpose,
                    allow: eft,
                    ..
                } = rule
                else {
                    continue;
                };
                let marks = if *eft { &mut allow } else { &mut deny };
                if *action == Action::Delete {
                    for (c, coll) in collection_names.iter().enumerate() {
                        if object_matches(object, &format!("{coll}.*")) {
                            marks[ACTION_BLOCKS * cells + c] = true;
                        }
                    }
                    continue;
                }
                for (o, obj) in objects.iter().enumerate() {
                    if !object_matches(object, obj) {
                        continue;
                    }
                    for (p, pur) in purposes.iter().enumerate() {
                        let applies = match action {
                            // Writes are requested with purpose `*`: only `*` rules match.
                            Action::Write | Action::Delete => purpose == "*",
                            Action::Find
                            | Action::Read
                            | Action::ReadMasked
                            | Action::ReadPseudonym => purpose == "*" || purpose == pur,
                        };
                        if applies {
                            marks[act_index(*action) * cells + o * n_purposes + p] = true;
                        }
                    }
                }
            }
        }
        let granted = |a: Action, cell: usize| {
            let i = act_index(a) * cells + cell;
            allow[i] && !deny[i]
        };
        for o in 0..n_objects {
            for p in 0..n_purposes {
                let cell = o * n_purposes + p;
                reads[row * cells + cell] = if granted(Action::Read, cell) {
                    Decision::Plain
                } else if granted(Action::ReadMasked, cell) {
                    Decision::Masked
                } else if granted(Action::ReadPseudonym, cell) {
                    Decision::Pseudonym
                } else {
                    Decision::Denied
                };
            }
            // Write marks are set on every purpose column alike; column 0 stands for `*`.
            writes[row * n_objects + o] = n_purposes > 0 && granted(Action::Write, o * n_purposes);
        }
        for c in 0..n_collections {
            let i = ACTION_BLOCKS * cells + c;
            deletes[row * n_collections + c] = allow[i] && !deny[i];
        }
        for cell in 0..cells {
            finds[row * cells + cell] = granted(Action::Find, cell);
        }
    }
    DecisionTable {
        version: text.version(),
        names,
        rows,
        row_roles,
        collections,
        collection_names,
        objects,
        purposes,
        purpose_index,
        reads,
        writes,
        deletes,
        finds,
        sensitive,
        privileges: Privileges::compile(text),
    }
}

/// Checks the table against casbin's own evaluation of the same model, policy and grants: the
/// rows named in `only` if given, else every row. Returns how many rows were checked.
async fn cross_check(
    model: &str,
    text: &PolicyText,
    principals: &[Principal],
    table: &DecisionTable,
    only: Option<&HashSet<&str>>,
) -> Result<usize, PolicyError> {
    let rows: Vec<usize> = (0..table.names.len())
        .filter(|row| only.is_none_or(|names| names.contains(table.names[*row].as_str())))
        .collect();
    if rows.is_empty() {
        return Ok(0);
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
    // An evaluation error is a deny, never an allow.
    let enforce = |sub: &str, obj: &str, act: &str, pur: &str| {
        enforcer.enforce((sub, obj, act, pur)).unwrap_or(false)
    };
    let allowed =
        |sub: &str, obj: &str, act: Action, pur: &str| enforce(sub, obj, act.as_str(), pur);
    let cells_per_row = table.objects.len() * table.purposes.len();
    let total = rows.len() * cells_per_row;
    let step = if total <= FULL_CHECK_CELLS {
        1
    } else {
        (total / SAMPLE_CELLS).max(1) | 1
    };
    let mut i = 0;
    while i < total {
        let (row, cell) = (rows[i / cells_per_row], i % cells_per_row);
        let (o, p) = (cell / table.purposes.len(), cell % table.purposes.len());
        let (name, object, purpose) = (&table.names[row], &table.objects[o], &table.purposes[p]);
        let casbin = if allowed(name, object, Action::Read, purpose) {
            Decision::Plain
        } else if allowed(name, object, Action::ReadMasked, purpose) {
            Decision::Masked
        } else if allowed(name, object, Action::ReadPseudonym, purpose) {
            Decision::Pseudonym
        } else {
            Decision::Denied
        };
        let ours = table.reads[row * cells_per_row + cell];
        let write_ours = table.writes[row * table.objects.len() + o];
        let write_casbin = p != 0 || allowed(name, object, Action::Write, "*") == write_ours;
        let find_casbin =
            allowed(name, object, Action::Find, purpose) == table.finds[row * cells_per_row + cell];
        if casbin != ours || !write_casbin || !find_casbin {
            return Err(PolicyError::Model(format!(
                "the compiled table disagrees with casbin for {name} on {object} for {purpose}; refusing the policy"
            )));
        }
        i += step;
    }
    // casbin sees a subject's every token grant, as `holds_with` does.
    let mut grants: HashMap<&str, Vec<&str>> = HashMap::new();
    for p in principals {
        grants
            .entry(p.subject.as_str())
            .or_default()
            .extend(p.roles.iter().map(Role::as_str));
    }
    for (n, &row) in rows.iter().enumerate() {
        let name = &table.names[row];
        let roles = grants.get(name.as_str()).map_or(&[][..], Vec::as_slice);
        let held =
            Privilege::ALL.map(|privilege| table.privileges.holds_with(name, roles, privilege));
        // Every holder of a privilege is checked; of the large policies' other rows, a spread
        // sample (each enforce scans every rule: all rows of a 15,000-rule policy cost a minute).
        if total > FULL_CHECK_CELLS && !held.contains(&true) && n % 64 != 0 {
            continue;
        }
        for (privilege, ours) in Privilege::ALL.into_iter().zip(held) {
            if enforce(name, privilege.object(), privilege.action(), "*") != ours {
                return Err(PolicyError::Model(format!(
                    "the compiled table disagrees with casbin for {name} on `{}`; refusing the policy",
                    privilege.name()
                )));
            }
        }
    }
    for (n, &row) in rows.iter().enumerate() {
        let name = &table.names[row];
        if total > FULL_CHECK_CELLS && n % 16 != 0 {
            continue;
        }
        for (c, coll) in table.collection_names.iter().enumerate() {
            let ours = table.deletes[row * table.collection_names.len() + c];
            if allowed(name, &format!("{coll}.*"), Action::Delete, "*") != ours {
                return Err(PolicyError::Model(format!(
                    "the compiled table disagrees with casbin for {name} deleting {coll}; refusing the policy"
                )));
            }
        }
    }
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_model_is_the_supported_one() {
        let shipped = include_str!("../../policies/model.conf");
        assert_eq!(check_model(shipped), Ok(()));
        let allow_by_default = shipped.replace(
            "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
            "!some(where (p.eft == deny))",
        );
        assert!(check_model(&allow_by_default).is_err());
        let any_object = shipped.replace("keyMatch(r.obj, p.obj)", "true");
        assert!(check_model(&any_object).is_err());
    }

    /// A sensitive read that widens along Denied < Pseudonym < Masked < Plain needs a second
    /// approver; one that narrows does not.
    #[test]
    fn pseudonym_ranks_between_denied_and_masked_in_escalations() {
        let schema = Schema::parse(
            r#"purposes = ["analytics"]
[collections.customers]
fields = [{ name = "ssn", type = "ssn", sensitive = true }]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let table = |action: &str| {
            let text = if action.is_empty() {
                "g, role:a, role:b\n".to_owned()
            } else {
                format!("p, role:a, customers.ssn, {action}, analytics, allow\n")
            };
            let text = PolicyText::parse(&text, &schema, 1).unwrap_or_else(|e| panic!("{e}"));
            build(&text, &schema, &[])
        };
        let order = ["", "read_pseudonym", "read_masked", "read"];
        let coll = schema
            .collection("customers", "c")
            .unwrap_or_else(|e| panic!("{e}"));
        let decisions: Vec<Decision> = order
            .iter()
            .map(|a| table(a).read_by_name("role:a", coll, 0, "analytics"))
            .collect();
        assert_eq!(
            decisions,
            [
                Decision::Denied,
                Decision::Pseudonym,
                Decision::Masked,
                Decision::Plain
            ]
        );
        assert!(decisions.windows(2).all(|w| w[0] < w[1]));
        for (i, before) in order.iter().enumerate() {
            for (j, after) in order.iter().enumerate() {
                let (before, after) = (table(before), table(after));
                let changes = before.changes_to(&after);
                let escalates = before
                    .escalations_to(&after, &changes)
                    .iter()
                    .any(|e| matches!(e, Escalation::SensitiveRead(_)));
                assert_eq!(escalates, j > i, "{} -> {}", order[i], order[j]);
            }
        }
    }

    /// A token issued, rotated or revoked checks against casbin only the rows whose grants it
    /// changed, and builds the table a full compile builds.
    #[tokio::test]
    async fn a_principal_change_checks_only_the_rows_it_changes() {
        let schema = Schema::parse(include_str!("../../policies/schema.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let model = include_str!("../../policies/model.conf");
        // The shipped policy, plus a subject it names itself.
        let policy = format!(
            "{}\ng, svc:named, role:support\n",
            include_str!("../../policies/policy.csv")
        );
        let text = PolicyText::parse(&policy, &schema, 1).unwrap_or_else(|e| panic!("{e}"));
        let p = |subject: &str, role: &str| {
            Principal::new(
                crate::domain::Subject::parse(subject, "s").unwrap_or_else(|e| panic!("{e}")),
                vec![Role::parse(role, "r").unwrap_or_else(|e| panic!("{e}"))],
            )
        };
        let before = vec![
            p("svc:a", "role:support"),
            p("svc:b", "role:admin"),
            p("svc:named", "role:support"),
        ];
        let with = |extra: Principal| {
            let mut after = before.clone();
            after.push(extra);
            after
        };
        let cases = [
            (
                "issued to a new subject",
                with(p("svc:c", "role:marketing")),
                1,
            ),
            (
                "svc:b revoked",
                vec![p("svc:a", "role:support"), p("svc:named", "role:support")],
                0,
            ),
            (
                "svc:named, which the policy names, revoked: its row stays",
                vec![p("svc:a", "role:support"), p("svc:b", "role:admin")],
                1,
            ),
            (
                "svc:a given a second role set",
                with(p("svc:a", "role:admin")),
                1,
            ),
            ("rotated", before.clone(), 0),
        ];
        for (case, after, rows) in cases {
            let (table, checked) = recompile(model, &text, &schema, &after, &before)
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(checked, rows, "{case}");
            let full = compile(model, &text, &schema, &after)
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(table.names, full.names, "{case}");
            assert_eq!(table.row_roles, full.row_roles, "{case}");
            assert!(
                table.reads == full.reads
                    && table.writes == full.writes
                    && table.deletes == full.deletes
                    && table.finds == full.finds,
                "{case}"
            );
        }
        // A full compile checks every row.
        let text_rows = text.names().len();
        let checked = cross_check(model, &text, &before, &build(&text, &schema, &before), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(checked, text_rows + 2);
    }

    #[test]
    fn key_match_on_our_objects() {
        assert!(object_matches("customers.*", "customers.email"));
        assert!(object_matches("customers.email", "customers.email"));
        assert!(!object_matches("customers.email", "customers.email2"));
        assert!(!object_matches("customers.*", "vendors.email"));
    }
}
