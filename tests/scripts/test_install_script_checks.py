"""scripts/install.sh's argument, interpreter, existing-environment and
Debian-package checks, run for real against stand-in commands (python3,
apt-get, apt-cache, dpkg, id) that record what they were asked to do."""
import os.path as osp
import stat
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VERSION = '%d.%d' % sys.version_info[:2]  # what the stand-in python reports
VENV_PKG = f'python{VERSION}-venv'
O3D_PKGS = ('libusb-1.0-0 libgl1 libegl1 libgomp1 libvulkan1 '
            'mesa-vulkan-drivers')

FAKE_PYTHON = r"""#!/bin/bash
# Records pip and venv calls; runs everything else with the real Python and
# a stand-in torch module. FAKE_NO_VENV=1: no venv/ensurepip modules until
# the stand-in apt-get has installed the python3.X-venv package.
no_venv() { [ -n "${FAKE_NO_VENV:-}" ] && [ ! -e "$VENV_INSTALLED" ]; }
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip ${@:3}" >> "$CALLS"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  echo "venv ${@:3}" >> "$CALLS"
  no_venv && { echo "No module named ensurepip" >&2; exit 1; }
  dir="${@: -1}"; mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python"
  sys=false; [ "$3" = "--system-site-packages" ] && sys=true
  echo "include-system-site-packages = $sys" > "$dir/pyvenv.cfg"
  exit 0
fi
if [ "$1" = "-c" ] && [[ "$2" == *samsa_geo* ]]; then exit 0; fi
if [ "$1" = "-c" ] && [[ "$2" == *ensurepip* ]] && no_venv; then exit 1; fi
PYTHONPATH="$FAKE_SITE" exec "$REAL_PYTHON" "$@"
"""

# Reports Python 3.99 (a different interpreter than the stand-in python3).
OTHER_PYTHON = """#!/bin/bash
FAKE_PY_VERSION=3.99 exec "$(dirname "$0")/python3" "$@"
"""

SITECUSTOMIZE = """import os, sys
if os.environ.get('FAKE_PY_VERSION'):
    sys.version_info = tuple(
        int(p) for p in os.environ['FAKE_PY_VERSION'].split('.')) + (
        0, 'final', 0)
"""

APT_GET = """#!/bin/bash
echo "apt-get $*" >> "$APT_CALLS"
if [ "$1" = install ]; then
  for p in "$@"; do
    case " $APT_BROKEN " in *" $p "*) echo "E: cannot install $p" >&2; exit 100;; esac
  done
  for p in "$@"; do
    [ "$p" = "$VENV_PKG" ] && touch "$VENV_INSTALLED"
  done
fi
exit 0
"""

APT_CACHE = """#!/bin/bash
echo "apt-cache $*" >> "$APT_CALLS"
[ "$1" = show ] || exit 0
case " $APT_KNOWN " in *" $2 "*) echo "Package: $2"; exit 0;; esac
echo "E: No packages found" >&2; exit 100
"""

DPKG = """#!/bin/bash
case " $DPKG_INSTALLED " in *" ${@: -1} "*) exit 0;; esac
exit 1
"""


def tool(folder, name, text):
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _env_of(tmp_path, **extra):
    env = {'PATH': f'{tmp_path / "bin"}:/usr/bin:/bin',
           'HOME': str(tmp_path), 'CALLS': str(tmp_path / 'calls.txt'),
           'APT_CALLS': str(tmp_path / 'apt.txt'),
           'REAL_PYTHON': sys.executable,
           'FAKE_SITE': str(tmp_path / 'site'),
           'SAMSA_VENV': str(tmp_path / 'venv'), 'VENV_PKG': VENV_PKG,
           'VENV_INSTALLED': str(tmp_path / 'venv_pkg_installed'),
           'APT_KNOWN': '', 'APT_BROKEN': '', 'DPKG_INSTALLED': ''}
    env.update(extra)
    return env


