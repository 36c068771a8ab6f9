r"""The relaxation of the top-:math:`k` selection at rank :math:`k`, through
which the importance scorer learns (see :func:`relax`): the rows of the top
set mixed with those of the bottom set by pair weights of the scores, with
the scores' gradient rescaled so that it stays bounded.

Two entry points compute the same values and gradients: :func:`relax`
gathers the rows from the keys and values of every candidate, and
:func:`relax_rows` takes rows projected for the selected candidates alone
(see :func:`~samsa_geo.nn.attention._sampling.project_rows`).
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._dispatch import is_tracing, triton_serves
from samsa_geo.nn.attention._sampling import Selection, gather_rows


class _Masks:
    """Per-set masks of a ragged selection, as the relaxation uses them."""
    def __init__(self, sel: Selection) -> None:
        B = sel.top_valid.size(0)
        self.top = sel.top_valid.unsqueeze(1)  # [B, 1, k]
        self.bottom = sel.bottom_valid.unsqueeze(1)  # [B, 1, m]
        num_bottom = sel.num_bottom.view(B, 1, 1, 1)
        # 1 / m_b (1 where m_b = 0) and whether a set has no bottom set.
        self.inv_m = 1.0 / num_bottom.clamp(min=1).float()  # [B, 1, 1, 1]
        self.no_bottom = (num_bottom == 0).float()  # [B, 1, 1, 1]


def _masked_scores(x: Tensor, k: int,
                   masks: Optional[_Masks]) -> Tuple[Tensor, Tensor]:
    # The scaled scores of the top and bottom sets, unused slots at -inf
    # and +inf: they then take part in no pair (p_ij = 0).
    a, b = x[..., :k], x[..., k:]
    if masks is not None:
        a = torch.where(masks.top, a, float('-inf'))
        b = torch.where(masks.bottom, b, float('inf'))
    return a, b


def _pair_probability(x: Tensor, k: int, masks: Optional[_Masks]) -> Tensor:
    r""":math:`p_{ij} = \sigma(x_i - x_j)` ``[B, H, k, m]`` of the scaled
    scores ``x = s / tau`` ``[B, H, k + m]``; zero where slot ``i`` or
    ``j`` is unused."""
    a, b = _masked_scores(x, k, masks)
    return (a.unsqueeze(-1) - b.unsqueeze(-2)).sigmoid_()  # [B, H, k, m]


def _score_factor(x: Tensor, k: int, tau: float, grad_cap: float,
                  masks: Optional[_Masks]):
    r"""The factor :math:`c = \mathrm{scale} / (\tau m_b)` of the score
    gradient: a float where it is one number, else ``[B, H, 1, 1]``.

    The sigmoid derivative :math:`\sigma'(x_i - x_j) / \tau` peaks at the
    smallest score gap, between the lowest top score and the highest bottom
    score, :math:`d = \min_{i \in T} x_i - \max_{j \in B} x_j` (the
    boundary at rank :math:`k`), where :math:`1 / \sigma'(d) = 2 + 2
    \cosh d`. Rescaled so this peak is at most ``grad_cap``:
    :math:`c = \min(1 / \tau, 2\,\mathrm{cap}\,(1 + \cosh d)) / m_b`.
    No pair tensor is needed, and none at all where
    :math:`4\,\mathrm{cap}\,\tau \geq 1` (the cap can never bind)."""
    inv_m = 1.0 / (x.size(-1) - k) if masks is None else masks.inv_m
    if 4.0 * grad_cap * tau >= 1.0:
        return inv_m / tau
    if masks is None:  # ranks in descending order: the gap at rank k
        d = x[..., k - 1:k] - x[..., k:k + 1]  # [B, H, 1]
    else:
        a = torch.where(masks.top, x[..., :k], float('inf'))
        b = torch.where(masks.bottom, x[..., k:], float('-inf'))
        d = a.amin(-1, keepdim=True) - b.amax(-1, keepdim=True)  # [B, H, 1]
    # 2 cap (1 + cosh d) / m_b, and 1 / (tau m_b) where the cap is loose.
    c = d.cosh_().clamp_(max=0.5 / (grad_cap * tau) - 1.0).add_(1.0)
    c = c.unsqueeze(-1)  # [B, H, 1, 1]
    if masks is None:
        return c.mul_(2.0 * grad_cap * inv_m)
    return c.mul_(2.0 * grad_cap).mul_(inv_m)


def _relaxed(u: Tensor, score: Tensor, k: int, masks: Optional[_Masks],
             tau: float, hard: bool) -> Tensor:
    # The relaxed top rows [B, H, k, F] of the rows u [B, H, k + m, F] of
    # the top and bottom sets; in hard mode the top rows themselves (a view
    # of u).
    if hard:
        return u[:, :, :k]
    x = score if tau == 1.0 else score * (1.0 / tau)
    p = _pair_probability(x, k, masks)
    return _soft_rows(p, u, k, masks)


def _relaxed_grads(grad: Tensor, u: Tensor, score: Tensor, ids: Tensor,
                   head: Tensor, k: int, masks: Optional[_Masks],
                   tau: float, hard: bool, grad_cap: float, unique: bool,
                   num_cand: int,
                   ) -> Tuple[Tensor, Optional[Tensor], Tensor]:
    # The gradients of the top rows [B, H, k, F], of the bottom rows
    # [B, H, m, F] (None in hard mode: they get none) and of the candidate
    # scores [M, H], from the upstream gradient of the relaxed rows. The
    # pair weights are recomputed from the scores (no [B, H, k, m] tensor
    # is kept from the forward pass).
    x = score if tau == 1.0 else score * (1.0 / tau)
    c = _score_factor(x, k, tau, grad_cap, masks)
    p = None  # [B, H, k, m], only where needed
    if _fused_score_grad(u, x):
        from samsa_geo.nn.attention._relax_triton import (
            relax_score_grad_triton,
        )
        a, b = _masked_scores(x, k, masks)
        gcand = relax_score_grad_triton(grad, u, a, b, c, ids, num_cand,
                                        unique)
    else:
        p = _pair_probability(x, k, masks)
        ds = _score_grad(p, grad, u, c)  # [B, H, k + m]
        gcand = ds.new_zeros(num_cand, ds.size(1))
        gcand.index_put_((ids, head), ds, accumulate=not unique)
    if hard:  # top rows: the full gradient; bottom rows: none
        return grad, None, gcand
    if p is None:
        p = _pair_probability(x, k, masks)
    g_top, g_bottom = _soft_rows_backward(p, grad, k, masks)
    return g_top, g_bottom, gcand


class _GatherRelax(torch.autograd.Function):
    r"""The rows ``kv[ids, head]`` of the top and bottom sets, relaxed at
    rank :math:`k` (see :func:`relax`). The forward pass gathers once;
    the backward pass writes the gradients of the rows and of the scores
    straight into those of ``kv`` and ``cand``."""
    @staticmethod
    def forward(ctx, kv: Tensor, cand: Tensor, score: Tensor, ids: Tensor,
                head: Tensor, k: int, masks: Optional[_Masks], tau: float,
                hard: bool, grad_cap: float, unique: bool) -> Tensor:
        u = kv[ids, head]  # [B, H, k + m, F]
        ctx.save_for_backward(u, score, ids, head)
        ctx.kv_shape, ctx.num_cand = kv.shape, cand.size(0)
        ctx.args = (k, masks, tau, hard, grad_cap, unique)
        return _relaxed(u, score, k, masks, tau, hard)

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, score, ids, head = ctx.saved_tensors
        k, unique = ctx.args[0], ctx.args[-1]
        g_top, g_bottom, gcand = _relaxed_grads(grad, u, score, ids, head,
                                                *ctx.args, ctx.num_cand)
        gkv = grad.new_zeros(ctx.kv_shape)
        gkv.index_put_((ids[..., :k], head), g_top, accumulate=not unique)
        if g_bottom is not None:
            gkv.index_put_((ids[..., k:], head), g_bottom,
                           accumulate=not unique)
        return (gkv, gcand) + (None, ) * 9


class _RelaxRows(torch.autograd.Function):
    r"""The rows ``u`` of the top and bottom sets (already gathered or
    projected), relaxed at rank :math:`k` (see :func:`relax_rows`): the
    backward pass returns the gradient of ``u`` and writes that of the
    scores into ``cand``'s."""
    @staticmethod
    def forward(ctx, u: Tensor, cand: Tensor, score: Tensor, ids: Tensor,
                head: Tensor, k: int, masks: Optional[_Masks], tau: float,
                hard: bool, grad_cap: float, unique: bool) -> Tensor:
        ctx.save_for_backward(u, score, ids, head)
        ctx.num_cand = cand.size(0)
        ctx.args = (k, masks, tau, hard, grad_cap, unique)
        # Its own storage in hard mode, not a view of the input.
        return _relaxed(u, score, k, masks, tau, hard).contiguous()

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, score, ids, head = ctx.saved_tensors
        g_top, g_bottom, gcand = _relaxed_grads(grad, u, score, ids, head,
                                                *ctx.args, ctx.num_cand)
        if g_bottom is None:  # [B, H, k, F] -> [B, H, k + m, F], zeros
            gu = F.pad(g_top, (0, 0, 0, u.size(2) - g_top.size(2)))
        else:
            gu = torch.cat([g_top, g_bottom], dim=2)  # [B, H, k + m, F]
        return (gu, gcand) + (None, ) * 9


