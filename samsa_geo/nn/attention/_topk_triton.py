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

Sets with more candidates than one block
(:data:`~samsa_geo.nn.attention._dispatch.SELECT_MAX_BLOCK`) run in two
launches: one program per chunk of a set and head selects the chunk's top
:math:`k_b` tokens, then one program per set and head selects the top
:math:`k_b` of the chunks' winners and the registers (``_merge_topk``).
Chunk winners are written in token order, so ties still go to the lower
index.

Indices are written in the layout of ``SamsaAttention``'s
``return_indices``: token :math:`i` as :math:`i`, register :math:`r` as
:math:`-2 - r`, unused slots as :math:`-1`; selected candidates in
candidate order (tokens, then registers), not by score.

Forward only, no gradient. Importing this module needs Triton.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.nn.attention._dispatch import selection_chunks
from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.launch import Launcher

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
def _order_key(s):
    # A float32 score as an int32 key of the same order (+0.0 == -0.0):
    # negative floats order backwards as integers, so their value bits
    # are flipped.
    bits = (s + 0.0).to(tl.int32, bitcast=True)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


@triton.jit
def _write_top(OUT, s, valid, ids, kb, K_MAX, BLOCK_K: tl.constexpr):
    # Writes to OUT (K_MAX slots) the ids of the k_b largest valid scores
    # s, ties to the lower position, in position order, then -1 in the
    # unused slots. The k_b-th largest key is found from its sign, then
    # one bit at a time from the highest (adding a lower bit raises a
    # negative int32 too).
    key = _order_key(s)
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
    tl.store(OUT + slot, ids, mask=keep)
    j = tl.arange(0, BLOCK_K)
    tl.store(OUT + j, tl.full([BLOCK_K], -1, tl.int64),
             mask=(j >= kb) & (j < K_MAX))


@triton.jit
def _select_topk(
    S, REG_S, BATCH, KB, IDX, BOUNDS,
    s_n, s_h, sr_r, sr_h, si_b, si_h,
    N, K, R, K_MAX, n_equal, steps, chunk, n_chunks,
    H: tl.constexpr, EQUAL: tl.constexpr, HAS_KB: tl.constexpr,
    HAS_BOUNDS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
    FANOUT: tl.constexpr,
):
    # Program (b, c, h): chunk c (tokens c * chunk .. of set b; the whole
    # set where n_chunks = 1) and head h; output row b * n_chunks + c.
    pid = tl.program_id(0)
    h = pid % H
    row = pid // H
    b = row // n_chunks
    c = row % n_chunks
    if EQUAL:
        start = b.to(tl.int64) * n_equal
        end = start + n_equal
    else:
        start, end = set_bounds(BATCH, N, b, steps, FANOUT)
        if HAS_BOUNDS:  # for the attention kernel: [B, 2] start, end
            first = (h == 0) & (c == 0)
            tl.store(BOUNDS + 2 * b, start, mask=first)
            tl.store(BOUNDS + 2 * b + 1, end, mask=first)
    start += c.to(tl.int64) * chunk
    n = tl.minimum(tl.maximum(end - start, 0), chunk)
    offs = tl.arange(0, BLOCK_S)
    is_tok = offs < n
    is_reg = (offs >= n) & (offs < n + R)
    s = tl.load(S + (start + offs) * s_n + h * s_h, mask=is_tok, other=0.0)
    s_reg = tl.load(REG_S + (offs - n) * sr_r + h * sr_h, mask=is_reg,
                    other=0.0)
    kb = tl.minimum(K, n + R)
    if HAS_KB:
        kb = tl.minimum(tl.load(KB + b), n + R)
    ids = tl.where(is_tok, start + offs, -2 - (offs - n))
    _write_top(IDX + row.to(tl.int64) * si_b + h * si_h,
               tl.where(is_tok, s.to(tl.float32), s_reg.to(tl.float32)),
               is_tok | is_reg, ids, kb, K_MAX, BLOCK_K)


