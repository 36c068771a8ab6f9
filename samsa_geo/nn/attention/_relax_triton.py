r"""The score gradient of the relaxation (:func:`relax`'s backward pass) in
one Triton kernel.

For every set and head, with the scaled scores :math:`a_i` of the top set,
:math:`b_j` of the bottom set, the upstream gradient :math:`\mathbf{g}_i`
of the top rows :math:`\mathbf{u}_i` and the bottom rows
:math:`\mathbf{u}_j`,

.. math::
    e_{ij} = c\,\big(\mathbf{g}_i^\top \mathbf{u}_i -
    \mathbf{g}_i^\top \mathbf{u}_j\big)\, p_{ij} (1 - p_{ij}), \qquad
    p_{ij} = \sigma(a_i - b_j),

and the candidate scores receive :math:`\sum_j e_{ij}` (top) and
:math:`-\sum_i e_{ij}` (bottom), added into their ``[M, H]`` gradient.
One program takes ``BLOCK_K`` top rows of one set and head and walks the
bottom rows in blocks: the ``[B, H, k, m]`` pair tensor lives in registers
only, and the PyTorch formula's dozen launches (pair weights, a batched
matmul, the sigmoid derivative, two reductions, a scatter) become one.
Unused slots carry :math:`a_i = -\infty` or :math:`b_j = +\infty`, so
:math:`p_{ij} = 0` there.

Importing this module needs Triton.
"""
from typing import Union

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.launch import Launcher


@triton.jit
def _relax_score_grad(
    G, U, A, BOT, CF, IDS, OUT,
    sg_bh, sg_k, su_bh, su_r, sa_bh, sb_bh, si_bh,
    k, m, H, F, alpha,
    PER_HEAD: tl.constexpr, UNIQUE: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_F: tl.constexpr,
):
    bh = tl.program_id(0)
    h = bh % H
    rows = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    fs = tl.arange(0, BLOCK_F)
    mask_r, mask_f = rows < k, fs < F
    mask_rf = mask_r[:, None] & mask_f[None, :]
    g = tl.load(G + bh * sg_bh + rows[:, None] * sg_k + fs[None, :],
                mask=mask_rf, other=0.0)
    u_top = tl.load(U + bh * su_bh + rows[:, None] * su_r + fs[None, :],
                    mask=mask_rf, other=0.0)
    c = alpha
    if PER_HEAD:
        c = tl.load(CF + bh)
    gk = tl.sum(g.to(tl.float32) * u_top.to(tl.float32), 1)  # [BLOCK_K]
    a = tl.load(A + bh * sa_bh + rows, mask=mask_r, other=float('-inf'))
    ds_top = tl.zeros([BLOCK_K], dtype=tl.float32)
    for j0 in range(0, m, BLOCK_M):
        cols = j0 + tl.arange(0, BLOCK_M)
        mask_c = cols < m
        u_bot = tl.load(
            U + bh * su_bh + (k + cols)[:, None] * su_r + fs[None, :],
            mask=mask_c[:, None] & mask_f[None, :], other=0.0)
        if IEEE:
            gu = tl.dot(g, tl.trans(u_bot), input_precision='ieee')
        else:
            gu = tl.dot(g, tl.trans(u_bot))  # [BLOCK_K, BLOCK_M]
        b = tl.load(BOT + bh * sb_bh + cols, mask=mask_c,
                    other=float('inf'))
        p = tl.sigmoid(a[:, None] - b[None, :])
        e = c * (gk[:, None] - gu) * p * (1.0 - p)
        e = tl.where(mask_r[:, None] & mask_c[None, :], e, 0.0)
        ds_top += tl.sum(e, 1)
        ids = tl.load(IDS + bh * si_bh + k + cols, mask=mask_c, other=0)
        tl.atomic_add(OUT + ids * H + h, -tl.sum(e, 0), mask=mask_c)
    ids = tl.load(IDS + bh * si_bh + rows, mask=mask_r, other=0)
    if UNIQUE:  # one program owns each top id
        tl.store(OUT + ids * H + h, ds_top, mask=mask_r)
    else:
        tl.atomic_add(OUT + ids * H + h, ds_top, mask=mask_r)


_launch_relax_score_grad = Launcher(_relax_score_grad)


def relax_score_grad_triton(grad: Tensor, u: Tensor, top: Tensor,
                            bottom: Tensor, factor: Union[float, Tensor],
                            ids: Tensor, num_candidates: int,
                            unique: bool) -> Tensor:
    r"""The gradient of the candidate scores, float32 ``[M, H]``.

    Args:
        grad (Tensor): ``[B, H, k, F]`` upstream gradient of the top rows.
        u (Tensor): ``[B, H, k + m, F]`` top rows, then bottom rows.
        top (Tensor): ``[B, H, k]`` scaled scores :math:`a_i`
            (:math:`-\infty` where unused); bottom: ``[B, H, m]``
            :math:`b_j` (:math:`+\infty` where unused).
        factor (float or Tensor): :math:`c`, one number or
            ``[B or 1, H or 1, 1, 1]``.
        ids (Tensor): ``[B, H, k + m]`` candidate ids.
        num_candidates (int): :math:`M`.
        unique (bool): no id repeats within a head.
    """
    B, H, K, F = u.shape
    k = grad.size(2)
    BH = B * H
    if grad.dtype != u.dtype:
        grad = grad.to(u.dtype)
    g = grad.reshape(BH, k, F)
    uu = u.reshape(BH, K, F)
    if g.stride(-1) != 1:
        g = g.contiguous()
    if uu.stride(-1) != 1:
        uu = uu.contiguous()
    a = top.reshape(BH, k).float()
    b = bottom.reshape(BH, K - k).float()
    a = a if a.stride(-1) == 1 else a.contiguous()
    b = b if b.stride(-1) == 1 else b.contiguous()
    idx = ids.reshape(BH, K)
    idx = idx if idx.stride(-1) == 1 else idx.contiguous()
    per_head = isinstance(factor, Tensor)
    cf = factor.float().expand(B, H, 1, 1).reshape(BH).contiguous() \
        if per_head else a  # unused pointer where one number
    out = torch.zeros(num_candidates, H, device=u.device,
                      dtype=torch.float32)
    BLOCK_F = max(16, triton.next_power_of_2(F))
    BLOCK_K, BLOCK_M, warps = (16, 16, 1) if INTERPRETED else (64, 64, 4)
    grid = (BH, triton.cdiv(k, BLOCK_K))
    _launch_relax_score_grad(
        grid, g, uu, a, b, cf, idx, out,
        g.stride(0), g.stride(1), uu.stride(0), uu.stride(1), a.stride(0),
        b.stride(0), idx.stride(0), k, K - k, H, F,
        float(factor) if not per_head else 1.0,
        PER_HEAD=per_head, UNIQUE=unique,
        IEEE=u.dtype == torch.float32, BLOCK_K=BLOCK_K, BLOCK_M=BLOCK_M,
        BLOCK_F=BLOCK_F, num_warps=warps)
    return out
