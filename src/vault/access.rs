//! The privileges that lie outside the per-field record policy (managing tokens, administering
//! policies, reading the audit log): which roles hold each, and the one check of them all.
//!
//! Depends on `domain` only.

use super::Error;
use crate::domain::Principal;

/// The role that holds every privilege, and the one the first token of a vault gets.
pub const ADMIN_ROLE: &str = "role:admin";

/// A privilege held by role, outside the per-field record policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Show, apply, roll back, diff, dry-run and explain policies.
    AdministerPolicies,
    /// Issue, list and revoke tokens.
    ManageTokens,
    /// Rotate the key epochs.
    ManageKeys,
    /// See the key epochs and the rotation in progress.
    ReadKeyStatus,
    /// Query, follow, verify and export the audit log.
    ReadAudit,
}

impl Privilege {
    /// The roles that hold it.
    pub fn roles(self) -> &'static [&'static str] {
        match self {
            Self::AdministerPolicies => &[ADMIN_ROLE, "role:security_admin"],
            Self::ManageTokens | Self::ManageKeys => &[ADMIN_ROLE],
            Self::ReadKeyStatus => &[ADMIN_ROLE, "role:security_admin", "role:auditor"],
            Self::ReadAudit => &["role:auditor", ADMIN_ROLE],
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::AdministerPolicies => "administer policies",
            Self::ManageTokens => "manage tokens",
            Self::ManageKeys => "rotate keys",
            Self::ReadKeyStatus => "see the key status",
            Self::ReadAudit => "read the audit log",
        }
    }
}

/// Checks that `by` holds `privilege`.
///
/// # Errors
/// `PermissionDenied` naming the roles that hold it.
pub fn require(by: &Principal, privilege: Privilege) -> Result<(), Error> {
    if by.has_any_role(privilege.roles()) {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{} may not {}: that needs {}",
            by.subject,
            privilege.what(),
            privilege.roles().join(" or ")
        )))
    }
}
