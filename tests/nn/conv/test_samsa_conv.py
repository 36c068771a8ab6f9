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
    conv.reset_parameters()
    # reset_parameters() reaches every parameter.
    for (name, p), s in zip(conv.named_parameters(), shifted):
        assert not torch.equal(p, s), name
    out2 = conv(x, edge_index, batch, edge_attr=edge_attr)
    assert out2.shape == out1.shape


def test_samsa_conv_is_gps_with_samsa_attention():
    """With k >= n and sampling='full' SamsaConv computes GPSConv's update
    given the same weights."""
    C, H = 16, 4
    D = C // H
    x, edge_index, edge_attr, batch, _ = make_graphs()
    ours = SamsaConv(C, gine(), heads=H, attn_kwargs=dict(sampling='full'))
    ref = GPSConv(C, gine(), heads=H, attn_type='multihead')
    ref.conv.load_state_dict(ours.conv.state_dict())
    ref.mlp.load_state_dict(ours.mlp.state_dict())
    for i in (1, 2, 3):
        getattr(ref, f'norm{i}').load_state_dict(
            getattr(ours, f'norm{i}').state_dict())
    a, m = ours.attn, ref.attn
    with torch.no_grad():
        wk = a.lin_kv.weight.view(H, 2, D, C)
        bk = a.lin_kv.bias.view(H, 2, D)
        m.in_proj_weight.copy_(torch.cat([
            a.lin_q.weight, wk[:, 0].reshape(C, C), wk[:, 1].reshape(C, C)]))
        m.in_proj_bias.copy_(torch.cat([
            a.lin_q.bias, bk[:, 0].reshape(C), bk[:, 1].reshape(C)]))
        m.out_proj.weight.copy_(a.lin_out.weight)
        m.out_proj.bias.copy_(a.lin_out.bias)
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
