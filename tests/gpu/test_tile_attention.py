"""The tiles' attention kernels compiled on the GPU: the kernels alone at
the shapes of a set of 262,144 tokens against attention in float32, and a
training step of the layer with config.tile_attention on against PyTorch's
SDPA; on packed rows, the kernels alone against attention in float32 and
a training step of the small-graph model with config.packed_attention on
against SDPA. Run on the GPU machine with ``pytest -m gpu tests/gpu``.

The kernels alone are held to a float32 reference, not to bfloat16 SDPA:
torch 2.11's cuDNN SDPA backward keys its cached graph on the shapes and
strides of q, k and v but not on those of the output's gradient, so a
call whose gradient has another layout than an earlier call of the same
q, k and v replays that call's graph and returns wrong gradients (on an
H100, cuDNN 9.19: compared with SDPA, the first test below failed in a
run of the whole GPU suite and passed alone; two SDPA calls that differ
in the gradient's layout alone give it)."""
import pytest
import torch

from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def _attention_fp32(q, k, v, bias, grad):
    # Softmax attention of q [nt, H, T, D] over k, v [nt, H, K, D] in
    # float32 with a float key bias [nt, K] (or None), and the gradients
    # of q, k and v for the output's gradient [nt, H, T, D].
    leaves = [t.detach().float().requires_grad_() for t in (q, k, v)]
    s = leaves[0] @ leaves[1].transpose(-1, -2) / q.size(-1)**0.5
    if bias is not None:
        s = s + bias[:, None, None]  # [nt, K] -> [nt, 1, 1, K]
    out = s.softmax(-1) @ leaves[2]
    out.backward(grad.float())
    return out, [t.grad for t in leaves]


@pytest.mark.parametrize('nt,T,K,masked', [(128, 2048, 256, False),
                                           (64, 256, 200, True),
                                           (16, 1000, 64, True)])
def test_kernels_match_float32_attention(nt, T, K, masked):
    from samsa_geo.nn.attention._tile_attention_triton import (
        tile_attention_triton,
    )
    g = torch.Generator('cuda').manual_seed(0)
    H, D = 8, 32
    q = torch.randn(nt, T, H, D, device='cuda', generator=g,
                    dtype=torch.bfloat16).transpose(1, 2)
    kv = torch.randn(1, H, K, 2 * D, device='cuda', generator=g,
                     dtype=torch.bfloat16).expand(nt, H, K, 2 * D)
    k, v = kv[..., :D], kv[..., D:]
    bias = None
    if masked:
        valid = torch.rand(nt, K, device='cuda', generator=g) < 0.8
        valid[:, 0] = True
        bias = torch.zeros(nt, K, device='cuda').masked_fill_(
            ~valid, float('-inf'))
    grad = torch.randn(nt, H, T, D, device='cuda', generator=g,
                       dtype=torch.bfloat16)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = tile_attention_triton(*leaves, bias)
    out.backward(grad)
    ref, ref_grads = _attention_fp32(q, k, v, bias, grad)
    # bfloat16 rounding: 0.002-0.003 on an H100, as SDPA's kernels.
    assert _rel(out, ref) < 6e-3
    for a, b in zip(leaves, ref_grads):
        assert _rel(a.grad, b) < 6e-3


@pytest.mark.parametrize('B,n', [(2, 16384), (32, 1024)])
def test_layer_gradients_do_not_depend_on_the_output_gradient_layout(
        B, n, monkeypatch):
    # The layer hands SDPA the gradient of its output projection, laid out
    # alike whatever the layout of the gradient that the layer receives:
    # no call of the cuDNN backward replays a graph built for another
    # layout (module docstring). Here the same gradient arrives dense and
    # as the first half of wider rows.
    import torch.nn.functional as F
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, 'scaled_dot_product_attention', counted)
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256).cuda().train()
    x = torch.randn(B * n, 256, device='cuda')
    batch = torch.arange(B, device='cuda').repeat_interleave(n)
    wide = torch.randn(B * n, 512, device='cuda')

    def grads(contiguous):
        conv.zero_grad()
        x_ = x.clone().requires_grad_()
        torch.manual_seed(1)
        with config.attention_config(cuda_graphs=False):
            with torch.autocast('cuda', dtype=torch.bfloat16):
                out = conv(x_, None, batch, num_graphs=B, max_num_nodes=n)
        grad = wide.to(out.dtype)[:, :256]  # [N, 512] -> [N, 256], strided
        out.backward(grad.contiguous() if contiguous else grad)
        found = {name: p.grad.float().clone()
                 for name, p in conv.named_parameters() if p.grad is not None}
        found['x'] = x_.grad
        return found

    dense, strided = grads(True), grads(False)
    assert calls, 'the layer did not train through SDPA'
    # The strided gradient changes the rounding of some backward kernels
    # (bfloat16): up to 0.036 of a bias's gradient norm on an H100 (the
    # input's gradient was equal); another layout's cuDNN graph gives
    # unrelated gradients (relative error about 1.4).
    for name, want in dense.items():
        if want.norm() < 1e-4:  # rounding alone (the scorer's biases
            continue  # shift every importance score alike)
        assert _rel(strided[name], want) < 0.15, name
    assert _rel(strided['x'], dense['x']) < 1e-2


