//! The policy text: casbin CSV lines, parsed and validated before anything is applied.
//!
//! ```text
//! p, <role or subject>, <collection>.<field | *>, <read | read_masked | read_pseudonym | write | delete | find>, <purpose | *>, <allow | deny>
//! p, <role or subject>, <policies | tokens | keys | honeytokens | consent | holds | retention | audit>, <manage | read>, *, <allow | deny>
//! g, <role or subject>, <role>
//! ```
//!
//! Validation fails closed, naming the line: unknown collections, fields, actions, privileges or
//! purposes,
//! subjects outside their namespace, write/delete rules bound to a purpose, role cycles, and
//! role chains deeper than casbin evaluates.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Privilege;
use crate::domain::{Role, Schema, Subject};

/// The longest role chain a policy may hold. casbin's role manager stops at 10 hops; a token's
/// own grant adds one, and we keep a margin so no chain is ever cut short.
pub const MAX_ROLE_DEPTH: usize = 8;

/// An action a rule can allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    /// Shred a record of the collection (object `collection.*`).
    Delete,
    /// Find records by an indexed field's value, for a purpose (`FindRecords`).
    Find,
    /// Read a field in plaintext.
    Read,
    /// Read a field masked.
    ReadMasked,
    /// Read a field as a pseudonym: a keyed token per purpose (a date: its year only).
    ReadPseudonym,
    /// Set or clear a field.
    Write,
}

impl Action {
    /// Every action.
    pub const ALL: [Self; 6] = [
        Self::Delete,
        Self::Find,
        Self::Read,
        Self::ReadMasked,
        Self::ReadPseudonym,
        Self::Write,
    ];

    /// The action as written in policy lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Find => "find",
            Self::Read => "read",
            Self::ReadMasked => "read_masked",
            Self::ReadPseudonym => "read_pseudonym",
            Self::Write => "write",
        }
    }

    /// Parses an action name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// A policy that cannot be applied, or a model this vault cannot evaluate.
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

/// One validated rule, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rule {
    /// `g, member, role`: member (a role or subject) inherits role.
    Grant {
        line: usize,
        member: String,
        role: String,
    },
    /// `p, ...`: allows or denies an action.
    Permission {
        line: usize,
        subject: String,
        object: String,
        action: Action,
        purpose: String,
        allow: bool,
    },
    /// `p, subject, <object>, <action>, *, eft`: allows or denies a privilege.
    Privilege {
        line: usize,
        subject: String,
        privilege: Privilege,
        allow: bool,
    },
}

impl Rule {
    /// The rule as one canonical policy line.
    pub(super) fn canonical(&self) -> String {
        match self {
            Self::Grant { member, role, .. } => format!("g, {member}, {role}"),
            Self::Permission {
                subject,
                object,
                action,
                purpose,
                allow,
                ..
            } => {
                let eft = if *allow { "allow" } else { "deny" };
                format!(
                    "p, {subject}, {object}, {}, {purpose}, {eft}",
                    action.as_str()
                )
            }
            Self::Privilege {
                subject,
                privilege,
                allow,
                ..
            } => {
                let eft = if *allow { "allow" } else { "deny" };
                format!(
                    "p, {subject}, {}, {}, *, {eft}",
                    privilege.object(),
                    privilege.action()
                )
            }
        }
    }

    /// The line the rule came from.
    #[cfg(test)]
    pub(super) fn line(&self) -> usize {
        match self {
            Self::Grant { line, .. }
            | Self::Permission { line, .. }
            | Self::Privilege { line, .. } => *line,
        }
    }
}

/// A validated policy: its rules and its version.
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
        let mut seen = BTreeSet::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = trimmed.split(',').map(str::trim).collect();
            let rule = match parts.as_slice() {
                ["p", subject, object, action, purpose, effect] => parse_permission(
                    line,
                    schema,
                    [*subject, *object, *action, *purpose, *effect],
                )?,
                ["g", member, role] => {
                    let member = principal_name(member, line, "member")?;
                    let role = Role::parse(role, "role")
                        .map_err(|e| line_err(line, format!("role {role:?}: {}", e.problem)))?;
                    Rule::Grant {
                        line,
                        member,
                        role: role.as_str().to_owned(),
                    }
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
            };
            if !seen.insert(rule.canonical()) {
                return Err(line_err(
                    line,
                    "the same rule appears earlier in the policy",
                ));
            }
            rules.push(rule);
        }
        check_role_graph(&rules)?;
        Ok(Self { version, rules })
    }

    /// The version of this policy.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// How many rules (p and g lines) the policy holds.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Each rule as one canonical line, in policy order.
    pub fn canonical_lines(&self) -> Vec<String> {
        self.rules.iter().map(Rule::canonical).collect()
    }

    pub(super) fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Every role and subject named anywhere in the policy.
    pub(super) fn names(&self) -> BTreeSet<&str> {
        let mut names = BTreeSet::new();
        for rule in &self.rules {
            match rule {
                Rule::Grant { member, role, .. } => {
                    names.insert(role.as_str());
                    names.insert(member.as_str());
                }
                Rule::Permission { subject, .. } | Rule::Privilege { subject, .. } => {
                    names.insert(subject.as_str());
                }
            }
        }
        names
    }

    /// Whether any rule grants or denies a privilege (policies written before privileges
    /// moved into the policy hold none).
    pub fn has_privilege_rules(&self) -> bool {
        self.rules
            .iter()
            .any(|r| matches!(r, Rule::Privilege { .. }))
    }

    /// The rules as casbin CSV lines.
    pub(super) fn to_casbin_csv(&self) -> String {
        let mut out = String::new();
        for rule in &self.rules {
            out.push_str(&rule.canonical());
            out.push('\n');
        }
        out
    }
}

