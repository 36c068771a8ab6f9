"""Argument errors of the geometry ops that name the argument at fault."""
import pytest
import torch

from samsa_geo.ops import (
    fps,
    gine_aggregate,
    knn,
    radius,
    scatter,
    segment_softmax,
)
from samsa_geo.ops.validation import check_sorted_batch


@pytest.mark.parametrize('dtype', [torch.int16, torch.uint8, torch.int8])
def test_gine_aggregate_edge_index_dtype(dtype):
    x, edge_attr = torch.randn(4, 8), torch.randn(3, 8)
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 3]])
    with pytest.raises(TypeError, match="'edge_index' to be an integer "
                       "tensor of dtype torch.int64 or torch.int32"):
        gine_aggregate(x, edge_index.to(dtype), edge_attr)
    ref = gine_aggregate(x, edge_index, edge_attr)
    out = gine_aggregate(x, edge_index.int(), edge_attr)
    assert torch.equal(out, ref)


@pytest.mark.parametrize('size, err, match', [
    (3.5, TypeError, "'{}' to be an int or None"),
    (3.0, TypeError, "'{}' to be an int or None"),
    (True, TypeError, "'{}' to be an int or None"),
    (-1, ValueError, "'{}' to be non-negative"),
    (2, IndexError, "'{}' to exceed the largest index 2"),
])
def test_scatter_and_segment_softmax_sizes(size, err, match):
    src, index = torch.randn(5, 2), torch.tensor([0, 0, 1, 2, 2])
    with pytest.raises(err, match=match.format('dim_size')):
        scatter(src, index, 0, dim_size=size)
    with pytest.raises(err, match=match.format('num_segments')):
        segment_softmax(src, index, num_segments=size)
    assert scatter(src, index, 0, dim_size=4).shape == (4, 2)
    assert torch.equal(segment_softmax(src, index, num_segments=3),
                       segment_softmax(src, index))


@pytest.mark.parametrize('batch, err, match', [
    (torch.zeros(2, 3, dtype=torch.long), ValueError,
     r"'batch' to be a vector of shape \[N\] \(got \[2, 3\]\)"),
    (torch.tensor([0., 1.]), TypeError, "'batch' to be an integer tensor"),
    (torch.tensor([False, True]), TypeError, "'batch' to be an integer"),
    ([0, 1], TypeError, "'batch' to be a Tensor"),
])
def test_check_sorted_batch_type_and_shape(batch, err, match):
    with pytest.raises(err, match=match):
        check_sorted_batch(batch)
    check_sorted_batch(torch.tensor([0, 1], dtype=torch.int32))


@pytest.mark.parametrize('r', [float('nan'), float('inf'), -1.0])
def test_radius_needs_a_finite_non_negative_r(r):
    pos = torch.randn(10, 3)
    with pytest.raises(ValueError, match="'r' to be a finite non-negative"):
        radius(pos, pos, r)
    assert radius(pos, pos, 0.0).shape == (2, 0)


@pytest.mark.parametrize('op, name', [
    (lambda pos, v: knn(pos, pos, 2, cosine=v), 'cosine'),
    (lambda pos, v: radius(pos, pos, 0.5, ignore_same_index=v),
     'ignore_same_index'),
    (lambda pos, v: fps(pos, random_start=v), 'random_start'),
])
@pytest.mark.parametrize('value', ['no', 1, None])
def test_flags_must_be_bools(op, name, value):
    # A string is true to Python: 'no' ran the other variant.
    pos = torch.randn(10, 3)
    with pytest.raises(TypeError) as info:
        op(pos, value)
    assert str(info.value) == f"Expected '{name}' to be a bool (got {value!r})"
    assert op(pos, False).dim() in (1, 2)
