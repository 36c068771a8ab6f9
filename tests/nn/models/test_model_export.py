import importlib.util
import warnings

import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import erdos_renyi_graph, to_undirected

from samsa_geo.nn import batch_hints
from samsa_geo.nn.models import (
    SamsaGraphModel,
    SamsaPointClassifier,
    SamsaPointSegmenter,
)
from samsa_geo.ops import knn_neighbours

WITH_ONNX = all(importlib.util.find_spec(name) is not None
                for name in ('onnx', 'onnxscript', 'onnxruntime'))
onnx_only = pytest.mark.skipif(not WITH_ONNX, reason='onnx, onnxscript and '
                               'onnxruntime (test extra) are not installed')

SIZES = (30, 12, 25)  # unequal clouds, one smaller than num_neighbors


def _clouds(seed: int, sizes=SIZES):
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randn(sum(sizes), 3, generator=gen)
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    return pos, batch


def _graphs(seed: int, sizes=(12, 20, 9)) -> Batch:
    # The edges of every seed are the same; the features are the seed's.
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(0)
    data_list = []
    for n in sizes:
        ei = to_undirected(erdos_renyi_graph(n, 0.3))
        data_list.append(Data(x=torch.randn(n, 7, generator=gen),
                              edge_index=ei,
                              edge_attr=torch.randn(ei.size(1), 2,
                                                    generator=gen),
                              pe=torch.randn(n, 4, generator=gen)))
    return Batch.from_data_list(data_list)


def _graph_model(tokens: str) -> SamsaGraphModel:
    torch.manual_seed(0)
    return SamsaGraphModel(7, 16, 3, 2, edge_dim=2, tokens=tokens, pe='rw',
                           pe_channels=4, heads=2, k=4).eval()


def _point_case(name: str, seed: int):
    # (model, args, kwargs) of a batch of unequal clouds with size hints.
    pos, batch = _clouds(seed)
    hints = dict(num_graphs=len(SIZES), max_num_nodes=max(SIZES))
    torch.manual_seed(0)
    if name == 'segmenter':
        model = SamsaPointSegmenter.small(6, num_categories=3, k=16)
        return model.eval(), (pos, batch), dict(
            category=torch.tensor([2, 0, 1]), **hints)
    options = {'plain': {}, 'rotation_invariant': dict(
        rotation_invariant=True), 'local_conv': dict(local_conv=True)}[name]
    model = SamsaPointClassifier.small(5, k=16, **options)
    return model.eval(), (pos, batch), hints


def _graph_case(tokens: str, seed: int):
    data = _graphs(seed)
    return _graph_model(tokens), (data.x, data.edge_index, data.edge_attr,
                                  data.batch), dict(pe=data.pe,
                                                    **batch_hints(data))


def _case(name: str, seed: int = 0):
    if name.startswith('graph-'):
        return _graph_case(name[len('graph-'):], seed)
    return _point_case(name, seed)


CASES = ['plain', 'rotation_invariant', 'local_conv', 'segmenter',
         'graph-node', 'graph-node_edge']


@pytest.mark.parametrize('name', CASES)
def test_export_equals_eager(name):
    model, args, kwargs = _case(name)
    with torch.no_grad():
        program = torch.export.export(model, args, kwargs=kwargs)
        out = program.module()(*args, **kwargs)
        assert torch.allclose(out, model(*args, **kwargs), atol=1e-5)
        # Other values of the same shapes: nothing was specialised to them.
        _, args2, kwargs2 = _case(name, seed=1)
        expected = model(*args2, **kwargs2)
        assert torch.allclose(program.module()(*args2, **kwargs2), expected,
                              atol=1e-5)


@pytest.mark.parametrize('name', CASES)
def test_compile_fullgraph_equals_eager(name):
    model, args, kwargs = _case(name)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    with torch.no_grad():
        out = compiled(*args, **kwargs)
        assert torch.allclose(out, model(*args, **kwargs), atol=1e-5)


def test_export_without_batch_needs_no_hints():
    # One cloud, one graph: their sizes are shapes.
    pos, _ = _clouds(0)
    torch.manual_seed(0)
    model = SamsaPointClassifier.small(5, k=16, rotation_invariant=True)
    model.eval()
    graph = _graphs(0, sizes=(15, ))
    gmodel = _graph_model('node_edge')
    gargs = (graph.x, graph.edge_index, graph.edge_attr)
    with torch.no_grad():
        program = torch.export.export(model, (pos, ))
        assert torch.allclose(program.module()(pos), model(pos), atol=1e-5)
        program = torch.export.export(gmodel, gargs, kwargs={'pe': graph.pe})
        assert torch.allclose(program.module()(*gargs, pe=graph.pe),
                              gmodel(*gargs, pe=graph.pe), atol=1e-5)


