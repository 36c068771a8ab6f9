r"""Softmax attention of query tiles over their few keys, forward and
backward, written in Triton.

On the general path every tile of :math:`T` queries attends to the
:math:`k` keys of its set (see :mod:`~samsa_geo.nn.attention._tiles`):
each tile and head is a short, wide problem (thousands of queries, a few
hundred keys of a narrow head). All of a tile's keys fit in one block, so

- the forward kernel computes every query block's softmax exactly, in one
  pass over the keys (no running maximum), and writes the output in the
  token-major layout ``[nt, T, H, D]`` that the tiles are read back in
  (no copy afterwards), with the base-2 log-sum-exp of every row;
- the backward pass is two kernels: one per query block (all keys in
  registers) writes :math:`\mathbf{dQ}` and the row terms
  :math:`\delta_i = \mathbf{o}_i^\top \mathbf{do}_i`, one per key block
  loops over the tile's query blocks and accumulates
  :math:`\mathbf{dK}, \mathbf{dV}` in registers: no atomics.

.. math::
    \mathbf{P} = \mathrm{softmax}\big(\mathbf{Q}\mathbf{K}^\top / \sqrt{D}
    + \mathbf{b}\big), \quad \mathbf{O} = \mathbf{P}\mathbf{V}, \quad
    \mathbf{dS} = \mathbf{P} \odot (\mathbf{dO}\,\mathbf{V}^\top -
    \boldsymbol{\delta}), \quad \mathbf{dQ} = \mathbf{dS}\,\mathbf{K} /
    \sqrt{D}, \quad \mathbf{dK} = \mathbf{dS}^\top \mathbf{Q} / \sqrt{D},
    \quad \mathbf{dV} = \mathbf{P}^\top \mathbf{dO},

with :math:`\mathbf{b}` an additive key bias per tile (:math:`-\infty` on
masked keys). Products in float32 accumulation; a row without any key
gives zeros (and zero gradients).

The same kernels serve sets that keep all their tokens on their packed
rows (:func:`packed_attention_triton`): tile :math:`t` is then set
:math:`t`, rows :math:`\mathrm{ptr}_t` to :math:`\mathrm{ptr}_{t+1}` of
the stacked projection ``[N, 3C]``, both its queries and its keys, so a
ragged batch of small graphs needs neither padding nor read-back, and the
backward writes the projection's gradient in place. Importing this module
needs Triton.
"""
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.nn.attention._dispatch import (
    TILE_ATTENTION_MAX_HEAD_DIM,
    TILE_ATTENTION_MAX_KEYS,
)
from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.dot import dot
from samsa_geo.ops._triton.launch import Launcher

_LOG2E = 1.0 / math.log(2.0)
MAX_KEYS = TILE_ATTENTION_MAX_KEYS
MAX_HEAD_DIM = TILE_ATTENTION_MAX_HEAD_DIM


@triton.jit
def _block(PTR, t, h, s_t, s_h, s_r, offs_r, offs_d, mask_r, mask_d):
    # Rows offs_r of head h of tile t: a [rows, BLOCK_D] block, 0 outside.
    return tl.load(PTR + t * s_t + h * s_h + offs_r[:, None] * s_r
                   + offs_d[None, :], mask=mask_r[:, None] & mask_d[None, :],
                   other=0.0)


@triton.jit
def _store_block(PTR, value, t, h, s_t, s_h, s_r, offs_r, offs_d, mask_r,
                 mask_d):
    tl.store(PTR + t * s_t + h * s_h + offs_r[:, None] * s_r
             + offs_d[None, :], value.to(PTR.dtype.element_ty),
             mask=mask_r[:, None] & mask_d[None, :])


@triton.jit
def _key_bias(BIAS, t, sb_t, offs_k, mask_k, HAS_BIAS: tl.constexpr):
    # The keys' additive bias in base 2: the given one times log2(e),
    # -inf on masked and padded keys.
    bias = tl.where(mask_k, 0.0, float('-inf'))
    if HAS_BIAS:
        bias += tl.load(BIAS + t * sb_t + offs_k, mask=mask_k,
                        other=0.0) * 1.4426950408889634
    return bias


