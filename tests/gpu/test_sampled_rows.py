"""Keys and values of the sampled rows alone (evaluation on the general
path, from SAMPLED_ROWS_MIN_TOKENS tokens) on the GPU, run on the GPU
machine with ``pytest -m gpu tests/gpu``."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention, SamsaConv
from samsa_geo.nn.attention import samsa_attention

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


@pytest.mark.parametrize('B,n', [(1, 262144), (2, 140000)])
def test_the_layer_equals_its_full_projection(monkeypatch, B, n):
    torch.manual_seed(0)
    conv = SamsaConv(256, None, heads=8, k=256).cuda().eval()
    x = torch.randn(B * n, 256, device='cuda')
    batch = torch.arange(B, device='cuda').repeat_interleave(n)
    taken = []
    original = SamsaAttention._projects_sampled_rows

    def spy(self, *args):
        taken.append(original(self, *args))
        return taken[-1]

    def run():
        with torch.autocast('cuda', dtype=torch.bfloat16), torch.no_grad():
            return conv(x, None, batch, num_graphs=B, max_num_nodes=n,
                        return_attention_weights=True)

    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows', spy)
    out, (idx, _) = run()
    assert taken == [True]
    monkeypatch.setattr(SamsaAttention, '_projects_sampled_rows',
                        lambda self, *args: False)
    ref, (ref_idx, _) = run()
    assert torch.equal(idx, ref_idx)  # the scores do not read the keys
    # bf16 keys and values rounded from other GEMMs: within a few ulps.
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    assert (out - ref).abs().mean() < 2e-3
    assert samsa_attention.SAMPLED_ROWS_MIN_TOKENS <= B * n
