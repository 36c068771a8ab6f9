"""SamsaConv's CUDA graphs of inference calls against eager calls, on the
GPU machine (`pytest -m gpu tests/gpu`)."""
import copy

import pytest
import torch

from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA'),
]


def _batch(sizes, C):
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    return torch.randn(batch.numel(), C, device='cuda'), batch.cuda()


def _ragged_layer():
    # A layer in evaluation, ragged sets (one empty) and their hints.
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().eval()
    x, batch = _batch([300, 0, 1024, 5, 700], 64)
    return conv, x, batch, dict(num_graphs=5, max_num_nodes=1024)


def _eager(conv, *args, **kwargs):
    with config.attention_config(cuda_graphs=False), torch.no_grad():
        return conv(*args, **kwargs)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('sizes', [[1024] * 8, [300, 0, 1024, 5, 700]])
@pytest.mark.parametrize('norm,norm_first', [
    ('batch_norm', False), ('layer_norm', False), ('layer_norm', True)])
def test_replays_equal_eager_calls_bit_for_bit(dtype, sizes, norm,
                                               norm_first):
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32, norm=norm,
                     norm_first=norm_first).cuda()
    conv.train()
    with torch.no_grad():  # running statistics that are not 0 and 1
        x, batch = _batch(sizes, 64)
        conv(x, None, batch)
    conv.eval()
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    outs, refs, kept = [], [], []
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16,
                                         enabled=dtype == torch.bfloat16):
        for _ in range(6):  # eager, eager, captured, replayed ...
            # (Kept: every call's inputs at new addresses, copied in.)
            x, batch = _batch(sizes, 64)
            kept.append((x, batch))
            outs.append(conv(x, None, batch, **hints))
            refs.append(_eager(conv, x, None, batch, **hints))
    assert len(conv._graphs) == 1
    assert conv._graphs._graphs[next(iter(conv._graphs._graphs))].inputs
    for out, ref in zip(outs, refs):  # no output is overwritten later
        if norm == 'layer_norm':
            # Graph-mode sums are atomic adds, in any order: eager calls
            # differ in the last bits too, and under bf16 the copy the
            # MLP reads may round the other way, and the scores of a
            # near tie with it (one key of a set).
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            assert (out - ref).norm() <= tol * ref.norm()
        else:
            assert torch.equal(out, ref)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_inputs_read_in_place_equal_eager_calls(dtype):
    # The same tensors called again: the graph reads them where they are,
    # values written in place between calls included; a tensor freed and
    # another one made at its address reads the new one's values.
    from samsa_geo.nn.conv._graph_replay import _Pinned
    conv, x, batch, hints = _ragged_layer()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16,
                                         enabled=dtype == torch.bfloat16):
        for i in range(6):
            x.normal_()
            out = conv(x, None, batch, **hints)
            assert torch.equal(out, _eager(conv, x, None, batch, **hints))
        (name, entry), = conv._graphs._graphs.items()
        assert isinstance(name, _Pinned) and entry.inputs == []
        ptr = x.data_ptr()
        del x, out
        x = torch.randn(1, 1, device='cuda').expand(2029, 64).clone()
        assert torch.equal(conv(x, None, batch, **hints),
                           _eager(conv, x, None, batch, **hints))
        assert x.data_ptr() != ptr or len(conv._graphs) == 1


class _CountedGraph:
    # A captured graph whose replays are counted.
    def __init__(self, graph):
        self.graph, self.replays = graph, 0

    def replay(self):
        self.replays += 1
        self.graph.replay()


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_speculative_replays_serve_calls_and_stale_ones_go_unread(dtype):
    # Repeated calls replay once each, before the key and the stamp; a
    # parameter changed in place or replaced (its old storage released to
    # the driver) leaves one replay unread, and every output is the eager
    # call's.
    conv, x, batch, hints = _ragged_layer()
    with torch.no_grad(), torch.autocast('cuda', dtype=torch.bfloat16,
                                         enabled=dtype == torch.bfloat16):
        def check():
            out = conv(x, None, batch, **hints)
            assert torch.equal(out, _eager(conv, x, None, batch, **hints))

        for _ in range(3):  # eager, eager, captured
            check()
        (_, entry), = conv._graphs._graphs.items()
        entry.graph = counted = _CountedGraph(entry.graph)
        for i in range(3):
            check()
            assert counted.replays == 1 + i
            assert conv._graphs._spent[2] is entry
        conv.mlp[0].weight.mul_(0.5)
        check()
        assert counted.replays == 4 and len(conv._graphs) == 0
        for _ in range(3):  # captured again after two eager calls
            check()
        (_, entry), = conv._graphs._graphs.items()
        entry.graph = counted = _CountedGraph(entry.graph)
        check()
        assert counted.replays == 1
        conv.mlp[0].weight = torch.nn.Parameter(conv.mlp[0].weight * 2)
        torch.cuda.empty_cache()
        check()  # the replay read the old weight, held by the graph
        assert counted.replays == 2 and len(conv._graphs) == 0
        del entry, counted
        for _ in range(4):
            check()
    torch.cuda.synchronize()


