import csv
import os.path as osp
import shutil
import sys

import pytest
import torch

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import lrgb  # noqa: E402

from samsa_geo.datasets import sample_root  # noqa: E402
from samsa_geo.metrics import average_precision_multitask  # noqa: E402

sys.path.insert(0, osp.dirname(__file__))
from _collapse import assert_no_collapse  # noqa: E402

METRIC = 'val_average_precision_multitask'


@pytest.fixture(scope='module')
def sample(tmp_path_factory):
    r"""A copy of the bundled Peptides-func sample (the runs write their
    processed cache into it), and the validation AP of a model that
    learned nothing: one score for every molecule, whose AP is each task's
    positive rate."""
    root = tmp_path_factory.mktemp('lrgb')
    shutil.copytree(osp.join(sample_root('lrgb'), 'peptides-func', 'raw'),
                    root / 'peptides-func' / 'raw')
    y = torch.cat([g[3] for g in torch.load(
        str(root / 'peptides-func' / 'raw' / 'val.pt'))])  # [32, 10]
    return str(root), average_precision_multitask(torch.zeros_like(y), y)


def val_ap_curve(root, tmp_path, seed, flags=()):
    """Validation AP per epoch of ``examples/lrgb.py`` at its defaults
    (Peptides-func preset, learning rate, warm-up, batch size) with
    ``flags``, one seed."""
    out = str(tmp_path / 'runs')
    lrgb.main(['--root', root, '--out', out, '--seed', str(seed),
               '--seeds', '1', '--device', 'cpu', '--no-progress', *flags])
    with open(osp.join(out, 'peptides-func', f'seed{seed}', 'log.csv')) as f:
        return [float(row[METRIC]) for row in csv.DictReader(f)]


def assert_stable(curve, chance):
    # The rule of tests/examples/_collapse.py on 1 - AP (lower is better):
    # no epoch 0.2 below the best AP before it, the last epoch at least
    # 0.3 above chance.
    assert_no_collapse([1 - v for v in curve], 1 - chance, rise=0.2,
                       margin=0.3)


def test_default_run_leaves_chance_without_falling_back(sample, tmp_path):
    # 40 epochs of 2 steps (the 200-epoch default takes about 50 s on one
    # thread): warm-up of 4 epochs, then the cosine from the peak.
    root, chance = sample
    assert 0.3 < chance < 0.4
    curve = val_ap_curve(root, tmp_path, 0, ['--epochs', '40'])
    assert len(curve) == 40
    assert_stable(curve, chance)
    assert max(curve) - curve[-1] <= 0.05 and curve[-1] > 0.7, curve


@pytest.mark.slow
@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_default_schedule_is_stable(sample, tmp_path, tokens, seed):
    # The criterion of docs/training.md at the full defaults (200 epochs):
    # the last epoch within 0.05 of the best, no fall back to chance.
    root, chance = sample
    curve = val_ap_curve(root, tmp_path, seed, ['--tokens', tokens])
    assert len(curve) == 200
    assert max(curve) - curve[-1] <= 0.05, curve
    assert_stable(curve, chance)


def test_data_root_defaults_to_the_sample_for_peptides_func(tmp_path):
    args = lrgb.parse_args([])
    assert args.dataset == 'peptides-func' and args.root is None
    assert lrgb.data_root(args) == sample_root('lrgb')
    # The other datasets have no sample: their real folder.
    args = lrgb.parse_args(['--dataset', 'pascalvoc-sp'])
    assert lrgb.data_root(args) == 'data/LRGB'
    args = lrgb.parse_args(['--root', str(tmp_path)])
    assert lrgb.data_root(args) == str(tmp_path)
