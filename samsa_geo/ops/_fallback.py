"""Pure-PyTorch implementations of the geometry ops.

The public functions in :mod:`samsa_geo.ops` validate their input and
dispatch either to the compiled extensions (:obj:`torch_cluster`,
:obj:`torch_scatter`) or to the functions here, which reproduce the
extensions' semantics and output layout.
"""
import bisect
import itertools
import math
from typing import Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.ops._utils import batch_to_ptr

DEFAULT_CHUNK_SIZE = 2**22
DEFAULT_CUDA_CHUNK_SIZE = 2**26
PAD_SLACK = 2**12
# Exact grid path of knn() (CPU, auto): examples with at least this many
# candidates and queries, up to GRID_MAX_FEATURES Euclidean features.
GRID_MIN_POINTS = 20_000
GRID_MIN_QUERIES = 1_000
GRID_MAX_FEATURES = 3
GRID_CELL_POINTS = 1.5  # target points per occupied cell, times k
GRID_RADII = (1, 2)  # search rounds per grid
GRID_COARSEN = 4  # cell growth between grids
GRID_MAX_CELLS = 2**20  # cells per axis


def fps(src: Tensor, ptr: Tensor, ratio: Tensor,
        random_start: bool) -> Tensor:
    r"""Farthest point sampling over all examples at once.

    The examples are padded to :obj:`[B, N_max]` and every iteration picks the
    next point of each example simultaneously; only the number of samples is
    looped over.
    """
    device = src.device
    batch_size = ptr.numel() - 1
    deg = ptr[1:] - ptr[:-1]
    # Same arithmetic as torch_cluster so sample counts agree bit for bit:
    num_samples = torch.ceil(deg.to(torch.float) * ratio).long()
    total = int(num_samples.sum())
    if total == 0:
        return torch.empty(0, dtype=torch.long, device=device)
    sizes = deg.tolist()
    n_max, s_max = max(sizes), int(num_samples.max())
    pos = _pad(src, ptr, sizes, 0.0)  # [F, B, N_max]
    valid = torch.arange(n_max, device=device) < deg.unsqueeze(1)  # [B, N_max]

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
        padded: Optional[bool] = None, grid: Optional[bool] = None
        ) -> Tensor:
    r"""For every row of :obj:`y`, the (up to) :obj:`k` nearest rows of
    :obj:`x` in the same example, sorted by distance.

    Batches of similar-sized examples (see :func:`use_padding`, or
    :obj:`padded=True`) are padded to :obj:`[F, B, N_max]` and ranked in
    groups of whole examples; very uneven batches walk contiguous query
    chunks over the candidate span of their examples instead. Both rank the
    same distances and give the same output.

    Large Euclidean examples of up to three features (see
    :func:`grid_examples`; :obj:`grid=None` picks them on CPU,
    :obj:`grid=True` forces every eligible example, :obj:`grid=False` none)
    are ranked exactly on a spatial grid (:func:`_knn_grid`) instead of by
    brute force; the output is the same, except that among candidates at
    exactly equal distance the grid prefers the lower index while the brute
    force paths keep whatever order :meth:`torch.topk` gives.

    Returns :obj:`[2, E]` with row = index into :obj:`y`, col = index into
    :obj:`x`.
    """
    chunk_size = chunk_size or default_chunk_size(x.device)
    if cosine:
        x, y = F.normalize(x, dim=-1), F.normalize(y, dim=-1)
    batch_size = ptr_x.numel() - 1
    ptr_y = batch_to_ptr(batch_y, y.size(0), batch_size, y.device)
    # The only host copy before the output is known:
    size_x, size_y = torch.stack([ptr_x[1:] - ptr_x[:-1],
                                  ptr_y[1:] - ptr_y[:-1]]).tolist()
    large = grid_examples(size_x, size_y, x, cosine, grid)
    if large:
        return _knn_mixed(x, y, k, ptr_x, batch_y, size_x, size_y, large,
                          chunk_size, padded)
    return _knn_brute(x, y, k, ptr_x, ptr_y, batch_y, size_x, size_y,
                      cosine, chunk_size, padded)


def _knn_brute(x: Tensor, y: Tensor, k: int, ptr_x: Tensor, ptr_y: Tensor,
               batch_y: Tensor, size_x: List[int], size_y: List[int],
               cosine: bool, chunk_size: int,
               padded: Optional[bool]) -> Tensor:
    r"""Brute-force :func:`knn`: the padded path for similar-sized examples
    (or :obj:`padded=True`), the span path otherwise."""
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


