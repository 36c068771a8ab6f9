r"""Exact k-nearest neighbours on the GPU, written in Triton:
:func:`knn_triton` sends batches of small examples to the brute-force
kernel of :mod:`.knn_dense` and larger examples to the tiled kernel of this
module.

Points are first ordered along a Morton (Z-order) curve within each example,
so that a run of consecutive points is spatially compact. One program ranks
``BLOCK_M`` consecutive queries of one example against the candidates of
that example, in tiles of ``BLOCK_N`` consecutive candidates:

1. the tiles next to the queries' place on the curve are ranked first,
   which gives every query a tight :math:`k`-th distance early;
2. every other tile is then skipped when the squared distance between the
   queries' bounding box and the tile's bounding box exceeds the largest
   :math:`k`-th distance of the block.

Distances are computed in float32 as
:math:`((y_0 - x_0)^2 + (y_1 - x_1)^2) + (y_2 - x_2)^2`, without fused
multiply-adds, which is exactly the arithmetic of the pure-PyTorch path
(:func:`~samsa_geo.ops._fallback.blocks.distances`). The box bound uses the
same operations on the box corners, and rounding is monotone, so it never
exceeds the distance of any pair it stands for: the skip is exact. Each
query keeps its best :math:`k` (distance, index) pairs in registers; equal
distances are ordered by ascending index.

Importing this module needs Triton.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED, MAX_POINTS
from samsa_geo.ops._triton.knn_dense import knn_dense, ranking_distance
from samsa_geo.ops._triton.launch import Launcher
from samsa_geo.ops._utils import batch_to_ptr

#: Largest mean number of candidates per example that
#: :func:`knn_triton` ranks by brute force (the dense kernel): the faster
#: one at 1,024 points per cloud on the H200 (docs/benchmarks.md). Its
#: work per query grows with the example's size, and larger examples were
#: not timed, so they keep the tiled kernel.
DENSE_MEAN_SIZE = 1024
#: Tiles on either side of the queries' place on the curve that are ranked
#: before any tile is skipped.
NEAR_TILES = 2
# Slot sentinels _EMPTY + slot lie above any point index; a masked
# candidate (_INVALID) ranks after every slot sentinel.
_EMPTY: tl.constexpr = tl.constexpr(MAX_POINTS)
_INVALID: tl.constexpr = tl.constexpr(2**31 - 1)


@triton.jit
def _spread(v, F: tl.constexpr):
    # Interleaves zeros between the bits of v (F - 1 zeros per bit).
    if F == 3:  # 10 bits -> 30 bits
        v = v & 0x3FF
        v = (v | (v << 16)) & 0x030000FF
        v = (v | (v << 8)) & 0x0300F00F
        v = (v | (v << 4)) & 0x030C30C3
        v = (v | (v << 2)) & 0x09249249
    elif F == 2:  # 15 bits -> 30 bits
        v = v & 0x7FFF
        v = (v | (v << 8)) & 0x00FF00FF
        v = (v | (v << 4)) & 0x0F0F0F0F
        v = (v | (v << 2)) & 0x33333333
        v = (v | (v << 1)) & 0x55555555
    return v


@triton.jit(do_not_specialize=['N'])
def _morton_kernel(pos, stride_n, stride_f, batch, lo, scale, key, N,
                   F: tl.constexpr, HAS_BATCH: tl.constexpr,
                   BLOCK: tl.constexpr):
    # key = example << 30 | Morton code of the point in its example's box.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    b = tl.zeros([BLOCK], dtype=tl.int64)
    if HAS_BATCH:
        b = tl.load(batch + offs, mask=mask, other=0).to(tl.int64)
    code = tl.zeros([BLOCK], dtype=tl.int32)
    for f in tl.static_range(F):
        p = tl.load(pos + offs * stride_n + f * stride_f, mask=mask,
                    other=0.0)
        q = (p - tl.load(lo + b * F + f)) * tl.load(scale + b * F + f)
        q = tl.minimum(tl.maximum(q, 0.0), (1 << (30 // F)) - 1.0)
        code = code | (_spread(q.to(tl.int32), F) << f)
    tl.store(key + offs, (b << 30) | code.to(tl.int64), mask=mask)


_launch_morton = Launcher(_morton_kernel)


@triton.jit(do_not_specialize=['N', 't_pad'])
def _gather_kernel(src, stride_n, stride_f, perm, N, dst, n_pad, ids, box,
                   t_pad, F: tl.constexpr, BOX: tl.constexpr,
                   BLOCK: tl.constexpr):
    # Tile t of the curve order: feature-major points, their indices as
    # int32 and (BOX) the tile's bounding box.
    t = tl.program_id(0)
    cols = t * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    p = tl.load(perm + cols, mask=mask, other=0)
    tl.store(ids + cols, p.to(tl.int32), mask=mask)
    for f in tl.static_range(F):
        v = tl.load(src + p * stride_n + f * stride_f, mask=mask, other=0.0)
        tl.store(dst + f * n_pad + cols, v, mask=mask)
        if BOX:
            tl.store(box + f * t_pad + t,
                     tl.min(tl.where(mask, v, float('inf')), axis=0))
            tl.store(box + (3 + f) * t_pad + t,
                     tl.max(tl.where(mask, v, -float('inf')), axis=0))


_launch_gather = Launcher(_gather_kernel)


@triton.jit
def _tile_gap(box, t, t_pad, lo0, hi0, lo1, hi1, lo2, hi2, F: tl.constexpr):
    # Squared distance between the boxes of tiles t and of the queries (0
    # where they overlap), with the rounding of the pair distances it
    # bounds; t is a tile index or a vector of them.
    g = tl.maximum(tl.maximum(tl.load(box + t) - hi0,
                              lo0 - tl.load(box + 3 * t_pad + t)), 0.0)
    gap = g * g
    if F > 1:
        g = tl.maximum(tl.maximum(tl.load(box + t_pad + t) - hi1,
                                  lo1 - tl.load(box + 4 * t_pad + t)), 0.0)
        gap = gap + g * g
    if F > 2:
        g = tl.maximum(tl.maximum(tl.load(box + 2 * t_pad + t) - hi2,
                                  lo2 - tl.load(box + 5 * t_pad + t)), 0.0)
        gap = gap + g * g
    # Clamped as the distances it bounds.
    return ranking_distance(gap)


@triton.jit
def _rank_tile(t, xs, n_pad, ids, q0, q1, q2, row_ok, c_start, c_end,
               best_d, best_i, worst_d, worst_i, F: tl.constexpr,
               BLOCK_N: tl.constexpr):
    # Merges the candidates of tile t into every query's best k.
    cols = t * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = (cols >= c_start) & (cols < c_end)
    diff = q0[:, None] - tl.load(xs + cols, mask=cmask, other=0.0)[None, :]
    d = diff * diff  # [BLOCK_M, BLOCK_N]
    if F > 1:
        diff = q1[:, None] - tl.load(xs + n_pad + cols, mask=cmask,
                                     other=0.0)[None, :]
        d = d + diff * diff
    if F > 2:
        diff = q2[:, None] - tl.load(xs + 2 * n_pad + cols, mask=cmask,
                                     other=0.0)[None, :]
        d = d + diff * diff
    d = ranking_distance(d)
    cid = tl.load(ids + cols, mask=cmask, other=_INVALID)
    # Lexicographic (distance, index) comparison with each row's worst.
    wd, wi = worst_d[:, None], worst_i[:, None]
    better = (d < wd) | ((d == wd) & (cid[None, :] < wi))
    better = better & cmask[None, :] & row_ok[:, None]
    d = tl.where(better, d, float('inf'))
    cid = tl.where(better, cid[None, :], _INVALID)
    go = tl.max(better.to(tl.int32), axis=1)  # [BLOCK_M]
    while tl.max(go, axis=0) > 0:
        # Each row's best remaining candidate replaces its worst slot.
        m = tl.min(d, axis=1)
        mi = tl.min(tl.where(d == m[:, None], cid, _INVALID), axis=1)
        ins = (mi != _INVALID) & ((m < worst_d)
                                  | ((m == worst_d) & (mi < worst_i)))
        hit = (best_i == worst_i[:, None]) & ins[:, None]
        best_d = tl.where(hit, m[:, None], best_d)
        best_i = tl.where(hit, mi[:, None], best_i)
        used = cid == mi[:, None]
        d = tl.where(used, float('inf'), d)
        cid = tl.where(used, _INVALID, cid)
        worst_d = tl.max(best_d, axis=1)
        worst_i = tl.max(tl.where(best_d == worst_d[:, None], best_i, -1),
                         axis=1)
        go = ins.to(tl.int32)
    return best_d, best_i, worst_d, worst_i


# The sizes that vary with the batch (the number of examples, of tiles and
# of queries) are not specialised on (see knn_dense): one compiled kernel
# serves batches of every size.
@triton.jit(do_not_specialize=['num_examples', 't_pad', 'M'])
def _knn_kernel(xs, n_pad, ids, key_x, ys, m_pad, y_ids, key_y, ptr_x,
                ptr_y, first, num_examples, tile_box, t_pad, out, missing, M,
                K, F: tl.constexpr, KP: tl.constexpr, SAME: tl.constexpr,
                COUNT: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_T: tl.constexpr, NEAR: tl.constexpr):
    # Query blocks never cross examples: example b owns the blocks
    # first[b] <= pid < first[b + 1]; programs past the last block idle.
    pid = tl.program_id(0)
    lo_b = pid * 0
    hi_b = lo_b + num_examples
    while lo_b < hi_b:  # the last b with first[b] <= pid
        mid = (lo_b + hi_b + 1) // 2
        ok = tl.load(first + mid) <= pid
        lo_b = tl.where(ok, mid, lo_b)
        hi_b = tl.where(ok, hi_b, mid - 1)
    b = tl.minimum(lo_b, num_examples - 1)
    r_start = tl.load(ptr_y + b) + (pid - tl.load(first + b)) * BLOCK_M
    r_end = tl.where(lo_b < num_examples, tl.load(ptr_y + b + 1), r_start)
    c_start = tl.load(ptr_x + b)
    c_end = tl.load(ptr_x + b + 1)
    rows = r_start + tl.arange(0, BLOCK_M)
    row_ok = rows < r_end

    # Queries and their bounding box (unused axes are zeros).
    q0 = tl.load(ys + rows, mask=row_ok, other=0.0)
    q1 = tl.zeros_like(q0)
    q2 = tl.zeros_like(q0)
    if F > 1:
        q1 = tl.load(ys + m_pad + rows, mask=row_ok, other=0.0)
    if F > 2:
        q2 = tl.load(ys + 2 * m_pad + rows, mask=row_ok, other=0.0)
    lo0 = tl.min(tl.where(row_ok, q0, float('inf')), axis=0)
    hi0 = tl.max(tl.where(row_ok, q0, -float('inf')), axis=0)
    lo1 = tl.min(tl.where(row_ok, q1, float('inf')), axis=0)
    hi1 = tl.max(tl.where(row_ok, q1, -float('inf')), axis=0)
    lo2 = tl.min(tl.where(row_ok, q2, float('inf')), axis=0)
    hi2 = tl.max(tl.where(row_ok, q2, -float('inf')), axis=0)

    # Best k per query; slots past K are locked at -inf (never the worst).
    slot = tl.arange(0, KP)
    locked = slot[None, :] >= K
    best_d = tl.where(locked, -float('inf'),
                      tl.full([BLOCK_M, KP], float('inf'), tl.float32))
    best_i = tl.where(locked, -1 - slot[None, :],
                      _EMPTY + slot[None, :] + tl.zeros([BLOCK_M, KP],
                                                        tl.int32))
    worst_d = tl.full([BLOCK_M], float('inf'), tl.float32)
    worst_i = tl.max(best_i, axis=1)

    t_first = c_start // BLOCK_N
    t_end = (c_end + BLOCK_N - 1) // BLOCK_N
    # The tile where the block's first query sits on the candidates' curve.
    if SAME:
        hint = r_start // BLOCK_N
    else:
        target = tl.load(key_y + r_start, mask=r_start < r_end, other=0)
        lo_k = c_start
        hi_k = c_end
        while lo_k < hi_k:  # the first candidate key >= target
            mid = (lo_k + hi_k) // 2
            less = tl.load(key_x + mid) < target
            lo_k = tl.where(less, mid + 1, lo_k)
            hi_k = tl.where(less, hi_k, mid)
        hint = lo_k // BLOCK_N
    near_lo = tl.minimum(tl.maximum(hint - NEAR, t_first), t_end)
    near_hi = tl.maximum(tl.minimum(hint + NEAR + 1, t_end), near_lo)
    # 1. Tiles around the queries' place on the curve.
    for t in range(near_lo, near_hi):
        best_d, best_i, worst_d, worst_i = _rank_tile(
            t, xs, n_pad, ids, q0, q1, q2, row_ok, c_start, c_end, best_d,
            best_i, worst_d, worst_i, F, BLOCK_N)
    # 2. All other tiles whose box may hold a closer candidate: BLOCK_T
    # boxes at a time, then tile by tile.
    bound = tl.max(tl.where(row_ok, worst_d, -float('inf')), axis=0)
    for t0 in range(t_first, t_end, BLOCK_T):
        tiles = t0 + tl.arange(0, BLOCK_T)
        t_ok = (tiles < t_end) & ((tiles < near_lo) | (tiles >= near_hi))
        gap = _tile_gap(tile_box, tl.minimum(tiles, t_pad - 1), t_pad, lo0,
                        hi0, lo1, hi1, lo2, hi2, F)
        if tl.min(tl.where(t_ok, gap, float('inf')), axis=0) <= bound:
            for tt in range(t0, tl.minimum(t0 + BLOCK_T, t_end)):
                if (tt < near_lo) | (tt >= near_hi):
                    gap_t = _tile_gap(tile_box, tt, t_pad, lo0, hi0, lo1,
                                      hi1, lo2, hi2, F)
                    if gap_t <= bound:
                        best_d, best_i, worst_d, worst_i = _rank_tile(
                            tt, xs, n_pad, ids, q0, q1, q2, row_ok, c_start,
                            c_end, best_d, best_i, worst_d, worst_i, F,
                            BLOCK_N)
                        bound = tl.max(tl.where(row_ok, worst_d,
                                                -float('inf')), axis=0)

    # Sorted output: ascending (distance, index); out[0] the query, out[1]
    # its neighbours, -1 in both for empty slots.
    out_rows = tl.load(y_ids + rows, mask=row_ok, other=0).to(tl.int64)
    empty = tl.zeros([BLOCK_M], dtype=tl.int64)
    for j in tl.static_range(KP):
        m = tl.min(best_d, axis=1)
        mi = tl.min(tl.where(best_d == m[:, None], best_i, _INVALID), axis=1)
        if j >= KP - K:
            offs = out_rows * K + (j - (KP - K))
            tl.store(out + offs, tl.where(mi >= _EMPTY, -1, out_rows),
                     mask=row_ok)
            tl.store(out + M * K + offs,
                     tl.where(mi >= _EMPTY, -1, mi).to(tl.int64),
                     mask=row_ok)
            empty += (row_ok & (mi >= _EMPTY)).to(tl.int64)
        taken = best_i == mi[:, None]
        best_d = tl.where(taken, float('inf'), best_d)
        best_i = tl.where(taken, _INVALID, best_i)
    if COUNT:
        tl.atomic_add(missing, tl.sum(empty, axis=0))


_launch_knn = Launcher(_knn_kernel)


def _config(k: int) -> Tuple[int, int, int]:
    # (BLOCK_M, BLOCK_N, num_warps): registers hold [BLOCK_M, KP] slots and
    # a [BLOCK_M, BLOCK_N] distance tile; about 125 registers per thread
    # on sm_90 for k <= 32, 110 for k <= 64 (no spills).
    if INTERPRETED:
        return 16, 16, 1
    if k <= 32:
        return 32, 32, 4
    return 16, 32, 4


def _curve_order(pos: Tensor, batch: Tensor, num_examples: int,
                 lo: Tensor, scale: Tensor) -> Tuple[Tensor, Tensor]:
    r"""The sorted keys and the permutation that orders :obj:`pos` by
    example, then along the Morton curve of the example's box."""
    n, num_features = pos.size()
    key = torch.empty(n, dtype=torch.long, device=pos.device)
    block = 1024
    _launch_morton(
        (triton.cdiv(n, block), ),
        pos, pos.stride(0), pos.stride(1), batch, lo, scale, key, n,
        F=num_features, HAS_BATCH=num_examples > 1, BLOCK=block,
        enable_fp_fusion=False)
    return key.sort(stable=True)


