import math

import pytest
import torch

import samsa_geo.typing
from samsa_geo.ops import _fallback, knn, knn_graph

needs_cluster = pytest.mark.skipif(not samsa_geo.typing.WITH_TORCH_CLUSTER,
                                   reason='torch_cluster is not installed')


def _batch(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)),
                                   torch.tensor(sizes))


def _ptr(sizes):
    return torch.tensor([0] + sizes).cumsum(0)


def _reference(x, y, k, batch_x, batch_y, cosine=False):
    # Brute force in float64: for each query, all same-example candidates
    # sorted by distance.
    x, y = x.double(), y.double()
    if cosine:
        dist = 1 - torch.nn.functional.normalize(y, dim=1) @ \
            torch.nn.functional.normalize(x, dim=1).t()
    else:
        dist = torch.cdist(y, x)
    rows, cols = [], []
    for i in range(y.size(0)):
        cand = (batch_x == batch_y[i]).nonzero().view(-1)
        order = dist[i, cand].argsort()[:k]
        rows += [i] * order.numel()
        cols += cand[order].tolist()
    return torch.tensor([rows, cols], dtype=torch.long).view(2, -1)


@pytest.mark.parametrize('k', [1, 4, 9])
@pytest.mark.parametrize('cosine', [False, True])
def test_knn_matches_brute_force(k, cosine):
    # Uneven examples, some smaller than k, one with no query.
    sizes_x, sizes_y = [12, 3, 0, 25, 7], [5, 4, 6, 0, 9]
    x, y = torch.randn(sum(sizes_x), 3), torch.randn(sum(sizes_y), 3)
    batch_x, batch_y = _batch(sizes_x), _batch(sizes_y)
    out = knn(x, y, k, batch_x, batch_y, cosine=cosine, backend='torch')
    expected = _reference(x, y, k, batch_x, batch_y, cosine)
    assert torch.equal(out, expected)
    assert torch.equal(batch_x[out[1]], batch_y[out[0]])  # batch isolation


def test_knn_single_example_and_1d_input():
    x, y = torch.randn(50, 2), torch.randn(10, 2)
    zeros = lambda n: torch.zeros(n, dtype=torch.long)  # noqa: E731
    out = knn(x, y, 5, backend='torch')
    assert out.size() == (2, 50)
    assert torch.equal(out, _reference(x, y, 5, zeros(50), zeros(10)))
    x1 = torch.randn(30)
    assert torch.equal(knn(x1, x1, 3, backend='torch'),
                       _reference(x1.view(-1, 1), x1.view(-1, 1), 3,
                                  zeros(30), zeros(30)))


@pytest.mark.parametrize('chunk_size', [1, 7, 64, 500])
def test_knn_chunked_equals_unchunked(chunk_size):
    sizes = [40, 1, 65, 13]
    x, batch = torch.randn(sum(sizes), 3), _batch(sizes)
    y = torch.randn(sum(sizes), 3)
    full = knn(x, y, 6, batch, batch, backend='torch', chunk_size=2**30)
    out = knn(x, y, 6, batch, batch, backend='torch', chunk_size=chunk_size)
    assert torch.equal(out, full)


@pytest.mark.parametrize('flow', ['source_to_target', 'target_to_source'])
@pytest.mark.parametrize('loop', [False, True])
def test_knn_graph(flow, loop):
    sizes = [20, 4, 11]
    x, batch = torch.randn(sum(sizes), 3), _batch(sizes)
    k = 5
    edge_index = knn_graph(x, k, batch, loop=loop, flow=flow, backend='torch')
    centre = edge_index[1] if flow == 'source_to_target' else edge_index[0]
    other = edge_index[0] if flow == 'source_to_target' else edge_index[1]
    assert torch.equal(batch[centre], batch[other])
    assert bool((centre == other).any()) == loop
    expected = torch.tensor([min(k, n - (not loop)) for n in sizes])
    deg = torch.bincount(centre, minlength=x.size(0))
    assert torch.equal(deg, torch.repeat_interleave(expected,
                                                    torch.tensor(sizes)))
    # Same neighbour sets as knn() with self excluded.
    ref = _reference(x, x, k + (not loop), batch, batch)
    ref = ref[:, ref[0] != ref[1]] if not loop else ref
    assert torch.equal(torch.stack([centre, other]), ref)


