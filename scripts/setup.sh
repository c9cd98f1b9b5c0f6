#!/usr/bin/env bash
# Shared set-up for scripts/quickstart.sh and scripts/test.sh.
#   - Debian packages for headless MuJoCo rendering (EGL and OSMesa), when missing
#   - a virtual environment in .venv
#   - torch: the CPU wheel torch==2.13.0 only when no torch is importable, so a CUDA machine keeps its own
#   - this package, editable, with the extras given as the first argument (e.g. "sim,dev")
#   - further Debian packages named in the second argument, when missing (scripts/test.sh: "chromium", the
#     headless browser that tests the HTML reports)
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-sim}"
EXTRA_PKGS="${2:-}"

need_pkgs=()
for p in libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 $EXTRA_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing Debian packages: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null \
    || echo "[setup] WARNING: could not install ${need_pkgs[*]}; MuJoCo rendering may fail, and without chromium" \
            "the report pages are not tested in a browser (that test is skipped)"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip >/dev/null
if ! $VPY -c "import torch" >/dev/null 2>&1; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] no torch in .venv; a system torch exists, installing the same version"
    $VPY -m pip install -q "torch==$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
  else
    echo "[setup] installing torch==2.13.0 (CPU build)"
    $VPY -m pip install -q torch==2.13.0
  fi
fi
echo "[setup] installing wam[$EXTRAS]"
$VPY -m pip install -q -e ".[$EXTRAS]"
