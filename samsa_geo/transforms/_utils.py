import torch
from torch import Tensor
from torch_geometric.data import Data


def check_pos(data: Data) -> Tensor:
    r"""Returns :obj:`data.pos` after checking it has shape :obj:`[N, 3]`."""
    pos = getattr(data, 'pos', None)
    if pos is None:
        raise ValueError("Expected 'data' to have a 'pos' attribute "
                         "(got None)")
    if pos.dim() != 2 or pos.size(-1) != 3:
        raise ValueError(f"Expected 'pos' to have shape [N, 3] "
                         f"(got {list(pos.size())})")
    return pos


def rotate(data: Data, rot: Tensor) -> Data:
    r"""Rotates :obj:`data.pos` and, if present, :obj:`data.normal` by the
    rotation matrix :obj:`rot` of shape :obj:`[3, 3]` (points are rows, so
    :math:`\mathbf{p}' = \mathbf{R} \mathbf{p}` reads :obj:`pos @ rot.T`)."""
    pos = check_pos(data)
    rot = rot.to(pos.dtype)
    data.pos = pos @ rot.t()
    normal = getattr(data, 'normal', None)
    if normal is not None:
        if normal.size() != pos.size():
            raise ValueError(f"Expected 'normal' to have the shape of 'pos' "
                             f"{list(pos.size())} (got {list(normal.size())})")
        data.normal = normal @ rot.to(normal.dtype).t()
    return data


def select_points(data: Data, index: Tensor) -> Data:
    r"""Keeps the points :obj:`index` in every per-point attribute of
    :obj:`data` (the attributes whose first dimension is the number of
    points), leaving graph-level attributes such as :obj:`y` untouched."""
    num_nodes = data.num_nodes
    # Decide every key first: 'num_nodes' is inferred from the attributes.
    keys = [
        key for key, value in data.items()
        if key != 'num_nodes' and isinstance(value, Tensor) and value.dim() > 0
        and value.size(0) == num_nodes and 'edge' not in key
        and data.is_node_attr(key)
    ]
    for key in keys:
        data[key] = data[key][index]
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
