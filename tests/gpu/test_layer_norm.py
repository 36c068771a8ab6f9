"""samsa_geo.ops.layer_norm's Triton kernel compiled on the GPU under CUDA
autocast: float32 out, as PyTorch's layer norm (`pytest -m gpu tests/gpu`).
The kernel's values on CPU (Triton's interpreter) are tested in
tests/ops/test_layer_norm.py."""
import pytest
import torch
import torch.nn.functional as F

from samsa_geo.ops import layer_norm

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


@pytest.fixture(scope='module')
def kernel(triton_modules):
    return triton_modules('samsa_geo.ops._triton.layer_norm')


def test_autocast_gives_float32_as_torch(kernel, spy):
    calls = spy(kernel, 'layer_norm_triton')
    x = torch.randn(100, 64, device='cuda').bfloat16()
    w, b = torch.randn(64, device='cuda'), torch.randn(64, device='cuda')
    with torch.autocast('cuda', dtype=torch.bfloat16):
        out = layer_norm(x, w, b)
        ref = F.layer_norm(x, (64, ), w, b)
    assert len(calls) == 1  # the kernel served, not PyTorch's layer norm
    assert out.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(out, ref)
