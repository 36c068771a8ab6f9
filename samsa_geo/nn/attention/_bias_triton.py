r"""Inference kernel for dot-product softmax attention with the relative bias
of :class:`~samsa_geo.nn.attention.RelativeBias`, written in Triton.

One program handles ``BLOCK_M`` queries of one tile and head and streams
that head's sampled keys in blocks of ``BLOCK_N`` with an online softmax
(the FlashAttention scheme). For every pair the kernel evaluates, in
registers,

.. math::
    s'_{ij} = \frac{\mathbf{q}_i^\top \mathbf{k}_j}{\sqrt{D}} \cdot
    \mathrm{softplus}(a_h + A_{h0} d_{ij} + A_{h1} n_{ij})
    + b_h + B_{h0} d_{ij} + B_{h1} n_{ij},

with :math:`d_{ij} = \Vert \mathbf{p}_i - \mathbf{p}_j \Vert^2` and
:math:`n_{ij} = \mathbf{n}_i^\top \mathbf{n}_j`, from coordinate vectors
loaded once per block (FlexAttention's ``score_mod`` reads them once per
pair). All constants are pre-multiplied by :math:`\log_2 e`, so the kernel
works in base 2: :math:`\log_2 e \cdot \mathrm{softplus}(x) =
\max(x', 0) + \log_2(1 + 2^{-|x'|})` with :math:`x' = x \log_2 e`.

Forward only: training runs FlexAttention, whose backward is generated.
Importing this module needs Triton.
"""
import math
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED

_LOG2E = 1.0 / math.log(2.0)

