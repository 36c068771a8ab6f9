import math

import pytest
import torch

import samsa_geo.typing
from samsa_geo.ops import fps

needs_cluster = pytest.mark.skipif(not samsa_geo.typing.WITH_TORCH_CLUSTER,
                                   reason='torch_cluster is not installed')


def _examples(sizes, dim=3, dtype=torch.float64):
    pos = torch.randn(sum(sizes), dim, dtype=dtype)
    batch = torch.repeat_interleave(torch.arange(len(sizes)),
                                    torch.tensor(sizes))
    return pos, batch


def _check_farthest(pos, out):
    # Every sample maximises the distance to the samples before it.
    for i in range(1, out.numel()):
        dist = torch.cdist(pos, pos[out[:i]]).min(dim=1).values
        assert math.isclose(float(dist[out[i]]), float(dist.max()),
                            rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize('ratio', [0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize('dim', [3, 16])
def test_fps_farthest_property_and_counts(ratio, dim):
    sizes = [17, 5, 30, 1]
    pos, batch = _examples(sizes, dim)
    out = fps(pos, batch, ratio, random_start=False, backend='torch')
    counts = [math.ceil(ratio * n) for n in sizes]
    assert out.dtype == torch.long
    assert out.numel() == sum(counts)
    assert torch.equal(batch[out], torch.repeat_interleave(
        torch.arange(len(sizes)), torch.tensor(counts)))
    start = 0
    for b, (n, c) in enumerate(zip(sizes, counts)):
        sample = out[start:start + c]
        first = sum(sizes[:b])
        assert int(sample[0]) == first  # random_start=False
        assert sample.unique().numel() == c
        _check_farthest(pos[first:first + n], sample - first)
        start += c


def test_fps_deterministic_and_matches_single_example():
    sizes = [40, 25, 33]
    pos, batch = _examples(sizes, dtype=torch.float32)
    out = fps(pos, batch, 0.3, random_start=False, backend='torch')
    assert torch.equal(out, fps(pos, batch, 0.3, False, backend='torch'))
    # Batched sampling equals sampling every example on its own.
    parts, first = [], 0
    for n in sizes:
        parts.append(fps(pos[first:first + n], None, 0.3, False,
                         backend='torch') + first)
        first += n
    assert torch.equal(out, torch.cat(parts))


def test_fps_random_start():
    pos, batch = _examples([20, 20])
    torch.manual_seed(0)
    a = fps(pos, batch, 0.5, backend='torch')
    torch.manual_seed(0)
    b = fps(pos, batch, 0.5, backend='torch')
    assert torch.equal(a, b)
    assert torch.equal(batch[a], torch.tensor([0] * 10 + [1] * 10))
    starts = {int(fps(pos, batch, 0.5, backend='torch')[0]) for _ in range(30)}
    assert len(starts) > 1
    for b_ in range(2):
        _check_farthest(pos[20 * b_:20 * (b_ + 1)], a[10 * b_:10 * (b_ + 1)]
                        - 20 * b_)


def test_fps_ratio_tensor_and_empty_examples():
    pos, batch = _examples([10, 0, 8], dtype=torch.float32)
    ratio = torch.tensor([0.5, 0.5, 0.25])
    out = fps(pos, batch, ratio, False, backend='torch')
    assert torch.equal(batch[out], torch.tensor([0] * 5 + [2] * 2))
    out = fps(pos, batch, 0.5, False, batch_size=4, backend='torch')
    assert out.numel() == 9
    assert fps(pos[:0], None, 0.5, backend='torch').numel() == 0


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(ratio=0.0), ValueError, "'ratio' to lie in"),
    (dict(ratio=1.5), ValueError, "'ratio' to lie in"),
    (dict(ratio='half'), TypeError, "'ratio'"),
    (dict(ratio=torch.tensor([0.5, 0.5, 0.5])), ValueError, "'ratio'"),
    (dict(batch=torch.tensor([1, 0, 0, 0])), ValueError, 'sorted'),
    (dict(batch=torch.tensor([0, 0, 0])), ValueError, "'batch'"),
    (dict(batch=torch.zeros(4)), TypeError, "'batch'"),
    (dict(batch_size=0), ValueError, "'batch_size'"),
    (dict(backend='cuda'), ValueError, "'backend'"),
])
def test_fps_errors(kwargs, error, match):
    pos = torch.randn(4, 3)
    kwargs.setdefault('batch', None)
    with pytest.raises(error, match=match):
        fps(pos, **kwargs)


def test_fps_integer_input_raises():
    with pytest.raises(TypeError, match="'src'"):
        fps(torch.zeros(4, 3, dtype=torch.long))


@needs_cluster
@pytest.mark.parametrize('ratio', [0.1, 0.5, 1.0])
def test_fps_compiled_equals_fallback(ratio):
    sizes = [100, 37, 256, 1]
    pos, batch = _examples(sizes, dtype=torch.float32)
    expected = fps(pos, batch, ratio, False, backend='torch')
    out = fps(pos, batch, ratio, False, backend='compiled')
    assert torch.equal(out, expected)
    # Empty examples are handled on the compiled path too.
    pos, batch = _examples([10, 0, 8], dtype=torch.float32)
    assert torch.equal(fps(pos, batch, 0.5, False, backend='compiled'),
                       fps(pos, batch, 0.5, False, backend='torch'))
