import os
import os.path as osp
import sys

import pytest
import torch

from samsa_geo.datasets import modelnet_princeton

EXAMPLES = osp.join(osp.dirname(__file__), '..', '..', 'examples')
sys.path.insert(0, EXAMPLES)
import _modelnet40_pipeline as pipeline  # noqa: E402
import shapenet_part  # noqa: E402

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'datasets'))
from test_modelnet_princeton import CLASSES  # noqa: E402

TETRAHEDRON = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
FACES = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def _write_cad_meshes(root):
    r"""Princeton layout with meshes in CAD units: the tetrahedron of class
    :math:`i` scaled by :math:`10 (i + 1)` (times the file's number) and
    moved by :math:`(100 i, -50, 7)`."""
    for i, cls in enumerate(CLASSES):
        for split, ids in (('train', (1, 2)), ('test', (3, ))):
            folder = osp.join(root, 'raw', cls, split)
            os.makedirs(folder)
            for j in ids:
                s, shift = 10.0 * (i + 1) * j, (100.0 * i, -50.0, 7.0)
                lines = ['OFF', '4 4 0']
                lines += [' '.join(f'{s * c + t:g}' for c, t in zip(v, shift))
                          for v in TETRAHEDRON]
                lines += ['3 ' + ' '.join(map(str, f)) for f in FACES]
                with open(osp.join(folder, f'{cls}_{j:04d}.off'), 'w') as f:
                    f.write('\n'.join(lines) + '\n')


def _radius(pos):
    return (pos - pos.mean(dim=0)).norm(dim=-1).max()


def test_princeton_shapes_reach_the_unit_sphere(tmp_path):
    root = str(tmp_path)
    _write_cad_meshes(root)
    raw_train = modelnet_princeton(root, 'train', num_points=64)
    raw_test = modelnet_princeton(root, 'test', num_points=64)
    # The meshes on disk are far from the unit sphere.
    assert min(_radius(d.pos) for d in raw_test) > 10
    assert max(float(d.pos.mean(0).abs().max()) for d in raw_test) > 100

    args = pipeline.parse_args(['--root', root, '--format', 'princeton',
                                '--num-points', '64', '--val-ratio', '0.5',
                                '--out', str(tmp_path / 'run')])
    train, val, test = pipeline.datasets(args)
    assert len(val) == len(train) == len(test) == len(CLASSES)
    for split, raw in ((val, raw_train), (test, raw_test)):
        indices = split.indices() if split is val else range(len(split))
        for i, data in zip(indices, split):
            pos = raw[i].pos
            centred = pos - pos.mean(dim=0)
            expected = centred / centred.norm(dim=-1).max()
            # The shape itself, centred, at radius 1; normals unchanged.
            assert torch.allclose(data.pos, expected, atol=1e-6)
            assert torch.allclose(data.pos.mean(dim=0), torch.zeros(3),
                                  atol=1e-5)
            assert float(data.pos.norm(dim=-1).max()) == pytest.approx(
                1.0, abs=1e-5)
            assert torch.equal(data.normal, raw[i].normal)
    # Training shapes are normalised before the augmentation: radius 1 up
    # to the anisotropic scaling and jitter.
    low, high = args.scale
    for data in train:
        assert float(data.pos.mean(dim=0).abs().max()) < 0.1
        assert low - 0.1 < float(_radius(data.pos)) < high + 0.1


def test_other_formats_keep_their_transforms(tmp_path):
    args = pipeline.parse_args(['--out', str(tmp_path / 'run'),
                                '--num-points', '64'])
    train, val, test = pipeline.datasets(args)  # the bundled sample
    names = [type(t).__name__ for t in test.transform.transforms]
    assert names == []
    raw = type(test)(test.root, 'test', num_points=64)
    assert torch.equal(test[0].pos, raw[0].pos)


@pytest.mark.parametrize('argv, axis', [
    ([], 1),
    (['--format', 'hdf5'], 1),
    (['--format', 'normal_resampled'], 1),
    (['--format', 'princeton'], 2),  # the meshes are z-up
    (['--format', 'princeton', '--up-axis', '1'], 1),
    (['--format', 'princeton', '--up-axis', '0'], 0),
    (['--format', 'hdf5', '--up-axis', '2'], 2),
])
def test_up_axis_follows_the_format(argv, axis, tmp_path):
    args = pipeline.parse_args(argv + ['--out', str(tmp_path),
                                       '--train-rotation', 'z',
                                       '--test-rotation', 'z'])
    assert args.up_axis == axis
    train_tf, test_tf = pipeline.point_transforms(args)
    for tf in (train_tf, test_tf):
        rotations = [t for t in tf.transforms
                     if type(t).__name__ == 'RandomRotateZ']
        assert [t.axis for t in rotations] == [axis]


def test_up_axis_of_shapenet_part_and_bad_values(tmp_path, capsys):
    assert shapenet_part.parse_args(['--out', str(tmp_path)]).up_axis == 1
    with pytest.raises(SystemExit):
        pipeline.parse_args(['--up-axis', '3', '--out', str(tmp_path)])
    assert "--up-axis: invalid choice: 3" in capsys.readouterr().err
