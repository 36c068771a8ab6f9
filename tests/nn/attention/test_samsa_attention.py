import math

import pytest
import torch
import torch.nn.functional as F

from samsa_geo.nn import SamsaAttention
from samsa_geo.nn.attention import config

SIZES = [10, 50, 3, 37]


def make_batch(sizes=SIZES, channels=32):
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    return torch.randn(batch.numel(), channels), batch


def ptr_of(sizes):
    return [0] + torch.tensor(sizes).cumsum(0).tolist()


MODES = [
    dict(sampling='hard'),
    dict(sampling='soft', temperature=0.1),
    dict(sampling='full'),
    dict(sampling='hard', num_registers=3),
    dict(sampling='hard', score='maxout'),
    dict(sampling='soft', score='lily', normalization='leaky'),
    dict(sampling='hard', relative_bias=True),
    dict(sampling='hard', k=0.25),
    dict(sampling='sft'),
    dict(sampling='hard', summary=True),
    dict(sampling='soft', summary=True, num_registers=2, relative_bias=True),
]


@pytest.mark.parametrize('kwargs', MODES)
def test_shapes_repr_and_gradients(kwargs):
    kwargs = dict(kwargs)
    k = kwargs.pop('k', 8)
    attn = SamsaAttention(32, heads=4, k=k, **kwargs)
    assert str(attn).startswith(f'SamsaAttention(32, heads=4, k={k}, '
                                f"sampling='{kwargs['sampling']}'")
    x, batch = make_batch()
    x.requires_grad_()
    pos = torch.randn(x.size(0), 3)
    out, idx = attn(x, batch, pos=pos, return_indices=True)
    assert out.shape == (x.size(0), 32)
    assert idx.shape[:2] == (4, 4)
    assert torch.isfinite(out).all()
    (out**2).sum().backward()
    for name, p in attn.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
    assert x.grad.abs().sum() > 0
    if attn.scorer is not None:  # the scorer learns through the relaxation
        assert attn.scorer.lin.weight.grad.abs().sum() > 0
    attn.eval()
    assert attn(x, batch, pos=pos).shape == (x.size(0), 32)


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('padded', [True, False])
def test_batch_isolation(training, padded):
    attn = SamsaAttention(32, heads=4, k=8, num_registers=2, padded=padded,
                          tile_size=16).train(training)
    x, batch = make_batch()
    torch.manual_seed(1)
    out1 = attn(x, batch)
    x2 = x.clone()
    p = ptr_of(SIZES)
    x2[p[1]:p[2]] = torch.randn(SIZES[1], 32) * 3  # change set 1 only
    torch.manual_seed(1)
    out2 = attn(x2, batch)
    keep = torch.ones(x.size(0), dtype=torch.bool)
    keep[p[1]:p[2]] = False
    assert torch.allclose(out1[keep], out2[keep], atol=1e-6)
    assert not torch.allclose(out1[~keep], out2[~keep])


@pytest.mark.parametrize('kwargs', MODES)
def test_permutation_equivariance(kwargs):
    kwargs = dict(kwargs)
    k = kwargs.pop('k', 8)
    attn = SamsaAttention(32, heads=4, k=k, **kwargs).eval()
    x, batch = make_batch()
    pos = torch.randn(x.size(0), 3)
    p = ptr_of(SIZES)
    perm = torch.cat([p[i] + torch.randperm(n) for i, n in enumerate(SIZES)])
    out = attn(x, batch, pos=pos)
    out_perm = attn(x[perm], batch, pos=pos[perm])
    assert torch.allclose(out[perm], out_perm, atol=1e-5)


@pytest.mark.parametrize('training', [False, True])
def test_return_indices(training):
    k = 8
    attn = SamsaAttention(32, heads=4, k=k).train(training)
    x, batch = make_batch()
    _, idx = attn(x, batch, return_indices=True)
    p = ptr_of(SIZES)
    assert idx.shape == (len(SIZES), 4, k)
    for b, n in enumerate(SIZES):
        for h in range(4):
            row = idx[b, h]
            used = row[row >= 0]
            assert used.numel() == min(k, n)
            assert (row[used.numel():] == -1).all()  # unused slots last
            assert used.unique().numel() == used.numel()  # no replacement
            assert ((used >= p[b]) & (used < p[b + 1])).all()


