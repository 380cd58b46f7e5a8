//! The `pkcs11` provider end to end: the real `strongroom serve` binary configured with a
//! `[pkcs11]` table, each test against its own throwaway SoftHSM2 token. SoftHSM2 reads
//! `SOFTHSM2_CONF` once per process, so the vault runs as a child process with it in its
//! environment, and the token's objects are listed by this test binary re-run as a child
//! (`token_objects`) with raw PKCS#11 calls, not through the provider under test.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use strongroom::{
    api::pb,
    client::{self, Client},
    crypto::PublicKey,
    vault::receipt::{self, SignedReceipt},
};
use tonic::Code;

use crate::{
    softhsm::{SoftHsm, TOKEN_LABEL, USER_PIN, write_private},
    support::{
        ChildVault, assert_code, create, customer, events_of, files_containing, get, policies_dir,
    },
};

/// Set in the child run of `list_token_objects_in_child`: the SoftHSM2 temp dir.
const CHILD_DIR: &str = "STRONGROOM_TEST_HSM_DIR";
/// Polls of a rotation before giving up (a hang guard, not a timed assertion).
const MAX_POLLS: u32 = 6000;

/// A vault's temp dir (`data` and, next to it, `keys`) and its config file selecting the
/// token of `hsm`, with extra top-level lines before the `[pkcs11]` table.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Setup {
    fn new(hsm: &SoftHsm, extra: &str) -> Self {
        Self::with(hsm, extra, TOKEN_LABEL, &hsm.pin_file)
    }

    fn with(hsm: &SoftHsm, extra: &str, label: &str, pin_file: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("strongroom.toml");
        std::fs::write(
            &config,
            format!(
                "{extra}\n[pkcs11]\nmodule = {:?}\ntoken_label = {label:?}\npin_file = {:?}\n",
                hsm.module.display().to_string(),
                pin_file.display().to_string()
            ),
        )
        .unwrap();
        Self { dir, config }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn keys(&self) -> PathBuf {
        self.dir.path().join("keys")
    }

    fn start(&self, hsm: &SoftHsm) -> ChildVault {
        let (var, conf) = hsm.env();
        let conf = conf.to_str().unwrap();
        let config = self.config.to_str().unwrap();
        ChildVault::start_with(&self.data(), &["--config", config], &[(var, conf)])
    }

    /// Runs `strongroom serve` expecting it to refuse to start: its stderr.
    fn refused(&self, hsm: &SoftHsm) -> String {
        let (var, conf) = hsm.env();
        let mut child = Command::new(env!("CARGO_BIN_EXE_strongroom"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data())
            .arg("--policies")
            .arg(policies_dir())
            .env(var, conf)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // A hang guard: a vault that starts instead of refusing would serve forever.
        for _ in 0..600 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait().unwrap().is_none() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("strongroom serve did not refuse to start");
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "serve exited with success");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

async fn connect(vault: &ChildVault, token: &str) -> Client {
    client::connect(&vault.addr, token).await.unwrap()
}

/// A name tag for the i-th test customer (names take letters only).
fn tag(i: usize) -> String {
    let letters = |n: usize| char::from(b'a' + u8::try_from(n % 26).unwrap());
    format!("{}{}{}", letters(i / 676), letters(i / 26), letters(i))
}

/// Reads `id` as admin and checks that every field is the plaintext it was created with.
async fn assert_reads(admin: &mut Client, id: &str, tag: &str) {
    let resp = get(admin, id, "support").await.unwrap();
    // As stored: the phone in E.164, the card number in digits.
    let want: Vec<(String, String)> = customer(tag)
        .into_iter()
        .map(|f| match f.name.as_str() {
            "phone" | "card_number" => (f.name, f.value.replace(' ', "")),
            _ => (f.name, f.value),
        })
        .collect();
    let got: Vec<(String, String)> = resp
        .fields
        .iter()
        .map(|f| {
            assert_eq!(
                pb::Disclosure::try_from(f.disclosure),
                Ok(pb::Disclosure::Plain),
                "{}",
                f.name
            );
            (f.name.clone(), f.value.clone())
        })
        .collect();
    assert_eq!(got, want, "record {id}");
}

/// A token for `subject` with `roles`, issued by the admin.
async fn token(admin: &mut Client, subject: &str, roles: &[&str]) -> String {
    admin
        .tokens
        .create_token(pb::CreateTokenRequest {
            subject: subject.into(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            ..pb::CreateTokenRequest::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

async fn key_status(admin: &mut Client) -> pb::KeyStatus {
    admin
        .keys
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// Rotates and polls the status until the rotation ended; the final status.
async fn rotate_and_wait(admin: &mut Client) -> pb::KeyStatus {
    let mut status = admin
        .keys
        .rotate_keys(pb::RotateKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    for _ in 0..MAX_POLLS {
        if !status.rotating {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = key_status(admin).await;
    }
    assert!(!status.rotating, "the rotation never ended: {status:?}");
    status
}

/// One object on the token: its label and, for a public key, its `CKA_EC_POINT`.
#[derive(Debug)]
struct TokenObject {
    label: String,
    ec_point: Option<Vec<u8>>,
}

/// Every object on the token of `hsm` (logged in as its user, so private objects too), listed
/// by this test binary re-run with the token's `SOFTHSM2_CONF`. Call with the vault stopped.
fn token_objects(hsm: &SoftHsm) -> Vec<TokenObject> {
    let (var, conf) = hsm.env();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "hsm::list_token_objects_in_child",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(var, conf)
        .env(CHILD_DIR, &hsm.dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "listing the token failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        // (The first line follows the test harness's `test ... ` on the same line.)
        .filter_map(|l| l.split_once("token-object\t").map(|(_, object)| object))
        .map(|l| {
            let (label, point) = l.split_once('\t').unwrap();
            TokenObject {
                label: label.to_owned(),
                ec_point: (point != "-").then(|| hex::decode(point).unwrap()),
            }
        })
        .collect()
}

/// Not a test of its own: the child half of `token_objects`, which runs it with
/// `STRONGROOM_TEST_HSM_DIR` set; without it there is nothing to list.
#[test]
fn list_token_objects_in_child() {
    use cryptoki::{
        context::{CInitializeArgs, CInitializeFlags, Pkcs11},
        object::{Attribute, AttributeType, ObjectClass},
        session::UserType,
        types::AuthPin,
    };
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let hsm = SoftHsm::at(Path::new(&dir));
    let ctx = Pkcs11::new(&hsm.module).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN_LABEL)
        .unwrap();
    let session = ctx.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(USER_PIN)))
        .unwrap();
    for object in session.find_objects(&[]).unwrap() {
        let mut label = String::new();
        let mut public = false;
        for a in session
            .get_attributes(object, &[AttributeType::Label, AttributeType::Class])
            .unwrap()
        {
            if let Attribute::Label(l) = &a {
                label = String::from_utf8(l.clone()).unwrap();
            }
            if let Attribute::Class(c) = a {
                public = c == ObjectClass::PUBLIC_KEY;
            }
        }
        let mut point = "-".to_owned();
        if public {
            for a in session
                .get_attributes(object, &[AttributeType::EcPoint])
                .unwrap()
            {
                if let Attribute::EcPoint(p) = a {
                    point = hex::encode(p);
                }
            }
        }
        println!("token-object\t{label}\t{point}");
    }
}

fn labels(objects: &[TokenObject]) -> Vec<&str> {
    let mut labels: Vec<&str> = objects.iter().map(|o| o.label.as_str()).collect();
    labels.sort_unstable();
    labels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_through_the_hsm_across_a_restart_with_no_keyring_file() {
    let hsm = SoftHsm::new();
    let setup = Setup::new(&hsm, "");
    let mut vault = setup.start(&hsm);
    let admin_token = vault.token.clone().unwrap();
    let mut admin = connect(&vault, &admin_token).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(create(&mut admin, customer(&tag(i))).await);
    }
    for (i, id) in ids.iter().enumerate() {
        assert_reads(&mut admin, id, &tag(i)).await;
    }
    let status = key_status(&mut admin).await;
    assert_eq!(status.provider, "pkcs11");
    assert_eq!(status.epochs.len(), 1, "{status:?}");
    assert_eq!(status.epochs[0].keys, 5);
    let auditor = token(&mut admin, "user:audrey", &["role:auditor"]).await;
    let mut auditor = connect(&vault, &auditor).await;
    let load = events_of(&mut auditor, "Keys/Load").await;
    assert_eq!(load.len(), 1, "{load:?}");
    assert!(
        load[0]
            .detail
            .starts_with(&format!("pkcs11 token '{TOKEN_LABEL}' through module ")),
        "{}",
        load[0].detail
    );
    assert!(!load[0].detail.contains(USER_PIN));
    vault.terminate();

    // The keys dir holds the key store and nothing else: no keyring file, with or without the
    // default name; the epoch keys are on the token.
    let keys: Vec<String> = std::fs::read_dir(setup.keys())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(keys, vec!["keystore".to_owned()]);
    assert!(
        !setup
            .keys()
            .join(strongroom::crypto::KEYRING_FILE_NAME)
            .exists()
    );
    // Nor does the PIN reach the vault's files.
    for dir in [setup.data(), setup.keys()] {
        assert!(files_containing(&dir, USER_PIN.as_bytes()).is_empty());
    }
    // The derivation secret is there too: the records' indexed fields (blind index) used it.
    let objects = token_objects(&hsm);
    assert_eq!(
        labels(&objects),
        vec![
            "strongroom-derive",
            "strongroom-epoch-1",
            "strongroom-signing",
            "strongroom-signing"
        ],
        "{objects:?}"
    );

    let vault = setup.start(&hsm);
    assert!(vault.token.is_none(), "a restart creates no admin token");
    let mut admin = connect(&vault, &admin_token).await;
    for (i, id) in ids.iter().enumerate() {
        assert_reads(&mut admin, id, &tag(i)).await;
    }
    assert_eq!(key_status(&mut admin).await.epochs[0].keys, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_rewraps_under_a_new_token_key_and_destroys_the_old_one() {
    let hsm = SoftHsm::new();
    let setup = Setup::new(&hsm, "");
    let mut vault = setup.start(&hsm);
    let admin_token = vault.token.clone().unwrap();
    let mut admin = connect(&vault, &admin_token).await;
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(create(&mut admin, customer(&tag(i))).await);
    }
    vault.terminate();
    let before = token_objects(&hsm);
    assert!(
        labels(&before).contains(&"strongroom-epoch-1"),
        "{before:?}"
    );

    let mut vault = setup.start(&hsm);
    let mut admin = connect(&vault, &admin_token).await;
    let done = rotate_and_wait(&mut admin).await;
    assert_eq!(done.epochs.len(), 1, "{done:?}");
    assert_eq!((done.epochs[0].id, done.epochs[0].keys), (2, 40));
    assert_eq!(done.keys_under_older_epochs, 0);
    for (i, id) in ids.iter().enumerate() {
        assert_reads(&mut admin, id, &tag(i)).await;
    }
    vault.terminate();

    // The old epoch's key object is gone from the token; the new one and the signing pair
    // are there.
    let after = token_objects(&hsm);
    assert_eq!(
        labels(&after),
        vec![
            "strongroom-derive",
            "strongroom-epoch-2",
            "strongroom-signing",
            "strongroom-signing"
        ],
        "{after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|o| o.label == "strongroom-epoch-1")
            .count(),
        0
    );

    // And the records still read after a restart, under epoch 2 alone.
    let vault = setup.start(&hsm);
    let mut admin = connect(&vault, &admin_token).await;
    for (i, id) in ids.iter().enumerate() {
        assert_reads(&mut admin, id, &tag(i)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shred_receipt_is_signed_by_the_token_key() {
    let hsm = SoftHsm::new();
    let setup = Setup::new(&hsm, "");
    let mut vault = setup.start(&hsm);
    let mut admin = connect(&vault, &vault.token.clone().unwrap()).await;
    let doomed = create(&mut admin, customer("doomed")).await;
    let kept = create(&mut admin, customer("kept")).await;
    let receipt = admin
        .records
        .delete_record(pb::DeleteRecordRequest {
            id: doomed.clone(),
            wait_for_purge: true,
        })
        .await
        .unwrap()
        .into_inner()
        .receipt
        .unwrap();
    assert_eq!(receipt.id, doomed);
    assert!(receipt.data_key_destroyed && !receipt.purge_pending);
    assert_code(get(&mut admin, &doomed, "support").await, Code::NotFound);
    assert_reads(&mut admin, &kept, "kept").await;

    let pem = admin
        .keys
        .get_public_key(pb::GetPublicKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .pem;
    let public = PublicKey::from_pem(&pem).unwrap();
    let signed = SignedReceipt {
        document: receipt.signed_document.clone(),
        signature: receipt.signature.clone(),
    };
    let file = signed.file_text();
    let doc = receipt::verify(file.as_bytes(), &public).unwrap();
    assert_eq!(
        (doc.record_id.as_str(), doc.key_epoch),
        (doomed.as_str(), 1)
    );
    assert_eq!(doc.signing_key, public.fingerprint());
    // The same receipt with one signature bit changed does not verify.
    let mut forged = signed.clone();
    let flipped = if forged.signature.starts_with('0') {
        "1"
    } else {
        "0"
    };
    forged.signature.replace_range(0..1, flipped);
    assert!(receipt::verify(forged.file_text().as_bytes(), &public).is_err());
    vault.terminate();

    // The key it verifies with is the token's: the public half of the signing pair there.
    let objects = token_objects(&hsm);
    let points: Vec<&[u8]> = objects
        .iter()
        .filter(|o| o.label == "strongroom-signing")
        .filter_map(|o| o.ec_point.as_deref())
        .collect();
    let mut der = vec![0x04, 0x20];
    der.extend_from_slice(&public.0);
    assert_eq!(points, vec![der.as_slice()], "{objects:?}");
}

#[test]
fn a_wrong_pin_or_an_unknown_token_label_refuses_to_start_without_the_pin() {
    let hsm = SoftHsm::new();
    let wrong_pin = "7305-wrong-2291";
    let pin_dir = tempfile::tempdir().unwrap();
    let wrong_pin_file = pin_dir.path().join("pin");
    write_private(&wrong_pin_file, wrong_pin);

    let setup = Setup::with(&hsm, "", TOKEN_LABEL, &wrong_pin_file);
    let err = setup.refused(&hsm);
    assert!(
        err.contains(&format!(
            "PKCS#11 token '{TOKEN_LABEL}' refused the PIN in {}: wrong PIN",
            wrong_pin_file.display()
        )),
        "{err}"
    );
    assert!(!err.contains(wrong_pin) && !err.contains(USER_PIN), "{err}");

    let setup = Setup::with(&hsm, "", "no-such-token", &hsm.pin_file);
    let err = setup.refused(&hsm);
    assert!(
        err.contains("no PKCS#11 token labelled 'no-such-token'")
            && err.contains(&format!("tokens present: '{TOKEN_LABEL}'")),
        "{err}"
    );
    assert!(!err.contains(USER_PIN), "{err}");

    // Both providers at once is a config error naming both keys.
    let setup = Setup::new(&hsm, "master_key_env = \"SR_KEY\"");
    let err = setup.refused(&hsm);
    assert!(err.contains("master_key_env and [pkcs11]"), "{err}");
    // Neither refused start left keys behind, and the token still takes the right PIN.
    assert!(
        !setup
            .keys()
            .join(strongroom::crypto::KEYRING_FILE_NAME)
            .exists()
    );
    let labels: Vec<String> = token_objects(&hsm).into_iter().map(|o| o.label).collect();
    assert!(
        !labels.iter().any(|l| l.starts_with("strongroom-epoch-")),
        "{labels:?}"
    );
}

/// Loads `n` records into `vault`, rotates with the rate limit out of the way, and returns
/// what the vault's own completion event of `Keys/Rotate` says: `(keys rewrapped, ms)`, and
/// the ms from the start event to it.
async fn measure_rotation(vault: &ChildVault, n: usize) -> (u64, u64, i64) {
    let admin_token = vault.token.clone().unwrap();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let addr = vault.addr.clone();
        let token = admin_token.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = client::connect(&addr, &token).await.unwrap();
            for i in (t..n).step_by(8) {
                create(&mut c, customer(&tag(i))).await;
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut admin = connect(vault, &admin_token).await;
    assert_eq!(key_status(&mut admin).await.epochs[0].keys, n as u64);
    let done = rotate_and_wait(&mut admin).await;
    assert_eq!(done.epochs[0].keys, n as u64);
    let auditor = token(&mut admin, "user:audrey", &["role:auditor"]).await;
    let mut auditor = connect(vault, &auditor).await;
    let rotate = events_of(&mut auditor, "Keys/Rotate").await;
    let completed = rotate
        .iter()
        .find(|e| e.detail.starts_with("rotation to epoch 2 completed"))
        .unwrap();
    let started = events_of(&mut auditor, "Keys/RotateKeys").await;
    let started = started
        .iter()
        .find(|e| e.detail.starts_with("rotation started"))
        .unwrap();
    // "rotation to epoch 2 completed: <moved> data keys rewrapped in <ms> ms"
    let (_, tail) = completed.detail.split_once("completed: ").unwrap();
    let (moved, tail) = tail.split_once(" data keys rewrapped in ").unwrap();
    let moved: u64 = moved.parse().unwrap();
    let ms: u64 = tail.trim_end_matches(" ms").parse().unwrap();
    assert_eq!(moved, n as u64, "{}", completed.detail);
    (moved, ms, completed.time_unix_ms - started.time_unix_ms)
}

/// The rewrap rate of a rotation with the keys on SoftHSM2, for BENCHMARKS.md, next to the
/// file keyring's under the same load: `STRONGROOM_HSM_RECORDS` records (default 5,000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: cargo test --test keys hsm::rewrap_rate -- --ignored --nocapture"]
async fn rewrap_rate_with_softhsm() {
    let n: usize = std::env::var("STRONGROOM_HSM_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let hsm = SoftHsm::new();
    let setup = Setup::new(&hsm, "rewrap_per_second = 1000000");
    let (moved, ms, events_ms) = measure_rotation(&setup.start(&hsm), n).await;
    let hsm_rate = moved as f64 * 1000.0 / ms.max(1) as f64;
    println!(
        "pkcs11 (SoftHSM2): {moved} data keys rewrapped in {ms} ms ({hsm_rate:.0} keys/s); \
         {events_ms} ms from the start event to the completion event"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strongroom.toml");
    std::fs::write(&config, "rewrap_per_second = 1000000\n").unwrap();
    let file = ChildVault::start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &[],
    );
    let (moved, ms, events_ms) = measure_rotation(&file, n).await;
    let file_rate = moved as f64 * 1000.0 / ms.max(1) as f64;
    println!(
        "file keyring: {moved} data keys rewrapped in {ms} ms ({file_rate:.0} keys/s); \
         {events_ms} ms from the start event to the completion event; the HSM's rate is \
         {:.2} of it",
        hsm_rate / file_rate
    );
}
