"""SamsaConv's training batch norms run as residual_batch_norm and compute
what the BatchNorm modules compute: outputs, every gradient, the running
statistics and the batch count; other batch norms keep the module."""
import copy
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


@pytest.mark.parametrize('affine, track', [(True, True), (False, True),
                                           (True, False)])
def test_direct_batch_norm_equals_the_module_call(affine, track):
    # SamsaConv's training batch norm below the kernel's size calls
    # torch.batch_norm itself: outputs, gradients, running statistics and
    # batch count are those of PyG's BatchNorm module, over two steps.
    from torch_geometric.nn.norm import BatchNorm
    torch.manual_seed(0)
    norm = BatchNorm(16, affine=affine, track_running_stats=track).train()
    if affine:
        with torch.no_grad():
            norm.module.weight.uniform_(0.5, 1.5)
            norm.module.bias.uniform_(-0.5, 0.5)
    ref = copy.deepcopy(norm)
    for step in range(2):
        h = torch.randn(40, 16) * 3.0 + step
        g = torch.randn(40, 16)
        x1 = h.clone().requires_grad_()
        out = conv_module._training_batch_norm(norm, x1)
        assert out is not None
        x2 = h.clone().requires_grad_()
        out_ref = ref(x2)
        torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
        (out * g).sum().backward()
        (out_ref * g).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=0)
        for (name, p), p_ref in zip(norm.named_parameters(),
                                    ref.parameters()):
            torch.testing.assert_close(p.grad, p_ref.grad, rtol=0, atol=0)
        buffers = dict(ref.named_buffers())
        assert dict(norm.named_buffers()).keys() == buffers.keys()
        for name, buf in norm.named_buffers():
            torch.testing.assert_close(buf, buffers[name], rtol=0, atol=0)
    if track:
        assert int(norm.module.num_batches_tracked) == 2


def test_direct_batch_norm_leaves_the_module_call_where_it_must(
        monkeypatch):
    # None (the module is called) for a cumulative average, a single row,
    # a subclass and wherever a hook would run.
    from torch_geometric.nn.norm import BatchNorm
    from torch.nn.modules import module as nn_module
    h = torch.randn(8, 16)
    direct = conv_module._training_batch_norm
    assert direct(BatchNorm(16), h) is not None
    assert direct(BatchNorm(16, momentum=None), h) is None
    assert direct(BatchNorm(16), h[:1]) is None
    assert direct(type('Sub', (BatchNorm, ), {})(16), h) is None
    norm = BatchNorm(16)
    handle = norm.register_forward_hook(lambda *args: None)
    assert direct(norm, h) is None
    handle.remove()
    handle = norm.module.register_forward_pre_hook(lambda *args: None)
    assert direct(norm, h) is None
    handle.remove()
    handle = norm.register_full_backward_hook(lambda *args: None)
    assert direct(norm, h) is None
    handle.remove()
    monkeypatch.setitem(nn_module._global_forward_hooks, -1,
                        lambda *args: None)
    assert direct(norm, h) is None


def test_samsa_conv_runs_the_hooks_of_its_batch_norms():
    # A hook on a norm sees every training call, and the layer's output
    # is the one without the hook.
    x = torch.randn(30, 32)
    batch = torch.arange(3).repeat_interleave(10)
    conv, ref = _conv(), _conv()
    seen = []
    conv.norm3.register_forward_hook(lambda m, args, out: seen.append(out))
    torch.manual_seed(1)
    out = conv(x, None, batch)
    torch.manual_seed(1)
    out_ref = ref(x, None, batch)
    assert len(seen) == 1 and torch.equal(seen[0], out)
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
