"""The score-pooled summary key of SamsaAttention (``summary=True``): its
formula, the dense score gradient it gives, layouts, registers, small and
empty sets, the relative bias, returned weights and torch.compile."""
import math

import pytest
import torch

from samsa_geo.nn import SamsaAttention, SamsaConv
from samsa_geo.nn.attention import config
from samsa_geo.nn.attention._attend import explicit_attention
from samsa_geo.nn.attention._sets import set_info
from samsa_geo.nn.attention._similarity import dot_score
from samsa_geo.nn.attention._summary import summarize


def make_batch(sizes, channels=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.cat([torch.full((n, ), i, dtype=torch.long)
                       for i, n in enumerate(sizes)])
    return torch.randn(batch.numel(), channels, generator=g), batch


def ptr_of(sizes):
    return [0] + torch.tensor(sizes).cumsum(0).tolist()


@pytest.mark.parametrize('sizes,R', [([9, 15, 3, 0, 2], 2), ([7, 7, 7], 0),
                                     ([7, 7, 7], 3), ([12], 0)])
def test_summary_rows_are_softmax_weighted_means(sizes, R):
    H, F, k = 3, 5, 4
    x, batch = make_batch(sizes, channels=1)
    N, B = batch.numel(), len(sizes)
    kv = torch.randn(N + B * R, H, F)
    score = torch.randn(N, H) * 3
    reg = torch.randn(R, H) if R else None
    info = set_info(N, batch, k, R, False, batch.device, B, max(sizes))
    summ = summarize(kv, score, reg, batch if B > 1 else None, info)
    assert summ.rows.shape == (B, H, 1, F)
    p = ptr_of(sizes)
    for b, n in enumerate(sizes):
        ids = list(range(p[b], p[b + 1])) + [N + b * R + r for r in range(R)]
        s = torch.cat([score[p[b]:p[b + 1]], reg]) if R else score[ids]
        c = n + R - min(k, n + R)
        if c > 0:
            w = s.softmax(0)  # [n + R, H]
            ref = (w.unsqueeze(-1) * kv[ids]).sum(0)  # [H, F]
            torch.testing.assert_close(summ.rows[b, :, 0], ref)
            assert math.isclose(summ.log_count[b, 0].item(), math.log(c),
                                rel_tol=1e-6)
        else:  # every candidate sampled: no summary key
            assert summ.log_count[b, 0].item() == float('-inf')


def _naive(attn, x, batch, sizes):
    # Every query over its set's sampled keys and the summary key counted
    # c = n + R - k times, computed set by set from the layer's weights.
    H, D, R = attn.heads, attn.head_dim, attn.num_registers
    _, idx = attn(x, batch, return_indices=True)
    q = attn.lin_q(x).view(-1, H, D)
    kv = attn.lin_kv(x).view(-1, H, 2 * D)
    score = attn.scorer(x)  # [N, H]
    out = torch.empty(x.size(0), H, D)
    p = ptr_of(sizes)
    for b, n in enumerate(sizes):
        rows = torch.cat([kv[p[b]:p[b + 1]], attn.reg_kv]) if R else \
            kv[p[b]:p[b + 1]]  # [n + R, H, 2D]
        s = torch.cat([score[p[b]:p[b + 1]], attn.reg_score]) if R else \
            score[p[b]:p[b + 1]]
        c = n + R - min(attn.k, n + R)
        for h in range(H):
            ids = idx[b, h][idx[b, h] != -1]
            local = torch.where(ids >= 0, ids - p[b], n + (-2 - ids))
            keys = rows[local, h]  # [k, 2D]
            logit_bias = torch.zeros(keys.size(0))
            if c > 0:
                mean = s[:, h].softmax(0) @ rows[:, h]  # [2D]
                keys = torch.cat([keys, mean.unsqueeze(0)])
                logit_bias = torch.cat([logit_bias,
                                        torch.tensor([math.log(c)])])
            a = q[p[b]:p[b + 1], h] @ keys[:, :D].t() / math.sqrt(D)
            w = (a + logit_bias).softmax(-1)
            out[p[b]:p[b + 1], h] = w @ keys[:, D:]
    return attn.lin_out(out.view(-1, H * D))


@pytest.mark.parametrize('R', [0, 2])
def test_output_matches_naive_reference(R):
    torch.manual_seed(0)
    sizes = [9, 15, 3, 2]
    attn = SamsaAttention(16, heads=2, k=4, num_registers=R,
                          summary=True).eval()
    x, batch = make_batch(sizes)
    with torch.no_grad():
        assert torch.allclose(attn(x, batch), _naive(attn, x, batch, sizes),
                              atol=1e-5)


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
@pytest.mark.parametrize('sizes', [[40, 33], [40, 40]])
def test_every_token_score_gets_a_gradient(sampling, sizes):
    # Without the summary only the 2k candidates around rank k reach the
    # scores; with it every token of every set does.
    x, batch = make_batch(sizes)
    grads = {}
    for summary in (False, True):
        torch.manual_seed(0)
        attn = SamsaAttention(16, heads=2, k=4, sampling=sampling,
                              summary=summary)
        scores = []
        attn.scorer.register_forward_hook(
            lambda mod, args, out: scores.append(out) or out.retain_grad())
        attn(x, batch).square().sum().backward()
        grads[summary] = scores[0].grad  # [N, H]
    assert (grads[False] != 0).sum(0).tolist() == [2 * 8, 2 * 8]
    assert (grads[True] != 0).all()


@pytest.mark.parametrize('sampling', ['hard', 'soft'])
def test_padded_equals_packed_with_gradients(sampling):
    sizes = [3, 70, 1, 0, 25, 9]
    x, batch = make_batch(sizes)
    results = []
    for padded in (True, False):
        torch.manual_seed(0)
        attn = SamsaAttention(16, heads=2, k=6, num_registers=2,
                              sampling=sampling, summary=True, padded=padded,
                              tile_size=8)
        torch.manual_seed(1)
        xg = x.clone().requires_grad_()
        out = attn(xg, batch, num_graphs=len(sizes))
        grads = torch.autograd.grad(out.square().sum(),
                                    [xg] + list(attn.parameters()))
        assert all(torch.isfinite(g).all() for g in grads)
        results.append((out, grads))
    (a, ga), (b, gb) = results
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-4)


