"""Tiny fake raw folders in the exact on-disk format of the five LRGB
archives, so that :class:`torch_geometric.datasets.LRGBDataset` processes
them without downloading anything.

Formats (see ``LRGBDataset.process``):

* ``peptides-func`` / ``peptides-struct``: ``raw/{train,val,test}.pt``, each
  a ``torch.save``-d list of ``(x, edge_attr, edge_index, y)`` tuples with
  ``x`` int64 ``[N, 9]`` (OGB atom features), ``edge_attr`` int64 ``[E, 3]``,
  ``edge_index`` int64 ``[2, E]``, ``y`` float ``[1, 10]`` (binary) or
  ``[1, 11]`` (regression).
* ``pascalvoc-sp`` / ``coco-sp``: ``raw/{train,val,test}.pickle``, each a
  pickled list of ``(x, edge_attr, edge_index, y)`` with the types of the
  real pickles: ``x`` a float16 tensor ``[N, 14]`` (the archives store
  ``torch.Tensor(x).half()``), ``edge_attr`` a float tensor ``[E, 2]``,
  ``edge_index`` int64 ``[2, E]``, ``y`` ``[N]`` node labels as a NumPy
  array, ``int32`` for PascalVOC-SP and ``uint8`` for COCO-SP (COCO:
  original category ids, remapped to ``0..80`` by ``LRGBDataset``).
  ``LRGBDataset`` turns them into PyG's types: ``x`` float32, ``y`` int64.
* ``pcqm-contact``: ``raw/{train,val,test}.pt``, lists of ``(x, edge_attr,
  edge_index, edge_label_index, edge_label)``.
"""
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from samsa_geo.datasets._lrgb_raw import COCO_ORIGINAL_LABELS, save_lrgb_raw

LRGB_NAMES: List[str] = ['pascalvoc-sp', 'coco-sp', 'pcqm-contact',
                         'peptides-func', 'peptides-struct']


_OGB_ATOM_DIMS = [119, 5, 12, 12, 10, 6, 6, 2, 2]
_OGB_BOND_DIMS = [5, 6, 2]
SPLIT_SIZES: Dict[str, int] = {'train': 4, 'val': 2, 'test': 3}


def _undirected_graph(num_nodes: int, gen: torch.Generator) -> Tensor:
    # A path plus a few random chords, both directions stored.
    src = torch.arange(num_nodes - 1)
    chords = torch.randint(0, num_nodes, (2, num_nodes // 3), generator=gen)
    chords = chords[:, chords[0] != chords[1]]
    ei = torch.cat([torch.stack([src, src + 1]), chords], dim=1)
    ei = torch.cat([ei, ei.flip(0)], dim=1)
    return torch.unique(ei, dim=1)


def _categorical(num: int, dims: List[int], gen: torch.Generator) -> Tensor:
    cols = [torch.randint(0, d, (num, ), generator=gen) for d in dims]
    return torch.stack(cols, dim=1)


def make_lrgb_graph(name: str, num_nodes: int, gen: torch.Generator) -> Tuple:
    """One raw graph tuple of dataset :obj:`name`, as stored in its archive."""
    ei = _undirected_graph(num_nodes, gen)
    num_edges = ei.size(1)
    if name in ('peptides-func', 'peptides-struct', 'pcqm-contact'):
        x = _categorical(num_nodes, _OGB_ATOM_DIMS, gen)
        edge_attr = _categorical(num_edges, _OGB_BOND_DIMS, gen)
        if name == 'peptides-func':
            y = (torch.rand(1, 10, generator=gen) < 0.4).float()
            return x, edge_attr, ei, y
        if name == 'peptides-struct':
            return x, edge_attr, ei, torch.randn(1, 11, generator=gen)
        num_labeled = 2 * num_nodes
        label_index = torch.randint(0, num_nodes, (2, num_labeled),
                                    generator=gen)
        label = (torch.rand(num_labeled, generator=gen) < 0.3).long()
        return x, edge_attr, ei, label_index, label
    if name in ('pascalvoc-sp', 'coco-sp'):
        x = torch.rand(num_nodes, 14, generator=gen).half()
        edge_attr = torch.rand(num_edges, 2, generator=gen)
        if name == 'pascalvoc-sp':
            y = torch.randint(0, 21, (num_nodes, ), generator=gen)
            y = y.numpy().astype(np.int32)
        else:
            pick = torch.randint(0, len(COCO_ORIGINAL_LABELS), (num_nodes, ),
                                 generator=gen)
            y = np.array(COCO_ORIGINAL_LABELS, dtype=np.uint8)[pick.numpy()]
        return x, edge_attr, ei, y
    raise ValueError(f"Expected 'name' to be one of {LRGB_NAMES} (got {name!r})")


def write_lrgb_raw(root: str, name: str, seed: int = 0,
                   sizes: Optional[Dict[str, int]] = None,
                   num_nodes: Tuple[int, int] = (5, 16)) -> str:
    """Writes ``root/<name>/raw/{train,val,test}.{pt,pickle}`` in the format
    of the LRGB archive :obj:`name` (lower case, as ``LRGBDataset.names``) and
    returns the raw folder. ``LRGBDataset(root, name)`` then skips the
    download and processes these files.

    Args:
        root (str): Dataset root passed to ``LRGBDataset``.
        name (str): One of :obj:`LRGB_NAMES` (case-insensitive).
        seed (int): Seed of the random contents.
        sizes (dict, optional): Graphs per split (default :obj:`SPLIT_SIZES`).
        num_nodes (tuple): Range ``[low, high)`` of graph sizes.
    """
    name = name.lower()
    if name not in LRGB_NAMES:
        raise ValueError(f"Expected 'name' to be one of {LRGB_NAMES} "
                         f"(got {name!r})")
    sizes = sizes or SPLIT_SIZES
    gen = torch.Generator().manual_seed(seed)
    graphs = {}
    for split in ('train', 'val', 'test'):
        graphs[split] = []
        for _ in range(sizes[split]):
            n = int(torch.randint(num_nodes[0], num_nodes[1], (1, ),
                                  generator=gen))
            graphs[split].append(make_lrgb_graph(name, n, gen))
    return save_lrgb_raw(root, name, graphs)
