import math

import pytest
import torch

import samsa_geo.typing
from samsa_geo.ops import _fallback, knn, knn_graph
from samsa_geo.ops._fallback import blocks as distance_blocks
from samsa_geo.ops._fallback import knn_grid, knn_padded

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
    distances = distance_blocks.distances

    def recording_distances(y, x, cosine):
        out = distances(y, x, cosine)
        blocks.append(tuple(out.size()))
        return out

    monkeypatch.setattr(distance_blocks, 'distances', recording_distances)
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
    assert knn_padded.use_padding([100_000], [7])
    assert knn_padded.use_padding([1024] * 128, [1024] * 128)
    assert knn_padded.use_padding([900, 1100, 1024], [0, 5, 3])
    many = [10] * 5000
    assert not knn_padded.use_padding([100_000] + many, [1] * 5001)
    assert not knn_padded.use_padding([1] * 5001, [100_000] + many)


@pytest.mark.parametrize('sizes_x, sizes_y', [
    ([7] * 10, [5] * 10), ([40, 1, 65, 0, 13], [3, 9, 0, 4, 30]),
    ([500], [300]), ([0, 0, 4], [2, 3, 4]),
])
@pytest.mark.parametrize('chunk_size', [1, 30, 400, 10**6])
def test_example_blocks_cover_every_query_once(sizes_x, sizes_y, chunk_size):
    # Every query with candidates lies in exactly one block.
    seen = []
    for b0, b1, q0, q1, s in knn_padded.example_blocks(sizes_x, sizes_y,
                                                       chunk_size):
        assert s == max(sizes_x[b0:b1]) and q1 <= max(sizes_y[b0:b1])
        assert (b1 - b0) * (q1 - q0) * s <= chunk_size or (
            b1 - b0 == 1 and (q1 - q0 == 1 or q1 - q0 == chunk_size // s))
        seen += [(b, q) for b in range(b0, b1) for q in range(q0, q1)
                 if q < sizes_y[b] and sizes_x[b] > 0]
    expected = [(b, q) for b in range(len(sizes_x)) if sizes_x[b] > 0
                for q in range(sizes_y[b])]
    assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))


# Exact grid path (large Euclidean examples; forced with grid=True here).

def _stable_reference(x, y, k, sizes_x, sizes_y):
    # Float32 distances of the fallback, equal ones ordered by index.
    rows, cols, x0, y0 = [], [], 0, 0
    for nx, ny in zip(sizes_x, sizes_y):
        if nx > 0 and ny > 0:
            dist = distance_blocks.distances(y[y0:y0 + ny].t(),
                                             x[x0:x0 + nx].t(), False)
            order = dist.argsort(dim=1, stable=True)[:, :k]  # [ny, k']
            rows.append(torch.arange(y0, y0 + ny).repeat_interleave(
                order.size(1)))
            cols.append(order.reshape(-1) + x0)
        x0, y0 = x0 + nx, y0 + ny
    return torch.stack([torch.cat(rows), torch.cat(cols)])


def _assert_same_up_to_ties(out, expected, x, y):
    # Same queries and neighbour distances; indices equal except among
    # candidates at exactly equal distance (which implementations order
    # differently).
    assert torch.equal(out[0], expected[0])
    dist = distance_blocks.distances(y[out[0]].t().unsqueeze(-1),
                                     x[out[1]].t().unsqueeze(-1), False)
    ref = distance_blocks.distances(y[expected[0]].t().unsqueeze(-1),
                                    x[expected[1]].t().unsqueeze(-1), False)
    assert torch.equal(dist, ref)
    dist = dist.view(-1)
    tied = torch.zeros_like(dist, dtype=torch.bool)
    same = (dist[1:] == dist[:-1]) & (out[0][1:] == out[0][:-1])
    tied[1:] |= same
    tied[:-1] |= same
    assert torch.equal(out[1][~tied], expected[1][~tied])


def _grid_and_brute(x, y, k, sizes_x, sizes_y, chunk_size=None, **kwargs):
    args = (x, y, k, _ptr(sizes_x), _batch(sizes_y))
    grid = _fallback.knn(*args, chunk_size=chunk_size, grid=True, **kwargs)
    brute = _fallback.knn(*args, chunk_size=chunk_size, grid=False)
    assert torch.equal(grid, _stable_reference(x, y, k, sizes_x, sizes_y))
    return grid, brute


