r"""Exact k-nearest neighbours of small examples on the GPU, written in
Triton: every query is ranked against every candidate of its example.

One program ranks ``BLOCK_Q`` consecutive queries (in their input order, no
sorting) against the candidates of their examples, streamed in tiles of
``BLOCK_P`` consecutive candidates; it finds each query's example in the
sorted batch vector of the candidates by bisection (no boundaries computed
before the launch). Each pair becomes one 64-bit key,

.. math::
    \kappa_{ij} = \operatorname{bits}(d_{ij}) \cdot 2^{32} + j,

where :math:`\operatorname{bits}(d)` is the IEEE-754 pattern of the float32
squared distance. Squared distances are non-negative, so the order of the
keys is the order of :math:`(d_{ij}, j)`: by distance, equal distances by
index, as the brute-force reference with a stable sort. A tile's best
``k`` keys per query come from ``k`` rounds over its distances, held in
registers: the least distance, the least index that holds it, and that
candidate struck out (two row reductions and two selects per round, no
sort). A tile list is merged into the running best by a bitonic top-k of
the ``2 KP`` keys of both (:func:`triton.language.topk`).

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


@triton.jit
def _distances(x, stride_xn, stride_xf, cols, mask, q0, q1, q2,
               F: tl.constexpr):
    # Squared distances between the queries q* and the candidates at cols,
    # broadcast: ((q0 - x0)^2 + (q1 - x1)^2) + (q2 - x2)^2.
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
    return d


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


@triton.jit
def _dense_knn_kernel(x, stride_xn, stride_xf, y, stride_yn, stride_yf,
                      batch_y, batch_x, out, missing, N, M, K, B,
                      F: tl.constexpr, KP: tl.constexpr,
                      HAS_BATCH: tl.constexpr, COUNT: tl.constexpr,
                      BLOCK_Q: tl.constexpr, BLOCK_P: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    row_ok = rows < M
    # Candidates of each query's example: [c_start, c_end), in bounds
    # whatever the batch vectors hold.
    if HAS_BATCH:
        b = tl.load(batch_y + rows, mask=row_ok, other=0)
        b = tl.minimum(tl.maximum(b, 0), B - 1)
        # The example's candidates, found in the sorted batch_x.
        c_start = _lower_bound(batch_x, N, b).to(tl.int32)
        c_end = _lower_bound(batch_x, N, b + 1).to(tl.int32)
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
    for p0 in range(lo, hi, BLOCK_P):
        cols = p0 + tl.arange(0, BLOCK_P)
        ok = (cols[None, :] >= c_start[:, None]) & \
            (cols[None, :] < c_end[:, None])
        d = _distances(x, stride_xn, stride_xf, cols[None, :],
                       cols[None, :] < hi, q0[:, None], q1[:, None],
                       q2[:, None], F)  # [BLOCK_Q, BLOCK_P]
        d = tl.where(ok, d, float('inf'))
        # The tile's K smallest (distance, index) pairs, one per round:
        # the least distance, the least index holding it, then that
        # candidate is struck out.
        top = tl.full([BLOCK_Q, KP], _NO_KEY, tl.int64)
        for r in range(K):
            d_min = tl.min(d, axis=1)  # [BLOCK_Q]
            j = tl.min(tl.where(d == d_min[:, None], cols[None, :],
                                _NO_INDEX), axis=1)
            key = tl.where(d_min == float('inf'), _NO_KEY, _keys(d_min, j))
            top = tl.where(slot[None, :] == r, key[:, None], top)
            d = tl.where(cols[None, :] == j[:, None], float('inf'), d)
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
    warp holds 2,048 distances (64 per thread), so that each round's row
    reductions stay within the warp: the fastest of the configurations
    timed on the H200 at 128 clouds x 1,024 points and k = 16
    (``benchmarks/ops.py --sweep``)."""
    if INTERPRETED:
        return 16, 32, 1
    block_p = max(min(triton.next_power_of_2(max(mean_size, 1)), 1024), 64)
    return max(2048 // block_p, 1), block_p, 1


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
        HAS_BATCH=batch_y is not None and batch_x is not None,
        COUNT=missing is not None, BLOCK_Q=block_q, BLOCK_P=block_p,
        num_warps=num_warps, enable_fp_fusion=False)
    return out
