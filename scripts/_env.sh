# Shared by scripts/demo.sh and scripts/test.sh: create .venv and install the project into it.
# Usage: source scripts/_env.sh "<pip extras>"   e.g. "" or "dev,torch"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
extras="${1:-}"
spec="."
[ -n "$extras" ] && spec=".[$extras]"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$spec"
export TQDM_DISABLE=1
