//! Files on disk and the operator's view (issue 8, defects 6 and 8): the data and keys dirs
//! are private, the keys live apart from the data and is refused when it is a symbolic
//! link, another user's file, or inside the data dir; logs to a pipe carry no colour codes and
//! come as JSON on request; `policy rollback` shows what it changes and asks, like `apply`.
//!
//! Several tests run the real `strongroom` binary, as an operator would.

use std::{
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use strongroom::{api::pb, config::Config, server};

use crate::support::{self, Vault, customer, files_under, policies_dir};

/// A `strongroom serve` child process on 127.0.0.1:0, its stderr (the log) kept in a file.
pub(crate) struct Serve {
    child: std::process::Child,
    pub(crate) addr: String,
    pub(crate) token: Option<String>,
    log: PathBuf,
}

impl Serve {
    /// Starts `strongroom serve --data-dir <data> <args>` with `env`; panics if it does not
    /// print its address.
    pub(crate) fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let log = data.with_extension("log");
        let first_start = !data.join("db").exists();
        let mut child = Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .arg("--policies")
            .arg(policies_dir())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let Some((addr, token)) = support::read_banner(&mut lines, first_start) else {
            let _ = child.wait();
            panic!(
                "strongroom serve did not start: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        std::thread::spawn(move || for _ in lines {});
        Self {
            child,
            addr,
            token,
            log,
        }
    }

    /// Stops it with SIGTERM (a clean shutdown) and returns its log. Waits off the runtime:
    /// the graceful shutdown waits for this process's client connections to close, which
    /// needs the runtime free to run them.
    pub(crate) async fn stop(self) -> String {
        tokio::task::spawn_blocking(move || self.stop_blocking())
            .await
            .unwrap()
    }

    fn stop_blocking(mut self) -> String {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to completion (a failed start exits by itself; bounded as a guard only).
fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_strongroom"))
        .args(args)
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("strongroom {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

/// Every directory under `dir`, `dir` included.
fn dirs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        for entry in std::fs::read_dir(&out[i]).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.push(path);
            }
        }
        i += 1;
    }
    out
}

/// The keys in a keyring file (signing key and epoch keys), as 64 hex digits each.
fn key_hexes(keyring: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(keyring).unwrap();
    let keys: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("signing ") || l.starts_with("epoch "))
        .map(|l| l.split_whitespace().last().unwrap().to_owned())
        .collect();
    assert!(keys.len() >= 2, "a signing key and an epoch");
    keys
}

async fn start_in_process(data: &Path, toml: &str) -> Result<server::Running, String> {
    let over = strongroom::config::Overrides {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data.to_owned()),
        keys_dir: None,
        policies_dir: Some(policies_dir()),
        store_url: None,
    };
    let config = Config::from_toml(toml, over)?;
    server::start(config).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_dir_and_file_the_vault_creates_is_private_and_the_key_is_not_in_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    // An operator's usual layout: both dirs made by the vault under a world-readable parent.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("strongroom-data");
    let vault = Serve::start(&data, &[], &[]);
    let mut admin = strongroom::client::connect(&vault.addr, vault.token.as_deref().unwrap())
        .await
        .unwrap();
    let id = support::create(&mut admin, customer("modes")).await;
    support::get(&mut admin, &id, "support").await.unwrap();
    drop(admin);
    vault.stop().await;

    let keys = tmp.path().join("strongroom-keys");
    let key_file = keys.join("keyring");
    assert!(
        key_file.is_file(),
        "the keyring is in the keys dir by default"
    );
    let (mut dirs, mut files) = (0, 0);
    for root in [&data, &keys] {
        for dir in dirs_under(root) {
            assert_eq!(mode(&dir), 0o700, "{}", dir.display());
            dirs += 1;
        }
        for file in files_under(root) {
            assert_eq!(
                mode(&file) & 0o077,
                0,
                "{} is open to others",
                file.display()
            );
            files += 1;
        }
    }
    assert_eq!(mode(&key_file), 0o600);
    // A copy of the data dir alone holds no key: no keyring, not the keys' bytes, and not the
    // record's wrapped data key (that is in the key store, in the keys dir).
    let in_data = files_under(&data);
    assert!(in_data.iter().all(|f| f.file_name().unwrap() != "keyring"));
    let mut hits = 0;
    for hex in key_hexes(&key_file) {
        let raw = hex::decode(&hex).unwrap();
        hits += support::files_containing(&data, hex.as_bytes()).len()
            + support::files_containing(&data, &raw).len();
    }
    let wrapped = support::wrapped_keys(&keys);
    assert_eq!(wrapped.len(), 1, "one record, one wrapped key");
    for w in &wrapped {
        hits += support::files_containing(&data, w).len();
        assert!(
            !support::files_containing(&keys, w).is_empty(),
            "the scan finds it where it is"
        );
    }
    assert_eq!(hits, 0);
    eprintln!(
        "files: {dirs} dirs at 0700 and {files} files without group/other bits; \
         {} data-dir files scanned for the key: {hits} hits",
        in_data.len()
    );
}

