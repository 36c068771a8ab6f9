"""One graph cut out of a batch, and which head sampled which of its
points."""
import os
from typing import Optional, Tuple, Union

import numpy as np
from torch import Tensor

ArrayLike = Union[Tensor, np.ndarray]
PathLike = Union[str, os.PathLike]


def to_numpy(value: ArrayLike, name: str) -> np.ndarray:
    r"""The numpy array of a tensor (detached, on the CPU) or array
    :obj:`value`; raises a :class:`TypeError` naming :obj:`name` otherwise."""
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value
    raise TypeError(f"Expected '{name}' to be a torch.Tensor or numpy array "
                    f"(got {type(value).__name__})")


def check_pos(pos: ArrayLike) -> np.ndarray:
    r"""Positions :obj:`[N, 3]` in float64 from :obj:`pos` of shape
    :obj:`[N, 3]` or :obj:`[N, 2]` (planar points get :math:`z = 0`)."""
    pos = to_numpy(pos, 'pos').astype(np.float64)
    if pos.ndim != 2 or pos.shape[1] not in (2, 3):
        raise ValueError(f"Expected 'pos' to have shape [N, 3] or [N, 2] "
                         f"(got {list(pos.shape)})")
    if pos.shape[1] == 2:  # planar points lie in z = 0
        pos = np.concatenate([pos, np.zeros((pos.shape[0], 1))], axis=1)
    return pos


def select_graph(
    indices: ArrayLike,
    pos: ArrayLike,
    batch: Optional[ArrayLike] = None,
    graph_index: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    r"""Cuts one graph out of a batch and turns its global sampled indices
    into indices local to that graph.

    Args:
        indices (torch.Tensor): Global token indices of shape
            :obj:`[num_graphs, heads, k_max]` (or :obj:`[heads, k_max]` for a
            single graph); negative entries (unused slots, registers) are
            ignored.
        pos (torch.Tensor): Token positions of shape :obj:`[N, 3]`.
        batch (torch.Tensor, optional): Batch vector of shape :obj:`[N]`.
            (default: :obj:`None`)
        graph_index (int, optional): Which graph of the batch.
            (default: :obj:`0`)

    Returns:
        The graph's positions :obj:`[n, 3]` and local indices
        :obj:`[heads, k_max]`, with :obj:`-1` wherever no point was sampled.
    """
    pos = check_pos(pos)
    idx = to_numpy(indices, 'indices')
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"Expected 'indices' to have an integer dtype "
                        f"(got {idx.dtype})")
    if idx.ndim == 2:
        idx = idx[None]  # [1, heads, k_max]
    if idx.ndim != 3:
        raise ValueError(f"Expected 'indices' to have shape "
                         f"[num_graphs, heads, k_max] (got {list(idx.shape)})")
    num_graphs, num_nodes = idx.shape[0], pos.shape[0]
    if not 0 <= graph_index < num_graphs:
        raise IndexError(f"Expected 'graph_index' to be in [0, {num_graphs}) "
                         f"(got {graph_index})")
    if idx.size > 0 and idx.max() >= num_nodes:
        raise IndexError(f"Expected 'indices' to be smaller than the number "
                         f"of points {num_nodes} (got {int(idx.max())})")
    if batch is None:
        if num_graphs != 1:
            raise ValueError(f"Expected 'batch' for indices of {num_graphs} "
                             f"graphs (got None)")
        nodes = np.arange(num_nodes)
    else:
        batch = to_numpy(batch, 'batch').reshape(-1)
        if batch.shape[0] != num_nodes:
            raise ValueError(f"Expected 'batch' to have shape [{num_nodes}] "
                             f"(got {list(batch.shape)})")
        nodes = np.flatnonzero(batch == graph_index)

    local_of = np.full(num_nodes, -1, dtype=np.int64)
    local_of[nodes] = np.arange(nodes.shape[0])
    glob = idx[graph_index].astype(np.int64)  # [heads, k_max]
    valid = glob >= 0
    local = np.full(glob.shape, -1, dtype=np.int64)
    local[valid] = local_of[glob[valid]]
    if (local[valid] < 0).any():
        raise ValueError(f"Expected the indices of graph {graph_index} to "
                         f"point into graph {graph_index} only")
    return pos[nodes], local


def sampling_membership(local_indices: np.ndarray,
                        num_points: int) -> np.ndarray:
    r"""Boolean matrix :obj:`[num_points, heads]`: which head sampled which
    point. :obj:`local_indices` has shape :obj:`[heads, k_max]`; negative
    entries are ignored."""
    heads = local_indices.shape[0]
    member = np.zeros((num_points, heads), dtype=bool)
    for h in range(heads):
        sel = local_indices[h]
        member[sel[sel >= 0], h] = True
    return member


def graph_membership(
    indices: ArrayLike,
    pos: ArrayLike,
    batch: Optional[ArrayLike],
    graph_index: int,
) -> Tuple[np.ndarray, np.ndarray]:
    r"""One graph's points :obj:`[n, 3]` (see :func:`select_graph`) and
    which head sampled which point :obj:`[n, heads]` (see
    :func:`sampling_membership`)."""
    points, local = select_graph(indices, pos, batch, graph_index)
    return points, sampling_membership(local, points.shape[0])
