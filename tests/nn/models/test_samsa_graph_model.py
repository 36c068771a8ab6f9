import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.utils import erdos_renyi_graph, to_undirected

from samsa_geo.nn.models import PRESETS, SamsaGraphModel


def _graph(n: int, seed: int, categorical: bool, pe_channels: int = 4) -> Data:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ei = to_undirected(erdos_renyi_graph(n, 0.3))
    E = ei.size(1)
    if categorical:
        x = torch.stack([torch.randint(0, d, (n, ), generator=gen)
                         for d in (119, 5, 12, 12, 10, 6, 6, 2, 2)], dim=1)
        ea = torch.stack([torch.randint(0, d, (E, ), generator=gen)
                          for d in (5, 6, 2)], dim=1)
    else:
        x, ea = torch.randn(n, 7, generator=gen), torch.randn(E, 2, generator=gen)
    pe = torch.randn(n, pe_channels, generator=gen)
    label = torch.randint(0, n, (2, 3), generator=gen)
    return Data(x=x, edge_index=ei, edge_attr=ea, pe=pe, edge_label_index=label,
                num_nodes=n)


def _model(level='graph', tokens='node', pe='rw', categorical=False, **kwargs):
    out = 1 if level == 'edge' else 3
    return SamsaGraphModel(
        9 if categorical else 7, 16, out, num_layers=2,
        edge_dim=3 if categorical else 2, categorical=categorical,
        level=level, tokens=tokens, pe=pe, pe_channels=4, heads=2,
        **{'k': 4, **kwargs})


def _run(model, batch, **kwargs):
    return model(batch.x, batch.edge_index, batch.edge_attr, batch.batch,
                 pe=batch.pe, edge_label_index=batch.edge_label_index,
                 **kwargs)


@pytest.mark.parametrize('level', ['graph', 'node', 'edge'])
@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
@pytest.mark.parametrize('categorical', [True, False])
def test_shapes_and_repr(level, tokens, categorical):
    data_list = [_graph(n, n, categorical) for n in (5, 9, 7)]
    batch = Batch.from_data_list(data_list)
    model = _model(level, tokens, categorical=categorical)
    assert repr(model) == (f"SamsaGraphModel({model.in_channels}, 16, "
                           f"{model.out_channels}, num_layers=2, "
                           f"level={level!r}, tokens={tokens!r}, pe='rw', "
                           f"heads=2, k=4)")
    assert model.pe_attr == 'rw_pe'
    out = _run(model, batch)
    expected = {'graph': (3, 3), 'node': (21, 3), 'edge': (9, )}[level]
    assert out.shape == expected and bool(torch.isfinite(out).all())
    if level == 'edge':
        z = model.embed(batch.x, batch.edge_index, batch.edge_attr,
                        batch.batch, pe=batch.pe)
        model.eval()
        z = model.embed(batch.x, batch.edge_index, batch.edge_attr,
                        batch.batch, pe=batch.pe)
        s, t = batch.edge_label_index
        assert torch.allclose(_run(model, batch), (z[s] * z[t]).sum(-1),
                              atol=1e-5)


@pytest.mark.parametrize('level', ['graph', 'node'])
@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_batch_isolation(level, tokens):
    # In eval mode a graph's output does not depend on its batch mates.
    torch.manual_seed(0)
    data_list = [_graph(n, n, True) for n in (6, 11, 4)]
    model = _model(level, tokens, categorical=True, k=3).eval()
    with torch.no_grad():
        _run(model.train(), Batch.from_data_list(data_list))  # fill BN stats
        model.eval()
        full = _run(model, Batch.from_data_list(data_list))
        alone = [_run(model, Batch.from_data_list([d])) for d in data_list]
    assert torch.allclose(full, torch.cat(alone, dim=0), atol=1e-5)


@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_node_permutation_equivariance(tokens):
    torch.manual_seed(1)
    data = _graph(12, 3, False)
    model = _model('node', tokens, k=5).eval()
    node_id = torch.randn(12, 16)
    perm = torch.randperm(12)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(12)
    with torch.no_grad():
        out = model(data.x, data.edge_index, data.edge_attr, pe=data.pe,
                    node_id=node_id)
        out_perm = model(data.x[perm], inv[data.edge_index], data.edge_attr,
                         pe=data.pe[perm], node_id=node_id[perm])
    assert torch.allclose(out_perm, out[perm], atol=1e-5)


