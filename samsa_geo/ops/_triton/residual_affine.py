r"""The residual sum and a per-channel affine map in one pass, written in
Triton:

.. math::
    \mathbf{y}_i = (\mathbf{x}_i + \mathbf{h}_i) \odot \mathbf{s}
    + \mathbf{t},

computed in float32, stored in the output dtype and, optionally, once
more in a second dtype (the copy that a following autocast matrix product
reads). One program handles a block of rows held in registers. In
PyTorch the same takes three kernels: the addition, ``addcmul`` and the
cast, each reading and writing the whole ``[N, C]`` tensor.

Forward only. Importing this module needs Triton.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.launch import Launcher

#: Values one program holds: rows per program = this / padded width.
BLOCK_VALUES = 4096
#: Warps per program.
NUM_WARPS = 4


@triton.jit
def _residual_affine_fwd(X, H, S, T, Y, Z, M, C, sx_m, sh_m, sy_m, sz_m,
                         HAS_COPY: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    rows = rows.to(tl.int64)
    x = tl.load(X + rows[:, None] * sx_m + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    h = tl.load(H + rows[:, None] * sh_m + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    s = tl.load(S + cols, mask=cmask, other=0.0).to(tl.float32)
    t = tl.load(T + cols, mask=cmask, other=0.0).to(tl.float32)
    y = (x + h) * s[None, :] + t[None, :]
    tl.store(Y + rows[:, None] * sy_m + cols[None, :],
             y.to(Y.dtype.element_ty), mask=mask)
    if HAS_COPY:  # a half-precision copy, rounded to nearest as .to()
        tl.store(Z + rows[:, None] * sz_m + cols[None, :],
                 y.to(Z.dtype.element_ty, fp_downcast_rounding='rtne'),
                 mask=mask)


_launch_residual_affine = Launcher(_residual_affine_fwd)


def residual_affine_triton(x: Tensor, h: Tensor, scale: Tensor,
                           shift: Tensor, out_dtype: torch.dtype,
                           copy_dtype: Optional[torch.dtype],
                           ) -> Tuple[Tensor, Optional[Tensor]]:
    r"""``(x + h) * scale + shift`` of ``[M, C]`` rows with ``[C]``
    ``scale`` and ``shift``, in ``out_dtype``, and its copy in
    ``copy_dtype`` (:obj:`None`: no copy), one kernel launch."""
    M, C = x.shape
    x = x if x.stride(1) == 1 else x.contiguous()
    h = h if h.stride(1) == 1 else h.contiguous()
    scale, shift = scale.contiguous(), shift.contiguous()
    y = torch.empty(M, C, dtype=out_dtype, device=x.device)
    z = None if copy_dtype is None else torch.empty(
        M, C, dtype=copy_dtype, device=x.device)
    if M == 0:
        return y, z
    BLOCK_C = max(16, triton.next_power_of_2(C))
    BLOCK_M = max(1, BLOCK_VALUES // BLOCK_C)
    if INTERPRETED:
        BLOCK_M = min(BLOCK_M, 16)
    grid = (triton.cdiv(M, BLOCK_M), )
    out2 = y if z is None else z  # never written without a copy
    _launch_residual_affine(
        grid, x, h, scale, shift, y, out2, M, C, x.stride(0), h.stride(0),
        y.stride(0), out2.stride(0), HAS_COPY=z is not None,
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, num_warps=NUM_WARPS)
    return y, z
