r"""Training batch normalisation of a residual sum, written in Triton, with
its backward pass:

.. math::
    \mathbf{y}_i = \mathbf{x}_i + \mathbf{h}_i, \qquad
    \mathbf{o}_i = \frac{\mathbf{y}_i - \boldsymbol{\mu}}
    {\sqrt{\boldsymbol{\sigma}^2 + \epsilon}} \odot \boldsymbol{\gamma}
    + \boldsymbol{\beta},

with :math:`\boldsymbol{\mu}` and :math:`\boldsymbol{\sigma}^2` the
per-channel mean and biased variance over the :math:`M` rows. The sum
:math:`\mathbf{y}` is never stored: both passes read :math:`\mathbf{x}`
and :math:`\mathbf{h}` again.

Forward, three launches:

1. every program reduces a span of rows to their mean and sum of squared
   deviations (Welford's update per lane of its tile, the lanes merged
   with Chan's formula at the end, so a large mean costs no precision);
2. one program per block of channels merges the spans, updates the
   running statistics and writes :math:`\mathbf{s} = \boldsymbol{\gamma}
   / \sqrt{\boldsymbol{\sigma}^2 + \epsilon}` and :math:`\mathbf{t} =
   \boldsymbol{\beta} - \boldsymbol{\mu} \odot \mathbf{s}`;
3. :func:`~samsa_geo.ops._triton.residual_affine.residual_affine_triton`
   writes :math:`\mathbf{o} = \mathbf{y} \odot \mathbf{s} + \mathbf{t}`
   and, optionally, its half-precision copy.

Backward, three launches, with :math:`\mathbf{g}` the gradient of
:math:`\mathbf{o}` plus that of its copy and :math:`\hat{\mathbf{y}} =
(\mathbf{y} - \boldsymbol{\mu}) / \sqrt{\boldsymbol{\sigma}^2 +
\epsilon}`: per span the sums of :math:`\mathbf{g}` and of
:math:`\mathbf{g} \odot \hat{\mathbf{y}}`; their totals
(:math:`\partial\boldsymbol{\beta}` and :math:`\partial\boldsymbol{\gamma}`);
and

.. math::
    \partial\mathbf{y}_i = \mathbf{s} \odot \Big(\mathbf{g}_i -
    \frac{\partial\boldsymbol{\beta}}{M} - \hat{\mathbf{y}}_i \odot
    \frac{\partial\boldsymbol{\gamma}}{M}\Big),

the gradient of both :math:`\mathbf{x}` and :math:`\mathbf{h}`, in each
one's dtype. PyTorch runs the same as an addition, a batch norm and a cast
forward and as the copy's cast, a gradient sum, a batch norm's backward
and a cast backward, each a pass over ``[M, C]``.

Importing this module needs Triton.
"""
from typing import Any, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from samsa_geo.ops._triton import INTERPRETED
from samsa_geo.ops._triton.launch import Launcher
from samsa_geo.ops._triton.residual_affine import residual_affine_triton

#: Values one program holds per chunk of rows: rows per chunk = this /
#: padded width.
BLOCK_VALUES = 4096
#: Most spans of rows (programs of the reductions): their partial sums are
#: ``[SPANS, C]`` and one pass of the merge reads them all. With these two
#: the statistics and the gradient sums took 0.057 + 0.140 ms at 65,536 x
#: 256 and 0.124 + 0.481 ms at 262,144 x 256 on the H200, the least of
#: 128-1,024 spans x 1,024-8,192 values at both sizes (3d2435c, ``python
#: benchmarks/batch_norm_kernel.py --sweep --tokens 65536,262144``; 512
#: spans of 4,096 values: 0.057 + 0.152 and 0.119 + 0.492).
MAX_SPANS = 256
#: Channels per program of the merges.
MERGE_CHANNELS = 32
#: Spans one merge step reads.
MERGE_SPANS = 64


