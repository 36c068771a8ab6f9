#!/usr/bin/env bash
# Installs samsa_geo and everything a run needs into the virtual environment
# .venv of the checkout (created on first use; the README's commands then run
# .venv/bin/python), so that it works where the system Python is externally
# managed (PEP 668).
#   scripts/install.sh          -> library + examples (main job)
#   scripts/install.sh --test   -> library + examples + test/doc tools
#   scripts/install.sh --help   -> usage; any other argument is an error
# Environment: PYTHON (the base interpreter, default python3), SAMSA_VENV
# (the environment's folder, default .venv), SAMSA_VENV_ISOLATED=1 (a plain
# environment that re-installs everything instead of seeing the base
# interpreter's packages; 0: it sees them, the default).
# An existing environment is reused as it is, unless PYTHON or
# SAMSA_VENV_ISOLATED ask for a different one (another Python, or the other
# isolation): then the script stops and says so instead of ignoring them.
# torch: an installed torch >= TORCH_MIN is kept, never replaced; otherwise
# torch==TORCH_VERSION is installed: its CPU build where no NVIDIA GPU is
# present (an unpinned torch pulls the multi-GB CUDA build) and the default
# (CUDA) build from the default index where one is.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bash scripts/install.sh [--test]
  (no option)  samsa_geo with the examples' packages, into .venv
  --test       samsa_geo with the test and documentation tools, into .venv
  -h, --help   this message
environment: PYTHON (base interpreter, default python3), SAMSA_VENV (folder,
default .venv), SAMSA_VENV_ISOLATED=1 (an environment without the base
interpreter's packages)
EOF
}

extras="examples,graph"
if [ $# -gt 1 ]; then
  echo "install.sh: expected at most one option, got $#: $*" >&2
  usage >&2
  exit 2
fi
case "${1-}" in
  "") [ $# = 0 ] || { echo "install.sh: unknown option ''" >&2; usage >&2; exit 2; } ;;
  --test) extras="test" ;;
  -h|--help) usage; exit 0 ;;
  *) echo "install.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
esac

TORCH_MIN=2.4
TORCH_VERSION=2.13.0
PYTHON_MIN=3.10  # setup.cfg's python_requires

# The base interpreter, resolved before the cd below so that a relative
# PYTHON means what it says where the script was called.
BASE=${PYTHON:-python3}
if ! base_path=$(command -v -- "$BASE"); then
  if [ -n "${PYTHON:-}" ]; then
    echo "install.sh: PYTHON=$PYTHON: no such interpreter (not found, or not executable)" >&2
  else
    echo "install.sh: no python3 on PATH; install Python >= $PYTHON_MIN or name one with PYTHON=/path/to/python3.X" >&2
  fi
  exit 1
fi
case "$base_path" in /*) ;; *) base_path="$PWD/$base_path" ;; esac
version_py='import sys; print("%d.%d" % sys.version_info[:2])'
if ! base_version=$("$base_path" -c "$version_py" 2>/dev/null); then
  echo "install.sh: $BASE ($base_path) does not run as a Python interpreter; it said:" >&2
  { "$base_path" -c "$version_py" 2>&1 || true; } | grep -v '^[[:space:]]*$' | head -n 5 | sed 's/^/  /' >&2 || true
  exit 1
fi
if ! "$base_path" -c "import sys; sys.exit(sys.version_info[:2] < tuple(map(int, '$PYTHON_MIN'.split('.'))))"; then
  echo "install.sh: samsa_geo needs Python >= $PYTHON_MIN; $BASE is Python $base_version" >&2
  exit 1
fi
BASE=$base_path

case "${SAMSA_VENV_ISOLATED:-}" in
  ""|0|1) ;;
  *) echo "install.sh: SAMSA_VENV_ISOLATED must be 0 or 1 (got '$SAMSA_VENV_ISOLATED')" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
VENV=${SAMSA_VENV:-.venv}

# Reusing an existing environment: it must be what PYTHON and
# SAMSA_VENV_ISOLATED ask for, where they are set.
if [ -x "$VENV/bin/python" ]; then
  # "X.Y PREFIX": the version, then the base installation the venv points to.
  info='import os, sys; print("%d.%d" % sys.version_info[:2], os.path.realpath(sys.base_prefix))'
  conflict=""
  if [ -n "${PYTHON:-}" ]; then
    want=$("$BASE" -c "$info")
    if ! have=$("$VENV/bin/python" -c "$info" 2>/dev/null); then
      conflict="its Python ($VENV/bin/python) does not run"
    elif [ "$have" != "$want" ]; then
      conflict="it was made with Python ${have%% *} (${have#* }), but PYTHON=$PYTHON is Python ${want%% *} (${want#* })"
    fi
  fi
  if [ -n "${SAMSA_VENV_ISOLATED:-}" ]; then
    wanted=true; [ "$SAMSA_VENV_ISOLATED" = 1 ] && wanted=false
    sees=$(sed -n 's/^[[:space:]]*include-system-site-packages[[:space:]]*=[[:space:]]*//p' \
             "$VENV/pyvenv.cfg" 2>/dev/null | tr -d '[:space:]' | tr '[:upper:]' '[:lower:]' || true)
    if [ -z "$sees" ]; then
      iso="it has no pyvenv.cfg saying whether it sees the system's packages"
    elif [ "$sees" != "$wanted" ]; then
      if [ "$wanted" = false ]; then
        iso="it sees the system's packages, but SAMSA_VENV_ISOLATED=1 asks for an isolated one"
      else
        iso="it is isolated, but SAMSA_VENV_ISOLATED=0 asks for one that sees the system's packages"
      fi
    else
      iso=""
    fi
    [ -n "$iso" ] && conflict="${conflict:+$conflict; }$iso"
  fi
  if [ -n "$conflict" ]; then
    {
      echo "install.sh: the existing virtual environment $VENV is not the one asked for: $conflict."
      echo "install.sh: remove it (rm -rf -- '$VENV') and run the script again to recreate it, pick another folder (SAMSA_VENV=...), or unset PYTHON / SAMSA_VENV_ISOLATED to keep using it."
    } >&2
    exit 1
  fi
