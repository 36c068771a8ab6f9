"""The tiles' attention kernels (forward, and the backward's two kernels)
under Triton's interpreter against float64 autograd of the formula:
unaligned sizes, a key bias with masked keys and log-counts, keys
broadcast over the tiles of a set, a tile without any key, float32,
bfloat16 and float16; the same kernels on packed rows (ragged sets, an
empty one), and the layers' training steps with them against SDPA's."""
import math

import pytest
import torch


@pytest.fixture(scope='module')
def kernel(triton_modules):
    return triton_modules('samsa_geo.nn.attention._tile_attention_triton')


def _reference(q, k, v, bias):
    # softmax(q k^T / sqrt(D) + bias) v in float64; rows without a key 0.
    s = q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))
    if bias is not None:
        s = s + bias[:, None, None, :]
    empty = torch.isinf(s).all(-1, keepdim=True)
    p = torch.softmax(s.masked_fill(empty, 0.0), -1).masked_fill(empty, 0.0)
    return p @ v


def _inputs(nt, H, T, K, D, dtype, shared, gen):
    q = torch.randn(nt, T, H, D, generator=gen).to(dtype).transpose(1, 2)
    if shared:  # one set: its keys broadcast over the tiles
        k = torch.randn(1, H, K, 2 * D, generator=gen).to(dtype)
        k = k.expand(nt, H, K, 2 * D)
    else:
        k = torch.randn(nt, H, K, 2 * D, generator=gen).to(dtype)
    return q, k[..., :D], k[..., D:]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize('shared', [False, True])
@pytest.mark.parametrize('bias_kind', [None, 'mask', 'log_count'])
def test_kernels_match_float64_autograd(kernel, dtype, shared, bias_kind):
    gen = torch.Generator().manual_seed(0)
    nt, H, T, K, D = 3, 2, 37, 20, 24
    q, k, v = _inputs(nt, H, T, K, D, dtype, shared, gen)
    bias = None
    if bias_kind is not None:
        bias = torch.zeros(nt, K)
        bias[:, 15:] = float('-inf')  # masked keys
        bias[1, 3:] = float('-inf')  # a tile with 3 keys
        if bias_kind == 'log_count':
            bias[:, :3] = torch.log(torch.tensor([2.0, 5.0, 1.0]))
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = kernel.tile_attention_triton(*leaves, bias)
    assert out.shape == (nt, H, T, D) and out.dtype == dtype
    # Token-major storage: the tiles' read-back is a view.
    assert out.transpose(1, 2).is_contiguous()
    grad = torch.randn(out.shape, generator=gen)
    out.backward(grad.to(dtype))
    ref_leaves = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = _reference(*ref_leaves, None if bias is None else bias.double())
    ref.backward(grad.double())
    tol = {torch.float32: 2e-5, torch.bfloat16: 3e-2,
           torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    for got, want in zip(leaves, ref_leaves):
        assert got.grad.shape == got.shape
        torch.testing.assert_close(got.grad.double(), want.grad,
                                   rtol=tol, atol=tol * max(
                                       1.0, float(want.grad.abs().max())))


def test_a_tile_without_keys_gives_zeros(kernel):
    gen = torch.Generator().manual_seed(1)
    q, k, v = _inputs(2, 2, 20, 16, 16, torch.float32, False, gen)
    bias = torch.zeros(2, 16)
    bias[0] = float('-inf')
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = kernel.tile_attention_triton(*leaves, bias)
    out.sum().backward()
    assert out[0].abs().max() == 0 and bool(torch.isfinite(out).all())
    for t in leaves:
        assert bool(torch.isfinite(t.grad).all())
        assert t.grad[0].abs().max() == 0


def test_arguments_are_checked(kernel):
    q = torch.randn(2, 2, 8, 16)
    k = torch.randn(2, 2, 5, 16)
    with pytest.raises(ValueError, match="'k' and 'v'"):
        kernel.tile_attention_triton(q, k, k[:, :, :4])
    with pytest.raises(ValueError, match='at most 256 keys'):
        big = torch.randn(2, 2, 300, 16)
        kernel.tile_attention_triton(q, big, big)
    with pytest.raises(TypeError, match='one dtype'):
        kernel.tile_attention_triton(q, k.double(), k.double())
    with pytest.raises(ValueError, match="'key_bias'"):
        kernel.tile_attention_triton(q, k, k, torch.zeros(2, 4))


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
@pytest.mark.parametrize('sizes', [[160, 160], [150, 40, 90], [150, 5, 90]])
def test_layer_training_with_the_kernels_equals_sdpa(kernel, monkeypatch,
                                                     spy, sampling, sizes):
    # config.tile_attention on (CUDA's kernels; here interpreted): a
    # training step of the attention (tiles of 16 queries, ragged sets
    # too) gives SDPA's output and gradients.
    from samsa_geo.nn import SamsaAttention
    from samsa_geo.nn.attention import _attend, config
    monkeypatch.setattr(_attend, 'triton_serves', lambda device: True)
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=2, k=8, tile_size=16,
                          sampling=sampling).train()
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    x = torch.randn(batch.numel(), 32)
    g = torch.randn(batch.numel(), 32)

    def step(on):
        attn.zero_grad()
        x_ = x.clone().requires_grad_()
        torch.manual_seed(1)
        with config.attention_config(tile_attention=on):
            out = attn(x_, batch, num_graphs=len(sizes),
                       max_num_nodes=max(sizes))
        (out * g).sum().backward()
        return out.detach(), x_.grad, {n: p.grad.clone() for n, p in
                                       attn.named_parameters()
                                       if p.grad is not None}

    calls = spy(kernel, 'tile_attention_triton', keep_args=False)
    got = step(True)
    assert len(calls) == 1
    want = step(False)
    assert len(calls) == 1
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    assert got[2].keys() == want[2].keys()
    for name in want[2]:
        torch.testing.assert_close(got[2][name], want[2][name], rtol=1e-4,
                                   atol=1e-5, msg=name)


