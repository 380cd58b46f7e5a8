//! Who is calling: a namespaced subject (`svc:crm`, `user:alice`, `vendor:acme`), its roles
//! (`role:support`), and the purposes its token is bound to, if any.
//!
//! Subjects and roles live in different namespaces so that a subject named like a role gains
//! nothing: `role:` is reserved for roles and refused as a subject. `vendor:` subjects are third
//! parties: their tokens must expire and be bound to purposes (enforced where tokens are issued).

use std::fmt;

use super::{InvalidInput, Purpose};

/// The namespaces a subject may use.
const SUBJECT_NAMESPACES: [&str; 4] = ["svc:", "user:", "app:", "vendor:"];
const VENDOR_NAMESPACE: &str = "vendor:";
const ROLE_NAMESPACE: &str = "role:";

/// A namespaced caller identity, e.g. `svc:crm`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(String);

/// A namespaced role, e.g. `role:support`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Role(String);

/// The ASCII name after a namespace prefix: `[a-z0-9][a-z0-9_.-]{0,62}`.
fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'a'..=b'z' | b'0'..=b'9'))
        && s.len() <= 63
        && bytes.all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
}

impl Subject {
    /// Parses a subject.
    ///
    /// # Errors
    /// `InvalidInput` unless `s` is `svc:NAME`, `user:NAME`, `app:NAME` or `vendor:NAME`.
    pub fn parse(s: &str, field: &str) -> Result<Self, InvalidInput> {
        let ok = SUBJECT_NAMESPACES
            .iter()
            .any(|ns| s.strip_prefix(ns).is_some_and(is_name));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidInput::new(
                field,
                "must be a namespaced subject: svc:NAME, user:NAME, app:NAME or vendor:NAME \
                 (lowercase)",
            ))
        }
    }

    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether it is a third party (`vendor:NAME`), whose tokens must expire and be bound to
    /// purposes.
    pub fn is_vendor(&self) -> bool {
        self.0.starts_with(VENDOR_NAMESPACE)
    }
}

impl Role {
    /// Parses a role.
    ///
    /// # Errors
    /// `InvalidInput` unless `s` is `role:NAME`.
    pub fn parse(s: &str, field: &str) -> Result<Self, InvalidInput> {
        if s.strip_prefix(ROLE_NAMESPACE).is_some_and(is_name) {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidInput::new(
                field,
                "must be a namespaced role: role:NAME (lowercase)",
            ))
        }
    }

    /// The role as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// An authenticated caller. Only the authentication layer makes one from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Who.
    pub subject: Subject,
    /// With which roles (sorted, no duplicates, at least one).
    pub roles: Vec<Role>,
    /// The only purposes its token may declare (sorted, no duplicates); `None`: any purpose
    /// the policy allows its roles. Not part of the policy: checked where a purpose is declared.
    pub purposes: Option<Vec<Purpose>>,
    /// The identity (SAN URI) of the client certificate the call came over, when the vault
    /// requires client certificates (mTLS); set by the authenticator, recorded in audit events.
    pub certificate: Option<String>,
}

impl Principal {
    /// Makes a principal bound to no purpose; roles are sorted and deduplicated.
    pub fn new(subject: Subject, mut roles: Vec<Role>) -> Self {
        roles.sort();
        roles.dedup();
        Self {
            subject,
            roles,
            purposes: None,
            certificate: None,
        }
    }

    /// The same principal bound to `purposes` (sorted and deduplicated; `None`: unbound).
    #[must_use]
    pub fn with_purposes(mut self, purposes: Option<Vec<Purpose>>) -> Self {
        self.purposes = purposes.map(|mut p| {
            p.sort();
            p.dedup();
            p
        });
        self
    }

    /// Whether its token may declare `purpose`.
    pub fn may_declare(&self, purpose: &Purpose) -> bool {
        self.purposes.as_ref().is_none_or(|p| p.contains(purpose))
    }

    /// The purposes it is bound to, joined with commas (empty when unbound).
    pub fn purposes_text(&self) -> String {
        self.purposes
            .iter()
            .flatten()
            .map(Purpose::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Whether the principal holds any of `roles`.
    pub fn has_any_role(&self, roles: &[&str]) -> bool {
        self.roles.iter().any(|r| roles.contains(&r.as_str()))
    }

    /// The role names, as strings.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| r.as_str().to_owned()).collect()
    }

    /// The roles joined with commas, for messages and logs.
    pub fn roles_text(&self) -> String {
        self.roles
            .iter()
            .map(Role::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_enforced() {
        assert!(Subject::parse("svc:crm", "s").is_ok());
        assert!(Subject::parse("user:alice.smith", "s").is_ok());
        assert!(Subject::parse("vendor:acme", "s").is_ok_and(|s| s.is_vendor()));
        assert!(Subject::parse("svc:vendor", "s").is_ok_and(|s| !s.is_vendor()));
        assert!(Subject::parse("role:admin", "s").is_err());
        assert!(Subject::parse("admin", "s").is_err());
        assert!(Subject::parse("svc:", "s").is_err());
        assert!(Subject::parse("svc:CRM", "s").is_err());
        assert!(Role::parse("role:support", "r").is_ok());
        assert!(Role::parse("svc:crm", "r").is_err());
        assert!(Role::parse("role:a,b", "r").is_err());
    }
}