def test_eval_selects_top_scores():
    attn = SamsaAttention(16, heads=2, k=5).eval()
    x, batch = make_batch([20, 30], channels=16)
    _, idx = attn(x, batch, return_indices=True)
    score = attn.scorer(x)
    for b, (s, e) in enumerate([(0, 20), (20, 50)]):
        for h in range(2):
            expect = score[s:e, h].topk(5).indices + s
            assert set(idx[b, h].tolist()) == set(expect.tolist())


def test_fraction_k():
    attn = SamsaAttention(16, heads=2, k=0.25).eval()
    x, batch = make_batch([20, 7, 4], channels=16)
    _, idx = attn(x, batch, return_indices=True)
    counts = (idx >= 0).sum(-1)
    assert counts[:, 0].tolist() == [5, 2, 1]


def test_registers_compete():
    attn = SamsaAttention(16, heads=2, k=6, num_registers=4).eval()
    with torch.no_grad():
        attn.reg_score.fill_(100.0)  # registers always win
    x, batch = make_batch([20, 3], channels=16)
    _, idx = attn(x, batch, return_indices=True)
    for h in range(2):
        row = idx[0, h].tolist()
        assert sorted(v for v in row if v < -1) == [-5, -4, -3, -2]
        assert sum(0 <= v < 20 for v in row) == 2
    # Set 1 has 3 tokens + 4 registers = 7 candidates >= k=6.
    assert ((idx[1] >= 0) | (idx[1] < -1)).sum(-1).tolist() == [6, 6]


@pytest.mark.parametrize('kwargs', [dict(num_registers=0),
                                    dict(num_registers=2),
                                    dict(sampling='sft')])
def test_k_at_least_n_equals_full(kwargs):
    # A set of n <= k keeps every token; SFT's keeps them unmixed (training
    # too).
    sizes = [6, 9, 4]
    x, batch = make_batch(sizes)
    sampled = SamsaAttention(32, heads=4, k=64, **kwargs)
    full = SamsaAttention(32, heads=4, sampling='full',
                          num_registers=kwargs.get('num_registers', 0))
    full.load_state_dict(sampled.state_dict(), strict=False)
    for training in (False, True):
        sampled.train(training)
        full.train(training)
        assert torch.allclose(sampled(x, batch), full(x, batch), atol=1e-5)


def test_full_matches_multihead_attention():
    C, H = 32, 4
    D = C // H
    attn = SamsaAttention(C, heads=H, sampling='full').eval()
    mha = torch.nn.MultiheadAttention(C, H, batch_first=True).eval()
    with torch.no_grad():
        # lin_kv rows are [k_h, v_h] per head; MHA stacks [q; k; v].
        wk = attn.lin_kv.weight.view(H, 2, D, C)
        bk = attn.lin_kv.bias.view(H, 2, D)
        mha.in_proj_weight.copy_(torch.cat([
            attn.lin_q.weight, wk[:, 0].reshape(C, C),
            wk[:, 1].reshape(C, C)]))
        mha.in_proj_bias.copy_(torch.cat([
            attn.lin_q.bias, bk[:, 0].reshape(C), bk[:, 1].reshape(C)]))
        mha.out_proj.weight.copy_(attn.lin_out.weight)
        mha.out_proj.bias.copy_(attn.lin_out.bias)
    x, batch = make_batch([12, 12, 12], channels=C)
    out = attn(x, batch)
    xd = x.view(3, 12, C)
    ref = mha(xd, xd, xd, need_weights=False)[0].reshape(-1, C)
    assert torch.allclose(out, ref, atol=1e-5)
    # Uneven sets: compare set by set.
    x, batch = make_batch([5, 17], channels=C)
    out = attn(x, batch)
    for s, e in [(0, 5), (5, 22)]:
        xs = x[s:e].unsqueeze(0)
        ref = mha(xs, xs, xs, need_weights=False)[0][0]
        assert torch.allclose(out[s:e], ref, atol=1e-5)


