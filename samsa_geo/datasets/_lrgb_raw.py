r"""The raw files of an LRGB archive, as
:class:`torch_geometric.datasets.LRGBDataset` reads them after download:
``root/<name>/raw/{train,val,test}.pt`` (Peptides-func, Peptides-struct,
PCQM-Contact: ``torch.save``-d lists of graph tuples) or
``.../{train,val,test}.pickle`` (PascalVOC-SP, COCO-SP: pickled lists).
"""
import os
import os.path as osp
import pickle
from typing import Dict, List, Tuple

import torch

SPLITS = ('train', 'val', 'test')


def save_lrgb_raw(root: str, name: str,
                  graphs: Dict[str, List[Tuple]]) -> str:
    r"""Writes the graph tuples of each split into the raw folder of LRGB
    dataset :obj:`name` (lower case, as :obj:`LRGBDataset.names`) under
    :obj:`root` and returns that folder. The tuples must be those of the
    archive: :obj:`(x, edge_attr, edge_index, y)`, or
    :obj:`(x, edge_attr, edge_index, edge_label_index, edge_label)` for
    PCQM-Contact.

    Args:
        root (str): Dataset root passed to ``LRGBDataset``.
        name (str): Lower-case dataset name.
        graphs (dict): Graph tuples of :obj:`"train"`, :obj:`"val"` and
            :obj:`"test"`.
    """
    if sorted(graphs) != sorted(SPLITS):
        raise ValueError(f"Expected 'graphs' to hold the splits {SPLITS} "
                         f"(got {sorted(graphs)})")
    raw_dir = osp.join(root, name, 'raw')
    os.makedirs(raw_dir, exist_ok=True)
    for split in SPLITS:
        if name.endswith('-sp'):
            with open(osp.join(raw_dir, f'{split}.pickle'), 'wb') as f:
                pickle.dump(graphs[split], f)
        else:
            torch.save(graphs[split], osp.join(raw_dir, f'{split}.pt'))
    return raw_dir
