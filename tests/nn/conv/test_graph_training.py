import copy

import pytest
import torch

from samsa_geo.nn.conv import _graph_replay, _graph_training
from samsa_geo.nn.conv._graph_training import (
    TrainingGraphReplay,
    pack,
    unpack,
)


@pytest.fixture
def fake_capture(fake_training_capture):
    return fake_training_capture


def make(seed=0):
    torch.manual_seed(seed)
    w = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    unused = torch.randn(2, requires_grad=True)

    def fn(x):
        return torch.tanh(x @ w + b) * x.sum(-1, keepdim=True)

    return fn, [w, b, unused]


def step(graphs, fn, params, x, weight, key='key'):
    out = graphs(fn, (x, ), params, key, lambda: params)
    (out * weight).sum().backward()
    return out


def test_captures_after_backward_passes_and_matches_eager(fake_capture):
    fn, params = make()
    ref_fn, ref_params = make()
    graphs = TrainingGraphReplay(min_calls=2)
    assert repr(graphs) == ('TrainingGraphReplay(graphs=0, max_graphs=2, '
                            'min_calls=2, pin_inputs=False)')
    # A call whose output never reaches a backward pass does not count.
    graphs(fn, (torch.randn(5, 3), ), params, 'key', lambda: params)
    for i in range(6):
        x = torch.randn(5, 3, requires_grad=True)
        weight = torch.randn(5, 4)
        out = step(graphs, fn, params, x, weight)
        x_ref = x.detach().requires_grad_()
        ref = ref_fn(x_ref)
        (ref * weight).sum().backward()
        assert len(fake_capture) == (0 if i < 2 else 1)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(x.grad, x_ref.grad)
        # Gradients accumulate over the calls, as eager ones do.
        for p, q in zip(params[:2], ref_params[:2]):
            torch.testing.assert_close(p.grad, q.grad)
        assert params[2].grad is None
    fake = fake_capture[0]
    assert fake.forwards == 4 and fake.backwards == 4
    # Every output is its own; gradients are not views of the buffers.
    assert out.data_ptr() != fake.outs[0].data_ptr()
    assert x.grad.data_ptr() != fake.input_grads[0].data_ptr()
    assert all(p.grad.data_ptr() != t.data_ptr()
               for p in params[:2] for t in fake.packed)


class _Finish(torch.autograd.Function):
    # a * c + b, c per column: a finish step whose backward pass writes
    # the gradients of a and b into the buffers set as grad_into.
    @staticmethod
    def forward(ctx, a, b, c):
        ctx.save_for_backward(a, c)
        ctx.grad_into = ()
        return a * c + b

    @staticmethod
    def backward(ctx, g):
        a, c = ctx.saved_tensors
        into = list(ctx.grad_into) or [torch.empty_like(a),
                                       torch.empty_like(g)]
        torch.mul(g, c, out=into[0])
        into[1].copy_(g)
        return into[0], into[1], (g * a).sum(0)


def make_two(seed=0):
    # fn returns two tensors, which finish combines.
    fn, params = make(seed)
    c = torch.randn(4, requires_grad=True)

    def body(x):
        out = fn(x)
        return out, out.exp()

    return body, params, c


@pytest.mark.parametrize('writes', [True, False])
def test_a_finish_step_runs_on_the_graphs_outputs(fake_capture, spy,
                                                  writes):
    body, params, c = make_two()
    ref_body, ref_params, ref_c = make_two()
    if writes:  # its backward pass writes into the graph's buffers
        def finish(a, b):
            return _Finish.apply(a, b, c)
    else:  # PyTorch's operators: the gradients are copied in
        def finish(a, b):
            return a * c + b
    views = spy(_graph_training, 'same_view')
    graphs = TrainingGraphReplay(min_calls=1)
    for i in range(4):
        x = torch.randn(5, 3, requires_grad=True)
        weight = torch.randn(5, 4)
        out = graphs(body, (x, ), params, 'key', lambda: params,
                     finish=finish)
        (out * weight).sum().backward()
        x_ref = x.detach().requires_grad_()
        a, b = ref_body(x_ref)
        ((a * ref_c + b) * weight).sum().backward()
        torch.testing.assert_close(out, a * ref_c + b)
        torch.testing.assert_close(x.grad, x_ref.grad)
        for p, q in zip([*params[:2], c], [*ref_params[:2], ref_c]):
            torch.testing.assert_close(p.grad, q.grad)
    (fake, ) = fake_capture
    assert fake.forwards == 3 and fake.backwards == 3
    # The finish step's output is its own, never a buffer of the graph.
    assert all(out.data_ptr() != t.data_ptr() for t in fake.outs)
    assert len(views) == 6  # both gradients, in each backward replay
    written = [a[0].data_ptr() == a[1].data_ptr() for a in views]
    assert written == [writes] * 6


