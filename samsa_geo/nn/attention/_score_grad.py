r"""The importance scorer's training path as one autograd node.

After the scorer's first linear layer (which :class:`SamsaAttention`
computes in its stacked projection), the scores are

.. math::
    \mathbf{a} = \mathrm{GELU}(\mathbf{h}), \quad
    \mathbf{y} = \mathbf{W}_2 \mathbf{a} + \mathbf{b}_2, \quad
    \mathbf{s} = \mathbf{W}_s \big(\mathbf{x} + \mathrm{LN}(\mathbf{y})\big)
    + \mathbf{b}_s,

with :math:`\mathbf{a}, \mathbf{y}` in the dtype of :math:`\mathbf{h}`
(autocast's) and the residual, the LayerNorm and :math:`\mathbf{W}_s` in
float32. Under plain autograd this is about ten nodes, and it keeps
:math:`\mathbf{a}`, :math:`\mathbf{y}` in float32 and the residual sum in
float32 alive until the backward: :math:`(2 \cdot 4 + 2) C` bytes per
token at 16-bit :math:`\mathbf{h}`. :class:`ScoreTail` saves only
:math:`\mathbf{x}` and its cast that computed :math:`\mathbf{h}` (which
the layer keeps anyway) and the parameters
(:math:`\mathbf{W}_2, \mathbf{b}_2` cast to the dtype of
:math:`\mathbf{h}`), and recomputes :math:`\mathbf{h}`,
:math:`\mathbf{a}`, :math:`\mathbf{y}`, the LayerNorm and the residual
sum in the backward (two extra GEMMs of :math:`N \times C \times C`).

On CUDA (:func:`~samsa_geo.nn.attention.config.set_fused_scorer`) the
float32 part runs in Triton kernels: the forward in the inference kernel
(:mod:`._score_triton`, from :math:`\mathbf{h}` on up to
``SCORE_MLP_MAX_CHANNELS`` channels), the backward in
:mod:`._score_grad_triton`, which reads :math:`\mathbf{y}` and
:math:`\mathbf{x}` once instead of a LayerNorm forward and backward,
two float32 GEMMs and their :math:`(N, C)` float32 temporaries.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import (
    SCORE_GELU_DTYPES,
    SCORE_GRAD_MAX_CHANNELS,
    SCORE_MAX_HEADS,
    is_tracing,
    needs_grad,
    scorer_mlp_in_kernel,
    triton_serves,
)
from samsa_geo.ops._utils import at_least_float32


class ScoreTail(torch.autograd.Function):
    r"""Scores :math:`(N, H)` float32 (float64 where ``ws`` is) of the
    hidden rows ``hidden`` :math:`(N, C)` and the tokens ``x``
    :math:`(N, C)`; the gradients equal those of the PyTorch formula (see
    the module docstring)."""
    @staticmethod
    def forward(ctx, hidden: Tensor, x: Tensor, w1: Tensor,
                b1: Optional[Tensor], w2: Tensor,
                b2: Optional[Tensor], ln_w: Tensor, ln_b: Tensor, eps: float,
                ws: Tensor, bs: Optional[Tensor], approximate: str,
                x_in: Tensor, rows: Optional['ScoredRows'] = None) -> Tensor:
        # The second layer's parameters in the dtype of h, kept for the
        # backward (C x C: no cast there, nor in the recomputation).
        w2c = w2.to(hidden.dtype)
        b2c = None if b2 is None else b2.to(hidden.dtype)
        ctx.kernel = _kernels(hidden, ws, b2, bs)
        if ctx.kernel:
            out = _tail_forward(hidden, x, w2c, b2c, ln_w, ln_b, eps, ws,
                                bs, approximate)
        else:
            dtype = at_least_float32(ws.dtype)
            a = F.gelu(hidden, approximate=approximate)
            y = F.linear(a, w2c, b2c).to(dtype)  # [N, C]
            C = y.size(-1)
            ln = F.layer_norm(y, [C], ln_w.to(dtype), ln_b.to(dtype), eps)
            h = x.to(dtype) + ln  # [N, C] float32 (float64)
            out = F.linear(h, ws.to(dtype),
                           None if bs is None else bs.to(dtype))
        # Not hidden: it is a slice of the layer's stacked projection, and
        # saving it would keep the queries, keys and values alive too.
        ctx.save_for_backward(x, x_in, w1, b1, w2c, b2c, ln_w, ln_b, ws, bs)
        ctx.dtypes = (hidden.dtype, w2.dtype, None if b2 is None
                      else b2.dtype)
        ctx.eps = eps
        ctx.approximate = approximate
        ctx.rows = rows
        return out  # [N, H]

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Outside autocast, as the forward ran (see score_tail): a backward
        # pass called inside an autocast region would cast its products.
        with torch.autocast(grad.device.type, enabled=False):
            return ScoreTail._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad: Tensor):
        x, x_in, w1, b1, w2c, b2c, ln_w, ln_b, ws, bs = ctx.saved_tensors
        dtype, w2_dtype, b2_dtype = ctx.dtypes
        need = ctx.needs_input_grad[:2] + ctx.needs_input_grad[4:]
        rows = ctx.rows
        ids = None
        if rows is not None and rows.ids is not None:
            # Only the scored pairs carry a gradient: the backward runs on
            # their P rows, each with its pair's gradient in its head's
            # column (the sums over rows split by head: the same
            # gradients), and scatters the rows' input gradients.
            ids, grad = rows.rows_and_grad(grad)  # [P], [P, H]
            x, x_in = x.index_select(0, ids), x_in.index_select(0, ids)
        hidden = _linear_in(x_in, w1, b1, dtype)  # [N or P, C]
        a = F.gelu(hidden, approximate=ctx.approximate)
        y = F.linear(a, w2c, b2c)  # [N, C], the forward's values
        if ctx.kernel:
            # LN(y), the residual sum and their gradients in one kernel
            # (float32 inside, the sums over the tokens included).
            g_x, g_y, g_ws, g_lnw, g_lnb, g_b2 = \
                _tail_backward()(y, x, grad, ws, ln_w, ln_b, ctx.eps)
            g_x = g_x if need[1] else None
            g_lnw = g_lnw if need[4] else None
            g_lnb = g_lnb if need[5] else None
            g_ws = g_ws if need[7] else None
            g_b2 = g_b2.to(b2_dtype) if need[3] else None
            g_bs = grad.float().sum(0) if need[8] else None  # [H]
        else:
            g_x, g_y, g_ws, g_bs, g_lnw, g_lnb, g_b2 = _tail_grads(
                y.to(at_least_float32(ws.dtype)), x, grad, ws, bs, ln_w,
                ln_b, b2c, b2_dtype, ctx.eps, need)
        g_y = g_y.to(a.dtype)  # [N, C]
        g_w2 = (g_y.t() @ a).to(w2_dtype) if need[2] else None  # [C, C]
        g_hidden = None
        if need[0]:
            g_a = g_y @ w2c  # [N, C]
            g_hidden = torch.ops.aten.gelu_backward(
                g_a, hidden, approximate=ctx.approximate)
        if ids is not None:  # [P, C] rows -> [N, C], zero elsewhere
            g_hidden = _scatter_rows(g_hidden, ids, rows.num_rows)
            g_x = _scatter_rows(g_x, ids, rows.num_rows)
        return (g_hidden, g_x, None, None, g_w2, g_b2, _cast(g_lnw, ln_w),
                _cast(g_lnb, ln_b), None, _cast(g_ws, ws), _cast(g_bs, bs),
                None, None, None)


class ScoredRows:
    r"""The (token, head) pairs whose scores receive a gradient, where the
    caller knows them before the backward pass: the top and bottom sets
    of a training selection, whose relaxation is the scores' only
    consumer. Given to :func:`score_tail` and filled by :meth:`set` once
    the selection is made, it lets :class:`ScoreTail`'s backward pass run
    on those :math:`P = B H (k + m)` rows instead of all :math:`N`
    tokens."""
    def __init__(self, num_rows: int) -> None:
        self.num_rows = num_rows
        self.ids: Optional[Tensor] = None
        self.head: Optional[Tensor] = None
        self.valid: Optional[Tensor] = None

    def set(self, ids: Tensor, head: Tensor,
            valid: Optional[Tensor]) -> None:
        r"""The pairs: token ids :math:`(B, H, K)` (below ``num_rows``),
        their heads (broadcast to the ids' shape) and whether each slot
        holds a pair of its own (broadcast likewise; :obj:`None`: every
        slot does). Unused slots repeat a used slot's id: they must be
        marked, or that pair's gradient would count twice."""
        self.ids, self.head, self.valid = ids, head, valid

    def rows_and_grad(self, grad: Tensor) -> Tuple[Tensor, Tensor]:
        r"""The pairs' token ids :math:`(P)` and the scores' gradient
        :math:`(N, H)` restricted to them, :math:`(P, H)`: each row holds
        its pair's gradient in its head's column, zeros elsewhere (and
        in every column of an unused slot)."""
        ids = self.ids.reshape(-1)  # [B, H, K] -> [P]
        head = self.head.expand_as(self.ids).reshape(-1)  # [P]
        g = grad[ids, head]  # [P]
        if self.valid is not None:
            g = g * self.valid.expand_as(self.ids).reshape(-1).to(g.dtype)
        out = grad.new_zeros(ids.numel(), grad.size(1))  # [P, H]
        out.scatter_(1, head.view(-1, 1), g.view(-1, 1))
        return ids, out


def _scatter_rows(g: Optional[Tensor], ids: Tensor,
                  num_rows: int) -> Optional[Tensor]:
    # Row gradients [P, C] summed into [N, C] at their token ids.
    if g is None:
        return None
    return g.new_zeros(num_rows, g.size(1)).index_add_(0, ids, g)


def _tail_grads(y: Tensor, x: Tensor, grad: Tensor, ws: Tensor,
                bs: Optional[Tensor], ln_w: Tensor, ln_b: Tensor,
                b2c: Optional[Tensor], b2_dtype: Optional[torch.dtype],
                eps: float, need: Tuple[bool, ...]) -> Tuple:
    # The gradients of x and y (float32 [N, C], float64 where y is), and
    # of W_s, b_s, the LayerNorm's affine and b_2, in PyTorch's ops.
    dtype = y.dtype
    grad = grad.to(dtype)  # [N, H]
    C = y.size(-1)
    # LN(y) and its row statistics, recomputed: the forward's values.
    ln_w, ln_b = ln_w.to(dtype), ln_b.to(dtype)
    ln, mean, rstd = torch.native_layer_norm(y, [C], ln_w, ln_b, eps)
    g_ws = grad.t() @ (x.to(dtype) + ln) if need[7] else None  # [H, C]
    g_bs = grad.sum(0) if need[8] and bs is not None else None
    g_h = grad @ ws.to(dtype)  # [N, C]: the residual sum's gradient
    g_x = g_h.to(x.dtype) if need[1] else None
    g_y, g_lnw, g_lnb = torch.ops.aten.native_layer_norm_backward(
        g_h, y, [C], mean, rstd, ln_w, ln_b, [True, need[4], need[5]])
    # The bias gradient from the float32 rows, before their cast.
    g_b2 = g_y.sum(0).to(b2_dtype) if need[3] and b2c is not None else None
    return g_x, g_y, g_ws, g_bs, g_lnw, g_lnb, g_b2


def scorer_kernels_serve(device: torch.device, ws: Tensor) -> bool:
    r"""Whether the scorer's Triton kernels, which compute its tail in
    float32, may serve a scorer of per-head weights ``ws`` :math:`(H, C)`
    on ``device``: the fused scorer switched on (see :mod:`config`),
    Triton serving the device, a scorer whose tail is float32 (not
    float64) and at most ``SCORE_MAX_HEADS`` heads. Each path adds its own
    conditions."""
    return (config.use_fused_scorer() and triton_serves(device)
            and at_least_float32(ws.dtype) == torch.float32
            and ws.size(0) <= SCORE_MAX_HEADS)


def _kernels(hidden: Tensor, ws: Tensor, b2: Optional[Tensor],
             bs: Optional[Tensor]) -> bool:
    # Whether the Triton kernels run the float32 tail (forward and
    # backward): where they serve the scorer, with both biases, within the
    # backward kernel's width.
    return (scorer_kernels_serve(hidden.device, ws)
            and b2 is not None and bs is not None and hidden.dim() == 2
            and hidden.size(-1) <= SCORE_GRAD_MAX_CHANNELS)


def _tail_forward(hidden: Tensor, x: Tensor, w2c: Tensor, b2c: Tensor,
                  ln_w: Tensor, ln_b: Tensor, eps: float, ws: Tensor,
                  bs: Tensor, approximate: str) -> Tensor:
    # The scores by the inference kernel: from the hidden rows (the GELU
    # and the second layer in the kernel too) where it serves them (w2c
    # and b2c are in their dtype), else from the second layer's output.
    from samsa_geo.nn.attention._score_triton import importance_score_triton
    if scorer_mlp_in_kernel(hidden):
        return importance_score_triton(hidden, x, ln_w, ln_b, eps, ws, bs,
                                       w2c, b2c, approximate)
    y = F.linear(scorer_gelu(hidden, approximate), w2c, b2c)
    return importance_score_triton(y, x, ln_w, ln_b, eps, ws, bs)


def scorer_gelu(hidden: Tensor, approximate: str = 'none') -> Tensor:
    r"""The scorer MLP's activation :math:`\mathrm{GELU}(\mathbf{h})` of the
    hidden rows ``hidden`` :math:`(N, C)`. Where the rows are a column
    slice of the layer's stacked projection (strided), the scorer's
    kernels serve the device and no gradient is recorded, it runs
    :func:`~samsa_geo.nn.attention._score_triton.gelu_triton`, which reads
    them in blocks (PyTorch's GELU reads strided rows one value at a
    time); else :func:`torch.nn.functional.gelu`. Compiled graphs keep
    PyTorch's op (the compiler fuses it)."""
    if (config.use_fused_scorer() and triton_serves(hidden.device)
            and not is_tracing() and not needs_grad(hidden)
            and hidden.dim() == 2
            and hidden.stride(-1) == 1 and not hidden.is_contiguous()
            and hidden.dtype in SCORE_GELU_DTYPES):
        from samsa_geo.nn.attention._score_triton import gelu_triton
        return gelu_triton(hidden, approximate)
    return F.gelu(hidden, approximate=approximate)


def _tail_backward():
    # Imported on first use: Triton is needed only where the kernel runs.
    from samsa_geo.nn.attention._score_grad_triton import (
        score_tail_backward_triton,
    )
    return score_tail_backward_triton


def _linear_in(t: Tensor, w: Tensor, b: Optional[Tensor],
               dtype: torch.dtype) -> Tensor:
    # A linear layer computed in ``dtype`` (autocast's, as in the forward).
    return F.linear(t.to(dtype), w.to(dtype),
                    None if b is None else b.to(dtype))


def _cast(g: Optional[Tensor], like: Optional[Tensor]) -> Optional[Tensor]:
    return None if g is None or like is None else g.to(like.dtype)


def score_tail(hidden: Tensor, x: Tensor, w1: Tensor, b1: Optional[Tensor],
               w2: Tensor, b2: Optional[Tensor],
               ln_w: Tensor, ln_b: Tensor, eps: float, ws: Tensor,
               bs: Optional[Tensor], approximate: str = 'none',
               x_in: Optional[Tensor] = None,
               rows: Optional[ScoredRows] = None) -> Tensor:
    r""":class:`ScoreTail` applied outside autocast (it picks its own
    dtypes: those of ``hidden``, and float32 from the LayerNorm on).
    ``hidden`` must equal ``F.linear(x_in, w1, b1)`` in its dtype, where
    ``x_in`` is ``x`` (the default) or the cast of ``x`` that computed it:
    given ``x_in``, ``w1`` and ``b1`` in the dtype of ``hidden`` (tensors
    the layer's projection keeps for its own backward anyway), the
    backward recomputes ``hidden`` without casting them again. ``x_in``,
    ``w1`` and ``b1`` get no gradient here (they get it where ``hidden``
    was computed). With ``rows`` (see :class:`ScoredRows`), filled
    before the backward pass, the backward runs on the rows of the pairs
    that receive a gradient alone."""
    with torch.autocast(hidden.device.type, enabled=False):
        x_in = x.detach() if x_in is None else x_in.detach()
        b1 = None if b1 is None else b1.detach()
        return ScoreTail.apply(hidden, x, w1.detach(), b1, w2, b2, ln_w,
                               ln_b, eps, ws, bs, approximate, x_in, rows)


__all__: Tuple[str, ...] = ('ScoreTail', 'ScoredRows', 'score_tail',
                            'scorer_gelu')
