"""The fused inference path of SamsaAttention (segmented top-k kernel and
gather-attention kernel), run on CPU by Triton's interpreter against the
unfused path; ``tests/gpu`` runs the same comparison compiled on CUDA."""
import collections
import importlib
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from samsa_geo.nn import SamsaConv
from samsa_geo.nn.attention import SamsaAttention, config

ATTENTION = 'samsa_geo.nn.attention.samsa_attention'

pytestmark = pytest.mark.usefixtures('fused_inference_on')


@pytest.fixture
def fused(monkeypatch):
    """The fused path served on the CPU (by Triton's interpreter)."""
    pytest.importorskip('triton')
    if os.environ.get('TRITON_INTERPRET') != '1':  # set by conftest.py
        pytest.skip('Triton interpreter not enabled (a GPU is present)')
    module = importlib.import_module(ATTENTION)
    monkeypatch.setattr(module, 'triton_serves', lambda device: True)
    return module


def _batch(sizes, C=16):
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    hints = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    return torch.randn(batch.numel(), C), batch, hints


def _stable_top(score, reg, sizes, k):
    # Reference: per set and head, the first k of a stable descending sort
    # (ties: lower candidate index), as ids (registers -2 - r).
    out, start = [], 0
    for n in sizes:
        cand = score[start:start + n]
        if reg is not None:
            cand = torch.cat([cand, reg])
        kb = min(k, cand.size(0))
        heads = []
        for h in range(score.size(1)):
            loc = torch.sort(-cand[:, h], stable=True).indices[:kb].sort()
            ids = torch.where(loc.values < n, loc.values + start,
                              -2 - (loc.values - n))
            heads.append(ids.tolist())  # candidate order
        out.append(heads)
        start += n
    return out


@pytest.mark.parametrize('sizes,R,ties', [
    ([9, 0, 21, 3, 14], 0, False),  # ragged, an empty set, sets < k
    ([9, 0, 21, 3, 14], 3, True),  # registers, ties at the boundary
    ([12, 12, 12], 2, True),  # equal sets: offsets without 'batch'
    ([40], 0, False),
])
def test_select_kernel_matches_a_stable_sort(fused, sizes, R, ties):
    from samsa_geo.nn.attention._topk_triton import select_topk_triton
    N, H, k = sum(sizes), 2, 8
    score = torch.randn(N, H)
    if ties:  # few distinct values, -0.0 and +0.0 among them
        score = (score * 2).round() / 2
    reg = torch.randn(R, H).round() if R else None
    _, batch, _ = _batch(sizes)
    ragged = len(set(sizes)) > 1
    k_max = min(k, max(sizes) + R)
    idx, bounds = select_topk_triton(score, reg, batch if ragged else None,
                                     len(sizes), max(sizes), k, k_max,
                                     with_bounds=True)
    assert idx.shape == (len(sizes), H, k_max) and idx.dtype == torch.long
    _assert_stable_top(idx, bounds, score, reg, sizes, k)


def test_select_kernel_ranks_the_whole_float32_range(fused):
    # Keys over the whole float32 range (both infinities, both zeros,
    # subnormals, the largest magnitudes) with ties at the boundary, and
    # a set of negative scores alone (its 9th largest key is -1 or below).
    from samsa_geo.nn.attention import _topk_triton
    special = torch.tensor([float('inf'), -float('inf'), 0.0, -0.0, 1e-45,
                            -1e-45, 3.4e38, -3.4e38, 1.0, -1.0, 0.5, 0.5])
    g = torch.Generator().manual_seed(0)
    sizes, H, k = [24, 17, 30, 12], 3, 9
    score = torch.stack([
        torch.cat([special, special[torch.randperm(12, generator=g)]] * 3)
        [torch.randperm(72, generator=g)][:71]
        for _ in range(H)], 1)  # [71, H], many ties
    score[40:, 1] = score[40:, 1] * 1e-3
    last = -special.abs()
    score = torch.cat([score, torch.stack(
        [last[torch.randperm(12, generator=g)] for _ in range(H)], 1)])
    _, batch, _ = _batch(sizes)
    idx, bounds = _topk_triton.select_topk_triton(
        score, None, batch, len(sizes), max(sizes), k, k, with_bounds=True)
    _assert_stable_top(idx, bounds, score, None, sizes, k)


