"""The scorer's training node backward on the scored rows alone
(ScoredRows): where the only pairs whose scores get a gradient are known,
the backward runs on their rows and gives the gradients of the backward on
every token; an unused slot that repeats a used slot's id is not counted
twice."""
import pytest
import torch

from samsa_geo.nn.attention import ImportanceScorer
from samsa_geo.nn.attention._score_grad import ScoredRows


def _pairs(N, H, B, K, gen):
    # Distinct token ids per set and head (B sets of N // B tokens), the
    # last two slots of set 0 unused: they repeat the set's first id.
    n = N // B
    ids = torch.stack([
        torch.stack([torch.randperm(n, generator=gen)[:K] + b * n
                     for _ in range(H)]) for b in range(B)])
    valid = torch.ones(B, 1, K, dtype=torch.bool)
    valid[0, :, -2:] = False
    ids[0, :, -2:] = ids[0, :, :1]
    return ids, valid  # [B, H, K], [B, 1, K]


def _grads(scorer, x, hidden, grad_pairs, ids, head, valid, rows_mode):
    # The gradients of x, hidden and the scorer's parameters for the
    # upstream gradient grad_pairs [B, H, K] at the pairs (ids, head).
    scorer.zero_grad()
    x = x.clone().requires_grad_()
    hidden = hidden.clone().requires_grad_()
    rows = None
    if rows_mode is not None:
        rows = ScoredRows(x.size(0))
    score = scorer(x, hidden, rows=rows)  # [N, H]
    if rows is not None:
        rows.set(ids, head, valid if rows_mode == 'masked' else None)
    g = torch.zeros_like(score)
    pairs = grad_pairs * valid.to(grad_pairs.dtype)  # unused slots: 0
    # (float32 scores; float64 of a float64 scorer)
    g.index_put_((ids, head.expand_as(ids)), pairs.to(g.dtype),
                 accumulate=True)
    (score * g).sum().backward()
    out = {'x': x.grad, 'hidden': hidden.grad}
    out.update({n: p.grad for n, p in scorer.named_parameters()
                if p.grad is not None})
    return out


@pytest.mark.parametrize('dtype, kernels', [(torch.float32, False),
                                            (torch.float64, False),
                                            (torch.float32, True)])
def test_backward_on_the_scored_rows_equals_the_backward_on_every_token(
        monkeypatch, triton_modules, dtype, kernels):
    # kernels: the tail's Triton kernels (CUDA's; here interpreted), both
    # ways.
    if kernels:
        from samsa_geo.nn.attention import _score_grad
        triton_modules('samsa_geo.nn.attention._score_grad_triton')
        monkeypatch.setattr(_score_grad, 'triton_serves', lambda d: True)
    gen = torch.Generator().manual_seed(0)
    N, C, H, B, K = 120, 16, 3, 2, 10
    torch.manual_seed(0)
    scorer = ImportanceScorer(C, heads=H).to(dtype)
    x = torch.randn(N, C, dtype=dtype, generator=gen)
    lin1 = scorer.score_nn[0]
    hidden = torch.nn.functional.linear(x, lin1.weight, lin1.bias).detach()
    ids, valid = _pairs(N, H, B, K, gen)
    head = torch.arange(H).view(1, H, 1)
    grad_pairs = torch.randn(B, H, K, dtype=torch.float32, generator=gen)
    want = _grads(scorer, x, hidden, grad_pairs, ids, head, valid, None)
    got = _grads(scorer, x, hidden, grad_pairs, ids, head, valid, 'masked')
    assert got.keys() == want.keys() and 'score_nn.2.weight' in got
    for name in want:
        # float32 from the LayerNorm on: sums over rows in another order.
        torch.testing.assert_close(got[name], want[name], rtol=1e-5,
                                   atol=1e-6, msg=name)
    # Rows untouched by any pair get no gradient through the scorer.
    untouched = torch.ones(N, dtype=torch.bool)
    untouched[ids.reshape(-1)] = False
    assert untouched.any() and got['x'][untouched].abs().max() == 0
    # Without the mask the unused slots count their id's gradient again.
    doubled = _grads(scorer, x, hidden, grad_pairs, ids, head, valid,
                     'unmasked')
    assert not torch.allclose(doubled['x'], want['x'], rtol=1e-5, atol=1e-6)


def test_scored_rows_give_each_pair_its_head_column():
    # rows_and_grad: row p holds the gradient of pair p in its head's
    # column alone; an unused slot's row is zero.
    rows = ScoredRows(5)
    ids = torch.tensor([[[0, 3], [3, 3]]])  # [B=1, H=2, K=2]
    head = torch.arange(2).view(1, 2, 1)
    rows.set(ids, head, torch.tensor([[[True, False]]]))
    grad = torch.arange(1.0, 11.0).view(5, 2)  # [N, H]
    got_ids, got = rows.rows_and_grad(grad)
    assert got_ids.tolist() == [0, 3, 3, 3]
    assert got.tolist() == [[1.0, 0.0], [0.0, 0.0], [0.0, 8.0], [0.0, 0.0]]
