"""Per-set, per-head top-k selection, and the rows of the selected
candidates (their differentiable relaxation is in
:mod:`~samsa_geo.nn.attention._relax`).

Candidates of a set are its tokens followed by the learnable register
tokens. In the *global candidate space* token ``i`` has id ``i`` and
register ``r`` of set ``b`` has id ``N + b * R + r``.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from samsa_geo.nn.attention._dispatch import (
    is_tracing,
    selection_chunks,
    triton_serves,
)
from samsa_geo.nn.attention._sets import SetInfo, sort_stable


@dataclass
class Selection:
    r"""The sampled candidates of every set and head.

    Attributes:
        ids (Tensor): ``[B, H, k_max + m_max]`` global candidate ids: the
            top set :math:`T` (ranks :math:`1..k_b`) in the first ``k``
            slots, then the bottom set :math:`B` (ranks
            :math:`k_b+1..k_b+m_b`); where the relaxation needs them, both
            in descending order of score. Unused slots are clamped to valid
            ids.
        k (int): :math:`k_{\max}`, the slots of the top set.
        top_valid (Tensor, optional): ``[B, k_max]`` whether slot
            ``j < k_b``; :obj:`None` when every slot is valid.
        bottom_valid (Tensor, optional): ``[B, m_max]``.
        num_bottom (Tensor, optional): ``[B]`` :math:`m_b`, where some
            slot is masked.
        score (Tensor, optional): ``[B, H, k_max + m_max]`` (perturbed)
            scores of ``ids``, without gradient, only where the relaxation
            needs them.
        cand (Tensor, optional): ``[M, H]`` the (perturbed) scores of
            every candidate, through which the relaxation's gradient
            reaches the scorer.
    """
    ids: Tensor
    k: int
    top_valid: Optional[Tensor] = None
    bottom_valid: Optional[Tensor] = None
    num_bottom: Optional[Tensor] = None
    score: Optional[Tensor] = None
    cand: Optional[Tensor] = None

    @property
    def top(self) -> Tensor:
        """``[B, H, k_max]`` ids of the top set."""
        return self.ids if self.ids.size(-1) == self.k else \
            self.ids[..., :self.k]

    @property
    def bottom(self) -> Tensor:
        """``[B, H, m_max]`` ids of the bottom set."""
        return self.ids[..., self.k:]

    @property
    def top_score(self) -> Optional[Tensor]:
        return None if self.score is None else self.score[..., :self.k]

    @property
    def bottom_score(self) -> Optional[Tensor]:
        return None if self.score is None else self.score[..., self.k:]


def gumbel_like(score: Tensor) -> Tensor:
    r"""Samples :math:`\mathrm{Gumbel}(0, 1)` noise :math:`-\log E`,
    :math:`E \sim \mathrm{Exp}(1)`, of the shape of ``score``."""
    return _log_exponential_like(score).neg_()


def _log_exponential_like(score: Tensor) -> Tensor:
    # log E, E ~ Exp(1): the negated Gumbel noise in two launches.
    return torch.empty_like(score).exponential_().log_()


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
                ordered: bool = True) -> Tuple[Tensor, Tensor]:
    """Top-``K2`` candidate ids per set and head and their scores through
    a padded score matrix
    ``[B, H, n_max + R]`` (scores only, never token features), in
    descending order of score unless ``ordered=False`` (any order: one
    kernel less)."""
    B, R, H = info.num_sets, num_registers, cand.size(1)
    C = info.max_size + R
    if batch is None:  # one set: local positions are the global ids
        dense = cand.t().unsqueeze(0)  # [1, H, N + R]
        top = dense.topk(K2, dim=-1, sorted=ordered)  # [1, H, K2]
        return top.indices, top.values
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
    top = dense.topk(K2, dim=-1, sorted=ordered)  # [B, H, K2]
    return _local_to_global(top.indices, info, num_tokens, R), top.values


def _kernel_selects(cand: Tensor, info: SetInfo, num_registers: int) -> bool:
    r"""Whether the top-:math:`k` sets of an unordered, unperturbed
    selection come from the fused path's segmented top-k kernel
    (:func:`~samsa_geo.nn.attention._topk_triton.select_topk_triton`: one
    launch, two for sets beyond one block) instead of :meth:`torch.topk`
    over the padded score matrix (a multi-pass radix selection, about a
    dozen launches for large sets): float32 scores on a device that
    Triton serves, outside traced graphs, no registers, every set keeping
    :math:`k_{\max}` candidates, sets that the kernel serves. The sets
    are the same (equal scores aside, where either may keep another of
    the tied candidates)."""
    return (num_registers == 0 and info.all_valid
            and info.max_size is not None and cand.dtype == torch.float32
            and triton_serves(cand.device) and not is_tracing()
            and selection_chunks(info.max_size, 0, info.k_max) > 0)


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
    if torch.onnx.is_in_onnx_export():
        # ONNX has no bit cast: sort by descending score, then stably by
        # set.
        by_score = torch.sort(cand.t(), dim=1,
                              descending=True).indices  # [H, M]
        by_set = sort_stable(cand_set[by_score], dim=1)[1]  # [H, M]
        order = by_score.gather(1, by_set)  # [H, M]
    else:
        key = _descending_key(cand) + (cand_set << 32).unsqueeze(1)  # [M, H]
        order = torch.sort(key.t(), dim=1, stable=True).indices  # [H, M]
    cand_ptr = info.ptr[:-1] + torch.arange(B, device=device) * R
    j = torch.arange(K2, device=device)
    pos = (cand_ptr.view(-1, 1) + j).clamp(max=order.size(1) - 1)  # [B, K2]
    return order[:, pos].permute(1, 0, 2)  # [B, H, K2]


def select(score: Tensor, reg_score: Optional[Tensor], batch: Optional[Tensor],
           info: SetInfo, num_registers: int, perturb: bool,
           with_bottom: bool, packed: bool = False,
           ordered: bool = True, head: Optional[Tensor] = None) -> Selection:
    r"""Selects the top :math:`k_b` (and the next :math:`m_b`) candidates of
    every set and head.

    With ``perturb=True`` Gumbel noise is added first, so the top set is an
    exact sample without replacement from the Plackett-Luce distribution
    of the scores.

    Args:
        score (Tensor): ``[N, H]`` token importance logits.
        reg_score (Tensor, optional): ``[R, H]`` register logits.
        with_bottom (bool): also select the bottom set and keep the
            scores, for :func:`relax`.
        packed (bool): rank by sorting instead of a padded score matrix
            (always, where :math:`n_{\max}` is unknown).
        ordered (bool): keep the top set in descending order of score;
            :obj:`False` allows any order where no slot is masked and no
            bottom set is taken (a top-k without its final sort, or the
            segmented top-k kernel where :func:`_kernel_selects`).
        head (Tensor, optional): ``[1, H, 1]`` head indices (made here if
            not given).
    """
    N, H = score.shape
    device = score.device
    cand = _candidate_scores(score, reg_score, info)  # [M, H]
    if perturb:
        cand = cand - _log_exponential_like(cand)
    m_max = info.m_max if with_bottom else 0
    K2 = info.k_max + m_max
    if info.max_size is not None:
        K2 = min(K2, info.max_size + num_registers)
    sort = packed or info.max_size is None
    # Ranks carry no gradient: the relaxation sends the scores' own.
    ranked = cand.detach() if cand.requires_grad else cand
    if not (sort or perturb or with_bottom or ordered) and \
            _kernel_selects(ranked, info, num_registers):
        from samsa_geo.nn.attention._topk_triton import select_topk_triton
        ids = select_topk_triton(ranked, None, None if info.equal else batch,
                                 info.num_sets, info.max_size, info.k_max,
                                 info.k_max)  # [B, H, k]
        return Selection(ids, info.k_max)
    if sort:
        ids = _rank_sorted(ranked, batch, info, N, num_registers, K2)
    else:  # [B, H, K2]
        # A branch, not an expression: under dynamic shapes m_max > 0 is
        # a SymBool, which topk's 'sorted' does not take.
        if m_max > 0 or not info.all_valid:
            ordered = True
        ids, values = _rank_dense(ranked, batch, info, N, num_registers,
                                  K2, ordered)
    k = info.k_max
    if info.all_valid:  # no slot to mask: K2 = k + m, the ranks are slots
        sel = Selection(ids, k)
        if with_bottom and not sort:  # the top-k's values
            sel.score, sel.cand = values, cand  # [B, H, k + m]
            return sel
    else:
        # An empty set keeps one (unused) valid slot: no query of it
        # exists, and a fully masked row would turn gradients to NaN.
        j = torch.arange(k, device=device)
        top_valid = j.view(1, -1) < info.k.clamp(min=1).view(-1, 1)
        top = ids if K2 == k else ids[..., :k]
        # Invalid slots may hold ids of other sets: point them at a valid one.
        top = torch.where(top_valid.unsqueeze(1), top, top[..., :1])
        sel = Selection(top, k, top_valid)
        if m_max > 0:
            t = torch.arange(m_max, device=device)
            sel.num_bottom = info.num_bottom
            sel.bottom_valid = t.view(1, -1) < sel.num_bottom.view(-1, 1)
            bpos = (info.k.view(-1, 1) + t).clamp(max=max(K2 - 1, 0))
            bottom = ids.gather(2, bpos.unsqueeze(1).expand(-1, H, -1))
            bottom = torch.where(sel.bottom_valid.unsqueeze(1), bottom,
                                 top[..., :1])
            sel.ids = torch.cat([top, bottom], dim=-1)  # [B, H, k + m]
    if with_bottom:  # the relaxation needs the perturbed scores
        if head is None:
            head = torch.arange(H, device=device).view(1, -1, 1)
        sel.score, sel.cand = ranked[sel.ids, head], cand  # [B, H, k + m]
    return sel


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
    return Selection(top, K, top_valid)


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


def project_rows(ids: Tensor, x: Tensor, weight: Tensor,
                 bias: Tensor) -> Tensor:
    r"""Keys and values of the sampled rows alone: row ``x[ids[b, h, j]]``
    of ``x`` :math:`(M, C)` projected by head ``h``'s rows of ``weight``
    :math:`(H F, C)` and ``bias`` :math:`(H F)`, for ids
    :math:`(B, H, K)`: :math:`(B, H, K, F)`. It equals
    ``gather_rows(F.linear(x, weight, bias).view(M, H, F), ids, head)``
    up to the rounding of another matrix product, at the cost of
    :math:`B H K` rows instead of :math:`M`."""
    B, H, K = ids.shape
    C = x.size(1)
    F_ = weight.size(0) // H
    ids = ids.transpose(0, 1).reshape(H, B * K)  # [B, H, K] -> [H, B * K]
    w = weight.view(H, F_, C).transpose(1, 2)  # [H * F, C] -> [H, C, F]
    b = bias.view(H, 1, F_).expand(H, B * K, F_)  # [H * F] -> [H, BK, F]
    rows = x.index_select(0, ids.view(-1)).view(H, B * K, C)  # [H, BK, C]
    u = torch.baddbmm(b, rows, w)  # [H, B * K, C] @ [H, C, F]
    return u.view(H, B, K, F_).transpose(0, 1)  # [H, BK, F] -> [B, H, K, F]
