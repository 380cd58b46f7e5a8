//! Where the master key comes from. The default is a key file in the data dir, created on first
//! start with mode 0600; the vault refuses a key file that group or others can read.

use std::{
    fs,
    io::Write,
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use zeroize::Zeroizing;

use super::{Kek, KekId};

const HEADER: &str = "strongroom-kek-v1";

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

impl FileKekProvider {
    /// A provider for the key file at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    fn create(&self) -> Result<Kek, String> {
        let kek = Kek::generate(KekId(1));
        let text = Zeroizing::new(format!(
            "# strongroom master key. Keep it secret and backed up apart from the data:\n\
             # without it no record can be read.\n{HEADER} {} {}\n",
            kek.id().0,
            hex::encode(kek.bytes())
        ));
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| format!("cannot create master key file {}: {e}", self.path.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write master key file {}: {e}", self.path.display()))?;
        Ok(kek)
    }
}

impl KekProvider for FileKekProvider {
    fn load(&self) -> Result<Kek, String> {
        let path = &self.path;
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.create(),
            Err(e) => {
                return Err(format!(
                    "cannot read master key file {}: {e}",
                    path.display()
                ));
            }
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "master key file {} has mode {mode:04o}: group or others can read it; \
                 run `chmod 600 {}` and start again",
                path.display(),
                path.display()
            ));
        }
        let text = Zeroizing::new(
            fs::read_to_string(path)
                .map_err(|e| format!("cannot read master key file {}: {e}", path.display()))?,
        );
        parse_key_text(&text).map_err(|problem| {
            format!("master key file {} is malformed: {problem}", path.display())
        })
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

/// The default key file inside a data dir.
pub fn default_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("master.key")
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
