#!/usr/bin/env bash
# Installs samsa_geo and everything a run needs into the virtual environment
# .venv of the checkout (created on first use; the README's commands then run
# .venv/bin/python), so that it works where the system Python is externally
# managed (PEP 668).
#   scripts/install.sh          -> library + examples (main job)
#   scripts/install.sh --test   -> library + examples + test/doc tools
# Environment: PYTHON (the base interpreter, default python3), SAMSA_VENV
# (the environment's folder, default .venv), SAMSA_VENV_ISOLATED=1 (a plain
# environment that re-installs everything instead of seeing the base
# interpreter's packages).
# torch: an installed torch >= TORCH_MIN is kept, never replaced; otherwise the
# CPU build torch==TORCH_CPU is pinned where no NVIDIA GPU is present (an
# unpinned torch pulls the multi-GB CUDA build) and the default build is
# installed where one is.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="examples,graph"
[ "${1:-}" = "--test" ] && extras="test"
TORCH_MIN=2.4
TORCH_CPU=2.13.0
BASE=${PYTHON:-python3}
VENV=${SAMSA_VENV:-.venv}

# Debian packages: Open3D's headless renderer (Vulkan software rendering; best
# effort, without them visualisation falls back to PLY + matplotlib) and the
# venv module, which Debian ships separately.
apt_pkgs="libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers"
if ! "$BASE" -c "import ensurepip, venv" >/dev/null 2>&1; then
  apt_pkgs="$apt_pkgs python3-venv $("$BASE" -c 'import sys; print("python%d.%d-venv" % sys.version_info[:2])')"
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null) \
      || echo "install.sh: could not install$missing; Open3D rendering will fall back to matplotlib" >&2
  fi
else
  echo "install.sh: not root or no apt-get; skipping the Debian packages ($apt_pkgs)" >&2
fi

if [ ! -x "$VENV/bin/python" ]; then
  # --system-site-packages: packages installed for the base interpreter (a
  # torch with its CUDA build, PyG, ...) are used as they are.
  site="--system-site-packages"
  [ "${SAMSA_VENV_ISOLATED:-0}" = 1 ] && site=""
  "$BASE" -m venv $site "$VENV" || {
    echo "install.sh: '$BASE -m venv' failed; on Debian/Ubuntu install python3-venv (as root: apt-get install python3-venv)" >&2
    exit 1
  }
  echo "install.sh: created the virtual environment $VENV ($("$VENV/bin/python" --version))"
fi
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

torch_ok() {
  "$PY" - "$TORCH_MIN" <<'EOF' 2>/dev/null
import sys
import torch
have = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2])
need = tuple(int(p) for p in sys.argv[1].split('.')[:2])
sys.exit(0 if have >= need else 1)
EOF
}
if torch_ok; then
  :  # kept as installed
elif ! command -v nvidia-smi >/dev/null 2>&1; then
  # The CPU wheel from a local wheel folder or index when one is configured,
  # else from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build).
  pip_install "torch==${TORCH_CPU}+cpu" 2>/dev/null \
    || pip_install "torch==${TORCH_CPU}" --index-url https://download.pytorch.org/whl/cpu
else
  pip_install "torch>=${TORCH_MIN}"
fi
pip_install -e ".[${extras}]"
"$PY" -c "import samsa_geo, torch, sys; print('samsa_geo', samsa_geo.__version__, '| torch', torch.__version__, '|', sys.prefix)"
