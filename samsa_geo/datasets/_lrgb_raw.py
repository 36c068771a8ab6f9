r"""The raw files of an LRGB archive, as
:class:`torch_geometric.datasets.LRGBDataset` reads them after download:
``root/<name>/raw/{train,val,test}.pt`` (Peptides-func, Peptides-struct,
PCQM-Contact: ``torch.save``-d lists of graph tuples) or
``.../{train,val,test}.pickle`` (PascalVOC-SP, COCO-SP: pickled lists).
"""
import os
import os.path as osp
import pickle
import struct
from typing import Callable, Dict, List, Sequence, Tuple

import torch

SPLITS = ('train', 'val', 'test')

#: Original (non-contiguous) COCO category ids found in COCO-SP raw labels;
#: the loader maps id ``COCO_ORIGINAL_LABELS[c]`` to class ``c``.
COCO_ORIGINAL_LABELS: List[int] = (
    list(range(12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45))
    + list(range(46, 66)) + [67, 70] + list(range(72, 83))
    + list(range(84, 91)))


class _SeededPickler(pickle.Pickler):
    # A plain pickle of a tensor holds its storage as torch.save bytes (the
    # legacy format) keyed by the storage's memory address; here the key is
    # '0', so the same tensors pickle to the same bytes. The key is a
    # protocol-2 BINUNICODE string: b'X', its length, its digits.
    def reducer_override(self, obj):
        if not isinstance(obj, (torch.TypedStorage, torch.UntypedStorage)):
            return NotImplemented
        func, (data, ) = obj.__reduce__()  # torch.storage._load_from_bytes
        key = str(obj._cdata).encode()
        data = data.replace(b'X' + struct.pack('<I', len(key)) + key,
                            b'X' + struct.pack('<I', 1) + b'0')
        return func, (data, )


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
                _SeededPickler(f).dump(graphs[split])
        else:
            torch.save(graphs[split], osp.join(raw_dir, f'{split}.pt'))
    return raw_dir


def write_splits(root: str, name: str, draw: Callable[[], Tuple],
                 sizes: Sequence[int]) -> Tuple[Dict[str, List[Tuple]],
                                                List[int]]:
    r"""Draws :obj:`sizes` graph tuples of the splits :obj:`"train"`,
    :obj:`"val"` and :obj:`"test"`, in that order, with :obj:`draw`, writes
    them with :func:`save_lrgb_raw` and returns them and their node
    counts."""
    graphs = {split: [draw() for _ in range(count)]
              for split, count in zip(SPLITS, sizes)}
    save_lrgb_raw(root, name, graphs)
    return graphs, [g[0].size(0) for gs in graphs.values() for g in gs]
