import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
import tile_attention_kernel as bench  # noqa: E402

from samsa_geo.nn import SamsaAttention  # noqa: E402
from samsa_geo.nn.attention._sets import set_info  # noqa: E402


@pytest.mark.parametrize('B,n', [(32, 1024), (8, 4096), (2, 16384),
                                 (1, 65536), (1, 262144)])
def test_the_benchmark_times_the_layers_tile_layout(B, n):
    # The tile of queries the benchmark uses is the layer's, and its keys
    # are one broadcast view for one set, per-tile copies for several.
    attn = SamsaAttention(256, heads=8, k=256)
    batch = torch.arange(B).repeat_interleave(n)
    info = set_info(B * n, batch, 256, 0, False, batch.device, B, n)
    assert bench.tile_size(n) == attn._tile_size(info, B * n)
    # (2 heads of 16 channels: small tensors on the CPU.)
    q, k, v, T, nt = bench.inputs(B, n, 2, 16, 256, torch.device('cpu'))
    assert T == bench.tile_size(n)
    assert q.shape == (nt, 2, T, 16) and nt * T == B * n
    assert q.transpose(1, 2).is_contiguous()  # token-major rows
    assert k.shape == v.shape == (nt, 2, 256, 16)
    assert (k.stride(0) == 0) == (B == 1)