@triton.jit
def _stats_partial(X, H, MEAN_P, M2_P, M, C, R, sx_m, sh_m,
                   BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    # The mean and sum of squared deviations of y = x + h over rows
    # [p R, (p + 1) R). Every lane of the [BLOCK_M, BLOCK_C] tile runs
    # Welford's update over the rows it reads (no exchange between lanes
    # inside the loop); the lanes are merged once, at the end, with Chan's
    # formula.
    p = tl.program_id(0)
    lanes = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    start = p * R
    end = tl.minimum(start + R, M)
    mean = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    m2 = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    n = tl.zeros((BLOCK_M, ), tl.float32)  # rows seen per lane
    for row in range(start, end, BLOCK_M):
        rows = row + lanes
        rmask = rows < end
        mask = rmask[:, None] & cmask[None, :]
        rows = rows.to(tl.int64)
        y = tl.load(X + rows[:, None] * sx_m + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        y += tl.load(H + rows[:, None] * sh_m + cols[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        n += rmask.to(tl.float32)
        step = tl.where(rmask, 1.0 / tl.maximum(n, 1.0), 0.0)
        delta = y - mean
        mean += delta * step[:, None]
        m2 += tl.where(mask, delta * (y - mean), 0.0)
    total = tl.maximum(tl.sum(n, axis=0), 1.0)
    span_mean = tl.sum(mean * n[:, None], axis=0) / total
    d = mean - span_mean[None, :]
    span_m2 = tl.sum(m2 + d * d * n[:, None], axis=0)
    tl.store(MEAN_P + p * C + cols, span_mean, mask=cmask)
    tl.store(M2_P + p * C + cols, span_m2, mask=cmask)


@triton.jit
def _stats_merge(MEAN_P, M2_P, W, B, RM, RV, SCALE, SHIFT, MEAN, INVSTD,
                 P, R, M, C, momentum, eps, HAS_W: tl.constexpr,
                 HAS_B: tl.constexpr, HAS_RUNNING: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    # Merges the spans' statistics of a block of channels: the mean from
    # the spans' means, then the sum of squared deviations from theirs and
    # the spans' offsets from that mean.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    total = tl.zeros((BLOCK_C, ), tl.float32)
    for p0 in range(0, P, BLOCK_P):
        spans = p0 + tl.arange(0, BLOCK_P)
        n_p = tl.minimum(tl.maximum(M - spans * R, 0), R).to(tl.float32)
        mask = (spans < P)[:, None] & cmask[None, :]
        mean_p = tl.load(MEAN_P + spans[:, None] * C + cols[None, :],
                         mask=mask, other=0.0)
        total += tl.sum(mean_p * n_p[:, None], axis=0)
    mean = total / M
    m2 = tl.zeros((BLOCK_C, ), tl.float32)
    for p0 in range(0, P, BLOCK_P):
        spans = p0 + tl.arange(0, BLOCK_P)
        n_p = tl.minimum(tl.maximum(M - spans * R, 0), R).to(tl.float32)
        mask = (spans < P)[:, None] & cmask[None, :]
        offsets = spans[:, None] * C + cols[None, :]
        mean_p = tl.load(MEAN_P + offsets, mask=mask, other=0.0)
        m2_p = tl.load(M2_P + offsets, mask=mask, other=0.0)
        d = mean_p - mean[None, :]
        m2 += tl.sum(m2_p + d * d * n_p[:, None], axis=0)
    invstd = 1.0 / tl.sqrt(m2 / M + eps)
    scale = invstd
    if HAS_W:
        scale *= tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    shift = -mean * scale
    if HAS_B:
        shift += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(SCALE + cols, scale, mask=cmask)
    tl.store(SHIFT + cols, shift, mask=cmask)
    tl.store(MEAN + cols, mean, mask=cmask)
    tl.store(INVSTD + cols, invstd, mask=cmask)
    if HAS_RUNNING:  # as PyTorch's: the unbiased variance
        rm = tl.load(RM + cols, mask=cmask, other=0.0).to(tl.float32)
        rv = tl.load(RV + cols, mask=cmask, other=0.0).to(tl.float32)
        rm = rm * (1.0 - momentum) + mean * momentum
        rv = rv * (1.0 - momentum) + m2 / (M - 1) * momentum
        tl.store(RM + cols, rm.to(RM.dtype.element_ty), mask=cmask)
        tl.store(RV + cols, rv.to(RV.dtype.element_ty), mask=cmask)


@triton.jit
def _grad_partial(GO, GZ, X, H, MEAN, INVSTD, SG_P, SGY_P, M, C, R, sgo_m,
                  sgz_m, sx_m, sh_m, HAS_GO: tl.constexpr,
                  HAS_GZ: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_C: tl.constexpr):
    # Per span: the sums of g and of g * y_hat over its rows.
    p = tl.program_id(0)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mean = tl.load(MEAN + cols, mask=cmask, other=0.0)
    invstd = tl.load(INVSTD + cols, mask=cmask, other=0.0)
    start = p * R
    end = tl.minimum(start + R, M)
    sg = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)  # per lane, summed
    sgy = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)  # at the end
    for row in range(start, end, BLOCK_M):
        rows = row + tl.arange(0, BLOCK_M)
        mask = (rows < end)[:, None] & cmask[None, :]
        rows = rows.to(tl.int64)
        g = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
        if HAS_GO:
            g += tl.load(GO + rows[:, None] * sgo_m + cols[None, :],
                         mask=mask, other=0.0).to(tl.float32)
        if HAS_GZ:
            g += tl.load(GZ + rows[:, None] * sgz_m + cols[None, :],
                         mask=mask, other=0.0).to(tl.float32)
        y = tl.load(X + rows[:, None] * sx_m + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        y += tl.load(H + rows[:, None] * sh_m + cols[None, :], mask=mask,
                     other=0.0).to(tl.float32)
        y_hat = tl.where(mask, (y - mean[None, :]) * invstd[None, :], 0.0)
        sg += g
        sgy += g * y_hat
    tl.store(SG_P + p * C + cols, tl.sum(sg, axis=0), mask=cmask)
    tl.store(SGY_P + p * C + cols, tl.sum(sgy, axis=0), mask=cmask)


@triton.jit
def _grad_merge(SG_P, SGY_P, W, INVSTD, DW, DB, A, C1, C2, P, M, C,
                HAS_W: tl.constexpr, BLOCK_P: tl.constexpr,
                BLOCK_C: tl.constexpr):
    # The totals (the gradients of the bias and the weight) and the
    # coefficients of the input gradient.
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    sg = tl.zeros((BLOCK_C, ), tl.float32)
    sgy = tl.zeros((BLOCK_C, ), tl.float32)
    for p0 in range(0, P, BLOCK_P):
        spans = p0 + tl.arange(0, BLOCK_P)
        mask = (spans < P)[:, None] & cmask[None, :]
        offsets = spans[:, None] * C + cols[None, :]
        sg += tl.sum(tl.load(SG_P + offsets, mask=mask, other=0.0), axis=0)
        sgy += tl.sum(tl.load(SGY_P + offsets, mask=mask, other=0.0),
                      axis=0)
    a = tl.load(INVSTD + cols, mask=cmask, other=0.0)
    if HAS_W:
        a *= tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)
    tl.store(DB + cols, sg, mask=cmask)
    tl.store(DW + cols, sgy, mask=cmask)
    tl.store(A + cols, a, mask=cmask)
    tl.store(C1 + cols, sg / M, mask=cmask)
    tl.store(C2 + cols, sgy / M, mask=cmask)


@triton.jit
def _grad_apply(GO, GZ, X, H, MEAN, INVSTD, A, C1, C2, DX, DH, M, C, sgo_m,
                sgz_m, sx_m, sh_m, sdx_m, sdh_m, HAS_GO: tl.constexpr,
                HAS_GZ: tl.constexpr, HAS_DH: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    # dy = a (g - c1 - y_hat c2), stored for x and, in its dtype, for h.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_C)
    cmask = cols < C
    mask = (rows < M)[:, None] & cmask[None, :]
    rows = rows.to(tl.int64)
    g = tl.zeros((BLOCK_M, BLOCK_C), tl.float32)
    if HAS_GO:
        g += tl.load(GO + rows[:, None] * sgo_m + cols[None, :], mask=mask,
                     other=0.0).to(tl.float32)
    if HAS_GZ:
        g += tl.load(GZ + rows[:, None] * sgz_m + cols[None, :], mask=mask,
                     other=0.0).to(tl.float32)
    y = tl.load(X + rows[:, None] * sx_m + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    y += tl.load(H + rows[:, None] * sh_m + cols[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    mean = tl.load(MEAN + cols, mask=cmask, other=0.0)
    invstd = tl.load(INVSTD + cols, mask=cmask, other=0.0)
    a = tl.load(A + cols, mask=cmask, other=0.0)
    c1 = tl.load(C1 + cols, mask=cmask, other=0.0)
    c2 = tl.load(C2 + cols, mask=cmask, other=0.0)
    y_hat = (y - mean[None, :]) * invstd[None, :]
    dy = a[None, :] * (g - c1[None, :] - y_hat * c2[None, :])
    tl.store(DX + rows[:, None] * sdx_m + cols[None, :],
             dy.to(DX.dtype.element_ty), mask=mask)
    if HAS_DH:
        tl.store(DH + rows[:, None] * sdh_m + cols[None, :],
                 dy.to(DH.dtype.element_ty, fp_downcast_rounding='rtne'),
                 mask=mask)


_launch_stats_partial = Launcher(_stats_partial)
_launch_stats_merge = Launcher(_stats_merge)
_launch_grad_partial = Launcher(_grad_partial)
_launch_grad_merge = Launcher(_grad_merge)
_launch_grad_apply = Launcher(_grad_apply)


def _blocks(M: int, C: int) -> Tuple[int, int, int, int]:
    # (BLOCK_C, BLOCK_M, rows per span R, spans P): whole rows of C
    # channels per chunk, at most MAX_SPANS spans of whole chunks.
    BLOCK_C = max(16, triton.next_power_of_2(C))
    BLOCK_M = max(1, BLOCK_VALUES // BLOCK_C)
    if INTERPRETED:
        BLOCK_M = min(BLOCK_M, 8)
    chunks = triton.cdiv(M, BLOCK_M)
    R = BLOCK_M * triton.cdiv(chunks, MAX_SPANS)
    return BLOCK_C, BLOCK_M, R, triton.cdiv(M, R)


def _merge_grid(C: int) -> Tuple[int]:
    return (triton.cdiv(C, MERGE_CHANNELS), )


def batch_norm_stats(x: Tensor, h: Tensor, weight: Optional[Tensor],
                     bias: Optional[Tensor], running_mean: Optional[Tensor],
                     running_var: Optional[Tensor], momentum: float,
                     eps: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    r"""The batch statistics of ``x + h`` (``[M, C]``, rows with unit
    stride, :math:`M \ge 2`) as ``(scale, shift, mean, invstd)``, each
    float32 ``[C]``; updates ``running_mean`` and ``running_var`` in place
    (where given) as :class:`torch.nn.BatchNorm1d` does."""
    M, C = x.shape
    BLOCK_C, BLOCK_M, R, P = _blocks(M, C)
    # [2 P + 4, C]: the spans' means and sums, then scale, shift, mean and
    # invstd (one allocation).
    buf = torch.empty(2 * P + 4, C, dtype=torch.float32, device=x.device)
    mean_p, m2_p, out = buf[:P], buf[P:2 * P], buf[2 * P:]
    _launch_stats_partial((P, ), x, h, mean_p, m2_p, M, C, R, x.stride(0),
                          h.stride(0), BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C,
                          num_warps=4)
    has_running = running_mean is not None
    _launch_stats_merge(
        _merge_grid(C), mean_p, m2_p, _or(weight, out), _or(bias, out),
        _or(running_mean, out), _or(running_var, out), out[0], out[1],
        out[2], out[3], P, R, M, C, float(momentum), float(eps),
        HAS_W=weight is not None, HAS_B=bias is not None,
        HAS_RUNNING=has_running, BLOCK_P=MERGE_SPANS,
        BLOCK_C=MERGE_CHANNELS, num_warps=4)
    if has_running:  # written by the kernel: mark them changed
        torch.autograd.graph.increment_version((running_mean, running_var))
    return out[0], out[1], out[2], out[3]


def batch_norm_grad(grad_out: Optional[Tensor], grad_copy: Optional[Tensor],
                    x: Tensor, h: Tensor, weight: Optional[Tensor],
                    mean: Tensor, invstd: Tensor, h_grad_dtype: bool,
                    into: Sequence[Tensor] = (),
                    ) -> Tuple[Tensor, Optional[Tensor], Tensor, Tensor]:
    r"""The gradients ``(dx, dh, dweight, dbias)`` of the batch norm of
    ``x + h`` from those of its output and its copy (either may be
    :obj:`None`). ``dh`` is :obj:`None` where ``h_grad_dtype`` is False:
    ``h`` has ``x``'s dtype and ``dx`` serves both. ``dx`` and ``dh`` are
    written into ``into[0]`` and ``into[1]`` where given with their
    dtypes and shapes and rows of contiguous values."""
    M, C = x.shape
    BLOCK_C, BLOCK_M, R, P = _blocks(M, C)
    go = _rows(grad_out)
    gz = _rows(grad_copy)
    g_any = go if go is not None else gz
    go_, gz_ = _or(go, g_any), _or(gz, g_any)
    # [2 P + 5, C]: the spans' sums, then dweight, dbias, a, c1, c2.
    buf = torch.empty(2 * P + 5, C, dtype=torch.float32, device=x.device)
    sg_p, sgy_p, out = buf[:P], buf[P:2 * P], buf[2 * P:]
    _launch_grad_partial(
        (P, ), go_, gz_, x, h, mean, invstd, sg_p, sgy_p, M, C, R,
        go_.stride(0), gz_.stride(0), x.stride(0), h.stride(0),
        HAS_GO=go is not None, HAS_GZ=gz is not None, BLOCK_M=BLOCK_M,
        BLOCK_C=BLOCK_C, num_warps=4)
    _launch_grad_merge(
        _merge_grid(C), sg_p, sgy_p, _or(weight, out), invstd, out[0],
        out[1], out[2], out[3], out[4], P, M, C, HAS_W=weight is not None,
        BLOCK_P=MERGE_SPANS, BLOCK_C=MERGE_CHANNELS, num_warps=4)
    dx = _buffer(into, 0, M, C, x)
    dh = _buffer(into, 1, M, C, h) if h_grad_dtype else None
    dh_ = _or(dh, dx)
    _launch_grad_apply(
        (triton.cdiv(M, BLOCK_M), ), go_, gz_, x, h, mean, invstd, out[2],
        out[3], out[4], dx, dh_, M, C, go_.stride(0), gz_.stride(0),
        x.stride(0), h.stride(0), dx.stride(0), dh_.stride(0),
        HAS_GO=go is not None, HAS_GZ=gz is not None, HAS_DH=dh is not None,
        BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C, num_warps=4)
    return dx, dh, out[0], out[1]


def _buffer(into: Sequence[Tensor], i: int, M: int, C: int,
            like: Tensor) -> Tensor:
    # into[i] where it holds [M, C] rows of like's dtype, else a new one.
    if i < len(into):
        t = into[i]
        if (t.dtype == like.dtype and t.device == like.device
                and t.shape == (M, C) and t.stride(1) == 1):
            return t
    return torch.empty(M, C, dtype=like.dtype, device=like.device)


def _or(t: Optional[Tensor], other: Tensor) -> Tensor:
    # A pointer for an argument the kernel does not read (its flag off).
    return other if t is None else t


def _rows(t: Optional[Tensor]) -> Optional[Tensor]:
    return t if t is None or t.stride(1) == 1 else t.contiguous()


class ResidualBatchNorm(torch.autograd.Function):
    r"""``F.batch_norm(x + h, ..., training=True)`` and its copy in a
    second dtype, through the kernels above (see the module's text).

    A caller may set ``grad_into`` on the output's backward node to a
    sequence of buffers: the gradients of ``x`` and ``h`` are then written
    into them (see :func:`batch_norm_grad`): a CUDA graph's caller has
    them written where the graph of the rest of the backward pass reads
    them, without a copy."""
    @staticmethod
    def forward(ctx: Any, x: Tensor, h: Tensor, weight: Optional[Tensor],
                bias: Optional[Tensor], running_mean: Optional[Tensor],
                running_var: Optional[Tensor], momentum: float, eps: float,
                copy_dtype: Optional[torch.dtype],
                ) -> Tuple[Tensor, Optional[Tensor]]:
        x = x if x.stride(1) == 1 else x.contiguous()
        h = h if h.stride(1) == 1 else h.contiguous()
        scale, shift, mean, invstd = batch_norm_stats(
            x, h, weight, bias, running_mean, running_var, momentum, eps)
        out_dtype = torch.promote_types(x.dtype, h.dtype)
        y, z = residual_affine_triton(x, h, scale, shift, out_dtype,
                                      copy_dtype)
        ctx.save_for_backward(x, h, weight, mean, invstd)
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.grad_into = ()
        ctx.set_materialize_grads(False)
        return y, z

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Optional[Tensor],
                 grad_copy: Optional[Tensor]) -> Tuple[Optional[Tensor], ...]:
        x, h, weight, mean, invstd = ctx.saved_tensors
        if grad_out is None and grad_copy is None:
            return (None, ) * 9
        needs = ctx.needs_input_grad
        dx, dh, dweight, dbias = batch_norm_grad(
            grad_out, grad_copy, x, h, weight, mean, invstd,
            needs[1] and h.dtype != x.dtype, ctx.grad_into)
        dh = dx if dh is None else dh
        return (dx if needs[0] else None, dh if needs[1] else None,
                dweight.to(weight.dtype) if needs[2] else None,
                dbias.to(ctx.bias_dtype) if needs[3] else None,
                None, None, None, None, None)
