#!/usr/bin/env bash
# The Python gRPC client environment the TLS interop test runs (grpcio, the library other
# languages' clients are built on): a virtualenv outside the clone, created once, with pinned
# versions. Prints the path of its python on stdout.
#
#   scripts/python-env.sh            # create it if missing, print its python
#   STRONGROOM_PYENV=DIR ...         # somewhere else than ~/.cache/strongroom/pyenv
set -euo pipefail

venv="${STRONGROOM_PYENV:-$HOME/.cache/strongroom/pyenv}"
want="grpcio==1.76.0 grpcio-tools==1.76.0"
stamp="$venv/.strongroom-requirements"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "python-env: installing $want into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  # shellcheck disable=SC2086 # the list is ours, split on purpose
  "$venv/bin/pip" install --quiet --disable-pip-version-check $want >&2
  echo "$want" >"$stamp"
fi
echo "$venv/bin/python"
