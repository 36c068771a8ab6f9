"""The Triton inference kernel of the relative-bias attention, run on CPU by
Triton's interpreter (the same kernel runs compiled on the GPU machine:
``tests/gpu``)."""
import importlib
import math
import os

import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn.attention import SamsaAttention, config
from samsa_geo.nn.attention._flex import PairGeometry

MODULE = 'samsa_geo.nn.attention._bias_triton'


@pytest.fixture(scope='module')
def kernel():
    pytest.importorskip('triton')
    if os.environ.get('TRITON_INTERPRET') != '1':  # set by conftest.py
        pytest.skip('Triton interpreter not enabled (a GPU is present)')
    return importlib.import_module(MODULE)


def _reference(q, k, v, valid, pq, pk, nq, nk, weights):
    # Every pair written out: [nt, H, T, k] scores, features, softmax.
    A, a, B, b = weights
    H = q.size(1)
    s = q.double() @ k.double().transpose(-1, -2) / math.sqrt(q.size(-1))
    d = (pq[:, None, :, None].double() - pk[:, :, None].double()).square()
    d = d.sum(-1)  # [nt, H, T, k]
    n = torch.zeros_like(d)
    if nq is not None:
        n = (nq[:, None, :, None].double() * nk[:, :, None].double()).sum(-1)

    def head(w):
        return w.double().view(1, H, 1, 1)

    scale = head(a) + head(A[:, 0]) * d + head(A[:, 1]) * n
    bias = head(b) + head(B[:, 0]) * d + head(B[:, 1]) * n
    z = s * F.softplus(scale) + bias
    if valid is not None:
        z = z.masked_fill(~valid[:, None, None, :], float('-inf'))
    return torch.softmax(z, dim=-1) @ v.double()


def _inputs(nt, H, T, kk, D, P, normals, with_valid, dtype, coef=0.3,
            seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    # Queries token-major as SamsaAttention lays them out: a strided view.
    q = randn(nt, T, H, D).to(dtype).transpose(1, 2)  # [nt, H, T, D]
    k, v = randn(nt, H, kk, D).to(dtype), randn(nt, H, kk, D).to(dtype)
    pq, pk = randn(nt, T, P), randn(nt, H, kk, P)
    nq = nk = None
    if normals:
        nq = F.normalize(randn(nt, T, P), dim=-1)
        nk = F.normalize(randn(nt, H, kk, P), dim=-1)
    valid = None
    if with_valid:
        valid = torch.rand(nt, kk, generator=g) > 0.4
        valid[:, 0] = True  # SAMSA keeps at least one key per set
    weights = (coef * randn(H, 2), randn(H), coef * randn(H, 2), randn(H))
    return q, k, v, valid, pq, pk, nq, nk, weights


@pytest.mark.parametrize('dtype,tol', [(torch.float32, 1e-5),
                                       (torch.float16, 3e-3)])
@pytest.mark.parametrize('shape,P,normals,with_valid', [
    ((3, 2, 37, 21, 32), 3, True, True),  # partial query and key blocks
    ((2, 3, 20, 40, 24), 2, False, False),  # head dim not a power of 2
    ((1, 1, 5, 3, 16), 1, True, False),
    ((2, 2, 16, 64, 32), 3, False, True),  # several key blocks
])
def test_kernel_matches_pairwise_reference(kernel, dtype, tol, shape, P,
                                           normals, with_valid):
    inputs = _inputs(*shape, P, normals, with_valid, dtype)
    out = kernel.biased_triton_attention(*inputs)
    ref = _reference(*inputs)
    assert out.shape == ref.shape and out.dtype == dtype
    assert (out.double() - ref).abs().max() < tol


def test_kernel_is_stable_for_large_coefficients(kernel):
    # softplus arguments of +-1e3 and biases of 1e3: no overflow to inf/nan,
    # the same softmax as in float64.
    inputs = _inputs(2, 2, 24, 30, 16, 3, True, False, torch.float32,
                     coef=300.0)
    out = kernel.biased_triton_attention(*inputs)
    assert torch.isfinite(out).all()
    assert (out.double() - _reference(*inputs)).abs().max() < 1e-4


def test_kernel_output_is_token_major(kernel):
    # [nt, H, T, D] view of a [nt, T, H, D] tensor: flattening the tokens
    # afterwards needs no copy.
    out = kernel.biased_triton_attention(
        *_inputs(2, 4, 10, 12, 16, 3, False, False, torch.float32))
    assert out.transpose(1, 2).is_contiguous()


def test_kernel_rejects_more_than_three_coordinates(kernel):
    inputs = list(_inputs(1, 1, 4, 4, 16, 3, False, False, torch.float32))
    inputs[4], inputs[5] = torch.randn(1, 4, 4), torch.randn(1, 1, 4, 4)
    with pytest.raises(ValueError, match='1 to 3 coordinates'):
        kernel.biased_triton_attention(*inputs)


@pytest.mark.parametrize('kwargs,sizes,normals', [
    (dict(), [40, 40, 40], True),
    (dict(num_registers=3), [30, 5, 50], True),
    (dict(padded=False, tile_size=16), [30, 5, 50], False),
])
def test_samsa_attention_inference_uses_the_kernel(kernel, monkeypatch,
                                                   kwargs, sizes, normals):
    # Inference goes through the Triton kernel and equals the explicit path;
    # a pass that needs gradients goes to FlexAttention instead.
    import samsa_geo.nn.attention._attend as kernels
    import samsa_geo.nn.attention.samsa_attention as mod

    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=2, k=8, relative_bias=True, **kwargs)
    with torch.no_grad():
        for lin in (attn.rel_bias.lin_scale, attn.rel_bias.lin_bias):
            lin.weight.normal_(std=0.5)
            lin.bias.normal_(std=0.5)
    attn.eval()
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x, pos = torch.randn(batch.numel(), 32), torch.randn(batch.numel(), 3)
    normal = F.normalize(torch.randn_like(pos), dim=-1) if normals else None
    ref = attn(x, batch, pos=pos, normal=normal)

    monkeypatch.setattr(mod, 'flex_supported', lambda device: True)
    calls = {'triton': 0, 'flex': 0}
    run_triton = kernel.biased_triton_attention
    run_flex = kernels.biased_flex_attention

    def triton_spy(*args):
        calls['triton'] += 1
        return run_triton(*args)

    def flex_spy(*args, **kw):
        calls['flex'] += 1
        # PyTorch's unfused reference on CPU, which has no backward.
        q, k, v = (t.detach() for t in args[:3])
        weights = tuple(w.detach() for w in args[5])
        return run_flex(q, k, v, args[3], args[4], weights, compiled=False)

    monkeypatch.setattr(kernel, 'biased_triton_attention', triton_spy)
    monkeypatch.setattr(kernels, 'biased_flex_attention', flex_spy)
    with torch.no_grad():
        out = attn(x, batch, pos=pos, normal=normal)
    assert calls == {'triton': 1, 'flex': 0}
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    # A pass that needs gradients (of the input here) runs FlexAttention.
    attn(x.requires_grad_(), batch, pos=pos, normal=normal)
    assert calls == {'triton': 1, 'flex': 1}
    # So does inference with the Triton kernel switched off.
    with torch.no_grad(), config.attention_config(
            bias_inference_kernel='flex'):
        attn(x, batch, pos=pos, normal=normal)
    assert calls == {'triton': 1, 'flex': 2}


