"""Per-set, per-head top-k selection and its differentiable relaxation.

Candidates of a set are its tokens followed by the learnable register
tokens. In the *global candidate space* token ``i`` has id ``i`` and
register ``r`` of set ``b`` has id ``N + b * R + r``.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from samsa_geo.nn.attention._sets import SetInfo


@dataclass
class Selection:
    r"""The sampled candidates of every set and head.

    Attributes:
        top (Tensor): ``[B, H, k_max]`` global candidate ids of the top set
            :math:`T` (ranks :math:`1..k_b`), clamped to valid ids in unused
            slots.
        top_valid (Tensor, optional): ``[B, k_max]`` whether slot
            ``j < k_b``; :obj:`None` when every slot is valid.
        top_score (Tensor, optional): ``[B, H, k_max]`` (perturbed) scores of
            :math:`T` (only when the relaxation needs them).
        bottom (Tensor): ``[B, H, m_max]`` ids of the bottom set :math:`B`
            (ranks :math:`k_b+1..k_b+m_b`).
        bottom_valid (Tensor, optional): ``[B, m_max]``.
        bottom_score (Tensor): ``[B, H, m_max]``.
    """
    top: Tensor
    top_valid: Optional[Tensor]
    top_score: Optional[Tensor]
    bottom: Tensor
    bottom_valid: Optional[Tensor]
    bottom_score: Optional[Tensor]


def gumbel_like(score: Tensor) -> Tensor:
    r"""Samples :math:`\mathrm{Gumbel}(0, 1)` noise of the shape of ``score``."""
    u = torch.rand_like(score).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def _candidate_scores(score: Tensor, reg_score: Optional[Tensor],
                      info: SetInfo) -> Tensor:
    # [N + B * R, H]: tokens first, then every set's copy of the registers.
    if reg_score is None:
        return score
    return torch.cat([score, reg_score.repeat(info.num_sets, 1)], dim=0)


def _local_to_global(loc: Tensor, info: SetInfo, num_tokens: int,
                     num_registers: int) -> Tensor:
    # loc: [B, H, K] positions inside each set's candidate list. Positions
    # past an empty or short set are clamped to a valid id (masked later).
    if info.equal and num_registers == 0:  # set b starts at b * n
        n = info.max_size
        start = torch.arange(0, info.num_sets * n, max(n, 1),
                             device=loc.device)  # [B]
        return loc + start.view(-1, 1, 1)
    size = info.size.view(-1, 1, 1)
    ptr = info.ptr[:-1].view(-1, 1, 1)
    b = torch.arange(info.num_sets, device=loc.device).view(-1, 1, 1)
    reg = num_tokens + b * num_registers + (loc - size)
    ids = torch.where(loc < size, ptr + loc, reg)
    return ids.clamp_(0, num_tokens + info.num_sets * num_registers - 1)


def _rank_dense(cand: Tensor, batch: Optional[Tensor], info: SetInfo,
                num_tokens: int, num_registers: int, K2: int,
                ordered: bool = True) -> Tensor:
    """Top-``K2`` candidate ids per set and head through a padded score
    matrix ``[B, H, n_max + R]`` (scores only, never token features), in
    descending order of score unless ``ordered=False`` (any order: one
    kernel less)."""
    B, R, H = info.num_sets, num_registers, cand.size(1)
    C = info.max_size + R
    if batch is None:  # one set: local positions are the global ids
        dense = cand.t().unsqueeze(0)  # [1, H, N + R]
        return dense.topk(K2, dim=-1, sorted=ordered).indices  # [1, H, K2]
    if info.equal:  # a reshape
        dense = (cand[:num_tokens] if R > 0 else cand).view(
            B, info.max_size, H)  # [N, H] -> [B, n, H]
        if R > 0:
            dense = torch.cat([dense, cand[num_tokens:].view(B, R, H)], 1)
        dense = dense.transpose(1, 2)  # [B, H, C]
    else:
        dense = cand.new_full((B, C, H), float('-inf'))
        loc = torch.arange(num_tokens, device=cand.device) - info.ptr[batch]
        dense[batch, loc] = cand[:num_tokens]
        if R > 0:
            b = torch.arange(B, device=cand.device).repeat_interleave(R)
            r = torch.arange(R, device=cand.device).repeat(B)
            dense[b, info.size[b] + r] = cand[num_tokens:]
        dense = dense.transpose(1, 2)  # [B, H, C]
    loc = dense.topk(K2, dim=-1, sorted=ordered).indices  # [B, H, K2]
    return _local_to_global(loc, info, num_tokens, R)


def _descending_key(cand: Tensor) -> Tensor:
    r"""``int64`` keys in :math:`[0, 2^{32})` whose ascending order is the
    descending order of the float32 scores ``cand``."""
    bits = cand.float().contiguous().view(torch.int32).long()
    # Negative floats order backwards as integers: flip their value bits.
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # signed order == float
    return 0x7FFFFFFF - ordered


def _rank_sorted(cand: Tensor, batch: Optional[Tensor], info: SetInfo,
                 num_tokens: int, num_registers: int, K2: int) -> Tensor:
    r"""Top-``K2`` candidate ids per set and head without padding and
    without knowing :math:`n_{\max}`: one sort per head of the key
    (set, descending score), then each set's first ``K2`` entries."""
    B, R = info.num_sets, num_registers
    device = cand.device
    cand_set = batch
    if R > 0:
        cand_set = torch.cat([
            batch, torch.arange(B, device=device).repeat_interleave(R)])
    key = _descending_key(cand) + (cand_set << 32).unsqueeze(1)  # [M, H]
    order = torch.sort(key.t(), dim=1, stable=True).indices  # [H, M]
    cand_ptr = info.ptr[:-1] + torch.arange(B, device=device) * R
    j = torch.arange(K2, device=device)
    pos = (cand_ptr.view(-1, 1) + j).clamp(max=order.size(1) - 1)  # [B, K2]
    return order[:, pos].permute(1, 0, 2)  # [B, H, K2]