def _gather(pos: Tensor, perm: Tensor, block: int, box: bool
            ) -> Tuple[Tensor, Tensor, Tensor]:
    r"""Points :obj:`pos[perm]` as a feature-major float32 tensor
    :obj:`[F, T * block]` (padding columns are never read), :obj:`perm` as
    int32 and, if :obj:`box`, the boxes of the :obj:`T` tiles :obj:`[6, T]`
    (rows ``0..2`` the lower corner, ``3..5`` the upper one)."""
    n, num_features = pos.size()
    tiles = triton.cdiv(n, block)
    dst = pos.new_empty(num_features, tiles * block, dtype=torch.float32)
    ids = perm.new_empty(n, dtype=torch.int32)
    boxes = pos.new_empty(6, tiles, dtype=torch.float32) if box else dst
    _launch_gather(
        (tiles, ),
        pos, pos.stride(0), pos.stride(1), perm, n, dst, dst.size(1), ids,
        boxes, tiles, F=num_features, BOX=box, BLOCK=block)
    return dst, ids, boxes


def knn_triton(x: Tensor, y: Tensor, k: int,
               batch_x: Optional[Tensor], batch_y: Optional[Tensor],
               num_examples: int, missing: Optional[Tensor] = None
               ) -> Tensor:
    r"""For every query of :obj:`y`, its :obj:`k` nearest candidates of
    :obj:`x` in the same example, in ascending (distance, index) order:
    batches of small examples (:func:`use_dense`) ranked by
    :func:`~samsa_geo.ops._triton.knn_dense.knn_dense`, others by the
    tiled kernel of this module.

    The arguments and the :obj:`[2, M, k]` output are those of
    :func:`~samsa_geo.ops._triton.knn_dense.knn_dense`, with the batch
    vectors :obj:`batch_x` and :obj:`batch_y` (:obj:`None` for one example)
    in place of the boundaries.
    """
    device = x.device
    n, num_features = x.size()
    m = y.size(0)
    several = num_examples > 1 and batch_x is not None \
        and batch_y is not None
    if use_dense(n, num_examples):
        if not several:
            return knn_dense(x, y, k, None, None, 1, missing)
        return knn_dense(x, y, k, batch_x, batch_y, num_examples, missing)
    ptr_x = batch_to_ptr(batch_x if several else None, n, num_examples,
                         device)  # [B + 1]
    same = y is x
    if batch_x is None:
        batch_x = x.new_zeros(n, dtype=torch.long)
    if batch_y is None:
        batch_y = batch_x if same else y.new_zeros(m, dtype=torch.long)
    ptr_y = ptr_x if same else batch_to_ptr(batch_y, m, num_examples,
                                            device)
    block_m, block_n, num_warps = _config(k)
    out = torch.full((2, m, k), -1, dtype=torch.long, device=device)
    if n == 0 or m == 0:
        return out

    # Each example's box (over its candidates), for the curve codes.
    lo = x.new_zeros(num_examples, num_features, dtype=torch.float32)
    hi = torch.zeros_like(lo)
    index = batch_x.view(-1, 1).expand(-1, num_features)
    lo.scatter_reduce_(0, index, x.float(), 'amin', include_self=False)
    hi.scatter_reduce_(0, index, x.float(), 'amax', include_self=False)
    cells = float(2**(30 // num_features))
    scale = cells / (hi - lo).clamp(min=1e-30)
    scale = torch.where(hi > lo, scale, 0.0).contiguous()
    key_x, perm_x = _curve_order(x, batch_x, num_examples, lo, scale)
    key_y, perm_y = (key_x, perm_x) if same else _curve_order(
        y, batch_y, num_examples, lo, scale)

    xs, ids, box = _gather(x, perm_x, block_n, True)
    ys, y_ids = (xs, ids) if same else _gather(y, perm_y, block_n, False)[:2]
    # At most cdiv(M, BLOCK_M) + B blocks: first[b] is example b's first.
    per_example = (ptr_y[1:] - ptr_y[:-1] + block_m - 1) // block_m
    first = torch.cat([per_example.new_zeros(1), per_example.cumsum(0)])
    _launch_knn(
        (triton.cdiv(m, block_m) + num_examples, ),
        xs, xs.size(1), ids, key_x, ys, ys.size(1), y_ids, key_y, ptr_x,
        ptr_y, first, num_examples, box, box.size(1), out,
        missing if missing is not None else out, m, k, F=num_features,
        KP=max(triton.next_power_of_2(k), 2), SAME=same,
        COUNT=missing is not None, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_T=16 if INTERPRETED else 64, NEAR=NEAR_TILES,
        num_warps=num_warps, enable_fp_fusion=False)
    return out


def use_dense(num_points: int, num_examples: int) -> bool:
    r"""Whether :func:`knn_triton` ranks every candidate of an example
    (:func:`~samsa_geo.ops._triton.knn_dense.knn_dense`): when the
    examples hold at most :obj:`DENSE_MEAN_SIZE` candidates on average.
    Its work grows with the square of the examples' sizes, so one large
    example in a batch of small ones costs more than the tiled kernel."""
    return num_points <= DENSE_MEAN_SIZE * max(num_examples, 1)
