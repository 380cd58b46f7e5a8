#!/usr/bin/env bash
# Installs what building strongroom needs and a fresh Debian machine lacks: libclang (bindgen
# generates RocksDB's bindings with it), a C++ compiler (RocksDB is C++), SoftHSM2 (the
# PKCS#11 token the `pkcs11` key provider's tests run against), Python's venv (the grpcio
# client of the TLS interop test) and openssl (the PostgreSQL test cluster's certificates).
# Idempotent: does nothing when everything is there.
set -euo pipefail

missing=()
have_libclang() { "$(dirname "$0")/find-libclang.sh" >/dev/null; }
have_libclang || missing+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v softhsm2-util >/dev/null 2>&1 || missing+=(softhsm2)
# The PostgreSQL test cluster's TLS certificates (scripts/pg-cluster.sh).
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The Python gRPC client the TLS interop test runs lives in a virtualenv (scripts/python-env.sh).
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq "${missing[@]}"
fi
have_libclang || { echo "libclang is still missing after install: set LIBCLANG_PATH" >&2; exit 1; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust with rustup (https://rustup.rs) and run again" >&2
  exit 1
fi
