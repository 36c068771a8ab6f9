"""samsa_geo.ops._triton.cast_linear: float32 rows cast to the weights'
16-bit dtype inside the GEMM (Triton's interpreter on a CPU, compiled on a
GPU) equal the cast then the linear layer, and its errors."""
import pytest
import torch
import torch.nn.functional as F

DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'


@pytest.fixture(scope='module')
def kernel(triton_modules):
    return triton_modules('samsa_geo.ops._triton.cast_linear')


def _reference(x, weight, bias):
    # The cast, then float32 products and sums of the 16-bit values,
    # rounded once to the weights' dtype.
    xr = x.to(weight.dtype).float()
    b = None if bias is None else bias.float()
    return F.linear(xr, weight.float(), b)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('M, N, K', [(37, 24, 20), (64, 40, 64), (5, 8, 3),
                                     (1, 1, 1)])
@pytest.mark.parametrize('with_bias', [True, False])
def test_kernel_equals_the_cast_then_the_linear_layer(
        kernel, dtype, M, N, K, with_bias):
    x = torch.randn(M, K, device=DEVICE) * 3
    weight = torch.randn(N, K, device=DEVICE).to(dtype)
    bias = torch.randn(N, device=DEVICE).to(dtype) if with_bias else None
    y = kernel.cast_linear_triton(x, weight, bias)
    ref = _reference(x, weight, bias)
    assert y.dtype == dtype and y.shape == (M, N) and y.is_contiguous()
    if K == 1:  # one product of the rounded values: exact in float32
        assert torch.equal(y, ref.to(dtype))
    # One rounding to 16 bits apart (the float32 sums' order aside).
    step = 2.0**-7 if dtype == torch.bfloat16 else 2.0**-10
    err = (y.float() - ref).abs()
    assert (err <= ref.abs() * step + 1e-3 * K).all()
    if DEVICE == 'cuda':  # the values of autocast's F.linear
        with torch.autocast('cuda', dtype=dtype):
            auto = F.linear(x, weight, bias)
        assert ((y.float() - auto.float()).abs()
                <= auto.float().abs() * step + 1e-3 * K).all()


def test_kernel_reads_strided_rows_and_ignores_other_columns(kernel):
    base = torch.randn(30, 48, device=DEVICE)
    x = base[:, 8:40]  # row stride 48
    weight = torch.randn(16, 32, device=DEVICE).bfloat16()
    y = kernel.cast_linear_triton(x, weight)
    assert torch.equal(y, kernel.cast_linear_triton(x.contiguous(), weight))
    base[:, :8] = float('nan')
    base[:, 40:] = float('nan')
    assert torch.equal(kernel.cast_linear_triton(x, weight), y)


def test_empty_shapes(kernel):
    weight = torch.randn(6, 4, device=DEVICE).bfloat16()
    bias = torch.randn(6, device=DEVICE).bfloat16()
    y = kernel.cast_linear_triton(torch.randn(0, 4, device=DEVICE), weight,
                                  bias)
    assert y.shape == (0, 6) and y.dtype == torch.bfloat16
    no_k = torch.randn(6, 0, device=DEVICE).bfloat16()
    y = kernel.cast_linear_triton(torch.randn(3, 0, device=DEVICE), no_k,
                                  bias)
    assert torch.equal(y, bias.expand(3, 6))
    assert not kernel.cast_linear_triton(
        torch.randn(3, 0, device=DEVICE), no_k).any()


def test_errors_name_the_argument(kernel):
    x = torch.randn(4, 8, device=DEVICE)
    weight = torch.randn(6, 8, device=DEVICE).bfloat16()
    with pytest.raises(TypeError, match="float32 'x'"):
        kernel.cast_linear_triton(x.double(), weight)
    with pytest.raises(TypeError, match="float16 'weight'"):
        kernel.cast_linear_triton(x, weight.float())
    with pytest.raises(ValueError, match=r"'weight' of shape \[N, 8\]"):
        kernel.cast_linear_triton(x, weight[:, :4])
    with pytest.raises(ValueError, match="'bias' of shape"):
        kernel.cast_linear_triton(x, weight, weight[0])
    with pytest.raises(ValueError, match="'bias' of shape"):
        kernel.cast_linear_triton(x, weight, torch.zeros(6, device=DEVICE))
    with pytest.raises(ValueError, match='unit column stride'):
        kernel.cast_linear_triton(x.t().contiguous().t(), weight)
