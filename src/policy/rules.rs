//! The policy text: casbin CSV lines, parsed and validated before anything is applied.
//!
//! ```text
//! p, <role or subject>, <collection>.<field | *>, <read | read_masked | write | delete>, <purpose | *>, <allow | deny>
//! g, <role or subject>, <role>
//! ```
//!
//! Validation fails closed, naming the line: unknown collections, fields, actions or purposes,
//! subjects outside their namespace, write/delete rules bound to a purpose, and role cycles.

use std::collections::{BTreeMap, BTreeSet};

use crate::domain::{Role, Schema, Subject};

/// An action a rule can allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Shred a record of the collection (object `collection.*`).
    Delete,
    /// Read a field in plaintext.
    Read,
    /// Read a field masked.
    ReadMasked,
    /// Set or clear a field.
    Write,
}

impl Action {
    /// The action as written in policy lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Read => "read",
            Self::ReadMasked => "read_masked",
            Self::Write => "write",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Delete, Self::Read, Self::ReadMasked, Self::Write]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// A policy that cannot be applied, or a model casbin cannot load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A policy line is wrong.
    #[error("policy line {line}: {problem}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        problem: String,
    },
    /// The model or the whole policy cannot be evaluated.
    #[error("policy model: {0}")]
    Model(String),
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rule {
    /// `g, member, role`: member (a role or subject) inherits role.
    Grant { member: String, role: String },
    /// `p, ...`: allows or denies an action.
    Permission {
        subject: String,
        object: String,
        action: Action,
        purpose: String,
        allow: bool,
    },
}

/// A validated policy: its rules and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyText {
    version: u64,
    rules: Vec<Rule>,
}

fn line_err(line: usize, problem: impl Into<String>) -> PolicyError {
    PolicyError::Line {
        line,
        problem: problem.into(),
    }
}

/// A role or a subject, each in its namespace.
fn principal_name(s: &str, line: usize, what: &str) -> Result<String, PolicyError> {
    if s.starts_with("role:") {
        Role::parse(s, what).map(|r| r.as_str().to_owned())
    } else {
        Subject::parse(s, what).map(|r| r.as_str().to_owned())
    }
    .map_err(|e| line_err(line, format!("{what} {s:?}: {}", e.problem)))
}

impl PolicyText {
    /// Parses and validates a policy text against the schema.
    ///
    /// # Errors
    /// `PolicyError::Line` naming the first bad line and its problem.
    pub fn parse(text: &str, schema: &Schema, version: u64) -> Result<Self, PolicyError> {
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = trimmed.split(',').map(str::trim).collect();
            match parts.as_slice() {
                ["p", subject, object, action, purpose, effect] => {
                    rules.push(parse_permission(
                        line, schema, subject, object, action, purpose, effect,
                    )?);
                }
                ["g", member, role] => {
                    let member = principal_name(member, line, "member")?;
                    let role = Role::parse(role, "role")
                        .map_err(|e| line_err(line, format!("role {role:?}: {}", e.problem)))?;
                    rules.push(Rule::Grant {
                        member,
                        role: role.as_str().to_owned(),
                    });
                }
                ["p", ..] => {
                    return Err(line_err(
                        line,
                        "expected `p, <role or subject>, <collection>.<field|*>, <action>, <purpose|*>, <allow|deny>`",
                    ));
                }
                ["g", ..] => {
                    return Err(line_err(line, "expected `g, <role or subject>, <role>`"));
                }
                _ => return Err(line_err(line, "a line must start with `p,` or `g,`")),
            }
        }
        check_cycles(text, &rules)?;
        Ok(Self { version, rules })
    }

    /// The version of this policy.
    pub fn version(&self) -> u64 {
        self.version
    }

    #[cfg(test)]
    pub(super) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every role named anywhere in the policy.
    pub(super) fn roles(&self) -> BTreeSet<&str> {
        let mut roles = BTreeSet::new();
        for rule in &self.rules {
            match rule {
                Rule::Grant { member, role } => {
                    roles.insert(role.as_str());
                    if member.starts_with("role:") {
                        roles.insert(member.as_str());
                    }
                }
                Rule::Permission { subject, .. } => {
                    if subject.starts_with("role:") {
                        roles.insert(subject.as_str());
                    }
                }
            }
        }
        roles
    }

    /// The rules as casbin CSV lines.
    pub(super) fn to_casbin_csv(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            match rule {
                Rule::Grant { member, role } => {
                    out.push_str(&format!("g, {member}, {role}\n"));
                }
                Rule::Permission {
                    subject,
                    object,
                    action,
                    purpose,
                    allow,
                } => {
                    let eft = if *allow { "allow" } else { "deny" };
                    out.push_str(&format!(
                        "p, {subject}, {object}, {}, {purpose}, {eft}\n",
                        action.as_str()
                    ));
                }
            }
        }
        out
    }
}

