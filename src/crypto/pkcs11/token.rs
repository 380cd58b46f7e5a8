//! The token side of the `pkcs11` provider: loading the module, finding the token by label,
//! reading the PIN file, and the key objects strongroom keeps on the token (their labels,
//! templates and lookups). Names `cryptoki`; depends on `crypto::provider` and `files` only.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    io::Read,
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Mutex, OnceLock, PoisonError},
};

use cryptoki::{
    context::{CInitializeArgs, CInitializeFlags, Pkcs11},
    error::{Error as CkError, RvError},
    mechanism::Mechanism,
    object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle},
    session::Session,
    slot::Slot,
    types::AuthPin,
};
use zeroize::Zeroizing;

use crate::{crypto::provider::PublicKey, files};

/// Label prefix of the epoch key objects: `strongroom-epoch-<n>`.
pub(super) const EPOCH_LABEL_PREFIX: &str = "strongroom-epoch-";
/// Label of the signing key pair (both halves).
pub(super) const SIGNING_LABEL: &str = "strongroom-signing";
/// Label of the derivation secret (`KeyProvider::derive_key`): a generic secret key that can
/// only sign with HMAC-SHA256.
pub(super) const DERIVE_LABEL: &str = "strongroom-derive";

/// DER of the Ed25519 curve OID (1.3.101.112), the `CKA_EC_PARAMS` of the signing key.
const ED25519_OID: [u8; 5] = [0x06, 0x03, 0x2b, 0x65, 0x70];
/// A PIN file larger than this is not a PIN file.
const MAX_PIN_FILE_BYTES: u64 = 1024;

/// One loaded and initialized context per module, for the life of the process: `C_Initialize`
/// is once per process, and a second provider on the same module (a reopen) shares it.
pub(super) fn context(module: &Path) -> Result<Pkcs11, String> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let shown = module.display();
    match fs::metadata(module) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(format!("PKCS#11 module {shown} is not a file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "PKCS#11 module {shown} not found: install the HSM's PKCS#11 library (for \
                 SoftHSM2, run scripts/install-deps.sh) or fix the module path in the config"
            ));
        }
        Err(e) => return Err(format!("cannot read PKCS#11 module {shown}: {e}")),
    }
    // The same library under two paths (a symlink) is one context: dlopen shares it.
    let key = fs::canonicalize(module).unwrap_or_else(|_| module.to_path_buf());
    let mut contexts = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(ctx) = contexts.get(&key) {
        return Ok(ctx.clone());
    }
    let ctx = Pkcs11::new(&key).map_err(|e| format!("cannot load PKCS#11 module {shown}: {e}"))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(format!("PKCS#11 module {shown} failed to initialize: {e}")),
    }
    contexts.insert(key, ctx.clone());
    Ok(ctx)
}

/// Reads the user PIN: a regular file of ours, 0600, not a symlink, trimmed, not empty.
pub(super) fn read_pin(path: &Path) -> Result<AuthPin, String> {
    let shown = path.display();
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                format!("PKCS#11 PIN file {shown} not found: create it (mode 0600) or fix pin_file")
            } else {
                format!("cannot open PKCS#11 PIN file {shown}: {e}")
            }
        })?;
    // Checks are made on the opened file, so it cannot be swapped after them.
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read PKCS#11 PIN file {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("PKCS#11 PIN file {shown} is not a regular file"));
    }
    let me = files::effective_uid();
    if meta.uid() != me {
        return Err(format!(
            "PKCS#11 PIN file {shown} is owned by uid {}, not by uid {me} that strongroom runs \
             as: `chown` it to this user",
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "PKCS#11 PIN file {shown} has mode {mode:04o}: group or others can read it; run \
             `chmod 600 {shown}` and start again"
        ));
    }
    if meta.len() > MAX_PIN_FILE_BYTES {
        return Err(format!(
            "PKCS#11 PIN file {shown} is {} bytes: not a PIN file",
            meta.len()
        ));
    }
    // Room for all of it up front: a growing buffer would leave copies of the PIN behind.
    let capacity = usize::try_from(meta.len()).unwrap_or(0) + 1;
    let mut text = Zeroizing::new(String::with_capacity(capacity));
    file.take(MAX_PIN_FILE_BYTES)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read PKCS#11 PIN file {shown}: {e}"))?;
    let pin = text.trim();
    if pin.is_empty() {
        return Err(format!("PKCS#11 PIN file {shown} is empty"));
    }
    Ok(AuthPin::from(pin))
}

