//! The `pkcs11` key provider: epoch keys and the signing key live in an HSM as non-extractable
//! PKCS#11 objects (through the `cryptoki` crate), so their bytes never enter this process.
//!
//! On the token, each epoch is an AES-256 secret key labelled `strongroom-epoch-<n>` (token
//! object, sensitive, never extractable, encrypt/decrypt only), and the signing key is an
//! Ed25519 pair labelled `strongroom-signing` (`CKM_EC_EDWARDS_KEY_PAIR_GEN`, signing with
//! `CKM_EDDSA`). A sealed data key is `0x02 | iv[12] | ciphertext | tag[16]`: AES-256-GCM with a
//! random IV from the OS, bound to the caller's AAD. Tested against SoftHSM2 (2.6.1 has EdDSA).
//!
//! Sessions: a `cryptoki::Session` is `Send` but not `Sync`, so calls lease one from a small
//! pool and give it back; one more session, opened at login and held for the provider's life,
//! keeps the token logged in (PKCS#11 login is per process, and ends with the last session).
//!
//! With `pkcs11/token.rs` (the module, the token, the PIN file and the key objects), the only
//! code that names `cryptoki` outside the tests; depends on `crypto::provider` alone.

#[cfg(test)]
mod softhsm;
#[cfg(test)]
mod tests;
mod token;

use std::{
    collections::BTreeMap,
    fmt,
    ops::Deref,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError, RwLock},
};

use cryptoki::{
    context::Pkcs11,
    error::{Error as CkError, RvError},
    mechanism::{
        Mechanism, MechanismType,
        aead::GcmParams,
        eddsa::{EddsaParams, EddsaSignatureScheme},
    },
    object::ObjectHandle,
    session::{Session, UserType},
    slot::Slot,
};
use rand::{RngCore, rngs::OsRng};
use zeroize::Zeroizing;

use self::token::{
    context, derivation_secret, find_token, generate_epoch_key, list_epochs, read_pin, signing_pair,
};
use super::provider::{EpochId, KeyError, KeyProvider, PublicKey, Signature, derivation_message};

/// The format byte of a sealed data key (AES-256-GCM on the token).
const SEALED_VERSION: u8 = 0x02;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Idle sessions kept for reuse; more are opened under load and closed when given back.
const MAX_IDLE_SESSIONS: usize = 8;

/// Where the HSM is and how to log in to it: the `[pkcs11]` table of the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pkcs11Config {
    /// The vendor's PKCS#11 module (a shared library), e.g.
    /// `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The label of the token holding (or to hold) the vault's keys.
    pub token_label: String,
    /// A file holding the user PIN (surrounding whitespace ignored). It must be a regular file
    /// owned by the user strongroom runs as and unreadable by group and others (0600).
    pub pin_file: PathBuf,
}

/// Epoch keys and the signing key in an HSM over PKCS#11. See the module docs.
pub struct Pkcs11Provider {
    ctx: Pkcs11,
    slot: Slot,
    module: PathBuf,
    token_label: String,
    /// Holds the login for the provider's life; never used for operations.
    _login: Mutex<Session>,
    idle: Mutex<Vec<Session>>,
    /// The live epochs and their key objects, as last listed from the token. Written only under
    /// the write lock, which `add_epoch` and `destroy_epoch` hold across their token calls.
    epochs: RwLock<BTreeMap<u32, ObjectHandle>>,
    signing_key: ObjectHandle,
    public: PublicKey,
    /// The derivation secret (`derive_key`): HMAC-SHA256 on the token.
    derive_key: ObjectHandle,
}

impl fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Provider")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot", &self.slot.id())
            .field("epochs", &self.epochs())
            .finish_non_exhaustive()
    }
}

/// Whether a failure leaves the session unusable, so it must not go back to the pool.
fn session_broken(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::TokenNotPresent
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

/// A pooled session, given back on drop unless a call broke it.
struct Lease<'a> {
    idle: &'a Mutex<Vec<Session>>,
    session: Option<Session>,
}

impl Lease<'_> {
    fn broken(&mut self, e: &CkError) {
        if session_broken(e) {
            self.session = None;
        }
    }
}

