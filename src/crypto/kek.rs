//! Where the master key comes from. The default is a key file in the keys dir (never inside
//! the data dir, so a copy of the data dir does not carry its key), created on first start
//! with mode 0600 in a 0700 directory and made durable (file and directory synced). The vault
//! refuses a key file that is a symbolic link, that another user owns, or that group or others
//! can read.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use super::{Kek, KekId};
use crate::files;

const HEADER: &str = "strongroom-kek-v1";

/// A key file is one short line and comments.
const MAX_KEY_FILE_BYTES: u64 = 64 * 1024;

/// The name of the key file in the keys dir.
pub const KEY_FILE_NAME: &str = "master.key";

/// A source of the master key.
pub trait KekProvider {
    /// Loads (or, where the provider may, creates) the current KEK.
    ///
    /// # Errors
    /// A message for the operator saying what is wrong with the key source. Never key bytes.
    fn load(&self) -> Result<Kek, String>;
}

/// The master key in a file: one line `strongroom-kek-v1 <id> <64 hex digits>`.
#[derive(Debug, Clone)]
pub struct FileKekProvider {
    path: PathBuf,
}

/// `open(2)` flag: fail rather than follow a symbolic link in the last component.
fn no_follow() -> i32 {
    // O_NOFOLLOW is a small positive flag on every Unix; the conversion cannot fail.
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

impl FileKekProvider {
    /// A provider for the key file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn create(&self, dir: &Path) -> Result<Kek, String> {
        let kek = Kek::generate(KekId(1));
        let text = Zeroizing::new(format!(
            "# strongroom master key. Keep it secret and backed up apart from the data:\n\
             # without it no record can be read.\n{HEADER} {} {}\n",
            kek.id().0,
            hex::encode(kek.bytes())
        ));
        // create_new (O_EXCL) never follows a symbolic link; O_NOFOLLOW says so twice.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&self.path)
            .map_err(|e| format!("cannot create master key file {}: {e}", self.path.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write master key file {}: {e}", self.path.display()))?;
        // The file's directory entry must survive a crash too, or a restart makes a new key.
        files::sync_dir(dir)?;
        Ok(kek)
    }
}

impl KekProvider for FileKekProvider {
    fn load(&self) -> Result<Kek, String> {
        let path = &self.path;
        let shown = path.display();
        let dir = files::parent_of(path)
            .ok_or_else(|| format!("master key file {shown} has no directory"))?;
        files::private_dir(&dir, "keys dir")?;
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!(
                    "master key file {shown} is a symbolic link: strongroom reads its master key \
                     only from a regular file it owns; replace the link with the file"
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.create(&dir),
            Err(e) => return Err(format!("cannot read master key file {shown}: {e}")),
        }
        // Checks are made on the opened file, so the file cannot be swapped after them.
        let file = fs::OpenOptions::new()
            .read(true)
            .custom_flags(no_follow())
            .open(path)
            .map_err(|e| format!("cannot open master key file {shown}: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("cannot read master key file {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("master key file {shown} is not a regular file"));
        }
        let me = files::effective_uid();
        if meta.uid() != me {
            return Err(format!(
                "master key file {shown} is owned by uid {}, not by uid {me} that strongroom \
                 runs as: another user could have planted or replaced it; check it, then \
                 `chown` it to this user",
                meta.uid()
            ));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "master key file {shown} has mode {mode:04o}: group or others can read it; \
                 run `chmod 600 {shown}` and start again"
            ));
        }
        if meta.len() > MAX_KEY_FILE_BYTES {
            return Err(format!(
                "master key file {shown} is {} bytes: not a key file",
                meta.len()
            ));
        }
        // Room for all of it up front: a growing buffer would leave copies of the key behind.
        let capacity = usize::try_from(meta.len()).unwrap_or(0) + 1;
        let mut text = Zeroizing::new(String::with_capacity(capacity));
        file.take(MAX_KEY_FILE_BYTES)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read master key file {shown}: {e}"))?;
        parse_key_text(&text)
            .map_err(|problem| format!("master key file {shown} is malformed: {problem}"))
    }
}

/// The master key from an environment variable holding `<64 hex digits>` (KEK id 1) or
/// `<id>:<64 hex digits>`.
#[derive(Debug, Clone)]
pub struct EnvKekProvider {
    var: String,
}

impl EnvKekProvider {
    /// A provider reading the variable `var`.
    pub fn new(var: impl Into<String>) -> Self {
        Self { var: var.into() }
    }
}

impl KekProvider for EnvKekProvider {
    fn load(&self) -> Result<Kek, String> {
        let value = Zeroizing::new(
            std::env::var(&self.var).map_err(|_| format!("{} is not set", self.var))?,
        );
        let (id, key) = value.split_once(':').unwrap_or(("1", value.as_str()));
        parse_parts(id, key).map_err(|problem| format!("{} is malformed: {problem}", self.var))
    }
}

fn parse_key_text(text: &str) -> Result<Kek, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let line = lines.next().ok_or("no key line")?;
    if lines.next().is_some() {
        return Err("more than one key line".into());
    }
    let mut parts = line.split_whitespace();
    if parts.next() != Some(HEADER) {
        return Err(format!("the key line must start with {HEADER}"));
    }
    let (Some(id), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("expected `{HEADER} <id> <64 hex digits>`"));
    };
    parse_parts(id, key)
}

