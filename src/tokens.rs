//! Bearer tokens: issued once, stored only as SHA-256 hashes in the `meta` keyspace, compared in
//! constant time, each mapped to a subject and its roles.
//!
//! Tokens are 256 random bits, so a fast hash is enough: there is nothing to brute-force.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use rand::{RngCore, rngs::OsRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{
    audit::{Audit, Event},
    domain::{InvalidInput, Principal, Role, Subject},
    storage::{Batch, Keyspace, Store},
    vault::Error,
};

const PREFIX: &[u8] = b"token/";
const TOKEN_PREFIX: &str = "sr_";
/// The role that may issue tokens.
pub const ADMIN_ROLE: &str = "role:admin";

#[derive(Serialize, Deserialize)]
struct StoredToken {
    subject: String,
    roles: Vec<String>,
    created_at_ms: i64,
}

/// An issued token, as the registry knows it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Whom it authenticates.
    pub principal: Principal,
    /// When it was issued (ms since the epoch).
    pub created_at_ms: i64,
    /// The first 8 hex digits of its hash: enough to tell tokens apart, useless to forge one.
    pub id: String,
}

/// The registry of issued tokens, held in memory and in the store.
pub struct TokenRegistry {
    by_hash: RwLock<HashMap<[u8; 32], Issued>>,
}