def test_sampled_attention_matches_reference():
    """Eval output == softmax attention of every query over its set's top-k
    keys, computed naively."""
    C, H, k = 16, 2, 4
    D = C // H
    attn = SamsaAttention(C, heads=H, k=k).eval()
    x, batch = make_batch([9, 15], channels=C)
    out, idx = attn(x, batch, return_indices=True)
    q = attn.lin_q(x).view(-1, H, D)
    kv = attn.lin_kv(x).view(-1, H, 2 * D)
    ref = torch.empty(x.size(0), H, D)
    for b, (s, e) in enumerate([(0, 9), (9, 24)]):
        for h in range(H):
            sel = idx[b, h]
            kk, vv = kv[sel, h, :D], kv[sel, h, D:]
            a = torch.softmax(q[s:e, h] @ kk.t() / math.sqrt(D), dim=-1)
            ref[s:e, h] = a @ vv
    ref = attn.lin_out(ref.view(-1, C))
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('kwargs', MODES)
@pytest.mark.parametrize('training', [False, True])
def test_padded_equals_packed(kwargs, training):
    kwargs = dict(kwargs)
    k = kwargs.pop('k', 8)
    padded = SamsaAttention(32, heads=4, k=k, padded=True, **kwargs)
    packed = SamsaAttention(32, heads=4, k=k, padded=False, tile_size=8,
                            **kwargs)
    packed.load_state_dict(padded.state_dict())
    padded.train(training)
    packed.train(training)
    sizes = [3, 70, 1, 25, 9]
    x, batch = make_batch(sizes)
    pos = torch.randn(x.size(0), 3)
    torch.manual_seed(7)
    a, ia = padded(x, batch, pos=pos, return_indices=True)
    torch.manual_seed(7)
    b, ib = packed(x, batch, pos=pos, return_indices=True)
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.equal(ia, ib)


@pytest.mark.parametrize('sizes', [[3, 70, 1, 25], [20, 20, 20]])
def test_packed_selection_equals_dense(sizes):
    from samsa_geo.nn.attention._sampling import select
    from samsa_geo.nn.attention._sets import set_info
    _, batch = make_batch(sizes)
    score = torch.randn(batch.numel(), 4)
    reg = torch.randn(2, 4)
    info = set_info(batch.numel(), batch, 8, 2, False, batch.device)
    a = select(score, reg, batch, info, 2, False, True, packed=False)
    b = select(score, reg, batch, info, 2, False, True, packed=True)
    for f in ('top', 'bottom', 'top_score', 'bottom_score'):
        va, vb = getattr(a, f), getattr(b, f)
        assert torch.equal(va, vb), f


def test_stochastic_eval():
    attn = SamsaAttention(16, heads=2, k=3).eval()
    x, batch = make_batch([40], channels=16)
    assert torch.equal(attn(x, batch), attn(x, batch))
    attn.stochastic_eval = True
    assert not torch.equal(attn(x, batch), attn(x, batch))


def test_leaky_rows_sum_below_one():
    from samsa_geo.nn.attention._attend import explicit_attention
    from samsa_geo.nn.attention._similarity import dot_score
    q = torch.randn(2, 3, 5, 4)
    k = torch.randn(2, 3, 6, 4)
    v = torch.ones(2, 3, 6, 4)
    leak = torch.randn(2, 3, 6)
    out = explicit_attention(q, k, v, None, dot_score, 'leaky', leak, None,
                             0.0, False)
    assert (out <= 1 + 1e-6).all() and (out >= 0).all()
    soft = explicit_attention(q, k, v, None, dot_score, 'softmax', None, None,
                              0.0, False)
    assert torch.allclose(soft, torch.ones_like(soft), atol=1e-6)


