# Shared by scripts/demo.sh and scripts/test.sh: create a venv and install the project into it.
# Usage: source scripts/_env.sh "<pip extras>"   e.g. "" or "dev,torch,plot"
# Environment (all optional):
#   VENV        the venv directory (default .venv), created on first use
#   PYTHON      the interpreter that creates it (default python3)
#   CT_VERSION  the coremltools version to install, e.g. 8.3.0 (default: the newest that the
#               project's range allows; an existing venv keeps what it has)
#   TORCH_SPEC  installed on its own before the project when the extras include torch
#               (default torch==2.13.0: the CPU build from this machine's wheel cache, so that
#               pip never resolves the extra's range to a CUDA build from the index)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
extras="${1:-}"
pip_install=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
case ",$extras," in
  *,torch,*) "${pip_install[@]}" "${TORCH_SPEC:-torch==2.13.0}" ;;
esac
spec="."
[ -n "$extras" ] && spec=".[$extras]"
pins=()
[ -n "${CT_VERSION:-}" ] && pins+=("coremltools==$CT_VERSION")
# the pin on the same command line as the project: pip resolves both together
"${pip_install[@]}" -e "$spec" "${pins[@]}"
export TQDM_DISABLE=1
