"""Rows that gradients flow through are gathered with ``index_select``,
never with advanced indexing: on CUDA the backward of ``t[index]``
(``IndexBackward0``) sorts the indices before an accumulating
``index_put_``, several launches where ``index_select``'s backward is one
``index_add_`` into zeros. The training graphs of the attention's paths
and of the graph model hold no ``IndexBackward0`` node."""
import pytest
import torch
from torch_geometric.data import Batch, Data

from samsa_geo.nn import SamsaAttention
from samsa_geo.nn.models import SamsaGraphModel
from samsa_geo.testing import autograd_node_kinds


def _sets(sizes):
    return torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])


@pytest.mark.parametrize('kwargs, sizes', [
    (dict(k=64), (5, 9, 7)),  # every set keeps its tokens: dense path
    (dict(k=8, tile_size=16), (40, 70, 23)),  # sampled keys, tiles
    (dict(k=8, tile_size=16, sampling='sft'), (40, 70, 23)),
])
def test_attention_training_graph_has_no_index_backward(kwargs, sizes):
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, **kwargs).train()
    batch = _sets(sizes)
    x = torch.randn(batch.numel(), 16, requires_grad=True)
    out = attn(x, batch, num_graphs=len(sizes), max_num_nodes=max(sizes))
    names = autograd_node_kinds(out)
    assert 'IndexBackward0' not in names
    assert 'IndexSelectBackward0' in names  # the rows are gathered
    out.square().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_graph_model_training_graph_has_no_index_backward(tokens):
    torch.manual_seed(0)
    graphs = []
    for n in (5, 9, 7):
        src = torch.arange(n - 1)
        edge_index = torch.cat([torch.stack([src, src + 1]),
                                torch.stack([src + 1, src])], 1)
        graphs.append(Data(x=torch.randn(n, 7), edge_index=edge_index,
                           edge_attr=torch.randn(edge_index.size(1), 2)))
    data = Batch.from_data_list(graphs)
    model = SamsaGraphModel(7, 16, 3, num_layers=2, edge_dim=2, heads=2,
                            k=32, tokens=tokens, level='node').train()
    out = model(data.x, data.edge_index, data.edge_attr, data.batch,
                num_graphs=3, max_num_nodes=9)
    assert 'IndexBackward0' not in autograd_node_kinds(out)
