import copy
import pickle

import pytest
import torch

from samsa_geo.nn.attention._stacked import tensor_stamp
from samsa_geo.nn.conv import _graph_replay
from samsa_geo.nn.conv._graph_replay import GraphReplay


class FakeGraph:
    # Stands in for a captured CUDA graph on the CPU: a replay runs the
    # function again on the input buffers into the output buffer(s).
    def __init__(self, fn, buffers):
        self.fn, self.buffers = fn, buffers
        self.out = fn(*buffers)
        self.replays = 0

    def replay(self):
        self.replays += 1
        out = self.fn(*self.buffers)
        if isinstance(out, tuple):
            for buf, t in zip(self.out, out):
                buf.copy_(t)
        else:
            self.out.copy_(out)

    def pool(self):
        return (0, 1)


@pytest.fixture
def fake_capture(monkeypatch):
    captured = []

    def capture(fn, buffers, pool):
        graph = FakeGraph(fn, buffers)
        captured.append(graph)
        return graph, graph.out

    monkeypatch.setattr(_graph_replay, 'capture', capture)
    return captured


def run(graphs, fn, inputs, key, state):
    # As a layer calls it: eagerly where no graph runs.
    out = graphs(fn, inputs, key, lambda: state)
    return fn(*inputs) if out is None else out


def test_captures_after_min_calls_and_replays_into_fresh_outputs(
        fake_capture):
    weight = torch.randn(3, 3)
    calls = []

    def fn(x):
        calls.append(x)
        return x @ weight

    graphs = GraphReplay(max_graphs=2, min_calls=2)
    assert repr(graphs) == 'GraphReplay(graphs=0, max_graphs=2, min_calls=2)'
    xs = [torch.randn(4, 3) for _ in range(5)]
    outs = [run(graphs, fn, (x, ), 'key', [weight]) for x in xs]
    assert len(fake_capture) == 1 and len(graphs) == 1
    for x, out in zip(xs, outs):  # every output its own, and right
        assert torch.equal(out, x @ weight)
    # Two eager calls, then the capture; replays read the input buffer.
    assert calls[0] is xs[0] and calls[1] is xs[1]
    assert all(x is fake_capture[0].buffers[0] for x in calls[2:])


def test_state_changes_drop_the_graph(fake_capture):
    weight = torch.randn(3, 3)
    graphs = GraphReplay(min_calls=1)
    x = torch.randn(4, 3)

    def fn(x):
        return x @ weight

    for _ in range(3):
        run(graphs, fn, (x, ), None, [weight])
    assert len(fake_capture) == 1
    weight.mul_(2)  # in place: a new version
    assert graphs(fn, (x, ), None, lambda: [weight]) is None  # eager
    assert len(graphs) == 0
    out = graphs(fn, (x, ), None, lambda: [weight])  # captured again
    assert torch.equal(out, x @ weight) and len(fake_capture) == 2


def test_inputs_are_copied_in_before_the_state_is_stamped(fake_capture):
    # The copies go to the GPU first and run while the host stamps the
    # state; a stale graph then leaves its (already written) buffers.
    weight = torch.randn(3, 3)
    graphs = GraphReplay(min_calls=1)
    seen = []

    def state():
        if fake_capture:  # what the graph's input buffer holds by now
            seen.append(fake_capture[0].buffers[0].clone())
        return [weight]

    def fn(x):
        return x @ weight

    xs = [torch.randn(4, 3) for _ in range(3)]
    assert graphs(fn, (xs[0], ), None, state) is None  # seen once
    assert torch.equal(graphs(fn, (xs[1], ), None, state), xs[1] @ weight)
    assert len(fake_capture) == 1
    seen.clear()
    out = graphs(fn, (xs[2], ), None, state)  # a replay
    assert torch.equal(out, xs[2] @ weight)
    assert len(seen) == 1 and torch.equal(seen[0], xs[2])
    weight.add_(1)
    seen.clear()
    x = xs[0].clone()  # at an address not seen before: the copy graph
    assert graphs(fn, (x, ), None, state) is None  # stale: eager
    assert len(seen) == 1 and torch.equal(seen[0], x)
    assert len(graphs) == 0 and len(fake_capture) == 1


