r"""The score-pooled summary key of :class:`SamsaAttention`
(``summary=True``).

Per set :math:`b` and head :math:`h` one extra key/value row, the mean of
all candidates' rows (tokens and registers) weighted by the softmax of
their clean scores,

.. math::
    \bar{\mathbf{u}}_{b,h} = \sum_{i \in b} \mathrm{softmax}_{i \in b}
    (s_{i,h})\, \mathbf{u}_{i,h},

enters the attention next to the :math:`k_b` sampled rows, counted
:math:`c_b = n_b + R - k_b` times (the candidates it stands in for): its
attention logit gets :math:`+\log c_b`. The scores then receive a gradient
from every candidate of every set, as in a single-query attention over the
whole set, at a cost of :math:`O(n C)` per set; where :math:`c_b = 0` (all
candidates sampled) there is no summary and the attention stays exact.
"""
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from samsa_geo.nn.attention._sets import SetInfo
from samsa_geo.ops._utils import at_least_float32, promoted_float


@dataclass
class Summary:
    r"""The summary key of every set and head.

    Attributes:
        rows (Tensor): ``[B, H, 1, F]`` score-weighted means of the
            candidates' key/value rows.
        log_count (Tensor): ``[B, 1]`` float32 :math:`\log c_b` (float64
            in a float64 layer), the summary key's logit offset
            (:math:`-\infty` where a set keeps all its candidates).
        weight (Tensor): ``[M, H]`` float32 softmax weight of every
            candidate within its set (float64 in a float64 layer).
        cand_set (Tensor, optional): ``[M]`` set of every candidate;
            :obj:`None` where the candidates form equal runs in set order.
    """
    rows: Tensor
    log_count: Tensor
    weight: Tensor
    cand_set: Optional[Tensor]

    def pool(self, t: Tensor) -> Tensor:
        r"""Score-weighted mean :math:`(B, H, P)` of per-candidate rows
        ``t`` :math:`(M, P)`, such as positions (in the dtype of the weights;
        the weights are detached: geometry carries no gradient to the
        scores)."""
        H = self.weight.size(1)
        t = t.to(self.weight.dtype).unsqueeze(1).expand(-1, H, -1)
        return _weighted_sum(self.weight.detach(), t, self.cand_set,
                             self.rows.size(0))


def _weighted_sum(weight: Tensor, t: Tensor, cand_set: Optional[Tensor],
                  num_sets: int) -> Tensor:
    # sum_i weight[i, h] t[i, h] over each set's candidates: [M, H] and
    # [M, H, F] -> [B, H, F].
    M, H, F = t.shape
    if cand_set is None:  # equal runs of M / B candidates: a batched matmul
        w = weight.view(num_sets, -1, H)  # [B, n, H]
        return torch.einsum('bnh,bnhf->bhf', w, t.view(num_sets, -1, H, F))
    out = t.new_zeros(num_sets, H, F)
    return out.index_add(0, cand_set, weight.unsqueeze(-1) * t)


def summarize(kv: Tensor, score: Tensor, reg_score: Optional[Tensor],
              batch: Optional[Tensor], info: SetInfo) -> Summary:
    r"""Computes :class:`Summary` without reading anything back from the
    device.

    Args:
        kv (Tensor): ``[M, H, F]`` rows of the candidates,
            :math:`M = N + B R`: the tokens, then every set's registers.
        score (Tensor): ``[N, H]`` clean scores of the tokens.
        reg_score (Tensor, optional): ``[R, H]`` scores of the registers.
        batch (Tensor, optional): ``[N]`` sorted set of every token.

    The softmax runs in float32 per set (its maximum subtracted first);
    the weighted sum accumulates in float32 and is cast to the dtype of
    ``kv``. Where ``score`` or ``kv`` is float64 (a float64 layer), both
    run in float64.
    """
    B, H = info.num_sets, score.size(1)
    R = 0 if reg_score is None else reg_score.size(0)
    dtype = at_least_float32(promoted_float(score.dtype, kv.dtype))
    score = score.to(dtype)
    if R > 0:  # [N + B * R, H]
        score = torch.cat([score, reg_score.to(dtype).repeat(B, 1)], 0)
    cand_set = None  # one set, or equal sets without registers
    if batch is not None and (R > 0 or not info.equal):
        cand_set = batch
        if R > 0:
            reg_set = torch.arange(B, device=batch.device)
            cand_set = torch.cat([batch, reg_set.repeat_interleave(R)])
    if cand_set is None:
        weight = score.view(B, -1, H).softmax(1).view(-1, H)  # [M, H]
    else:  # a segment softmax
        idx = cand_set.view(-1, 1).expand(-1, H)  # [M, H]
        peak = score.new_full((B, H), float('-inf')).scatter_reduce(
            0, idx, score.detach(), 'amax')  # [B, H]
        e = (score - peak[cand_set]).exp()  # [M, H]
        denom = score.new_zeros(B, H).index_add(0, cand_set, e)  # [B, H]
        weight = e / denom[cand_set]
    rows = _weighted_sum(weight, kv.to(dtype), cand_set, B)  # [B, H, F]
    rows = rows.to(kv.dtype).unsqueeze(2)  # [B, H, F] -> [B, H, 1, F]
    if info.equal:  # c = n + R - k of every set, known on the host
        c = info.max_size + R - info.k_max
        log_count = score.new_full((B, 1), math.log(c) if c > 0 else
                                   float('-inf'))
    else:  # log 0 = -inf: no summary where a set keeps every candidate
        log_count = (info.size + R - info.k).to(dtype).log().view(B, 1)
    return Summary(rows, log_count, weight, cand_set)
