"""Pure-PyTorch implementations of the geometry ops.

The public functions in :mod:`samsa_geo.ops` validate their input and
dispatch either to the compiled extensions (:obj:`torch_cluster`,
:obj:`torch_scatter`) or to the functions here, which reproduce the
extensions' semantics and output layout.
"""
import bisect
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_CHUNK_SIZE = 2**22


def fps(src: Tensor, ptr: Tensor, ratio: Tensor,
        random_start: bool) -> Tensor:
    r"""Farthest point sampling over all examples at once.

    The examples are padded to :obj:`[B, N_max]` and every iteration picks the
    next point of each example simultaneously; only the number of samples is
    looped over.
    """
    num_nodes, device = src.size(0), src.device
    batch_size = ptr.numel() - 1
    deg = ptr[1:] - ptr[:-1]
    # Same arithmetic as torch_cluster so sample counts agree bit for bit:
    num_samples = torch.ceil(deg.to(torch.float) * ratio).long()
    total = int(num_samples.sum())
    if total == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    n_max, s_max = int(deg.max()), int(num_samples.max())

    batch = torch.repeat_interleave(
        torch.arange(batch_size, device=device), deg, output_size=num_nodes)
    local = torch.arange(num_nodes, device=device) - ptr[batch]
    # Feature-major padding: every feature is a contiguous [B, N_max] plane,
    # which keeps the per-step distance update a handful of flat kernels.
    pos = src.new_zeros(src.size(1), batch_size, n_max)  # [F, B, N_max]
    pos[:, batch, local] = src.t()
    valid = torch.zeros(batch_size, n_max, dtype=torch.bool, device=device)
    valid[batch, local] = True

    arange = torch.arange(batch_size, device=device)
    if random_start:
        start = (torch.rand(batch_size, device=device) * deg).long()
        start = torch.minimum(start, (deg - 1).clamp(min=0))
    else:
        start = torch.zeros(batch_size, dtype=torch.long, device=device)

    out = torch.empty(batch_size, s_max, dtype=torch.long, device=device)
    out[:, 0] = start
    # Padding slots hold -1 so that they never win the arg-max:
    dist = _sq_dist_to(pos, pos[:, arange, start]).masked_fill(~valid, -1.0)
    for i in range(1, s_max):
        idx = dist.argmax(dim=1)  # [B]
        out[:, i] = idx
        dist = torch.minimum(dist, _sq_dist_to(pos, pos[:, arange, idx]))

    keep = torch.arange(s_max, device=device) < num_samples.unsqueeze(1)
    return (out + ptr[:-1].unsqueeze(1))[keep]


def _sq_dist_to(pos: Tensor, centre: Tensor) -> Tensor:
    r"""Squared distances :obj:`[B, N_max]` of feature-major points
    :obj:`[F, B, N_max]` to one centre per example :obj:`[F, B]`, summed
    over features in order like :obj:`torch_cluster`."""
    if pos.size(0) > 8:
        return (pos - centre.unsqueeze(-1)).square().sum(0)
    dist = (pos[0] - centre[0].unsqueeze(1)).square()
    for f in range(1, pos.size(0)):
        dist = dist + (pos[f] - centre[f].unsqueeze(1)).square()
    return dist


def query_chunks(cand_start: List[int], cand_end: List[int],
                 chunk_size: int) -> Iterator[Tuple[int, int]]:
    r"""Splits the sorted queries into contiguous chunks ``[q0, q1)`` whose
    query-by-candidate block holds at most :obj:`chunk_size` entries (or a
    single query).

    Query :obj:`q` may only see candidates ``[cand_start[q], cand_end[q])``;
    both lists are non-decreasing because the batch vectors are sorted, so
    the block size of a chunk grows monotonically with its end and can be
    bisected.
    """
    num_queries, q0 = len(cand_start), 0

    class _Cost:
        def __getitem__(self, q1: int) -> int:
            return (q1 - q0) * max(cand_end[q1 - 1] - cand_start[q0], 1)

        def __len__(self) -> int:
            return num_queries + 1

    cost = _Cost()
    while q0 < num_queries:
        q1 = bisect.bisect_right(cost, chunk_size, lo=q0 + 1) - 1
        q1 = min(max(q1, q0 + 1), num_queries)
        yield q0, q1
        q0 = q1


def _block(x: Tensor, y: Tensor, cand_start: Tensor, cand_end: Tensor,
           q0: int, q1: int, cosine: bool
           ) -> Tuple[Tensor, int, int]:
    r"""Distances of queries ``y[q0:q1]`` to the candidates of their chunk,
    with candidates of other examples set to infinity."""
    s0, s1 = int(cand_start[q0]), int(cand_end[q1 - 1])
    yq, xs = y[q0:q1], x[s0:s1]
    if cosine:
        dist = 1.0 - yq @ xs.t()  # [Q, S]
    else:
        dist = torch.cdist(yq, xs, compute_mode='donot_use_mm_for_euclid_dist')
    if int(cand_start[q1 - 1]) != s0 or int(cand_end[q0]) != s1:
        cand = torch.arange(s0, s1, device=x.device)
        outside = ((cand.unsqueeze(0) < cand_start[q0:q1].unsqueeze(1))
                   | (cand.unsqueeze(0) >= cand_end[q0:q1].unsqueeze(1)))
        dist = dist.masked_fill(outside, float('inf'))
    return dist, s0, s1