def test_permutation_within_a_set():
    # The summary row is invariant, the output equivariant, under a
    # permutation of each set's tokens.
    torch.manual_seed(0)
    sizes = [12, 30, 5]
    attn = SamsaAttention(16, heads=2, k=4, num_registers=1,
                          summary=True).eval()
    x, batch = make_batch(sizes)
    p = ptr_of(sizes)
    perm = torch.cat([p[i] + torch.randperm(n) for i, n in enumerate(sizes)])
    kv = torch.randn(x.size(0) + 3, 2, 8)
    kv_perm = torch.cat([kv[:x.size(0)][perm], kv[x.size(0):]])
    score = torch.randn(x.size(0), 2)
    info = set_info(x.size(0), batch, 4, 1, False, x.device, 3, 30)
    a = summarize(kv, score, attn.reg_score, batch, info).rows
    b = summarize(kv_perm, score[perm], attn.reg_score, batch, info).rows
    torch.testing.assert_close(a, b)
    with torch.no_grad():
        torch.testing.assert_close(attn(x, batch)[perm], attn(x[perm], batch),
                                   atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('R', [0, 2])
def test_k_at_least_n_is_full_attention(R):
    # Sets whose candidates are all sampled get no summary key: exact full
    # attention, in a batch where a larger set has one.
    sizes = [5, 30, 3]
    x, batch = make_batch(sizes)
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=7, num_registers=R, summary=True)
    full = SamsaAttention(16, heads=2, sampling='full', num_registers=R)
    full.load_state_dict(attn.state_dict(), strict=False)
    p = ptr_of(sizes)
    for training in (False, True):
        attn.train(training)
        full.train(training)
        out = attn(x, batch)
        for b in (0, 2):
            ref = full(x[p[b]:p[b + 1]])
            torch.testing.assert_close(out[p[b]:p[b + 1]], ref, atol=1e-5,
                                       rtol=1e-4)
        big = SamsaAttention(16, heads=2, k=64, num_registers=R,
                             summary=True).train(training)
        big.load_state_dict(attn.state_dict())
        torch.testing.assert_close(big(x, batch), full(x, batch), atol=1e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize('normalization', ['softmax', 'leaky'])
def test_summary_counts_as_c_equal_keys(normalization):
    # A key with log-multiplicity log c acts as c copies of itself.
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 5, 4), torch.randn(3, 2, 4, 4), \
        torch.randn(3, 2, 4, 4)
    leak = torch.randn(3, 2, 4)
    c = torch.tensor([3.0, 1.0, 0.0])  # per tile, for the last key
    bias = torch.zeros(3, 4)
    bias[:, -1] = c.log()
    out = explicit_attention(q, k, v, None, dot_score, normalization, leak,
                             None, 0.0, False, key_bias=bias)
    for t in range(3):
        n = int(c[t])
        rep = [0, 1, 2] + [3] * n
        ref = explicit_attention(q[t:t + 1], k[t:t + 1, :, rep],
                                 v[t:t + 1, :, rep], None, dot_score,
                                 normalization, leak[t:t + 1, :, rep], None,
                                 0.0, False)
        torch.testing.assert_close(out[t:t + 1], ref)