def test_a_cycle_of_more_signatures_than_graphs_stops_capturing(
        fake_capture):
    # Training batches of 4 sizes in turn, 2 graphs kept: without the
    # doubling of the calls needed after a drop, every step from the third
    # round on would capture (and never replay a graph twice).
    fn, params = make()
    ref_fn, ref_params = make()
    graphs = TrainingGraphReplay(max_graphs=2, min_calls=2)
    sizes = (3, 4, 5, 6)
    per_round = []
    for _ in range(30):
        before = len(fake_capture)
        for n in sizes:
            x = torch.randn(n, 3)
            weight = torch.randn(n, 4)
            out = step(graphs, fn, params, x, weight)
            ref = ref_fn(x)
            (ref * weight).sum().backward()
            torch.testing.assert_close(out, ref)
        per_round.append(len(fake_capture) - before)
    for p, q in zip(params[:2], ref_params[:2]):
        torch.testing.assert_close(p.grad, q.grad)
    assert per_round[:2] == [0, 0] and per_round[2] == 4
    assert sum(per_round) <= 16  # 4 per round (112 in all) without it
    assert sum(g.forwards for g in fake_capture) > 30


def test_in_place_updates_keep_the_graph_and_replacements_drop_it(
        fake_capture):
    fn, params = make()
    graphs = TrainingGraphReplay(min_calls=1)
    opt = torch.optim.SGD(params, lr=0.1)
    x = torch.randn(5, 3)
    weight = torch.randn(5, 4)
    for _ in range(4):
        opt.zero_grad()
        out = step(graphs, fn, params, x, weight)
        # The replay computed with the weights of this step.
        torch.testing.assert_close(out, fn(x))
        opt.step()
    assert len(fake_capture) == 1 and fake_capture[0].forwards == 3
    with torch.no_grad():
        params[0].data = params[0].data.clone()  # new storage
    step(graphs, fn, params, x, weight)  # eager: warming up again
    assert len(graphs) == 0 and len(fake_capture) == 1
    step(graphs, fn, params, x, weight)
    assert len(graphs) == 1 and len(fake_capture) == 2


def test_a_call_before_the_last_backward_runs_eagerly(fake_capture):
    fn, params = make()
    ref_fn, ref_params = make()
    graphs = TrainingGraphReplay(min_calls=1)
    x1, x2 = torch.randn(5, 3), torch.randn(5, 3)
    step(graphs, fn, params, x1, 1.0)
    for p in params[:2]:
        p.grad = None
    # The layer applied twice before one backward pass: the second call
    # must not overwrite the activations the first one's backward reads.
    out1 = graphs(fn, (x1, ), params, 'key', lambda: params)
    out2 = graphs(fn, (x2, ), params, 'key', lambda: params)
    assert fake_capture[0].forwards == 1
    (out1 * out2).sum().backward()
    (ref_fn(x1) * ref_fn(x2)).sum().backward()
    for p, q in zip(params[:2], ref_params[:2]):
        torch.testing.assert_close(p.grad, q.grad)
    # Once the backward pass ran, calls replay again; an output dropped
    # without one frees the graph too.
    graphs(fn, (x1, ), params, 'key', lambda: params)
    out = graphs(fn, (x1, ), params, 'key', lambda: params)
    assert fake_capture[0].forwards == 3
    del out
    graphs(fn, (x1, ), params, 'key', lambda: params)
    assert fake_capture[0].forwards == 4


def test_another_signature_before_the_last_backward_runs_eagerly(
        fake_capture):
    # The graphs of one replayer share their memory: while one replay
    # awaits its backward pass, a graph of another signature must neither
    # replay nor be captured (either would reuse its activations' memory).
    fn, params = make()
    ref_fn, ref_params = make()
    graphs = TrainingGraphReplay(min_calls=1)
    x1, x2 = torch.randn(5, 3), torch.randn(7, 3)
    for x in (x1, x2, x1, x2):
        step(graphs, fn, params, x, 1.0)
    assert len(fake_capture) == 2
    for p in params[:2]:
        p.grad = None
    out1 = graphs(fn, (x1, ), params, 'key', lambda: params)
    out2 = graphs(fn, (x2, ), params, 'key', lambda: params)
    assert [fake.forwards for fake in fake_capture] == [2, 1]
    (out1.sum() * out2.sum()).backward()
    (ref_fn(x1).sum() * ref_fn(x2).sum()).backward()
    for p, q in zip(params[:2], ref_params[:2]):
        torch.testing.assert_close(p.grad, q.grad)
    # A third signature is not captured meanwhile either.
    out1 = graphs(fn, (x1, ), params, 'key', lambda: params)
    for _ in range(2):
        graphs(fn, (torch.randn(9, 3), ), params, 'key', lambda: params)
    assert len(fake_capture) == 2
    out1.sum().backward()
    step(graphs, fn, params, x2, 1.0)
    assert [fake.forwards for fake in fake_capture] == [3, 2]


