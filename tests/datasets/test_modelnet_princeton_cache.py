r"""The Princeton ModelNet cache is kept per name and num_points, and the
meshes are read in sorted order whatever order the file system lists."""
import glob
import os
import os.path as osp
import warnings

import pytest
import torch

from samsa_geo.datasets import modelnet_princeton
from samsa_geo.datasets.modelnet_princeton import PrincetonModelNet

CLASSES = ['bathtub', 'bed', 'chair', 'desk', 'dresser', 'monitor',
           'night_stand', 'sofa', 'table', 'toilet']


def offset_tetrahedron(shift: float) -> str:
    r"""A unit right tetrahedron moved by :obj:`shift` along every axis, so
    that each point sampled on it tells which mesh it came from."""
    corners = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 0, 1)]
    lines = ['OFF', '4 4 0'] + [' '.join(str(c + shift) for c in corner)
                                for corner in corners]
    return '\n'.join(lines + ['3 0 2 1', '3 0 1 3', '3 0 3 2',
                              '3 1 2 3']) + '\n'


def write_meshes(root, classes=CLASSES):
    r"""Princeton layout; returns the shift of each mesh by split, in the
    sorted order of the classes and files."""
    shifts = {'train': [], 'test': []}
    for c, cls in enumerate(classes):
        for split, ids in (('train', (1, 2, 3)), ('test', (4, ))):
            folder = osp.join(root, 'raw', cls, split)
            os.makedirs(folder)
            for i in ids:
                shift = 10.0 * c + i
                with open(osp.join(folder, f'{cls}_{i:04d}.off'), 'w') as f:
                    f.write(offset_tetrahedron(shift))
                shifts[split].append(shift)
    return shifts


def test_cache_per_num_points_and_name(tmp_path, forbid):
    root = str(tmp_path)
    write_meshes(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        a = modelnet_princeton(root, 'test', num_points=64)
        b = modelnet_princeton(root, 'test', num_points=128)
        c = modelnet_princeton(root, 'test', num_points=32, name='10')
    assert a[0].pos.shape == (64, 3) and a[0].normal.shape == (64, 3)
    assert b[0].pos.shape == (128, 3) and c[0].pos.shape == (32, 3)
    assert len(a) == len(b) == len(c) == 10
    # No warning that the pre_transform differs: sampling is not one.
    assert not [w for w in caught if 'pre_transform' in str(w.message)]
    assert sorted(f for f in os.listdir(osp.join(root, 'processed'))
                  if f.startswith('modelnet')) == [
        'modelnet10_princeton_32_test.pt', 'modelnet10_princeton_32_train.pt',
        'modelnet40_princeton_128_test.pt',
        'modelnet40_princeton_128_train.pt',
        'modelnet40_princeton_64_test.pt', 'modelnet40_princeton_64_train.pt']
    # Each cache is reused as it was built.
    forbid(PrincetonModelNet, 'process')
    again = modelnet_princeton(root, 'test', num_points=64)
    assert torch.equal(again.pos, a.pos)
    assert modelnet_princeton(root, 'train', num_points=128,
                              name='40')[0].pos.shape == (128, 3)


def test_meshes_are_read_in_sorted_order(tmp_path, monkeypatch):
    root = str(tmp_path)
    shifts = write_meshes(root)
    listed = glob.glob

    def unsorted(pattern, *args, **kwargs):  # a file system's own order
        return sorted(listed(pattern, *args, **kwargs), reverse=True)

    monkeypatch.setattr(glob, 'glob', unsorted)
    torch.manual_seed(0)
    ds = modelnet_princeton(root, 'train', num_points=32)
    assert len(ds) == len(shifts['train']) == 30
    assert ds.y.view(-1).tolist() == [c for c in range(10) for _ in range(3)]
    for data, shift in zip(ds, shifts['train']):
        # Every point on the tetrahedron shifted by `shift`.
        assert float(data.pos.min()) >= shift - 1e-4
        assert float(data.pos.max()) <= shift + 1 + 1e-4
        assert float(data.pos.sum(-1).max()) <= 3 * shift + 1 + 1e-3


def test_name_10_refuses_modelnet40_meshes(tmp_path):
    root = str(tmp_path)
    write_meshes(root, CLASSES + ['airplane'])
    raw = osp.join(root, 'raw')
    with pytest.raises(ValueError, match=rf"Expected the 10 class folders "
                       rf"of ModelNet10 in '{raw}' for name='10' \(it also "
                       rf"holds 1 other class folder\(s\), e.g. 'airplane': "
                       rf"the meshes of ModelNet40.zip\); use another root "
                       rf"for name='10'"):
        modelnet_princeton(root, 'test', num_points=16, name='10')
    ds = modelnet_princeton(root, 'test', num_points=16)
    assert len(ds) == 11 and ds.y.view(-1).tolist() == list(range(11))
