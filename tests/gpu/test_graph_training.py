"""SamsaConv's CUDA graphs of training calls (forward and backward) against
eager calls, on the GPU machine (`pytest -m gpu tests/gpu`)."""
import pytest
import torch
import torch.utils.checkpoint

from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import config
from samsa_geo.nn.conv import _graph_replay, _graph_training, samsa_conv

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _batch(sizes, C, seed):
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x = torch.randn(batch.numel(), C, generator=g).cuda().requires_grad_()
    return x, batch.cuda()


def _step(conv, x, batch, hints, seed, graphs, dtype):
    # One seeded training call and its backward pass: the output, the
    # input's gradient and the parameters' gradients.
    torch.manual_seed(seed)
    x = x.detach().requires_grad_()
    conv.zero_grad(set_to_none=True)
    with config.attention_config(cuda_graphs=graphs), torch.autocast(
            'cuda', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        out = conv(x, None, batch, **hints)
    out.float().square().mean().backward()
    return out.detach(), x.grad, [p.grad for p in conv.parameters()]


def _assert_close(a, b, dtype, rel=5e-3):
    if dtype == torch.float32:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        return
    # bf16: the backward's atomic sums land in any order, so a few
    # elements round the other way.
    assert a.shape == b.shape
    err = (a.float() - b.float()).norm()
    assert err <= rel * b.float().norm() + 1e-6, (err, b.float().norm())


def _steps_equal_eager_steps(conv, sizes, dtype):
    # Six training steps of conv on sets of these sizes (eager, eager,
    # captured, replayed ...), each against an eager step with the same
    # noise and dropout masks (the same seed before each) and followed by
    # an optimiser step (in place: the graph stays and reads the new
    # values); returns the last step's output.
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    opt = torch.optim.SGD(conv.parameters(), lr=1e-2)
    for i in range(6):
        x, batch = _batch(sizes, 64, i)
        ref = _step(conv, x, batch, hints, i, False, dtype)
        out = _step(conv, x, batch, hints, i, True, dtype)
        for a, b in zip([out[0], out[1], *out[2]],
                        [ref[0], ref[1], *ref[2]]):
            _assert_close(a, b, dtype)
        opt.step()
    return out[0]


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('sizes', [[512] * 8, [300, 0, 1024, 5, 700]])
@pytest.mark.parametrize('norm,norm_first', [
    ('batch_norm', False), ('layer_norm', True)])
def test_training_replays_equal_eager_steps(dtype, sizes, norm,
                                            norm_first):
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32, norm=norm, dropout=0.1,
                     norm_first=norm_first).cuda().train()
    _steps_equal_eager_steps(conv, sizes, dtype)
    assert len(conv._train_graphs) == 1
    (graph, ) = conv._train_graphs._graphs.values()
    assert graph.stamp is not None


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_the_last_step_runs_after_the_replay_and_writes_its_gradients(
        dtype, monkeypatch):
    # Where the last step is residual_batch_norm (from
    # TRAINING_BATCH_NORM_MIN_ELEMENTS values, here all), it runs after
    # the forward replay on the graph's outputs and its backward pass
    # writes the gradients of Y and of MLP(Y) into the backward graph's
    # buffers: the steps equal eager ones, the output is no buffer of the
    # graph, and no gradient is copied in (in float32, MLP(Y)'s gradient
    # is Y's, copied into its own buffer).
    monkeypatch.setattr(samsa_conv, 'TRAINING_BATCH_NORM_MIN_ELEMENTS', 0)
    written = []  # per gradient handed to a backward replay: in place?
    same_view = _graph_training.same_view
    monkeypatch.setattr(_graph_training, 'same_view', lambda a, b: (
        written.append(same_view(a, b)) or written[-1]))
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32, dropout=0.1).cuda().train()
    out = _steps_equal_eager_steps(conv, [300, 0, 1024, 5, 700], dtype)
    (graph, ) = conv._train_graphs._graphs.values()
    assert graph.finished and len(graph.outs) == 2
    assert [t.dtype for t in graph.grad_outs] == [torch.float32, dtype]
    assert all(out.data_ptr() != t.data_ptr() for t in graph.outs)
    assert written == [True, dtype == torch.bfloat16] * 4  # 4 replays