def test_pinned_inputs_are_read_in_place(fake_capture):
    fn, params = make()
    ref_fn, ref_params = make()
    graphs = TrainingGraphReplay(min_calls=2, pin_inputs=True)
    assert 'pin_inputs=True' in repr(graphs)
    assert copy.deepcopy(graphs).pin_inputs  # copies keep the option
    x = torch.randn(5, 3, requires_grad=True)
    for i in range(5):  # eager, eager, captured, replayed, replayed
        weight = torch.randn(5, 4)
        out = step(graphs, fn, params, x, weight)
        (ref_fn(x.detach()) * weight).sum().backward()
        torch.testing.assert_close(out, ref_fn(x.detach()))
        for p, q in zip(params[:2], ref_params[:2]):
            torch.testing.assert_close(p.grad, q.grad)
    (name, ) = graphs._graphs
    (graph, ) = graphs._graphs.values()
    assert isinstance(name, _graph_replay._Pinned)
    assert graph.inputs == [] and graph.pinned == 1
    # The capture read x through a new leaf on its storage.
    (buffer, ) = fake_capture[0].buffers
    assert buffer is not x and buffer.data_ptr() == x.data_ptr()
    # x's gradient is handed to x, accumulated over the five calls.
    assert x.grad is not None and x.grad.shape == x.shape
    # A change in place before the backward pass raises, as it would for
    # an eager call that saved x.
    out = graphs(fn, (x, ), params, 'key', lambda: params)
    assert fake_capture[0].forwards == 4
    with torch.no_grad():
        x.mul_(2)
    with pytest.raises(RuntimeError, match='modified by an inplace'):
        out.sum().backward()
    del out  # (its backward pass would still be to come)
    # Inputs elsewhere get a graph that copies them (the signature's calls
    # are counted already).
    y = x.detach().clone().requires_grad_()
    step(graphs, fn, params, y, 1.0)
    assert len(graphs) == 2 and len(fake_capture) == 2
    assert not isinstance(list(graphs._graphs)[-1], _graph_replay._Pinned)
    assert graphs.kept_keys() == ['key', 'key']
    # Without pin_inputs every graph copies.
    graphs = TrainingGraphReplay(min_calls=2)
    for _ in range(4):
        step(graphs, fn, params, x, 1.0)
    assert [graph.pinned for graph in graphs._graphs.values()] == [0]


def test_a_second_backward_through_a_replay_is_refused(fake_capture):
    fn, params = make()
    graphs = TrainingGraphReplay(min_calls=1)
    x = torch.randn(5, 3)
    step(graphs, fn, params, x, 1.0)
    out = graphs(fn, (x, ), params, 'key', lambda: params)
    assert fake_capture[0].forwards == 1
    loss = out.sum()
    loss.backward(retain_graph=True)
    # The backward graph reused the activations' memory.
    with pytest.raises(RuntimeError, match='second backward pass'):
        loss.backward()


def test_inputs_without_gradients_and_signatures(fake_capture):
    fn, params = make()
    ref_fn, ref_params = make()
    graphs = TrainingGraphReplay(max_graphs=1, min_calls=1)
    x = torch.randn(5, 3)
    for _ in range(3):
        step(graphs, fn, params, x, 1.0)
    (graph, ) = graphs._graphs.values()
    # x gets no gradient buffer; w and b get packed slots, the unused
    # tensor none.
    assert graph.input_grads == [None]
    assert [slot is None for slot in graph.layout] == [False, False, True]
    xg = x.clone().requires_grad_()
    for _ in range(3):  # another signature: x requires a gradient
        step(graphs, fn, params, xg, 1.0)
    assert len(fake_capture) == 2 and len(graphs) == 1
    (graph, ) = graphs._graphs.values()
    assert graph.input_grads[0].shape == x.shape
    x_ref = x.clone().requires_grad_()
    for _ in range(3):
        ref_fn(x_ref).sum().backward()
    torch.testing.assert_close(xg.grad, x_ref.grad)


