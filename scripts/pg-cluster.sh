#!/usr/bin/env bash
# A PostgreSQL cluster on loopback for strongroom's tests and bench: a primary (r1) and two
# synchronous standbys (r2, r3) streaming from it, with synchronous_standby_names =
# 'ANY 1 (r2, r3)': a commit is acknowledged once the primary and at least one standby have
# flushed it, so losing the primary loses no acknowledged write if the most advanced standby is
# promoted (which `promote` does).
#
#   scripts/pg-cluster.sh start     initdb (as the postgres user when run as root), two base
#                                   backups, start all three, create the databases `strongroom`
#                                   (data) and `strongroom_keys` (the key store); prints the URL
#   scripts/pg-cluster.sh url [DB]  the multi-host URL of DB (default strongroom), which finds
#                                   the writable node (target_session_attrs=read-write)
#   scripts/pg-cluster.sh env       the variables the tests read, as shell exports:
#                                   eval "$(scripts/pg-cluster.sh env)"
#   scripts/pg-cluster.sh kill rN   kill -9 node rN's postmaster (a crash, no shutdown)
#   scripts/pg-cluster.sh promote   promote the running standby that received the most WAL
#                                   (pg_ctl promote) and point the other standby at it; prints
#                                   the new primary's name
#   scripts/pg-cluster.sh stop      stop every node and remove the cluster's directory
#
# Environment: PG_CLUSTER_DIR (default ${TMPDIR:-/tmp}/strongroom-pg), PG_CLUSTER_PORT (r1's
# port, default 55440; r2 and r3 take the next two). Trust authentication on 127.0.0.1 only: a
# test cluster, never a deployment. Installs Debian's postgresql if missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
die() { echo "pg-cluster.sh: error: $*" >&2; exit 1; }
log() { echo "pg-cluster.sh: $*" >&2; }
# shellcheck source=pg-lib.sh
. "$here/pg-lib.sh"

dir="${PG_CLUSTER_DIR:-${TMPDIR:-/tmp}/strongroom-pg}"
base="${PG_CLUSTER_PORT:-55440}"
[[ "$base" =~ ^[1-9][0-9]*$ ]] && [ "$base" -le 65533 ] || die "PG_CLUSTER_PORT must be a port below 65534, got '$base'"
nodes=(r1 r2 r3)

