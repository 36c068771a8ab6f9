"""SamsaConv's batch vector and size hints: int32 batches through PyG's
graph-level norms, hints checked before the first norm, the shape of the
attention weights with the summary key, and torch.export's need for
``num_graphs``."""
import pytest
import torch
from torch.nn import Linear
from torch_geometric.data import Batch, Data
from torch_geometric.nn import GINConv

import samsa_geo.nn.attention._sets as sets
from samsa_geo.nn import SamsaAttention, SamsaConv
from samsa_geo.nn.models import SamsaPointClassifier

GRAPH_NORMS = ['layer_norm', 'graph_norm', 'instance_norm', 'pair_norm']


def _inputs():
    x = torch.randn(20, 16)
    batch = torch.tensor([0] * 8 + [1] * 12)
    src = torch.tensor([0, 1, 2, 8, 9, 10])
    return x, torch.stack([src, src + 1]), batch


@pytest.mark.parametrize('norm', GRAPH_NORMS)
@pytest.mark.parametrize('norm_first', [False, True])
@pytest.mark.parametrize('with_conv', [False, True])
@pytest.mark.parametrize('hints', [{}, {'num_graphs': 2},
                                   {'num_graphs': 2, 'max_num_nodes': 12}])
def test_int32_batch_equals_long_batch(norm, norm_first, with_conv, hints):
    x, edge_index, batch = _inputs()
    conv = GINConv(Linear(16, 16)) if with_conv else None
    layer = SamsaConv(16, conv, heads=2, k=4, norm=norm,
                      norm_first=norm_first).eval()
    with torch.no_grad():
        want = layer(x, edge_index, batch, **hints)
        got = layer(x, edge_index, batch.int(), **hints)
    assert torch.equal(got, want)
    # In training too (same noise): gradients reach every parameter.
    layer.train()
    torch.manual_seed(0)
    want = layer(x, edge_index, batch, **hints)
    torch.manual_seed(0)
    got = layer(x, edge_index, batch.int(), **hints)
    assert torch.equal(got, want)
    got.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in layer.parameters())


def test_batch_of_another_dtype_is_named():
    x, _, batch = _inputs()
    layer = SamsaConv(16, heads=2, k=4, norm='layer_norm')
    with pytest.raises(TypeError, match="'batch'"):
        layer(x, None, batch.float())
    with pytest.raises(ValueError, match=r"'batch' to have shape \[20\]"):
        layer(x, None, batch[:-1].int())


@pytest.mark.parametrize('norm', GRAPH_NORMS)
@pytest.mark.parametrize('norm_first', [False, True])
def test_hints_are_checked_before_the_first_norm(norm, norm_first):
    x, edge_index, batch = _inputs()
    layer = SamsaConv(16, GINConv(Linear(16, 16)), heads=2, k=4, norm=norm,
                      norm_first=norm_first).eval()
    with pytest.raises(ValueError, match=r"Expected 'num_graphs' >= 2, the "
                                         r"number of sets in 'batch' "
                                         r"\(got 1\)"):
        layer(x, edge_index, batch, num_graphs=1)
    with pytest.raises(ValueError, match=r"Expected 'max_num_nodes' >= 12"):
        layer(x, edge_index, batch, num_graphs=2, max_num_nodes=8)
    with pytest.raises(TypeError, match=r"'num_graphs' to be a non-negative"):
        layer(x, edge_index, batch, num_graphs=1.5)


@pytest.mark.parametrize('norm', GRAPH_NORMS)
@pytest.mark.parametrize('norm_first', [False, True])
def test_empty_batch_vector_through_graph_level_norms(norm, norm_first):
    # A PyG Batch of empty graphs gives an empty batch vector; PyG's
    # graph-level norms, asked to read the number of graphs from it, fail.
    data = Batch.from_data_list([Data(x=torch.randn(0, 16))] * 2)
    layer = SamsaConv(16, heads=2, k=4, norm=norm, norm_first=norm_first)
    for mode in (True, False):
        layer.train(mode)
        out = layer(data.x, None, data.batch)
        assert out.shape == (0, 16)
        assert torch.equal(out, layer(data.x, None, data.batch,
                                      num_graphs=2, max_num_nodes=0))


