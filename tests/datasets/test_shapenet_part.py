import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from torch_geometric.datasets import ShapeNet

from samsa_geo.datasets import ShapeNetPart
from samsa_geo.metrics import part_miou


def test_reads_bundled_sample(shapenet_root):
    ds = ShapeNetPart(shapenet_root, split='train')
    assert ds.categories == ['Lamp', 'Mug', 'Table']
    assert len(ds) == 36
    assert len(ShapeNetPart(shapenet_root, split='val')) == 9
    assert len(ShapeNetPart(shapenet_root, split='test')) == 12
    assert len(ShapeNetPart(shapenet_root, split='trainval')) == 45
    lamp, mug, table = 8, 11, 15  # global indices in PyG's order
    assert ds.category_names[table] == 'Table'
    assert ds.category_parts[table] == [47, 48, 49]
    assert ds.part_category[36] == mug and len(ds.part_category) == 50
    seen = set()
    for data in ds:
        c = int(data.category)
        seen.add(c)
        assert data.pos.shape == (512, 3) and data.normal.shape == (512, 3)
        assert data.y.shape == (512, ) and data.x is None
        assert set(data.y.tolist()) <= set(ds.category_parts[c])
        assert bool(ds.y_mask[c, data.y].all())
    assert seen == {lamp, mug, table}
    assert ds.seg_classes_table == {'Lamp': [24, 25, 26, 27], 'Mug': [36, 37],
                                    'Table': [47, 48, 49]}
    # Ground truth scores perfectly with the metric.
    data = ds[0]
    assert part_miou(data.y, data.y, data.category,
                     ds.category_parts) == (1.0, 1.0)


def test_subset_keeps_global_category(shapenet_root):
    ds = ShapeNetPart(shapenet_root, categories='Mug', split='test',
                      include_normals=False)
    assert len(ds) == 4 and ds.categories == ['Mug']
    assert ds.category.tolist() == [11] * 4
    assert 'normal' not in ds[0]


def test_matches_pyg_reader(shapenet_root):
    # Same files through PyG's own ShapeNet (its raw/ layout).
    import shutil
    root = osp.join(shapenet_root, 'pyg')
    shutil.copytree(osp.join(shapenet_root, ShapeNetPart.folder),
                    osp.join(root, 'raw'))
    for synset in ShapeNet.category_ids.values():  # PyG checks all 16 exist
        os.makedirs(osp.join(root, 'raw', synset), exist_ok=True)
    ours = ShapeNetPart(shapenet_root, categories=['Mug', 'Table'],
                        split='test')
    theirs = ShapeNet(root, categories=['Mug', 'Table'], split='test')
    assert len(ours) == len(theirs) == 8
    for a, b in zip(ours, theirs):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.y, b.y)
        assert torch.equal(a.normal, b.x)
        assert ours.category_names[int(a.category)] == \
            theirs.categories[int(b.category)]


def test_num_points(shapenet_root):
    ds = ShapeNetPart(shapenet_root, split='test', num_points=200)
    data = ds[0]
    assert data.pos.shape == (200, 3) and data.y.shape == (200, )
    full = ShapeNetPart(shapenet_root, split='test')[0]
    # Sampled rows are rows of the full shape, with their labels.
    match = torch.cdist(data.pos, full.pos,
                        compute_mode='donot_use_mm_for_euclid_dist').argmin(
                            dim=1)
    assert torch.equal(full.y[match], data.y)
    assert torch.equal(full.normal[match], data.normal)
    with pytest.warns(UserWarning, match=r"12 of 12 shapes .* fewer than "
                      r"num_points=700 points \(the smallest, index 0, has "
                      r"512\): their points are repeated"):
        padded = ShapeNetPart(shapenet_root, split='test', num_points=700)
    assert padded[0].pos.shape == (700, 3)


def test_bad_input_and_missing_archive(tmp_path, shapenet_root, offline):
    with pytest.raises(ValueError, match="'categories'"):
        ShapeNetPart(shapenet_root, categories='Chairs')
    with pytest.raises(ValueError, match="'split'"):
        ShapeNetPart(shapenet_root, split='all')

    with pytest.raises(RuntimeError) as e:
        ShapeNetPart(str(tmp_path))
    msg = str(e.value)
    assert 'shapenetcore_partanno_segmentation_benchmark_v0_normal.zip' in msg
    assert osp.join(str(tmp_path), ShapeNetPart.folder) in msg


def test_processed_cache_reused(shapenet_root, forbid):
    first = ShapeNetPart(shapenet_root, split='test')
    forbid(ShapeNetPart)
    again = ShapeNetPart(shapenet_root, split='test')
    assert len(again) == 12
    # The cache holds the shapes of the files, in the split file's order.
    with open(osp.join(shapenet_root, ShapeNetPart.folder,
                       'train_test_split',
                       'shuffled_test_file_list.json')) as f:
        names = json.load(f)
    for name, a, b in zip(names, first, again):
        _, synset, shape = name.split('/')
        table = np.loadtxt(osp.join(shapenet_root, ShapeNetPart.folder,
                                    synset, f'{shape}.txt'),
                           dtype=np.float32)  # [N, 7]
        for data in (a, b):
            assert torch.equal(data.pos, torch.from_numpy(table[:, :3]))
            assert torch.equal(data.normal, torch.from_numpy(table[:, 3:6]))
            assert data.y.tolist() == table[:, 6].astype(int).tolist()
            name = ShapeNetPart.category_names[int(data.category)]
            assert ShapeNet.category_ids[name] == synset
