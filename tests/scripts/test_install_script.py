"""scripts/install.sh's decisions, run for real against a stand-in Python
that records pip calls and reports a chosen torch version."""
import configparser
import os
import os.path as osp
import re
import stat
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

FAKE_PYTHON = """#!/bin/bash
# Records pip and venv calls; runs everything else with the real Python and
# a stand-in torch module of version $FAKE_TORCH (none when unset).
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then
  echo "pip ${@:3}" >> "$CALLS"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  echo "venv ${@:3}" >> "$CALLS"
  dir="${@: -1}"; mkdir -p "$dir/bin"; cp "$0" "$dir/bin/python"; exit 0
fi
if [ "$1" = "-c" ] && [[ "$2" == *samsa_geo* ]]; then exit 0; fi
PYTHONPATH="$FAKE_SITE" exec "$REAL_PYTHON" "$@"
"""


def tool(folder, name, text):
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def run(tmp_path, torch_version=None, gpu=False, venv_exists=False,
        args=()):
    bin_dir, site = tmp_path / 'bin', tmp_path / 'site'
    bin_dir.mkdir()
    site.mkdir()
    (site / 'torch.py').write_text(
        'import os\n'
        'if "FAKE_TORCH" not in os.environ:\n'
        '    raise ImportError("no torch")\n'
        '__version__ = os.environ["FAKE_TORCH"]\n')
    tool(bin_dir, 'python3', FAKE_PYTHON)
    tool(bin_dir, 'id', '#!/bin/sh\necho 1000\n')  # not root: no apt-get
    if gpu:
        tool(bin_dir, 'nvidia-smi', '#!/bin/sh\nexit 0\n')
    venv = tmp_path / 'venv'
    if venv_exists:
        (venv / 'bin').mkdir(parents=True)
        (venv / 'bin' / 'python').write_text(FAKE_PYTHON)
        (venv / 'bin' / 'python').chmod(0o755)
    calls = tmp_path / 'calls.txt'
    calls.write_text('')
    env = {'PATH': f'{bin_dir}:/usr/bin:/bin', 'HOME': str(tmp_path),
           'CALLS': str(calls), 'REAL_PYTHON': sys.executable,
           'FAKE_SITE': str(site), 'SAMSA_VENV': str(venv)}
    if torch_version is not None:
        env['FAKE_TORCH'] = torch_version
    proc = subprocess.run(['bash', osp.join(REPO, 'scripts', 'install.sh'),
                           *args], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return calls.read_text().splitlines()


@pytest.mark.parametrize('version', ['2.4.0', '2.13.0+cpu', '2.15.1+cu128'])
@pytest.mark.parametrize('gpu', [False, True])
def test_installed_torch_is_kept(tmp_path, version, gpu):
    calls = run(tmp_path, version, gpu=gpu)
    assert calls[0].startswith('venv --system-site-packages ')
    assert not any('torch' in c for c in calls if c.startswith('pip'))
    assert calls[-1].endswith("-e .[test]") or calls[-1].endswith(
        '-e .[examples,graph]')


def test_cpu_machine_pins_the_cpu_build(tmp_path):
    calls = run(tmp_path, None, gpu=False, args=['--test'])
    assert calls[1] == ('pip install -q --disable-pip-version-check '
                        'torch==2.13.0+cpu')
    assert calls[-1].endswith('-e .[test]')


def test_old_torch_is_upgraded(tmp_path):
    # On a GPU machine: the same pinned version as on CPU, from the default
    # index (the CUDA build), never an unpinned torch.
    calls = run(tmp_path, '2.1.0', gpu=True)
    assert calls[1] == ('pip install -q --disable-pip-version-check '
                        'torch==2.13.0')
    assert calls[-1].endswith('-e .[examples,graph]')


def test_gpu_machine_without_torch_pins_it(tmp_path):
    calls = run(tmp_path, None, gpu=True, args=['--test'])
    pips = [c for c in calls if c.startswith('pip')]
    assert pips[0] == 'pip install -q --disable-pip-version-check torch==2.13.0'
    assert not any('index-url' in c or '+cpu' in c for c in pips)
    assert pips[-1].endswith('-e .[test]')


def test_existing_venv_is_reused(tmp_path):
    calls = run(tmp_path, '2.13.0', venv_exists=True)
    assert not any(c.startswith('venv') for c in calls)
    assert len(calls) == 1 and calls[0].endswith('-e .[examples,graph]')


def test_readme_commands_and_ci():
    with open(osp.join(REPO, 'README.md')) as f:
        readme = f.read()
    commands = re.findall(r'^bash scripts/install\.sh.*$', readme, re.M)
    assert commands == [
        'bash scripts/install.sh && .venv/bin/python examples/modelnet40.py',
        'bash scripts/install.sh --test && .venv/bin/python -m pytest -q -n 2 '
        'tests']
    with open(osp.join(REPO, '.ci', 'run')) as f:
        assert commands[1] in f.read().splitlines()


def test_extras():
    """The 'compiled' extra holds what library code paths use; TensorBoard is
    an extra of its own."""
    cfg = configparser.ConfigParser()
    cfg.read(osp.join(REPO, 'setup.cfg'))
    extras = {key: [line.strip() for line in value.splitlines()
                    if line.strip() and not line.strip().startswith('#')]
              for key, value in cfg['options.extras_require'].items()}
    assert extras['compiled'] == ['torch-cluster']
    assert extras['tensorboard'] == ['tensorboard']
    # torch-cluster backs fps and knn, which the library calls outside ops.
    users = []
    for folder, _, files in os.walk(osp.join(REPO, 'samsa_geo')):
        if osp.basename(folder) == 'ops':
            continue
        for name in files:
            if name.endswith('.py'):
                with open(osp.join(folder, name)) as f:
                    if re.search(r'from samsa_geo\.ops import .*'
                                 r'\b(fps|knn_graph|knn)\b', f.read()):
                        users.append(name)
    assert users
