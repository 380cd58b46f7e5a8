#!/usr/bin/env bash
# strongroom vs PostgreSQL + pgcrypto, side by side.
#
# What it measures: the vault's three core workloads done the PostgreSQL way, at the same
# concurrency, and then (when a strongroom binary is there) the vault's own bench for the same
# workloads, in one run, printed as one table:
#
#   put         the writer stores one customer, 8 fields each encrypted (pgp_sym_encrypt,
#               AES-256, s2k-mode=1), plus one audit row
#   get-full    the admin reads one random existing customer, 8 fields decrypted, plus one
#               audit row
#   get-masked  support reads one random customer through a masking view (name plain,
#               email/phone/address masked, date_of_birth/ssn/card withheld), plus one audit row
#
# Every transaction writes (the audit row), and every acknowledged write is synced (fsync=on,
# synchronous_commit=on), as in the vault. Roles are enforced by row-level security (forced),
# column grants and a security_invoker view; each transaction runs SET ROLE first.
# The SQL lives in benches/postgres/: schema.sql (schema, roles, policies, view, preload) and
# one pgbench script per workload.
#
# The PostgreSQL side is a throwaway cluster in a fresh temp dir on a private port (listening
# on 127.0.0.1 and a unix socket in the temp dir), torn down on exit, also on failure. The
# server is pinned to CPU 0 and pgbench to the other CPUs, as the vault's bench pins the vault
# to CPU 0 and its load generator away from it. pgbench opens one connection per client
# (PostgreSQL runs one transaction per connection at a time); the vault multiplexes the same
# number of in-flight requests over a few HTTP/2 connections.
#
# Run (as root, or as a user with sudo for the one-time package install), from anywhere:
#
#   bash benches/postgres.sh
#   RECORDS=2000 DURATION=3 bash benches/postgres.sh     # a quick run
#
# Environment knobs:
#   CLIENTS=64      concurrent transactions (pgbench -c; the vault's --in-flight)
#   THREADS=4       pgbench threads (-j; the vault's --connections)
#   DURATION=10     seconds per workload
#   RECORDS=10000   customers preloaded before the runs (the read workloads pick among them)
#   PG_PORT=55432   the throwaway cluster's port
#   PIN=1           pin the server to CPU 0 and the load generators to the others (0: don't)
#   STRONGROOM=...  the strongroom binary (default /root/.cache/strongroom/target/release/strongroom,
#                   else target/release/strongroom in the repo); if missing, only PostgreSQL runs
#   PG_KEY=...      the symmetric key (default: 32 random bytes, hex)
#
# Installs postgresql and postgresql-contrib (Debian) if missing. Exits non-zero on failure.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
sqldir="$here/postgres"

CLIENTS="${CLIENTS:-64}"
THREADS="${THREADS:-4}"
DURATION="${DURATION:-10}"
RECORDS="${RECORDS:-10000}"
PG_PORT="${PG_PORT:-55432}"
PIN="${PIN:-1}"
WORKLOADS=(put get-full get-masked)

log() { echo "postgres.sh: $*" >&2; }
die() { echo "postgres.sh: error: $*" >&2; exit 1; }

for v in CLIENTS THREADS DURATION RECORDS PG_PORT; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[ "$THREADS" -le "$CLIENTS" ] || die "THREADS ($THREADS) must not exceed CLIENTS ($CLIENTS)"
for f in schema.sql "${WORKLOADS[@]/%/.sql}"; do
  [ -f "$sqldir/$f" ] || die "missing $sqldir/$f"
done
command -v python3 >/dev/null 2>&1 || die "python3 is required (to parse results)"

# --- 1. Install what is missing -------------------------------------------------------------
# shellcheck source=../scripts/pg-lib.sh
. "$repo/scripts/pg-lib.sh"
have_pgcrypto() {
  local bin="$1" share
  share="$("$bin/pg_config" --sharedir 2>/dev/null)" || share="/usr/share/postgresql/$(basename "$(dirname "$bin")")"
  [ -f "$share/extension/pgcrypto.control" ]
}
bindir="$(pg_bindir || true)"
if [ -z "$bindir" ] || [ ! -x "$bindir/pgbench" ] || ! have_pgcrypto "$bindir"; then
  pg_install postgresql-contrib
  have_pgcrypto "$bindir" || die "pgcrypto not found after installing postgresql-contrib"
fi
pgversion="$("$bindir/postgres" --version)"
[ "$(id -u)" -ne 0 ] || id postgres >/dev/null 2>&1 || die "no 'postgres' OS user (it comes with the postgresql package)"