fi

# Debian packages: Open3D's headless renderer (Vulkan software rendering; best
# effort, without them visualisation falls back to PLY + matplotlib) and the
# venv module of the base interpreter, which Debian ships separately
# (python3.X-venv). They are installed in separate apt-get calls, so that a
# failure of one is reported as what it is and does not stop the other.
o3d_pkgs="libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 mesa-vulkan-drivers"
venv_pkg=""
if ! "$BASE" -c "import ensurepip, venv" >/dev/null 2>&1; then
  venv_pkg="python${base_version}-venv"
fi
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  missing=""
  for p in $o3d_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ] || [ -n "$venv_pkg" ]; then
    apt-get update -qq >/dev/null \
      || echo "install.sh: 'apt-get update' failed; trying with the package lists as they are" >&2
  fi
  if [ -n "$missing" ]; then
    apt_install $missing \
      || echo "install.sh: apt-get could not install Open3D's rendering libraries ($missing ); Open3D rendering will fall back to matplotlib" >&2
  fi
  if [ -n "$venv_pkg" ]; then
    if ! apt-cache show "$venv_pkg" >/dev/null 2>&1; then
      echo "install.sh: $BASE (Python $base_version) lacks the venv/ensurepip modules and the package lists have no $venv_pkg for it; install that Python's venv support another way, or pick an interpreter with it (PYTHON=...)" >&2
    else
      apt_install "$venv_pkg" \
        || echo "install.sh: apt-get could not install $venv_pkg (the venv module of $BASE)" >&2
    fi
  fi
else
  echo "install.sh: not root or no apt-get; skipping the Debian packages of Open3D's renderer ($o3d_pkgs)" >&2
  if [ -n "$venv_pkg" ]; then
    echo "install.sh: $BASE lacks the venv/ensurepip modules; on Debian/Ubuntu install them as root: apt-get install $venv_pkg" >&2
  fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  # --system-site-packages: packages installed for the base interpreter (a
  # torch with its CUDA build, PyG, ...) are used as they are.
  site="--system-site-packages"
  [ "${SAMSA_VENV_ISOLATED:-0}" = 1 ] && site=""
  "$BASE" -m venv $site "$VENV" || {
    echo "install.sh: '$BASE -m venv' failed; on Debian/Ubuntu install ${venv_pkg:-python${base_version}-venv} (as root: apt-get install ${venv_pkg:-python${base_version}-venv})" >&2
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
  pip_install "torch==${TORCH_VERSION}+cpu" 2>/dev/null \
    || pip_install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu
else
  # The same version, from the default index: its Linux wheel is the CUDA
  # build.
  pip_install "torch==${TORCH_VERSION}"
fi
pip_install -e ".[${extras}]"
"$PY" -c "import samsa_geo, torch, sys; print('samsa_geo', samsa_geo.__version__, '| torch', torch.__version__, '|', sys.prefix)"