def test_signatures_and_the_least_recently_used(fake_capture):
    graphs = GraphReplay(max_graphs=2, min_calls=1)
    fn = torch.neg
    a, b, c = torch.randn(2, 3), torch.randn(5, 3), torch.randn(5, 3).t()
    for x in (a, a, b, b, a, c, c):  # c: other strides, another graph
        assert torch.equal(run(graphs, fn, (x, ), 'k', []), -x)
    assert len(fake_capture) == 3 and len(graphs) == 2
    assert [g.buffers[0].shape for g in fake_capture] == [
        (2, 3), (5, 3), (3, 5)]
    # b was dropped for c: it counts its calls again, towards twice
    # min_calls, and is captured at its third call.
    for captures in (3, 3, 4):
        assert torch.equal(run(graphs, fn, (b, ), 'k', []), -b)
        assert len(fake_capture) == captures
    run(graphs, fn, (a, ), 'other key', [])  # a new signature: eager
    assert len(fake_capture) == 4 and len(graphs) == 2
    graphs.clear()
    assert len(graphs) == 0


def test_a_cycle_of_more_signatures_than_graphs_stops_capturing(
        fake_capture):
    # Batches of 6 sizes in turn, 4 graphs kept: each graph is dropped
    # before its signature comes back, so a capture on every call would
    # never replay. Each drop doubles the calls needed before the next
    # capture of that signature: captures become rare, outputs stay right.
    graphs = GraphReplay(max_graphs=4, min_calls=2)
    xs = [torch.randn(n, 3) for n in range(2, 8)]
    per_round = []
    for _ in range(40):
        before = len(fake_capture)
        for x in xs:
            assert torch.equal(run(graphs, torch.neg, (x, ), 'k', []), -x)
        per_round.append(len(fake_capture) - before)
    assert per_round[:2] == [0, 0] and per_round[2] == 6
    # (The same tensors every round: graphs that read them in place, as
    # many as the count that decides whether to look for one.)
    assert graphs._in_place == len(graphs) == 4
    assert sum(per_round) <= 30  # 6 per round (228 in all) without it
    assert sum(per_round[-10:]) <= 6
    # A signature called on its own again is captured and replayed.
    x = xs[0]
    for _ in range(2 << 10):
        run(graphs, torch.neg, (x, ), 'k', [])
    replays = sum(g.replays for g in fake_capture
                  if g.buffers[0].shape == x.shape)
    assert replays > 1000


def test_a_call_that_cannot_be_captured_stays_eager(monkeypatch):
    def capture(fn, buffers, pool):
        raise RuntimeError('operation not permitted when stream is '
                           'capturing')

    monkeypatch.setattr(_graph_replay, 'capture', capture)
    graphs = GraphReplay(min_calls=1)
    x = torch.randn(3)
    for _ in range(4):
        assert graphs(torch.exp, (x, ), None, lambda: []) is None
    assert len(graphs) == 0 and len(graphs._failed) == 1
    # A signature the caller refuses is asked about once.
    asked = []
    graphs = GraphReplay(min_calls=1)
    for _ in range(4):
        assert graphs(torch.exp, (x, ), None, lambda: [],
                      lambda: asked.append(1)) is None
    assert len(asked) == 1


def test_copies_start_empty_and_arguments_are_checked(fake_capture):
    graphs = GraphReplay(max_graphs=3, min_calls=1)
    x = torch.randn(3)
    for _ in range(2):
        run(graphs, torch.exp, (x, ), None, [])
    assert len(graphs) == 1
    for twin in (copy.deepcopy(graphs), pickle.loads(pickle.dumps(graphs))):
        assert len(twin) == 0 and twin.max_graphs == 3
        assert twin.min_calls == 1
    with pytest.raises(ValueError, match="'max_graphs'"):
        GraphReplay(max_graphs=0)
    with pytest.raises(ValueError, match="'min_calls'"):
        GraphReplay(min_calls=0)
    graphs = GraphReplay(min_calls=1)
    graphs(lambda x: (x, x), (x, ), None, lambda: [])  # eager: no check
    with pytest.raises(TypeError, match='return a tensor'):
        graphs(lambda x: (x, x), (x, ), None, lambda: [])


