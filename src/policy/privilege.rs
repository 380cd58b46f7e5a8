//! The privileges outside the record policy (administering policies, managing tokens, keys,
//! honeytokens, consent, legal holds and retention, reading the key status, consent and the
//! audit log), held in the policy itself:
//!
//! ```text
//! p, <role or subject>, <policies | tokens | keys | honeytokens | consent | holds | retention | audit>, <manage | read>, *, <allow | deny>
//! ```
//!
//! A closed set: each privilege is one (object, action) pair, anything else is refused naming the
//! line. Compiled with the decision table: which names hold which privilege, through `g`
//! inheritance and under deny-overrides, so a check is a few hash lookups and no casbin.

use std::collections::HashMap;

use super::{
    PolicyText,
    compile::reachable,
    rules::{Rule, grant_graph},
};
use crate::domain::Principal;

/// A privilege held by role (or subject) in the policy, outside the per-field record policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Privilege {
    /// Show, apply, approve, roll back, diff, dry-run and explain policies (`policies manage`).
    AdministerPolicies,
    /// Record consent grants, revocations and opt-outs (`consent manage`).
    ManageConsent,
    /// Place, release and list legal holds (`holds manage`).
    ManageHolds,
    /// Create honeytoken (decoy) records (`honeytokens manage`).
    ManageHoneytokens,
    /// Rotate the key epochs (`keys manage`).
    ManageKeys,
    /// Plan and run retention sweeps (`retention manage`).
    ManageRetention,
    /// Issue, list and revoke tokens (`tokens manage`).
    ManageTokens,
    /// Query, follow, verify and export the audit log (`audit read`).
    ReadAudit,
    /// See a record's consent ledger and opt-outs (`consent read`).
    ReadConsent,
    /// See the key epochs and the rotation in progress (`keys read`).
    ReadKeyStatus,
}

impl Privilege {
    /// Every privilege.
    pub const ALL: [Self; 10] = [
        Self::AdministerPolicies,
        Self::ManageConsent,
        Self::ManageHolds,
        Self::ManageHoneytokens,
        Self::ManageKeys,
        Self::ManageRetention,
        Self::ManageTokens,
        Self::ReadAudit,
        Self::ReadConsent,
        Self::ReadKeyStatus,
    ];

    /// The object of its policy lines.
    pub fn object(self) -> &'static str {
        match self {
            Self::AdministerPolicies => "policies",
            Self::ManageConsent | Self::ReadConsent => "consent",
            Self::ManageHolds => "holds",
            Self::ManageHoneytokens => "honeytokens",
            Self::ManageRetention => "retention",
            Self::ManageKeys | Self::ReadKeyStatus => "keys",
            Self::ManageTokens => "tokens",
            Self::ReadAudit => "audit",
        }
    }

    /// The action of its policy lines.
    pub fn action(self) -> &'static str {
        match self {
            Self::AdministerPolicies
            | Self::ManageConsent
            | Self::ManageHolds
            | Self::ManageHoneytokens
            | Self::ManageKeys
            | Self::ManageRetention
            | Self::ManageTokens => "manage",
            Self::ReadAudit | Self::ReadConsent | Self::ReadKeyStatus => "read",
        }
    }

    /// `object action`, as in the policy and in messages.
    pub fn name(self) -> String {
        format!("{} {}", self.object(), self.action())
    }

    /// The privilege an (object, action) pair stands for.
    pub fn parse(object: &str, action: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.object() == object && p.action() == action)
    }

    /// Whether `object` is a privilege object (not `collection.field`).
    pub(super) fn is_object(object: &str) -> bool {
        Self::ALL.iter().any(|p| p.object() == object)
    }

    /// Every privilege, as `object action`, for messages.
    pub(super) fn all_names() -> String {
        Self::ALL
            .iter()
            .map(|p| p.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn bit(self) -> u16 {
        match self {
            Self::AdministerPolicies => 1,
            Self::ManageKeys => 2,
            Self::ManageTokens => 4,
            Self::ReadAudit => 8,
            Self::ReadKeyStatus => 16,
            Self::ManageHoneytokens => 32,
            Self::ManageConsent => 64,
            Self::ReadConsent => 128,
            Self::ManageHolds => 256,
            Self::ManageRetention => 512,
        }
    }
}

/// The privileges allowed and denied to one name, over everything it inherits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marks {
    allow: u16,
    deny: u16,
}

impl Marks {
    fn with(self, other: Self) -> Self {
        Self {
            allow: self.allow | other.allow,
            deny: self.deny | other.deny,
        }
    }

    fn holds(self, p: Privilege) -> bool {
        self.allow & p.bit() != 0 && self.deny & p.bit() == 0
    }
}

/// Which names hold which privileges in one policy version.
#[derive(Debug, Default)]
pub(super) struct Privileges {
    /// Per role or subject named in the policy: its marks through policy grants only (a token's
    /// roles are added when a principal is checked, so the answer follows the presented roles).
    by_name: HashMap<String, Marks>,
}

impl Privileges {
    /// Compiles the privilege rules of `text`.
    pub(super) fn compile(text: &PolicyText) -> Self {
        let mut direct: HashMap<&str, Marks> = HashMap::new();
        for rule in text.rules() {
            if let Rule::Privilege {
                subject,
                privilege,
                allow,
                ..
            } = rule
            {
                let m = direct.entry(subject.as_str()).or_default();
                if *allow {
                    m.allow |= privilege.bit();
                } else {
                    m.deny |= privilege.bit();
                }
            }
        }
        let edges = grant_graph(text.rules(), std::iter::empty());
        let by_name = text
            .names()
            .into_iter()
            .map(|name| {
                let marks = reachable(name, &edges)
                    .iter()
                    .filter_map(|(member, _)| direct.get(member))
                    .fold(Marks::default(), |acc, m| acc.with(*m));
                (name.to_owned(), marks)
            })
            .collect();
        Self { by_name }
    }

    fn marks<'a>(&self, subject: &str, roles: impl Iterator<Item = &'a str>) -> Marks {
        let of = |n: &str| self.by_name.get(n).copied().unwrap_or_default();
        roles.fold(of(subject), |acc, r| acc.with(of(r)))
    }

    /// Whether `principal` (its subject and its token's roles) holds `privilege`.
    pub(super) fn holds(&self, principal: &Principal, privilege: Privilege) -> bool {
        self.marks(
            principal.subject.as_str(),
            principal.roles.iter().map(|r| r.as_str()),
        )
        .holds(privilege)
    }

    /// Whether a name with the given token roles holds `privilege`.
    pub(super) fn holds_with(&self, name: &str, roles: &[&str], privilege: Privilege) -> bool {
        self.marks(name, roles.iter().copied()).holds(privilege)
    }

    /// The roles that hold `privilege`, sorted.
    pub(super) fn role_holders(&self, privilege: Privilege) -> Vec<String> {
        let mut out: Vec<String> = self
            .by_name
            .iter()
            .filter(|(n, m)| n.starts_with("role:") && m.holds(privilege))
            .map(|(n, _)| n.clone())
            .collect();
        out.sort();
        out
    }
}
