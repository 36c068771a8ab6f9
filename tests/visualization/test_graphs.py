import numpy as np
import pytest
import torch
from PIL import Image

from samsa_geo.visualization import (
    plot_sampled_graph,
    sampling_counts,
    spring_layout,
)


def _ring(n: int) -> torch.Tensor:
    src = torch.arange(n)
    return torch.stack([src, (src + 1) % n])


def test_sampling_counts():
    a = torch.tensor([[[0, 1, 2, -1], [2, 3, -2, -1]]])  # [1, 2, 4]
    b = torch.tensor([[[2, 9, 4, 4]]])  # 9: an edge token, 4 repeated
    counts = sampling_counts({'a': a, 'b': b}, num_nodes=6)
    assert counts.tolist() == [1, 1, 3, 1, 1, 0]
    assert sampling_counts(a[0], 6).tolist() == [1, 1, 2, 1, 0, 0]
    with pytest.raises(ValueError, match="'indices'"):
        sampling_counts(a.float(), 6)


@pytest.mark.parametrize('dtype', [np.int64, np.int32, np.int8, np.uint8])
def test_sampling_counts_random(dtype):
    # Per node: the number of (layer, head) pairs whose samples, over all
    # graphs, hold it; negative tokens and tokens >= num_nodes are skipped.
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(0, 20))
        layers = {}
        for name in 'ab'[:int(rng.integers(1, 3))]:
            shape = (int(rng.integers(1, 4)), int(rng.integers(1, 4)),
                     int(rng.integers(0, 7)))
            low = 0 if np.issubdtype(dtype, np.unsignedinteger) else -4
            layers[name] = rng.integers(low, n + 5, shape).astype(dtype)
        expected = np.zeros(n, dtype=np.int64)
        for idx in layers.values():
            for h in range(idx.shape[1]):
                sel = idx[:, h].astype(np.int64).reshape(-1)
                expected[np.unique(sel[(sel >= 0) & (sel < n)])] += 1
        counts = sampling_counts(layers, n)
        assert counts.dtype == np.int64
        np.testing.assert_array_equal(counts, expected)


def test_spring_layout():
    ei = _ring(12)
    xy = spring_layout(ei, 12)
    assert xy.shape == (12, 2) and np.isfinite(xy).all()
    assert np.abs(xy).max() == pytest.approx(1.0)
    assert np.allclose(xy, spring_layout(ei, 12))  # deterministic
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    neighbours = dist[ei[0], ei[1]].mean()
    assert neighbours < 0.6 * dist[np.triu_indices(12, 1)].mean()
    with pytest.raises(IndexError, match="'edge_index'"):
        spring_layout(ei, 5)
    with pytest.raises(ValueError, match=r"\[2, E\]"):
        spring_layout(ei.t(), 12)


@pytest.mark.parametrize('dim', [None, 2, 3])
def test_plot_sampled_graph(tmp_path, dim):
    n = 20
    ei = _ring(n)
    idx = torch.tensor([[[0, 1, 2, 3], [0, 1, 5, 6]]])  # 0 and 1: twice
    pos = None if dim is None else torch.randn(n, dim)
    out = plot_sampled_graph(ei, idx, tmp_path / 'g.png', pos=pos,
                             size=(300, 200), node_size=80)
    assert out['layout'] == {None: 'spring', 2: 'pos', 3: '3d'}[dim]
    img = np.asarray(Image.open(out['png']).convert('RGB')).astype(int)
    assert img.shape == (200, 300, 3)
    assert img.std() > 5
    # Nodes sampled twice take the top of the colour map (viridis yellow).
    from matplotlib import colormaps
    top = np.round(np.asarray(colormaps['viridis'](1.0)[:3]) * 255)
    assert (np.abs(img - top).max(-1) <= 10).sum() > 20
    with pytest.raises(ValueError, match="'pos'"):
        plot_sampled_graph(ei, idx, tmp_path / 'g.png', num_nodes=n,
                           pos=torch.randn(n + 1, 3))


def test_spring_layout_tiny_graphs():
    empty = torch.zeros(2, 0, dtype=torch.long)
    for n in (0, 1):
        xy = spring_layout(empty, n)
        assert xy.shape == (n, 2) and xy.dtype == np.float64
        assert (xy == 0).all()


@pytest.mark.parametrize('value', [True, False])
def test_counts_must_not_be_bools(tmp_path, value):
    # True was taken for one node or one iteration (bool is an int).
    empty = torch.zeros(2, 0, dtype=torch.long)
    idx = torch.zeros(1, 1, 1, dtype=torch.long)
    for call, name in [
        (lambda: sampling_counts(idx, value), 'num_nodes'),
        (lambda: spring_layout(empty, value), 'num_nodes'),
        (lambda: spring_layout(_ring(4), 4, iterations=value), 'iterations'),
        (lambda: plot_sampled_graph(empty, idx, tmp_path / 'g.png',
                                    num_nodes=value), 'num_nodes'),
    ]:
        with pytest.raises(TypeError) as info:
            call()
        assert str(info.value) == f"Expected '{name}' to be an int (got bool)"
    # NumPy ints are taken, as before.
    assert spring_layout(_ring(4), np.int64(4),
                         iterations=np.int64(5)).shape == (4, 2)
    assert sampling_counts(idx, np.int64(2)).tolist() == [1, 0]
