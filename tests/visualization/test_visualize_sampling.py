import importlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch_geometric.data import Data
from torch_geometric.nn import GCNConv

from samsa_geo.nn import SamsaConv
from samsa_geo.visualization import (
    SamplingRecorder,
    read_ply_colors,
    visualize_sampling,
)
from samsa_geo.visualization.colors import GREY


def _coloured(path):
    _, rgb = read_ply_colors(path)
    grey = np.round(np.asarray(GREY) * 255)
    return set(np.flatnonzero((rgb != grey).any(axis=1)).tolist())


def test_visualize_sampling(tmp_path, point_model, point_batch):
    point_model.train()
    out = visualize_sampling(point_model, point_batch, tmp_path,
                             backend='matplotlib', graph_index=1,
                             panel_size=(120, 100), ncols=3)
    assert point_model.training  # mode restored
    assert out['backend'] == 'matplotlib' and out['graph_png'] is None
    assert list(out['ply']) == ['attns.0', 'attns.1', 'conv.attn']
    img = np.asarray(Image.open(out['png']).convert('RGB'))
    assert img.shape == (2 * 100, 3 * 120, 3)  # 2 + 3 + 1 heads

    point_model.eval()
    with torch.no_grad(), SamplingRecorder(point_model) as rec:
        point_model(point_batch.pos, point_batch.batch)
    for name, path in out['ply'].items():
        idx = rec.indices[name][1]
        expected = set((idx[idx >= 0] - 40).tolist())
        assert _coloured(path) == expected


def test_layer_and_head_selection(tmp_path, point_model, point_batch):
    calls = []

    def forward_fn(model, data):
        calls.append(1)
        return model(data.pos, data.batch)

    out = visualize_sampling(point_model, point_batch, tmp_path,
                             layers=[1, 'conv.attn'], heads=[0],
                             backend='matplotlib', forward_fn=forward_fn,
                             panel_size=(80, 80))
    assert calls == [1]
    assert list(out['ply']) == ['attns.1', 'conv.attn']
    assert Image.open(out['png']).size == (2 * 80, 80)
    with pytest.raises(ValueError, match="'layers'"):
        visualize_sampling(point_model, point_batch, tmp_path,
                           layers=['nope'], backend='matplotlib')
    with pytest.raises(IndexError, match="'layers'"):
        visualize_sampling(point_model, point_batch, tmp_path, layers=[5],
                           backend='matplotlib')


class GraphModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SamsaConv(8, GCNConv(8, 8), heads=2, k=4)

    def forward(self, x, edge_index):
        return self.conv(x, edge_index)


def test_graph_without_positions(tmp_path):
    src = torch.arange(15)
    edge_index = torch.cat([torch.stack([src, (src + 1) % 15]),
                            torch.stack([(src + 1) % 15, src])], dim=1)
    data = Data(x=torch.randn(15, 8), edge_index=edge_index)
    out = visualize_sampling(
        GraphModel(), data, tmp_path, backend='matplotlib',
        forward_fn=lambda m, d: m(d.x, d.edge_index), panel_size=(64, 64))
    assert Image.open(out['graph_png']).size == (640, 480)
    assert len(_coloured(out['ply']['conv.attn'])) >= 4


def _count_calls(monkeypatch, name, *modules):
    # Wraps function 'name' in the given samsa_geo.visualization modules so
    # that every call appends to the returned list.
    modules = [importlib.import_module(f'samsa_geo.visualization.{m}')
               for m in modules]
    calls, original = [], getattr(modules[0], name)

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    for module in modules:
        monkeypatch.setattr(module, name, counting)
    return calls


