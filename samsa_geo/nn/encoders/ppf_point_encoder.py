from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import GELU, LayerNorm, Linear, Module, Sequential
from torch_geometric.nn.inits import reset
from torch_geometric.utils import scatter

from samsa_geo.nn.attention import config
from samsa_geo.nn.encoders._point_geometry import (
    centroid,
    check_points,
    geometry_dtype,
    safe_cos,
    safe_norm,
    traced_knn_table,
    traces_knn,
)
from samsa_geo.ops import knn_neighbours, layer_norm, value_checks
from samsa_geo.ops.validation import (
    check_edge_index,
    check_node_indices,
    check_non_negative_int,
    check_positive_int,
)


class PPFPointEncoder(Module):
    r"""Rotation-invariant local point tokens from point-pair features
    (`"Model Globally, Match Locally" <https://doi.org/10.1109/CVPR.2010.
    5540108>`_) of every point's :math:`k`-nearest-neighbourhood, pooled by
    an MLP and a maximum as in PointNet:

    .. math::
        \mathbf{t}_i = \mathbf{W}_{\mathrm{out}} \max_{j \in \mathcal{N}(i)}
        \mathrm{MLP}(\mathbf{f}_{ij}),

    where :math:`\mathcal{N}(i)` holds the :math:`k` nearest points of
    :math:`i` (itself included) and, with :math:`\mathbf{d} = \mathbf{p}_j -
    \mathbf{p}_i`, the local centroid :math:`\mathbf{m}_i` of
    :math:`\mathcal{N}(i)`, :math:`\mathbf{a} = \mathbf{p}_i -
    \mathbf{m}_i`, :math:`\mathbf{b} = \mathbf{p}_j - \mathbf{m}_i` and the
    cloud centroid :math:`\mathbf{c}`, :math:`\mathbf{u}_i = \mathbf{p}_i -
    \mathbf{c}`, the 12 features are

    .. math::
        \mathbf{f}_{ij} = \big(\Vert\mathbf{d}\Vert, \Vert\mathbf{a}\Vert,
        \Vert\mathbf{b}\Vert, \cos\angle(\mathbf{a}, \mathbf{d}),
        \cos\angle(\mathbf{a}, \mathbf{b}), \Vert\mathbf{u}_i\Vert,
        \Vert\mathbf{u}_j\Vert, \cos\angle(\mathbf{u}_i, \mathbf{d}),
        \cos\angle(\mathbf{n}_i, \mathbf{d}), \cos\angle(\mathbf{n}_j,
        \mathbf{d}), \mathbf{n}_i^\top\mathbf{n}_j, \cos\angle(\mathbf{n}_i,
        \mathbf{u}_i)\big).

    The last four are the point-pair features of the normals
    :math:`\mathbf{n}` (zero without normals); without normals the
    neighbourhood is described by distances and angles to its centroid.
    Angles enter as cosines with norms :math:`\sqrt{\Vert\cdot\Vert^2 +
    10^{-12}}`, so that zero vectors give :math:`0` instead of NaN.

    **Invariance.** The output is invariant to rotations in :math:`SO(3)`
    (in fact :math:`O(3)`) applied to ``pos`` and ``normal`` together, to
    translations of ``pos``, and equivariant to permutations of the points
    (exactly, unless two neighbours tie at distance rank :math:`k`). Tests
    check :math:`\Vert f(\mathbf{P}\mathbf{R}^\top + \mathbf{t}) -
    f(\mathbf{P})\Vert_\infty < 10^{-4}` in float32 for random
    :math:`\mathbf{R}` from the QR decomposition of a Gaussian matrix
    (:math:`\det \mathbf{R} = +1`). Degenerate clouds (a repeated point,
    collinear or planar points, duplicates) give finite outputs and
    gradients.

    Args:
        channels (int): Token width :math:`C`.
        num_neighbors (int, optional): Neighbourhood size :math:`k`
            (fewer in clouds with fewer points). (default: :obj:`16`)
        hidden_channels (int, optional): Width of the edge MLP;
            :obj:`None` for ``channels``. (default: :obj:`None`)

    Shapes:
        - **input:** ``pos`` :math:`(N, 3)`, ``batch`` :math:`(N)` sorted,
          ``normal`` :math:`(N, 3)`, ``edge_index`` :math:`(2, E)`
          (optional precomputed neighbourhoods, :obj:`edge_index[1]` the
          centre, as :func:`samsa_geo.ops.knn_graph` with ``loop=True``;
          its indices checked to lie in :math:`[0, N)` on the CPU and in
          debug mode, see :func:`~samsa_geo.nn.attention.config.set_debug`)
        - **output:** :math:`(N, C)` (:math:`(0, C)` for no point)
    """
    num_features: int = 12

    def __init__(
        self,
        channels: int,
        num_neighbors: int = 16,
        hidden_channels: Optional[int] = None,
    ) -> None:
        super().__init__()
        check_positive_int('channels', channels)
        check_positive_int('num_neighbors', num_neighbors)
        if hidden_channels is not None:  # 0, as None, gives channels
            check_non_negative_int('hidden_channels', hidden_channels)
        hidden_channels = hidden_channels or channels
        self.channels = channels
        self.num_neighbors = num_neighbors
        self.hidden_channels = hidden_channels
        self.edge_nn = Sequential(
            Linear(self.num_features, hidden_channels),
            LayerNorm(hidden_channels),
            GELU(),
            Linear(hidden_channels, hidden_channels),
        )
        self.lin_out = Linear(hidden_channels, channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        reset(self.edge_nn)
        self.lin_out.reset_parameters()

    def features(self, pos: Tensor, batch: Tensor, num_clouds: int,
                 edge_index: Tensor,
                 normal: Optional[Tensor] = None) -> Tensor:
        r"""The point-pair features :math:`\mathbf{f}_{ij}` of every edge
        :math:`j \to i`, shape :math:`(E, 12)`, computed in at least float32
        (:func:`geometry_dtype`)."""
        dtype = geometry_dtype(pos)
        pos = pos.to(dtype)
        normal = None if normal is None else normal.to(dtype)
        N = pos.size(0)
        j, i = edge_index
        p_i, p_j = pos[i], pos[j]  # [E, 3]
        m = scatter(p_j, i, dim=0, dim_size=N, reduce='mean')[i]  # [E, 3]
        u = pos - centroid(pos, batch, num_clouds)[batch]  # [N, 3]
        u_norm = safe_norm(u)  # [N]
        n_i = n_j = None
        if normal is not None:
            n_i, n_j = normal[i], normal[j]
        feats = _pair_features(p_i, p_j, m, u[i], u_norm[i], u[j],
                               u_norm[j], n_i, n_j)
        if normal is None:
            feats += [torch.zeros_like(feats[0])] * 4
        return torch.stack(feats, dim=-1)  # [E, 12]

    def neighbourhood_features(self, pos: Tensor, batch: Tensor,
                               num_clouds: int, nbr: Tensor,
                               normal: Optional[Tensor] = None) -> Tensor:
        r"""The point-pair features of the neighbourhoods given as a table
        :obj:`nbr` :math:`(N, k)` (row :math:`i` the points :math:`j` of
        :math:`\mathcal{N}(i)`, :obj:`-1` padded, as
        :func:`~samsa_geo.ops.knn_neighbours`), shape :math:`(N, k, 12)`,
        or :math:`(N, k, 8)` without normals (the four normal features,
        zeros, left out). Padded slots repeat the first neighbour, which
        leaves a maximum over the neighbourhood unchanged."""
        dtype = geometry_dtype(pos)
        pos = pos.to(dtype)
        valid = nbr >= 0  # [N, k]
        nbr = torch.where(valid, nbr, nbr[:, :1])
        p_j = pos[nbr]  # [N, k, 3]
        m = (p_j * valid.unsqueeze(-1)).sum(1, keepdim=True) / \
            valid.sum(1).view(-1, 1, 1)  # [N, 1, 3]
        u = pos - centroid(pos, batch, num_clouds)[batch]  # [N, 3]
        u_norm = safe_norm(u)  # [N]
        n_i = n_j = None
        if normal is not None:
            normal = normal.to(dtype)
            n_i, n_j = normal.unsqueeze(1), normal[nbr]  # [N, 1|k, 3]
        feats = _pair_features(pos.unsqueeze(1), p_j, m, u.unsqueeze(1),
                               u_norm.unsqueeze(1), u[nbr], u_norm[nbr],
                               n_i, n_j)
        return torch.stack(torch.broadcast_tensors(*feats), dim=-1)

    def forward(
        self,
        pos: Tensor,
        batch: Optional[Tensor] = None,
        normal: Optional[Tensor] = None,
        edge_index: Optional[Tensor] = None,
    ) -> Tensor:
        batch, B, _ = check_points(pos, batch, normal)
        if edge_index is not None:
            check_edge_index(edge_index)
            if config.checks_values(pos.device):  # reads the device back
                check_node_indices(edge_index, pos.size(0))
        return self.encode(pos, batch, B, normal, edge_index)

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
        validated (``batch`` given and sorted, ``num_clouds`` clouds): the
        entry point of a model that checked its points once.

        Without ``edge_index``, the neighbourhoods come as a table
        (:func:`~samsa_geo.ops.knn_neighbours`) and are pooled as a dense
        :math:`(N, k, \cdot)` block (no scatter, and on the GPU no wait
        for the device unless in debug mode). Traced on the CPU or
        exported, the table is ranked by brute force with shapes known in
        advance, per cloud padded to ``max_num_points`` (the largest
        cloud's size) if given, else over all :math:`N` points."""
        dtype = self.lin_out.weight.dtype
        if edge_index is None:
            # Ranked in float32 at least: 16-bit squared distances overflow.
            points = pos.detach().to(geometry_dtype(pos))
            if traces_knn(pos):  # no size read back
                nbr = traced_knn_table(points, batch, self.num_neighbors,
                                       num_clouds, max_num_points)
            elif pos.size(0) == 0:  # no cloud to rank in: an empty table
                nbr = batch.new_empty(0, self.num_neighbors)
            else:
                with value_checks(config.checks_values(pos.device)):
                    nbr = knn_neighbours(points, points, self.num_neighbors,
                                         batch, batch, num_clouds)  # [N, k]
            f = self.neighbourhood_features(pos, batch, num_clouds, nbr,
                                            normal).to(dtype)
            first = self.edge_nn[0]  # the features left out are zeros
            h = F.linear(f, first.weight[:, :f.size(-1)], first.bias)
            for module in list(self.edge_nn)[1:]:
                if isinstance(module, LayerNorm):  # N k narrow rows
                    h = layer_norm(h, module.weight, module.bias, module.eps)
                else:
                    h = module(h)  # [N, k, hidden]
            return self.lin_out(h.amax(dim=1))
        f = self.features(pos, batch, num_clouds, edge_index, normal).to(dtype)
        h = self.edge_nn(f)  # [E, hidden]
        h = scatter(h, edge_index[1], dim=0, dim_size=pos.size(0),
                    reduce='max')  # [N, hidden]
        return self.lin_out(h)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}({self.channels}, '
                f'num_neighbors={self.num_neighbors})')


def _pair_features(p_i: Tensor, p_j: Tensor, m: Tensor, u_i: Tensor,
                   u_i_norm: Tensor, u_j: Tensor, u_j_norm: Tensor,
                   n_i: Optional[Tensor],
                   n_j: Optional[Tensor]) -> List[Tensor]:
    # The features of PPFPointEncoder (8 without normals, 12 with them) of
    # broadcastable pairs: the norms computed once and shared by the
    # cosines, whose arithmetic is that of safe_cos.
    d = p_j - p_i
    a, b = p_i - m, p_j - m
    d_norm, a_norm, b_norm = safe_norm(d), safe_norm(a), safe_norm(b)
    feats = [
        d_norm, a_norm, b_norm,
        _dot(a, d) / (a_norm * d_norm), _dot(a, b) / (a_norm * b_norm),
        u_i_norm, u_j_norm, _dot(u_i, d) / (u_i_norm * d_norm),
    ]
    if n_i is not None and n_j is not None:
        feats += [safe_cos(n_i, d), safe_cos(n_j, d), safe_cos(n_i, n_j),
                  safe_cos(n_i, u_i)]
    return feats


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)
