import os.path as osp
import sys

import torch

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
from launch import cases  # noqa: E402


def test_every_launch_case_selects_the_top_k():
    # The benchmark's hand-written kernel arguments must stay those of
    # select_topk_triton: each case returns the same, correct sets.
    B, n, H, k = 2, 48, 2, 8
    runs = cases(torch.device('cpu'), B, n, H, k)
    gen = torch.Generator().manual_seed(0)
    score = torch.randn(B * n, H, generator=gen)  # the cases' scores
    expected = score.view(B, n, H).topk(k, dim=1).indices  # [B, k, H]
    expected = expected.transpose(1, 2).sort(-1).values  # [B, H, k]
    expected = expected + torch.arange(B).view(B, 1, 1) * n
    assert set(runs) == {'triton_call', 'launcher', 'select_topk_triton'}
    for name, run in runs.items():
        idx = run()
        assert idx.shape == (B, H, k), name
        assert torch.equal(idx.sort(-1).values, expected), name
