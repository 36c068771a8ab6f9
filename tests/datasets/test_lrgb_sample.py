import os.path as osp
import shutil
from collections import deque

import numpy as np
import pytest
import torch
from torch_geometric.datasets import LRGBDataset as PyGLRGBDataset
from torch_geometric.utils import degree

from samsa_geo.datasets import LRGBDataset, lrgb_task, sample_root
from samsa_geo.datasets._peptides_sample import FAR, peptide_graph
from samsa_geo.nn.encoders.categorical_encoder import (OGB_ATOM_FEATURE_DIMS,
                                                       OGB_BOND_FEATURE_DIMS)

SULFUR, AROMATIC_BOND = 15, 3


def min_distance(data, sources, targets):
    # Shortest path (in bonds) from any of `sources` to any of `targets`.
    adj = [[] for _ in range(data.num_nodes)]
    for i, j in data.edge_index.t().tolist():
        adj[i].append(j)
    dist = {s: 0 for s in sources}
    queue = deque(sources)
    while queue:
        u = queue.popleft()
        for v in adj[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                queue.append(v)
    return min(dist[t] for t in targets)


@pytest.fixture(scope='module')
def splits(tmp_path_factory):
    r"""The three splits of a copy of the bundled sample, processed by PyG's
    code without a download."""
    def no_download(self):
        raise AssertionError('the sample must not be downloaded')

    root = tmp_path_factory.mktemp('lrgb')
    shutil.copytree(osp.join(sample_root('lrgb'), 'peptides-func', 'raw'),
                    root / 'peptides-func' / 'raw')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PyGLRGBDataset, 'download', no_download)
        return {split: LRGBDataset(str(root), 'Peptides-func', split=split)
                for split in ('train', 'val', 'test')}


def test_sample_in_the_archive_format(splits):
    task = lrgb_task('peptides-func')
    assert [len(d) for d in splits.values()] == [64, 32, 16]
    for dataset in splits.values():
        for data in dataset:
            n, e = data.num_nodes, data.num_edges
            assert 10 <= n <= 60
            assert data.x.shape == (n, task.node_channels)
            assert data.edge_attr.shape == (e, task.edge_channels)
            assert data.x.dtype == data.edge_attr.dtype == torch.long
            assert data.y.shape == (1, task.out_channels)
            assert set(data.y.view(-1).tolist()) <= {0.0, 1.0}
            for col, dim in enumerate(OGB_ATOM_FEATURE_DIMS):
                assert 0 <= int(data.x[:, col].min())
                assert int(data.x[:, col].max()) < dim
            for col, dim in enumerate(OGB_BOND_FEATURE_DIMS):
                assert int(data.edge_attr[:, col].max()) < dim
            # Undirected, each bond twice with the same features, and the
            # degree column is the graph's degree.
            flipped = data.edge_index.flip(0)
            assert torch.equal(data.edge_index[:, 1::2], flipped[:, 0::2])
            assert torch.equal(data.edge_attr[0::2], data.edge_attr[1::2])
            assert torch.equal(data.x[:, 2], degree(data.edge_index[0], n)
                               .long())


def test_sample_labels_follow_the_structure(splits):
    for dataset in splits.values():
        for data in dataset:
            y = data.y.view(-1).bool().tolist()
            sulfur = (data.x[:, 0] == SULFUR).nonzero().view(-1).tolist()
            ring = (data.x[:, 7] == 1).nonzero().view(-1).tolist()
            src, dst = data.edge_index
            ss = ((data.x[src, 0] == SULFUR) & (data.x[dst, 0] == SULFUR))
            assert y[0] == bool(ring)
            assert y[1] == bool(sulfur)
            assert y[2] == bool(ss.any())
            far = bool(sulfur and ring) and min_distance(data, sulfur,
                                                         ring) >= FAR
            assert y[5] == far
            if y[9]:
                assert not (y[0] or y[2] or y[3] or y[5])
            # Aromatic atoms are joined by aromatic bonds only.
            aromatic = data.x[src, 7].bool() & data.x[dst, 7].bool()
            assert bool((data.edge_attr[aromatic, 0] == AROMATIC_BOND).all())


def test_sample_labels_are_neither_constant_nor_rare(splits):
    # Every label has positives and negatives in training and validation,
    # and at least 3 of each in validation (average precision needs both).
    for split in ('train', 'val'):
        y = torch.cat([d.y for d in splits[split]])  # [num_graphs, 10]
        pos = y.sum(0)
        assert bool((pos >= 3).all()) and bool((pos <= len(y) - 3).all()), \
            (split, pos.tolist())


def test_generator_is_seeded():
    a, res_a = peptide_graph(np.random.default_rng(5))
    b, res_b = peptide_graph(np.random.default_rng(5))
    assert res_a == res_b
    assert all(torch.equal(u, v) for u, v in zip(a, b))
