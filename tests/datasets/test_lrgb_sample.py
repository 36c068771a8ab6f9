import os.path as osp
import pickle
import shutil
from collections import deque

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch_geometric.datasets import LRGBDataset as PyGLRGBDataset
from torch_geometric.utils import degree

from samsa_geo.datasets import LRGBDataset, lrgb_task, sample_root
from samsa_geo.datasets._peptides_sample import FAR, peptide_graph
from samsa_geo.datasets._peptides_struct_sample import (FAR_PAIR,
                                                        NEAR_AROMATIC,
                                                        STRUCT_CENTER,
                                                        STRUCT_SCALE)
from samsa_geo.datasets._superpixel_sample import (COCO_CLASSES, KINDS,
                                                   NUM_KINDS, SCENES)
from samsa_geo.nn.encoders.categorical_encoder import (OGB_ATOM_FEATURE_DIMS,
                                                       OGB_BOND_FEATURE_DIMS)
from samsa_geo.testing.lrgb_fixtures import COCO_ORIGINAL_LABELS

SULFUR, NITROGEN, OXYGEN, AROMATIC_BOND = 15, 6, 7, 3
NAMES = {'peptides-func': 'Peptides-func', 'peptides-struct':
         'Peptides-struct', 'pascalvoc-sp': 'PascalVOC-SP',
         'coco-sp': 'COCO-SP', 'pcqm-contact': 'PCQM-Contact'}
SIZES = {'peptides-func': [64, 32, 16], 'peptides-struct': [40, 20, 16],
         'pascalvoc-sp': [40, 32, 20], 'coco-sp': [40, 32, 20],
         'pcqm-contact': [40, 20, 16]}


def distances(data, sources):
    # Shortest paths (in bonds) from the nearest of `sources` to every node.
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
    return torch.tensor([dist[v] for v in range(data.num_nodes)])


def min_distance(data, sources, targets):
    return int(distances(data, sources)[targets].min())


@pytest.fixture(scope='module')
def load(tmp_path_factory):
    r"""``load(name)``: the three splits of a copy of the bundled sample of
    dataset ``name``, processed by PyG's code without a download."""
    def no_download(self):
        raise AssertionError('the sample must not be downloaded')

    root, cache = tmp_path_factory.mktemp('lrgb'), {}

    def splits(name):
        if name not in cache:
            shutil.copytree(osp.join(sample_root('lrgb'), name, 'raw'),
                            root / name / 'raw')
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(PyGLRGBDataset, 'download', no_download)
                cache[name] = {split: LRGBDataset(str(root), NAMES[name],
                                                  split=split)
                               for split in ('train', 'val', 'test')}
        return cache[name]
    return splits


@pytest.fixture(scope='module')
def splits(load):
    return load('peptides-func')


@pytest.mark.parametrize('name', ['peptides-func', 'peptides-struct',
                                  'pcqm-contact'])
def test_molecules_follow_the_ogb_encoding(load, name):
    for dataset in load(name).values():
        for data in dataset:
            for col, dim in enumerate(OGB_ATOM_FEATURE_DIMS):
                assert 0 <= int(data.x[:, col].min())
                assert int(data.x[:, col].max()) < dim
            for col, dim in enumerate(OGB_BOND_FEATURE_DIMS):
                assert int(data.edge_attr[:, col].max()) < dim
            # Each bond twice in a row with the same features, and the
            # degree column is the graph's degree.
            flipped = data.edge_index.flip(0)
            assert torch.equal(data.edge_index[:, 1::2], flipped[:, 0::2])
            assert torch.equal(data.edge_attr[0::2], data.edge_attr[1::2])
            assert torch.equal(data.x[:, 2], degree(data.edge_index[0],
                                                    data.num_nodes).long())


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


@pytest.mark.parametrize('name', list(NAMES))
def test_every_sample_in_its_archive_format(load, name):
    task = lrgb_task(name)
    splits = load(name)
    assert [len(d) for d in splits.values()] == SIZES[name]
    for dataset in splits.values():
        for data in dataset:
            n, e = data.num_nodes, data.num_edges
            assert 16 <= n <= 60
            assert data.x.shape == (n, task.node_channels)
            assert data.edge_attr.shape == (e, task.edge_channels)
            dtype = torch.long if task.categorical else torch.float
            assert data.x.dtype == data.edge_attr.dtype == dtype
            # Undirected: every edge also in the other direction.
            pairs = set(map(tuple, data.edge_index.t().tolist()))
            assert pairs == {(j, i) for i, j in pairs} and len(pairs) == e
            if name == 'peptides-func':
                assert set(data.y.view(-1).tolist()) <= {0.0, 1.0}
            if task.level == 'graph':
                assert data.y.shape == (1, task.out_channels)
            elif task.level == 'node':
                assert data.y.shape == (n, ) and data.y.dtype == torch.long
            else:
                assert data.edge_label.dtype == torch.long
                assert set(data.edge_label.tolist()) == {0, 1}