#: Tile configurations tried by the autotuner (one is picked per shape).
CONFIGS = [
    triton.Config({'BLOCK_M': bm, 'BLOCK_N': bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(64, 64, 4, 2), (64, 32, 4, 3), (128, 64, 8, 2),
                         (128, 32, 4, 2), (64, 64, 4, 3), (128, 64, 4, 3)]
]


@triton.jit
def _ptx(x, ASM: tl.constexpr):
    # One MUFU instruction on float32 (ex2 / lg2 approximations).
    return tl.inline_asm_elementwise(ASM, '=r,r', [x], dtype=tl.float32,
                                     is_pure=True, pack=1)


@triton.jit
def _exp2(x, FAST: tl.constexpr):
    if FAST:
        y = _ptx(x, 'ex2.approx.ftz.f32 $0, $1;')
    else:
        y = tl.exp2(x)
    return y


@triton.jit
def _log2(x, FAST: tl.constexpr):
    if FAST:  # tl.log2 is libdevice's exact log2f: many instructions
        y = _ptx(x, 'lg2.approx.ftz.f32 $0, $1;')
    else:
        y = tl.log2(x)
    return y


@triton.jit
def _query_coords(base, stride, mask, P: tl.constexpr):
    # Up to three coordinate vectors [BLOCK_M] (unused ones are zeros).
    c0 = tl.load(base, mask=mask, other=0.0)
    c1 = tl.zeros_like(c0)
    c2 = tl.zeros_like(c0)
    if P > 1:
        c1 = tl.load(base + stride, mask=mask, other=0.0)
    if P > 2:
        c2 = tl.load(base + 2 * stride, mask=mask, other=0.0)
    return c0, c1, c2


@triton.jit
def _pair_term(c, base, mask, DISTANCE: tl.constexpr):
    # [BLOCK_M, BLOCK_N] (c_i - k_j)^2 or c_i * k_j for one coordinate.
    key = tl.load(base, mask=mask, other=0.0)[None, :]
    if DISTANCE:
        d = c[:, None] - key
        f = d * d
    else:
        f = c[:, None] * key
    return f


@triton.jit
def _pair_feature(c0, c1, c2, base, stride, mask, P: tl.constexpr,
                  DISTANCE: tl.constexpr):
    # Squared distances (or dot products) between the query coordinates
    # c and the key coordinates at base: [BLOCK_M, BLOCK_N].
    f = _pair_term(c0, base, mask, DISTANCE)
    if P > 1:
        f += _pair_term(c1, base + stride, mask, DISTANCE)
    if P > 2:
        f += _pair_term(c2, base + 2 * stride, mask, DISTANCE)
    return f


@triton.jit
def _biased_attention_fwd(
    Q, K, V, VALID, PQ, PK, NQ, NK, W, OUT,
    sq_t, sq_h, sq_m, sq_d,
    sk_t, sk_h, sk_n, sk_d,
    sv_t, sv_h, sv_n, sv_d,
    so_t, so_h, so_m, so_d,
    sva_t, sva_n,
    spq_t, spq_m, spq_p,
    spk_t, spk_h, spk_n, spk_p,
    snq_t, snq_m, snq_p,
    snk_t, snk_h, snk_n, snk_p,
    H, T, KK, D, sm_scale,
    P: tl.constexpr, HAS_NORMAL: tl.constexpr, HAS_VALID: tl.constexpr,
    BLOCK_D: tl.constexpr, PRECISION: tl.constexpr, FAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_th = tl.program_id(1)
    t = pid_th // H
    h = pid_th % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < T
    mask_d = offs_d < D

    q = tl.load(Q + t * sq_t + h * sq_h + offs_m[:, None] * sq_m
                + offs_d[None, :] * sq_d,
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    # Coefficients of head h, times log2(e): [a, A0, A1, b, B0, B1].
    wa = tl.load(W + h * 6 + 0)
    wA0 = tl.load(W + h * 6 + 1)
    wA1 = tl.load(W + h * 6 + 2)
    wb = tl.load(W + h * 6 + 3)
    wB0 = tl.load(W + h * 6 + 4)
    wB1 = tl.load(W + h * 6 + 5)
    pq0, pq1, pq2 = _query_coords(PQ + t * spq_t + offs_m * spq_m, spq_p,
                                  mask_m, P)
    if HAS_NORMAL:
        nq0, nq1, nq2 = _query_coords(NQ + t * snq_t + offs_m * snq_m,
                                      snq_p, mask_m, P)

    m_i = tl.full([BLOCK_M], float('-inf'), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, KK, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < KK
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + t * sk_t + h * sk_h + offs_n[:, None] * sk_n
                    + offs_d[None, :] * sk_d, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * sm_scale
        dist = _pair_feature(pq0, pq1, pq2, PK + t * spk_t + h * spk_h
                             + offs_n * spk_n, spk_p, mask_n, P, True)
        scale = wa + wA0 * dist
        bias = wb + wB0 * dist
        if HAS_NORMAL:
            ndot = _pair_feature(nq0, nq1, nq2, NK + t * snk_t + h * snk_h
                                 + offs_n * snk_n, snk_p, mask_n, P, False)
            scale += wA1 * ndot
            bias += wB1 * ndot
        # log2(e) * softplus(x), from x' = log2(e) * x, without overflow.
        soft = tl.maximum(scale, 0.0) + _log2(
            1.0 + _exp2(-tl.abs(scale), FAST), FAST)
        z = s * soft + bias  # log2(e) * s'

        valid = mask_n
        if HAS_VALID:
            flag = tl.load(VALID + t * sva_t + offs_n * sva_n, mask=mask_n,
                           other=0)
            valid = valid & (flag != 0)
        z = tl.where(valid[None, :], z, float('-inf'))

        m_new = tl.maximum(m_i, tl.max(z, 1))
        m_use = tl.where(m_new == float('-inf'), 0.0, m_new)
        alpha = _exp2(m_i - m_use, FAST)
        p = _exp2(z - m_use[:, None], FAST)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + t * sv_t + h * sv_h + offs_n[:, None] * sv_n
                    + offs_d[None, :] * sv_d, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v,
                                            input_precision=PRECISION)
        m_i = m_new

    # Rows without a valid key (never produced by SAMSA) give zeros.
    acc = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(OUT + t * so_t + h * so_h + offs_m[:, None] * so_m
             + offs_d[None, :] * so_d, acc.to(OUT.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])


_biased_attention_tuned = triton.autotune(
    CONFIGS, key=['T', 'KK', 'BLOCK_D', 'P', 'HAS_NORMAL', 'HAS_VALID'],
)(_biased_attention_fwd)

#: Hardware approximations of 2^x and log2 (relative error about 2^-22)
#: instead of libdevice's exact functions.
FAST_MATH = True
#: A fixed ``{'BLOCK_M', 'BLOCK_N', 'num_warps', 'num_stages'}`` for the
#: kernel instead of autotuning (:obj:`None`: autotune).
KERNEL_CONFIG: Optional[dict] = None
# Triton's interpreter (``TRITON_INTERPRET=1`` when this module is
# imported; tests on CPU) runs one small fixed configuration.
_INTERPRET_CONFIG = {'BLOCK_M': 16, 'BLOCK_N': 16}


def biased_triton_attention(
    q: Tensor, k: Tensor, v: Tensor, key_valid: Optional[Tensor],
    pos_q: Tensor, pos_k: Tensor, normal_q: Optional[Tensor],
    normal_k: Optional[Tensor], weights: Tuple[Tensor, Tensor, Tensor,
                                               Tensor],
) -> Tensor:
    r"""Forward pass of the relative-bias attention, one kernel launch.

    Args:
        q (Tensor): ``[nt, H, T, D]``; k, v: ``[nt, H, k, D]``, any strides.
        key_valid (Tensor, optional): ``[nt, k]`` bool.
        pos_q (Tensor): ``[nt, T, P]`` float32, :math:`1 \le P \le 3`;
            pos_k: ``[nt, H, k, P]``; normals likewise or :obj:`None`.
        weights (tuple): :math:`(\mathbf{A}, a, \mathbf{B}, b)` of shapes
            ``[H, 2]``, ``[H]``, ``[H, 2]``, ``[H]``.

    Returns:
        ``[nt, H, T, D]`` in ``q``'s dtype, a view of a ``[nt, T, H, D]``
        tensor (token-major, as the caller flattens it next).
    """
    nt, H, T, D = q.shape
    kk = k.size(2)
    P = pos_q.size(-1)
    if not 1 <= P <= 3:
        raise ValueError(f"Expected 1 to 3 coordinates (got {P})")
    A, a, Bw, b = weights
    W = torch.stack([a, A[:, 0], A[:, 1], b, Bw[:, 0], Bw[:, 1]], dim=1)
    W = (W.float() * _LOG2E).contiguous()  # [H, 6]
    out = q.new_empty(nt, T, H, D)
    if out.numel() == 0 or kk == 0:  # nothing to launch over
        return out.zero_().transpose(1, 2)
    has_normal = normal_q is not None
    if not has_normal:  # placeholders, never read
        normal_q, normal_k = pos_q, pos_k
    has_valid = key_valid is not None
    valid = key_valid.view(torch.uint8) if has_valid else W
    sva = (valid.stride(0), valid.stride(1)) if has_valid else (0, 0)
    precision = 'ieee' if q.dtype == torch.float32 else 'tf32'
    args = (q, k, v, valid, pos_q, pos_k, normal_q, normal_k, W, out,
            *q.stride(), *k.stride(), *v.stride(),
            out.stride(0), out.stride(2), out.stride(1), out.stride(3),
            *sva, *pos_q.stride(), *pos_k.stride(), *normal_q.stride(),
            *normal_k.stride(), H, T, kk, D, 1.0 / math.sqrt(D))
    meta = dict(P=P, HAS_NORMAL=has_normal, HAS_VALID=has_valid,
                BLOCK_D=max(16, triton.next_power_of_2(D)),
                PRECISION=precision, FAST=FAST_MATH and not INTERPRETED)
    config = KERNEL_CONFIG
    if config is None and INTERPRETED:
        config = _INTERPRET_CONFIG
    if config is None:
        def grid(m):
            return (triton.cdiv(T, m['BLOCK_M']), nt * H)

        _biased_attention_tuned[grid](*args, **meta)
    else:
        grid = (triton.cdiv(T, config['BLOCK_M']), nt * H)
        _biased_attention_fwd[grid](*args, **meta, **config)
    return out.transpose(1, 2)  # [nt, T, H, D] -> [nt, H, T, D]
