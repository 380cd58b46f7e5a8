//! Bearer tokens: issued once, stored only as SHA-256 hashes in the `meta` keyspace, compared in
//! constant time, each mapped to a subject and its roles.
//!
//! Tokens are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
//!
//! The registry is the one source of the live principals: every issue and revocation is one
//! change (check, store commit, registry update, policy recompile for the registry's live
//! principals) under one lock, so concurrent changes cannot merge rights or revoke the last
//! admin, and a failed issue leaves nothing behind.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, PoisonError, RwLock},
};

use rand::{RngCore, rngs::OsRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, watch};
use zeroize::Zeroizing;

use crate::{
    audit::{Audit, Event},
    domain::{InvalidInput, Principal, Role, Subject},
    policy::{PolicyEngine, ReplaceError},
    storage::{Batch, Keyspace, Store},
    vault::{
        Error,
        access::{ADMIN_ROLE, Privilege, require},
    },
};

const PREFIX: &[u8] = b"token/";
const TOKEN_PREFIX: &str = "sr_";

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
    /// Serializes issues and revocations, from the checks to the policy recompile.
    changes: Mutex<()>,
    /// Bumped after every revocation, so long-lived calls notice theirs at once.
    revocations: watch::Sender<u64>,
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

/// The token a call was authenticated with, as a handle (its hash, never the token): a
/// long-lived call holds it to notice the token's revocation.
#[derive(Clone)]
pub struct Credential {
    registry: Arc<TokenRegistry>,
    hash: [u8; 32],
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("id", &hex::encode(&self.hash[..4]))
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// Whether the token is still valid (issued and not revoked).
    pub fn is_valid(&self) -> bool {
        self.registry
            .by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(&self.hash)
    }