def _packed_reference(qkv, sizes, heads):
    # Every set's softmax attention over its own rows of qkv [N, 3C], in
    # qkv's dtype (float64 here): [N, C].
    C = qkv.size(1) // 3
    D = C // heads
    outs = []
    for rows in qkv.split(sizes):
        q = rows[:, :C].view(-1, heads, D).transpose(0, 1)  # [H, n, D]
        kv = rows[:, C:].view(-1, heads, 2 * D).transpose(0, 1)
        s = q @ kv[..., :D].transpose(-1, -2) / math.sqrt(D)
        o = torch.softmax(s, -1) @ kv[..., D:]  # [H, n, D]
        outs.append(o.transpose(0, 1).reshape(-1, C))
    return torch.cat(outs)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize('sizes', [[5, 0, 17, 1, 25], [40], [3, 3, 70]])
def test_packed_kernels_match_float64_autograd(kernel, dtype, sizes):
    # Sets on packed rows (an empty one, a single token, sizes past one
    # query block), rows wider than 3C (a slice): the output and the
    # gradient of qkv, written by the kernels alone.
    gen = torch.Generator().manual_seed(2)
    H, D = 2, 24
    C, N = H * D, sum(sizes)
    wide = torch.randn(N, 3 * C + 8, generator=gen).to(dtype)
    qkv = wide[:, :3 * C].detach().requires_grad_()
    ptr = torch.tensor([0] + sizes).cumsum(0)
    out = kernel.packed_attention_triton(qkv, ptr, H, max(sizes))
    assert out.shape == (N, C) and out.dtype == dtype
    grad = torch.randn(N, C, generator=gen)
    out.backward(grad.to(dtype))
    ref_in = qkv.detach().double().requires_grad_()
    ref = _packed_reference(ref_in, sizes, H)
    ref.backward(grad.double())
    tol = {torch.float32: 2e-5, torch.bfloat16: 3e-2,
           torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)
    assert qkv.grad.shape == (N, 3 * C)
    torch.testing.assert_close(qkv.grad.double(), ref_in.grad, rtol=tol,
                               atol=tol * max(1.0, float(
                                   ref_in.grad.abs().max())))


def test_packed_arguments_are_checked(kernel):
    qkv = torch.randn(6, 48)
    ptr = torch.tensor([0, 2, 6])
    with pytest.raises(ValueError, match="'qkv' of shape"):
        kernel.packed_attention_triton(qkv, ptr, 5, 4)
    with pytest.raises(ValueError, match="'ptr' of shape"):
        kernel.packed_attention_triton(qkv, ptr.float(), 2, 4)
    with pytest.raises(ValueError, match='at most 256 tokens'):
        kernel.packed_attention_triton(qkv, ptr, 2, 300)
    with pytest.raises(ValueError, match="'max_size' of at least 1"):
        kernel.packed_attention_triton(qkv, ptr, 2, 0)
    empty = torch.randn(0, 48, requires_grad=True)
    none = torch.zeros(1, dtype=torch.long)
    out = kernel.packed_attention_triton(empty, none, 2, 0)
    assert out.shape == (0, 16)


