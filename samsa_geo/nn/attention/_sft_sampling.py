r"""The sampler of SFT (`"Sampling Foundational Transformer: A Theoretical
Perspective" <https://arxiv.org/abs/2408.05822>`_): one importance score per
token shared by all heads, and each of the top :math:`k` tokens mixed with
one random lower-ranked token of its set. It samples the *raw* tokens, before
any key/value projection, so the projections run on :math:`k` rows per set
instead of :math:`n`.
"""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from samsa_geo.nn.attention._sets import k_of_size, resolve_k, set_offsets


@dataclass
class SFTSample:
    r"""The sampled tokens of every set.

    Attributes:
        x (Tensor): ``[B, k_max, C]`` mixed raw tokens
            :math:`\mathbf{z}_i`; zero in unused slots.
        index (Tensor): ``[B, k_max]`` global ids of the top tokens
            :math:`i` (``-1`` in unused slots).
        partner (Tensor): ``[B, k_max]`` global ids of their lower-ranked
            partners :math:`j` (``-1`` where there is none: unused slots,
            sets of :math:`n_b \leq k_b` tokens, or no mixing).
        weight (Tensor): ``[B, k_max]`` the weights :math:`w_i` of the top
            tokens (:math:`1` without a partner).
        valid (Tensor, optional): ``[B, k_max]`` whether slot ``j < k_b``;
            :obj:`None` when every slot is used.
    """
    x: Tensor
    index: Tensor
    partner: Tensor
    weight: Tensor
    valid: Optional[Tensor]


