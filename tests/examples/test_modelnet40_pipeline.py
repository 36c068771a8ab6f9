import os.path as osp
import sys

import pytest
import torch
from torch_geometric.data import Data

from samsa_geo.datasets import holdout_indices, modelnet_princeton

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import _modelnet40_pipeline as pipeline  # noqa: E402

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'datasets'))
from test_modelnet_princeton import CLASSES, _write_modelnet10  # noqa: E402


def test_princeton_validation_is_the_stratified_holdout(tmp_path):
    """The Princeton format holds out validation per class with the
    library's holdout_indices, as the other formats do."""
    root = str(tmp_path)
    _write_modelnet10(root)
    args = pipeline.parse_args(['--root', root, '--format', 'princeton',
                                '--num-points', '16', '--val-ratio', '0.5'])
    train, val, test = pipeline.datasets(args)
    full = modelnet_princeton(root, 'train', num_points=16)
    assert len(train) + len(val) == len(full) == 2 * len(CLASSES)
    assert len(test) == len(CLASSES)
    # One shape of every class held out (2 per class, ratio 0.5).
    assert sorted(val.y.view(-1).tolist()) == list(range(len(CLASSES)))
    assert sorted(train.y.view(-1).tolist()) == list(range(len(CLASSES)))
    expected = holdout_indices(full.y.view(-1), 0.5)
    assert torch.equal(torch.as_tensor(list(val.indices())), expected)
    assert not set(val.indices()) & set(train.indices())

    args.val_ratio = 0.0
    with pytest.raises(ValueError, match="'--val-ratio' in \\(0, 1\\)"):
        pipeline.datasets(args)


class _Built(Exception):
    pass


@pytest.mark.parametrize('argv,scale', [
    ([], (0.8, 1.25)),                          # the small preset's
    (['--preset', 'paper'], (2. / 3., 3. / 2.)),
    (['--scale', '0.9', '1.1'], (0.9, 1.1)),
])
def test_votes_scale_within_the_training_range(tmp_path, monkeypatch, argv,
                                               scale):
    """Test-time votes scale the shapes within the range they were trained
    on (the small preset's votes drew factors up to 1.5 it never saw)."""
    tasks = []

    def build_trainer(model, task, args, num_train):
        tasks.append(task)
        raise _Built

    monkeypatch.setattr(pipeline, 'build_trainer', build_trainer)
    with pytest.raises(_Built):
        pipeline.run(pipeline.parse_args(
            ['--num-points', '16', '--votes', '3', '--out',
             str(tmp_path / 'run'), *argv]))
    task = tasks[0]
    assert (task.scale.low, task.scale.high) == pytest.approx(scale)
    # Every voted copy of a cloud of ones holds factors within the range.
    seen = []
    task.logits = lambda model, d: seen.append(d.pos) or torch.zeros(1, 10)
    batch = Data(pos=torch.ones(4, 3), y=torch.zeros(1, dtype=torch.long))
    task.votes = 50
    task.eval_step(None, batch)
    factors = torch.cat(seen[1:])  # [49 * 4, 3]
    assert len(seen) == 50
    assert factors.min() >= scale[0] - 1e-6
    assert factors.max() <= scale[1] + 1e-6
    assert factors.max() - factors.min() > 0.5 * (scale[1] - scale[0])


@pytest.mark.parametrize('preset', ['small', 'paper'])
def test_warmup_counts_the_steps_of_every_rank(tmp_path, monkeypatch,
                                               preset):
    """Under torchrun each rank takes its shard of the clouds per epoch:
    the warm-up is the preset's share of those steps (it counted the
    steps of one process)."""
    import samsa_geo.train.loader as loader
    args = pipeline.parse_args(['--preset', preset, '--epochs', '10',
                                '--batch-size', '32', '--out',
                                str(tmp_path / 'run')])
    model = torch.nn.Linear(3, 10)
    task = pipeline.Classification(10, False)

    def warmup(num_train):
        return pipeline.build_trainer(model, task, args,
                                      num_train).warmup_steps

    # 1,000 clouds: 31 steps per epoch in one process, 15 on each of two
    # ranks; 5,000: 156 and 78. The paper preset warms up 50 at least.
    one = warmup(1000), warmup(5000)
    monkeypatch.setattr(loader, 'get_world_size', lambda: 2)
    two = warmup(1000), warmup(5000)
    if preset == 'small':
        assert one == (31, 156) and two == (15, 78)
    else:
        assert one == (50, 156) and two == (50, 78)
