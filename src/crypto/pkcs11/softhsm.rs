//! Test-only: a throwaway SoftHSM2 token in a temp dir, apart from the system's token dir.
//!
//! SoftHSM2 reads its config from `SOFTHSM2_CONF` once, at `C_Initialize`, so one process
//! sees one token dir: a test that needs its own token runs its body in a child process (see
//! `in_own_process` in the tests) with `SOFTHSM2_CONF` from `SoftHsm::env`, or passes that to
//! the vault it starts. Only std and tempfile here, so integration tests can include this file
//! by path.
//!
//! Without SoftHSM2 installed, `SoftHsm::new` panics telling to run scripts/install-deps.sh:
//! the tests fail, they never skip.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::{
    fs,
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    process::Command,
};

/// The label of the token every `SoftHsm` initializes.
pub const TOKEN_LABEL: &str = "strongroom-test";
/// Its user PIN (a test PIN: tests assert that no message carries it).
pub const USER_PIN: &str = "4729-pin-5813";
/// Its security officer PIN.
pub const SO_PIN: &str = "so-9157-3321";

/// A temp dir holding `softhsm2.conf`, its own `tokens/` dir with one initialized token, and a
/// PIN file (0600).
pub struct SoftHsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub pin_file: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// The SoftHSM2 module, wherever the distribution put it.
pub fn module_path() -> Option<PathBuf> {
    let mut candidates = vec![
        PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"),
        PathBuf::from("/usr/local/lib/softhsm/libsofthsm2.so"),
        PathBuf::from("/usr/lib64/softhsm/libsofthsm2.so"),
        PathBuf::from("/usr/lib64/pkcs11/libsofthsm2.so"),
    ];
    // Debian's multiarch dirs: /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so and the like.
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            candidates.push(entry.path().join("softhsm/libsofthsm2.so"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

fn softhsm_util() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("softhsm2-util"))
        .find(|p| p.is_file())
}

impl SoftHsm {
    /// A new temp dir with a token labelled `TOKEN_LABEL`.
    pub fn new() -> Self {
        let temp = tempfile::Builder::new()
            .prefix("strongroom-softhsm-")
            .tempdir()
            .unwrap();
        let mut hsm = Self::at(temp.path());
        hsm._temp = Some(temp);
        hsm.init_token(TOKEN_LABEL);
        hsm
    }

    /// The paths of a token dir made by `new` (for a child process that did not make it).
    pub fn at(dir: &Path) -> Self {
        let (Some(module), Some(_)) = (module_path(), softhsm_util()) else {
            panic!(
                "SoftHSM2 is not installed (no libsofthsm2.so under /usr/lib, or no \
                 softhsm2-util on PATH): run scripts/install-deps.sh"
            );
        };
        let conf = dir.join("softhsm2.conf");
        if !conf.exists() {
            let tokens = dir.join("tokens");
            fs::create_dir_all(&tokens).unwrap();
            fs::write(
                &conf,
                format!(
                    "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n\
                     slots.removable = false\n",
                    tokens.display()
                ),
            )
            .unwrap();
            write_private(&dir.join("pin"), USER_PIN);
        }
        Self {
            dir: dir.to_path_buf(),
            pin_file: dir.join("pin"),
            conf,
            module,
            _temp: None,
        }
    }

    /// `SOFTHSM2_CONF` for a process that uses this token dir.
    pub fn env(&self) -> (&'static str, &Path) {
        ("SOFTHSM2_CONF", &self.conf)
    }

    /// The token dir (SoftHSM2 keeps one folder per token, one file per object).
    pub fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// Initializes one more token in the free slot, with the same PINs.
    pub fn init_token(&self, label: &str) {
        let util = softhsm_util().unwrap();
        let out = Command::new(util)
            .env("SOFTHSM2_CONF", &self.conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", USER_PIN, "--so-pin", SO_PIN])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Writes `text` to a new file of mode 0600.
pub fn write_private(path: &Path, text: &str) {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}
