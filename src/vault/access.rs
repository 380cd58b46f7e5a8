//! The privileges that lie outside the per-field record policy (managing tokens and keys,
//! administering policies, reading the audit log): which roles hold each is in the live policy
//! (`p, role:auditor, audit, read, *, allow`), compiled with its decision table; this is the one
//! check of them all.
//!
//! Depends on `domain` and `policy` only.

use super::Error;
pub use crate::policy::Privilege;
use crate::{
    domain::Principal,
    policy::{DecisionTable, PolicyEngine},
};

/// The role the first token of a vault gets; the shipped policy gives it every privilege.
pub const ADMIN_ROLE: &str = "role:admin";

/// What a privilege lets one do, for messages.
fn what(privilege: Privilege) -> &'static str {
    match privilege {
        Privilege::AdministerPolicies => "administer policies",
        Privilege::ManageConsent => "record consent or opt-outs",
        Privilege::ManageHolds => "manage legal holds",
        Privilege::ManageHoneytokens => "create honeytoken records",
        Privilege::ManageKeys => "rotate keys",
        Privilege::ManageRetention => "plan or run retention sweeps",
        Privilege::ManageTokens => "manage tokens",
        Privilege::ReadAudit => "read the audit log",
        Privilege::ReadConsent => "see consent ledgers",
        Privilege::ReadKeyStatus => "see the key status",
    }
}

/// Checks that `by` holds `privilege` in the live policy of `policy`.
///
/// # Errors
/// `PermissionDenied` naming the roles that hold it in the live policy.
pub fn require(policy: &PolicyEngine, by: &Principal, privilege: Privilege) -> Result<(), Error> {
    require_in(&policy.table(), by, privilege)
}

/// Checks that `by` holds `privilege` in the policy version `table` was compiled from (for a
/// call that decides everything under one version).
///
/// # Errors
/// `PermissionDenied` naming the roles that hold it in that version.
pub fn require_in(
    table: &DecisionTable,
    by: &Principal,
    privilege: Privilege,
) -> Result<(), Error> {
    if table.holds(by, privilege) {
        return Ok(());
    }
    let holders = table.holders(privilege);
    let needs = if holders.is_empty() {
        "no role holds it".to_owned()
    } else {
        format!("that needs {}", holders.join(" or "))
    };
    Err(Error::PermissionDenied(format!(
        "{} may not {}: {needs} (`{}` in policy version {})",
        by.subject,
        what(privilege),
        privilege.name(),
        table.version()
    )))
}
