r"""The superpixel fixtures hold the types of the real LRGB pickles (``x`` a
float16 tensor, ``y`` a NumPy array: int32 for PascalVOC-SP, uint8 for
COCO-SP), and the loader gives PyG's types: ``x`` float32, ``y`` int64."""
import os.path as osp
import pickle

import numpy as np
import pytest
import torch

from samsa_geo.datasets import LRGBDataset
from samsa_geo.testing.lrgb_fixtures import (COCO_ORIGINAL_LABELS,
                                             SPLIT_SIZES, write_lrgb_raw)


@pytest.mark.parametrize('name,label_dtype', [('PascalVOC-SP', np.int32),
                                              ('COCO-SP', np.uint8)])
def test_superpixel_raw_types_load_as_pyg_types(tmp_path, forbid, name,
                                                label_dtype):
    forbid(LRGBDataset, 'download')
    raw_dir = write_lrgb_raw(str(tmp_path), name)
    for split in ('train', 'val', 'test'):
        with open(osp.join(raw_dir, f'{split}.pickle'), 'rb') as f:
            graphs = pickle.load(f)
        assert len(graphs) == SPLIT_SIZES[split]
        for x, edge_attr, edge_index, y in graphs:
            assert isinstance(x, torch.Tensor) and x.dtype == torch.float16
            assert isinstance(y, np.ndarray) and y.dtype == label_dtype
            assert x.shape == (y.shape[0], 14) and y.ndim == 1
            assert edge_attr.is_floating_point() and edge_attr.size(1) == 2
            assert edge_index.dtype == torch.long

        ds = LRGBDataset(str(tmp_path), name, split=split)
        assert len(ds) == len(graphs)
        assert ds._data.x.dtype == torch.float32
        assert ds._data.edge_attr.dtype == torch.float32
        assert ds._data.y.dtype == torch.long
        for data, (x, edge_attr, edge_index, y) in zip(ds, graphs):
            # float16 -> float32 is exact.
            assert torch.equal(data.x, x.float())
            assert torch.equal(data.edge_attr, edge_attr.float())
            assert torch.equal(data.edge_index, edge_index)
            labels = y.astype(np.int64).tolist()
            if name == 'COCO-SP':  # original category ids -> 0..80
                labels = [COCO_ORIGINAL_LABELS.index(v) for v in labels]
            assert data.y.tolist() == labels
            assert 0 <= min(labels) and max(labels) < (
                21 if name == 'PascalVOC-SP' else 81)
