r"""A linear layer of float32 rows in a 16-bit dtype, the cast inside the
GEMM, written in Triton.

Under autocast, :func:`torch.nn.functional.linear` of float32 rows
:math:`\mathbf{X}` (:math:`[M, K]`) with 16-bit weights first writes a
16-bit copy of :math:`\mathbf{X}` (a pass that reads :math:`4MK` bytes and
writes :math:`2MK`), which cuBLAS then reads again. Here each program
loads a ``[BLOCK_M, BLOCK_K]`` block of float32 rows, rounds it to the
weights' dtype in registers and multiplies it on the tensor cores with
float32 accumulation:

.. math::
    \mathbf{Y} = \mathrm{rnd}\big(\mathrm{rnd}(\mathbf{X})
    \mathbf{W}^\top + \mathbf{b}\big),

where :math:`\mathrm{rnd}` rounds to the weights' dtype: the values that
the cast and the GEMM give, up to the order of the float32 sums. No copy
of :math:`\mathbf{X}` is written. Forward only. Importing this module
needs Triton.
"""
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.dot import dot
from samsa_geo.ops._triton.launch import Launcher

#: A fixed ``{'BLOCK_M', 'BLOCK_N', 'BLOCK_K', 'GROUP_M', 'num_warps',
#: 'num_stages'}`` (:obj:`None`: :func:`default_config`).
KERNEL_CONFIG: Optional[dict] = None


@triton.jit
def _round_bf16(v):
    # float32 v rounded to bfloat16's precision, to nearest even (finite v),
    # still in float32: the interpreter truncates where it converts.
    bits = v.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _cast_linear_fwd(
    X, W, B, Y, M, N, K, sx_m, sw_n, sy_m,
    HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, ROUND: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # Programs in groups of GROUP_M row blocks that walk the column blocks
    # together, so that their rows of X are read from L2 after the first.
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m, mask_n = rows < M, cols < N
    rows = rows.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        mask_k = ks < K
        x = tl.load(X + rows[:, None] * sx_m + ks[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(W + cols[None, :] * sw_n + ks[:, None],
                    mask=mask_k[:, None] & mask_n[None, :],
                    other=0.0)  # [BLOCK_K, BLOCK_N] block of W^T
        if ROUND:
            x = _round_bf16(x)
        else:
            x = x.to(W.dtype.element_ty)
        acc += dot(x, w, 'tf32', UPCAST)
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=mask_n, other=0.0).to(
            tl.float32)[None, :]
    if ROUND:
        acc = _round_bf16(acc)
    tl.store(Y + rows[:, None] * sy_m + cols[None, :],
             acc.to(Y.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


_launch = Launcher(_cast_linear_fwd)


def default_config(M: int, N: int, K: int) -> dict:
    r"""Blocks, program groups, warps and stages for an :math:`[M, K]`
    by :math:`[K, N]` product."""
    return {'BLOCK_M': 128, 'BLOCK_N': 128 if N >= 128 else 64,
            'BLOCK_K': 64, 'GROUP_M': 8, 'num_warps': 8, 'num_stages': 3}


def cast_linear_triton(x: Tensor, weight: Tensor,
                       bias: Optional[Tensor] = None) -> Tensor:
    r""":math:`\mathbf{x}` cast to ``weight``'s dtype, times
    :math:`\mathbf{W}^\top`, plus :math:`\mathbf{b}`, in one kernel launch.

    Args:
        x (Tensor): ``[M, K]`` float32 rows, unit column stride.
        weight (Tensor): ``[N, K]`` in bfloat16 or float16, unit column
            stride.
        bias (Tensor, optional): ``[N]`` in ``weight``'s dtype.

    Returns:
        ``[M, N]`` in ``weight``'s dtype, contiguous.
    """
    M, K = x.shape
    N = weight.size(0)
    if x.dtype != torch.float32 or weight.dtype not in (torch.bfloat16,
                                                        torch.float16):
        raise TypeError(f"Expected float32 'x' and a bfloat16 or float16 "
                        f"'weight' (got {x.dtype} and {weight.dtype})")
    if weight.dim() != 2 or weight.size(1) != K:
        raise ValueError(f"Expected 'weight' of shape [N, {K}] (got "
                         f"{list(weight.shape)})")
    if bias is not None and (bias.shape != (N, )
                             or bias.dtype != weight.dtype):
        raise ValueError(f"Expected 'bias' of shape [{N}] in "
                         f"{weight.dtype} (got {list(bias.shape)} in "
                         f"{bias.dtype})")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("Expected 'x' and 'weight' with unit column stride")
    y = torch.empty(M, N, device=x.device, dtype=weight.dtype)
    if M == 0 or N == 0:
        return y
    if K == 0:
        return y.copy_(bias.expand(M, N)) if bias is not None \
            else y.zero_()
    config = dict(KERNEL_CONFIG or default_config(M, N, K))
    if INTERPRETED:  # small blocks
        config.update(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2,
                      num_warps=1, num_stages=1)
    grid = (triton.cdiv(M, config['BLOCK_M'])
            * triton.cdiv(N, config['BLOCK_N']), )
    _launch(grid, x, weight, weight if bias is None else bias, y, M, N, K,
            x.stride(0), weight.stride(0), y.stride(0),
            HAS_BIAS=bias is not None,
            # The interpreter multiplies float32 copies of 16-bit blocks
            # and truncates float32 to bfloat16: it rounds by hand.
            UPCAST=INTERPRETED,
            ROUND=INTERPRETED and weight.dtype == torch.bfloat16, **config)
    return y
