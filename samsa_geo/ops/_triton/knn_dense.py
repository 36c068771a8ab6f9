r"""Exact k-nearest neighbours of small examples on the GPU, written in
Triton: every query is ranked against every candidate of its example.

One program ranks ``BLOCK_Q`` consecutive queries (in their input order, no
sorting) against the candidates of their examples, streamed in tiles of
``BLOCK_P`` consecutive candidates; it finds each query's example in the
sorted batch vector of the candidates by bisection (no boundaries computed
before the launch; both ends of each example in one bisection). A query's
``k`` nearest candidates of a tile come from ``k`` rounds over 32-bit keys
held in registers,

.. math::
    \lambda_{ij} = \left\lfloor \operatorname{bits}(d_{ij}) / P
    \right\rfloor \cdot P + (j - p_0),

where :math:`\operatorname{bits}(d)` is the IEEE-754 pattern of the float32
squared distance (non-negative, so its order is the distances' order),
:math:`P` = ``BLOCK_P`` and :math:`p_0` the tile's first candidate: the
distance's leading bits (its *class*) and the column. Each round takes
the least key and strikes it out (one row reduction and one select). The
chosen are then ordered by the exact 64-bit keys

.. math::
    \kappa_{ij} = \operatorname{bits}(d_{ij}) \cdot 2^{32} + j

(their distances computed again, with the same arithmetic): by distance,
equal distances by index, as the brute-force reference with a stable
sort. Every candidate of a class below the last chosen key's class is
chosen, so the chosen set is the exact one unless that class holds a
candidate left out that is nearer than the chosen ``k``-th (one left out
at an equal distance has a larger index). Only then, which takes
distances equal to about 13 significant bits, are the distances computed
again and that row ranked by exact rounds (the least distance, the least
index holding it, struck out). Random clouds almost never take it; a
lattice moved by about :math:`10^{-6}` takes it at most tiles (about 2.4
times the time of random clouds on the H200), exact lattice ties do not. A tile
list is merged into the running best by a bitonic top-k of the
``2 KP`` keys of both (:func:`triton.language.topk`).

Distances are computed in float32 as
:math:`((y_0 - x_0)^2 + (y_1 - x_1)^2) + (y_2 - x_2)^2` without fused
multiply-adds, the arithmetic of the pure-PyTorch path
(:func:`~samsa_geo.ops._fallback.blocks.distances`), so the neighbour
lists are those of the brute force exactly.

The work per query is linear in its example's size: the kernel serves
batches of small examples (a few thousand points each); large examples go
to the tiled kernel of :mod:`.knn`, which skips distant candidates.

Importing this module needs Triton.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.launch import Launcher

# Key of a slot without candidate: above every (distance, index) key.
_NO_KEY: tl.constexpr = tl.constexpr(2**63 - 1)
_INDEX_BITS: tl.constexpr = tl.constexpr(0xFFFFFFFF)
# Above every candidate index.
_NO_INDEX: tl.constexpr = tl.constexpr(2**31 - 1)
# A struck-out or empty (class, column) key: above every other.
_NO_KEY32: tl.constexpr = tl.constexpr(2**31 - 1)
# The IEEE-754 pattern of +inf in float32.
_INF_BITS: tl.constexpr = tl.constexpr(0x7F800000)
# The largest finite float32.
_FLOAT32_MAX: tl.constexpr = tl.constexpr(3.4028234663852886e38)


@triton.jit
def _distances(x, stride_xn, stride_xf, cols, mask, q0, q1, q2,
               F: tl.constexpr):
    # Squared distances between the queries q* and the candidates at cols,
    # broadcast: ((q0 - x0)^2 + (q1 - x1)^2) + (q2 - x2)^2, at most the
    # largest float32.
    diff = q0 - tl.load(x + cols * stride_xn, mask=mask, other=0.0)
    d = diff * diff
    if F > 1:
        diff = q1 - tl.load(x + cols * stride_xn + stride_xf, mask=mask,
                            other=0.0)
        d = d + diff * diff
    if F > 2:
        diff = q2 - tl.load(x + cols * stride_xn + 2 * stride_xf,
                            mask=mask, other=0.0)
        d = d + diff * diff
    return ranking_distance(d)


@triton.jit
def ranking_distance(d):
    # d, with squares that overflow (and NaN) as the largest float32: they
    # rank after every finite distance and before the +inf of candidates
    # left out and empty slots, as the fallback ranks them
    # (_fallback.blocks.exclude).
    return tl.where(d < _FLOAT32_MAX, d, _FLOAT32_MAX)


@triton.jit
def _tile_distances(x, stride_xn, stride_xf, cols, hi, ok, q0, q1, q2,
                    F: tl.constexpr):
    # [BLOCK_Q, BLOCK_P] squared distances of the queries to the tile's
    # candidates cols, +inf where ok (the query's example) is False.
    d = _distances(x, stride_xn, stride_xf, cols[None, :],
                   cols[None, :] < hi, q0[:, None], q1[:, None],
                   q2[:, None], F)
    return tl.where(ok, d, float('inf'))


@triton.jit
def _keys(d, index):
    # bits(d) * 2^32 + index: ordered as (d, index) for d >= 0.
    return (d.to(tl.int32, bitcast=True).to(tl.int64) << 32) | \
        index.to(tl.int64)


@triton.jit
def _lower_bound(batch, n, value):
    # Per entry of value: the first position of the sorted batch[0:n]
    # whose entry is >= it (n if none), by bisection. Any batch vector
    # gives a position in [0, n]: the loads stay in bounds.
    lo = tl.zeros_like(value)
    hi = lo + n
    while tl.max((lo < hi).to(tl.int32), axis=0) > 0:
        active = lo < hi
        mid = (lo + hi) // 2
        less = tl.load(batch + mid, mask=active, other=0) < value
        lo = tl.where(active & less, mid + 1, lo)
        hi = tl.where(active & ~less, mid, hi)
    return lo


# The sizes of a batch (N, M, B) are not specialised on (Triton would
# compile a kernel per value class: equal to 1, divisible by 16 or
# neither): the kernel takes seconds to compile for sm90
# (docs/benchmarks.md, Geometry ops), and batches of clouds of varying
# sizes would compile up to twelve.
@triton.jit(do_not_specialize=['N', 'M', 'B'])
def _dense_knn_kernel(x, stride_xn, stride_xf, y, stride_yn, stride_yf,
                      batch_y, batch_x, out, missing, N, M, K, B,
                      F: tl.constexpr, KP: tl.constexpr,
                      LOG_P: tl.constexpr, HAS_BATCH: tl.constexpr,
                      COUNT: tl.constexpr,
                      BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < M
    # Candidates of each query's example: [c_start, c_end), in bounds
    # whatever the batch vectors hold.
    if HAS_BATCH:
        b = tl.load(batch_y + rows, mask=row_ok, other=0)
        b = tl.minimum(tl.maximum(b, 0), B - 1)
        # The example's candidates, found in the sorted batch_x: both
        # ends in one bisection.
        ends = _lower_bound(batch_x, N, tl.reshape(
            tl.join(b, b + 1), [2 * BLOCK_Q]))  # [2 * BLOCK_Q]
        c_start, c_end = tl.split(tl.reshape(ends.to(tl.int32),
                                             [BLOCK_Q, 2]))
        c_start = tl.minimum(c_start, c_end)
    else:
        c_start = tl.zeros([BLOCK_Q], dtype=tl.int32)
        c_end = tl.zeros([BLOCK_Q], dtype=tl.int32) + N
    c_end = tl.where(row_ok, c_end, c_start)
    lo = tl.min(tl.where(row_ok, c_start, N), axis=0)
    hi = tl.max(c_end, axis=0)

    q0 = tl.load(y + rows * stride_yn, mask=row_ok, other=0.0)
    q1 = q0
    q2 = q0
    if F > 1:
        q1 = tl.load(y + rows * stride_yn + stride_yf, mask=row_ok,
                     other=0.0)
    if F > 2:
        q2 = tl.load(y + rows * stride_yn + 2 * stride_yf, mask=row_ok,
                     other=0.0)

    best = tl.full([BLOCK_Q, KP], _NO_KEY, tl.int64)
    slot = tl.arange(0, KP)
    local = tl.arange(0, BLOCK_P)
    for p0 in range(lo, hi, BLOCK_P):
        cols = p0 + local
        ok = (cols[None, :] >= c_start[:, None]) & \
            (cols[None, :] < c_end[:, None])
        d = _tile_distances(x, stride_xn, stride_xf, cols, hi, ok, q0, q1,
                            q2, F)  # [BLOCK_Q, BLOCK_P]
        # The tile's K least (class, column) keys, one per round: the
        # least key, then struck out (one row reduction and one select).
        key = ((d.to(tl.int32, bitcast=True) >> LOG_P) << LOG_P) | \
            local[None, :]  # [BLOCK_Q, BLOCK_P]
        chosen = tl.full([BLOCK_Q, KP], _NO_KEY32, tl.int32)
        k_min = tl.zeros([BLOCK_Q], dtype=tl.int32)
        for r in range(K):
            k_min = tl.min(key, axis=1)  # [BLOCK_Q]
            chosen = tl.where(slot[None, :] == r, k_min[:, None], chosen)
            key = tl.where(key == k_min[:, None], _NO_KEY32, key)
        # The chosen set is exact unless the last chosen key's class
        # (finite) holds a candidate left out that is nearer than the
        # chosen k-th (those of equal distance have larger indices).
        last = k_min >> LOG_P  # [BLOCK_Q]
        rest = tl.sum(((key >> LOG_P) == last[:, None]).to(tl.int32), axis=1)
        left_out = (rest > 0) & (last < _INF_BITS >> LOG_P)
        # Exact (distance, index) keys of the chosen, from their
        # distances computed again (the same arithmetic), in order.
        found = (chosen >> LOG_P) < (_INF_BITS >> LOG_P)
        nbr = p0 + (chosen & (BLOCK_P - 1))  # [BLOCK_Q, KP]
        d_nbr = _distances(x, stride_xn, stride_xf, nbr, found,
                           q0[:, None], q1[:, None], q2[:, None], F)
        top = tl.where(found, _keys(d_nbr, nbr), _NO_KEY)
        top = ~tl.topk(~top, KP, dim=1)  # ascending
        if tl.max(left_out.to(tl.int32), axis=0) > 0:
            # Only where distances tie in their leading bits: the
            # distances again, the nearest candidate left out of the last
            # class against the chosen k-th.
            d = _tile_distances(x, stride_xn, stride_xf, cols, hi, ok, q0,
                                q1, q2, F)  # [BLOCK_Q, BLOCK_P]
            d_left = tl.min(tl.where((key >> LOG_P) == last[:, None], d,
                                     float('inf')), axis=1)
            kth = tl.max(tl.where(slot[None, :] == K - 1, top, 0), axis=1)
            again = left_out & (d_left.to(tl.int32, bitcast=True)
                                .to(tl.int64) < (kth >> 32))
            if tl.max(again.to(tl.int32), axis=0) > 0:
                # Those rows are ranked again by exact rounds: the least
                # distance, the least index holding it, then struck out.
                d = tl.where(again[:, None], d, float('inf'))
                exact = tl.full([BLOCK_Q, KP], _NO_KEY, tl.int64)
                for r in range(K):
                    d_min = tl.min(d, axis=1)  # [BLOCK_Q]
                    j = tl.min(tl.where(d == d_min[:, None], cols[None, :],
                                        _NO_INDEX), axis=1)
                    exact = tl.where(
                        slot[None, :] == r,
                        tl.where(d_min == float('inf'), _NO_KEY,
                                 _keys(d_min, j))[:, None], exact)
                    d = tl.where(cols[None, :] == j[:, None], float('inf'),
                                 d)
                top = tl.where(again[:, None], exact, top)
        if p0 == lo:
            best = top
        else:  # the KP smallest keys of both lists
            both = tl.reshape(tl.join(best, top), [BLOCK_Q, 2 * KP])
            best = ~tl.topk(~both, KP, dim=1)

    # out[0]: the query, out[1]: its neighbours; -1 in empty slots.
    keep = row_ok[:, None] & (slot[None, :] < K)
    empty = best == _NO_KEY
    nbr = tl.where(empty, -1, best & _INDEX_BITS)
    offs = rows[:, None].to(tl.int64) * K + slot[None, :]
    tl.store(out + offs, tl.where(empty, -1, rows[:, None].to(tl.int64)),
             mask=keep)
    tl.store(out + M * K + offs, nbr, mask=keep)
    if COUNT:
        tl.atomic_add(missing, tl.sum(tl.sum((empty & keep).to(tl.int64),
                                             axis=1), axis=0))


_launch_dense_knn = Launcher(_dense_knn_kernel)


def dense_config(mean_size: int) -> Tuple[int, int, int]:
    r"""(``BLOCK_Q``, ``BLOCK_P``, warps) for examples of
    :obj:`mean_size` candidates (any :math:`k`): a tile spans a whole
    mean-size example (at most 1,024 candidates), and a program of one
    warp holds 4,096 keys (128 per thread), so that each round's row
    reductions stay within the warp: the fastest of the configurations
    timed on the H200 at 128 clouds x 1,024 points and k = 16
    (``benchmarks/ops.py --sweep``)."""
    if INTERPRETED:
        return 16, 32, 1
    block_p = max(min(triton.next_power_of_2(max(mean_size, 1)), 1024), 64)
    return max(4096 // block_p, 1), block_p, 1


def knn_dense(x: Tensor, y: Tensor, k: int, batch_x: Optional[Tensor],
              batch_y: Optional[Tensor], num_examples: int,
              missing: Optional[Tensor] = None) -> Tensor:
    r"""For every query of :obj:`y`, its :obj:`k` nearest candidates of
    :obj:`x` in the same example, in ascending (distance, index) order.

    Args:
        x (Tensor): Candidates :obj:`[N, F]` float32, :math:`F \le 3`.
        y (Tensor): Queries :obj:`[M, F]` float32 (may be :obj:`x`).
        k (int): Neighbours per query, at most
            :obj:`samsa_geo.ops._triton.MAX_K`.
        batch_x (Tensor, optional): Sorted batch vector of :obj:`x`
            :obj:`[N]` (each query's example is found in it by
            bisection, in the kernel); :obj:`None` for one example.
        batch_y (Tensor, optional): Sorted batch vector of :obj:`y`
            :obj:`[M]`; :obj:`None` for one example.
        num_examples (int): :math:`B`.
        missing (Tensor, optional): An int64 scalar that the number of
            empty slots is added to. (default: :obj:`None`)

    Returns:
        :obj:`[2, M, k]` int64: row 0 the query, row 1 its neighbours'
        global indices; :obj:`-1` in both where an example holds fewer than
        :obj:`k` candidates.
    """
    n, num_features = x.size()
    m = y.size(0)
    out = torch.empty(2, m, k, dtype=torch.long, device=x.device)
    if m == 0:
        return out
    block_q, block_p, num_warps = dense_config(n // max(num_examples, 1))
    _launch_dense_knn(
        (triton.cdiv(m, block_q), ),
        x, x.stride(0), x.stride(1), y, y.stride(0), y.stride(1),
        out if batch_y is None else batch_y,
        out if batch_x is None else batch_x,
        out, out if missing is None else missing, n, m, k,
        max(num_examples, 1), F=num_features,
        KP=max(triton.next_power_of_2(k), 2),
        LOG_P=block_p.bit_length() - 1,
        HAS_BATCH=batch_y is not None and batch_x is not None,
        COUNT=missing is not None, BLOCK_Q=block_q, BLOCK_P=block_p,
        num_warps=num_warps, enable_fp_fusion=False)
    return out