def test_parameter_updates_and_modes_capture_again():
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().eval()
    x, batch = _batch([500] * 4, 64)
    hints = dict(num_graphs=4, max_num_nodes=500)
    opt = torch.optim.Adam(conv.parameters(), lr=1e-2)

    def infer():
        with torch.no_grad():
            return conv(x, None, batch, **hints)

    for _ in range(4):
        infer()
    assert len(conv._graphs) == 1
    before = infer()
    # An optimiser step (in place): the graph is dropped, the outputs
    # are the new weights'.
    conv.train()
    conv(x, None, batch, **hints).square().mean().backward()
    opt.step()
    conv.eval()
    assert len(conv._graphs) == 0
    for _ in range(4):
        out = infer()
        assert torch.equal(out, _eager(conv, x, None, batch, **hints))
    assert not torch.equal(out, before)
    # An in-place change in evaluation mode (load_state_dict copies).
    state = {k: v.clone() for k, v in conv.state_dict().items()}
    state['mlp.0.weight'] *= 2
    conv.load_state_dict(state)
    for _ in range(4):
        assert torch.equal(infer(), _eager(conv, x, None, batch, **hints))
    assert len(conv._graphs) == 1
    # A dropped attention cast (the attention alone switched modes).
    for _ in range(3):
        infer()
    conv.attn.train().eval()
    assert torch.equal(infer(), _eager(conv, x, None, batch, **hints))
    # A copy starts without graphs and computes the same.
    twin = copy.deepcopy(conv)
    assert len(twin._graphs) == 0
    with torch.no_grad():
        assert torch.equal(twin(x, None, batch, **hints), infer())
    conv.double()
    assert len(conv._graphs) == 0


def test_calls_that_must_run_python_stay_eager():
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().eval()
    x, batch = _batch([500] * 4, 64)
    hints = dict(num_graphs=4, max_num_nodes=500)
    seen = []
    handle = conv.attn.register_forward_hook(
        lambda module, args, out: seen.append(1))
    with torch.no_grad():
        for _ in range(4):
            conv(x, None, batch, **hints)
    handle.remove()
    assert len(seen) == 4 and len(conv._graphs) == 0
    for _ in range(4):  # gradients: autograd records the calls
        out = conv(x, None, batch, **hints)
    assert out.requires_grad and len(conv._graphs) == 0
    with torch.no_grad():
        for _ in range(4):  # no sizes given: the sizes are read back
            conv(x, None, batch)
        for _ in range(4):
            conv(x, None, batch, return_attention_weights=True, **hints)
        with config.attention_config(cuda_graphs=False):
            for _ in range(4):
                conv(x, None, batch, **hints)
    assert len(conv._graphs) == 0


def test_replays_never_sync_and_keep_four_graphs():
    torch.manual_seed(0)
    conv = SamsaConv(64, None, heads=4, k=32).cuda().eval()
    inputs = [_batch([n] * 2, 64) for n in (100, 200, 300, 400, 500)]
    with torch.no_grad():
        for _ in range(3):
            for x, batch in inputs:
                conv(x, None, batch, num_graphs=2,
                     max_num_nodes=x.size(0) // 2)
        assert len(conv._graphs) == 4  # the least recently used dropped
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode('error')
        try:
            for x, batch in inputs[1:]:
                conv(x, None, batch, num_graphs=2,
                     max_num_nodes=x.size(0) // 2)
        finally:
            torch.cuda.set_sync_debug_mode('default')
