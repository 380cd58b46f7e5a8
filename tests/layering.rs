//! Keeps the layering of ARCHITECTURE.md: each engine crate is named in its one module, and
//! nothing below the API returns or names tonic types.

#![allow(clippy::unwrap_used, missing_docs)]

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// `(crate path pattern, the files or folders allowed to name it)`.
const RULES: &[(&str, &[&str])] = &[
    ("rocksdb::", &["src/storage/rocks.rs"]),
    ("casbin::", &["src/policy/"]),
    ("chacha20poly1305::", &["src/crypto/"]),
    ("cryptoki::", &["src/crypto/pkcs11"]),
    ("ed25519_dalek::", &["src/crypto/"]),
    (
        "tonic::",
        &[
            "src/api",
            "src/server.rs",
            "src/client.rs",
            "src/cli",
            "src/bench",
        ],
    ),
    ("prost::", &["src/api", "src/bench"]),
    ("rcgen::", &["src/tls"]),
    ("x509_parser::", &["src/tls"]),
];

#[test]
fn engine_crates_are_named_only_in_their_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut violations = Vec::new();
    for file in sources(&root.join("src")) {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for (pattern, allowed) in RULES {
            let names_it = text.lines().any(|l| {
                let l = l.trim_start();
                !l.starts_with("//")
                    && (l.contains(pattern)
                        || l.contains(&format!("use {}", pattern.trim_end_matches("::"))))
            });
            if names_it && !allowed.iter().any(|a| rel.starts_with(a)) {
                violations.push(format!("{rel} names {pattern}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering broken:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_rule_catches_a_violation() {
    // The scan is not vacuous: the storage module does name rocksdb.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("src/storage/rocks.rs")).unwrap();
    assert!(text.contains("rocksdb::"));
}
