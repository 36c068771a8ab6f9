import csv
import math
import os.path as osp
import sys

import pytest
import torch

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import _modelnet40_pipeline as modelnet40  # noqa: E402
from _point_pipeline import PRESETS, point_trainer  # noqa: E402

from samsa_geo.train import make_loader  # noqa: E402


def train_losses(preset, tmp_path, epochs, num_points=32):
    """Per-epoch training losses of ``examples/modelnet40.py --preset`` at
    its default model, learning rate and warm-up, on a reduced sample (64
    of the 100 training clouds, ``num_points`` points)."""
    args = modelnet40.parse_args([
        '--preset', preset, '--num-points', str(num_points),
        '--epochs', str(epochs),
        '--out', str(tmp_path), '--device', 'cpu', '--no-progress'])
    torch.manual_seed(args.seed)
    train_ds, val_ds, _ = modelnet40.datasets(args)
    train_ds = train_ds[:64]
    model = modelnet40.build_model(10, args)
    task = modelnet40.Classification(10, normals=False)
    trainer = point_trainer(model, task, args, len(train_ds), 'val_oa')
    loader = make_loader(train_ds, args.batch_size, shuffle=True,
                         seed=args.seed, drop_last=True)
    trainer.fit(loader, make_loader(val_ds[:8], 8, shuffle=False))
    with open(osp.join(str(tmp_path), 'log.csv')) as f:
        return [float(row['train_loss']) for row in csv.DictReader(f)]


def assert_no_collapse(losses):
    # Chance on 10 classes is ln(10) = 2.30 (2.27 with label smoothing).
    # A collapse sends the loss back up to chance after it left it.
    best = losses[0]
    for epoch, loss in enumerate(losses[1:], start=2):
        assert loss < best + 0.25, (epoch, losses)
        best = min(best, loss)
    assert losses[-1] < math.log(10) - 0.3, losses


@pytest.mark.parametrize('preset', list(PRESETS))
def test_point_preset_trains_without_collapse(preset, tmp_path):
    # 10 epochs of 4 steps. The paper preset in GPSConv's post-norm order at
    # lr 2e-3 (its former default) fails here: its loss went back above
    # chance at epoch 5 (2.30, 2.25, 2.47, 2.21, 2.48, ...).
    assert_no_collapse(train_losses(preset, tmp_path, epochs=10))
