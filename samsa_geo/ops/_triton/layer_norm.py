r"""Layer normalisation of many narrow rows on the GPU, written in Triton.

For every row :math:`\mathbf{x} \in \mathbb{R}^C`

.. math::
    \mathbf{y} = \frac{\mathbf{x} - \mu}{\sqrt{\sigma^2 + \epsilon}}
    \odot \boldsymbol{\gamma} + \boldsymbol{\beta}, \qquad
    \mu = \frac{1}{C} \sum_c x_c, \quad
    \sigma^2 = \frac{1}{C} \sum_c (x_c - \mu)^2,

in float32 whatever the input's dtype. One program normalises a block of
:math:`M_b` rows held in registers at once, so the point encoders' rows of
64 channels (millions of them, one per neighbour pair) take a few thousand
programs instead of one per row: PyTorch's kernel gives each row its own
thread block, which leaves the GPU mostly idle at such widths.

Forward only (inference): :func:`samsa_geo.ops.layer_norm` sends calls that
record gradients to PyTorch. Importing this module needs Triton.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton.launch import Launcher

#: Values one program holds: rows per program = this / padded width.
BLOCK_VALUES = 4096


@triton.jit
def _layer_norm_fwd(x_ptr, w_ptr, b_ptr, y_ptr, M, C, stride_x, stride_y,
                    eps, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    rows = rows.to(tl.int64)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)  # [BLOCK_M, BLOCK_C]
    mean = tl.sum(x, axis=1) / C
    d = tl.where(mask, x - mean[:, None], 0.0)
    var = tl.sum(d * d, axis=1) / C
    y = d * (1.0 / tl.sqrt(var + eps))[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=cmask, other=0.0).to(
            tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=cmask, other=0.0).to(
            tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * stride_y + cols[None, :],
             y.to(y_ptr.dtype.element_ty), mask=mask)


_launch_layer_norm = Launcher(_layer_norm_fwd)


def layer_norm_triton(x: Tensor, weight: Optional[Tensor],
                      bias: Optional[Tensor], eps: float,
                      out_dtype: torch.dtype) -> Tensor:
    r"""Layer normalisation of the last dimension of ``x`` :math:`(*, C)`,
    :math:`C \le` :obj:`samsa_geo.ops._triton.MAX_NORM_CHANNELS`, with
    optional affine ``weight`` and ``bias`` :math:`(C)`; the output
    :math:`(*, C)` in ``out_dtype``."""
    C = x.size(-1)
    x2 = x.reshape(-1, C)  # [*, C] -> [M, C]
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.size(0)
    y = torch.empty(M, C, dtype=out_dtype, device=x.device)
    BLOCK_C = triton.next_power_of_2(C)
    BLOCK_M = max(1, BLOCK_VALUES // BLOCK_C)
    w = weight.contiguous() if weight is not None else x2
    b = bias.contiguous() if bias is not None else x2
    grid = (triton.cdiv(M, BLOCK_M), )
    _launch_layer_norm(grid, x2, w, b, y, M, C, x2.stride(0), y.stride(0),
                       float(eps), HAS_W=weight is not None,
                       HAS_B=bias is not None, BLOCK_M=BLOCK_M,
                       BLOCK_C=BLOCK_C, num_warps=4)
    return y.view(x.shape)  # [M, C] -> [*, C]
