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
gives zeros (and zero gradients). Importing this module needs Triton.
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
def _query_block_and_keys(Q, K, V, t, h, sq_t, sq_h, sq_m, sk_t, sk_h, sk_n,
                          sv_t, sv_h, sv_n, offs_m, offs_k, offs_d, mask_m,
                          mask_k, mask_d):
    # A block of queries, and all of the tile's keys and values.
    q = _block(Q, t, h, sq_t, sq_h, sq_m, offs_m, offs_d, mask_m, mask_d)
    k = _block(K, t, h, sk_t, sk_h, sk_n, offs_k, offs_d, mask_k, mask_d)
    v = _block(V, t, h, sv_t, sv_h, sv_n, offs_k, offs_d, mask_k, mask_d)
    return q, k, v


@triton.jit
def _logits(q, k, BIAS, t, sb_t, offs_k, mask_k, qk_scale,
            HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
            UPCAST: tl.constexpr):
    # Base-2 logits [BLOCK_M, BLOCK_K] of the queries over all keys, the
    # keys' bias added (-inf on masked and padded keys).
    return dot(q, tl.trans(k), PRECISION, UPCAST) * qk_scale \
        + _key_bias(BIAS, t, sb_t, offs_k, mask_k, HAS_BIAS)[None, :]


@triton.jit
def _tile_and_head(H: tl.constexpr, T):
    # Program axis 0 is (tile t, head h): t, h and the first of their T
    # rows in the [nt * H * T] row terms (log-sum-exp, delta).
    pid = tl.program_id(0)
    return (pid // H).to(tl.int64), pid % H, pid.to(tl.int64) * T


@triton.jit
def _tile_attention_fwd(
    Q, K, V, BIAS, OUT, LSE,
    sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n, sb_t,
    so_t, so_h, so_m, T, NK, D, qk_scale,
    H: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    t, h, row0 = _tile_and_head(H, T)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m, mask_k, mask_d = offs_m < T, offs_k < NK, offs_d < D
    q, k, v = _query_block_and_keys(
        Q, K, V, t, h, sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n,
        offs_m, offs_k, offs_d, mask_m, mask_k, mask_d)
    s = _logits(q, k, BIAS, t, sb_t, offs_k, mask_k, qk_scale, HAS_BIAS,
                PRECISION, UPCAST)
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
    Q, K, V, BIAS, OUT, DO, LSE, DQ, DELTA,
    sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n, sb_t,
    so_t, so_h, so_m, sd_t, sd_h, sd_m, sg_t, sg_h, sg_m, T, NK, D,
    qk_scale, scale,
    H: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    t, h, row0 = _tile_and_head(H, T)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.arange(0, BLOCK_K)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m, mask_k, mask_d = offs_m < T, offs_k < NK, offs_d < D
    q, k, v = _query_block_and_keys(
        Q, K, V, t, h, sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n,
        offs_m, offs_k, offs_d, mask_m, mask_k, mask_d)
    o = _block(OUT, t, h, so_t, so_h, so_m, offs_m, offs_d, mask_m, mask_d)
    do = _block(DO, t, h, sd_t, sd_h, sd_m, offs_m, offs_d, mask_m, mask_d)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # [BLOCK_M]
    tl.store(DELTA + row0 + offs_m, delta, mask=mask_m)
    s = _logits(q, k, BIAS, t, sb_t, offs_k, mask_k, qk_scale, HAS_BIAS,
                PRECISION, UPCAST)
    p = tl.exp2(s - _lse(LSE, row0, offs_m, mask_m)[:, None])
    dp = dot(do, tl.trans(v), PRECISION, UPCAST)  # [BLOCK_M, BLOCK_K]
    ds = p * (dp - delta[:, None])
    dq = dot(ds.to(k.dtype), k, PRECISION, UPCAST) * scale
    _store_block(DQ, dq, t, h, sg_t, sg_h, sg_m, offs_m, offs_d, mask_m,
                 mask_d)


@triton.jit
def _tile_attention_bwd_dkdv(
    Q, K, V, BIAS, DO, LSE, DELTA, DK, DV,
    sq_t, sq_h, sq_m, sk_t, sk_h, sk_n, sv_t, sv_h, sv_n, sb_t,
    sd_t, sd_h, sd_m, T, NK, D, qk_scale, scale,
    H: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    t, h, row0 = _tile_and_head(H, T)
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
    # dK and dV: contiguous [nt, H, NK, D].
    _store_block(DK, dk * scale, t, h, H * NK * D, NK * D, D, offs_n,
                 offs_d, mask_n, mask_d)
    _store_block(DV, dv, t, h, H * NK * D, NK * D, D, offs_n, offs_d,
                 mask_n, mask_d)


_launch_fwd = Launcher(_tile_attention_fwd)
_launch_bwd_dq = Launcher(_tile_attention_bwd_dq)
_launch_bwd_dkdv = Launcher(_tile_attention_bwd_dkdv)


def _meta(q: Tensor) -> dict:
    # BLOCK_D and the precision arguments of every kernel.
    return {'BLOCK_D': max(16, triton.next_power_of_2(q.size(-1))),
            'PRECISION': 'ieee' if q.dtype == torch.float32 else 'tf32',
            'UPCAST': INTERPRETED and q.dtype == torch.bfloat16}


def _block_k(num_keys: int) -> int:
    return max(16, triton.next_power_of_2(num_keys))


def _strides(t: Tensor) -> Tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


class _TileAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor,
                bias: Optional[Tensor]) -> Tensor:
        nt, H, T, D = q.shape
        NK = k.size(2)
        # Token-major output: the tiles' read-back is then a view.
        out = q.new_empty(nt, T, H, D).transpose(1, 2)  # [nt, H, T, D]
        lse = q.new_empty(nt * H * T, dtype=torch.float32)
        meta = _meta(q)
        block_k = _block_k(NK)
        block_m = 16 if INTERPRETED else (32 if block_k >= 256 else 64)
        warps = 8 if block_k >= 256 else 4
        grid = (nt * H, triton.cdiv(T, block_m))
        _launch_fwd(
            grid, q, k, v, q if bias is None else bias, out, lse,
            *_strides(q), *_strides(k), *_strides(v),
            0 if bias is None else bias.stride(0), *_strides(out), T, NK,
            D, _LOG2E / math.sqrt(D), H=H, HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_K=block_k, num_warps=warps, **meta)
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
        meta = _meta(q)
        args = (*_strides(k), *_strides(v),
                0 if bias is None else bias.stride(0))
        b = q if bias is None else bias
        block_k = _block_k(NK)
        block_m = 16 if INTERPRETED else (32 if block_k >= 128 else 64)
        warps = 8 if block_k >= 256 else 4
        scale = 1.0 / math.sqrt(D)
        _launch_bwd_dq(
            (nt * H, triton.cdiv(T, block_m)), q, k, v, b, out, grad, lse,
            dq, delta, *_strides(q), *args, *_strides(out), *_strides(grad),
            *_strides(dq), T, NK, D, _LOG2E * scale, scale, H=H,
            HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_K=block_k,
            num_warps=warps, **meta)
        block_n = 16 if INTERPRETED else 64
        block_m = 16 if INTERPRETED else 64
        _launch_bwd_dkdv(
            (nt * H, triton.cdiv(NK, block_n)), q, k, v, b, grad, lse,
            delta, dk, dv, *_strides(q), *args, *_strides(grad), T, NK, D,
            _LOG2E * scale, scale, H=H, HAS_BIAS=bias is not None,
            BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, **meta)
        return dq, dk, dv, None


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
