#!/usr/bin/env bash
# Creates .venv-lerobot: LeRobot (the peers: Diffusion Policy, ACT) in its own Python 3.11 venv,
# apart from wam's .venv (LeRobot pins an older torch). Idempotent: does nothing when the pinned
# version is already installed.
#
#   bash benchmarks/peers/setup.sh            # about 10-15 min and ~9 GB the first time
#   LEROBOT_VENV=/elsewhere bash benchmarks/peers/setup.sh
set -euo pipefail

LEROBOT_VERSION="0.4.4"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${LEROBOT_VENV:-$ROOT/.venv-lerobot}"
PYTHON="${PYTHON:-python3.11}"

installed_version() {
    "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("lerobot"))' 2>/dev/null || true
}
has_adapter_deps() {
    "$VENV/bin/python" -c 'import msgpack, websockets' 2>/dev/null
}

if [[ -x "$VENV/bin/python" && "$(installed_version)" == "$LEROBOT_VERSION" ]] && has_adapter_deps; then
    echo "[setup] $VENV already has lerobot $LEROBOT_VERSION, msgpack and websockets: nothing to do"
    exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "[setup] creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi

start=$(date +%s)
echo "[setup] installing lerobot[metaworld]==$LEROBOT_VERSION, msgpack, websockets into $VENV"
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install "lerobot[metaworld]==$LEROBOT_VERSION" msgpack websockets
echo "[setup] done in $(( $(date +%s) - start )) s"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as m
for name in ("lerobot", "torch", "metaworld", "msgpack", "websockets"):
    try:
        print(f"[setup] {name} {m.version(name)}")
    except m.PackageNotFoundError:
        print(f"[setup] {name} MISSING")
PY
du -sh "$VENV" | sed 's/^/[setup] size /'
