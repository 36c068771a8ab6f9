import os
import os.path as osp

import pytest
import torch

from samsa_geo.datasets import ModelNet40HDF5

h5py = pytest.importorskip('h5py')

CLASSES = ['airplane', 'bathtub', 'bed']


def _write_archive(root: str, with_normals: bool = True) -> dict:
    r"""Writes a small archive in the real layout; returns its contents.

    The archive's files hold the datasets :obj:`data` float32
    :math:`(M, 2048, 3)`, :obj:`faceId` int32 :math:`(M, 2048)`,
    :obj:`label` uint8 :math:`(M, 1)` and :obj:`normal` float32
    :math:`(M, 2048, 3)`; :obj:`with_normals=False` leaves out
    :obj:`normal` (files of other sources)."""
    folder = osp.join(root, 'modelnet40_ply_hdf5_2048')
    os.makedirs(folder)
    gen = torch.Generator().manual_seed(0)
    files = {'train': ['ply_data_train0.h5', 'ply_data_train1.h5'],
             'test': ['ply_data_test0.h5']}
    content = {}
    for split, names in files.items():
        pos, labels, normals = [], [], []
        for i, name in enumerate(names):
            m = 7 + i
            data = torch.rand(m, 2048, 3, generator=gen) * 2 - 1
            label = torch.randint(0, 3, (m, 1), generator=gen)
            normal = torch.nn.functional.normalize(
                torch.randn(m, 2048, 3, generator=gen), dim=-1)
            with h5py.File(osp.join(folder, name), 'w') as f:
                f.create_dataset('data', data=data.numpy())
                f.create_dataset('faceId', data=torch.randint(
                    0, 5000, (m, 2048), generator=gen).int().numpy())
                f.create_dataset('label', data=label.numpy().astype('uint8'))
                if with_normals:
                    f.create_dataset('normal', data=normal.numpy())
            pos.append(data)
            labels.append(label.view(-1))
            normals.append(normal)
        content[split] = (torch.cat(pos), torch.cat(labels),
                          torch.cat(normals))
        with open(osp.join(folder, f'{split}_files.txt'), 'w') as f:
            f.write(''.join(f'data/modelnet40_ply_hdf5_2048/{n}\n'
                            for n in names))
    with open(osp.join(folder, 'shape_names.txt'), 'w') as f:
        f.write('\n'.join(CLASSES) + '\n')
    return content


@pytest.mark.parametrize('with_normals', [True, False])
def test_reads_archive(tmp_path, with_normals):
    content = _write_archive(str(tmp_path), with_normals)
    if not with_normals:  # asked for, absent: said at once, not per batch
        with pytest.raises(ValueError) as e:
            ModelNet40HDF5(str(tmp_path), use_normals=True)
        folder = osp.join(str(tmp_path), 'modelnet40_ply_hdf5_2048')
        assert str(e.value) == (
            f"Expected normals for use_normals=True, but the files in "
            f"'{folder}' hold none; pass use_normals=False")
    train = ModelNet40HDF5(str(tmp_path), split='train')
    test = ModelNet40HDF5(str(tmp_path), split='test', num_points=2048)
    assert train.classes == CLASSES
    assert len(train) == 15 and len(test) == 7
    assert str(train) == 'ModelNet40HDF5(15, split=train, num_points=1024)'
    pos, y, _ = content['train']
    for i in (0, 7, 14):  # across both training files, in order
        assert torch.equal(train[i].pos, pos[i, :1024])
        assert train[i].y.tolist() == [int(y[i])]
        assert 'normal' not in train[i]
    assert torch.equal(test[6].pos, content['test'][0][6])
    assert train.y.dtype == torch.long


def test_normals_val_split_and_cache(tmp_path, forbid):
    content = _write_archive(str(tmp_path))
    ds = ModelNet40HDF5(str(tmp_path), split='test', num_points=100,
                        use_normals=True)
    assert torch.equal(ds[2].normal, content['test'][2][2, :100])
    assert ds[2].pos.shape == (100, 3)
    train = ModelNet40HDF5(str(tmp_path), val_ratio=0.3, num_points=100)
    val = ModelNet40HDF5(str(tmp_path), split='val', val_ratio=0.3,
                         num_points=100)
    assert len(train) + len(val) == 15 and len(val) > 0
    assert set(train.indices()).isdisjoint(val.indices())
    forbid(ModelNet40HDF5)
    assert len(ModelNet40HDF5(str(tmp_path), split='test',
                              num_points=100)) == 7


def test_errors(tmp_path, offline):
    with pytest.raises(RuntimeError) as e:
        ModelNet40HDF5(str(tmp_path))
    assert 'modelnet40_ply_hdf5_2048.zip' in str(e.value)
    assert osp.join(str(tmp_path), 'modelnet40_ply_hdf5_2048') in str(e.value)
    with pytest.raises(ValueError, match="'num_points'"):
        ModelNet40HDF5(str(tmp_path), num_points=0)
    _write_archive(str(tmp_path / 'a'))
    with pytest.raises(ValueError, match='num_points=4096'):
        ModelNet40HDF5(str(tmp_path / 'a'), num_points=4096)
