r"""The aggregation of GIN / GINE message passing, written in Triton, with
its backward pass:

.. math::
    \mathbf{h}_i = (1 + \epsilon)\,\mathbf{x}_i + \sum_{(j, i) \in
    \mathcal{E}} \mathrm{ReLU}(\mathbf{x}_j + \mathbf{e}_{ji})

(without edge features the messages are :math:`\mathbf{x}_j`), with
:math:`\mathbf{h}` in float32.

Forward: PyTorch's ``addcmul`` writes :math:`(1 + \epsilon)\,\mathbf{x}`,
then one kernel over blocks of edges and channels reads
:math:`\mathbf{x}_j` and :math:`\mathbf{e}_{ji}`, forms the message and
adds it to row :math:`i` with atomic float32 additions. PyTorch runs the
same as a gather, an addition, a ReLU, :math:`1 + \epsilon`, a product
and an indexed sum,
with the messages ``[E, C]`` stored for the backward pass; the kernel
stores none.

Backward, with :math:`\mathbf{g}` the gradient of :math:`\mathbf{h}`:
``addcmul`` writes :math:`(1 + \epsilon)\,\mathbf{g}` into a float32
accumulator, one kernel over the edges recomputes each message's sign,
writes :math:`\partial\mathbf{e}_{ji} = \mathbf{g}_i
[\mathbf{x}_j + \mathbf{e}_{ji} > 0]` and adds it to row :math:`j` of the
accumulator (atomically), and :math:`\partial\epsilon = \sum
\mathbf{g} \odot \mathbf{x}` is one product and one sum. The atomic sums
(relaxed: they only accumulate, nothing reads them before the kernel
ends) make the order of additions, and so the last bits of float32
results, vary between runs, as PyTorch's ``index_add_`` on CUDA does.

Importing this module needs Triton.
"""
from typing import Any, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from samsa_geo.ops._triton.launch import Launcher

#: Values one program holds: edges per block = this / channel block.
BLOCK_VALUES = 4096
#: Widest channel block.
MAX_BLOCK_C = 128

#: The messages' dtype as the kernels' ROUND code: float32 values are
#: rounded to it (0: none).
_ROUND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


@triton.jit
def _rounded(v, ROUND: tl.constexpr):
    # Float32 values v rounded to the messages' dtype (see _ROUND).
    if ROUND == 1:
        v = v.to(tl.bfloat16).to(tl.float32)
    elif ROUND == 2:
        v = v.to(tl.float16).to(tl.float32)
    return v


@triton.jit
def _edge_block(SRC, DST, num_edges, C, BLOCK_E: tl.constexpr,
                BLOCK_C: tl.constexpr):
    # This program's edges (rows) and channels (cols), the mask of the
    # valid pairs, and the edges' source and target nodes (int64).
    rows = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_ok = rows < num_edges
    mask = row_ok[:, None] & (cols < C)[None, :]
    src = tl.load(SRC + rows, mask=row_ok, other=0).to(tl.int64)
    dst = tl.load(DST + rows, mask=row_ok, other=0).to(tl.int64)
    return rows, cols, mask, src, dst


@triton.jit
def _edge_sum(X, E, src, rows, cols, mask, sx, se, ROUND: tl.constexpr):
    # x_j + e_ji of a block of edges and channels, rounded to the messages'
    # dtype as PyTorch's addition of the two rows is (float32 values).
    x = tl.load(X + src[:, None] * sx + cols[None, :], mask=mask,
                other=0.0).to(tl.float32)
    e = tl.load(E + rows.to(tl.int64)[:, None] * se + cols[None, :],
                mask=mask, other=0.0).to(tl.float32)
    return _rounded(x + e, ROUND)


@triton.jit
def _messages(X, E, SRC, DST, H, num_edges, C, sx, se, sh,
              ROUND: tl.constexpr, HAS_EDGE: tl.constexpr,
              BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):
    # H[dst] += relu(X[src] + E) (or X[src]) for a block of edges and
    # channels.
    rows, cols, mask, src, dst = _edge_block(SRC, DST, num_edges, C,
                                             BLOCK_E, BLOCK_C)
    if HAS_EDGE:
        m = tl.maximum(_edge_sum(X, E, src, rows, cols, mask, sx, se, ROUND),
                       0.0)
    else:
        m = tl.load(X + src[:, None] * sx + cols[None, :], mask=mask,
                    other=0.0).to(tl.float32)
    tl.atomic_add(H + dst[:, None] * sh + cols[None, :], m, mask=mask,
                  sem='relaxed')