def test_graph_layout_computed_once(tmp_path, monkeypatch):
    # The spring layout of a graph without coordinates is computed once for
    # all layers and the graph view, and draws the picture
    # plot_sampled_graph draws with its own layout.
    from samsa_geo.visualization import plot_sampled_graph
    calls = _count_calls(monkeypatch, 'spring_layout', 'visualize_sampling',
                         'graphs')

    class TwoLayers(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = SamsaConv(8, GCNConv(8, 8), heads=2, k=4)
            self.b = SamsaConv(8, GCNConv(8, 8), heads=2, k=4)

        def forward(self, x, edge_index):
            return self.b(self.a(x, edge_index), edge_index)

    torch.manual_seed(0)
    src = torch.arange(12)
    edge_index = torch.cat([torch.stack([src, (src + 1) % 12]),
                            torch.stack([(src + 1) % 12, src])], dim=1)
    data = Data(x=torch.randn(12, 8), edge_index=edge_index)
    model = TwoLayers()
    out = visualize_sampling(
        model, data, tmp_path / 'vis', backend='matplotlib',
        forward_fn=lambda m, d: m(d.x, d.edge_index), panel_size=(64, 64))
    assert len(calls) == 1
    assert len(out['ply']) == 2

    model.eval()
    with torch.no_grad(), SamplingRecorder(model) as rec:
        model(data.x, data.edge_index)
    ref = plot_sampled_graph(edge_index, rec.indices, tmp_path / 'ref.png',
                             num_nodes=12)
    assert ref['layout'] == 'spring'
    np.testing.assert_array_equal(np.asarray(Image.open(out['graph_png'])),
                                  np.asarray(Image.open(ref['png'])))


def test_membership_once_per_layer(tmp_path, monkeypatch, point_model,
                                   point_batch):
    # One membership matrix per layer feeds both the PLY file and the panels,
    # and the files equal those of the public functions.
    from samsa_geo.visualization import write_sampling_ply
    from samsa_geo.visualization.panels import make_point_panels
    calls = _count_calls(monkeypatch, 'sampling_membership', 'selection')
    out = visualize_sampling(point_model, point_batch, tmp_path / 'vis',
                             backend='matplotlib', graph_index=1,
                             heads=[0], panel_size=(64, 64))
    assert len(calls) == 3  # one per layer
    monkeypatch.undo()

    with torch.no_grad(), SamplingRecorder(point_model) as rec:
        point_model(point_batch.pos, point_batch.batch)
    for name, path in out['ply'].items():
        ref = write_sampling_ply(tmp_path / f'{name}.ply', point_batch.pos,
                                 rec.indices[name], point_batch.batch, 1,
                                 comment=f'samsa_geo sampling of {name}')
        assert open(path, 'rb').read() == open(ref, 'rb').read()
    panels = make_point_panels(point_batch.pos, rec.indices, point_batch.batch,
                               1, [0])
    assert len(panels) == 3
    assert panels[1].title.startswith('attns.1 head 0 (')


def test_one_graph_of_a_batch(tmp_path, monkeypatch):
    """In a 16-graph batch without coordinates, graph_index selects one
    graph: it alone is laid out (on its own) and drawn, with its own
    sampled nodes."""
    from torch_geometric.data import Batch

    module = importlib.import_module(
        'samsa_geo.visualization.visualize_sampling')
    layouts, drawn = [], []
    spring, plot = module.spring_layout, module.plot_sampled_graph

    def spy_layout(edge_index, num_nodes, **kwargs):
        layouts.append(num_nodes)
        return spring(edge_index, num_nodes, **kwargs)

    def spy_plot(edge_index, indices, out_png, **kwargs):
        drawn.append((edge_index, indices, kwargs))
        return plot(edge_index, indices, out_png, **kwargs)

    monkeypatch.setattr(module, 'spring_layout', spy_layout)
    monkeypatch.setattr(module, 'plot_sampled_graph', spy_plot)
    torch.manual_seed(0)
    graphs = []
    for n in range(10, 26):
        src = torch.arange(n)
        ring = torch.cat([torch.stack([src, (src + 1) % n]),
                          torch.stack([(src + 1) % n, src])], dim=1)
        graphs.append(Data(x=torch.randn(n, 8), edge_index=ring))
    data = Batch.from_data_list(graphs)
    model = GraphModel()
    forward = lambda m, d: m.conv(d.x, d.edge_index, d.batch)  # noqa: E731
    out = visualize_sampling(model, data, tmp_path, backend='matplotlib',
                             forward_fn=forward, graph_index=3,
                             panel_size=(64, 64), title='graph 3: class 1')
    n, offset = 13, int(data.ptr[3])
    assert layouts == [n]  # graph 3 alone
    edge_index, indices, kwargs = drawn[0]
    assert kwargs['num_nodes'] == n and kwargs['title'] == 'graph 3: class 1'
    assert kwargs['pos'].shape == (n, 2)
    assert kwargs['pos'].std(axis=0).min() > 0.2  # spread, not collapsed
    assert edge_index.shape == (2, 2 * n) and edge_index.max() == n - 1

    model.eval()
    with torch.no_grad(), SamplingRecorder(model) as rec:
        forward(model, data)
    expected = rec.indices['conv.attn'][3]  # [heads, k]
    np.testing.assert_array_equal(indices['conv.attn'],
                                  (expected - offset).numpy())
    assert _coloured(out['ply']['conv.attn']) == set(
        (expected - offset).flatten().tolist())
    # The caption band sits on top of the panels.
    assert Image.open(out['png']).size[1] > 64
    with pytest.raises(IndexError, match="'graph_index'"):
        visualize_sampling(model, data, tmp_path, backend='matplotlib',
                           forward_fn=forward, graph_index=16)
