#!/usr/bin/env bash
# Sets up .venv (Debian rendering packages, torch, wam[sim,report]) and runs the main job: `wam quickstart`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh sim,report
export MUJOCO_GL="${MUJOCO_GL:-egl}"
exec .venv/bin/wam quickstart "$@"
