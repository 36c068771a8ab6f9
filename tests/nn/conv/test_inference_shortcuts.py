"""SamsaConv's inference shortcuts compute what its modules compute: the
evaluation BatchNorm as one affine map (refreshed when its statistics or
parameters change), and the MLP's casts kept between calls under
autocast."""
import copy

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import samsa_geo.nn.conv.samsa_conv as conv_module
from samsa_geo.nn import SamsaConv


def trained_conv(**kwargs):
    # Running statistics away from (0, 1), as after training.
    torch.manual_seed(0)
    conv = SamsaConv(32, None, heads=4, k=6, **kwargs)
    x = torch.randn(60, 32) * 3.0 + 1.5
    batch = torch.arange(3).repeat_interleave(20)
    conv.train()
    for _ in range(3):
        conv(x, None, batch)
    return conv.eval(), x, batch


def module_path(conv, x, batch, monkeypatch):
    # The norms' own forward: the shortcut never matches.
    with monkeypatch.context() as m:
        m.setattr(conv_module, 'BatchNorm', type('NoBatchNorm', (), {}))
        return conv(x, None, batch)


def test_eval_batch_norm_equals_the_module(monkeypatch):
    conv, x, batch = trained_conv()
    with torch.no_grad():
        out = conv(x, None, batch)
        assert len(conv._affine_cache) == 2  # norm2 and norm3
        torch.testing.assert_close(out, module_path(conv, x, batch,
                                                    monkeypatch))
        conv.norm3.module.running_var.mul_(4.0)  # in place: a new version
        changed = conv(x, None, batch)
        assert not torch.allclose(changed, out)
        torch.testing.assert_close(changed, module_path(conv, x, batch,
                                                        monkeypatch))
        other, _, _ = trained_conv()
        other.norm2.module.running_mean.add_(1.0)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv(x, None, batch), other(x, None,
                                                               batch))
    conv.train()
    assert conv._affine_cache == {} and conv._mlp_cache is None


def test_eval_batch_norm_keeps_the_module_where_it_must(monkeypatch):
    # Gradients to the norm's parameters, no running statistics, training.
    conv, x, batch = trained_conv()
    out = conv(x, None, batch)  # grad enabled: parameters need gradients
    assert conv._affine_cache == {}
    out.square().sum().backward()
    grad = conv.norm2.module.weight.grad.clone()
    conv.zero_grad()
    module_path(conv, x, batch, monkeypatch).square().sum().backward()
    torch.testing.assert_close(conv.norm2.module.weight.grad, grad)

    plain = SamsaConv(32, None, heads=4, k=6,
                      norm_kwargs=dict(track_running_stats=False)).eval()
    with torch.no_grad():
        plain(x, None, batch)  # batch statistics in evaluation too
    assert plain._affine_cache == {}


def test_eval_batch_norm_with_frozen_parameters_passes_input_gradients(
        monkeypatch):
    conv, x, batch = trained_conv()
    conv.requires_grad_(False)
    xg = x.clone().requires_grad_()
    conv(xg, None, batch).square().sum().backward()
    assert len(conv._affine_cache) == 2
    ref = x.clone().requires_grad_()
    module_path(conv, ref, batch, monkeypatch).square().sum().backward()
    torch.testing.assert_close(xg.grad, ref.grad)


def test_cached_mlp_casts_under_autocast(monkeypatch):
    conv, x, batch = trained_conv()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x, None, batch)
        assert conv._mlp_cache[1].dtype == torch.bfloat16
        assert torch.equal(conv(x, None, batch), out)  # from the cache
        conv.mlp[0].weight.mul_(2.0)
        changed = conv(x, None, batch)
    assert not torch.equal(changed, out)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref = conv(x, None, batch)  # gradients reach the MLP: no cache
    torch.testing.assert_close(changed, ref.detach())


def test_inference_mode_casts_serve_a_later_backward():
    # Casts made in inference mode are not kept for calls outside it: an
    # input gradient in evaluation still works afterwards.
    conv, x, batch = trained_conv()
    conv.requires_grad_(False)
    with torch.inference_mode(), torch.autocast('cpu',
                                                dtype=torch.bfloat16):
        conv(x, None, batch)
    xg = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(xg, None, batch)
    out.float().square().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    # The same call on an equal conv that never ran in inference mode.
    fresh = SamsaConv(32, None, heads=4, k=6).eval().requires_grad_(False)
    fresh.load_state_dict(conv.state_dict())
    ref = x.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        ref_out = fresh(ref, None, batch)
    ref_out.float().square().sum().backward()
    assert torch.equal(out, ref_out)
    assert torch.equal(xg.grad, ref.grad)


