from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from samsa_geo.transforms._utils import random_rotation_matrix, rotate


class RandomRotateSO3(BaseTransform):
    r"""Rotates a point cloud by a rotation drawn uniformly from
    :math:`SO(3)`, as used by the rotation-invariance protocol
    (train aligned, test on :math:`SO(3)`-rotated shapes).

    .. math::
        \mathbf{p}_i' = \mathbf{R} \mathbf{p}_i, \qquad
        \mathbf{n}_i' = \mathbf{R} \mathbf{n}_i, \qquad
        \mathbf{R} \sim \mathrm{Haar}(SO(3))

    :math:`\mathbf{R}` is the rotation of the unit quaternion
    :math:`\mathbf{q} / \|\mathbf{q}\|` with :math:`\mathbf{q} \sim
    \mathcal{N}(\mathbf{0}, \mathbf{I}_4)`, which is uniform on
    :math:`SO(3)`. Points :math:`\mathbf{p}_i` are rows of :obj:`data.pos`;
    normals :math:`\mathbf{n}_i` are rows of :obj:`data.normal` (if present).
    The rotation drawn last is kept in :obj:`self.last_rotation` (float64).
    Randomness comes from :obj:`torch`'s global generator (seed it with
    :obj:`torch.manual_seed`).

    Shapes:
        - **input:** :obj:`pos` :math:`(N, 3)`, optional :obj:`normal`
          :math:`(N, 3)`
        - **output:** same shapes
    """
    def __init__(self) -> None:
        self.last_rotation = None

    def forward(self, data: Data) -> Data:
        self.last_rotation = random_rotation_matrix()
        return rotate(data, self.last_rotation)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}()'
