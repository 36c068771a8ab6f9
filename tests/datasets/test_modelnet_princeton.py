import os
import os.path as osp

import pytest
import torch

from samsa_geo.datasets import modelnet_princeton

CLASSES = ['bathtub', 'bed', 'chair', 'desk', 'dresser', 'monitor',
           'night_stand', 'sofa', 'table', 'toilet']

# A unit right tetrahedron; its faces are counter-clockwise from outside.
OFF = """OFF
4 4 0
0 0 0
1 0 0
0 1 0
0 0 1
3 0 2 1
3 0 1 3
3 0 3 2
3 1 2 3
"""


def _write_modelnet10(root: str) -> None:
    r"""Princeton layout: raw/{class}/{train,test}/{class}_{0001}.off."""
    for cls in CLASSES:
        for split, ids in (('train', (1, 2)), ('test', (3, ))):
            folder = osp.join(root, 'raw', cls, split)
            os.makedirs(folder)
            for i in ids:
                with open(osp.join(folder, f'{cls}_{i:04d}.off'), 'w') as f:
                    f.write(OFF)


def test_sampled_points_on_mesh(tmp_path):
    _write_modelnet10(str(tmp_path))
    train = modelnet_princeton(str(tmp_path), 'train', num_points=256,
                               name='10')
    test = modelnet_princeton(str(tmp_path), 'test', num_points=256,
                              name='10')
    assert len(train) == 20 and len(test) == 10
    assert sorted(train.y.tolist()) == sorted(list(range(10)) * 2)
    data = test[0]
    assert data.pos.shape == (256, 3) and data.normal.shape == (256, 3)
    assert 'face' not in data
    # Every point lies on the tetrahedron's surface: inside the simplex and
    # on one of its four planes.
    pos = data.pos
    assert bool((pos >= -1e-5).all()) and bool((pos.sum(-1) <= 1 + 1e-5).all())
    on_plane = torch.stack([pos[:, 0], pos[:, 1], pos[:, 2],
                            (pos.sum(-1) - 1).abs()]).min(dim=0).values
    assert on_plane.max() < 1e-5
    assert torch.allclose(data.normal.norm(dim=-1), torch.ones(256),
                          atol=1e-5)


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="'split'"):
        modelnet_princeton(str(tmp_path), 'val')
    with pytest.raises(ValueError, match="'name'"):
        modelnet_princeton(str(tmp_path), name='20')


@pytest.mark.parametrize('damage', ['cut', 'garbage'])
def test_damaged_mesh_is_named(tmp_path, damage):
    from samsa_geo.io import DamagedFileError
    _write_modelnet10(str(tmp_path))
    path = osp.join(str(tmp_path), 'raw', 'chair', 'train', 'chair_0002.off')
    with open(path, 'w') as f:
        f.write(OFF[:30] if damage == 'cut' else 'OFF\n4 x\nnot a mesh\n')
    with pytest.raises(DamagedFileError, match=rf"Cannot read the mesh "
                       rf"'{path}' .*truncated or damaged: re-extract it "
                       rf"from 'ModelNet10.zip'"):
        modelnet_princeton(str(tmp_path), 'train', num_points=64, name='10')
