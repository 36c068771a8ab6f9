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


@pytest.mark.parametrize('script,args', [
    ('modelnet40.py', []),
    ('shapenet_part.py', []),
    ('rotation_protocol.py', []),
    ('lrgb.py', ['--dataset', 'peptides-func']),
    ('molecules.py', []),
])
@pytest.mark.parametrize('flag,value', [('--batch-size', '0'),
                                        ('--batch-size', '-3'),
                                        ('--epochs', '0')])
def test_counts_below_one_are_usage_errors(monkeypatch, capsys, tmp_path,
                                           script, args, flag, value):
    # A batch size of 0 divided by zero in the schedule; a negative one was
    # reported as a negative 'warmup_steps'.
    with pytest.raises(SystemExit) as exc:
        run(monkeypatch, script, *args, '--out', str(tmp_path / 'run'),
            flag, value)
    assert exc.value.code == 2
    assert (f'argument {flag}: expected a positive int (got {value})'
            in capsys.readouterr().err)
    assert not (tmp_path / 'run').exists()


def test_counts_from_a_config_file_are_checked(monkeypatch, capsys,
                                               tmp_path):
    config = tmp_path / 'config.yaml'
    config.write_text('batch-size: 0\n')
    with pytest.raises(SystemExit) as exc:
        run(monkeypatch, 'modelnet40.py', '--config', str(config))
    assert exc.value.code == 2
    assert ('argument --batch-size: expected a positive int (got 0)'
            in capsys.readouterr().err)


@pytest.mark.parametrize('votes', [0, -2])
def test_votes_below_one_fail_before_training(monkeypatch, tmp_path, votes):
    # 0 votes gave a NaN test_loss (logits divided by 0), -2 a wrong one.
    monkeypatch.syspath_prepend(EXAMPLES)
    import _modelnet40_pipeline
    import modelnet40

    def reached(args):
        raise AssertionError('read the data before checking --votes')

    monkeypatch.setattr(_modelnet40_pipeline, 'datasets', reached)
    with pytest.raises(ValueError, match=rf"Expected '--votes' to be at "
                       rf"least 1 \(got {votes}\)"):
        modelnet40.main(['--votes', str(votes), '--out',
                         str(tmp_path / 'run')])
    assert not (tmp_path / 'run').exists()
