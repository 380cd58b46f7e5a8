//! The `file` and `env` key providers: a keyring file in the keys dir holding the epoch keys and
//! the Ed25519 signing key. With `file` (the default) the keyring is plain text, mode 0600; with
//! `env` it is sealed (XChaCha20-Poly1305) under a 256-bit key taken from an environment
//! variable, so a copy of the keys dir alone opens nothing.
//!
//! Text: `strongroom-keyring-v1`, then `signing <64 hex>`, `derive <64 hex>` (the secret lookup
//! and pseudonym keys are derived from; added to a keyring written before it existed at its
//! next open) and one `epoch <n> <64 hex>` per live epoch. Every change (first creation, a new epoch, a destroyed epoch) writes a whole new file
//! beside the old one, fsyncs it, renames it over the old one and fsyncs the directory, so the
//! keyring on disk is always either the old or the new one, never half of each, and a destroyed
//! epoch is in no file the keyring leaves behind. The vault refuses a keyring file that is a
//! symbolic link, that another user owns, or that group or others can read.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError, RwLock},
};

use ed25519_dalek::{Signer, SigningKey};
use rand::{RngCore, rngs::OsRng};
use zeroize::Zeroizing;

use super::{
    envelope::{open_with, seal_with},
    provider::{EpochId, KeyError, KeyProvider, PublicKey, Signature, derive_with},
};
use crate::files;

const HEADER: &str = "strongroom-keyring-v1";
/// Version byte of what the keyring seals (a data key): XChaCha20-Poly1305 under the epoch key.
const SEALED_V1: u8 = 0x01;
/// Version byte of an `env` keyring file, sealed as a whole.
const FILE_SEALED_V1: u8 = 0x51;
const FILE_AAD: &[u8] = b"strongroom/keyring-file/v1";
/// A keyring is a few lines per epoch.
const MAX_KEYRING_BYTES: u64 = 1024 * 1024;

/// The name of the keyring file in the keys dir.
pub const KEYRING_FILE_NAME: &str = "keyring";

/// The keyring file in a keys dir.
pub fn default_keyring_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join(KEYRING_FILE_NAME)
}

struct State {
    epochs: BTreeMap<EpochId, Zeroizing<[u8; 32]>>,
    signing: SigningKey,
    /// The derivation secret (`KeyProvider::derive_key`).
    derive: Zeroizing<[u8; 32]>,
}

/// The `file` and `env` providers.
pub struct Keyring {
    kind: &'static str,
    path: PathBuf,
    /// `env`: the key the file is sealed under.
    file_key: Option<Zeroizing<[u8; 32]>>,
    state: RwLock<State>,
    /// One change written at a time.
    writing: Mutex<()>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("epochs", &self.epochs())
            .finish_non_exhaustive()
    }
}

/// `open(2)` flag: fail rather than follow a symbolic link in the last component.
fn no_follow() -> i32 {
    // O_NOFOLLOW is a small positive flag on every Unix; the conversion cannot fail.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    key
}

impl Keyring {
    /// The `file` provider: the keyring at `path`, created (epoch 1, a new signing key) if
    /// missing.
    ///
    /// # Errors
    /// A message for the operator saying what is wrong with the file. Never key bytes.
    pub fn open_file(path: impl Into<PathBuf>) -> Result<Self, String> {
        Self::open(path.into(), "file", None)
    }

    /// The `env` provider: the keyring at `path`, sealed under the 64 hex digits in the
    /// environment variable `var`; created if missing.
    ///
    /// # Errors
    /// As `open_file`, and when the variable is unset or malformed, or is not the key the
    /// file was sealed under.
    pub fn open_env(path: impl Into<PathBuf>, var: &str) -> Result<Self, String> {
        let value = Zeroizing::new(std::env::var(var).map_err(|_| format!("{var} is not set"))?);
        Self::open(path.into(), "env", Some(env_key(var, &value)?))
    }

