import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from samsa_geo.ops.validation import check_number
from samsa_geo.transforms._utils import check_normal, check_pos


class RandomAnisotropicScale(BaseTransform):
    r"""Scales every coordinate axis of a point cloud by its own factor
    drawn uniformly from :math:`[\text{low}, \text{high}]`, the usual
    ModelNet40 training augmentation.

    .. math::
        \mathbf{p}_i' = \mathbf{s} \odot \mathbf{p}_i, \qquad
        s_d \sim \mathcal{U}[\text{low}, \text{high}], \; d = 1, 2, 3

    Normals in :obj:`data.normal` transform with the inverse transpose,
    :math:`\mathbf{n}_i' \propto \mathbf{s}^{-1} \odot \mathbf{n}_i`, and are
    re-normalised to unit length so that they stay perpendicular to the
    scaled surface.

    Args:
        low (float, optional): Smallest factor. (default: :obj:`2/3`)
        high (float, optional): Largest factor. (default: :obj:`3/2`)

    Shapes:
        - **input:** :obj:`pos` :math:`(N, 3)`, optional :obj:`normal`
          :math:`(N, 3)`
        - **output:** same shapes
    """
    def __init__(self, low: float = 2. / 3., high: float = 3. / 2.) -> None:
        check_number('low', low, finite=True)
        check_number('high', high, finite=True)
        if not 0 < low <= high:
            raise ValueError(f"Expected 0 < 'low' <= 'high' "
                             f"(got low={low}, high={high})")
        self.low = low
        self.high = high

    def forward(self, data: Data) -> Data:
        pos = check_pos(data)
        normal = check_normal(data, pos)
        scale = torch.empty(3, dtype=pos.dtype, device=pos.device).uniform_(
            self.low, self.high)
        data.pos = pos * scale
        if normal is not None:
            normal = normal / scale.to(normal.dtype)
            data.normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(
                1e-12)
        return data

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(low={self.low:.4g}, '
                f'high={self.high:.4g})')
