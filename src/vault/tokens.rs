//! Bearer tokens: issued once, stored only as SHA-256 hashes in the `meta` keyspace, compared in
//! constant time, each mapped to a subject and its roles, optionally bound to purposes and
//! expiring at an instant of the vault's clock.
//!
//! Tokens are 256 random bits, so a fast hash is enough: there is nothing to brute-force.
//!
//! The registry is the one source of the live principals: every issue, rotation and revocation
//! is one change (check, store commit, registry update, policy recompile for the registry's live
//! principals) under one lock, so concurrent changes cannot merge rights or revoke the last
//! admin, and a failed issue leaves nothing behind.
//!
//! An expired token is refused like a revoked one, but says so, and stays listed (as expired)
//! until its subject's tokens are revoked. Expiry is read from the configured `Clock` at every
//! check, so a call or stream that outlives its token ends like one whose token was revoked.
//! A `vendor:` subject's token must expire (within the configured longest lifetime) and be bound
//! to at least one purpose. A rotation issues a new secret with the same subject, roles,
//! purposes and expiry, and moves the old one's expiry to the end of a grace period.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, PoisonError, RwLock},
    time::Duration,
};

use rand::{Rng, RngCore, rngs::OsRng};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{Mutex, watch};
use zeroize::Zeroizing;

use crate::{
    audit::{Audit, Event},
    domain::{Clock, InvalidInput, Principal, Role, Schema, Subject, friendly},
    policy::{DecisionTable, PolicyEngine, ReplaceError},
    storage::{Batch, Keyspace, Store},
    vault::{
        Error,
        access::{ADMIN_ROLE, Privilege, require, require_in},
        changes::{self, Change, Stamp},
        governance,
    },
};

const PREFIX: &[u8] = b"token/";
/// The change stamp of one subject's tokens, under this prefix and the subject's name.
const SUBJECT_PREFIX: &[u8] = b"tokens-of/";
const TOKEN_PREFIX: &str = "sr_";

/// The longest lifetime a token may be given (ten years): beyond it, give none.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);
/// How long a rotated token keeps working unless told otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);
/// The longest a rotated token may keep working.
pub const MAX_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);
/// The longest lifetime of a `vendor:` token unless the config says otherwise (a week).
pub const DEFAULT_MAX_VENDOR_LIFETIME: Duration = Duration::from_secs(168 * 3600);
/// How often a long-lived call re-reads the clock while its token has an expiry: the clock
/// may be moved (a manual clock in tests, the wall clock by an operator), so a call never
/// sleeps to the computed instant in one go.
const EXPIRY_TICK: Duration = Duration::from_secs(1);
/// How many times a token change refused because another vault node changed the tokens or
/// applied a policy version meanwhile is decided again, on the tokens as stored then, before
/// the caller is answered ABORTED.
const CONFLICT_RETRIES: u32 = 8;

#[derive(Serialize, Deserialize)]
struct StoredToken {
    subject: String,
    roles: Vec<String>,
    created_at_ms: i64,
    /// When it stops working (ms since the epoch). Absent (tokens stored before expiry
    /// existed, or issued without one): never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<i64>,
    /// The only purposes it may declare. Absent: any purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    purposes: Option<Vec<String>>,
}

impl StoredToken {
    fn of(issued: &Issued) -> Self {
        Self {
            subject: issued.principal.subject.as_str().to_owned(),
            roles: issued.principal.role_names(),
            created_at_ms: issued.created_at_ms,
            expires_at_ms: issued.expires_at_ms,
            purposes: issued
                .principal
                .purposes
                .as_ref()
                .map(|p| p.iter().map(|p| p.as_str().to_owned()).collect()),
        }
    }
}

/// An issued token, as the registry knows it (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// Whom it authenticates, with the purposes it is bound to.
    pub principal: Principal,
    /// When it was issued (ms since the epoch).
    pub created_at_ms: i64,
    /// When it stops working (ms since the epoch); `None`: never.
    pub expires_at_ms: Option<i64>,
    /// The first 8 hex digits of its hash: enough to tell tokens apart, useless to forge one.
    pub id: String,
}

impl Issued {
    /// Whether it has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|at| now_ms >= at)
    }
}

/// Why a presented token is not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// It was issued, but its expiry has passed.
    Expired,
    /// It was never issued, or has been revoked.
    Unknown,
}

/// What the registry is configured with.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// The clock expiries are read against.
    pub clock: Clock,
    /// The longest lifetime a `vendor:` token may be given.
    pub max_vendor_lifetime: Duration,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            clock: Clock::system(),
            max_vendor_lifetime: DEFAULT_MAX_VENDOR_LIFETIME,
        }
    }
}

/// A rotation's outcome: the new token (shown once) and when the old one stops working.
#[derive(Debug)]
pub struct Rotated {
    /// The new token.
    pub token: Zeroizing<String>,
    /// The new token, as the registry knows it.
    pub issued: Issued,
    /// The old token's id.
    pub old_id: String,
    /// When the old token stops working (ms since the epoch).
    pub old_expires_at_ms: i64,
}