def _fused_score_grad(u: Tensor, score: Tensor) -> bool:
    # The Triton kernel serves eager CUDA calls of float32 scores (it
    # computes in float32: a float64 layer's float64 scores keep the
    # PyTorch formula); traced graphs (compile, export) keep the PyTorch
    # formula, which the compiler fuses itself. Its bottom scores'
    # gradients are atomic float sums in varying order: with deterministic
    # algorithms on, PyTorch's accumulating index_put_ takes them.
    return (config.use_fused_relax() and triton_serves(u.device)
            and score.dtype == torch.float32
            and not is_tracing()
            and not torch.are_deterministic_algorithms_enabled())


def _score_grad(p: Tensor, grad: Tensor, u: Tensor, c) -> Tensor:
    r"""``[B, H, k + m]`` gradient of the top and bottom scores:
    :math:`d z_i / d p_{ij} = (u_i - u_j) / m_b`, so
    :math:`\partial s_i = c \sum_j (g_i^\top u_i - g_i^\top u_j)
    p_{ij} (1 - p_{ij})` and :math:`\partial s_j` the negated column
    sums (one batched matmul, one pair tensor besides ``p``)."""
    B, H, K, F = u.shape
    k = grad.size(2)
    u_top, u_bottom = u[:, :, :k], u[:, :, k:]
    alpha = 1.0
    gs = grad
    if isinstance(c, float):
        alpha = c
    else:
        gs = grad * c.to(grad.dtype)
    gk = (gs * u_top).sum(-1, keepdim=True)  # [B, H, k, 1]
    # The negated gaps, so that the bottom scores' sums need no negation:
    # a pointwise node over [B, H, m] (m = K - k, a difference of sizes)
    # meets an assertion in inductor's tiling analysis under dynamic
    # shapes (torch 2.11); the top scores' [B, H, k] does not.
    neg_gap = torch.baddbmm(
        gk.view(B * H, k, 1), gs.reshape(B * H, k, F),
        u_bottom.reshape(B * H, K - k, F).transpose(1, 2), beta=-alpha,
        alpha=alpha).view(B, H, k, K - k)  # [B, H, k, m]
    e = torch.ops.aten.sigmoid_backward(neg_gap, p)  # -gap * p * (1 - p)
    return torch.cat([e.sum(-1).neg_(), e.sum(-2)], dim=-1)


