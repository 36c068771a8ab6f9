r"""Backward kernel of the importance scorer's float32 tail, written in
Triton (the training node :class:`~samsa_geo.nn.attention._score_grad.
ScoreTail` launches it on CUDA).

With the MLP output :math:`\mathbf{y}_i`, the token :math:`\mathbf{x}_i`
and the gradient :math:`\mathbf{g}_i \in \mathbb{R}^H` of the scores
:math:`\mathbf{s}_i = \mathbf{W}(\mathbf{x}_i + \mathrm{LN}(\mathbf{y}_i))
+ \mathbf{b}`, where :math:`\mathrm{LN}(\mathbf{y}) = \hat{\mathbf{y}}
\odot \boldsymbol{\gamma} + \boldsymbol{\beta}` and :math:`\hat{
\mathbf{y}} = (\mathbf{y} - \mu)\, \sigma^{-1}`, one program computes for
each block of ``BLOCK_N`` rows held in registers

.. math::
    \mathbf{u}_i &= \mathbf{W}^\top \mathbf{g}_i = \partial / \partial
    \mathbf{x}_i, \qquad \mathbf{v}_i = \mathbf{u}_i \odot
    \boldsymbol{\gamma},

    \partial / \partial \mathbf{y}_i &= \sigma_i^{-1} \big(\mathbf{v}_i -
    \overline{\mathbf{v}_i} - \hat{\mathbf{y}}_i \,
    \overline{\mathbf{v}_i \odot \hat{\mathbf{y}}_i}\big),

and adds its rows' shares of the parameter gradients
:math:`\sum_i \mathbf{g}_i (\mathbf{x}_i + \mathrm{LN}(\mathbf{y}_i))^\top`
(of :math:`\mathbf{W}`), :math:`\sum_i \mathbf{u}_i \odot \hat{
\mathbf{y}}_i` (of :math:`\boldsymbol{\gamma}`), :math:`\sum_i
\mathbf{u}_i` (of :math:`\boldsymbol{\beta}`) and :math:`\sum_i \partial /
\partial \mathbf{y}_i` (of the second layer's bias) to one row of
partial sums. The programs loop over the row blocks, so there are a few
per multiprocessor, and the partial sums are added in a fixed order
afterwards: the gradients are deterministic. In PyTorch's ops this is a
LayerNorm forward and backward (the latter with its
:math:`\boldsymbol{\gamma}, \boldsymbol{\beta}` reduction), the residual
sum, two float32 GEMMs, a column sum and two casts, with as many
:math:`(N, C)` float32 round trips through memory; here the kernel reads
:math:`\mathbf{y}` and :math:`\mathbf{x}` once and writes the two
gradients in their dtypes. Importing this module needs Triton.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.nn.attention._dispatch import (
    SCORE_GRAD_MAX_CHANNELS,
    SCORE_MAX_HEADS,
)
from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.dot import dot
from samsa_geo.ops._triton.launch import Launcher


@triton.jit
def _score_tail_bwd(
    Y, X, G, W, LN_W, LN_B, GX, GY, PART,
    sy_n, sx_n, sg_n, sgx_n, sgy_n,
    N, C, H, eps,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid, programs = tl.program_id(0), tl.num_programs(0)
    cols = tl.arange(0, BLOCK_C)
    heads = tl.arange(0, BLOCK_H)
    mask_c, mask_h = cols < C, heads < H
    # [BLOCK_H, BLOCK_C] projection, zero beyond H and C.
    w = tl.load(W + heads[:, None] * C + cols[None, :],
                mask=mask_h[:, None] & mask_c[None, :], other=0.0)
    gamma = tl.load(LN_W + cols, mask=mask_c, other=0.0).to(tl.float32)
    beta = tl.load(LN_B + cols, mask=mask_c, other=0.0).to(tl.float32)
    acc_w = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
    acc_gamma = tl.zeros([BLOCK_C], tl.float32)
    acc_beta = tl.zeros([BLOCK_C], tl.float32)
    acc_y = tl.zeros([BLOCK_C], tl.float32)
    for start in range(pid * BLOCK_N, N, programs * BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        mask_r = rows < N
        mask = mask_r[:, None] & mask_c[None, :]
        y = tl.load(Y + rows[:, None] * sy_n + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        mean = tl.sum(y, 1) / C
        diff = tl.where(mask, y - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(diff * diff, 1) / C + eps)
        y_hat = diff * rstd[:, None]  # zero beyond C and N
        x = tl.load(X + rows[:, None] * sx_n + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        # The residual sum x + LN(y), zero beyond C (rows beyond N have a
        # zero gradient, so they add nothing).
        r = x + y_hat * gamma[None, :] + beta[None, :]
        g = tl.load(G + rows[:, None] * sg_n + heads[None, :],
                    mask=mask_r[:, None] & mask_h[None, :], other=0.0)
        # Exact float32 products (no tensor-core rounding).
        u = dot(g, w, 'ieee', False)  # [BLOCK_N, BLOCK_C]
        acc_w += dot(tl.trans(g), r, 'ieee', False)  # [BLOCK_H, BLOCK_C]
        acc_gamma += tl.sum(u * y_hat, 0)
        acc_beta += tl.sum(u, 0)
        tl.store(GX + rows[:, None] * sgx_n + cols[None, :],
                 u.to(GX.dtype.element_ty), mask=mask)
        v = u * gamma[None, :]
        v_mean = tl.sum(v, 1) / C
        vy_mean = tl.sum(v * y_hat, 1) / C
        g_y = rstd[:, None] * (v - v_mean[:, None]
                               - y_hat * vy_mean[:, None])
        g_y = tl.where(mask, g_y, 0.0)
        acc_y += tl.sum(g_y, 0)
        tl.store(GY + rows[:, None] * sgy_n + cols[None, :],
                 g_y.to(GY.dtype.element_ty), mask=mask)
    # One row of partial sums per program: [BLOCK_H + 3, C].
    part = PART + pid * (BLOCK_H + 3) * C
    tl.store(part + heads[:, None] * C + cols[None, :], acc_w,
             mask=mask_h[:, None] & mask_c[None, :])
    tl.store(part + BLOCK_H * C + cols, acc_gamma, mask=mask_c)
    tl.store(part + (BLOCK_H + 1) * C + cols, acc_beta, mask=mask_c)
    tl.store(part + (BLOCK_H + 2) * C + cols, acc_y, mask=mask_c)


_launch = Launcher(_score_tail_bwd)
#: A fixed ``{'BLOCK_N', 'num_warps', 'programs_per_sm'}`` in place of
#: :func:`default_config` (``benchmarks/scorer_grad_kernel.py`` times
#: others).
KERNEL_CONFIG: Optional[dict] = None
#: Multiprocessors per CUDA device index, looked up once.
_SMS: dict = {}


def default_config(C: int) -> dict:
    """Rows per block, warps and programs per multiprocessor (each
    program loops over its share of the row blocks) for width ``C``:
    about 4K values per row block, at least 16 rows (:func:`tl.dot`), two
    programs per multiprocessor. At 256 channels on the H200 that took
    0.162 ms at 65,536 tokens and 0.559 ms at 262,144, against 0.175 and
    0.572 with four programs per multiprocessor, the least of 14
    configurations (3d2435c, ``python benchmarks/scorer_grad_kernel.py
    --tokens 65536``, and ``262144``)."""
    width = max(16, triton.next_power_of_2(C))
    rows = max(16, min(64, 4096 // width))
    return {'BLOCK_N': rows, 'num_warps': 4 if rows * width <= 4096 else 8,
            'programs_per_sm': 2}


def _programs(device: torch.device, blocks: int, per_sm: int) -> int:
    if device.type != 'cuda':  # the interpreter: a few programs suffice
        return min(blocks, 3)
    index = device.index if device.index is not None \
        else torch.cuda.current_device()
    if index not in _SMS:
        _SMS[index] = torch.cuda.get_device_properties(
            index).multi_processor_count
    return min(blocks, per_sm * _SMS[index])


def score_tail_backward_triton(
    y: Tensor, x: Tensor, grad: Tensor, weight: Tensor, ln_weight: Tensor,
    ln_bias: Tensor, eps: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    r"""Gradients of the scores :math:`\mathbf{W}(\mathbf{x} +
    \mathrm{LN}(\mathbf{y})) + \mathbf{b}` (see the module docstring), one
    kernel launch and one sum of the programs' partial sums.

    Args:
        y (Tensor): ``[N, C]`` LayerNorm input, any float dtype.
        x (Tensor): ``[N, C]`` tokens, any float dtype.
        grad (Tensor): ``[N, H]`` gradient of the scores.
        weight (Tensor): ``[H, C]`` projection.
        ln_weight (Tensor): ``[C]``; ln_bias: ``[C]`` (LayerNorm affine).
        eps (float): LayerNorm epsilon.

    Returns:
        The gradients of ``x`` (``[N, C]``, ``x``'s dtype) and ``y``
        (``[N, C]``, ``y``'s dtype), and the float32 sums over the tokens
        of the gradients of ``weight`` (``[H, C]``), ``ln_weight``,
        ``ln_bias`` and ``y`` (``[C]`` each).
    """
    if y.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"Expected 'y' and 'x' of one shape [N, C] (got "
                         f"{list(y.shape)} and {list(x.shape)})")
    N, C = y.shape
    H = weight.size(0)
    if C > SCORE_GRAD_MAX_CHANNELS or H > SCORE_MAX_HEADS:
        raise ValueError(f"Expected at most {SCORE_GRAD_MAX_CHANNELS} "
                         f"channels and {SCORE_MAX_HEADS} heads (got {C} "
                         f"and {H})")
    if tuple(grad.shape) != (N, H) or tuple(weight.shape) != (H, C):
        raise ValueError(f"Expected 'grad' of shape [{N}, {H}] and 'weight' "
                         f"of shape [{H}, {C}] (got {list(grad.shape)} and "
                         f"{list(weight.shape)})")
    g_x = torch.empty_like(x, memory_format=torch.contiguous_format)
    g_y = torch.empty_like(y, memory_format=torch.contiguous_format)
    BLOCK_C = max(16, triton.next_power_of_2(C))
    BLOCK_H = max(16, triton.next_power_of_2(H))  # tl.dot: at least 16
    config = dict(KERNEL_CONFIG or default_config(C))
    if INTERPRETED:  # the fewest rows; the interpreter runs one warp
        config.update(BLOCK_N=16, num_warps=1)
    BLOCK_N = config['BLOCK_N']
    blocks = triton.cdiv(N, BLOCK_N)
    programs = max(1, _programs(y.device, blocks,
                                config['programs_per_sm']))
    part = torch.zeros(programs, BLOCK_H + 3, C, device=y.device,
                       dtype=torch.float32)
    if N > 0:
        y = y if y.stride(-1) == 1 else y.contiguous()
        x = x if x.stride(-1) == 1 else x.contiguous()
        grad = grad.float()
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        weight = weight.float().contiguous()
        _launch((programs, ), y, x, grad, weight, ln_weight, ln_bias, g_x,
                g_y, part, y.stride(0), x.stride(0), grad.stride(0),
                g_x.stride(0), g_y.stride(0), N, C, H, float(eps),
                BLOCK_N=BLOCK_N, BLOCK_C=BLOCK_C, BLOCK_H=BLOCK_H,
                num_warps=config['num_warps'])
    total = part.sum(0)  # [BLOCK_H + 3, C]
    return (g_x, g_y, total[:H], total[BLOCK_H], total[BLOCK_H + 1],
            total[BLOCK_H + 2])


__all__: Tuple[str, ...] = ('score_tail_backward_triton', )
