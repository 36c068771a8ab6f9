import os.path as osp
import sys

import pytest
import torch

from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import config
from samsa_geo.nn.conv import _graph_replay

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', '..', 'benchmarks'))
from count_ops import _CudaStandIn  # noqa: E402
from graph_inputs import counted_replays, graph_kinds, run_loop  # noqa: E402


class _Graph:
    # A stand-in CUDA graph: a replay runs the function again on the
    # tensors it was captured with (the inputs themselves, for a graph that
    # reads them in place) into its output buffers.
    def __init__(self, fn, buffers):
        self.fn = fn
        self.buffers = [t.as_subclass(torch.Tensor) for t in buffers]
        with config.attention_config(cuda_graphs=False):
            self.out = fn(*self.buffers)

    def replay(self):
        with config.attention_config(cuda_graphs=False):
            for buf, t in zip(self.out, self.fn(*self.buffers)):
                buf.copy_(t)

    def pool(self):
        return (0, 0)


@pytest.fixture
def stand_in_graphs(monkeypatch):
    def capture(fn, buffers, pool):
        graph = _Graph(fn, buffers)
        return graph, graph.out

    monkeypatch.setattr(_graph_replay, 'capture', capture)
    monkeypatch.setattr(torch.cuda, 'is_current_stream_capturing',
                        lambda: False)


def test_loops_count_in_place_replays_copies_and_eager_calls(
        stand_in_graphs, monkeypatch):
    # The first layer's input is a stand-in CUDA tensor (the second one's,
    # the first one's output, is not: it runs eagerly). One tensor every
    # step is read in place; new tensors, all kept, are copied in.
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        SamsaConv(16, None, heads=2, k=4) for _ in range(2)).eval()
    for layer in layers:
        monkeypatch.setattr(layer.attn, '_runs_fused', lambda *a: True)
    batch = torch.arange(2).repeat_interleave(8)
    hints = dict(num_graphs=2, max_num_nodes=8)
    x = torch.randn(16, 16).as_subclass(_CudaStandIn)
    kept = []

    def fresh():
        kept.append(torch.randn(16, 16).as_subclass(_CudaStandIn))
        return kept[-1]

    with torch.no_grad():
        for make_input, kind in ((lambda: x, 'in_place'), (fresh, 'copies')):
            for layer in layers:
                layer._graphs.clear()
            run_loop(layers, make_input, batch, hints, 3)
            with counted_replays() as counts:
                run_loop(layers, make_input, batch, hints, 5)
            other = 'copies' if kind == 'in_place' else 'in_place'
            assert counts[kind] == 5 and counts[other] == 0
            assert graph_kinds(layers[0]) == [kind]
            assert graph_kinds(layers[1]) == []
            # The replayed first layer gives the eager layer's output.
            h = make_input()
            out = layers[0](h, None, batch, **hints)
            with config.attention_config(cuda_graphs=False):
                ref = layers[0](h.as_subclass(torch.Tensor), None, batch,
                                **hints)
            assert torch.allclose(out, ref, atol=1e-6)


def test_training_loops_count_in_place_replays(fake_training_capture,
                                               monkeypatch):
    # A training loop of two layers on one stand-in CUDA tensor: the
    # first layer's graph reads it in place; the second layer's input
    # (the first one's output) is a plain tensor and runs eagerly.
    monkeypatch.setattr(torch.cuda, 'is_current_stream_capturing',
                        lambda: False)
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        SamsaConv(16, None, heads=2, k=16) for _ in range(2)).train()
    batch = torch.arange(2).repeat_interleave(8)
    hints = dict(num_graphs=2, max_num_nodes=8)
    x = torch.randn(16, 16).as_subclass(_CudaStandIn)
    grad = torch.randn(16, 16)
    run_loop(layers, lambda: x, batch, hints, 3, grad)
    with counted_replays() as counts:
        run_loop(layers, lambda: x, batch, hints, 4, grad)
    assert counts == {'in_place': 4, 'copies': 0}
    assert graph_kinds(layers[0], training=True) == ['in_place']
    assert graph_kinds(layers[1], training=True) == []
    assert graph_kinds(layers[0]) == []  # no inference graph
    # The replayed layer's output is the eager layer's (k covers the
    # sets: no sampling noise).
    out = layers[0](x, None, batch, **hints)
    assert out.grad_fn.graph.pinned == 2  # x and batch, in place
    with config.attention_config(cuda_graphs=False):
        ref = layers[0](x.as_subclass(torch.Tensor), None, batch, **hints)
    torch.testing.assert_close(out, ref)
