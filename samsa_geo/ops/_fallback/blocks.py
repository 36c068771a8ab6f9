"""Distance blocks and query chunking shared by the kNN and radius
fallbacks."""
import bisect
from typing import Iterator, List, Optional, Tuple

import torch
from torch import Tensor

DEFAULT_CHUNK_SIZE = 2**22
DEFAULT_CUDA_CHUNK_SIZE = 2**26


def default_chunk_size(device: torch.device) -> int:
    r"""Entries of one distance block when the caller gives no
    :obj:`chunk_size`: large on CUDA, where blocks are cheap and few kernels
    matter, small on CPU to bound memory."""
    return DEFAULT_CUDA_CHUNK_SIZE if device.type == 'cuda' \
        else DEFAULT_CHUNK_SIZE


def distances(y: Tensor, x: Tensor, cosine: bool) -> Tensor:
    r"""Ranking distances :obj:`[..., Q, S]` between feature-major queries
    :obj:`[F, ..., Q]` and candidates :obj:`[F, ..., S]`.

    Euclidean distances are squared and, for up to 8 features, summed over
    the features in order like :obj:`torch_cluster`, one broadcast plane at
    a time (no :obj:`[..., Q, S, F]` temporary); more features go through
    :meth:`torch.cdist`. Cosine distances expect normalised points.
    """
    if cosine:
        # [..., Q, F] @ [..., F, S]
        return 1.0 - y.movedim(0, -1) @ x.movedim(0, -2)
    if y.size(0) > 8:
        return torch.cdist(y.movedim(0, -1), x.movedim(0, -1),
                           compute_mode='donot_use_mm_for_euclid_dist')
    # Explicit outputs: fresh broadcast results are slower to write on CPU.
    dist = y.new_empty(y.shape[1:] + x.shape[-1:])  # [..., Q, S]
    torch.sub(y[0].unsqueeze(-1), x[0].unsqueeze(-2), out=dist).square_()
    if y.size(0) > 1:
        diff = torch.empty_like(dist)
        for f in range(1, y.size(0)):
            torch.sub(y[f].unsqueeze(-1), x[f].unsqueeze(-2), out=diff)
            dist.add_(diff.square_())
    return dist


def exclude(dist: Tensor, mask: Tensor) -> Tensor:
    r"""Sets the ranking distances :obj:`dist` of the candidates in
    :obj:`mask` (padding, other examples) to :math:`+\infty`, in place, so
    that they rank strictly after every real candidate: non-finite real
    distances (overflowing squares, NaN) are first clamped to the largest
    finite value of the dtype. Finite distances are left unchanged."""
    big = torch.finfo(dist.dtype).max
    dist.nan_to_num_(nan=big, posinf=big)
    return dist.masked_fill_(mask, float('inf'))


def pad(src: Tensor, ptr: Tensor, sizes: List[int], fill: float) -> Tensor:
    r"""Pads the examples of :obj:`src` :obj:`[N, F]` into feature-major
    :obj:`[F, B, N_max]`, filling missing points with :obj:`fill`."""
    batch_size, n_max = len(sizes), max(sizes)
    if min(sizes) == n_max:
        return src.t().reshape(src.size(1), batch_size, n_max)
    num_nodes, device = src.size(0), src.device
    batch = torch.repeat_interleave(
        torch.arange(batch_size, device=device), ptr[1:] - ptr[:-1],
        output_size=num_nodes)
    local = torch.arange(num_nodes, device=device) - ptr[batch]
    out = src.new_full((src.size(1), batch_size, n_max), fill)
    out[:, batch, local] = src.t()
    return out


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


def candidate_ranges(ptr_x: Tensor, batch_y: Tensor) -> Tuple[Tensor, Tensor]:
    r"""The candidate range ``[start, end)`` of every query."""
    return ptr_x[batch_y], ptr_x[batch_y + 1]


def span_block(x: Tensor, y: Tensor, cand_start: Tensor, cand_end: Tensor,
               start: List[int], end: List[int], q0: int, q1: int,
               cosine: Optional[bool]) -> Tuple[Tensor, int, int]:
    r"""Distances of queries ``y[q0:q1]`` to the candidates of their chunk,
    with candidates of other examples set to infinity.

    :obj:`cosine=None` gives true Euclidean distances (for radius search),
    otherwise the ranking distances of :func:`distances`, where candidates
    of other examples rank strictly last (see :func:`exclude`).
    """
    s0, s1 = start[q0], end[q1 - 1]
    yq, xs = y[q0:q1], x[s0:s1]
    if cosine is None:
        dist = torch.cdist(yq, xs, compute_mode='donot_use_mm_for_euclid_dist')
    else:
        dist = distances(yq.t(), xs.t(), cosine)  # [Q, S]
    if start[q1 - 1] != s0 or end[q0] != s1:
        cand = torch.arange(s0, s1, device=x.device)
        outside = ((cand.unsqueeze(0) < cand_start[q0:q1].unsqueeze(1))
                   | (cand.unsqueeze(0) >= cand_end[q0:q1].unsqueeze(1)))
        if cosine is None:  # radius: "< r" already fails for infinity
            dist = dist.masked_fill(outside, float('inf'))
        else:
            dist = exclude(dist, outside)
    return dist, s0, s1


def stack_edges(rows: List[Tensor], cols: List[Tensor],
                device: torch.device) -> Tensor:
    r"""Concatenates per-chunk rows and columns into :obj:`[2, E]`."""
    if len(rows) == 0:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    return torch.stack([torch.cat(rows), torch.cat(cols)], dim=0)
