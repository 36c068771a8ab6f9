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


def test_replay_parts_issue_the_calls_steps_in_order():
    # The parts of a replayed call: copies of the inputs into the graph's
    # buffers (values copied), the replay, the last step on the graph's
    # outputs with the call's other arguments; the graph replayed last.
    from collections import OrderedDict
    from types import SimpleNamespace

    import pytest
    import torch

    from profile_layer import replay_parts

    from samsa_geo.nn.conv._graph_replay import _Graph

    events = []
    old = _Graph(SimpleNamespace(replay=lambda: None), [torch.zeros(2)],
                 ('old', ), ())
    entry = _Graph(SimpleNamespace(replay=lambda: events.append('replay')),
                   [torch.zeros(3), torch.zeros(3)], ('out', 'h'), ())
    model = SimpleNamespace(
        _graphs=SimpleNamespace(_graphs=OrderedDict(a=old, b=entry)),
        _tail=lambda *a: events.append(('tail', ) + a) or 'y')
    x, batch = torch.arange(3.), torch.ones(3)
    parts = dict(replay_parts(model, (x, batch), ('batch', 4),
                              lambda: events.append('call')))
    assert list(parts) == ['call', 'copies+replay+tail', 'replay+tail',
                           'replay', 'copies', 'tail']
    assert parts['copies+replay+tail']() == 'y'
    assert events == ['replay', ('tail', 'out', 'h', 'batch', 4)]
    assert torch.equal(entry.inputs[0], x)
    assert torch.equal(entry.inputs[1], batch)
    events.clear()
    parts['call']()
    parts['replay']()
    assert events == ['call', 'replay']

    empty = SimpleNamespace(_graphs=SimpleNamespace(_graphs=OrderedDict()))
    with pytest.raises(RuntimeError, match='replay a CUDA graph'):
        replay_parts(empty, (x, ), (), lambda: None)
    with pytest.raises(RuntimeError, match='Expected 2 inputs'):
        replay_parts(model, (x, ), (), lambda: None)

    # A graph that reads its inputs in place has no copies.
    pinned = _Graph(SimpleNamespace(replay=lambda: events.append('replay')),
                    [], ('out', 'h'), ())
    model._graphs._graphs['c'] = pinned
    events.clear()
    parts = dict(replay_parts(model, (x, batch), ('batch', 4),
                              lambda: events.append('call')))
    assert list(parts) == ['call', 'replay+tail', 'replay', 'tail']
    assert parts['replay+tail']() == 'y'
    assert events == ['replay', ('tail', 'out', 'h', 'batch', 4)]


def test_replay_parts_need_graphs_and_a_forward():
    import subprocess
    script = osp.join(osp.dirname(__file__), '..', '..', 'benchmarks',
                      'profile_layer.py')
    for extra in ([], ['--cuda-graphs', '--pass', 'fwdbwd']):
        r = subprocess.run([sys.executable, script, '--replay-parts',
                            *extra], capture_output=True, text=True)
        assert r.returncode == 2
        assert '--replay-parts needs --cuda-graphs and --pass fwd' in \
            r.stderr
