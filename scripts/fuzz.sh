#!/usr/bin/env bash
# The long fuzz run (issue 8): every decoder harness with PROPTEST_CASES inputs each (default
# 1,000,000), in release mode, one after the other, each under a virtual-memory limit so that a
# decoder that tried to allocate what a huge length prefix claims would abort the run.
#
#   scripts/fuzz.sh                      # every harness, 1,000,000 inputs each (`make fuzz`)
#   PROPTEST_CASES=20000 scripts/fuzz.sh # a shorter run
#   scripts/fuzz.sh header codec         # only the harnesses whose name contains a word
#   FUZZ_PROFILE=dev scripts/fuzz.sh     # the debug build (dependencies are optimized in dev too)
#
# Each harness prints `fuzz: <decoder>: <n> inputs, 0 panics, 0 hangs`; a panic fails the harness
# with the shrunk input; an input running longer than STRONGROOM_FUZZ_HANG_SECS (60) aborts it as
# a hang. The summary at the end counts inputs, failures and hangs per decoder; the full output
# is in target/fuzz.log (FUZZ_LOG). Exit status: 0 only if every harness passed.
set -uo pipefail

# All in one function, so bash has read the whole script before running any of it (an edit
# during a long run cannot change what runs).
main() {
  cd "$(dirname "$0")/.."

  export PROPTEST_CASES="${PROPTEST_CASES:-1000000}"
  profile=(--release)
  [ "${FUZZ_PROFILE:-release}" = dev ] && profile=()
  # Address-space limits: the unit harnesses run in well under 1 GiB and the server harness (with
  # RocksDB) under 4 GiB, so a decoder that allocated what a 2^32 length prefix claims would fail.
  mem_kib="${FUZZ_MEM_KIB:-1048576}"
  server_mem_kib="${FUZZ_SERVER_MEM_KIB:-4194304}"
  log="${FUZZ_LOG:-${CARGO_TARGET_DIR:-target}/fuzz.log}"
  mkdir -p "$(dirname "$log")"
  : >"$log"

  lib_harnesses=(
    crypto::envelope::tests::fuzz_field_envelope
    crypto::envelope::tests::fuzz_wrapped_dek
    vault::header::tests::fuzz_record_header
    audit::codec::tests::fuzz_audit_codec
    audit::chain::tests::fuzz_checkpoints
    audit::chain::tests::fuzz_stored_events
    vault::tokens::tests::fuzz_presented_tokens
    vault::tokens::tests::fuzz_stored_tokens
    policy::rules::tests::fuzz_policy_csv
    domain::schema::tests::fuzz_schema_toml
    config::tests::fuzz_config_toml
    crypto::keyring::tests::fuzz_keyring_text
    vault::keystore::tests::fuzz_key_store_entry
  )
  server_harness=fuzz::every_request_gets_a_status_and_the_server_keeps_serving

  binary() { # the test executable of a cargo target
    cargo test "${profile[@]}" "$@" --no-run --message-format=json 2>/dev/null |
      grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4
  }
  lib_bin="$(binary --lib)" && attacks_bin="$(binary --test attacks)" || exit 1
  [ -x "$lib_bin" ] && [ -x "$attacks_bin" ] || { echo "fuzz.sh: the build failed" >&2; exit 1; }
  # Run copies, so that a rebuild during a long run does not change what it runs.
  copy="$(mktemp -d)"
  trap 'rm -rf "$copy"' EXIT
  cp "$lib_bin" "$copy/lib" && cp "$attacks_bin" "$copy/attacks"
  lib_bin="$copy/lib" attacks_bin="$copy/attacks"

  wanted() {
    [ $# -le 1 ] && return 0
    local name="$1"; shift
    for w in "$@"; do [[ "$name" == *"$w"* ]] && return 0; done
    return 1
  }

  failed=0
  run() { # run <binary> <mem KiB> <test name>
    local bin="$1" mem="$2" name="$3" start status
    start=$(date +%s)
    ( ulimit -v "$mem"; "$bin" --exact "$name" --nocapture --test-threads 1 ) >>"$log" 2>&1
    status=$?
    if [ "$status" -ne 0 ]; then
      failed=1
      if grep -q "HANG" "$log"; then echo "HANG    $name"; else echo "FAIL    $name (exit $status)"; fi
    fi
    echo "$(( $(date +%s) - start ))s   $name" >>"$log"
  }

  echo "fuzz.sh: PROPTEST_CASES=$PROPTEST_CASES per harness, profile ${profile[*]:-dev}, log $log"
  for h in "${lib_harnesses[@]}"; do
    wanted "$h" "$@" && run "$lib_bin" "$mem_kib" "$h"
  done
  wanted "$server_harness" "$@" && run "$attacks_bin" "$server_mem_kib" "$server_harness"

  echo "--- per decoder ---"
  grep -oE 'fuzz: .*' "$log"
  echo "--- $(grep -cE 'fuzz: .* inputs, 0 panics, 0 hangs' "$log") harnesses passed; failures: $failed"
  return "$failed"
}

main "$@"