    fn open(
        path: PathBuf,
        kind: &'static str,
        file_key: Option<Zeroizing<[u8; 32]>>,
    ) -> Result<Self, String> {
        let dir = files::parent_of(&path)
            .ok_or_else(|| format!("keyring file {} has no directory", path.display()))?;
        files::private_dir(&dir, "keys dir")?;
        let mut ring = Self {
            kind,
            path,
            file_key,
            state: RwLock::new(State {
                epochs: BTreeMap::new(),
                signing: SigningKey::from_bytes(&random_key()),
                derive: random_key(),
            }),
            writing: Mutex::new(()),
        };
        match ring.read_file()? {
            Some((state, true)) => ring.state = RwLock::new(state),
            Some((state, false)) => {
                // Written before keyrings held a derivation secret: it gets one now, once.
                ring.write_file(&state)?;
                ring.state = RwLock::new(state);
            }
            None => {
                let first = State {
                    epochs: BTreeMap::from([(EpochId(1), random_key())]),
                    signing: SigningKey::from_bytes(&random_key()),
                    derive: random_key(),
                };
                ring.write_file(&first)?;
                ring.state = RwLock::new(first);
            }
        }
        Ok(ring)
    }

    /// The file's contents and whether it held a derivation secret (one is made if not), or
    /// `None` if there is no file yet.
    fn read_file(&self) -> Result<Option<(State, bool)>, String> {
        let shown = self.path.display();
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "keyring file {shown} is a symbolic link: strongroom reads its keys only \
                     from a regular file it owns; replace the link with the file"
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read keyring file {shown}: {e}")),
        }
        // Checks are made on the opened file, so the file cannot be swapped after them.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(no_follow())
            .open(&self.path)
            .map_err(|e| format!("cannot open keyring file {shown}: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read keyring file {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("keyring file {shown} is not a regular file"));
        }
        let me = files::effective_uid();
        if meta.uid() != me {
            return Err(format!(
                "keyring file {shown} is owned by uid {}, not by uid {me} that strongroom runs \
                 as: another user could have planted or replaced it; check it, then `chown` it \
                 to this user",
                meta.uid()
            ));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "keyring file {shown} has mode {mode:04o}: group or others can read it; run \
                 `chmod 600 {shown}` and start again"
            ));
        }
        if meta.len() > MAX_KEYRING_BYTES {
            return Err(format!(
                "keyring file {shown} is {} bytes: not a keyring",
                meta.len()
            ));
        }
        // Room for all of it up front: a growing buffer would leave copies of keys behind.
        let capacity = usize::try_from(meta.len()).unwrap_or(0) + 1;
        let mut bytes = Zeroizing::new(Vec::with_capacity(capacity));
        file.take(MAX_KEYRING_BYTES)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read keyring file {shown}: {e}"))?;
        let text = match &self.file_key {
            None => bytes,
            Some(key) => open_with(key, FILE_SEALED_V1, &bytes, FILE_AAD).map_err(|_| {
                format!(
                    "keyring file {shown} does not open with the key in the environment: it \
                     was sealed under another key, or altered"
                )
            })?,
        };
        let text = std::str::from_utf8(&text)
            .map_err(|_| format!("keyring file {shown} is malformed: not text"))?;
        parse(text)
            .map(Some)
            .map_err(|problem| format!("keyring file {shown} is malformed: {problem}"))
    }

    /// Writes `state` as the whole new keyring: temporary file, fsync, rename, fsync dir.
    fn write_file(&self, state: &State) -> Result<(), String> {
        let shown = self.path.display();
        let dir = files::parent_of(&self.path)
            .ok_or_else(|| format!("keyring file {shown} has no directory"))?;
        // Built in one buffer sized up front, hex written in place: no temporary string and no
        // reallocation leaves a copy of a key in freed memory.
        const COMMENT: &str = "# strongroom keyring: the key epochs and the signing key. Keep it \
            secret, apart from the data, and back it\n# up under a retention no longer than the \
            shred horizon: an old copy keeps destroyed epochs alive.\n";
        let mut text = Zeroizing::new(String::with_capacity(
            COMMENT.len() + HEADER.len() + 160 + state.epochs.len() * 90,
        ));
        let mut hex_buf = Zeroizing::new([0u8; 64]);
        let mut push_key = |text: &mut String, key: &[u8; 32]| {
            // 32 bytes always encode into 64 hex digits, which are ASCII.
            if hex::encode_to_slice(key, hex_buf.as_mut()).is_ok()
                && let Ok(digits) = std::str::from_utf8(hex_buf.as_ref())
            {
                text.push_str(digits);
            }
        };
        text.push_str(COMMENT);
        text.push_str(HEADER);
        text.push_str("\nsigning ");
        let signing = Zeroizing::new(state.signing.to_bytes());
        push_key(&mut text, &signing);
        text.push_str("\nderive ");
        push_key(&mut text, &state.derive);
        text.push('\n');
        for (id, key) in &state.epochs {
            text.push_str("epoch ");
            text.push_str(&id.0.to_string());
            text.push(' ');
            push_key(&mut text, key);
            text.push('\n');
        }
        let bytes = match &self.file_key {
            None => Zeroizing::new(text.as_bytes().to_vec()),
            Some(key) => Zeroizing::new(seal_with(key, FILE_SEALED_V1, text.as_bytes(), FILE_AAD)),
        };
        let tmp = self.path.with_extension("new");
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", tmp.display())),
        }
        // create_new (O_EXCL) never follows a symbolic link; O_NOFOLLOW says so twice.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&tmp)
            .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        let written = file.write_all(&bytes).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(format!("cannot write {}: {e}", tmp.display()));
        }
        fs::rename(&tmp, &self.path)
            .map_err(|e| format!("cannot replace keyring file {shown}: {e}"))?;
        // The rename must survive a crash too, or a restart reads the old keyring.
        files::sync_dir(&dir)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// An exclusive lock on `keyring.lock` beside the keyring file, held until dropped.
    fn lock_file(&self) -> Result<fs::File, String> {
        let path = self.path.with_extension("lock");
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| format!("cannot lock {}: {e}", path.display()))?;
        Ok(file)
    }

    /// Applies `change` to the keyring as the file holds it now, writes it, and only then
    /// makes it live. Other processes sharing the file (vault nodes on one keys dir) change it
    /// one at a time: each holds an exclusive lock on `keyring.lock` beside it from the read to
    /// the rename, so none writes over an epoch another added.
    fn change(
        &self,
        change: impl FnOnce(&mut State) -> Result<(), KeyError>,
    ) -> Result<(), KeyError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let _shared_file = self.lock_file().map_err(KeyError::Provider)?;
        let mut next = match self.read_file().map_err(KeyError::Provider)? {
            Some((state, _)) => state,
            None => {
                let now = self.read();
                State {
                    epochs: now
                        .epochs
                        .iter()
                        .map(|(id, key)| (*id, Zeroizing::new(**key)))
                        .collect(),
                    signing: SigningKey::from_bytes(&Zeroizing::new(now.signing.to_bytes())),
                    derive: Zeroizing::new(*now.derive),
                }
            }
        };
        change(&mut next)?;
        self.write_file(&next).map_err(KeyError::Provider)?;
        *self.state.write().unwrap_or_else(PoisonError::into_inner) = next;
        Ok(())
    }
}

