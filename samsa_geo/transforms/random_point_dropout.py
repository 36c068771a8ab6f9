import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from samsa_geo.ops.validation import check_number
from samsa_geo.transforms._utils import select_points


class RandomPointDropout(BaseTransform):
    r"""Removes a random subset of points, the point-dropout augmentation of
    PointNet++.

    .. math::
        r \sim \mathcal{U}[0, r_{\max}], \qquad
        \text{point } i \text{ kept iff } u_i \geq r, \;
        u_i \sim \mathcal{U}[0, 1)

    Every per-point attribute (:obj:`pos`, :obj:`normal`, :obj:`x`,
    per-point :obj:`y`, ...) loses the same rows, so they stay aligned;
    graph-level attributes (a shape label :obj:`y` of size 1, a
    :obj:`category`) are kept. Edges of :obj:`edge_index` survive when both
    their ends do, re-indexed, with their per-edge attributes
    (:obj:`edge_attr`, ...); other node-index attributes (:obj:`face`,
    :obj:`*_index`) raise a :class:`ValueError`. At least one point always
    survives.
    Unlike the original, which overwrites dropped points with the first
    point to keep :math:`N` fixed, points are removed: PyG batches clouds of
    different sizes without padding.

    Args:
        max_ratio (float, optional): Largest dropout ratio :math:`r_{\max}`
            in :math:`[0, 1)`. (default: :obj:`0.875`)

    Shapes:
        - **input:** per-point attributes :math:`(N, *)`
        - **output:** per-point attributes :math:`(N', *)`,
          :math:`1 \leq N' \leq N`
    """
    def __init__(self, max_ratio: float = 0.875) -> None:
        check_number('max_ratio', max_ratio)
        if not 0 <= max_ratio < 1:  # also refuses NaN
            raise ValueError(f"Expected 'max_ratio' in [0, 1) "
                             f"(got {max_ratio})")
        self.max_ratio = max_ratio

    def forward(self, data: Data) -> Data:
        num_nodes = data.num_nodes
        if num_nodes is None or num_nodes == 0:
            raise ValueError("Expected 'data' to hold at least one point "
                             f"(got num_nodes={num_nodes})")
        ratio = float(torch.rand(1)) * self.max_ratio
        keep = torch.rand(num_nodes) >= ratio
        if not bool(keep.any()):
            keep[torch.randint(num_nodes, (1, ))] = True
        return select_points(data, keep.nonzero().view(-1))

    def __repr__(self) -> str:
        return f'{self.__class__.__name__}(max_ratio={self.max_ratio})'