def _blobs(gen, num_features=3):
    # Dense blobs of very different scales plus sparse outliers.
    parts = [torch.randn(700, num_features, generator=gen) * scale
             + torch.rand(1, num_features, generator=gen) * 10
             for scale in (1e-3, 1e-2, 0.1)]
    parts.append(torch.rand(40, num_features, generator=gen) * 10)
    return torch.cat(parts)


GRID_CLOUDS = {
    'uniform': lambda g: torch.rand(2000, 3, generator=g),
    'clustered': _blobs,
    'planar': lambda g: torch.rand(2000, 3, generator=g) * torch.tensor(
        [1.0, 2.0, 0.0]) + 0.5,
    'collinear': lambda g: torch.rand(1500, 1, generator=g) * torch.tensor(
        [[1.0, -2.0, 0.5]]) + torch.tensor([3.0, 1.0, -1.0]),
    '2d': lambda g: torch.rand(2500, 2, generator=g),
    '2d_clustered': lambda g: _blobs(g, 2),
    '1d': lambda g: torch.randn(1000, 1, generator=g),
    'offset': lambda g: torch.rand(2000, 3, generator=g) + 1000.0,
}


@pytest.mark.parametrize('cloud', list(GRID_CLOUDS))
@pytest.mark.parametrize('k', [1, 16])
def test_knn_grid_equals_brute_force(cloud, k):
    gen = torch.Generator().manual_seed(12)
    x = GRID_CLOUDS[cloud](gen)
    n = x.size(0)
    grid, brute = _grid_and_brute(x, x, k, [n], [n])
    assert torch.equal(grid, brute)
    assert torch.equal(grid[1].view(n, k)[:, 0], torch.arange(n))
    if samsa_geo.typing.WITH_TORCH_CLUSTER:
        import torch_cluster
        _assert_same_up_to_ties(grid, torch_cluster.knn(x, x, k), x, x)


def test_knn_grid_clustered_needs_larger_searches(monkeypatch):
    # Outliers far from the dense blobs are settled on coarser grids only.
    levels = []
    level = knn_grid.KnnGrid.level

    def recording_level(self, h, cells):
        levels.append(max(cells))
        return level(self, h, cells)

    monkeypatch.setattr(knn_grid.KnnGrid, 'level', recording_level)
    x = _blobs(torch.Generator().manual_seed(3))
    grid, brute = _grid_and_brute(x, x, 16, [x.size(0)], [x.size(0)])
    assert torch.equal(grid, brute)
    assert len(levels) > 1 and levels == sorted(levels, reverse=True)


@pytest.mark.parametrize('k', [3, 16])
def test_knn_grid_queries_differ_from_candidates(k):
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2000, 3, generator=gen)
    # Queries inside and far outside the candidates' bounding box.
    y = torch.rand(700, 3, generator=gen) * 4 - 1.5
    grid, brute = _grid_and_brute(x, y, k, [2000], [700])
    assert torch.equal(grid, brute)
    if samsa_geo.typing.WITH_TORCH_CLUSTER:
        import torch_cluster
        _assert_same_up_to_ties(grid, torch_cluster.knn(x, y, k), x, y)


def test_knn_grid_duplicated_points():
    # Exact duplicates tie: the grid orders equal distances by index; the
    # brute-force paths keep topk's order, with the same distances.
    gen = torch.Generator().manual_seed(7)
    base = torch.rand(400, 3, generator=gen)
    x = torch.cat([base, base, base[:100], torch.zeros(50, 3)])
    y = torch.cat([base[:200], torch.zeros(5, 3)])
    n, m, k = x.size(0), y.size(0), 7
    grid, brute = _grid_and_brute(x, y, k, [n], [m])
    assert torch.equal(grid[0], brute[0])
    dist = distance_blocks.distances(y.t(), x.t(), False)  # [M, N]
    d_grid = dist.gather(1, grid[1].view(m, k))
    d_brute = dist.gather(1, brute[1].view(m, k))
    assert torch.equal(d_grid, d_brute)
    # Points strictly closer than the k-th are found by both.
    for i in range(m):
        inner = dist[i] < d_grid[i, -1]
        assert set(grid[1].view(m, k)[i][inner[grid[1].view(m, k)[i]]]
                   .tolist()) == set(inner.nonzero().view(-1).tolist())
        assert set(brute[1].view(m, k)[i][
            inner[brute[1].view(m, k)[i]]].tolist()) == \
            set(inner.nonzero().view(-1).tolist())
    # Equal distances come in ascending index order.
    nbr = grid[1].view(m, k)
    tie = d_grid[:, 1:] == d_grid[:, :-1]
    assert bool((nbr[:, 1:] > nbr[:, :-1])[tie].all())