/// The key an `env` keyring is sealed under, from the variable's value.
fn env_key(var: &str, value: &str) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut key = Zeroizing::new([0u8; 32]);
    if value.len() != 64 || hex::decode_to_slice(value.as_bytes(), key.as_mut()).is_err() {
        return Err(format!(
            "{var} is malformed: it must be 64 hex digits (256 bits)"
        ));
    }
    Ok(key)
}

/// The keyring in `text`, and whether it held a derivation secret (a new one if not).
fn parse(text: &str) -> Result<(State, bool), String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    if lines.next() != Some(HEADER) {
        return Err(format!("the first line must be {HEADER}"));
    }
    let mut signing = None;
    let mut derive = None;
    let mut epochs = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let line_no = n + 2;
        match parts.as_slice() {
            ["signing", key] if signing.is_none() => {
                signing = Some(SigningKey::from_bytes(&*key_bytes(key, line_no)?));
            }
            ["derive", key] if derive.is_none() => derive = Some(key_bytes(key, line_no)?),
            ["epoch", id, key] => {
                let id = id.parse::<u32>().ok().filter(|&i| i > 0).ok_or_else(|| {
                    format!("line {line_no}: the epoch must be a positive integer")
                })?;
                if epochs
                    .insert(EpochId(id), key_bytes(key, line_no)?)
                    .is_some()
                {
                    return Err(format!("line {line_no}: epoch {id} appears twice"));
                }
            }
            _ => {
                return Err(format!(
                    "line {line_no}: expected `signing <64 hex digits>` (once), `derive <64 hex \
                     digits>` (once) or `epoch <n> <64 hex digits>`"
                ));
            }
        }
    }
    let signing = signing.ok_or("no signing key")?;
    if epochs.is_empty() {
        return Err("no epoch".into());
    }
    let held = derive.is_some();
    let derive = derive.unwrap_or_else(random_key);
    Ok((
        State {
            epochs,
            signing,
            derive,
        },
        held,
    ))
}

