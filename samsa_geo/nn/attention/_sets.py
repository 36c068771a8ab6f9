"""Bookkeeping for variable-size sets given by a PyG ``batch`` vector."""
import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor


@dataclass
class SetInfo:
    r"""Sizes of the sets in a batch and of the sampled key sets.

    Attributes:
        num_sets (int): :math:`B`, number of sets.
        max_size (int): largest set size :math:`n_{\max}`.
        ptr (Tensor): ``[B + 1]`` offsets of the sets in the token list.
        size (Tensor): ``[B]`` tokens per set :math:`n_b`.
        k (Tensor): ``[B]`` keys kept per set and head :math:`k_b`.
        k_max (int): largest :math:`k_b`.
        num_bottom (Tensor): ``[B]`` size of the relaxation's bottom set
            :math:`m_b = \min(k_b, n_b + R - k_b)`.
        m_max (int): largest :math:`m_b`.
        all_valid (bool): every set has :math:`k_b = k_{\max}` and
            :math:`m_b = m_{\max}` (no slot needs masking).
    """
    num_sets: int
    max_size: int
    ptr: Tensor
    size: Tensor
    k: Tensor
    k_max: int
    num_bottom: Tensor
    m_max: int
    all_valid: bool = False


def resolve_k(k: Union[int, float], size: Tensor, num_registers: int,
              full: bool) -> Tensor:
    r"""Returns :math:`k_b` per set: ``k`` tokens (int) or a fraction of the
    set (float), never more than the :math:`n_b + R` candidates."""
    num_cand = size + num_registers
    if full:
        return num_cand
    if isinstance(k, float):
        kb = torch.ceil(size.to(torch.float64) * k).long().clamp(min=1)
    else:
        kb = torch.full_like(size, k)
    return torch.minimum(kb, num_cand)


def k_of_size(n: int, k: Union[int, float], num_registers: int,
              full: bool) -> int:
    r""":math:`k_b` of a set of ``n`` tokens as a Python int (the
    :func:`resolve_k` rule without touching the device)."""
    if full:
        return n + num_registers
    if isinstance(k, float):
        return min(max(1, math.ceil(n * k)), n + num_registers)
    return min(k, n + num_registers)


def set_info(num_tokens: int, batch: Optional[Tensor], k: Union[int, float],
             num_registers: int, full: bool, device: torch.device,
             num_sets: Optional[int] = None,
             max_size: Optional[int] = None) -> SetInfo:
    r"""Computes :class:`SetInfo`.

    With ``batch=None`` (one set) nothing is read back from the device, so
    the layer traces into a single graph under :func:`torch.compile` and
    :func:`torch.export`.
    """
    R = num_registers
    if batch is None:
        # Python ints throughout; the tensors are device fills, no copies.
        n = num_tokens
        k_max = k_of_size(n, k, R, full)
        m_max = min(k_max, n + R - k_max)
        one = torch.ones(1, dtype=torch.long, device=device)
        ptr = torch.arange(2, device=device) * n  # [0, n]
        return SetInfo(1, n, ptr, one * n, one * k_max, k_max, one * m_max,
                       m_max, all_valid=True)

    if num_sets is None:
        num_sets = int(batch[-1]) + 1 if batch.numel() > 0 else 1
    # Sizes sum to N and none exceeds max_size: equal iff B * max == N.
    equal = max_size is not None and num_sets * max_size == num_tokens
    if equal:  # no count needed
        size = torch.full((num_sets, ), max_size, dtype=torch.long,
                          device=device)
    else:  # static-shape count (bincount's output size is data-dependent)
        size = torch.zeros(num_sets, dtype=torch.long, device=device)
        size.scatter_add_(0, batch, torch.ones_like(batch))
    ptr = torch.zeros(num_sets + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(size, dim=0)
    kb = resolve_k(k, size, R, full)
    mb = torch.minimum(kb, size + R - kb)
    if max_size is None:
        # One read-back for the maxima and minima.
        stats = torch.stack([size.max(), kb.max(), mb.max(), kb.min(),
                             mb.min()]).tolist()
        max_size, k_max, m_max, k_min, m_min = (int(v) for v in stats)
        all_valid = k_min == k_max and m_min == m_max
    else:
        k_max = k_of_size(max_size, k, R, full)
        m_max = min(k_max, max_size + R - k_max)
        all_valid = equal
    return SetInfo(num_sets, max_size, ptr, size, kb, k_max, mb, m_max,
                   all_valid)
