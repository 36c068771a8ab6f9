r"""Inference kernel for the tail of
:class:`~samsa_geo.nn.attention.ImportanceScorer`, written in Triton.

Given the scorer MLP's output :math:`\mathbf{y}_i` and the token
:math:`\mathbf{x}_i`, one program computes, for ``BLOCK_N`` rows held in
registers,

.. math::
    \mathbf{s}_i = \mathbf{W} \big(\mathbf{x}_i + \mathrm{LN}(\mathbf{y}_i)
    \big) + \mathbf{b},

everything in float32. Unfused, the float32 tokens :math:`(N, C)` are
written by the LayerNorm and read back by the projection; here the kernel
reads :math:`\mathbf{x}` and :math:`\mathbf{y}` once and writes
:math:`(N, H)` scores.

Forward only: training runs the PyTorch formula. Importing this module
needs Triton.
"""
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.nn.attention._dispatch import (
    SCORE_MAX_CHANNELS,
    SCORE_MAX_HEADS,
)
from samsa_geo.ops._triton.launch import Launcher


@triton.jit
def _importance_score_fwd(
    Y, X, LN_W, LN_B, W, B, OUT,
    sy_n, sx_n, so_n,
    N, C, eps,
    H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_C)
    mask_r, mask_c = rows < N, cols < C
    mask = mask_r[:, None] & mask_c[None, :]

    y = tl.load(Y + rows[:, None] * sy_n + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    mean = tl.sum(y, 1) / C
    diff = tl.where(mask, y - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, 1) / C + eps)
    gamma = tl.load(LN_W + cols, mask=mask_c, other=0.0).to(tl.float32)
    beta = tl.load(LN_B + cols, mask=mask_c, other=0.0).to(tl.float32)
    x = tl.load(X + rows[:, None] * sx_n + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    # Zero beyond C (x, diff, gamma and beta load as 0 there); rows beyond
    # N are never stored.
    h = x + diff * rstd[:, None] * gamma[None, :] + beta[None, :]

    # One float32 row reduction per head (exact products, no tensor-core
    # rounding).
    for j in tl.static_range(H):
        w = tl.load(W + j * C + cols, mask=mask_c, other=0.0).to(tl.float32)
        s = tl.sum(h * w[None, :], 1) + tl.load(B + j).to(tl.float32)
        tl.store(OUT + rows * so_n + j, s, mask=mask_r)


_launch_importance_score = Launcher(_importance_score_fwd)


#: A fixed ``{'BLOCK_N', 'num_warps'}`` (:obj:`None`: about 4K values of a
#: row block, 32 per thread). On the H200 at C = 256, 8 heads, rows of 16,
#: 32 and 64 ran equally fast (``benchmarks/scorer_kernel.py``); an
#: autotuner's dispatch cost more than it won.
KERNEL_CONFIG: Optional[dict] = None
# Triton's interpreter (``TRITON_INTERPRET=1``; tests on CPU) runs one warp.
_INTERPRETED = os.environ.get('TRITON_INTERPRET') == '1'


def default_config(C: int) -> dict:
    """Rows per program and warps for token width ``C``."""
    width = triton.next_power_of_2(C)
    rows = max(1, min(64, 4096 // width))
    return {'BLOCK_N': rows, 'num_warps': 4 if rows * width <= 4096 else 8}


def importance_score_triton(y: Tensor, x: Tensor, ln_weight: Tensor,
                            ln_bias: Tensor, eps: float, weight: Tensor,
                            bias: Tensor) -> Tensor:
    r"""Scores :math:`\mathbf{W}(\mathbf{x} + \mathrm{LN}(\mathbf{y})) +
    \mathbf{b}` in float32, one kernel launch.

    Args:
        y (Tensor): ``[N, C]`` output of the scorer MLP, any float dtype.
        x (Tensor): ``[N, C]`` tokens.
        ln_weight (Tensor): ``[C]``; ln_bias: ``[C]`` (LayerNorm affine).
        eps (float): LayerNorm epsilon.
        weight (Tensor): ``[H, C]``; bias: ``[H]`` (projection).

    Returns:
        ``[N, H]`` float32.
    """
    N, C = y.shape
    H = weight.size(0)
    if C > SCORE_MAX_CHANNELS or H > SCORE_MAX_HEADS:
        raise ValueError(f"Expected at most {SCORE_MAX_CHANNELS} channels "
                         f"and {SCORE_MAX_HEADS} heads (got {C} and {H})")
    out = torch.empty(N, H, device=y.device, dtype=torch.float32)
    if N == 0:
        return out
    y = y if y.stride(-1) == 1 else y.contiguous()
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight.float().contiguous()
    args = (y, x, ln_weight, ln_bias, weight, bias, out, y.stride(0),
            x.stride(0), out.stride(0), N, C, float(eps))
    meta = dict(H=H, BLOCK_C=max(16, triton.next_power_of_2(C)))
    config = KERNEL_CONFIG or default_config(C)
    if _INTERPRETED:
        config = {'BLOCK_N': 4, 'num_warps': 1}
    grid = (triton.cdiv(N, config['BLOCK_N']), )
    _launch_importance_score(grid, *args, **meta, **config)
    return out
