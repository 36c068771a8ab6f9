from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GELU, Linear, Module, Parameter, Sequential
from torch_geometric.nn.inits import reset

from samsa_geo.nn.encoders._point_geometry import (
    centroid,
    check_points,
    eps_for,
    geometry_dtype,
    safe_cos,
    safe_norm,
)
from samsa_geo.ops.validation import (
    check_bool,
    check_non_negative_int,
    check_positive_int,
)


class SFTPointEncoder(Module):
    r"""Rotation-invariant point tokens of the SFT construction
    (`"Sampling Foundational Transformer: A Theoretical Perspective"
    <https://arxiv.org/abs/2408.05822>`_): tokens carry no raw coordinates,

    .. math::
        \mathbf{t}_i = \mathbf{t}_0 + \mathrm{MLP}\big(r_i,\; r_i / \bar{r},
        \; \cos\angle(\mathbf{n}_i, \mathbf{p}_i - \mathbf{c})\big)
        + \mathrm{softplus}(\theta)\, \mathbf{W}_{\xi} \boldsymbol{\xi}_i,

    where :math:`\mathbf{t}_0` is a learned constant, :math:`\mathbf{c}` the
    centroid of the cloud, :math:`r_i = \Vert \mathbf{p}_i - \mathbf{c}
    \Vert`, :math:`\bar{r}` the root mean square of :math:`r` over the cloud,
    :math:`\mathbf{n}_i` the optional normal (the cosine is :math:`0`
    without normals) and :math:`\boldsymbol{\xi}_i \sim \mathcal{N}(0,
    \mathbf{I})` optional random features. The rest of the geometry must
    enter through invariant *pairwise* features, i.e. the relative bias of
    :class:`~samsa_geo.nn.SamsaAttention` (``relative_bias=True`` with
    ``pos`` and ``normal``), as :class:`~samsa_geo.nn.models.
    SamsaPointClassifier` does.

    **Invariance.** The output is invariant to rotations in :math:`SO(3)`
    (in fact :math:`O(3)`) applied to ``pos`` and ``normal`` together, to
    translations of ``pos`` and equivariant to permutations of the points.
    Random features are drawn fresh in training (invariance in distribution)
    and are zero in evaluation mode (exact invariance) unless
    ``stochastic_eval=True``. Tests check
    :math:`\Vert f(\mathbf{P}\mathbf{R}^\top + \mathbf{t}) - f(\mathbf{P})
    \Vert_\infty < 10^{-4}` in float32, evaluation mode, for random
    :math:`\mathbf{R}` from the QR decomposition of a Gaussian matrix
    (:math:`\det \mathbf{R} = +1`). Degenerate clouds (a single repeated
    point, collinear or planar points) give finite outputs and gradients.

    Args:
        channels (int): Token width :math:`C`.
        random_channels (int, optional): Size of :math:`\boldsymbol{\xi}`;
            :obj:`0` disables random features. (default: :obj:`0`)
        stochastic_eval (bool, optional): Draw random features in evaluation
            mode too. (default: :obj:`False`)

    Shapes:
        - **input:** ``pos`` :math:`(N, 3)`, ``batch`` :math:`(N)` sorted,
          ``normal`` :math:`(N, 3)`
        - **output:** :math:`(N, C)`
    """
    num_scalars: int = 3

    def __init__(
        self,
        channels: int,
        random_channels: int = 0,
        stochastic_eval: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int('channels', channels)
        check_non_negative_int('random_channels', random_channels)
        check_bool('stochastic_eval', stochastic_eval)
        self.channels = channels
        self.random_channels = random_channels
        self.stochastic_eval = stochastic_eval
        self.token = Parameter(torch.empty(channels))
        self.scalar_nn = Sequential(Linear(self.num_scalars, channels), GELU(),
                                    Linear(channels, channels))
        if random_channels > 0:
            self.lin_random = Linear(random_channels, channels, bias=False)
            self.random_scale = Parameter(torch.empty(()))
        else:
            self.lin_random = None
            self.register_parameter('random_scale', None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.normal_(self.token, std=0.02)
        reset(self.scalar_nn)
        if self.lin_random is not None:
            self.lin_random.reset_parameters()
            # softplus(0.5413) = 1: unit scale at start.
            torch.nn.init.constant_(self.random_scale, 0.5413)

    def scalars(self, pos: Tensor, batch: Tensor, num_clouds: int,
                normal: Optional[Tensor] = None) -> Tensor:
        r"""The invariant scalars :math:`(r_i, r_i / \bar{r},
        \cos\angle(\mathbf{n}_i, \mathbf{p}_i - \mathbf{c}))`, shape
        :math:`(N, 3)`, computed in at least float32 (:func:`geometry_dtype`).
        """
        dtype = geometry_dtype(pos)
        pos = pos.to(dtype)
        normal = None if normal is None else normal.to(dtype)
        u = pos - centroid(pos, batch, num_clouds)[batch]  # [N, 3]
        r = safe_norm(u)
        ms = centroid((u * u).sum(-1, keepdim=True), batch, num_clouds)
        rms = ms.squeeze(-1).add(eps_for(dtype)).sqrt()[batch]
        cos = torch.zeros_like(r)
        if normal is not None:
            cos = safe_cos(normal, u)
        return torch.stack([r, r / rms, cos], dim=-1)  # [N, 3]

    def forward(self, pos: Tensor, batch: Optional[Tensor] = None,
                normal: Optional[Tensor] = None) -> Tensor:
        batch, B, _ = check_points(pos, batch, normal)
        return self.encode(pos, batch, B, normal)

    def encode(
        self,
        pos: Tensor,
        batch: Tensor,
        num_clouds: int,
        normal: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
        max_num_points: Optional[int] = None,
    ) -> Tensor:
        r"""The tokens :math:`(N, C)` of :meth:`forward` on inputs already
        validated (``batch`` given and sorted, ``num_clouds`` clouds);
        ``edge_index`` and ``max_num_points`` are unused (the signature of
        :meth:`PPFPointEncoder.encode`)."""
        s = self.scalars(pos, batch, num_clouds, normal).to(self.token.dtype)
        out = self.token + self.scalar_nn(s)  # [N, C]
        if self.lin_random is not None and (self.training
                                            or self.stochastic_eval):
            xi = torch.randn(pos.size(0), self.random_channels,
                             device=pos.device, dtype=out.dtype)
            out = out + F.softplus(self.random_scale) * self.lin_random(xi)
        return out

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'random_channels={self.random_channels})')
