import pytest
import torch
from torch.nn import Linear, ReLU, Sequential
from torch_geometric.nn import GINEConv, GPSConv
from torch_geometric.utils import to_undirected

from samsa_geo.nn import SamsaConv
from samsa_geo.typing import WITH_ONNXRUNTIME


def make_graphs(sizes=(12, 30, 7), channels=16, edge_dim=4):
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    ptr = [0] + torch.tensor(sizes).cumsum(0).tolist()
    edges = []
    for i, n in enumerate(sizes):
        src = torch.randint(n, (2 * n, ))
        dst = torch.randint(n, (2 * n, ))
        edges.append(torch.stack([src, dst]) + ptr[i])
    edge_index = to_undirected(torch.cat(edges, dim=1))
    x = torch.randn(batch.numel(), channels)
    edge_attr = torch.randn(edge_index.size(1), edge_dim)
    return x, edge_index, edge_attr, batch, ptr


def copy_attention(a, m):
    """Copies SamsaAttention ``a``'s projections into GPSConv's
    torch.nn.MultiheadAttention ``m``."""
    C, H = a.channels, a.heads
    D = C // H
    with torch.no_grad():
        wk = a.lin_kv.weight.view(H, 2, D, C)
        bk = a.lin_kv.bias.view(H, 2, D)
        m.in_proj_weight.copy_(torch.cat([
            a.lin_q.weight, wk[:, 0].reshape(C, C), wk[:, 1].reshape(C, C)]))
        m.in_proj_bias.copy_(torch.cat([
            a.lin_q.bias, bk[:, 0].reshape(C), bk[:, 1].reshape(C)]))
        m.out_proj.weight.copy_(a.lin_out.weight)
        m.out_proj.bias.copy_(a.lin_out.bias)


def gine(channels=16, edge_dim=4):
    nn = Sequential(Linear(channels, channels), ReLU(),
                    Linear(channels, channels))
    return GINEConv(nn, edge_dim=edge_dim)


@pytest.mark.parametrize('norm', ['batch_norm', 'layer_norm', 'graph_norm',
                                  None])