def _candidate_ranges(ptr_x: Tensor, batch_y: Tensor) -> Tuple[Tensor, Tensor]:
    return ptr_x[batch_y], ptr_x[batch_y + 1]


def knn(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, batch_y: Tensor,
        cosine: bool = False, chunk_size: Optional[int] = None) -> Tensor:
    r"""For every row of :obj:`y`, the (up to) :obj:`k` nearest rows of
    :obj:`x` in the same example, sorted by distance.

    Returns :obj:`[2, E]` with row = index into :obj:`y`, col = index into
    :obj:`x`.
    """
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
    if cosine:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    cand_start, cand_end = _candidate_ranges(ptr_x, batch_y)
    count = (cand_end - cand_start).clamp(max=k)  # neighbours per query
    rows, cols = [], []
    for q0, q1 in query_chunks(cand_start.tolist(), cand_end.tolist(),
                               chunk_size):
        if int(count[q0:q1].max()) == 0:
            continue
        dist, s0, s1 = _block(x, y, cand_start, cand_end, q0, q1, cosine)
        kk = min(k, s1 - s0)
        idx = dist.topk(kk, dim=1, largest=False, sorted=True)[1]  # [Q, kk]
        keep = (torch.arange(kk, device=x.device).unsqueeze(0)
                < count[q0:q1].unsqueeze(1))
        query = torch.arange(q0, q1, device=x.device).unsqueeze(1)
        rows.append(query.expand(-1, kk)[keep])
        cols.append((idx + s0)[keep])
    return _stack(rows, cols, x.device)


def radius(x: Tensor, y: Tensor, r: float, ptr_x: Tensor, batch_y: Tensor,
           max_num_neighbors: int = 32, ignore_same_index: bool = False,
           chunk_size: Optional[int] = None) -> Tensor:
    r"""For every row of :obj:`y`, the rows of :obj:`x` of the same example
    closer than :obj:`r`, at most :obj:`max_num_neighbors` of them (the ones
    with the smallest index), sorted by index.

    Returns :obj:`[2, E]` with row = index into :obj:`y`, col = index into
    :obj:`x`.
    """
    chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
    cand_start, cand_end = _candidate_ranges(ptr_x, batch_y)
    rows, cols = [], []
    for q0, q1 in query_chunks(cand_start.tolist(), cand_end.tolist(),
                               chunk_size):
        if int(cand_end[q1 - 1]) <= int(cand_start[q0]):
            continue
        dist, s0, s1 = _block(x, y, cand_start, cand_end, q0, q1, False)
        within = dist < r  # [Q, S]
        if ignore_same_index:
            cand = torch.arange(s0, s1, device=x.device)
            query = torch.arange(q0, q1, device=x.device)
            within &= cand.unsqueeze(0) != query.unsqueeze(1)
        within &= within.cumsum(dim=1) <= max_num_neighbors
        q, s = within.nonzero(as_tuple=True)
        rows.append(q + q0)
        cols.append(s + s0)
    return _stack(rows, cols, x.device)


def _stack(rows: List[Tensor], cols: List[Tensor],
           device: torch.device) -> Tensor:
    if len(rows) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    return torch.stack([torch.cat(rows), torch.cat(cols)], dim=0)


def broadcast_index(index: Tensor, src: Tensor, dim: int) -> Tensor:
    r"""Expands a 1-dimensional :obj:`index` along :obj:`dim` to the shape of
    :obj:`src`."""
    if index.dim() == 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape)  # [1, .., N, .., 1]
    return index.expand_as(src)


def scatter(src: Tensor, index: Tensor, dim: int, dim_size: int,
            reduce: str) -> Tensor:
    r"""Reduces slices of :obj:`src` that share an :obj:`index` along
    :obj:`dim`; empty segments are 0."""
    size = list(src.size())
    size[dim] = dim_size
    out = src.new_zeros(size)
    if reduce in ('sum', 'add', 'mean'):
        if index.dim() == 1:
            out.index_add_(dim, index, src)
        else:
            out.scatter_add_(dim, index, src)
        if reduce == 'mean':
            ones = torch.ones_like(index, dtype=src.dtype)
            count = src.new_zeros(dim_size if index.dim() == 1 else size)
            count = count.scatter_add_(index.dim() - 1 if index.dim() == 1
                                       else dim, index, ones).clamp(min=1)
            if index.dim() == 1:
                shape = [1] * src.dim()
                shape[dim] = -1
                count = count.view(shape)  # [1, .., dim_size, .., 1]
            if out.is_floating_point():
                out = out / count
            else:
                out = out.div(count, rounding_mode='floor')
        return out
    # With include_self=False untouched (empty) slots keep their 0.
    op = 'amax' if reduce == 'max' else 'amin'
    return out.scatter_reduce(dim, broadcast_index(index, src, dim), src, op,
                              include_self=False)
