import os

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors.
# Triton reads the switch when it and the kernels are imported, so it is set
# before anything imports them (torch_geometric imports Triton).
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(12345)
    yield


@pytest.fixture
def spy(monkeypatch):
    """``spy(module, name, keep_args=True)`` wraps the function
    ``module.name`` for the test and returns a list with, per call, its
    positional arguments (or :obj:`None` with ``keep_args=False``: under
    CUDA graphs, arguments kept alive would be pool allocations that the
    graph does not track)."""
    def install(module, name, keep_args=True):
        calls = []
        fn = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls.append(args if keep_args else None)
            return fn(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)
        return calls
    return install