def select(score: Tensor, reg_score: Optional[Tensor], batch: Optional[Tensor],
           info: SetInfo, num_registers: int, perturb: bool,
           with_bottom: bool, packed: bool = False,
           ordered: bool = True) -> Selection:
    r"""Selects the top :math:`k_b` (and the next :math:`m_b`) candidates of
    every set and head.

    With ``perturb=True`` Gumbel noise is added first, so the top set is an
    exact sample without replacement from the Plackett-Luce distribution
    of the scores.

    Args:
        score (Tensor): ``[N, H]`` token importance logits.
        reg_score (Tensor, optional): ``[R, H]`` register logits.
        packed (bool): rank by sorting instead of a padded score matrix
            (always, where :math:`n_{\max}` is unknown).
        ordered (bool): keep the top set in descending order of score;
            :obj:`False` allows any order where no slot is masked and no
            bottom set is taken (a top-k without its final sort).
    """
    N = score.size(0)
    cand = _candidate_scores(score, reg_score, info)  # [M, H]
    if perturb:
        cand = cand + gumbel_like(cand)
    m_max = info.m_max if with_bottom else 0
    K2 = info.k_max + m_max
    if info.max_size is not None:
        K2 = min(K2, info.max_size + num_registers)
    sort = packed or info.max_size is None
    ranked = cand.detach() if cand.requires_grad else cand
    if sort:
        ids = _rank_sorted(ranked, batch, info, N, num_registers, K2)
    else:  # [B, H, K2]
        ordered = ordered or m_max > 0 or not info.all_valid
        ids = _rank_dense(ranked, batch, info, N, num_registers, K2, ordered)
    H, device = score.size(1), score.device
    top = ids if K2 == info.k_max else ids[..., :info.k_max]
    if info.all_valid:  # no slot to mask: plain slices
        top_valid = bottom_valid = None
        bottom = ids[..., info.k_max:info.k_max + m_max]
    else:
        # An empty set keeps one (unused) valid slot: no query of it
        # exists, and a fully masked row would turn gradients to NaN.
        j = torch.arange(info.k_max, device=device)
        top_valid = j.view(1, -1) < info.k.clamp(min=1).view(-1, 1)
        t = torch.arange(m_max, device=device)
        bottom_valid = t.view(1, -1) < info.num_bottom.view(-1, 1)
        bpos = (info.k.view(-1, 1) + t).clamp(max=max(K2 - 1, 0))
        bottom = ids.gather(2, bpos.unsqueeze(1).expand(-1, H, -1))
        # Invalid slots may hold ids of other sets: point them at a valid one.
        top = torch.where(top_valid.unsqueeze(1), top, top[..., :1])
        bottom = torch.where(bottom_valid.unsqueeze(1), bottom, top[..., :1])

    top_score = bottom_score = None
    if with_bottom:  # the relaxation needs the perturbed scores
        head = torch.arange(H, device=device).view(1, -1, 1)
        top_score, bottom_score = cand[top, head], cand[bottom, head]
    return Selection(top, top_valid, top_score, bottom, bottom_valid,
                     bottom_score)


