//! The install steps of `make run` and `make test` on a fresh machine: what they detect.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::{path::Path, process::Command};

/// Runs `scripts/find-libclang.sh` over `dir` only; returns what it found.
fn find_libclang_in(dir: &Path) -> Option<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/find-libclang.sh");
    let out = Command::new("bash").arg(script).arg(dir).output().unwrap();
    out.status
        .success()
        .then(|| String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

#[test]
fn llvms_cpp_library_is_not_taken_for_the_libclang_bindgen_loads() {
    let dir = tempfile::tempdir().unwrap();
    let touch = |name: &str| std::fs::write(dir.path().join(name), b"").unwrap();
    // What a Debian machine with LLVM but without libclang-dev has (it made `make run` fail
    // with bindgen's "Unable to find libclang").
    touch("libclang-cpp.so.14");
    touch("libclang-cpp.so");
    touch("libLLVM-14.so.1");
    assert_eq!(find_libclang_in(dir.path()), None);
    // Each name clang-sys loads is found.
    for name in [
        "libclang-14.so.13",
        "libclang.so",
        "libclang.so.1",
        "libclang-15.so",
    ] {
        let only = tempfile::tempdir().unwrap();
        std::fs::write(only.path().join(name), b"").unwrap();
        let found = find_libclang_in(only.path()).unwrap_or_default();
        assert!(found.ends_with(name), "{name}: found {found:?}");
    }
}