def _soft_rows(p: Tensor, u: Tensor, k: int,
               masks: Optional[_Masks]) -> Tensor:
    r""":math:`z_i = \frac{1}{m}\big(\sum_j p_{ij} u_i + \sum_j
    u_j - \sum_j p_{ij} u_j\big)` (plus :math:`u_i` where :math:`m_b =
    0`): one batched matmul of the pair weights."""
    B, H, K, F = u.shape
    u_top, u_bottom = u[:, :, :k], u[:, :, k:]
    keep = p.sum(-1, keepdim=True)  # [B, H, k, 1]
    if masks is None:
        total = u_bottom.sum(-2, keepdim=True)  # [B, H, 1, F]
        inv_m = 1.0 / (K - k)
    else:
        keep = keep + masks.no_bottom
        bottom = masks.bottom.unsqueeze(-2).to(u.dtype)  # [B, 1, 1, m]
        total = bottom @ u_bottom  # [B, H, 1, F]
        inv_m = 1.0
    base = torch.addcmul(total, keep.to(u.dtype), u_top)  # [B, H, k, F]
    z = torch.baddbmm(base.view(B * H, k, F),
                      p.to(u.dtype).reshape(B * H, k, K - k),
                      u_bottom.reshape(B * H, K - k, F), beta=inv_m,
                      alpha=-inv_m).view(B, H, k, F)
    return z if masks is None else z * masks.inv_m.to(u.dtype)