@triton.jit
def _message_grads(X, E, SRC, DST, G, GX, GE, num_edges, C, sx, se, sg,
                   sgx, sge, ROUND: tl.constexpr, HAS_EDGE: tl.constexpr,
                   WRITE_X: tl.constexpr, WRITE_E: tl.constexpr,
                   BLOCK_E: tl.constexpr, BLOCK_C: tl.constexpr):
    # The gradient of each message, G[dst] (where X[src] + E > 0) in the
    # message dtype, as PyTorch's cast back gives it: stored as E's
    # gradient, added to GX[src] (float32, atomically).
    rows, cols, mask, src, dst = _edge_block(SRC, DST, num_edges, C,
                                             BLOCK_E, BLOCK_C)
    g = _rounded(tl.load(G + dst[:, None] * sg + cols[None, :], mask=mask,
                         other=0.0).to(tl.float32), ROUND)
    if HAS_EDGE:
        active = _edge_sum(X, E, src, rows, cols, mask, sx, se, ROUND) > 0.0
        g = tl.where(active, g, 0.0)
        if WRITE_E:
            tl.store(GE + rows.to(tl.int64)[:, None] * sge + cols[None, :],
                     g.to(GE.dtype.element_ty), mask=mask)
    if WRITE_X:
        tl.atomic_add(GX + src[:, None] * sgx + cols[None, :], g, mask=mask,
                      sem='relaxed')


_MESSAGES = Launcher(_messages)
_MESSAGE_GRADS = Launcher(_message_grads)


def _blocks(num_edges: int, C: int) -> Tuple[Tuple[int, int], int, int]:
    # The launch grid and block shape for num_edges edges of C channels.
    block_c = min(triton.next_power_of_2(C), MAX_BLOCK_C)
    block_e = max(16, BLOCK_VALUES // block_c)
    grid = (triton.cdiv(num_edges, block_e), triton.cdiv(C, block_c))
    return grid, block_e, block_c


class GINEAggregate(torch.autograd.Function):
    r"""The aggregation above for float32 outputs: inputs ``x``
    :math:`(N, C)`, ``edge_attr`` :math:`(E, C)` or :obj:`None`, ``eps`` a
    one-value tensor, ``src`` and ``dst`` :math:`(E)` and the messages'
    dtype; output :math:`(N, C)` float32."""
    @staticmethod
    def forward(ctx: Any, x: Tensor, edge_attr: Optional[Tensor],
                eps: Tensor, src: Tensor, dst: Tensor,
                msg_dtype: torch.dtype) -> Tensor:
        x = x if x.stride(1) == 1 else x.contiguous()
        if edge_attr is not None and edge_attr.stride(1) != 1:
            edge_attr = edge_attr.contiguous()
        h = torch.addcmul(x, x, eps)  # [N, C] float32, (1 + eps) x
        num_edges, C = src.numel(), x.size(1)
        if num_edges > 0:
            grid, block_e, block_c = _blocks(num_edges, C)
            e = x if edge_attr is None else edge_attr
            _MESSAGES(grid, x, e, src, dst, h, num_edges, C, x.stride(0),
                      e.stride(0), h.stride(0), ROUND=_ROUND[msg_dtype],
                      HAS_EDGE=edge_attr is not None, BLOCK_E=block_e,
                      BLOCK_C=block_c)
        ctx.save_for_backward(x, edge_attr, eps, src, dst)
        ctx.msg_dtype = msg_dtype
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tuple[Optional[Tensor], ...]:
        x, edge_attr, eps, src, dst = ctx.saved_tensors
        need_x, need_e, need_eps = ctx.needs_input_grad[:3]
        grad = grad if grad.stride(1) == 1 else grad.contiguous()
        grad_x = grad_e = grad_eps = None
        if need_eps:  # sum of g * x over every value, eps's shape
            grad_eps = (grad * x).sum().view(eps.shape).to(eps.dtype)
        write_e = need_e and edge_attr is not None
        if need_x or write_e:
            # (1 + eps) g, then the messages' gradients added (float32).
            acc = torch.addcmul(grad, grad, eps) if need_x else grad
            ge = torch.empty_like(edge_attr) if write_e else grad
            num_edges, C = src.numel(), x.size(1)
            if num_edges > 0:
                grid, block_e, block_c = _blocks(num_edges, C)
                e = x if edge_attr is None else edge_attr
                _MESSAGE_GRADS(
                    grid, x, e, src, dst, grad, acc, ge, num_edges, C,
                    x.stride(0), e.stride(0), grad.stride(0), acc.stride(0),
                    ge.stride(0), ROUND=_ROUND[ctx.msg_dtype],
                    HAS_EDGE=edge_attr is not None, WRITE_X=need_x,
                    WRITE_E=write_e, BLOCK_E=block_e, BLOCK_C=block_c)
            grad_x = acc.to(x.dtype) if need_x else None
            grad_e = ge if write_e else None
        return grad_x, grad_e, grad_eps, None, None, None