# CPU pinning: the server on CPU 0, the load generators on the others.
ncpu="$(nproc 2>/dev/null || echo 1)"
pin_server=()
pin_client=()
pinned="no"
if [ "$PIN" != "0" ] && command -v taskset >/dev/null 2>&1 && [ "$ncpu" -ge 2 ]; then
  pin_server=(taskset -c 0)
  if [ "$ncpu" -eq 2 ]; then cpus=1; else cpus="1-$((ncpu - 1))"; fi
  pin_client=(taskset -c "$cpus")
  pinned="server on CPU 0, load on CPU $cpus"
fi

# --- 2. A throwaway cluster -----------------------------------------------------------------
tmp="$(mktemp -d "${TMPDIR:-/tmp}/strongroom-pg.XXXXXX")"
chmod 0755 "$tmp"
data="$tmp/data"
server_running=0

teardown() {
  if [ "$server_running" = 1 ] || [ -f "$data/postmaster.pid" ]; then
    as_pg "$bindir/pg_ctl" -D "$data" stop -m immediate -w >/dev/null 2>&1 || true
    server_running=0
  fi
}
cleanup() {
  local rc=$?
  teardown
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$tmp/scripts" "$tmp/logs"
cp "$sqldir"/*.sql "$tmp/scripts/"
pg_own "$tmp"

log "$pgversion, cluster in $tmp, port $PG_PORT; $ncpu CPUs, pinning: $pinned"
as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
  >"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }

cat >>"$data/postgresql.conf" <<EOF

# strongroom bench (benches/postgres.sh)
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$tmp'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
full_page_writes = on
# Fewer checkpoints during a short run (the WAL is still synced at every commit).
max_wal_size = 4GB
EOF

start_log="$tmp/server.log"
if ! as_pg "${pin_server[@]}" "$bindir/pg_ctl" -D "$data" -l "$start_log" -w -t 60 start >/dev/null; then
  tail -n 30 "$start_log" >&2 || true
  die "the PostgreSQL server did not start (port $PG_PORT in use? set PG_PORT)"
fi
server_running=1

psql_su() { as_pg "$bindir/psql" -X -q -v ON_ERROR_STOP=1 -h "$tmp" -p "$PG_PORT" -U postgres "$@"; }

# --- 3. Schema, roles, policies, masking view, preload ----------------------------------------
if [ -n "${PG_KEY:-}" ]; then
  key="$PG_KEY"
else
  key="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
fi
[[ "$key" != *"'"* ]] || die "PG_KEY must not contain a single quote"

psql_su -d postgres -c "CREATE DATABASE bench" || die "CREATE DATABASE failed"
log "schema and preload of $RECORDS customers (8 encrypted fields each)"
psql_su -d bench -v records="$RECORDS" -v key="$key" -f "$tmp/scripts/schema.sql" >/dev/null ||
  die "schema.sql failed"

# --- 4. Workloads -----------------------------------------------------------------------------
results="$tmp/results.tsv"
: >"$results"
for w in "${WORKLOADS[@]}"; do
  log "pgbench $w: $CLIENTS clients, $THREADS threads, ${DURATION}s"
  psql_su -d bench -c "CHECKPOINT" >/dev/null
  out="$tmp/pgbench-$w.out"
  if ! (cd "$tmp" && as_pg "${pin_client[@]}" "$bindir/pgbench" -n -M prepared \
    -h "$tmp" -p "$PG_PORT" -U bench \
    -c "$CLIENTS" -j "$THREADS" -T "$DURATION" \
    -D key="$key" -D records="$RECORDS" \
    --log --log-prefix="$tmp/logs/$w" \
    -f "$tmp/scripts/$w.sql" bench) >"$out" 2>&1; then
    tail -n 30 "$out" >&2
    die "pgbench $w failed"
  fi
  # --- 5. tps from pgbench, latency percentiles from its per-transaction log -----------------
  python3 - "$w" "$out" "$tmp/logs" >>"$results" <<'PY' || die "could not parse pgbench output for $w"
import glob, math, os, re, sys
w, out, logdir = sys.argv[1:4]
text = open(out).read()
tps = re.search(r"^tps = ([0-9.]+)", text, re.M)
done = re.search(r"number of transactions actually processed: (\d+)", text)
failed = re.search(r"number of failed transactions: (\d+)", text)
avg = re.search(r"latency average = ([0-9.]+) ms", text)
if not tps or not done or int(done.group(1)) == 0:
    sys.stderr.write(text)
    sys.exit("no transactions completed")
if failed and int(failed.group(1)) > 0:
    sys.stderr.write(text)
    sys.exit(f"{failed.group(1)} failed transactions")
lat = []
for path in glob.glob(os.path.join(logdir, w + ".*")):
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                lat.append(int(parts[2]))
lat.sort()
def pct(p):
    if not lat:
        return float("nan")
    return lat[min(len(lat) - 1, max(0, math.ceil(p * len(lat)) - 1))] / 1000.0
avg_ms = float(avg.group(1)) if avg else (sum(lat) / len(lat) / 1000.0 if lat else float("nan"))
print(f"{w}\t{float(tps.group(1)):.1f}\t{avg_ms:.3f}\t{pct(0.50):.3f}\t{pct(0.99):.3f}\t{pct(0.999):.3f}\t{done.group(1)}")
PY
  rm -f "$tmp/logs/$w".*
done

# Sanity: one audit row per transaction, and the masking view masks.
audit_rows="$(psql_su -d bench -At -c "SELECT count(*) FROM audit")"
sample="$(psql_su -d bench -At -F ' | ' -c "SELECT set_config('app.key', '$key', false) IS NULL; SET ROLE vault_support; SELECT name, email, phone, address FROM customers_support WHERE n = 1" | tail -n 1)"
log "audit rows written: $audit_rows; support sees n=1 as: $sample"

teardown # free the CPUs and the disk before the vault's run

# --- 6. The vault's own bench, same workloads and concurrency -------------------------------
sr="${STRONGROOM:-}"
if [ -z "$sr" ]; then
  if [ -x /root/.cache/strongroom/target/release/strongroom ]; then
    sr=/root/.cache/strongroom/target/release/strongroom
  else
    sr="$repo/target/release/strongroom"
  fi
fi
vault_json="$tmp/strongroom.json"
: >"$vault_json"
if [ -x "$sr" ]; then
  no_pin=()
  [ "$PIN" != "0" ] || no_pin=(--no-pin)
  log "strongroom bench ($sr): same workloads, --in-flight $CLIENTS --connections $THREADS"
  (cd "$repo" && "$sr" bench --workload "$(IFS=,; echo "${WORKLOADS[*]}")" \
    --in-flight "$CLIENTS" --connections "$THREADS" --duration "$DURATION" \
    --records "$RECORDS" --policies "$repo/policies" --json "${no_pin[@]}") >"$vault_json" ||
    die "strongroom bench failed"
else
  log "no strongroom binary at $sr (set STRONGROOM): PostgreSQL only"
fi

# --- 7. The table ---------------------------------------------------------------------------
python3 - "$results" "$vault_json" "$pgversion" "$CLIENTS" "$THREADS" "$DURATION" "$RECORDS" "$pinned" <<'PY'
import json, sys
results, vault_json, pgversion, clients, threads, duration, records, pinned = sys.argv[1:9]
pg = {}
order = []
for line in open(results):
    w, tps, avg, p50, p99, p999, n = line.rstrip("\n").split("\t")
    pg[w] = dict(tps=float(tps), avg=float(avg), p50=float(p50), p99=float(p99), n=int(n))
    order.append(w)
raw = open(vault_json).read().strip()
vault = {}
if raw:
    doc = json.loads(raw)
    for r in doc.get("workloads", []):
        vault[r["workload"]] = r

def table(headers, rows):
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)) + " |"
    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(line(r))

print()
print(f"PostgreSQL + pgcrypto{' vs strongroom' if vault else ''}: {clients} in flight, {threads} pgbench threads / vault connections, "
      f"{duration}s per workload, {records} records preloaded, pinning: {pinned}")
print(f"{pgversion}; fsync=on, synchronous_commit=on; AES-256 (s2k-mode=1), RLS + SET ROLE, one audit row per transaction")
print()
print("PostgreSQL:")
table(["workload", "PostgreSQL tx/s", "p50 ms", "avg ms", "p99 ms"],
      [[w, f"{pg[w]['tps']:.0f}", f"{pg[w]['p50']:.2f}", f"{pg[w]['avg']:.2f}", f"{pg[w]['p99']:.2f}"] for w in order])
if vault:
    print()
    print("strongroom vs PostgreSQL:")
    rows = []
    for w in order:
        v = vault.get(w)
        if v is None:
            rows.append([w, "-", f"{pg[w]['tps']:.0f}", "-", "-", f"{pg[w]['p50']:.2f}", "-", f"{pg[w]['p99']:.2f}"])
            continue
        rows.append([w, f"{v['per_second']:.0f}", f"{pg[w]['tps']:.0f}",
                     f"{v['per_second'] / pg[w]['tps']:.2f}x",
                     f"{v['p50_us'] / 1000:.2f}", f"{pg[w]['p50']:.2f}",
                     f"{v['p99_us'] / 1000:.2f}", f"{pg[w]['p99']:.2f}"])
    table(["workload", "strongroom req/s", "PostgreSQL tx/s", "ratio (sr/pg)",
           "strongroom p50 ms", "PostgreSQL p50 ms", "strongroom p99 ms", "PostgreSQL p99 ms"], rows)
    errs = {w: vault[w].get("errors", 0) for w in order if w in vault and vault[w].get("errors", 0)}
    if errs:
        print(f"note: strongroom errors: {errs}")
PY
