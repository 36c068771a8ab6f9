import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from samsa_geo.ops.validation import check_number
from samsa_geo.transforms._utils import check_pos


class RandomJitter(BaseTransform):
    r"""Adds clipped Gaussian noise to every point coordinate.

    .. math::
        \mathbf{p}_i' = \mathbf{p}_i + \mathrm{clip}(\boldsymbol{\epsilon}_i,
        -c, c), \qquad \boldsymbol{\epsilon}_i \sim \mathcal{N}(\mathbf{0},
        \sigma^2 \mathbf{I}_3)

    Normals are left unchanged. PyG's
    :class:`~torch_geometric.transforms.RandomJitter` adds uniform noise;
    this is the clipped Gaussian of the PointNet family.

    Args:
        sigma (float, optional): Standard deviation :math:`\sigma`, finite.
            (default: :obj:`0.01`)
        clip (float, optional): Clipping bound :math:`c`, finite.
            (default: :obj:`0.05`)

    Shapes:
        - **input:** :obj:`pos` :math:`(N, 3)`
        - **output:** :obj:`pos` :math:`(N, 3)`
    """
    def __init__(self, sigma: float = 0.01, clip: float = 0.05) -> None:
        check_number('sigma', sigma, finite=True)
        check_number('clip', clip, finite=True)
        if sigma < 0:
            raise ValueError(f"Expected 'sigma' >= 0 (got {sigma})")
        if clip <= 0:
            raise ValueError(f"Expected 'clip' > 0 (got {clip})")
        self.sigma = sigma
        self.clip = clip

    def forward(self, data: Data) -> Data:
        pos = check_pos(data)
        noise = torch.randn_like(pos) * self.sigma
        noise = noise.clamp(-self.clip, self.clip)
        data.pos = pos + noise
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(sigma={self.sigma}, '
                f'clip={self.clip})')