def _captured(sizes):
    # A layer whose training call on one batch of sets is captured.
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().train()
    x, batch = _batch(sizes, 64, 0)
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    for _ in range(3):
        conv(x, None, batch, **hints).sum().backward()
    assert len(conv._train_graphs) == 1
    return conv, x, batch, hints


def test_capture_while_the_last_steps_graph_is_alive():
    # A training loop holds the last step's output (and so its autograd
    # graph, with the parameters' gradient nodes made on the default
    # stream) while the next step runs: the capture reads the parameters
    # through new leaves and succeeds, in float32 and under autocast.
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        conv = SamsaConv(64, None, heads=4, k=32).cuda().train()
        x, batch = _batch([400] * 4, 64, 0)
        hints = dict(num_graphs=4, max_num_nodes=400)
        out = None
        for _ in range(4):
            with torch.autocast('cuda', dtype=torch.bfloat16,
                                enabled=dtype == torch.bfloat16):
                out = conv(x, None, batch, **hints)
            out.float().sum().backward()
        assert len(conv._train_graphs) == 1
        assert not conv._train_graphs._failed
        torch.empty(1, device='cuda').uniform_()  # the generator works


def test_training_replays_never_sync_and_accumulate():
    conv, x, batch, hints = _captured([400] * 4)
    conv.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(2):  # two replays (the same noise), summed
            torch.manual_seed(1)
            conv(x, None, batch, **hints).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode('default')
    twice = [p.grad.clone() for p in conv.parameters()]
    conv.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    conv(x, None, batch, **hints).sum().backward()
    for g, once in zip(twice, conv.parameters()):
        torch.testing.assert_close(g, 2 * once.grad)


