import pytest
import torch

import samsa_geo.typing
from samsa_geo.ops import (
    _fallback,
    _triton,
    default_backend,
    fps,
    knn,
    radius,
    scatter,
    set_default_backend,
    set_value_checks,
    use_backend,
    value_checks,
    value_checks_enabled,
)


def test_value_checks_switch_and_context_manager():
    pos = torch.rand(20, 3)
    pos[3] = float('nan')
    assert value_checks_enabled()
    with value_checks(False):
        assert not value_checks_enabled()
        # Unchecked: the call runs (its result for NaN input is unspecified).
        assert knn(pos, pos, 2, backend='torch').size() == (2, 40)
        assert fps(pos, None, 0.5, False, backend='torch').numel() == 10
        with value_checks(True):
            with pytest.raises(ValueError, match="'x'"):
                knn(pos, pos, 2, backend='torch')
        assert not value_checks_enabled()
    assert value_checks_enabled()
    set_value_checks(False)
    try:
        assert not value_checks_enabled()
        # An unsorted batch is not read either.
        out = knn(pos, pos, 2, torch.tensor([1] * 10 + [0] * 10),
                  torch.tensor([1] * 10 + [0] * 10), batch_size=2,
                  backend='torch')
        assert out.size(0) == 2
    finally:
        set_value_checks(True)
    with pytest.raises(TypeError, match="'enabled'"):
        set_value_checks(1)
    with pytest.raises(ValueError, match="'x'"):  # restored after raising
        with value_checks(False):
            raise ValueError("'x' raised inside")
    assert value_checks_enabled()


def test_use_backend_reaches_calls_with_auto(spy):
    x = torch.rand(30, 3)
    calls = spy(_fallback, 'knn', keep_args=False)
    assert default_backend() == 'auto'
    with use_backend('torch'):
        assert default_backend() == 'torch'
        knn(x, x, 3)
    assert len(calls) == 1 and default_backend() == 'auto'
    if not samsa_geo.typing.WITH_TORCH_CLUSTER:
        with use_backend('compiled'):
            with pytest.raises(ImportError, match='torch_cluster'):
                knn(x, x, 3)
            with pytest.raises(ImportError, match='torch_cluster'):
                fps(x)
            # An explicit backend wins over the default.
            assert knn(x, x, 3, backend='torch').size() == (2, 90)
    with use_backend('triton'):
        # Ops without a Triton kernel stay on the automatic choice.
        assert radius(x, x, 0.3).size(0) == 2
        assert scatter(x, torch.zeros(30, dtype=torch.long)).size() == (1, 3)
        if not (_triton.HAS_TRITON and _triton.INTERPRETED):
            with pytest.raises((ImportError, ValueError), match='riton'):
                knn(x, x, 3)
    with pytest.raises(ValueError, match="'backend'"):
        set_default_backend('fast')
    with pytest.raises(ValueError, match="'backend'"):
        with use_backend('cuda'):
            pass
    assert default_backend() == 'auto'
