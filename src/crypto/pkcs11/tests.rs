//! The `pkcs11` provider against a real SoftHSM2 token. Each test that touches a token runs its
//! body in a child process of this test binary with its own token dir (SoftHSM2 reads its
//! config once per process), so the tests run in parallel and never touch the system tokens;
//! a test in phases runs one new process per phase on the same token, like a restarted vault.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use cryptoki::{
    error::{Error as CkError, RvError},
    object::{Attribute, AttributeInfo, AttributeType, ObjectHandle},
    session::{Session, UserType},
    types::AuthPin,
};

use super::{
    Pkcs11Config, Pkcs11Provider,
    softhsm::{SoftHsm, TOKEN_LABEL, USER_PIN, write_private},
    token::{
        DERIVE_LABEL, EPOCH_LABEL_PREFIX, SIGNING_LABEL, context, ed25519_point, epoch_of_label,
        find_token,
    },
};
use crate::crypto::provider::{EpochId, KeyError, KeyProvider, PublicKey, verify_signature};

const CHILD_DIR: &str = "STRONGROOM_TEST_SOFTHSM_DIR";
const CHILD_TEST: &str = "STRONGROOM_TEST_SOFTHSM_TEST";
const CHILD_PHASE: &str = "STRONGROOM_TEST_SOFTHSM_PHASE";

/// Runs `body` in `phases` child processes in turn (phase 1, 2, ...), all on one new token.
fn in_own_process(test: &str, phases: u32, body: impl FnOnce(&SoftHsm, u32)) {
    if let (Some(dir), Some(name)) = (std::env::var_os(CHILD_DIR), std::env::var_os(CHILD_TEST))
        && name == test
    {
        let phase = std::env::var(CHILD_PHASE).unwrap().parse().unwrap();
        body(&SoftHsm::at(Path::new(&dir)), phase);
        return;
    }
    let hsm = SoftHsm::new();
    let (_, module_path) = module_path!().split_once("::").unwrap();
    let full_name = format!("{module_path}::{test}");
    for phase in 1..=phases {
        let (var, conf) = hsm.env();
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                full_name.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(var, conf)
            .env(CHILD_DIR, &hsm.dir)
            .env(CHILD_TEST, test)
            .env(CHILD_PHASE, phase.to_string())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        print!("{stdout}");
        assert!(
            out.status.success() && stdout.contains("test result: ok. 1 passed"),
            "{test} phase {phase} failed in its child process:\n{stdout}\n{stderr}"
        );
    }
}

fn config(hsm: &SoftHsm) -> Pkcs11Config {
    Pkcs11Config {
        module: hsm.module.clone(),
        token_label: TOKEN_LABEL.to_string(),
        pin_file: hsm.pin_file.clone(),
    }
}

fn open(hsm: &SoftHsm) -> Pkcs11Provider {
    Pkcs11Provider::open(&config(hsm)).unwrap()
}

/// A session of our own on the token, apart from any provider's, logged in as the user.
fn raw_session(hsm: &SoftHsm) -> Session {
    let ctx = context(&hsm.module).unwrap();
    let slot = find_token(&ctx, &hsm.module, TOKEN_LABEL).unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    match session.login(UserType::User, Some(&AuthPin::from(USER_PIN))) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e}"),
    }
    session
}

fn objects_labelled(session: &Session, label: &str) -> Vec<ObjectHandle> {
    session
        .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])
        .unwrap()
}

/// SoftHSM2 keeps each token object in a file of its own under the token's folder.
fn object_files(hsm: &SoftHsm) -> usize {
    let mut n = 0;
    for token in fs::read_dir(hsm.tokens_dir()).unwrap() {
        for file in fs::read_dir(token.unwrap().path()).unwrap() {
            if file
                .unwrap()
                .path()
                .extension()
                .is_some_and(|e| e == "object")
            {
                n += 1;
            }
        }
    }
    n
}