def _assert_stable_top(idx, bounds, score, reg, sizes, k):
    # Per set and head: the selected ids first, in candidate order, then
    # -1 in the unused slots; the sets' bounds where they are ragged.
    ref = _stable_top(score, reg, sizes, k)
    R, k_max = 0 if reg is None else reg.size(0), idx.size(-1)
    for b, n in enumerate(sizes):
        kb = min(k, n + R)
        for h in range(score.size(1)):
            row = idx[b, h].tolist()
            assert row[:kb] == ref[b][h] and row[kb:] == [-1] * (k_max - kb)
    if len(set(sizes)) > 1:
        ptr = [0] + torch.tensor(sizes).cumsum(0).tolist()
        assert bounds.tolist() == [[s, e] for s, e in zip(ptr, ptr[1:])]
    else:
        assert bounds is None


@pytest.fixture
def small_blocks(monkeypatch):
    """Selection blocks of 24 candidates and chunks of 8 tokens: sets of
    tens of tokens take the chunked selection (and its merge)."""
    dispatch = importlib.import_module('samsa_geo.nn.attention._dispatch')
    monkeypatch.setattr(dispatch, 'SELECT_MAX_BLOCK', 24)
    monkeypatch.setattr(dispatch, 'SELECT_CHUNK', 8)
    return dispatch


@pytest.mark.parametrize('sizes,R,k,chunks', [
    ([40, 0, 13, 57, 3], 0, 2, 8),  # ragged, 8 chunks of 8
    ([40, 0, 13, 57, 3], 2, 5, 3),  # registers; 8 chunks do not fit
    ([30, 30], 1, 3, 4),  # equal sets: offsets without 'batch'
    ([100], 0, 4, 5),  # one set, chunks of 20
])
def test_chunked_selection_matches_a_stable_sort(fused, small_blocks, sizes,
                                                 R, k, chunks):
    # Sets beyond one block: the chunks' winners, then their merge with
    # the registers, give the one-block result (ties to the lower index).
    from samsa_geo.nn.attention._topk_triton import select_topk_triton
    assert small_blocks.selection_chunks(max(sizes), R, k) == chunks
    N, H = sum(sizes), 2
    score = (torch.randn(N, H) * 2).round() / 2  # many ties
    reg = torch.randn(R, H).round() if R else None
    _, batch, _ = _batch(sizes)
    ragged = len(set(sizes)) > 1
    idx, bounds = select_topk_triton(score, reg, batch if ragged else None,
                                     len(sizes), max(sizes), k, k,
                                     with_bounds=True)
    _assert_stable_top(idx, bounds, score, reg, sizes, k)


def test_chunked_selection_reads_per_set_k(fused, small_blocks):
    from samsa_geo.nn.attention._topk_triton import select_topk_triton
    sizes = [40, 4, 0, 33]
    score = torch.randn(sum(sizes), 1)
    _, batch, _ = _batch(sizes)
    kb = torch.tensor([3, 4, 0, 2])
    assert small_blocks.selection_chunks(40, 0, 4) == 5
    idx = select_topk_triton(score, None, batch, 4, 40, 99, 4, kb)
    for b, s in enumerate([0, 40, 44, 44]):
        ids = idx[b, 0]
        best = score[s:s + sizes[b], 0].topk(int(kb[b])).indices + s
        assert sorted(ids[ids >= 0].tolist()) == sorted(best.tolist())


