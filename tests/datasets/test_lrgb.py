import os.path as osp
import pickle

import pytest
import torch
from torch_geometric.data import Data
from torch_geometric.datasets import LRGBDataset
from torch_geometric.loader import DataLoader

from samsa_geo.datasets import LRGB_TASKS, lrgb_feature_normalization, lrgb_task
from samsa_geo.testing.lrgb_fixtures import (COCO_ORIGINAL_LABELS, SPLIT_SIZES,
                                             write_lrgb_raw)
from samsa_geo.transforms import AddLaplacianPE, StandardizeFeatures

NAMES = ['Peptides-func', 'Peptides-struct', 'PascalVOC-SP', 'COCO-SP',
         'PCQM-Contact']


@pytest.mark.parametrize('name', NAMES)
def test_real_lrgb_processing_on_fixture(tmp_path, forbid, name):
    forbid(LRGBDataset, 'download')
    raw_dir = write_lrgb_raw(str(tmp_path), name)
    assert raw_dir == osp.join(str(tmp_path), name.lower(), 'raw')
    task = lrgb_task(name)
    for split in ('train', 'val', 'test'):
        ds = LRGBDataset(str(tmp_path), name, split=split)
        assert len(ds) == SPLIT_SIZES[split]
        for data in ds:
            n, e = data.num_nodes, data.num_edges
            assert data.x.shape == (n, task.node_channels)
            assert data.edge_attr.shape == (e, task.edge_channels)
            assert data.edge_index.shape == (2, e)
            assert int(data.edge_index.max()) < n
            if task.categorical:
                assert data.x.dtype == torch.long
                assert data.edge_attr.dtype == torch.long
            else:
                assert data.x.dtype == torch.float
                assert data.edge_attr.dtype == torch.float
            if task.level == 'graph':
                assert data.y.shape == (1, task.out_channels)
            elif task.level == 'node':
                assert data.y.shape == (n, ) and data.y.dtype == torch.long
                assert int(data.y.min()) >= 0
                assert int(data.y.max()) < task.out_channels
            else:
                assert data.edge_label_index.size(0) == 2
                assert data.edge_label.shape == (data.edge_label_index.size(1), )
                assert set(data.edge_label.tolist()) <= {0, 1}
    # Processed fields equal the raw tuples (COCO labels remapped to 0..80).
    if name.endswith('-SP'):
        with open(osp.join(raw_dir, 'train.pickle'), 'rb') as f:
            graphs = pickle.load(f)
    else:
        graphs = torch.load(osp.join(raw_dir, 'train.pt'))
    ds = LRGBDataset(str(tmp_path), name, split='train')
    for graph, data in zip(graphs, ds):
        assert torch.equal(data.x, graph[0].to(data.x.dtype))
        assert torch.equal(data.edge_attr, graph[1].to(data.edge_attr.dtype))
        assert torch.equal(data.edge_index, graph[2])
        if name == 'COCO-SP':
            expected = [COCO_ORIGINAL_LABELS.index(int(v)) for v in graph[3]]
            assert data.y.tolist() == expected
        elif name == 'PCQM-Contact':
            assert torch.equal(data.edge_label_index, graph[3])
            assert torch.equal(data.edge_label, graph[4])
        else:
            assert torch.equal(data.y,
                               torch.as_tensor(graph[3]).to(data.y.dtype))


def test_lrgb_pre_transform_and_loader(tmp_path, forbid):
    forbid(LRGBDataset, 'download')
    raw_dir = write_lrgb_raw(str(tmp_path), 'peptides-func')
    ds = LRGBDataset(str(tmp_path), 'Peptides-func', split='train',
                     pre_transform=AddLaplacianPE(4))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch.lap_pe.shape == (batch.num_nodes, 4)
    assert batch.y.shape == (4, 10)
    # The first four raw graphs, labels and all, each with the encoding
    # that the transform gives the raw graph (up to each column's sign).
    graphs = torch.load(osp.join(raw_dir, 'train.pt'))[:4]
    assert torch.equal(batch.y, torch.cat([g[3] for g in graphs]))
    for i, (x, edge_attr, edge_index, _) in enumerate(graphs):
        data = batch.get_example(i)
        assert torch.equal(data.x, x) and torch.equal(data.edge_index,
                                                      edge_index)
        raw = Data(x=x, edge_attr=edge_attr, edge_index=edge_index,
                   num_nodes=x.size(0))
        ref = AddLaplacianPE(4)(raw).lap_pe
        sign = torch.where((data.lap_pe * ref).sum(0) < 0, -1.0, 1.0)
        torch.testing.assert_close(data.lap_pe * sign, ref, rtol=0,
                                   atol=1e-5)


def test_lrgb_task_table():
    assert set(LRGB_TASKS) == {n.lower() for n in NAMES}
    assert lrgb_task('Peptides-func').metric == 'average_precision_multitask'
    assert lrgb_task('peptides-struct').higher_is_better is False
    assert lrgb_task('COCO-SP').out_channels == 81
    assert lrgb_task('PCQM-Contact').metric == 'mrr_filtered'
    import samsa_geo.metrics as metrics
    for task in LRGB_TASKS.values():
        assert task.metric.startswith('mrr') or hasattr(metrics, task.metric)
    with pytest.raises(ValueError, match="'name'"):
        lrgb_task('cora')


def test_superpixel_normalization(tmp_path, forbid):
    forbid(LRGBDataset, 'download')
    write_lrgb_raw(str(tmp_path), 'pascalvoc-sp')
    train = LRGBDataset(str(tmp_path), 'PascalVOC-SP', split='train')
    norm = lrgb_feature_normalization('PascalVOC-SP', train)
    assert isinstance(norm, StandardizeFeatures)
    x = torch.cat([d.x for d in train])
    mean, std = norm.stats['x']
    assert torch.allclose(mean, x.mean(0), atol=1e-5)
    assert torch.allclose(std, x.std(0, unbiased=False), atol=1e-5)
    # Same statistics through the slow (per-graph) path:
    slow = StandardizeFeatures.compute_stats(list(train))
    assert torch.allclose(slow['edge_attr'][0], norm.stats['edge_attr'][0])

    train.transform = norm
    xn = torch.cat([d.x for d in train])
    ean = torch.cat([d.edge_attr for d in train])
    assert torch.allclose(xn.mean(0), torch.zeros(14), atol=1e-5)
    assert torch.allclose(xn.std(0, unbiased=False), torch.ones(14), atol=1e-4)
    assert torch.allclose(ean.mean(0), torch.zeros(2), atol=1e-5)
    val = LRGBDataset(str(tmp_path), 'PascalVOC-SP', split='val', transform=norm)
    raw_val = LRGBDataset(str(tmp_path), 'PascalVOC-SP', split='val')
    assert torch.allclose(val[0].x, (raw_val[0].x - mean) / std)
    assert lrgb_feature_normalization('Peptides-func', train) is None
    assert repr(norm) == "StandardizeFeatures(attrs=['x', 'edge_attr'])"
