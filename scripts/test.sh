#!/usr/bin/env bash
# Installs wam with its dev extras into .venv (and Debian's chromium, for the browser test of the HTML reports)
# and runs the whole test suite (simulation tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev chromium
export MUJOCO_GL="${MUJOCO_GL:-egl}"
.venv/bin/ruff check            # lint
.venv/bin/ruff format --check   # formatting (`ruff format` applies it)
exec .venv/bin/python -m pytest -q "$@"