@triton.jit
def _lse(LSE, row0, offs_m, mask_m):
    # The rows' base-2 log-sum-exp; a row without keys (-inf) reads 0, a
    # row past the tile +inf: the weights exp2(s - lse) are then zero.
    lse = tl.load(LSE + row0 + offs_m, mask=mask_m, other=float('inf'))
    return tl.where(lse == float('-inf'), 0.0, lse)


@triton.jit
def _logits(q, k, BIAS, t, sb_t, offs_k, mask_k, qk_scale,
            HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
            UPCAST: tl.constexpr):
    # Base-2 logits [BLOCK_M, BLOCK_K] of the queries over all keys, the
    # keys' bias added (-inf on masked and padded keys).
    return dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale \
        + _key_bias(BIAS, t, sb_t, offs_k, mask_k, HAS_BIAS)[None, :]


@triton.jit
def _tile_and_head(PTR, H: tl.constexpr, T, NK, N, PACKED: tl.constexpr):
    # Program axis 0 is (tile t, head h). Returns the tile's base (t; on
    # packed rows its first row, the rows' stride passed as the tiles'),
    # h, the first of its rows in the row terms (log-sum-exp, delta:
    # [nt * H * T], or [H * N] on packed rows), its queries and its keys
    # (on packed rows both the set's size, ptr[t + 1] - ptr[t]).
    pid = tl.program_id(0)
    t = (pid // H).to(tl.int64)
    h = pid % H
    if PACKED:
        base = tl.load(PTR + t).to(tl.int64)
        T = (tl.load(PTR + t + 1) - base).to(tl.int32)
        NK = T
        row0 = h.to(tl.int64) * N + base
    else:
        base = t
        row0 = pid.to(tl.int64) * T
    return base, h, row0, T, NK


@triton.jit
def _query_block_logits(
    Q, K, V, BIAS, PTR, sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h,
    sv_n, sb_t, T, NK, N, D, qk_scale, H: tl.constexpr,
    HAS_BIAS: tl.constexpr, PACKED: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    # The program's tile, head and query block (axis 1), all of the
    # tile's keys and values, and the block's base-2 logits over them.
    t, h, row0, T, NK = _tile_and_head(PTR, H, T, NK, N, PACKED)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m, mask_k, mask_d = offs_m < T, offs_k < NK, offs_d < D
    q = _block(Q, t, h, sq_t, sq_h, sq_m, offs_m, offs_d, mask_m, mask_d)
    k = _block(K, t, h, sk_t, sk_h, sk_n, offs_k, offs_d, mask_k, mask_d)
    v = _block(V, t, h, sv_t, sv_h, sv_n, offs_k, offs_d, mask_k, mask_d)
    s = _logits(q, k, BIAS, t, sb_t, offs_k, mask_k, qk_scale, HAS_BIAS,
                PRECISION, UPCAST)
    return t, h, row0, offs_m, offs_d, mask_m, mask_d, k, v, s


@triton.jit
def _tile_attention_fwd(
    Q, K, V, BIAS, OUT, LSE, PTR,
    sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n, sb_t,
    so_t, so_h, so_m, T, NK, N, D, qk_scale,
    H: tl.constexpr, HAS_BIAS: tl.constexpr, PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    t, h, row0, offs_m, offs_d, mask_m, mask_d, k, v, s = \
        _query_block_logits(
            Q, K, V, BIAS, PTR, sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t,
            sv_h, sv_n, sb_t, T, NK, N, D, qk_scale, H, HAS_BIAS, PACKED,
            BLOCK_M, BLOCK_K, BLOCK_D, PRECISION, UPCAST)
    m = tl.max(s, 1)
    m_use = tl.where(m == float('-inf'), 0.0, m)
    p = tl.exp2(s - m_use[:, None])
    denom = tl.sum(p, 1)
    o = dot(p.to(v.dtype), v, PRECISION, UPCAST) / tl.where(
        denom == 0.0, 1.0, denom)[:, None]
    _store_block(OUT, o, t, h, so_t, so_h, so_m, offs_m, offs_d, mask_m,
                 mask_d)
    lse = tl.where(denom == 0.0, float('-inf'), m_use + tl.log2(denom))
    tl.store(LSE + row0 + offs_m, lse, mask=mask_m)


@triton.jit
def _tile_attention_bwd_dq(
    Q, K, V, BIAS, OUT, DO, LSE, DQ, DELTA, PTR,
    sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n, sb_t,
    so_t, so_h, so_m, sd_t, sd_h, sd_m, sg_t, sg_h, sg_m, T, NK, N, D,
    qk_scale, scale,
    H: tl.constexpr, HAS_BIAS: tl.constexpr, PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    t, h, row0, offs_m, offs_d, mask_m, mask_d, k, v, s = \
        _query_block_logits(
            Q, K, V, BIAS, PTR, sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t,
            sv_h, sv_n, sb_t, T, NK, N, D, qk_scale, H, HAS_BIAS, PACKED,
            BLOCK_M, BLOCK_K, BLOCK_D, PRECISION, UPCAST)
    o = _block(OUT, t, h, so_t, so_h, so_m, offs_m, offs_d, mask_m, mask_d)
    do = _block(DO, t, h, sd_t, sd_h, sd_m, offs_m, offs_d, mask_m, mask_d)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # [BLOCK_M]
    tl.store(DELTA + row0 + offs_m, delta, mask=mask_m)
    p = tl.exp2(s - _lse(LSE, row0, offs_m, mask_m)[:, None])
    dp = dot(do, tl.trans(v), PRECISION, UPCAST)  # [BLOCK_M, BLOCK_K]
    ds = p * (dp - delta[:, None])
    dq = dot(ds.to(k.dtype), k, PRECISION, UPCAST) * scale
    _store_block(DQ, dq, t, h, sg_t, sg_h, sg_m, offs_m, offs_d, mask_m,
                 mask_d)


@triton.jit
def _tile_attention_bwd_dkdv(
    Q, K, V, BIAS, DO, LSE, DELTA, DK, DV, PTR,
    sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n, sb_t,
    sd_t, sd_h, sd_m, sdk_t, sdk_h, sdk_n, sdv_t, sdv_h, sdv_n, T, NK, N,
    D, qk_scale, scale,
    H: tl.constexpr, HAS_BIAS: tl.constexpr, PACKED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
):
    t, h, row0, T, NK = _tile_and_head(PTR, H, T, NK, N, PACKED)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n, mask_d = offs_n < NK, offs_d < D
    k = _block(K, t, h, sk_t, sk_h, sk_n, offs_n, offs_d, mask_n, mask_d)
    v = _block(V, t, h, sv_t, sv_h, sv_n, offs_n, offs_d, mask_n, mask_d)
    bias = _key_bias(BIAS, t, sb_t, offs_n, mask_n, HAS_BIAS)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, T, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        mask_m = offs_m < T
        q = _block(Q, t, h, sq_t, sq_h, sq_m, offs_m, offs_d, mask_m,
                   mask_d)
        do = _block(DO, t, h, sd_t, sd_h, sd_m, offs_m, offs_d, mask_m,
                    mask_d)
        lse = _lse(LSE, row0, offs_m, mask_m)
        delta = tl.load(DELTA + row0 + offs_m, mask=mask_m, other=0.0)
        st = dot(k, tl.trans(q), PRECISION, UPCAST) * qk_scale \
            + bias[:, None]  # [BLOCK_N, BLOCK_M]
        pt = tl.exp2(st - lse[None, :])
        dv += dot(pt.to(do.dtype), do, PRECISION, UPCAST)
        dpt = dot(v, tl.trans(do), PRECISION, UPCAST)
        dst = pt * (dpt - delta[None, :])
        dk += dot(dst.to(q.dtype), q, PRECISION, UPCAST)
    _store_block(DK, dk * scale, t, h, sdk_t, sdk_h, sdk_n, offs_n, offs_d,
                 mask_n, mask_d)
    _store_block(DV, dv, t, h, sdv_t, sdv_h, sdv_n, offs_n, offs_d, mask_n,
                 mask_d)


_launch_fwd = Launcher(_tile_attention_fwd)
_launch_bwd_dq = Launcher(_tile_attention_bwd_dq)
_launch_bwd_dkdv = Launcher(_tile_attention_bwd_dkdv)


def _meta(dtype: torch.dtype, head_dim: int) -> dict:
    # BLOCK_D (heads of head_dim channels) and the precision arguments of
    # every kernel.
    return {'BLOCK_D': max(16, triton.next_power_of_2(head_dim)),
            'PRECISION': 'ieee' if dtype == torch.float32 else 'tf32',
            'UPCAST': INTERPRETED and dtype == torch.bfloat16}


def _block_k(num_keys: int) -> int:
    return max(16, triton.next_power_of_2(num_keys))


def _strides(t: Tensor) -> Tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _fwd_blocks(block_k: int) -> Tuple[int, int]:
    # The forward's query block and warps for blocks of block_k keys.
    if INTERPRETED:
        return 16, 4
    return (32, 8) if block_k >= 256 else (64, 4)


def _bwd_blocks(block_k: int) -> Tuple[int, int, int]:
    # The backward's query block (dQ), warps (dQ) and key / query blocks
    # (dK, dV).
    if INTERPRETED:
        return 16, 4, 16
    return 32 if block_k >= 128 else 64, 8 if block_k >= 256 else 4, 64


class _TileAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor,
                bias: Optional[Tensor]) -> Tensor:
        nt, H, T, D = q.shape
        NK = k.size(2)
        # Token-major output: the tiles' read-back is then a view.
        out = q.new_empty(nt, T, H, D).transpose(1, 2)  # [nt, H, T, D]
        lse = q.new_empty(nt * H * T, dtype=torch.float32)
        block_k = _block_k(NK)
        block_m, warps = _fwd_blocks(block_k)
        _launch_fwd(
            (nt * H, triton.cdiv(T, block_m)), q, k, v,
            q if bias is None else bias, out, lse, q, *_strides(q),
            *_strides(k), *_strides(v),
            0 if bias is None else bias.stride(0), *_strides(out), T, NK, 0,
            D, _LOG2E / math.sqrt(D), H=H, HAS_BIAS=bias is not None,
            PACKED=False, BLOCK_M=block_m, BLOCK_K=block_k,
            num_warps=warps, **_meta(q.dtype, D))
        ctx.save_for_backward(q, k, v, bias, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, bias, out, lse = ctx.saved_tensors
        nt, H, T, D = q.shape
        NK = k.size(2)
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        dq = q.new_empty(nt, T, H, D).transpose(1, 2)  # [nt, H, T, D]
        dk = k.new_empty(nt, H, NK, D)
        dv = v.new_empty(nt, H, NK, D)
        delta = torch.empty_like(lse)
        meta = _meta(q.dtype, D)
        args = (*_strides(k), *_strides(v),
                0 if bias is None else bias.stride(0))
        b = q if bias is None else bias
        block_k = _block_k(NK)
        block_m, warps, block_n = _bwd_blocks(block_k)
        scale = 1.0 / math.sqrt(D)
        _launch_bwd_dq(
            (nt * H, triton.cdiv(T, block_m)), q, k, v, b, out, grad, lse,
            dq, delta, q, *_strides(q), *args, *_strides(out),
            *_strides(grad), *_strides(dq), T, NK, 0, D, _LOG2E * scale,
            scale, H=H, HAS_BIAS=bias is not None, PACKED=False,
            BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps, **meta)
        _launch_bwd_dkdv(
            (nt * H, triton.cdiv(NK, block_n)), q, k, v, b, grad, lse,
            delta, dk, dv, q, *_strides(q), *args, *_strides(grad),
            *_strides(dk), *_strides(dv), T, NK, 0, D, _LOG2E * scale,
            scale, H=H, HAS_BIAS=bias is not None, PACKED=False,
            BLOCK_M=block_n, BLOCK_N=block_n, num_warps=4, **meta)
        return dq, dk, dv, None


def _packed_operands(qkv: Tensor, heads: int) -> tuple:
    # The q, k and v of stacked rows [N, 3C] (queries in columns
    # [hD, (h+1)D), keys and values of head h in [C + 2hD, C + 2(h+1)D)
    # as [k_h, v_h]) as the kernels read them: a pointer per operand, then
    # their (s_t, s_h, s_m) strides. On packed rows the first row stands
    # for the tile, so the rows' stride is s_t as well as s_m.
    C = qkv.size(1) // 3
    D, s = C // heads, qkv.stride(0)
    strides = (s, D, s, s, 2 * D, s, s, 2 * D, s)
    return (qkv, qkv[:, C:], qkv[:, C + D:]), strides


class _PackedAttention(torch.autograd.Function):
    # The kernels on packed rows: "tile" t is set t, rows ptr[t] to
    # ptr[t + 1] of qkv [N, 3C] (see _packed_operands).
    @staticmethod
    def forward(ctx, qkv: Tensor, ptr: Tensor, heads: int,
                max_size: int) -> Tensor:
        N, C = qkv.size(0), qkv.size(1) // 3
        H, D = heads, C // heads
        out = qkv.new_empty(N, C)
        lse = qkv.new_empty(H * N, dtype=torch.float32)
        block_k = _block_k(max_size)
        block_m, warps = _fwd_blocks(block_k)
        qkv_ptrs, qkv_strides = _packed_operands(qkv, H)
        _launch_fwd(
            ((ptr.numel() - 1) * H, triton.cdiv(max_size, block_m)),
            *qkv_ptrs, qkv, out, lse, ptr, *qkv_strides, 0, C, D, C,
            max_size, max_size, N, D, _LOG2E / math.sqrt(D), H=H,
            HAS_BIAS=False, PACKED=True, BLOCK_M=block_m, BLOCK_K=block_k,
            num_warps=warps, **_meta(qkv.dtype, D))
        ctx.save_for_backward(qkv, ptr, out, lse)
        ctx.heads, ctx.max_size = heads, max_size
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        qkv, ptr, out, lse = ctx.saved_tensors
        H, max_size = ctx.heads, ctx.max_size
        N, C = qkv.size(0), qkv.size(1) // 3
        D = C // H
        if grad.stride(-1) != 1 or grad.stride(0) != C:
            grad = grad.contiguous()
        # Every row belongs to one set and every column to one head's
        # q, k or v: the kernels write all of dqkv.
        dqkv = qkv.new_empty(N, 3 * C)
        delta = torch.empty_like(lse)
        meta = _meta(qkv.dtype, D)
        qkv_ptrs, qkv_strides = _packed_operands(qkv, H)
        (dq, dk, dv), d_strides = _packed_operands(dqkv, H)
        rows = (C, D, C)  # out and grad, [N, C]: (s_t, s_h, s_m)
        block_k = _block_k(max_size)
        block_m, warps, block_n = _bwd_blocks(block_k)
        scale = 1.0 / math.sqrt(D)
        grid = (ptr.numel() - 1) * H
        _launch_bwd_dq(
            (grid, triton.cdiv(max_size, block_m)), *qkv_ptrs, qkv, out,
            grad, lse, dq, delta, ptr, *qkv_strides, 0, *rows, *rows,
            *d_strides[:3], max_size, max_size, N, D, _LOG2E * scale, scale,
            H=H, HAS_BIAS=False, PACKED=True, BLOCK_M=block_m,
            BLOCK_K=block_k, num_warps=warps, **meta)
        _launch_bwd_dkdv(
            (grid, triton.cdiv(max_size, block_n)), *qkv_ptrs, qkv, grad,
            lse, delta, dk, dv, ptr, *qkv_strides, 0, *rows, *d_strides[3:],
            max_size, max_size, N, D, _LOG2E * scale, scale, H=H,
            HAS_BIAS=False, PACKED=True, BLOCK_M=block_n, BLOCK_N=block_n,
            num_warps=4, **meta)
        return dqkv, None, None, None


def tile_attention_triton(q: Tensor, k: Tensor, v: Tensor,
                          key_bias: Optional[Tensor] = None) -> Tensor:
    r"""Softmax attention of query tiles over their keys, differentiable
    in ``q``, ``k`` and ``v``.

    Args:
        q (Tensor): ``[nt, H, T, D]`` queries (any strides with a unit
            stride along :math:`D`).
        k (Tensor): ``[nt, H, K, D]`` keys (a tile's keys may be a
            broadcast view of its set's), at most :data:`MAX_KEYS`.
        v (Tensor): ``[nt, H, K, D]`` values.
        key_bias (Tensor, optional): ``[nt, K]`` float32 additive logit
            bias per key (:math:`-\infty`: masked), no gradient.

    Returns:
        ``[nt, H, T, D]`` in ``q``'s dtype, a transposed view of
        token-major ``[nt, T, H, D]`` storage.
    """
    nt, H, T, D = q.shape
    NK = k.size(2)
    if k.shape != (nt, H, NK, D) or v.shape != k.shape:
        raise ValueError(f"Expected 'k' and 'v' of shape [{nt}, {H}, K, "
                         f"{D}] (got {list(k.shape)}, {list(v.shape)})")
    if NK > MAX_KEYS or D > MAX_HEAD_DIM:
        raise ValueError(f"Expected at most {MAX_KEYS} keys of at most "
                         f"{MAX_HEAD_DIM} channels (got {NK} of {D})")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"Expected 'q', 'k' and 'v' of one dtype (got "
                        f"{q.dtype}, {k.dtype}, {v.dtype})")
    if key_bias is not None and (key_bias.shape != (nt, NK)
                                 or key_bias.dtype != torch.float32):
        raise ValueError(f"Expected 'key_bias' float32 of shape [{nt}, "
                         f"{NK}] (got {key_bias.dtype} "
                         f"{list(key_bias.shape)})")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1:
        k = k.contiguous()
    if v.stride(-1) != 1:
        v = v.contiguous()
    if key_bias is not None and key_bias.stride(-1) != 1:
        key_bias = key_bias.contiguous()
    return _TileAttention.apply(q, k, v, key_bias)


__all__: Tuple[str, ...] = ('MAX_HEAD_DIM', 'MAX_KEYS',
                            'tile_attention_triton')


def packed_attention_triton(qkv: Tensor, ptr: Tensor, heads: int,
                            max_size: int) -> Tensor:
    r"""Softmax attention of every set over its own tokens, on the packed
    token rows of a sorted batch, differentiable in ``qkv``: no padding,
    and the gradient comes back as one ``[N, 3C]`` tensor.

    Args:
        qkv (Tensor): ``[N, 3C]`` rows with a unit column stride: the
            queries in columns :math:`[hD, (h+1)D)`, then the keys and
            values of head :math:`h` in :math:`[C + 2hD, C + 2(h+1)D)` as
            ``[k_h, v_h]`` (the stacked projection of
            :class:`~samsa_geo.nn.SamsaAttention`).
        ptr (Tensor): ``[B + 1]`` integer offsets of the sets' rows
            (``ptr[0] = 0``, ``ptr[B] = N``; an empty set is allowed).
        heads (int): :math:`H`, dividing :math:`C`, with
            :math:`D = C / H` at most :data:`MAX_HEAD_DIM`.
        max_size (int): The largest set's size, at most
            :data:`MAX_KEYS`. A smaller value than the true one leaves
            rows unwritten: it is the caller's to check.

    Returns:
        ``[N, C]`` in ``qkv``'s dtype, head :math:`h` in columns
        :math:`[hD, (h+1)D)`.
    """
    if qkv.dim() != 2 or qkv.size(1) % (3 * heads) != 0:
        raise ValueError(f"Expected 'qkv' of shape [N, 3C] with C a "
                         f"multiple of heads={heads} (got "
                         f"{list(qkv.shape)})")
    if ptr.dim() != 1 or ptr.numel() < 1 or ptr.dtype not in (
            torch.int32, torch.int64):
        raise ValueError(f"Expected 'ptr' of shape [B + 1], int32 or int64 "
                         f"(got {ptr.dtype} {list(ptr.shape)})")
    D = qkv.size(1) // (3 * heads)
    if max_size > MAX_KEYS or D > MAX_HEAD_DIM:
        raise ValueError(f"Expected sets of at most {MAX_KEYS} tokens and "
                         f"heads of at most {MAX_HEAD_DIM} channels (got "
                         f"max_size={max_size}, {D} channels)")
    if qkv.size(0) > 0 and max_size < 1:
        raise ValueError(f"Expected 'max_size' of at least 1 for "
                         f"{qkv.size(0)} rows (got {max_size})")
    if qkv.size(0) == 0:  # no set has a token
        return qkv[:, :qkv.size(1) // 3] * 0.0
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    return _PackedAttention.apply(qkv, ptr, heads, max_size)
