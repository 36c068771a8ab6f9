"""Sets that keep every candidate (n_max + R <= k, n_max known): the layer
skips the scorer and the ranking. The key sets, outputs and gradients must
equal those of the ranked path."""
import pytest
import torch

from samsa_geo.nn import SamsaAttention
from samsa_geo.nn.attention._sampling import keep_all, select
from samsa_geo.nn.attention._sets import set_info

SIZES = [[5, 5, 5], [3, 0, 7, 1], [0], [7, 2, 0]]


def _batch(sizes):
    return torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))


def _key_sets(sel, info):
    out = []
    for b in range(info.num_sets):
        valid = sel.top_valid[b] if sel.top_valid is not None else \
            torch.ones(sel.top.size(-1), dtype=torch.bool)
        out.append([sorted(sel.top[b, h][valid].tolist())
                    for h in range(sel.top.size(1))])
    return out


@pytest.mark.parametrize('sizes', SIZES)
@pytest.mark.parametrize('R', [0, 2])
def test_keep_all_equals_the_ranked_key_sets(sizes, R):
    batch, N, H = _batch(sizes), sum(sizes), 3
    if N + R == 0:
        pytest.skip('no candidate: the layer returns before sampling')
    info = set_info(N, batch, 10, R, False, torch.device('cpu'),
                    num_sets=len(sizes), max_size=max(sizes))
    assert info.m_max == 0 and info.k_max == max(sizes) + R
    ranked = select(torch.randn(N, H), torch.randn(R, H) if R else None,
                    batch, info, R, perturb=True, with_bottom=False)
    kept = keep_all(info, N, R, H, torch.device('cpu'))
    assert kept.top.shape == ranked.top.shape
    assert _key_sets(kept, info) == _key_sets(ranked, info)
    if ranked.top_valid is None:
        assert kept.top_valid is None
    else:
        assert torch.equal(kept.top_valid, ranked.top_valid)


def _ranked_only(monkeypatch):
    monkeypatch.setattr(SamsaAttention, '_keeps_all',
                        lambda self, info, return_indices: False)


@pytest.mark.parametrize('sizes', SIZES[:2] + [SIZES[3]])
@pytest.mark.parametrize('mode', [
    dict(sampling='hard'), dict(sampling='soft'), dict(sampling='full'),
    dict(sampling='hard', num_registers=2),
    dict(sampling='hard', relative_bias=True),
])
@pytest.mark.parametrize('training', [False, True])
def test_keep_all_equals_the_ranked_path(sizes, mode, training, monkeypatch):
    batch, N = _batch(sizes), sum(sizes)
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=10, **mode).train(training)
    x = torch.randn(N, 16)
    pos = torch.randn(N, 3)
    kw = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    if mode.get('relative_bias'):
        kw['pos'] = pos
    assert attn._keeps_all(attn._set_info(x, batch, kw.get('pos'), None,
                                          kw['num_graphs'],
                                          kw['max_num_nodes']), False)

    out, gx, grads = _step(attn, x, batch, kw)
    _ranked_only(monkeypatch)
    ref, ref_gx, ref_grads = _step(attn, x, batch, kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-6)
    assert_same_grads(grads, ref_grads)


def _step(attn, x, batch, kw):
    # Output, input gradient and parameter gradients of one call, with a
    # fixed weighting of the outputs and the same dropout draws each time.
    attn.zero_grad()
    xg = x.clone().requires_grad_()
    torch.manual_seed(1)
    out = attn(xg, batch, **kw)
    if out.numel() > 0:
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum() \
            .backward()
    return out, xg.grad, {n: p.grad for n, p in attn.named_parameters()}


def assert_same_grads(grads, ref_grads):
    # The scorer gets no gradient where every candidate is kept: None on
    # one path may be zeros on the other.
    for name, g in grads.items():
        ref = ref_grads[name]
        if g is None or ref is None:
            assert (g is None or not g.any()) and \
                (ref is None or not ref.any()), name
        else:
            torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)


