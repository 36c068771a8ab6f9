"""Radius search in pure PyTorch."""
from typing import Optional

import torch
from torch import Tensor

from samsa_geo.ops._fallback import blocks


def radius(x: Tensor, y: Tensor, r: float, ptr_x: Tensor, batch_y: Tensor,
           max_num_neighbors: int = 32, ignore_same_index: bool = False,
           chunk_size: Optional[int] = None) -> Tensor:
    r"""For every row of :obj:`y`, the rows of :obj:`x` of the same example
    closer than :obj:`r`, at most :obj:`max_num_neighbors` of them (the ones
    with the smallest index), sorted by index.

    Returns :obj:`[2, E]` with row = index into :obj:`y`, col = index into
    :obj:`x`.
    """
    chunk_size = chunk_size or blocks.DEFAULT_CHUNK_SIZE
    cand_start, cand_end = blocks.candidate_ranges(ptr_x, batch_y)
    start, end = cand_start.tolist(), cand_end.tolist()
    rows, cols = [], []
    for q0, q1 in blocks.query_chunks(start, end, chunk_size):
        if end[q1 - 1] <= start[q0]:
            continue
        dist, s0, s1 = blocks.span_block(x, y, cand_start, cand_end, start,
                                         end, q0, q1, None)
        within = dist < r  # [Q, S]
        if ignore_same_index:
            cand = torch.arange(s0, s1, device=x.device)
            query = torch.arange(q0, q1, device=x.device)
            within &= cand.unsqueeze(0) != query.unsqueeze(1)
        within &= within.cumsum(dim=1) <= max_num_neighbors
        q, s = within.nonzero(as_tuple=True)
        rows.append(q + q0)
        cols.append(s + s0)
    return blocks.stack_edges(rows, cols, x.device)
