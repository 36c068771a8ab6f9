"""Launcher: the direct launch of a kept compiled kernel, and when it falls
back to Triton's own call. A stand-in JIT function records both paths, so
the logic runs without a GPU (tests/gpu/test_ops_triton.py runs it on
real kernels)."""
import pytest
import torch

from samsa_geo.ops._triton import launch
from samsa_geo.ops._triton.launch import Launcher, arg_key


class Compiled:
    """What Triton's call returns: a launcher (``run``), the kernel handle
    and its packed metadata."""
    def __init__(self, log):
        self.function, self.packed_metadata = 'function', 'packed'
        self.run = lambda *a: log.append(('direct', a))


class Kernel:
    """A JIT function ``kernel(X, Y, n, scale, BLOCK: constexpr)``."""
    arg_names = ['X', 'Y', 'n', 'scale', 'BLOCK']

    def __init__(self, compiles=True):
        self.log, self.compiles = [], compiles

    def __getitem__(self, grid):
        def call(*args, **meta):
            self.log.append(('triton', grid, args, meta))
            return Compiled(self.log) if self.compiles else None
        return call


@pytest.fixture
def compiled_mode(monkeypatch):
    monkeypatch.setattr(launch, 'INTERPRETED', False)
    monkeypatch.setattr(launch, 'current_stream', lambda: (0, 1234))
    monkeypatch.setattr(launch, 'hooks_unset', lambda: True)


def paths(kernel):
    return [entry[0] for entry in kernel.log]


def test_arg_key_separates_what_triton_specialises():
    x = torch.zeros(8)
    assert arg_key(x) == (torch.float32, True)
    assert arg_key(x[1:]) == (torch.float32, False)  # 4 bytes off
    assert arg_key(x[4:]) == (torch.float32, True)  # 16 bytes off
    assert arg_key(x.long()) == (torch.int64, True)
    assert arg_key(1) != arg_key(3)  # 1 is a constant to Triton
    assert arg_key(32) != arg_key(33)  # divisibility by 16
    assert arg_key(3) != arg_key(2**31 + 3)  # int32 or int64
    assert arg_key(2**31 + 3) != arg_key(2**63 + 3)  # uint64
    assert arg_key(17) == arg_key(33)  # both plain int32
    assert arg_key(True) != arg_key(False)
    assert arg_key(0.5) == arg_key(2.0)
    with pytest.raises(TypeError, match='str'):
        arg_key('tf32')


def test_second_launch_is_direct_with_all_parameters_in_order(
        compiled_mode):
    kernel = Kernel()
    run = Launcher(kernel)
    x, y = torch.zeros(8), torch.zeros(8)
    run((3, ), x, y, 5, 0.5, BLOCK=16, num_warps=4)
    run((3, 2), x, y, 7, 0.25, BLOCK=16, num_warps=4)
    assert paths(kernel) == ['triton', 'direct']
    assert kernel.log[0][1:] == ((3, ), (x, y, 5, 0.5),
                                 dict(BLOCK=16, num_warps=4))
    grid_and_handles = (3, 2, 1, 1234, 'function', 'packed', None, None,
                        None)
    assert kernel.log[1][1] == grid_and_handles + (x, y, 7, 0.25, 16)


@pytest.mark.parametrize('change', [
    lambda x, y: ((x[1:], y, 5, 0.5), dict(BLOCK=16, num_warps=4)),
    lambda x, y: ((x.double(), y, 5, 0.5), dict(BLOCK=16, num_warps=4)),
    lambda x, y: ((x, y, 1, 0.5), dict(BLOCK=16, num_warps=4)),
    lambda x, y: ((x, y, 32, 0.5), dict(BLOCK=16, num_warps=4)),
    lambda x, y: ((x, y, 5, 0.5), dict(BLOCK=32, num_warps=4)),
    lambda x, y: ((x, y, 5, 0.5), dict(BLOCK=16, num_warps=8)),
])
def test_another_specialisation_goes_through_triton(compiled_mode, change):
    kernel = Kernel()
    run = Launcher(kernel)
    x, y = torch.zeros(8), torch.zeros(8)
    run((1, ), x, y, 5, 0.5, BLOCK=16, num_warps=4)
    args, meta = change(x, y)
    run((1, ), *args, **meta)
    run((1, ), *args, **meta)
    assert paths(kernel) == ['triton', 'triton', 'direct']
    assert len(run.cache) == 2


def test_falls_back_where_direct_launch_would_be_wrong(compiled_mode,
                                                       monkeypatch):
    x, y = torch.zeros(8), torch.zeros(8)
    # An argument without a key: never kept.
    kernel = Kernel()
    run = Launcher(kernel)
    for _ in range(2):
        run((1, ), x, y, 5, 'ieee', BLOCK=16)
    assert paths(kernel) == ['triton', 'triton'] and not run.cache
    # Nothing compiled (Triton's interpreter returns None): never kept.
    kernel = Kernel(compiles=False)
    run = Launcher(kernel)
    for _ in range(2):
        run((1, ), x, y, 5, 0.5, BLOCK=16)
    assert paths(kernel) == ['triton', 'triton'] and not run.cache
    # A parameter left to its default is not known to the launcher.
    kernel = Kernel()
    run = Launcher(kernel)
    for _ in range(2):
        run((1, ), x, y, 5, 0.5)
    assert paths(kernel) == ['triton', 'triton'] and not run.cache
    # Launch hooks (a profiler's) see every launch through Triton.
    kernel = Kernel()
    run = Launcher(kernel)
    run((1, ), x, y, 5, 0.5, BLOCK=16)
    monkeypatch.setattr(launch, 'hooks_unset', lambda: False)
    run((1, ), x, y, 5, 0.5, BLOCK=16)
    assert paths(kernel) == ['triton', 'triton']


def test_cache_is_bounded(compiled_mode, monkeypatch):
    monkeypatch.setattr(launch, 'MAX_ENTRIES', 2)
    kernel = Kernel()
    run = Launcher(kernel)
    x, y = torch.zeros(8), torch.zeros(8)
    for block in (16, 32, 64, 64):
        run((1, ), x, y, 5, 0.5, BLOCK=block)
    assert len(run.cache) == 2
    assert paths(kernel) == ['triton'] * 4
    assert repr(run).endswith('2 kept)')


def test_hooks_unset_reads_tritons_knobs():
    triton = pytest.importorskip('triton')
    from triton import knobs
    assert launch.hooks_unset()
    previous = knobs.runtime.launch_enter_hook
    hook = lambda *a: None  # noqa: E731
    if hasattr(previous, 'add'):  # a chain of hooks
        previous.add(hook)
        try:
            assert not launch.hooks_unset()
        finally:
            previous.remove(hook)
    else:
        knobs.runtime.launch_enter_hook = hook
        try:
            assert not launch.hooks_unset()
        finally:
            knobs.runtime.launch_enter_hook = previous
    assert launch.hooks_unset() and triton