def test_selection_chunks_and_what_does_not_fit(fused, small_blocks):
    from samsa_geo.nn.attention._topk_triton import select_topk_triton
    sc = small_blocks.selection_chunks
    assert sc(20, 4, 8) == 1  # one block
    assert sc(64, 0, 3) == 8  # 8 chunks of 8: 24 winners
    assert sc(64, 1, 3) == 3  # 8 x 3 + 1 > 24: chunks of 24
    assert sc(100, 0, 8) == 0  # 5 chunks x 8 winners > 24
    with pytest.raises(ValueError, match='sets the selection kernel'):
        select_topk_triton(torch.randn(100, 1), None, None, 1, 100, 8, 8)


def test_set_offsets_searched_in_batch(fused, monkeypatch):
    # Several narrowing steps (a fan-out of 2); empty sets at both ends
    # and in between.
    topk = importlib.import_module('samsa_geo.nn.attention._topk_triton')
    monkeypatch.setattr(topk, 'SEARCH_FANOUT', 2)
    sizes = torch.randint(1, 6, (12, ))
    sizes[0] = sizes[-1] = sizes[5] = 0
    batch = torch.repeat_interleave(torch.arange(12), sizes)
    assert topk.search_steps(batch.numel(), 2) >= 3
    score = torch.randn(batch.numel(), 1)
    idx, bounds = topk.select_topk_triton(score, None, batch, 12, 5, 2, 2,
                                          with_bounds=True)
    ptr = torch.searchsorted(batch, torch.arange(13))
    assert torch.equal(bounds, torch.stack([ptr[:-1], ptr[1:]], 1))
    ref = _stable_top(score, None, sizes.tolist(), 2)
    assert [[row[row >= 0].tolist()] for row in idx[:, 0]] == ref


def test_select_kernel_reads_per_set_k(fused):
    from samsa_geo.nn.attention._topk_triton import select_topk_triton
    sizes = [10, 4, 0, 7]
    score = torch.randn(sum(sizes), 1)
    _, batch, _ = _batch(sizes)
    kb = torch.tensor([3, 4, 0, 1])
    idx = select_topk_triton(score, None, batch, 4, 10, 99, 5, kb)
    assert ((idx >= 0).sum(-1).view(-1) == kb).all()
    for b, s in enumerate([0, 10, 14, 14]):
        ids = idx[b, 0, :int(kb[b])]
        best = score[s:s + sizes[b], 0].topk(int(kb[b])).indices + s
        assert sorted(ids.tolist()) == sorted(best.tolist())


@pytest.mark.parametrize('sizes,kwargs', [
    ([24, 24, 24], dict()),  # equal sets, a reshape in the unfused path
    ([40, 40], dict(k=32)),  # equal sets, whole key blocks
    ([9, 0, 21, 3, 14], dict()),  # ragged with an empty and small sets
    ([9, 0, 21, 3, 14], dict(num_registers=3)),
    ([24, 24, 24], dict(num_registers=2, k=0.3)),
    ([9, 0, 21, 3, 14], dict(k=0.3, sampling='soft')),
    (None, dict(num_registers=2)),  # one set, batch=None
    # Chunked selection (blocks of 24 candidates, chunks of 8 tokens).
    ([40, 0, 13, 57, 3], dict(k=4, chunked=True)),
    ([40, 0, 13, 57, 3], dict(k=3, num_registers=2, chunked=True)),
    ([30, 30], dict(k=0.1, chunked=True)),
])
def test_fused_matches_unfused(fused, spy, request, sizes, kwargs):
    kwargs = {'k': 8, **kwargs}
    if kwargs.pop('chunked', False):
        request.getfixturevalue('small_blocks')
    attn = SamsaAttention(16, heads=2, **kwargs).eval()
    if sizes is None:
        x, batch, hints = torch.randn(30, 16), None, {}
    else:
        x, batch, hints = _batch(sizes)
    calls = spy(fused, 'fused_sampled_attention', keep_args=False)
    with torch.no_grad():
        out, idx = attn(x, batch, return_indices=True, **hints)
        with config.attention_config(fused_inference=False):
            ref, ref_idx = attn(x, batch, return_indices=True, **hints)
    assert len(calls) == 1
    # Same keys, in the same (descending score) order; -1 for unused.
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('mode', ['autocast', 'bf16_model'])
def test_fused_matches_unfused_in_bfloat16(fused, mode):
    x, batch, hints = _batch([9, 0, 21, 3, 14])
    attn = SamsaAttention(16, heads=2, k=8, num_registers=2).eval()
    if mode == 'bf16_model':
        attn, x = attn.bfloat16(), x.bfloat16()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16,
                                         enabled=mode == 'autocast'):
        out, idx = attn(x, batch, return_indices=True, **hints)
        with config.attention_config(fused_inference=False):
            ref, ref_idx = attn(x, batch, return_indices=True, **hints)
    assert out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(idx, ref_idx)
    err = (out.float() - ref.float()).norm() / ref.float().norm()
    assert err < 1e-2, err