def test_score_functions():
    from samsa_geo.nn.attention._similarity import lily_score, maxout_score
    q = torch.tensor([[1.0, -2.0]])
    k = torch.tensor([[0.5, 3.0]])
    ref = ((1.0 - 1 / math.sqrt(math.pi)) + (3.0 - 1 / math.sqrt(math.pi)))
    ref = ref / math.sqrt(1 - 1 / math.pi) / math.sqrt(2)
    assert torch.allclose(maxout_score(q, k), torch.tensor([[ref]]))
    ref = ((1.5 - 0.5) + (1.0 - 5.0)) / math.sqrt(2)
    assert torch.allclose(lily_score(q, k), torch.tensor([[ref]]))
    # Not bilinear: the [n, k] maxout map exceeds the rank of q @ k^T.
    q, k = torch.randn(32, 2), torch.randn(32, 2)
    assert torch.linalg.matrix_rank(maxout_score(q, k)) > 2
    assert torch.linalg.matrix_rank(q @ k.t()) <= 2


def test_relative_bias_identity_at_init_and_rotation_invariance():
    base = SamsaAttention(16, heads=2, k=6).eval()
    rel = SamsaAttention(16, heads=2, k=6, relative_bias=True).eval()
    rel.load_state_dict(base.state_dict(), strict=False)
    x, batch = make_batch([20, 11], channels=16)
    pos = torch.randn(31, 3)
    assert torch.allclose(base(x, batch), rel(x, batch, pos=pos), atol=1e-5)
    with torch.no_grad():
        rel.rel_bias.lin_scale.weight.normal_()
        rel.rel_bias.lin_bias.weight.normal_()
    normal = F.normalize(torch.randn(31, 3), dim=-1)
    R = torch.linalg.qr(torch.randn(3, 3))[0]
    t = torch.randn(1, 3)
    a = rel(x, batch, pos=pos, normal=normal)
    b = rel(x, batch, pos=pos @ R.t() + t, normal=normal @ R.t())
    assert torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(a, base(x, batch), atol=1e-3)


def test_single_set_without_batch():
    attn = SamsaAttention(16, heads=2, k=4).eval()
    x = torch.randn(30, 16)
    assert torch.allclose(attn(x), attn(x, torch.zeros(30, dtype=torch.long)),
                          atol=1e-6)


@pytest.mark.parametrize('bad, err, match', [
    (dict(x=torch.randn(10, 8)), ValueError, r"'x' to have shape \[N, 16\]"),
    (dict(x=torch.arange(160).view(10, 16)), TypeError, "floating-point"),
    (dict(batch=torch.zeros(9, dtype=torch.long)), ValueError,
     r"'batch' to have shape \[10\]"),
    (dict(batch=torch.tensor([0, 1] * 5)), ValueError, "sorted"),
    (dict(batch=torch.zeros(10)), TypeError, "'batch' to be an integer"),
    (dict(x=torch.full((10, 16), float('nan'))), ValueError, "finite"),
    (dict(pos=torch.randn(9, 3)), ValueError, r"'pos' to have shape"),
])
def test_bad_input(bad, err, match):
    attn = SamsaAttention(16, heads=2, k=4)
    args = dict(x=torch.randn(10, 16), batch=torch.zeros(10, dtype=torch.long))
    args.update(bad)
    pos = args.pop('pos', None)
    with pytest.raises(err, match=match):
        attn(args['x'], args['batch'], pos=pos)


