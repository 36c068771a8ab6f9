"""The exact spatial-grid kNN strategy for large Euclidean examples of up
to three features: queries are ranked against the points of neighbouring
cells only, on grids of growing cells until every query is settled."""
import itertools
import math
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor

from samsa_geo.ops._fallback import blocks

# Examples that knn() ranks on the grid (CPU, auto): at least this many
# candidates and queries, up to GRID_MAX_FEATURES Euclidean features.
GRID_MIN_POINTS = 20_000
GRID_MIN_QUERIES = 1_000
GRID_MAX_FEATURES = 3
GRID_CELL_POINTS = 1.5  # target points per occupied cell, times k
GRID_RADII = (1, 2)  # search rounds per grid
GRID_COARSEN = 4  # cell growth between grids
GRID_MAX_CELLS = 2**20  # cells per axis


def grid_examples(size_x: List[int], size_y: List[int], x: Tensor,
                  cosine: bool, grid: Optional[bool]) -> List[int]:
    r"""The examples that :func:`~samsa_geo.ops._fallback.knn.knn` ranks on
    a spatial grid.

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


def knn_grid(x: Tensor, y: Tensor, k: int,
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
    query settles. Distances are those of
    :func:`~samsa_geo.ops._fallback.blocks.distances`; equal distances are
    ordered by index.

    Returns the local neighbour indices :obj:`[M, min(k, N)]`, or
    :obj:`None` where the grid does not apply (non-finite or overflowing
    coordinates, all candidates at one location).
    """
    bbox = torch.stack([torch.minimum(x.amin(0), y.amin(0)),
                        torch.maximum(x.amax(0), y.amax(0))]).double()
    if not bool(torch.isfinite(bbox).all()) or not math.isfinite(
            float((bbox[1] - bbox[0]).square().sum().to(x.dtype))):
        return None
    spacing = grid_spacing(x, k)
    if spacing is None:
        return None
    lo, h, ext = spacing
    search = KnnGrid(x, y, k, chunk_size, lo, float(bbox.abs().max()))
    while True:
        cells = [int(e / h) + 1 for e in ext]
        search.level(h, cells)
        if max(cells) == 1 or bool(search.done.all()):
            return search.out
        h *= GRID_COARSEN


class Neighbourhood(NamedTuple):
    r"""The cells searched in one round of :meth:`KnnGrid.level`: the
    pending queries grouped by cell and, per query cell, the candidate
    ranges of its :math:`(2r+1)^F` neighbour cells."""
    r: int
    pending: Tensor  # [P] positions of the pending queries (sorted order)
    q_start: Tensor  # [U] first pending query of every query cell
    q_count: Tensor  # [U] pending queries per query cell
    u_coords: Tensor  # [U, F] integer coordinates of the query cells
    n_end: Tensor  # [U, K3] running candidate count over neighbour cells
    n_shift: Tensor  # [U, K3] sorted candidate position minus slot
    num_cand: Tensor  # [U] candidates in the neighbourhood
    lower_open: Tensor  # [U, F] the searched cube reaches the lower border
    upper_open: Tensor  # [U, F] ... the upper border


