import pytest
import torch

from samsa_geo.ops import _fallback, knn, knn_graph, value_checks
from samsa_geo.ops._fallback import blocks


def _batch(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)),
                                   torch.tensor(sizes))


def _ptr(sizes):
    return torch.tensor([0] + sizes).cumsum(0)


def _float32_reference(x, y, k, batch_x, batch_y):
    # Brute force on float32 copies: per query, the same-example candidates
    # by distance (ties by index).
    x, y = x.float(), y.float()
    rows, cols = [], []
    for i in range(y.size(0)):
        cand = (batch_x == batch_y[i]).nonzero().view(-1)
        dist = (x[cand] - y[i]).square().sum(-1)
        order = dist.argsort(stable=True)[:k]
        rows += [i] * order.numel()
        cols += cand[order].tolist()
    return torch.tensor([rows, cols], dtype=torch.long).view(2, -1)


def _overflowing_half_cloud():
    # Example 0: 3 points about 300 apart, whose float16 squared distances
    # overflow to +inf; example 1: 10 ordinary points.
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(3, 3, generator=gen) * 300,
                   torch.randn(10, 3, generator=gen)]).half()
    return x, _batch([3, 10])


def _cross_pairs(out, batch_y, batch_x):
    return (batch_y[out[0]] != batch_x[out[1]]).sum().item()


@pytest.mark.parametrize('padded', [None, True, False])
def test_half_overflow_stays_in_example(padded):
    x, batch = _overflowing_half_cloud()
    assert torch.isinf((x[0] - x[1]).square().sum())  # the premise
    expected = _float32_reference(x, x, 5, batch, batch)
    out = _fallback.knn(x, x, 5, _ptr([3, 10]), batch, padded=padded)
    assert _cross_pairs(out, batch, batch) == 0
    assert torch.equal(out, expected)
    # One chunk spanning both examples (span path: other examples masked).
    out = _fallback.knn(x, x, 5, _ptr([3, 10]), batch, padded=padded,
                        chunk_size=2**30)
    assert torch.equal(out, expected)


def test_half_overflow_public_ops():
    x, batch = _overflowing_half_cloud()
    out = knn(x, x, 5, batch, batch, backend='torch')
    assert torch.equal(out, _float32_reference(x, x, 5, batch, batch))
    graph = knn_graph(x, 4, batch, loop=False, backend='torch')
    assert graph.size(1) == 3 * 2 + 10 * 4
    assert (batch[graph[0]] == batch[graph[1]]).all()
    # Each of the 3 points of example 0 links to the other two.
    src = graph[0, graph[1] < 3].view(3, 2).sort(dim=1).values
    assert src.tolist() == [[1, 2], [0, 2], [0, 1]]


@pytest.mark.parametrize('padded', [True, False])
def test_float32_overflow_ranks_before_padding(padded):
    # Squared distances of ~1e20 apart points overflow float32 itself:
    # they rank last within their example but never after padding.
    gen = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(3, 3, generator=gen) * 1e20,
                   torch.randn(10, 3, generator=gen)])
    batch = _batch([3, 10])
    out = _fallback.knn(x, x, 5, _ptr([3, 10]), batch, padded=padded,
                        chunk_size=2**30)
    assert _cross_pairs(out, batch, batch) == 0
    assert out.size(1) == 3 * 3 + 10 * 5
    # Example 0: each query first finds itself, then the other two.
    first = out[:, :9]
    assert first[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert first[1, ::3].tolist() == [0, 1, 2]
    assert first[1].view(3, 3).sort(dim=1).values.tolist() == [[0, 1, 2]] * 3
    expected = _float32_reference(x, x, 5, batch, batch)
    assert torch.equal(out[:, 9:], expected[:, 9:])


def test_nan_points_stay_in_example():
    # With value checks off, NaN distances must not let padding through.
    x = torch.randn(13, 3)
    x[1] = float('nan')
    batch = _batch([3, 10])
    with value_checks(False):
        for padded in (True, False):
            out = _fallback.knn(x, x, 5, _ptr([3, 10]), batch,
                                padded=padded, chunk_size=2**30)
            assert _cross_pairs(out, batch, batch) == 0
            assert out.size(1) == 3 * 3 + 10 * 5


def test_exclude():
    inf, nan = float('inf'), float('nan')
    big = torch.finfo(torch.float32).max
    dist = torch.tensor([[0.5, inf, nan, 2.0]])
    mask = torch.tensor([[False, False, False, True]])
    out = blocks.exclude(dist, mask)
    assert out is dist
    assert out.tolist() == [[0.5, big, big, inf]]


def test_ordinary_half_input_equals_float32_brute_force():
    gen = torch.Generator().manual_seed(2)
    sizes = [20, 7, 33]
    x = torch.randn(sum(sizes), 3, generator=gen).half()
    batch = _batch(sizes)
    expected = _float32_reference(x, x, 6, batch, batch)
    for padded in (True, False):
        out = _fallback.knn(x, x, 6, _ptr(sizes), batch, padded=padded)
        assert torch.equal(out, expected)