def test_residual_and_batch_norm_run_as_one_op(monkeypatch, spy,
                                               triton_modules):
    # In evaluation, norm(x + h) is residual_affine; under autocast the
    # norm before the MLP also writes the MLP's input copy. The Triton
    # kernel (Triton's interpreter on CPU) gives the module's output.
    triton_modules('samsa_geo.ops._triton.residual_affine')
    from samsa_geo.ops import use_backend
    conv, x, batch = trained_conv()
    calls = spy(conv_module, 'residual_affine')
    with torch.no_grad(), use_backend('triton'):
        out = conv(x, None, batch)
        assert len(calls) == 2  # norm2(h + x), norm3(y + MLP(y))
        torch.testing.assert_close(out, module_path(conv, x, batch,
                                                    monkeypatch))
    calls.clear()
    copies = []
    mlp = conv._mlp
    monkeypatch.setattr(conv, '_mlp', lambda h, h_copy=None: copies.append(
        h_copy) or mlp(h, h_copy))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x, None, batch)
        ref = module_path(conv, x, batch, monkeypatch)
    assert len(calls) == 2 and copies[0].dtype == torch.bfloat16
    assert copies[1] is None  # the module path's norm returns no copy
    torch.testing.assert_close(out, ref)


class _AtenCalls(TorchDispatchMode):
    # Names of the aten operators dispatched.
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('autocast', [False, True])
def test_inference_mlp_runs_relu_as_the_gemm_epilogue(autocast):
    # In inference the MLP's first layer and its ReLU are one operator
    # (_addmm_activation) and give the module's output; with gradients,
    # or another activation, the module's layers run.
    conv, x, batch = trained_conv()
    h = torch.randn(60, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        with torch.no_grad(), _AtenCalls() as calls:
            out = conv._mlp(h)
        with torch.no_grad():
            ref = conv.mlp(h)
        assert '_addmm_activation' in calls.names
        assert 'relu' not in calls.names
        torch.testing.assert_close(out, ref)
        with _AtenCalls() as calls:
            grad_out = conv._mlp(h)
        assert '_addmm_activation' not in calls.names
        assert 'relu' in calls.names
    torch.testing.assert_close(grad_out.detach(), ref)
    gelu = SamsaConv(32, None, heads=4, k=6, act='gelu').eval()
    with torch.no_grad(), _AtenCalls() as calls:
        out = gelu._mlp(h)
    assert '_addmm_activation' not in calls.names
    torch.testing.assert_close(out, gelu.mlp(h))


@pytest.mark.parametrize('norm_first', [False, True])
def test_eval_batch_norm_runs_the_hooks_of_its_norms(norm_first):
    # As in training: a hook on a norm sees every inference call (a hook
    # registered after calls that kept the affine map too), and one that
    # returns a new output changes the layer's.
    conv, x, batch = trained_conv(norm_first=norm_first)
    with torch.no_grad():
        conv(x, None, batch)  # the affine maps kept
        seen = []
        conv.norm3.register_forward_hook(
            lambda m, args, out: seen.append(out))
        conv.norm2.module.register_forward_pre_hook(
            lambda m, args: seen.append(args[0]))
        out = conv(x, None, batch)
        assert len(seen) == 2
        conv.norm3.register_forward_hook(lambda m, args, out: out * 0.0)
        zeroed = conv(x, None, batch)
    if norm_first:  # Y + MLP(0): the MLP's biases alone
        assert not torch.equal(zeroed, out)
    else:
        assert torch.equal(zeroed, torch.zeros_like(out))


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('autocast', [False, True])
def test_hooks_on_the_mlps_layers_run(training, autocast):
    # The MLP's layers are called as modules where one holds a hook: a
    # hook that records activations sees each call, and PyTorch's
    # hook-based spectral_norm (which sets the weight in a pre-hook)
    # normalises the weight the layer reads, as in a plain MLP.
    conv, x, batch = trained_conv()
    ref = copy.deepcopy(conv)
    conv.train(training)
    ref.train(training)
    seen = []
    conv.mlp[0].register_forward_hook(lambda m, args, out: seen.append(out))
    torch.nn.utils.spectral_norm(conv.mlp[3])
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        torch.manual_seed(1)
        out = conv(x, None, batch)
        with torch.no_grad():  # the normalised weight that call read
            ref.mlp[3].weight.copy_(conv.mlp[3].weight)
        torch.manual_seed(1)
        out_ref = ref(x, None, batch)
    assert not torch.allclose(conv.mlp[3].weight_orig, ref.mlp[3].weight)
    assert len(seen) == 1 and seen[0].shape == (60, 64)
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(out, out_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize('autocast', [False, True])
def test_a_hook_on_the_activation_runs_in_evaluation(autocast):
    # The inference ReLU runs as the GEMM's epilogue; a hook on it (here
    # one that records, then one that zeroes the hidden layer) runs all
    # the same.
    conv, x, batch = trained_conv()
    ref = copy.deepcopy(conv)
    seen = []
    handle = conv.mlp[1].register_forward_hook(
        lambda m, args, out: seen.append(out))
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16,
                                         enabled=autocast):
        out, out_ref = conv(x, None, batch), ref(x, None, batch)
        assert len(seen) == 1 and seen[0].shape == (60, 64)
        torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
        handle.remove()
        conv.mlp[1].register_forward_hook(lambda m, args, out: out * 0.0)
        ref.mlp[0].weight.zero_()  # ReLU(b1) == 0: b1 zeroed too
        ref.mlp[0].bias.zero_()
        torch.testing.assert_close(conv(x, None, batch),
                                   ref(x, None, batch), rtol=0, atol=0)