@pytest.mark.parametrize('sizes,kwargs', [
    ([40, 0, 13, 57, 3], dict(k=4)),  # ragged: an empty set, sets < k
    ([30, 30, 30], dict(k=0.1)),  # equal sets, k = 3
    ([40, 0, 13, 57, 3], dict(k=3, chunked=True)),
    ([60], dict(k=5, sampling='soft')),
])
@pytest.mark.parametrize('autocast', [False, True])
def test_fused_path_projects_the_selected_rows_alone(
        fused, spy, request, monkeypatch, sizes, kwargs, autocast):
    # From FUSED_SAMPLED_ROWS_MIN_TOKENS tokens, in a CUDA graph's capture
    # (stood in for here), the keys and values of the selected rows alone
    # are projected (a [B, H, k, 2D] batch that the attention kernel reads
    # slot by slot): the same ids as every token's projection, the outputs
    # up to another GEMM's rounding.
    if kwargs.pop('chunked', False):
        request.getfixturevalue('small_blocks')
    monkeypatch.setattr(fused, 'FUSED_SAMPLED_ROWS_MIN_TOKENS', 0)
    monkeypatch.setattr(fused, 'is_capturing', lambda: True)
    sampling = importlib.import_module('samsa_geo.nn.attention._sampling')
    rows = spy(sampling, 'project_rows')
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, **kwargs).eval()
    x, batch, hints = _batch(sizes)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16,
                                         enabled=autocast):
        out, idx = attn(x, batch, return_indices=True, **hints)
        assert len(rows) == 1
        ids, x_low, weight, bias = rows[0]
        B, H = len(sizes), 2
        assert ids.shape == (B, H, attn._set_info(
            x, batch, None, None, **{'num_graphs': B,
                                     'max_num_nodes': max(sizes)}).k_max)
        assert x_low.shape == x.shape and weight.shape == (32, 16)
        assert torch.equal(weight, attn.lin_kv.weight.to(weight.dtype))
        with config.attention_config(sampled_rows=False):
            ref, ref_idx = attn(x, batch, return_indices=True, **hints)
    assert len(rows) == 1
    assert torch.equal(idx, ref_idx)
    if autocast:
        err = (out.float() - ref.float()).norm() / ref.float().norm()
        assert out.dtype == torch.bfloat16 and err < 1e-2, err
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_fused_path_projects_every_row_where_the_rows_do_not_pay(
        fused, spy, monkeypatch):
    # Registers, more selected rows than half the tokens, the switch off,
    # fewer tokens than the threshold, an eager call: every token's keys
    # and values.
    sampling = importlib.import_module('samsa_geo.nn.attention._sampling')
    rows = spy(sampling, 'project_rows', keep_args=False)
    x, batch, hints = _batch([40, 0, 13, 57, 3])  # 113 tokens
    attn = SamsaAttention(16, heads=2, k=4).eval()
    regs = SamsaAttention(16, heads=2, k=4, num_registers=2).eval()
    wide = SamsaAttention(16, heads=2, k=6).eval()  # 2 x 5 x 2 x 6 > 113

    def run(layer):
        with torch.no_grad():
            layer(x, batch, **hints)

    monkeypatch.setattr(fused, 'FUSED_SAMPLED_ROWS_MIN_TOKENS', 113)
    run(attn)  # not captured
    monkeypatch.setattr(fused, 'is_capturing', lambda: True)
    monkeypatch.setattr(fused, 'FUSED_SAMPLED_ROWS_MIN_TOKENS', 114)
    run(attn)
    monkeypatch.setattr(fused, 'FUSED_SAMPLED_ROWS_MIN_TOKENS', 113)
    run(regs)
    run(wide)
    with config.attention_config(sampled_rows=False):
        run(attn)
    assert rows == []
    run(attn)
    assert len(rows) == 1


