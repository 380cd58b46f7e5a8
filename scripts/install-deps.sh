#!/usr/bin/env bash
# Installs what building strongroom needs and a fresh Debian machine lacks: libclang (bindgen
# generates RocksDB's bindings with it) and a C++ compiler (RocksDB is C++). Idempotent: does
# nothing when everything is there.
set -euo pipefail

missing=()
# bindgen (through clang-sys) loads `libclang.so`, `libclang-N.so` or `libclang.so.N`, from
# LIBCLANG_PATH or the usual library dirs. LLVM's C++ library `libclang-cpp.so.N` is a different
# library that bindgen cannot use, and a machine can have it without libclang: match only the
# names clang-sys accepts.
libclang_name='libclang(-[0-9][0-9.]*)?\.so(\.[0-9.]+)?$'
have_libclang() {
  local dirs=(/usr/lib/llvm-*/lib /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/lib)
  [ -n "${LIBCLANG_PATH:-}" ] && dirs=("$LIBCLANG_PATH" "${dirs[@]}")
  ldconfig -p 2>/dev/null | awk '{print $1}' | grep -qE "^${libclang_name}" && return 0
  local d
  for d in "${dirs[@]}"; do
    [ -d "$d" ] || continue
    ls "$d" 2>/dev/null | grep -qE "^${libclang_name}" && return 0
  done
  return 1
}
have_libclang || missing+=(libclang-dev)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)

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