def grid_examples(size_x: List[int], size_y: List[int], x: Tensor,
                  cosine: bool, grid: Optional[bool]) -> List[int]:
    r"""The examples that :func:`knn` ranks on a spatial grid.

    Only Euclidean distances of up to :obj:`GRID_MAX_FEATURES` features in
    single or double precision qualify. :obj:`grid=None` picks, on CPU, the
    examples with at least :obj:`GRID_MIN_POINTS` candidates and
    :obj:`GRID_MIN_QUERIES` queries; :obj:`grid=True` takes every example
    with candidates and queries, :obj:`grid=False` none.
    """
    if (grid is False or cosine or x.size(1) > GRID_MAX_FEATURES
            or x.dtype not in (torch.float32, torch.float64)):
        return []
    if grid is None:
        if x.device.type != 'cpu':
            return []
        return [b for b, (nx, ny) in enumerate(zip(size_x, size_y))
                if nx >= GRID_MIN_POINTS and ny >= GRID_MIN_QUERIES]
    return [b for b, (nx, ny) in enumerate(zip(size_x, size_y))
            if nx > 0 and ny > 0]


def _knn_mixed(x: Tensor, y: Tensor, k: int, ptr_x: Tensor,
               batch_y: Tensor, size_x: List[int], size_y: List[int],
               large: List[int], chunk_size: int,
               padded: Optional[bool]) -> Tensor:
    r"""Ranks the examples :obj:`large` on a grid (see :func:`_knn_grid`)
    and all others by brute force, then merges both by query."""
    device = x.device
    start_x = [0] + list(itertools.accumulate(size_x))
    start_y = [0] + list(itertools.accumulate(size_y))
    keep_x = torch.ones(x.size(0), dtype=torch.bool, device=device)
    keep_y = torch.ones(y.size(0), dtype=torch.bool, device=device)
    rest_x, rest_y = list(size_x), list(size_y)
    rows, cols = [], []
    for b in large:
        x0, x1, y0, y1 = start_x[b], start_x[b + 1], start_y[b], start_y[b + 1]
        nbr = _knn_grid(x[x0:x1], y[y0:y1], k, chunk_size)
        if nbr is None:  # degenerate or non-finite: brute force
            continue
        keep_x[x0:x1], keep_y[y0:y1] = False, False
        rest_x[b], rest_y[b] = 0, 0
        rows.append(torch.arange(y0, y1, device=device).repeat_interleave(
            nbr.size(1)))
        cols.append(nbr.view(-1) + x0)  # [M_b * K]
    if sum(rest_y) > 0 and sum(rest_x) > 0:
        sub_y = keep_y.nonzero().view(-1)
        sub_x = keep_x.nonzero().view(-1)
        sub_ptr_x = torch.tensor([0] + rest_x, device=device).cumsum(0)
        sub_ptr_y = torch.tensor([0] + rest_y, device=device).cumsum(0)
        out = _knn_brute(x[sub_x], y[sub_y], k, sub_ptr_x, sub_ptr_y,
                         batch_y[sub_y], rest_x, rest_y, False, chunk_size,
                         padded)
        rows.append(sub_y[out[0]])
        cols.append(sub_x[out[1]])
    if not rows:
        return torch.empty(2, 0, dtype=torch.long, device=device)
    row, col = torch.cat(rows), torch.cat(cols)
    if len(rows) > 1:  # each query's neighbours stay in distance order
        perm = row.argsort(stable=True)
        row, col = row[perm], col[perm]
    return torch.stack([row, col], dim=0)


