"""The training batch norm kernels (samsa_geo.ops.residual_batch_norm)
compiled on the GPU: against PyTorch at the layer benchmark's sizes, in a
SamsaConv training step under autocast, with no host synchronisation
(`pytest -m gpu tests/gpu`)."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import samsa_geo.nn.conv.samsa_conv as conv_module
from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import config
from samsa_geo.ops import residual_batch_norm

linear_module = importlib.import_module('samsa_geo.ops.linear')

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _relative(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize('M, C', [(32 * 1024, 256), (262144, 256),
                                  (1000, 96), (3, 1024)])
def test_kernels_equal_torch(M, C):
    g = torch.Generator(device='cuda').manual_seed(0)
    x = (torch.randn(M, C, device='cuda', generator=g) * 2 + 5
         ).requires_grad_()
    h = torch.randn(M, C, device='cuda', generator=g).bfloat16()
    h.requires_grad_()
    w = (torch.rand(C, device='cuda') + 0.5).requires_grad_()
    b = torch.randn(C, device='cuda').requires_grad_()
    rm, rv = torch.zeros(C, device='cuda'), torch.ones(C, device='cuda')
    rm2, rv2 = rm.clone(), rv.clone()
    y, z = residual_batch_norm(x, h, w, b, rm, rv, copy_dtype=torch.bfloat16)
    y_ref = F.batch_norm(x + h, rm2, rv2, w, b, training=True)
    z_ref = y_ref.bfloat16()
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rm, rm2)
    torch.testing.assert_close(rv, rv2, atol=1e-5, rtol=1e-5)
    # Rounded to nearest, as .to(): equal but where y differs in its last
    # float32 bits at a bfloat16 tie.
    assert (z != z_ref).float().mean() < 1e-3
    go = torch.randn(M, C, device='cuda', generator=g)
    gz = torch.randn(M, C, device='cuda', generator=g).bfloat16()
    got = torch.autograd.grad([y, z], [x, h, w, b], [go, gz])
    ref = torch.autograd.grad([y_ref, z_ref], [x, h, w, b], [go, gz])
    for a, r in zip(got, ref):
        assert a.dtype == r.dtype
        assert _relative(a, r) < (1e-5 if a.dtype == torch.float32
                                  else 4e-3)


@pytest.mark.parametrize('sizes', [[512] * 8, [300, 0, 1024, 5, 700]])
def test_layer_training_step_equals_the_modules(sizes, monkeypatch):
    # A SamsaConv step under bf16 autocast with the kernels (batch norms
    # and the linear layers' bias gradients) and with the BatchNorm modules
    # and F.linear: outputs, gradients and running statistics.
    monkeypatch.setattr(conv_module, 'TRAINING_BATCH_NORM_MIN_ELEMENTS', 0)
    monkeypatch.setattr(linear_module, 'MIN_ELEMENTS', 0)
    torch.manual_seed(0)
    layers = [SamsaConv(64, None, heads=4, k=32).cuda().train()
              for _ in range(3)]
    for layer in layers[1:]:
        layer.load_state_dict(layers[0].state_dict())
    conv, ref, probe = layers
    batch = torch.cat([torch.full((n, ), i) for i, n in
                       enumerate(sizes)]).cuda()
    x0 = torch.randn(batch.numel(), 64, device='cuda') * 2 + 1
    # A fixed output gradient: the mean square of a batch norm's output
    # is constant, and its gradient only rounding noise.
    grad_out = torch.randn(batch.numel(), 64, device='cuda')
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))

    def step(layer, autocast=True):
        torch.manual_seed(1)
        x = x0.clone().requires_grad_()
        with config.attention_config(cuda_graphs=False), torch.autocast(
                'cuda', dtype=torch.bfloat16, enabled=autocast):
            out = layer(x, None, batch, **hints)
        out.backward(grad_out.to(out.dtype))
        return out.detach(), x.grad

    out, x_grad = step(conv)
    with monkeypatch.context() as m:
        m.setattr(conv_module, 'BatchNorm', type('NoBatchNorm', (), {}))
        m.setattr(linear_module, 'MIN_ELEMENTS', 1 << 62)
        out_ref, x_grad_ref = step(ref)
        step(probe, autocast=False)
    assert _relative(out, out_ref) < 5e-3
    assert _relative(x_grad, x_grad_ref) < 5e-3
    # Some biases' exact gradients are zero (those the batch norms remove,
    # the keys', the scores'): the float32 step finds them, and in bf16
    # both sides' values are rounding errors of the same small size.
    exact = dict(probe.named_parameters())
    largest = max(p.grad.norm() for p in exact.values())
    params = dict(ref.named_parameters())
    for name, p in conv.named_parameters():
        r = params[name].grad
        if exact[name].grad.norm() < 1e-4 * largest:
            assert p.grad.norm() < 1e-2 * largest, name
            continue
        assert _relative(p.grad, r) < 5e-3, (name, _relative(p.grad, r))
    buffers = dict(ref.named_buffers())
    for name, buf in conv.named_buffers():
        torch.testing.assert_close(buf, buffers[name], atol=1e-4, rtol=1e-4)


def test_no_host_synchronisation():
    M, C = 65536, 256
    x = torch.randn(M, C, device='cuda', requires_grad=True)
    h = torch.randn(M, C, device='cuda').bfloat16().requires_grad_()
    w = torch.ones(C, device='cuda', requires_grad=True)
    b = torch.zeros(C, device='cuda', requires_grad=True)
    rm, rv = torch.zeros(C, device='cuda'), torch.ones(C, device='cuda')
    for _ in range(2):  # compile and load the kernels first
        y, z = residual_batch_norm(x, h, w, b, rm, rv,
                                   copy_dtype=torch.bfloat16)
        torch.autograd.backward([y, z], [torch.ones_like(y),
                                         torch.ones_like(z)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        y, z = residual_batch_norm(x, h, w, b, rm, rv,
                                   copy_dtype=torch.bfloat16)
        torch.autograd.backward([y, z], [torch.ones_like(y),
                                         torch.ones_like(z)])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(x.grad).all() and torch.isfinite(h.grad).all()