#[test]
fn seal_open_round_trip_and_tamper() {
    in_own_process("seal_open_round_trip_and_tamper", 1, |hsm, _| {
        let p = open(hsm);
        assert_eq!(p.kind(), "pkcs11");
        assert_eq!(p.epochs(), vec![EpochId(1)]);
        let dek = [7u8; 32];
        let aad = b"record 42 | epoch 1";
        let sealed = p.seal(EpochId(1), &dek, aad).unwrap();
        assert_eq!(sealed[0], 0x02);
        assert_eq!(sealed.len(), 1 + 12 + 32 + 16);
        assert_eq!(&p.open(EpochId(1), &sealed, aad).unwrap()[..], &dek);
        // A random IV: the same key sealed twice differs.
        assert_ne!(sealed, p.seal(EpochId(1), &dek, aad).unwrap());

        assert_eq!(
            p.open(EpochId(1), &sealed, b"record 43 | epoch 1"),
            Err(KeyError::Decrypt)
        );
        assert_eq!(p.open(EpochId(1), &sealed, b""), Err(KeyError::Decrypt));
        let mut rejected = 0;
        for i in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut bad = sealed.clone();
                bad[i] ^= bit;
                assert_eq!(
                    p.open(EpochId(1), &bad, aad),
                    Err(KeyError::Decrypt),
                    "byte {i}"
                );
                rejected += 1;
            }
        }
        assert_eq!(rejected, 2 * sealed.len());
        for len in [0, 1, 12, 13, 28, sealed.len() - 1] {
            assert_eq!(
                p.open(EpochId(1), &sealed[..len], aad),
                Err(KeyError::Decrypt),
                "truncated to {len}"
            );
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert_eq!(p.open(EpochId(1), &longer, aad), Err(KeyError::Decrypt));
        for version in [0x00, 0x01, 0x03, 0xff] {
            let mut other = sealed.clone();
            other[0] = version;
            assert_eq!(p.open(EpochId(1), &other, aad), Err(KeyError::Decrypt));
        }
        // The session a failed open used still works.
        assert_eq!(&p.open(EpochId(1), &sealed, aad).unwrap()[..], &dek);

        assert_eq!(
            p.seal(EpochId(2), &dek, aad),
            Err(KeyError::UnknownEpoch(EpochId(2)))
        );
        assert_eq!(
            p.open(EpochId(2), &sealed, aad),
            Err(KeyError::UnknownEpoch(EpochId(2)))
        );
        // An empty key seals and opens too (GCM has no minimum).
        let empty = p.seal(EpochId(1), b"", aad).unwrap();
        assert!(p.open(EpochId(1), &empty, aad).unwrap().is_empty());
    });
}

#[test]
fn add_epoch_then_destroy_the_old_one() {
    in_own_process("add_epoch_then_destroy_the_old_one", 2, |hsm, phase| {
        let label1 = format!("{EPOCH_LABEL_PREFIX}1");
        let label2 = format!("{EPOCH_LABEL_PREFIX}2");
        let saved = hsm.dir.join("sealed-under-1");
        if phase == 1 {
            let p = open(hsm);
            let sealed = p.seal(EpochId(1), b"old data key", b"aad").unwrap();
            assert_eq!(p.add_epoch().unwrap(), EpochId(2));
            assert_eq!(p.epochs(), vec![EpochId(1), EpochId(2)]);
            assert_eq!(p.current(), EpochId(2));
            // Still openable under 1 until it is destroyed.
            assert_eq!(
                &p.open(EpochId(1), &sealed, b"aad").unwrap()[..],
                b"old data key"
            );

            let Err(KeyError::Provider(message)) = p.destroy_epoch(EpochId(2)) else {
                panic!("the current epoch was destroyed");
            };
            assert!(message.contains("current"), "{message}");

            let files_before = object_files(hsm);
            p.destroy_epoch(EpochId(1)).unwrap();
            assert_eq!(object_files(hsm), files_before - 1);
            assert_eq!(p.epochs(), vec![EpochId(2)]);
            assert_eq!(
                p.open(EpochId(1), &sealed, b"aad"),
                Err(KeyError::UnknownEpoch(EpochId(1)))
            );
            assert_eq!(
                p.seal(EpochId(1), b"x", b"aad"),
                Err(KeyError::UnknownEpoch(EpochId(1)))
            );
            assert_eq!(
                p.destroy_epoch(EpochId(1)),
                Err(KeyError::UnknownEpoch(EpochId(1)))
            );
            // Seen from a session of our own, not the provider's cache.
            let raw = raw_session(hsm);
            assert_eq!(objects_labelled(&raw, &label1).len(), 0);
            assert_eq!(objects_labelled(&raw, &label2).len(), 1);
            fs::write(&saved, &sealed).unwrap();
        } else {
            // A new process: the token itself no longer holds epoch 1.
            let raw = raw_session(hsm);
            assert_eq!(objects_labelled(&raw, &label1).len(), 0);
            assert_eq!(objects_labelled(&raw, &label2).len(), 1);
            let p = open(hsm);
            assert_eq!(p.epochs(), vec![EpochId(2)]);
            let sealed = fs::read(&saved).unwrap();
            assert_eq!(
                p.open(EpochId(1), &sealed, b"aad"),
                Err(KeyError::UnknownEpoch(EpochId(1)))
            );
            // The next epoch is 3, never a reused 1 or 2.
            assert_eq!(p.add_epoch().unwrap(), EpochId(3));
        }
    });
}