@pytest.mark.parametrize('kwargs, err, match', [
    (dict(k=0), ValueError, "'k' to be a positive int"),
    (dict(k=-3), ValueError, "'k'"),
    (dict(k=1.5), ValueError, r"fraction in \(0, 1\]"),
    (dict(k='8'), TypeError, "'k' to be an int or a float"),
    (dict(k=True), TypeError, "'k'"),
    (dict(sampling='gumbel'), ValueError, "'sampling'"),
    (dict(score='cos'), ValueError, "'score'"),
    (dict(normalization='sparsemax'), ValueError, "'normalization'"),
    (dict(heads=3), ValueError, "'heads'"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        SamsaAttention(16, **kwargs)
    if 'k' in kwargs:  # k set later (conv.attn.k = ...) is checked alike
        attn = SamsaAttention(16, k=4)
        with pytest.raises(err, match=match):
            attn.k = kwargs['k']
        assert attn.k == 4


def test_relative_bias_needs_pos():
    attn = SamsaAttention(16, heads=2, k=4, relative_bias=True)
    with pytest.raises(ValueError, match="'pos'"):
        attn(torch.randn(10, 16))


def _marker_task(n_sets, n=64, C=16, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(num_classes, (n_sets, ), generator=g)
    x = torch.randn(n_sets, n, C, generator=g) * 0.5
    x[:, :, 0] = 0.0
    where = torch.randint(n, (n_sets, ), generator=g)
    rows = torch.arange(n_sets)
    x[rows, where, :] = 0.0
    x[rows, where, 0] = 3.0  # the marker token carries the label
    x[rows, where, 1 + y] = 3.0
    batch = torch.arange(n_sets).repeat_interleave(n)
    return x.view(-1, C), batch, y


class _SetClassifier(torch.nn.Module):
    def __init__(self, C=16, num_classes=4, k=2, random_selection=False):
        super().__init__()
        self.attn = SamsaAttention(C, heads=1, k=k,
                                   stochastic_eval=random_selection)
        if random_selection:  # uniform random sampling: scores frozen at 0
            for p in self.attn.scorer.parameters():
                p.requires_grad_(False)
                p.zero_()
        self.head = torch.nn.Linear(C, num_classes)

    def forward(self, x, batch):
        from torch_geometric.nn import global_mean_pool
        return self.head(global_mean_pool(self.attn(x, batch), batch))


def _train_marker(random_selection):
    torch.manual_seed(0)
    model = _SetClassifier(random_selection=random_selection)
    opt = torch.optim.Adam(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(100):
        x, batch, y = _marker_task(32, seed=step)
        loss = F.cross_entropy(model(x, batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x, batch, y = _marker_task(256, seed=10_000)
    with torch.no_grad():
        return (model(x, batch).argmax(-1) == y).float().mean().item()


def test_sampler_learns_informative_tokens():
    """The label sits in one token of 64; with k=2 the scorer must learn to
    pick it. Uniformly random selection (frozen scorer) sees it 1/32 of the
    time and stays near chance (0.25)."""
    learned = _train_marker(random_selection=False)
    random = _train_marker(random_selection=True)
    assert learned > 0.9, learned
    assert random < 0.5, random


@pytest.mark.parametrize('n', [64, 70])
def test_one_set_in_tiles_equals_one_tile(n):
    """A large single set is cut into query tiles sharing its keys."""
    whole = SamsaAttention(16, heads=2, k=6, padded=True).eval()
    tiled = SamsaAttention(16, heads=2, k=6, padded=False, tile_size=16)
    tiled.load_state_dict(whole.state_dict())
    tiled.eval()
    x = torch.randn(n, 16, requires_grad=True)
    a = whole(x)
    b = tiled(x)
    assert torch.allclose(a, b, atol=1e-5)
    ga, = torch.autograd.grad(a.square().sum(), x)
    gb, = torch.autograd.grad(b.square().sum(), x)
    assert torch.allclose(ga, gb, atol=1e-5)


def _nontrivial_bias(attn):
    torch.manual_seed(3)
    rb = attn.rel_bias
    with torch.no_grad():
        for lin in (rb.lin_scale, rb.lin_bias):
            lin.weight.normal_(std=0.5)
            lin.bias.normal_(std=0.5)
    return attn


@pytest.mark.parametrize('kwargs,sizes,normals', [
    (dict(), [40, 40, 40], True),
    (dict(num_registers=3), [30, 5, 50], True),
    (dict(padded=False, tile_size=16), [30, 5, 50], False),
    (dict(k=0.5), [9, 31], True),
])
def test_fused_relative_bias_matches_explicit(monkeypatch, kwargs, sizes,
                                              normals):
    # The FlexAttention score_mod (PyTorch's unfused reference on CPU) gives
    # the explicit path's output: same pair features, bias, masks.
    import samsa_geo.nn.attention._attend as kernels
    import samsa_geo.nn.attention.samsa_attention as mod
    from samsa_geo.nn.attention._flex import biased_flex_attention

    torch.manual_seed(0)
    kwargs = {'k': 8, **kwargs}
    attn = _nontrivial_bias(SamsaAttention(32, heads=2, relative_bias=True,
                                           **kwargs)).eval()
    batch = torch.cat([torch.full((n, ), i) for i, n in enumerate(sizes)])
    x, pos = torch.randn(batch.numel(), 32), torch.randn(batch.numel(), 3)
    normal = F.normalize(torch.randn_like(pos), dim=-1) if normals else None
    ref = attn(x, batch, pos=pos, normal=normal)
    monkeypatch.setattr(mod, 'flex_supported', lambda device: True)
    calls = []

    def reference(*args, **kw):
        calls.append(1)
        return biased_flex_attention(*args, **kw, compiled=False)

    monkeypatch.setattr(kernels, 'biased_flex_attention', reference)
    with torch.no_grad(), config.attention_config(
            bias_inference_kernel='flex'):  # no FlexAttention backward on CPU
        out = attn(x, batch, pos=pos, normal=normal)
    assert calls, 'the fused path was not taken'
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    # A float64 layer keeps the explicit path (the kernels' bias runs in
    # float32), in float64.
    with torch.no_grad(), config.attention_config(
            bias_inference_kernel='flex'):
        out64 = attn.double()(x.double(), batch, pos=pos.double(),
                              normal=None if normal is None
                              else normal.double())
    assert len(calls) == 1 and out64.dtype == torch.float64
    assert torch.allclose(out64.float(), ref, atol=1e-5, rtol=1e-4)
    attn.float()
    # Attention dropout in training keeps the explicit path.
    attn.dropout = 0.5
    attn.train()(x, batch, pos=pos, normal=normal)
    assert len(calls) == 1


def test_export_takes_the_explicit_relative_bias_path(monkeypatch):
    # torch.export never sees the separately compiled fused kernel.
    import samsa_geo.nn.attention.samsa_attention as mod

    monkeypatch.setattr(mod, 'flex_supported', lambda device: True)
    attn = _nontrivial_bias(SamsaAttention(16, heads=2, k=6,
                                           relative_bias=True)).eval()
    x, pos = torch.randn(30, 16), torch.randn(30, 3)

    class Wrap(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = attn

        def forward(self, x, pos):
            return self.attn(x, pos=pos)

    exported = torch.export.export(Wrap(), (x, pos))
    with config.attention_config(fused_bias=False):
        ref = attn(x, pos=pos)
    assert torch.allclose(exported.module()(x, pos), ref, atol=1e-5)


def test_many_tiles_run_in_several_sdpa_calls(monkeypatch):
    # PyTorch's flash / memory-efficient kernels take at most 65,535 batch
    # entries: larger tile batches are split, with the same output and
    # gradients.
    import samsa_geo.nn.attention._attend as kernels

    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=6)
    batch = torch.cat([torch.full((n, ), i)
                       for i, n in enumerate([9, 4, 12, 7, 10])])
    x = torch.randn(batch.numel(), 16)
    results = []
    for limit in (65535, 2):
        monkeypatch.setattr(kernels, 'MAX_GRID_Y', limit)
        torch.manual_seed(1)
        xg = x.clone().requires_grad_()
        out = attn(xg, batch)
        grads = torch.autograd.grad(out.square().sum(),
                                    [xg] + list(attn.parameters()))
        results.append((out, grads))
    (out_a, g_a), (out_b, g_b) = results
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for a, b in zip(g_a, g_b):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('kwargs', [dict(), dict(relative_bias=True),
                                    dict(score='lily', normalization='leaky'),
                                    dict(num_registers=2)])
def test_returned_weights_reproduce_the_output(kwargs):
    # out = lin_out(sum_j alpha_ij v_j) over the returned indices: the
    # weights are the ones the layer used, aligned with its indices.
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=6, **kwargs).eval()
    x, batch = make_batch([9, 4, 12], channels=16)
    pos = torch.randn(x.size(0), 3)
    ref = attn(x, batch, pos=pos)
    out, idx, alpha = attn(x, batch, pos=pos, return_indices=True,
                           return_weights=True)
    assert torch.allclose(out, ref, atol=1e-5)
    assert alpha.shape == (x.size(0), 2, idx.size(-1))
    kv = attn.lin_kv(x).view(-1, 2, 16)  # [N, H, 2D]
    if attn.reg_kv is not None:
        kv = torch.cat([kv, attn.reg_kv], dim=0)
    v = kv[..., 8:]  # [N + R, H, D]
    mix = torch.zeros(x.size(0), 2, 8)
    for i in range(x.size(0)):
        b = int(batch[i])
        for h in range(2):
            ids = idx[b, h]
            ok = ids != -1
            rows = torch.where(ids[ok] >= 0, ids[ok],
                               x.size(0) + (-2 - ids[ok]))
            mix[i, h] = alpha[i, h, ok] @ v[rows, h]
            assert (alpha[i, h, ~ok] == 0).all()
    assert torch.allclose(attn.lin_out(mix.view(-1, 16)), out, atol=1e-5)


def test_sft_sampling_shares_one_score_and_mixes_in_training():
    torch.manual_seed(0)
    attn = SamsaAttention(32, heads=4, k=3, sampling='sft')
    assert attn.scorer.heads == 1
    x, batch = make_batch([10, 20])
    _, idx = attn.eval()(x, batch, return_indices=True)
    # Every head attends to the same k tokens, the top-k of the score.
    assert (idx == idx[:, :1]).all()
    score = attn.scorer(x).view(-1)
    for b, (lo, hi) in enumerate([(0, 10), (10, 30)]):
        top = score[lo:hi].topk(3).indices + lo
        assert set(idx[b, 0].tolist()) == set(top.tolist())
    # In training the scorer learns through the mixing weights.
    attn.train()
    attn(x, batch).square().sum().backward()
    assert attn.scorer.lin.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="'num_registers' = 0"):
        SamsaAttention(32, heads=4, sampling='sft', num_registers=2)


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('kwargs', MODES)
def test_float64_gradcheck(kwargs, training):
    """A float64 layer computes in float64 throughout (scores, summary,
    relative bias, explicit attention): gradcheck holds in evaluation and,
    with its noise seeded, in training where the relaxation's gradient is
    its exact one ('hard' passes the soft gradient to the exact rows, and
    a temperature below 1 caps the scores' gradient, by design)."""
    if training and (kwargs['sampling'] == 'hard'
                     or kwargs.get('temperature', 1.0) < 1.0):
        pytest.skip('a gradient other than the exact one, by design')
    torch.manual_seed(0)
    kwargs = dict(kwargs, k=kwargs.get('k', 2))
    attn = SamsaAttention(4, heads=2, **kwargs).double().train(training)
    x, batch = make_batch([3, 5], channels=4)
    x = x.double().requires_grad_()
    pos = torch.randn(8, 3, dtype=torch.float64)

    def f(x):
        torch.manual_seed(1)
        return attn(x, batch, pos=pos)

    assert torch.autograd.gradcheck(f, (x, ), eps=1e-6, atol=1e-6,
                                    rtol=1e-4)


@pytest.mark.parametrize('sampling', ['hard', 'soft', 'sft'])
def test_backward_inside_autocast_equals_backward_after_it(sampling):
    # loss.backward() inside the autocast region of the forward pass (it
    # failed in the scorer's backward: "expected scalar type Float but
    # found BFloat16") gives the gradients of a backward pass after it.
    torch.manual_seed(0)
    x = torch.randn(30, 16)
    batch = torch.tensor([0] * 12 + [1] * 18)
    attn = SamsaAttention(16, heads=2, k=4, sampling=sampling)
    grads = []
    for inside in (False, True):
        attn.zero_grad()
        torch.manual_seed(1)  # the same Gumbel noise
        with torch.autocast('cpu', dtype=torch.bfloat16):
            loss = attn(x, batch).float().square().sum()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([p.grad.clone() for p in attn.parameters()])
    for g, ref in zip(*grads):
        assert torch.equal(g, ref)
