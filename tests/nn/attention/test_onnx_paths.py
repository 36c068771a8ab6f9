"""The ONNX export's replacements of operators that ONNX lacks (bit casts,
stable sorts, ``searchsorted``) give the eager results."""
import pytest
import torch

from samsa_geo.nn.attention._sampling import _rank_sorted
from samsa_geo.nn.attention._sets import search_right, set_info, sort_stable


@pytest.fixture
def in_onnx_export(monkeypatch):
    def switch(on: bool):
        monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: on)
    return switch


def test_search_right_equals_searchsorted(in_onnx_export):
    # Repeated bounds (empty sets), values before, between and past them.
    bounds = torch.tensor([0, 2, 2, 5, 5, 5, 9])
    values = torch.arange(-1, 12)
    in_onnx_export(False)
    expected = search_right(bounds, values)
    assert torch.equal(expected,
                       torch.searchsorted(bounds, values, right=True))
    in_onnx_export(True)
    assert torch.equal(search_right(bounds, values), expected)
    assert torch.equal(search_right(bounds[:0], values),
                       torch.zeros_like(values))


@pytest.mark.parametrize('dim', [0, 1])
def test_sort_stable_equals_a_stable_sort(in_onnx_export, dim):
    # Many ties: a stable sort keeps their order.
    keys = torch.randint(0, 4, (7, 9), generator=torch.Generator()
                         .manual_seed(0))
    expected = torch.sort(keys, dim=dim, stable=True)
    in_onnx_export(True)
    values, indices = sort_stable(keys, dim=dim)
    assert torch.equal(values, expected.values)
    assert torch.equal(indices, expected.indices)


@pytest.mark.parametrize('num_registers', [0, 2])
def test_rank_sorted_in_onnx_export_equals_eager(in_onnx_export,
                                                 num_registers):
    sizes = torch.tensor([7, 0, 12, 3, 9])  # an empty set among them
    B, R, H, K2 = sizes.numel(), num_registers, 3, 5
    batch = torch.repeat_interleave(torch.arange(B), sizes)
    N = batch.numel()
    info = set_info(N, batch, 4, R, False, batch.device, B, int(sizes.max()))
    gen = torch.Generator().manual_seed(0)
    cand = torch.randn(N + B * R, H, generator=gen)  # [M, H], no ties
    cand[3, 0] = -float('inf')  # a masked candidate
    in_onnx_export(False)
    expected = _rank_sorted(cand, batch, info, N, R, K2)  # [B, H, K2]
    in_onnx_export(True)
    ids = _rank_sorted(cand, batch, info, N, R, K2)
    assert torch.equal(ids, expected)
    # The ranks are the sets' own candidates in descending order of score.
    cand_set = torch.cat([batch, torch.arange(B).repeat_interleave(R)])
    for b in range(B):
        n_b = min(int(sizes[b]) + R, K2)
        for h in range(H):
            mine = (cand_set == b).nonzero().view(-1)
            ref = mine[cand[mine, h].argsort(descending=True)][:n_b]
            assert torch.equal(ids[b, h, :n_b], ref)
