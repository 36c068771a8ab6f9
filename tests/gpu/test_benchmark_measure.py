"""benchmarks/_common.py's memory counts on the GPU machine
(`pytest -m gpu tests/gpu`)."""
import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
from _common import measure  # noqa: E402


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_measure_counts_memory_kept_by_the_warm_up():
    kept = []

    def fn():
        if not kept:  # the first call keeps 4 MB, as a graph's pool
            kept.append(torch.empty(2**20, device='cuda'))
        torch.empty(2**19, device='cuda')  # 2 MB while it runs

    got = measure(fn, torch.device('cuda'), warmup=1, repeat=3)
    assert got['held_mb'] == pytest.approx(4.0)
    assert got['peak_mb'] == pytest.approx(2.0)
    assert got['first_peak_mb'] == pytest.approx(6.0)