@triton.jit
def _merge_topk(
    S, REG_S, CAND, BOUNDS, KB, IDX,
    s_n, s_h, sr_r, sr_h, sc_b, sc_h, si_b, si_h,
    K, R, K_MAX, n_equal, n_chunks,
    H: tl.constexpr, EQUAL: tl.constexpr, HAS_KB: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # Program (b, h): the top k_b of set b's chunk winners (CAND rows
    # b * n_chunks .., K_MAX slots each, -1 unused) and the registers.
    # Winners are in token order (chunks in order, each in candidate
    # order), so ties go to the lower token, as in one block.
    b = tl.program_id(0) // H
    h = tl.program_id(0) % H
    M = n_chunks * K_MAX
    offs = tl.arange(0, BLOCK_S)
    is_cand = offs < M
    cand = CAND + (b.to(tl.int64) * n_chunks + offs // K_MAX) * sc_b \
        + h * sc_h + offs % K_MAX
    tok = tl.load(cand, mask=is_cand, other=-1)
    is_tok = tok >= 0
    is_reg = (offs >= M) & (offs < M + R)
    s = tl.load(S + tl.where(is_tok, tok, 0) * s_n + h * s_h, mask=is_tok,
                other=0.0)
    s_reg = tl.load(REG_S + (offs - M) * sr_r + h * sr_h, mask=is_reg,
                    other=0.0)
    if EQUAL:
        n = n_equal
    else:
        n = tl.load(BOUNDS + 2 * b + 1) - tl.load(BOUNDS + 2 * b)
    kb = tl.minimum(K, n + R)
    if HAS_KB:
        kb = tl.minimum(tl.load(KB + b), n + R)
    ids = tl.where(is_tok, tok, -2 - (offs - M))
    _write_top(IDX + b.to(tl.int64) * si_b + h * si_h,
               tl.where(is_tok, s.to(tl.float32), s_reg.to(tl.float32)),
               is_tok | is_reg, ids, kb, K_MAX, BLOCK_K)


_launch_select_topk = Launcher(_select_topk)
_launch_merge_topk = Launcher(_merge_topk)


def select_topk_triton(score: Tensor, reg_score: Optional[Tensor],
                       batch: Optional[Tensor], num_sets: int,
                       max_size: int, k: int, k_max: int,
                       kb: Optional[Tensor] = None,
                       with_bounds: bool = False):
    r"""Top-:math:`k_b` candidates of every set and head: one kernel
    launch where a set's candidates fit one block, two (chunks, then
    their merge) for larger sets (see
    :func:`~samsa_geo.nn.attention._dispatch.selection_chunks`).

    Args:
        score (Tensor): ``[N, H]`` token scores (float32, float16 or
            bfloat16; ranked as float32).
        reg_score (Tensor, optional): ``[R, H]`` register scores, the same
            for every set.
        batch (Tensor, optional): ``[N]`` sorted set index per token;
            :obj:`None` when the ``num_sets`` sets all hold ``max_size``
            tokens (set :math:`b` starts at :math:`b \cdot n`).
        num_sets (int): :math:`B`.
        max_size (int): :math:`n_{\max}`.
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
    chunks = selection_chunks(max_size, R, k_max)
    if chunks == 0:
        raise ValueError(f"Expected sets the selection kernel serves (got "
                         f"{max_size} tokens, {R} registers and k_max = "
                         f"{k_max}; see selection_chunks)")
    device = score.device
    idx = torch.empty(num_sets, H, k_max, dtype=torch.long, device=device)
    bounds = None
    if batch is not None and (with_bounds or chunks > 1):
        bounds = torch.empty(num_sets, 2, dtype=torch.long, device=device)
    if num_sets > 0 and k_max > 0:
        reg = score if reg_score is None else reg_score  # never read if R=0
        # Chunks: their winners first (no registers), then the merge.
        rows = idx if chunks == 1 else torch.empty(
            num_sets * chunks, H, k_max, dtype=torch.long, device=device)
        chunk = -(-max_size // chunks)
        block_s = max(16, triton.next_power_of_2(
            max_size + R if chunks == 1 else chunk))
        _launch_select_topk(
            (num_sets * chunks * H, ),
            score, reg, score if batch is None else batch,
            score if kb is None else kb, rows,
            rows if bounds is None else bounds,
            score.stride(0), score.stride(1), reg.stride(0), reg.stride(1),
            rows.stride(0), rows.stride(1),
            N, k, R if chunks == 1 else 0, k_max, max_size,
            search_steps(N, SEARCH_FANOUT), chunk, chunks,
            H=H, EQUAL=batch is None, HAS_KB=kb is not None,
            HAS_BOUNDS=bounds is not None, BLOCK_S=block_s,
            BLOCK_K=max(16, triton.next_power_of_2(k_max)),
            FANOUT=SEARCH_FANOUT, num_warps=_warps(block_s))
        if chunks > 1:
            block_s = max(16, triton.next_power_of_2(chunks * k_max + R))
            _launch_merge_topk(
                (num_sets * H, ),
                score, reg, rows, rows if bounds is None else bounds,
                score if kb is None else kb, idx,
                score.stride(0), score.stride(1), reg.stride(0),
                reg.stride(1), rows.stride(0), rows.stride(1),
                idx.stride(0), idx.stride(1), k, R, k_max, max_size, chunks,
                H=H, EQUAL=batch is None, HAS_KB=kb is not None,
                BLOCK_S=block_s,
                BLOCK_K=max(16, triton.next_power_of_2(k_max)),
                num_warps=_warps(block_s))
    return (idx, bounds) if with_bounds else idx


def _warps(block_s: int) -> int:
    # About 8 scores per thread (sm_90: no spills up to 4,096).
    return 1 if INTERPRETED else min(32, max(4, block_s // 256))
