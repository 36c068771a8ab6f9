import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Module

from samsa_geo.nn.attention._module_tree import hooked
from samsa_geo.ops.validation import check_positive_int


class RelativeBias(Module):
    r"""Relative positional modulation of attention scores from the SFT paper
    (`"Sampling Foundational Transformer: A Theoretical Perspective"
    <https://arxiv.org/abs/2408.05822>`_)

    .. math::
        s'_{ij} = s_{ij} \cdot \mathrm{softplus}(\mathbf{A} \mathbf{r}_{ij})
        + \mathbf{B} \mathbf{r}_{ij},

    where :math:`\mathbf{r}_{ij} \in \mathbb{R}^{F}` are pairwise features of
    query :math:`i` and sampled key :math:`j` and :math:`\mathbf{A},
    \mathbf{B} \in \mathbb{R}^{H \times F}` map them to one value per head.
    At initialisation :math:`s' = s` (scale one, bias zero). Only the
    :math:`N \times k` sampled pairs are ever evaluated.

    Args:
        in_features (int): :math:`F`, number of pairwise features.
        heads (int, optional): :math:`H`. (default: :obj:`1`)

    Shapes:
        - **input:** scores :math:`(*, H, T, k)`, :math:`F` feature
          tensors of shape :math:`(*, H, T, k)`
        - **output:** :math:`(*, H, T, k)`
    """
    def __init__(self, in_features: int, heads: int = 1) -> None:
        super().__init__()
        check_positive_int('in_features', in_features)
        check_positive_int('heads', heads)
        self.in_features = in_features
        self.heads = heads
        self.lin_scale = Linear(in_features, heads)
        self.lin_bias = Linear(in_features, heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.zeros_(self.lin_scale.weight)
        # softplus(log(e - 1)) == 1: the identity modulation at start.
        torch.nn.init.constant_(self.lin_scale.bias, math.log(math.e - 1.0))
        torch.nn.init.zeros_(self.lin_bias.weight)
        torch.nn.init.zeros_(self.lin_bias.bias)

    def forward(self, score: Tensor,
                rel: Sequence[Optional[Tensor]]) -> Tensor:
        # rel: F tensors [*, H, T, k] (no stacked [*, H, T, k, F] copy), or
        # None for a feature that is zero; head h reads row h of A and B.
        if len(rel) != self.in_features:
            raise ValueError(f"Expected {self.in_features} pairwise feature "
                             f"tensors (got {len(rel)})")
        H = self.heads
        if hooked(self.lin_scale, self.lin_bias):
            return self._modules_forward(score, rel)
        scale = self.lin_scale.bias.view(H, 1, 1)
        bias = self.lin_bias.bias.view(H, 1, 1)
        for f, r in enumerate(rel):
            if r is None:
                continue
            scale = torch.addcmul(scale, self.lin_scale.weight[:, f].view(
                H, 1, 1), r)
            bias = torch.addcmul(bias, self.lin_bias.weight[:, f].view(
                H, 1, 1), r)
        return torch.addcmul(bias, score, F.softplus(scale))

    def _modules_forward(self, score: Tensor,
                         rel: Sequence[Optional[Tensor]]) -> Tensor:
        # The formula with A and B called as modules, where one holds a
        # hook (it runs, and a weight its pre-hook sets is the one read):
        # each pair's features through every head's row, the rows of the
        # pair's own head kept (H times the memory of the features).
        with torch.autocast(score.device.type, enabled=False):
            r = torch.stack([score.new_zeros(score.shape) if f is None
                             else f.to(score.dtype).expand(score.shape)
                             for f in rel], dim=-1)  # [*, H, T, k, F]

            def own_head(out: Tensor) -> Tensor:
                # [*, H, T, k, H] -> [*, T, k, H] -> [*, H, T, k]
                return out.diagonal(dim1=-4, dim2=-1).movedim(-1, -3)

            scale = own_head(self.lin_scale(r))
            bias = own_head(self.lin_bias(r))
            return torch.addcmul(bias, score, F.softplus(scale))

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.in_features}, '
                f'heads={self.heads})')