def test_knn_empty_inputs():
    x = torch.randn(5, 3)
    assert knn(x, x[:0], 2, backend='torch').size() == (2, 0)
    assert knn(x[:0], x, 2, backend='torch').size() == (2, 0)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(k=0), ValueError, "'k'"),
    (dict(k=2.0), TypeError, "'k'"),
    (dict(y=torch.randn(3, 2)), ValueError, 'same number of features'),
    (dict(batch_x=torch.tensor([0, 1, 1, 0]),
          batch_y=torch.tensor([0, 0, 1])), ValueError, 'sorted'),
    (dict(batch_x=torch.tensor([0, 0, 1, 1])), ValueError, "'batch_y'"),
    (dict(batch_x=torch.tensor([0, 1])), ValueError, "'batch_x' to have"),
    (dict(chunk_size=0), ValueError, "'chunk_size'"),
    (dict(x=torch.zeros(4, 3, dtype=torch.long)), TypeError, "'x'"),
    (dict(x=torch.zeros(4, 3, 1)), ValueError, "'x' to have shape"),
    (dict(backend='fast'), ValueError, "'backend'"),
])
def test_knn_errors(kwargs, error, match):
    args = dict(x=torch.randn(4, 3), y=torch.randn(3, 3), k=2)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        knn(**args)


def test_knn_graph_bad_flow():
    with pytest.raises(ValueError, match="'flow'"):
        knn_graph(torch.randn(4, 3), 2, flow='both')


@needs_cluster
@pytest.mark.parametrize('k', [1, 16])
def test_knn_compiled_equals_fallback(k):
    sizes_x, sizes_y = [300, 7, 0, 120], [50, 20, 10, 64]
    x, y = torch.rand(sum(sizes_x), 3), torch.rand(sum(sizes_y), 3)
    batch_x, batch_y = _batch(sizes_x), _batch(sizes_y)
    for args in [(None, None), (batch_x, batch_y)]:
        out = knn(x, y, k, *args, backend='compiled')
        expected = knn(x, y, k, *args, backend='torch')
        assert torch.equal(out, expected)
    out = knn_graph(x, k, batch_x, backend='compiled')
    assert torch.equal(out, knn_graph(x, k, batch_x, backend='torch'))


@pytest.mark.parametrize('padded', [True, False])
@pytest.mark.parametrize('chunk_size', [256, 4096])
def test_knn_distance_blocks_are_bounded(monkeypatch, chunk_size, padded):
    # Never an N x N matrix: every distance block respects chunk_size
    # (a single query row may exceed it when one example is larger).
    sizes = [300, 20, 180]
    x, batch = torch.randn(sum(sizes), 3), _batch(sizes)
    blocks = []
    distances = _fallback._distances

    def recording_distances(y, x, cosine):
        out = distances(y, x, cosine)
        blocks.append(tuple(out.size()))
        return out

    monkeypatch.setattr(_fallback, '_distances', recording_distances)
    out = _fallback.knn(x, x, 8, _ptr(sizes), batch, chunk_size=chunk_size,
                        padded=padded)
    monkeypatch.undo()
    assert torch.equal(out, _reference(x, x, 8, batch, batch))
    assert len(blocks) > 1
    assert all(len(block) == (3 if padded else 2) for block in blocks)
    rows = [math.prod(block[:-1]) for block in blocks]
    assert all(q * block[-1] <= chunk_size or q == 1
               for q, block in zip(rows, blocks))
    assert all(block[-1] <= max(sizes) or q * block[-1] <= chunk_size
               for q, block in zip(rows, blocks))


CASES = {
    'equal': ([64] * 6, [64] * 6),
    'uneven': ([40, 1, 65, 13], [40, 1, 65, 13]),
    'single': ([200], [200]),
    'small_examples': ([12, 3, 0, 25, 7], [5, 4, 6, 0, 9]),
    'x_differs_from_y': ([30, 50, 20], [5, 0, 12]),
    'empty_in_middle': ([10, 0, 15, 0, 8], [4, 6, 0, 0, 3]),
}


