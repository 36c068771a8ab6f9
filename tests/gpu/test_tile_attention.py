"""The tiles' attention kernels compiled on the GPU, against PyTorch's
SDPA: the kernels alone at the shapes of a set of 262,144 tokens, and a
training step of the layer with config.tile_attention on; on packed rows,
the kernels alone and a training step of the small-graph model with
config.packed_attention on. Run on the GPU machine with
``pytest -m gpu tests/gpu``."""
import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize('nt,T,K,masked', [(128, 2048, 256, False),
                                           (64, 256, 200, True),
                                           (16, 1000, 64, True)])
def test_kernels_match_sdpa(nt, T, K, masked):
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
    ref_leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    mask = None if bias is None else bias.to(torch.bfloat16)[:, None, None]
    ref = F.scaled_dot_product_attention(*ref_leaves, attn_mask=mask)
    ref.backward(grad)
    assert _rel(out, ref) < 1e-2
    for a, b in zip(leaves, ref_leaves):
        assert _rel(a.grad, b.grad) < 2e-2


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
def test_packed_kernels_match_padded_sdpa(sizes):
    # The kernels on packed rows (bfloat16) against SDPA on the padded
    # sets, forward and backward.
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
    ref_in = qkv.detach().requires_grad_()
    outs = []
    for rows in ref_in.split(sizes):
        q = rows[:, :C].view(1, -1, H, D).transpose(1, 2)
        kv = rows[:, C:].view(1, -1, H, 2 * D).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, kv[..., :D], kv[..., D:])
        outs.append(o.transpose(1, 2).reshape(-1, C))
    ref = torch.cat(outs)
    ref.backward(grad)
    assert _rel(out, ref) < 1e-2 and _rel(qkv.grad, ref_in.grad) < 2e-2


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