impl Deref for Lease<'_> {
    type Target = Session;
    fn deref(&self) -> &Session {
        // Invariant: `session` is `None` only after `broken`, and then the lease is not used
        // again (each call site returns right after).
        #[allow(clippy::expect_used)]
        self.session
            .as_ref()
            .expect("a lease is not used after it broke")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE_SESSIONS {
                idle.push(session);
            }
        }
    }
}

impl Pkcs11Provider {
    /// Loads the module, finds the token by label and logs in as its user with the PIN from
    /// the PIN file. A token holding no epoch yet gets epoch 1, and one without a signing key
    /// gets an Ed25519 pair, both generated on the token.
    ///
    /// # Errors
    /// An operator message naming what is wrong: the module missing or not loadable, the token
    /// not found (the labels present are listed), the PIN file missing, not ours, or readable
    /// by group or others, the PIN refused or locked, a mechanism the token lacks, or key
    /// objects in a state strongroom did not leave them in. Never the PIN itself.
    ///
    /// PKCS#11 login is per process: while another provider of this process is logged in to
    /// the same token, the token reports "already logged in" and does not check the PIN again.
    /// A vault opens one provider, so this matters only to tests.
    pub fn open(config: &Pkcs11Config) -> Result<Self, String> {
        let Pkcs11Config {
            module,
            token_label,
            pin_file,
        } = config;
        let pin = read_pin(pin_file)?;
        let ctx = context(module)?;
        let slot = find_token(&ctx, module, token_label)?;
        let named = |e: CkError| format!("PKCS#11 token '{token_label}': {e}");

        let mechanisms = ctx.get_mechanism_list(slot).map_err(named)?;
        for (needed, name, what) in [
            (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN", "epoch keys"),
            (MechanismType::AES_GCM, "CKM_AES_GCM", "sealing data keys"),
            (
                MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                "CKM_EC_EDWARDS_KEY_PAIR_GEN",
                "the signing key",
            ),
            (MechanismType::EDDSA, "CKM_EDDSA", "signing"),
            (
                MechanismType::GENERIC_SECRET_KEY_GEN,
                "CKM_GENERIC_SECRET_KEY_GEN",
                "the derivation secret",
            ),
            (
                MechanismType::SHA256_HMAC,
                "CKM_SHA256_HMAC",
                "deriving lookup and pseudonym keys",
            ),
        ] {
            if !mechanisms.contains(&needed) {
                return Err(format!(
                    "PKCS#11 token '{token_label}' does not support {name}, needed for {what}"
                ));
            }
        }

        let login = ctx.open_rw_session(slot).map_err(named)?;
        match login.login(UserType::User, Some(&pin)) {
            // Login is per process: another provider on this token is already logged in.
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(format!(
                    "PKCS#11 token '{token_label}' refused the PIN in {}: wrong PIN",
                    pin_file.display()
                ));
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(format!(
                    "PKCS#11 token '{token_label}': the user PIN is locked (too many wrong \
                     PINs); the token's security officer must unlock it"
                ));
            }
            Err(CkError::Pkcs11(RvError::PinLenRange | RvError::PinInvalid, _)) => {
                return Err(format!(
                    "PKCS#11 token '{token_label}' refused the PIN in {}: not a valid PIN for \
                     this token (length or characters)",
                    pin_file.display()
                ));
            }
            Err(e) => return Err(format!("PKCS#11 token '{token_label}': login failed: {e}")),
        }
        drop(pin);

        let mut epochs = list_epochs(&login).map_err(named)?;
        if epochs.is_empty() {
            let handle = generate_epoch_key(&login, 1).map_err(named)?;
            epochs.insert(1, handle);
        }
        let (signing_key, public) = signing_pair(&login, token_label)?;
        let derive_key = derivation_secret(&login, token_label)?;

        Ok(Self {
            ctx,
            slot,
            module: module.clone(),
            token_label: token_label.clone(),
            _login: Mutex::new(login),
            idle: Mutex::new(Vec::new()),
            epochs: RwLock::new(epochs),
            signing_key,
            public,
            derive_key,
        })
    }

    /// The module path this provider loaded.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The label of the token this provider uses.
    pub fn token_label(&self) -> &str {
        &self.token_label
    }

