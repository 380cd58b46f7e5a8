#!/usr/bin/env bash
# The crash soak (issue 8): runs `strongroom serve` (the debug binary) on a temp data dir on a
# 127.0.0.1 port, drives concurrent creates, updates, shreds and policy apply/rollback against
# it, kill -9's it at a random moment, restarts it, and checks that every acknowledged write reads
# back whole (as admin), every acknowledged shred stays NOT_FOUND, acknowledged policy versions
# are kept, and the audit chain verifies. Repeats for the given number of cycles.
#
#   scripts/soak.sh            # 1,000 cycles (the long run; `make test` runs 3)
#   scripts/soak.sh 50         # 50 cycles
#   STRONGROOM_SOAK_SEED=42 scripts/soak.sh 10   # replay a run (the seed is printed first)
#
# It is the test `fuzz::soak::crash_soak` of the `attacks` test binary with STRONGROOM_SOAK_CYCLES set,
# run from a copy of the binaries (a rebuild during the soak does not change what it runs). Each
# cycle prints one `soak:` line with the running counts; the last line has the totals.
set -euo pipefail
cd "$(dirname "$0")/.."
export STRONGROOM_SOAK_CYCLES="${1:-1000}"
target="${CARGO_TARGET_DIR:-target}"
attacks="$(cargo test --test attacks --no-run --message-format=json 2>/dev/null |
  grep -o '"executable":"[^"]*"' | tail -1 | cut -d'"' -f4)"
cargo build --bin strongroom 2>/dev/null
copy="$(mktemp -d)"
trap 'rm -rf "$copy"' EXIT
cp "$attacks" "$copy/attacks"
cp "$target/debug/strongroom" "$copy/strongroom"
STRONGROOM_BIN="$copy/strongroom" "$copy/attacks" fuzz::soak::crash_soak --exact --nocapture