def _topk_lowest_index(dist: Tensor, cand: Tensor,
                       kk: int) -> Tuple[Tensor, Tensor]:
    r"""The :obj:`kk` smallest of :obj:`dist` :obj:`[G, Q, S]` and their
    candidate indices :obj:`cand` :obj:`[G, S]`, ascending; equal distances
    are ordered by ascending index, so the result does not depend on the
    order of the candidates in the block."""
    extra = dist.size(-1) > kk  # a (k+1)-th value reveals boundary ties
    vals, arg = dist.topk(kk + extra, dim=-1, largest=False, sorted=True)
    nbr = cand.unsqueeze(-2).expand_as(dist).gather(-1, arg)  # [G, Q, kk']
    if kk > 1 and bool((vals[..., 1:kk] == vals[..., :kk - 1]).any()):
        # Ties inside the top-k: by index, then (stably) by distance.
        perm = nbr[..., :kk].argsort(dim=-1)
        v, c = vals[..., :kk].gather(-1, perm), nbr[..., :kk].gather(-1, perm)
        perm = v.argsort(dim=-1, stable=True)
        vals[..., :kk], nbr[..., :kk] = v.gather(-1, perm), c.gather(-1, perm)
    if extra:
        over = ((vals[..., kk] == vals[..., kk - 1])
                & torch.isfinite(vals[..., kk - 1]))
        vals, nbr = vals[..., :kk], nbr[..., :kk]
        if bool(over.any()):
            # Ties across the k-th place: the lowest indices win.
            g, q = over.nonzero(as_tuple=True)
            c = cand[g]  # [R, S]
            perm = c.argsort(dim=-1)
            d, c = dist[g, q].gather(-1, perm), c.gather(-1, perm)
            perm = d.argsort(dim=-1, stable=True)[:, :kk]
            vals[g, q], nbr[g, q] = d.gather(-1, perm), c.gather(-1, perm)
    return vals, nbr


def _grid_spacing(x: Tensor, k: int) -> Optional[Tuple[Tensor, float,
                                                       List[float]]]:
    r"""Origin, cell side and extent per axis of the finest grid of
    :obj:`x`: about :obj:`GRID_CELL_POINTS * k` points per cell on average
    over the bounding box, shrunk (at most 64 times) while the cell of an
    average point holds far more, as in clustered clouds. :obj:`None` for
    clouds at a single location."""
    n = x.size(0)
    lo, hi = x.amin(0), x.amax(0)
    ext = (hi.double() - lo.double()).tolist()
    axes = [e for e in ext if e > 0]
    if not axes:
        return None
    target = GRID_CELL_POINTS * k
    h_min = max(ext) / (GRID_MAX_CELLS - 2)
    h = max(math.exp((sum(math.log(e) for e in axes)
                      + math.log(target / n)) / len(axes)), h_min)
    xd = x.double() - lo.double()  # [N, F]
    for _ in range(3):
        cells = [int(e / h) + 1 for e in ext]
        ids = _cell_ids(torch.floor(xd / h), cells)
        count = ids.sort()[0].unique_consecutive(return_counts=True)[1]
        occupancy = float(count.double().square().sum()) / n
        if occupancy <= 3 * target:
            break
        h_new = max(h * max((target / occupancy) ** (1 / len(axes)), 0.25),
                    h_min)
        if h_new >= h:
            break
        h = h_new
    return lo.double(), h, ext


def _cell_ids(coords: Tensor, cells: List[int]) -> Tensor:
    r"""Linear ids of integer cell coordinates :obj:`[..., F]` (given as
    floats or ints, clamped into the grid)."""
    out = None
    for f, size in enumerate(cells):
        c = coords[..., f].clamp(0, size - 1).long()
        out = c if out is None else out * size + c
    return out


def _knn_grid(x: Tensor, y: Tensor, k: int,
              chunk_size: int) -> Optional[Tensor]:
    r"""Exact k-nearest neighbours of one example on uniform grids.

    The candidates :obj:`x` are sorted into cubic cells of side :math:`h`.
    Queries are ranked cell by cell against the points of the
    :math:`(2r+1)^F` surrounding cells, many cells per distance block (cells
    of similar candidate and query counts are padded together). A query's
    top-k is final once its :math:`k`-th distance is (with a rounding
    margin) below its distance to the faces of the searched cube, so that no
    point outside could be as close; the others are searched again with the
    next radius of :obj:`GRID_RADII`, then on a grid of
    :obj:`GRID_COARSEN` times larger cells, up to a single cell, where every
    query settles. Distances are those of :func:`_distances`; equal
    distances are ordered by index.

    Returns the local neighbour indices :obj:`[M, min(k, N)]`, or
    :obj:`None` where the grid does not apply (non-finite or overflowing
    coordinates, all candidates at one location).
    """
    n, m, device = x.size(0), y.size(0), x.device
    kk = min(k, n)
    bbox = torch.stack([torch.minimum(x.amin(0), y.amin(0)),
                        torch.maximum(x.amax(0), y.amax(0))]).double()
    if not bool(torch.isfinite(bbox).all()) or not math.isfinite(
            float((bbox[1] - bbox[0]).square().sum().to(x.dtype))):
        return None
    spacing = _grid_spacing(x, k)
    if spacing is None:
        return None
    lo, h, ext = spacing
    # Rounding margin of the face distances (cell coordinates are computed
    # in double, distances in the input precision).
    scale = float(bbox.abs().max())
    out = torch.empty(m, kk, dtype=torch.long, device=device)
    done = torch.zeros(m, dtype=torch.bool, device=device)
    while True:
        cells = [int(e / h) + 1 for e in ext]
        _grid_level(x, y, kk, chunk_size, lo, h, cells,
                    1e-9 * (scale + h), out, done)
        if max(cells) == 1 or bool(done.all()):
            return out
        h *= GRID_COARSEN