def test_returned_weights_include_the_summary():
    torch.manual_seed(0)
    sizes = [9, 20]
    attn = SamsaAttention(16, heads=2, k=4, summary=True).eval()
    x, batch = make_batch(sizes)
    with torch.no_grad():
        out, idx, alpha = attn(x, batch, return_indices=True,
                               return_weights=True)
        torch.testing.assert_close(out, attn(x, batch), atol=1e-5,
                                   rtol=1e-4)
        assert idx.shape == (2, 2, 4) and alpha.shape == (29, 2, 5)
        torch.testing.assert_close(alpha.sum(-1), torch.ones(29, 2))
        v = attn.lin_kv(x).view(-1, 2, 16)[..., 8:]  # [N, H, D]
        score = attn.scorer(x)
        mix = torch.zeros(29, 2, 8)
        p = ptr_of(sizes)
        for b in range(2):
            for h in range(2):
                rows = slice(p[b], p[b + 1])
                mean = score[rows, h].softmax(0) @ v[rows, h]  # [D]
                mix[rows, h] = alpha[rows, h, :4] @ v[idx[b, h], h] + \
                    alpha[rows, h, 4:] * mean
        torch.testing.assert_close(attn.lin_out(mix.view(-1, 16)), out,
                                   atol=1e-5, rtol=1e-4)


def test_relative_bias_takes_the_explicit_path(monkeypatch):
    # The fused relative-bias kernels take no per-key offset: with the
    # summary the layer computes the explicit path, even where they serve.
    import samsa_geo.nn.attention._attend as kernels
    import samsa_geo.nn.attention.samsa_attention as mod

    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=4, relative_bias=True,
                          summary=True).eval()
    x, batch = make_batch([9, 20])
    pos = torch.randn(x.size(0), 3)
    with config.attention_config(fused_bias=False):
        ref = attn(x, batch, pos=pos)
    monkeypatch.setattr(mod, 'flex_supported', lambda device: True)
    calls = []
    monkeypatch.setattr(kernels, 'biased_flex_attention',
                        lambda *a, **kw: calls.append(1))
    with torch.no_grad():
        out = attn(x, batch, pos=pos)
    assert calls == []
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize('scorer_norm', [False, True])
def test_compile_fullgraph_matches_eager(scorer_norm):
    # Training mode: the summary, the relaxation and the masks in one graph
    # (with scorer_norm, the scorer's first layer outside the stacked
    # projection).
    torch._dynamo.reset()
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=4, num_registers=2, summary=True,
                          scorer_norm=scorer_norm)
    x, batch = make_batch([9, 20, 0, 4])
    compiled = torch.compile(attn, fullgraph=True, backend='aot_eager')
    torch.manual_seed(1)
    out = compiled(x, batch, num_graphs=4, max_num_nodes=20)
    torch.manual_seed(1)
    ref = attn(x, batch, num_graphs=4, max_num_nodes=20)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_conv_passes_the_option_and_bad_arguments():
    conv = SamsaConv(16, None, heads=2, k=4, attn_kwargs=dict(summary=True))
    assert conv.attn.summary and 'summary=True' in str(conv.attn)
    x, batch = make_batch([9, 20])
    assert conv(x, batch=batch).shape == (29, 16)
    with pytest.raises(TypeError, match="'summary' to be a bool"):
        SamsaAttention(16, summary=1)
    for sampling in ('full', 'sft'):
        with pytest.raises(ValueError, match="'summary=False'"):
            SamsaAttention(16, sampling=sampling, summary=True)
