import math
from numbers import Integral

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from samsa_geo.transforms._utils import rotate


class RandomRotateZ(BaseTransform):
    r"""Rotates a point cloud about its up axis by an angle drawn uniformly
    from :math:`[0, 2\pi)` (the ":math:`z`" of the :math:`z/SO(3)`
    protocol).

    .. math::
        \mathbf{p}_i' = \mathbf{R}_a(\theta) \mathbf{p}_i, \qquad
        \theta \sim \mathcal{U}[0, 2\pi)

    :math:`\mathbf{R}_a(\theta)` is the rotation by :math:`\theta` about
    coordinate axis :math:`a`; normals in :obj:`data.normal` rotate along.
    The coordinate along the axis is unchanged.
    Note that PyG's Princeton :class:`~torch_geometric.datasets.ModelNet`
    meshes are :math:`z`-up (:obj:`axis=2`) while the
    :obj:`modelnet40_normal_resampled` and HDF5 archives are :math:`y`-up
    (:obj:`axis=1`).

    Args:
        axis (int, optional): The up axis, :obj:`0`, :obj:`1` or :obj:`2`.
            (default: :obj:`2`)

    Shapes:
        - **input:** :obj:`pos` :math:`(N, 3)`, optional :obj:`normal`
          :math:`(N, 3)`
        - **output:** same shapes
    """
    def __init__(self, axis: int = 2) -> None:
        # A bool or float equal to an axis (True == 1) is refused too.
        if isinstance(axis, bool) or not isinstance(axis, Integral):
            raise TypeError(f"Expected 'axis' to be 0, 1 or 2 "
                            f"(got {axis!r})")
        if axis not in (0, 1, 2):
            raise ValueError(f"Expected 'axis' to be 0, 1 or 2 "
                             f"(got {axis!r})")
        self.axis = int(axis)
        self.last_rotation = None

    def forward(self, data: Data) -> Data:
        theta = float(torch.rand(1, dtype=torch.float64)) * 2 * math.pi
        c, s = math.cos(theta), math.sin(theta)
        i, j = [a for a in (0, 1, 2) if a != self.axis]
        if self.axis == 1:  # keep a right-handed rotation about y
            i, j = j, i
        rot = torch.eye(3, dtype=torch.float64)
        rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
        self.last_rotation = rot
        return rotate(data, rot)

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(axis={self.axis})'
