from typing import Optional, Tuple

import torch
from torch import Tensor
from torch_geometric.data import Data

from samsa_geo.ops.validation import (
    check_edge_index,
    check_float_tensor,
    check_node_indices,
    check_tensor,
)


def check_weighted_graph(data: Data) -> Tuple[Tensor, int, Optional[Tensor]]:
    r"""Returns :obj:`data.edge_index`, the number of nodes :math:`N` and
    :obj:`data.edge_weight` (:obj:`None` if unset) after checking that
    :obj:`data.edge_index` is an integer tensor of shape :obj:`[2, E]` of
    node indices in :math:`[0, N)` and :obj:`data.edge_weight` a tensor of
    shape :obj:`[E]` of finite non-negative values."""
    if data.edge_index is None:
        raise ValueError("Expected 'data.edge_index' to be set (got None)")
    edge_index = check_edge_index(data.edge_index, 'data.edge_index')
    num_nodes = int(data.num_nodes or 0)
    check_node_indices(edge_index, num_nodes, 'data.edge_index')
    weight = data.edge_weight if 'edge_weight' in data else None
    if weight is None:
        return edge_index, num_nodes, None
    num_edges = edge_index.size(1)
    if check_tensor('data.edge_weight', weight).shape != (num_edges, ):
        raise ValueError(f"Expected 'data.edge_weight' to have shape "
                         f"[{num_edges}] (got {list(weight.shape)})")
    if weight.numel() > 0 and not bool(
            (torch.isfinite(weight) & (weight >= 0)).all()):
        raise ValueError("Expected 'data.edge_weight' to hold finite "
                         "non-negative values")
    return edge_index, num_nodes, weight


def check_pos(data: Data) -> Tensor:
    r"""Returns :obj:`data.pos` after checking it is a floating-point tensor
    of shape :obj:`[N, 3]` (integer coordinates would be truncated by a
    rotation or scaling)."""
    pos = getattr(data, 'pos', None)
    if pos is None:
        raise ValueError("Expected 'data' to have a 'pos' attribute "
                         "(got None)")
    check_tensor('pos', pos)
    if pos.dim() != 2 or pos.size(-1) != 3:
        raise ValueError(f"Expected 'pos' to have shape [N, 3] "
                         f"(got {list(pos.size())})")
    check_float_tensor('pos', pos)
    return pos


def check_normal(data: Data, pos: Tensor) -> Optional[Tensor]:
    r"""Returns :obj:`data.normal` (or :obj:`None`) after checking it is a
    floating-point tensor of the shape of :obj:`pos`."""
    normal = getattr(data, 'normal', None)
    if normal is None:
        return None
    check_tensor('normal', normal)
    if normal.size() != pos.size():
        raise ValueError(f"Expected 'normal' to have the shape of 'pos' "
                         f"{list(pos.size())} (got {list(normal.size())})")
    check_float_tensor('normal', normal)
    return normal


def rotate(data: Data, rot: Tensor) -> Data:
    r"""Rotates :obj:`data.pos` and, if present, :obj:`data.normal` by the
    rotation matrix :obj:`rot` of shape :obj:`[3, 3]` (points are rows, so
    :math:`\mathbf{p}' = \mathbf{R} \mathbf{p}` reads :obj:`pos @ rot.T`)."""
    pos = check_pos(data)
    normal = check_normal(data, pos)
    data.pos = pos @ rot.to(pos.device, pos.dtype).t()
    if normal is not None:
        data.normal = normal @ rot.to(normal.device, normal.dtype).t()
    return data


def select_points(data: Data, index: Tensor) -> Data:
    r"""Keeps the points :obj:`index` (ascending, distinct) in every
    per-point attribute of :obj:`data` (the attributes whose first dimension
    is the number of points), leaving graph-level attributes such as
    :obj:`y` untouched. Edges in :obj:`data.edge_index` are kept when both
    their ends are kept, re-indexed to the new point order, and so are the
    rows of the per-edge attributes (:obj:`edge_attr`, ...)."""
    num_nodes = data.num_nodes
    # Decide every key first: 'num_nodes' is inferred from the attributes.
    edge_index = data.edge_index if 'edge_index' in data else None
    edge_keys = []
    if edge_index is not None:
        check_edge_index(edge_index)
        check_node_indices(edge_index, num_nodes)
        edge_keys = [
            key for key, value in data.items()
            if key != 'edge_index' and isinstance(value, Tensor)
            and value.dim() > 0 and value.size(0) == edge_index.size(1)
            and data.is_edge_attr(key)
        ]
    for key in data.keys():
        # The other attributes that PyG's batching offsets as node indices
        # would point at removed points.
        if key != 'edge_index' and ('index' in key or key == 'face'):
            raise ValueError(f"Expected 'data.{key}' to be absent when "
                             f"points are removed (only 'edge_index' is "
                             f"re-indexed)")
    keys = [
        key for key, value in data.items()
        if key != 'num_nodes' and isinstance(value, Tensor) and value.dim() > 0
        and value.size(0) == num_nodes and 'edge' not in key
        and key not in edge_keys and data.is_node_attr(key)
    ]
    for key in keys:
        data[key] = data[key][index]
    if edge_index is not None:
        # new_id[i]: position of point i among the kept ones, -1 if removed.
        new_id = torch.full((num_nodes, ), -1, dtype=torch.long,
                            device=edge_index.device)
        new_id[index.to(edge_index.device)] = torch.arange(
            index.numel(), device=edge_index.device)
        edge_index = new_id[edge_index]  # [2, E]
        kept = (edge_index >= 0).all(dim=0)  # [E]
        data.edge_index = edge_index[:, kept]
        for key in edge_keys:
            data[key] = data[key][kept.to(data[key].device)]
    if 'num_nodes' in data:
        data.num_nodes = int(index.numel())
    return data


def random_rotation_matrix(generator: torch.Generator = None) -> Tensor:
    r"""Draws a rotation uniformly (Haar measure) from :math:`SO(3)` by
    normalising a standard Gaussian quaternion."""
    q = torch.randn(4, generator=generator, dtype=torch.float64)
    q = q / q.norm()
    w, x, y, z = q.tolist()
    return torch.tensor([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ], dtype=torch.float64)