#[test]
fn keys_are_not_extractable() {
    in_own_process("keys_are_not_extractable", 1, |hsm, _| {
        let p = open(hsm);
        p.add_epoch().unwrap();
        let raw = raw_session(hsm);
        let mut keys = Vec::new();
        for label in [
            format!("{EPOCH_LABEL_PREFIX}1"),
            format!("{EPOCH_LABEL_PREFIX}2"),
        ] {
            keys.extend(objects_labelled(&raw, &label));
        }
        let private = raw
            .find_objects(&[
                Attribute::Label(SIGNING_LABEL.as_bytes().to_vec()),
                Attribute::Class(cryptoki::object::ObjectClass::PRIVATE_KEY),
            ])
            .unwrap();
        assert_eq!(private.len(), 1);
        keys.extend(private);
        keys.extend(objects_labelled(&raw, DERIVE_LABEL));
        assert_eq!(keys.len(), 4);
        for key in keys {
            let attributes = raw
                .get_attributes(
                    key,
                    &[
                        AttributeType::Token,
                        AttributeType::Extractable,
                        AttributeType::Sensitive,
                        AttributeType::NeverExtractable,
                        AttributeType::AlwaysSensitive,
                    ],
                )
                .unwrap();
            assert_eq!(
                attributes,
                vec![
                    Attribute::Token(true),
                    Attribute::Extractable(false),
                    Attribute::Sensitive(true),
                    Attribute::NeverExtractable(true),
                    Attribute::AlwaysSensitive(true),
                ]
            );
            // CKA_VALUE (the secret key, or the private scalar) is refused.
            let info = raw
                .get_attribute_info(key, &[AttributeType::Value])
                .unwrap();
            assert!(matches!(info[..], [AttributeInfo::Sensitive]), "{info:?}");
            assert!(
                raw.get_attributes(key, &[AttributeType::Value])
                    .unwrap()
                    .is_empty()
            );
            // Nor can it be made extractable now.
            assert!(
                raw.update_attributes(key, &[Attribute::Extractable(true)])
                    .is_err()
            );
        }
    });
}

#[test]
fn reopening_sees_the_same_epochs_and_public_key() {
    in_own_process(
        "reopening_sees_the_same_epochs_and_public_key",
        2,
        |hsm, phase| {
            let saved = hsm.dir.join("saved");
            if phase == 1 {
                let p = open(hsm);
                p.add_epoch().unwrap();
                p.add_epoch().unwrap();
                let epochs = p.epochs();
                let public = p.public_key();
                let sealed = p.seal(EpochId(2), b"data key", b"aad").unwrap();
                let signature = p.sign(b"checkpoint").unwrap();
                let derived = p.derive_key("index/customers/email").unwrap();
                assert_ne!(*derived, *p.derive_key("index/customers/phone").unwrap());
                drop(p);
                // Reopened in this process: sessions and login start over.
                let p = open(hsm);
                assert_eq!(p.epochs(), epochs);
                assert_eq!(p.public_key(), public);
                assert_eq!(
                    &p.open(EpochId(2), &sealed, b"aad").unwrap()[..],
                    b"data key"
                );
                assert_eq!(p.derive_key("index/customers/email").unwrap(), derived);
                let mut out = public.0.to_vec();
                out.extend_from_slice(&signature.0);
                out.extend_from_slice(&*derived);
                out.extend_from_slice(&sealed);
                fs::write(&saved, out).unwrap();
            } else {
                let bytes = fs::read(&saved).unwrap();
                let (public, rest) = bytes.split_at(32);
                let (signature, rest) = rest.split_at(64);
                let (derived, sealed) = rest.split_at(32);
                let p = open(hsm);
                // The same derived key in another process.
                assert_eq!(&p.derive_key("index/customers/email").unwrap()[..], derived);
                assert_eq!(p.epochs(), vec![EpochId(1), EpochId(2), EpochId(3)]);
                assert_eq!(p.public_key().0, public);
                assert_eq!(
                    &p.open(EpochId(2), sealed, b"aad").unwrap()[..],
                    b"data key"
                );
                let signature = crate::crypto::provider::Signature(signature.try_into().unwrap());
                assert!(verify_signature(&p.public_key(), b"checkpoint", &signature));
                // Opening made nothing new: one key per epoch, one signing pair.
                let raw = raw_session(hsm);
                assert_eq!(objects_labelled(&raw, SIGNING_LABEL).len(), 2);
                assert_eq!(objects_labelled(&raw, DERIVE_LABEL).len(), 1);
                for n in 1..=3 {
                    let label = format!("{EPOCH_LABEL_PREFIX}{n}");
                    assert_eq!(objects_labelled(&raw, &label).len(), 1);
                }
            }
        },
    );
}

