import os.path as osp
import sys

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
from profile_layer import busy_host_times  # noqa: E402


def test_busy_host_times_times_each_pass_after_its_sleep():
    # The sleep (on CUDA a kernel that keeps the GPU busy) comes before
    # each timed pass, and the backward gets the forward's output.
    events = []
    clock = iter(range(1000))

    def sleep():
        events.append('sleep')

    def forward():
        events.append('fwd')
        return next(clock)

    def backward(out):
        events.append(('bwd', out))

    fwd_ms, bwd_ms = busy_host_times(forward, backward, calls=3,
                                     sleep=sleep)
    assert events == ['sleep', 'fwd', 'sleep', ('bwd', 0),
                      'sleep', 'fwd', 'sleep', ('bwd', 1),
                      'sleep', 'fwd', 'sleep', ('bwd', 2)]
    assert fwd_ms >= 0 and bwd_ms >= 0
    events.clear()
    fwd_ms, bwd_ms = busy_host_times(forward, calls=2, sleep=sleep)
    assert events == ['sleep', 'fwd', 'sleep', 'fwd'] and bwd_ms is None