fn parse_parts(id: &str, key_hex: &str) -> Result<Kek, String> {
    let id: u32 = id
        .parse()
        .map_err(|_| "the key id must be a positive integer".to_owned())?;
    if id == 0 {
        return Err("the key id must be a positive integer".into());
    }
    let mut key = Zeroizing::new([0u8; 32]);
    if key_hex.len() != 64 || hex::decode_to_slice(key_hex, key.as_mut()).is_err() {
        return Err("the key must be 64 hex digits (256 bits)".into());
    }
    Ok(Kek::new(KekId(id), key))
}

/// The key file in a keys dir.
pub fn default_key_path(keys_dir: &Path) -> PathBuf {
    keys_dir.join(KEY_FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_0600_and_reloads_the_same_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let provider = FileKekProvider::new(default_key_path(dir.path()));
        let first = provider.load().unwrap_or_else(|e| panic!("{e}"));
        let mode = fs::metadata(default_key_path(dir.path()))
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0);
        assert_eq!(mode, 0o600);
        let second = provider.load().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.bytes(), second.bytes());
    }

    #[test]
    fn refuses_symlinks_and_foreign_owners() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let real = dir.path().join("real.key");
        FileKekProvider::new(&real)
            .load()
            .unwrap_or_else(|e| panic!("{e}"));
        let link = default_key_path(dir.path());
        std::os::unix::fs::symlink(&real, &link).unwrap_or_else(|e| panic!("{e}"));
        let err = FileKekProvider::new(&link).load().err().unwrap_or_default();
        assert!(err.contains("symbolic link"), "{err}");
        if files::effective_uid() == 0 {
            std::os::unix::fs::chown(&real, Some(65534), None).unwrap_or_else(|e| panic!("{e}"));
            let err = FileKekProvider::new(&real).load().err().unwrap_or_default();
            assert!(err.contains("owned by uid 65534"), "{err}");
        }
    }

    #[test]
    fn refuses_readable_or_malformed_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = default_key_path(dir.path());
        let provider = FileKekProvider::new(&path);
        provider.load().unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = provider.load().err().unwrap_or_default();
        assert!(err.contains("group or others"), "{err}");
        fs::write(&path, "strongroom-kek-v1 1 abcd\n").unwrap_or_else(|e| panic!("{e}"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = provider.load().err().unwrap_or_default();
        assert!(err.contains("malformed"), "{err}");
        assert!(!err.contains("abcd"), "{err}");
    }
}