def run(tmp_path, args=(), root=False, no_venv=False, apt_known=(),
        apt_broken=(), dpkg_installed=(), venv=None, **env_extra):
    r"""Runs the script; :obj:`venv` makes an existing environment first:
    :obj:`True` / :obj:`False` for one that sees / does not see the system's
    packages, :obj:`'nocfg'` for one without pyvenv.cfg. Returns the process,
    the python calls and the apt calls."""
    bin_dir, site = tmp_path / 'bin', tmp_path / 'site'
    bin_dir.mkdir(parents=True)
    site.mkdir()
    (site / 'torch.py').write_text('__version__ = "2.13.0"\n')
    (site / 'sitecustomize.py').write_text(SITECUSTOMIZE)
    tool(bin_dir, 'python3', FAKE_PYTHON)
    tool(bin_dir, 'python3.99', OTHER_PYTHON)
    tool(bin_dir, 'id', f'#!/bin/sh\necho {0 if root else 1000}\n')
    tool(bin_dir, 'apt-get', APT_GET)
    tool(bin_dir, 'apt-cache', APT_CACHE)
    tool(bin_dir, 'dpkg', DPKG)
    venv_dir = tmp_path / 'venv'
    if venv is not None:
        (venv_dir / 'bin').mkdir(parents=True)
        tool(venv_dir / 'bin', 'python', FAKE_PYTHON)
        if venv != 'nocfg':
            (venv_dir / 'pyvenv.cfg').write_text(
                f'home = /usr/bin\ninclude-system-site-packages = '
                f'{str(venv).lower()}\nversion = {VERSION}.0\n')
    calls, apt_calls = tmp_path / 'calls.txt', tmp_path / 'apt.txt'
    calls.write_text('')
    apt_calls.write_text('')
    env = _env_of(tmp_path, APT_KNOWN=' '.join(apt_known),
                  APT_BROKEN=' '.join(apt_broken),
                  DPKG_INSTALLED=' '.join(dpkg_installed))
    if no_venv:
        env['FAKE_NO_VENV'] = '1'
    env.update(env_extra)
    proc = subprocess.run(['bash', osp.join(REPO, 'scripts', 'install.sh'),
                           *args], env=env, capture_output=True, text=True,
                          timeout=120)
    return (proc, calls.read_text().splitlines(),
            apt_calls.read_text().splitlines())


# Arguments ------------------------------------------------------------------

@pytest.mark.parametrize('args', [['--tests'], ['-t'], ['test'], [''],
                                  ['--test', '--test'], ['--test', 'x']])
def test_unknown_arguments_are_rejected(tmp_path, args):
    proc, calls, apt = run(tmp_path, args, root=True)
    assert proc.returncode == 2, proc.stderr
    assert 'usage: bash scripts/install.sh [--test]' in proc.stderr
    if len(args) == 1:
        assert f"unknown option '{args[0]}'" in proc.stderr
    assert calls == [] and apt == []  # nothing installed


@pytest.mark.parametrize('flag', ['-h', '--help'])
def test_help(tmp_path, flag):
    proc, calls, apt = run(tmp_path, [flag], root=True)
    assert proc.returncode == 0
    assert proc.stdout.startswith('usage: bash scripts/install.sh [--test]')
    assert calls == [] and apt == []


def test_documented_options_still_work(tmp_path):
    proc, calls, _ = run(tmp_path / 'a')
    assert proc.returncode == 0, proc.stderr
    assert calls[-1].endswith('-e .[examples,graph]')
    proc, calls, _ = run(tmp_path / 'b', ['--test'])
    assert proc.returncode == 0, proc.stderr
    assert calls[-1].endswith('-e .[test]')


# The base interpreter -------------------------------------------------------

@pytest.mark.parametrize('python', ['/nonexistent/python3.12', 'python3.42',
                                    '/etc'])  # a folder
def test_missing_python(tmp_path, python):
    proc, calls, apt = run(tmp_path, root=True, PYTHON=python)
    assert proc.returncode == 1
    assert (f'install.sh: PYTHON={python}: no such interpreter'
            in proc.stderr), proc.stderr
    assert calls == [] and apt == []


def test_python_that_does_not_run(tmp_path):
    (tmp_path / 'notpy').write_text('#!/bin/sh\nexit 3\n')
    (tmp_path / 'notpy').chmod(0o755)
    proc, calls, _ = run(tmp_path, PYTHON=str(tmp_path / 'notpy'))
    assert proc.returncode == 1
    assert 'does not run as a Python interpreter' in proc.stderr
    assert calls == []


def test_too_old_python(tmp_path):
    (tmp_path / 'py38').write_text(
        '#!/bin/bash\nFAKE_PY_VERSION=3.8 exec python3 "$@"\n')
    (tmp_path / 'py38').chmod(0o755)
    proc, calls, _ = run(tmp_path, PYTHON=str(tmp_path / 'py38'))
    assert proc.returncode == 1
    assert 'needs Python >= 3.10' in proc.stderr
    assert 'Python 3.8' in proc.stderr
    assert calls == []


# An existing environment ----------------------------------------------------

def test_existing_venv_of_another_python_is_not_used(tmp_path):
    proc, calls, _ = run(tmp_path, venv=True, PYTHON='python3.99')
    assert proc.returncode == 1
    assert f'made with Python {VERSION} ' in proc.stderr, proc.stderr
    assert 'PYTHON=python3.99 is Python 3.99' in proc.stderr
    assert 'rm -rf' in proc.stderr
    assert calls == []  # nothing installed into it
    assert (tmp_path / 'venv' / 'bin' / 'python').exists()  # nor removed


def test_existing_venv_of_the_same_python_is_reused(tmp_path):
    proc, calls, _ = run(tmp_path, venv=True, PYTHON='python3')
    assert proc.returncode == 0, proc.stderr
    assert not any(c.startswith('venv') for c in calls)
    assert calls[-1].endswith('-e .[examples,graph]')