def test_inputs_at_the_last_calls_addresses_are_read_in_place(
        fake_capture, monkeypatch):
    # The same tensor called again: the graph reads it where it is (no
    # copy), so a change made in place between calls is seen; a tensor
    # elsewhere gets a graph of copies, and keeps it.
    from samsa_geo.nn.conv._graph_replay import _Graph, _Pinned
    loads = []
    load = _Graph.load
    monkeypatch.setattr(_Graph, 'load',
                        lambda self, inputs: (loads.append(1),
                                              load(self, inputs)))
    weight = torch.randn(3, 3)

    def fn(x, y):
        return x @ weight + y

    graphs = GraphReplay(min_calls=2)
    x, y = torch.randn(4, 3), torch.randn(4, 1)
    for i in range(5):
        x.add_(1.0)  # in place: the same address, new values
        assert (graphs(fn, (x, y), None, lambda: [weight]) is None) \
            == (i < 2)
        if i >= 2:
            assert torch.equal(graphs(fn, (x, y), None, lambda: [weight]),
                               x @ weight + y)
    assert len(fake_capture) == 1 and fake_capture[0].replays == 6
    assert fake_capture[0].buffers[0] is x and not loads
    (name, entry), = graphs._graphs.items()
    assert isinstance(name, _Pinned) and entry.inputs == []
    assert name.pointers == (x.data_ptr(), y.data_ptr())
    # One input elsewhere (same signature): its first call captures a
    # graph that copies, and its later calls replay that one.
    other = x.clone()
    for i in range(3):
        assert torch.equal(graphs(fn, (other, y), None, lambda: [weight]),
                           other @ weight + y)
    assert len(fake_capture) == 2 and len(loads) == 2
    assert not isinstance(list(graphs._graphs)[-1], _Pinned)
    assert fake_capture[1].buffers[0] is not other
    # Stale graphs are dropped (the one that reads in place, then the one
    # that copies); the next call captures one that reads in place again.
    weight.mul_(2)
    for _ in range(2):
        assert graphs(fn, (x, y), None, lambda: [weight]) is None
    assert len(graphs) == 0 and graphs._in_place == 0
    assert torch.equal(graphs(fn, (x, y), None, lambda: [weight]),
                       x @ weight + y)
    assert len(fake_capture) == 3 and len(loads) == 3


def test_inputs_read_in_place_only_after_a_run_at_one_address(
        fake_capture):
    # A loop's inputs that land on a block seen the call before by chance
    # get a graph that copies: in place needs the capturing call and the
    # min_calls calls before it at one address.
    from samsa_geo.nn.conv._graph_replay import _Pinned
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    for calls, pinned in (((a, b, b), False), ((a, a, a), True),
                          ((b, a, a, a), False)):
        graphs = GraphReplay(min_calls=2)
        for x in calls:
            out = graphs(torch.neg, (x, ), None, lambda: [])
        assert torch.equal(out, -calls[-1]) and len(graphs) == 1
        assert isinstance(next(iter(graphs._graphs)), _Pinned) == pinned


def test_a_graph_that_reads_in_place_keeps_no_reference(monkeypatch):
    # The inputs' memory stays the caller's: freed once they are dropped.
    import weakref

    class Graph:
        def replay(self):
            pass

        def pool(self):
            return (0, 1)

    monkeypatch.setattr(_graph_replay, 'capture',
                        lambda fn, buffers, pool: (Graph(), fn(*buffers)))
    graphs = GraphReplay(min_calls=1)
    x = torch.randn(4, 3)
    for _ in range(3):
        graphs(torch.neg, (x, ), None, lambda: [])
    assert len(graphs) == 1
    ref = weakref.ref(x)
    del x
    assert ref() is None