def test_struct_targets_follow_the_structure(load):
    center, scale = torch.tensor(STRUCT_CENTER), torch.tensor(STRUCT_SCALE)
    for dataset in load('peptides-struct').values():
        for data in dataset:
            n = data.num_nodes
            dist = torch.stack([distances(data, [a]) for a in range(n)])
            pairs = dist[torch.triu_indices(n, n, 1).unbind()]
            deg = degree(data.edge_index[0], n)
            hetero = torch.isin(data.x[:, 0],
                                torch.tensor([NITROGEN, OXYGEN, SULFUR]))
            aromatic = data.x[:, 7] == 1
            near = (dist[:, aromatic].min(1).values <= NEAR_AROMATIC
                    if bool(aromatic.any()) else torch.zeros(n, dtype=bool))
            value = torch.tensor([
                n, data.num_edges / 2 - n + 1, aromatic.sum(), hetero.sum(),
                (deg >= 3).sum(), dist.max(), dist.max(1).values.min(),
                pairs.float().mean(), (pairs >= FAR_PAIR).float().mean(),
                dist[hetero][:, hetero].max(), (~near).sum()],
                dtype=torch.float)
            assert torch.allclose(data.y.view(-1) * scale + center, value,
                                  atol=1e-4), (data.y, value)
    # Standardised: every target spreads over about one unit.
    y = torch.cat([d.y for d in load('peptides-struct')['train']])
    assert bool((y.std(0) > 0.5).all() and (y.std(0) < 1.5).all())
    assert bool((y.mean(0).abs() < 0.6).all())


@pytest.mark.parametrize('name', ['pascalvoc-sp', 'coco-sp'])
def test_superpixel_labels_follow_scene_and_kind(load, name):
    kinds = NUM_KINDS[name]
    scenes = torch.tensor(SCENES, dtype=torch.float)
    colors = torch.tensor(KINDS[:kinds], dtype=torch.float)
    seen = set()
    for dataset in load(name).values():
        for data in dataset:
            y = data.y
            if name == 'coco-sp':  # loaded classes of 81 -> sample classes
                y = torch.tensor([COCO_CLASSES.index(c) for c in y.tolist()])
            assert bool((data.x >= 0).all() and (data.x <= 1).all())
            background = data.x[y == 0, :3].mean(0, keepdim=True)
            scene = int(F.cosine_similarity(background, scenes).argmax())
            for c in y.unique().tolist():
                seen.add(c)
                if c == 0:
                    continue
                # Class 1 + scene * kinds + kind; the kind is the object's
                # colour, the scene the background's.
                color = data.x[y == c, :3].mean(0, keepdim=True)
                kind = int(F.cosine_similarity(color, colors).argmax())
                assert c == 1 + scene * kinds + kind
    assert seen == set(range(1 + len(SCENES) * kinds))
    val = torch.cat([d.y for d in load(name)['val']])
    assert len(val.unique()) == 1 + len(SCENES) * kinds  # all in validation
    assert 0.4 < float((val == 0).float().mean()) < 0.8


def test_coco_sample_stores_original_category_ids(load):
    # The raw files hold COCO's ids, which the loader maps to 0-80 (the
    # gaps of the id list close: original 13 is class 12).
    train = load('coco-sp')['train']
    with open(osp.join(train.raw_dir, 'train.pickle'), 'rb') as f:
        graphs = pickle.load(f)
    ids = [COCO_ORIGINAL_LABELS[c] for c in COCO_CLASSES]
    assert ids[4:7] == [13, 14, 21]
    for graph, data in zip(graphs, train):
        assert set(graph[3].tolist()) <= set(ids)
        assert data.y.tolist() == [COCO_CLASSES[ids.index(v)]
                                   for v in graph[3].tolist()]


def test_contacts_follow_the_structure(load):
    for dataset in load('pcqm-contact').values():
        for data in dataset:
            elem, aromatic = data.x[:, 0], data.x[:, 7] == 1
            n = data.num_nodes
            dist = torch.stack([distances(data, [a]) for a in range(n)])
            (src, dst), label = data.edge_label_index, data.edge_label
            assert bool((dist[src, dst] >= 5).all())
            pos = set(zip(src[label == 1].tolist(), dst[label == 1].tolist()))
            neg = set(zip(src[label == 0].tolist(), dst[label == 0].tolist()))
            assert pos == {(j, i) for i, j in pos} and not (pos & neg)
            assert int((label == 0).sum()) == len(pos) > 0
            for i, j in pos:  # a sulfur-ring or a nitrogen-oxygen contact
                pair = {int(elem[i]), int(elem[j])}
                assert pair == {NITROGEN, OXYGEN} or (
                    SULFUR in pair and bool(aromatic[i] ^ aromatic[j]))
            sulfur = (elem == SULFUR).nonzero().view(-1).tolist()
            ring = aromatic.nonzero().view(-1).tolist()
            assert {(s, r) for s in sulfur for r in ring
                    if dist[s, r] >= 5} <= pos