fn no_follow() -> i32 {
    // O_NOFOLLOW is a small positive flag on every Unix; the conversion cannot fail.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

/// The epoch a key object's label names, if it is one of ours (`strongroom-epoch-<n>`, n >= 1,
/// written without leading zeros).
pub(super) fn epoch_of_label(label: &[u8]) -> Option<u32> {
    let digits = std::str::from_utf8(label)
        .ok()?
        .strip_prefix(EPOCH_LABEL_PREFIX)?;
    let n: u32 = digits.parse().ok()?;
    (n >= 1 && n.to_string() == digits).then_some(n)
}

fn epoch_label(n: u32) -> Vec<u8> {
    format!("{EPOCH_LABEL_PREFIX}{n}").into_bytes()
}

/// The 32-byte Ed25519 public key in a `CKA_EC_POINT`: a DER OCTET STRING (`04 20 <key>`, as
/// PKCS#11 3.0 and SoftHSM2 write it), or the raw 32 bytes (as some modules do).
pub(super) fn ed25519_point(ec_point: &[u8]) -> Option<[u8; 32]> {
    match ec_point {
        [0x04, 0x20, rest @ ..] => rest.try_into().ok(),
        raw => raw.try_into().ok(),
    }
}

pub(super) fn find_token(ctx: &Pkcs11, module: &Path, label: &str) -> Result<Slot, String> {
    let shown = module.display();
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| format!("PKCS#11 module {shown}: cannot list slots: {e}"))?;
    let mut found = Vec::new();
    let mut present = Vec::new();
    for slot in slots {
        let info = ctx
            .get_token_info(slot)
            .map_err(|e| format!("PKCS#11 module {shown}: cannot read a token's info: {e}"))?;
        if !info.token_initialized() {
            continue;
        }
        let name = info.label().trim_end();
        if name == label {
            found.push(slot);
        } else {
            present.push(format!("'{name}'"));
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(format!(
            "no PKCS#11 token labelled '{label}' in module {shown} (tokens present: {}); \
             initialize one or fix token_label in the config",
            if present.is_empty() {
                "none".to_string()
            } else {
                present.join(", ")
            }
        )),
        several => Err(format!(
            "{} PKCS#11 tokens are labelled '{label}' in module {shown}: ambiguous; relabel \
             all but one",
            several.len()
        )),
    }
}

/// The epoch key objects on the token, by epoch.
pub(super) fn list_epochs(session: &Session) -> Result<BTreeMap<u32, ObjectHandle>, CkError> {
    let handles = session.find_objects(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
    ])?;
    let mut epochs = BTreeMap::new();
    for handle in handles {
        for attribute in session.get_attributes(handle, &[AttributeType::Label])? {
            if let Attribute::Label(label) = attribute
                && let Some(n) = epoch_of_label(&label)
            {
                // Two objects with one epoch's label: keep the first; opening under it tries
                // that one. strongroom never makes two (add_epoch holds the write lock).
                epochs.entry(n).or_insert(handle);
            }
        }
    }
    Ok(epochs)
}

/// A new AES-256 epoch key on the token that never leaves it.
pub(super) fn generate_epoch_key(session: &Session, n: u32) -> Result<ObjectHandle, CkError> {
    session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(epoch_label(n)),
        ],
    )
}

/// The derivation secret: found by label, or generated (256 bits, on the token, sensitive and
/// never extractable, HMAC signing only) when there is none.
pub(super) fn derivation_secret(session: &Session, token: &str) -> Result<ObjectHandle, String> {
    let named = |e: CkError| format!("PKCS#11 token '{token}': {e}");
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Label(DERIVE_LABEL.as_bytes().to_vec()),
        ])
        .map_err(named)?;
    match found.as_slice() {
        [key] => Ok(*key),
        [] => session
            .generate_key(
                &Mechanism::GenericSecretKeyGen,
                &[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Sign(true),
                    Attribute::Verify(false),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                    Attribute::Label(DERIVE_LABEL.as_bytes().to_vec()),
                ],
            )
            .map_err(|e| {
                format!("PKCS#11 token '{token}': cannot generate the derivation secret: {e}")
            }),
        more => Err(format!(
            "PKCS#11 token '{token}' holds {} secret keys labelled '{DERIVE_LABEL}' (expected \
             one, or none): strongroom did not leave it so; check the token",
            more.len()
        )),
    }
}

/// The signing key pair: found by label, or generated when neither half exists.
pub(super) fn signing_pair(
    session: &Session,
    token: &str,
) -> Result<(ObjectHandle, PublicKey), String> {
    let named = |e: CkError| format!("PKCS#11 token '{token}': {e}");
    let find = |class| {
        session.find_objects(&[
            Attribute::Class(class),
            Attribute::KeyType(KeyType::EC_EDWARDS),
            Attribute::Token(true),
            Attribute::Label(SIGNING_LABEL.as_bytes().to_vec()),
        ])
    };
    let private = find(ObjectClass::PRIVATE_KEY).map_err(named)?;
    let public = find(ObjectClass::PUBLIC_KEY).map_err(named)?;
    let (private, public) = match (private.as_slice(), public.as_slice()) {
        ([private], [public]) => (*private, *public),
        ([], []) => {
            let (public, private) = session
                .generate_key_pair(
                    &Mechanism::EccEdwardsKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::Private(false),
                        Attribute::Verify(true),
                        Attribute::EcParams(ED25519_OID.to_vec()),
                        Attribute::Label(SIGNING_LABEL.as_bytes().to_vec()),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Extractable(false),
                        Attribute::Sign(true),
                        Attribute::Derive(false),
                        Attribute::Label(SIGNING_LABEL.as_bytes().to_vec()),
                    ],
                )
                .map_err(|e| {
                    format!("PKCS#11 token '{token}': cannot generate the signing key: {e}")
                })?;
            (private, public)
        }
        (private, public) => {
            return Err(format!(
                "PKCS#11 token '{token}' holds {} private and {} public Ed25519 keys labelled \
                 '{SIGNING_LABEL}' (expected one of each, or none): strongroom did not leave \
                 it so; check the token",
                private.len(),
                public.len()
            ));
        }
    };
    let point = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(named)?
        .into_iter()
        .find_map(|a| {
            if let Attribute::EcPoint(point) = a {
                Some(point)
            } else {
                None
            }
        })
        .ok_or_else(|| {
            format!("PKCS#11 token '{token}': the signing public key has no CKA_EC_POINT")
        })?;
    let key = ed25519_point(&point).ok_or_else(|| {
        format!(
            "PKCS#11 token '{token}': the signing public key's CKA_EC_POINT ({} bytes) is not \
             an Ed25519 point",
            point.len()
        )
    })?;
    Ok((private, PublicKey(key)))
}