    /// Resolves once the token is no longer valid (at once if it already is not).
    pub async fn revoked(&self) {
        // Subscribe before checking: a revocation between the check and the wait is seen.
        let mut revocations = self.registry.revocations.subscribe();
        while self.is_valid() {
            if revocations.changed().await.is_err() {
                // The registry is gone: nothing vouches for the token any more.
                return;
            }
        }
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn token_key(hash: &[u8; 32]) -> Vec<u8> {
    let mut key = PREFIX.to_vec();
    key.extend_from_slice(hash);
    key
}

/// A new token, made but not yet committed.
struct Minted {
    token: Zeroizing<String>,
    hash: [u8; 32],
    batch: Batch,
    event: Event,
    issued: Issued,
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
            changes: Mutex::new(()),
            revocations: watch::Sender::new(0),
        })
    }

    /// Every distinct principal that holds a valid token: the set the policy is compiled for.
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

    /// The principal a presented token stands for, if it is one we issued, with a handle on
    /// the token that tells when it is revoked.
    pub fn authenticate(self: &Arc<Self>, presented: &str) -> Option<(Principal, Credential)> {
        let h = hash(presented);
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        // The map is keyed by the hash; the final comparison is constant-time all the same.
        map.get_key_value(&h)
            .filter(|(k, _)| bool::from(k.ct_eq(&h)))
            .map(|(_, issued)| {
                let credential = Credential {
                    registry: Arc::clone(self),
                    hash: h,
                };
                (issued.principal.clone(), credential)
            })
    }

    /// Checks that `by` may issue tokens and that `subject` keeps one set of roles.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role; `InvalidArgument` if the subject
    /// already holds tokens with other roles.
    pub fn check_issue(
        &self,
        policy: &PolicyEngine,
        by: &Principal,
        principal: &Principal,
    ) -> Result<(), Error> {
        require(policy, by, Privilege::ManageTokens)?;
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

    /// Issues a token for `principal` on behalf of `by`, as one change: the checks of
    /// `check_issue`, the policy compiled aside for the live principals plus this one, the token
    /// committed with its audit `event`, then the new table swapped in. The token is returned
    /// once; only its hash is stored.
    ///
    /// # Errors
    /// As `check_issue`; `PermissionDenied` if `by` no longer holds a valid token; `Internal` if
    /// the policy cannot be compiled for the new principal;
    /// `Unavailable` if the store or the audit log fails. On any error no token exists and the
    /// policy is unchanged.
    pub async fn issue(
        &self,
        by: &Principal,
        principal: &Principal,
        now_ms: i64,
        audit: &Audit,
        policy: &PolicyEngine,
        event: Event,
    ) -> Result<Zeroizing<String>, Error> {
        let _change = self.changes.lock().await;
        self.check_issue(policy, by, principal)?;
        self.check_live(by)?;
        let mut live = self.principals();
        if !live.contains(principal) {
            live.push(principal.clone());
        }
        let minted = Self::mint(principal, now_ms, event)?;
        let Minted {
            token,
            hash,
            batch,
            event,
            issued,
        } = minted;
        let commit = || async {
            audit.commit(batch, vec![event]).await?;
            self.by_hash
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(hash, issued);
            Ok::<(), Error>(())
        };
        policy
            .replace_principals(live, commit)
            .await
            .map_err(|e| match e {
                ReplaceError::Persist(e) => e,
                ReplaceError::Policy(e) => Error::Internal(format!(
                    "cannot compile the policy for {}: {e}",
                    principal.subject
                )),
            })?;
        Ok(token)
    }

    /// Issues the first admin token of an empty registry, before any policy is compiled (the
    /// policy is then compiled from `principals`).
    ///
    /// # Errors
    /// `Internal` if the registry already holds tokens; `Unavailable` if the store or the
    /// audit log fails.
    pub async fn bootstrap(
        &self,
        admin: &Principal,
        now_ms: i64,
        audit: &Audit,
        event: Event,
    ) -> Result<Zeroizing<String>, Error> {
        let _change = self.changes.lock().await;
        if !self.is_empty() {
            return Err(Error::Internal(
                "only an empty registry gets a first admin token".into(),
            ));
        }
        let Minted {
            token,
            hash,
            batch,
            event,
            issued,
        } = Self::mint(admin, now_ms, event)?;
        audit.commit(batch, vec![event]).await?;
        self.by_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash, issued);
        Ok(token)
    }

    fn mint(principal: &Principal, now_ms: i64, event: Event) -> Result<Minted, Error> {
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
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, token_key(&h), value);
        let event = Event {
            detail: format!(
                "token issued to {} with roles {}",
                principal.subject,
                principal.roles_text()
            ),
            ..event
        };
        let issued = Issued {
            principal: principal.clone(),
            created_at_ms: now_ms,
            id: hex::encode(&h[..4]),
        };
        Ok(Minted {
            token,
            hash: h,
            batch,
            event,
            issued,
        })
    }

    /// Checks that `by` still holds a valid token, so that a call authenticated just before
    /// its caller's revocation changes nothing (run under the change lock).
    fn check_live(&self, by: &Principal) -> Result<(), Error> {
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        // Subject and roles: the certificate a call came over is no part of the token.
        if map.values().any(|issued| {
            issued.principal.subject == by.subject && issued.principal.roles == by.roles
        }) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{} no longer holds a valid token",
                by.subject
            )))
        }
    }

    /// Every issued token (never the token itself), oldest first.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role.
    pub fn list(&self, policy: &PolicyEngine, by: &Principal) -> Result<Vec<Issued>, Error> {
        require(policy, by, Privilege::ManageTokens)?;
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<Issued> = map.values().cloned().collect();
        out.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        Ok(out)
    }

    /// Revokes every token of `subject`, committed with its audit `event`, then recompiles
    /// `policy` for the live principals; returns how many. Calls with a revoked token fail
    /// UNAUTHENTICATED from then on, and long-lived calls holding its `Credential` are told.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role and still a valid token;
    /// `InvalidArgument` if it would leave no token with the admin role (nobody could issue
    /// tokens again); `Unavailable`.
    pub async fn revoke_subject(
        &self,
        by: &Principal,
        subject: &Subject,
        audit: &Audit,
        policy: &PolicyEngine,
        event: Event,
    ) -> Result<usize, Error> {
        let _change = self.changes.lock().await;
        require(policy, by, Privilege::ManageTokens)?;
        self.check_live(by)?;
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
            batch.delete(Keyspace::Meta, token_key(h));
        }
        let event = Event {
            detail: format!("{} token(s) of {subject} revoked", doomed.len()),
            ..event
        };
        audit.commit(batch, vec![event]).await?;
        {
            let mut map = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
            for h in &doomed {
                map.remove(h);
            }
        }
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        if !doomed.is_empty() {
            // The revocation stands even if this fails: the old table keeps a row compiled for
            // the revoked roles, which no live token presents, and the next issue for this
            // subject recompiles before its token exists.
            let recompiled = policy
                .replace_principals(self.principals(), || async { Ok::<(), Infallible>(()) })
                .await;
            if let Err(e) = recompiled {
                let problem = match e {
                    ReplaceError::Policy(e) => e.to_string(),
                    ReplaceError::Persist(never) => match never {},
                };
                tracing::error!(%subject, %problem, "recompiling the policy after a revocation failed");
            }
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{audit::AuditOptions, domain::Schema, storage::MemoryStore};

    fn audit(store: &Arc<dyn Store>) -> Audit {
        Audit::open(
            Arc::clone(store),
            Arc::new(crate::crypto::throwaway_keyring()),
            AuditOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn engine(principals: Vec<Principal>) -> PolicyEngine {
        let schema = Schema::parse(include_str!("../../policies/schema.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        PolicyEngine::new(
            Arc::new(schema),
            include_str!("../../policies/model.conf").into(),
            include_str!("../../policies/policy.csv"),
            1,
            principals,
        )
        .await
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
        let registry =
            Arc::new(TokenRegistry::load(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}")));
        let log = audit(&store);
        let admin = principal("user:root", ADMIN_ROLE);
        registry
            .bootstrap(&admin, 0, &log, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let p = principal("svc:crm", "role:writer");
        let token = registry
            .issue(&admin, &p, 0, &log, &engine(vec![]).await, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let who = |r: &Arc<TokenRegistry>, t: &str| r.authenticate(t).map(|(p, _)| p);
        assert_eq!(who(&registry, &token), Some(p.clone()));
        assert_eq!(who(&registry, "sr_wrong"), None);
        for (key, value) in store.scan_prefix(Keyspace::Meta, b"").unwrap_or_default() {
            let raw = token.as_bytes();
            assert!(!key.windows(raw.len()).any(|w| w == raw));
            assert!(!value.windows(raw.len()).any(|w| w == raw));
        }
        let reloaded = Arc::new(TokenRegistry::load(store).unwrap_or_else(|e| panic!("{e}")));
        assert_eq!(who(&reloaded, &token), Some(p));
    }

    #[tokio::test]
    async fn only_admins_issue_and_subjects_keep_their_roles() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = TokenRegistry::load(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}"));
        let log = audit(&store);
        let writer = principal("svc:crm", "role:writer");
        let admin = principal("user:root", ADMIN_ROLE);
        let policy = engine(vec![]).await;
        assert!(registry.check_issue(&policy, &writer, &writer).is_err());
        assert!(registry.check_issue(&policy, &admin, &writer).is_ok());
        registry
            .bootstrap(&admin, 0, &log, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            registry
                .issue(&writer, &writer, 0, &log, &policy, Event::default())
                .await
                .is_err()
        );
        assert_eq!(
            registry.principals(),
            std::slice::from_ref(&admin),
            "a refused issue leaves no token"
        );
        registry
            .issue(&admin, &writer, 0, &log, &policy, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            registry
                .check_issue(&policy, &admin, &principal("svc:crm", "role:admin"))
                .is_err()
        );
        assert!(registry.check_issue(&policy, &admin, &writer).is_ok());
    }

    #[tokio::test]
    async fn the_policy_follows_issues_and_revocations() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = TokenRegistry::load(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}"));
        let log = audit(&store);
        let root = principal("user:root", ADMIN_ROLE);
        registry
            .bootstrap(&root, 0, &log, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let policy = engine(registry.principals()).await;
        let schema = Schema::parse(include_str!("../../policies/schema.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let coll = schema
            .collection("customers", "c")
            .unwrap_or_else(|e| panic!("{e}"));
        registry
            .issue(
                &root,
                &principal("svc:x", ADMIN_ROLE),
                0,
                &log,
                &policy,
                Event::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let x_admin = principal("svc:x", ADMIN_ROLE);
        assert!(policy.table().check_delete(&x_admin, coll).is_ok());
        let x = Subject::parse("svc:x", "s").unwrap_or_else(|e| panic!("{e}"));
        let revoked = registry
            .revoke_subject(&root, &x, &log, &policy, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(revoked, 1);
        assert!(policy.table().check_delete(&x_admin, coll).is_err());
        let x_marketing = principal("svc:x", "role:marketing");
        registry
            .issue(&root, &x_marketing, 0, &log, &policy, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let table = policy.table();
        assert!(table.check_delete(&x_marketing, coll).is_err());
        assert!(table.check_delete(&x_admin, coll).is_err());
        assert!(!table.delete_by_name("svc:x", coll));
        let mut live = registry.principals();
        live.sort_by(|a, b| a.subject.cmp(&b.subject));
        assert_eq!(live, [x_marketing, root]);
    }

    #[tokio::test]
    async fn fuzz_presented_tokens() {
        use crate::testing::{fuzz, inputs};
        use proptest::prelude::*;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry =
            Arc::new(TokenRegistry::load(Arc::clone(&store)).unwrap_or_else(|e| panic!("{e}")));
        let token = registry
            .bootstrap(
                &principal("user:root", ADMIN_ROLE),
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
                .unwrap_or_else(|e| panic!("{e}"))
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