def test_keep_all_needs_the_largest_size_and_plain_k():
    x, batch = torch.randn(9, 16), _batch([4, 5])
    attn = SamsaAttention(16, heads=2, k=8)
    info = attn._set_info(x, batch, None, None, 2, None)  # n_max unknown
    assert not attn._keeps_all(info, False)
    info = attn._set_info(x, batch, None, None, 2, 5)
    assert attn._keeps_all(info, False)
    assert not attn._keeps_all(info, True)  # indices in score order
    assert not SamsaAttention(16, heads=2, k=4)._keeps_all(
        SamsaAttention(16, heads=2, k=4)._set_info(x, batch, None, None, 2,
                                                   5), False)
    # Returned indices of the full attention are in token order either way.
    full = SamsaAttention(16, heads=2, sampling='full')
    assert full._keeps_all(full._set_info(x, batch, None, None, 2, 5), True)


def _gathered_only(monkeypatch):
    monkeypatch.setattr(SamsaAttention, '_dense_keeps_all',
                        lambda self, info, N, return_indices: False)


@pytest.mark.parametrize('sizes', SIZES + [[6, 6]])
@pytest.mark.parametrize('sampling', ['hard', 'soft', 'full'])
@pytest.mark.parametrize('training,dropout', [(False, 0.0), (True, 0.0),
                                              (True, 0.3)])
def test_dense_keep_all_equals_the_gathered_path(sizes, sampling, training,
                                                 dropout, monkeypatch):
    # One padded attention call per batch (_dense.py) against the keep_all
    # selection gathered into the same padded layout.
    batch, N = _batch(sizes), sum(sizes)
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=2, k=10, sampling=sampling,
                          dropout=dropout).train(training)
    x = torch.randn(N, 16)
    kw = dict(num_graphs=len(sizes), max_num_nodes=max(sizes))
    info = attn._set_info(x, batch, None, None, kw['num_graphs'],
                          kw['max_num_nodes'])
    assert attn._dense_keeps_all(info, N, False)

    out, gx, grads = _step(attn, x, batch.clone(), kw)
    _gathered_only(monkeypatch)
    ref, ref_gx, ref_grads = _step(attn, x, batch.clone(), kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-6)
    assert_same_grads(grads, ref_grads)


def test_dense_keep_all_one_set_and_no_grad(monkeypatch):
    # batch=None (one set, a reshape) and inference (stacked weights).
    torch.manual_seed(0)
    attn = SamsaAttention(16, heads=4, k=32).eval()
    x = torch.randn(9, 16)
    with torch.no_grad():
        out = attn(x)
        _gathered_only(monkeypatch)
        ref = attn(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_dense_layout_follows_the_batch_vector():
    # The layout cached on a batch tensor is rebuilt when the tensor is
    # changed in place or read with other sizes; slot 0 of an empty set
    # stays valid.
    from samsa_geo.nn.attention._dense import dense_layout
    batch = _batch([2, 0, 3])
    layout = dense_layout(batch, 3, 3)
    assert layout.index.tolist() == [0, 1, 6, 7, 8]
    assert layout.key_valid.tolist() == [[True, True, False],
                                         [True, False, False],
                                         [True, True, True]]
    assert dense_layout(batch, 3, 3) is layout
    bias = layout.key_bias(torch.float32)
    assert bias.shape == (3, 1, 1, 3)
    assert torch.equal(bias.view(3, 3) == 0, layout.key_valid)
    assert torch.isinf(bias.view(3, 3)[~layout.key_valid]).all()
    # Rows aligned as PyTorch's memory-efficient attention reads masks
    # without padding a copy per call.
    from samsa_geo.nn.attention._dense import MASK_ALIGNMENT
    assert bias.stride(-1) == 1
    assert all(s % MASK_ALIGNMENT == 0 for s in bias.stride()[:-1])
    assert layout.key_bias(torch.float32) is bias
    batch.copy_(_batch([1, 1, 3]))
    moved = dense_layout(batch, 3, 3)
    assert moved is not layout
    assert moved.index.tolist() == [0, 3, 6, 7, 8]
    assert dense_layout(batch, 3, 4).index.tolist() == [0, 4, 8, 9, 10]
