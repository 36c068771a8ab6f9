"""Graphs with nodes coloured by how often the attention layers sampled them."""
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
from torch import Tensor

from samsa_geo.ops.validation import check_non_negative_int
from samsa_geo.visualization.colors import GREY
from samsa_geo.visualization.selection import sampling_membership
from samsa_geo.visualization.selection import to_numpy as _to_numpy

ArrayLike = Union[Tensor, np.ndarray]
PathLike = Union[str, os.PathLike]


def sampling_counts(
    indices: Union[ArrayLike, Mapping[str, ArrayLike]],
    num_nodes: int,
) -> np.ndarray:
    r"""Counts, for every node, how many (layer, head) pairs sampled it.

    Args:
        indices (torch.Tensor or dict): Global token indices
            :obj:`[num_graphs, heads, k_max]` of one layer, or a mapping from
            layer name to such tensors. Negative entries (unused slots,
            register tokens) and tokens :obj:`>= num_nodes` (e.g. edge tokens
            placed after the nodes) are not nodes and are skipped.
        num_nodes (int): Number of nodes :obj:`N`.

    Returns:
        Integer counts of shape :obj:`[N]`, each at most
        :obj:`sum(layer heads)`.
    """
    check_non_negative_int('num_nodes', num_nodes, integral=True)
    layers = dict(indices) if isinstance(indices, Mapping) else {'': indices}
    counts = np.zeros(num_nodes, dtype=np.int64)
    for name, idx in layers.items():
        idx = _to_numpy(idx, 'indices')
        if not np.issubdtype(idx.dtype, np.integer) or idx.ndim not in (2, 3):
            raise ValueError(f"Expected 'indices' to be an integer tensor of "
                             f"shape [num_graphs, heads, k_max] (got "
                             f"{idx.dtype} {list(idx.shape)})")
        if idx.ndim == 2:
            idx = idx[None]  # [1, heads, k_max]
        heads = idx.shape[1]
        flat = idx.transpose(1, 0, 2).reshape(heads, -1)  # [heads, G * k_max]
        flat = flat.astype(np.int64, copy=False)  # signed: -1 marks no node
        flat = np.where(flat < num_nodes, flat, -1)  # tokens after the nodes
        counts += sampling_membership(flat, num_nodes).sum(axis=1)
    return counts


def spring_layout(
    edge_index: ArrayLike,
    num_nodes: int,
    iterations: int = 50,
    seed: int = 0,
) -> np.ndarray:
    r"""A 2-D force-directed (Fruchterman-Reingold) layout of one graph by
    :func:`networkx.spring_layout`, centred and scaled into
    :math:`[-1, 1]^2`. Lay out each graph of a batch on its own: the layout
    of a disconnected union spends its area on the gaps between graphs.

    Args:
        edge_index (torch.Tensor): Edges of shape :obj:`[2, E]`.
        num_nodes (int): Number of nodes :obj:`N`.
        iterations (int, optional): Force iterations. (default: :obj:`50`)
        seed (int, optional): Seed of the initial positions.
            (default: :obj:`0`)

    Returns:
        Positions of shape :obj:`[N, 2]`.
    """
    import networkx as nx

    check_non_negative_int('num_nodes', num_nodes, integral=True)
    check_non_negative_int('iterations', iterations, integral=True)
    ei = _check_edge_index(edge_index, num_nodes)
    if num_nodes <= 1:
        return np.zeros((num_nodes, 2))
    graph = nx.Graph()
    graph.add_nodes_from(range(num_nodes))
    graph.add_edges_from(ei.T.tolist())
    xy = nx.spring_layout(graph, iterations=iterations, seed=seed)
    pos = np.array([xy[i] for i in range(num_nodes)], dtype=np.float64)
    return _normalise(pos)


def _normalise(pos: np.ndarray) -> np.ndarray:
    pos = pos - pos.mean(axis=0)
    scale = np.abs(pos).max()
    return pos / scale if scale > 0 else pos


def _check_edge_index(edge_index: ArrayLike, num_nodes: int) -> np.ndarray:
    ei = _to_numpy(edge_index, 'edge_index')
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"Expected 'edge_index' to have shape [2, E] "
                         f"(got {list(ei.shape)})")
    if ei.size > 0 and (ei.min() < 0 or ei.max() >= num_nodes):
        raise IndexError(f"Expected 'edge_index' to hold node indices in "
                         f"[0, {num_nodes}) (got [{int(ei.min())}, "
                         f"{int(ei.max())}])")
    return ei.astype(np.int64)


