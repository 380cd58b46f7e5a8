//! Keys and signatures end to end, against a real server on 127.0.0.1:0 over a real RocksDB
//! and through the `strongroom` binary: the `Keys` service (rotate, status, public key, who
//! may call what), signed shred receipts and audit exports verified offline with the public
//! key alone, and every tampering of them rejected with the failing part named (issue 9).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod support;

#[path = "../src/crypto/pkcs11/softhsm.rs"]
mod softhsm;

#[path = "keys/hsm.rs"]
mod hsm;

use std::{path::Path, process::Command, time::Duration};

use strongroom::api::pb;
use support::{Vault, assert_code, create, customer};
use tonic::Code;

/// Runs the CLI with `args`, no token in its environment (`token` adds one): its exit status
/// and its stdout and stderr together.
fn cli(args: &[&str], addr: Option<(&str, &str)>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strongroom"));
    cmd.args(args)
        .env_remove("STRONGROOM_TOKEN")
        .env_remove("STRONGROOM_ADDR");
    if let Some((addr, token)) = addr {
        cmd.env("STRONGROOM_ADDR", addr)
            .env("STRONGROOM_TOKEN", token);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Runs the CLI and requires it to succeed.
fn ok(args: &[&str], addr: Option<(&str, &str)>) -> String {
    let (success, text) = cli(args, addr);
    assert!(success, "{args:?} failed: {text}");
    text
}

/// Runs the CLI and requires it to fail naming `want`.
fn rejected(args: &[&str], want: &str) -> String {
    let (success, text) = cli(args, None);
    assert!(!success, "{args:?} accepted: {text}");
    assert!(text.contains(want), "{args:?}: wanted {want:?} in: {text}");
    text
}

/// A name tag for the i-th test customer (names take letters only).
fn tag(i: u8) -> String {
    char::from(b'a' + i).to_string()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_over_grpc_and_who_may_call_it() {
    let vault = Vault::start().await;
    let mut admin = vault.admin().await;
    for i in 0..20 {
        create(&mut admin, customer(&tag(i))).await;
    }
    let before = admin
        .keys
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.epochs.len(), 1, "{before:?}");
    assert!(!before.rotating);
    assert_eq!(before.epochs[0].keys, 20);
    let first = before.epochs[0].id;

    // Who may do what: rotate is admin only; status for admin, security admin, auditor; the
    // public key for anyone authenticated.
    for role in ["role:support", "role:auditor", "role:security_admin"] {
        let mut c = vault.as_role(role).await;
        assert_code(
            c.keys.rotate_keys(pb::RotateKeysRequest {}).await,
            Code::PermissionDenied,
        );
    }
    let mut support = vault.as_role("role:support").await;
    assert_code(
        support
            .keys
            .get_key_status(pb::GetKeyStatusRequest {})
            .await,
        Code::PermissionDenied,
    );
    for role in ["role:auditor", "role:security_admin"] {
        let mut c = vault.as_role(role).await;
        c.keys
            .get_key_status(pb::GetKeyStatusRequest {})
            .await
            .unwrap();
    }
    let pem = support
        .keys
        .get_public_key(pb::GetPublicKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        pem.pem.starts_with("-----BEGIN PUBLIC KEY-----"),
        "{}",
        pem.pem
    );
    let mut raw = pb::keys_client::KeysClient::connect(vault.addr())
        .await
        .unwrap();
    assert_code(
        raw.get_public_key(pb::GetPublicKeyRequest {}).await,
        Code::Unauthenticated,
    );

    // Rotate: a second epoch at once, then the rewrap ends with every key under it.
    let started = admin
        .keys
        .rotate_keys(pb::RotateKeysRequest {})
        .await
        .unwrap()
        .into_inner();
    let current = started.epochs.last().unwrap().id;
    assert!(current > first, "{started:?}");
    assert!(
        started.rotating || started.epochs.len() == 1,
        "either still rewrapping or done: {started:?}"
    );
    let mut done = started;
    for _ in 0..2000 {
        if !done.rotating {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        done = admin
            .keys
            .get_key_status(pb::GetKeyStatusRequest {})
            .await
            .unwrap()
            .into_inner();
    }
    assert!(!done.rotating, "the rotation never ended: {done:?}");
    assert_eq!(done.epochs.len(), 1, "{done:?}");
    assert_eq!((done.epochs[0].id, done.epochs[0].keys), (current, 20));
    assert_eq!(done.keys_under_older_epochs, 0);

    // Every call is in the audit log, the refused ones too.
    let mut auditor = vault.as_role("role:auditor").await;
    let methods: Vec<(String, String, String)> =
        support::events(&mut auditor, pb::EventFilter::default())
            .await
            .into_iter()
            .filter(|e| e.method.starts_with("Keys/"))
            .map(|e| (e.method, e.result, e.subject))
            .collect();
    let count = |m: &str, r: &str| methods.iter().filter(|(a, b, _)| a == m && b == r).count();
    assert_eq!(
        count("Keys/RotateKeys", "PERMISSION_DENIED"),
        3,
        "{methods:?}"
    );
    assert_eq!(
        count("Keys/GetKeyStatus", "PERMISSION_DENIED"),
        1,
        "{methods:?}"
    );
    assert!(count("Keys/GetKeyStatus", "OK") >= 3, "{methods:?}");
    assert_eq!(count("Keys/GetPublicKey", "OK"), 1, "{methods:?}");
    assert_eq!(
        count("Keys/RotateKeys", "OK"),
        1,
        "the vault's start event: {methods:?}"
    );
    assert!(count("Keys/DestroyEpoch", "OK") >= 1, "{methods:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_exports_verify_offline_and_every_tampering_is_named() {
    let vault = Vault::start().await;
    let addr = vault.addr();
    let admin_token = vault.admin_token.clone();
    let auditor_token = vault.token("user:audrey", &["role:auditor"]).await;
    let admin = Some((addr.as_str(), admin_token.as_str()));
    let auditor = Some((addr.as_str(), auditor_token.as_str()));
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("vault.pem");
    let other_key = dir.path().join("other.pem");
    let receipt = dir.path().join("receipt.json");
    let export = dir.path().join("export.jsonl");

    // The public key, fetched once (any caller); the rest is offline.
    let text = ok(&["keys", "public", "--out", path(&key)], auditor);
    assert!(text.contains("written to"), "{text}");
    let mut c = vault.admin().await;
    let id = create(&mut c, customer("shred")).await;
    for i in 0..5 {
        create(&mut c, customer(&tag(i))).await;
    }
    let text = ok(
        &["record", "delete", &id, "--receipt-out", path(&receipt)],
        admin,
    );
    assert!(
        text.contains("unrecoverable from any backup after"),
        "{text}"
    );

    // The receipt: verifies with no token and no vault; says T1 and T2 and nothing more.
    let text = ok(
        &[
            "receipt",
            "verify",
            path(&receipt),
            "--public-key",
            path(&key),
        ],
        None,
    );
    assert!(
        text.contains(&format!(
            "Record {id} of collection customers was erased from the live store at "
        )) && text.contains("It is unrecoverable from any backup after key epoch 1 ends: ")
            && text.contains("the epoch is destroyed when the rotation completes"),
        "{text}"
    );
    let original = std::fs::read(&receipt).unwrap();
    let bad = dir.path().join("bad-receipt.json");
    let tamper = |i: usize, flip: u8| {
        let mut b = original.clone();
        b[i] ^= flip;
        std::fs::write(&bad, b).unwrap();
    };
    // One byte changed in each part of the file, through the binary: each rejected by name.
    let at = |needle: &str| {
        original
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap()
            + needle.len()
    };
    tamper(at(&format!("\"record_id\":\"{}", &id[..4])), 0x01);
    rejected(
        &["receipt", "verify", path(&bad), "--public-key", path(&key)],
        "bad signature",
    );
    tamper(at("\"purged_at_ms\":") + 1, 0x01);
    rejected(
        &["receipt", "verify", path(&bad), "--public-key", path(&key)],
        "bad signature",
    );
    // Another hex digit (a flip could make it a non-hex character: malformed, not forged).
    let sig = at("\"signature\":\"");
    tamper(
        sig,
        if original[sig] == b'0' {
            b'0' ^ b'1'
        } else {
            original[sig] ^ b'0'
        },
    );
    rejected(
        &["receipt", "verify", path(&bad), "--public-key", path(&key)],
        "bad signature",
    );
    tamper(at("shred-receipt/v"), 0x02);
    rejected(
        &["receipt", "verify", path(&bad), "--public-key", path(&key)],
        "wrong format version",
    );
    tamper(0, 0x01);
    rejected(
        &["receipt", "verify", path(&bad), "--public-key", path(&key)],
        "malformed",
    );
    tamper(original.len() - 1, 0x2a);
    rejected(
        &["receipt", "verify", path(&bad), "--public-key", path(&key)],
        "altered",
    );
    // Every single byte, through the library the binary uses.
    let public =
        strongroom::crypto::PublicKey::from_pem(&std::fs::read_to_string(&key).unwrap()).unwrap();
    let accepted = (0..original.len())
        .filter(|&i| {
            let mut b = original.clone();
            b[i] ^= 0x01;
            strongroom::vault::receipt::verify(&b, &public).is_ok()
        })
        .count();
    assert_eq!(accepted, 0);
    // Another vault's key.
    let other = Vault::start().await;
    let other_token = other.admin_token.clone();
    ok(
        &["keys", "public", "--out", path(&other_key)],
        Some((other.addr().as_str(), other_token.as_str())),
    );
    rejected(
        &[
            "receipt",
            "verify",
            path(&receipt),
            "--public-key",
            path(&other_key),
        ],
        "bad signature",
    );

    // The audit log: pin the head, export, verify offline.
    let pin = ok(&["audit", "head", "--public-key", path(&key)], auditor)
        .trim()
        .to_owned();
    assert!(pin.contains(':'), "{pin}");
    ok(&["audit", "export", "--out", path(&export)], auditor);
    let verify = |file: &Path, pin: Option<&str>| {
        let mut args = vec![
            "audit",
            "verify",
            "--file",
            path(file),
            "--public-key",
            path(&key),
        ];
        if let Some(p) = pin {
            args.extend(["--expect-head", p]);
        }
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let run = |args: &[String]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args, None)
    };
    let (good, text) = run(&verify(&export, Some(&pin)));
    assert!(good, "{text}");
    assert!(
        text.contains("from the start of the log") && text.contains("signed head"),
        "{text}"
    );
    let (good, text) = run(&verify(&export, None));
    assert!(good, "{text}");

    let lines: Vec<String> = std::fs::read_to_string(&export)
        .unwrap()
        .split_inclusive('\n')
        .map(str::to_owned)
        .collect();
    let bad = dir.path().join("bad.jsonl");
    let reject = |lines: Vec<String>, pin: Option<&str>, want: &str| {
        std::fs::write(&bad, lines.concat()).unwrap();
        let (good, text) = run(&verify(&bad, pin));
        assert!(!good, "accepted ({want}): {text}");
        assert!(text.contains(want), "wanted {want:?}: {text}");
    };
    let shred_line = lines
        .iter()
        .position(|l| l.contains("\"method\":\"Records/DeleteRecord\""))
        .unwrap();
    // An altered event line.
    let mut b = lines.clone();
    b[shred_line] = b[shred_line].replace("\"result\":\"OK\"", "\"result\":\"NOT_FOUND\"");
    reject(b, None, "fails its chain hash");
    // A removed line, and two reordered ones.
    let mut b = lines.clone();
    b.remove(shred_line);
    reject(b, None, "missing (removed)");
    let mut b = lines.clone();
    b.swap(shred_line, shred_line + 1);
    reject(b, None, "missing (removed)");
    // A forged head signature.
    let last = lines.len() - 1;
    let mut b = lines.clone();
    let sig = b[last].rfind("\"signature\":\"").unwrap() + 13;
    let flipped = if &b[last][sig..=sig] == "0" { "1" } else { "0" };
    b[last].replace_range(sig..=sig, flipped);
    reject(b, None, "forged or altered");
    // The tail without its signed head: it cannot be authenticated.
    let mut b = lines.clone();
    b.pop();
    reject(b, None, "cannot be authenticated");
    // Truncated against the pin: the log as of later, pinned, then an older export.
    let (_, seq_hash) = pin.split_once(':').unwrap();
    let later = format!(
        "{}:{seq_hash}",
        pin.split(':').next().unwrap().parse::<u64>().unwrap() + 5
    );
    reject(lines.clone(), Some(&later), "truncated or rolled back");
    let forked = format!("{}:{}", 2, seq_hash);
    reject(lines.clone(), Some(&forked), "rewritten");
    // A wrong key, and nothing needed but the files: no token, no vault.
    let (good, text) = cli(
        &[
            "audit",
            "verify",
            "--file",
            path(&export),
            "--public-key",
            path(&other_key),
        ],
        None,
    );
    assert!(!good && text.contains("not the vault's"), "{text}");
}
