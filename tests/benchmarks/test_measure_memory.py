"""benchmarks/_common.measure's memory baseline, on the CPU with a fake
memory reader in place of the CUDA allocator's counts."""
import os.path as osp
import sys

import pytest
import torch

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
from _common import drop_kept_state, measure, measure_or_error  # noqa: E402

MB = 2**20


class FakeMemory:
    """The allocator's counts as measure reads them, in bytes; ``log``
    keeps the order of what measure asked."""
    def __init__(self, allocated=100 * MB):
        self.now = self.peak = allocated
        self.log = []

    def alloc(self, n):
        self.now += n
        self.peak = max(self.peak, self.now)

    def free(self, n):
        self.now -= n

    def synchronize(self):
        pass

    def empty_cache(self):
        self.log.append('empty_cache')

    def reset_peak(self):
        self.log.append('reset_peak')
        self.peak = self.now

    def allocated(self):
        self.log.append('allocated')
        return self.now

    def max_allocated(self):
        return self.peak


def test_kept_and_transient_memory_are_counted_apart():
    # The first call keeps 4 MB (a graph's pool), each call uses 2 MB
    # while it runs: held 4, peak 2, first peak 6 (as on the GPU).
    memory, kept = FakeMemory(), []

    def fn():
        if not kept:
            kept.append(1)
            memory.alloc(4 * MB)
        memory.alloc(2 * MB)
        memory.free(2 * MB)

    got = measure(fn, torch.device('cpu'), warmup=1, repeat=3,
                  memory=memory)
    assert got['held_mb'] == pytest.approx(4.0)
    assert got['peak_mb'] == pytest.approx(2.0)
    assert got['first_peak_mb'] == pytest.approx(6.0)
    assert 'memory_warning' not in got


def test_the_baseline_is_taken_after_an_earlier_case_is_let_go():
    # An earlier case left 8 MB in a reference cycle (freed by the garbage
    # collector only): collected, the cache emptied and the peak reset
    # before the baseline, so none of it is counted or freed in the case.
    memory = FakeMemory()

    class Leftover:
        def __init__(self):
            self.cycle = self
            memory.alloc(8 * MB)

        def __del__(self):
            memory.log.append('freed')
            memory.free(8 * MB)

    import gc
    gc.disable()  # the cycle lives until measure collects it
    try:
        Leftover()
        got = measure(lambda: None, torch.device('cpu'), warmup=2,
                      repeat=2, memory=memory)
    finally:
        gc.enable()
    assert memory.log.index('freed') < memory.log.index('allocated')
    first = memory.log.index('allocated')
    assert memory.log[:first].count('empty_cache') == 1
    assert memory.log[first - 1] == 'reset_peak'
    assert got['held_mb'] == 0.0 and got['peak_mb'] == 0.0
    assert got['first_peak_mb'] == 0.0


def test_memory_freed_below_the_baseline_is_flagged_not_counted():
    # A warm-up that frees what was allocated before it would give a
    # negative held_mb and a first peak below the peak: both left out, a
    # warning says why; the timed calls' own peak stays.
    memory, freed = FakeMemory(), []

    def fn():
        if not freed:
            freed.append(1)
            memory.free(8 * MB)
        memory.alloc(3 * MB)
        memory.free(3 * MB)

    got = measure(fn, torch.device('cpu'), warmup=1, repeat=2,
                  memory=memory)
    assert got['held_mb'] is None and got['first_peak_mb'] is None
    assert 'freed 8.0 MB' in got['memory_warning']
    assert got['peak_mb'] == pytest.approx(3.0)
    # measure_or_error passes it on.
    freed.clear()
    got = measure_or_error(fn, torch.device('cpu'), warmup=1, repeat=2,
                           memory=memory)
    assert got['held_mb'] is None and 'memory_warning' in got


def test_the_layers_graphs_and_kept_casts_are_dropped_before_the_warm_up():
    # SamsaConv keeps CUDA graphs (inference and training) and inference
    # caches, SamsaAttention kept casts: measure drops them all before the
    # case's first call, so that its warm-up captures its own.
    from samsa_geo.nn import SamsaConv
    conv = SamsaConv(16, None, heads=2, k=4)
    model = torch.nn.Sequential(conv)
    conv._graphs._seen['earlier case'] = 2
    conv._train_graphs._seen['earlier case'] = 2
    conv._mlp_cache = ('kept',)
    conv._affine_cache = {0: ('kept',)}
    conv.attn._projection_cache = ('kept',)
    seen = []

    def fn():
        if not seen:
            seen.append((dict(conv._graphs._seen),
                         dict(conv._train_graphs._seen), conv._mlp_cache,
                         conv._affine_cache, conv.attn._projection_cache))

    measure(fn, torch.device('cpu'), warmup=1, repeat=1, modules=[model])
    assert seen == [({}, {}, None, {}, None)]
    # Without the modules, nothing of theirs is touched.
    conv._mlp_cache = ('kept',)
    measure(lambda: None, torch.device('cpu'), warmup=1, repeat=1)
    assert conv._mlp_cache == ('kept',)
    drop_kept_state([])  # no modules: nothing to import or drop


def test_on_the_cpu_without_a_reader_memory_is_not_counted():
    got = measure(lambda: None, torch.device('cpu'), warmup=1, repeat=2)
    assert got['peak_mb'] is None and got['held_mb'] is None
    assert got['first_peak_mb'] is None and 'memory_warning' not in got


def test_an_error_is_recorded_with_where_it_was_raised():
    # A compiler error wraps the backend's, whose message may be empty:
    # the record names the innermost frame that raised it.
    def backend():
        assert False

    def fn():
        try:
            backend()
        except AssertionError as e:
            raise RuntimeError('backend raised:\nAssertionError: ') from e

    got = measure_or_error(fn, torch.device('cpu'), warmup=1, repeat=2)
    assert got['ms'] is None and got['peak_mb'] is None
    line = backend.__code__.co_firstlineno + 1
    assert got['error'] == ('backend raised:\nAssertionError:  '
                            f'[test_measure_memory.py:{line} backend]')
    with pytest.raises(ValueError):  # not a kernel or memory limit
        measure_or_error(lambda: int('x'), torch.device('cpu'), warmup=1,
                         repeat=2)
