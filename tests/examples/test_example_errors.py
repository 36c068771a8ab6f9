r"""Clear errors from the examples' command lines."""
import os.path as osp
import runpy
import sys

import pytest

EXAMPLES = osp.abspath(osp.join(osp.dirname(__file__), '..', '..',
                                'examples'))


def run(monkeypatch, script, *args):
    monkeypatch.setattr(sys, 'argv', [script, *args])
    monkeypatch.syspath_prepend(EXAMPLES)
    runpy.run_path(osp.join(EXAMPLES, script), run_name='__main__')


@pytest.mark.parametrize('script,args', [
    ('lrgb.py', ['--dataset', 'peptides-func']),
    ('molecules.py', []),
])
def test_zero_seeds_is_a_usage_error(monkeypatch, capsys, script, args):
    with pytest.raises(SystemExit) as exc:
        run(monkeypatch, script, *args, '--seeds', '0')
    assert exc.value.code == 2
    assert 'argument --seeds: expected at least 1 seed (got 0)' in \
        capsys.readouterr().err


def test_visualize_sampling_missing_checkpoint(monkeypatch, capsys,
                                               tmp_path):
    missing = str(tmp_path / 'nothing' / 'best.pt')
    with pytest.raises(SystemExit) as exc:
        run(monkeypatch, 'visualize_sampling.py', '--checkpoint', missing)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and 'metrics.json' not in err
    assert f"argument --checkpoint: '{missing}' does not exist" in err


def test_visualize_sampling_checkpoint_outside_a_run(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(EXAMPLES)
    import visualize_sampling
    path = tmp_path / 'best.pt'
    path.write_bytes(b'')
    with pytest.raises(FileNotFoundError, match=r"Expected '.*config.yaml' "
                       r"next to the checkpoint"):
        visualize_sampling.load_model(str(path))