/// The registry of issued tokens, held in memory and in the store.
pub struct TokenRegistry {
    by_hash: RwLock<HashMap<[u8; 32], Issued>>,
    /// Serializes issues, rotations, revocations and reloads, from the checks to the policy
    /// recompile. Each change re-reads the tokens first and expects the stamps of the
    /// subjects it decided on (see `change`).
    changes: Mutex<()>,
    /// Bumped after every revocation and rotation, so long-lived calls notice theirs at once.
    revocations: watch::Sender<u64>,
    options: TokenOptions,
    /// Where the tokens are stored, and the schema their purposes are resolved against: a
    /// change another node made meanwhile is re-read from there.
    store: Arc<dyn Store>,
    schema: Arc<Schema>,
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
/// long-lived call holds it to notice the token's revocation or expiry.
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
    /// Whether the token is still accepted, now.
    ///
    /// # Errors
    /// `Rejection::Unknown` if it has been revoked, `Rejection::Expired` if it has expired.
    pub fn check(&self) -> Result<(), Rejection> {
        self.registry.expiry_of(&self.hash).map(|_| ())
    }

    /// Resolves once the token is no longer valid (at once if it already is not): revoked, or
    /// expired by the registry's clock (noticed within `EXPIRY_TICK`).
    pub async fn revoked(&self) {
        // Subscribe before checking: a revocation between the check and the wait is seen.
        let mut revocations = self.registry.revocations.subscribe();
        while let Ok(expiry) = self.registry.expiry_of(&self.hash) {
            let changed = match expiry {
                None => revocations.changed().await,
                Some(at) => {
                    let left = at.saturating_sub(self.registry.options.clock.now_ms());
                    let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                    tokio::select! {
                        changed = revocations.changed() => changed,
                        () = tokio::time::sleep(left.min(EXPIRY_TICK)) => Ok(()),
                    }
                }
            };
            if changed.is_err() {
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

/// An instant for messages and audit details: `2026-11-22T21:19:14Z`.
fn utc(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

/// `ms` as whole milliseconds, saturating (lifetimes are bounded far below).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The principal as the policy is compiled for it: purposes are checked where a purpose is
/// declared, not by the decision table.
fn policy_form(principal: &Principal) -> Principal {
    let mut p = principal.clone();
    p.purposes = None;
    p
}

/// The change stamps of the tokens, read with them: the one every node follows, and one per
/// subject, which a change of the subject's tokens replaces.
struct Stamps {
    tokens: Stamp,
    subjects: HashMap<Vec<u8>, Vec<u8>>,
}

impl Stamps {
    /// Adds to `batch` the precondition that `subject`'s tokens are as read: a change decided
    /// on them fails with a conflict if a node changed them since.
    fn expect(&self, batch: &mut Batch, subject: &Subject) {
        let key = subject_key(subject);
        let seen = self.subjects.get(&key).cloned();
        batch.expect(Keyspace::Meta, key, seen);
    }

    /// As `expect`, for a change of `subject`'s tokens: also writes their new stamp, and the
    /// one the nodes follow.
    fn change(&self, batch: &mut Batch, subject: &Subject) {
        self.expect(batch, subject);
        let mut value = vec![0u8; 16];
        OsRng.fill_bytes(&mut value);
        batch.put(Keyspace::Meta, subject_key(subject), value);
        changes::stamp(batch, Change::Tokens);
    }
}

fn subject_key(subject: &Subject) -> Vec<u8> {
    let mut key = SUBJECT_PREFIX.to_vec();
    key.extend_from_slice(subject.as_str().as_bytes());
    key
}

/// Every stored token, by hash, and their change stamps, read at one moment. Purposes are
/// resolved against `schema`, as in `load`.
fn read_tokens(
    store: &dyn Store,
    schema: &Schema,
) -> Result<(HashMap<[u8; 32], Issued>, Stamps), Error> {
    let snapshot = store.snapshot();
    let stamps = Stamps {
        tokens: changes::stamp_in(snapshot.as_ref(), Change::Tokens)?,
        subjects: snapshot
            .scan_prefix(Keyspace::Meta, SUBJECT_PREFIX)?
            .into_iter()
            .collect(),
    };
    let mut by_hash = HashMap::new();
    for (key, value) in snapshot.scan_prefix(Keyspace::Meta, PREFIX)? {
        let hash: [u8; 32] = key[PREFIX.len()..]
            .try_into()
            .map_err(|_| Error::DataLoss)?;
        let stored: StoredToken = serde_json::from_slice(&value).map_err(|_| Error::DataLoss)?;
        let subject = Subject::parse(&stored.subject, "subject").map_err(|_| Error::DataLoss)?;
        let roles = stored
            .roles
            .iter()
            .map(|r| Role::parse(r, "role"))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::DataLoss)?;
        let id = hex::encode(&hash[..4]);
        let purposes = stored.purposes.map(|names| {
            names
                .iter()
                .filter_map(|name| match schema.purpose(name, "purpose") {
                    Ok((_, purpose)) => Some(purpose),
                    Err(_) => {
                        tracing::warn!(token = %id, "a token's purpose is no longer declared; the token may not declare it");
                        None
                    }
                })
                .collect()
        });
        let principal = Principal::new(subject, roles).with_purposes(purposes);
        by_hash.insert(
            hash,
            Issued {
                principal,
                created_at_ms: stored.created_at_ms,
                expires_at_ms: stored.expires_at_ms,
                id,
            },
        );
    }
    Ok((by_hash, stamps))
}

/// Commits a change of the tokens with its audit `event`.
///
/// # Errors
/// `Aborted` if another vault node changed the tokens or the policy since this one read them
/// (`TokenRegistry::change` decides again); `Unavailable` if the store or the audit log fails.
async fn commit(audit: &Audit, batch: Batch, event: Event) -> Result<(), Error> {
    audit
        .commit(batch, vec![event])
        .await
        .map(drop)
        .map_err(|e| {
            if e.is_conflict() {
                Error::Aborted(
                    "the tokens or the policy kept being changed on other vault nodes meanwhile; \
                     nothing was changed: retry"
                        .into(),
                )
            } else {
                e.into()
            }
        })
}

/// The distinct principals of `issued` as the policy is compiled for them.
fn compiled_for<'a>(issued: impl Iterator<Item = &'a Issued>) -> Vec<Principal> {
    let mut out: Vec<Principal> = Vec::new();
    for issued in issued {
        let p = policy_form(&issued.principal);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
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
    /// Loads every stored token. Purposes are resolved against `schema`: a stored purpose the
    /// schema no longer declares is dropped from its token (logged), which then may declare only
    /// its remaining ones (fail closed: none if none remain).
    ///
    /// # Errors
    /// `Unavailable` if the store fails, `DataLoss` if a stored token is malformed.
    pub fn load(
        store: Arc<dyn Store>,
        schema: Arc<Schema>,
        options: TokenOptions,
    ) -> Result<Self, Error> {
        let (by_hash, _) = read_tokens(store.as_ref(), &schema)?;
        Ok(Self {
            by_hash: RwLock::new(by_hash),
            changes: Mutex::new(()),
            revocations: watch::Sender::new(0),
            options,
            store,
            schema,
        })
    }

    /// Reloads every token from the store (another vault node issued, rotated or revoked
    /// some), recompiles `policy` for their principals, and tells long-lived calls to check
    /// theirs again. Serialized with this node's own changes.
    ///
    /// # Errors
    /// As `refresh`; the tokens in memory then stay as they were.
    pub async fn reload(&self, policy: &PolicyEngine) -> Result<(), Error> {
        let _change = self.changes.lock().await;
        self.refresh(policy).await.map(drop)
    }

    /// `reload`, for a caller holding the change lock; returns the stamps read with the tokens.
    ///
    /// # Errors
    /// `Unavailable` if the store fails, `DataLoss` if a stored token is malformed, `Internal`
    /// if the policy cannot be compiled for them.
    async fn refresh(&self, policy: &PolicyEngine) -> Result<Stamps, Error> {
        let (by_hash, stamps) = read_tokens(self.store.as_ref(), &self.schema)?;
        let principals = compiled_for(by_hash.values());
        let current = self.principals();
        if principals.len() == current.len() && principals.iter().all(|p| current.contains(p)) {
            // Unchanged, rotated, or tokens added or revoked for principals that hold others:
            // the policy is compiled for these already (compiling takes far longer).
            *self.by_hash.write().unwrap_or_else(PoisonError::into_inner) = by_hash;
        } else {
            policy
                .replace_principals(principals, || async { Ok::<(), Infallible>(()) })
                .await
                .map_err(|e| match e {
                    ReplaceError::Policy(e) => {
                        Error::Internal(format!("cannot compile the policy for the tokens: {e}"))
                    }
                    ReplaceError::Persist(never) => match never {},
                })?;
            // After the table: a token another node issued is not accepted here before its
            // holder has a row (it would be refused PERMISSION_DENIED meanwhile); a revoked
            // one, whose row went first, is refused either way.
            *self.by_hash.write().unwrap_or_else(PoisonError::into_inner) = by_hash;
        }
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        Ok(stamps)
    }

    /// Makes one change of the tokens under the change lock. The tokens are re-read from the
    /// store first (another vault node may have changed them since the last poll), then
    /// `attempt` decides on them and commits expecting the stamps of the subjects it decided
    /// on, and the newest policy version it decided on. A commit refused because a node
    /// changed one of those meanwhile is decided again, after a pause, on what is stored then,
    /// up to `CONFLICT_RETRIES` times. Changes of other subjects' tokens on other nodes do not
    /// refuse it, so a revocation is not starved by a busy node.
    async fn change<T, F, Fut>(&self, policy: &PolicyEngine, mut attempt: F) -> Result<T, Error>
    where
        F: FnMut(Stamps) -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut retries = 0;
        loop {
            let outcome = {
                let _change = self.changes.lock().await;
                let stamps = self.refresh(policy).await?;
                attempt(stamps).await
            };
            match outcome {
                Err(Error::Aborted(_)) if retries < CONFLICT_RETRIES => {
                    retries += 1;
                    // Jittered and growing, so two nodes retrying at once draw apart; long
                    // enough in total for this node's follower to reload a policy version
                    // (the lock is not held meanwhile: the follower takes it).
                    let pause = OsRng.gen_range(5..=25) * u64::from(retries);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                outcome => return outcome,
            }
        }
    }

    /// Every distinct principal that holds a token: the set the policy is compiled for
    /// (without purposes, which the policy does not decide).
    pub fn principals(&self) -> Vec<Principal> {
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        compiled_for(map.values())
    }

    /// `live_principals` as stored now (re-read, and installed with `policy` recompiled if
    /// they changed), with the stamp they are at: a decision on them can expect it.
    ///
    /// # Errors
    /// As `reload`.
    pub async fn live_principals_at(
        &self,
        policy: &PolicyEngine,
    ) -> Result<(Vec<Principal>, Stamp), Error> {
        let _change = self.changes.lock().await;
        let stamps = self.refresh(policy).await?;
        Ok((self.live_principals(), stamps.tokens))
    }

    /// Every distinct principal that holds a token that has not expired (without purposes):
    /// who could still act, for checks that must not count expired tokens.
    pub fn live_principals(&self) -> Vec<Principal> {
        let now = self.options.clock.now_ms();
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        compiled_for(map.values().filter(|i| !i.is_expired(now)))
    }

    /// Whether any token exists.
    pub fn is_empty(&self) -> bool {
        self.by_hash
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// The expiry of a live token (`None`: never), now.
    fn expiry_of(&self, hash: &[u8; 32]) -> Result<Option<i64>, Rejection> {
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        let issued = map.get(hash).ok_or(Rejection::Unknown)?;
        if issued.is_expired(self.options.clock.now_ms()) {
            return Err(Rejection::Expired);
        }
        Ok(issued.expires_at_ms)
    }

    /// The principal a presented token stands for, if it is one we issued and it has not
    /// expired, with a handle on the token that tells when it is revoked or expires.
    ///
    /// # Errors
    /// `Rejection::Unknown` if it was never issued or has been revoked, `Rejection::Expired`
    /// if it has expired.
    pub fn authenticate(
        self: &Arc<Self>,
        presented: &str,
    ) -> Result<(Principal, Credential), Rejection> {
        let h = hash(presented);
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        // The map is keyed by the hash; the final comparison is constant-time all the same.
        let (_, issued) = map
            .get_key_value(&h)
            .filter(|(k, _)| bool::from(k.ct_eq(&h)))
            .ok_or(Rejection::Unknown)?;
        if issued.is_expired(self.options.clock.now_ms()) {
            return Err(Rejection::Expired);
        }
        let credential = Credential {
            registry: Arc::clone(self),
            hash: h,
        };
        Ok((issued.principal.clone(), credential))
    }

    /// Checks that `by` may issue tokens, that `subject` keeps one set of roles, and that a
    /// `vendor:` subject's token expires within the configured longest lifetime and is bound
    /// to purposes.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role; `InvalidArgument` if the subject
    /// already holds tokens with other roles, naming `expires_in` for a zero lifetime or a
    /// vendor token without one or with a longer one, and `purposes` for a vendor token bound
    /// to none.
    pub fn check_issue(
        &self,
        table: &DecisionTable,
        by: &Principal,
        principal: &Principal,
        lifetime: Option<Duration>,
    ) -> Result<(), Error> {
        require_in(table, by, Privilege::ManageTokens)?;
        if lifetime == Some(Duration::ZERO) {
            return Err(InvalidInput::new("expires_in", "must be longer than zero").into());
        }
        if principal.subject.is_vendor() {
            let max = self.options.max_vendor_lifetime;
            if lifetime.is_none_or(|l| l > max) {
                return Err(InvalidInput::new(
                    "expires_in",
                    format!(
                        "a vendor: token must expire within {} (max_vendor_token_hours)",
                        friendly(max)
                    ),
                )
                .into());
            }
            if principal.purposes.as_ref().is_none_or(Vec::is_empty) {
                return Err(InvalidInput::new(
                    "purposes",
                    "a vendor: token must be bound to at least one purpose",
                )
                .into());
            }
        }
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

    /// Issues a token for `principal` (bound to its purposes, expiring after `lifetime` if
    /// given) on behalf of `by`, as one change: the checks of `check_issue`, the policy
    /// compiled aside for the live principals plus this one, the token committed with its audit
    /// `event`, then the new table swapped in. The token is returned once; only its hash is
    /// stored.
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
        lifetime: Option<Duration>,
        audit: &Audit,
        policy: &PolicyEngine,
        event: Event,
    ) -> Result<(Zeroizing<String>, Issued), Error> {
        self.change(policy, |stamps| {
            self.try_issue(
                stamps,
                by,
                principal,
                lifetime,
                audit,
                policy,
                event.clone(),
            )
        })
        .await
    }

    /// One attempt of `issue`, decided on the tokens read with `stamps`.
    #[allow(clippy::too_many_arguments)]
    async fn try_issue(
        &self,
        stamps: Stamps,
        by: &Principal,
        principal: &Principal,
        lifetime: Option<Duration>,
        audit: &Audit,
        policy: &PolicyEngine,
        event: Event,
    ) -> Result<(Zeroizing<String>, Issued), Error> {
        // One policy table for every check and the version expected at the commit.
        let table = policy.table();
        self.check_issue(&table, by, principal, lifetime)?;
        self.check_live(by)?;
        let mut live = self.principals();
        let compiled = policy_form(principal);
        if !live.contains(&compiled) {
            live.push(compiled);
        }
        let now = self.options.clock.now_ms();
        let expires_at_ms = lifetime.map(|l| now.saturating_add(millis(l)));
        self.check_within(&table, by, principal, expires_at_ms)?;
        let Minted {
            token,
            hash,
            mut batch,
            event,
            issued,
        } = Self::mint(principal, now, expires_at_ms, event)?;
        // Decided on the subject's roles, the issuer's own tokens (`check_live`,
        // `check_within`) and who holds what in this policy version.
        stamps.change(&mut batch, &principal.subject);
        stamps.expect(&mut batch, &by.subject);
        governance::expect_current(&mut batch, table.version());
        let out = issued.clone();
        let commit = || async {
            commit(audit, batch, event).await?;
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
        Ok((token, out))
    }

    /// Issues the first admin token of an empty registry, before any policy is compiled (the
    /// policy is then compiled from `principals`). It never expires.
    ///
    /// # Errors
    /// `Internal` if the registry already holds tokens; `Unavailable` if the store or the
    /// audit log fails.
    pub async fn bootstrap(
        &self,
        admin: &Principal,
        audit: &Audit,
        event: Event,
    ) -> Result<Zeroizing<String>, Error> {
        let _change = self.changes.lock().await;
        let (stored, stamps) = read_tokens(self.store.as_ref(), &self.schema)?;
        if !stored.is_empty() {
            return Err(Error::Internal(
                "only an empty registry gets a first admin token".into(),
            ));
        }
        let Minted {
            token,
            hash,
            mut batch,
            event,
            issued,
        } = Self::mint(admin, self.options.clock.now_ms(), None, event)?;
        // Two nodes starting on an empty database: one of them fails.
        changes::expect(&mut batch, Change::Tokens, stamps.tokens.clone());
        stamps.change(&mut batch, &admin.subject);
        commit(audit, batch, event).await?;
        self.by_hash
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(hash, issued);
        Ok(token)
    }

    fn mint(
        principal: &Principal,
        now_ms: i64,
        expires_at_ms: Option<i64>,
        event: Event,
    ) -> Result<Minted, Error> {
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(secret.as_mut());
        let token = Zeroizing::new(format!("{TOKEN_PREFIX}{}", hex::encode(secret.as_ref())));
        let h = hash(&token);
        let issued = Issued {
            principal: principal.clone(),
            created_at_ms: now_ms,
            expires_at_ms,
            id: hex::encode(&h[..4]),
        };
        let value = serde_json::to_vec(&StoredToken::of(&issued))
            .map_err(|e| Error::Internal(e.to_string()))?;
        let mut batch = Batch::new();
        batch.put(Keyspace::Meta, token_key(&h), value);
        let mut detail = format!(
            "token {} issued to {} with roles {}",
            issued.id,
            principal.subject,
            principal.roles_text()
        );
        if let Some(at) = expires_at_ms {
            detail.push_str(&format!(", expiring {}", utc(at)));
        }
        if principal.purposes.is_some() {
            detail.push_str(&format!(", for purposes {}", principal.purposes_text()));
        }
        let event = Event { detail, ..event };
        Ok(Minted {
            token,
            hash: h,
            batch,
            event,
            issued,
        })
    }

    /// Checks that a token for `principal` expiring at `expires_at_ms` (`None`: never) stays
    /// within what `by` holds itself, so a token manager delegates no more than it has: no
    /// privilege `by` lacks in the live policy (else `tokens manage` alone could mint a policy
    /// admin, past the two-person rule), no later expiry than `by`'s own live token, and only
    /// purposes `by`'s token may declare (else a vendor's weekend token could mint one that
    /// never ends).
    ///
    /// # Errors
    /// `PermissionDenied` naming what `by` lacks.
    fn check_within(
        &self,
        table: &DecisionTable,
        by: &Principal,
        principal: &Principal,
        expires_at_ms: Option<i64>,
    ) -> Result<(), Error> {
        if let Some(p) = Privilege::ALL
            .into_iter()
            .find(|&p| table.holds(principal, p) && !table.holds(by, p))
        {
            return Err(Error::PermissionDenied(format!(
                "{} may not issue a token for {} that holds `{}`, which {} does not hold",
                by.subject,
                principal.subject,
                p.name(),
                by.subject
            )));
        }
        if let Some(bound) = &by.purposes {
            let within = principal
                .purposes
                .as_ref()
                .is_some_and(|p| p.iter().all(|x| bound.contains(x)));
            if !within {
                return Err(Error::PermissionDenied(format!(
                    "{}'s token is bound to purposes {}: a token it issues must be bound to some \
                     of them",
                    by.subject,
                    by.purposes_text()
                )));
            }
        }
        // The latest expiry among `by`'s live tokens; `None` if one never expires.
        let now = self.options.clock.now_ms();
        let limit = {
            let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
            let mut limit: Option<Option<i64>> = None;
            for issued in map.values().filter(|i| {
                i.principal.subject == by.subject
                    && i.principal.roles == by.roles
                    && i.principal.purposes == by.purposes
                    && !i.is_expired(now)
            }) {
                limit = Some(match (limit, issued.expires_at_ms) {
                    (Some(None), _) | (_, None) => None,
                    (Some(Some(a)), Some(b)) => Some(a.max(b)),
                    (None, Some(b)) => Some(b),
                });
            }
            limit
        };
        if let Some(Some(until)) = limit
            && expires_at_ms.is_none_or(|at| at > until)
        {
            return Err(Error::PermissionDenied(format!(
                "{}'s token expires {}: a token it issues or rotates must expire by then",
                by.subject,
                utc(until)
            )));
        }
        Ok(())
    }

    /// Checks that `by` still holds a valid token, so that a call authenticated just before
    /// its caller's revocation or expiry changes nothing (run under the change lock).
    fn check_live(&self, by: &Principal) -> Result<(), Error> {
        let now = self.options.clock.now_ms();
        let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
        // Subject, roles and purposes: the certificate a call came over is no part of the token.
        if map.values().any(|issued| {
            issued.principal.subject == by.subject
                && issued.principal.roles == by.roles
                && issued.principal.purposes == by.purposes
                && !issued.is_expired(now)
        }) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{} no longer holds a valid token",
                by.subject
            )))
        }
    }

    /// Every issued token (never the token itself), oldest first, expired ones included.
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

    /// The current time by the registry's clock (ms since the epoch).
    pub fn now_ms(&self) -> i64 {
        self.options.clock.now_ms()
    }

    /// Rotates the token `id` (8 hex digits, as `list` shows): a new token with the same
    /// subject, roles, purposes and expiry, committed with its audit `event`; the old one
    /// keeps working for `grace` (never past its own expiry), then is refused as expired.
    /// Calls and streams holding the old token end when its grace does.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds `tokens manage` in `policy` and still a valid token;
    /// `InvalidArgument` naming `id` if no live token (or more than one) has that id;
    /// `Unavailable`.
    pub async fn rotate(
        &self,
        policy: &PolicyEngine,
        by: &Principal,
        id: &str,
        grace: Duration,
        audit: &Audit,
        event: Event,
    ) -> Result<Rotated, Error> {
        self.change(policy, |stamps| {
            self.try_rotate(stamps, policy, by, id, grace, audit, event.clone())
        })
        .await
    }

    /// One attempt of `rotate`, decided on the tokens read with `stamps`.
    #[allow(clippy::too_many_arguments)]
    async fn try_rotate(
        &self,
        stamps: Stamps,
        policy: &PolicyEngine,
        by: &Principal,
        id: &str,
        grace: Duration,
        audit: &Audit,
        event: Event,
    ) -> Result<Rotated, Error> {
        // One policy version decides everything, and the commit expects it still newest.
        let table = policy.table();
        require_in(&table, by, Privilege::ManageTokens)?;
        self.check_live(by)?;
        let now = self.options.clock.now_ms();
        let (old_hash, mut old) = {
            let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
            let mut found = map.iter().filter(|(_, issued)| issued.id == id);
            match (found.next(), found.next()) {
                (Some((h, issued)), None) => (*h, issued.clone()),
                (Some(_), Some(_)) => {
                    return Err(InvalidInput::new(
                        "id",
                        "more than one token has this id: revoke the subject's tokens instead",
                    )
                    .into());
                }
                (None, _) => {
                    return Err(InvalidInput::new(
                        "id",
                        "no token has this id (see `strongroom token list`)",
                    )
                    .into());
                }
            }
        };
        if old.is_expired(now) {
            return Err(InvalidInput::new("id", "this token has expired: issue a new one").into());
        }
        self.check_within(&table, by, &old.principal, old.expires_at_ms)?;
        let Minted {
            token,
            hash,
            mut batch,
            event,
            issued,
        } = Self::mint(&old.principal, now, old.expires_at_ms, event)?;
        let grace_end = now.saturating_add(millis(grace));
        let old_expires_at_ms = old.expires_at_ms.map_or(grace_end, |at| at.min(grace_end));
        old.expires_at_ms = Some(old_expires_at_ms);
        let value = serde_json::to_vec(&StoredToken::of(&old))
            .map_err(|e| Error::Internal(e.to_string()))?;
        batch.put(Keyspace::Meta, token_key(&old_hash), value);
        stamps.change(&mut batch, &old.principal.subject);
        stamps.expect(&mut batch, &by.subject);
        governance::expect_current(&mut batch, table.version());
        let event = Event {
            detail: format!(
                "token {} of {} rotated: {}; the old one works until {}",
                old.id,
                old.principal.subject,
                event.detail,
                utc(old_expires_at_ms)
            ),
            ..event
        };
        commit(audit, batch, event).await?;
        {
            let mut map = self.by_hash.write().unwrap_or_else(PoisonError::into_inner);
            map.insert(hash, issued.clone());
            map.insert(old_hash, old.clone());
        }
        // Long-lived calls on the old token re-read its (now earlier) expiry.
        self.revocations.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Rotated {
            token,
            issued,
            old_id: old.id,
            old_expires_at_ms,
        })
    }

    /// Revokes every token of `subject`, committed with its audit `event`, then recompiles
    /// `policy` for the live principals; returns how many. Calls with a revoked token fail
    /// UNAUTHENTICATED from then on, and long-lived calls holding its `Credential` are told.
    ///
    /// # Errors
    /// `PermissionDenied` unless `by` holds the admin role and still a valid token;
    /// `InvalidArgument` if it would leave no token with the admin role that never expires
    /// (nobody could issue tokens again, now or once the rest expire); `Unavailable`.
    pub async fn revoke_subject(
        &self,
        by: &Principal,
        subject: &Subject,
        audit: &Audit,
        policy: &PolicyEngine,
        event: Event,
    ) -> Result<usize, Error> {
        self.change(policy, |stamps| {
            self.try_revoke(stamps, by, subject, audit, policy, event.clone())
        })
        .await
    }

    /// One attempt of `revoke_subject`, decided on the tokens read with `stamps`.
    async fn try_revoke(
        &self,
        stamps: Stamps,
        by: &Principal,
        subject: &Subject,
        audit: &Audit,
        policy: &PolicyEngine,
        event: Event,
    ) -> Result<usize, Error> {
        // One policy version decides everything, and the commit expects it still newest.
        let table = policy.table();
        require_in(&table, by, Privilege::ManageTokens)?;
        self.check_live(by)?;
        let (doomed, manager) = {
            let map = self.by_hash.read().unwrap_or_else(PoisonError::into_inner);
            let doomed: Vec<[u8; 32]> = map
                .iter()
                .filter(|(_, i)| i.principal.subject == *subject)
                .map(|(h, _)| *h)
                .collect();
            // Whoever holds `tokens manage` in the live policy, not a role name: the policy
            // may give it to any role.
            // The revoker's own subject first when it qualifies: its stamp is expected anyway,
            // so another subject's token changes do not refuse the revocation.
            let mut managers: Vec<&Subject> = map
                .iter()
                .filter(|(h, i)| {
                    !doomed.contains(h)
                        && i.expires_at_ms.is_none()
                        && table.holds(&i.principal, Privilege::ManageTokens)
                })
                .map(|(_, i)| &i.principal.subject)
                .collect();
            managers.sort_by_key(|s| **s != by.subject);
            let manager = managers.first().map(|s| (*s).clone());
            let Some(manager) = manager else {
                return Err(InvalidInput::new(
                    "subject",
                    format!(
                        "revoking {subject} would leave no token that holds `tokens manage` \
                         (as {ADMIN_ROLE} does as shipped) and never expires"
                    ),
                )
                .into());
            };
            (doomed, manager)
        };
        let mut batch = Batch::new();
        for h in &doomed {
            batch.delete(Keyspace::Meta, token_key(h));
        }
        // Decided on every token of the subject (one issued or rotated meanwhile is revoked
        // too, or the commit fails), the revoker's, the manager's that is left, and this policy
        // version (who holds `tokens manage`): refused if a node changed any of them since.
        stamps.change(&mut batch, subject);
        stamps.expect(&mut batch, &by.subject);
        stamps.expect(&mut batch, &manager);
        governance::expect_current(&mut batch, table.version());
        let event = Event {
            detail: format!("{} token(s) of {subject} revoked", doomed.len()),
            ..event
        };
        commit(audit, batch, event).await?;
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
    use crate::{audit::AuditOptions, storage::MemoryStore};

    fn audit(store: &Arc<dyn Store>) -> Audit {
        Audit::open(
            Arc::clone(store),
            Arc::new(crate::crypto::throwaway_keyring()),
            AuditOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn schema() -> Schema {
        Schema::parse(include_str!("../../policies/schema.toml")).unwrap_or_else(|e| panic!("{e}"))
    }

    async fn engine(principals: Vec<Principal>) -> PolicyEngine {
        PolicyEngine::new(
            Arc::new(schema()),
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
        let registry = Arc::new(
            TokenRegistry::load(
                Arc::clone(&store),
                Arc::new(schema()),
                TokenOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let log = audit(&store);
        let admin = principal("user:root", ADMIN_ROLE);
        registry
            .bootstrap(&admin, &log, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let p = principal("svc:crm", "role:writer");
        let (token, _) = registry
            .issue(
                &admin,
                &p,
                None,
                &log,
                &engine(vec![]).await,
                Event::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let who = |r: &Arc<TokenRegistry>, t: &str| r.authenticate(t).ok().map(|(p, _)| p);
        assert_eq!(who(&registry, &token), Some(p.clone()));
        assert_eq!(who(&registry, "sr_wrong"), None);
        for (key, value) in store.scan_prefix(Keyspace::Meta, b"").unwrap_or_default() {
            let raw = token.as_bytes();
            assert!(!key.windows(raw.len()).any(|w| w == raw));
            assert!(!value.windows(raw.len()).any(|w| w == raw));
        }
        let reloaded = Arc::new(
            TokenRegistry::load(store, Arc::new(schema()), TokenOptions::default())
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert_eq!(who(&reloaded, &token), Some(p));
    }

    #[tokio::test]
    async fn only_admins_issue_and_subjects_keep_their_roles() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = TokenRegistry::load(
            Arc::clone(&store),
            Arc::new(schema()),
            TokenOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let log = audit(&store);
        let writer = principal("svc:crm", "role:writer");
        let admin = principal("user:root", ADMIN_ROLE);
        let policy = engine(vec![]).await;
        assert!(
            registry
                .check_issue(&policy.table(), &writer, &writer, None)
                .is_err()
        );
        assert!(
            registry
                .check_issue(&policy.table(), &admin, &writer, None)
                .is_ok()
        );
        registry
            .bootstrap(&admin, &log, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            registry
                .issue(&writer, &writer, None, &log, &policy, Event::default())
                .await
                .is_err()
        );
        assert_eq!(
            registry.principals(),
            std::slice::from_ref(&admin),
            "a refused issue leaves no token"
        );
        registry
            .issue(&admin, &writer, None, &log, &policy, Event::default())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            registry
                .check_issue(
                    &policy.table(),
                    &admin,
                    &principal("svc:crm", "role:admin"),
                    None
                )
                .is_err()
        );
        assert!(
            registry
                .check_issue(&policy.table(), &admin, &writer, None)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn the_policy_follows_issues_and_revocations() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = TokenRegistry::load(
            Arc::clone(&store),
            Arc::new(schema()),
            TokenOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let log = audit(&store);
        let root = principal("user:root", ADMIN_ROLE);
        registry
            .bootstrap(&root, &log, Event::default())
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
                None,
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
            .issue(&root, &x_marketing, None, &log, &policy, Event::default())
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

    #[test]
    fn tokens_stored_before_expiry_and_purposes_load_unbound_and_never_expiring() {
        let store = MemoryStore::new();
        let mut batch = Batch::new();
        let old = br#"{"subject":"svc:old","roles":["role:support"],"created_at_ms":5}"#;
        batch.put(Keyspace::Meta, token_key(&hash("sr_old")), old.to_vec());
        // A purpose the schema no longer declares is dropped: the token may not declare it.
        let gone = br#"{"subject":"svc:b","roles":["role:support"],"created_at_ms":5,
            "expires_at_ms":100,"purposes":["support","retired"]}"#;
        batch.put(Keyspace::Meta, token_key(&hash("sr_gone")), gone.to_vec());
        store.write(batch).unwrap_or_else(|e| panic!("{e}"));
        let clock = Clock::manual(50);
        let options = TokenOptions {
            clock: clock.clone(),
            ..TokenOptions::default()
        };
        let registry = Arc::new(
            TokenRegistry::load(Arc::new(store), Arc::new(schema()), options)
                .unwrap_or_else(|e| panic!("{e}")),
        );
        let (old, credential) = registry
            .authenticate("sr_old")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(old.purposes, None);
        let (bound, _) = registry
            .authenticate("sr_gone")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(bound.purposes_text(), "support");
        clock.advance(Duration::from_millis(50));
        assert_eq!(
            registry.authenticate("sr_gone").err(),
            Some(Rejection::Expired)
        );
        clock.advance(Duration::from_secs(100 * 365 * 24 * 3600));
        assert!(credential.check().is_ok());
        assert_eq!(
            registry.authenticate("sr_nope").err(),
            Some(Rejection::Unknown)
        );
    }

    #[tokio::test]
    async fn fuzz_presented_tokens() {
        use crate::testing::{fuzz, inputs};
        use proptest::prelude::*;
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let registry = Arc::new(
            TokenRegistry::load(
                Arc::clone(&store),
                Arc::new(schema()),
                TokenOptions::default(),
            )
            .unwrap_or_else(|e| panic!("{e}")),
        );
        let token = registry
            .bootstrap(
                &principal("user:root", ADMIN_ROLE),
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
            let known = registry.authenticate(&presented).is_ok();
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
                    expires_at_ms: None,
                    purposes: None,
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
                match TokenRegistry::load(
                    Arc::new(store),
                    Arc::new(schema()),
                    TokenOptions::default(),
                ) {
                    Ok(registry) => prop_assert!(registry.principals().len() <= 1),
                    Err(e) => prop_assert!(matches!(e, Error::DataLoss), "{e}"),
                }
                Ok(())
            },
        );
    }
}
