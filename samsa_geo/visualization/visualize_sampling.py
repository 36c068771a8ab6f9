"""One call from a model and a batch to pictures of what it sampled."""
import os
import re
from pathlib import Path
from typing import (Any, Callable, Dict, List, Optional, Sequence, Tuple,
                    Union)

import numpy as np
import torch
from torch import Tensor

from samsa_geo.visualization.graphs import plot_sampled_graph, spring_layout
from samsa_geo.visualization.panels import head_panels as _head_panels
from samsa_geo.visualization.ply import write_ply as _write_ply
from samsa_geo.visualization.points import render_panels
from samsa_geo.visualization.renderers import check_backend as _check_backend
from samsa_geo.visualization.selection import (
    graph_membership as _graph_membership,
)
from samsa_geo.visualization.sampling_recorder import (
    SamplingRecord,
    SamplingRecorder,
)

PathLike = Union[str, os.PathLike]


def _default_forward(model: torch.nn.Module, data: Any) -> Any:
    return model(data.pos, getattr(data, 'batch', None),
                 x=getattr(data, 'x', None))


def _select_layers(names: List[str],
                   layers: Optional[Sequence[Union[int, str]]]) -> List[str]:
    if layers is None:
        return names
    chosen = []
    for layer in layers:
        if isinstance(layer, int):
            if not -len(names) <= layer < len(names):
                raise IndexError(f"Expected 'layers' to index one of the "
                                 f"{len(names)} recorded layers (got {layer})")
            chosen.append(names[layer])
        elif layer in names:
            chosen.append(layer)
        else:
            raise ValueError(f"Expected 'layers' to name recorded layers "
                             f"{names} (got '{layer}')")
    return chosen


def _tokens_of(record: SamplingRecord, data: Any, name: str,
               layout: Optional[np.ndarray] = None) -> tuple:
    # Positions of the layer's own tokens: the 'pos' it was called with,
    # else the data's points when the layer saw one token per point, else
    # the 2-D 'layout' of a graph without coordinates.
    batch = record.batch
    data_batch = getattr(data, 'batch', None)
    if (batch is None and isinstance(data_batch, Tensor)
            and record.num_tokens == data_batch.size(0)):
        batch = data_batch
    pos = record.pos
    if pos is not None and pos.dim() == 2 and pos.size(-1) in (2, 3):
        return pos, batch
    pos = getattr(data, 'pos', None)
    if isinstance(pos, Tensor) and pos.size(0) == record.num_tokens:
        return pos, batch
    if layout is not None and data.num_nodes == record.num_tokens:
        return torch.from_numpy(layout), batch
    raise ValueError(
        f"Expected layer '{name}' to attend over points with positions: it "
        f"was called without 'pos' and its {record.num_tokens} tokens match "
        f"neither 'data.pos' nor the nodes of 'data.edge_index'")


