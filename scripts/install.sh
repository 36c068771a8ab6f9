#!/usr/bin/env bash
# Installs samsa_geo and everything a run needs on a fresh machine.
#   scripts/install.sh          -> library + examples (main job)
#   scripts/install.sh --test   -> library + examples + test/doc tools
# On a machine without an NVIDIA GPU the CPU build of torch is pinned
# (torch==2.13.0 installs from local disk here; an unpinned torch pulls the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="examples,graph"
[ "${1:-}" = "--test" ] && extras="test"

# Debian packages for Open3D's headless renderer (Vulkan software rendering).
# Best effort: without them visualisation falls back to PLY + matplotlib.
apt_pkgs="libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers"
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null) \
      || echo "install.sh: could not install$missing; Open3D rendering will fall back to matplotlib" >&2
  fi
else
  echo "install.sh: not root or no apt-get; skipping Open3D system libraries" >&2
fi

PY=${PYTHON:-python3}
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
if ! command -v nvidia-smi >/dev/null 2>&1; then
  pip_install "torch==2.13.0"
fi
pip_install -e ".[${extras}]"
"$PY" -c "import samsa_geo, torch; print('samsa_geo', samsa_geo.__version__, '| torch', torch.__version__)"