/// Every refusal names its cause, and none carries the PIN.
fn refused(config: &Pkcs11Config, secrets: &[&str]) -> String {
    let message = Pkcs11Provider::open(config).unwrap_err();
    for secret in secrets {
        assert!(!message.contains(secret), "{message}");
    }
    message
}

#[test]
fn refuses_to_start_with_clear_messages() {
    in_own_process("refuses_to_start_with_clear_messages", 1, |hsm, _| {
        let wrong_pin = "8830-wrong-6612";
        let secrets = [USER_PIN, wrong_pin];
        let good = config(hsm);

        // Before any good login in this process: login is per process.
        let wrong_file = hsm.dir.join("wrong-pin");
        write_private(&wrong_file, &format!("{wrong_pin}\n"));
        let message = refused(
            &Pkcs11Config {
                pin_file: wrong_file.clone(),
                ..good.clone()
            },
            &secrets,
        );
        assert!(message.contains("refused the PIN"), "{message}");
        assert!(message.contains(TOKEN_LABEL), "{message}");
        assert!(
            message.contains(&wrong_file.display().to_string()),
            "{message}"
        );

        let message = refused(
            &Pkcs11Config {
                token_label: "no-such-token".to_string(),
                ..good.clone()
            },
            &secrets,
        );
        assert!(
            message.contains("no PKCS#11 token labelled 'no-such-token'"),
            "{message}"
        );
        assert!(message.contains(&format!("'{TOKEN_LABEL}'")), "{message}");

        let missing_module = hsm.dir.join("libnothing.so");
        let message = refused(
            &Pkcs11Config {
                module: missing_module.clone(),
                ..good.clone()
            },
            &secrets,
        );
        assert!(message.contains("not found"), "{message}");
        assert!(
            message.contains(&missing_module.display().to_string()),
            "{message}"
        );

        let not_a_module = hsm.dir.join("softhsm2.conf");
        let message = refused(
            &Pkcs11Config {
                module: not_a_module,
                ..good.clone()
            },
            &secrets,
        );
        assert!(message.contains("cannot load PKCS#11 module"), "{message}");

        let open_file = hsm.dir.join("open-pin");
        write_private(&open_file, USER_PIN);
        fs::set_permissions(&open_file, fs::Permissions::from_mode(0o644)).unwrap();
        let message = refused(
            &Pkcs11Config {
                pin_file: open_file,
                ..good.clone()
            },
            &secrets,
        );
        assert!(message.contains("mode 0644"), "{message}");
        assert!(message.contains("chmod 600"), "{message}");

        let message = refused(
            &Pkcs11Config {
                pin_file: hsm.dir.join("no-pin-here"),
                ..good.clone()
            },
            &secrets,
        );
        assert!(message.contains("PIN file"), "{message}");
        assert!(message.contains("not found"), "{message}");

        let empty = hsm.dir.join("empty-pin");
        write_private(&empty, " \n");
        let message = refused(
            &Pkcs11Config {
                pin_file: empty,
                ..good.clone()
            },
            &secrets,
        );
        assert!(message.contains("is empty"), "{message}");

        // None of those left anything behind: the good config opens, and prints no PIN.
        let p = Pkcs11Provider::open(&good).unwrap();
        let shown = format!("{p:?}");
        assert!(shown.contains(TOKEN_LABEL), "{shown}");
        assert!(!shown.contains(USER_PIN), "{shown}");
        assert!(!format!("{good:?}").contains(USER_PIN));
    });
}