impl std::fmt::Debug for TokenRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self
            .by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("TokenRegistry")
            .field("tokens", &n)
            .finish_non_exhaustive()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenRegistry {
    /// Loads every stored token.
    ///
    /// # Errors
    /// `Unavailable` if the store fails, `DataLoss` if a stored token is malformed.
    pub fn load(store: Arc<dyn Store>) -> Result<Self, Error> {
        // Tokens are read once here; new ones are written through the audit log.
        let mut by_hash = HashMap::new();
        for (key, value) in store.scan_prefix(Keyspace::Meta, PREFIX)? {
            let hash: [u8; 32] = key[PREFIX.len()..]
                .try_into()
                .map_err(|_| Error::DataLoss)?;
            let stored: StoredToken =
                serde_json::from_slice(&value).map_err(|_| Error::DataLoss)?;
            let subject =
                Subject::parse(&stored.subject, "subject").map_err(|_| Error::DataLoss)?;
            let roles = stored
                .roles
                .iter()
                .map(|r| Role::parse(r, "role"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| Error::DataLoss)?;
            let principal = Principal::new(subject, roles);
            let id = hex::encode(&hash[..4]);
            by_hash.insert(
                hash,
                Issued {
                    principal,
                    created_at_ms: stored.created_at_ms,
                    id,
                },
            );
        }
        Ok(Self {
            by_hash: RwLock::new(by_hash),
        })
    }

    /// Every distinct principal that holds a token.
    pub fn principals(&self) -> Vec<Principal> {
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Principal> = Vec::new();
        for issued in map.values() {
            if !out.contains(&issued.principal) {
                out.push(issued.principal.clone());
            }
        }
        out
    }

    /// Whether any token exists.
    pub fn is_empty(&self) -> bool {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The principal a presented token stands for, if it is one we issued.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let h = hash(presented);
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        // The map is keyed by the hash; the final comparison is constant-time all the same.
        map.get_key_value(&h)
            .filter(|(k, _)| bool::from(k.ct_eq(&h)))
            .map(|(_, issued)| issued.principal.clone())
    }

    /// Checks that `by` may issue tokens and that `subject` keeps one set of roles.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role; `InvalidArgument` if the subject
    /// already holds tokens with other roles.
    pub fn check_issue(&self, by: &Principal, principal: &Principal) -> Result<(), Error> {
        Self::check_admin(by, "issue tokens")?;
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(other) = map
            .values()
            .map(|issued| &issued.principal)
            .find(|p| p.subject == principal.subject && p.roles != principal.roles)
        {
            return Err(InvalidInput::new(
                "roles",
                format!(
                    "{} already holds tokens with roles {}; a subject has one set of roles",
                    other.subject,
                    other.roles_text()
                ),
            )
            .into());
        }
        Ok(())
    }

    /// Issues a token for `principal` (already checked with `check_issue`), committing it with
    /// its audit `event`. The token is returned once; only its hash is stored.
    ///
    /// # Errors
    /// `Unavailable` if the store or the audit log fails; then no token exists.
    pub async fn issue(
        &self,
        principal: &Principal,
        now_ms: i64,
        audit: &Audit,
        event: Event,
    ) -> Result<Zeroizing<String>, Error> {
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(secret.as_mut());
        let token = Zeroizing::new(format!("{TOKEN_PREFIX}{}", hex::encode(secret.as_ref())));
        let h = hash(&token);
        let stored = StoredToken {
            subject: principal.subject.as_str().to_owned(),
            roles: principal.role_names(),
            created_at_ms: now_ms,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| Error::Internal(e.to_string()))?;
        let mut key = PREFIX.to_vec();
        key.extend_from_slice(&h);
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, key, value);
        let event = Event {
            detail: format!(
                "token issued to {} with roles {}",
                principal.subject,
                principal.roles_text()
            ),
            ..event
        };
        audit.commit(batch, vec![event]).await?;
        let issued = Issued {
            principal: principal.clone(),
            created_at_ms: now_ms,
            id: hex::encode(&h[..4]),
        };
        self.by_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(h, issued);
        Ok(token)
    }

    fn check_admin(by: &Principal, what: &str) -> Result<(), Error> {
        if by.has_any_role(&[ADMIN_ROLE]) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{} may not {what}: that needs {ADMIN_ROLE}",
                by.subject
            )))
        }
    }

    /// Every issued token (never the token itself), oldest first.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role.
    pub fn list(&self, by: &Principal) -> Result<Vec<Issued>, Error> {
        Self::check_admin(by, "list tokens")?;
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Issued> = map.values().cloned().collect();
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    /// Revokes every token of `subject`, committed with its audit `event`; returns how many.
    /// Calls with a revoked token fail UNAUTHENTICATED from then on.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role; `InvalidArgument` if it would leave
    /// no token with the admin role (nobody could issue tokens again); `Unavailable`.
    pub async fn revoke_subject(
        &self,
        by: &Principal,
        subject: &Subject,
        audit: &Audit,
        event: Event,
    ) -> Result<usize, Error> {
        Self::check_admin(by, "revoke tokens")?;
        let doomed: Vec<[u8; 32]> = {
            let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
            let doomed: Vec<[u8; 32]> = map
                .iter()
                .filter(|(_, i)| i.principal.subject == *subject)
                .map(|(h, _)| *h)
                .collect();
            let admin_left = map
                .iter()
                .any(|(h, i)| !doomed.contains(h) && i.principal.has_any_role(&[ADMIN_ROLE]));
            if !admin_left {
                return Err(InvalidInput::new(
                    "subject",
                    format!("revoking {subject} would leave no token with {ADMIN_ROLE}"),
                )
                .into());
            }
            doomed
        };
        let mut batch = Batch::new();
        for h in &doomed {
            let mut key = PREFIX.to_vec();
            key.extend_from_slice(h);
            batch.delete(Keyspace::Meta, key);
        }
        let event = Event {
            detail: format!("{} token(s) of {subject} revoked", doomed.len()),
            ..event
        };
        audit.commit(batch, vec![event]).await?;
        let mut map = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
        for h in &doomed {
            map.remove(h);
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        audit::AuditOptions,
        crypto::{Kek, KekId},
        storage::MemoryStore,
    };

    fn audit(store: &Arc<dyn Store>) -> Audit {
        Audit::open(
            Arc::clone(store),
            &Kek::generate(KekId(1)),
            AuditOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn principal(subject: &str, role: &str) -> Principal {
        Principal::new(
            Subject::parse(subject, "s").unwrap_or_else(|e| panic!("{e}")),
            vec![Role::parse(role, "r").unwrap_or_else(|e| panic!("{e}"))],
        )
    }

    #[tokio::test]
    async fn issues_authenticates_and_reloads_storing_only_hashes() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = TokenRegistry::load(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}"));
        let p = principal("svc:crm", "role:writer");
        let token = registry
            .issue(&p, 0, &audit(&store), Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(registry.authenticate(&token), Some(p.clone()));
        assert_eq!(registry.authenticate("sr_wrong"), None);
        for (key, value) in store.scan_prefix(Keyspace::Meta, b"").unwrap_or_default() {
            let raw = token.as_bytes();
            assert!(!key.windows(raw.len()).any(|w| w == raw));
            assert!(!value.windows(raw.len()).any(|w| w == raw));
        }
        let reloaded = TokenRegistry::load(store).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reloaded.authenticate(&token), Some(p));
    }

    #[tokio::test]
    async fn only_admins_issue_and_subjects_keep_their_roles() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = TokenRegistry::load(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}"));
        let writer = principal("svc:crm", "role:writer");
        let admin = principal("user:root", ADMIN_ROLE);
        assert!(registry.check_issue(&writer, &writer).is_err());
        assert!(registry.check_issue(&admin, &writer).is_ok());
        registry
            .issue(&writer, 0, &audit(&store), Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            registry
                .check_issue(&admin, &principal("svc:crm", "role:admin"))
                .is_err()
        );
        assert!(registry.check_issue(&admin, &writer).is_ok());
    }

    #[tokio::test]
    async fn fuzz_presented_tokens() {
        use crate::testing::{fuzz, inputs};
        use proptest::prelude::*;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = TokenRegistry::load(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}"));
        let token = registry
            .issue(
                &principal("svc:crm", "role:writer"),
                0,
                &audit(&store),
                Event::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let issued = token.as_bytes().to_vec();
        // The issued token, and others of the same format that were never issued.
        let valid = prop_oneof![
            Just(issued),
            any::<[u8; 32]>()
                .prop_map(|b| format!("{TOKEN_PREFIX}{}", hex::encode(b)).into_bytes()),
        ];
        let dict = &["sr_", "Bearer ", " ", "\0", "0", "f"];
        fuzz("presented token", 256, inputs(valid, dict), |input| {
            let presented = input.text();
            let known = registry.authenticate(&presented).is_some();
            prop_assert_eq!(known, presented == *token);
            Ok(())
        });
    }

    #[test]
    fn fuzz_stored_tokens() {
        use crate::testing::{fuzz, inputs};
        use proptest::prelude::*;
        let valid = (
            "(svc|user):[a-z]{1,12}",
            proptest::collection::vec("role:[a-z_]{1,12}", 0..3),
            any::<i64>(),
        )
            .prop_map(|(subject, roles, created_at_ms)| {
                serde_json::to_vec(&StoredToken {
                    subject,
                    roles,
                    created_at_ms,
                })
                .unwrap_or_default()
            });
        let dict = &[
            "{", "}", "\"", ":", ",", "[", "]", "null", "1e999", "\\u0000", " ",
        ];
        let suffix = prop_oneof![
            3 => any::<[u8; 32]>().prop_map(|h| h.to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..40),
        ];
        fuzz(
            "stored token",
            256,
            (inputs(valid, dict), suffix),
            |(input, suffix)| {
                let store = MemoryStore::new();
                let mut batch = Batch::new();
                batch.put(
                    Keyspace::Meta,
                    [PREFIX, suffix.as_slice()].concat(),
                    input.bytes,
                );
                store.write(batch).unwrap_or_else(|e| panic!("{e}"));
                match TokenRegistry::load(Arc::new(store)) {
                    Ok(registry) => prop_assert!(registry.principals().len() <= 1),
                    Err(e) => prop_assert!(matches!(e, Error::DataLoss), "{e}"),
                }
                Ok(())
            },
        );
    }
}
