"""The padded batches of SamsaGraphModel's graphed training steps: their
layout, and the model's outputs, gradients and running statistics on
them against the unpadded batch (CPU, float64)."""
import copy

import pytest
import torch
from torch_geometric.data import Batch, Data

from samsa_geo.nn import batch_hints
from samsa_geo.nn.models import SamsaGraphModel
from samsa_geo.nn.models._graph_padding import bucket, pad_graphs, set_bound


def test_bucket_pads_less_than_a_quarter_to_few_sizes():
    sizes = set()
    for n in range(1, 5000):
        size, step = bucket(n)
        assert size >= n and size % step == 0
        assert size - n < step
        if n > 16:
            assert size - n < size / 4 + 1
            assert 4 <= size // step < 8 or size // step == 8
        sizes.add(size)
    # about four sizes per doubling
    assert len([s for s in sizes if 1024 < s <= 2048]) == 4
    assert bucket(16) == (16, 16) and bucket(17) == (20, 4)
    assert [set_bound(n) for n in (1, 8, 9, 25, 32, 33)] == [
        8, 8, 16, 32, 32, 64]


def _batch(sizes, seed=0, edge_dim=3, pe=0):
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for n in sizes:
        src = torch.arange(max(n - 1, 0))
        ei = torch.stack([src, src + 1])
        ei = torch.cat([ei, ei.flip(0)], 1)
        d = Data(x=torch.randn(n, 9, generator=g, dtype=torch.float64),
                 edge_index=ei,
                 edge_attr=torch.randn(ei.size(1), edge_dim, generator=g,
                                       dtype=torch.float64))
        if pe:
            d.rw_pe = torch.rand(n, pe, generator=g, dtype=torch.float64)
        graphs.append(d)
    return Batch.from_data_list(graphs)


@pytest.mark.parametrize('sizes', [[5, 12, 25, 3, 9] * 7, [2, 2], [40, 1]])
def test_padding_nodes_form_graphs_of_their_own(sizes):
    data = _batch(sizes)
    h = batch_hints(data)
    N, E, B = data.num_nodes, data.num_edges, len(sizes)
    p = pad_graphs(data.x, data.edge_index, data.edge_attr, data.batch,
                   None, None, **h)
    assert p.x.size(0) == bucket(N + 1)[0] > N
    assert p.edge_index.size(1) == bucket(E + 1)[0] > E
    assert p.edge_attr.shape == (p.edge_index.size(1), 3)
    assert torch.equal(p.x[:N], data.x) and (p.x[N:] == 0).all()
    assert torch.equal(p.edge_index[:, :E], data.edge_index)
    assert torch.equal(p.batch[:N], data.batch)
    # the padding edges join padding nodes only, the padding nodes lie in
    # graphs B .. num_graphs - 1 of at most max_num_nodes nodes, sorted
    assert (p.edge_index[:, E:] >= N).all()
    assert (p.batch[N:] >= B).all() and (p.batch.diff() >= 0).all()
    counts = torch.bincount(p.batch, minlength=p.num_graphs)
    assert counts.numel() == p.num_graphs
    assert counts.max() <= p.max_num_nodes
    assert p.max_num_nodes == set_bound(max(sizes))
    # the same layout for every batch of that bucket
    other = _batch([s + 1 for s in sizes][:-1] + [sizes[-1]], seed=1)
    q = pad_graphs(other.x, other.edge_index, other.edge_attr, other.batch,
                   None, None, **batch_hints(other))
    if bucket(other.num_nodes + 1) == bucket(N + 1):
        assert q.num_graphs == p.num_graphs and q.x.shape == p.x.shape


@pytest.mark.parametrize('level,pe,pool', [('graph', None, 'mean'),
                                           ('graph', 'rw', 'sum'),
                                           ('node', 'rw', 'mean')])
def test_padded_training_step_equals_the_unpadded_one(level, pe, pool):
    # Training mode, no dropout, fixed node identifiers: every set is
    # kept whole (n <= k), so both steps are deterministic and equal.
    torch.manual_seed(0)
    model = SamsaGraphModel(9, 32, 2, 3, edge_dim=3, heads=4, level=level,
                            pool=pool, pe=pe, pe_channels=8).double()
    padded_model = copy.deepcopy(model)
    data = _batch([5, 12, 25, 3, 9, 2] * 5, pe=8 if pe else 0)
    h = batch_hints(data)
    N, B = data.num_nodes, h['num_graphs']
    node_id = torch.randn(N, 16, dtype=torch.float64)
    pe_ = data.rw_pe if pe else None
    out = model(data.x, data.edge_index, data.edge_attr, data.batch, pe=pe_,
                node_id=node_id, **h)
    p = pad_graphs(data.x, data.edge_index, data.edge_attr, data.batch, pe_,
                   node_id, **h)
    got = padded_model._padded_forward(p, B)
    assert got.size(0) == (p.x.size(0) if level == 'node' else p.num_graphs)
    got = got[:N] if level == 'node' else got[:B]
    torch.testing.assert_close(got, out, rtol=1e-10, atol=1e-12)
    w = torch.randn(out.shape, dtype=torch.float64)
    (out * w).sum().backward()
    (got * w).sum().backward()
    for (name, a), b in zip(model.named_parameters(),
                            padded_model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-9,
                                       atol=1e-11, msg=name)
    n_bn = 0
    for (name, a), b in zip(model.named_buffers(), padded_model.buffers()):
        n_bn += name.endswith('running_var')
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)
    assert n_bn == 3 * 3 + (1 if pe else 0)


def test_the_model_on_the_cpu_keeps_no_graphs():
    model = SamsaGraphModel(9, 16, 1, 1, edge_dim=3, heads=2)
    data = _batch([4, 5, 6])
    model.double()(data.x, data.edge_index, data.edge_attr, data.batch,
                   **batch_hints(data)).sum().backward()
    assert len(model._train_graphs) == 0
    # copies start without graphs, as the layers' do
    assert len(copy.deepcopy(model)._train_graphs) == 0
