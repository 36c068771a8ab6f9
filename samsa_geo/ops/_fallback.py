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
DEFAULT_CUDA_CHUNK_SIZE = 2**26
PAD_SLACK = 2**12


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


def default_chunk_size(device: torch.device) -> int:
    r"""Entries of one distance block when the caller gives no
    :obj:`chunk_size`: large on CUDA, where blocks are cheap and few kernels
    matter, small on CPU to bound memory."""
    return DEFAULT_CUDA_CHUNK_SIZE if device.type == 'cuda' \
        else DEFAULT_CHUNK_SIZE


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


def example_blocks(size_x: List[int], size_y: List[int], chunk_size: int
                   ) -> Iterator[Tuple[int, int, int, int, int]]:
    r"""Splits padded examples into blocks ``(b0, b1, q0, q1, s)``: queries
    ``q0:q1`` of examples ``b0:b1`` against their first :obj:`s` candidates.

    Consecutive examples are grouped while the block, padded to the group's
    largest example, holds at most :obj:`chunk_size` entries; an example too
    large on its own is split into query-row chunks (at least one row).
    Groups without any query-candidate pair are skipped.
    """
    num_examples = len(size_x)
    if min(size_x) == max(size_x) and min(size_y) == max(size_y):
        # Equal sizes: fixed-size groups, no per-example loop.
        nx, ny = size_x[0], size_y[0]
        if nx * ny == 0:
            return
        if nx * ny > chunk_size:
            rows = max(chunk_size // nx, 1)
            for b in range(num_examples):
                for q0 in range(0, ny, rows):
                    yield b, b + 1, q0, min(q0 + rows, ny), nx
            return
        group = chunk_size // (nx * ny)
        for b0 in range(0, num_examples, group):
            yield b0, min(b0 + group, num_examples), 0, ny, nx
        return

    b0 = 0
    while b0 < num_examples:
        nx, ny = size_x[b0], size_y[b0]
        if nx * ny > chunk_size:
            rows = max(chunk_size // nx, 1)
            for q0 in range(0, ny, rows):
                yield b0, b0 + 1, q0, min(q0 + rows, ny), nx
            b0 += 1
            continue
        b1 = b0 + 1
        while b1 < num_examples:
            nx_next, ny_next = max(nx, size_x[b1]), max(ny, size_y[b1])
            if (b1 + 1 - b0) * nx_next * ny_next > chunk_size:
                break
            nx, ny, b1 = nx_next, ny_next, b1 + 1
        if nx * ny > 0:
            yield b0, b1, 0, ny, nx
        b0 = b1


def _distances(y: Tensor, x: Tensor, cosine: bool) -> Tensor:
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


def _pad(src: Tensor, ptr: Tensor, sizes: List[int], fill: float) -> Tensor:
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


def use_padding(size_x: List[int], size_y: List[int]) -> bool:
    r"""Whether padding every example to the largest one wastes little
    memory: at most a quarter of the points plus :obj:`PAD_SLACK` rows, for
    both :obj:`x` and :obj:`y` (always true for a single example)."""
    for sizes in (size_x, size_y):
        total = sum(sizes)
        if len(sizes) * max(sizes) > 1.25 * total + PAD_SLACK:
            return False
    return True


def knn(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, batch_y: Tensor,
        cosine: bool = False, chunk_size: Optional[int] = None,
        padded: Optional[bool] = None) -> Tensor:
    r"""For every row of :obj:`y`, the (up to) :obj:`k` nearest rows of
    :obj:`x` in the same example, sorted by distance.

    Batches of similar-sized examples (see :func:`use_padding`, or
    :obj:`padded=True`) are padded to :obj:`[F, B, N_max]` and ranked in
    groups of whole examples; very uneven batches walk contiguous query
    chunks over the candidate span of their examples instead. Both rank the
    same distances and give the same output.

    Returns :obj:`[2, E]` with row = index into :obj:`y`, col = index into
    :obj:`x`.
    """
    chunk_size = chunk_size or default_chunk_size(x.device)
    if cosine:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    batch_size = ptr_x.numel() - 1
    ptr_y = torch.searchsorted(
        batch_y, torch.arange(batch_size + 1, device=batch_y.device))
    # The only host copy before the output is known:
    size_x, size_y = torch.stack([ptr_x[1:] - ptr_x[:-1],
                                  ptr_y[1:] - ptr_y[:-1]]).tolist()
    if padded is None:
        padded = use_padding(size_x, size_y)
    if padded:
        return _knn_padded(x, y, k, ptr_x, ptr_y, size_x, size_y, cosine,
                           chunk_size)
    return _knn_span(x, y, k, ptr_x, batch_y, cosine, chunk_size)


def _knn_padded(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, ptr_y: Tensor,
                size_x: List[int], size_y: List[int], cosine: bool,
                chunk_size: int) -> Tensor:
    r"""The padded path of :func:`knn`; every block is one top-k call on
    :obj:`[G, Q, S]`, without host synchronisation inside the loop."""
    device, batch_size = x.device, len(size_x)
    nx_max, ny_max = max(size_x), max(size_y)
    k_max = min(k, nx_max)
    # Missing candidates are +inf, which squared differences keep; cosine
    # (and cdist) blocks are masked instead.
    masked = cosine or x.size(1) > 8
    xp = _pad(x, ptr_x, size_x, 0.0 if masked else float('inf'))
    yp = _pad(y, ptr_y, size_y, 0.0)
    count_x = ptr_x[1:] - ptr_x[:-1]
    if masked:
        missing = (torch.arange(nx_max, device=device).unsqueeze(0)
                   >= count_x.unsqueeze(1)).unsqueeze(1)  # [B, 1, N_max]

    full = (min(size_y) == ny_max and min(size_x) >= k_max)
    nbr = (torch.empty if full else torch.zeros)(
        batch_size, ny_max, k_max, dtype=torch.long, device=device)
    for b0, b1, q0, q1, s in example_blocks(size_x, size_y, chunk_size):
        dist = _distances(yp[:, b0:b1, q0:q1], xp[:, b0:b1, :s], cosine)
        if masked and min(size_x[b0:b1]) < s:
            dist.masked_fill_(missing[b0:b1, :, :s], float('inf'))
        kk = min(k, s)
        nbr[b0:b1, q0:q1, :kk] = dist.topk(kk, dim=-1, largest=False,
                                           sorted=True)[1]  # [G, Q, kk]

    rows = (ptr_y[:-1].view(-1, 1, 1) + torch.arange(
        ny_max, device=device).view(1, -1, 1)).expand_as(nbr)
    cols = nbr + ptr_x[:-1].view(-1, 1, 1)  # [B, M_max, k_max]
    if full:
        return torch.stack([rows.reshape(-1), cols.view(-1)], dim=0)
    count_y = ptr_y[1:] - ptr_y[:-1]
    keep = ((torch.arange(ny_max, device=device).view(1, -1, 1)
             < count_y.view(-1, 1, 1))
            & (torch.arange(k_max, device=device).view(1, 1, -1)
               < count_x.clamp(max=k).view(-1, 1, 1)))
    return torch.stack([rows[keep], cols[keep]], dim=0)


def _block(x: Tensor, y: Tensor, cand_start: Tensor, cand_end: Tensor,
           start: List[int], end: List[int], q0: int, q1: int,
           cosine: Optional[bool]) -> Tuple[Tensor, int, int]:
    r"""Distances of queries ``y[q0:q1]`` to the candidates of their chunk,
    with candidates of other examples set to infinity.

    :obj:`cosine=None` gives true Euclidean distances (for :func:`radius`),
    otherwise the ranking distances of :func:`_distances`.
    """
    s0, s1 = start[q0], end[q1 - 1]
    yq, xs = y[q0:q1], x[s0:s1]
    if cosine is None:
        dist = torch.cdist(yq, xs, compute_mode='donot_use_mm_for_euclid_dist')
    else:
        dist = _distances(yq.t(), xs.t(), cosine)  # [Q, S]
    if start[q1 - 1] != s0 or end[q0] != s1:
        cand = torch.arange(s0, s1, device=x.device)
        outside = ((cand.unsqueeze(0) < cand_start[q0:q1].unsqueeze(1))
                   | (cand.unsqueeze(0) >= cand_end[q0:q1].unsqueeze(1)))
        dist = dist.masked_fill(outside, float('inf'))
    return dist, s0, s1


def _candidate_ranges(ptr_x: Tensor, batch_y: Tensor) -> Tuple[Tensor, Tensor]:
    return ptr_x[batch_y], ptr_x[batch_y + 1]


def _knn_span(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, batch_y: Tensor,
              cosine: bool, chunk_size: int) -> Tensor:
    r"""The span path of :func:`knn`: contiguous query chunks, each against
    all candidates of the examples it touches."""
    cand_start, cand_end = _candidate_ranges(ptr_x, batch_y)
    start, end = cand_start.tolist(), cand_end.tolist()
    count = (cand_end - cand_start).clamp(max=k)  # neighbours per query
    rows, cols = [], []
    for q0, q1 in query_chunks(start, end, chunk_size):
        if end[q1 - 1] <= start[q0]:  # no candidates at all
            continue
        dist, s0, s1 = _block(x, y, cand_start, cand_end, start, end, q0, q1,
                              cosine)
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
    start, end = cand_start.tolist(), cand_end.tolist()
    rows, cols = [], []
    for q0, q1 in query_chunks(start, end, chunk_size):
        if end[q1 - 1] <= start[q0]:
            continue
        dist, s0, s1 = _block(x, y, cand_start, cand_end, start, end, q0, q1,
                              None)
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