    fn lease(&self) -> Result<Lease<'_>, KeyError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let session = match pooled {
            Some(session) => session,
            // A new session of this process shares the login that `_login` holds.
            None => self
                .ctx
                .open_rw_session(self.slot)
                .map_err(|e| self.failed("opening a session", &e))?,
        };
        Ok(Lease {
            idle: &self.idle,
            session: Some(session),
        })
    }

    fn failed(&self, what: &str, e: &CkError) -> KeyError {
        KeyError::Provider(format!(
            "PKCS#11 token '{}': {what} failed: {e}",
            self.token_label
        ))
    }

    fn key_of(&self, epoch: EpochId) -> Result<ObjectHandle, KeyError> {
        self.epochs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&epoch.0)
            .copied()
            .ok_or(KeyError::UnknownEpoch(epoch))
    }

    /// Whether `key` still seals and opens: a fixed probe, sealed and opened on the token.
    fn probe(&self, key: ObjectHandle) -> bool {
        let Ok(session) = self.lease() else {
            return false;
        };
        let aad = b"strongroom pkcs11 probe";
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let mut iv_again = iv;
        let (Ok(seal), Ok(open)) = (
            GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into()),
            GcmParams::new(&mut iv_again, aad, (TAG_LEN as u64 * 8).into()),
        ) else {
            return false;
        };
        let probe = [0x5a_u8; 32];
        session
            .encrypt(&Mechanism::AesGcm(seal), key, &probe)
            .and_then(|sealed| session.decrypt(&Mechanism::AesGcm(open), key, &sealed))
            .is_ok_and(|opened| opened == probe)
    }

    /// A key object that vanished under us (destroyed by another process) is an unknown epoch.
    fn vanished(&self, epoch: EpochId, e: &CkError) -> Option<KeyError> {
        if let CkError::Pkcs11(RvError::KeyHandleInvalid | RvError::ObjectHandleInvalid, _) = e {
            self.epochs
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&epoch.0);
            return Some(KeyError::UnknownEpoch(epoch));
        }
        None
    }
}

impl KeyProvider for Pkcs11Provider {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn epochs(&self) -> Vec<EpochId> {
        self.epochs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .map(|n| EpochId(*n))
            .collect()
    }

    fn seal(&self, epoch: EpochId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let key = self.key_of(epoch)?;
        let mut iv = [0u8; IV_LEN];
        OsRng.fill_bytes(&mut iv);
        let mut out = Vec::with_capacity(1 + IV_LEN + plaintext.len() + TAG_LEN);
        out.push(SEALED_VERSION);
        out.extend_from_slice(&iv);
        let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
            .map_err(|e| self.failed("preparing AES-GCM", &e))?;
        let mut session = self.lease()?;
        match session.encrypt(&Mechanism::AesGcm(params), key, plaintext) {
            Ok(sealed) => {
                out.extend_from_slice(&sealed);
                Ok(out)
            }
            Err(e) => {
                session.broken(&e);
                Err(self
                    .vanished(epoch, &e)
                    .unwrap_or_else(|| self.failed("sealing", &e)))
            }
        }
    }

    fn open(
        &self,
        epoch: EpochId,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let key = self.key_of(epoch)?;
        let Some((&SEALED_VERSION, rest)) = sealed.split_first() else {
            return Err(KeyError::Decrypt);
        };
        if rest.len() < IV_LEN + TAG_LEN {
            return Err(KeyError::Decrypt);
        }
        let (iv, ciphertext) = rest.split_at(IV_LEN);
        let mut iv: [u8; IV_LEN] = iv.try_into().map_err(|_| KeyError::Decrypt)?;
        let params = GcmParams::new(&mut iv, aad, (TAG_LEN as u64 * 8).into())
            .map_err(|e| self.failed("preparing AES-GCM", &e))?;
        let mut session = self.lease()?;
        match session.decrypt(&Mechanism::AesGcm(params), key, ciphertext) {
            Ok(plaintext) => Ok(Zeroizing::new(plaintext)),
            // A tag that does not verify, as the spec says it.
            Err(CkError::Pkcs11(
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                _,
            )) => Err(KeyError::Decrypt),
            // SoftHSM2 2.6 reports a tag that does not verify as CKR_GENERAL_ERROR, which is
            // also what a failing token says. A probe round trip under the same key tells them
            // apart: if it works, the token is fine and the sealed bytes were bad.
            Err(e @ CkError::Pkcs11(RvError::GeneralError, _)) => {
                drop(session);
                if self.probe(key) {
                    Err(KeyError::Decrypt)
                } else {
                    Err(self.failed("opening a sealed key", &e))
                }
            }
            Err(e) => {
                session.broken(&e);
                Err(self
                    .vanished(epoch, &e)
                    .unwrap_or_else(|| self.failed("opening a sealed key", &e)))
            }
        }
    }