def test_a_layer_applied_twice_runs_its_second_call_eagerly():
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32, norm='layer_norm',
                     norm_kwargs={'mode': 'node'}).cuda().train()
    x, batch = _batch([256] * 4, 64, 0)
    hints = dict(num_graphs=4, max_num_nodes=256)

    def loss(graphs):
        conv.zero_grad(set_to_none=True)
        with config.attention_config(cuda_graphs=graphs):
            out = conv(conv(x, None, batch, **hints), None, batch, **hints)
        out.square().mean().backward()
        return [p.grad for p in conv.parameters()]

    for _ in range(3):
        conv(x, None, batch, **hints).sum().backward()
    assert len(conv._train_graphs) == 1
    # The sampling noise differs between the two ways; with k at least
    # the set size every token is kept, and the gradients are equal.
    conv.attn.k = 256
    for _ in range(3):
        loss(True)
    for g, r in zip(loss(True), loss(False)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_two_signatures_before_one_backward_equal_eager_steps():
    # One layer's graphs share their memory: while the first call's
    # replay awaits its backward pass, a call of the other signature must
    # not replay (its graph's activations may take the same memory).
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=512, norm='layer_norm',
                     norm_kwargs={'mode': 'node'}).cuda().train()
    calls = [(*_batch([256] * 4, 64, 0),
              dict(num_graphs=4, max_num_nodes=256)),
             (*_batch([300] * 2, 64, 1),
              dict(num_graphs=2, max_num_nodes=300))]
    for _ in range(3):
        for x, batch, hints in calls:
            conv(x, None, batch, **hints).sum().backward()
    assert len(conv._train_graphs) == 2

    def grads(graphs):
        conv.zero_grad(set_to_none=True)
        for x, _, _ in calls:
            x.grad = None
        with config.attention_config(cuda_graphs=graphs):
            loss = sum(conv(x, None, batch, **hints).square().mean()
                       for x, batch, hints in calls)
        loss.backward()
        return [p.grad for p in conv.parameters()] + [
            x.grad for x, _, _ in calls]

    # k covers every set: no sampling noise, the same values both ways.
    for g, r in zip(grads(True), grads(False)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_a_loops_input_is_read_in_place_and_left_to_the_caller():
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().train()
    x, batch = _batch([512] * 4, 64, 0)
    hints = dict(num_graphs=4, max_num_nodes=512)
    opt = torch.optim.SGD(conv.parameters(), lr=1e-2)
    for i in range(5):  # the same tensor: eager, eager, captured, ...
        ref = _step(conv, x, batch, hints, i, False, torch.float32)
        out = _step(conv, x, batch, hints, i, True, torch.float32)
        for a, b in zip([out[0], out[1], *out[2]],
                        [ref[0], ref[1], *ref[2]]):
            _assert_close(a, b, torch.float32)
        opt.step()
    (name, ) = conv._train_graphs._graphs
    (graph, ) = conv._train_graphs._graphs.values()
    assert isinstance(name, _graph_replay._Pinned)
    assert graph.inputs == [] and graph.pinned == 2
    # Changed in place before its backward pass: refused, as eagerly.
    xg = x.detach().requires_grad_()
    out = conv(xg, None, batch, **hints)
    with torch.no_grad():
        xg.add_(1)
    with pytest.raises(RuntimeError, match='modified by an inplace'):
        out.sum().backward()
    del out
    # The graph keeps no reference to the inputs it reads: their memory
    # is freed with them.
    y = torch.randn(2048, 64, device='cuda')
    for _ in range(3):
        conv(y, None, batch, **hints).sum().backward()
    assert len(conv._train_graphs) == 2
    assert all(isinstance(name, _graph_replay._Pinned)
               for name in conv._train_graphs._graphs)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    del y
    assert before - torch.cuda.memory_allocated() == 2048 * 64 * 4


def test_calls_that_must_run_python_train_eagerly():
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().train()
    x, batch = _batch([300] * 2, 64, 0)
    hints = dict(num_graphs=2, max_num_nodes=300)

    def steps(n=4, **kwargs):
        for _ in range(n):
            conv(x, None, batch, **kwargs).sum().backward()

    conv.attn.lin_q.weight.requires_grad_(False)  # a frozen parameter
    steps(**hints)
    conv.attn.lin_q.weight.requires_grad_(True)
    handle = conv.mlp[0].register_full_backward_hook(lambda *args: None)
    steps(**hints)
    handle.remove()
    steps()  # no sizes given
    with torch.autograd.set_detect_anomaly(True):
        steps(**hints)
    for _ in range(4):  # checkpointing recomputes the saved tensors
        torch.utils.checkpoint.checkpoint(
            conv, x, None, batch, use_reentrant=False,
            **hints).sum().backward()
    assert len(conv._train_graphs) == 0
    steps(**hints)
    assert len(conv._train_graphs) == 1
    conv.mlp[0].weight = torch.nn.Parameter(conv.mlp[0].weight.clone())
    steps(1, **hints)  # a new parameter: warming up again
    assert len(conv._train_graphs) == 0


def test_a_second_backward_through_a_replay_is_refused():
    conv, x, batch, hints = _captured([300] * 2)
    loss = conv(x, None, batch, **hints).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match='second backward pass'):
        loss.backward()


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_training_replays_with_packed_kernels_equal_eager_sdpa(dtype):
    # Small ragged sets kept whole (the exact path): the captured and
    # replayed calls with config.packed_attention on equal eager steps of
    # the padded SDPA.
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().train()
    sizes = [20, 0, 32, 5, 17] * 4
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    opt = torch.optim.SGD(conv.parameters(), lr=1e-2)
    for i in range(6):
        x, batch = _batch(sizes, 64, i)
        ref = _step(conv, x, batch, hints, i, False, dtype)
        with config.attention_config(packed_attention=True):
            out = _step(conv, x, batch, hints, i, True, dtype)
        for a, b in zip([out[0], out[1], *out[2]],
                        [ref[0], ref[1], *ref[2]]):
            if b is None:
                assert a is None
                continue
            if dtype == torch.float32:  # another summation order
                torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
            else:  # other kernels: bf16 probabilities rounded elsewhere
                _assert_close(a, b, dtype, rel=2e-2)
        opt.step()
    assert len(conv._train_graphs) == 1