@pytest.mark.parametrize('level', ['graph', 'node', 'edge'])
@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_every_parameter_gets_a_gradient(level, tokens):
    torch.manual_seed(2)
    batch = Batch.from_data_list([_graph(n, n, True) for n in (8, 10)])
    model = _model(level, tokens, categorical=True, k=4)
    _run(model, batch).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert bool(torch.isfinite(p.grad).all()), name
        if name.startswith('tokenizer.node_encoder'):
            continue  # embedding rows of unseen categories stay zero
        if name.endswith('attn.scorer.lin.bias'):
            # Without registers the relaxation sees score differences
            # only: a per-head offset has zero gradient (up to rounding).
            continue
        assert float(p.grad.abs().sum()) > 0, name


@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_bf16_autocast_training_step_is_close_to_fp32(tokens):
    # The training step under bf16 autocast, as the trainer's amp='bf16'
    # runs it: every gradient finite, the output close to float32's.
    # The outputs are compared with k >= every graph's size: with k < n,
    # bf16 rounding can flip a near-tie in the top-k choice of keys (at
    # k=4, 5 of 60 seeds exceed 2e-2 that way), which is no error of
    # precision. Measured at k=16 over 30 seeds: |error| <= 0.01 on outputs
    # of size 0.03-1.
    batch = Batch.from_data_list([_graph(n, n, False) for n in (8, 10, 5)])
    exact = _model('graph', tokens, k=16).eval()  # fixed identifiers
    ref = _run(exact, batch)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = _run(exact, batch)
    assert not torch.equal(out.float(), ref)  # bf16 really ran
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    model = _model('graph', tokens, k=4).train()  # the sampling path
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = _run(model, batch).float().square().mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is None or bool(torch.isfinite(p.grad).all()), name


def test_reset_parameters_and_pooling():
    torch.manual_seed(3)
    batch = Batch.from_data_list([_graph(n, n, False) for n in (5, 8)])
    model = _model('graph', pool='sum').eval()
    out = _run(model, batch)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(4)
    model.reset_parameters()
    assert not torch.allclose(_run(model, batch), out)
    model.load_state_dict(state)
    h = model.node_embeddings(batch.x, batch.edge_index, batch.edge_attr,
                              batch.batch, pe=batch.pe)
    pooled = torch.stack([h[batch.batch == g].sum(0) for g in range(2)])
    assert torch.allclose(_run(model, batch), model.head(pooled), atol=1e-5)


@pytest.mark.parametrize('name', list(PRESETS))
@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_presets_within_lrgb_budget(name, tokens):
    model = SamsaGraphModel.from_preset(name, tokens=tokens)
    count = model.num_parameters()
    assert 300_000 < count < 500_000
    # The documented per-layer count 12C^2 + CH + 19C + H + 1:
    C, H = model.hidden_channels, model.heads
    layer = sum(p.numel() for p in model.convs[0].parameters())
    assert layer == 12 * C * C + C * H + 19 * C + H + 1


def test_errors():
    with pytest.raises(ValueError, match="'tokens'"):
        SamsaGraphModel(7, 16, 3, 2, tokens='edge')
    with pytest.raises(ValueError, match="'pe'"):
        SamsaGraphModel(7, 16, 3, 2, pe='spd')
    with pytest.raises(ValueError, match="'out_channels' to be 1"):
        SamsaGraphModel(7, 16, 3, 2, level='edge')
    with pytest.raises(ValueError, match='OGB'):
        SamsaGraphModel(7, 16, 3, 2, categorical=True)
    with pytest.raises(ValueError, match="'name'"):
        SamsaGraphModel.from_preset('zinc')
    data = _graph(5, 0, False)
    model = _model('graph')
    with pytest.raises(ValueError, match="'pe'"):
        model(data.x, data.edge_index, data.edge_attr)
    with pytest.raises(ValueError, match="'x' to have shape"):
        model(data.x[:, :3], data.edge_index, data.edge_attr, pe=data.pe)
    with pytest.raises(ValueError, match="'edge_attr'"):
        model(data.x, data.edge_index, None, pe=data.pe)
    with pytest.raises(ValueError, match="'edge_label_index'"):
        _model('edge')(data.x, data.edge_index, data.edge_attr, pe=data.pe)


@pytest.mark.parametrize('name, value', [
    ('local_conv', 'no'), ('local_conv', 0), ('categorical', 'no'),
    ('categorical', None),
])
def test_flags_must_be_bools(name, value):
    # A string is true to Python: 'no' would build the other model.
    with pytest.raises(TypeError) as info:
        SamsaGraphModel(9, 16, 3, 2, **{name: value})
    assert str(info.value) == (f"Expected '{name}' to be a bool "
                               f"(got {value!r})")
    with pytest.raises(TypeError, match=f"'{name}' to be a bool"):
        SamsaGraphModel.from_preset('peptides-func', **{name: value})


