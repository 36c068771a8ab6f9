"""The unfused path's selection through the segmented top-k kernel, run on
the GPU machine with ``pytest -m gpu tests/gpu``."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention
from samsa_geo.nn.attention import _sampling
from samsa_geo.nn.attention._sets import SetInfo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _no_tensors():
    raise AssertionError('equal sets need no set tensors')


@pytest.mark.parametrize('B,n,H,k', [(1, 262144, 8, 256),
                                     (4, 20000, 4, 64),
                                     (16, 1000, 8, 32),
                                     (3, 40, 2, 40)])
def test_kernel_selection_is_the_top_k(B, n, H, k):
    # Unordered, unperturbed selections of equal sets take the kernel; its
    # sets equal torch.topk's on scores without ties.
    score = torch.randn(B * n, H, device='cuda')  # [N, H]
    batch = torch.arange(B, device='cuda').repeat_interleave(n)
    info = SetInfo(B, n, k, 0, True, _no_tensors)
    assert _sampling._kernel_selects(score, info, 0)
    sel = _sampling.select(score, None, batch, info, 0, False, False,
                           ordered=False)
    assert sel.ids.shape == (B, H, k) and sel.top_valid is None
    top = score.view(B, n, H).topk(k, dim=1).indices  # [B, k, H]
    expected = top.transpose(1, 2) + (torch.arange(B, device='cuda') *
                                      n).view(B, 1, 1)  # global ids
    assert torch.equal(sel.ids.sort(-1).values, expected.sort(-1).values)


def test_kernel_selection_not_taken():
    # Ordered or perturbed selections, registers, ragged sets, float16
    # scores and the CPU keep the padded top-k.
    score = torch.randn(2000, 4, device='cuda')
    info = SetInfo(2, 1000, 32, 0, True, _no_tensors)
    assert not _sampling._kernel_selects(score, info, 2)
    assert not _sampling._kernel_selects(score.half(), info, 0)
    assert not _sampling._kernel_selects(score.cpu(), info, 0)
    ragged = SetInfo(2, 1000, 32, 0, False, _no_tensors)
    assert not _sampling._kernel_selects(score, ragged, 0)


def test_large_set_layer_equals_padded_top_k(monkeypatch):
    # One set beyond FUSED_MAX_SET_SIZE runs the unfused path in
    # evaluation: its output with the kernel's selection equals the one
    # with torch.topk's (the same keys, attended in another order).
    torch.manual_seed(0)
    attn = SamsaAttention(64, heads=4, k=128).cuda().eval()
    x = torch.randn(150_000, 64, device='cuda')
    with torch.no_grad():
        out, idx = attn(x, return_indices=True)  # ordered: padded top-k
        fast = attn(x)
        monkeypatch.setattr(_sampling, '_kernel_selects',
                            lambda *args: False)
        ref = attn(x)
    assert torch.allclose(fast, ref, atol=1e-5, rtol=1e-4)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    assert idx.shape == (1, 4, 128)