fn parse_permission(
    line: usize,
    schema: &Schema,
    subject: &str,
    object: &str,
    action: &str,
    purpose: &str,
    effect: &str,
) -> Result<Rule, PolicyError> {
    let subject = principal_name(subject, line, "subject")?;
    let action = Action::parse(action).ok_or_else(|| {
        line_err(
            line,
            format!("unknown action {action:?}: use read, read_masked, write or delete"),
        )
    })?;
    let (collection, field) = object.split_once('.').ok_or_else(|| {
        line_err(
            line,
            format!("object {object:?} must be <collection>.<field> or <collection>.*"),
        )
    })?;
    let coll = schema
        .collection(collection, "object")
        .map_err(|e| line_err(line, e.problem))?;
    if field != "*" {
        coll.field(field, "object")
            .map_err(|e| line_err(line, e.problem))?;
    }
    if action == Action::Delete && field != "*" {
        return Err(line_err(
            line,
            "delete applies to whole records: use <collection>.*",
        ));
    }
    if purpose != "*" {
        schema
            .purpose(purpose, "purpose")
            .map_err(|e| line_err(line, e.problem))?;
    }
    if matches!(action, Action::Delete | Action::Write) && purpose != "*" {
        return Err(line_err(
            line,
            "write and delete rules apply to every purpose: use *",
        ));
    }
    let allow = match effect {
        "allow" => true,
        "deny" => false,
        other => {
            return Err(line_err(
                line,
                format!("unknown effect {other:?}: use allow or deny"),
            ));
        }
    };
    Ok(Rule::Permission {
        subject,
        object: object.to_owned(),
        action,
        purpose: purpose.to_owned(),
        allow,
    })
}

/// Rejects a role graph with a cycle, naming a line of the cycle.
fn check_cycles(text: &str, rules: &[Rule]) -> Result<(), PolicyError> {
    let mut edges: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for rule in rules {
        if let Rule::Grant { member, role } = rule {
            edges
                .entry(member.as_str())
                .or_default()
                .push(role.as_str());
        }
    }
    // Iterative DFS with colors: 1 = on the stack, 2 = done.
    let mut color: BTreeMap<&str, u8> = BTreeMap::new();
    for &start in edges.keys() {
        if color.contains_key(start) {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        color.insert(start, 1);
        while let Some((node, next)) = stack.pop() {
            let children = edges.get(node).map(Vec::as_slice).unwrap_or_default();
            if let Some(&child) = children.get(next) {
                stack.push((node, next + 1));
                match color.get(child) {
                    Some(1) => {
                        let line = text
                            .lines()
                            .position(|l| {
                                let p: Vec<&str> = l.split(',').map(str::trim).collect();
                                p.as_slice() == ["g", node, child]
                            })
                            .map_or(0, |i| i + 1);
                        return Err(line_err(
                            line,
                            format!("role cycle: {node} -> {child} leads back to {child}"),
                        ));
                    }
                    Some(_) => {}
                    None => {
                        color.insert(child, 1);
                        stack.push((child, 0));
                    }
                }
            } else {
                color.insert(node, 2);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema::parse(
            r#"purposes = ["support", "billing"]
[collections.customers]
fields = [{ name = "email", type = "email" }, { name = "ssn", type = "ssn" }]"#,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn err(text: &str) -> String {
        PolicyText::parse(text, &schema(), 1)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn rejects_bad_lines_naming_them() {
        assert!(err("p, role:a, customers.nope, read, support, allow").contains("line 1"));
        assert!(err("\np, role:a, vendors.email, read, support, allow").contains("line 2"));
        assert!(err("p, role:a, customers.email, peek, support, allow").contains("unknown action"));
        assert!(err("p, role:a, customers.email, read, gossip, allow").contains("unknown purpose"));
        assert!(err("p, role:a, customers.email, read, support, maybe").contains("unknown effect"));
        assert!(err("p, admin, customers.email, read, support, allow").contains("subject"));
        assert!(err("p, role:a, customers.email, write, support, allow").contains("every purpose"));
        assert!(err("p, role:a, customers.email, delete, *, allow").contains("whole records"));
        assert!(err("x, y").contains("must start"));
        assert!(err("g, role:a, role:b\ng, role:b, role:c\ng, role:c, role:a").contains("cycle"));
        assert!(err("g, role:a, role:a").contains("cycle"));
        assert!(err("g, role:a, svc:crm").contains("role"));
    }

    #[test]
    fn accepts_a_valid_policy() {
        let text = "# comment\np, role:a, customers.*, read, *, allow\ng, svc:crm, role:a\ng, role:b, role:a\n";
        let parsed = PolicyText::parse(text, &schema(), 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.version(), 3);
        assert_eq!(parsed.rules().len(), 3);
        assert_eq!(
            parsed.roles().into_iter().collect::<Vec<_>>(),
            ["role:a", "role:b"]
        );
    }
}