def keep_all(info: SetInfo, num_tokens: int, num_registers: int,
             heads: int, device: torch.device) -> Selection:
    r"""The selection where every set keeps all its candidates
    (:math:`k_b = n_b + R`, no bottom set): ids in token order, then the
    set's registers, the same for every head, with no score computed and
    no ranking. Equal, as a key set, to what :func:`select` returns then.

    Returns:
        Selection: ``top`` of shape ``[B, H, n_max + R]`` (an expanded
        view over the heads).
    """
    B, K = info.num_sets, info.k_max
    loc = torch.arange(K, device=device).view(1, 1, K)
    top = _local_to_global(loc.expand(B, 1, K), info, num_tokens,
                           num_registers)  # [B, 1, K]
    top_valid = None
    if not info.all_valid:
        top_valid = loc.view(1, K) < info.k.clamp(min=1).view(-1, 1)
        top = torch.where(top_valid.unsqueeze(1), top, top[..., :1])
    top = top.expand(B, heads, K)  # [B, 1, K] -> [B, H, K]
    return Selection(top, top_valid, None, top[..., :0], None, None)


class _GatherRows(torch.autograd.Function):
    """``kv[ids, head]`` whose backward writes the gradient rows into
    place instead of accumulating them (an indexed copy, not a sort and a
    segmented sum), valid where no (id, head) pair repeats."""
    @staticmethod
    def forward(ctx, kv: Tensor, ids: Tensor, head: Tensor) -> Tensor:
        ctx.save_for_backward(ids, head)
        ctx.kv_shape = kv.shape
        return kv[ids, head]

    @staticmethod
    def backward(ctx, grad: Tensor):
        ids, head = ctx.saved_tensors
        out = grad.new_zeros(ctx.kv_shape)
        out[ids, head] = grad
        return out, None, None


def gather_rows(kv: Tensor, ids: Tensor, head: Tensor,
                unique: bool) -> Tensor:
    r"""Rows ``kv[ids[b, h, j], h]`` of ``kv`` :math:`(M, H, F)` for ids
    :math:`(B, H, K)`: :math:`(B, H, K, F)`. With ``unique=True`` (no id
    repeats within a head, as in the top set of equal-size sets) the
    backward pass writes rows instead of accumulating them."""
    if unique and torch.is_grad_enabled() and kv.requires_grad:
        return _GatherRows.apply(kv, ids, head)
    return kv[ids, head]


def _pair_weights(sel: Selection, tau: float):
    r"""Recomputes :math:`p_{ij}` (``[B, H, k, m]``, float32, zero for
    invalid bottom slots), :math:`1/m_b` and the float masks."""
    diff = sel.top_score.unsqueeze(-1) - sel.bottom_score.unsqueeze(-2)
    p = torch.sigmoid(diff.float() / tau)  # [B, H, k, m]
    if sel.bottom_valid is None:
        return p, 1.0 / sel.bottom_score.size(-1), None, None
    B = sel.bottom_valid.size(0)
    bmask = sel.bottom_valid.view(B, 1, 1, -1).to(p.dtype)  # [B, 1, 1, m]
    inv_m = 1.0 / bmask.sum(-1, keepdim=True).clamp(min=1.0)  # [B, 1, 1, 1]
    pair = bmask * sel.top_valid.view(B, 1, -1, 1).to(p.dtype)  # [B,1,k,m]
    return p * bmask, inv_m, bmask, pair


