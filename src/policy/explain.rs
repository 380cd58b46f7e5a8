//! "May S do A on F for P, and why?": the rules that match a request, the chain of grants that
//! makes each apply, and the decision they produce under deny-overrides.

use super::{
    Action, PolicyText,
    compile::{object_matches, reachable},
    rules::{Rule, grant_graph},
};
use crate::domain::Principal;

/// One rule that matched, and how it reached the asker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatchedRule {
    /// Its line in the policy text.
    pub line: usize,
    /// The rule, canonical.
    pub rule: String,
    /// The grant chain from the asker to the rule's subject (`svc:crm -> role:support`).
    pub via: Vec<String>,
    /// Whether it allows (or denies).
    pub allow: bool,
    /// The action it is about (`read`, `read_masked` and `read_pseudonym` all matter for a
    /// read).
    pub action: Action,
}

/// The rules of `text` (plus principals' grants) that match `name` doing `actions` on `object`
/// for `purpose`.
pub(super) fn matching_rules(
    text: &PolicyText,
    principals: &[Principal],
    name: &str,
    actions: &[Action],
    object: &str,
    purpose: &str,
) -> Vec<MatchedRule> {
    let extra = principals.iter().flat_map(|p| {
        p.roles
            .iter()
            .map(move |r| (p.subject.as_str(), r.as_str()))
    });
    let edges = grant_graph(text.rules(), extra);
    let reach = reachable(name, &edges);
    let mut out = Vec::new();
    for rule in text.rules() {
        let Rule::Permission {
            line,
            subject,
            object: pattern,
            action,
            purpose: p,
            allow,
        } = rule
        else {
            continue;
        };
        let Some((_, path)) = reach.iter().find(|(n, _)| *n == subject.as_str()) else {
            continue;
        };
        if actions.contains(action) && object_matches(pattern, object) && (p == "*" || p == purpose)
        {
            out.push(MatchedRule {
                line: *line,
                rule: rule.canonical(),
                via: path.iter().map(|s| (*s).to_owned()).collect(),
                allow: *allow,
                action: *action,
            });
        }
    }
    out
}