#[tokio::test]
async fn open_data_and_keys_dirs_are_tightened_to_0700() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let keys = tmp.path().join("keys");
    for d in [&data, &keys] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let running = start_in_process(&data, "").await.unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&keys), 0o700);
    assert_eq!(mode(&keys.join("keyring")), 0o600);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_symlinked_key_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A well-formed keyring planted elsewhere and linked in as the vault's keyring.
    let planted = tmp.path().join("planted");
    std::fs::write(
        &planted,
        format!(
            "strongroom-keyring-v1\nsigning {}\nepoch 1 {}\n",
            "ab".repeat(32),
            "cd".repeat(32)
        ),
    )
    .unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o600)).unwrap();
    let keys = tmp.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::os::unix::fs::symlink(&planted, keys.join("keyring")).unwrap();
    let err = start_in_process(&data, "").await.err().unwrap_or_default();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(err.contains("keyring"), "the message names the file: {err}");
}

#[tokio::test]
async fn a_key_file_owned_by_another_user_is_refused() {
    assert_eq!(
        strongroom::files::effective_uid(),
        0,
        "the test chowns: run as root"
    );
    let mut vault = Vault::start().await;
    let id = support::create(&mut vault.admin().await, customer("owner")).await;
    vault.stop().await;
    let key_file = vault.keys_dir().join("keyring");
    std::os::unix::fs::chown(&key_file, Some(65534), Some(65534)).unwrap();
    let err = start_in_process(&vault.data_dir(), "")
        .await
        .err()
        .unwrap_or_default();
    assert!(err.contains("owned by uid 65534"), "{err}");
    // Given back to its owner, the same key reads the same record.
    std::os::unix::fs::chown(&key_file, Some(0), Some(0)).unwrap();
    vault.restart().await;
    let mut admin = vault.admin().await;
    support::get(&mut admin, &id, "support").await.unwrap();
}

#[tokio::test]
async fn the_keys_dir_is_never_inside_the_data_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let inside = [
        format!("keys_dir = {:?}\n", data.join("keys")),
        format!("keys_dir = {:?}\n", data),
        format!("keyring_file = {:?}\n", data.join("keyring")),
    ];
    for toml in &inside {
        let err = start_in_process(&data, toml)
            .await
            .err()
            .unwrap_or_default();
        assert!(err.contains("inside the data dir"), "{toml}: {err}");
    }
    // Through a symbolic link too.
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::symlink(&data, tmp.path().join("link")).unwrap();
    let toml = format!("keys_dir = {:?}\n", tmp.path().join("link").join("keys"));
    let err = start_in_process(&data, &toml)
        .await
        .err()
        .unwrap_or_default();
    assert!(err.contains("inside the data dir"), "{err}");
    // And on the command line.
    let data_arg = data.to_str().unwrap();
    let keys_arg = data.join("k");
    let (ok, _, stderr) = run(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data_arg,
            "--keys-dir",
            keys_arg.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok && stderr.contains("inside the data dir"), "{stderr}");
    assert!(!keys_arg.join("keyring").exists());
}