def sft_sample(
    x: Tensor,
    score: Tensor,
    batch: Optional[Tensor] = None,
    k: Union[int, float] = 64,
    *,
    mix: bool = True,
    perturb: bool = True,
    num_sets: Optional[int] = None,
    max_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> SFTSample:
    r"""Samples :math:`k_b` raw tokens per set with SFT's pair mixing.

    The top set :math:`T` holds the :math:`k_b` tokens of highest score
    (of :math:`\mathbf{s} + \mathbf{g}`, :math:`\mathbf{g} \sim
    \mathrm{Gumbel}(0, 1)`, with ``perturb=True``). With ``mix=True`` each
    :math:`i \in T` draws one partner :math:`j` uniformly from the tokens of
    its set ranked below :math:`k_b` and returns

    .. math::
        \mathbf{z}_i = w_i \mathbf{x}_i + (1 - w_i) \mathbf{x}_j, \qquad
        w_i = \frac{\mathrm{softplus}(s_i)}{\mathrm{softplus}(s_i) +
        \mathrm{softplus}(s_j)},

    with the clean scores :math:`s`, so the scores receive the gradient
    :math:`\partial \mathbf{z}_i / \partial s_i = \sigma(s_i)
    \frac{\mathrm{softplus}(s_j)}{(\mathrm{softplus}(s_i) +
    \mathrm{softplus}(s_j))^2} (\mathbf{x}_i - \mathbf{x}_j)`. Without
    mixing (inference) :math:`\mathbf{z}_i = \mathbf{x}_i`. A set of
    :math:`n_b \leq k_b` tokens returns all its tokens, unmixed.

    Args:
        x (Tensor): Raw tokens :math:`(N, C)`.
        score (Tensor): One score per token :math:`(N)` (or :math:`(N, 1)`),
            shared by all heads.
        batch (Tensor, optional): Set index per token :math:`(N)`, sorted;
            :obj:`None` for one set. (default: :obj:`None`)
        k (int or float, optional): Tokens kept per set; a float in
            :math:`(0, 1]` is a fraction of each set. (default: :obj:`64`)
        mix (bool, optional): Mix each top token with a random
            lower-ranked one. (default: :obj:`True`)
        perturb (bool, optional): Rank by Gumbel-perturbed scores.
            (default: :obj:`True`)
        num_sets (int, optional): Number of sets, if known; without it
            it is read back from ``batch`` (a device sync).
        max_size (int, optional): Largest set size :math:`n_{\max}`, if
            known: the ranks come from a padded :math:`(B, n_{\max})`
            score matrix and :math:`k_{\max} = k_{n_{\max}}`. Without it
            an integer ``k`` needs no read-back: the ranks come from a
            sort of the :math:`N` tokens by set and score, and
            :math:`k_{\max} = \min(k, N)` bounds the slots (the extra
            ones unused); a fractional ``k`` reads :math:`n_{\max}` back.
            With ``num_sets`` and an integer ``k`` nothing is read back
            from the device. (default: :obj:`None`)
        generator (torch.Generator, optional): Source of the Gumbel noise
            and of the partners.

    Shapes:
        - **input:** ``x`` :math:`(N, C)`, ``score`` :math:`(N)`,
          ``batch`` :math:`(N)`
        - **output:** :class:`SFTSample` with ``x`` :math:`(B, k_{\max},
          C)` and the rest :math:`(B, k_{\max})`
    """
    if x.dim() != 2:
        raise ValueError(f"Expected 'x' to have shape [N, C] "
                         f"(got {list(x.shape)})")
    N, C = x.shape
    if score.dim() == 2 and score.size(1) == 1:
        score = score.view(-1)
    if score.shape != (N, ):
        raise ValueError(f"Expected 'score' to have shape [{N}] "
                         f"(got {list(score.shape)})")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k <= 0 \
            or (isinstance(k, float) and k > 1.0):
        raise ValueError(f"Expected 'k' to be a positive int or a fraction "
                         f"in (0, 1] (got {k!r})")
    if batch is not None and batch.shape != (N, ):
        raise ValueError(f"Expected 'batch' to have shape [{N}] "
                         f"(got {list(batch.shape)})")
    device = x.device
    if batch is None:
        batch = torch.zeros(N, dtype=torch.long, device=device)
        num_sets, max_size = 1, N
    elif num_sets is None:
        num_sets = int(batch.max()) + 1 if N > 0 else 1
    B = num_sets
    ptr = set_offsets(batch, B)  # [B + 1]
    size = ptr[1:] - ptr[:-1]  # [B]
    kb = resolve_k(k, size, 0, False)  # [B]
    if max_size is None and isinstance(k, float):
        # A fraction of N would bound k_max far above any set's k_b.
        max_size = int(size.max())
    # Without max_size, N bounds n_max (no read-back; a traced graph
    # does not depend on the sizes); the ranks then come from a sort.
    n_max = N if max_size is None else max_size
    # k_b grows with n_b: the largest set has the most slots.
    k_max = k_of_size(n_max, k, 0, False)
    equal = B * n_max == N  # every set full: no slot unused

    key = score.detach().float()
    if perturb:
        u = _uniform((N, ), generator, device)
        key = key - torch.log(-torch.log(u.clamp_(1e-10, 1.0 - 1e-7)))
    start = ptr[:-1].view(-1, 1)  # [B, 1]
    if max_size is None:
        # Tokens grouped by set, each set's in descending order of key
        # (two stable sorts: ties keep token order, as the padded sort).
        perm = key.argsort(descending=True, stable=True)  # [N]
        perm = perm[batch[perm].argsort(stable=True)]  # [N]

        def ranked(rank: Tensor) -> Tensor:
            # [B, k_max] ranks in their sets -> global ids
            return perm[(start + rank).clamp(max=N - 1)]
    else:
        # Padded scores [B, n_max]: padding ranks last.
        loc = torch.arange(N, device=device) - ptr[batch]
        dense = key.new_full((B, n_max), float('-inf'))
        dense[batch, loc] = key
        order = dense.argsort(dim=1, descending=True,
                              stable=True)  # [B, n_max]

        def ranked(rank: Tensor) -> Tensor:
            return order.gather(1, rank) + start  # [B, k_max] global ids
    slot = torch.arange(k_max, device=device)
    valid = slot.view(1, -1) < kb.view(-1, 1)  # [B, k_max]
    top = ranked(slot.expand(B, k_max))  # [B, k_max] global ids
    top = torch.where(valid, top, torch.zeros_like(top))

    z = _rows(x, top)  # [B, k_max, C]
    weight = torch.ones(B, k_max, dtype=score.dtype, device=device)
    partner = torch.full_like(top, -1)
    num_lower = size - kb  # [B]
    if mix and n_max > k_max:  # some set may have lower-ranked tokens
        u = _uniform((B, k_max), generator, device)
        # A uniform rank in [k_b, n_b) per slot.
        rank = kb.view(-1, 1) + (u * num_lower.view(-1, 1)).long()
        rank = rank.clamp(max=n_max - 1)  # [B, k_max]
        j = ranked(rank)  # [B, k_max]
        has = valid & (num_lower > 0).view(-1, 1)
        j = torch.where(has, j, top)
        sp_i = F.softplus(_rows(score, top))
        sp_j = F.softplus(_rows(score, j))
        w = sp_i / (sp_i + sp_j).clamp(min=1e-12)
        weight = torch.where(has, w, torch.ones_like(w))
        wx = weight.unsqueeze(-1).to(x.dtype)  # [B, k_max, 1]
        z = wx * z + (1.0 - wx) * _rows(x, j)
        partner = torch.where(has, j, partner)
    z = z * valid.unsqueeze(-1).to(z.dtype)
    index = torch.where(valid, top, torch.full_like(top, -1))
    return SFTSample(z, index, partner, weight, None if equal else valid)


def _uniform(shape: Tuple[int, ...], generator: Optional[torch.Generator],
             device: torch.device) -> Tensor:
    # U(0, 1) of `shape`. No `generator=None` keyword: torch.compile with
    # dynamic shapes fails on torch.rand of a symbolic size given one.
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=device)


def _rows(t: Tensor, index: Tensor) -> Tensor:
    # t[index] for row ids of any shape, by index_select, whose backward
    # on CUDA is one index_add (advanced indexing's sorts the ids first).
    # [M, *] rows at ids [*S] -> [*S, *]
    rows = t.index_select(0, index.reshape(-1))  # [prod(S), *]
    return rows.view(*index.shape, *t.shape[1:])