@pytest.mark.parametrize('name', ['attn_kwargs', 'pe_kwargs'])
def test_kwargs_must_be_dicts(name):
    with pytest.raises(TypeError) as info:
        SamsaGraphModel(7, 16, 3, 2, pe='rw', **{name: [1]})
    assert str(info.value) == (f"Expected '{name}' to be a dict or None "
                               f"(got list)")


def test_num_graphs_hint_is_checked():
    model = SamsaGraphModel(4, 16, 3, 2, heads=2, k=4).eval()
    x = torch.randn(10, 4)
    edge_index = torch.tensor([[0, 1, 2, 5, 6], [1, 2, 3, 6, 7]])
    batch = torch.tensor([0] * 5 + [1] * 5)
    ref = model(x, edge_index, batch=batch)
    # The same keys, maybe in another order (the sum order of the softmax).
    torch.testing.assert_close(
        model(x, edge_index, batch=batch, num_graphs=2), ref)
    # A larger hint adds empty graphs (PyG's pooling convention).
    out = model(x, edge_index, batch=batch, num_graphs=4)
    assert out.shape == (4, 3)
    torch.testing.assert_close(out[:2], ref)
    with pytest.raises(ValueError, match=r"Expected 'num_graphs' >= 2, the "
                       r".* in 'batch' \(got 1\)"):
        model(x, edge_index, batch=batch, num_graphs=1)
    with pytest.raises((TypeError, ValueError),
                       match=r"non-negative int.*\(got 1.5\)"):
        model(x, edge_index, batch=batch, num_graphs=1.5)


@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_batch_hints_give_the_same_model_output(tokens):
    # A PyG Batch's sizes (batch_hints) change layouts, not values: graphs
    # of 3, 7 and 5 nodes with k = 6 (one graph beyond k), in training
    # (gradients) and evaluation.
    from torch_geometric.data import Batch, Data

    from samsa_geo.nn import batch_hints
    gen = torch.Generator().manual_seed(0)
    graphs = []
    for n in (3, 7, 5):
        src = torch.arange(n - 1)
        ei = torch.stack([torch.cat([src, src + 1]), torch.cat([src + 1, src])])
        graphs.append(Data(x=torch.randn(n, 4, generator=gen), edge_index=ei,
                           edge_attr=torch.randn(ei.size(1), 2, generator=gen)))
    data = Batch.from_data_list(graphs)
    hints = batch_hints(data)
    assert hints == {'num_graphs': 3, 'max_num_nodes': 7}
    torch.manual_seed(0)
    model = SamsaGraphModel(4, 16, 2, 2, edge_dim=2, heads=2, k=6,
                            tokens=tokens)
    args = (data.x, data.edge_index, data.edge_attr, data.batch)
    for training in (False, True):
        model.train(training)
        outs = []
        for kw in ({}, dict(num_graphs=3), hints):
            model.zero_grad()
            torch.manual_seed(1)  # the same Gumbel noise and node ids
            out = model(*args, **kw)
            out.pow(2).sum().backward()
            outs.append((out, [p.grad.clone() for p in model.parameters()
                               if p.grad is not None]))
        for out, grads in outs[1:]:
            torch.testing.assert_close(out, outs[0][0])
            if not training:
                continue
            assert len(grads) == len(outs[0][1])
            for g, ref in zip(grads, outs[0][1]):
                torch.testing.assert_close(g, ref)


@pytest.mark.parametrize('with_edges', [True, False])
def test_local_branch_equals_pyg_gine(with_edges):
    # The local branch computes GINEConv's (GINConv's) update itself:
    # outputs and gradients equal those of the PyG module it holds.
    from samsa_geo.nn.models.samsa_graph_model import _TokenGINE
    torch.manual_seed(0)
    local = _TokenGINE(8, with_edges)
    torch.nn.init.normal_(local.conv.eps)
    x = torch.randn(12, 8, requires_grad=True)
    edge_index = torch.randint(0, 12, (2, 30))
    edge_attr = torch.randn(30, 8, requires_grad=True)
    args = (x, edge_index, edge_attr) if with_edges else (x, edge_index)
    weight = torch.randn(12, 8)

    def run(fn):
        for t in (x, edge_attr, *local.parameters()):
            t.grad = None
        out = fn(*args)
        (out * weight).sum().backward()
        return [out, x.grad, edge_attr.grad] + [
            p.grad for p in local.parameters()]

    for got, ref in zip(run(local), run(local.conv)):
        if ref is None:
            assert got is None
        else:
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    if with_edges:
        with pytest.raises(ValueError, match="'edge_attr' of shape"):
            local(x, edge_index, edge_attr[:, :4])
    # bf16 tokens under autocast (the first layer reads the tokenizer's
    # bf16 output): the PyG module's result, to bf16 precision.
    half = [t.detach().bfloat16() if t.is_floating_point() else t
            for t in args]
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got, ref = local(*half), local.conv(*half)
    assert got.dtype == ref.dtype
    torch.testing.assert_close(got.float(), ref.float(), rtol=2e-2,
                               atol=2e-2)


