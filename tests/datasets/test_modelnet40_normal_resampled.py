import os
import os.path as osp

import pytest
import torch
from torch_geometric.loader import DataLoader

import samsa_geo.datasets._download as download
from samsa_geo.datasets import ModelNet40NormalResampled
from samsa_geo.transforms import RandomRotateSO3

CLASSES = ['capsule', 'cone', 'cube', 'cylinder', 'ellipsoid', 'pyramid',
           'slab', 'sphere', 'table', 'torus']


def test_reads_bundled_sample(modelnet_root):
    train = ModelNet40NormalResampled(modelnet_root, split='train')
    test = ModelNet40NormalResampled(modelnet_root, split='test')
    assert train.classes == CLASSES and train.num_classes == 10
    assert len(train) == 120 and len(test) == 40
    assert str(train) == ('ModelNet40NormalResampled(120, name=40, '
                          'split=train, num_points=1024)')
    data = train[0]
    assert data.pos.shape == (1024, 3) and data.normal.shape == (1024, 3)
    assert data.y.shape == (1, ) and int(data.y) == 0  # capsule_0001
    assert torch.allclose(data.normal.norm(dim=-1), torch.ones(1024),
                          atol=1e-4)
    assert data.pos.norm(dim=-1).max() <= 1 + 1e-5
    assert torch.bincount(train._data.y, minlength=10).tolist() == [12] * 10
    assert torch.bincount(test._data.y, minlength=10).tolist() == [4] * 10
    # The first line of the file is the first point.
    path = osp.join(modelnet_root, 'modelnet40_normal_resampled', 'capsule',
                    'capsule_0001.txt')
    with open(path) as f:
        first = [float(v) for v in f.readline().split(',')]
    assert torch.allclose(data.pos[0], torch.tensor(first[:3]))
    assert torch.allclose(data.normal[0], torch.tensor(first[3:]))
    # Test ids continue after the train ids.
    assert int(test[0].y) == 0


def test_options_and_batching(modelnet_root):
    ds = ModelNet40NormalResampled(modelnet_root, num_points=256,
                                   use_normals=False,
                                   transform=RandomRotateSO3())
    assert ds[0].pos.shape == (256, 3) and 'normal' not in ds[0]
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.pos.shape == (1024, 3) and batch.y.shape == (4, )
    fps = ModelNet40NormalResampled(modelnet_root, num_points=64,
                                    sampling='fps')
    first = ModelNet40NormalResampled(modelnet_root, num_points=1024)
    pos, full = fps[0].pos, first[0].pos
    # FPS starts at point 0 and picks points of the file, spread out.
    assert torch.equal(pos[0], full[0])
    exact = 'donot_use_mm_for_euclid_dist'
    assert torch.cdist(pos, full, compute_mode=exact).min(
        dim=1).values.max() < 1e-6
    d = torch.cdist(pos, pos) + torch.eye(64) * 10
    d_first = torch.cdist(full[:64], full[:64]) + torch.eye(64) * 10
    assert d.min() > d_first.min()


def test_val_split(modelnet_root):
    train = ModelNet40NormalResampled(modelnet_root, split='train',
                                      val_ratio=0.25)
    val = ModelNet40NormalResampled(modelnet_root, split='val',
                                    val_ratio=0.25)
    assert len(train) == 90 and len(val) == 30
    assert set(train.indices()).isdisjoint(val.indices())
    assert torch.bincount(val.y, minlength=10).tolist() == [3] * 10
    again = ModelNet40NormalResampled(modelnet_root, split='val',
                                      val_ratio=0.25)
    assert again.indices() == val.indices()
    with pytest.raises(ValueError, match="'val_ratio'"):
        ModelNet40NormalResampled(modelnet_root, split='val')
    with pytest.raises(ValueError, match="'split'"):
        ModelNet40NormalResampled(modelnet_root, split='dev')


def test_processed_cache_reused(modelnet_root, forbid):
    ModelNet40NormalResampled(modelnet_root)
    path = osp.join(modelnet_root, 'processed',
                    'modelnet40_resampled_1024_first_train.pt')
    assert osp.exists(path)
    mtime = os.stat(path).st_mtime_ns
    forbid(ModelNet40NormalResampled)
    ds = ModelNet40NormalResampled(modelnet_root)
    assert len(ds) == 120 and os.stat(path).st_mtime_ns == mtime


def test_modelnet10_lists(modelnet_root):
    base = osp.join(modelnet_root, 'modelnet40_normal_resampled')
    for kind in ('shape_names', 'train', 'test'):
        with open(osp.join(base, f'modelnet40_{kind}.txt')) as f:
            lines = [line for line in f.read().split()
                     if line.rsplit('_', 1)[0] in ('cube', 'torus')]
        with open(osp.join(base, f'modelnet10_{kind}.txt'), 'w') as f:
            f.write('\n'.join(lines) + '\n')
    ds = ModelNet40NormalResampled(modelnet_root, name='10', split='test')
    assert ds.classes == ['cube', 'torus'] and len(ds) == 8
    assert ds.y.tolist() == [0] * 4 + [1] * 4


def test_missing_archive_error(tmp_path, offline):
    with pytest.raises(RuntimeError) as e:
        ModelNet40NormalResampled(str(tmp_path))
    msg = str(e.value)
    assert 'modelnet40_normal_resampled.zip' in msg
    assert osp.join(str(tmp_path), 'modelnet40_normal_resampled') in msg
    assert 'modelnet40_train.txt' in msg and 'network unreachable' in msg


def test_zip_placed_by_hand(tmp_path, modelnet_root, monkeypatch):
    import shutil
    shutil.make_archive(str(tmp_path / 'modelnet40_normal_resampled'), 'zip',
                        modelnet_root, 'modelnet40_normal_resampled')
    root = tmp_path / 'fresh'
    root.mkdir()
    shutil.move(str(tmp_path / 'modelnet40_normal_resampled.zip'), str(root))
    monkeypatch.setattr(download, 'download_url', None)  # never called
    ds = ModelNet40NormalResampled(str(root), split='test')
    assert len(ds) == 40
    # The zip's files, extracted in place: the same shapes as the folder.
    ref = ModelNet40NormalResampled(modelnet_root, split='test')
    assert ds.classes == ref.classes
    for a, b in zip(ds, ref):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.normal, b.normal)
        assert torch.equal(a.y, b.y)