def test_compiled_samsa_attention_uses_the_kernel(kernel, monkeypatch, spy):
    # Under torch.compile the dispatch still reaches the kernel, as a custom
    # operator inside one graph (fullgraph: no graph break), with the eager
    # output.
    import samsa_geo.nn.attention.samsa_attention as mod

    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=2, k=8, relative_bias=True).eval()
    batch = torch.arange(3).repeat_interleave(20)
    x, pos = torch.randn(60, 32), torch.randn(60, 3)
    monkeypatch.setattr(mod, 'flex_supported', lambda device: True)
    calls = spy(kernel, 'biased_triton_attention')
    sizes = dict(num_graphs=3, max_num_nodes=20)
    with torch.no_grad():
        ref = attn(x, batch, pos=pos, **sizes)
        out = torch.compile(attn, fullgraph=True)(x, batch, pos=pos, **sizes)
    assert len(calls) == 2
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('inference_kernel', ['triton', 'flex'])
def test_many_tiles_run_in_several_kernel_calls(kernel, monkeypatch, spy,
                                                inference_kernel):
    # More tiles than a CUDA grid axis holds: the batch is split into calls
    # of at most MAX_GRID_Y // H tiles, with the single call's output.
    import samsa_geo.nn.attention._attend as kernels

    inputs = _inputs(7, 2, 9, 11, 16, 3, True, True, torch.float32)
    q, k, v, valid, pq, pk, nq, nk, weights = inputs
    geo = PairGeometry(pq, pk, nq, nk)
    run_flex = kernels.biased_flex_attention
    monkeypatch.setattr(kernels, 'biased_flex_attention',
                        lambda *a, **kw: run_flex(*a, **kw, compiled=False))
    calls = spy(kernel, 'biased_triton_attention')
    with torch.no_grad(), config.attention_config(
            bias_inference_kernel=inference_kernel):
        ref = kernels.biased_attention(q, k, v, valid, geo, weights)
        monkeypatch.setattr(kernels, 'MAX_GRID_Y', 6)  # 3 tiles x 2 heads
        out = kernels.biased_attention(q, k, v, valid, geo, weights)
    if inference_kernel == 'triton':
        assert [args[0].size(0) for args in calls] == [7, 3, 3, 1]
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(out.double(), _reference(*inputs), atol=1e-5)


@pytest.mark.parametrize('nt,T', [(0, 5), (2, 0)])
def test_kernel_handles_empty_inputs(kernel, nt, T):
    inputs = _inputs(max(nt, 1), 2, max(T, 1), 4, 16, 3, False, False,
                     torch.float32)
    q, k, v, valid, pq, pk, nq, nk, weights = inputs
    q, pq = q[:nt, :, :T], pq[:nt, :T]
    k, v, pk = k[:nt], v[:nt], pk[:nt]
    out = kernel.biased_triton_attention(q, k, v, None, pq, pk, None, None,
                                         weights)
    assert out.shape == (nt, 2, T, 16)


def test_kernel_is_a_valid_custom_operator(kernel):
    # Schema, fake (meta) implementation and compile behaviour agree with
    # the kernel: torch.library's own checks.
    inputs = _inputs(3, 2, 9, 11, 16, 3, True, True, torch.float32)
    q, k, v, valid, pq, pk, nq, nk, weights = inputs
    op = torch.ops.samsa_geo.biased_attention_inference.default
    torch.library.opcheck(op, (q, k, v, valid, pq, pk, nq, nk, *weights))
    torch.library.opcheck(op, (q, k, v, None, pq, pk, None, None, *weights))