fn key_bytes(hex_text: &str, line_no: usize) -> Result<Zeroizing<[u8; 32]>, String> {
    let mut key = Zeroizing::new([0u8; 32]);
    if hex_text.len() != 64 || hex::decode_to_slice(hex_text, key.as_mut()).is_err() {
        return Err(format!(
            "line {line_no}: a key must be 64 hex digits (256 bits)"
        ));
    }
    Ok(key)
}

impl KeyProvider for Keyring {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn epochs(&self) -> Vec<EpochId> {
        self.read().epochs.keys().copied().collect()
    }

    fn seal(&self, epoch: EpochId, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
        let state = self.read();
        let key = state
            .epochs
            .get(&epoch)
            .ok_or(KeyError::UnknownEpoch(epoch))?;
        Ok(seal_with(key, SEALED_V1, plaintext, aad))
    }

    fn open(
        &self,
        epoch: EpochId,
        sealed: &[u8],
        aad: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        let state = self.read();
        let key = state
            .epochs
            .get(&epoch)
            .ok_or(KeyError::UnknownEpoch(epoch))?;
        open_with(key, SEALED_V1, sealed, aad).map_err(|_| KeyError::Decrypt)
    }

    fn add_epoch(&self) -> Result<EpochId, KeyError> {
        let mut added = EpochId(0);
        self.change(|state| {
            let last = state.epochs.keys().last().map_or(0, |e| e.0);
            added = EpochId(
                last.checked_add(1)
                    .ok_or_else(|| KeyError::Provider("no epoch numbers left".into()))?,
            );
            state.epochs.insert(added, random_key());
            Ok(())
        })?;
        Ok(added)
    }

    fn refresh(&self) -> Result<(), KeyError> {
        let _writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        let _shared_file = self.lock_file().map_err(KeyError::Provider)?;
        match self.read_file().map_err(KeyError::Provider)? {
            Some((state, _)) => {
                *self.state.write().unwrap_or_else(PoisonError::into_inner) = state;
                Ok(())
            }
            None => Err(KeyError::Provider(format!(
                "keyring file {} is gone",
                self.path.display()
            ))),
        }
    }

