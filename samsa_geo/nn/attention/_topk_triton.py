r"""Segmented top-:math:`k` selection of the inference path, written in
Triton: one program per set and head keeps that set's candidate scores
(its tokens, then the register tokens) in registers and finds the
:math:`k_b`-th largest by bisection on the bits of the scores.

Every float32 score :math:`s` maps to a signed 32-bit key :math:`u(s)`
whose integer order is the float order. The threshold
:math:`t = \max\{v : |\{i : u_i \ge v\}| \ge k_b\}` is built bit by bit,
from the sign down, with one count per bit (32 block reductions, no
sort).
The selected set is every candidate with :math:`u_i > t` plus the
lowest-indexed ones with :math:`u_i = t` up to :math:`k_b`: the result set
of :func:`torch.topk`, with ties broken by the lower index.

Indices are written in the layout of ``SamsaAttention``'s
``return_indices``: token :math:`i` as :math:`i`, register :math:`r` as
:math:`-2 - r`, unused slots as :math:`-1`; selected candidates in
candidate order (tokens, then registers), not by score.

Forward only, no gradient. Importing this module needs Triton.
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton.launch import Launcher

# Triton's interpreter (``TRITON_INTERPRET=1``; tests on CPU) runs one warp.
_INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'
#: Probes per step of the search for a set's bounds in ``batch`` (a power
#: of 2).
SEARCH_FANOUT = 64


@triton.jit
def set_bounds(BATCH, N, b, steps, FANOUT: tl.constexpr):
    r"""``(start, end)`` of set ``b`` in the sorted ``batch`` vector of
    ``N`` entries: the first positions with ``batch >= b`` and
    ``>= b + 1``. Both searches run together; every step probes
    ``FANOUT`` evenly spaced entries of the remaining range and shrinks it
    ``FANOUT``-fold (``steps`` from :func:`search_steps`)."""
    value = b + tl.arange(0, 2).to(tl.int64)  # [2]: b, b + 1
    lo = tl.zeros([2], tl.int64)
    hi = tl.zeros([2], tl.int64) + N
    j = tl.arange(0, FANOUT).to(tl.int64)
    for _ in range(steps):
        # Invariant: batch[i] < value for i < lo, >= value for i >= hi.
        step = (hi - lo + FANOUT - 1) // FANOUT  # [2]
        probe = lo[:, None] + j[None, :] * step[:, None]  # [2, FANOUT]
        inside = probe < hi[:, None]
        seen = tl.load(BATCH + probe, mask=inside, other=0)
        below = tl.sum((inside & (seen < value[:, None])).to(tl.int64), 1)
        hi = tl.minimum(hi, lo + below * step)
        lo = tl.where(below > 0, lo + (below - 1) * step + 1, lo)
    start = tl.sum(tl.where(value == b, lo, 0))
    end = tl.sum(tl.where(value == b, 0, lo))
    return start, end


def search_steps(num_tokens: int, fanout: int) -> int:
    """Steps of :func:`set_bounds` that narrow ``num_tokens + 1`` possible
    positions to one."""
    steps, width = 0, num_tokens
    while width > 0:
        width = -(-width // fanout) - 1
        steps += 1
    return steps


@triton.jit
def _select_topk(
    S, REG_S, BATCH, KB, IDX, BOUNDS,
    s_n, s_h, sr_r, sr_h, si_b, si_h,
    N, K, R, K_MAX, n_equal, steps,
    H: tl.constexpr, EQUAL: tl.constexpr, HAS_KB: tl.constexpr,
    HAS_BOUNDS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
    FANOUT: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // H
    h = pid % H
    if EQUAL:
        start = b.to(tl.int64) * n_equal
        end = start + n_equal
    else:
        start, end = set_bounds(BATCH, N, b, steps, FANOUT)
        if HAS_BOUNDS:  # for the attention kernel: [B, 2] start, end
            tl.store(BOUNDS + 2 * b, start, mask=h == 0)
            tl.store(BOUNDS + 2 * b + 1, end, mask=h == 0)
    n = end - start
    offs = tl.arange(0, BLOCK_S)
    is_tok = offs < n
    is_reg = (offs >= n) & (offs < n + R)
    s = tl.load(S + (start + offs) * s_n + h * s_h, mask=is_tok, other=0.0)
    s_reg = tl.load(REG_S + (offs - n) * sr_r + h * sr_h, mask=is_reg,
                    other=0.0)
    # + 0.0 turns -0.0 into +0.0: the two are equal scores.
    s = tl.where(is_tok, s.to(tl.float32), s_reg.to(tl.float32)) + 0.0
    bits = s.to(tl.int32, bitcast=True)
    # Negative floats order backwards as integers: flip their value bits.
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32, signed order == float
    valid = is_tok | is_reg
    if HAS_KB:
        kb = tl.load(KB + b)
    else:
        kb = tl.minimum(K, n + R)

    # The k_b-th largest key: its sign, then one bit at a time from the
    # highest (adding a lower bit raises a negative int32 too).
    count = tl.sum((valid & (key >= 0)).to(tl.int32))
    thresh = tl.where(count >= kb, 0, -2147483648)
    for bit in tl.static_range(30, -1, -1):
        trial = thresh | (1 << bit)
        count = tl.sum((valid & (key >= trial)).to(tl.int32))
        thresh = tl.where(count >= kb, trial, thresh)
    above = valid & (key > thresh)
    tied = (valid & (key == thresh)).to(tl.int32)
    need = kb - tl.sum(above.to(tl.int32))
    keep = above | ((tied != 0) & (tl.cumsum(tied, 0) - tied < need))
    slot = tl.cumsum(keep.to(tl.int32), 0) - 1
    ids = tl.where(is_tok, start + offs, -2 - (offs - n))
    out = IDX + b.to(tl.int64) * si_b + h * si_h
    tl.store(out + slot, ids, mask=keep)
    j = tl.arange(0, BLOCK_K)
    tl.store(out + j, tl.full([BLOCK_K], -1, tl.int64),
             mask=(j >= kb) & (j < K_MAX))


_launch_select_topk = Launcher(_select_topk)


def select_topk_triton(score: Tensor, reg_score: Optional[Tensor],
                       batch: Optional[Tensor], num_sets: int,
                       max_size: int, k: int, k_max: int,
                       kb: Optional[Tensor] = None,
                       with_bounds: bool = False):
    r"""Top-:math:`k_b` candidates of every set and head, one kernel launch.

    Args:
        score (Tensor): ``[N, H]`` token scores (float32, float16 or
            bfloat16; ranked as float32).
        reg_score (Tensor, optional): ``[R, H]`` register scores, the same
            for every set.
        batch (Tensor, optional): ``[N]`` sorted set index per token;
            :obj:`None` when the ``num_sets`` sets all hold ``max_size``
            tokens (set :math:`b` starts at :math:`b \cdot n`).
        num_sets (int): :math:`B`.
        max_size (int): :math:`n_{\max}`, at most the kernel's block.
        k (int): keys per set, :math:`k_b = \min(k, n_b + R)` unless
            ``kb`` gives them.
        k_max (int): slots per set and head, :math:`\ge \max_b k_b`.
        kb (Tensor, optional): ``[B]`` keys per set.
        with_bounds (bool): also return the sets' ``[B, 2]`` (start, end)
            offsets found in ``batch`` (ragged sets only).

    Returns:
        ``[B, H, k_max]`` int64 ids (tokens :math:`i`, registers
        :math:`-2 - r`, unused slots :math:`-1`), and the bounds
        (:obj:`None` where ``batch`` is :obj:`None`) with
        ``with_bounds``.
    """
    N, H = score.shape
    R = 0 if reg_score is None else reg_score.size(0)
    device = score.device
    idx = torch.empty(num_sets, H, k_max, dtype=torch.long, device=device)
    bounds = None
    if batch is not None and with_bounds:
        bounds = torch.empty(num_sets, 2, dtype=torch.long, device=device)
    if num_sets > 0 and k_max > 0:
        reg = score if reg_score is None else reg_score  # never read if R=0
        block_s = max(16, triton.next_power_of_2(max_size + R))
        # About 8 scores per thread (sm_90: no spills up to 4,096).
        warps = 1 if _INTERPRETED else min(32, max(4, block_s // 256))
        _launch_select_topk(
            (num_sets * H, ),
            score, reg, score if batch is None else batch,
            score if kb is None else kb, idx,
            idx if bounds is None else bounds,
            score.stride(0), score.stride(1), reg.stride(0), reg.stride(1),
            idx.stride(0), idx.stride(1),
            N, k, R, k_max, max_size, search_steps(N, SEARCH_FANOUT),
            H=H, EQUAL=batch is None, HAS_KB=kb is not None,
            HAS_BOUNDS=bounds is not None, BLOCK_S=block_s,
            BLOCK_K=max(16, triton.next_power_of_2(k_max)),
            FANOUT=SEARCH_FANOUT, num_warps=warps)
    return (idx, bounds) if with_bounds else idx