def test_a_finish_step_runs_on_the_output_buffers(fake_capture):
    weight = torch.randn(3, 3)

    def fn(x):
        return x @ weight, x.sum(dim=1, keepdim=True)

    def finish(a, b):
        seen.append((a, b))
        return a - b

    graphs = GraphReplay(min_calls=1)
    xs = [torch.randn(4, 3) for _ in range(4)]
    outs, seen = [], []
    for x in xs:
        out = graphs(fn, (x, ), None, lambda: [weight], finish=finish)
        outs.append(finish(*fn(x)) if out is None else out)
    assert len(fake_capture) == 1 and fake_capture[0].replays == 3
    for x, out in zip(xs, outs):  # every output its own, and right
        assert torch.allclose(out, x @ weight - x.sum(dim=1, keepdim=True))
    # Replays hand finish the graph's own buffers, not copies.
    for a, b in seen[1:]:
        assert a is fake_capture[0].out[0] and b is fake_capture[0].out[1]
    graphs = GraphReplay(min_calls=1)
    graphs(torch.neg, (xs[0], ), None, lambda: [], finish=finish)
    with pytest.raises(TypeError, match='tuple of tensors'):
        graphs(torch.neg, (xs[0], ), None, lambda: [], finish=finish)


@pytest.mark.parametrize('norm_first', [False, True])
@pytest.mark.parametrize('norm', ['batch_norm', 'layer_norm', None])
def test_the_layer_replays_its_body_and_runs_its_last_step_after(
        fake_capture, monkeypatch, norm_first, norm):
    # SamsaConv's replay path on the CPU: the fake graph replays the body,
    # the last step writes each call's output, equal to the eager one.
    from samsa_geo.nn import SamsaConv
    from samsa_geo.nn.attention import config
    monkeypatch.setattr(torch.cuda, 'is_current_stream_capturing',
                        lambda: False)
    torch.manual_seed(0)
    conv = SamsaConv(16, None, heads=2, k=4, norm=norm,
                     norm_first=norm_first).eval()
    monkeypatch.setattr(conv.attn, '_runs_fused', lambda *args: True)
    batch = torch.arange(3).repeat_interleave(10)
    outs, refs = [], []
    with torch.no_grad():
        for _ in range(5):
            x = torch.randn(30, 16)
            with config.attention_config(cuda_graphs=False):
                refs.append(conv(x, None, batch))
            out = conv._replay(x, batch, None,
                               {'num_graphs': 3, 'max_num_nodes': 10})
            outs.append(conv._forward(x, None, batch, None, False, {}, {})
                        if out is None else out)
    assert len(fake_capture) == 1 and fake_capture[0].replays == 3
    assert isinstance(fake_capture[0].out, tuple)
    for out, ref in zip(outs, refs):
        assert torch.allclose(out, ref, atol=1e-5)
    buffers = {t.data_ptr() for t in fake_capture[0].out}
    assert not buffers & {out.data_ptr() for out in outs}


def test_stamps_skip_unset_tensors_and_read_inference_tensors():
    w = torch.randn(3)
    with torch.inference_mode():
        frozen = torch.randn(3)
    stamp = tensor_stamp([w, None, frozen])
    assert stamp == ((w.data_ptr(), w._version), None,
                     (frozen.data_ptr(), 0))
    w.add_(1)
    assert tensor_stamp([w, None, frozen]) != stamp


