import pytest
import torch

import samsa_geo.typing
from samsa_geo.ops import scatter, segment_softmax

needs_scatter = pytest.mark.skipif(not samsa_geo.typing.WITH_TORCH_SCATTER,
                                   reason='torch_scatter is not installed')

REDUCE = {
    'sum': lambda t: t.sum(0),
    'mean': lambda t: t.mean(0),
    'max': lambda t: t.max(0).values,
    'min': lambda t: t.min(0).values,
}


def _reference(src, index, dim_size, reduce):
    # Loop over segments along dim 0; empty segments are 0.
    out = src.new_zeros((dim_size, ) + src.shape[1:])
    for i in range(dim_size):
        part = src[index == i]
        if part.numel() > 0:
            out[i] = REDUCE[reduce](part)
    return out


@pytest.mark.parametrize('reduce', ['sum', 'mean', 'max', 'min'])
@pytest.mark.parametrize('dim', [0, 1, -1])
def test_scatter_matches_loop(reduce, dim):
    src = torch.randn(10, 4, 3).movedim(0, dim)  # size 10 along dim
    index = torch.tensor([0, 2, 2, 5, 0, 0, 2, 6, 6, 0])  # 1, 3, 4 empty
    out = scatter(src, index, dim=dim, dim_size=8, reduce=reduce,
                  backend='torch')
    out = out.movedim(dim, 0)  # [8, 4, 3]
    assert out.size() == (8, 4, 3)
    expected = _reference(src.movedim(dim, 0), index, 8, reduce)
    assert torch.allclose(out, expected, atol=1e-6)
    assert bool((out[[1, 3, 4, 7]] == 0).all())


def test_scatter_full_index_and_defaults():
    src = torch.randn(6, 2)
    index = torch.tensor([[0, 1], [1, 1], [0, 0], [2, 1], [2, 2], [0, 1]])
    out = scatter(src, index, reduce='max', backend='torch')
    assert out.size() == (3, 2)
    for c in range(2):
        assert torch.equal(out[:, c],
                           _reference(src[:, c], index[:, c], 3, 'max'))
    assert scatter(src, torch.tensor([0, 0, 1, 1, 3, 3]),
                   backend='torch').size() == (4, 2)


def test_scatter_integer_mean_rounds_down():
    src = torch.tensor([1, 2, 4, 7])
    out = scatter(src, torch.tensor([0, 0, 1, 1]), reduce='mean',
                  backend='torch')
    assert torch.equal(out, torch.tensor([1, 5]))


def test_scatter_max_gradient():
    src = torch.randn(8, 3, requires_grad=True)
    index = torch.tensor([0, 0, 1, 1, 1, 3, 3, 3])
    scatter(src, index, reduce='max', backend='torch').sum().backward()
    # One unit of gradient per non-empty segment and channel.
    assert torch.allclose(src.grad.sum(0), torch.full((3, ), 3.0))


def test_segment_softmax():
    src = torch.randn(7, 2, requires_grad=True)
    index = torch.tensor([0, 0, 0, 2, 2, 3, 3])
    out = segment_softmax(src, index, backend='torch')
    for i in (0, 2, 3):
        assert torch.allclose(out[index == i],
                              torch.softmax(src[index == i], dim=0))
    assert torch.allclose(scatter(out, index, backend='torch'),
                          torch.tensor([[1.0, 1.0], [0, 0], [1, 1], [1, 1]]))
    out.pow(2).sum().backward()
    assert torch.isfinite(src.grad).all()
    # Shift invariance within a segment.
    shifted = src.detach() + 100 * (index == 2).float().unsqueeze(1)
    assert torch.allclose(segment_softmax(shifted, index, backend='torch'),
                          out.detach(), atol=1e-6)


@pytest.mark.parametrize('kwargs, error, match', [
    (dict(reduce='prod'), ValueError, "'reduce'"),
    (dict(index=torch.tensor([0, 1])), ValueError, "'index'"),
    (dict(index=torch.tensor([0., 1., 1.])), TypeError, "'index'"),
    (dict(index=torch.tensor([0, -1, 1])), IndexError, "'index'"),
    (dict(dim=2), IndexError, "'dim'"),
    (dict(dim_size=1), IndexError, "'dim_size'"),
])
def test_scatter_errors(kwargs, error, match):
    args = dict(src=torch.randn(3, 2), index=torch.tensor([0, 1, 1]))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        scatter(**args)


@needs_scatter
@pytest.mark.parametrize('reduce', ['sum', 'mean', 'max', 'min'])
def test_scatter_compiled_equals_fallback(reduce):
    src = torch.randn(50, 4)
    index = torch.randint(0, 30, (50, ))
    out = scatter(src, index, 0, 32, reduce, backend='compiled')
    expected = scatter(src, index, 0, 32, reduce, backend='torch')
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(segment_softmax(src, index, backend='compiled'),
                          segment_softmax(src, index, backend='torch'))
