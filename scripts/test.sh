#!/usr/bin/env bash
# Runs every check CI runs: mypy --strict on the package, then the test suite, on each
# supported coremltools series (the newest 8.x and 9.x), each in its own venv created on
# first use (.venv-ct<version>; torch 2.13.0 CPU comes from the local wheel cache).
#
#   bash scripts/test.sh                         # coremltools 8.3.0 and 9.0 (what CI runs)
#   CT_VERSION=9.0 bash scripts/test.sh -k n_m   # one version, output live; arguments go to pytest
#   CT_VERSION=8.1 VENV=.venv-old bash scripts/test.sh
#   CT_VERSIONS="8.1 9.0" bash scripts/test.sh   # another set of versions
#
# Both versions: the venvs are set up one after the other, then the two checks run at the
# same time (one per core), each into a log; the logs are printed when both are done, passing
# runs first, so the last line printed is the pytest summary of the run whose exit status the
# script returns (the failing one, if any).
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a CT_VERSIONS <<< "${CT_VERSIONS:-8.3.0 9.0}"  # default: the newest 8.x and 9.x

check() {  # mypy + pytest in $VENV, which _env.sh has set up
  echo "== coremltools $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("coremltools"))') in $VENV"
  "$VENV/bin/python" -m mypy --strict --cache-dir "$VENV/.mypy_cache" mil_sparsity
  MIL_SPARSITY_REQUIRE_EXTRAS=1 "$VENV/bin/python" -m pytest -q "$@"
}

if [ -n "${CT_VERSION:-}" ]; then
  export VENV="${VENV:-.venv-ct$CT_VERSION}"
  source scripts/_env.sh "dev,torch,plot,examples"
  check "$@"
  exit
fi

for version in "${CT_VERSIONS[@]}"; do  # one pip at a time: both write the package's egg-info
  (export CT_VERSION="$version" VENV=".venv-ct$version"; source scripts/_env.sh "dev,torch,plot,examples")
done
logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
pids=()
for version in "${CT_VERSIONS[@]}"; do
  # one BLAS thread per run: the runs already take a core each, and BLAS threads that outnumber
  # the cores spin against each other (numpy's linear algebra then runs several times slower)
  (export CT_VERSION="$version" VENV=".venv-ct$version" TQDM_DISABLE=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
   check "$@") > "$logs/$version" 2>&1 &
  pids+=("$!")
done
passed=() failed=() status=0
for i in "${!CT_VERSIONS[@]}"; do
  if wait "${pids[$i]}"; then passed+=("${CT_VERSIONS[$i]}"); else status=$?; failed+=("${CT_VERSIONS[$i]}"); fi
done
for version in "${passed[@]}" "${failed[@]}"; do
  cat "$logs/$version"
done
exit "$status"
