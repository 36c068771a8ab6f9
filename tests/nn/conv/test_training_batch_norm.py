"""SamsaConv's training batch norms run as residual_batch_norm and compute
what the BatchNorm modules compute: outputs, every gradient, the running
statistics and the batch count; other batch norms keep the module."""
from functools import partial

import pytest
import torch

import samsa_geo.nn.conv.samsa_conv as conv_module
from samsa_geo.nn import SamsaConv
from samsa_geo.ops import use_backend


def _conv(**kwargs):
    torch.manual_seed(0)
    return SamsaConv(32, None, heads=4, k=6, **kwargs).train()


def _step(conv, x, batch, autocast=False):
    # One training step's output and the gradients of the input and every
    # parameter, with the same sampling noise.
    x = x.clone().requires_grad_()
    conv.zero_grad()
    torch.manual_seed(1)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = conv(x, None, batch)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out.float() * g).sum().backward()
    grads = {n: p.grad.clone() for n, p in conv.named_parameters()}
    return out.detach(), x.grad, grads


# Under autocast Triton's interpreter truncates to bfloat16 where PyTorch
# rounds, so the kernels are compared there on a GPU only
# (tests/gpu/test_batch_norm.py).
@pytest.mark.parametrize('backend, autocast', [('torch', False),
                                               ('torch', True),
                                               ('triton', False)])
def test_training_batch_norm_equals_the_modules(triton_modules, monkeypatch,
                                                spy, backend, autocast):
    if backend == 'triton':
        triton_modules('samsa_geo.ops._triton.batch_norm')
    monkeypatch.setattr(conv_module, 'TRAINING_BATCH_NORM_MIN_ELEMENTS', 0)
    x = torch.randn(60, 32) * 2.0 + 1.0
    batch = torch.arange(3).repeat_interleave(20)
    conv, ref = _conv(), _conv()
    calls = spy(conv_module, 'residual_batch_norm', keep_args=False)
    with use_backend(backend):
        out, x_grad, grads = _step(conv, x, batch, autocast)
    assert len(calls) == 2  # norm2(h + x), norm3(y + MLP(y))
    with monkeypatch.context() as m:  # the BatchNorm modules' forward
        m.setattr(conv_module, 'BatchNorm', type('NoBatchNorm', (), {}))
        out_ref, x_grad_ref, grads_ref = _step(ref, x, batch, autocast)
    close = partial(torch.testing.assert_close, atol=1e-4, rtol=1e-4)
    close(out, out_ref)
    close(x_grad, x_grad_ref)
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        close(grads[name], grads_ref[name])
    for name, buf in conv.named_buffers():
        torch.testing.assert_close(buf, dict(ref.named_buffers())[name])
    assert int(conv.norm2.module.num_batches_tracked) == 1


def test_training_batch_norm_keeps_the_module_where_it_must(
        spy, monkeypatch):
    # A cumulative average (momentum None), a single row and sums below
    # TRAINING_BATCH_NORM_MIN_ELEMENTS go through the module; so does
    # evaluation.
    calls = spy(conv_module, 'residual_batch_norm', keep_args=False)
    x = torch.randn(8, 32)
    conv = _conv()
    conv(x, None, torch.zeros(8, dtype=torch.long))
    assert calls == [] and int(conv.norm3.module.num_batches_tracked) == 1
    monkeypatch.setattr(conv_module, 'TRAINING_BATCH_NORM_MIN_ELEMENTS',
                        x.numel())
    conv = _conv(norm_kwargs={'momentum': None})
    conv(x, None, torch.zeros(8, dtype=torch.long))
    assert calls == [] and int(conv.norm3.module.num_batches_tracked) == 1
    conv = _conv(norm_kwargs={'allow_single_element': True})
    conv(x[:1], None, torch.zeros(1, dtype=torch.long))
    assert calls == []
    conv(x, None, torch.zeros(8, dtype=torch.long))
    assert len(calls) == 2
    calls.clear()
    conv.eval()
    with torch.no_grad():
        conv(x, None, torch.zeros(8, dtype=torch.long))
    assert calls == []
