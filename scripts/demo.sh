#!/usr/bin/env bash
# Runs the end-to-end demo: builds a model in code, prunes it post hoc, prints the report,
# saves, reloads and verifies it. Creates .venv on first use.
source "$(dirname "$0")/_env.sh" ""
exec "$VENV/bin/python" -m mil_sparsity.demo "$@"