def test_dense_keep_all_path_gives_the_same_training_step(monkeypatch):
    # Small graphs with batch_hints (k >= n_max): the padded exact
    # attention against the gathered keep_all path, outputs and gradients.
    from samsa_geo.nn import SamsaAttention, batch_hints
    batch = Batch.from_data_list([_graph(n, n, False) for n in (5, 9, 3)])
    torch.manual_seed(0)
    model = _model(k=16).train()
    node_id = torch.randn(batch.num_nodes, 16)

    def step():
        model.zero_grad()
        out = _run(model, batch, node_id=node_id, **batch_hints(batch))
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() \
            .backward()
        return out, {n: p.grad for n, p in model.named_parameters()}

    out, grads = step()
    monkeypatch.setattr(SamsaAttention, '_dense_keeps_all',
                        lambda self, info, N, return_indices: False)
    ref, ref_grads = step()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for name, g in grads.items():
        ref_g = ref_grads[name]
        if g is None or ref_g is None:  # the unused scorers
            assert 'scorer' in name
            assert (g is None or not g.any()) and \
                (ref_g is None or not ref_g.any())
        else:
            torch.testing.assert_close(g, ref_g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('level', ['graph', 'node', 'edge'])
@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_float_features_follow_the_parameters_dtype(level, tokens):
    # .double() / .bfloat16() models take float32 features (cast to their
    # dtype); the float64 model is the float32 one to float32's precision.
    import copy
    batch = Batch.from_data_list([_graph(n, n, False) for n in (6, 9, 5)])
    model = _model(level, tokens).eval()
    with torch.no_grad():
        ref = _run(model, batch)
        model64 = copy.deepcopy(model).double()
        out = _run(model64, batch)
        assert out.dtype == torch.float64
        assert torch.allclose(out, ref.double(), rtol=1e-4, atol=1e-4)
        batch64 = batch.clone()
        for key in ('x', 'edge_attr', 'pe'):
            batch64[key] = batch[key].double()
        assert torch.equal(_run(model64, batch64), out)
        out16 = _run(copy.deepcopy(model).bfloat16(), batch)
    assert out16.dtype == torch.bfloat16 and bool(torch.isfinite(out16).all())
    scale = ref.abs().max()
    assert (out16.float() - ref).abs().max() < 0.05 * scale


@pytest.mark.parametrize('tokens', ['node', 'node_edge'])
def test_node_id_and_edge_index_are_checked(tokens):
    # A NaN node_id was reported as a non-finite 'x'; a float edge_index
    # failed inside index_select.
    torch.manual_seed(0)
    model = SamsaGraphModel(5, 16, 1, 2, tokens=tokens, heads=2, k=4).eval()
    x, ei = torch.randn(4, 5), torch.tensor([[0, 1, 2], [1, 2, 3]])
    node_id = torch.randn(4, 16)
    ref = model(x, ei, node_id=node_id)
    cases = [
        (dict(node_id=torch.full((4, 16), float('nan'))), ValueError,
         "Expected 'node_id' to hold finite values only (found NaN or inf)"),
        (dict(node_id=torch.randn(4, 3)), ValueError,
         "Expected 'node_id' to have shape [4, 16] (got [4, 3])"),
        (dict(node_id=torch.ones(4, 16, dtype=torch.long)), TypeError,
         "Expected 'node_id' to be a floating-point tensor (got torch.int64)"),
        (dict(node_id=[[0.0] * 16] * 4), TypeError,
         "Expected 'node_id' to be a Tensor (got list)"),
        (dict(edge_index=ei.float()), TypeError,
         "Expected 'edge_index' to be an integer tensor (got torch.float32)"),
        (dict(edge_index=ei - 1), ValueError,
         "Expected 'edge_index' to hold node indices in [0, 4) "
         "(got values in [-1, 2])"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error) as exc:
            model(**{'x': x, 'edge_index': ei, **kwargs})
        assert str(exc.value) == message
    assert torch.equal(model(x, ei, node_id=node_id), ref)


def test_node_id_without_identifiers_is_refused():
    model = SamsaGraphModel(5, 16, 1, 2, heads=2, k=4, id_channels=0)
    x, ei = torch.randn(4, 5), torch.tensor([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(ValueError) as exc:
        model(x, ei, node_id=torch.randn(4, 16))
    assert str(exc.value) == ("Expected no 'node_id' since the model was "
                              "built with id_channels=0 (got shape [4, 16])")