def test_warnings_do_not_abort_a_capture_and_a_broken_generator_is_named(
        fake_capture, monkeypatch):
    import warnings
    weight = torch.randn(3, 3)
    calls = []

    def fn(x):
        calls.append(1)
        if len(calls) == 1:  # the capture (a replay runs no Python)
            warnings.warn('a warning the eager calls showed')
        return x @ weight

    graphs = GraphReplay(min_calls=1)
    x = torch.randn(4, 3)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # as `python -W error` would
        graphs(fn, (x, ), None, lambda: [weight])  # the eager call
        out = graphs(fn, (x, ), None, lambda: [weight])  # captured
    assert len(fake_capture) == 1 and torch.equal(out, x @ weight)

    # A capture that fails and leaves the generator unusable says so.
    def refuse(*args):
        raise RuntimeError('operation not permitted when stream is '
                           'capturing')

    def broken(self, *args, **kwargs):
        raise RuntimeError('Offset increment outside graph capture')

    monkeypatch.setattr(_graph_replay, 'capture', refuse)
    monkeypatch.setattr(torch.Tensor, 'uniform_', broken)
    graphs = GraphReplay(min_calls=1)
    graphs(fn, (x, ), None, lambda: [weight])
    with pytest.raises(RuntimeError, match='left the random number '
                       'generator of cpu unusable.*set_cuda_graphs'):
        graphs(fn, (x, ), None, lambda: [weight])


class _Cycle:
    # Garbage that only the cyclic collector frees, as a dead layer and
    # its graphs are; records whether it was freed during a capture.
    def __init__(self, log):
        self.me, self.log = self, log

    def __del__(self):
        self.log.append('freed')


def allocate_during_capture(log):
    # A dead cycle, then allocations that, with the collector's gen-0
    # threshold at 1, run a collection at once where collection is on.
    _Cycle(log)
    kept = [[] for _ in range(50)]  # net allocations count
    log.append('captured')
    return kept


@pytest.mark.parametrize('fails', [False, True])
@pytest.mark.parametrize('enabled', [True, False])
def test_no_garbage_collection_during_a_capture(monkeypatch, enabled,
                                                fails):
    # A collection inside a capture may destroy a dead cycle's CUDA graph,
    # an operation not permitted while capturing: automatic collection is
    # off during the capture and as before it after, failed captures too.
    import gc
    log = []

    def capture(fn, buffers, pool):
        log.append(gc.isenabled())
        allocate_during_capture(log)
        if fails:
            raise RuntimeError('operation not permitted when stream is '
                               'capturing')
        graph = FakeGraph(fn, buffers)
        return graph, graph.out

    monkeypatch.setattr(_graph_replay, 'capture', capture)
    threshold, was_enabled = gc.get_threshold(), gc.isenabled()
    gc.set_threshold(1)
    (gc.enable if enabled else gc.disable)()
    try:
        graphs = GraphReplay(min_calls=1)
        x = torch.randn(3)
        graphs(torch.exp, (x, ), None, lambda: [])  # eager
        out = graphs(torch.exp, (x, ), None, lambda: [])  # captured
        assert gc.isenabled() == enabled
    finally:
        gc.set_threshold(*threshold)
        (gc.enable if was_enabled else gc.disable)()
    assert log[:2] == [False, 'captured']  # nothing freed inside
    assert (out is None) == fails
    gc.collect()  # freed after (at once where collection is on)
    assert log == [False, 'captured', 'freed']


def test_allocations_trigger_collection_outside_a_capture():
    # The check above can fail: at threshold 1 the same allocations free
    # the cycle where collection is on.
    import gc
    log = []
    threshold, was_enabled = gc.get_threshold(), gc.isenabled()
    # The collector's counts left by earlier tests can promote the cycle
    # out of generation 0 while it is built (then 50 allocations may not
    # reach its generation): a full collection first starts them at 0.
    gc.collect()
    gc.set_threshold(1)
    gc.enable()
    try:
        allocate_during_capture(log)
    finally:
        gc.set_threshold(*threshold)
        (gc.enable if was_enabled else gc.disable)()
    assert log == ['freed', 'captured']


def speculated_call(graphs, fn, inputs, key, state, hint='hint'):
    # As SamsaConv calls it in inference: the last call's graph replayed
    # first, then confirmed (or its output left unread).
    spec = graphs.speculate(inputs, hint)
    out = graphs(fn, inputs, key, lambda: state, hint=hint, speculated=spec)
    return spec, (fn(*inputs) if out is None else out)


