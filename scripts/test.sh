#!/usr/bin/env bash
# `make test`: starts the PostgreSQL test cluster (a primary and two synchronous standbys on
# loopback, scripts/pg-cluster.sh), runs every test (the storage conformance suite runs on
# RocksDB, memory and PostgreSQL), runs the vault's end-to-end tests a second time with every
# vault on PostgreSQL, runs the guard bench, and stops the cluster, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO="${CARGO:-cargo}"

# A cluster of its own: a fresh directory (never an inherited one: it is removed on exit), in
# /tmp, which the postgres user can enter, and ports apart from a developer's cluster on the
# script's default ones.
export PG_CLUSTER_DIR="/tmp/strongroom-test-pg.$$"
export PG_CLUSTER_PORT="${PG_CLUSTER_PORT:-55450}"
trap 'scripts/pg-cluster.sh stop' EXIT
scripts/pg-cluster.sh start >/dev/null
eval "$(scripts/pg-cluster.sh env)"

$CARGO test --locked
echo "== the vault's end-to-end tests again, every vault on PostgreSQL =="
STRONGROOM_TEST_STORE=postgres $CARGO test --locked --test vault --test policy
$CARGO bench --locked --bench guard
