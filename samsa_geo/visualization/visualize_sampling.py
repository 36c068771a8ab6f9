"""One call from a model and a batch to pictures of what it sampled."""
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from samsa_geo.visualization.graphs import plot_sampled_graph, spring_layout
from samsa_geo.visualization.points import (
    _check_backend,
    _graph_membership,
    _head_panels,
    _write_ply,
    render_panels,
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
) -> Dict[str, Any]:
    r"""Runs :obj:`model` in eval mode on one :class:`~torch_geometric.data.Data`
    or batch while a :class:`SamplingRecorder` watches every
    :class:`~samsa_geo.nn.SamsaAttention`, then writes

    * :obj:`sampling_<layer>.ply` per layer: graph :obj:`graph_index`'s
      points, coloured by the heads that sampled them
      (:func:`write_sampling_ply`),
    * :obj:`sampling_panels.png`: one panel per selected layer and head
      (:func:`plot_sampled_points`),
    * :obj:`sampling_graph.png` if :obj:`data` has :obj:`edge_index`: the
      graph with nodes coloured by sampling counts
      (:func:`plot_sampled_graph`).

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

    Returns:
        :obj:`{'png': path, 'ply': {layer: path}, 'graph_png': path or None,
        'backend': backend used}`.
    """
    _check_backend(backend)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"Expected 'model' to be a torch.nn.Module "
                        f"(got {type(model).__name__})")
    forward_fn = forward_fn or _default_forward
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

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

    names = [n for n in recorder.module_names if n in recorder.records]
    chosen = _select_layers(names, layers)
    edge_index = getattr(data, 'edge_index', None)
    # A graph without coordinates is drawn in one 2-D layout, computed once
    # for the layers' point panels and the graph view.
    layout = None
    if getattr(data, 'pos', None) is None and isinstance(edge_index, Tensor):
        layout = spring_layout(edge_index, data.num_nodes)
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
                              panel_size, ncols, backend=backend)

    graph_png = None
    if isinstance(edge_index, Tensor):
        node_pos = getattr(data, 'pos', None) if layout is None else layout
        indices = recorder.indices
        graph_png = plot_sampled_graph(
            edge_index, {n: indices[n] for n in chosen},
            out_dir / 'sampling_graph.png', num_nodes=data.num_nodes,
            pos=node_pos)['png']
    return {'png': str(png), 'ply': ply, 'graph_png': graph_png,
            'backend': used}