def test_knn_grid_k_larger_than_neighbourhoods():
    gen = torch.Generator().manual_seed(9)
    x = _blobs(gen)[::7]  # ~300 points, sparse blobs
    y = torch.rand(50, 3, generator=gen) * 10
    n = x.size(0)
    for k in [40, n, n + 5]:
        grid, brute = _grid_and_brute(x, y, k, [n], [50])
        _assert_same_up_to_ties(grid, brute, x, y)
        assert grid.size(1) == 50 * min(k, n)
    tiny = torch.rand(5, 2, generator=gen)
    grid, brute = _grid_and_brute(tiny, tiny, 16, [5], [5])
    assert torch.equal(grid, brute)


@pytest.mark.parametrize('chunk_size', [1, 500, 20_000, None])
def test_knn_grid_mixed_batch(monkeypatch, chunk_size):
    # One large example (grid, by the lowered threshold) among small and
    # empty ones (brute force); distance blocks stay within chunk_size.
    monkeypatch.setattr(knn_grid, 'GRID_MIN_POINTS', 1000)
    monkeypatch.setattr(knn_grid, 'GRID_MIN_QUERIES', 100)
    gen = torch.Generator().manual_seed(11)
    sizes_x, sizes_y = [30, 1500, 0, 7, 25], [10, 1200, 4, 9, 0]
    x = torch.rand(sum(sizes_x), 3, generator=gen)
    y = torch.rand(sum(sizes_y), 3, generator=gen)
    assert knn_grid.grid_examples(sizes_x, sizes_y, x, False, None) == [1]
    assert knn_grid.grid_examples(sizes_x, sizes_y, x, True, None) == []
    assert knn_grid.grid_examples(sizes_x, sizes_y, x, False, False) == []
    assert knn_grid.grid_examples(sizes_x, sizes_y, x, False, True) == [
        0, 1, 3]
    blocks, examples = [], []
    distances, search = distance_blocks.distances, knn_grid.knn_grid

    def recording_distances(y, x, cosine):
        out = distances(y, x, cosine)
        blocks.append(tuple(out.size()))
        return out

    def recording_grid(x, y, *args):
        examples.append((x.size(0), y.size(0)))
        return search(x, y, *args)

    monkeypatch.setattr(distance_blocks, 'distances', recording_distances)
    monkeypatch.setattr(knn_grid, 'knn_grid', recording_grid)
    args = (x, y, 6, _ptr(sizes_x), _batch(sizes_y))
    auto = _fallback.knn(*args, chunk_size=chunk_size)
    monkeypatch.undo()
    brute = _fallback.knn(*args, chunk_size=chunk_size, grid=False)
    assert torch.equal(auto, brute)
    assert torch.equal(auto, _reference(x, y, 6, _batch(sizes_x),
                                        _batch(sizes_y)))
    assert examples == [(1500, 1200)]  # only the large example
    limit = chunk_size or distance_blocks.DEFAULT_CHUNK_SIZE
    assert all(math.prod(b) <= limit or b[-2] == 1 for b in blocks)
    if samsa_geo.typing.WITH_TORCH_CLUSTER:
        import torch_cluster
        _assert_same_up_to_ties(auto, torch_cluster.knn(
            x, y, 6, _batch(sizes_x), _batch(sizes_y)), x, y)


def test_knn_grid_not_applicable():
    # All candidates at one location, non-finite points, cosine and many
    # features fall back to brute force.
    x = torch.ones(300, 3)
    y = torch.rand(20, 3)
    out = _fallback.knn(x, y, 4, _ptr([300]), _batch([20]), grid=True)
    assert torch.equal(out, _fallback.knn(x, y, 4, _ptr([300]), _batch([20]),
                                          grid=False))
    assert knn_grid.knn_grid(x, y, 4, 2**22) is None
    x = torch.rand(300, 3)
    x[5, 1] = float('inf')
    assert knn_grid.knn_grid(x, y, 4, 2**22) is None
    assert knn_grid.grid_examples([300], [20], x.double(), False,
                                  True) == [0]
    assert knn_grid.grid_examples([300], [20], x.half(), False, True) == []
    assert knn_grid.grid_examples([300], [20], torch.rand(300, 4), False,
                                  True) == []


def test_knn_grid_double_precision():
    gen = torch.Generator().manual_seed(13)
    x = torch.rand(2000, 3, generator=gen, dtype=torch.float64)
    grid, brute = _grid_and_brute(x, x, 10, [2000], [2000])
    assert torch.equal(grid, brute)