def plot_sampled_graph(
    edge_index: ArrayLike,
    indices: Union[ArrayLike, Mapping[str, ArrayLike]],
    out_png: PathLike,
    num_nodes: Optional[int] = None,
    pos: Optional[ArrayLike] = None,
    size: Tuple[int, int] = (640, 480),
    title: Optional[str] = None,
    cmap: str = 'viridis',
    node_size: float = 30.0,
) -> Dict[str, str]:
    r"""Draws a graph (or a batch of graphs) with its edges and its nodes
    coloured by how often they were sampled over all layers and heads
    (:func:`sampling_counts`); nodes never sampled are grey. Uses 3-D
    positions when :obj:`pos` is :obj:`[N, 3]`, :obj:`pos` itself when
    :obj:`[N, 2]`, and :func:`spring_layout` otherwise.

    Args:
        edge_index (torch.Tensor): Edges of shape :obj:`[2, E]`.
        indices (torch.Tensor or dict): Sampled global indices of one layer
            or a mapping from layer name to them.
        out_png (str): The PNG file to write.
        num_nodes (int, optional): Number of nodes; inferred from
            :obj:`pos` or :obj:`edge_index` if :obj:`None`.
            (default: :obj:`None`)
        pos (torch.Tensor, optional): Node positions :obj:`[N, 2]` or
            :obj:`[N, 3]`. (default: :obj:`None`)
        size (tuple of int, optional): :obj:`(width, height)` in pixels.
            (default: :obj:`(640, 480)`)
        title (str, optional): Figure title. (default: :obj:`None`)
        cmap (str, optional): Matplotlib colour map of the counts.
            (default: :obj:`"viridis"`)
        node_size (float, optional): Marker area. (default: :obj:`30.0`)

    Returns:
        :obj:`{'png': path, 'layout': '3d' | 'pos' | 'spring'}`.
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    pos, ei, num_nodes = _check_graph(edge_index, num_nodes, pos)
    width, height = (int(v) for v in size)
    if width < 16 or height < 16:
        raise ValueError(f"Expected 'size' to be at least (16, 16) "
                         f"(got {tuple(size)})")

    counts = sampling_counts(indices, num_nodes)
    if pos is None:
        xy, layout = spring_layout(ei, num_nodes), 'spring'
    else:
        xy, layout = pos, ('3d' if pos.shape[1] == 3 else 'pos')

    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    norm = Normalize(vmin=0, vmax=max(int(counts.max(initial=0)), 1))
    colors = colormaps[cmap](norm(counts))
    colors[counts == 0, :3] = GREY
    _draw_graph(fig, xy, ei, counts, colors, layout, node_size)
    cax = fig.add_axes((0.88, 0.1, 0.03, 0.75))
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax,
                 ticks=MaxNLocator(integer=True),
                 label='times sampled (layers x heads)')
    if title is not None:
        fig.suptitle(title, fontsize=10)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    return {'png': str(out_png), 'layout': layout}


def _check_graph(
    edge_index: ArrayLike, num_nodes: Optional[int],
    pos: Optional[ArrayLike],
) -> Tuple[Optional[np.ndarray], np.ndarray, int]:
    # The arguments of plot_sampled_graph checked: float64 'pos' (or None),
    # int64 edges [2, E] and the number of nodes.
    if num_nodes is not None:
        check_non_negative_int('num_nodes', num_nodes, integral=True)
    if pos is not None:
        pos = _to_numpy(pos, 'pos').astype(np.float64)
        if pos.ndim != 2 or pos.shape[1] not in (2, 3):
            raise ValueError(f"Expected 'pos' to have shape [N, 2] or "
                             f"[N, 3] (got {list(pos.shape)})")
        if num_nodes is not None and pos.shape[0] != num_nodes:
            raise ValueError(f"Expected 'pos' to have {num_nodes} rows "
                             f"(got {pos.shape[0]})")
        num_nodes = pos.shape[0]
    if num_nodes is None:
        ei = _to_numpy(edge_index, 'edge_index')
        num_nodes = int(ei.max()) + 1 if ei.size > 0 else 0
    return pos, _check_edge_index(edge_index, num_nodes), num_nodes


def _draw_graph(fig: Any, xy: np.ndarray, ei: np.ndarray,
                counts: np.ndarray, colors: np.ndarray, layout: str,
                node_size: float) -> None:
    # Edges in grey and nodes in their colours, in 3-D axes for a '3d'
    # layout, else in 2-D with the most sampled nodes on top.
    from matplotlib.collections import LineCollection

    segments = xy[ei.T]  # [E, 2, D]
    if layout == '3d':
        from mpl_toolkits.mplot3d.art3d import Line3DCollection
        ax = fig.add_axes((0.0, 0.0, 0.85, 0.92), projection='3d')
        ax.add_collection3d(Line3DCollection(segments, colors='0.6',
                                             linewidths=0.6))
        ax.scatter(xy[:, 0], xy[:, 1], xy[:, 2], c=colors, s=node_size,
                   depthshade=False, edgecolors='none')
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_zlim(lo[2], hi[2])
    else:
        ax = fig.add_axes((0.02, 0.02, 0.83, 0.9))
        ax.add_collection(LineCollection(segments, colors='0.6',
                                         linewidths=0.6, zorder=1))
        order = np.argsort(counts, kind='stable')  # sampled nodes on top
        ax.scatter(xy[order, 0], xy[order, 1], c=colors[order], s=node_size,
                   edgecolors='none', zorder=2)
        ax.set_aspect('equal', adjustable='datalim')
        ax.autoscale_view()
    ax.set_axis_off()
