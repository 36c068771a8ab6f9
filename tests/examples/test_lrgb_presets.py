import csv
import os.path as osp
import shutil
import sys

import pytest
import torch

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import lrgb  # noqa: E402

from samsa_geo.datasets import (LRGBDataset, lrgb_task,  # noqa: E402
                                sample_root)
from samsa_geo.metrics import (average_precision_multitask,  # noqa: E402
                               macro_f1)

sys.path.insert(0, osp.dirname(__file__))
from _collapse import assert_no_collapse  # noqa: E402

NAMES = ['peptides-func', 'peptides-struct', 'pascalvoc-sp', 'coco-sp',
         'pcqm-contact']


def chance_mrr(dataset):
    """Filtered MRR of scores drawn at random: a positive pair ``(s, t)``
    ranks uniformly among its ``m + 1`` candidates (``t`` and the ``m``
    nodes that are no positive partner of ``s``), so it scores
    ``H(m + 1) / (m + 1)`` on average; mean over pairs, then graphs."""
    per_graph = []
    for data in dataset:
        (src, dst) = data.edge_label_index[:, data.edge_label == 1]
        scores = []
        for s in src.tolist():
            m = data.num_nodes - int((src == s).sum())
            scores.append(sum(1 / k for k in range(1, m + 2)) / (m + 1))
        per_graph.append(sum(scores) / len(scores))
    return sum(per_graph) / len(per_graph)


def chance_level(name, splits):
    """The validation score of a model that learned nothing: one score for
    every graph (AP: each task's positive rate), the training median (MAE),
    the background class everywhere (macro F1), random scores (MRR)."""
    val, train = splits['val'], splits['train']
    if name == 'peptides-func':
        y = torch.cat([d.y for d in val])
        return average_precision_multitask(torch.zeros_like(y), y)
    if name == 'peptides-struct':
        y = torch.cat([d.y for d in val])
        median = torch.cat([d.y for d in train]).median(0).values
        return float((y - median).abs().mean())
    if name in ('pascalvoc-sp', 'coco-sp'):
        y = torch.cat([d.y for d in val])
        return macro_f1(torch.zeros_like(y), y, lrgb_task(name).out_channels)
    return chance_mrr(val)


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
    r"""``sample(name)``: a copy of the bundled sample of ``name`` (the
    runs write their processed cache into it) and its chance level."""
    root, cache = tmp_path_factory.mktemp('lrgb'), {}

    def get(name):
        if name not in cache:
            # Two copies: the runs' cache holds positional encodings.
            for folder in ('runs', 'plain'):
                shutil.copytree(osp.join(sample_root('lrgb'), name, 'raw'),
                                root / folder / name / 'raw')
            splits = {split: LRGBDataset(str(root / 'plain'), name,
                                         split=split)
                      for split in ('train', 'val')}
            cache[name] = str(root / 'runs'), chance_level(name, splits)
        return cache[name]
    return get


def val_curve(name, root, tmp_path, seed, flags=()):
    """Validation score per epoch of ``examples/lrgb.py --dataset name`` at
    its defaults (preset, learning rate, warm-up, batch size) with
    ``flags``, one seed."""
    out = str(tmp_path / 'runs')
    lrgb.main(['--dataset', name, '--root', root, '--out', out, '--seed',
               str(seed), '--seeds', '1', '--device', 'cpu', '--no-progress',
               *flags])
    key = f'val_{lrgb_task(name).metric}'
    with open(osp.join(out, name, f'seed{seed}', 'log.csv')) as f:
        return [float(row[key]) for row in csv.DictReader(f)]


def error(name, values):
    # Lower is better: 1 - score, or the MAE itself.
    higher = lrgb_task(name).higher_is_better
    return [1 - v if higher else v for v in values]


def assert_stable(name, curve, chance, rise, margin):
    # The rule of tests/examples/_collapse.py on the error: no epoch `rise`
    # worse than the best epoch before it, the last `margin` better than
    # chance.
    assert_no_collapse(error(name, curve), error(name, [chance])[0],
                       rise=rise, margin=margin)


def assert_last_near_best(name, curve, tolerance=0.05):
    errors = error(name, curve)
    assert errors[-1] - min(errors) <= tolerance, curve


