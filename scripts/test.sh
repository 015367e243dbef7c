#!/usr/bin/env bash
# Runs every check CI runs: mypy --strict on the package, then the test suite, on each
# supported coremltools series (the newest 8.x and 9.x), each in its own venv created on
# first use (.venv-ct8, .venv-ct9; torch 2.13.0 CPU comes from the local wheel cache).
#
#   bash scripts/test.sh                         # coremltools 8.3.0, then 9.0 (what CI runs)
#   CT_VERSION=9.0 bash scripts/test.sh -k nm    # one version; arguments go to pytest
#   CT_VERSION=8.3.0 VENV=.venv-ct8 bash scripts/test.sh
#
# The runs go one after the other and stop at the first failure, so the last line printed is
# always the summary of the run whose exit status the script returns.
set -euo pipefail
CT_VERSIONS=(8.3.0 9.0)  # the newest release of each supported series

if [ -z "${CT_VERSION:-}" ]; then
  last=$((${#CT_VERSIONS[@]} - 1))
  for version in "${CT_VERSIONS[@]:0:$last}"; do
    CT_VERSION="$version" VENV=".venv-ct${version%%.*}" bash "$0" "$@"
  done
  version="${CT_VERSIONS[$last]}"
  CT_VERSION="$version" VENV=".venv-ct${version%%.*}" exec bash "$0" "$@"
fi

export VENV="${VENV:-.venv-ct${CT_VERSION%%.*}}"
source "$(dirname "$0")/_env.sh" "dev,torch,plot"
echo "== coremltools $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("coremltools"))') in $VENV"
"$VENV/bin/python" -m mypy --strict mil_sparsity
exec "$VENV/bin/python" -m pytest -q "$@"
