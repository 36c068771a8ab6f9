import pytest
import torch

from samsa_geo.ops import knn_graph, radius_graph, value_checks

GRAPH_OPS = [
    lambda x, batch, **kw: knn_graph(x, 2, batch, backend='torch', **kw),
    lambda x, batch, **kw: radius_graph(x, 0.5, batch, backend='torch', **kw),
]


@pytest.mark.parametrize('graph', GRAPH_OPS, ids=['knn_graph',
                                                  'radius_graph'])
@pytest.mark.parametrize('batch, kwargs, error, match', [
    (torch.tensor([0, 0, 1]), {}, ValueError, r"'batch' to have shape \[4\]"),
    (torch.tensor([0., 0., 1., 1.]), {}, TypeError,
     "'batch' to be an integer"),
    (torch.tensor([1, 1, 0, 0]), {}, ValueError, "'batch' to be sorted"),
    (torch.tensor([-1, 0, 0, 0]), {}, ValueError, "'batch' to be sorted"),
    (torch.tensor([1, 1, 0, 0]), dict(batch_size=2), ValueError,
     "'batch' to be sorted"),
    (None, dict(batch_size=2), ValueError, "Expected 'batch' when"),
])
def test_graph_errors_name_batch(graph, batch, kwargs, error, match):
    # These used to name 'batch_x', an argument the caller never passed.
    x = torch.randn(4, 3)
    with pytest.raises(error, match=match) as info:
        graph(x, batch, **kwargs)
    assert 'batch_x' not in str(info.value)
    assert 'batch_y' not in str(info.value)


@pytest.mark.parametrize('graph', GRAPH_OPS, ids=['knn_graph',
                                                  'radius_graph'])
@pytest.mark.parametrize('value', ['no', 0, None])
def test_graph_loop_must_be_a_bool(graph, value):
    # A string is true to Python: loop='no' kept the self-loops.
    x = torch.randn(4, 3)
    with pytest.raises(TypeError) as info:
        graph(x, None, loop=value)
    assert str(info.value) == f"Expected 'loop' to be a bool (got {value!r})"


@pytest.mark.parametrize('value', ['yes', 1, None])
def test_knn_graph_cosine_must_be_a_bool(value):
    with pytest.raises(TypeError) as info:
        knn_graph(torch.randn(4, 3), 2, cosine=value)
    assert str(info.value) == (f"Expected 'cosine' to be a bool "
                               f"(got {value!r})")


@pytest.mark.parametrize('graph', GRAPH_OPS, ids=['knn_graph',
                                                  'radius_graph'])
def test_graph_other_errors_unchanged(graph):
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="'x' to hold finite values"):
        graph(torch.full((4, 3), float('nan')), None)
    with pytest.raises(TypeError, match="'x' to be a floating-point"):
        graph(x.long(), None)
    with pytest.raises(ValueError, match="'batch_size' to be at least"):
        graph(x, torch.tensor([0, 0, 1, 2]), batch_size=2)


@pytest.mark.parametrize('graph', GRAPH_OPS, ids=['knn_graph',
                                                  'radius_graph'])
def test_graph_valid_input_unchanged(graph):
    x = torch.randn(10, 3)
    batch = torch.tensor([0] * 4 + [1] * 6)
    ref = graph(x, batch)
    assert torch.equal(graph(x, batch.int()), ref)
    assert torch.equal(graph(x, batch, batch_size=2), ref)
    with value_checks(False):
        assert torch.equal(graph(x, batch, batch_size=2), ref)
    # 1-D points are one feature per point.
    assert torch.equal(graph(x[:, 0], batch), graph(x[:, :1], batch))
