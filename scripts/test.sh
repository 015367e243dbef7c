#!/usr/bin/env bash
# Runs every check CI runs: mypy --strict on the package, then the test suite.
# Creates .venv on first use (torch 2.13.0 CPU comes from the local wheel cache).
source "$(dirname "$0")/_env.sh" "dev,torch,plot"
"$VENV/bin/python" -m mypy --strict mil_sparsity
exec "$VENV/bin/python" -m pytest -q "$@"
