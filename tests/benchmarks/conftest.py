import subprocess

import pytest


@pytest.fixture
def git(tmp_path):
    r"""``git(*args)`` in a new repository at ``tmp_path`` holding one
    commit of ``a.py``; returns the command's standard output."""
    def run(*args):
        return subprocess.run(['git', *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()
    run('init', '-q')
    (tmp_path / 'a.py').write_text('x = 1\n')
    run('add', 'a.py')
    run('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'a')
    return run