def test_selected_rows_kernel_checks_its_rows(fused):
    from samsa_geo.nn.attention._gather_attention_triton import (
        gather_attention_triton,
    )
    q = torch.randn(10, 8)
    idx = torch.zeros(1, 2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"'kv' of shape \[1, 2, 3, 8\]"):
        gather_attention_triton(q, torch.randn(1, 2, 4, 8), None, idx, None,
                                10)
    with pytest.raises(ValueError, match='no registers'):
        gather_attention_triton(q, torch.randn(1, 2, 3, 8),
                                torch.randn(1, 2, 8), idx, None, 10)


def test_fused_path_applies_to_plain_inference_only(fused, spy, monkeypatch):
    x, batch, hints = _batch([9, 0, 20])
    calls = spy(fused, 'fused_sampled_attention', keep_args=False)

    def run(attn, *, grad=False, **kw):
        with torch.set_grad_enabled(grad):
            attn(x, batch, **{**hints, **kw})

    plain = SamsaAttention(16, heads=2, k=8).eval()
    run(plain)
    assert len(calls) == 1
    run(plain, grad=True)  # the parameters need gradients
    run(plain.train())  # Gumbel noise, relaxation
    plain.eval()
    run(plain, num_graphs=3, max_num_nodes=None)  # n_max unknown
    run(plain, return_indices=True, return_weights=True)
    for kwargs in (dict(score='maxout'), dict(normalization='leaky'),
                   dict(stochastic_eval=True), dict(sampling='full'),
                   dict(sampling='sft'), dict(summary=True)):
        run(SamsaAttention(16, heads=2, k=8, **kwargs).eval())
    run(SamsaAttention(16, heads=2, k=8, relative_bias=True).eval(),
        pos=torch.randn(x.size(0), 3))
    with config.attention_config(fused_inference=False):
        run(plain)
    config.set_fused_inference(False)
    try:
        run(plain)
    finally:
        config.set_fused_inference(True)
    monkeypatch.setattr(fused, 'FUSED_MAX_SET_SIZE', 19)  # sets of 20
    run(plain)
    monkeypatch.setattr(fused, 'FUSED_MAX_SET_SIZE', 20)
    run(plain)
    assert len(calls) == 2
    # Sets of 20 + 2 registers, k = 8: neither one block of 12 nor chunks
    # (whose 8 winners each and the registers exceed 12) fit.
    dispatch = importlib.import_module('samsa_geo.nn.attention._dispatch')
    monkeypatch.setattr(dispatch, 'SELECT_MAX_BLOCK', 12)
    run(SamsaAttention(16, heads=2, k=8, num_registers=2).eval())
    monkeypatch.setattr(fused, 'is_exporting', lambda: True)
    run(plain)
    assert len(calls) == 2