def test_a_speculative_replay_serves_the_call_that_confirms_it(
        fake_capture):
    weight = torch.randn(3, 3)

    def fn(x):
        return x @ weight

    graphs = GraphReplay(min_calls=1)
    x = torch.randn(4, 3)
    for _ in range(2):  # eager, then captured (in place) and replayed
        spec, out = speculated_call(graphs, fn, (x, ), 'key', [weight])
        assert spec is None and torch.equal(out, x @ weight)
    graph = fake_capture[0]
    assert len(fake_capture) == 1 and graph.replays == 1
    for i in range(3):  # one replay per call: the speculative one
        spec, out = speculated_call(graphs, fn, (x, ), 'key', [weight])
        assert spec is not None and graph.replays == 2 + i
        assert torch.equal(out, x @ weight)
    # Another hint, another address or another layout: no speculation,
    # and the call chooses its graph as before.
    assert graphs.speculate((x, ), 'other hint') is None
    assert graph.replays == 4
    spec, out = speculated_call(graphs, fn, (x, ), 'key', [weight])
    assert spec is None and graph.replays == 5  # (replayed by the call)
    y = x.clone()
    assert graphs.speculate((y, ), 'hint') is None
    spec, out = speculated_call(graphs, fn, (x, ), 'key', [weight])
    assert spec is None and graph.replays == 6
    assert graphs.speculate((x.t(), ), 'hint') is None
    # Without a hint the call arms no speculation.
    assert graphs(fn, (x, ), 'key', lambda: [weight]) is not None
    assert graphs.speculate((x, ), 'hint') is None


def test_an_unconfirmed_speculation_leaves_its_output_unread(fake_capture):
    weight = torch.randn(3, 3)

    def fn(x):
        return x @ weight

    graphs = GraphReplay(min_calls=1)
    x = torch.randn(4, 3)
    for _ in range(3):  # eager, captured, speculated
        speculated_call(graphs, fn, (x, ), 'key', [weight])
    graph = fake_capture[0]
    assert graph.replays == 2
    weight.mul_(2)  # in place: the graph's stamp no longer matches
    spec, out = speculated_call(graphs, fn, (x, ), 'key', [weight])
    assert spec is not None and graph.replays == 3  # the wasted replay
    assert torch.equal(out, x @ weight)  # the eager call's
    assert len(graphs) == 0
    # One speculation per served call: none until a graph serves again.
    assert graphs.speculate((x, ), 'hint') is None
    speculated_call(graphs, fn, (x, ), 'key', [weight])  # captured again
    assert len(fake_capture) == 2
    graph = fake_capture[1]
    assert graph.replays == 1
    # A key that the hint does not tell apart: the graph replays, the
    # call finds no graph of its signature and runs eagerly.
    spec, out = speculated_call(graphs, fn, (x, ), 'other key', [weight])
    assert spec is graphs._graphs[next(iter(graphs._graphs))]
    assert graph.replays == 2 and torch.equal(out, x @ weight)
    assert graphs.speculate((x, ), 'hint') is None


def test_graphs_hold_the_state_they_read(fake_capture):
    # A speculative replay reads the state before it is stamped: the
    # tensors a graph was captured with stay allocated while it is kept.
    import weakref
    weight = torch.randn(3, 3)
    graphs = GraphReplay(min_calls=1)
    x = torch.randn(4, 3)
    for _ in range(3):
        speculated_call(graphs, lambda x: x @ weight, (x, ), 'key',
                        [weight, None])
    ref = weakref.ref(weight)
    weight = torch.randn(3, 3)  # the caller lets the old one go
    assert ref() is not None
    spec, out = speculated_call(graphs, lambda x: x @ weight, (x, ), 'key',
                                [weight, None])
    assert spec is not None and torch.equal(out, x @ weight)
    assert len(graphs) == 0  # dropped: a new storage
    del spec
    assert ref() is None


