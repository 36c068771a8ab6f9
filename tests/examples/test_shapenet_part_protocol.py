import glob
import json
import os.path as osp
import shutil
import sys

import numpy as np
import pytest
import torch
import torch_geometric.transforms as T
from torch_geometric.data import Batch

from samsa_geo.datasets import ShapeNetPart

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import shapenet_part  # noqa: E402

from samsa_geo.train import make_loader  # noqa: E402

SAMPLE = osp.join(osp.dirname(__file__), '..', '..', 'datasets',
                  'shapenet_part_sample', ShapeNetPart.folder)


@pytest.fixture(scope='module')
def ragged_root(tmp_path_factory):
    r"""The bundled sample with shapes of 150 to 3,000 points (the real
    archive's are ragged, about 2,600 on average), moved off the origin and
    scaled up so that the normalisation matters."""
    root = str(tmp_path_factory.mktemp('shapenet_ragged'))
    folder = osp.join(root, ShapeNetPart.folder)
    shutil.copytree(SAMPLE, folder)
    rng = np.random.default_rng(0)
    for i, path in enumerate(sorted(glob.glob(osp.join(folder, '*',
                                                       '*.txt')))):
        table = np.loadtxt(path, dtype=np.float64)  # [512, 7]
        n = [150, 700, 1300, 3000][i % 4]
        rows = table[np.arange(n) % len(table)].copy()
        rows[len(table):, :3] += rng.normal(0, 0.01, (n - len(table), 3)) \
            if n > len(table) else 0.0
        rows[:, :3] = rows[:, :3] * (3.0 + i % 5) + np.array([2., -1., .5])
        np.savetxt(path, rows, fmt='%.6f')
    return root


def _args(root, tmp_path, *extra):
    return shapenet_part.parse_args(['--root', root, '--out', str(tmp_path),
                                     '--device', 'cpu', '--no-progress',
                                     *extra])


def test_eval_splits_keep_every_point(ragged_root, tmp_path):
    args = _args(ragged_root, tmp_path, '--num-points', '256')
    train, val, test = shapenet_part.datasets(args)
    for split, ds in (('val', val), ('test', test)):
        raw = ShapeNetPart(ragged_root, split=split)
        sizes = [raw[i].num_nodes for i in range(len(raw))]
        assert len(set(sizes)) > 1 and max(sizes) == 3000  # ragged
        for i in range(len(ds)):
            data, again = ds[i], ds[i]
            # Every point, in order, of the whole shape in [-1, 1]^3.
            expected = T.NormalizeScale()(raw[i].clone()).pos
            assert data.num_nodes == sizes[i]
            assert torch.equal(data.pos, expected)
            assert torch.equal(data.y, raw[i].y)
            assert torch.equal(data.pos, again.pos)
            assert float(data.pos.abs().max()) == pytest.approx(1, abs=1e-5)
    # Training draws --num-points points of the whole normalised shape:
    # the normalisation comes first and sees every point.
    first = [type(t).__name__ for t in train.transform.transforms[:2]]
    assert first == ['NormalizeScale', 'FixedPoints']
    raw = ShapeNetPart(ragged_root, split='train')
    for i in range(len(raw)):
        whole = T.NormalizeScale()(raw[i].clone())
        sub = T.Compose(train.transform.transforms[:2])(raw[i].clone())
        assert sub.num_nodes == 256
        match = torch.cdist(sub.pos, whole.pos).argmin(dim=1)
        assert torch.equal(whole.pos[match], sub.pos)
        assert torch.equal(whole.y[match], sub.y)
        if raw[i].num_nodes >= 256:  # distinct points, no repeats
            assert match.unique().numel() == 256
    assert train[0].num_nodes == 256


def _single_shape_iou(model, task, data):
    # One shape alone; its IoU over its category's parts by counting.
    logits = task.logits(model, Batch.from_data_list([data]))
    parts = ShapeNetPart.category_parts[int(data.category)]
    pred = torch.tensor(parts)[logits[:, parts].argmax(dim=1)]
    ious = []
    for part in parts:
        union = ((pred == part) | (data.y == part)).sum().item()
        inter = ((pred == part) & (data.y == part)).sum().item()
        ious.append(1.0 if union == 0 else inter / union)
    return sum(ious) / len(ious)


@pytest.mark.parametrize('root', ['ragged', 'bundled'])
def test_evaluation_is_deterministic_on_ragged_batches(root, ragged_root,
                                                       tmp_path):
    root = ragged_root if root == 'ragged' else None
    args = _args(root, tmp_path) if root else shapenet_part.parse_args(
        ['--out', str(tmp_path), '--device', 'cpu', '--no-progress'])
    _, _, test = shapenet_part.datasets(args)
    torch.manual_seed(0)
    model = shapenet_part.preset_model(
        shapenet_part.SamsaPointSegmenter, args, 50, num_categories=16,
        in_channels=0).eval()
    task = shapenet_part.PartSegmentation(ShapeNetPart.category_parts,
                                          args.normals)

    def evaluate():
        outs = {}
        with torch.no_grad():
            for batch in make_loader(test, args.batch_size, shuffle=False):
                for key, value in task.eval_step(model, batch).items():
                    outs.setdefault(key, []).append(value)
        outs = {k: torch.cat(v) for k, v in outs.items()}
        return outs, task.compute_metrics(outs)

    torch.manual_seed(1)
    outs, first = evaluate()
    torch.manual_seed(2)
    _, second = evaluate()
    assert first == second  # no new random subset per evaluation
    total = sum(test[i].num_nodes for i in range(len(test)))
    assert outs['iou'].shape == (len(test), )
    assert outs['loss'].shape == (total, )  # every point scored
    # Each shape of a ragged batch scores as it does alone.
    with torch.no_grad():
        alone = [_single_shape_iou(model, task, test[i])
                 for i in range(len(test))]
    assert outs['iou'].tolist() == pytest.approx(alone, abs=1e-6)
    assert first['instance_miou'] == pytest.approx(sum(alone) / len(alone))


def test_example_end_to_end_on_ragged_shapes(ragged_root, tmp_path):
    out = tmp_path / 'run'
    metrics = shapenet_part.main([
        '--root', ragged_root, '--out', str(out), '--device', 'cpu',
        '--no-progress', '--epochs', '1', '--num-points', '128'])
    with open(out / 'metrics.json') as f:
        saved = json.load(f)
    assert saved['test_instance_miou'] == pytest.approx(
        metrics['test_instance_miou'])
    # The best checkpoint scores the same test value again.
    args = _args(ragged_root, tmp_path / 'again', '--num-points', '128')
    _, _, test = shapenet_part.datasets(args)
    model = shapenet_part.preset_model(
        shapenet_part.SamsaPointSegmenter, args, 50, num_categories=16,
        in_channels=0)
    state = torch.load(out / 'best.pt', map_location='cpu',
                       weights_only=False)
    model.load_state_dict(state['model'])
    model.eval()
    task = shapenet_part.PartSegmentation(ShapeNetPart.category_parts,
                                          args.normals)
    ious = []
    with torch.no_grad():
        for batch in make_loader(test, args.batch_size, shuffle=False):
            ious.append(task.eval_step(model, batch)['iou'])
    assert torch.cat(ious).mean().item() == pytest.approx(
        metrics['test_instance_miou'], abs=1e-6)