@pytest.mark.parametrize('sizes,kwargs', [
    ([12, 12, 12], dict(num_registers=2)),
    ([9, 0, 21, 3, 14], dict(k=0.3)),  # ragged, each set's own k_b
    ([40, 0, 13, 57, 3], dict(k=4)),  # eager: the selected rows alone
])
def test_compiled_graph_holds_the_fused_kernels(fused, monkeypatch, sizes,
                                                kwargs):
    # torch.compile keeps the fused path, as one operator in one graph
    # (its fake implementation gives the shapes); values as in eager mode.
    # The operator takes every token's keys and values, at any size.
    monkeypatch.setattr(fused, 'FUSED_SAMPLED_ROWS_MIN_TOKENS', 0)
    monkeypatch.setattr(fused, 'is_capturing', lambda: True)
    attn = SamsaAttention(16, heads=2, **{'k': 8, **kwargs}).eval()
    x, batch, hints = _batch(sizes)
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        ref, ref_idx = attn(x, batch, return_indices=True, **hints)
        for backend in (record, 'aot_eager'):
            out, idx = torch.compile(attn, backend=backend, fullgraph=True)(
                x, batch, return_indices=True, **hints)
            assert torch.equal(idx, ref_idx)
            assert torch.allclose(out, ref, atol=1e-6)
    ops = [n.target for n in graphs[0].graph.nodes
           if 'sampled_attention_inference' in str(n.target)]
    assert len(ops) == 1


def test_compiled_dynamic_graph_serves_every_layout(fused):
    # One dynamic graph (symbolic set counts and sizes) holds the fused
    # operator for equal and ragged batches alike.
    attn = SamsaAttention(16, heads=2, k=8).eval()
    torch._dynamo.reset()
    compiled = torch.compile(attn, backend='aot_eager', dynamic=True,
                             fullgraph=True)
    with torch.no_grad():
        for sizes in ([12, 12, 12], [9, 0, 21, 3, 14], [30, 5]):
            x, batch, hints = _batch(sizes)
            assert torch.allclose(compiled(x, batch, **hints),
                                  attn(x, batch, **hints), atol=1e-6)


def test_exported_graph_keeps_the_unfused_path(fused):
    attn = SamsaAttention(16, heads=2, k=8).eval()
    x, batch, hints = _batch([12, 12, 12])
    with torch.no_grad():
        ref = attn(x, batch, **hints)
    program = torch.export.export(attn, (x, batch), kwargs=hints)
    assert 'sampled_attention_inference' not in str(program.graph)
    assert torch.allclose(program.module()(x, batch, **hints), ref,
                          atol=1e-5)


def test_config_switch():
    assert config.use_fused_inference()  # the module's fixture
    with config.attention_config(fused_inference=False):
        assert not config.use_fused_inference()
        config.set_fused_inference(True)
        assert config.use_fused_inference()
    assert config.use_fused_inference()


#: The Triton kernels' Python entry points: (module, function).
KERNELS = [('_score_triton', 'importance_score_triton'),
           ('_topk_triton', 'select_topk_triton'),
           ('_gather_attention_triton', 'gather_attention_triton')]