def _one_graph(data: Any, edge_index: Tensor,
               graph_index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Graph 'graph_index' of a batch: its global node ids [n], its edges in
    # local ids [2, e] and its node positions [n, P] (data.pos, else its own
    # spring layout).
    num_nodes = data.num_nodes
    batch = getattr(data, 'batch', None)
    if isinstance(batch, Tensor):
        num_graphs = int(batch.max()) + 1 if batch.numel() > 0 else 0
        nodes = np.flatnonzero(batch.cpu().numpy() == graph_index)
    else:
        num_graphs, nodes = 1, np.arange(num_nodes)
    if not 0 <= graph_index < num_graphs:
        raise IndexError(f"Expected 'graph_index' to be in [0, {num_graphs}) "
                         f"(got {graph_index})")
    local_of = np.full(num_nodes, -1, dtype=np.int64)
    local_of[nodes] = np.arange(nodes.shape[0])
    ei = local_of[edge_index.cpu().numpy()]  # [2, E]
    sub_edge_index = ei[:, (ei >= 0).all(axis=0)]  # [2, e]
    pos = getattr(data, 'pos', None)
    if isinstance(pos, Tensor):
        node_pos = pos[torch.from_numpy(nodes)].cpu().numpy()
    else:
        node_pos = spring_layout(sub_edge_index, nodes.shape[0])
    return nodes, sub_edge_index, node_pos


def visualize_sampling(
    model: torch.nn.Module,
    data: Any,
    out_dir: PathLike,
    layers: Optional[Sequence[Union[int, str]]] = None,
    heads: Optional[Sequence[int]] = None,
    backend: str = 'auto',
    forward_fn: Optional[Callable[[torch.nn.Module, Any], Any]] = None,
    graph_index: int = 0,
    panel_size: tuple = (320, 320),
    ncols: Optional[int] = None,
    title: Optional[str] = None,
) -> Dict[str, Any]:
    r"""Runs :obj:`model` in eval mode on one :class:`~torch_geometric.data.Data`
    or batch while a :class:`SamplingRecorder` watches every
    :class:`~samsa_geo.nn.SamsaAttention`, then writes

    * :obj:`sampling_<layer>.ply` per layer: graph :obj:`graph_index`'s
      points, coloured by the heads that sampled them
      (:func:`write_sampling_ply`),
    * :obj:`sampling_panels.png`: one panel per selected layer and head
      (:func:`plot_sampled_points`),
    * :obj:`sampling_graph.png` if :obj:`data` has :obj:`edge_index`: graph
      :obj:`graph_index` alone, with nodes coloured by sampling counts
      (:func:`plot_sampled_graph`).

    A graph without coordinates is drawn in its own 2-D
    :func:`spring_layout` (the other graphs of the batch are not laid out).

    Args:
        model (torch.nn.Module): A model containing SAMSA attention layers.
        data (torch_geometric.data.Data): One graph/cloud or a batch.
        out_dir (str): Folder for the files (created if needed).
        layers (list of int or str, optional): Layers to draw, by position in
            :meth:`named_modules` order or by module name; all if
            :obj:`None`. (default: :obj:`None`)
        heads (list of int, optional): Heads to draw; all if :obj:`None`.
            (default: :obj:`None`)
        backend (str, optional): :obj:`"auto"`, :obj:`"open3d"` or
            :obj:`"matplotlib"`. (default: :obj:`"auto"`)
        forward_fn (callable, optional): :obj:`forward_fn(model, data)` runs
            the model; by default
            :obj:`model(data.pos, data.batch, x=data.x)`. (default: :obj:`None`)
        graph_index (int, optional): Which graph of the batch to draw.
            (default: :obj:`0`)
        panel_size (tuple of int, optional): Pixels per panel.
            (default: :obj:`(320, 320)`)
        ncols (int, optional): Panels per row. (default: :obj:`None`)
        title (str, optional): A caption above the panels and the graph,
            e.g. the predicted and the true class. (default: :obj:`None`)

    Returns:
        :obj:`{'png': path, 'ply': {layer: path}, 'graph_png': path or None,
        'backend': backend used}`.
    """
    _check_backend(backend)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"Expected 'model' to be a torch.nn.Module "
                        f"(got {type(model).__name__})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorder = _record(model, data, forward_fn or _default_forward)

    names = [n for n in recorder.module_names if n in recorder.records]
    chosen = _select_layers(names, layers)
    edge_index = getattr(data, 'edge_index', None)
    graph = None
    layout = None  # 2-D positions of every node, for the point panels
    if isinstance(edge_index, Tensor):
        graph = _one_graph(data, edge_index, graph_index)
        if getattr(data, 'pos', None) is None:
            layout = np.zeros((data.num_nodes, 2))
            layout[graph[0]] = graph[2]
    ply: Dict[str, str] = {}
    panels = []
    for name in chosen:
        record = recorder.records[name][-1]
        pos, batch = _tokens_of(record, data, name, layout)
        points, member = _graph_membership(record.indices, pos, batch,
                                           graph_index)
        safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', name) or 'layer'
        path = _write_ply(out_dir / f'sampling_{safe}.ply', points, member,
                          comment=f'samsa_geo sampling of {name}')
        ply[name] = str(path)
        panels += _head_panels(name, points, member, heads)
    png, used = render_panels(panels, out_dir / 'sampling_panels.png',
                              panel_size, ncols, backend=backend,
                              caption=title)

    graph_png = None
    if graph is not None:
        graph_png = _plot_graph(recorder, chosen, data, graph, graph_index,
                                out_dir / 'sampling_graph.png', title)
    return {'png': str(png), 'ply': ply, 'graph_png': graph_png,
            'backend': used}


def _record(model: torch.nn.Module, data: Any,
            forward_fn: Callable[[torch.nn.Module, Any], Any],
            ) -> SamplingRecorder:
    # One forward pass in eval mode (the model's mode restored after it)
    # under a SamplingRecorder.
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), SamplingRecorder(model) as recorder:
            forward_fn(model, data)
    finally:
        model.train(was_training)
    if len(recorder.records) == 0:
        raise RuntimeError("No SamsaAttention layer ran during the forward "
                           "pass; check 'forward_fn'")
    return recorder


def _plot_graph(recorder: SamplingRecorder, chosen: List[str], data: Any,
                graph: Tuple[np.ndarray, np.ndarray, np.ndarray],
                graph_index: int, out_png: Path,
                title: Optional[str]) -> str:
    # plot_sampled_graph of graph 'graph_index' alone, with the sampled
    # indices of the chosen layers in its local node ids.
    nodes, sub_edge_index, node_pos = graph
    local_of = np.full(data.num_nodes, -1, dtype=np.int64)
    local_of[nodes] = np.arange(nodes.shape[0])
    local = {}
    for name in chosen:
        idx = recorder.indices[name].cpu().numpy().astype(np.int64)
        idx = idx[graph_index] if idx.ndim == 3 else idx  # [H, k_max]
        # Node tokens of this graph -> local ids; others (-1, registers,
        # edge tokens after the nodes) -> -1.
        node = (idx >= 0) & (idx < data.num_nodes)
        local[name] = np.where(node, local_of[np.where(node, idx, 0)], -1)
    return plot_sampled_graph(sub_edge_index, local, out_png,
                              num_nodes=nodes.shape[0], pos=node_pos,
                              title=title)['png']
