import pytest
import torch

from samsa_geo.ops import (
    check_finite,
    check_sorted_batch,
    fps,
    knn,
    knn_graph,
    radius,
    radius_graph,
    value_checks,
)
from samsa_geo.ops._utils import read_values

BAD = [float('nan'), float('inf'), -float('inf')]


@pytest.mark.parametrize('bad', BAD)
@pytest.mark.parametrize('backend', ['auto', 'torch'])
def test_non_finite_points_raise_naming_the_argument(bad, backend):
    pos = torch.rand(20, 3)
    pos[7, 1] = bad
    good = torch.rand(20, 3)
    batch = torch.tensor([0] * 10 + [1] * 10)
    with pytest.raises(ValueError, match="'src' to hold finite values"):
        fps(pos, batch, 0.5, backend=backend)
    with pytest.raises(ValueError, match="'x' to hold finite values"):
        knn(pos, good, 3, batch, batch, backend=backend)
    with pytest.raises(ValueError, match="'y' to hold finite values"):
        knn(good, pos, 3, batch, batch, backend=backend)
    with pytest.raises(ValueError, match="'x' to hold finite values"):
        knn_graph(pos, 3, batch, backend=backend)
    with pytest.raises(ValueError, match="'y' to hold finite values"):
        radius(good, pos, 0.5, batch, batch, backend=backend)
    with pytest.raises(ValueError, match="'x' to hold finite values"):
        radius_graph(pos, 0.5, batch, backend=backend)


def test_checked_results_equal_unchecked():
    pos = torch.rand(60, 3)
    batch = torch.tensor([0] * 25 + [1] * 35)
    checked = knn_graph(pos, 4, batch, backend='torch')
    with value_checks(False):
        assert torch.equal(knn_graph(pos, 4, batch, batch_size=2,
                                     backend='torch'), checked)
        assert torch.equal(fps(pos, batch, 0.3, False, batch_size=2,
                               backend='torch'),
                           fps(pos, batch, 0.3, False, backend='torch'))


class _Reads:
    """Counts device-to-host reads of tensor values."""
    NAMES = ('tolist', 'item', '__bool__', '__int__', '__float__')

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            fn = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._wrap(fn))

    def _wrap(self, fn):
        def wrapper(t, *args, **kwargs):
            self.count += 1
            return fn(t, *args, **kwargs)
        return wrapper


def test_value_checks_take_one_read(monkeypatch):
    x, y = torch.rand(30, 3), torch.rand(12, 3)
    batch_x = torch.tensor([0] * 10 + [2] * 20)
    batch_y = torch.tensor([0] * 4 + [1] * 3 + [2] * 5)
    args = ([('x', x), ('y', y)], [('batch_x', batch_x),
                                   ('batch_y', batch_y)])
    reads = _Reads(monkeypatch)
    assert read_values(*args, None) == 3
    assert reads.count == 1
    assert read_values(*args, 5) == 5
    assert reads.count == 2
    with value_checks(False):
        assert read_values(*args, 4) == 4  # nothing to read
        assert reads.count == 2
        assert read_values(*args, None) == 3  # the example count only
        assert reads.count == 3
    monkeypatch.undo()
    with pytest.raises(ValueError, match="'batch_size' to be at least"):
        read_values(*args, 2)


@pytest.mark.parametrize('batch, ok', [
    (torch.tensor([0, 0, 1, 3, 3]), True),
    (torch.tensor([2, 2]), True),
    (torch.tensor([], dtype=torch.long), True),
    (None, True),
    (torch.tensor([0, 1, 0]), False),
    (torch.tensor([-1, 0, 0]), False),
])
def test_check_sorted_batch(batch, ok):
    if ok:
        check_sorted_batch(batch)
    else:
        with pytest.raises(ValueError, match="'index' to be sorted"):
            check_sorted_batch(batch, 'index')


def test_check_finite():
    check_finite(torch.zeros(0, 3), 'pos')
    check_finite(torch.ones(4, 3), 'pos')
    with pytest.raises(ValueError, match="'pos' to hold finite"):
        check_finite(torch.tensor([1.0, float('nan')]), 'pos')


@pytest.mark.parametrize('value,error', [
    (True, None), (False, None), ('no', "'loop' to be a bool \\(got 'no'\\)"),
    (1, "'loop' to be a bool \\(got 1\\)"),
    (None, "'loop' to be a bool \\(got None\\)")])
def test_check_bool(value, error):
    from samsa_geo.ops.validation import check_bool
    if error is None:
        assert check_bool('loop', value) is value
    else:
        with pytest.raises(TypeError, match=error):
            check_bool('loop', value)


def test_check_kwargs():
    from samsa_geo.ops.validation import check_kwargs
    kwargs = {'eps': 1e-3}
    assert check_kwargs('norm_kwargs', kwargs) == kwargs
    assert check_kwargs('norm_kwargs', kwargs) is not kwargs
    assert check_kwargs('norm_kwargs', None) == {}
    with pytest.raises(TypeError) as info:
        check_kwargs('norm_kwargs', [1])
    assert str(info.value) == ("Expected 'norm_kwargs' to be a dict or None "
                               "(got list)")


def test_check_bool_optional():
    from samsa_geo.ops.validation import check_bool
    for value in (None, True, False):
        assert check_bool('padded', value, optional=True) is value
    with pytest.raises(TypeError) as info:
        check_bool('padded', 'no', optional=True)
    assert str(info.value) == "Expected 'padded' to be a bool or None " \
        "(got 'no')"


@pytest.mark.parametrize('dtype', [torch.float32, torch.bool])
def test_check_edge_index_refuses_other_dtypes(dtype):
    from samsa_geo.ops.validation import check_edge_index
    for ok in (torch.long, torch.int32):
        edge_index = torch.tensor([[0, 1], [1, 0]], dtype=ok)
        assert check_edge_index(edge_index) is edge_index
    with pytest.raises(TypeError) as exc:
        check_edge_index(torch.zeros(2, 3, dtype=dtype), 'data.edge_index')
    assert str(exc.value) == (f"Expected 'data.edge_index' to be an integer "
                              f"tensor (got {dtype})")