def test_a_call_that_cannot_be_captured_stays_eager(monkeypatch):
    calls = []

    def refuse(*args):
        calls.append(1)
        raise RuntimeError('operation not permitted when stream is '
                           'capturing')

    monkeypatch.setattr(_graph_training, 'capture_training', refuse)
    fn, params = make()
    graphs = TrainingGraphReplay(min_calls=1)
    x = torch.randn(5, 3)
    for _ in range(5):
        out = step(graphs, fn, params, x, 1.0)
    assert len(calls) == 1 and len(graphs) == 0
    torch.testing.assert_close(out, fn(x))
    asked = []
    graphs = TrainingGraphReplay(min_calls=1)
    for _ in range(4):
        out = graphs(fn, (x, ), params, 'key', lambda: params,
                     lambda: asked.append(1) or False)
        out.sum().backward()
    assert len(asked) == 1 and len(calls) == 1


def test_copies_start_empty(fake_capture):
    fn, params = make()
    graphs = TrainingGraphReplay(min_calls=1)
    for _ in range(2):
        step(graphs, fn, params, torch.randn(5, 3), 1.0)
    twin = copy.deepcopy(graphs)
    assert len(graphs) == 1 and len(twin) == 0 and twin.min_calls == 1


def test_pack_and_unpack_keep_every_gradient():
    grads = [torch.randn(3, 4), None, torch.randn(5).double(),
             torch.randn(2, 2, 2), torch.randn(1).double()]
    packed, layout = pack(grads)
    assert [t.dtype for t in packed] == [torch.float32, torch.float64]
    assert [t.numel() for t in packed] == [20, 6]
    out = unpack(packed, layout)
    assert out[1] is None
    for a, b in zip(grads, out):
        if a is not None:
            assert b.shape == a.shape and torch.equal(a, b)
            assert b.is_contiguous()


def test_saved_tensor_hooks_are_seen():
    from samsa_geo.nn.conv._graph_training import (
        saved_tensor_hooks as _saved_tensor_hooks,
    )
    assert not _saved_tensor_hooks()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        assert _saved_tensor_hooks()


def test_captures_read_parameters_through_new_leaves():
    # aliased(): inside the block each module reads a new leaf on the
    # parameter's storage (its own gradient node); afterwards, and after
    # an error, the module holds its parameter again.
    from samsa_geo.nn.conv._graph_training import aliased
    lin = torch.nn.Linear(3, 2)
    params = [lin.weight, lin.bias]
    slots = [(lin, 'weight'), (lin, 'bias')]
    x = torch.randn(5, 3)
    ref = torch.autograd.grad(lin(x).square().sum(), params)
    with aliased(params, slots) as leaves:
        assert [t.data_ptr() for t in leaves] == \
            [p.data_ptr() for p in params]
        assert all(a is not p and a.is_leaf and a.requires_grad
                   for a, p in zip(leaves, params))
        assert lin.weight is leaves[0] and lin.bias is leaves[1]
        grads = torch.autograd.grad(lin(x).square().sum(), leaves)
    assert lin.weight is params[0] and lin.bias is params[1]
    assert all(p.grad is None for p in params)
    for g, r in zip(grads, ref):
        assert torch.equal(g, r)
    with pytest.raises(KeyError):
        with aliased(params, slots):
            raise KeyError('inside')
    assert lin.weight is params[0] and lin.bias is params[1]
    with aliased(params, None) as same:
        assert same == params


def test_no_garbage_collection_during_a_training_capture(fake_capture,
                                                         monkeypatch):
    # As for inference captures (see test_graph_replay.py): the forward
    # and backward captures run with automatic collection off, and it is
    # on again after.
    import gc
    seen = []
    capture = _graph_training.capture_training  # the stand-in's

    def capture_training(*args):
        seen.append(gc.isenabled())
        return capture(*args)

    monkeypatch.setattr(_graph_training, 'capture_training',
                        capture_training)
    fn, params = make()
    graphs = TrainingGraphReplay(min_calls=1)
    was_enabled = gc.isenabled()
    gc.enable()
    try:
        for _ in range(3):
            step(graphs, fn, params, torch.randn(5, 3), torch.randn(5, 4))
        assert gc.isenabled()
    finally:
        (gc.enable if was_enabled else gc.disable)()
    assert seen == [False]
