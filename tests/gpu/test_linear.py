"""samsa_geo.ops.linear's column-sum kernel compiled on the GPU: against
F.linear at the layer's widths and the benchmark's sizes, and with no host
synchronisation (`pytest -m gpu tests/gpu`)."""
import pytest
import torch
import torch.nn.functional as F

from samsa_geo.ops import linear

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


@pytest.mark.parametrize('M, C_in, C_out', [(262144, 256, 1024),
                                            (32768, 512, 256),
                                            (1000, 256, 96), (3, 64, 300)])
def test_kernel_equals_f_linear_bfloat16(M, C_in, C_out):
    g = torch.Generator(device='cuda').manual_seed(0)
    x = torch.randn(M, C_in, device='cuda', generator=g).bfloat16()
    w = (torch.randn(C_out, C_in, device='cuda', generator=g) / 16
         ).bfloat16()
    b = torch.randn(C_out, device='cuda', generator=g).bfloat16()
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    out = linear(x, w, b, backend='triton')
    ref = F.linear(x, w, b)
    assert torch.equal(out, ref)
    grad = torch.randn(M, C_out, device='cuda', generator=g).bfloat16()
    got = torch.autograd.grad(out, (x, w, b), grad)
    want = torch.autograd.grad(ref, (x, w, b), grad)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # One rounding of the float32 sum (PyTorch's order differs).
    exact = grad.double().sum(0)
    assert got[2].dtype == torch.bfloat16
    assert ((got[2].double() - exact).abs()
            <= exact.abs() * 2**-8 + 1e-3).all()
    # Equal to PyTorch's float32 sum rounded once, but at rare ties.
    assert (got[2] != grad.float().sum(0).bfloat16()).float().mean() < 0.01


def test_no_host_synchronisation():
    x = torch.randn(65536, 256, device='cuda').bfloat16().requires_grad_()
    w = torch.randn(512, 256, device='cuda').bfloat16().requires_grad_()
    b = torch.randn(512, device='cuda').bfloat16().requires_grad_()
    grad = torch.randn(65536, 512, device='cuda').bfloat16()
    for _ in range(2):  # compile and load the kernel first
        linear(x, w, b).backward(grad)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        linear(x, w, b).backward(grad)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(b.grad).all()
