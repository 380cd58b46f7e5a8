# Shared by the scripts that start PostgreSQL (scripts/pg-cluster.sh, benches/postgres.sh):
# finds (or installs) PostgreSQL's server binaries and runs them as a user PostgreSQL accepts.
# Source it; it defines:
#   pg_require_bindir                      sets $bindir (installs postgresql if missing)
#   pg_install [package...]                installs postgresql and the packages, sets $bindir
#   as_pg CMD...                           runs CMD as the postgres user when we are root
#   pg_own PATH...                         gives PATH to that user
# and $pg_user. The caller defines `die`.

pg_sudo=""
[ "$(id -u)" -eq 0 ] || pg_sudo="sudo"

# The newest /usr/lib/postgresql/*/bin holding the server, its control tool and the clients.
pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ] &&
      [ -x "$d/pg_basebackup" ] && [ -x "$d/psql" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

# Installs Debian's postgresql and the packages named, and sets $bindir.
pg_install() {
  echo "installing postgresql $*" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! $pg_sudo apt-get install -y -qq postgresql "$@" >/dev/null 2>&1; then
    $pg_sudo apt-get update -qq
    $pg_sudo apt-get install -y -qq postgresql "$@"
  fi
  bindir="$(pg_bindir)" || die "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin after install"
}

# Sets $bindir, installing postgresql if it is missing.
pg_require_bindir() {
  bindir="$(pg_bindir || true)"
  [ -n "$bindir" ] || pg_install
}

# PostgreSQL refuses to run as root: as root, run everything PostgreSQL as the postgres user.
if [ "$(id -u)" -eq 0 ]; then
  pg_user="postgres"
  as_pg() { runuser -u postgres -- "$@"; }
else
  pg_user="$(id -un)"
  as_pg() { "$@"; }
fi

pg_own() {
  [ "$pg_user" = "$(id -un)" ] || chown -R "$pg_user" "$@"
}
