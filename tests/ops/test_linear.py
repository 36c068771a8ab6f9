"""samsa_geo.ops.linear: equal to F.linear (outputs and the gradients of
input, weight and bias), its Triton column sum of the bias gradient (run
on CPU by Triton's interpreter, compiled on a GPU), when 'auto' takes it,
and its errors."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from samsa_geo.ops import linear, use_backend

# The module (samsa_geo.ops.linear is the function).
linear_module = importlib.import_module('samsa_geo.ops.linear')

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture(scope='module')
def kernels(triton_modules):
    return triton_modules('samsa_geo.ops._triton.linear')


def _inputs(shape, C_out, dtype=torch.float32):
    x = torch.randn(*shape, device=DEVICE).to(dtype).requires_grad_()
    w = (torch.randn(C_out, shape[-1], device=DEVICE) / 4).to(dtype)
    b = torch.randn(C_out, device=DEVICE).to(dtype)
    return x, w.requires_grad_(), b.requires_grad_()


def _grads(out, inputs, seed=1):
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    g = torch.randn(out.shape, device=DEVICE, generator=gen).to(out.dtype)
    return torch.autograd.grad(out, inputs, g)


@pytest.mark.parametrize('shape, C_out', [((37, 24), 40), ((2, 5, 16), 8),
                                          ((1, 3), 1), ((300, 8), 600)])
def test_kernel_equals_f_linear_float32(kernels, shape, C_out):
    x, w, b = _inputs(shape, C_out)
    out = linear(x, w, b, backend='triton')
    assert out.grad_fn.name() == 'BiasGradLinearBackward'
    ref = F.linear(x, w, b)
    torch.testing.assert_close(out, ref)
    got, want = _grads(out, (x, w, b)), _grads(ref, (x, w, b))
    for g, r in zip(got, want):
        assert g.dtype == r.dtype and g.shape == r.shape
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)
    # The bias gradient is the column sum of the output gradient.
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    g_out = torch.randn(out.shape, device=DEVICE, generator=gen)
    torch.testing.assert_close(
        got[2].double(), g_out.reshape(-1, C_out).double().sum(0),
        atol=1e-5, rtol=1e-5)


def test_kernel_bfloat16_rounds_the_float32_sum_once(kernels):
    x, w, b = _inputs((257, 32), 48, torch.bfloat16)
    out = linear(x, w, b, backend='triton')
    g = torch.randn(257, 48, device=DEVICE).bfloat16()
    g_x, g_w, g_b = torch.autograd.grad(out, (x, w, b), g)
    assert g_b.dtype == torch.bfloat16
    assert torch.equal(g_b, g.float().sum(0).bfloat16())
    r_x, r_w, _ = torch.autograd.grad(F.linear(x, w, b), (x, w, b), g)
    assert torch.equal(g_x, r_x) and torch.equal(g_w, r_w)


def test_column_sum_spans_strides_and_determinism(kernels, monkeypatch):
    # Several spans of several chunks (the last one short), columns over
    # two blocks, rows with a stride: the float64 sum, the same bits twice.
    monkeypatch.setattr(kernels, 'MAX_PROGRAMS', 6)  # 3 spans x 2 blocks
    monkeypatch.setattr(kernels, 'MAX_BLOCK_C', 16)
    monkeypatch.setattr(kernels, 'BLOCK_VALUES', 64)
    wide = torch.randn(101, 50, device=DEVICE)
    g = wide[:, 7:37]  # [101, 30], row stride 50
    got = kernels.column_sum_triton(g)
    assert got.dtype == torch.float32 and got.shape == (30, )
    torch.testing.assert_close(got.double(), g.double().sum(0), atol=1e-5,
                               rtol=1e-5)
    assert torch.equal(got, kernels.column_sum_triton(g))
    assert torch.equal(kernels.column_sum_triton(g[:0]),
                       torch.zeros(30, device=DEVICE))


def test_only_the_gradients_asked_for(kernels):
    x, w, b = _inputs((20, 8), 4)
    x = x.detach()
    w = w.detach()
    out = linear(x, w, b, backend='triton')
    (g_b, ) = torch.autograd.grad(out.sum(), (b, ))
    torch.testing.assert_close(g_b, torch.full((4, ), 20.0,
                                               device=DEVICE))


def test_auto_takes_the_kernel_from_min_elements(kernels, monkeypatch):
    monkeypatch.setattr(linear_module, 'MIN_ELEMENTS', 6 * 5)
    forced = DEVICE == 'cpu'  # the interpreter only where asked for
    backend = 'triton' if forced else 'auto'
    x, w, b = _inputs((6, 3), 5)
    assert linear(x, w, b, backend=backend).grad_fn.name() == \
        'BiasGradLinearBackward'
    if not forced:
        x, w, b = _inputs((5, 3), 5)  # 25 output values
        assert linear(x, w, b).grad_fn.name() == 'AddmmBackward0'


def test_torch_path_where_the_kernel_does_not_serve():
    x, w, b = _inputs((6, 3), 5)
    # No bias, a bias without gradient, no gradients at all,
    # backend='torch': PyTorch's addmm (or mm) and its gradients.
    assert linear(x, w).grad_fn.name() == 'MmBackward0'
    assert linear(x, w, b.detach()).grad_fn.name() == 'AddmmBackward0'
    with torch.no_grad():
        torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b))
    out = linear(x, w, b, backend='torch')
    assert out.grad_fn.name() == 'AddmmBackward0'
    with use_backend('torch'):
        assert linear(x, w, b).grad_fn.name() == 'AddmmBackward0'
    # The kernel serves the backward pass only: with nothing to record,
    # even backend='triton' is F.linear.
    with torch.no_grad():
        assert torch.equal(linear(x, w, b, backend='triton'),
                           F.linear(x, w, b))


def test_autocast_casts_as_f_linear_would(kernels):
    # Under autocast float32 tensors are cast to autocast's dtype first,
    # as F.linear's autocast would: the kernel's node on bfloat16 tensors,
    # float32 gradients through the casts.
    x, w, b = _inputs((40, 16), 24)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = linear(x, w, b, backend='triton')
        ref = F.linear(x, w, b)
    assert out.grad_fn.name() == 'BiasGradLinearBackward'
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)
    g = torch.randn(40, 24, device=DEVICE).bfloat16()
    got = torch.autograd.grad(out, (x, w, b), g)
    want = torch.autograd.grad(ref, (x, w, b), g)
    for a, r in zip(got, want):
        assert a.dtype == r.dtype == torch.float32
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], g.float().sum(0), atol=0.0,
                               rtol=2**-8)
    # Float64 is not autocast's to cast: F.linear's own dtype error.
    with torch.autocast(DEVICE, dtype=torch.bfloat16), \
            pytest.raises(RuntimeError):
        linear(x, w.double(), b.double())


@pytest.mark.parametrize('args, match', [
    (('x', 'w'), "'input' to be a tensor of shape"),
    ((torch.ones(3, 4), torch.ones(5, 3)), r"'weight' .* shape \[C_out, 4\]"),
    ((torch.ones(3, 4), torch.ones(4)), r"'weight' .* shape \[C_out, 4\]"),
    ((torch.ones(3, 4), torch.ones(5, 4), torch.ones(4)),
     r"'bias' .* shape \[5\]"),
])
def test_errors_name_the_argument(args, match):
    with pytest.raises(ValueError, match=match):
        linear(*args)
    with pytest.raises(ValueError, match='backend'):
        linear(torch.ones(3, 4), torch.ones(5, 4), backend='cuda')


def test_dtypes_are_checked():
    x, w, b = torch.ones(3, 4), torch.ones(5, 4), torch.ones(5)
    with pytest.raises(TypeError, match="'input' to be floating point"):
        linear(x.long(), w, b)
    with pytest.raises(TypeError, match="'weight' to be floating point"):
        linear(x, w.int(), b)
    with pytest.raises(TypeError, match="'bias' to be floating point"):
        linear(x, w, b.long())
    with pytest.raises(TypeError, match="one dtype outside autocast"):
        linear(x.double(), w, b)
    # Autocast casts them, as for F.linear.
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = linear(x, w.bfloat16(), b)
    assert torch.equal(out.float(), torch.full((3, 5), 5.0))


def test_triton_backend_refuses_what_it_cannot_serve(kernels):
    x, w, b = _inputs((6, 3), 5)
    with pytest.raises(ValueError, match='one floating dtype'):
        linear(x.double(), w.double(), b.double(), backend='triton')
