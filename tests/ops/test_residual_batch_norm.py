"""samsa_geo.ops.residual_batch_norm: equal to PyTorch's addition and
training batch norm (outputs, running statistics, gradients of every
input through the output and its copy), its Triton kernels (run on CPU by
Triton's interpreter, compiled on a GPU), where they serve, and its
errors."""
import pytest
import torch
import torch.nn.functional as F

from samsa_geo.ops import residual_batch_norm, use_backend

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture(scope='module')
def kernels(triton_modules):
    return triton_modules('samsa_geo.ops._triton.batch_norm')


def _inputs(N, C, h_dtype=torch.float32, affine=True, running=True,
            offset=0.0):
    x = (torch.randn(N, C, device=DEVICE) * 3 + offset).requires_grad_()
    h = torch.randn(N, C, device=DEVICE).to(h_dtype).requires_grad_()
    w = b = rm = rv = None
    if affine:
        w = (torch.rand(C, device=DEVICE) + 0.5).requires_grad_()
        b = torch.randn(C, device=DEVICE).requires_grad_()
    if running:
        rm = torch.randn(C, device=DEVICE)
        rv = torch.rand(C, device=DEVICE) + 0.5
    return x, h, w, b, rm, rv


def _grads(y, z, x, h, w, b, seed=1):
    # Gradients of a loss that reads the output and, where given, its copy.
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    g = torch.randn(y.shape, device=DEVICE, generator=gen)
    loss = (y.float() * g).sum()
    if z is not None:
        g2 = torch.randn(y.shape, device=DEVICE, generator=gen)
        loss = loss + (z.float() * g2).sum()
    inputs = [t for t in (x, h, w, b) if t is not None]
    return torch.autograd.grad(loss, inputs)


def _reference(x, h, w, b, rm, rv, momentum, copy_dtype):
    rm = None if rm is None else rm.clone()
    rv = None if rv is None else rv.clone()
    y = F.batch_norm(x + h, rm, rv, w, b, training=True, momentum=momentum)
    z = None if copy_dtype is None else y.to(copy_dtype)
    return y, z, rm, rv


def _close_grads(got, ref):
    for g, r in zip(got, ref):
        assert g.dtype == r.dtype and g.shape == r.shape
        if g.dtype == torch.float32:
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)
        else:  # a gradient rounded to bfloat16 once or twice
            torch.testing.assert_close(g.float(), r.float(), atol=2e-2,
                                       rtol=2e-2)