def _keep_and_mix(p: Tensor, inv_m, bmask: Optional[Tensor]):
    # keep_i = mean_j p_ij (1 where a set has no bottom), mix_ij = (1-p)/m.
    keep = p.sum(-1, keepdim=True) * inv_m  # [B, H, k, 1]
    mix = (1.0 - p) * inv_m  # [B, H, k, m]
    if bmask is not None:
        has_bottom = bmask.amax(-1, keepdim=True)  # [B, 1, 1, 1]
        keep = keep + (1.0 - has_bottom)
        mix = mix * bmask
    return keep, mix


class _Relax(torch.autograd.Function):
    """Forward and backward of :func:`relax` without storing any
    ``[B, H, k, m]`` tensor: the pair weights are recomputed."""
    @staticmethod
    def forward(ctx, s_top: Tensor, s_bot: Tensor, u_top: Tensor,
                u_bot: Tensor, sel: Selection, tau: float, hard: bool,
                grad_cap: float) -> Tensor:
        ctx.sel, ctx.tau, ctx.hard, ctx.grad_cap = sel, tau, hard, grad_cap
        ctx.save_for_backward(u_top, u_bot)
        if hard:
            return u_top.clone()
        p, inv_m, bmask, _ = _pair_weights(sel, tau)
        keep, mix = _keep_and_mix(p, inv_m, bmask)
        return keep.to(u_top.dtype) * u_top + mix.to(u_top.dtype) @ u_bot

    @staticmethod
    def backward(ctx, grad: Tensor):
        u_top, u_bot = ctx.saved_tensors
        sel, tau = ctx.sel, ctx.tau
        p, inv_m, bmask, pair = _pair_weights(sel, tau)
        # d/dp of keep_i u_i + sum_j mix_ij u_j = (g_i.u_i - g_i.u_j) / m.
        g_keep = (grad * u_top).float().sum(-1, keepdim=True)  # [B,H,k,1]
        g_mix = (grad @ u_bot.transpose(-1, -2)).float()  # [B, H, k, m]
        dsig = p * (1.0 - p) / tau  # sigmoid derivative
        if pair is not None:
            dsig = dsig * pair
        # Gradient cap: the derivative's maximum per set and head <= cap.
        peak = dsig.amax(dim=(-2, -1), keepdim=True)
        scale = (ctx.grad_cap / peak.clamp(min=1e-12)).clamp(max=1.0)
        d = (g_keep - g_mix) * inv_m * dsig * scale  # [B, H, k, m]
        ds_top, ds_bot = d.sum(-1), -d.sum(-2)
        if ctx.hard:  # top rows: full gradient; bottom rows: none
            return ds_top, ds_bot, grad, None, None, None, None, None
        keep, mix = _keep_and_mix(p, inv_m, bmask)
        mix = mix.to(grad.dtype)
        return (ds_top, ds_bot, keep.to(grad.dtype) * grad,
                mix.transpose(-1, -2) @ grad, None, None, None, None)


def relax(sel: Selection, u_top: Tensor, u_bottom: Tensor, tau: float,
          hard: bool, grad_cap: float = 0.25) -> Tensor:
    r"""Differentiable relaxation of the boundary at rank :math:`k`.

    .. math::
        p_{ij} = \sigma\big((\tilde s_i - \tilde s_j) / \tau\big), \quad
        z_i = \bar p_i\, u_i + \frac{1}{m} \sum_{j \in B} (1 - p_{ij})\, u_j,

    with :math:`\bar p_i` the mean of :math:`p_{ij}` over :math:`j \in B`
    (weights sum to one). In hard mode the forward value is exactly
    :math:`u_i`; the scores receive the gradient of the soft formula, the
    top rows the full upstream gradient and the bottom rows none. The
    derivative of the sigmoid is rescaled per set and head so its maximum
    is at most ``grad_cap``. Memory: no ``[B, H, k, m]`` tensor is kept
    for the backward pass (recomputed there).

    Args:
        u_top (Tensor): ``[B, H, k, F]`` rows of the top set.
        u_bottom (Tensor): ``[B, H, m, F]`` rows of the bottom set.

    Returns:
        Tensor: ``[B, H, k, F]``.
    """
    if u_bottom.size(2) == 0:
        return u_top
    return _Relax.apply(sel.top_score, sel.bottom_score, u_top, u_bottom,
                        sel, tau, hard, grad_cap)
