import importlib.util
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


@pytest.mark.skipif(
    importlib.util.find_spec('sphinx') is None
    or importlib.util.find_spec('myst_parser') is None,
    reason='sphinx / myst-parser not installed')
def test_docs_build_without_warnings(tmp_path):
    """The API pages are generated from the docstrings; any warning (broken
    reST, missing reference) fails the build."""
    proc = subprocess.run(
        [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-E', '-q',
         '-b', 'html', osp.join(ROOT, 'docs'), str(tmp_path)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert osp.exists(tmp_path / 'api' / 'nn.html')
    html = (tmp_path / 'api' / 'nn.html').read_text()
    assert 'SamsaAttention' in html and 'SamsaConv' in html