@pytest.mark.parametrize('B,n', [(1, 262144), (8, 4096)])
def test_layer_training_with_the_kernels_matches_sdpa(
        B, n, assert_as_accurate_as_pytorch):
    # A bf16 training step of the layer with config.tile_attention on is
    # as close to the float32 step as the bf16 step on SDPA (gradients
    # that are rounding alone, such as the biases that a batch norm
    # reads, are as far from float32 either way).
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256).cuda().train()
    x = torch.randn(B * n, 256, device='cuda')
    batch = torch.arange(B, device='cuda').repeat_interleave(n)
    g = torch.randn(B * n, 256, device='cuda')

    def step(on, dtype):
        conv.zero_grad()
        x_ = x.clone().requires_grad_()
        torch.manual_seed(1)
        with config.attention_config(tile_attention=on, cuda_graphs=False):
            with torch.autocast('cuda', dtype=dtype or torch.bfloat16,
                                enabled=dtype is not None):
                out = conv(x_, None, batch, num_graphs=B, max_num_nodes=n)
            (out.float() * g).sum().backward()
        grads = {name: p.grad.float().clone()
                 for name, p in conv.named_parameters() if p.grad is not None}
        grads['x'] = x_.grad
        return out.detach().float(), grads

    got = step(True, torch.bfloat16)
    want = step(False, torch.bfloat16)
    exact = step(False, None)
    assert_as_accurate_as_pytorch(got, want, exact)


@pytest.mark.parametrize('sizes', [[25] * 64, [3, 0, 250, 17] * 8])
def test_packed_kernels_match_float32_attention_per_set(sizes):
    # The kernels on packed rows (bfloat16) against attention in float32
    # on each set alone, forward and backward.
    from samsa_geo.nn.attention._tile_attention_triton import (
        packed_attention_triton,
    )
    g = torch.Generator('cuda').manual_seed(0)
    H, D = 4, 16
    C, N, n = H * D, sum(sizes), max(sizes)
    qkv = torch.randn(N, 3 * C, device='cuda', generator=g,
                      dtype=torch.bfloat16, requires_grad=True)
    ptr = torch.tensor([0] + sizes, device='cuda').cumsum(0)
    grad = torch.randn(N, C, device='cuda', generator=g,
                       dtype=torch.bfloat16)
    out = packed_attention_triton(qkv, ptr, H, n)
    out.backward(grad)
    outs, grads = [], []
    for rows, rows_grad in zip(qkv.detach().split(sizes), grad.split(sizes)):
        q = rows[:, :C].view(1, -1, H, D).transpose(1, 2)  # [1, H, n, D]
        kv = rows[:, C:].view(1, -1, H, 2 * D).transpose(1, 2)
        o_grad = rows_grad.view(1, -1, H, D).transpose(1, 2)
        o, (dq, dk, dv) = _attention_fp32(q, kv[..., :D], kv[..., D:], None,
                                          o_grad)
        # [1, H, n, D] -> [n, C]; dk, dv -> [n, 2C] in the rows' layout
        outs.append(o.transpose(1, 2).reshape(-1, C))
        dkv = torch.cat([dk, dv], -1).transpose(1, 2).reshape(-1, 2 * C)
        grads.append(torch.cat([dq.transpose(1, 2).reshape(-1, C), dkv], 1))
    assert _rel(out, torch.cat(outs)) < 6e-3
    assert _rel(qkv.grad, torch.cat(grads)) < 6e-3


def test_graph_model_training_with_packed_kernels_matches_sdpa(
        molecule_case, graph_model_step, assert_as_accurate_as_pytorch):
    # A bf16 training step of the small-graph model on molecule-sized
    # graphs with config.packed_attention on is as close to the float32
    # step as the bf16 step on the padded SDPA.
    model, data, g = molecule_case
    got = graph_model_step(model, data, g, {'packed_attention': True},
                           torch.bfloat16)
    want = graph_model_step(model, data, g, {'packed_attention': False},
                            torch.bfloat16)
    exact = graph_model_step(model, data, g, {'packed_attention': False})
    assert_as_accurate_as_pytorch(got, want, exact)
