import json
import os
import os.path as osp
import runpy
import sys

import pytest
import torch

from samsa_geo.datasets import lrgb_task
from samsa_geo.metrics import average_precision_multitask, macro_f1
from samsa_geo.testing.lrgb_fixtures import write_lrgb_raw

EXAMPLE = osp.join(osp.dirname(__file__), '..', '..', 'examples', 'lrgb.py')


@pytest.mark.parametrize('name', ['peptides-func', 'pascalvoc-sp'])
def test_lrgb_example_end_to_end(name, tmp_path, monkeypatch):
    root, out = str(tmp_path / 'data'), str(tmp_path / 'runs')
    write_lrgb_raw(root, name, seed=1)
    monkeypatch.setattr(sys, 'argv', [
        'lrgb.py', '--dataset', name, '--root', root, '--out', out,
        '--epochs', '1', '--seeds', '1', '--device', 'cpu', '--no-progress'])
    runpy.run_path(EXAMPLE, run_name='__main__')

    info = lrgb_task(name)
    run_dir = osp.join(out, name, 'seed0')
    with open(osp.join(run_dir, 'metrics.json')) as f:
        metrics = json.load(f)
    for key in (f'val_{info.metric}', f'test_{info.metric}', 'best_epoch',
                'num_params'):
        assert key in metrics, key
    assert metrics['best_epoch'] == 1
    assert 100_000 < metrics['num_params'] < 500_000
    assert osp.isfile(osp.join(run_dir, 'best.pt'))

    saved = torch.load(osp.join(run_dir, 'test_predictions.pt'))
    pred, target = saved['pred'], saved['target']
    if name == 'peptides-func':
        assert pred.shape == target.shape == (3, 10)  # 3 fixture test graphs
        value = average_precision_multitask(pred, target)
    else:
        assert pred.dim() == 1 and pred.shape == target.shape
        value = macro_f1(pred, target, info.out_channels)
    assert value == pytest.approx(metrics[f'test_{info.metric}'], abs=1e-12)

    with open(osp.join(out, name, 'metrics.json')) as f:
        summary = json.load(f)
    assert summary[f'test_{info.metric}'] == pytest.approx(value)
    assert summary[f'test_{info.metric}_std'] == 0.0

    # The resolved configuration repeats the run.
    from samsa_geo.train import load_config
    config = load_config(osp.join(out, name, 'config.yaml'))
    assert config['dataset'] == name and config['epochs'] == 1
    assert config['seed'] == 0 and config['seeds'] == 1
    assert config['root'] == root and config['amp'] is None


def test_summary_write_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    # The summary and the predictions are written atomically: a write that
    # fails midway (a crash, a full disk) leaves the previous files whole.
    root, out = str(tmp_path / 'data'), str(tmp_path / 'runs')
    write_lrgb_raw(root, 'peptides-func', seed=1)
    argv = ['lrgb.py', '--dataset', 'peptides-func', '--root', root,
            '--out', out, '--epochs', '1', '--seeds', '1', '--device', 'cpu',
            '--no-progress']
    monkeypatch.setattr(sys, 'argv', argv)
    runpy.run_path(EXAMPLE, run_name='__main__')
    summary = osp.join(out, 'peptides-func', 'metrics.json')
    predictions = osp.join(out, 'peptides-func', 'seed0',
                           'test_predictions.pt')
    with open(summary) as f:
        before = f.read()
    with open(predictions, 'rb') as f:
        saved = f.read()

    dump, save = json.dump, torch.save

    def failing_dump(obj, f, *args, **kwargs):  # the summary's write
        if osp.dirname(f.name) != osp.dirname(summary):
            return dump(obj, f, *args, **kwargs)
        f.write('{"val_ap": ')
        raise OSError('No space left on device')

    def failing_save(obj, f, *args, **kwargs):  # the predictions' write
        name = f if isinstance(f, str) else f.name
        if 'test_predictions' not in name:
            return save(obj, f, *args, **kwargs)
        if isinstance(f, str):
            f = open(f, 'wb')
        f.write(b'PK\x03\x04')
        f.flush()
        raise OSError('No space left on device')

    monkeypatch.setattr(json, 'dump', failing_dump)
    monkeypatch.setattr(sys, 'argv', argv + ['--resume'])
    with pytest.raises(OSError, match='No space'):
        runpy.run_path(EXAMPLE, run_name='__main__')
    with open(summary) as f:
        assert f.read() == before
    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(OSError, match='No space'):
        runpy.run_path(EXAMPLE, run_name='__main__')
    with open(predictions, 'rb') as f:
        assert f.read() == saved
    assert sorted(os.listdir(osp.join(out, 'peptides-func'))) == sorted(
        ['.lock', 'config.yaml', 'metrics.json', 'seed0'])