def _soft_rows_backward(p: Tensor, grad: Tensor, k: int,
                        masks: Optional[_Masks]) -> Tuple[Tensor, Tensor]:
    # d/du_i = keep_i g_i; d/du_j = (sum_i g_i - sum_i p_ij g_i) / m.
    B, H, _, F = grad.shape
    m = p.size(-1)
    total = grad.sum(-2, keepdim=True)  # [B, H, 1, F]
    if masks is None:
        keep = p.mean(-1, keepdim=True)  # [B, H, k, 1]
        inv_m = 1.0 / m
    else:  # scaled by 1 / m_b below
        keep = p.sum(-1, keepdim=True) + masks.no_bottom
        bottom = masks.bottom.unsqueeze(-1).to(grad.dtype)  # [B, 1, m, 1]
        total = total * bottom  # [B, H, m, F]
        inv_m = 1.0
    g_bottom = torch.baddbmm(
        total.reshape(B * H, -1, F), p.to(grad.dtype).reshape(
            B * H, k, m).transpose(1, 2), grad.reshape(B * H, k, F),
        beta=inv_m, alpha=-inv_m).view(B, H, m, F)
    g_top = keep.to(grad.dtype) * grad
    if masks is None:
        return g_top, g_bottom
    inv_m = masks.inv_m.to(grad.dtype)
    return g_top * inv_m, g_bottom * inv_m


def _constants(tau: float, grad_cap: float) -> Tuple[float, float]:
    # Plain floats for the autograd functions: under torch.compile with
    # dynamic shapes a module's float attribute may arrive symbolic, and
    # Dynamo cannot lift a symbolic float of the forward graph into the
    # traced backward pass. float() specialises it (a guard on its value:
    # a new temperature recompiles).
    return float(tau), float(grad_cap)


def relax(sel: Selection, kv: Tensor, head: Tensor, tau: float, hard: bool,
          grad_cap: float = 0.25, unique: bool = False) -> Tensor:
    r"""The rows ``kv[top, head]`` of the top set, relaxed at rank
    :math:`k`:

    .. math::
        p_{ij} = \sigma\big((\tilde s_i - \tilde s_j) / \tau\big), \quad
        z_i = \bar p_i\, u_i + \frac{1}{m} \sum_{j \in B} (1 - p_{ij})\, u_j,

    with :math:`\bar p_i` the mean of :math:`p_{ij}` over :math:`j \in B`
    (weights sum to one; :math:`z_i = u_i` where :math:`m_b = 0`). Unused
    slots take part in no pair. In hard mode the forward value is exactly
    :math:`u_i`; the scores receive the gradient of the soft formula, the
    top rows the full upstream gradient and the bottom rows none. The
    derivative of the sigmoid is rescaled per set and head so its maximum
    is at most ``grad_cap``. Memory: no ``[B, H, k, m]`` tensor is kept
    for the backward pass (recomputed there).

    Args:
        sel (Selection): the top and bottom sets, with their scores, in
            descending order of score (as :func:`select` returns them).
        kv (Tensor): ``[M, H, F]`` rows of every candidate.
        head (Tensor): ``[1, H, 1]`` head indices.
        unique (bool): no id repeats within a head (equal-size sets): the
            backward pass writes rows instead of accumulating them.

    Returns:
        Tensor: ``[B, H, k, F]``.
    """
    if sel.ids.size(-1) == sel.k:  # no bottom set
        return gather_rows(kv, sel.ids, head, unique)
    masks = None if sel.top_valid is None else _Masks(sel)
    tau, grad_cap = _constants(tau, grad_cap)
    return _GatherRelax.apply(kv, sel.cand, sel.score, sel.ids, head, sel.k,
                              masks, tau, hard, grad_cap, unique)


def relax_rows(sel: Selection, u: Tensor, head: Tensor, tau: float,
               hard: bool, grad_cap: float = 0.25,
               unique: bool = False) -> Tensor:
    r""":func:`relax` of the rows ``u`` :math:`(B, H, k + m, F)` of
    ``sel.ids`` (the keys and values of the selected candidates alone, as
    :func:`~samsa_geo.nn.attention._sampling.project_rows` computes
    them), with the same values and gradients: the gradient of ``u``
    replaces the scattered one of every candidate's row. ``unique``
    concerns the scores' gradient only."""
    if sel.ids.size(-1) == sel.k:  # no bottom set
        return u
    masks = None if sel.top_valid is None else _Masks(sel)
    tau, grad_cap = _constants(tau, grad_cap)
    return _RelaxRows.apply(u, sel.cand, sel.score, sel.ids, head, sel.k,
                            masks, tau, hard, grad_cap, unique)