#[test]
fn signatures_verify_and_tampering_does_not() {
    in_own_process("signatures_verify_and_tampering_does_not", 1, |hsm, _| {
        let p = open(hsm);
        let public = p.public_key();
        let message = b"audit checkpoint 1024: head 9f2c";
        let signature = p.sign(message).unwrap();
        assert!(verify_signature(&public, message, &signature));
        // Ed25519 is deterministic (RFC 8032).
        assert_eq!(p.sign(message).unwrap(), signature);
        assert!(!verify_signature(
            &public,
            b"audit checkpoint 1024: head 9f2d",
            &signature
        ));
        assert!(!verify_signature(&public, b"", &signature));
        for i in [0, 31, 32, 63] {
            let mut bad = signature;
            bad.0[i] ^= 0x01;
            assert!(!verify_signature(&public, message, &bad), "byte {i}");
        }
        let mut other = public;
        other.0[0] ^= 0x01;
        assert!(!verify_signature(&other, message, &signature));
        let empty = p.sign(b"").unwrap();
        assert!(verify_signature(&public, b"", &empty));
    });
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Several threads seal and open at once while epochs are added; prints the rates (figures
/// for BENCHMARKS.md, never asserted). `STRONGROOM_PKCS11_OPS` sets the round trips per thread.
#[test]
fn concurrent_round_trips_and_rates() {
    in_own_process("concurrent_round_trips_and_rates", 1, |hsm, _| {
        let ops: usize = std::env::var("STRONGROOM_PKCS11_OPS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(500);
        let p = open(hsm);
        let round_trip = |i: usize| {
            let dek = [(i % 251) as u8; 32];
            let aad = i.to_be_bytes();
            let sealed = p.seal(EpochId(1), &dek, &aad).unwrap();
            p.open(EpochId(1), &sealed, &aad).unwrap()[..] == dek
        };

        let start = Instant::now();
        let single = (0..ops).filter(|i| round_trip(*i)).count();
        let single_rate = per_second(single, start.elapsed());
        assert_eq!(single, ops);

        let threads = 4;
        let start = Instant::now();
        let total: usize = std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads)
                .map(|t| s.spawn(move || (0..ops).filter(|i| round_trip(t * ops + i)).count()))
                .collect();
            // Epochs change under the readers; they go on.
            assert_eq!(p.add_epoch().unwrap(), EpochId(2));
            assert_eq!(p.add_epoch().unwrap(), EpochId(3));
            workers.into_iter().map(|w| w.join().unwrap()).sum()
        });
        let threaded_rate = per_second(total, start.elapsed());
        assert_eq!(total, threads * ops);
        assert_eq!(p.epochs(), vec![EpochId(1), EpochId(2), EpochId(3)]);

        let start = Instant::now();
        let signatures: Vec<_> = (0..ops)
            .map(|i| p.sign(&i.to_be_bytes()).unwrap())
            .collect();
        let sign_rate = per_second(signatures.len(), start.elapsed());
        let public: PublicKey = p.public_key();
        let verified = signatures
            .iter()
            .enumerate()
            .filter(|(i, signature)| verify_signature(&public, &i.to_be_bytes(), signature))
            .count();
        assert_eq!(verified, ops);
        println!(
            "pkcs11 figures (SoftHSM2): seal+open {single_rate:.0}/s on 1 thread, \
             {threaded_rate:.0}/s on {threads} threads; sign {sign_rate:.0}/s ({ops} ops per \
             thread)"
        );
    });
}

#[test]
fn ec_point_and_label_parsing() {
    let key = [9u8; 32];
    let mut der = vec![0x04, 0x20];
    der.extend_from_slice(&key);
    assert_eq!(ed25519_point(&der), Some(key));
    assert_eq!(ed25519_point(&key), Some(key));
    assert_eq!(ed25519_point(&der[..33]), None);
    assert_eq!(ed25519_point(&[0x04, 0x21, 1, 2]), None);
    assert_eq!(ed25519_point(&[]), None);

    assert_eq!(epoch_of_label(b"strongroom-epoch-1"), Some(1));
    assert_eq!(
        epoch_of_label(b"strongroom-epoch-4294967295"),
        Some(u32::MAX)
    );
    for bad in [
        &b"strongroom-epoch-0"[..],
        b"strongroom-epoch-01",
        b"strongroom-epoch-",
        b"strongroom-epoch-+2",
        b"strongroom-epoch-4294967296",
        b"strongroom-signing",
        b"other-epoch-1",
        b"\xffstrongroom-epoch-1",
    ] {
        assert_eq!(
            epoch_of_label(bad),
            None,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