def test_max_num_nodes_beyond_the_tokens_sizes_nothing_beyond_them():
    # No set holds more than the batch's N tokens: a larger bound (one kept
    # for every batch, or a mistyped one) gives the output of the bound N,
    # not an allocation of the hint's size.
    x, edge_index, batch = _inputs()
    layer = SamsaConv(16, GINConv(Linear(16, 16)), heads=2, k=4).eval()
    with torch.no_grad():
        want = layer(x, edge_index, batch, num_graphs=2, max_num_nodes=20)
        for hint in (21, 10**11):
            got = layer(x, edge_index, batch, num_graphs=2,
                        max_num_nodes=hint)
            assert torch.equal(got, want)
    model = SamsaPointClassifier.small(5).eval()
    pos, batch = torch.randn(64, 3), torch.arange(2).repeat_interleave(32)
    with torch.no_grad():
        want = model(pos, batch, num_graphs=2, max_num_nodes=64)
        got = model(pos, batch, num_graphs=2, max_num_nodes=10**11)
    assert torch.equal(got, want)
    with pytest.raises(TypeError, match="'max_num_nodes' to be a non-neg"):
        model(pos, batch, num_graphs=2, max_num_nodes=64.0)


def test_hints_are_read_back_once(monkeypatch):
    # The layer's check and the attention's read one transfer between them.
    x, edge_index, batch = _inputs()
    calls = []
    read_batch = sets.read_batch

    def spy(b):
        calls.append(b)
        return read_batch(b)

    monkeypatch.setattr(sets, 'read_batch', spy)
    layer = SamsaConv(16, GINConv(Linear(16, 16)), heads=2, k=4,
                      norm='graph_norm', norm_first=True).eval()
    with torch.no_grad():
        out = layer(x, edge_index, batch, num_graphs=2, max_num_nodes=12)
    assert len(calls) == 1 and out.shape == (20, 16)


@pytest.mark.parametrize('cls', [SamsaConv, SamsaAttention])
def test_alpha_has_one_more_slot_with_the_summary_key(cls):
    x, _, batch = _inputs()
    kwargs = dict(heads=2, k=4)
    if cls is SamsaConv:
        layer = SamsaConv(16, attn_kwargs={'summary': True}, **kwargs)
    else:
        layer = SamsaAttention(16, summary=True, **kwargs)
    for train in (False, True):
        layer.train(train)
        if cls is SamsaConv:
            _, (index, alpha) = layer(x, None, batch,
                                      return_attention_weights=True)
        else:
            _, index, alpha = layer(x, batch, return_indices=True,
                                    return_weights=True)
        assert index.shape == (2, 2, 4)  # [B, H, k_max]
        assert alpha.shape == (20, 2, 5)  # [N, H, k_max + 1]
        assert torch.allclose(alpha.sum(-1), torch.ones(20, 2), atol=1e-5)
    doc = ' '.join(SamsaConv.__doc__.split())
    assert r":math:`(N, H, k_{\max} + 1)` with ``summary=True``" in doc


class _Attention(torch.nn.Module):
    # SamsaAttention called as conv(x, edge_index, batch, **hints) is.
    def __init__(self, **kwargs):
        super().__init__()
        self.attn = SamsaAttention(16, heads=2, **kwargs)

    def forward(self, x, edge_index, batch, **hints):
        return self.attn(x, batch, **hints)


@pytest.mark.parametrize('make', [
    lambda: SamsaConv(16, heads=2, k=4),
    lambda: SamsaConv(16, heads=2, k=4, norm='layer_norm', norm_first=True),
    lambda: SamsaConv(16, GINConv(Linear(16, 16)), heads=2, k=4,
                      norm='graph_norm'),
    lambda: _Attention(k=4),
], ids=['batch_norm', 'pre_layer_norm', 'conv_graph_norm', 'attention'])
def test_export_without_num_graphs_is_named(make):
    x, edge_index, batch = _inputs()
    layer = make().eval()
    with pytest.raises(ValueError, match=r"Expected 'num_graphs' when "
                                         r"exporting.*batch_hints"):
        torch.export.export(layer, (x, edge_index, batch))
    hints = {'num_graphs': 2, 'max_num_nodes': 12}
    program = torch.export.export(layer, (x, edge_index, batch),
                                  kwargs=hints)
    with torch.no_grad():
        want = layer(x, edge_index, batch, **hints)
    assert torch.allclose(program.module()(x, edge_index, batch, **hints),
                          want, atol=1e-5)


def test_export_with_a_fractional_k_needs_max_num_nodes():
    x, edge_index, batch = _inputs()
    layer = _Attention(k=0.5).eval()
    with pytest.raises(ValueError, match=r"Expected 'num_graphs' and "
                                         r"'max_num_nodes' when exporting"):
        torch.export.export(layer, (x, edge_index, batch),
                            kwargs={'num_graphs': 2})