@pytest.mark.parametrize('sees,isolated,ok', [
    (True, '1', False), (False, '0', False), ('nocfg', '1', False),
    (True, '0', True), (False, '1', True), (False, None, True),
    (True, None, True)])
def test_existing_venv_isolation(tmp_path, sees, isolated, ok):
    extra = {} if isolated is None else {'SAMSA_VENV_ISOLATED': isolated}
    proc, calls, _ = run(tmp_path, venv=sees, **extra)
    if ok:
        assert proc.returncode == 0, proc.stderr
        assert not any(c.startswith('venv') for c in calls)
        assert calls[-1].endswith('-e .[examples,graph]')
    else:
        assert proc.returncode == 1
        assert 'is not the one asked for' in proc.stderr
        assert 'SAMSA_VENV_ISOLATED' in proc.stderr
        assert calls == []


@pytest.mark.parametrize('isolated', ['0', '1'])
def test_new_venv_isolation(tmp_path, isolated):
    proc, calls, _ = run(tmp_path, SAMSA_VENV_ISOLATED=isolated)
    assert proc.returncode == 0, proc.stderr
    site = '--system-site-packages ' if isolated == '0' else ''
    assert calls[0] == f'venv {site}{tmp_path / "venv"}'
    cfg = (tmp_path / 'venv' / 'pyvenv.cfg').read_text()
    assert f'= {str(isolated == "0").lower()}' in cfg
    # A second run with the same request reuses it.
    proc = subprocess.run(
        ['bash', osp.join(REPO, 'scripts', 'install.sh')],
        env=_env_of(tmp_path, SAMSA_VENV_ISOLATED=isolated),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_bad_isolation_value(tmp_path):
    proc, calls, _ = run(tmp_path, SAMSA_VENV_ISOLATED='yes')
    assert proc.returncode == 2
    assert 'SAMSA_VENV_ISOLATED must be 0 or 1' in proc.stderr
    assert calls == []


# Debian packages ------------------------------------------------------------

def _installs(apt):
    return [c.split()[5:] for c in apt if c.startswith('apt-get install')]


def test_missing_venv_package_is_not_blamed_on_open3d(tmp_path):
    # python3.X-venv does not exist (python3.12-venv on bookworm): the Open3D
    # libraries are still installed, and the message names the venv package.
    proc, calls, apt = run(tmp_path, root=True, no_venv=True, apt_known=())
    assert _installs(apt) == [O3D_PKGS.split()]
    assert f'apt-cache show {VENV_PKG}' in apt
    assert f'no {VENV_PKG}' in proc.stderr
    assert 'Open3D' not in proc.stderr
    assert proc.returncode == 1  # no venv module: the environment fails
    assert "-m venv' failed" in proc.stderr


def test_venv_package_installed_on_its_own(tmp_path):
    proc, calls, apt = run(tmp_path, root=True, no_venv=True,
                           apt_known=(VENV_PKG,))
    assert proc.returncode == 0, proc.stderr
    assert apt[0] == 'apt-get update -qq'
    assert _installs(apt) == [O3D_PKGS.split(), [VENV_PKG]]
    assert proc.stderr == ''
    assert calls[0].startswith('venv --system-site-packages')


def test_open3d_failure_does_not_stop_the_venv_package(tmp_path):
    proc, calls, apt = run(tmp_path, root=True, no_venv=True,
                           apt_known=(VENV_PKG,), apt_broken=('libvulkan1',))
    assert proc.returncode == 0, proc.stderr
    assert _installs(apt) == [O3D_PKGS.split(), [VENV_PKG]]
    assert "could not install Open3D's rendering libraries" in proc.stderr
    assert VENV_PKG not in proc.stderr


def test_venv_package_failure_is_named(tmp_path):
    proc, calls, apt = run(tmp_path, root=True, no_venv=True,
                           apt_known=(VENV_PKG,), apt_broken=(VENV_PKG,),
                           dpkg_installed=O3D_PKGS.split())
    assert _installs(apt) == [[VENV_PKG]]
    assert f'apt-get could not install {VENV_PKG}' in proc.stderr
    assert 'Open3D' not in proc.stderr
    assert proc.returncode == 1


def test_nothing_missing_no_apt(tmp_path):
    proc, calls, apt = run(tmp_path, root=True,
                           dpkg_installed=O3D_PKGS.split())
    assert proc.returncode == 0, proc.stderr
    assert apt == [] and proc.stderr == ''


def test_not_root_names_the_venv_package(tmp_path):
    proc, calls, apt = run(tmp_path, root=False, no_venv=True)
    assert apt == []
    assert 'skipping the Debian packages' in proc.stderr
    assert f'apt-get install {VENV_PKG}' in proc.stderr
    assert proc.returncode == 1
