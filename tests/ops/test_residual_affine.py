"""samsa_geo.ops.residual_affine: equal to PyTorch's addition and addcmul,
its Triton kernel (run on CPU by Triton's interpreter, compiled on a GPU),
where it serves, and its errors."""
import pytest
import torch

from samsa_geo.ops import residual_affine, use_backend

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture(scope='module')
def kernel(triton_modules):
    return triton_modules('samsa_geo.ops._triton.residual_affine')


def _inputs(N, C, h_dtype=torch.float32):
    x = torch.randn(N, C, device=DEVICE) * 3
    h = torch.randn(N, C, device=DEVICE).to(h_dtype)
    scale = torch.rand(C, device=DEVICE) + 0.5
    shift = torch.randn(C, device=DEVICE)
    return x, h, scale, shift


@pytest.mark.parametrize('N, C', [(7, 64), (33, 256), (5, 24), (1, 1)])
@pytest.mark.parametrize('h_dtype', [torch.float32, torch.bfloat16])
def test_kernel_equals_torch(kernel, N, C, h_dtype):
    x, h, scale, shift = _inputs(N, C, h_dtype)
    y, copy = residual_affine(x, h, scale, shift, backend='triton')
    ref = torch.addcmul(shift, x + h, scale)
    assert copy is None and y.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-6)
    y2, copy = residual_affine(x, h, scale, shift,
                               copy_dtype=torch.bfloat16, backend='triton')
    assert torch.equal(y2, y) and copy.dtype == torch.bfloat16
    if DEVICE == 'cuda':  # rounded to nearest, as .to()
        assert torch.equal(copy, y.to(torch.bfloat16))
    else:  # Triton's interpreter truncates: within one bfloat16 step
        err = (copy.float() - y).abs()
        assert (err <= y.abs() * 2**-7).all()


def test_kernel_reads_strided_rows(kernel):
    base, h, scale, shift = _inputs(20, 128)
    x = base[:, :64]  # row stride 128
    y, _ = residual_affine(x, h[:, 64:], scale[:64], shift[:64],
                           backend='triton')
    ref = torch.addcmul(shift[:64], x + h[:, 64:], scale[:64])
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-6)


def test_torch_backend_is_the_reference_and_copies():
    x, h, scale, shift = _inputs(9, 16, torch.bfloat16)
    y, copy = residual_affine(x, h, scale, shift, copy_dtype=torch.float16,
                              backend='torch')
    assert torch.equal(y, torch.addcmul(shift, x + h, scale))
    assert torch.equal(copy, y.half())
    with use_backend('torch'):  # 'auto' follows the default
        assert torch.equal(residual_affine(x, h, scale, shift)[0], y)


def test_gradients_go_to_torch():
    x, h, scale, shift = _inputs(6, 8)
    x.requires_grad_()
    y, _ = residual_affine(x, h, scale, shift)
    y.sum().backward()
    assert torch.equal(x.grad, scale.expand(6, 8))


def test_errors_name_the_argument():
    x, h, scale, shift = _inputs(4, 8)
    with pytest.raises(ValueError, match="'x'.*\\[N, C\\]"):
        residual_affine(x[0], h, scale, shift)
    with pytest.raises(ValueError, match="'h'.*\\[4, 8\\]"):
        residual_affine(x, h[:3], scale, shift)
    with pytest.raises(ValueError, match="'scale'.*\\[8\\]"):
        residual_affine(x, h, scale[:4], shift)
    with pytest.raises(ValueError, match="'shift'.*\\[8\\]"):
        residual_affine(x, h, scale, shift.view(1, 8))
    with pytest.raises(TypeError, match="'h'.*floating"):
        residual_affine(x, h.long(), scale, shift)
    with pytest.raises(ValueError, match='backend'):
        residual_affine(x, h, scale, shift, backend='compiled')


def test_triton_needs_a_half_precision_copy(kernel):
    x, h, scale, shift = _inputs(4, 8)
    with pytest.raises(ValueError, match='half-precision copy'):
        residual_affine(x, h, scale, shift, copy_dtype=torch.float64,
                        backend='triton')
    y, copy = residual_affine(x, h, scale, shift, copy_dtype=torch.float64,
                              backend='auto' if DEVICE == 'cuda' else 'torch')
    assert torch.equal(copy, y.double())


def test_promoted_float_is_torchs_promotion():
    from samsa_geo.ops._utils import promoted_float
    dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
    for a in dtypes:
        for b in dtypes:
            assert promoted_float(a, b) == torch.promote_types(a, b)