    fn add_epoch(&self) -> Result<EpochId, KeyError> {
        let mut epochs = self.epochs.write().unwrap_or_else(PoisonError::into_inner);
        let mut session = self.lease()?;
        // Listed afresh, so that a key added by another process is not made twice.
        let listed = list_epochs(&session).map_err(|e| {
            session.broken(&e);
            self.failed("listing epoch keys", &e)
        })?;
        let next = listed
            .keys()
            .chain(epochs.keys())
            .max()
            .map_or(Some(1), |n| n.checked_add(1))
            .ok_or_else(|| KeyError::Provider("no epoch number is left".to_string()))?;
        let handle = generate_epoch_key(&session, next).map_err(|e| {
            session.broken(&e);
            self.failed(&format!("generating the key of epoch {next}"), &e)
        })?;
        match list_epochs(&session) {
            Ok(listed) if listed.get(&next) == Some(&handle) => *epochs = listed,
            // The key is made; a failed re-list leaves the cache to know it.
            Ok(_) | Err(_) => {
                epochs.insert(next, handle);
            }
        }
        Ok(EpochId(next))
    }

    fn refresh(&self) -> Result<(), KeyError> {
        let mut session = self.lease()?;
        let listed = list_epochs(&session).map_err(|e| {
            session.broken(&e);
            self.failed("listing epoch keys", &e)
        })?;
        *self.epochs.write().unwrap_or_else(PoisonError::into_inner) = listed;
        Ok(())
    }

    fn destroy_epoch(&self, epoch: EpochId) -> Result<(), KeyError> {
        let mut epochs = self.epochs.write().unwrap_or_else(PoisonError::into_inner);
        let Some(&handle) = epochs.get(&epoch.0) else {
            return Err(KeyError::UnknownEpoch(epoch));
        };
        if epochs.keys().next_back() == Some(&epoch.0) {
            return Err(KeyError::Provider(format!(
                "key epoch {epoch} is current and cannot be destroyed: add an epoch first"
            )));
        }
        let mut session = self.lease()?;
        match session.destroy_object(handle) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::ObjectHandleInvalid, _)) => {
                epochs.remove(&epoch.0);
                return Err(KeyError::UnknownEpoch(epoch));
            }
            Err(e) => {
                session.broken(&e);
                return Err(self.failed(&format!("destroying the key of epoch {epoch}"), &e));
            }
        }
        epochs.remove(&epoch.0);
        // The token is the truth: the label must be gone from it.
        let listed = list_epochs(&session).map_err(|e| {
            session.broken(&e);
            self.failed("listing epoch keys after a destroy", &e)
        })?;
        if listed.contains_key(&epoch.0) {
            return Err(KeyError::Provider(format!(
                "PKCS#11 token '{}' still lists the key of epoch {epoch} after destroying it",
                self.token_label
            )));
        }
        *epochs = listed;
        Ok(())
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, KeyError> {
        let mut session = self.lease()?;
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Ed25519));
        let signature = session
            .sign(&mechanism, self.signing_key, message)
            .map_err(|e| {
                session.broken(&e);
                self.failed("signing", &e)
            })?;
        let bytes: [u8; 64] = signature.as_slice().try_into().map_err(|_| {
            KeyError::Provider(format!(
                "PKCS#11 token '{}' returned a {}-byte Ed25519 signature",
                self.token_label,
                signature.len()
            ))
        })?;
        Ok(Signature(bytes))
    }

    fn public_key(&self) -> PublicKey {
        self.public
    }

    fn derive_key(&self, label: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        let mut session = self.lease()?;
        let mac = session
            .sign(
                &Mechanism::Sha256Hmac,
                self.derive_key,
                &derivation_message(label),
            )
            .map_err(|e| {
                session.broken(&e);
                self.failed("deriving a key", &e)
            })?;
        let mac = Zeroizing::new(mac);
        let key: [u8; 32] = mac.as_slice().try_into().map_err(|_| {
            KeyError::Provider(format!(
                "PKCS#11 token '{}' returned a {}-byte HMAC-SHA256",
                self.token_label,
                mac.len()
            ))
        })?;
        Ok(Zeroizing::new(key))
    }
}
