r"""A linear layer whose bias gradient is a Triton column sum.

For :math:`\mathbf{Y} = \mathbf{X} \mathbf{W}^\top + \mathbf{b}` with
output gradient :math:`\mathbf{G}` (:math:`[M, C]`), the bias gradient is
the column sum :math:`\partial / \partial \mathbf{b} = \sum_i
\mathbf{g}_i`. PyTorch computes it with its generic reduction kernel,
which reads a 16-bit :math:`\mathbf{G}` of a layer's width (256-1,024
columns) at a fraction of the memory bandwidth; here each program sums a
span of rows for a block of columns in float32 (one accumulator per row
and column of its tile, added up once at the end), and PyTorch adds the
spans' partial sums, in a fixed order: the gradient is deterministic. The
input and weight gradients are the two GEMMs PyTorch's ``addmm`` backward
runs. Importing this module needs Triton.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from samsa_geo.ops._triton.launch import Launcher

#: Values one program holds per chunk of rows (rows per chunk = this /
#: BLOCK_C).
BLOCK_VALUES = 4096
#: Most columns per program.
MAX_BLOCK_C = 128
#: Most programs (spans of rows x blocks of columns); the partial sums are
#: ``[spans, C]`` float32.
MAX_PROGRAMS = 1024


@triton.jit
def _column_sum_partial(G, PART, M, C, stride_m, span,
                        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_s, pid_c = tl.program_id(0), tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = cols < C
    acc = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    start = pid_s * span
    end = tl.minimum(start + span, M)
    for first in range(start, end, BLOCK_M):
        rows = first + tl.arange(0, BLOCK_M)
        mask = (rows < end)[:, None] & mask_c[None, :]
        acc += tl.load(G + rows[:, None].to(tl.int64) * stride_m
                       + cols[None, :], mask=mask, other=0.0
                       ).to(tl.float32)
    tl.store(PART + pid_s * C + cols, tl.sum(acc, 0), mask=mask_c)


_launch = Launcher(_column_sum_partial)


def column_sum_triton(g: Tensor) -> Tensor:
    r"""The float32 sum over the rows of ``g`` (:math:`[M, C]`, unit column
    stride), :math:`[C]`: one kernel launch and PyTorch's sum of the spans'
    partial sums."""
    M, C = g.shape
    if M == 0 or C == 0:
        return torch.zeros(C, dtype=torch.float32, device=g.device)
    if g.stride(1) != 1:
        g = g.contiguous()
    BLOCK_C = min(MAX_BLOCK_C, triton.next_power_of_2(C))
    BLOCK_M = max(1, BLOCK_VALUES // BLOCK_C)
    chunks = triton.cdiv(M, BLOCK_M)
    max_spans = max(1, MAX_PROGRAMS // triton.cdiv(C, BLOCK_C))
    span = BLOCK_M * triton.cdiv(chunks, max_spans)  # rows per program
    spans = triton.cdiv(M, span)
    part = torch.empty(spans, C, dtype=torch.float32, device=g.device)
    _launch((spans, triton.cdiv(C, BLOCK_C)), g, part, M, C, g.stride(0),
            span, BLOCK_M=BLOCK_M, BLOCK_C=BLOCK_C,
            num_warps=4 if BLOCK_M * BLOCK_C <= 4096 else 8)
    return part.sum(0)  # [spans, C] -> [C]


class BiasGradLinear(torch.autograd.Function):
    r""":func:`torch.nn.functional.linear` of ``x`` :math:`[*, C_{in}]`,
    ``weight`` :math:`[C_{out}, C_{in}]` and ``bias`` :math:`[C_{out}]`, all
    of one dtype, whose backward pass sums the bias gradient with
    :func:`column_sum_triton` (in float32, rounded to the bias's dtype
    once, as PyTorch's reduction does)."""
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return F.linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor,
                 ) -> Tuple[Optional[Tensor], Optional[Tensor], Tensor]:
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g = grad.reshape(-1, grad.size(-1))  # [*, C_out] -> [M, C_out]
        g_x = g_w = g_b = None
        if need_x:
            g_x = (g @ weight).view(x.shape)  # [M, C_in] -> [*, C_in]
        if need_w:
            g_w = g.t() @ x.reshape(-1, x.size(-1))  # [C_out, C_in]
        if need_b:
            g_b = column_sum_triton(g).to(grad.dtype)
        return g_x, g_w, g_b


__all__: Tuple[str, ...] = ('BiasGradLinear', 'column_sum_triton')