@pytest.mark.parametrize('case', list(CASES))
@pytest.mark.parametrize('chunk_size', [1, 50, 700, 2**30])
@pytest.mark.parametrize('cosine', [False, True])
def test_knn_padded_equals_span_and_brute_force(case, chunk_size, cosine):
    sizes_x, sizes_y = CASES[case]
    k = 9
    x = torch.randn(sum(sizes_x), 3)
    batch_x, batch_y = _batch(sizes_x), _batch(sizes_y)
    if case == 'x_differs_from_y':  # y is a subset of x
        y = x[torch.cat([torch.arange(0, 5), torch.arange(80, 92)])]
    else:
        y = torch.randn(sum(sizes_y), 3)
    expected = _reference(x, y, k, batch_x, batch_y, cosine)
    for padded in [True, False]:
        out = _fallback.knn(x, y, k, _ptr(sizes_x), batch_y, cosine,
                            chunk_size=chunk_size, padded=padded)
        assert torch.equal(out, expected)
    if case == 'x_differs_from_y' and not cosine:
        # Each query point of y finds itself first.
        first = expected[1].view(-1, k)[:, 0]
        assert torch.equal(x[first], y)


@needs_cluster
@pytest.mark.parametrize('case', list(CASES))
@pytest.mark.parametrize('k', [1, 16])
def test_knn_padded_and_span_equal_compiled(case, k):
    sizes_x, sizes_y = CASES[case]
    x, y = torch.rand(sum(sizes_x), 3), torch.rand(sum(sizes_y), 3)
    batch_x, batch_y = _batch(sizes_x), _batch(sizes_y)
    expected = knn(x, y, k, batch_x, batch_y, batch_size=len(sizes_x),
                   backend='compiled')
    for padded in [True, False]:
        for chunk_size in [37, None]:
            out = _fallback.knn(x, y, k, _ptr(sizes_x), batch_y,
                                chunk_size=chunk_size, padded=padded)
            assert torch.equal(out, expected)


@pytest.mark.parametrize('num_features', [1, 8, 9])
def test_knn_padded_many_features(num_features):
    # Up to 8 features are summed plane by plane, more go through cdist;
    # padded candidates must never be picked either way.
    sizes = [20, 3, 31]
    x, batch = torch.randn(sum(sizes), num_features), _batch(sizes)
    out = _fallback.knn(x, x, 5, _ptr(sizes), batch, chunk_size=600,
                        padded=True)
    assert torch.equal(out, _reference(x, x, 5, batch, batch))


def test_use_padding():
    assert _fallback.use_padding([100_000], [7])
    assert _fallback.use_padding([1024] * 128, [1024] * 128)
    assert _fallback.use_padding([900, 1100, 1024], [0, 5, 3])
    many = [10] * 5000
    assert not _fallback.use_padding([100_000] + many, [1] * 5001)
    assert not _fallback.use_padding([1] * 5001, [100_000] + many)


@pytest.mark.parametrize('sizes_x, sizes_y', [
    ([7] * 10, [5] * 10), ([40, 1, 65, 0, 13], [3, 9, 0, 4, 30]),
    ([500], [300]), ([0, 0, 4], [2, 3, 4]),
])
@pytest.mark.parametrize('chunk_size', [1, 30, 400, 10**6])
def test_example_blocks_cover_every_query_once(sizes_x, sizes_y, chunk_size):
    # Every query with candidates lies in exactly one block.
    seen = []
    for b0, b1, q0, q1, s in _fallback.example_blocks(sizes_x, sizes_y,
                                                      chunk_size):
        assert s == max(sizes_x[b0:b1]) and q1 <= max(sizes_y[b0:b1])
        assert (b1 - b0) * (q1 - q0) * s <= chunk_size or (
            b1 - b0 == 1 and (q1 - q0 == 1 or q1 - q0 == chunk_size // s))
        seen += [(b, q) for b in range(b0, b1) for q in range(q0, q1)
                 if q < sizes_y[b] and sizes_x[b] > 0]
    expected = [(b, q) for b in range(len(sizes_x)) if sizes_x[b] > 0
                for q in range(sizes_y[b])]
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