fn parse_permission(
    line: usize,
    schema: &Schema,
    [subject, object, action, purpose, effect]: [&str; 5],
) -> Result<Rule, PolicyError> {
    let subject = principal_name(subject, line, "subject")?;
    if !object.contains('.') {
        return parse_privilege(line, subject, [object, action, purpose, effect]);
    }
    let action = Action::parse(action).ok_or_else(|| {
        line_err(
            line,
            format!(
                "unknown action {action:?}: use read, read_masked, read_pseudonym, write, delete \
                 or find"
            ),
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
        let (index, _) = coll
            .field(field, "object")
            .map_err(|e| line_err(line, e.problem))?;
        if action == Action::Find && !coll.is_indexed(index) {
            return Err(line_err(
                line,
                format!(
                    "find applies to indexed fields; {collection}.{field} is not `indexed` in schema.toml"
                ),
            ));
        }
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
    let allow = parse_effect(line, effect)?;
    Ok(Rule::Permission {
        line,
        subject,
        object: object.to_owned(),
        action,
        purpose: purpose.to_owned(),
        allow,
    })
}

fn parse_effect(line: usize, effect: &str) -> Result<bool, PolicyError> {
    match effect {
        "allow" => Ok(true),
        "deny" => Ok(false),
        other => Err(line_err(
            line,
            format!("unknown effect {other:?}: use allow or deny"),
        )),
    }
}

/// `p, subject, <object>, <action>, *, eft` for an object without a dot: a privilege.
fn parse_privilege(
    line: usize,
    subject: String,
    [object, action, purpose, effect]: [&str; 4],
) -> Result<Rule, PolicyError> {
    if !Privilege::is_object(object) {
        return Err(line_err(
            line,
            format!(
                "object {object:?} must be <collection>.<field>, <collection>.* or one of policies, tokens, keys, audit"
            ),
        ));
    }
    let privilege = Privilege::parse(object, action).ok_or_else(|| {
        line_err(
            line,
            format!(
                "`{object} {action}` is not a privilege: use {}",
                Privilege::all_names()
            ),
        )
    })?;
    if purpose != "*" {
        return Err(line_err(
            line,
            "privilege rules apply to every purpose: use *",
        ));
    }
    let allow = parse_effect(line, effect)?;
    Ok(Rule::Privilege {
        line,
        subject,
        privilege,
        allow,
    })
}

/// The roles each member is granted directly, from `g` rules and extra grants.
pub(super) fn grant_graph<'a>(
    rules: &'a [Rule],
    extra: impl Iterator<Item = (&'a str, &'a str)>,
) -> HashMap<&'a str, Vec<&'a str>> {
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for rule in rules {
        if let Rule::Grant { member, role, .. } = rule {
            edges
                .entry(member.as_str())
                .or_default()
                .push(role.as_str());
        }
    }
    for (member, role) in extra {
        edges.entry(member).or_default().push(role);
    }
    edges
}

/// Rejects a role graph with a cycle or a chain deeper than `MAX_ROLE_DEPTH`, naming a line.
fn check_role_graph(rules: &[Rule]) -> Result<(), PolicyError> {
    let mut line_of: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for rule in rules {
        if let Rule::Grant { line, member, role } = rule {
            line_of.insert((member.as_str(), role.as_str()), *line);
        }
    }
    let edges = grant_graph(rules, std::iter::empty());
    // Longest chain from each node, memoized; a node on the current path means a cycle.
    let mut depth: HashMap<&str, usize> = HashMap::new();
    let mut starts: Vec<&str> = edges.keys().copied().collect();
    starts.sort_unstable();
    for start in starts {
        let mut path: Vec<(&str, usize)> = vec![(start, 0)];
        while let Some(&(node, next)) = path.last() {
            let children = edges.get(node).map(Vec::as_slice).unwrap_or_default();
            if let Some(&child) = children.get(next) {
                if let Some(top) = path.last_mut() {
                    top.1 += 1;
                }
                if path.iter().any(|(n, _)| *n == child) {
                    let line = line_of.get(&(node, child)).copied().unwrap_or(0);
                    return Err(line_err(
                        line,
                        format!("role cycle: {node} -> {child} leads back to {child}"),
                    ));
                }
                if !depth.contains_key(child) {
                    path.push((child, 0));
                }
            } else {
                let d = children
                    .iter()
                    .map(|c| depth.get(c).copied().unwrap_or(0) + 1)
                    .max()
                    .unwrap_or(0);
                if d > MAX_ROLE_DEPTH {
                    let line = children
                        .iter()
                        .filter_map(|c| line_of.get(&(node, *c)))
                        .min()
                        .copied()
                        .unwrap_or(0);
                    return Err(line_err(
                        line,
                        format!(
                            "role chain from {node} is {d} grants deep; at most {MAX_ROLE_DEPTH}"
                        ),
                    ));
                }
                depth.insert(node, d);
                path.pop();
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
        assert!(err("p, role:a, customers.email, find, support, allow").contains("indexed"));
        assert!(err("p, admin, customers.email, read, support, allow").contains("subject"));
        assert!(err("p, role:a, customers.email, write, support, allow").contains("every purpose"));
        assert!(err("p, role:a, customers.email, delete, *, allow").contains("whole records"));
        assert!(err("p, role:a, customers, read, *, allow").contains("<collection>.<field>"));
        assert!(err("p, role:a, policies, read, *, allow").contains("not a privilege"));
        assert!(err("p, role:a, audit, manage, *, allow").contains("line 1: `audit manage`"));
        assert!(err("p, role:a, audit, read, support, allow").contains("every purpose"));
        assert!(err("p, role:a, keys, read, *, maybe").contains("unknown effect"));
        assert!(
            err("p, role:a, keys, read, *, allow\np, role:a, keys, read, *, allow")
                .contains("line 2")
        );
        assert!(err("p, role:a, customers.email, read, support").contains("expected `p,"));
        assert!(err("x, y").contains("must start"));
        let cycle = err("g, role:a, role:b\ng, role:b, role:c\ng, role:c, role:a");
        assert!(
            cycle.contains("cycle") && cycle.contains("line 3"),
            "{cycle}"
        );
        assert!(err("g, role:a, role:a").contains("cycle"));
        assert!(err("g, role:a, svc:crm").contains("role"));
        assert!(err("g, svc:a, role:b\ng, svc:a, role:b").contains("line 2: the same rule"));
        let deep: String = (0..=MAX_ROLE_DEPTH)
            .map(|i| format!("g, role:r{i}, role:r{}\n", i + 1))
            .collect();
        assert!(err(&deep).contains("deep"), "{}", err(&deep));
        let ok: String = (0..MAX_ROLE_DEPTH)
            .map(|i| format!("g, role:r{i}, role:r{}\n", i + 1))
            .collect();
        assert_eq!(err(&ok), "");
    }

    #[test]
    fn accepts_a_valid_policy() {
        let text = "# comment\np, role:a, customers.*, read, *, allow\ng, svc:crm, role:a\ng, role:b, role:a\n";
        let parsed = PolicyText::parse(text, &schema(), 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed.version(), 3);
        assert_eq!(parsed.rule_count(), 3);
        assert_eq!(parsed.rules()[0].line(), 2);
        assert_eq!(
            parsed.names().into_iter().collect::<Vec<_>>(),
            ["role:a", "role:b", "svc:crm"]
        );
        assert_eq!(
            parsed.canonical_lines()[0],
            "p, role:a, customers.*, read, *, allow"
        );
    }

    /// The repository's starting policy, or a subset of its lines, as valid inputs.
    fn policies() -> impl proptest::strategy::Strategy<Value = Vec<u8>> + Clone {
        use proptest::prelude::*;
        let lines: Vec<&'static str> = include_str!("../../policies/policy.csv").lines().collect();
        proptest::collection::vec(any::<bool>(), lines.len()).prop_map(move |keep| {
            lines
                .iter()
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|(l, _)| format!("{l}\n"))
                .collect::<String>()
                .into_bytes()
        })
    }

    #[test]
    fn fuzz_policy_csv() {
        use proptest::prelude::*;
        let schema = Schema::parse(include_str!("../../policies/schema.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let dict = &[
            ",",
            "\n",
            "\r",
            "#",
            " ",
            "p",
            "g",
            "p, ",
            "g, ",
            "role:",
            "user:",
            "svc:",
            "*",
            ".",
            "customers.",
            "allow",
            "deny",
            "read",
            "read_masked",
            "write",
            "delete",
            "find",
            "support",
            "role:admin",
            "policies",
            "manage",
            "audit",
            "\u{feff}",
            "\u{2028}",
        ];
        crate::testing::fuzz(
            "policy CSV",
            256,
            crate::testing::inputs(policies(), dict),
            |input| {
                if let Ok(policy) = PolicyText::parse(&input.text(), &schema, 2) {
                    // What parses prints back to a text that parses to the same rules.
                    let canonical = policy.canonical_lines().join("\n");
                    let again = PolicyText::parse(&canonical, &schema, 2);
                    prop_assert_eq!(
                        again.ok().map(|p| p.canonical_lines()),
                        Some(policy.canonical_lines())
                    );
                }
                Ok(())
            },
        );
    }
}