class KnnGrid:
    r"""The state of one exact grid search (see :func:`knn_grid`): the
    inputs, the neighbours found so far (:obj:`out`, :obj:`done`) and, for
    the current grid, the candidates and pending queries sorted by cell.

    Args:
        x (torch.Tensor): Candidates :obj:`[N, F]`.
        y (torch.Tensor): Queries :obj:`[M, F]`.
        k (int): Neighbours per query.
        chunk_size (int): Entries of one distance block.
        lo (torch.Tensor): Grid origin :obj:`[F]` (double).
        scale (float): Largest absolute coordinate, for the rounding margin
            of the face distances (cell coordinates are computed in double,
            distances in the input precision).
    """
    def __init__(self, x: Tensor, y: Tensor, k: int, chunk_size: int,
                 lo: Tensor, scale: float) -> None:
        self.x, self.y = x, y
        self.kk = min(k, x.size(0))
        self.chunk_size = chunk_size
        self.lo, self.scale = lo, scale
        self.out = torch.empty(y.size(0), self.kk, dtype=torch.long,
                               device=x.device)
        self.done = torch.zeros(y.size(0), dtype=torch.bool, device=x.device)

    def level(self, h: float, cells: List[int]) -> None:
        r"""The search rounds on the grid of cell side :obj:`h` and
        :obj:`cells` cells per axis, for the queries not yet :obj:`done`;
        updates :obj:`out` and :obj:`done`."""
        x, y, device = self.x, self.y, self.x.device
        n, num_features = x.size()
        self.h, self.cells = h, cells
        self.delta = 1e-9 * (self.scale + h)
        # Candidates sorted by cell; `cell_ids` are the occupied cells.
        x_ids = cell_ids(torch.floor((x.double() - self.lo) / h), cells)
        x_ids, order = x_ids.sort(stable=True)
        self.cell_ids, self.cell_count = x_ids.unique_consecutive(
            return_counts=True)
        self.cell_start = self.cell_count.cumsum(0) - self.cell_count
        pad = torch.full((num_features, 1), float('inf'), dtype=x.dtype,
                         device=device)
        self.xs = torch.cat([x[order].t(), pad], dim=1)  # [F, N + 1]
        self.order = torch.cat([order, order.new_tensor([n])])  # [N + 1]

        # Pending queries sorted by cell.
        y_index = (~self.done).nonzero().view(-1)
        y_coords = torch.floor((y[y_index].double() - self.lo) / h)
        for f, size in enumerate(cells):
            y_coords[:, f].clamp_(0, size - 1)
        y_coords = y_coords.long()  # [M', F]
        self.y_ids, perm = cell_ids(y_coords, cells).sort(stable=True)
        self.y_index, self.y_coords = y_index[perm], y_coords[perm]
        self.ys = y[self.y_index].t()  # [F, M']
        self.ysd = self.ys.double()

        settled = torch.zeros(self.y_index.numel(), dtype=torch.bool,
                              device=device)
        for r in GRID_RADII:
            pending = (~settled).nonzero().view(-1)  # sorted positions
            if pending.numel() == 0:
                break
            nbhd = self.neighbourhood(pending, r)
            for piece in self.pieces(nbhd):
                settled[self.block(nbhd, *piece)] = True
        self.done[self.y_index[settled]] = True

    def neighbourhood(self, pending: Tensor, r: int) -> Neighbourhood:
        r"""The neighbour cells of radius :obj:`r` of the cells of the
        :obj:`pending` queries and their candidate ranges."""
        device, num_features = self.x.device, self.x.size(1)
        cells_t = torch.tensor(self.cells, device=device)
        ucell, q_count = self.y_ids[pending].unique_consecutive(
            return_counts=True)
        q_start = q_count.cumsum(0) - q_count
        u_coords = self.y_coords[pending[q_start]]  # [U, F]

        axis = torch.arange(-r, r + 1, device=device)
        offsets = torch.cartesian_prod(*([axis] * num_features)).view(
            -1, num_features)  # [(2r+1)^F, F]
        nc = u_coords.unsqueeze(1) + offsets.unsqueeze(0)  # [U, K3, F]
        inside = ((nc >= 0) & (nc < cells_t)).all(-1)
        nid = cell_ids(nc, self.cells)
        j = torch.searchsorted(self.cell_ids, nid).clamp(
            max=self.cell_ids.numel() - 1)
        found = inside & (self.cell_ids[j] == nid)
        n_count = torch.where(found, self.cell_count[j], 0)  # [U, K3]
        n_end = n_count.cumsum(1)
        return Neighbourhood(
            r=r, pending=pending, q_start=q_start, q_count=q_count,
            u_coords=u_coords, n_end=n_end,
            n_shift=self.cell_start[j] - (n_end - n_count),
            num_cand=n_end[:, -1], lower_open=u_coords - r <= 0,
            upper_open=u_coords + r >= cells_t - 1)

    def pieces(self, nbhd: Neighbourhood
               ) -> Iterator[Tuple[Tensor, Tensor, Tensor, int, int]]:
        r"""Splits the query cells into pieces of at most
        :obj:`chunk_size` entries and groups pieces of similar padded size
        into blocks ``(cell, q_off, q_num, q_max, s_max)``: the pieces'
        query cells, first query and query count, and the block's padded
        query and candidate counts. (A piece's queries times the largest
        candidate count of its size class stay within :obj:`chunk_size`.)
        Pieces with fewer than :obj:`kk` candidates, which can never
        settle, are left out."""
        device, chunk_size = self.x.device, self.chunk_size
        num_cand, q_count = nbhd.num_cand, nbhd.q_count
        s_class = size_class(num_cand.clamp(min=1))
        s_upper = torch.maximum(
            torch.ceil(1.25 ** s_class.double()).long(), num_cand)
        q_cap = (chunk_size // s_upper).clamp(min=1)
        pieces = (q_count + q_cap - 1) // q_cap
        p_cell = torch.repeat_interleave(
            torch.arange(q_count.numel(), device=device), pieces)
        p_first = torch.cumsum(pieces, 0) - pieces
        p_off = (torch.arange(p_cell.numel(), device=device)
                 - p_first[p_cell]) * q_cap[p_cell]
        p_q = torch.minimum(q_cap[p_cell], q_count[p_cell] - p_off)
        live = num_cand[p_cell] >= self.kk
        p_cell, p_off, p_q = p_cell[live], p_off[live], p_q[live]
        if p_cell.numel() == 0:
            return
        key, perm = (s_class[p_cell] * 64 + size_class(p_q)).sort()
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
                yield p_cell[sl], p_off[sl], p_q[sl], q_max, s_max

    def block(self, nbhd: Neighbourhood, cell: Tensor, q_off: Tensor,
              q_num: Tensor, q_max: int, s_max: int) -> Tensor:
        r"""One distance block: pieces of query cells :obj:`[G]` (each with
        at least :obj:`kk` candidates) padded to :obj:`[G, q_max, s_max]`.
        Writes the settled rows to :obj:`out` and returns their sorted
        query positions."""
        device, kk, h, r = self.x.device, self.kk, self.h, nbhd.r
        # Queries [G, Q_max] (as positions in the sorted order).
        slot_q = torch.arange(q_max, device=device)
        q_valid = slot_q.unsqueeze(0) < q_num.unsqueeze(1)
        q_idx = (nbhd.q_start[cell] + q_off).unsqueeze(1) + slot_q
        q_pos = nbhd.pending[q_idx.clamp(max=nbhd.pending.numel() - 1)]
        # Candidates [G, S_max] (as positions in the sorted order of x).
        slot_s = torch.arange(s_max, device=device).expand(cell.numel(),
                                                           s_max)
        ends = nbhd.n_end[cell]  # [G, K3]
        j = torch.searchsorted(ends, slot_s.contiguous(), right=True).clamp(
            max=ends.size(1) - 1)
        s_pos = slot_s + nbhd.n_shift[cell].gather(1, j)
        s_pos = torch.where(slot_s < ends[:, -1:], s_pos, self.xs.size(1) - 1)

        dist = blocks.distances(self.ys[:, q_pos], self.xs[:, s_pos],
                                False)  # [G, Q_max, S_max]
        vals, nbr = topk_lowest_index(dist, self.order[s_pos], kk)

        # Distance from each query to the outside of its searched cube.
        lo = self.lo.view(-1, 1, 1)  # [F, 1, 1]
        coords = nbhd.u_coords[cell].t().unsqueeze(-1)  # [F, G, 1]
        yq = self.ysd[:, q_pos]  # [F, G, Q_max]
        d_lo = (yq - (lo + (coords - r) * h)).masked_fill(
            nbhd.lower_open[cell].t().unsqueeze(-1), float('inf'))
        d_hi = ((lo + (coords + r + 1) * h) - yq).masked_fill(
            nbhd.upper_open[cell].t().unsqueeze(-1), float('inf'))
        bound = torch.minimum(d_lo, d_hi).amin(0)  # [G, Q_max]
        bound = (bound * (1 - 1e-6) - self.delta).clamp(min=0).square() \
            * (1 - 1e-5)
        final = q_valid & (vals[..., -1].double() < bound)
        settled = q_pos[final]
        self.out[self.y_index[settled]] = nbr[final]
        return settled


def size_class(v: Tensor) -> Tensor:
    r"""Geometric size classes (ratio 1.25) of positive counts."""
    return torch.ceil(torch.log(v.double()) / math.log(1.25)).long()


def topk_lowest_index(dist: Tensor, cand: Tensor,
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


def grid_spacing(x: Tensor, k: int) -> Optional[Tuple[Tensor, float,
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
        ids = cell_ids(torch.floor(xd / h), cells)
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


def cell_ids(coords: Tensor, cells: List[int]) -> Tensor:
    r"""Linear ids of integer cell coordinates :obj:`[..., F]` (given as
    floats or ints, clamped into the grid)."""
    out = None
    for f, size in enumerate(cells):
        c = coords[..., f].clamp(0, size - 1).long()
        out = c if out is None else out * size + c
    return out
