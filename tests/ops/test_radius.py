import pytest
import torch

import samsa_geo.typing
from samsa_geo.ops import radius, radius_graph

needs_cluster = pytest.mark.skipif(not samsa_geo.typing.WITH_TORCH_CLUSTER,
                                   reason='torch_cluster is not installed')


def _batch(sizes):
    return torch.repeat_interleave(torch.arange(len(sizes)),
                                   torch.tensor(sizes))


def _reference(x, y, r, batch_x, batch_y, max_num, ignore_same=False):
    # Brute force: the first max_num same-example candidates within r.
    dist = torch.cdist(y.double(), x.double())
    rows, cols = [], []
    for i in range(y.size(0)):
        hit = (batch_x == batch_y[i]) & (dist[i] < r)
        if ignore_same and i < x.size(0):
            hit[i] = False
        cand = hit.nonzero().view(-1)[:max_num]
        rows += [i] * cand.numel()
        cols += cand.tolist()
    return torch.tensor([rows, cols], dtype=torch.long).view(2, -1)


@pytest.mark.parametrize('max_num', [3, 32])
@pytest.mark.parametrize('ignore_same', [False, True])
def test_radius_matches_brute_force(max_num, ignore_same):
    sizes_x, sizes_y = [30, 2, 0, 45], [30, 5, 4, 12]
    x, y = torch.rand(sum(sizes_x), 3), torch.rand(sum(sizes_y), 3)
    batch_x, batch_y = _batch(sizes_x), _batch(sizes_y)
    out = radius(x, y, 0.4, batch_x, batch_y, max_num,
                 ignore_same_index=ignore_same, backend='torch')
    assert torch.equal(out, _reference(x, y, 0.4, batch_x, batch_y, max_num,
                                       ignore_same))
    assert torch.equal(batch_x[out[1]], batch_y[out[0]])


@pytest.mark.parametrize('chunk_size', [1, 9, 100])
def test_radius_chunked_equals_unchunked(chunk_size):
    sizes = [50, 3, 70]
    x, batch = torch.rand(sum(sizes), 3), _batch(sizes)
    full = radius(x, x, 0.3, batch, batch, 10, backend='torch',
                  chunk_size=2**30)
    out = radius(x, x, 0.3, batch, batch, 10, backend='torch',
                 chunk_size=chunk_size)
    assert torch.equal(out, full)


@pytest.mark.parametrize('loop', [False, True])
def test_radius_graph(loop):
    sizes = [25, 15]
    x, batch = torch.rand(sum(sizes), 3), _batch(sizes)
    edge_index = radius_graph(x, 0.5, batch, loop=loop, backend='torch')
    src, dst = edge_index
    assert bool((src == dst).any()) == loop
    assert torch.equal(batch[src], batch[dst])
    assert bool(((x[src] - x[dst]).norm(dim=1) < 0.5).all())
    ref = _reference(x, x, 0.5, batch, batch, 32, not loop)
    assert torch.equal(edge_index, ref.flip(0))
    flipped = radius_graph(x, 0.5, batch, loop=loop, flow='target_to_source',
                           backend='torch')
    assert torch.equal(flipped, ref)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(r=-1.0), ValueError, "'r'"),
    (dict(r='1'), TypeError, "'r'"),
    (dict(max_num_neighbors=0), ValueError, "'max_num_neighbors'"),
    (dict(batch_x=torch.tensor([1, 1, 0, 0]),
          batch_y=torch.tensor([0, 0, 1])), ValueError, 'sorted'),
    (dict(y=torch.randn(3, 4)), ValueError, 'same number of features'),
])
def test_radius_errors(kwargs, error, match):
    args = dict(x=torch.randn(4, 3), y=torch.randn(3, 3), r=0.5)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        radius(**args)


@needs_cluster
def test_radius_compiled_equals_fallback():
    sizes_x, sizes_y = [200, 5, 0, 90], [40, 10, 3, 60]
    x, y = torch.rand(sum(sizes_x), 3), torch.rand(sum(sizes_y), 3)
    batch_x, batch_y = _batch(sizes_x), _batch(sizes_y)

    def edges(index):
        return set(map(tuple, index.t().tolist()))

    full = radius(x, y, 0.3, batch_x, batch_y, 1000, backend='torch')
    out = radius(x, y, 0.3, batch_x, batch_y, 1000, backend='compiled')
    assert edges(out) == edges(full)
    # Truncated: torch_cluster keeps an unspecified subset on CPU, so compare
    # the number of neighbours per query and that every edge is a true one.
    out = radius(x, y, 0.3, batch_x, batch_y, 4, backend='compiled')
    ref = radius(x, y, 0.3, batch_x, batch_y, 4, backend='torch')
    assert torch.equal(torch.bincount(out[0], minlength=y.size(0)),
                       torch.bincount(ref[0], minlength=y.size(0)))
    assert edges(out) <= edges(full)
    graph = radius_graph(x, 0.3, batch_x, max_num_neighbors=1000,
                         backend='compiled')
    assert edges(graph) == edges(radius_graph(x, 0.3, batch_x,
                                              max_num_neighbors=1000,
                                              backend='torch'))


@needs_cluster
@pytest.mark.parametrize('max_num', [2, 5])
def test_radius_graph_compiled_truncated(max_num):
    sizes = [120, 40]
    x, batch = torch.rand(sum(sizes), 3), _batch(sizes)
    out = radius_graph(x, 0.3, batch, max_num_neighbors=max_num,
                       backend='compiled')
    ref = radius_graph(x, 0.3, batch, max_num_neighbors=max_num,
                       backend='torch')
    full = radius_graph(x, 0.3, batch, max_num_neighbors=1000,
                        backend='torch')
    assert bool((out[0] != out[1]).all())
    assert torch.equal(torch.bincount(out[1], minlength=x.size(0)),
                       torch.bincount(ref[1], minlength=x.size(0)))
    assert set(map(tuple, out.t().tolist())) <= \
        set(map(tuple, full.t().tolist()))
