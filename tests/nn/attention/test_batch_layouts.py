"""Every sorted batch vector PyG can produce, fuzzed: empty sets at the
start, middle or end, gaps, singletons, n < k, n = k and large n. The
padded and packed layouts, the three kinds of size hints and a per-set
reference must agree."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samsa_geo.nn import SamsaAttention

K = 6
MODES = [
    dict(sampling='hard'),
    dict(sampling='soft', temperature=0.5),
    dict(sampling='full'),
    dict(sampling='hard', num_registers=2),
    dict(sampling='hard', score='maxout', normalization='leaky'),
    dict(sampling='hard', relative_bias=True),
    dict(sampling='hard', k=0.5),
    dict(sampling='sft'),
    dict(sampling='sft', normalization='leaky', relative_bias=True),
    dict(sampling='hard', summary=True, num_registers=2),
    dict(sampling='soft', summary=True, normalization='leaky',
         relative_bias=True),
]
# Set sizes around k: empty, single, below, at and above k, and large.
SIZE = st.sampled_from([0, 0, 1, 2, K - 1, K, K + 1, 17, 40])
LAYOUT = st.tuples(st.lists(SIZE, min_size=1, max_size=7),
                   st.integers(0, 2))  # sizes, trailing empty sets


def _attn(mode):
    mode = dict(mode)
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=mode.pop('k', K), tile_size=8,
                          **mode)
    if attn.rel_bias is not None:
        with torch.no_grad():
            for lin in (attn.rel_bias.lin_scale, attn.rel_bias.lin_bias):
                lin.weight.normal_(std=0.5)
    return attn


def _inputs(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n, ), i, dtype=torch.long)
                       for i, n in enumerate(sizes)])
    N = batch.numel()
    return (torch.randn(N, 16, generator=g), batch,
            torch.randn(N, 3, generator=g))


def _hints(sizes, trailing):
    """The three ways a caller may describe the batch."""
    B = len(sizes) + trailing
    return [dict(), dict(num_graphs=B),
            dict(num_graphs=B, max_num_nodes=max(sizes))]


@pytest.mark.parametrize('mode', MODES, ids=lambda m: '-'.join(
    f'{k}={v}' for k, v in m.items()))
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(layout=LAYOUT)
def test_layouts_and_hints_agree_with_per_set_reference(mode, layout):
    sizes, trailing = layout
    attn = _attn(mode).eval()
    x, batch, pos = _inputs(sizes)
    B = len(sizes) + trailing
    outs = []
    for padded in (True, False):
        attn.padded = padded
        for hints in _hints(sizes, trailing):
            out, idx = attn(x, batch, pos=pos, return_indices=True, **hints)
            assert out.shape == x.shape and torch.isfinite(out).all()
            outs.append(out)
            # Unused slots, and every slot of an empty set, read -1.
            for b, n in enumerate(sizes[:idx.size(0)]):
                kept = (idx[b] != -1).sum(-1)
                if n == 0 and (not attn.num_registers or not x.numel()):
                    assert (kept == 0).all()
                else:
                    assert (kept > 0).all()
            if hints.get('num_graphs') == B:
                assert idx.size(0) == B
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], atol=1e-5, rtol=1e-4)
    # Each set alone (batch=None) gives its rows of the batched output.
    ptr = 0
    for n in sizes:
        if n > 0:
            ref = attn(x[ptr:ptr + n], pos=pos[ptr:ptr + n])
            torch.testing.assert_close(outs[0][ptr:ptr + n], ref,
                                       atol=1e-5, rtol=1e-4)
        ptr += n


@pytest.mark.parametrize('mode', MODES[:4] + MODES[-4:-3] + MODES[-2:],
                         ids=lambda m: '-'.join(f'{k}={v}'
                                                for k, v in m.items()))
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(layout=LAYOUT)
def test_training_layouts_agree_and_gradients_are_finite(mode, layout):
    sizes, trailing = layout
    attn = _attn(mode).train()
    x, batch, pos = _inputs(sizes)
    results = []
    for padded in (True, False):
        attn.padded = padded
        for hints in _hints(sizes, trailing)[1:]:  # one number of sets
            torch.manual_seed(1)  # the same Gumbel noise in every layout
            xg = x.clone().requires_grad_()
            out = attn(xg, batch, pos=pos, **hints)
            params = [p for p in attn.parameters() if p.requires_grad]
            grads = torch.autograd.grad(out.square().sum(), [xg] + params,
                                        allow_unused=True)
            for g in grads:
                assert g is None or torch.isfinite(g).all()
            results.append((out, grads[0]))
    for out, gx in results[1:]:
        torch.testing.assert_close(out, results[0][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(gx, results[0][1], atol=1e-5, rtol=1e-4)


def test_pyg_batch_with_empty_graphs():
    # Batch.from_data_list with an empty graph in the middle and at the
    # start: batch = [1, 1, ..., 3, 3, ...]; the output equals each
    # graph's own output.
    from torch_geometric.data import Batch, Data

    attn = _attn(dict(sampling='hard')).eval()
    g = torch.Generator().manual_seed(0)
    graphs = [Data(x=torch.randn(n, 16, generator=g), num_nodes=n)
              for n in (0, 5, 0, 9, 1)]
    data = Batch.from_data_list(graphs)
    assert data.batch.tolist() == [1] * 5 + [3] * 9 + [4]
    for hints in (dict(), dict(num_graphs=data.num_graphs)):
        out = attn(data.x, data.batch, **hints)
        for i, graph in enumerate(graphs):
            if graph.num_nodes:
                rows = out[data.ptr[i]:data.ptr[i + 1]]
                torch.testing.assert_close(rows, attn(graph.x), atol=1e-5,
                                           rtol=1e-4)


def test_no_tokens_at_all():
    attn = _attn(dict(sampling='hard'))
    x = torch.randn(0, 16, requires_grad=True)
    out, idx = attn(x, torch.zeros(0, dtype=torch.long), num_graphs=3,
                    return_indices=True)
    assert out.shape == (0, 16) and idx.shape == (3, 2, 0)
    out.sum().backward()


def test_wrong_hints_are_refused():
    attn = _attn(dict(sampling='hard'))
    x, batch, _ = _inputs([4, 0, 7])
    with pytest.raises(ValueError, match="'num_graphs' >= 3"):
        attn(x, batch, num_graphs=2)
    with pytest.raises(ValueError, match="'max_num_nodes' >= 7"):
        attn(x, batch, num_graphs=3, max_num_nodes=5)
    with pytest.raises(TypeError, match="'num_graphs'"):
        attn(x, batch, num_graphs=2.5)
    with pytest.raises(ValueError, match='sorted'):
        attn(x, batch.flip(0))