#[tokio::test]
async fn a_master_key_of_an_older_version_is_refused_not_replaced() {
    // The layouts of versions before key epochs: master.key in the data dir, or in the keys
    // dir. Their data cannot be read by this version: refused, and no keyring is made.
    for place in ["data", "keys"] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let keys = tmp.path().join("keys");
        for d in [&data, &keys] {
            std::fs::create_dir(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let old = tmp.path().join(place).join("master.key");
        std::fs::write(&old, format!("strongroom-kek-v1 1 {}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = start_in_process(&data, "").await.err().unwrap_or_default();
        assert!(err.contains("before key epochs"), "{place}: {err}");
        assert!(!err.contains(&"ab".repeat(32)), "{err}");
        assert!(!keys.join("keyring").exists(), "no keyring was made");
    }
}

#[tokio::test]
async fn logs_to_a_pipe_carry_no_colour_and_json_is_one_object_per_line() {
    let tmp = tempfile::tempdir().unwrap();
    let text = Serve::start(&tmp.path().join("a"), &[], &[]).stop().await;
    assert!(text.contains("strongroom serving"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );

    let json = Serve::start(&tmp.path().join("b"), &["--log-format", "json"], &[])
        .stop()
        .await;
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for line in &lines {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(
            value.get("level").is_some() && value.get("fields").is_some(),
            "{line}"
        );
    }
    assert!(json.contains("strongroom serving"));
    assert!(!json.contains('\u{1b}'));
    eprintln!("logs: {} JSON lines, 0 colour codes", lines.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_rollback_shows_the_changes_and_asks_like_apply() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    let current = admin
        .policies
        .get_policy(pb::GetPolicyRequest { version: None })
        .await
        .unwrap()
        .into_inner();
    let text = format!(
        "{}\np, role:support, customers.ssn, read, support, allow\n",
        current.text
    );
    let pending = admin
        .policies
        .apply_policy(pb::ApplyPolicyRequest {
            text,
            comment: "support sees SSNs".into(),
            expected_version: None,
        })
        .await
        .unwrap()
        .into_inner()
        .pending
        .expect("a wider SSN read waits for a second policy admin");
    // The two-person rule: a second policy admin approves it.
    let second = vault.token("user:second", &["role:security_admin"]).await;
    vault
        .client(&second)
        .await
        .policies
        .approve_policy(pb::ApprovePolicyRequest { id: pending.id })
        .await
        .unwrap();
    let version = |mut admin: strongroom::client::Client| async move {
        admin
            .policies
            .get_policy(pb::GetPolicyRequest { version: None })
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap()
            .version
    };
    assert_eq!(version(admin.clone()).await, 2);

    let addr = vault.addr();
    let env = [("STRONGROOM_TOKEN", vault.admin_token.as_str())];
    let rollback = |yes: bool| {
        let mut args = vec!["policy", "rollback", "1", "--addr", addr.as_str()];
        if yes {
            args.push("--yes");
        }
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run(&args, &env)
        })
    };
    // Off a terminal, without --yes: the changes are shown, nothing is rolled back.
    let (ok, stdout, stderr) = rollback(false).await.unwrap();
    assert!(!ok, "rolled back without confirmation: {stdout}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert!(
        stdout.contains("decision change(s)") && stdout.contains("customers.ssn"),
        "the dry-run is shown first: {stdout}"
    );
    assert_eq!(version(admin.clone()).await, 2, "nothing changed");
    // With --yes: the same preview, then the rollback.
    let (ok, stdout, stderr) = rollback(true).await.unwrap();
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("customers.ssn") && stdout.contains("rolled back"),
        "{stdout}"
    );
    assert_eq!(version(admin.clone()).await, 3);
}