port_of() { echo $((base + ${1#r} - 1)); }
data_of() { echo "$dir/$1"; }
psql_at() {
  local node="$1"
  shift
  as_pg "$bindir/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of "$node")" -U postgres -d postgres "$@"
}
running() { [ -f "$(data_of "$1")/postmaster.pid" ] && as_pg "$bindir/pg_ctl" -D "$(data_of "$1")" status >/dev/null 2>&1; }

url() {
  local db="${1:-strongroom}" hosts=() n
  for n in "${nodes[@]}"; do hosts+=("127.0.0.1:$(port_of "$n")"); done
  echo "postgres://postgres@$(IFS=,; echo "${hosts[*]}")/$db?target_session_attrs=read-write&connect_timeout=2"
}

start_node() {
  local node="$1"
  as_pg "$bindir/pg_ctl" -D "$(data_of "$node")" -l "$dir/$node.log" -w -t 60 start >/dev/null ||
    { tail -n 30 "$dir/$node.log" >&2; die "$node did not start (port $(port_of "$node") in use? set PG_CLUSTER_PORT)"; }
}

standby_conf() {
  local node="$1" upstream="$2"
  cat >>"$(data_of "$node")/postgresql.auto.conf" <<EOF
port = $(port_of "$node")
cluster_name = '$node'
primary_conninfo = 'host=127.0.0.1 port=$(port_of "$upstream") user=postgres application_name=$node'
EOF
}

# A throwaway CA and a server certificate for 127.0.0.1 and localhost, in $dir/tls: the
# servers' key readable by the postgres user only, the CA certificate by anyone.
make_certificates() {
  local tls="$dir/tls"
  mkdir -p "$tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=strongroom test cluster CA" -keyout "$tls/ca.key" -out "$tls/ca.pem" \
    >"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "cannot make the test CA"; }
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=127.0.0.1" -keyout "$tls/server.key" -out "$tls/server.csr" \
    >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "cannot make the server key"; }
  printf 'subjectAltName = IP:127.0.0.1, DNS:localhost\n' >"$tls/san.ext"
  openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
    -CAcreateserial -days 30 -extfile "$tls/san.ext" -out "$tls/server.pem" \
    >>"$tls/openssl.log" 2>&1 || { cat "$tls/openssl.log" >&2; die "cannot sign the server certificate"; }
  rm -f "$tls/ca.key" "$tls/server.csr"
  chmod 0600 "$tls/server.key"
  pg_own "$tls"
  chmod 0755 "$tls"
  chmod 0644 "$tls/ca.pem" "$tls/server.pem"
}

cmd_start() {
  pg_require_bindir
  [ "$(id -u)" -ne 0 ] || id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (it comes with the postgresql package)"
  if running r1; then
    log "already running in $dir"
    url
    return 0
  fi
  rm -rf "$dir"
  mkdir -p "$dir"
  chmod 0755 "$dir"
  pg_own "$dir"
  as_pg "$bindir/initdb" -D "$(data_of r1)" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  make_certificates
  cat >>"$(data_of r1)/postgresql.conf" <<EOF

# strongroom test cluster (scripts/pg-cluster.sh)
listen_addresses = '127.0.0.1'
port = $(port_of r1)
unix_socket_directories = '$dir'
cluster_name = 'r1'
max_connections = 300
shared_buffers = 64MB
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = replica
max_wal_senders = 10
wal_keep_size = '256MB'
synchronous_standby_names = 'ANY 1 (r2, r3)'
hot_standby = on
# TLS offered (clients choose: the vault's tests connect both ways), with a certificate for
# 127.0.0.1 from the cluster's own CA ($dir/tls/ca.pem).
ssl = on
ssl_cert_file = '$dir/tls/server.pem'
ssl_key_file = '$dir/tls/server.key'
# A killed node's clients notice within seconds.
tcp_keepalives_idle = 5
tcp_keepalives_interval = 1
tcp_keepalives_count = 3
EOF
  start_node r1
  for n in r2 r3; do
    as_pg "$bindir/pg_basebackup" -h 127.0.0.1 -p "$(port_of r1)" -U postgres -D "$(data_of "$n")" \
      -X stream -R -c fast >"$dir/$n.basebackup.log" 2>&1 ||
      { cat "$dir/$n.basebackup.log" >&2; die "pg_basebackup of $n failed"; }
    standby_conf "$n" r1
    start_node "$n"
  done
  # Both standbys stream; at least one is synchronous before the databases are made.
  local tries=0
  until [ "$(psql_at r1 -c "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" = 2 ]; do
    tries=$((tries + 1))
    [ "$tries" -lt 100 ] || die "the standbys did not start streaming"
    sleep 0.1
  done
  psql_at r1 -c "CREATE DATABASE strongroom" -c "CREATE DATABASE strongroom_keys"
  log "primary r1 on $(port_of r1), synchronous standbys r2 on $(port_of r2), r3 on $(port_of r3); in $dir"
  url
}

cmd_kill() {
  local node="${1:-}" pid
  [[ " ${nodes[*]} " == *" $node "* ]] || die "kill: name a node: r1, r2 or r3"
  pid="$(head -n 1 "$(data_of "$node")/postmaster.pid" 2>/dev/null)" || die "$node is not running"
  kill -9 "$pid"
  # The postmaster's children exit when they see it gone; wait until the port is free.
  local tries=0
  while kill -0 "$pid" 2>/dev/null && [ "$tries" -lt 100 ]; do tries=$((tries + 1)); sleep 0.05; done
  log "killed $node (postmaster $pid)"
}

cmd_promote() {
  pg_require_bindir
  local best="" best_lsn="" n lsn
  # Every standby must answer: with ANY 1 (r2, r3) an acknowledged write may be on one of them
  # only, so the one to promote is the one that received the most WAL.
  for n in r2 r3; do
    running "$n" || die "promote: standby $n is not running; compare every standby's WAL before promoting"
    [ "$(psql_at "$n" -c "SELECT pg_is_in_recovery()")" = t ] || die "promote: $n is not a standby"
    lsn="$(psql_at "$n" -c "SELECT greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'::pg_lsn")"
    lsn="${lsn%%.*}"
    lsn="${lsn:-0}"
    if [ -z "$best" ] || [ "$lsn" -gt "$best_lsn" ]; then
      best="$n"
      best_lsn="$lsn"
    fi
  done
  as_pg "$bindir/pg_ctl" -D "$(data_of "$best")" promote -w -t 60 >/dev/null || die "pg_ctl promote $best failed"
  for n in r2 r3; do
    [ "$n" != "$best" ] || continue
    psql_at "$n" -c "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=$(port_of "$best") user=postgres application_name=$n'" \
      -c "SELECT pg_reload_conf()" >/dev/null
  done
  # The old primary must not come back as a primary: a vault trying hosts in order would write
  # to its old timeline. This script never restarts it.
  log "promoted $best"
  echo "$best"
}

cmd_stop() {
  pg_require_bindir
  local n
  for n in "${nodes[@]}"; do
    if [ -f "$(data_of "$n")/postmaster.pid" ]; then
      as_pg "$bindir/pg_ctl" -D "$(data_of "$n")" stop -m immediate -w >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$dir"
}

case "${1:-}" in
  start) cmd_start ;;
  url) url "${2:-strongroom}" ;;
  env)
    echo "export STRONGROOM_TEST_PG='$(url strongroom)'"
    echo "export STRONGROOM_TEST_PG_KEYS='$(url strongroom_keys)'"
    echo "export STRONGROOM_TEST_PG_CLUSTER='$dir'"
    echo "export STRONGROOM_TEST_PG_CA='$dir/tls/ca.pem'"
    ;;
  kill) cmd_kill "${2:-}" ;;
  promote) cmd_promote ;;
  stop) cmd_stop ;;
  *) die "usage: $0 start|url [DB]|env|kill rN|promote|stop" ;;
esac
