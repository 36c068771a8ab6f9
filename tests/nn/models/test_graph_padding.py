"""The padded batches of SamsaGraphModel's graphed training steps: their
layout, and the model's outputs, gradients and running statistics on
them against the unpadded batch (CPU, float64)."""
import copy

import pytest
import torch
from torch_geometric.data import Batch, Data

from samsa_geo.nn import batch_hints
from samsa_geo.nn.models import SamsaGraphModel
from samsa_geo.nn.models._graph_padding import (
    REUSED_STEP_MAX_ELEMENTS,
    PaddedSizes,
    bucket,
    choose_sizes,
    holds,
    pad_graphs,
    padded_sizes,
    set_bound,
)


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
    assert torch.equal(p.real, torch.arange(p.x.size(0)) < N)
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


@pytest.mark.parametrize('level,pe,pool,larger', [
    ('graph', None, 'mean', False), ('graph', 'rw', 'sum', False),
    ('node', 'rw', 'mean', False), ('graph', 'rw', 'mean', True),
    ('node', None, 'sum', True)])
def test_padded_training_step_equals_the_unpadded_one(level, pe, pool,
                                                      larger):
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
    # larger: the sizes of a kept graph of a batch ten times the size,
    # with many (partly empty) padding graphs
    sizes = padded_sizes(10 * N, 10 * data.num_edges, 10 * B,
                         h['max_num_nodes']) if larger else None
    p = pad_graphs(data.x, data.edge_index, data.edge_attr, data.batch, pe_,
                   node_id, **h, sizes=sizes)
    if larger:
        assert p.x.size(0) > 8 * N and p.num_graphs > 8 * B
        assert torch.bincount(p.batch, minlength=p.num_graphs).eq(0).any()
    got = padded_model._padded_forward(p)
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


def test_sizes_hold_a_batch_with_room_for_its_padding_graphs():
    own = padded_sizes(100, 300, 10, 20)
    assert own == PaddedSizes(112, 320, 16, 32)  # bucket(10 + 16 / 32)
    assert holds(own, 100, 300, 10, 20)
    assert holds(own, 111, 319, 15, 32)
    assert not holds(own, 112, 300, 10, 20)  # no padding node
    assert not holds(own, 100, 320, 10, 20)  # no padding edge
    assert not holds(own, 100, 300, 10, 33)  # a graph beyond the bound
    assert not holds(own, 100, 300, 16, 20)  # no room for padding graphs
    # 12 padding nodes need one graph of at most 32; 80 need three
    assert holds(own, 100, 300, 15, 20) and not holds(own, 32, 60, 14, 20)
    data = _batch([3, 4])
    with pytest.raises(ValueError, match='Expected sizes that hold'):
        pad_graphs(data.x, data.edge_index, data.edge_attr, data.batch,
                   None, None, 2, 4, PaddedSizes(7, 100, 8, 8))


def test_choose_sizes_reuses_the_smallest_kept_graph_within_bounds():
    own = padded_sizes(900, 2000, 64, 25)
    assert choose_sizes([], 900, 2000, 64, 25, 64) == own
    big = padded_sizes(1000, 2400, 64, 25)
    bigger = padded_sizes(1500, 3000, 80, 25)
    assert choose_sizes([bigger, big], 900, 2000, 64, 25, 64) == big
    # an epoch's last batch of two graphs replays the 1,024-node graph
    # (65,536 token values at 64 channels), not beyond at 128 channels
    assert big.num_nodes * 64 <= REUSED_STEP_MAX_ELEMENTS
    assert choose_sizes([big], 30, 60, 2, 12, 64) == big
    assert choose_sizes([big], 30, 60, 2, 12, 128) == \
        padded_sizes(30, 60, 2, 12)
    # within twice its own nodes at any width; sizes that do not hold it
    # (edges, bound, graphs) are passed over
    assert choose_sizes([bigger], 900, 2000, 64, 25, 1024) == bigger
    assert choose_sizes([padded_sizes(2100, 5000, 200, 25)], 900, 2000,
                        64, 25, 1024) == own
    # 636 padding nodes need 20 graphs of 32: 84 in all, 80 kept
    assert choose_sizes([padded_sizes(1500, 3000, 64, 25)], 900, 2000, 64,
                        25, 1024) == own
    for E, B, M in [(2600, 64, 25), (2000, 64, 33), (2000, 78, 25)]:
        assert choose_sizes([big], 900, E, B, M, 64) == \
            padded_sizes(900, E, B, M)


def test_reuse_leaves_a_shuffled_dataset_few_sizes():
    # FreeSolv-sized graphs (2-25 nodes, 642 of them) in batches of 64,
    # shuffled each epoch: every batch padded to its own bucket takes 20
    # and more sizes over 30 epochs (each one eager steps and a capture of
    # its own, the last batch's nearly every epoch); choosing among the
    # sizes taken so far leaves a handful, and no new one after the first
    # epochs (here 21 and 2).
    g = torch.Generator().manual_seed(0)
    nodes = torch.randint(2, 26, (642, ), generator=g)
    edges = 2 * (nodes - 1 + nodes // 4)
    own, kept, new = set(), [], []
    for epoch in range(30):
        order = torch.randperm(642, generator=g)
        added = 0
        for i in range(0, 642, 64):
            idx = order[i:i + 64]
            N, E, B = int(nodes[idx].sum()), int(edges[idx].sum()), len(idx)
            M = int(nodes[idx].max())
            own.add(padded_sizes(N, E, B, M))
            sizes = choose_sizes(kept, N, E, B, M, 64)
            if sizes not in kept:
                kept.append(sizes)
                added += 1
        new.append(added)
    assert len(own) >= 20
    assert len(kept) <= 3 and sum(new[5:]) == 0