class _Launches(TorchDispatchMode):
    """Counts the operators that launch work (views and allocations launch
    nothing) and the calls of the Triton kernels' entry points; the
    interpreter's own tensor work inside a kernel stays out of the
    count."""
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()
        self.kernels = collections.Counter()
        self.paused = False
        self.saved = []

    def __enter__(self):
        for module, name in KERNELS:
            mod = importlib.import_module(f'samsa_geo.nn.attention.{module}')
            fn = getattr(mod, name)
            self.saved.append((mod, name, fn))
            setattr(mod, name, self._counted(name, fn))
        return super().__enter__()

    def __exit__(self, *exc):
        for mod, name, fn in self.saved:
            setattr(mod, name, fn)
        return super().__exit__(*exc)

    def _counted(self, name, fn):
        def wrapper(*args, **kwargs):
            self.kernels[name] += 1
            self.paused = True
            try:
                return fn(*args, **kwargs)
            finally:
                self.paused = False
        return wrapper

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not (self.paused or func.is_view or name.startswith('empty')):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('sizes,R', [([16] * 4, 0), ([16, 5, 0, 12], 2)])
def test_fused_conv_forward_launches_few_kernels(fused, monkeypatch, sizes,
                                                 R):
    # One SamsaConv eval forward: the projections, the scorer and the
    # layer's own operators, plus three Triton kernels (scorer tail,
    # selection, attention); the unfused path runs the top-k, the index
    # arithmetic, the gathers and the tiles on top.
    score_grad = importlib.import_module('samsa_geo.nn.attention._score_grad')
    monkeypatch.setattr(score_grad, 'triton_serves', lambda device: True)
    monkeypatch.setattr(config, 'checks_values', lambda device: False)
    x, batch, hints = _batch(sizes, 32)
    conv = SamsaConv(32, None, heads=2, k=8,
                     attn_kwargs=dict(num_registers=R)).eval()
    counts = {}
    with torch.no_grad():
        conv(x, None, batch, **hints)  # builds the projection cache
    for on in (True, False):
        with torch.no_grad(), config.attention_config(fused_inference=on):
            with _Launches() as mode:
                conv(x, None, batch, **hints)
        counts[on] = sum(mode.ops.values()), sorted(mode.kernels)
    ops, kernels = counts[True]
    assert kernels == ['gather_attention_triton', 'importance_score_triton',
                       'select_topk_triton']
    # lin_qkv, scorer GELU and linear, lin_out; conv: 2 norms, 2 residual
    # adds, a 2-layer MLP and its activation.
    assert ops <= 11, (ops, mode.ops)
    assert counts[False][1] == ['importance_score_triton']
    assert counts[False][0] >= ops + 4


COMPILE_SCRIPT = r'''
from samsa_geo.nn.attention import _gather_attention_triton as attend
from samsa_geo.nn.attention import _topk_triton as topk
from samsa_geo.testing.triton_compile import compile_for_sm90

kernels = []
fn = topk._select_topk
for equal, has_kb, block_s, warps in [(True, False, 1024, 4),
                                      (False, True, 8192, 32)]:
    sig = {a: 'i32' for a in fn.arg_names[6:20]}
    sig.update(S='*fp32', REG_S='*bf16', BATCH='*i64', KB='*i64',
               IDX='*i64', BOUNDS='*i64')
    const = dict(H=8, EQUAL=equal, HAS_KB=has_kb, HAS_BOUNDS=not equal,
                 BLOCK_S=block_s, BLOCK_K=256, FANOUT=topk.SEARCH_FANOUT)
    kernels.append((fn, sig, const, warps))
fn = topk._merge_topk  # 16 chunks' winners of 256
sig = {a: 'i32' for a in fn.arg_names[6:19]}
sig.update(S='*fp32', REG_S='*bf16', CAND='*i64', BOUNDS='*i64', KB='*i64',
           IDX='*i64')
kernels.append((fn, sig, dict(H=8, EQUAL=True, HAS_KB=False, BLOCK_S=4096,
                              BLOCK_K=256), 16))
fn = attend._gather_attention_fwd
for dtype, precision, equal, D in [('bf16', 'tf32', True, 32),
                                   ('fp32', 'ieee', False, 64)]:
    sig = {a: 'i32' for a in fn.arg_names[6:18]}
    sig.update(Q='*' + dtype, KV='*' + dtype, REG='*fp32', IDX='*i64',
               BOUNDS='*i64', OUT='*' + dtype, sm_scale='fp32')
    # The selected rows alone (no registers) with equal sets.
    const = dict(H=8, HAS_REG=not equal, EQUAL=equal, ROWS=equal,
                 BLOCK_D=D,
                 PRECISION=precision, UPCAST=False,
                 **attend.default_config(D, 1024))
    warps = const.pop('num_warps')
    const.pop('num_stages')
    kernels.append((fn, sig, const, warps))
print('compiled', compile_for_sm90(kernels))
'''


@pytest.mark.slow
def test_kernels_compile_for_sm90(compiled_run):
    # The interpreter runs the kernels' Python; this compiles them to
    # H100/H200 machine code (no GPU needed), as a launch on CUDA would.
    assert 'compiled 5' in compiled_run(COMPILE_SCRIPT)