def _grid_level(x: Tensor, y: Tensor, kk: int, chunk_size: int, lo: Tensor,
                h: float, cells: List[int], delta: float, out: Tensor,
                done: Tensor) -> None:
    r"""The search rounds of :func:`_knn_grid` on one grid, for the queries
    not yet :obj:`done`; updates :obj:`out` and :obj:`done` in place."""
    n, num_features = x.size()
    device = x.device
    # Candidates sorted by cell; `cell_ids` are the occupied cells.
    x_ids = _cell_ids(torch.floor((x.double() - lo) / h), cells)
    x_ids, order = x_ids.sort(stable=True)
    cell_ids, cell_count = x_ids.unique_consecutive(return_counts=True)
    cell_start = cell_count.cumsum(0) - cell_count
    num_cells = cell_ids.numel()
    pad = torch.full((num_features, 1), float('inf'), dtype=x.dtype,
                     device=device)
    xs = torch.cat([x[order].t(), pad], dim=1)  # [F, N + 1], last = padding
    order = torch.cat([order, order.new_tensor([n])])  # [N + 1]

    # Pending queries sorted by cell.
    y_index = (~done).nonzero().view(-1)
    y_coords = torch.floor((y[y_index].double() - lo) / h)
    for f, size in enumerate(cells):
        y_coords[:, f].clamp_(0, size - 1)
    y_coords = y_coords.long()  # [M', F]
    y_ids, perm = _cell_ids(y_coords, cells).sort(stable=True)
    y_index, y_coords = y_index[perm], y_coords[perm]
    ys = y[y_index].t()  # [F, M']
    ysd = ys.double()
    cells_t = torch.tensor(cells, device=device)
    lo_t = lo.view(-1, 1, 1)  # [F, 1, 1]

    settled = torch.zeros(y_index.numel(), dtype=torch.bool, device=device)
    for r in GRID_RADII:
        pending = (~settled).nonzero().view(-1)  # sorted positions
        if pending.numel() == 0:
            break
        ucell, q_count = y_ids[pending].unique_consecutive(return_counts=True)
        q_start = q_count.cumsum(0) - q_count
        u_coords = y_coords[pending[q_start]]  # [U, F]

        # Neighbour cells and their candidate ranges.
        axis = torch.arange(-r, r + 1, device=device)
        offsets = torch.cartesian_prod(*([axis] * num_features)).view(
            -1, num_features)  # [(2r+1)^F, F]
        nc = u_coords.unsqueeze(1) + offsets.unsqueeze(0)  # [U, K3, F]
        inside = ((nc >= 0) & (nc < cells_t)).all(-1)
        nid = _cell_ids(nc, cells)
        j = torch.searchsorted(cell_ids, nid).clamp(max=num_cells - 1)
        found = inside & (cell_ids[j] == nid)
        n_count = torch.where(found, cell_count[j], 0)  # [U, K3]
        n_end = n_count.cumsum(1)
        n_shift = cell_start[j] - (n_end - n_count)  # sorted pos - slot
        num_cand = n_end[:, -1]  # [U]
        lower_open = u_coords - r <= 0  # the cube reaches the grid border
        upper_open = u_coords + r >= cells_t - 1

        # Pieces of at most chunk_size entries, grouped by padded size.
        # (A piece's queries times the largest candidate count of its size
        # class stay within chunk_size.)
        s_class = _size_class(num_cand.clamp(min=1))
        s_upper = torch.maximum(
            torch.ceil(1.25 ** s_class.double()).long(), num_cand)
        q_cap = (chunk_size // s_upper).clamp(min=1)
        pieces = (q_count + q_cap - 1) // q_cap
        p_cell = torch.repeat_interleave(
            torch.arange(ucell.numel(), device=device), pieces)
        p_first = torch.cumsum(pieces, 0) - pieces
        p_off = (torch.arange(p_cell.numel(), device=device)
                 - p_first[p_cell]) * q_cap[p_cell]
        p_q = torch.minimum(q_cap[p_cell], q_count[p_cell] - p_off)
        p_s = num_cand[p_cell]
        live = p_s >= kk  # fewer candidates can never settle
        p_cell, p_off, p_q = p_cell[live], p_off[live], p_q[live]
        if p_cell.numel() == 0:
            continue
        key, perm = (s_class[p_cell] * 64 + _size_class(p_q)).sort()
        p_cell, p_off, p_q = p_cell[perm], p_off[perm], p_q[perm]
        p_s = num_cand[p_cell]
        group_len = key.unique_consecutive(return_counts=True)[1]
        group = torch.repeat_interleave(
            torch.arange(group_len.numel(), device=device), group_len)
        group_max = p_s.new_zeros(2, group_len.numel()).scatter_reduce_(
            1, group.expand(2, -1), torch.stack([p_s, p_q]), 'amax').tolist()
        group_len = group_len.tolist()
        ends = list(itertools.accumulate(group_len))
        for g, end in enumerate(ends):
            s_max, q_max = group_max[0][g], group_max[1][g]
            per_block = max(chunk_size // (s_max * q_max), 1)
            for b0 in range(end - group_len[g], end, per_block):
                sl = slice(b0, min(b0 + per_block, end))
                settled[_grid_block(
                    p_cell[sl], p_off[sl], p_q[sl], q_max, s_max, pending,
                    q_start, n_end, n_shift, u_coords, lower_open,
                    upper_open, xs, ys, ysd, order, lo_t, h, r, delta, kk,
                    out, y_index)] = True
    done[y_index[settled]] = True


def _size_class(v: Tensor) -> Tensor:
    r"""Geometric size classes (ratio 1.25) of positive counts."""
    return torch.ceil(torch.log(v.double()) / math.log(1.25)).long()


def _grid_block(cell: Tensor, q_off: Tensor, q_num: Tensor, q_max: int,
                s_max: int, pending: Tensor, q_start: Tensor, n_end: Tensor,
                n_shift: Tensor, u_coords: Tensor, lower_open: Tensor,
                upper_open: Tensor, xs: Tensor, ys: Tensor, ysd: Tensor,
                order: Tensor, lo: Tensor, h: float, r: int, delta: float,
                kk: int, out: Tensor, y_index: Tensor) -> Tensor:
    r"""One distance block of :func:`_grid_level`: pieces of query cells
    :obj:`[G]` (each with at least :obj:`kk` candidates) padded to
    :obj:`[G, q_max, s_max]`. Writes the settled rows to :obj:`out` and
    returns their sorted query positions."""
    device = xs.device
    # Queries [G, Q_max] (as positions in the sorted order).
    slot_q = torch.arange(q_max, device=device)
    q_valid = slot_q.unsqueeze(0) < q_num.unsqueeze(1)
    q_idx = (q_start[cell] + q_off).unsqueeze(1) + slot_q
    q_pos = pending[q_idx.clamp(max=pending.numel() - 1)]  # [G, Q_max]
    # Candidates [G, S_max] (as positions in the sorted order of x).
    slot_s = torch.arange(s_max, device=device).expand(cell.numel(), s_max)
    ends = n_end[cell]  # [G, K3]
    j = torch.searchsorted(ends, slot_s.contiguous(), right=True).clamp(
        max=ends.size(1) - 1)
    s_pos = slot_s + n_shift[cell].gather(1, j)
    s_pos = torch.where(slot_s < ends[:, -1:], s_pos, xs.size(1) - 1)

    dist = _distances(ys[:, q_pos], xs[:, s_pos], False)  # [G, Q_max, S_max]
    vals, nbr = _topk_lowest_index(dist, order[s_pos], kk)

    # Distance from each query to the outside of its searched cube.
    coords = u_coords[cell].t().unsqueeze(-1)  # [F, G, 1]
    yq = ysd[:, q_pos]  # [F, G, Q_max]
    d_lo = (yq - (lo + (coords - r) * h)).masked_fill(
        lower_open[cell].t().unsqueeze(-1), float('inf'))
    d_hi = ((lo + (coords + r + 1) * h) - yq).masked_fill(
        upper_open[cell].t().unsqueeze(-1), float('inf'))
    bound = torch.minimum(d_lo, d_hi).amin(0)  # [G, Q_max]
    bound = (bound * (1 - 1e-6) - delta).clamp(min=0).square() * (1 - 1e-5)
    final = q_valid & (vals[..., -1].double() < bound)
    settled = q_pos[final]
    out[y_index[settled]] = nbr[final]
    return settled


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