    fn destroy_epoch(&self, epoch: EpochId) -> Result<(), KeyError> {
        self.change(|state| {
            if !state.epochs.contains_key(&epoch) {
                return Err(KeyError::UnknownEpoch(epoch));
            }
            if state.epochs.keys().last() == Some(&epoch) {
                return Err(KeyError::Provider(format!(
                    "epoch {epoch} is the current epoch and cannot be destroyed"
                )));
            }
            state.epochs.remove(&epoch);
            Ok(())
        })
    }

    fn sign(&self, message: &[u8]) -> Result<Signature, KeyError> {
        Ok(Signature(self.read().signing.sign(message).to_bytes()))
    }

    fn public_key(&self) -> PublicKey {
        PublicKey(self.read().signing.verifying_key().to_bytes())
    }

    fn derive_key(&self, label: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
        Ok(derive_with(&self.read().derive, label))
    }
}

/// A file keyring in a directory removed at once: its keys live on in memory, for unit tests.
#[cfg(test)]
pub(crate) fn throwaway() -> Keyring {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    Keyring::open_file(dir.path().join("keyring")).unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::provider::verify_signature;

    fn ring(dir: &Path) -> Keyring {
        Keyring::open_file(default_keyring_path(dir)).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn creates_0600_reloads_and_rotates_durably() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = default_keyring_path(dir.path());
        let first = ring(dir.path());
        let mode = fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        assert_eq!(first.epochs(), vec![EpochId(1)]);
        let sealed = first
            .seal(EpochId(1), b"dek", b"ctx")
            .unwrap_or_else(|e| panic!("{e}"));
        let signature = first.sign(b"msg").unwrap_or_else(|e| panic!("{e}"));
        assert!(verify_signature(&first.public_key(), b"msg", &signature));
        assert!(!verify_signature(&first.public_key(), b"msh", &signature));

        let two = first.add_epoch().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(two, EpochId(2));
        let again = ring(dir.path());
        assert_eq!(again.epochs(), vec![EpochId(1), EpochId(2)]);
        assert_eq!(again.public_key(), first.public_key());
        assert_eq!(
            again
                .open(EpochId(1), &sealed, b"ctx")
                .map(|v| v.to_vec())
                .ok(),
            Some(b"dek".to_vec())
        );
        assert_eq!(
            again.open(EpochId(1), &sealed, b"other").err(),
            Some(KeyError::Decrypt)
        );
        // Epoch 1's key bytes, as the file held them before the destruction.
        let old_text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let epoch1_line = old_text
            .lines()
            .find(|l| l.starts_with("epoch 1 "))
            .unwrap_or_else(|| panic!("the keyring names epoch 1"))
            .to_owned();
        assert!(again.destroy_epoch(EpochId(2)).is_err(), "current epoch");
        again
            .destroy_epoch(EpochId(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            again.open(EpochId(1), &sealed, b"ctx").err(),
            Some(KeyError::UnknownEpoch(EpochId(1)))
        );
        let after = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        let key_hex = epoch1_line.rsplit(' ').next().unwrap_or("?");
        assert!(!after.contains(key_hex));
        assert!(!dir.path().join("keyring.new").exists());
        assert_eq!(ring(dir.path()).epochs(), vec![EpochId(2)]);
    }

    #[test]
    fn derived_keys_are_stable_distinct_and_added_to_old_keyrings() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = default_keyring_path(dir.path());
        let derive =
            |ring: &Keyring, label: &str| *ring.derive_key(label).unwrap_or_else(|e| panic!("{e}"));
        let first = ring(dir.path());
        let email = derive(&first, "index/customers/email");
        assert_ne!(email, derive(&first, "index/customers/phone"));
        assert_ne!(email, [0u8; 32]);
        // Stable across restarts and epoch rotation.
        first.add_epoch().unwrap_or_else(|e| panic!("{e}"));
        first
            .destroy_epoch(EpochId(1))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(derive(&ring(dir.path()), "index/customers/email"), email);
        // The derived key is not the secret, and the secret is in the file.
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!text.contains(&hex::encode(email)));
        let secret = text
            .lines()
            .find_map(|l| l.strip_prefix("derive "))
            .unwrap_or_else(|| panic!("no derive line"))
            .to_owned();
        // A keyring written before the secret existed gets one at its next open, kept after.
        let old: String = text
            .lines()
            .filter(|l| !l.starts_with("derive "))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&path, old).unwrap_or_else(|e| panic!("{e}"));
        let migrated = derive(&ring(dir.path()), "index/customers/email");
        assert_ne!(migrated, email);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains("derive ") && !text.contains(&secret));
        assert_eq!(derive(&ring(dir.path()), "index/customers/email"), migrated);
    }

    #[test]
    fn refuses_links_readable_or_malformed_files_without_echoing_them() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = default_keyring_path(dir.path());
        ring(dir.path());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = Keyring::open_file(&path).err().unwrap_or_default();
        assert!(err.contains("group or others"), "{err}");
        fs::write(&path, format!("{HEADER}\nsigning abcd\nepoch 1 abcd\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = Keyring::open_file(&path).err().unwrap_or_default();
        assert!(err.contains("malformed"), "{err}");
        assert!(!err.contains("abcd"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap_or_else(|e| panic!("{e}"));
        let err = Keyring::open_file(&link).err().unwrap_or_default();
        assert!(err.contains("symbolic link"), "{err}");
        if files::effective_uid() == 0 {
            let other = dir.path().join("other");
            ring(&other);
            std::os::unix::fs::chown(default_keyring_path(&other), Some(65534), None)
                .unwrap_or_else(|e| panic!("{e}"));
            let err = Keyring::open_file(default_keyring_path(&other))
                .err()
                .unwrap_or_default();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }
    }

    #[test]
    fn env_keyring_is_sealed_and_needs_its_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = default_keyring_path(dir.path());
        let key = |hex_text: &str| env_key("VAR", hex_text).unwrap_or_else(|e| panic!("{e}"));
        let first = Keyring::open(path.clone(), "env", Some(key(&"ab".repeat(32))))
            .unwrap_or_else(|e| panic!("{e}"));
        let raw = fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(!String::from_utf8_lossy(&raw).contains(HEADER));
        let again = Keyring::open(path.clone(), "env", Some(key(&"ab".repeat(32))))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.public_key(), first.public_key());
        let err = Keyring::open(path.clone(), "env", Some(key(&"cd".repeat(32))))
            .err()
            .unwrap_or_default();
        assert!(err.contains("does not open"), "{err}");
        let err = env_key("VAR", "short").err().unwrap_or_default();
        assert!(
            err.contains("64 hex digits") && !err.contains("short"),
            "{err}"
        );
    }

    #[test]
    fn fuzz_keyring_text() {
        use proptest::prelude::*;
        let valid = (
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<[u8; 32]>(), 1..4),
        )
            .prop_map(|(signing, epochs)| {
                let mut text = format!("{HEADER}\nsigning {}\n", hex::encode(signing));
                for (n, key) in epochs.iter().enumerate() {
                    text.push_str(&format!("epoch {} {}\n", n + 1, hex::encode(key)));
                }
                text.into_bytes()
            });
        let dict = &[
            "\n",
            " ",
            "#",
            "epoch",
            "signing",
            "derive",
            HEADER,
            "0",
            "4294967296",
            "-1",
        ];
        let strategy = crate::testing::inputs(valid, dict);
        crate::testing::fuzz("keyring text", 256, strategy, |input| {
            // Never a panic; what parses has a signing key and at least one epoch, and an
            // error never repeats a key line.
            match std::str::from_utf8(&input.bytes).map(parse) {
                Ok(Ok((state, _))) => prop_assert!(!state.epochs.is_empty()),
                Ok(Err(problem)) => prop_assert!(problem.len() < 200, "{problem}"),
                Err(_) => {}
            }
            Ok(())
        });
    }
}