def test_chance_levels(sample):
    # The reference points of the collapse checks, on the validation splits.
    expected = {'peptides-func': 0.3469, 'peptides-struct': 0.8678,
                'pascalvoc-sp': 0.0745, 'coco-sp': 0.0603,
                'pcqm-contact': 0.1194}
    for name, value in expected.items():
        assert sample(name)[1] == pytest.approx(value, abs=1e-4), name


def test_chance_mrr_of_one_graph():
    # 4 nodes, contacts 0-2 and 0-3 in both directions: rows 0 rank among
    # m + 1 = 3 candidates, rows 2 and 3 among 4.
    from torch_geometric.data import Data
    data = Data(num_nodes=4, edge_label_index=torch.tensor(
        [[0, 2, 0, 3, 1], [2, 0, 3, 0, 2]]),
        edge_label=torch.tensor([1, 1, 1, 1, 0]))
    three, four = (1 + 1 / 2 + 1 / 3) / 3, (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4
    assert chance_mrr([data]) == pytest.approx((2 * three + 2 * four) / 4)


def test_default_run_leaves_chance_without_falling_back(sample, tmp_path):
    # 40 epochs of 2 steps (the 200-epoch default takes about 50 s on one
    # thread): warm-up of 4 epochs, then the cosine from the peak.
    root, chance = sample('peptides-func')
    curve = val_curve('peptides-func', root, tmp_path, 0, ['--epochs', '40'])
    assert len(curve) == 40
    assert_stable('peptides-func', curve, chance, rise=0.2, margin=0.3)
    assert max(curve) - curve[-1] <= 0.05 and curve[-1] > 0.7, curve


@pytest.mark.slow
@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_default_schedule_is_stable(sample, tmp_path, tokens, seed):
    # The criterion of docs/training.md at the full defaults (200 epochs):
    # the last epoch within 0.05 of the best, no fall back to chance.
    root, chance = sample('peptides-func')
    curve = val_curve('peptides-func', root, tmp_path, seed,
                      ['--tokens', tokens])
    assert len(curve) == 200
    assert_last_near_best('peptides-func', curve)
    assert_stable('peptides-func', curve, chance, rise=0.2, margin=0.3)


def test_data_root_defaults_to_the_sample(tmp_path):
    for name in NAMES:
        args = lrgb.parse_args(['--dataset', name])
        assert args.root is None
        assert lrgb.data_root(args) == sample_root('lrgb')
    assert lrgb.parse_args([]).dataset == 'peptides-func'
    args = lrgb.parse_args(['--dataset', 'coco-sp', '--root', str(tmp_path)])
    assert lrgb.data_root(args) == str(tmp_path)


# Fast checks of the other presets: the first 40 epochs of the default
# schedule shape (warm-up of 4 epochs, cosine to zero) on seed 0, one
# optimiser step per epoch (40 training graphs). `rise` and `margin` are in
# units of the error (1 - score, or the MAE).
FAST = {'peptides-struct': dict(rise=0.15, margin=0.3),
        'pascalvoc-sp': dict(rise=0.2, margin=0.3),
        'coco-sp': dict(rise=0.2, margin=0.2),
        'pcqm-contact': dict(rise=0.1, margin=0.06)}


@pytest.mark.parametrize('name', list(FAST))
def test_preset_leaves_chance_without_falling_back(sample, tmp_path, name):
    root, chance = sample(name)
    curve = val_curve(name, root, tmp_path, 0, ['--epochs', '40'])
    assert len(curve) == 40
    assert_stable(name, curve, chance, **FAST[name])


@pytest.mark.slow
@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('name', list(FAST))
def test_preset_default_schedule_is_stable(sample, tmp_path, name, seed):
    # The criterion of docs/training.md at the full defaults (200 epochs).
    # Peptides-struct may rise by up to 0.3 MAE (seed 2: 0.54 -> 0.73 at
    # epoch 21; at batch-norm momentum 0.1 the rises were 0.62-1.08).
    root, chance = sample(name)
    curve = val_curve(name, root, tmp_path, seed)
    assert len(curve) == 200
    assert_last_near_best(name, curve)
    rise = 0.3 if name == 'peptides-struct' else FAST[name]['rise']
    assert_stable(name, curve, chance, rise, FAST[name]['margin'])