@pytest.mark.parametrize('max_size', [None, max(SIZES)])
def test_traced_knn_table_equals_knn_neighbours(max_size):
    from samsa_geo.nn.encoders._point_geometry import traced_knn_table
    pos, batch = _clouds(3)
    expected = knn_neighbours(pos, pos, 16, batch, batch, len(SIZES))
    table = traced_knn_table(pos, batch, 16, len(SIZES), max_size)
    assert table.shape == expected.shape == (sum(SIZES), 16)
    assert torch.equal(table, expected)  # no ties in random points
    assert int((table[30:42] == -1).sum()) == 12 * 4  # 12 points, k = 16


def _onnx_run(model, args, kwargs, path, **options):
    import onnxruntime
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, args, str(path), kwargs=kwargs, **options)
    session = onnxruntime.InferenceSession(
        str(path), providers=['CPUExecutionProvider'])
    tensors = [t for t in list(args) + list(kwargs.values())
               if isinstance(t, torch.Tensor)]
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(tensors)
    feed = {name: t.numpy() for name, t in zip(names, tensors)}
    return torch.from_numpy(session.run(None, feed)[0])


@onnx_only
@pytest.mark.parametrize('name,batched', [
    ('plain', False), ('plain', True), ('local_conv', False),
    ('rotation_invariant', False), ('segmenter', True),
    ('graph-node', False), ('graph-node_edge', False),
])
def test_onnx_export_equals_eager(tmp_path, name, batched):
    model, args, kwargs = _case(name)
    if name.startswith('graph-'):  # one graph (no batch, no hints)
        data = _graphs(0, sizes=(15, ))
        args, kwargs = (data.x, data.edge_index, data.edge_attr), dict(
            pe=data.pe)
    elif batched:  # clouds of equal sizes
        pos, batch = _clouds(0, sizes=(20, 20, 20))
        args = (pos, batch)
        kwargs = dict(kwargs, num_graphs=3, max_num_nodes=20)
    else:  # one cloud
        args, kwargs = (args[0][:30], ), {}
    # onnxscript's optimiser drops the 1e-12 added under the square roots
    # of the point-pair features (see docs/points.md).
    options = dict(dynamo=True, optimize=name != 'rotation_invariant')
    out = _onnx_run(model, args, kwargs, tmp_path / 'model.onnx', **options)
    with torch.no_grad():
        assert torch.allclose(out, model(*args, **kwargs), atol=1e-5)


@onnx_only
@pytest.mark.parametrize('name', ['plain', 'local_conv', 'segmenter',
                                  'graph-node', 'graph-node_edge'])
def test_onnx_export_of_unequal_sets_equals_eager(tmp_path, name):
    # Batches of unequal clouds / graphs with hints: the set offsets come
    # from counts in an ONNX export (ONNX has no searchsorted).
    model, args, kwargs = _case(name)
    out = _onnx_run(model, args, kwargs, tmp_path / 'model.onnx',
                    dynamo=True)
    with torch.no_grad():
        assert torch.allclose(out, model(*args, **kwargs), atol=1e-5)


@onnx_only
def test_onnx_export_torchscript(tmp_path):
    pos = _clouds(0)[0][:30]
    model = _point_case('plain', 0)[0]
    out = _onnx_run(model, (pos, ), {}, tmp_path / 'a.onnx', dynamo=False)
    with torch.no_grad():
        assert torch.allclose(out, model(pos), atol=1e-5)
    # PyG's max aggregation (EdgeConv) fails in the TorchScript tracer.
    model = _point_case('local_conv', 0)[0]
    with pytest.raises(ValueError, match=r"Expected torch.onnx.export\(\.\.\.,"
                       r" dynamo=True\) for 'local_conv=True' \(got "
                       r"dynamo=False\)"):
        _onnx_run(model, (pos, ), {}, tmp_path / 'b.onnx', dynamo=False)
    model = _point_case('plain', 0)[0]
    with pytest.raises(ValueError, match=r"for clouds of unequal sizes "
                       r"\(got dynamo=False\)"):
        _onnx_run(model, _clouds(0), {}, tmp_path / 'c.onnx', dynamo=False)


def test_export_of_graphs_beyond_the_id_table_is_refused():
    # Evaluation node identifiers past the first 1,024 are drawn when first
    # needed: a traced graph would redraw them on every call.
    model = _graph_model('node')
    n = 1100
    src = torch.arange(n - 1)
    data = Data(x=torch.randn(n, 7), edge_index=torch.stack([src, src + 1]),
                edge_attr=torch.randn(n - 1, 2), pe=torch.randn(n, 4))
    args = (data.x, data.edge_index, data.edge_attr)
    with pytest.raises(ValueError, match=r"Expected at most 1024 nodes per "
                       r"graph while tracing \(got 1100\): run the model "
                       r"once in evaluation mode on a graph of 1100 nodes"):
        torch.export.export(model, args, kwargs={'pe': data.pe})
    with torch.no_grad():
        expected = model(*args, pe=data.pe)  # draws the rows
        program = torch.export.export(model, args, kwargs={'pe': data.pe})
        assert torch.allclose(program.module()(*args, pe=data.pe), expected,
                              atol=1e-5)