@pytest.mark.parametrize('N, C', [(37, 24), (64, 64), (2, 8), (9, 1)])
@pytest.mark.parametrize('h_dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('copy_dtype', [None, torch.bfloat16])
def test_kernels_equal_torch(kernels, N, C, h_dtype, copy_dtype):
    x, h, w, b, rm, rv = _inputs(N, C, h_dtype)
    y_ref, z_ref, rm_ref, rv_ref = _reference(x, h, w, b, rm, rv, 0.2,
                                              copy_dtype)
    y, z = residual_batch_norm(x, h, w, b, rm, rv, momentum=0.2,
                               copy_dtype=copy_dtype, backend='triton')
    assert y.dtype == y_ref.dtype == torch.float32
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(rm, rm_ref)
    torch.testing.assert_close(rv, rv_ref)
    if copy_dtype is None:
        assert z is None
    else:
        assert z.dtype == copy_dtype
        torch.testing.assert_close(z.float(), z_ref.float(), atol=0.05,
                                   rtol=2**-7)
    _close_grads(_grads(y, z, x, h, w, b), _grads(y_ref, z_ref, x, h, w, b))


@pytest.mark.parametrize('affine, running', [(False, True), (True, False),
                                             (False, False)])
def test_kernels_without_parameters_or_running_statistics(
        kernels, affine, running):
    x, h, w, b, rm, rv = _inputs(30, 16, affine=affine, running=running)
    y_ref, _, rm_ref, rv_ref = _reference(x, h, w, b, rm, rv, 0.1, None)
    y, _ = residual_batch_norm(x, h, w, b, rm, rv, backend='triton')
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    if running:
        torch.testing.assert_close(rm, rm_ref)
        torch.testing.assert_close(rv, rv_ref)
    _close_grads(_grads(y, None, x, h, w, b),
                 _grads(y_ref, None, x, h, w, b))


def test_spans_of_several_chunks_and_a_large_mean(kernels, monkeypatch):
    # Fewer spans than chunks: each span merges chunks (Chan's formula),
    # the last one shorter. A mean of 1e4 with unit spread keeps its
    # variance: the reference is computed in float64.
    monkeypatch.setattr(kernels, 'MAX_SPANS', 3)
    monkeypatch.setattr(kernels, 'MERGE_SPANS', 2)
    x, h, w, b, rm, rv = _inputs(101, 16, offset=1e4)
    with torch.no_grad():
        x.sub_(x.mean(0)).div_(3).add_(1e4)  # spread 1 around 1e4
    y, _ = residual_batch_norm(x, h, w, b, rm, rv, momentum=1.0,
                               backend='triton')
    y64 = F.batch_norm((x + h).double(), None, None, w.double(), b.double(),
                       training=True)
    torch.testing.assert_close(y.double(), y64, atol=2e-3, rtol=1e-3)
    var64 = (x + h).double().var(0)  # momentum 1: the batch's, unbiased
    torch.testing.assert_close(rv.double(), var64, atol=1e-3, rtol=1e-3)
    # x + h rounds to 1e-3 in float32 at 1e4: so do the normalised rows.
    for got, ref in zip(_grads(y, None, x, h, w, b),
                        _grads(y64, None, x, h, w, b)):
        torch.testing.assert_close(got.double(), ref.double(), atol=2e-2,
                                   rtol=1e-2)


def test_gradient_through_the_copy_alone(kernels):
    x, h, w, b, rm, rv = _inputs(20, 8, torch.bfloat16)
    y, z = residual_batch_norm(x, h, w, b, rm, rv, copy_dtype=torch.bfloat16,
                               backend='triton')
    y_ref, z_ref, _, _ = _reference(x, h, w, b, rm, rv, 0.1, torch.bfloat16)
    g = torch.randn(20, 8, device=DEVICE)
    got = torch.autograd.grad((z.float() * g).sum(), (x, h, w, b))
    ref = torch.autograd.grad((z_ref.float() * g).sum(), (x, h, w, b))
    _close_grads(got, ref)


def test_inputs_without_gradients_and_strided_rows(kernels):
    x, h, w, b, rm, rv = _inputs(24, 32)
    x = x.detach()
    wide = torch.randn(24, 64, device=DEVICE)
    h = wide[:, 16:48].requires_grad_(False)
    y, _ = residual_batch_norm(x, h, w, b, rm, rv, backend='triton')
    y_ref, _, _, _ = _reference(x, h, w, b, rm, rv, 0.1, None)
    torch.testing.assert_close(y, y_ref, atol=1e-4, rtol=1e-4)
    got = torch.autograd.grad((y * y).sum(), (w, b))
    ref = torch.autograd.grad((y_ref * y_ref).sum(), (w, b))
    _close_grads(got, ref)


@pytest.mark.parametrize('h_dtype', [torch.float32, torch.bfloat16])
def test_gradients_written_into_given_buffers(kernels, h_dtype):
    # grad_into set on the output's node: dx (and dh in its own dtype) land
    # in those buffers, equal to the gradients without them; a buffer of
    # another dtype or shape is left alone.
    x, h, w, b, rm, rv = _inputs(37, 24, h_dtype)
    ref = _grads(*residual_batch_norm(x, h, w, b, rm, rv, backend='triton'),
                 x, h, w, b)
    y, z = residual_batch_norm(x, h, w, b, rm, rv, backend='triton')
    into = [torch.full((37, 24), float('nan'), device=DEVICE),
            torch.full((37, 24), float('nan'), device=DEVICE,
                       dtype=h_dtype)]
    y.grad_fn.grad_into = into
    got = _grads(y, z, x, h, w, b)
    _close_grads(got, ref)
    assert got[0].data_ptr() == into[0].data_ptr()
    if h_dtype == torch.float32:  # one gradient serves both
        assert got[1].data_ptr() == into[0].data_ptr()
        assert into[1].isnan().all()
    else:
        assert got[1].data_ptr() == into[1].data_ptr()
    y, z = residual_batch_norm(x, h, w, b, rm, rv, backend='triton')
    wrong = [torch.zeros(37, 24, device=DEVICE, dtype=torch.float64),
             torch.zeros(36, 24, device=DEVICE, dtype=h_dtype)]
    y.grad_fn.grad_into = wrong
    _close_grads(_grads(y, z, x, h, w, b), ref)
    assert not any(t.any() for t in wrong)


def test_auto_on_cpu_is_pytorch():
    # Without CUDA 'auto' runs PyTorch's ops: bit for bit the reference.
    x, h, w, b, rm, rv = (t.cpu() if t is not None else None
                          for t in _inputs(16, 8))
    rm2, rv2 = rm.clone(), rv.clone()
    y, z = residual_batch_norm(x, h, w, b, rm, rv,
                               copy_dtype=torch.bfloat16)
    ref = F.batch_norm(x + h, rm2, rv2, w, b, training=True)
    assert torch.equal(y, ref) and torch.equal(z, ref.bfloat16())
    assert torch.equal(rm, rm2) and torch.equal(rv, rv2)
    with use_backend('torch'):
        y2, _ = residual_batch_norm(x, h, w, b)
    assert torch.equal(y2, F.batch_norm(x + h, None, None, w, b,
                                        training=True))


def test_errors():
    x = torch.randn(6, 8)
    h = torch.randn(6, 8)
    w = torch.ones(8)
    with pytest.raises(ValueError, match="'x' to be a tensor of shape"):
        residual_batch_norm(x[0], h)
    with pytest.raises(ValueError, match="'h' to have the shape of 'x'"):
        residual_batch_norm(x, h[:3])
    with pytest.raises(ValueError, match="more than one row"):
        residual_batch_norm(x[:1], h[:1])
    with pytest.raises(ValueError, match=r"'weight' to have shape \[8\]"):
        residual_batch_norm(x, h, w[:4])
    with pytest.raises(ValueError, match="'running_mean' and 'running_var'"):
        residual_batch_norm(x, h, w, None, torch.zeros(8))
    with pytest.raises(TypeError, match="'h' to be floating point"):
        residual_batch_norm(x, h.long())
    with pytest.raises(ValueError, match="'momentum' to be a float"):
        residual_batch_norm(x, h, momentum=1.5)
    with pytest.raises(ValueError, match="'backend' to be one of"):
        residual_batch_norm(x, h, backend='compiled')