@pytest.mark.parametrize('dropout', [0.0, 0.5])
def test_graph_model_training_with_packed_kernels_equals_sdpa(
        kernel, monkeypatch, spy, small_graphs, graph_model_step, dropout):
    # config.packed_attention on (CUDA's kernels; here interpreted): a
    # training step of the small-graph model on a ragged batch with an
    # empty graph, every set kept whole (the exact path), gives the
    # padded SDPA's output and gradients; attention dropout keeps SDPA.
    from samsa_geo.nn.attention import _dense
    from samsa_geo.nn.models import SamsaGraphModel
    monkeypatch.setattr(_dense, 'triton_serves', lambda device: True)
    data = small_graphs((7, 0, 12, 3, 9), 5, seed=3)
    torch.manual_seed(0)
    model = SamsaGraphModel(5, 32, 1, 2, edge_dim=3, heads=2, k=16,
                            attn_kwargs={'dropout': dropout}).train()
    g = torch.randn(5, 1)

    calls = spy(kernel, 'packed_attention_triton', keep_args=False)
    got = graph_model_step(model, data, g, {'packed_attention': True})
    assert len(calls) == (0 if dropout else 2)  # one per layer
    want = graph_model_step(model, data, g, {'packed_attention': False})
    assert len(calls) == (0 if dropout else 2)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert got[1].keys() == want[1].keys()
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4,
                                   atol=1e-5, msg=name)


def test_packed_launches_take_blocks_of_one_head(kernel):
    # On packed rows [N, 3C] a block spans one head's D channels, not the
    # row's 3C: a block of 3C needs more shared memory than an H200 has.
    from samsa_geo.testing.triton_compile import recorded_launches
    H, D = 4, 16
    qkv = torch.randn(50, 3 * H * D, requires_grad=True)
    ptr = torch.tensor([0, 25, 50])
    with recorded_launches() as launches:
        kernel.packed_attention_triton(qkv, ptr, H, 25).sum().backward()
    assert len(launches) == 3
    assert all(meta['BLOCK_D'] == D for _, _, meta in launches)


COMPILE_SCRIPT = r"""
import torch
from samsa_geo.nn.attention import _tile_attention_triton as tile
from samsa_geo.testing.triton_compile import (
    compile_for_sm90, launched_kernels, recorded_launches)


def packed(sizes, H, D, dtype):
    qkv = torch.randn(sum(sizes), 3 * H * D, dtype=dtype,
                      requires_grad=True)
    ptr = torch.tensor([0] + sizes).cumsum(0)
    tile.packed_attention_triton(qkv, ptr, H, max(sizes)).sum().backward()


def tiles(nt, T, K, D, dtype, bias):
    q = torch.randn(nt, T, 8, D, dtype=dtype).transpose(1, 2)
    kv = torch.randn(1, 8, K, 2 * D, dtype=dtype).expand(nt, 8, K, 2 * D)
    q, k, v = (t.detach().requires_grad_()
               for t in (q, kv[..., :D], kv[..., D:]))
    b = torch.zeros(nt, K) if bias else None
    tile.tile_attention_triton(q, k, v, b).sum().backward()


# The launches that the kernels' functions make on CUDA, recorded on CPU
# tensors (the block sizes, warps and specialisation that a CUDA call
# picks): tiles with and without key bias, packed rows of molecules and of
# ragged sets up to 256 tokens, bf16 and fp32.
with recorded_launches() as launches:
    packed([25] * 64, 4, 16, torch.bfloat16)
    packed([3, 0, 250, 17] * 8, 8, 8, torch.bfloat16)
    packed([25] * 16, 8, 32, torch.float32)
    packed([100] * 4, 2, 128, torch.bfloat16)
    tiles(4, 2048, 256, 32, torch.bfloat16, True)
    tiles(4, 1000, 64, 64, torch.float32, False)
    tiles(2, 300, 256, 128, torch.bfloat16, True)
print('compiled', compile_for_sm90(launched_kernels(launches)))
"""


def test_kernels_compile_for_sm90(compiled_run):
    # The interpreter runs the kernels' Python; this compiles the kernels
    # as CUDA calls launch them to H100/H200 machine code (no GPU needed)
    # and checks that they fit sm90's shared memory.
    assert 'compiled 21' in compiled_run(COMPILE_SCRIPT)
