r"""Similarity functions :math:`s(\mathbf{q}_i, \mathbf{k}_j)` of queries
and sampled keys: the dot product and the two non-bilinear scores of SFT
(`"Sampling Foundational Transformer" <https://arxiv.org/abs/2408.05822>`_),
whose :math:`N \times k` score map is not limited to rank :math:`D`."""
import math

import torch
from torch import Tensor

_SQRT_PI_INV = 1.0 / math.sqrt(math.pi)
_MAXOUT_STD = math.sqrt(1.0 - 1.0 / math.pi)


def maxout_score(q: Tensor, k: Tensor) -> Tensor:
    r"""SFT maxout score
    :math:`\sum_d (\max(q_d, k_d) - 1/\sqrt{\pi}) / \sqrt{1 - 1/\pi} /
    \sqrt{D}`: ``q [..., T, D]``, ``k [..., k, D]`` -> ``[..., T, k]``."""
    D = q.size(-1)
    m = torch.maximum(q.unsqueeze(-2), k.unsqueeze(-3))  # [..., T, k, D]
    return (m.sum(-1) - D * _SQRT_PI_INV) / (_MAXOUT_STD * math.sqrt(D))


def lily_score(q: Tensor, k: Tensor) -> Tensor:
    r"""SFT "lily" score
    :math:`\sum_d (|q_d + k_d| - |q_d - k_d|) / \sqrt{D}`."""
    D = q.size(-1)
    qe, ke = q.unsqueeze(-2), k.unsqueeze(-3)  # [..., T, 1, D], [..., 1, k, D]
    return ((qe + ke).abs() - (qe - ke).abs()).sum(-1) / math.sqrt(D)


def dot_score(q: Tensor, k: Tensor) -> Tensor:
    return q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))


SIMILARITIES: dict = {'dot': dot_score, 'maxout': maxout_score,
                      'lily': lily_score}