def test_a_graph_that_copies_its_inputs_speculates_at_any_address(
        fake_capture):
    graphs = GraphReplay(min_calls=1)
    xs = [torch.randn(4, 3) for _ in range(6)]
    for x in xs[:2]:  # at new addresses: a graph that copies them
        speculated_call(graphs, torch.neg, (x, ), 'key', [])
    graph = fake_capture[0]
    assert graph.buffers[0] is not xs[1] and graph.replays == 1
    for i, x in enumerate(xs[2:]):
        spec, out = speculated_call(graphs, torch.neg, (x, ), 'key', [])
        assert spec is not None and graph.replays == 2 + i
        assert torch.equal(out, -x)
    # Where a graph reads some inputs in place, a copying one speculates
    # no more (that one may be the call's).
    graphs = GraphReplay(min_calls=1)
    y = torch.randn(4, 3)
    for _ in range(2):
        speculated_call(graphs, torch.neg, (y, ), 'key', [])
    assert len(fake_capture) == 2 and graphs._in_place == 1
    speculated_call(graphs, torch.neg, (xs[0], ), 'key', [])  # captured
    assert len(fake_capture) == 3 and fake_capture[2].replays == 1
    for x in xs[1:]:
        spec, out = speculated_call(graphs, torch.neg, (x, ), 'key', [])
        assert spec is None and torch.equal(out, -x)
    assert fake_capture[2].replays == len(xs)
    spec, out = speculated_call(graphs, torch.neg, (y, ), 'key', [])
    assert spec is None and fake_capture[1].replays == 2


def test_the_layer_speculates_and_stays_equal_to_its_eager_calls(
        fake_capture, monkeypatch):
    # SamsaConv's replays on the CPU: repeated inference calls on one input
    # replay once each (speculatively); a parameter changed in place, a
    # setting or a hook leave at most one unread replay, and every output
    # equals the eager call's.
    from samsa_geo.nn import SamsaConv
    from samsa_geo.nn.attention import config
    monkeypatch.setattr(torch.cuda, 'is_current_stream_capturing',
                        lambda: False)
    torch.manual_seed(0)
    conv = SamsaConv(16, None, heads=2, k=4).eval()
    monkeypatch.setattr(conv.attn, '_runs_fused', lambda *args: True)
    batch = torch.arange(3).repeat_interleave(10)
    x = torch.randn(30, 16)
    kwargs = {'num_graphs': 3, 'max_num_nodes': 10}
    seen = []

    def call():
        with torch.no_grad():
            with config.attention_config(cuda_graphs=False):
                ref = conv(x, None, batch)
            out = conv._replay(x, batch, None, kwargs)
            served = out is not None
            if out is None:
                out = conv._forward(x, None, batch, None, False, {}, {})
        assert torch.allclose(out, ref, atol=1e-5)
        seen.append(served)
        return sum(g.replays for g in fake_capture)

    for _ in range(3):  # eager, eager, captured
        call()
    assert seen == [False, False, True] and len(fake_capture) == 1
    for i in range(3):  # one replay per call
        assert call() == 2 + i
    with torch.no_grad():
        conv.mlp[0].weight.mul_(0.5)
    assert call() == 5 and seen[-1] is False  # replayed, left unread
    assert len(conv._graphs) == 0
    call()  # captured again, no speculation before
    assert len(fake_capture) == 2 and fake_capture[1].replays == 1
    conv.attn.tau = conv.attn.tau * 2  # a setting: another signature
    assert call() == 5 + 2 and seen[-1] is False
    conv.attn.tau = conv.attn.tau / 2
    assert call() == 5 + 3 and seen[-1] is True  # served, unspeculated
    handle = conv.mlp[0].register_forward_hook(lambda *args: None)
    assert call() == 5 + 4 and seen[-1] is False  # one, unread
    for _ in range(2):
        assert call() == 5 + 4 and seen[-1] is False
    handle.remove()
    assert call() == 5 + 5 and seen[-1] is True
    assert call() == 5 + 6 and seen[-1] is True
