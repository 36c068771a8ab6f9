"""samsa_geo.ops.layer_norm: equal to F.layer_norm, its Triton kernel (run
on CPU by Triton's interpreter, compiled on a GPU) and where it serves."""
import os

import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn.conv import SamsaConv
from samsa_geo.nn.encoders import PPFPointEncoder
from samsa_geo.ops import layer_norm, use_backend

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture(scope='module')
def kernel(triton_modules):
    return triton_modules('samsa_geo.ops._triton.layer_norm')


@pytest.mark.parametrize('shape', [(5, 64), (3, 7, 33), (70, 1024), (4, 1)])
@pytest.mark.parametrize('affine', ['both', 'weight', 'none'])
def test_kernel_equals_torch(kernel, shape, affine):
    C = shape[-1]
    x = (torch.randn(*shape) * 3 + 1).to(DEVICE)
    w = torch.randn(C, device=DEVICE) if affine != 'none' else None
    b = torch.randn(C, device=DEVICE) if affine == 'both' else None
    out = layer_norm(x, w, b, 1e-4, backend='triton')
    ref = F.layer_norm(x, (C, ), w, b, 1e-4)
    assert out.shape == x.shape and out.dtype == ref.dtype
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    if C > 1:  # normalised rows: mean 0, variance 1 (before the affine)
        plain = layer_norm(x, backend='triton')
        torch.testing.assert_close(plain.mean(-1), torch.zeros_like(
            plain.mean(-1)), atol=1e-5, rtol=0)
        torch.testing.assert_close(plain.var(-1, unbiased=False),
                                   torch.ones_like(plain.mean(-1)),
                                   atol=1e-3, rtol=0)


def test_kernel_reads_strided_rows_and_bf16(kernel):
    x = torch.randn(64, 96, device=DEVICE)[:, :48]  # row stride 96
    out = layer_norm(x, backend='triton')
    torch.testing.assert_close(out, F.layer_norm(x, (48, )))
    xb = torch.randn(40, 64, device=DEVICE).bfloat16()
    out = layer_norm(xb, backend='triton')
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.layer_norm(xb.float(), (64, )),
                               atol=2e-2, rtol=1e-2)


def test_gradients_and_cpu_calls_go_to_torch(kernel, spy):
    calls = spy(kernel, 'layer_norm_triton')
    x = torch.randn(8, 16, device=DEVICE)
    w = torch.randn(16, device=DEVICE, requires_grad=True)
    out = layer_norm(x, w)  # records a gradient: PyTorch's kernel
    out.sum().backward()
    torch.testing.assert_close(w.grad, F.layer_norm(x, (16, )).sum(0))
    layer_norm(x, backend='torch')
    assert calls == []
    layer_norm(x.detach(), w.detach())  # auto: Triton on CUDA only
    assert len(calls) == (1 if DEVICE == 'cuda' else 0)
    torch.compile(lambda t: layer_norm(t), backend='eager')(x)
    assert len(calls) == (1 if DEVICE == 'cuda' else 0)


def test_bad_input_names_the_argument():
    x = torch.randn(4, 8)
    with pytest.raises(ValueError, match="'weight' to have shape \\[8\\]"):
        layer_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match="'bias' to have shape \\[8\\]"):
        layer_norm(x, None, torch.ones(8, 1))
    with pytest.raises(TypeError, match="'x' to be floating point"):
        layer_norm(torch.ones(4, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="'x' to be a tensor"):
        layer_norm(torch.tensor(1.0))
    with pytest.raises(ValueError, match="'backend'"):
        layer_norm(x, backend='compiled')
    with pytest.raises(TypeError, match="'weight' to be floating point"):
        layer_norm(x, torch.ones(8, dtype=torch.long))
    for eps in (0.0, -1.0, 'x', float('nan')):
        with pytest.raises(ValueError, match="'eps' to be a positive"):
            layer_norm(x, eps=eps)
    if not torch.cuda.is_available() and \
            os.environ.get('TRITON_INTERPRET') != '1':
        return
    with pytest.raises(ValueError, match='1,024 channels'):
        layer_norm(torch.randn(2, 2048, device=DEVICE), backend='triton')


def test_layers_use_the_kernel_in_inference(kernel, spy):
    # SamsaConv's per-token LayerNorm and the PPF encoder's edge LayerNorm
    # give the outputs of PyTorch's kernel through the Triton one.
    calls = spy(kernel, 'layer_norm_triton')
    conv = SamsaConv(32, None, heads=2, k=8, norm='layer_norm',
                     norm_kwargs={'mode': 'node'}).to(DEVICE).eval()
    x = torch.randn(40, 32, device=DEVICE)
    batch = torch.tensor([0] * 25 + [1] * 15, device=DEVICE)
    enc = PPFPointEncoder(32, num_neighbors=4).to(DEVICE).eval()
    pos = torch.randn(40, 3, device=DEVICE)
    with torch.no_grad():
        with use_backend('torch'):
            ref = conv(x, batch=batch), enc(pos, batch)
        assert calls == []
        with use_backend('triton'):
            out = conv(x, batch=batch), enc(pos, batch)
    assert len(calls) == 3  # norm2, norm3 and the encoder's
    torch.testing.assert_close(out[0], ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], ref[1], atol=1e-5, rtol=1e-5)