@pytest.mark.parametrize('with_conv', [False, True])
def test_samsa_conv(norm, with_conv):
    x, edge_index, edge_attr, batch, _ = make_graphs()
    conv = SamsaConv(16, gine() if with_conv else None, heads=4, k=8,
                     norm=norm)
    assert str(conv).startswith('SamsaConv(16, conv=')
    assert "heads=4, k=8, sampling='hard')" in str(conv)
    out = conv(x, edge_index, batch, edge_attr=edge_attr)
    assert out.shape == (x.size(0), 16)
    out.sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

    conv.eval()
    out1 = conv(x, edge_index, batch, edge_attr=edge_attr)
    with torch.no_grad():
        for p in conv.parameters():
            p.add_(1.0)
    shifted = [p.detach().clone() for p in conv.parameters()]
    torch.manual_seed(1)
    conv.reset_parameters()
    # reset_parameters() reaches every parameter.
    for (name, p), s in zip(conv.named_parameters(), shifted):
        assert not torch.equal(p, s), name
    out2 = conv(x, edge_index, batch, edge_attr=edge_attr)
    assert out2.shape == out1.shape
    assert not torch.allclose(out2, out1)
    # The reset conv is an untouched conv reset from the same seed:
    # parameters and buffers (running statistics too), hence outputs.
    fresh = SamsaConv(16, gine() if with_conv else None, heads=4, k=8,
                      norm=norm).eval()
    torch.manual_seed(1)
    fresh.reset_parameters()
    for (name, a), b in zip(conv.state_dict().items(),
                            fresh.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(fresh(x, edge_index, batch, edge_attr=edge_attr),
                       out2)


def test_samsa_conv_is_gps_with_samsa_attention():
    """With k >= n and sampling='full' SamsaConv computes GPSConv's update
    given the same weights."""
    C, H = 16, 4
    x, edge_index, edge_attr, batch, _ = make_graphs()
    ours = SamsaConv(C, gine(), heads=H, attn_kwargs=dict(sampling='full'))
    ref = GPSConv(C, gine(), heads=H, attn_type='multihead')
    ref.conv.load_state_dict(ours.conv.state_dict())
    ref.mlp.load_state_dict(ours.mlp.state_dict())
    for i in (1, 2, 3):
        getattr(ref, f'norm{i}').load_state_dict(
            getattr(ours, f'norm{i}').state_dict())
    copy_attention(ours.attn, ref.attn)
    ours.eval()
    ref.eval()
    out = ours(x, edge_index, batch, edge_attr=edge_attr)
    expected = ref(x, edge_index, batch, edge_attr=edge_attr)
    assert torch.allclose(out, expected, atol=1e-5)


def test_batch_isolation_with_local_conv():
    x, edge_index, edge_attr, batch, ptr = make_graphs()
    conv = SamsaConv(16, gine(), heads=2, k=4, norm='layer_norm').eval()
    out = conv(x, edge_index, batch, edge_attr=edge_attr)
    x2 = x.clone()
    x2[ptr[1]:ptr[2]] += 5.0
    out2 = conv(x2, edge_index, batch, edge_attr=edge_attr)
    assert torch.allclose(out[:ptr[1]], out2[:ptr[1]], atol=1e-6)
    assert torch.allclose(out[ptr[2]:], out2[ptr[2]:], atol=1e-6)
    assert not torch.allclose(out[ptr[1]:ptr[2]], out2[ptr[1]:ptr[2]])


def test_stack_in_a_pyg_model():
    from torch_geometric.data import Batch, Data
    from torch_geometric.loader import DataLoader
    from torch_geometric.nn import global_mean_pool

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = Linear(3, 16)
            self.convs = torch.nn.ModuleList(
                [SamsaConv(16, gine(16, 2), heads=2, k=4) for _ in range(2)])
            self.head = Linear(16, 1)

        def forward(self, data):
            h = self.lin(data.x)
            for conv in self.convs:
                h = conv(h, data.edge_index, data.batch,
                         edge_attr=data.edge_attr)
            return self.head(global_mean_pool(h, data.batch))

    graphs = []
    for n in (5, 9, 14, 3):
        ei = torch.randint(n, (2, 2 * n))
        graphs.append(Data(x=torch.randn(n, 3), edge_index=ei,
                           edge_attr=torch.randn(ei.size(1), 2)))
    net = Net()
    loader = DataLoader(graphs, batch_size=4)
    out = net(next(iter(loader)))
    assert out.shape == (4, 1)
    net.eval()
    single = torch.cat([net(Batch.from_data_list([g])) for g in graphs])
    assert torch.allclose(net(Batch.from_data_list(graphs)), single,
                          atol=1e-5)


def test_missing_edge_index():
    conv = SamsaConv(16, gine(), heads=2, k=4)
    with pytest.raises(ValueError, match="'edge_index'"):
        conv(torch.randn(5, 16))


def test_compile_fullgraph_matches_eager():
    conv = SamsaConv(16, heads=4, k=8, norm='layer_norm').eval()
    x = torch.randn(40, 16)
    compiled = torch.compile(conv, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        assert torch.allclose(compiled(x), conv(x), atol=1e-5)
    # Batched, with the sizes known (as PyG's to_dense_batch takes them).
    torch._dynamo.reset()
    x, _, _, batch, _ = make_graphs(sizes=(12, 12, 12))
    attn = conv.attn
    attn.padded = True
    compiled = torch.compile(attn, fullgraph=True, backend='aot_eager')
    with torch.no_grad():
        out = compiled(x, batch, num_graphs=3, max_num_nodes=12)
        assert torch.allclose(out, attn(x, batch), atol=1e-5)


@pytest.mark.slow
def test_compile_inductor_matches_eager():
    conv = SamsaConv(16, heads=4, k=8, norm='layer_norm').eval()
    x = torch.randn(40, 16)
    compiled = torch.compile(conv, fullgraph=True)
    with torch.no_grad():
        assert torch.allclose(compiled(x), conv(x), atol=1e-4)


@pytest.mark.skipif(not WITH_ONNXRUNTIME, reason='onnxruntime not installed')
def test_onnx_export(tmp_path):
    import warnings

    import onnxruntime as ort
    conv = SamsaConv(16, heads=4, k=8, norm='layer_norm').eval()
    x = torch.randn(40, 16)
    path = str(tmp_path / 'samsa_conv.onnx')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(conv, (x, ), path, input_names=['x'],
                          output_names=['out'], dynamo=True)
    sess = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    (out, ) = sess.run(None, {'x': x.numpy()})
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(out), conv(x), atol=1e-4)


@pytest.mark.parametrize('with_conv', [False, True])
def test_samsa_conv_norm_first(with_conv):
    x, edge_index, edge_attr, batch, _ = make_graphs()
    conv = SamsaConv(16, gine() if with_conv else None, heads=4, k=8,
                     norm='layer_norm', norm_first=True)
    assert str(conv).endswith("sampling='hard', norm_first=True)")
    out = conv(x, edge_index, batch, edge_attr=edge_attr)
    assert out.shape == (x.size(0), 16)
    out.sum().backward()
    for name, p in conv.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name

    # With every branch's last layer at zero, the pre-norm layer is the
    # identity (the residual stream is never normalised); post-norm is not.
    post = SamsaConv(16, gine() if with_conv else None, heads=4, k=8,
                     norm='layer_norm')
    for layer in (conv, post):
        layer.eval()
        branches = [layer.attn.lin_out, layer.mlp[3]]
        if with_conv:
            branches.append(layer.conv.nn[2])
        with torch.no_grad():
            for lin in branches:
                lin.weight.zero_()
                lin.bias.zero_()
    assert torch.equal(conv(x, edge_index, batch, edge_attr=edge_attr), x)
    assert not torch.allclose(post(x, edge_index, batch, edge_attr=edge_attr),
                              x, atol=1e-3)


def test_samsa_conv_orders_agree_without_norm():
    # Without normalisation and a local branch both orders compute
    # x + attn(x) + mlp(x + attn(x)).
    x, _, _, batch, _ = make_graphs()
    post = SamsaConv(16, heads=4, k=8, norm=None).eval()
    pre = SamsaConv(16, heads=4, k=8, norm=None, norm_first=True).eval()
    pre.load_state_dict(post.state_dict())
    assert torch.allclose(pre(x, batch=batch), post(x, batch=batch),
                          atol=1e-6)


def test_gpsconv_positional_order():
    """GPSConv's positional arguments, in its order; SAMSA's k keyword-only.
    """
    import inspect
    ours = list(inspect.signature(SamsaConv).parameters.values())
    theirs = list(inspect.signature(GPSConv).parameters)
    positional = [p.name for p in ours if p.kind == p.POSITIONAL_OR_KEYWORD]
    assert positional == theirs
    assert [p.name for p in ours if p.kind == p.KEYWORD_ONLY] == ['k',
                                                                  'norm_first']

    conv = SamsaConv(64, None, 4, 0.5, 'gelu')
    assert conv.dropout == 0.5 and conv.attn.k == 64
    assert isinstance(conv.mlp[1], torch.nn.GELU)
    # k where GPSConv's dropout sits fails loudly instead of shifting.
    with pytest.raises(ValueError, match="'k' is keyword-only"):
        SamsaConv(64, None, 4, 32)
    with pytest.raises(TypeError):
        SamsaConv(64, None, 4, 0.0, 'relu', None, 'batch_norm', None,
                  'samsa', None, 32)


def test_attn_type_and_attn_kwargs():
    conv = SamsaConv(16, None, 4, attn_type='multihead',
                     attn_kwargs={'dropout': 0.3, 'batch_first': True})
    assert conv.attn.dropout == 0.3
    conv = SamsaConv(16, heads=2, k=4,
                     attn_kwargs={'sampling': 'soft', 'num_registers': 2})
    assert conv.attn.sampling == 'soft' and conv.attn.num_registers == 2
    with pytest.raises(ValueError, match="attn_type='samsa'.*'k'"):
        SamsaConv(16, None, 4, attn_type='performer')
    with pytest.raises(ValueError, match=r"\['add_bias_kv', 'bias'\]"):
        SamsaConv(16, None, 4, attn_type='multihead',
                  attn_kwargs={'bias': False, 'add_bias_kv': True})
    with pytest.raises(ValueError, match="'attn_type'"):
        SamsaConv(16, None, 4, attn_type='linear')


class GraphGPS(torch.nn.Module):
    """The model of PyG's ``examples/graph_gps.py`` (ZINC: atom and bond
    embeddings, random-walk positional encodings, GINE + global attention
    layers, sum pooling), with the layer class as an argument."""
    def __init__(self, layer, channels=32, pe_dim=8, num_layers=2,
                 attn_type='multihead', attn_kwargs=None):
        super().__init__()
        from torch.nn import BatchNorm1d, Embedding, ModuleList
        self.node_emb = Embedding(28, channels - pe_dim)
        self.pe_lin = Linear(20, pe_dim)
        self.pe_norm = BatchNorm1d(20)
        self.edge_emb = Embedding(4, channels)
        self.convs = ModuleList()
        for _ in range(num_layers):
            nn = Sequential(Linear(channels, channels), ReLU(),
                            Linear(channels, channels))
            self.convs.append(layer(channels, GINEConv(nn), heads=4,
                                    attn_type=attn_type,
                                    attn_kwargs=attn_kwargs))
        self.mlp = Sequential(Linear(channels, channels // 2), ReLU(),
                              Linear(channels // 2, channels // 4), ReLU(),
                              Linear(channels // 4, 1))

    def forward(self, x, pe, edge_index, edge_attr, batch):
        from torch_geometric.nn import global_add_pool
        x_pe = self.pe_norm(pe)
        x = torch.cat((self.node_emb(x.squeeze(-1)), self.pe_lin(x_pe)), 1)
        edge_attr = self.edge_emb(edge_attr)
        for conv in self.convs:
            x = conv(x, edge_index, batch, edge_attr=edge_attr)
        x = global_add_pool(x, batch)
        return self.mlp(x)


def zinc_like_batch(sizes=(9, 23, 14, 30)):
    from torch_geometric.data import Batch, Data
    from torch_geometric.transforms import AddRandomWalkPE
    graphs = []
    for n in sizes:
        ring = torch.arange(n)
        edge_index = to_undirected(torch.stack([ring, (ring + 1) % n]))
        data = Data(x=torch.randint(28, (n, 1)), edge_index=edge_index,
                    edge_attr=torch.randint(4, (edge_index.size(1), )),
                    y=torch.randn(1), num_nodes=n)
        graphs.append(AddRandomWalkPE(20, attr_name='pe')(data))
    return Batch.from_data_list(graphs)


def test_port_graph_gps_by_renaming_the_class():
    """PyG's graph_gps.py model with GPSConv renamed to SamsaConv: the same
    code builds and trains, and with k >= every graph's size it computes the
    GPSConv model's output given the same weights."""
    torch.manual_seed(0)
    kwargs = dict(attn_type='multihead', attn_kwargs={'dropout': 0.5})
    ours, ref = GraphGPS(SamsaConv, **kwargs), GraphGPS(GPSConv, **kwargs)
    assert all(conv.attn.dropout == 0.5 for conv in ours.convs)
    state = ours.state_dict()
    ref.load_state_dict({key: state[key] for key in ref.state_dict()
                         if key in state and '.attn.' not in key},
                        strict=False)
    for a, b in zip(ours.convs, ref.convs):
        copy_attention(a.attn, b.attn)
    data = zinc_like_batch()
    args = (data.x, data.pe, data.edge_index, data.edge_attr, data.batch)
    ours.eval()
    ref.eval()
    with torch.no_grad():
        assert torch.allclose(ours(*args), ref(*args), atol=1e-4)

    # Graphs larger than k = 64: the layers sample, and train end to end.
    data = zinc_like_batch((80, 100))
    args = (data.x, data.pe, data.edge_index, data.edge_attr, data.batch)
    ours.train()
    optimizer = torch.optim.Adam(ours.parameters(), lr=1e-3)
    loss = (ours(*args).squeeze(-1) - data.y).abs().mean()
    loss.backward()
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    optimizer.step()


@pytest.mark.parametrize('num_registers', [0, 2])
def test_return_attention_weights(num_registers):
    """Like TransformerConv's (out, (edge_index, alpha)): the indices of the
    tokens each graph's head attended to, all inside that graph."""
    x, edge_index, edge_attr, batch, ptr = make_graphs()
    H, k = 2, 8
    conv = SamsaConv(16, gine(), H, k=k,
                     attn_kwargs={'num_registers': num_registers}).eval()
    out = conv(x, edge_index, batch, edge_attr=edge_attr)
    out2, (indices, alpha) = conv(x, edge_index, batch, edge_attr=edge_attr,
                                  return_attention_weights=True)
    # The weights come from the explicit path: equal up to rounding.
    assert torch.allclose(out, out2, atol=1e-5)
    sizes = [ptr[i + 1] - ptr[i] for i in range(len(ptr) - 1)]
    assert indices.shape == (len(sizes), H, k)
    for b, n in enumerate(sizes):
        tokens = indices[b][indices[b] >= 0]
        assert bool(((tokens >= ptr[b]) & (tokens < ptr[b + 1])).all())
        # Registers compete with the tokens: k distinct candidates per head
        # (all of them where the graph has fewer), -1 in the unused slots.
        for h in range(H):
            used = indices[b, h][indices[b, h] != -1]
            assert used.numel() == min(n + num_registers, k)
            assert used.unique().numel() == used.numel()
            assert bool((used >= -1 - num_registers).all())
    assert alpha.shape == (x.size(0), H, k)
    assert torch.allclose(alpha.sum(-1), torch.ones(x.size(0), H), atol=1e-5)


def test_compiles_once_for_every_batch_layout():
    # With num_graphs (what batch_hints(data) gives) the layer traces into
    # one graph without breaks, and dynamic shapes serve every layout.
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    conv = SamsaConv(16, None, 4, k=6).eval()
    counter = CompileCounter()
    compiled = torch.compile(conv, backend=counter, dynamic=True,
                             fullgraph=True)
    for sizes in ([10, 20, 5], [7, 30], [12, 12, 12, 9], [40, 1, 0, 3]):
        batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
        x = torch.randn(batch.numel(), 16)
        with torch.no_grad():
            out = compiled(x, None, batch, num_graphs=len(sizes))
            ref = conv(x, None, batch, num_graphs=len(sizes))
        assert torch.allclose(out, ref, atol=1e-5)
    assert counter.frame_count == 1


def test_compiles_once_in_training_with_both_hints():
    # In training the selection also takes the bottom set, whose size is
    # symbolic under dynamic shapes: still one graph, equal to eager.
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    conv = SamsaConv(16, None, 4, k=6, norm=None).train()
    counter = CompileCounter()
    compiled = torch.compile(conv, backend=counter, dynamic=True,
                             fullgraph=True)
    for sizes in ([10, 20, 5], [7, 30], [12, 12, 12, 9]):
        batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
        x = torch.randn(batch.numel(), 16)
        hints = {'num_graphs': len(sizes), 'max_num_nodes': max(sizes)}
        torch.manual_seed(1)
        out = compiled(x, None, batch, **hints)
        torch.manual_seed(1)
        ref = conv(x, None, batch, **hints)
        assert torch.allclose(out, ref, atol=1e-5)
        out.sum().backward()
    assert counter.frame_count == 1


def _with_both_hints(fn, x, batch, pos, sizes):
    return fn(x, None, batch, num_graphs=len(sizes),
              max_num_nodes=max(sizes))


LAYOUTS = ([10, 20, 5], [7, 30], [12, 12, 12, 9])


def test_stacked_layers_compile_once_in_training(dynamic_compile):
    # Two layers, training, dynamic shapes: the temperature reaches the
    # relaxation's backward pass as a constant (a symbolic float there
    # broke Dynamo), and a new temperature recompiles.
    class Stack(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList(
                SamsaConv(16, None, 4, k=6, norm=None) for _ in range(2))

        def forward(self, x, edge_index, batch, num_graphs, max_num_nodes):
            for conv in self.convs:
                x = conv(x, edge_index, batch, num_graphs=num_graphs,
                         max_num_nodes=max_num_nodes)
            return x

    model = Stack().train()
    run = dynamic_compile(model, _with_both_hints)
    run.assert_equal(LAYOUTS)
    assert run.counter.frame_count == 1
    before = run.step(model, [3, 30], 3)[1]
    for conv in model.convs:
        conv.attn.tau = 0.3
    ref_grad = run.assert_equal([[3, 30]], first_seed=3)[1]
    assert not torch.allclose(ref_grad, before, atol=1e-3)
    assert run.counter.frame_count == 2


def test_fractional_k_compiles_once_in_training(dynamic_compile):
    # A fractional k is a float attribute, symbolic under dynamic shapes:
    # the sizes computed from it reached the relaxation's backward pass,
    # which Dynamo could not lift them into. A new fraction recompiles.
    torch.manual_seed(0)
    conv = SamsaConv(16, None, 4, k=0.5, norm=None).train()
    run = dynamic_compile(conv, _with_both_hints)
    run.assert_equal(LAYOUTS)
    assert run.counter.frame_count == 1
    before = run.step(conv, [3, 30], 3)[0]
    conv.attn.k = 0.25
    ref = run.assert_equal([[3, 30]], first_seed=3)[0]
    assert not torch.allclose(ref, before, atol=1e-3)
    assert run.counter.frame_count == 2


@pytest.mark.parametrize('train', [False, True])
@pytest.mark.parametrize('attn_kwargs', [
    {'relative_bias': True}, {'score': 'maxout'},
    {'normalization': 'leaky'}])
def test_explicit_attention_compiles_once_for_every_layout(
        dynamic_compile, train, attn_kwargs):
    # The explicit path (relative bias on the CPU, SFT scores and
    # normalisation) processes its tiles in chunks: the chunk count was
    # specialised, a recompilation per number of sets and largest set.
    torch.manual_seed(0)
    conv = SamsaConv(16, None, 4, k=6, norm=None,
                     attn_kwargs=attn_kwargs).train(train)

    def call(fn, x, batch, pos, sizes):
        return fn(x, None, batch, pos=pos, num_graphs=len(sizes),
                  max_num_nodes=max(sizes))

    run = dynamic_compile(conv, call)
    run.assert_equal(LAYOUTS + ([25, 3, 14], ))
    assert run.counter.frame_count == 1


def test_compiled_without_hints_does_not_recompile_per_layout():
    # Without hints the number of sets is read back once (a graph break);
    # the shapes after it are bounds, so new layouts reuse the graphs.
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    conv = SamsaConv(16, None, 4, k=6).eval()
    counter = CompileCounter()
    compiled = torch.compile(conv, backend=counter, dynamic=True)
    frames = []
    for sizes in ([10, 20, 5], [7, 30], [12, 12, 12, 9], [40, 1, 3]):
        batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
        x = torch.randn(batch.numel(), 16)
        with torch.no_grad():
            out = compiled(x, None, batch)
            assert torch.allclose(out, conv(x, None, batch), atol=1e-5)
        frames.append(counter.frame_count)
    assert frames[1:] == frames[:1] * 3
